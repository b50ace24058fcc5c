//! CloudEvents 1.0 over HTTP, as Zapp apps send them (seed 002): the structured, binary
//! and batch content modes of the HTTP protocol binding, to events.
//!
//! Pure: request headers and bytes in, [`Incoming`] events out. Each event keeps the
//! publisher's attributes and data (member order and value text included) and is stored
//! in the structured JSON form, also when it arrived in binary mode. The user token of
//! `data.userIdentifier` is taken out of the event here, into a [`UserToken`]; what
//! replaces it (a verified subject, or a keyed hash) is the caller's decision, given to
//! [`Incoming::into_event`]. So an event can only reach the log without its token.

use std::collections::HashSet;
use std::fmt;

use axum::http::HeaderMap;
use axum::http::header::CONTENT_TYPE;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::IngestError;
use super::user_token::UserToken;
use crate::catalog::{Catalog, Envelope};
use crate::model::{Document, Millis, NewEvent, cloudevent_id};

/// The structured content mode's media type.
pub const STRUCTURED: &str = "application/cloudevents+json";
/// The batch content mode's media type.
pub const BATCH: &str = "application/cloudevents-batch+json";

/// The `data` member that carries the user's access token (seed 002).
const USER_FIELD: &str = "userIdentifier";

/// How a request carried its events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// One event as a JSON object (`application/cloudevents+json`, or plain JSON).
    Structured,
    /// Attributes in `ce-*` headers, the data in the body.
    Binary,
    /// A JSON array of structured events (`application/cloudevents-batch+json`).
    Batch,
}

/// A member of a JSON object: its name and its value's text as written.
type Member = (String, Box<RawValue>);

/// One accepted CloudEvent, not yet an event of the log: its user token is held apart.
#[derive(Debug)]
pub struct Incoming {
    /// Position in a batch (`None` for a single event).
    pub index: Option<usize>,
    /// The publisher's `id`.
    pub id: String,
    pub source: String,
    /// The `type`: the catalog event name.
    pub name: String,
    pub topic: String,
    pub entity_key: Option<String>,
    /// The video the event changes (its type's `videoChange`).
    pub video: Option<String>,
    /// The catalog entity the event sets or deletes (its type's `entity`).
    pub entity: Option<crate::model::EntityChange>,
    /// `time`, when the event has one.
    pub occurred_at: Option<Millis>,
    /// The structured event's members, in order. When `data` is an object its value
    /// here is a placeholder, and its members are in `data`.
    members: Vec<Member>,
    data: Option<Vec<Member>>,
    /// Where `userIdentifier` was in `data` (its value there is a placeholder).
    user_slot: Option<usize>,
    user: Option<UserToken>,
}

impl Incoming {
    /// Takes the user token out (once): the caller verifies or hashes it.
    pub fn take_user_token(&mut self) -> Option<UserToken> {
        self.user.take()
    }

    /// Whether the event has a `data.userIdentifier`.
    pub fn has_user(&self) -> bool {
        self.user_slot.is_some()
    }

    /// The log entry: the event in structured JSON form with `data.userIdentifier` set
    /// to `user` (JSON `null` when `None`), never to the token it arrived with.
    pub fn into_event(self, account: &str, user: Option<&str>, now: Millis) -> NewEvent {
        let mut text = String::with_capacity(256);
        text.push('{');
        for (at, (name, value)) in self.members.iter().enumerate() {
            if at > 0 {
                text.push(',');
            }
            push_json_string(&mut text, name);
            text.push(':');
            match (name.as_str(), &self.data) {
                ("data", Some(members)) => {
                    text.push('{');
                    for (at, (name, value)) in members.iter().enumerate() {
                        if at > 0 {
                            text.push(',');
                        }
                        push_json_string(&mut text, name);
                        text.push(':');
                        if Some(at) == self.user_slot {
                            match user {
                                Some(user) => push_json_string(&mut text, user),
                                None => text.push_str("null"),
                            }
                        } else {
                            text.push_str(value.get());
                        }
                    }
                    text.push('}');
                }
                _ => text.push_str(value.get()),
            }
        }
        text.push('}');
        NewEvent {
            account: account.to_owned(),
            id: cloudevent_id(&self.source, &self.id),
            name: self.name,
            topic: self.topic,
            entity_key: self.entity_key,
            video: self.video,
            entity: self.entity,
            occurred_at: self.occurred_at.unwrap_or(now),
            body: Document::from(text),
            trace: None,
        }
    }
}

/// Parses a request to the CloudEvents endpoint. The first invalid event refuses the
/// whole request.
pub fn parse(
    catalog: &Catalog,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<(Mode, Vec<Incoming>), IngestError> {
    let content_type = match headers.get(CONTENT_TYPE) {
        Some(value) => Some(value.to_str().map_err(|_| {
            IngestError::UnsupportedMediaType("the Content-Type header is not ASCII".into())
        })?),
        None => None,
    };
    let media = content_type.map(media_type);
    let has_ce_headers = headers.keys().any(|name| name.as_str().starts_with("ce-"));
    match media.as_deref() {
        Some(STRUCTURED) => structured(catalog, body),
        Some(BATCH) => batch(catalog, body),
        Some(other) if other.starts_with("application/cloudevents") => {
            Err(IngestError::UnsupportedMediaType(format!(
                "{other:?} is not supported: events are JSON ({STRUCTURED} or {BATCH})"
            )))
        }
        _ if has_ce_headers => binary(catalog, headers, content_type, body),
        // Plain JSON without `ce-*` headers: a structured event or a batch, as apps that
        // set only `Content-Type: application/json` send them.
        None => plain_json(catalog, body),
        Some(media) if is_json(media) => plain_json(catalog, body),
        Some(media) => Err(IngestError::UnsupportedMediaType(format!(
            "{media:?} without ce-* headers is not a CloudEvent: send {STRUCTURED} \
             (structured), {BATCH} (batch), or ce-specversion, ce-id, ce-source and \
             ce-type headers (binary)"
        ))),
    }
}

fn plain_json(catalog: &Catalog, body: &Bytes) -> Result<(Mode, Vec<Incoming>), IngestError> {
    match body.iter().find(|byte| !byte.is_ascii_whitespace()) {
        Some(b'[') => batch(catalog, body),
        _ => structured(catalog, body),
    }
}

fn structured(catalog: &Catalog, body: &Bytes) -> Result<(Mode, Vec<Incoming>), IngestError> {
    let members = object_members(body)?;
    let event = validate(catalog, members, None).map_err(single_invalid)?;
    Ok((Mode::Structured, vec![event]))
}

/// A single event's refusal: the field at fault and why.
fn single_invalid((field, message): (String, String)) -> IngestError {
    IngestError::Invalid {
        index: None,
        field,
        message,
    }
}

fn batch(catalog: &Catalog, body: &Bytes) -> Result<(Mode, Vec<Incoming>), IngestError> {
    let items: Vec<&RawValue> = serde_json::from_slice(body).map_err(|error| {
        if error.is_data() {
            IngestError::Invalid {
                index: None,
                field: String::new(),
                message: "a batch must be a JSON array of CloudEvent objects".into(),
            }
        } else {
            malformed(error)
        }
    })?;
    if items.is_empty() {
        return Err(IngestError::Empty);
    }
    let events = items
        .into_iter()
        .enumerate()
        .map(|(index, raw)| {
            let invalid = |field: String, message: String| IngestError::Invalid {
                index: Some(index),
                field,
                message,
            };
            let Ok(Members(members)) = serde_json::from_str(raw.get()) else {
                return Err(invalid(
                    String::new(),
                    "each item of a batch must be a CloudEvent object".into(),
                ));
            };
            validate(catalog, members, Some(index)).map_err(|(f, m)| invalid(f, m))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((Mode::Batch, events))
}

/// Binary mode: `ce-*` headers are the attributes (percent-encoded, as the binding
/// says), `Content-Type` is `datacontenttype`, the body is `data`. The event is rebuilt
/// in structured form, attributes first, so the log holds one shape whatever the mode.
fn binary(
    catalog: &Catalog,
    headers: &HeaderMap,
    content_type: Option<&str>,
    body: &Bytes,
) -> Result<(Mode, Vec<Incoming>), IngestError> {
    let invalid = |field: &str, message: String| IngestError::Invalid {
        index: None,
        field: field.to_owned(),
        message,
    };
    let mut attributes: Vec<(String, String)> = Vec::new();
    for name in headers.keys() {
        let Some(attribute) = name.as_str().strip_prefix("ce-") else {
            continue;
        };
        let mut values = headers.get_all(name).iter();
        let (Some(value), None) = (values.next(), values.next()) else {
            return Err(invalid(
                attribute,
                format!("header {name} is given more than once"),
            ));
        };
        if attribute == "datacontenttype" {
            return Err(invalid(
                attribute,
                "in binary mode datacontenttype is the Content-Type header, not ce-datacontenttype"
                    .into(),
            ));
        }
        let value = value
            .to_str()
            .ok()
            .and_then(percent_decode)
            .ok_or_else(|| {
                invalid(
                    attribute,
                    format!("header {name} is not percent-encoded UTF-8"),
                )
            })?;
        attributes.push((attribute.to_owned(), value));
    }
    // The required and the known attributes first, in the order of the spec, then the
    // extensions in header order.
    let rank = |name: &str| {
        [
            "specversion",
            "id",
            "source",
            "type",
            "subject",
            "time",
            "dataschema",
        ]
        .iter()
        .position(|known| *known == name)
        .unwrap_or(usize::MAX)
    };
    attributes.sort_by_key(|(name, _)| rank(name));
    let mut members: Vec<Member> = attributes
        .into_iter()
        .map(|(name, value)| (name, json_string(&value)))
        .collect();
    if let Some(content_type) = content_type {
        members.push(("datacontenttype".into(), json_string(content_type)));
    }
    let text = std::str::from_utf8(body).ok();
    let media = content_type.map(media_type);
    if !body.iter().all(u8::is_ascii_whitespace) {
        match media.as_deref() {
            // No Content-Type: JSON, as in the JSON event format.
            None => members.push(("data".into(), json_body(body)?)),
            Some(media) if is_json(media) => members.push(("data".into(), json_body(body)?)),
            Some(media) if is_text(media, content_type) => {
                let text = text.ok_or_else(|| {
                    invalid(
                        "data",
                        format!("the body is declared {media} but is not UTF-8"),
                    )
                })?;
                members.push(("data".into(), json_string(text)));
            }
            Some(_) => members.push(("data_base64".into(), json_string(&STANDARD.encode(body)))),
        }
    }
    let event = validate(catalog, members, None).map_err(single_invalid)?;
    Ok((Mode::Binary, vec![event]))
}

/// A JSON body as `data`: checked for syntax (with its position when malformed).
fn json_body(body: &Bytes) -> Result<Box<RawValue>, IngestError> {
    let raw: &RawValue = serde_json::from_slice(body).map_err(malformed)?;
    Ok(raw.to_owned())
}

/// The members of a body that must be one JSON object.
fn object_members(body: &Bytes) -> Result<Vec<Member>, IngestError> {
    match serde_json::from_slice::<Members>(body) {
        Ok(Members(members)) => Ok(members),
        Err(error) if error.is_data() => Err(IngestError::Invalid {
            index: None,
            field: String::new(),
            message: "a structured CloudEvent must be a JSON object".into(),
        }),
        Err(error) => Err(malformed(error)),
    }
}

/// The CloudEvents type system's checks on one event's members, then the catalog's on
/// its data. On failure: the attribute (or `data.<field>`) and why.
fn validate(
    catalog: &Catalog,
    mut members: Vec<Member>,
    index: Option<usize>,
) -> Result<Incoming, (String, String)> {
    let fail = |field: &str, message: String| Err((field.to_owned(), message));
    let mut seen = HashSet::new();
    let mut attributes = Map::new();
    for (name, value) in &members {
        if !seen.insert(name.as_str()) {
            return fail(name, format!("attribute {name:?} appears more than once"));
        }
        let valid_name = name == "data_base64"
            || (!name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()));
        if !valid_name {
            return fail(
                name,
                format!(
                    "{name:?} is not a CloudEvents attribute name (lower-case letters and digits only)"
                ),
            );
        }
        if name == "data" {
            continue;
        }
        let value: Value = serde_json::from_str(value.get())
            .map_err(|_| (name.clone(), format!("attribute {name:?} is not JSON")))?;
        // A null attribute is an absent one (JSON event format).
        if !value.is_null() {
            attributes.insert(name.clone(), value);
        }
    }
    let string = |name: &str, required: bool| -> Result<Option<String>, (String, String)> {
        match attributes.get(name) {
            Some(Value::String(text)) if !text.is_empty() => Ok(Some(text.clone())),
            Some(_) => Err((
                name.to_owned(),
                format!("attribute {name:?} must be a non-empty string"),
            )),
            None if required => Err((name.to_owned(), format!("attribute {name:?} is required"))),
            None => Ok(None),
        }
    };
    match string("specversion", true)?.as_deref() {
        Some("1.0") => {}
        other => {
            return fail(
                "specversion",
                format!(
                    "specversion must be \"1.0\" (CloudEvents 1.0), not {:?}",
                    other.unwrap_or_default()
                ),
            );
        }
    }
    let id = string("id", true)?.unwrap_or_default();
    let source = string("source", true)?.unwrap_or_default();
    let name = string("type", true)?.unwrap_or_default();
    string("subject", false)?;
    string("datacontenttype", false)?;
    string("dataschema", false)?;
    let occurred_at = match string("time", false)? {
        Some(time) => match chrono::DateTime::parse_from_rfc3339(&time) {
            Ok(time) => Some(time.timestamp_millis()),
            Err(_) => {
                return fail(
                    "time",
                    format!("{time:?} is not an RFC 3339 time such as 2021-04-12T23:20:50.52Z"),
                );
            }
        },
        None => None,
    };
    if let Some(encoded) = string("data_base64", false)? {
        if seen.contains("data") {
            return fail(
                "data_base64",
                "an event has data or data_base64, not both".into(),
            );
        }
        if STANDARD.decode(&encoded).is_err() {
            return fail("data_base64", "data_base64 is not base64".into());
        }
    }
    for (name, value) in &attributes {
        let known = matches!(
            name.as_str(),
            "specversion"
                | "id"
                | "source"
                | "type"
                | "subject"
                | "time"
                | "datacontenttype"
                | "dataschema"
                | "data_base64"
        );
        let scalar = value.is_string() || value.is_number() || value.is_boolean();
        if !known && !scalar {
            return fail(
                name,
                format!("extension attribute {name:?} must be a string, a number or a boolean"),
            );
        }
    }
    let Some(event_type) = catalog.event_type(&name) else {
        return fail(
            "type",
            format!("{name:?} is not an event type in the catalog (see GET /v1/catalog)"),
        );
    };
    // Vimond types may come as CloudEvents (their fields in `data`); a Dynamic Ingest
    // notification's job comes from its path, and a derived event is never published.
    if matches!(
        event_type.envelope,
        Envelope::Brightcove | Envelope::Derived
    ) {
        return fail(
            "type",
            format!(
                "{name:?} is not accepted here: {}",
                event_type.envelope.how_published()
            ),
        );
    }

    // The data: when an object, its members are kept in order and checked against the
    // catalog type's fields.
    let data_at = members.iter().position(|(name, _)| name == "data");
    let mut data = None;
    let mut payload = Map::new();
    if let Some(at) = data_at
        && let Ok(Members(data_members)) = serde_json::from_str(members[at].1.get())
    {
        let mut seen = HashSet::new();
        for (field, value) in &data_members {
            if !seen.insert(field.as_str()) {
                return fail(
                    &format!("data.{field}"),
                    format!("data member {field:?} appears more than once"),
                );
            }
            // A member of a valid JSON object is valid JSON.
            let value: Value = serde_json::from_str(value.get()).unwrap_or(Value::Null);
            payload.insert(field.clone(), value);
        }
        members[at].1 = placeholder();
        data = Some(data_members);
    }
    // Checked before the catalog, whose messages show the value at fault: a token's
    // value must never be written back out, not even in an error.
    if payload
        .get(USER_FIELD)
        .is_some_and(|user| !user.is_string())
    {
        return fail(
            &format!("data.{USER_FIELD}"),
            format!("data.{USER_FIELD} must be a string (the user's access token)"),
        );
    }
    event_type
        .check_fields(&payload)
        .map_err(|(field, message)| (format!("data.{field}"), message))?;
    let entity_key = event_type.entity_key_of(&payload);
    let video = event_type.changed_video(&payload);
    let entity = event_type.entity_change(&payload);
    let (user_slot, user) = match &mut data {
        Some(data_members) => match data_members.iter().position(|(f, _)| f == USER_FIELD) {
            Some(at) => {
                let token = match payload.remove(USER_FIELD) {
                    Some(Value::String(token)) => token,
                    _ => String::new(),
                };
                data_members[at].1 = placeholder();
                (Some(at), Some(UserToken::new(token)))
            }
            None => (None, None),
        },
        None => (None, None),
    };
    Ok(Incoming {
        index,
        id,
        source,
        name,
        topic: event_type.topic.clone(),
        entity_key,
        video,
        entity,
        occurred_at,
        members,
        data,
        user_slot,
        user,
    })
}

/// Stands in for a value kept elsewhere (the data object, the token).
fn placeholder() -> Box<RawValue> {
    RawValue::from_string("null".into()).unwrap_or_else(|_| unreachable!("null is JSON"))
}

fn json_string(text: &str) -> Box<RawValue> {
    // A string always serializes, and the result is JSON.
    let json = serde_json::to_string(text).unwrap_or_else(|_| "\"\"".into());
    RawValue::from_string(json).unwrap_or_else(|_| placeholder())
}

fn push_json_string(out: &mut String, text: &str) {
    out.push_str(&serde_json::to_string(text).unwrap_or_else(|_| "\"\"".into()));
}

/// `type/subtype` of a Content-Type, lower-cased, without parameters.
pub(crate) fn media_type(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

/// JSON data: `…/json` or `…/…+json`, whatever the type before the slash, so seed 002's
/// misspelt `applicastion/json` counts.
pub(crate) fn is_json(media: &str) -> bool {
    media
        .split_once('/')
        .is_some_and(|(_, subtype)| subtype == "json" || subtype.ends_with("+json"))
}

/// Text data, kept as a JSON string.
fn is_text(media: &str, content_type: Option<&str>) -> bool {
    media.starts_with("text/")
        || media.ends_with("/xml")
        || media.ends_with("+xml")
        || content_type.is_some_and(|c| c.to_ascii_lowercase().contains("charset="))
}

/// Decodes the binding's percent-encoding of header values (`%XX`, UTF-8).
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        if bytes[at] == b'%' {
            let hex = text.get(at + 1..at + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            at += 3;
        } else {
            out.push(bytes[at]);
            at += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn malformed(error: serde_json::Error) -> IngestError {
    IngestError::Malformed {
        line: error.line(),
        column: error.column(),
        message: error.to_string(),
    }
}

/// A JSON object's members in document order, each value's text as written (serde_json's
/// map sorts its keys and re-formats values; the log keeps what the publisher sent).
struct Members(Vec<Member>);

impl<'de> Deserialize<'de> for Members {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Members, D::Error> {
        struct MembersVisitor;

        impl<'de> Visitor<'de> for MembersVisitor {
            type Value = Members;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Members, A::Error> {
                let mut members = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some(member) = map.next_entry::<String, Box<RawValue>>()? {
                    members.push(member);
                }
                Ok(Members(members))
            }
        }

        deserializer.deserialize_map(MembersVisitor)
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;
    use serde_json::json;

    use super::*;

    fn catalog() -> Catalog {
        Catalog::builtin()
    }

    fn started(id: &str) -> Value {
        json!({
            "specversion": "1.0",
            "type": "com.applicaster.video.started.v1",
            "source": "zapp://com.example.tv/versions/6.1.6",
            "subject": "Watched video segment 2021-04-12T23:20:50.52Z progress:0 v-1",
            "id": id,
            "time": "2021-04-12T23:20:50.52Z",
            "datacontenttype": "applicastion/json",
            "data": {"userIdentifier": "token-1", "videoId": "v-1", "secondsFromStart": "0",
                     "progress": 0, "status": "VIDEO_STARTED"}
        })
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(
                axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        headers
    }

    fn structured_body(body: &str) -> Result<(Mode, Vec<Incoming>), IngestError> {
        parse(
            &catalog(),
            &headers(&[(
                "content-type",
                "application/cloudevents+json; charset=utf-8",
            )]),
            &Bytes::copy_from_slice(body.as_bytes()),
        )
    }

    fn invalid(result: Result<(Mode, Vec<Incoming>), IngestError>) -> (Option<usize>, String) {
        match result {
            Err(IngestError::Invalid { index, field, .. }) => (index, field),
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    fn stored(mut event: Incoming, user: Option<&str>) -> (NewEvent, Value) {
        let _ = event.take_user_token();
        let event = event.into_event("zapp", user, 7);
        let document = serde_json::from_str(event.body.as_str()).unwrap();
        (event, document)
    }

    #[test]
    fn a_structured_event_is_kept_with_its_token_taken_out() {
        let (mode, mut events) = structured_body(&started("e-1").to_string()).unwrap();
        assert_eq!(mode, Mode::Structured);
        let mut event = events.remove(0);
        assert_eq!(event.take_user_token().unwrap().expose(), "token-1");
        assert!(event.take_user_token().is_none(), "taken once");
        assert!(!format!("{event:?}").contains("token-1"));
        let (stored, document) = stored(event, Some("uid_x"));
        assert_eq!(stored.name, "com.applicaster.video.started.v1");
        assert_eq!(stored.topic, "app-playback");
        assert_eq!(stored.entity_key.as_deref(), Some("v-1"));
        assert_eq!(stored.occurred_at, 1_618_269_650_520);
        assert_eq!(
            stored.id,
            cloudevent_id("zapp://com.example.tv/versions/6.1.6", "e-1")
        );
        let mut expected = started("e-1");
        expected["data"]["userIdentifier"] = json!("uid_x");
        assert_eq!(document, expected);
        assert!(!stored.body.as_str().contains("token-1"));
    }

    #[test]
    fn member_order_and_value_text_are_the_publishers() {
        let text = r#"{"type": "com.applicaster.favorites.removed.v1", "specversion": "1.0",
            "source": "s", "id": "o-1", "data": {"entryId": 12, "userIdentifier": "t", "z": 1.50}}"#;
        let (_, mut events) = structured_body(text).unwrap();
        let (stored, _) = stored(events.remove(0), Some("u"));
        assert_eq!(
            stored.body.as_str(),
            r#"{"type":"com.applicaster.favorites.removed.v1","specversion":"1.0","source":"s","id":"o-1","data":{"entryId":12,"userIdentifier":"u","z":1.50}}"#
        );
    }

    #[test]
    fn without_a_replacement_the_token_becomes_null() {
        let (_, mut events) = structured_body(&started("e-1").to_string()).unwrap();
        let (_, document) = stored(events.remove(0), None);
        assert_eq!(document["data"]["userIdentifier"], Value::Null);
    }

    #[test]
    fn binary_mode_builds_the_structured_form() {
        let body = r#"{"userIdentifier": "token-2", "entryId": "e-9", "key1": "some info1"}"#;
        let (mode, mut events) = parse(
            &catalog(),
            &headers(&[
                ("ce-specversion", "1.0"),
                ("ce-id", "b-1"),
                ("ce-source", "zapp%3A%2F%2Fcom.example%2Fversions%2F1"),
                ("ce-type", "com.applicaster.favorites.added.v1"),
                ("ce-subject", "e-9 added to favorites"),
                ("ce-time", "2024-06-07T14:27:16.035+02:00"),
                ("ce-appversion", "9.0%25"),
                ("content-type", "applicastion/json"),
            ]),
            &Bytes::copy_from_slice(body.as_bytes()),
        )
        .unwrap();
        assert_eq!(mode, Mode::Binary);
        let mut event = events.remove(0);
        assert_eq!(event.take_user_token().unwrap().expose(), "token-2");
        let (stored, document) = stored(event, Some("sub-1"));
        assert_eq!(
            document,
            json!({"specversion": "1.0", "id": "b-1", "source": "zapp://com.example/versions/1",
                   "type": "com.applicaster.favorites.added.v1", "subject": "e-9 added to favorites",
                   "time": "2024-06-07T14:27:16.035+02:00", "appversion": "9.0%",
                   "datacontenttype": "applicastion/json",
                   "data": {"userIdentifier": "sub-1", "entryId": "e-9", "key1": "some info1"}})
        );
        assert_eq!(stored.entity_key.as_deref(), Some("e-9"));
        assert!(
            stored
                .body
                .as_str()
                .starts_with("{\"specversion\":\"1.0\",\"id\":\"b-1\"")
        );
    }

    #[test]
    fn binary_data_that_is_not_json_is_a_string_or_base64() {
        let base = [
            ("ce-specversion", "1.0"),
            ("ce-id", "b-2"),
            ("ce-source", "/s"),
            ("ce-type", "vmfm-video-file-deleted"),
        ];
        let with = |content_type: &str, body: &'static [u8]| {
            let mut pairs = base.to_vec();
            pairs.push(("content-type", content_type));
            let (_, mut events) =
                parse(&catalog(), &headers(&pairs), &Bytes::from_static(body)).unwrap();
            stored(events.remove(0), None).1
        };
        assert_eq!(with("text/plain", b"hello")["data"], "hello");
        assert_eq!(
            with("application/octet-stream", b"\x00\xff")["data_base64"],
            "AP8="
        );
        // No data at all.
        let (_, mut events) = parse(&catalog(), &headers(&base), &Bytes::new()).unwrap();
        let (_, document) = stored(events.remove(0), None);
        assert!(document.get("data").is_none());
    }

    #[test]
    fn a_batch_is_refused_whole_naming_the_item_and_field() {
        let mut bad = started("b-2");
        bad["data"].as_object_mut().unwrap().remove("videoId");
        let body = json!([started("b-1"), bad]).to_string();
        let result = parse(
            &catalog(),
            &headers(&[("content-type", BATCH)]),
            &Bytes::from(body),
        );
        assert_eq!(invalid(result), (Some(1), "data.videoId".into()));

        let body = json!([started("b-1"), started("b-2")]).to_string();
        let (mode, events) = parse(
            &catalog(),
            &headers(&[("content-type", BATCH)]),
            &Bytes::from(body),
        )
        .unwrap();
        assert_eq!((mode, events.len()), (Mode::Batch, 2));
        assert_eq!(events[1].index, Some(1));
        assert_eq!(
            parse(
                &catalog(),
                &headers(&[("content-type", BATCH)]),
                &Bytes::from_static(b"[]")
            )
            .err(),
            Some(IngestError::Empty)
        );
    }

    #[test]
    fn plain_json_is_read_as_structured_or_batch() {
        let body = Bytes::from(started("p-1").to_string());
        let (mode, _) = parse(
            &catalog(),
            &headers(&[("content-type", "application/json")]),
            &body,
        )
        .unwrap();
        assert_eq!(mode, Mode::Structured);
        let body = Bytes::from(json!([started("p-1")]).to_string());
        let (mode, _) = parse(&catalog(), &HeaderMap::new(), &body).unwrap();
        assert_eq!(mode, Mode::Batch);
        assert!(matches!(
            parse(
                &catalog(),
                &headers(&[("content-type", "text/plain")]),
                &Bytes::from_static(b"hi")
            ),
            Err(IngestError::UnsupportedMediaType(_))
        ));
        assert!(matches!(
            parse(
                &catalog(),
                &headers(&[("content-type", "application/cloudevents+avro")]),
                &Bytes::from_static(b"x")
            ),
            Err(IngestError::UnsupportedMediaType(_))
        ));
    }

    #[test]
    fn every_attribute_rule_names_its_field() {
        let check = |change: &dyn Fn(&mut Map<String, Value>)| {
            let mut event = started("r-1");
            change(event.as_object_mut().unwrap());
            invalid(structured_body(&event.to_string())).1
        };
        assert_eq!(
            check(&|e| {
                e.remove("specversion");
            }),
            "specversion"
        );
        assert_eq!(
            check(&|e| {
                e.insert("specversion".into(), json!("0.3"));
            }),
            "specversion"
        );
        assert_eq!(
            check(&|e| {
                e.remove("id");
            }),
            "id"
        );
        assert_eq!(
            check(&|e| {
                e.insert("id".into(), json!(""));
            }),
            "id"
        );
        assert_eq!(
            check(&|e| {
                e.insert("id".into(), json!(5));
            }),
            "id"
        );
        assert_eq!(
            check(&|e| {
                e.remove("source");
            }),
            "source"
        );
        assert_eq!(
            check(&|e| {
                e.remove("type");
            }),
            "type"
        );
        assert_eq!(
            check(&|e| {
                e.insert("type".into(), json!("com.example.nope"));
            }),
            "type"
        );
        assert_eq!(
            check(&|e| {
                e.insert("time".into(), json!("yesterday"));
            }),
            "time"
        );
        assert_eq!(
            check(&|e| {
                e.insert("Bad_Name".into(), json!("x"));
            }),
            "Bad_Name"
        );
        assert_eq!(
            check(&|e| {
                e.insert("ext".into(), json!({"a": 1}));
            }),
            "ext"
        );
        assert_eq!(
            check(&|e| {
                e.insert("data_base64".into(), json!("AA=="));
            }),
            "data_base64"
        );
        assert_eq!(
            check(&|e| {
                e["data"]["userIdentifier"] = json!({"token": "t"});
            }),
            "data.userIdentifier"
        );
        assert_eq!(
            check(&|e| {
                e["data"]["progress"] = json!("half");
            }),
            "data.progress"
        );
        assert_eq!(
            check(&|e| {
                e["data"]["secondsFromStart"] = json!("soon");
            }),
            "data.secondsFromStart"
        );
        // A null optional attribute is an absent one; extensions are kept.
        let mut event = started("r-2");
        event["subject"] = Value::Null;
        event["partitionkey"] = json!("user-1");
        event["data"]["secondsFromStart"] = json!(12.5);
        let (_, mut events) = structured_body(&event.to_string()).unwrap();
        let (_, document) = stored(events.remove(0), None);
        assert_eq!(document["partitionkey"], "user-1");
        // Duplicate members are refused: which one would be the token?
        let twice = r#"{"specversion":"1.0","id":"d","source":"s","type":"com.applicaster.favorites.added.v1",
            "data":{"userIdentifier":"a","entryId":"1","userIdentifier":"b"}}"#;
        assert_eq!(
            invalid(structured_body(twice)),
            (None, "data.userIdentifier".into())
        );
    }

    #[test]
    fn malformed_json_gets_its_position() {
        match structured_body("{\"specversion\": \"1.0\",\n \"id\": }") {
            Err(IngestError::Malformed {
                line: 2, column, ..
            }) => assert!(column > 0),
            other => panic!("expected Malformed at line 2, got {other:?}"),
        }
        assert!(matches!(
            parse(
                &catalog(),
                &headers(&[
                    ("ce-specversion", "1.0"),
                    ("content-type", "application/json")
                ]),
                &Bytes::from_static(b"{nope")
            ),
            Err(IngestError::Malformed { .. })
        ));
        assert_eq!(invalid(structured_body("[1]")).0, None);
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%20b%C3%A9").as_deref(), Some("a bé"));
        assert_eq!(percent_decode("100%"), None);
        assert_eq!(percent_decode("%ZZ"), None);
    }
}
