//! The CloudEvents delivery formats: a stored event as a CloudEvent 1.0, in the
//! structured JSON mode (format `cloudevents`) or the binary HTTP mode
//! (`cloudevents-binary`). Pure functions of the stored event, and the one place that
//! maps Reelay's events to CloudEvents attributes (the README shows the same table):
//!
//! | attribute         | a Vimond (native) event                      | an event that arrived as a CloudEvent |
//! |-------------------|----------------------------------------------|---------------------------------------|
//! | `specversion`     | `1.0`                                        | its own                               |
//! | `id`              | the `guid`                                   | its own (its log id is `ce_<h>_<id>`) |
//! | `source`          | `/reelay/accounts/{account}/topics/{topic}`  | its own                               |
//! | `type`            | the event name, e.g. `asset-updated`         | its own (the catalog name)            |
//! | `time`            | when it happened, RFC 3339 in UTC            | its own, when it has one              |
//! | `subject`         | the entity key, when the type has one        | its own, when it has one              |
//! | `datacontenttype` | `application/json`                           | its own, when it has one              |
//! | `data`            | the stored document, byte for byte           | its own `data` (or `data_base64`)     |
//! | `reelaysequence`  | the log sequence number, a decimal string    | the same                              |
//! | `reelaytopic`     | the event's topic                            | the same                              |
//!
//! A CloudEvent keeps its other extension attributes; null attributes count as absent
//! and are left out. Account and topic are percent-encoded in `source` when they hold
//! anything but unreserved URI characters.
//!
//! The bodies are written straight from the log's text: the stored document is spliced
//! in, never parsed into values and written again. A `RawValue` would cost a validating
//! pass over the document, and the log holds only JSON that ingest validated.

use std::borrow::Cow;
use std::fmt;
use std::io::Write;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use hyper::header::{HeaderName, HeaderValue};
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::ingest::cloudevents::{is_json, media_type};
use crate::model::{Millis, StoredEvent, TraceContext};

/// The structured mode's media type.
pub const STRUCTURED: &str = "application/cloudevents+json";
/// The `datacontenttype` of a Vimond event's data.
const JSON: &str = "application/json";
/// Reelay's extension attributes (names: lower-case letters and digits, as the spec
/// asks). The sequence number is a string: CloudEvents integers are 32-bit, the log's
/// sequence numbers 64-bit.
const SEQUENCE: &str = "reelaysequence";
const TOPIC: &str = "reelaytopic";
/// The distributed-tracing extension's attributes (W3C Trace Context).
const TRACEPARENT: &str = "traceparent";
const TRACESTATE: &str = "tracestate";

/// A CloudEvent in the binary HTTP mode.
#[derive(Debug, Clone)]
pub struct Binary {
    /// The attributes as `ce-*` headers, percent-encoded as the HTTP binding says.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// `datacontenttype`, the `Content-Type` of the body.
    pub content_type: Option<HeaderValue>,
    /// The data.
    pub body: Bytes,
}

/// The event in the structured JSON mode; with `trace`, its distributed-tracing
/// extension attributes (`traceparent`, `tracestate`) in place of any it had.
pub fn structured(event: &StoredEvent, trace: Option<&TraceContext>) -> Bytes {
    if event.arrived_as_cloudevent()
        && let Some(body) = extended(event, trace)
    {
        return body;
    }
    wrapped(event, trace)
}

/// The event in the binary HTTP mode, with `trace` as in [`structured`].
pub fn binary(event: &StoredEvent, trace: Option<&TraceContext>) -> Binary {
    if event.arrived_as_cloudevent()
        && let Some(binary) = cloudevent_binary(event, trace)
    {
        return binary;
    }
    native_binary(event, trace)
}

/// The `source` of a Vimond event: stable, and unique with the `guid` (ids are unique
/// per account).
pub fn source(account: &str, topic: &str) -> String {
    let mut out = Vec::with_capacity(24 + account.len() + topic.len());
    push_source(&mut out, account, topic);
    // Only ASCII went in.
    String::from_utf8(out).unwrap_or_default()
}

/// A Vimond event wrapped in a CloudEvent: the attributes of the mapping, then the
/// stored document as `data`.
fn wrapped(event: &StoredEvent, trace: Option<&TraceContext>) -> Bytes {
    let document = event.body.bytes();
    let mut out = Vec::with_capacity(
        document.len()
            + 200
            + event.id.len()
            + event.account.len()
            + 2 * event.topic.len()
            + event.name.len()
            + event.entity_key.as_ref().map_or(0, String::len),
    );
    out.extend_from_slice(br#"{"specversion":"1.0","id":"#);
    push_json_string(&mut out, &event.id);
    out.extend_from_slice(br#","source":""#);
    // Percent-encoded: nothing in it needs escaping in JSON.
    push_source(&mut out, &event.account, &event.topic);
    out.extend_from_slice(br#"","type":"#);
    push_json_string(&mut out, &event.name);
    if let Some(key) = &event.entity_key {
        out.extend_from_slice(br#","subject":"#);
        push_json_string(&mut out, key);
    }
    if let Some(time) = Rfc3339::of(event.occurred_at) {
        // Writing to a Vec cannot fail.
        let _ = write!(out, r#","time":"{time}""#);
    }
    out.extend_from_slice(br#","datacontenttype":"application/json","#);
    push_extensions(&mut out, event, trace);
    out.extend_from_slice(br#","data":"#);
    out.extend_from_slice(document);
    out.push(b'}');
    Bytes::from(out)
}

/// A stored CloudEvent with Reelay's extensions added (they replace any the publisher
/// set) and null attributes left out. `None` when the stored text is not an object.
fn extended(event: &StoredEvent, trace: Option<&TraceContext>) -> Option<Bytes> {
    let text = event.body.as_str();
    let mut out = Vec::with_capacity(text.len() + 48 + event.topic.len());
    // Usually there is nothing to leave out, so the stored text is copied as it is and
    // the extensions go before its closing brace, without parsing it.
    let nothing_to_drop = !text.contains("null")
        && !text.contains("\"reelay")
        && (trace.is_none() || !text.contains("\"trace"));
    let head = text
        .trim()
        .strip_prefix('{')
        .and_then(|inner| inner.strip_suffix('}'))
        .filter(|inner| !inner.trim().is_empty());
    match head {
        Some(_) if nothing_to_drop => {
            let end = text.trim_end().len() - 1;
            out.extend_from_slice(&text.as_bytes()[..end]);
            out.push(b',');
        }
        _ => {
            let Members(members) = serde_json::from_str(text).ok()?;
            out.push(b'{');
            for (name, value) in &members {
                let replaced = trace.is_some() && (name == TRACEPARENT || name == TRACESTATE);
                if value.get() == "null" || name == SEQUENCE || name == TOPIC || replaced {
                    continue;
                }
                push_json_string(&mut out, name);
                out.push(b':');
                out.extend_from_slice(value.get().as_bytes());
                out.push(b',');
            }
        }
    }
    push_extensions(&mut out, event, trace);
    out.push(b'}');
    Some(Bytes::from(out))
}

/// `"reelaysequence":"…","reelaytopic":"…"`, then `"traceparent"` and `"tracestate"`
/// when the delivery continues a trace.
fn push_extensions(out: &mut Vec<u8>, event: &StoredEvent, trace: Option<&TraceContext>) {
    let _ = write!(out, r#""{SEQUENCE}":"{}","{TOPIC}":"#, event.seq);
    push_json_string(out, &event.topic);
    if let Some(trace) = trace {
        let _ = write!(out, r#","{TRACEPARENT}":"#);
        push_json_string(out, &trace.traceparent);
        if let Some(state) = &trace.tracestate {
            let _ = write!(out, r#","{TRACESTATE}":"#);
            push_json_string(out, state);
        }
    }
}

/// A Vimond event in binary mode: the mapping's attributes as headers, the stored
/// document as the body (shared, not copied).
fn native_binary(event: &StoredEvent, trace: Option<&TraceContext>) -> Binary {
    let ce = HeaderName::from_static;
    let mut headers = Vec::with_capacity(8);
    headers.push((ce("ce-specversion"), HeaderValue::from_static("1.0")));
    headers.push((ce("ce-id"), header_value(&event.id)));
    headers.push((
        ce("ce-source"),
        header_value(&source(&event.account, &event.topic)),
    ));
    headers.push((ce("ce-type"), header_value(&event.name)));
    if let Some(key) = &event.entity_key {
        headers.push((ce("ce-subject"), header_value(key)));
    }
    if let Some(time) = Rfc3339::of(event.occurred_at) {
        headers.push((ce("ce-time"), header_value(&time.to_string())));
    }
    push_extension_headers(&mut headers, event, trace);
    Binary {
        headers,
        content_type: Some(HeaderValue::from_static(JSON)),
        body: event.body.bytes().clone(),
    }
}

/// A stored CloudEvent in binary mode: its attributes as headers, its data as the body.
/// `None` when the stored text is not an object.
fn cloudevent_binary(event: &StoredEvent, trace: Option<&TraceContext>) -> Option<Binary> {
    let stored = event.body.bytes();
    let Members(members) = serde_json::from_str(event.body.as_str()).ok()?;
    let mut headers = Vec::with_capacity(members.len() + 2);
    let mut content_type = None;
    let mut data = None;
    let mut data_base64 = None;
    for (name, value) in &members {
        if value.get() == "null" {
            continue;
        }
        match name.as_ref() {
            "data" => data = Some(*value),
            "data_base64" => data_base64 = Some(*value),
            "datacontenttype" => content_type = Some(string_value(value)?),
            SEQUENCE | TOPIC => {}
            TRACEPARENT | TRACESTATE if trace.is_some() => {}
            attribute => {
                // Ingest allows lower-case letters and digits only, so the name is a
                // valid header name.
                let Ok(name) = HeaderName::try_from(format!("ce-{attribute}")) else {
                    continue;
                };
                // A string's characters; a number or a boolean as written.
                let text = string_value(value).unwrap_or(Cow::Borrowed(value.get()));
                headers.push((name, header_value(&text)));
            }
        }
    }
    push_extension_headers(&mut headers, event, trace);
    let body = match (data, data_base64) {
        (Some(data), _) => {
            let json = content_type
                .as_deref()
                .is_none_or(|content_type| is_json(&media_type(content_type)));
            match string_value(data) {
                // Text data: the string's characters are the body.
                Some(text) if !json => Bytes::from(text.into_owned()),
                // JSON data: its text as stored.
                _ => shared(stored, data.get()),
            }
        }
        (None, Some(encoded)) => Bytes::from(BASE64.decode(string_value(encoded)?.as_ref()).ok()?),
        (None, None) => Bytes::new(),
    };
    // Data without a type is JSON (the JSON event format's default); say so.
    if content_type.is_none() && data.is_some() {
        content_type = Some(Cow::Borrowed(JSON));
    }
    Some(Binary {
        headers,
        // A header of HTTP's own, not percent-encoded: a media type is ASCII.
        content_type: content_type.and_then(|text| HeaderValue::from_str(&text).ok()),
        body,
    })
}

fn push_extension_headers(
    headers: &mut Vec<(HeaderName, HeaderValue)>,
    event: &StoredEvent,
    trace: Option<&TraceContext>,
) {
    headers.push((
        HeaderName::from_static("ce-reelaysequence"),
        HeaderValue::from(event.seq),
    ));
    headers.push((
        HeaderName::from_static("ce-reelaytopic"),
        header_value(&event.topic),
    ));
    if let Some(trace) = trace {
        headers.push((
            HeaderName::from_static("ce-traceparent"),
            header_value(&trace.traceparent),
        ));
        if let Some(state) = &trace.tracestate {
            headers.push((
                HeaderName::from_static("ce-tracestate"),
                header_value(state),
            ));
        }
    }
}

/// A header value percent-encoded as the HTTP binding asks (3.1.3.2): space, `"`, `%`
/// and everything outside printable ASCII become `%XX` of their UTF-8 bytes.
fn header_value(text: &str) -> HeaderValue {
    let keep = |byte: u8| (0x21..=0x7e).contains(&byte) && byte != b'"' && byte != b'%';
    let encoded = if text.bytes().all(keep) {
        Cow::Borrowed(text)
    } else {
        let mut out = String::with_capacity(text.len() + 16);
        for byte in text.bytes() {
            if keep(byte) {
                out.push(char::from(byte));
            } else {
                push_percent(&mut out, byte);
            }
        }
        Cow::Owned(out)
    };
    // Only printable ASCII is left, which is always a valid header value.
    HeaderValue::from_str(&encoded).unwrap_or(HeaderValue::from_static(""))
}

fn push_percent(out: &mut String, byte: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(char::from(HEX[usize::from(byte >> 4)]));
    out.push(char::from(HEX[usize::from(byte & 0xf)]));
}

/// `/reelay/accounts/{account}/topics/{topic}`, each name a percent-encoded path segment.
fn push_source(out: &mut Vec<u8>, account: &str, topic: &str) {
    out.extend_from_slice(b"/reelay/accounts/");
    push_segment(out, account);
    out.extend_from_slice(b"/topics/");
    push_segment(out, topic);
}

fn push_segment(out: &mut Vec<u8>, text: &str) {
    let unreserved = |byte: u8| byte.is_ascii_alphanumeric() || b"-._~".contains(&byte);
    if text.bytes().all(unreserved) {
        out.extend_from_slice(text.as_bytes());
        return;
    }
    let mut encoded = String::with_capacity(text.len() * 3);
    for byte in text.bytes() {
        if unreserved(byte) {
            encoded.push(char::from(byte));
        } else {
            push_percent(&mut encoded, byte);
        }
    }
    out.extend_from_slice(encoded.as_bytes());
}

pub(crate) fn push_json_string(out: &mut Vec<u8>, text: &str) {
    // Writing to a Vec cannot fail.
    let _ = serde_json::to_writer(out, text);
}

/// A JSON string's characters (borrowed when it has no escapes); `None` when the value is
/// not a string.
fn string_value(value: &RawValue) -> Option<Cow<'_, str>> {
    let text = value.get();
    let inner = text.strip_prefix('"')?.strip_suffix('"')?;
    if inner.contains('\\') {
        serde_json::from_str::<String>(text).ok().map(Cow::Owned)
    } else {
        Some(Cow::Borrowed(inner))
    }
}

/// The part of `buffer` that `part` (a slice of it) covers, shared; a copy if it is not
/// a slice of it after all.
fn shared(buffer: &Bytes, part: &str) -> Bytes {
    let start = (part.as_ptr() as usize).checked_sub(buffer.as_ptr() as usize);
    match start {
        Some(start) if start + part.len() <= buffer.len() => {
            buffer.slice(start..start + part.len())
        }
        _ => Bytes::copy_from_slice(part.as_bytes()),
    }
}

/// A time in RFC 3339, UTC, with milliseconds when it has any.
struct Rfc3339(chrono::DateTime<chrono::Utc>);

impl Rfc3339 {
    fn of(millis: Millis) -> Option<Rfc3339> {
        chrono::DateTime::from_timestamp_millis(millis).map(Rfc3339)
    }
}

impl fmt::Display for Rfc3339 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let format = match self.0.timestamp_subsec_millis() {
            0 => "%Y-%m-%dT%H:%M:%SZ",
            _ => "%Y-%m-%dT%H:%M:%S%.3fZ",
        };
        fmt::Display::fmt(&self.0.format(format), f)
    }
}

/// A JSON object's members in order, names and value texts borrowed from the document
/// when they can be.
pub(crate) struct Members<'a>(pub(crate) Vec<(Cow<'a, str>, &'a RawValue)>);

/// A member name, borrowed unless it has escapes.
struct Name<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Name<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Name<'de>, D::Error> {
        struct NameVisitor;

        impl<'de> Visitor<'de> for NameVisitor {
            type Value = Name<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a member name")
            }

            fn visit_borrowed_str<E>(self, name: &'de str) -> Result<Name<'de>, E> {
                Ok(Name(Cow::Borrowed(name)))
            }

            fn visit_str<E>(self, name: &str) -> Result<Name<'de>, E> {
                Ok(Name(Cow::Owned(name.to_owned())))
            }
        }

        deserializer.deserialize_str(NameVisitor)
    }
}

impl<'de> Deserialize<'de> for Members<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Members<'de>, D::Error> {
        struct MembersVisitor;

        impl<'de> Visitor<'de> for MembersVisitor {
            type Value = Members<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Members<'de>, A::Error> {
                let mut members = Vec::with_capacity(map.size_hint().unwrap_or(10));
                while let Some((Name(name), value)) =
                    map.next_entry::<Name<'de>, &'de RawValue>()?
                {
                    members.push((name, value));
                }
                Ok(Members(members))
            }
        }

        deserializer.deserialize_map(MembersVisitor)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::model::{Document, cloudevent_id};

    /// A Vimond event as the log hands it to dispatch.
    fn native(body: &str, key: Option<&str>) -> StoredEvent {
        StoredEvent {
            seq: 4_294_967_301,
            account: "vimond".into(),
            id: "0ca2f440-feda-4b20-83f0-aa7582afbf4f".into(),
            name: "asset-updated".into(),
            topic: "asset-operations".into(),
            entity_key: key.map(str::to_owned),
            occurred_at: 1_663_576_590_321,
            received_at: 1_663_576_591_000,
            body: Document::from(body),
            trace: None,
        }
    }

    /// A CloudEvent as ingest stores it.
    fn arrived(body: &Value) -> StoredEvent {
        StoredEvent {
            seq: 7,
            account: "zapp".into(),
            id: cloudevent_id(
                body["source"].as_str().unwrap(),
                body["id"].as_str().unwrap(),
            ),
            name: body["type"].as_str().unwrap().into(),
            topic: "app-favorites".into(),
            entity_key: Some("entry-7".into()),
            occurred_at: 1_717_770_436_035,
            received_at: 1_717_770_437_000,
            body: Document::from(body.to_string()),
            trace: None,
        }
    }

    fn favorite() -> Value {
        json!({"specversion": "1.0", "type": "com.applicaster.favorites.added.v1",
               "source": "zapp://com.example/versions/1", "id": "f-1",
               "subject": "entry-7 added to favorites", "time": "2024-06-07T14:27:16.035+02:00",
               "datacontenttype": "applicastion/json", "appversion": 9,
               "data": {"userIdentifier": "uid_x", "entryId": "entry-7"}})
    }

    fn headers(binary: &Binary) -> Vec<(String, String)> {
        binary
            .headers
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_str().unwrap().to_owned()))
            .collect()
    }

    const ASSET: &str = r#"{ "eventName": "asset-updated", "guid": "0ca2f440-feda-4b20-83f0-aa7582afbf4f", "assetId": 897874, "z": 1.50 }"#;

    #[test]
    fn a_vimond_event_becomes_the_mappings_attributes_around_its_document() {
        let body = structured(&native(ASSET, Some("897874")), None);
        let text = std::str::from_utf8(&body).unwrap();
        let value: Value = serde_json::from_str(text).unwrap();
        assert_eq!(
            value,
            json!({"specversion": "1.0", "id": "0ca2f440-feda-4b20-83f0-aa7582afbf4f",
                   "source": "/reelay/accounts/vimond/topics/asset-operations",
                   "type": "asset-updated", "subject": "897874",
                   "time": "2022-09-19T08:36:30.321Z", "datacontenttype": "application/json",
                   "reelaysequence": "4294967301", "reelaytopic": "asset-operations",
                   "data": serde_json::from_str::<Value>(ASSET).unwrap()})
        );
        // The document byte for byte, unknown fields and number spelling included.
        assert!(text.ends_with(&format!(r#""data":{ASSET}}}"#)), "{text}");
    }

    #[test]
    fn without_an_entity_key_there_is_no_subject_and_whole_seconds_have_no_fraction() {
        let mut event = native(ASSET, None);
        event.occurred_at = 1_663_576_590_000;
        let value: Value = serde_json::from_slice(&structured(&event, None)).unwrap();
        assert!(value.get("subject").is_none());
        assert_eq!(value["time"], "2022-09-19T08:36:30Z");
    }

    #[test]
    fn names_outside_plain_ascii_are_escaped_and_encoded() {
        let mut event = native(ASSET, Some("a \"quoted\" key"));
        event.account = "acme tv/é".into();
        event.id = "id \"1\"".into();
        let value: Value = serde_json::from_slice(&structured(&event, None)).unwrap();
        assert_eq!(
            value["source"],
            "/reelay/accounts/acme%20tv%2F%C3%A9/topics/asset-operations"
        );
        assert_eq!(value["id"], "id \"1\"");
        assert_eq!(value["subject"], "a \"quoted\" key");

        let binary = binary(&event, None);
        let headers = headers(&binary);
        let header = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        };
        // Percent-encoded once more in a header: `%` itself is encoded.
        assert_eq!(
            header("ce-source"),
            Some("/reelay/accounts/acme%2520tv%252F%25C3%25A9/topics/asset-operations")
        );
        assert_eq!(header("ce-id"), Some("id%20%221%22"));
        assert_eq!(header("ce-subject"), Some("a%20%22quoted%22%20key"));
    }

    #[test]
    fn a_vimond_event_in_binary_mode_is_its_document_with_ce_headers() {
        let event = native(ASSET, Some("897874"));
        let binary = binary(&event, None);
        assert_eq!(
            headers(&binary),
            [
                ("ce-specversion", "1.0"),
                ("ce-id", "0ca2f440-feda-4b20-83f0-aa7582afbf4f"),
                (
                    "ce-source",
                    "/reelay/accounts/vimond/topics/asset-operations"
                ),
                ("ce-type", "asset-updated"),
                ("ce-subject", "897874"),
                ("ce-time", "2022-09-19T08:36:30.321Z"),
                ("ce-reelaysequence", "4294967301"),
                ("ce-reelaytopic", "asset-operations"),
            ]
            .map(|(n, v)| (n.to_owned(), v.to_owned()))
        );
        assert_eq!(binary.content_type.unwrap(), "application/json");
        assert_eq!(binary.body, ASSET.as_bytes());
        // The log's buffer, not a copy.
        assert_eq!(binary.body.as_ptr(), event.body.bytes().as_ptr());
    }

    #[test]
    fn a_cloudevent_keeps_its_attributes_and_gains_the_extensions() {
        let event = arrived(&favorite());
        let body = structured(&event, None);
        let text = std::str::from_utf8(&body).unwrap();
        let mut expected = favorite();
        expected["reelaysequence"] = json!("7");
        expected["reelaytopic"] = json!("app-favorites");
        assert_eq!(serde_json::from_str::<Value>(text).unwrap(), expected);
        // Spliced: the stored text, then the extensions.
        let stored = event.body.as_str();
        assert!(text.starts_with(&stored[..stored.len() - 1]), "{text}");
    }

    #[test]
    fn a_cloudevents_nulls_and_own_reelay_extensions_are_left_out() {
        let mut sent = favorite();
        sent["subject"] = Value::Null;
        sent["reelaysequence"] = json!("999");
        sent["reelayother"] = json!("kept");
        let value: Value = serde_json::from_slice(&structured(&arrived(&sent), None)).unwrap();
        assert!(value.get("subject").is_none(), "{value}");
        assert_eq!(value["reelaysequence"], "7");
        assert_eq!(value["reelayother"], "kept");
        let object = value.as_object().unwrap();
        assert_eq!(object.keys().filter(|k| *k == "reelaysequence").count(), 1);
        // Also in binary mode.
        let binary = binary(&arrived(&sent), None);
        let headers = headers(&binary);
        assert!(!headers.iter().any(|(n, _)| n == "ce-subject"));
        let sequences: Vec<_> = headers
            .iter()
            .filter(|(n, _)| n == "ce-reelaysequence")
            .collect();
        assert_eq!(sequences.len(), 1);
        assert_eq!(sequences[0].1, "7");
    }

    #[test]
    fn a_cloudevent_in_binary_mode_has_its_own_attributes_and_data() {
        let event = arrived(&favorite());
        let binary = binary(&event, None);
        assert_eq!(
            headers(&binary),
            // In stored order (`json!` sorts the members), then Reelay's.
            [
                ("ce-appversion", "9"),
                ("ce-id", "f-1"),
                ("ce-source", "zapp://com.example/versions/1"),
                ("ce-specversion", "1.0"),
                ("ce-subject", "entry-7%20added%20to%20favorites"),
                ("ce-time", "2024-06-07T14:27:16.035+02:00"),
                ("ce-type", "com.applicaster.favorites.added.v1"),
                ("ce-reelaysequence", "7"),
                ("ce-reelaytopic", "app-favorites"),
            ]
            .map(|(n, v)| (n.to_owned(), v.to_owned()))
        );
        // The publisher's content type, misspelt as Zapp sends it.
        assert_eq!(binary.content_type.unwrap(), "applicastion/json");
        assert_eq!(
            serde_json::from_slice::<Value>(&binary.body).unwrap(),
            favorite()["data"]
        );
        // A slice of the stored text.
        let stored = event.body.bytes();
        let at = binary.body.as_ptr() as usize - stored.as_ptr() as usize;
        assert!(at > 0 && at + binary.body.len() <= stored.len());
    }

    #[test]
    fn text_and_binary_data_are_their_bytes_in_binary_mode() {
        let mut text = favorite();
        text["datacontenttype"] = json!("text/plain; charset=utf-8");
        text["data"] = json!("caf\u{e9} \"au lait\"");
        let binary_text = binary(&arrived(&text), None);
        assert_eq!(binary_text.body, "caf\u{e9} \"au lait\"".as_bytes());
        assert_eq!(
            binary_text.content_type.unwrap(),
            "text/plain; charset=utf-8"
        );

        let mut bytes = favorite();
        bytes.as_object_mut().unwrap().remove("data");
        bytes["datacontenttype"] = json!("application/octet-stream");
        bytes["data_base64"] = json!("AP8=");
        let binary_bytes = binary(&arrived(&bytes), None);
        assert_eq!(binary_bytes.body, &b"\x00\xff"[..]);
        // And in structured mode, as stored.
        let value: Value = serde_json::from_slice(&structured(&arrived(&bytes), None)).unwrap();
        assert_eq!(value["data_base64"], "AP8=");

        // JSON data without a type: said to be JSON.
        let mut untyped = favorite();
        untyped.as_object_mut().unwrap().remove("datacontenttype");
        assert_eq!(
            binary(&arrived(&untyped), None).content_type.unwrap(),
            "application/json"
        );
        // No data at all: an empty body.
        let mut empty = untyped.clone();
        empty.as_object_mut().unwrap().remove("data");
        let binary_empty = binary(&arrived(&empty), None);
        assert!(binary_empty.body.is_empty());
        assert!(binary_empty.content_type.is_none());
    }

    #[test]
    fn the_source_is_stable() {
        assert_eq!(
            source("demo", "asset-operations"),
            "/reelay/accounts/demo/topics/asset-operations"
        );
    }
}
