//! Payload filters: a subscription's conditions on the event document (`"filter"`), compiled
//! once from their JSON form into a typed expression and evaluated against the parsed
//! document ([`super::Document::value`]), which every subscription of the event shares.
//!
//! The JSON form is an object whose keys are dotted paths into the document (`assetId`,
//! `metadata.title`, `platforms.0`; for an event that arrived as a CloudEvent the paths
//! start at its attributes: `type`, `data.assetId`) and whose values are a literal (the
//! member equals it) or an object of operators (all must hold):
//!
//! | operator | holds when the member |
//! |---|---|
//! | `$eq`, `$ne` | equals / does not equal the value (`$ne`: or is missing) |
//! | `$in`, `$nin` | equals one / none of the array's values (`$nin`: or is missing) |
//! | `$gt`, `$gte`, `$lt`, `$lte` | is a number above/below a number, or an RFC 3339 time after/before a time |
//! | `$exists` | is present (`true`) or missing (`false`) |
//! | `$prefix` | is a string that starts with the value |
//! | `$contains` | is an array with an element equal to the value |
//!
//! Several keys must all hold; `$and` and `$or` take non-empty arrays of such objects,
//! `$not` one. Numbers compare by value (`1` equals `1.0`).

use std::cmp::Ordering;

use chrono::{DateTime, FixedOffset};
use serde_json::{Map, Value};

/// Longest filter accepted, as JSON text: a filter is evaluated for every event.
const MAX_SOURCE_BYTES: usize = 16 * 1024;
/// Deepest nesting of `$and`, `$or` and `$not`.
const MAX_DEPTH: usize = 8;

/// A compiled payload filter, with the JSON it was compiled from (what the API shows and
/// the store keeps).
#[derive(Debug, Clone)]
pub struct PayloadFilter {
    source: Value,
    expr: Expr,
}

impl PartialEq for PayloadFilter {
    fn eq(&self, other: &PayloadFilter) -> bool {
        self.source == other.source
    }
}

/// Why a filter does not compile: `path` names the member and the operator at fault
/// (`assetId.$in`, `$or[1].duration.$gt`), empty for the filter as a whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct FilterError {
    pub path: String,
    pub message: String,
}

#[derive(Debug, Clone)]
enum Expr {
    All(Vec<Expr>),
    Any(Vec<Expr>),
    Not(Box<Expr>),
    Member { path: Vec<String>, tests: Vec<Test> },
}

#[derive(Debug, Clone)]
enum Test {
    Eq(Value),
    Ne(Value),
    In(Vec<Value>),
    Nin(Vec<Value>),
    Compare(Cmp, Bound),
    Exists(bool),
    Prefix(String),
    Contains(Value),
}

#[derive(Debug, Clone, Copy)]
enum Cmp {
    Gt,
    Gte,
    Lt,
    Lte,
}

#[derive(Debug, Clone)]
enum Bound {
    Number(f64),
    Time(DateTime<FixedOffset>),
}

impl PayloadFilter {
    /// Compiles the JSON form, or says which path and operator are at fault.
    pub fn compile(source: &Value) -> Result<PayloadFilter, FilterError> {
        let length = serde_json::to_string(source).map_or(0, |text| text.len());
        if length > MAX_SOURCE_BYTES {
            return Err(error(
                "",
                format!(
                    "a filter may have at most {MAX_SOURCE_BYTES} bytes of JSON, this one has {length}"
                ),
            ));
        }
        let expr = object(source, "", 0)?;
        Ok(PayloadFilter {
            source: source.clone(),
            expr,
        })
    }

    /// The JSON the filter was compiled from.
    pub fn source(&self) -> &Value {
        &self.source
    }

    /// Whether the event document satisfies the filter.
    pub fn matches(&self, document: &Value) -> bool {
        self.expr.holds(document)
    }
}

fn error(path: &str, message: impl Into<String>) -> FilterError {
    FilterError {
        path: path.to_owned(),
        message: message.into(),
    }
}

/// `at` followed by `key`, as the error paths write them.
fn join(at: &str, key: &str) -> String {
    match at {
        "" => key.to_owned(),
        _ => format!("{at}.{key}"),
    }
}

/// A filter object: its keys all hold.
fn object(value: &Value, at: &str, depth: usize) -> Result<Expr, FilterError> {
    if depth > MAX_DEPTH {
        return Err(error(
            at,
            format!("$and, $or and $not nest at most {MAX_DEPTH} deep"),
        ));
    }
    let Value::Object(members) = value else {
        return Err(error(
            at,
            "a filter is an object of dotted paths and conditions",
        ));
    };
    if members.is_empty() {
        return Err(error(at, "a filter object must have at least one member"));
    }
    let mut all = Vec::with_capacity(members.len());
    for (key, value) in members {
        let here = join(at, key);
        let expr = match key.as_str() {
            "$and" | "$or" => {
                let items = match value {
                    Value::Array(items) if !items.is_empty() => items,
                    _ => {
                        return Err(error(
                            &here,
                            format!("{key} takes a non-empty array of filter objects"),
                        ));
                    }
                };
                let exprs = items
                    .iter()
                    .enumerate()
                    .map(|(index, item)| object(item, &format!("{here}[{index}]"), depth + 1))
                    .collect::<Result<Vec<_>, _>>()?;
                match key.as_str() {
                    "$and" => Expr::All(exprs),
                    _ => Expr::Any(exprs),
                }
            }
            "$not" => Expr::Not(Box::new(object(value, &here, depth + 1)?)),
            operator if operator.starts_with('$') => {
                return Err(error(
                    &here,
                    format!(
                        "unknown operator {operator}: a filter object's keys are paths, $and, $or or $not"
                    ),
                ));
            }
            path => {
                let segments: Vec<String> = path.split('.').map(str::to_owned).collect();
                if segments.iter().any(String::is_empty) {
                    return Err(error(
                        &here,
                        format!("{path:?} is not a dotted path: it has an empty segment"),
                    ));
                }
                Expr::Member {
                    path: segments,
                    tests: condition(value, &here)?,
                }
            }
        };
        all.push(expr);
    }
    Ok(match all.len() {
        1 => all.pop().unwrap_or(Expr::All(Vec::new())),
        _ => Expr::All(all),
    })
}

/// The condition on one member: a literal, or an object of operators.
fn condition(value: &Value, at: &str) -> Result<Vec<Test>, FilterError> {
    let operators = match value {
        Value::Object(members) if members.keys().any(|key| key.starts_with('$')) => members,
        literal => return Ok(vec![Test::Eq(literal.clone())]),
    };
    operators
        .iter()
        .map(|(operator, operand)| test(operator, operand, &join(at, operator), operators))
        .collect()
}

fn test(
    operator: &str,
    operand: &Value,
    at: &str,
    siblings: &Map<String, Value>,
) -> Result<Test, FilterError> {
    let list = |operand: &Value| match operand {
        Value::Array(items) if !items.is_empty() => Ok(items.clone()),
        _ => Err(error(
            at,
            format!("{operator} takes a non-empty array of values"),
        )),
    };
    Ok(match operator {
        "$eq" => Test::Eq(operand.clone()),
        "$ne" => Test::Ne(operand.clone()),
        "$in" => Test::In(list(operand)?),
        "$nin" => Test::Nin(list(operand)?),
        "$gt" | "$gte" | "$lt" | "$lte" => {
            let cmp = match operator {
                "$gt" => Cmp::Gt,
                "$gte" => Cmp::Gte,
                "$lt" => Cmp::Lt,
                _ => Cmp::Lte,
            };
            let bound = match operand {
                Value::Number(number) => number.as_f64().map(Bound::Number),
                Value::String(text) => DateTime::parse_from_rfc3339(text).ok().map(Bound::Time),
                _ => None,
            }
            .ok_or_else(|| error(at, format!("{operator} takes a number or an RFC 3339 time")))?;
            Test::Compare(cmp, bound)
        }
        "$exists" => match operand {
            Value::Bool(present) => Test::Exists(*present),
            _ => return Err(error(at, "$exists takes true or false")),
        },
        "$prefix" => match operand {
            Value::String(prefix) => Test::Prefix(prefix.clone()),
            _ => return Err(error(at, "$prefix takes a string")),
        },
        "$contains" => Test::Contains(operand.clone()),
        other if other.starts_with('$') => {
            return Err(error(
                at,
                format!(
                    "unknown operator {other}: use $eq, $ne, $in, $nin, $gt, $gte, $lt, $lte, $exists, $prefix or $contains"
                ),
            ));
        }
        member => {
            let operators = siblings
                .keys()
                .filter(|key| key.starts_with('$'))
                .cloned()
                .collect::<Vec<_>>()
                .join(", ");
            return Err(error(
                at,
                format!(
                    "{member:?} is beside the operators {operators}: a condition is a literal or an object of operators, not both"
                ),
            ));
        }
    })
}

impl Expr {
    fn holds(&self, document: &Value) -> bool {
        match self {
            Expr::All(all) => all.iter().all(|expr| expr.holds(document)),
            Expr::Any(any) => any.iter().any(|expr| expr.holds(document)),
            Expr::Not(expr) => !expr.holds(document),
            Expr::Member { path, tests } => {
                let member = lookup(document, path);
                tests.iter().all(|test| test.holds(member))
            }
        }
    }
}

/// The member at `path`; a segment that is a number indexes an array.
fn lookup<'a>(document: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter()
        .try_fold(document, |value, segment| match value {
            Value::Object(members) => members.get(segment),
            Value::Array(items) => segment
                .parse::<usize>()
                .ok()
                .and_then(|index| items.get(index)),
            _ => None,
        })
}

impl Test {
    fn holds(&self, member: Option<&Value>) -> bool {
        match self {
            Test::Eq(value) => member.is_some_and(|member| equal(member, value)),
            Test::Ne(value) => !member.is_some_and(|member| equal(member, value)),
            Test::In(values) => {
                member.is_some_and(|member| values.iter().any(|v| equal(member, v)))
            }
            Test::Nin(values) => {
                !member.is_some_and(|member| values.iter().any(|v| equal(member, v)))
            }
            Test::Compare(cmp, bound) => {
                let ordering = match (bound, member) {
                    (Bound::Number(bound), Some(Value::Number(number))) => {
                        number.as_f64().and_then(|number| number.partial_cmp(bound))
                    }
                    (Bound::Time(bound), Some(Value::String(text))) => {
                        DateTime::parse_from_rfc3339(text)
                            .ok()
                            .map(|time| time.cmp(bound))
                    }
                    _ => None,
                };
                ordering.is_some_and(|ordering| match cmp {
                    Cmp::Gt => ordering == Ordering::Greater,
                    Cmp::Gte => ordering != Ordering::Less,
                    Cmp::Lt => ordering == Ordering::Less,
                    Cmp::Lte => ordering != Ordering::Greater,
                })
            }
            Test::Exists(present) => member.is_some() == *present,
            Test::Prefix(prefix) => {
                matches!(member, Some(Value::String(text)) if text.starts_with(prefix.as_str()))
            }
            Test::Contains(value) => matches!(
                member,
                Some(Value::Array(items)) if items.iter().any(|item| equal(item, value))
            ),
        }
    }
}

/// JSON equality, with numbers compared by value: `1` equals `1.0`.
fn equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(a), Value::Number(b)) => match (a.as_i64(), b.as_i64()) {
            (Some(a), Some(b)) => a == b,
            _ => a.as_f64() == b.as_f64(),
        },
        (Value::Array(a), Value::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(a, b)| equal(a, b))
        }
        (Value::Object(a), Value::Object(b)) => {
            a.len() == b.len()
                && a.iter()
                    .all(|(key, a)| b.get(key).is_some_and(|b| equal(a, b)))
        }
        (a, b) => a == b,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn holds(filter: Value, document: Value) -> bool {
        PayloadFilter::compile(&filter)
            .unwrap_or_else(|error| panic!("{filter} does not compile: {error:?}"))
            .matches(&document)
    }

    fn refused(filter: Value) -> FilterError {
        match PayloadFilter::compile(&filter) {
            Ok(_) => panic!("{filter} compiled"),
            Err(error) => error,
        }
    }

    fn asset() -> Value {
        json!({
            "eventName": "asset-updated",
            "assetId": 42,
            "duration": 90.5,
            "title": "Match of the day",
            "platforms": ["web", "tv"],
            "publishedAt": "2026-11-30T10:00:00Z",
            "metadata": {"title": {"en": "Match"}, "tags": []},
            "rating": null
        })
    }

    #[test]
    fn a_literal_is_equality_and_numbers_compare_by_value() {
        assert!(holds(json!({"assetId": 42}), asset()));
        assert!(holds(json!({"assetId": 42.0}), asset()));
        assert!(!holds(json!({"assetId": "42"}), asset()));
        assert!(holds(json!({"eventName": "asset-updated"}), asset()));
        assert!(holds(json!({"metadata.title.en": "Match"}), asset()));
        assert!(holds(json!({"metadata.title": {"en": "Match"}}), asset()));
        assert!(holds(json!({"platforms": ["web", "tv"]}), asset()));
        assert!(
            !holds(json!({"platforms": "web"}), asset()),
            "equality, not membership"
        );
        assert!(holds(json!({"rating": null}), asset()));
        assert!(
            !holds(json!({"missing": null}), asset()),
            "missing is not null"
        );
        assert!(
            holds(json!({"platforms.1": "tv"}), asset()),
            "a number indexes an array"
        );
        assert!(!holds(json!({"platforms.7": "tv"}), asset()));
        assert!(
            !holds(json!({"title.en": "Match"}), asset()),
            "no member inside a string"
        );
    }

    #[test]
    fn eq_and_ne() {
        assert!(holds(json!({"assetId": {"$eq": 42}}), asset()));
        assert!(!holds(json!({"assetId": {"$eq": 43}}), asset()));
        assert!(holds(json!({"assetId": {"$ne": 43}}), asset()));
        assert!(!holds(json!({"assetId": {"$ne": 42}}), asset()));
        assert!(
            holds(json!({"missing": {"$ne": 1}}), asset()),
            "$ne holds for a missing member"
        );
    }

    #[test]
    fn in_and_nin() {
        assert!(holds(json!({"assetId": {"$in": [1, 42, 7]}}), asset()));
        assert!(!holds(json!({"assetId": {"$in": [1, 7]}}), asset()));
        assert!(!holds(json!({"missing": {"$in": [1]}}), asset()));
        assert!(holds(json!({"assetId": {"$nin": [1, 7]}}), asset()));
        assert!(!holds(json!({"assetId": {"$nin": [42]}}), asset()));
        assert!(holds(json!({"missing": {"$nin": [1]}}), asset()));
    }

    #[test]
    fn comparisons_of_numbers_and_times() {
        assert!(holds(json!({"duration": {"$gt": 90}}), asset()));
        assert!(!holds(json!({"duration": {"$gt": 90.5}}), asset()));
        assert!(holds(json!({"duration": {"$gte": 90.5}}), asset()));
        assert!(holds(json!({"duration": {"$lt": 91}}), asset()));
        assert!(!holds(json!({"duration": {"$lt": 90.5}}), asset()));
        assert!(holds(json!({"duration": {"$lte": 90.5}}), asset()));
        assert!(
            holds(json!({"duration": {"$gt": 60, "$lt": 120}}), asset()),
            "a range"
        );
        assert!(!holds(
            json!({"duration": {"$gt": 100, "$lt": 120}}),
            asset()
        ));
        // Times compare as instants, whatever their offset.
        assert!(holds(
            json!({"publishedAt": {"$gt": "2026-11-30T09:59:59Z"}}),
            asset()
        ));
        assert!(holds(
            json!({"publishedAt": {"$lt": "2026-11-30T11:00:01+01:00"}}),
            asset()
        ));
        assert!(holds(
            json!({"publishedAt": {"$gte": "2026-11-30T11:00:00+01:00"}}),
            asset()
        ));
        assert!(!holds(
            json!({"publishedAt": {"$lte": "2026-11-30T09:00:00Z"}}),
            asset()
        ));
        // Kinds that do not compare never hold.
        assert!(!holds(json!({"title": {"$gt": 1}}), asset()));
        assert!(!holds(
            json!({"duration": {"$gt": "2026-11-30T09:00:00Z"}}),
            asset()
        ));
        assert!(!holds(json!({"missing": {"$lt": 1}}), asset()));
    }

    #[test]
    fn exists_prefix_and_contains() {
        assert!(holds(json!({"title": {"$exists": true}}), asset()));
        assert!(
            holds(json!({"rating": {"$exists": true}}), asset()),
            "null is present"
        );
        assert!(holds(json!({"missing": {"$exists": false}}), asset()));
        assert!(!holds(json!({"title": {"$exists": false}}), asset()));
        assert!(holds(json!({"title": {"$prefix": "Match of"}}), asset()));
        assert!(!holds(json!({"title": {"$prefix": "match"}}), asset()));
        assert!(!holds(json!({"assetId": {"$prefix": "4"}}), asset()));
        assert!(holds(json!({"platforms": {"$contains": "web"}}), asset()));
        assert!(!holds(json!({"platforms": {"$contains": "ios"}}), asset()));
        assert!(
            !holds(json!({"title": {"$contains": "M"}}), asset()),
            "arrays only"
        );
        assert!(!holds(
            json!({"metadata.tags": {"$contains": "x"}}),
            asset()
        ));
    }

    #[test]
    fn keys_all_hold_and_and_or_not_combine() {
        let web_and_set = json!({"platforms": {"$contains": "web"}, "assetId": {"$in": [41, 42]}});
        assert!(holds(web_and_set, asset()));
        assert!(!holds(
            json!({"platforms": {"$contains": "web"}, "assetId": 1}),
            asset()
        ));
        assert!(holds(
            json!({"$and": [{"assetId": 42}, {"title": {"$exists": true}}]}),
            asset()
        ));
        assert!(!holds(
            json!({"$and": [{"assetId": 42}, {"title": "x"}]}),
            asset()
        ));
        assert!(holds(
            json!({"$or": [{"assetId": 1}, {"title": {"$prefix": "Match"}}]}),
            asset()
        ));
        assert!(!holds(
            json!({"$or": [{"assetId": 1}, {"assetId": 2}]}),
            asset()
        ));
        assert!(holds(json!({"$not": {"assetId": 1}}), asset()));
        assert!(!holds(json!({"$not": {"assetId": 42}}), asset()));
        assert!(holds(
            json!({"$or": [{"$not": {"platforms": {"$contains": "web"}}}, {"duration": {"$gt": 60}}]}),
            asset()
        ));
    }

    #[test]
    fn cloudevent_attributes_and_data_are_paths_like_any_other() {
        let event = json!({
            "specversion": "1.0", "id": "1", "source": "app://one", "type": "asset-updated",
            "data": {"assetId": 7, "platforms": ["web"]}
        });
        assert!(holds(
            json!({"type": "asset-updated", "data.assetId": {"$in": [7]}}),
            event.clone()
        ));
        assert!(holds(
            json!({"source": {"$prefix": "app://"}}),
            event.clone()
        ));
        assert!(!holds(
            json!({"data.platforms": {"$contains": "tv"}}),
            event
        ));
    }

    #[test]
    fn compile_errors_name_the_path_and_the_operator() {
        let cases = [
            (json!("assetId"), "", "object"),
            (json!([]), "", "object"),
            (json!({}), "", "at least one member"),
            (
                json!({"assetId": {"$in": 42}}),
                "assetId.$in",
                "non-empty array",
            ),
            (
                json!({"assetId": {"$nin": []}}),
                "assetId.$nin",
                "non-empty array",
            ),
            (json!({"a.b": {"$gt": "yesterday"}}), "a.b.$gt", "RFC 3339"),
            (json!({"a": {"$lte": true}}), "a.$lte", "number"),
            (json!({"a": {"$exists": 1}}), "a.$exists", "true or false"),
            (json!({"a": {"$prefix": 1}}), "a.$prefix", "string"),
            (
                json!({"a": {"$regex": "x"}}),
                "a.$regex",
                "unknown operator",
            ),
            (
                json!({"a": {"$eq": 1, "b": 2}}),
                "a.b",
                "literal or an object of operators",
            ),
            (json!({"$nor": []}), "$nor", "unknown operator"),
            (json!({"$or": []}), "$or", "non-empty array"),
            (json!({"$or": {"a": 1}}), "$or", "non-empty array"),
            (
                json!({"$or": [{"a": 1}, {"b": {"$gt": "x"}}]}),
                "$or[1].b.$gt",
                "RFC 3339",
            ),
            (json!({"$and": [{"a": 1}, 2]}), "$and[1]", "object"),
            (
                json!({"$not": {"a": {"$in": "x"}}}),
                "$not.a.$in",
                "non-empty array",
            ),
            (json!({"a..b": 1}), "a..b", "empty segment"),
            (json!({".a": 1}), ".a", "empty segment"),
        ];
        for (filter, path, message) in cases {
            let error = refused(filter.clone());
            assert_eq!(error.path, path, "{filter}: {error:?}");
            assert!(error.message.contains(message), "{filter}: {error:?}");
        }
    }

    #[test]
    fn deep_or_large_filters_are_refused() {
        let mut deep = json!({"a": 1});
        for _ in 0..=MAX_DEPTH {
            deep = json!({"$not": deep});
        }
        assert!(refused(deep).message.contains("nest"));
        let large = json!({"a": {"$in": vec!["x".repeat(100); 200]}});
        assert!(refused(large).message.contains("at most"));
    }

    #[test]
    fn filters_compare_by_their_json() {
        let a = PayloadFilter::compile(&json!({"a": 1})).unwrap();
        let b = PayloadFilter::compile(&json!({"a": 1})).unwrap();
        let c = PayloadFilter::compile(&json!({"a": 2})).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a.source(), &json!({"a": 1}));
    }
}
