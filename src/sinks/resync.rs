//! Resync deliveries: the latest event of a catalog entity, sent again as part of a full
//! resync run (seed 001's `"resyncType": "full"`).
//!
//! The stored event is never changed. A run delivers a copy of it whose body is marked
//! and whose id is its own; every format and sink then carries that copy as it carries
//! any event, so the marking reaches webhooks, SNS, SQS, Kinesis and both CloudEvents
//! modes alike:
//!
//! - a Vimond document gets `"resyncType": "full"` and `"resyncId": "<run id>"` (replacing
//!   the `resyncType` a catalog event was published with, `incremental`);
//! - an event that arrived as a CloudEvent gets the extension attributes `resynctype` and
//!   `resyncid` (extension names are lower-case letters and digits);
//! - the id is `<event id>.<run id>`: the `webhook-id` of the delivery, the CloudEvents
//!   `id` of a wrapped Vimond event, the SQS FIFO deduplication id. Receivers
//!   de-duplicate on these, and a resync copy of an event they already got must not be
//!   taken for that event; the same run sending it again (a page resent after a crash)
//!   gives the same id. The sequence number stays the event's own.

use crate::model::StoredEvent;

use super::cloudevents::{Members, push_json_string};

/// The `resyncType` of every delivery of a full resync (seed 001).
pub const FULL: &str = "full";

/// The copy of `event` that resync run `resync_id` delivers.
pub fn resync_copy(event: &StoredEvent, resync_id: &str) -> StoredEvent {
    let (type_member, id_member) = match event.arrived_as_cloudevent() {
        true => ("resynctype", "resyncid"),
        false => ("resyncType", "resyncId"),
    };
    let body = marked(event.body.as_str(), type_member, id_member, resync_id);
    StoredEvent {
        id: delivery_id(&event.id, resync_id),
        body: body.map_or_else(|| event.body.clone(), Into::into),
        ..event.clone()
    }
}

/// The id of a resync delivery of the event `event_id`.
pub fn delivery_id(event_id: &str, resync_id: &str) -> String {
    format!("{event_id}.{resync_id}")
}

/// The document with the two members set (in place of any it had, at the end); `None`
/// when it is not a JSON object (ingest stores only objects, so never in practice).
fn marked(document: &str, type_member: &str, id_member: &str, resync_id: &str) -> Option<String> {
    let Members(members) = serde_json::from_str(document).ok()?;
    let mut out = Vec::with_capacity(document.len() + 64 + resync_id.len());
    out.push(b'{');
    for (name, value) in &members {
        if name == type_member || name == id_member {
            continue;
        }
        push_json_string(&mut out, name);
        out.push(b':');
        out.extend_from_slice(value.get().as_bytes());
        out.push(b',');
    }
    push_json_string(&mut out, type_member);
    out.push(b':');
    push_json_string(&mut out, FULL);
    out.push(b',');
    push_json_string(&mut out, id_member);
    out.push(b':');
    push_json_string(&mut out, resync_id);
    out.push(b'}');
    // Built from valid UTF-8 pieces.
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn stored(id: &str, body: &str) -> StoredEvent {
        StoredEvent {
            seq: 42,
            account: "vimond".into(),
            id: id.into(),
            name: "asset-event".into(),
            topic: "catalog-events".into(),
            entity_key: Some("118924".into()),
            occurred_at: 0,
            received_at: 0,
            body: body.into(),
            trace: None,
        }
    }

    #[test]
    fn a_vimond_event_is_marked_full_with_the_run_and_keeps_its_members_in_order() {
        let published = r#"{"tenant":"vimond","eventName":"asset-event","assetId":"118924","resyncType":"incremental","extra":{"a":[1,2]}}"#;
        let event = stored("61990fe1", published);
        let copy = resync_copy(&event, "rs_1");
        assert_eq!(
            copy.body.as_str(),
            r#"{"tenant":"vimond","eventName":"asset-event","assetId":"118924","extra":{"a":[1,2]},"resyncType":"full","resyncId":"rs_1"}"#
        );
        assert_eq!(copy.id, "61990fe1.rs_1");
        assert_eq!((copy.seq, copy.entity_key), (42, Some("118924".into())));
        assert_eq!(
            event.body.as_str(),
            published,
            "the stored event is not changed"
        );
    }

    #[test]
    fn a_cloudevent_gets_extension_attributes_and_stays_a_cloudevent() {
        let id = crate::model::cloudevent_id("app://one", "7");
        let event = stored(
            &id,
            r#"{"specversion":"1.0","id":"7","source":"app://one","type":"x","data":{"resyncType":"keep"}}"#,
        );
        let copy = resync_copy(&event, "rs_2");
        assert!(copy.arrived_as_cloudevent(), "{}", copy.id);
        let body: Value = serde_json::from_str(copy.body.as_str()).unwrap();
        assert_eq!(body["resynctype"], "full");
        assert_eq!(body["resyncid"], "rs_2");
        assert_eq!(body["id"], "7");
        assert_eq!(body["data"], json!({"resyncType": "keep"}));
    }
}
