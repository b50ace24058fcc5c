//! The Brightcove wire format: Dynamic Ingest notifications (seed 003) exactly as
//! Brightcove writes them, one object or an array of them, published for one job.
//!
//! A notification has no id, time or event name of its own: Reelay gives it the catalog
//! type [`NOTIFICATION`], the job of the request path as its entity key (so the job's
//! callbacks find it), the arrival time, and an id made from the job and the text. The
//! text itself is kept byte for byte: it is what the callbacks receive.

use bytes::Bytes;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::IngestError;
use crate::catalog::{Catalog, EventType};
use crate::model::{Document, Millis, NewEvent};

/// The catalog type of a Dynamic Ingest notification.
pub const NOTIFICATION: &str = "dynamic-ingest-notification";

/// Parses and validates the notifications of `job`, published at `now`. The first
/// invalid one refuses the whole body.
pub fn parse(
    catalog: &Catalog,
    account: &str,
    job: &str,
    body: &Bytes,
    now: Millis,
) -> Result<Vec<NewEvent>, IngestError> {
    let Some(event_type) = catalog.event_type(NOTIFICATION) else {
        return Err(IngestError::Invalid {
            index: None,
            field: String::new(),
            message: format!("the catalog has no {NOTIFICATION:?} type"),
        });
    };
    super::each_object(body, "notification", |fields, document| {
        validate(event_type, account, job, fields, document, now)
    })
}

fn validate(
    event_type: &EventType,
    account: &str,
    job: &str,
    fields: &Map<String, Value>,
    body: Document,
    now: Millis,
) -> Result<NewEvent, (String, String)> {
    event_type.check_fields(fields)?;
    // Said twice, it must be said the same way: the path decides.
    for (field, expected, what) in [("jobId", job, "job"), ("accountId", account, "account")] {
        if let Some(value) = fields.get(field).and_then(id_text)
            && value != expected
        {
            return Err((
                field.to_owned(),
                format!("{field} {value:?} is not the {what} {expected:?} of the request path"),
            ));
        }
    }
    Ok(NewEvent {
        account: account.to_owned(),
        id: notification_id(job, body.as_str()),
        name: event_type.name.clone(),
        topic: event_type.topic.clone(),
        entity_key: Some(job.to_owned()),
        video: event_type.changed_video(fields),
        entity: event_type.entity_change(fields),
        occurred_at: now,
        body,
        trace: None,
    })
}

fn id_text(value: &Value) -> Option<String> {
    match value {
        Value::String(text) => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        _ => None,
    }
}

/// `di_` and 32 hex digits of SHA-256 of the job and the notification's text: the same
/// notification sent again for the same job (a producer retrying a request that timed
/// out) is stored and delivered once, as an event published twice is.
pub fn notification_id(job: &str, text: &str) -> String {
    let mut digest = Sha256::new();
    digest.update(job.as_bytes());
    // Job ids have no control characters (the API refuses them): (job, text) reads one
    // way only.
    digest.update([0]);
    digest.update(text.as_bytes());
    let digest = digest.finalize();
    let mut id = String::with_capacity(35);
    id.push_str("di_");
    for byte in &digest[..16] {
        id.push_str(&format!("{byte:02x}"));
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    const JOB: &str = "d3ef8751-2b88-4141-95d5-83f0393aca07";

    fn parse_text(text: &str) -> Result<Vec<NewEvent>, IngestError> {
        parse(
            &Catalog::builtin(),
            "57838016001",
            JOB,
            &Bytes::copy_from_slice(text.as_bytes()),
            1_000,
        )
    }

    /// A notification of seed 003, as written there.
    const RENDITION: &str = r#"{
"entity": "default\/video450",
"entityType": "DYNAMIC_RENDITION",
"version": "1",
"action": "CREATE",
"jobId": "d3ef8751-2b88-4141-95d5-83f0393aca07",
"videoId": "5660367449001",
"dynamicRenditionId": "default\/video450",
"bitrate": 451,
"width": 480,
"height": 270,
"accountId": "57838016001",
"status": "SUCCESS"
}"#;

    #[test]
    fn a_seed_notification_is_kept_as_written_for_its_job() {
        let events = parse_text(RENDITION).unwrap();
        let event = &events[0];
        assert_eq!(event.body.as_str(), RENDITION, "byte for byte");
        assert_eq!(event.name, NOTIFICATION);
        assert_eq!(event.topic, "dynamic-ingest");
        assert_eq!(event.entity_key.as_deref(), Some(JOB));
        assert_eq!(event.video.as_deref(), Some("5660367449001"));
        assert_eq!(event.occurred_at, 1_000);
        assert_eq!(event.id, notification_id(JOB, RENDITION));
        assert!(event.id.starts_with("di_") && event.id.len() == 35);
        // The same text for another job is another notification.
        assert_ne!(event.id, notification_id("another-job", RENDITION));
    }

    #[test]
    fn an_array_keeps_each_notification_s_own_text() {
        let failed = r#"{"entity": "default/audio64", "entityType": "DYNAMIC_RENDITION", "action": "CREATE",
            "status": "FAILED", "errorMessage": "source has no audio"}"#;
        let events = parse_text(&format!("[{RENDITION}, {failed}]")).unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(events[1].body.as_str(), failed);
        assert_eq!(events[1].video, None, "no videoId: no video to change");
        assert_eq!(
            events[1].entity_key.as_deref(),
            Some(JOB),
            "the path names the job"
        );
    }

    #[test]
    fn bad_notifications_name_the_item_and_field() {
        let invalid = |text: &str| match parse_text(text) {
            Err(IngestError::Invalid { index, field, .. }) => (index, field),
            other => panic!("expected Invalid, got {other:?}"),
        };
        let other_job = RENDITION.replace(JOB, "another-job");
        assert_eq!(invalid(&other_job), (None, "jobId".into()));
        let other_account = RENDITION.replace("\"57838016001\"", "\"1\"");
        assert_eq!(invalid(&other_account), (None, "accountId".into()));
        let no_status = RENDITION.replace("\"status\": \"SUCCESS\"", "\"state\": \"SUCCESS\"");
        assert_eq!(
            invalid(&format!("[{RENDITION}, {no_status}]")),
            (Some(1), "status".into())
        );
        assert_eq!(invalid(&format!("[{RENDITION}, 7]")), (Some(1), "".into()));
        assert_eq!(invalid("\"text\""), (None, "".into()));
        assert!(matches!(parse_text("[]"), Err(IngestError::Empty)));
        assert!(matches!(
            parse_text("{\"entity\": "),
            Err(IngestError::Malformed { .. })
        ));
        // Numbers for ids are fine when they say the same.
        let numeric = RENDITION.replace("\"57838016001\"", "57838016001");
        assert!(parse_text(&numeric).is_ok());
    }
}
