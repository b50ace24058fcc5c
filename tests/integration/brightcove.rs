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

/// Seed 004's own examples of a subscription request.
const SEED_ENDPOINTS: [&str; 2] = [
    "http://solutions.brightcove.com/bcls/di-api/di-callbacks.php",
    "http://solutions.brightcove.com:9002",
];
const ACCOUNT: &str = "57838016001";

fn subscriptions(account: &str) -> String {
    format!("/v1/accounts/{account}/subscriptions")
}

fn video_change_subscription(endpoint: &str) -> String {
    json!({"endpoint": endpoint, "events": ["video-change"]}).to_string()
}

/// The members a Brightcove client reads.
fn assert_brightcove_shape(subscription: &Value, endpoint: &str) {
    assert!(
        subscription["id"].as_str().is_some_and(|id| !id.is_empty()),
        "{subscription}"
    );
    assert_eq!(subscription["endpoint"], endpoint, "{subscription}");
    assert_eq!(
        subscription["events"],
        json!(["video-change"]),
        "{subscription}"
    );
}

#[tokio::test]
async fn seed_004_create_list_get_and_delete_answer_in_brightcove_shape() {
    let app = TestApp::start().await;
    let mut ids = Vec::new();
    for endpoint in SEED_ENDPOINTS {
        let (status, created) = app
            .post(
                &subscriptions(ACCOUNT),
                &video_change_subscription(endpoint),
            )
            .await;
        assert_eq!(status, 201, "{created}");
        assert_brightcove_shape(&created, endpoint);
        ids.push(created["id"].as_str().unwrap().to_owned());
    }

    let (status, list) = app.get(&subscriptions(ACCOUNT)).await;
    assert_eq!(status, 200);
    let list = list.as_array().expect("a list is an array");
    assert_eq!(list.len(), 2);
    for (listed, endpoint) in list.iter().zip(SEED_ENDPOINTS) {
        assert_brightcove_shape(listed, endpoint);
        assert!(listed.get("secret").is_none(), "the secret is shown once");
    }

    let one = format!("{}/{}", subscriptions(ACCOUNT), ids[0]);
    let (status, got) = app.get(&one).await;
    assert_eq!(status, 200);
    assert_brightcove_shape(&got, SEED_ENDPOINTS[0]);
    assert_eq!(got["id"], ids[0].as_str());

    // No update: delete and create (seed 004).
    let change = video_change_subscription("http://solutions.brightcove.com/elsewhere");
    for method in [reqwest::Method::PUT, reqwest::Method::PATCH] {
        let (status, error) = app
            .request(method.clone(), &one, Some(crate::app::ADMIN), Some(&change))
            .await;
        assert_eq!(status, 405, "{method} {error}");
        assert_eq!(error["error"]["code"], "update_not_supported");
        assert!(
            error["error"]["message"]
                .as_str()
                .unwrap()
                .contains("delete"),
            "{error}"
        );
    }
    let response = app
        .http
        .put(format!("{}{one}", app.url))
        .bearer_auth(crate::app::ADMIN)
        .body(change)
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.headers().get("allow").map(|v| v.to_str().unwrap()),
        Some("GET, DELETE")
    );
    assert_brightcove_shape(&app.get(&one).await.1, SEED_ENDPOINTS[0]);

    assert_eq!(app.delete(&one).await.0, 204);
    assert_eq!(app.get(&one).await.0, 404);
    assert_eq!(app.delete(&one).await.0, 404);
    let (_, list) = app.get(&subscriptions(ACCOUNT)).await;
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["id"], ids[1].as_str());
}

#[tokio::test]
async fn seed_004_each_422_rule_has_its_own_code_and_message() {
    let app = TestApp::start().await;
    let endpoint = SEED_ENDPOINTS[0];
    let refused = |body: Value, code: &'static str, field: Option<&'static str>| {
        let app = &app;
        async move {
            let (status, error) = app.post(&subscriptions(ACCOUNT), &body.to_string()).await;
            assert_eq!(status, 422, "{body} -> {error}");
            assert_eq!(error["error"]["code"], code, "{body} -> {error}");
            if let Some(field) = field {
                assert_eq!(error["error"]["field"], field, "{body} -> {error}");
            }
            error["error"]["message"].as_str().unwrap().to_owned()
        }
    };
    let mut messages = Vec::new();

    // 1. The endpoint or events field is missing from the request body.
    messages.push(
        refused(
            json!({"events": ["video-change"]}),
            "missing_endpoint",
            Some("endpoint"),
        )
        .await,
    );
    refused(
        json!({"endpoint": null, "events": ["video-change"]}),
        "missing_endpoint",
        Some("endpoint"),
    )
    .await;
    messages.push(
        refused(
            json!({"endpoint": endpoint}),
            "missing_events",
            Some("events"),
        )
        .await,
    );
    refused(
        json!({"endpoint": endpoint, "events": []}),
        "missing_events",
        Some("events"),
    )
    .await;

    // 2. The events field is not a list (an array).
    messages.push(
        refused(
            json!({"endpoint": endpoint, "events": "video-change"}),
            "events_not_array",
            Some("events"),
        )
        .await,
    );
    refused(
        json!({"endpoint": endpoint, "events": {"0": "video-change"}}),
        "events_not_array",
        Some("events"),
    )
    .await;

    // 3. The subscription is already defined.
    assert_eq!(
        app.post(
            &subscriptions(ACCOUNT),
            &video_change_subscription(endpoint)
        )
        .await
        .0,
        201
    );
    messages.push(
        refused(
            json!({"endpoint": endpoint, "events": ["video-change"]}),
            "duplicate_subscription",
            None,
        )
        .await,
    );
    // The same events written twice are the same subscription.
    refused(
        json!({"endpoint": endpoint, "events": ["video-change", "video-change"]}),
        "duplicate_subscription",
        None,
    )
    .await;

    // 4. The account already has 10 subscriptions to this event.
    for n in 2..=10 {
        let other = format!("http://solutions.brightcove.com/hook/{n}");
        let (status, created) = app
            .post(&subscriptions(ACCOUNT), &video_change_subscription(&other))
            .await;
        assert_eq!(status, 201, "subscription {n}: {created}");
    }
    let eleventh = refused(
        json!({"endpoint": "http://solutions.brightcove.com/hook/11", "events": ["video-change"]}),
        "too_many_subscriptions",
        Some("events"),
    )
    .await;
    assert!(eleventh.contains("10"), "{eleventh}");
    messages.push(eleventh);

    let distinct: std::collections::HashSet<&String> = messages.iter().collect();
    assert_eq!(distinct.len(), messages.len(), "{messages:#?}");
    // Refused requests created nothing; another account has its own 10.
    let (_, list) = app.get(&subscriptions(ACCOUNT)).await;
    assert_eq!(list.as_array().unwrap().len(), 10);
    assert_eq!(
        app.post(
            &subscriptions("another"),
            &video_change_subscription("http://solutions.brightcove.com/hook/11")
        )
        .await
        .0,
        201
    );
}

#[tokio::test]
async fn seed_004_the_limit_of_10_per_event_is_configurable() {
    let app = TestApp::start_with(&[("REELAY_MAX_SUBSCRIPTIONS_PER_EVENT", "3")]).await;
    for n in 0..3 {
        let endpoint = format!("http://solutions.brightcove.com/{n}");
        assert_eq!(
            app.post(
                &subscriptions(ACCOUNT),
                &video_change_subscription(&endpoint)
            )
            .await
            .0,
            201
        );
    }
    let (status, error) = app
        .post(
            &subscriptions(ACCOUNT),
            &video_change_subscription("http://solutions.brightcove.com/3"),
        )
        .await;
    assert_eq!(
        (status, error["error"]["code"].as_str()),
        (422, Some("too_many_subscriptions"))
    );
}

#[tokio::test]
async fn seed_004_no_account_reaches_another_accounts_subscriptions() {
    let app = TestApp::start().await;
    let (_, created) = app
        .post(
            &subscriptions(ACCOUNT),
            &video_change_subscription(SEED_ENDPOINTS[0]),
        )
        .await;
    let id = created["id"].as_str().unwrap().to_owned();
    let (_, theirs) = app
        .post(
            &subscriptions("another"),
            &video_change_subscription(SEED_ENDPOINTS[1]),
        )
        .await;
    let (_, key) = app.post(&format!("/v1/accounts/{ACCOUNT}/keys"), "").await;
    let key = key["key"].as_str().unwrap().to_owned();
    let (_, other_key) = app.post("/v1/accounts/another/keys", "").await;
    let other_key = other_key["key"].as_str().unwrap().to_owned();

    // An account key reaches its own account only.
    let one = format!("{}/{id}", subscriptions(ACCOUNT));
    let as_other = |method: reqwest::Method, path: String, body: Option<String>| {
        let app = &app;
        let other_key = other_key.clone();
        async move {
            app.request(method, &path, Some(&other_key), body.as_deref())
                .await
        }
    };
    for (method, path, body) in [
        (reqwest::Method::GET, subscriptions(ACCOUNT), None),
        (reqwest::Method::GET, one.clone(), None),
        (reqwest::Method::DELETE, one.clone(), None),
        (
            reqwest::Method::POST,
            subscriptions(ACCOUNT),
            Some(video_change_subscription(SEED_ENDPOINTS[1])),
        ),
    ] {
        let (status, answer) = as_other(method.clone(), path.clone(), body).await;
        assert_eq!(status, 403, "{method} {path}: {answer}");
        assert_eq!(answer["error"]["code"], "forbidden");
        assert!(answer.get("id").is_none() && !answer.is_array());
    }
    // An id is found only in its own account, whoever asks.
    for token in [crate::app::ADMIN, other_key.as_str()] {
        let elsewhere = format!("{}/{id}", subscriptions("another"));
        let (status, _) = app
            .request(reqwest::Method::GET, &elsewhere, Some(token), None)
            .await;
        assert_eq!(status, 404);
        let (status, _) = app
            .request(reqwest::Method::DELETE, &elsewhere, Some(token), None)
            .await;
        assert_eq!(status, 404);
    }
    // No token at all.
    assert_eq!(
        app.request(reqwest::Method::GET, &subscriptions(ACCOUNT), None, None)
            .await
            .0,
        401
    );
    // Its own key sees its own subscription, and only that.
    let (status, list) = app
        .request(
            reqwest::Method::GET,
            &subscriptions(ACCOUNT),
            Some(&key),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let ids: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![id.as_str()]);
    assert_ne!(theirs["id"].as_str(), Some(id.as_str()));
    assert_eq!(app.get(&one).await.0, 200, "still there");
}

#[tokio::test]
async fn seed_004_4xx_and_5xx_answers_are_retried() {
    let app = TestApp::start().await;
    let receiver = Receiver::start().await;
    let (id, _) = app
        .subscribe_receiver(
            &receiver,
            "/flaky",
            json!({"events": ["video-change"]}),
            &[
                crate::support::receiver::Response::status(404),
                crate::support::receiver::Response::status(503),
                crate::support::receiver::Response::status(200),
            ],
        )
        .await;
    let event = vimond("asset-published", "r-1", json!({"assetId": 7}));
    assert_eq!(
        app.post("/v1/accounts/vimond/events", &event.to_string())
            .await
            .0,
        202
    );
    let got = wait_for(&receiver, "/flaky", 3).await;
    assert!(got.iter().all(|d| body(d)["version"] == 1));
    let log = eventually(Duration::from_secs(10), "the attempts logged", || async {
        let (_, log) = app
            .get(&format!(
                "/v1/accounts/vimond/subscriptions/{id}/deliveries"
            ))
            .await;
        (log["attempts"].as_array().map(Vec::len) == Some(3)).then_some(log)
    })
    .await;
    let statuses: Vec<&Value> = log["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .map(|a| &a["statusCode"])
        .collect();
    assert_eq!(statuses, vec![&json!(404), &json!(503), &json!(200)]);
}
