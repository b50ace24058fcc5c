//! The OpenAPI document of `GET /openapi.json`: generated from the handlers' own types
//! (utoipa), then made exact where the generator cannot be: request bodies closed
//! (`additionalProperties: false`, as [`super::body`] reads them), the statuses that
//! shared layers answer listed on every route, and the catalog's names and event types
//! filled in, so that a request the document describes is one the server accepts.

use std::sync::LazyLock;

use serde_json::{Map, Value, json};
use utoipa::OpenApi;

use super::admin::ApiDoc;
use super::body::{resolve, type_includes};
use crate::catalog::{Catalog, Envelope, FieldKind, FieldSpec};
use crate::sinks::destination::Destination;

/// The OpenAPI document as served: generated from the handlers' own types, then made
/// exact where the generator cannot be (see [`close_request_schemas`], [`add_responses`]).
static DOCUMENT: LazyLock<Value> = LazyLock::new(|| {
    let mut document = serde_json::to_value(ApiDoc::openapi()).unwrap_or(Value::Null);
    close_request_schemas(&mut document);
    open_free_form_members(&mut document);
    add_member_rules(&mut document);
    add_responses(&mut document);
    document
});

/// The OpenAPI document of `GET /openapi.json`.
pub fn document() -> &'static Value {
    &DOCUMENT
}

/// The document for a server with `catalog`: the static one, with the catalog's event
/// names, topics and entity types as the values the routes take, and the native event
/// envelope of each publishable type as the publish route's body.
pub fn with_catalog(catalog: &Catalog) -> Value {
    let mut document = document().clone();
    let names = |values: Vec<&str>| Value::Array(values.into_iter().map(Value::from).collect());
    let events = names(
        catalog
            .event_types
            .iter()
            .map(|t| t.name.as_str())
            .collect(),
    );
    let topics = names(catalog.topics().map(|t| t.name.as_str()).collect());
    let entity_types = names(catalog.entity_types());
    for (pointer, values) in [
        (
            "/components/schemas/SubscriptionIn/properties/events/items",
            &events,
        ),
        (
            "/components/schemas/SubscriptionIn/properties/topics/items",
            &topics,
        ),
        (
            "/components/schemas/SubscriptionIn/properties/resyncTypes/items",
            &entity_types,
        ),
        (
            "/components/schemas/ResyncIn/properties/types/items",
            &entity_types,
        ),
        ("/components/schemas/KeyIn/properties/events/items", &events),
        ("/components/schemas/KeyIn/properties/topics/items", &topics),
    ] {
        if let Some(Value::Object(schema)) = document.pointer_mut(pointer) {
            schema.insert("enum".into(), values.clone());
        }
    }
    for (path, method, name, required) in [
        ("/v1/accounts/{account}/entities", "get", "type", true),
        (
            "/v1/accounts/{account}/entities/{type}/{id}",
            "get",
            "type",
            true,
        ),
    ] {
        let pointer = format!("/paths/{}/{method}/parameters", path.replace('/', "~1"));
        if let Some(Value::Array(parameters)) = document.pointer_mut(&pointer) {
            for parameter in parameters.iter_mut().filter(|p| p["name"] == name) {
                parameter["required"] = Value::Bool(required);
                parameter["schema"] = json!({"type": "string", "enum": entity_types.clone()});
            }
        }
    }
    let pointer = "/paths/~1v1~1accounts~1{account}~1events/post/requestBody/content/application~1json/schema";
    if let Some(schema) = document.pointer_mut(pointer) {
        *schema = native_body(catalog);
    }
    document
}

/// One native event of each type the events route takes, or a non-empty array of them.
fn native_body(catalog: &Catalog) -> Value {
    let events: Vec<Value> = catalog
        .event_types
        .iter()
        .filter(|event_type| event_type.envelope == Envelope::Vimond)
        .map(|event_type| {
            let mut properties = Map::new();
            let mut required = vec![json!("eventName"), json!("guid"), json!("timestamp")];
            for field in catalog.base_fields.iter().chain(&event_type.optional) {
                properties.insert(field.name.clone(), field_schema(field));
            }
            for field in &event_type.required {
                properties.insert(field.name.clone(), field_schema(field));
                required.push(Value::from(field.name.as_str()));
            }
            properties.insert("eventName".into(), json!({"const": event_type.name}));
            // Any non-blank string but the form reserved for the log ids of CloudEvents.
            properties.insert(
                "guid".into(),
                json!({"type": "string", "pattern": "\\S", "not": {"pattern": "^ce_[0-9a-f]{16}_."}}),
            );
            // If present, the account of the path: left out, so as not to promise another.
            properties.remove("tenant");
            // A string `eventType` is one of the type's own.
            if !event_type.event_types.is_empty() {
                let own = properties.remove("eventType").unwrap_or_else(|| json!({}));
                properties.insert(
                    "eventType".into(),
                    json!({"allOf": [own, {"anyOf": [{"not": {"type": "string"}}, {"enum": event_type.event_types}]}]}),
                );
            }
            json!({
                "title": event_type.name,
                "type": "object",
                "properties": properties,
                "required": required,
                "description": "extra members are kept and delivered",
            })
        })
        .collect();
    let event = json!({"oneOf": events});
    json!({"oneOf": [event.clone(), {"type": "array", "minItems": 1, "items": event}]})
}

/// An integer the catalog takes: one that fits 64 bits (signed or unsigned).
fn integer() -> Value {
    json!({"type": "integer", "minimum": i64::MIN, "maximum": u64::MAX})
}

fn field_schema(field: &FieldSpec) -> Value {
    match field.kind {
        FieldKind::Id => json!({"oneOf": [{"type": "string", "pattern": "\\S"}, integer()]}),
        FieldKind::String => json!({"type": "string"}),
        FieldKind::Integer => integer(),
        FieldKind::Number => json!({"type": "number"}),
        FieldKind::Boolean => json!({"type": "boolean"}),
        FieldKind::Array => json!({"type": "array"}),
        FieldKind::Object => json!({"type": "object"}),
        FieldKind::Timestamp => json!({"type": "string", "format": "date-time"}),
        // A finite number, or a string holding one.
        FieldKind::Numeric => json!({"oneOf": [
            {"type": "number"},
            {"type": "string", "pattern": "^\\s*[-+]?([0-9]+\\.?[0-9]*|\\.[0-9]+)([eE][-+]?[0-9]{1,2})?\\s*$"},
        ]}),
        FieldKind::Any => json!({}),
    }
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

/// Members whose schema utoipa cannot write. A subscription's `filter` is an expression whose keys are the paths into the event
/// document it names: any member is its own (its grammar is checked when it is compiled,
/// `422 invalid_filter`), so its schema stays open where every other request object is
/// closed.
fn open_free_form_members(document: &mut Value) {
    if let Some(Value::Object(filter)) =
        document.pointer_mut("/components/schemas/SubscriptionIn/properties/filter")
    {
        filter.insert("additionalProperties".into(), Value::Bool(true));
        filter.remove("properties");
    }
    // Read as text by the handler (to give a wrong value its own code), one of two values.
    if let Some(signature) =
        document.pointer_mut("/components/schemas/SubscriptionIn/properties/signature")
    {
        let description = signature.get("description").cloned();
        *signature = json!({"type": "string", "enum": ["hmac", "ed25519"]});
        if let Some(description) = description {
            signature["description"] = description;
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

/// The rules between members that the handlers apply and the DTOs' types cannot say,
/// written into their schemas (JSON Schema 2020-12, as OpenAPI 3.1 takes it).
fn add_member_rules(document: &mut Value) {
    // Every destination but a webhook (the message buses too, not only AWS).
    let not_webhooks: Vec<&str> = Destination::TYPES
        .iter()
        .copied()
        .filter(|kind| *kind != "webhook")
        .collect();
    let not_webhook = json!({"required": ["type"], "properties": {"type": {"enum": not_webhooks}}});
    let rules = [
        (
            "SubscriptionIn",
            json!({"allOf": [
                // `endpoint` or `destination`, not both (a null member is an absent one).
                {"oneOf": [
                    {"required": ["endpoint"], "properties": {"endpoint": {"type": "string"}, "destination": {"type": "null"}}},
                    {"required": ["destination"], "properties": {"destination": {"type": "object"}, "endpoint": {"type": "null"}}},
                ]},
                // `events` and/or `topics`, not both empty.
                {"anyOf": [
                    {"required": ["events"], "properties": {"events": {"type": "array", "minItems": 1}}},
                    {"required": ["topics"], "properties": {"topics": {"type": "array", "minItems": 1}}},
                ]},
                // Binary CloudEvents and the validation handshake are for webhooks.
                {"not": {"required": ["destination", "format"],
                         "properties": {"destination": not_webhook.clone(), "format": {"const": "cloudevents-binary"}}}},
                {"not": {"required": ["destination", "validationHandshake"],
                         "properties": {"destination": not_webhook.clone(), "validationHandshake": {"const": true}}}},
                // `resyncTypes` goes with `"resync": true`.
                {"not": {"required": ["resyncTypes"],
                         "properties": {"resyncTypes": {"type": "array"}, "resync": {"not": {"const": true}}}}},
            ]}),
        ),
        (
            "ReplayIn",
            json!({"oneOf": [
                {"required": ["fromSequence"], "properties": {"fromSequence": {"type": "integer", "minimum": 1}, "since": {"type": "null"}}},
                {"required": ["since"], "properties": {"since": {"type": "string", "format": "date-time"}, "fromSequence": {"type": "null"}}},
            ]}),
        ),
        (
            "TokenVerificationIn",
            json!({"anyOf": [
                {"required": ["hs256Secret"], "properties": {"hs256Secret": {"type": "string"}}},
                {"required": ["publicKeys"], "properties": {"publicKeys": {"minItems": 1}}},
            ]}),
        ),
    ];
    for (name, rule) in rules {
        if let (Some(Value::Object(schema)), Value::Object(rule)) = (
            document.pointer_mut(&format!("/components/schemas/{name}")),
            rule,
        ) {
            schema.extend(rule);
        }
    }
    // Non-blank strings where the handlers refuse blank ones.
    for pointer in [
        "/components/schemas/TokenVerificationIn/properties/hs256Secret",
        "/components/schemas/CallbacksIn/properties/callbacks/items",
        "/components/schemas/SubscriptionIn/properties/endpoint",
    ] {
        if let Some(Value::Object(schema)) = document.pointer_mut(pointer) {
            schema.insert("minLength".into(), Value::from(1));
        }
    }
    if let Some(Value::Array(alternatives)) =
        document.pointer_mut("/components/schemas/Destination/oneOf")
    {
        for alternative in alternatives {
            for name in ["topicArn", "streamName", "queueUrl", "url"] {
                if let Some(Value::Object(schema)) =
                    alternative.pointer_mut(&format!("/properties/{name}"))
                {
                    schema.insert("pattern".into(), Value::from("\\S"));
                }
            }
        }
    }
}

/// The routes that publish events: their bodies are event documents, and they are the
/// ones a publish rate limit applies to.
const PUBLISH_ROUTES: [&str; 3] = [
    "/v1/accounts/{account}/events",
    "/v1/accounts/{account}/cloudevents",
    "/v1/accounts/{account}/jobs/{job}/notifications",
];

/// The statuses every route of a kind can answer, added to each operation that does not
/// list them itself: they come from layers all routes share (the bearer check, the
/// store, the body reader), not from one handler.
fn add_responses(document: &mut Value) {
    let Some(paths) = document.get_mut("paths").and_then(Value::as_object_mut) else {
        return;
    };
    for (path, item) in paths.iter_mut() {
        let Some(item) = item.as_object_mut() else {
            continue;
        };
        let publishes = PUBLISH_ROUTES.contains(&path.as_str());
        for (method, operation) in item.iter_mut() {
            let Some(operation) = operation.as_object_mut() else {
                continue;
            };
            let secured = operation.contains_key("security");
            let has_body = operation.contains_key("requestBody");
            let has_query = operation
                .get("parameters")
                .and_then(Value::as_array)
                .is_some_and(|parameters| parameters.iter().any(|p| p["in"] == "query"));
            let mut common: Vec<(&str, &str)> = Vec::new();
            if has_query {
                common.push((
                    "400",
                    "a query parameter is not of its type (`invalid_query`)",
                ));
            }
            if publishes && method == "post" {
                common.push((
                    "429",
                    "the key is over its publish rate (`--publish-rate-limit`); `Retry-After` says when to try again",
                ));
            }
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
        // Every destination type the server takes is documented, with its own members.
        let documented: Vec<&Value> = alternatives
            .iter()
            .map(|alternative| &alternative["properties"]["type"]["enum"][0])
            .collect();
        for kind in crate::model::Destination::TYPES {
            assert!(
                documented.contains(&&Value::from(*kind)),
                "{kind}: {destination}"
            );
        }
        for alternative in alternatives {
            assert_eq!(alternative["additionalProperties"], false, "{alternative}");
            assert!(alternative.get("allOf").is_none(), "{alternative}");
        }
        let create = &document["paths"]["/v1/accounts/{account}/subscriptions"]["post"];
        for status in ["201", "400", "401", "403", "413", "422", "503"] {
            assert!(create["responses"].get(status).is_some(), "{status}");
        }
        // Reads and replays from before retention: 410, with where the log is whole.
        for (path, method) in [
            ("/v1/accounts/{account}/events", "get"),
            ("/v1/accounts/{account}/subscriptions/{id}/replay", "post"),
        ] {
            let responses = &document["paths"][path][method]["responses"];
            assert!(responses.get("410").is_some(), "{path}: {responses}");
        }
        let detail = &document["components"]["schemas"]["ErrorDetail"]["properties"];
        assert!(detail.get("oldestSequence").is_some(), "{detail}");
        // The console's request bodies are closed too, and its routes list their statuses.
        for name in ["RedeliverIn", "PortalLinkIn", "PortalSessionIn"] {
            let schema = &document["components"]["schemas"][name];
            assert_eq!(schema["additionalProperties"], false, "{name}: {schema}");
        }
        let link = &document["paths"]["/v1/accounts/{account}/portal-links"]["post"];
        for status in ["201", "400", "401", "403", "413", "422", "503"] {
            assert!(link["responses"].get(status).is_some(), "{status}");
        }
        let exchange = &document["paths"]["/v1/portal-sessions"]["post"];
        assert!(
            exchange.get("security").is_none(),
            "the link is the credential"
        );
        assert!(exchange["responses"].get("401").is_some());
    }
}
