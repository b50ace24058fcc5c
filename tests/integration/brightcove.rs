//! Brightcove compatibility: seed 004's subscription API and `video-change`
//! notifications, seed 003's Dynamic Ingest job callbacks.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};

use crate::app::{TestApp, eventually};
use crate::support::receiver::{Delivery, Receiver};

/// A Vimond event of `name` with `fields` added.
fn vimond(name: &str, guid: &str, fields: Value) -> Value {
    let mut event =
        json!({"eventName": name, "guid": guid, "timestamp": "2024-06-26T08:52:12.250Z"});
    for (field, value) in fields.as_object().expect("fields") {
        event[field] = value.clone();
    }
    event
}

/// The `video-change` events of the log, in log order, each with the event just before
/// it (its cause).
async fn logged_changes(app: &TestApp, account: &str) -> Vec<(Value, Value)> {
    let events = app.stored_events(account).await;
    events
        .iter()
        .enumerate()
        .filter(|(_, event)| event["name"] == "video-change")
        .map(|(at, event)| {
            assert!(at > 0, "a video-change follows its cause");
            (event["event"].clone(), events[at - 1].clone())
        })
        .collect()
}

/// Versions per video, in the order given.
fn versions<'a>(changes: impl IntoIterator<Item = &'a Value>) -> BTreeMap<String, Vec<i64>> {
    let mut by_video: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for change in changes {
        by_video
            .entry(change["video"].as_str().expect("video").to_owned())
            .or_default()
            .push(change["version"].as_i64().expect("version"));
    }
    by_video
}

async fn wait_for(receiver: &Receiver, path: &str, count: usize) -> Vec<Delivery> {
    eventually(
        Duration::from_secs(20),
        &format!("{count} deliveries at {path}"),
        || async {
            let got = receiver.deliveries(path).await;
            (got.len() >= count).then_some(got)
        },
    )
    .await
}

fn body(delivery: &Delivery) -> Value {
    serde_json::from_str(&delivery.body).expect("a JSON delivery")
}

#[tokio::test]
async fn every_change_of_a_video_is_a_video_change_with_its_next_version_across_a_restart() {
    let mut app = TestApp::start().await;
    let receiver = Receiver::start().await;
    app.subscribe_receiver(
        &receiver,
        "/changes",
        json!({"events": ["video-change"]}),
        &[],
    )
    .await;

    let before = json!([
        vimond("asset-created", "c-1", json!({"assetId": 100})),
        vimond("asset-updated", "c-2", json!({"assetId": "100"})),
        vimond("category-updated", "c-3", json!({"categoryId": 100})),
        vimond(
            "mce-ingest-started",
            "c-4",
            json!({"assetId": 200, "companyId": "c", "ingestId": "i"})
        ),
        vimond(
            "asset-event",
            "c-5",
            json!({"assetId": 100, "eventType": "asset-updated"})
        ),
    ]);
    let (status, answer) = app
        .post("/v1/accounts/vimond/events", &before.to_string())
        .await;
    assert_eq!((status, answer["stored"].clone()), (202, json!(5)));
    // Published again: stored once, so no new version.
    let again = vimond("asset-updated", "c-2", json!({"assetId": "100"}));
    let (status, answer) = app
        .post("/v1/accounts/vimond/events", &again.to_string())
        .await;
    assert_eq!((status, answer["duplicates"].clone()), (202, json!(1)));
    wait_for(&receiver, "/changes", 4).await;

    // Stopped and started on the same database: the versions go on from where they were.
    assert!(app.terminate().await.success());
    app.kill_and_restart().await;
    let after = json!([
        vimond("asset-deleted", "c-6", json!({"assetId": 100})),
        // System events after a deletion still count (seed 004).
        vimond("vmfm-video-file-deleted", "c-7", json!({"assetId": 100})),
        vimond("asset-updated", "c-8", json!({"assetId": 200})),
        // Progress is not a change.
        vimond("vmfm-transcoder-progress", "c-9", json!({"assetId": 200})),
    ]);
    let (status, answer) = app
        .post("/v1/accounts/vimond/events", &after.to_string())
        .await;
    assert_eq!((status, answer["stored"].clone()), (202, json!(4)));

    let expected = BTreeMap::from([
        ("100".to_owned(), vec![1, 2, 3, 4, 5]),
        ("200".to_owned(), vec![1, 2]),
    ]);
    // The log: each change right after its cause, versions in log order 1, 2, 3, …
    let logged = logged_changes(&app, "vimond").await;
    assert_eq!(versions(logged.iter().map(|(change, _)| change)), expected);
    for (change, cause) in &logged {
        assert_eq!(
            change["video"].as_str(),
            cause["entityKey"].as_str(),
            "{change} follows {cause}"
        );
        assert_eq!(change["account_id"], "vimond");
        assert_eq!(change["event"], "video-change");
        assert_eq!(change["timestamp"], cause["occurredAt"], "when it happened");
        assert_ne!(cause["name"], "category-updated");
    }

    // The subscriber: each version once, signed, in seed 004's shape.
    wait_for(&receiver, "/changes", 7).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let delivered = receiver.deliveries("/changes").await;
    assert_eq!(delivered.len(), 7, "no version delivered twice");
    assert!(delivered.iter().all(|d| d.verified == Some(true)));
    let bodies: Vec<Value> = delivered.iter().map(body).collect();
    let mut got = versions(&bodies);
    got.values_mut().for_each(|v| v.sort());
    assert_eq!(got, expected);
    for (delivery, change) in delivered.iter().zip(&bodies) {
        let shape = format!(
            r#"{{"timestamp":{},"account_id":"vimond","event":"video-change","video":"{}","version":{}}}"#,
            change["timestamp"],
            change["video"].as_str().unwrap(),
            change["version"]
        );
        assert_eq!(delivery.body, shape);
    }
}
