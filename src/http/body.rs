//! API request bodies read through their documented types. Every route that takes a JSON
//! body (not the event documents, whose extra members are kept and delivered) reads it
//! here: a member its schema does not know is refused (`422 unknown_member`, with `field`
//! naming it, e.g. `destination.streamName`) instead of being silently ignored, and a
//! member of the wrong type is named too. The schemas walked are those of the OpenAPI
//! document as served ([`openapi::document`]), so what it promises and what is accepted
//! are one.

use std::collections::BTreeMap;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};
use utoipa::ToSchema;

use super::error::ApiError;
use super::openapi;

/// `axum::extract::Query`, whose refusal is JSON like every other error: a query
/// parameter that is not of its documented type gets `400 invalid_query` naming it.
pub struct Query<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(Query(value)),
            Err(rejection) => Err(ApiError::bad_request(
                "invalid_query",
                rejection.body_text(),
            )),
        }
    }
}

/// Reads `body` as `T`, the route's documented request type: a JSON object with no member
/// `T`'s schema does not know, each member of its type. A refusal carries `code` (the
/// route's own, e.g. `invalid_replay`) and names the member at fault.
pub fn read<T: DeserializeOwned + ToSchema>(
    body: &[u8],
    code: &'static str,
) -> Result<T, ApiError> {
    let object = object(body, &T::name(), code)?;
    typed(Value::Object(object), "", code)
}

/// Like [`read`], for a route whose body may be left out: no body (or `null`, as the
/// document's optional body allows) is `None`.
pub fn read_optional<T: DeserializeOwned + ToSchema>(
    body: &[u8],
    code: &'static str,
) -> Result<Option<T>, ApiError> {
    match optional_object(body, &T::name(), code)? {
        Some(object) => typed(Value::Object(object), "", code).map(Some),
        None => Ok(None),
    }
}

/// Like [`object`], for a route whose body may be left out: no body, or `null`, is `None`.
pub fn optional_object(
    body: &[u8],
    schema: &str,
    not_object: &'static str,
) -> Result<Option<Map<String, Value>>, ApiError> {
    let text = body.trim_ascii();
    if text.is_empty() || text == b"null" {
        return Ok(None);
    }
    object(body, schema, not_object).map(Some)
}

/// Parses `body` as a JSON object with only members of the request schema named
/// `schema`, for a handler that reads the members itself (to give each mistake its own
/// code). Not an object: `422` with `not_object`.
pub fn object(
    body: &[u8],
    schema: &str,
    not_object: &'static str,
) -> Result<Map<String, Value>, ApiError> {
    let value: Value = serde_json::from_slice(body).map_err(|error| ApiError::MalformedJson {
        line: error.line(),
        column: error.column(),
        message: error.to_string(),
    })?;
    if !value.is_object() {
        return Err(ApiError::unprocessable(
            not_object,
            "the body must be a JSON object",
        ));
    }
    let root = json!({ "$ref": format!("#/components/schemas/{schema}") });
    if let Some(field) = unknown_member(openapi::document(), &root, &value, "") {
        return Err(ApiError::Unprocessable {
            code: "unknown_member",
            message: format!("{field} is not a member of this request (see GET /openapi.json)"),
            index: None,
            field: Some(field),
        });
    }
    match value {
        Value::Object(object) => Ok(object),
        _ => Err(ApiError::unprocessable(
            not_object,
            "the body must be a JSON object",
        )),
    }
}

/// Reads `value`, the member at `path` of a body (`""`: the body itself), as `T`; a
/// refusal carries `code` and the path of the member at fault.
pub fn typed<T: DeserializeOwned>(
    value: Value,
    path: &str,
    code: &'static str,
) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(value).map_err(|error| {
        let inner = error.inner().to_string();
        let mut field = match error.path().to_string().as_str() {
            "." => path.to_owned(),
            inner_path => join(path, inner_path),
        };
        // serde reports a missing member at its parent: name the member itself.
        if let Some(missing) = inner
            .strip_prefix("missing field `")
            .and_then(|rest| rest.split('`').next())
        {
            field = join(&field, missing);
        }
        ApiError::Unprocessable {
            code,
            message: match field.as_str() {
                "" => inner,
                field => format!("{field}: {inner}"),
            },
            index: None,
            field: (!field.is_empty()).then_some(field),
        }
    })
}

/// For `#[serde(deserialize_with)]`: an integer member, in any JSON notation of one.
/// JSON Schema's `integer` is any number without a fractional part (`5.0` too), and
/// the document promises that, while serde takes only `5` for an `i64`.
pub fn integer<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: TryFrom<i64> + TryFrom<u64>,
{
    use serde::Deserialize;
    use serde::de::Error;
    let Some(number) = Option::<serde_json::Number>::deserialize(deserializer)? else {
        return Ok(None);
    };
    let out_of_range = || D::Error::custom(format!("{number} is out of range"));
    if let Some(unsigned) = number.as_u64() {
        return T::try_from(unsigned).map(Some).map_err(|_| out_of_range());
    }
    if let Some(signed) = number.as_i64() {
        return T::try_from(signed).map(Some).map_err(|_| out_of_range());
    }
    match number.as_f64() {
        // Exactly representable: within ±2^53, where every integer is.
        Some(float) if float.fract() == 0.0 && float.abs() <= 9_007_199_254_740_992.0 => {
            T::try_from(float as i64)
                .map(Some)
                .map_err(|_| out_of_range())
        }
        _ => Err(D::Error::custom(format!("{number} is not an integer"))),
    }
}

fn join(path: &str, member: &str) -> String {
    match (path, member) {
        ("", member) => member.to_owned(),
        (path, member) if member.starts_with('[') => format!("{path}{member}"),
        (path, member) => format!("{path}.{member}"),
    }
}

/// The first member of `value` (as a path) that `schema` does not describe. Objects with
/// `properties` are closed; a `oneOf` is matched on its alternatives' constant members
/// (a destination's `type`), so each type is checked against its own members.
fn unknown_member(document: &Value, schema: &Value, value: &Value, path: &str) -> Option<String> {
    let schema = resolve(document, schema);
    // A union (`Destination`, an `Option`): the value is one of the alternatives. An
    // object schema's own `oneOf`/`anyOf` are rules between its members instead.
    let alternatives: Vec<&Value> = ["oneOf", "anyOf"]
        .iter()
        .filter_map(|key| schema.get(*key).and_then(Value::as_array))
        .flatten()
        .collect();
    if !alternatives.is_empty() && schema.get("properties").is_none() {
        // The value is fine if it fits one alternative its kind and constants allow.
        let mut first = None;
        for alternative in alternatives {
            if !may_be(document, alternative, value) {
                continue;
            }
            match unknown_member(document, alternative, value, path) {
                None => return None,
                Some(found) => {
                    first.get_or_insert(found);
                }
            }
        }
        return first;
    }
    match value {
        Value::Object(members) => {
            let properties = properties(document, schema)?;
            for (name, member) in members {
                let member_path = join(path, name);
                match properties.get(name.as_str()) {
                    None => return Some(member_path),
                    Some(member_schema) => {
                        if let Some(found) =
                            unknown_member(document, member_schema, member, &member_path)
                        {
                            return Some(found);
                        }
                    }
                }
            }
            None
        }
        Value::Array(items) => {
            let item_schema = schema.get("items")?;
            items.iter().enumerate().find_map(|(index, item)| {
                unknown_member(document, item_schema, item, &format!("{path}[{index}]"))
            })
        }
        _ => None,
    }
}

/// Whether `value` may be an instance of the alternative `schema`: its JSON kind, and
/// for an object its constant members (`"type": "sqs"`).
fn may_be(document: &Value, schema: &Value, value: &Value) -> bool {
    let schema = resolve(document, schema);
    match value {
        Value::Object(members) => {
            let Some(properties) = properties(document, schema) else {
                return !declares_kind(schema) || has_kind(schema, "object");
            };
            properties.iter().all(|(name, property)| {
                let property = resolve(document, property);
                let allowed = property
                    .get("enum")
                    .and_then(Value::as_array)
                    .map(|values| values.iter().collect::<Vec<_>>())
                    .or_else(|| property.get("const").map(|value| vec![value]));
                match (allowed, members.get(*name)) {
                    (Some(allowed), Some(given)) => allowed.contains(&given),
                    _ => true,
                }
            })
        }
        Value::Array(_) => !declares_kind(schema) || has_kind(schema, "array"),
        _ => true,
    }
}

fn declares_kind(schema: &Value) -> bool {
    schema.get("type").is_some()
}

fn has_kind(schema: &Value, kind: &str) -> bool {
    type_includes(schema.get("type"), kind)
}

/// Whether a schema's `type` member (a name or a list of names) includes `kind`.
pub(super) fn type_includes(type_member: Option<&Value>, kind: &str) -> bool {
    match type_member {
        Some(Value::String(one)) => one == kind,
        Some(Value::Array(many)) => many.iter().any(|k| k == kind),
        _ => false,
    }
}

/// The members an object schema describes, through `$ref` and `allOf` (a flattened
/// struct); `None` when it is not a closed object (no `properties`, or
/// `additionalProperties` allowing more).
fn properties<'a>(document: &'a Value, schema: &'a Value) -> Option<BTreeMap<&'a str, &'a Value>> {
    let schema = resolve(document, schema);
    if matches!(schema.get("additionalProperties"), Some(more) if more != &Value::Bool(false)) {
        return None;
    }
    let own = schema.get("properties").and_then(Value::as_object);
    let parts = schema.get("allOf").and_then(Value::as_array);
    if own.is_none() && parts.is_none() {
        // A struct without members: closed, and empty.
        return (schema.get("additionalProperties") == Some(&Value::Bool(false)))
            .then(BTreeMap::new);
    }
    let mut all: BTreeMap<&str, &Value> = own
        .into_iter()
        .flatten()
        .map(|(name, schema)| (name.as_str(), schema))
        .collect();
    // A flattened struct's members are the object's; a part without members is a rule
    // between them (the OpenAPI document's `allOf` of `oneOf`s), and adds none.
    for part in parts.into_iter().flatten() {
        all.extend(properties(document, part).unwrap_or_default());
    }
    Some(all)
}

/// `schema` with its `$ref`s followed (into `#/components/schemas/`).
pub(super) fn resolve<'a>(document: &'a Value, mut schema: &'a Value) -> &'a Value {
    // A bound, not a cycle check: component references are a few levels deep.
    for _ in 0..16 {
        let Some(target) = schema
            .get("$ref")
            .and_then(Value::as_str)
            .and_then(|reference| reference.strip_prefix("#/components/schemas/"))
            .and_then(|name| document.pointer(&format!("/components/schemas/{name}")))
        else {
            return schema;
        };
        schema = target;
    }
    schema
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(result: Result<Map<String, Value>, ApiError>) -> Option<(&'static str, String)> {
        match result {
            Err(ApiError::Unprocessable {
                code,
                field: Some(field),
                ..
            }) => Some((code, field)),
            Ok(_) => None,
            Err(other) => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn members_are_checked_against_the_documented_schema() {
        let check = |body: Value| {
            field(object(
                body.to_string().as_bytes(),
                "SubscriptionIn",
                "invalid_body",
            ))
        };
        assert_eq!(
            check(json!({"endpoint": "https://example.com/", "events": ["asset-updated"]})),
            None
        );
        assert_eq!(
            check(
                json!({"endpoint": "https://example.com/", "events": ["asset-updated"], "orderBy": "entity"})
            ),
            Some(("unknown_member", "orderBy".to_owned()))
        );
        // Each destination type has its own members, the AWS options included.
        assert_eq!(
            check(
                json!({"destination": {"type": "sqs", "queueUrl": "q", "region": "eu-west-1", "roleArn": "r", "endpointUrl": "e"}, "events": ["asset-updated"]})
            ),
            None
        );
        assert_eq!(
            check(
                json!({"destination": {"type": "sqs", "queueUrl": "q", "streamName": "s"}, "events": ["asset-updated"]})
            ),
            Some(("unknown_member", "destination.streamName".to_owned()))
        );
        assert_eq!(
            check(
                json!({"destination": {"type": "webhook", "url": "https://example.com/", "region": "eu-west-1"}, "events": ["asset-updated"]})
            ),
            Some(("unknown_member", "destination.region".to_owned()))
        );
        // Rules between members (the document's oneOf/anyOf/allOf) add no member and
        // hide none (found by scripts/fuzz-api).
        let settings = |body: Value| {
            field(object(
                body.to_string().as_bytes(),
                "TokenVerificationIn",
                "invalid_settings",
            ))
        };
        assert_eq!(
            settings(
                json!({"audience": null, "hs256Secret": "s", "issuer": null, "leewaySeconds": 0, "publicKeys": []})
            ),
            None
        );
        assert_eq!(
            settings(json!({"hs256Secret": "s", "algorithm": "HS512"})),
            Some(("unknown_member", "algorithm".to_owned()))
        );
        // An unknown type is left to the destination's own reading.
        assert_eq!(
            check(json!({"destination": {"type": "pigeon"}, "events": ["asset-updated"]})),
            None
        );
    }

    #[test]
    fn an_integer_member_takes_any_json_notation_of_an_integer() {
        // Found by scripts/fuzz-api: JSON Schema's integers include `65585.0`.
        let replay = |value: Value| {
            typed::<super::super::subscriptions::ReplayIn>(value, "", "invalid_replay")
                .map(|replay| replay.from_sequence)
        };
        assert_eq!(
            replay(json!({"fromSequence": 65585.0})).unwrap(),
            Some(65585)
        );
        assert_eq!(replay(json!({"fromSequence": 7})).unwrap(), Some(7));
        assert_eq!(replay(json!({"fromSequence": null})).unwrap(), None);
        assert_eq!(replay(json!({})).unwrap(), None);
        for refused in [json!(1.5), json!(1e300), json!(u64::MAX), json!("7")] {
            assert!(
                matches!(
                    replay(json!({"fromSequence": refused})),
                    Err(ApiError::Unprocessable { field: Some(ref field), .. }) if field == "fromSequence"
                ),
                "{refused}"
            );
        }
    }

    #[test]
    fn a_typed_read_names_the_member_at_fault() {
        #[derive(Debug, serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        #[allow(dead_code)]
        struct Probe {
            from_sequence: i64,
            inner: Vec<Inner>,
        }
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct Inner {
            name: String,
        }
        let error = |value: Value| match typed::<Probe>(value, "", "invalid_probe") {
            Err(ApiError::Unprocessable { code, field, .. }) => (code, field),
            other => panic!("expected a 422, got {other:?}"),
        };
        assert_eq!(
            error(json!({"fromSequence": "one", "inner": []})),
            ("invalid_probe", Some("fromSequence".to_owned()))
        );
        assert_eq!(
            error(json!({"fromSequence": 1, "inner": [{"name": "a"}, {"name": 7}]})),
            ("invalid_probe", Some("inner[1].name".to_owned()))
        );
        assert_eq!(
            error(json!({"fromSequence": 1, "inner": [{}]})),
            ("invalid_probe", Some("inner[0].name".to_owned()))
        );
        assert_eq!(
            error(json!({"inner": []})),
            ("invalid_probe", Some("fromSequence".to_owned()))
        );
    }
}
