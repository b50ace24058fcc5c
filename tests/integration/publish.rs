//! Publishing: the seeds' examples arrive signed, filters pick the right events, bad
//! input is refused whole with nothing stored.

use std::time::Duration;

use serde_json::{Value, json};

use crate::app::{TestApp, eventually};
use crate::support::receiver::Receiver;

const SEED_EVENTS: &str = include_str!("../fixtures/seed_events.json");

/// Every well-formed example event of seeds 000 and 001, as the seeds write them.
pub(crate) fn seed_events() -> Vec<String> {
    let fixtures: Vec<Value> = serde_json::from_str(SEED_EVENTS).expect("fixture JSON");
    fixtures
        .into_iter()
        .map(|f| f["text"].as_str().expect("text").to_owned())
        .collect()
}

#[tokio::test]
async fn every_seed_example_arrives_signed_at_a_subscribed_webhook() {
    let app = TestApp::start().await;
    let receiver = Receiver::start().await;
    let (status, catalog) = app.get("/v1/catalog").await;
    assert_eq!(status, 200);
    let topics: Vec<String> = catalog["topics"]
        .as_array()
        .expect("topics")
        .iter()
        .map(|t| t["name"].as_str().expect("name").to_owned())
        .collect();
    // Every topic but the video-change notifications Reelay derives from some of them.
    let topics: Vec<String> = topics
        .into_iter()
        .filter(|topic| topic != "cms-notifications")
        .collect();
    app.subscribe_receiver(&receiver, "/all", json!({"topics": topics}), &[])
        .await;

    let events = seed_events();
    assert_eq!(
        events.len(),
        11,
        "fixture has every well-formed seed example"
    );
    for text in &events {
        // Published as written: the example's own text, one request each.
        let (status, answer) = app.post("/v1/accounts/vimond/events", text).await;
        assert_eq!(status, 202, "{text} refused: {answer}");
        let event: Value = serde_json::from_str(text).unwrap();
        assert_eq!(answer["ids"], json!([event["guid"]]));
    }

    let deliveries = eventually(
        Duration::from_secs(20),
        "every seed event delivered",
        || async {
            let got = receiver.deliveries("/all").await;
            (got.len() >= events.len()).then_some(got)
        },
    )
    .await;
    assert_eq!(deliveries.len(), events.len(), "each event delivered once");
    for text in &events {
        let event: Value = serde_json::from_str(text).unwrap();
        let guid = event["guid"].as_str().unwrap();
        let delivery = deliveries
            .iter()
            .find(|d| d.webhook_id.as_deref() == Some(guid))
            .unwrap_or_else(|| panic!("{guid} not delivered"));
        assert_eq!(
            delivery.verified,
            Some(true),
            "signature of {guid}: {:?}",
            delivery.error
        );
        assert_eq!(
            &delivery.body, text,
            "the original document is delivered byte for byte"
        );
        assert!(
            delivery
                .webhook_signature
                .as_deref()
                .unwrap()
                .starts_with("v1,")
        );
        let sent: i64 = delivery
            .webhook_timestamp
            .as_deref()
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            (sent as f64 - delivery.at).abs() < 60.0,
            "webhook-timestamp is the sending time"
        );
        assert_eq!(
            delivery.headers.get("content-type").map(String::as_str),
            Some("application/json")
        );
    }
}

#[tokio::test]
async fn an_event_name_subscriber_gets_only_that_name_and_a_topic_subscriber_all_of_its_names() {
    let app = TestApp::start().await;
    let receiver = Receiver::start().await;
    app.subscribe_receiver(
        &receiver,
        "/name",
        json!({"events": ["asset-updated"]}),
        &[],
    )
    .await;
    app.subscribe_receiver(
        &receiver,
        "/topic",
        json!({"topics": ["asset-operations"]}),
        &[],
    )
    .await;

    let batch = json!([
        asset_event("asset-updated", "g-1"),
        asset_event("asset-published", "g-2"),
        {"eventName": "category-updated", "tenant": "vimond", "timestamp": "2023-03-31T12:14:24.527Z",
         "guid": "g-3", "categoryId": 377484},
        asset_event("asset-deleted", "g-4"),
    ]);
    let (status, answer) = app
        .post("/v1/accounts/vimond/events", &batch.to_string())
        .await;
    assert_eq!(status, 202, "{answer}");

    let topic_ids = eventually(Duration::from_secs(10), "topic deliveries", || async {
        let got = receiver.deliveries("/topic").await;
        (got.len() >= 3).then(|| ids(&got))
    })
    .await;
    assert_eq!(sorted(topic_ids), vec!["g-1", "g-2", "g-4"]);
    let name_ids = eventually(Duration::from_secs(10), "name delivery", || async {
        let got = receiver.deliveries("/name").await;
        (!got.is_empty()).then(|| ids(&got))
    })
    .await;
    // Let any wrong delivery arrive before judging.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(name_ids, vec!["g-1"]);
    assert_eq!(ids(&receiver.deliveries("/name").await), vec!["g-1"]);
    assert_eq!(receiver.deliveries("/topic").await.len(), 3);
}

#[tokio::test]
async fn the_same_guid_published_twice_is_stored_and_delivered_once() {
    let app = TestApp::start().await;
    let receiver = Receiver::start().await;
    app.subscribe_receiver(&receiver, "/h", json!({"events": ["asset-updated"]}), &[])
        .await;
    let event = asset_event("asset-updated", "same-guid").to_string();
    let (first, answer) = app.post("/v1/accounts/vimond/events", &event).await;
    assert_eq!((first, answer["stored"].clone()), (202, json!(1)));
    let (second, answer) = app.post("/v1/accounts/vimond/events", &event).await;
    assert_eq!((second, answer["duplicates"].clone()), (202, json!(1)));
    // Twice in one batch, too.
    let batch = format!("[{event},{event}]");
    let (third, answer) = app.post("/v1/accounts/vimond/events", &batch).await;
    assert_eq!((third, answer["duplicates"].clone()), (202, json!(2)));

    eventually(Duration::from_secs(10), "one delivery", || async {
        (!receiver.deliveries("/h").await.is_empty()).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.deliveries("/h").await.len(), 1);
    // Stored once, with the one video-change it caused.
    let names: Vec<Value> = app
        .stored_events("vimond")
        .await
        .iter()
        .map(|event| event["name"].clone())
        .collect();
    assert_eq!(names, vec![json!("asset-updated"), json!("video-change")]);
}

#[tokio::test]
async fn bad_input_gets_a_clear_error_and_nothing_is_stored() {
    let app = TestApp::start().await;
    let receiver = Receiver::start().await;
    app.subscribe_receiver(
        &receiver,
        "/h",
        json!({"topics": ["asset-operations"]}),
        &[],
    )
    .await;
    let publish = |body: String| {
        let app = &app;
        async move { app.post("/v1/accounts/vimond/events", &body).await }
    };

    let mut unknown = asset_event("asset-exploded", "u-1");
    let (status, error) = publish(unknown.to_string()).await;
    assert_eq!(status, 422, "{error}");
    assert_eq!(error["error"]["field"], "eventName");
    unknown["eventName"] = json!(42);
    assert_eq!(publish(unknown.to_string()).await.0, 422);

    let mut no_guid = asset_event("asset-updated", "x");
    no_guid.as_object_mut().unwrap().remove("guid");
    let (status, error) = publish(no_guid.to_string()).await;
    assert_eq!(
        (status, error["error"]["field"].clone()),
        (422, json!("guid")),
        "{error}"
    );

    let mut other_tenant = asset_event("asset-updated", "t-1");
    other_tenant["tenant"] = json!("someone-else");
    let (status, error) = publish(other_tenant.to_string()).await;
    assert_eq!(
        (status, error["error"]["field"].clone()),
        (422, json!("tenant")),
        "{error}"
    );

    let (status, error) = publish("{\"eventName\": \"asset-updated\",\n \"guid\": }".into()).await;
    assert_eq!(status, 400, "{error}");
    assert_eq!(error["error"]["code"], "malformed_json");
    assert_eq!(error["error"]["line"], 2);
    assert!(error["error"]["column"].as_u64().unwrap() > 0);

    let mut missing_asset = asset_event("asset-updated", "b-2");
    missing_asset.as_object_mut().unwrap().remove("assetId");
    let batch = json!([
        asset_event("asset-updated", "b-1"),
        missing_asset,
        asset_event("asset-updated", "b-3")
    ]);
    let (status, error) = publish(batch.to_string()).await;
    assert_eq!(status, 422, "{error}");
    assert_eq!(error["error"]["index"], 1);
    assert_eq!(error["error"]["field"], "assetId");

    assert_eq!(publish("[]".into()).await.0, 422);
    assert_eq!(publish("\"just a string\"".into()).await.0, 422);

    assert!(
        app.stored_events("vimond").await.is_empty(),
        "nothing stored"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        receiver.deliveries("/h").await.is_empty(),
        "nothing delivered"
    );
}

#[tokio::test]
async fn the_log_can_be_queried_by_topic_event_and_position() {
    let app = TestApp::start().await;
    let batch = json!([
        asset_event("asset-updated", "q-1"),
        asset_event("asset-published", "q-2"),
        {"eventName": "category-updated", "timestamp": "2023-03-31T12:14:24.527Z", "guid": "q-3", "categoryId": 1},
    ]);
    assert_eq!(
        app.post("/v1/accounts/vimond/events", &batch.to_string())
            .await
            .0,
        202
    );
    let (_, page) = app
        .get("/v1/accounts/vimond/events?topic=asset-operations")
        .await;
    assert_eq!(event_ids(&page), vec!["q-1", "q-2"]);
    let (_, page) = app
        .get("/v1/accounts/vimond/events?event=category-updated")
        .await;
    assert_eq!(event_ids(&page), vec!["q-3"]);
    let (_, page) = app.get("/v1/accounts/vimond/events?limit=1").await;
    assert_eq!(event_ids(&page), vec!["q-1"]);
    let next = page["next"].as_i64().expect("next page");
    let (_, page) = app
        .get(&format!("/v1/accounts/vimond/events?after={next}"))
        .await;
    // Each asset event is followed by the video-change it caused.
    let names: Vec<&str> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|event| event["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        vec![
            "video-change",
            "asset-published",
            "video-change",
            "category-updated"
        ]
    );
    assert_eq!(page["events"][1]["id"], "q-2");
    assert_eq!(page["events"][1]["event"]["assetId"], 897874);
    // Another account sees none of it.
    let (_, page) = app.get("/v1/accounts/other/events").await;
    assert!(event_ids(&page).is_empty());
    // NDJSON export.
    let text = app
        .http
        .get(format!("{}/v1/accounts/vimond/events", app.url))
        .bearer_auth(crate::app::ADMIN)
        .header("accept", "application/x-ndjson")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(text.lines().count(), 5);
}

pub fn asset_event(name: &str, guid: &str) -> Value {
    json!({
        "eventName": name, "originator": "tests", "tenant": "vimond", "versions": ["1.0"],
        "timestamp": "2022-09-19T08:36:30.321Z", "guid": guid, "assetId": 897874,
        "custom": {"kept": true}
    })
}

fn ids(deliveries: &[crate::support::receiver::Delivery]) -> Vec<String> {
    deliveries
        .iter()
        .filter_map(|d| d.webhook_id.clone())
        .collect()
}

fn event_ids(page: &Value) -> Vec<String> {
    page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect()
}

fn sorted(mut items: Vec<String>) -> Vec<String> {
    items.sort();
    items
}
