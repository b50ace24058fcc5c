//! The native wire format: the Vimond event envelope, one JSON object or an array of them.
//!
//! Each event keeps the publisher's own text (a slice of the body), so unknown fields
//! and their order reach subscribers unchanged.

use bytes::Bytes;
use serde_json::{Map, Value};

use super::IngestError;
use crate::catalog::{Catalog, Envelope};
use crate::model::{Document, NewEvent, is_cloudevent_id};

/// Parses and validates a publish body. The first invalid event refuses the whole body.
pub fn parse(catalog: &Catalog, account: &str, body: &Bytes) -> Result<Vec<NewEvent>, IngestError> {
    super::each_object(body, "event", |fields, document| {
        validate(catalog, account, fields, document)
    })
}

/// Checks one event; on failure says which field and why.
fn validate(
    catalog: &Catalog,
    account: &str,
    fields: &Map<String, Value>,
    body: Document,
) -> Result<NewEvent, (String, String)> {
    let fail = |field: &str, message: String| Err((field.to_owned(), message));
    let name = match fields.get("eventName") {
        Some(Value::String(name)) => name,
        Some(_) => return fail("eventName", "eventName must be a string".into()),
        None => return fail("eventName", "eventName is required".into()),
    };
    let Some(event_type) = catalog.event_type(name) else {
        return fail(
            "eventName",
            format!("{name:?} is not an event name in the catalog (see GET /v1/catalog)"),
        );
    };
    // A CloudEvents type's data carries a user token that only the CloudEvents endpoint
    // pseudonymises; a Dynamic Ingest notification's job comes from its path; a derived
    // event is never published.
    if event_type.envelope != Envelope::Vimond {
        return fail(
            "eventName",
            format!(
                "{name:?} is not accepted here: {}",
                event_type.envelope.how_published()
            ),
        );
    }
    let id = match fields.get("guid") {
        Some(Value::String(guid)) if !guid.trim().is_empty() => guid,
        Some(_) => return fail("guid", "guid must be a non-empty string".into()),
        None => return fail("guid", "guid is required".into()),
    };
    if is_cloudevent_id(id) {
        // The log tells CloudEvents from Vimond events by this form of id.
        return fail(
            "guid",
            format!("{id:?} has the form ce_<16 hex digits>_<id>, reserved for CloudEvents"),
        );
    }
    let occurred_at = match fields.get("timestamp") {
        Some(Value::String(time)) => match chrono::DateTime::parse_from_rfc3339(time) {
            Ok(time) => time.timestamp_millis(),
            Err(_) => {
                return fail(
                    "timestamp",
                    format!("{time:?} is not an RFC 3339 time such as 2024-06-07T14:27:16.035Z"),
                );
            }
        },
        Some(_) => return fail("timestamp", "timestamp must be an RFC 3339 string".into()),
        None => return fail("timestamp", "timestamp is required".into()),
    };
    match fields.get("tenant") {
        None => {}
        Some(Value::String(tenant)) if tenant == account => {}
        Some(tenant) => {
            return fail(
                "tenant",
                format!(
                    "tenant {tenant} does not match the account {account:?} it is published to"
                ),
            );
        }
    }
    for field in catalog.base_fields.iter().filter(|f| {
        !matches!(
            f.name.as_str(),
            "eventName" | "guid" | "timestamp" | "tenant"
        )
    }) {
        field.check(fields, false, name)?;
    }
    event_type.check_fields(fields)?;
    Ok(NewEvent {
        account: account.to_owned(),
        id: id.clone(),
        name: name.clone(),
        topic: event_type.topic.clone(),
        entity_key: event_type.entity_key_of(fields),
        video: event_type.changed_video(fields),
        entity: event_type.entity_change(fields),
        occurred_at,
        body,
        trace: None,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const SEED_EVENTS: &str = include_str!("../../tests/fixtures/seed_events.json");

    fn catalog() -> Catalog {
        Catalog::builtin()
    }

    fn asset_updated(guid: &str) -> Value {
        json!({"eventName": "asset-updated", "tenant": "vimond", "timestamp": "2022-09-19T08:36:30.321Z",
               "guid": guid, "assetId": 897874})
    }

    fn invalid(body: &Value) -> (Option<usize>, String) {
        match parse(&catalog(), "vimond", &Bytes::from(body.to_string())) {
            Err(IngestError::Invalid { index, field, .. }) => (index, field),
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn every_seed_example_is_accepted_as_written() {
        let fixtures: Vec<Value> = serde_json::from_str(SEED_EVENTS).unwrap();
        assert_eq!(
            fixtures.len(),
            11,
            "every well-formed example of seeds 000 and 001"
        );
        for fixture in fixtures {
            let text = fixture["text"].as_str().unwrap();
            let events = parse(
                &catalog(),
                "vimond",
                &Bytes::copy_from_slice(text.as_bytes()),
            )
            .unwrap_or_else(|e| panic!("{}: {e}", fixture["title"]));
            assert_eq!(events.len(), 1);
            let document: Value = serde_json::from_str(text).unwrap();
            assert_eq!(events[0].id, document["guid"].as_str().unwrap());
            assert_eq!(events[0].body.as_str(), text, "kept byte for byte");
        }
    }

    #[test]
    fn the_malformed_seed_example_gets_its_position() {
        let text = include_str!("../../tests/fixtures/seed_malformed_contentpanel.txt");
        match parse(
            &catalog(),
            "vimond",
            &Bytes::copy_from_slice(text.as_bytes()),
        ) {
            Err(IngestError::Malformed { line, column, .. }) => assert!(line > 1 && column > 0),
            other => panic!("expected Malformed, got {other:?}"),
        }
    }

    #[test]
    fn a_batch_keeps_each_items_own_text_and_order() {
        let body = "[ {\"eventName\":\"asset-published\", \"guid\":\"a\",\"timestamp\":\"2022-12-21T13:53:05+00:00\",\"assetId\":\"9\", \"zz\": 1},\n{\"eventName\":\"category-updated\",\"guid\":\"b\",\"timestamp\":\"2023-03-31T12:14:24.527Z\",\"categoryId\":377484} ]";
        let events = parse(
            &catalog(),
            "vimond",
            &Bytes::copy_from_slice(body.as_bytes()),
        )
        .unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(
            events[0].body.as_str(),
            "{\"eventName\":\"asset-published\", \"guid\":\"a\",\"timestamp\":\"2022-12-21T13:53:05+00:00\",\"assetId\":\"9\", \"zz\": 1}"
        );
        assert_eq!(events[0].entity_key.as_deref(), Some("9"));
        assert_eq!(events[0].topic, "asset-operations");
        assert_eq!(events[1].entity_key.as_deref(), Some("377484"));
        assert_eq!(events[1].occurred_at, 1_680_264_864_527);
    }

    #[test]
    fn each_rule_names_the_item_and_field() {
        let mut no_asset = asset_updated("2");
        no_asset.as_object_mut().unwrap().remove("assetId");
        assert_eq!(
            invalid(&json!([asset_updated("1"), asset_updated("1b"), no_asset])),
            (Some(2), "assetId".into())
        );
        assert_eq!(
            invalid(
                &json!({"eventName": "asset-exploded", "guid": "x", "timestamp": "2022-09-19T08:36:30Z"})
            ),
            (None, "eventName".into())
        );
        let mut no_guid = asset_updated("x");
        no_guid.as_object_mut().unwrap().remove("guid");
        assert_eq!(invalid(&no_guid), (None, "guid".into()));
        let mut empty_guid = asset_updated("");
        empty_guid["guid"] = json!("");
        assert_eq!(invalid(&empty_guid), (None, "guid".into()));
        // The form of the CloudEvents' log ids is theirs alone.
        let reserved = asset_updated(&crate::model::cloudevent_id("app://tv", "1"));
        assert_eq!(invalid(&reserved), (None, "guid".into()));
        let mut tenant = asset_updated("t");
        tenant["tenant"] = json!("other");
        assert_eq!(invalid(&tenant), (None, "tenant".into()));
        let mut time = asset_updated("t");
        time["timestamp"] = json!("19/09/2022 08:36");
        assert_eq!(invalid(&time), (None, "timestamp".into()));
        let mut asset = asset_updated("t");
        asset["assetId"] = json!({"id": 1});
        assert_eq!(invalid(&asset), (None, "assetId".into()));
        let bad_kind = json!({"eventName": "device-event", "guid": "d", "timestamp": "2018-07-17T14:50:00.712Z",
                              "eventType": "device-exploded", "deviceId": "1"});
        assert_eq!(invalid(&bad_kind), (None, "eventType".into()));
        assert_eq!(invalid(&json!([1])), (Some(0), "".into()));
        assert_eq!(
            parse(&catalog(), "vimond", &Bytes::from_static(b"[]")),
            Err(IngestError::Empty)
        );
    }

    #[test]
    fn cloudevents_brightcove_and_derived_types_are_refused_here() {
        // Their data carries user tokens only the CloudEvents endpoint replaces.
        let zapp = json!({"eventName": "com.applicaster.favorites.added.v1", "guid": "z",
                          "timestamp": "2021-04-12T23:20:50.52Z", "userIdentifier": "token", "entryId": "1"});
        assert_eq!(invalid(&zapp), (None, "eventName".into()));
        // A notification's job comes from its path; a video's version from Reelay.
        let notification = json!({"eventName": "dynamic-ingest-notification", "guid": "n",
                                  "timestamp": "2021-04-12T23:20:50.52Z", "entity": "poster",
                                  "entityType": "ASSET", "action": "CREATE", "status": "SUCCESS"});
        assert_eq!(invalid(&notification), (None, "eventName".into()));
        let forged = json!({"eventName": "video-change", "guid": "v", "timestamp": "2021-04-12T23:20:50.52Z",
                            "account_id": "vimond", "event": "video-change", "video": "1", "version": 99});
        assert_eq!(invalid(&forged), (None, "eventName".into()));
    }

    #[test]
    fn events_that_change_a_video_name_it() {
        let events = parse(
            &catalog(),
            "vimond",
            &Bytes::from(asset_updated("v").to_string()),
        )
        .unwrap();
        assert_eq!(events[0].video.as_deref(), Some("897874"));
        let category = json!({"eventName": "category-updated", "guid": "c",
                              "timestamp": "2022-09-19T08:36:30Z", "categoryId": 5});
        let events = parse(&catalog(), "vimond", &Bytes::from(category.to_string())).unwrap();
        assert_eq!(events[0].video, None, "a category is not a video");
        // A type that changes videos, without the video's id: nothing to report.
        let anonymous = json!({"eventName": "vmfm-archive-started", "guid": "a",
                               "timestamp": "2022-09-19T08:36:30Z"});
        let events = parse(&catalog(), "vimond", &Bytes::from(anonymous.to_string())).unwrap();
        assert_eq!(events[0].video, None);
    }

    #[test]
    fn ids_as_numbers_or_strings_and_aliases_are_accepted() {
        for asset in [json!(897874), json!("897874")] {
            let mut event = asset_updated("n");
            event["assetId"] = asset;
            let events = parse(&catalog(), "vimond", &Bytes::from(event.to_string())).unwrap();
            assert_eq!(events[0].entity_key.as_deref(), Some("897874"));
        }
        let sub = json!({"eventName": "subprofile-event", "guid": "s", "timestamp": "2018-07-17T10:10:15.133Z",
                         "originatorId": "fb85", "eventType": "subprofile-deleted", "subProfileId": "bf64"});
        let events = parse(&catalog(), "vimond", &Bytes::from(sub.to_string())).unwrap();
        assert_eq!(events[0].entity_key.as_deref(), Some("bf64"));
        // No tenant at all is fine: the account says whose it is.
        let mut untenanted = asset_updated("u");
        untenanted.as_object_mut().unwrap().remove("tenant");
        assert!(parse(&catalog(), "vimond", &Bytes::from(untenanted.to_string())).is_ok());
    }

    #[test]
    fn malformed_json_gets_line_and_column() {
        match parse(
            &catalog(),
            "vimond",
            &Bytes::from_static(b"{\n  \"eventName\": \"asset-updated\",\n  \"guid\": }"),
        ) {
            Err(IngestError::Malformed {
                line: 3, column, ..
            }) => assert!(column > 0),
            other => panic!("expected Malformed at line 3, got {other:?}"),
        }
        assert!(matches!(
            parse(&catalog(), "vimond", &Bytes::from_static(b"")),
            Err(IngestError::Malformed { .. })
        ));
        assert!(matches!(
            parse(&catalog(), "vimond", &Bytes::from_static(b"\"text\"")),
            Err(IngestError::Invalid { .. })
        ));
    }

    #[test]
    fn a_batch_is_read_exactly_as_sent_or_refused_where_it_is_wrong() {
        let one = asset_updated("a").to_string();
        // Escapes, nesting, a bracket and a comma inside strings, JSON's four whitespaces.
        let odd = r#"{"eventName":"asset-updated","guid":"b\"],{","timestamp":"2022-09-19T08:36:30Z","assetId":1,"x":[{"y":"]"}]}"#;
        let body = format!("\r\n\t[ {one}\n,\t{odd} ] \n");
        let events = parse(&catalog(), "vimond", &Bytes::from(body)).unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].body.as_str(), one);
        assert_eq!(events[1].body.as_str(), odd);
        assert_eq!(events[1].id, "b\"],{");

        let refused = |body: &str| parse(&catalog(), "vimond", &Bytes::from(body.to_owned()));
        assert_eq!(refused("[]"), Err(IngestError::Empty));
        assert_eq!(refused(" [ \n ] "), Err(IngestError::Empty));
        for wrong in [
            format!("[{one},]"),
            format!("[{one} {one}]"),
            format!("[{one}] x"),
            format!("[{one}"),
            format!("[{one}]\u{c}"),
        ] {
            assert!(
                matches!(refused(&wrong), Err(IngestError::Malformed { .. })),
                "{wrong}"
            );
        }
        // The first wrong item is the one named, whether it is not an object or invalid.
        let mut no_guid = asset_updated("c");
        no_guid.as_object_mut().unwrap().remove("guid");
        assert_eq!(
            invalid(&json!([asset_updated("d"), 7, no_guid])),
            (Some(1), String::new())
        );
        assert_eq!(
            invalid(&json!([asset_updated("d"), no_guid, 7])),
            (Some(1), "guid".into())
        );
    }
}
