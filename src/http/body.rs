//! API request bodies read through their documented types. Every route that takes a JSON
//! body (not the event documents, whose extra members are kept and delivered) reads it
//! here: a member its schema does not know is refused (`422 unknown_member`, with `field`
//! naming it, e.g. `destination.streamName`) instead of being silently ignored, and a
//! member of the wrong type is named too. The schemas walked are those of the OpenAPI
//! document as served ([`document`]), so what it promises and what is accepted are one.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};
use utoipa::{OpenApi, ToSchema};

use super::admin::ApiDoc;
use super::error::ApiError;

/// The OpenAPI document as served: generated from the handlers' own types, then made
/// exact where the generator cannot be (see [`close_request_schemas`], [`add_responses`]).
static DOCUMENT: LazyLock<Value> = LazyLock::new(|| {
    let mut document = serde_json::to_value(ApiDoc::openapi()).unwrap_or(Value::Null);
    close_request_schemas(&mut document);
    add_responses(&mut document);
    document
});

/// The OpenAPI document of `GET /openapi.json`.
pub fn document() -> &'static Value {
    &DOCUMENT
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
    if let Some(field) = unknown_member(document(), &root, &value, "") {
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
    let alternatives: Vec<&Value> = ["oneOf", "anyOf"]
        .iter()
        .filter_map(|key| schema.get(*key).and_then(Value::as_array))
        .flatten()
        .collect();
    if !alternatives.is_empty() {
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
fn type_includes(type_member: Option<&Value>, kind: &str) -> bool {
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
    for part in parts.into_iter().flatten() {
        all.extend(properties(document, part)?);
    }
    Some(all)
}

/// `schema` with its `$ref`s followed (into `#/components/schemas/`).
fn resolve<'a>(document: &'a Value, mut schema: &'a Value) -> &'a Value {
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

/// Request bodies take no member their type does not declare, and the document says so
/// (`additionalProperties: false`), so that a client generated from it, or a fuzzer,
/// sends what is accepted. A flattened struct (an `allOf` of objects, e.g. the AWS
/// options of a destination) is merged into one object first: in JSON Schema each part
/// of an `allOf` would otherwise refuse the other parts' members.
fn close_request_schemas(document: &mut Value) {
    let mut names = Vec::new();
    let mut pending: Vec<Value> = document
        .pointer("/paths")
        .and_then(Value::as_object)
        .into_iter()
        .flat_map(|paths| paths.values())
        .filter_map(Value::as_object)
        .flat_map(|item| item.values())
        .filter_map(|operation| operation.pointer("/requestBody/content"))
        .filter_map(Value::as_object)
        .flat_map(|content| content.values())
        .filter_map(|media| media.get("schema").cloned())
        .collect();
    // Every component a request body reaches.
    while let Some(schema) = pending.pop() {
        collect_refs(&schema, &mut |name| {
            if !names.iter().any(|known: &String| known == name) {
                names.push(name.to_owned());
                if let Some(component) = document.pointer(&format!("/components/schemas/{name}")) {
                    pending.push(component.clone());
                }
            }
        });
    }
    let snapshot = document.clone();
    for name in names {
        if let Some(component) = document.pointer_mut(&format!("/components/schemas/{name}")) {
            close(&snapshot, component);
        }
    }
}

fn collect_refs(schema: &Value, found: &mut impl FnMut(&str)) {
    match schema {
        Value::Object(members) => {
            if let Some(name) = members
                .get("$ref")
                .and_then(Value::as_str)
                .and_then(|reference| reference.strip_prefix("#/components/schemas/"))
            {
                found(name);
            }
            members
                .values()
                .for_each(|value| collect_refs(value, found));
        }
        Value::Array(items) => items.iter().for_each(|item| collect_refs(item, found)),
        _ => {}
    }
}

fn close(document: &Value, schema: &mut Value) {
    let Value::Object(members) = schema else {
        return;
    };
    if let Some(Value::Array(parts)) = members.get("allOf") {
        let resolved: Vec<&Value> = parts.iter().map(|part| resolve(document, part)).collect();
        if resolved
            .iter()
            .all(|part| part.get("properties").is_some() && part.get("allOf").is_none())
        {
            let mut properties = Map::new();
            let mut required: Vec<Value> = Vec::new();
            for part in resolved {
                if let Some(Value::Object(own)) = part.get("properties") {
                    properties.extend(own.clone());
                }
                if let Some(Value::Array(names)) = part.get("required") {
                    required.extend(names.iter().cloned());
                }
            }
            members.remove("allOf");
            members.insert("type".into(), Value::String("object".into()));
            members.insert("properties".into(), Value::Object(properties));
            if !required.is_empty() {
                members.insert("required".into(), Value::Array(required));
            }
        }
    }
    // A struct without members (`KeyIn`) is generated as a bare object: it takes none.
    if type_includes(members.get("type"), "object")
        && !members.contains_key("properties")
        && matches!(
            members.get("additionalProperties"),
            None | Some(Value::Bool(false))
        )
    {
        members.insert("properties".into(), Value::Object(Map::new()));
    }
    if members.contains_key("properties") && !members.contains_key("additionalProperties") {
        members.insert("additionalProperties".into(), Value::Bool(false));
    }
    for key in ["properties"] {
        if let Some(Value::Object(properties)) = members.get_mut(key) {
            properties.values_mut().for_each(|p| close(document, p));
        }
    }
    for key in ["oneOf", "anyOf"] {
        if let Some(Value::Array(alternatives)) = members.get_mut(key) {
            alternatives.iter_mut().for_each(|a| close(document, a));
        }
    }
    if let Some(items) = members.get_mut("items") {
        close(document, items);
    }
}

/// The statuses every route of a kind can answer, added to each operation that does not
/// list them itself: they come from layers all routes share (the bearer check, the
/// store, the body reader), not from one handler.
fn add_responses(document: &mut Value) {
    let Some(paths) = document.get_mut("paths").and_then(Value::as_object_mut) else {
        return;
    };
    for item in paths.values_mut().filter_map(Value::as_object_mut) {
        for operation in item.values_mut().filter_map(Value::as_object_mut) {
            let secured = operation.contains_key("security");
            let has_body = operation.contains_key("requestBody");
            let mut common: Vec<(&str, &str)> = Vec::new();
            if secured {
                common.push((
                    "401",
                    "no bearer token, or not a valid one (`unauthorized`)",
                ));
                common.push((
                    "403",
                    "an account key used outside its account, or on an admin route (`forbidden`)",
                ));
                common.push(("503", "storage is unavailable (`storage_unavailable`)"));
            }
            if has_body {
                common.push((
                    "400",
                    "malformed JSON, with line and column (`malformed_json`)",
                ));
                common.push((
                    "413",
                    "the body is over the size limit (`payload_too_large`)",
                ));
                common.push((
                    "422",
                    "the body is not what this route takes: `unknown_member` names a member it does not know (`field`)",
                ));
            }
            let Some(responses) = operation
                .entry("responses")
                .or_insert_with(|| Value::Object(Map::new()))
                .as_object_mut()
            else {
                continue;
            };
            for (status, description) in common {
                responses.entry(status).or_insert_with(|| {
                    json!({
                        "description": description,
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
                    })
                });
            }
        }
    }
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
                json!({"endpoint": "https://example.com/", "events": ["asset-updated"], "signature": "ed25519"})
            ),
            Some(("unknown_member", "signature".to_owned()))
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
        // An unknown type is left to the destination's own reading.
        assert_eq!(
            check(json!({"destination": {"type": "pigeon"}, "events": ["asset-updated"]})),
            None
        );
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

    #[test]
    fn the_document_closes_request_bodies_and_lists_shared_statuses() {
        let document = document();
        let subscription = &document["components"]["schemas"]["SubscriptionIn"];
        assert_eq!(
            subscription["additionalProperties"], false,
            "{subscription}"
        );
        let destination = &document["components"]["schemas"]["Destination"];
        let alternatives = destination["oneOf"].as_array().expect("a oneOf");
        for alternative in alternatives {
            assert_eq!(alternative["additionalProperties"], false, "{alternative}");
            assert!(alternative.get("allOf").is_none(), "{alternative}");
        }
        let create = &document["paths"]["/v1/accounts/{account}/subscriptions"]["post"];
        for status in ["201", "400", "401", "403", "413", "422", "503"] {
            assert!(create["responses"].get(status).is_some(), "{status}");
        }
    }
}
