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
async fn every_change_of_a_video_is_a_video_change_with_its_next_version_across_a_crash() {
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

    // Killed (SIGKILL, no shutdown at all) and started on the same database: the versions
    // go on from where they were.
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

    // The subscriber: every version, signed, in seed 004's shape. After a crash a delivery
    // may come again (at-least-once), under the same webhook-id with the same body.
    let delivered = eventually(Duration::from_secs(20), "7 video-changes", || async {
        let mut got = receiver.deliveries("/changes").await;
        got.sort_by(|a, b| a.webhook_id.cmp(&b.webhook_id));
        got.dedup_by(|a, b| a.webhook_id == b.webhook_id && a.body == b.body);
        (got.len() >= 7).then_some(got)
    })
    .await;
    assert_eq!(delivered.len(), 7, "one body per webhook-id");
    assert!(delivered.iter().all(|d| d.verified == Some(true)));
    let bodies: Vec<Value> = delivered.iter().map(body).collect();
    let mut got = versions(&bodies);
    got.values_mut().for_each(|v| v.sort());
    assert_eq!(got, expected, "each version once");
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

const SEED_003: &str = include_str!("../fixtures/seed_003_notifications.txt");
/// The job, video and account of seed 003's example.
const JOB: &str = "d3ef8751-2b88-4141-95d5-83f0393aca07";
const VIDEO: &str = "5660367449001";

/// Seed 003's notifications of one ingest job, each as its text there.
fn seed_notifications() -> Vec<String> {
    let texts: Vec<String> = serde_json::Deserializer::from_str(SEED_003)
        .into_iter::<&serde_json::value::RawValue>()
        .map(|raw| raw.expect("seed 003 notification").get().to_owned())
        .collect();
    assert_eq!(texts.len(), 17, "the full set of seed 003");
    texts
}

fn jobs(account: &str, job: &str, what: &str) -> String {
    format!("/v1/accounts/{account}/jobs/{job}/{what}")
}

/// Registers `urls` as the job's callbacks; returns the registrations.
async fn register(app: &TestApp, job: &str, urls: &[String]) -> Vec<Value> {
    let (status, answer) = app
        .post(
            &jobs(ACCOUNT, job, "callbacks"),
            &json!({ "callbacks": urls }).to_string(),
        )
        .await;
    assert_eq!(status, 201, "{answer}");
    assert_eq!(answer["job"], job);
    answer["callbacks"].as_array().expect("callbacks").clone()
}

async fn notify(app: &TestApp, job: &str, body: &str) -> Value {
    let (status, answer) = app.post(&jobs(ACCOUNT, job, "notifications"), body).await;
    assert_eq!(status, 202, "{body} -> {answer}");
    answer
}

/// Publishes seed notifications as the producer would: some alone, some in arrays.
async fn publish_seed(app: &TestApp, notifications: &[String]) {
    let (alone, batched) = notifications.split_at(notifications.len() / 2);
    for text in alone {
        assert_eq!(notify(app, JOB, text).await["stored"], 1);
    }
    for chunk in batched.chunks(3) {
        let answer = notify(app, JOB, &format!("[{}]", chunk.join(","))).await;
        assert_eq!(answer["stored"], chunk.len());
    }
}

#[tokio::test]
async fn seed_003_every_notification_reaches_both_callbacks_in_order_and_video_changes_count_across_a_restart()
 {
    let mut app = TestApp::start().await;
    let host1 = Receiver::start().await;
    let host2 = Receiver::start().await;
    // Standing subscriptions: the Dynamic Ingest topic, and video-change.
    app.subscribe(
        ACCOUNT,
        json!({"endpoint": host1.url("/topic"), "topics": ["dynamic-ingest"]}),
    )
    .await;
    let (_, changes_secret) = app
        .subscribe(
            ACCOUNT,
            json!({"endpoint": host2.url("/changes"), "events": ["video-change"]}),
        )
        .await;
    host2.hook("/changes", &changes_secret, &[]).await;

    // Seed 003's request names two callback URLs.
    let urls = [host1.url("/path1"), host2.url("/path2")];
    let registered = register(&app, JOB, &urls).await;
    assert_eq!(registered.len(), 2);
    for (registration, (receiver, path)) in registered
        .iter()
        .zip([(&host1, "/path1"), (&host2, "/path2")])
    {
        assert_eq!(registration["url"], receiver.url(path));
        assert!(registration["id"].as_str().unwrap().starts_with("cb_"));
        let secret = registration["secret"].as_str().expect("secret");
        receiver.hook(path, secret, &[]).await;
    }
    // Registering a URL again changes nothing.
    let again = register(&app, JOB, &urls[..1]).await;
    assert_eq!(again[0]["id"], registered[0]["id"]);
    assert_eq!(again[0]["expiresAt"], registered[0]["expiresAt"]);
    let (_, listed) = app.get(&jobs(ACCOUNT, JOB, "callbacks")).await;
    assert_eq!(listed["callbacks"].as_array().unwrap().len(), 2);
    assert!(listed["callbacks"][0].get("secret").is_none());
    // They are not standing subscriptions: the subscription list does not show them.
    let (_, standing) = app.get(&subscriptions(ACCOUNT)).await;
    assert_eq!(standing.as_array().unwrap().len(), 2);

    let notifications = seed_notifications();
    let (first, rest) = notifications.split_at(8);
    publish_seed(&app, first).await;
    wait_for(&host1, "/path1", first.len()).await;
    wait_for(&host2, "/path2", first.len()).await;

    // Stopped and started on the same database halfway through the job.
    assert!(app.terminate().await.success());
    app.kill_and_restart().await;
    publish_seed(&app, rest).await;

    for (receiver, path) in [(&host1, "/path1"), (&host2, "/path2")] {
        wait_for(receiver, path, notifications.len()).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    for (receiver, path) in [(&host1, "/path1"), (&host2, "/path2")] {
        let got = receiver.deliveries(path).await;
        let bodies: Vec<&str> = got.iter().map(|d| d.body.as_str()).collect();
        assert_eq!(
            bodies, notifications,
            "{path}: each once, as sent, in order"
        );
        assert!(got.iter().all(|d| d.verified == Some(true)), "{path}");
        // One at a time: each was sent after the previous one was answered.
        assert!(got.windows(2).all(|pair| pair[0].at <= pair[1].at));
    }
    let topic = wait_for(&host1, "/topic", notifications.len()).await;
    let mut topic_bodies: Vec<&str> = topic.iter().map(|d| d.body.as_str()).collect();
    let mut sent: Vec<&str> = notifications.iter().map(String::as_str).collect();
    topic_bodies.sort();
    sent.sort();
    assert_eq!(topic_bodies, sent, "the topic's subscribers get them too");

    // One video-change per notification, versions 1 to 17, in log order, each right after
    // its notification.
    let logged = logged_changes(&app, ACCOUNT).await;
    let expected = BTreeMap::from([(VIDEO.to_owned(), (1..=17).collect::<Vec<i64>>())]);
    assert_eq!(versions(logged.iter().map(|(change, _)| change)), expected);
    for (change, cause) in &logged {
        assert_eq!(cause["name"], "dynamic-ingest-notification");
        assert_eq!(cause["entityKey"], JOB);
        assert_eq!(change["account_id"], ACCOUNT);
    }
    let delivered = wait_for(&host2, "/changes", 17).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(host2.deliveries("/changes").await.len(), 17, "no repeats");
    let bodies: Vec<Value> = delivered.iter().map(body).collect();
    let mut got = versions(&bodies);
    got.values_mut().for_each(|v| v.sort());
    assert_eq!(got, expected);
}

#[tokio::test]
async fn a_callback_that_fails_gets_the_job_s_notifications_in_order_all_the_same() {
    use crate::support::receiver::Response;
    let app = TestApp::start().await;
    let receiver = Receiver::start().await;
    let paths = ["/recovers", "/dies", "/steady"];
    let urls: Vec<String> = paths.iter().map(|path| receiver.url(path)).collect();
    let registered = register(&app, JOB, &urls).await;
    let scripts = [
        // Two failures, then success: the first notification is retried in place.
        vec![
            Response::status(500),
            Response::status(404),
            Response::status(200),
        ],
        // Four failures use up the (test) schedule's three retries: dead-lettered, and
        // the next notification goes.
        vec![
            Response::status(500),
            Response::status(500),
            Response::status(500),
            Response::status(500),
            Response::status(200),
        ],
        vec![],
    ];
    for ((path, registration), script) in paths.iter().zip(&registered).zip(&scripts) {
        receiver
            .hook(path, registration["secret"].as_str().unwrap(), script)
            .await;
    }
    let notifications = &seed_notifications()[..5];
    notify(&app, JOB, &format!("[{}]", notifications.join(","))).await;

    let arrivals = |path: &'static str, count: usize| {
        let receiver = &receiver;
        async move {
            wait_for(receiver, path, count)
                .await
                .iter()
                .map(|d| d.body.clone())
                .collect::<Vec<_>>()
        }
    };
    let n = |i: usize| notifications[i].clone();
    assert_eq!(
        arrivals("/recovers", 7).await,
        vec![n(0), n(0), n(0), n(1), n(2), n(3), n(4)]
    );
    assert_eq!(
        arrivals("/dies", 8).await,
        vec![n(0), n(0), n(0), n(0), n(1), n(2), n(3), n(4)]
    );
    assert_eq!(arrivals("/steady", 5).await, notifications);

    // The dead letter is in the registration's delivery log.
    let id = registered[1]["id"].as_str().unwrap();
    let log = eventually(Duration::from_secs(10), "the dead letter", || async {
        let (_, log) = app
            .get(&format!("{}/{id}/deliveries", subscriptions(ACCOUNT)))
            .await;
        (log["deadLetters"].as_array().map(Vec::len) == Some(1)).then_some(log)
    })
    .await;
    let (_, stored) = app
        .get(&format!(
            "/v1/accounts/{ACCOUNT}/events?event=dynamic-ingest-notification&limit=1"
        ))
        .await;
    assert_eq!(log["deadLetters"][0]["eventId"], stored["events"][0]["id"]);
}

#[tokio::test]
async fn a_notification_for_a_job_without_callbacks_is_stored_and_reaches_the_topic() {
    let app = TestApp::start().await;
    let receiver = Receiver::start().await;
    let (_, secret) = app
        .subscribe(
            ACCOUNT,
            json!({"endpoint": receiver.url("/topic"), "events": ["dynamic-ingest-notification"]}),
        )
        .await;
    receiver.hook("/topic", &secret, &[]).await;
    let registered = register(&app, "another-job", &[receiver.url("/other-job")]).await;
    receiver
        .hook("/other-job", registered[0]["secret"].as_str().unwrap(), &[])
        .await;

    let notification = &seed_notifications()[4];
    let answer = notify(&app, JOB, notification).await;
    assert_eq!(
        (answer["stored"].clone(), answer["duplicates"].clone()),
        (json!(1), json!(0))
    );
    // Sent again (a producer's retry): stored and delivered once.
    let answer = notify(&app, JOB, notification).await;
    assert_eq!(answer["duplicates"], 1);

    let got = wait_for(&receiver, "/topic", 1).await;
    assert_eq!(got[0].body, *notification);
    assert_eq!(got[0].verified, Some(true));
    let (_, page) = app
        .get(&format!(
            "/v1/accounts/{ACCOUNT}/events?topic=dynamic-ingest"
        ))
        .await;
    assert_eq!(page["events"].as_array().unwrap().len(), 1);
    assert_eq!(page["events"][0]["entityKey"], JOB);
    assert_eq!(page["events"][0]["id"], answer["ids"][0]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        receiver.deliveries("/other-job").await.is_empty(),
        "another job's callback"
    );
    assert_eq!(receiver.deliveries("/topic").await.len(), 1);
}

#[tokio::test]
async fn bad_job_input_gets_a_clear_422_and_changes_nothing() {
    let app = TestApp::start().await;
    let callbacks = jobs(ACCOUNT, JOB, "callbacks");
    let cases = [
        (json!({}), "missing_callbacks", None),
        (json!({"callbacks": []}), "missing_callbacks", None),
        (
            json!({"callbacks": "https://host1/path1"}),
            "callbacks_not_array",
            None,
        ),
        (
            json!({"callbacks": {"url": "https://host1/path1"}}),
            "callbacks_not_array",
            None,
        ),
        (
            json!({"callbacks": ["https://host1/path1", 7]}),
            "invalid_callback",
            Some(1),
        ),
        (
            json!({"callbacks": ["https://host1/path1", "not a url"]}),
            "destination_refused",
            Some(1),
        ),
        (
            json!({"callbacks": ["ftp://host1/path1"]}),
            "destination_refused",
            Some(0),
        ),
        (json!(["https://host1/path1"]), "invalid_body", None),
    ];
    for (body, code, index) in cases {
        let (status, error) = app.post(&callbacks, &body.to_string()).await;
        assert_eq!(status, 422, "{body} -> {error}");
        assert_eq!(error["error"]["code"], code, "{body} -> {error}");
        if code != "invalid_body" {
            assert_eq!(error["error"]["field"], "callbacks", "{body} -> {error}");
        }
        assert_eq!(
            error["error"].get("index").and_then(Value::as_u64),
            index.map(|i| i as u64)
        );
    }
    assert_eq!(app.post(&callbacks, "{\"callbacks\": [").await.0, 400);
    let too_many: Vec<String> = (0..11).map(|n| format!("https://host{n}/path")).collect();
    let (status, error) = app
        .post(&callbacks, &json!({ "callbacks": too_many }).to_string())
        .await;
    assert_eq!(
        (status, error["error"]["code"].as_str()),
        (422, Some("too_many_callbacks"))
    );
    let (_, listed) = app.get(&callbacks).await;
    assert_eq!(listed["callbacks"], json!([]), "nothing registered");

    // Notifications: the whole request is refused, naming the item and the field.
    let notifications = seed_notifications();
    let other_job = notifications[1].replace(JOB, "another-job");
    let no_status = notifications[2].replace("\"status\"", "\"state\"");
    for (body, index, field) in [
        (other_job.clone(), None, "jobId"),
        (
            format!("[{},{other_job}]", notifications[0]),
            Some(1),
            "jobId",
        ),
        (
            format!("[{},{no_status}]", notifications[0]),
            Some(1),
            "status",
        ),
        (
            notifications[0].replace("\"57838016001\"", "\"775205503001\""),
            None,
            "accountId",
        ),
    ] {
        let (status, error) = app.post(&jobs(ACCOUNT, JOB, "notifications"), &body).await;
        assert_eq!(status, 422, "{body} -> {error}");
        assert_eq!(error["error"]["field"], field);
        assert_eq!(
            error["error"].get("index").and_then(Value::as_u64),
            index.map(|i: usize| i as u64)
        );
    }
    assert_eq!(
        app.post(&jobs(ACCOUNT, JOB, "notifications"), "[]").await.0,
        422
    );
    assert_eq!(
        app.post(&jobs(ACCOUNT, JOB, "notifications"), "{").await.0,
        400
    );
    // Elsewhere than their own route, notifications are refused too.
    let as_vimond = json!({"eventName": "dynamic-ingest-notification", "guid": "g",
        "timestamp": "2024-06-26T08:52:12Z", "entity": "poster", "entityType": "ASSET",
        "action": "CREATE", "status": "SUCCESS"});
    let (status, error) = app
        .post(
            &format!("/v1/accounts/{ACCOUNT}/events"),
            &as_vimond.to_string(),
        )
        .await;
    assert_eq!(
        (status, error["error"]["field"].as_str()),
        (422, Some("eventName"))
    );
    assert!(
        app.stored_events(ACCOUNT).await.is_empty(),
        "nothing stored"
    );

    // Another account's key, a wrong token, no token.
    let (_, key) = app.post("/v1/accounts/another/keys", "").await;
    let key = key["key"].as_str().unwrap().to_owned();
    let register_body = json!({"callbacks": ["https://host1/path1"]}).to_string();
    for (token, expected) in [(Some(key.as_str()), 403), (Some("wrong"), 401), (None, 401)] {
        for (method, path, body) in [
            (
                reqwest::Method::POST,
                callbacks.clone(),
                Some(register_body.as_str()),
            ),
            (reqwest::Method::GET, callbacks.clone(), None),
            (
                reqwest::Method::POST,
                jobs(ACCOUNT, JOB, "notifications"),
                Some(notifications[0].as_str()),
            ),
        ] {
            let (status, answer) = app.request(method.clone(), &path, token, body).await;
            assert_eq!(status, expected, "{method} {path} with {token:?}: {answer}");
        }
    }
    assert!(
        app.stored_events(ACCOUNT).await.is_empty(),
        "nothing stored"
    );
}

#[tokio::test]
async fn private_callback_urls_are_refused_unless_allowed() {
    let app = TestApp::start_with(&[("REELAY_ALLOW_PRIVATE_DESTINATIONS", "false")]).await;
    let callbacks = jobs(ACCOUNT, JOB, "callbacks");
    for url in [
        "http://127.0.0.1:9/hook",
        "http://10.0.0.8/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://localhost/hook",
    ] {
        let body = json!({"callbacks": ["http://93.184.215.14/public", url]});
        let (status, error) = app.post(&callbacks, &body.to_string()).await;
        assert_eq!(status, 422, "{url}: {error}");
        assert_eq!(error["error"]["code"], "destination_refused");
        assert_eq!(error["error"]["index"], 1);
        assert!(
            error["error"]["message"]
                .as_str()
                .unwrap()
                .contains("--allow-private-destinations"),
            "{error}"
        );
    }
    let (_, listed) = app.get(&callbacks).await;
    assert_eq!(
        listed["callbacks"],
        json!([]),
        "none of the request is registered"
    );
}

#[tokio::test]
async fn job_callbacks_expire() {
    let app = TestApp::start_with(&[("REELAY_JOB_CALLBACK_TTL", "1s")]).await;
    let receiver = Receiver::start().await;
    let (_, secret) = app
        .subscribe(
            ACCOUNT,
            json!({"endpoint": receiver.url("/topic"), "topics": ["dynamic-ingest"]}),
        )
        .await;
    receiver.hook("/topic", &secret, &[]).await;
    let before = chrono::Utc::now().timestamp_millis();
    let registered = register(&app, JOB, &[receiver.url("/callback")]).await;
    let expires_at = registered[0]["expiresAt"].as_i64().unwrap();
    assert!(
        (before + 1000..before + 5000).contains(&expires_at),
        "{expires_at}"
    );
    receiver
        .hook("/callback", registered[0]["secret"].as_str().unwrap(), &[])
        .await;
    let notifications = seed_notifications();
    notify(&app, JOB, &notifications[0]).await;
    wait_for(&receiver, "/callback", 1).await;

    eventually(
        Duration::from_secs(10),
        "the registration to expire",
        || async {
            let (_, listed) = app.get(&jobs(ACCOUNT, JOB, "callbacks")).await;
            (listed["callbacks"] == json!([])).then_some(())
        },
    )
    .await;
    let id = registered[0]["id"].as_str().unwrap();
    assert_eq!(
        app.get(&format!("{}/{id}", subscriptions(ACCOUNT))).await.0,
        404
    );
    notify(&app, JOB, &notifications[1]).await;
    wait_for(&receiver, "/topic", 2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.deliveries("/callback").await.len(), 1, "expired");
}

#[tokio::test]
async fn a_callback_waiting_for_a_retry_keeps_its_order_across_a_restart() {
    use crate::support::receiver::Response;
    let mut app = TestApp::start_with(&[("REELAY_RETRY_SCHEDULE", "2s,2s,2s")]).await;
    let receiver = Receiver::start().await;
    let registered = register(&app, JOB, &[receiver.url("/callback")]).await;
    receiver
        .hook(
            "/callback",
            registered[0]["secret"].as_str().unwrap(),
            &[Response::status(503), Response::status(200)],
        )
        .await;
    let notifications = &seed_notifications()[..3];
    notify(&app, JOB, &format!("[{}]", notifications.join(","))).await;
    wait_for(&receiver, "/callback", 1).await;

    // The first notification waits for its retry; the others wait behind it, across a
    // restart too.
    assert!(app.terminate().await.success());
    app.kill_and_restart().await;
    let got = wait_for(&receiver, "/callback", 4).await;
    let bodies: Vec<&str> = got.iter().map(|d| d.body.as_str()).collect();
    let n = |i: usize| notifications[i].as_str();
    assert_eq!(bodies, vec![n(0), n(0), n(1), n(2)]);
}
