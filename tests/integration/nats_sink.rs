//! The NATS JetStream sink against real servers: the machine's (127.0.0.1:4222), and one
//! of the test's own that starts late. What Reelay publishes is read back with a
//! consumer.

use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use futures::StreamExt;
use serde_json::{Value, json};

use crate::app::{TestApp, eventually};
use crate::publish::asset_event;

const NATS: &str = "nats://127.0.0.1:4222";

fn unique(prefix: &str) -> String {
    format!("{prefix}{}", uuid::Uuid::new_v4().simple())
}

/// A stream of its own on `url` capturing `<prefix>.>`.
async fn stream_on(url: &str, name: &str, prefix: &str) -> jetstream::Context {
    let client = async_nats::connect(url).await.expect("NATS server");
    let context = jetstream::new(client);
    context
        .create_stream(stream::Config {
            name: name.to_owned(),
            subjects: vec![format!("{prefix}.>")],
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await
        .expect("create the stream");
    context
}

/// Every message of the stream, in stream order.
async fn read_all(context: &jetstream::Context, name: &str) -> Vec<jetstream::Message> {
    let stream = context.get_stream(name).await.expect("stream");
    let consumer: consumer::PullConsumer = stream
        .create_consumer(consumer::pull::Config {
            durable_name: None,
            ack_policy: consumer::AckPolicy::None,
            ..Default::default()
        })
        .await
        .expect("consumer");
    let count = stream.get_info().await.expect("info").state.messages as usize;
    if count == 0 {
        return Vec::new();
    }
    let mut batch = consumer
        .fetch()
        .max_messages(count)
        .expires(Duration::from_secs(2))
        .messages()
        .await
        .expect("fetch");
    let mut messages = Vec::new();
    while let Some(message) = batch.next().await {
        messages.push(message.expect("message"));
    }
    messages
}

async fn message_count(context: &jetstream::Context, name: &str) -> u64 {
    let mut stream = context.get_stream(name).await.expect("stream");
    stream.info().await.expect("info").state.messages
}

fn header<'a>(message: &'a jetstream::Message, name: &str) -> Option<&'a str> {
    message
        .headers
        .as_ref()
        .and_then(|headers| headers.get(name))
        .map(|value| value.as_str())
}

async fn publish(app: &TestApp, guids: &[String]) {
    let events: Vec<Value> = guids
        .iter()
        .map(|guid| asset_event("asset-updated", guid))
        .collect();
    let (status, answer) = app
        .post(
            "/v1/accounts/vimond/events",
            &Value::Array(events).to_string(),
        )
        .await;
    assert_eq!(status, 202, "{answer}");
}

#[tokio::test]
async fn events_arrive_on_the_stream_acked_with_their_headers_and_replays_are_deduplicated() {
    let prefix = unique("rt");
    let name = unique("REELAY_");
    let context = stream_on(NATS, &name, &prefix).await;
    let app = TestApp::start().await;
    let (id, _) = app
        .subscribe(
            "vimond",
            json!({"destination": {"type": "nats", "subject": format!("{prefix}.{{account}}.{{eventName}}"), "url": NATS},
                   "topics": ["asset-operations"]}),
        )
        .await;
    let guids: Vec<String> = (0..5).map(|n| format!("n-{n}-{prefix}")).collect();
    publish(&app, &guids).await;
    eventually(
        Duration::from_secs(15),
        "5 messages on the stream",
        || async { (message_count(&context, &name).await >= 5).then_some(()) },
    )
    .await;

    let messages = read_all(&context, &name).await;
    assert_eq!(messages.len(), 5);
    let stored = app.stored_events("vimond").await;
    for (message, guid) in messages.iter().zip(&guids) {
        assert_eq!(
            message.subject.as_str(),
            format!("{prefix}.vimond.asset-updated")
        );
        let body: Value = serde_json::from_slice(&message.payload).expect("JSON");
        assert_eq!(body["guid"], guid.as_str());
        assert_eq!(header(message, "Nats-Msg-Id"), Some(guid.as_str()));
        assert_eq!(header(message, "Reelay-Event-Name"), Some("asset-updated"));
        assert_eq!(header(message, "Reelay-Topic"), Some("asset-operations"));
        assert_eq!(header(message, "Reelay-Account"), Some("vimond"));
        assert_eq!(header(message, "Content-Type"), Some("application/json"));
        let sequence = stored
            .iter()
            .find(|event| event["id"] == guid.as_str() || event["guid"] == guid.as_str())
            .and_then(|event| event["sequence"].as_i64())
            .map(|sequence| sequence.to_string());
        assert!(sequence.is_some(), "{stored:?}");
        assert_eq!(header(message, "Reelay-Sequence"), sequence.as_deref());
    }

    // A replay sends every event again, with the same ids: the stream keeps one of each.
    let (status, answer) = app
        .post(
            &format!("/v1/accounts/vimond/subscriptions/{id}/replay"),
            &json!({"since": "2000-01-01T00:00:00Z"}).to_string(),
        )
        .await;
    assert_eq!(status, 202, "{answer}");
    eventually(Duration::from_secs(15), "the replay delivered", || async {
        let (_, subscription) = app
            .get(&format!("/v1/accounts/vimond/subscriptions/{id}"))
            .await;
        (subscription["delivered"].as_u64() >= Some(10)).then_some(())
    })
    .await;
    assert_eq!(
        message_count(&context, &name).await,
        5,
        "duplicates dropped"
    );
    context
        .delete_stream(&name)
        .await
        .expect("delete the stream");
}

#[tokio::test]
async fn a_bad_subject_or_a_subject_no_stream_captures_is_refused_at_creation() {
    let app = TestApp::start().await;
    let create = |destination: Value| {
        json!({"destination": destination, "topics": ["asset-operations"]}).to_string()
    };
    for subject in ["a.{tenant}", "a..b", "a.*", "has space", ""] {
        let (status, answer) = app
            .post(
                "/v1/accounts/vimond/subscriptions",
                &create(json!({"type": "nats", "subject": subject, "url": NATS})),
            )
            .await;
        assert_eq!(status, 422, "{subject:?}: {answer}");
        assert_eq!(answer["error"]["field"], "destination.subject", "{answer}");
    }
    let nowhere = unique("nowhere");
    let (status, answer) = app
        .post(
            "/v1/accounts/vimond/subscriptions",
            &create(json!({"type": "nats", "subject": nowhere, "url": NATS})),
        )
        .await;
    assert_eq!(status, 422, "{answer}");
    assert_eq!(
        answer["error"]["code"], "destination_unreachable",
        "{answer}"
    );
    let (status, answer) = app
        .post(
            "/v1/accounts/vimond/subscriptions",
            &create(json!({"type": "nats", "subject": "x.y", "url": "http://127.0.0.1:4222"})),
        )
        .await;
    assert_eq!(status, 422, "{answer}");
    assert_eq!(answer["error"]["field"], "destination.url", "{answer}");
}

/// A free TCP port on loopback.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("address")
        .port()
}

#[tokio::test]
async fn a_server_that_is_down_is_retried_and_drained_once_it_is_up_with_nothing_lost() {
    let port = free_port();
    let url = format!("nats://127.0.0.1:{port}");
    let app = TestApp::start_with(&[
        ("REELAY_RETRY_SCHEDULE", &vec!["300ms"; 60].join(",")),
        ("REELAY_SLOW_RETRY", "1s"),
    ])
    .await;
    let prefix = unique("late");
    let (id, _) = app
        .subscribe(
            "vimond",
            json!({"destination": {"type": "nats", "subject": format!("{prefix}.{{eventName}}"), "url": url},
                   "topics": ["asset-operations"], "skipDestinationCheck": true}),
        )
        .await;
    let guids: Vec<String> = (0..12).map(|n| format!("d-{n}-{prefix}")).collect();
    publish(&app, &guids).await;
    let path = format!("/v1/accounts/vimond/subscriptions/{id}/deliveries");
    let log = eventually(Duration::from_secs(15), "failed attempts", || async {
        let (_, log) = app.get(&path).await;
        let failed = log["attempts"]
            .as_array()
            .is_some_and(|attempts| attempts.len() >= 12);
        failed.then_some(log)
    })
    .await;
    assert!(
        log["attempts"][0]["error"]
            .as_str()
            .is_some_and(|error| error.contains("connect")),
        "{log}"
    );

    // The server comes up, with its stream.
    let store = tempfile::tempdir().expect("dir");
    let mut server = tokio::process::Command::new("nats-server")
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
        .arg(store.path())
        .kill_on_drop(true)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("nats-server");
    let name = unique("LATE_");
    let context = eventually(Duration::from_secs(10), "the late server", || async {
        let client = async_nats::connect(&url).await.ok()?;
        let context = jetstream::new(client);
        context
            .create_stream(stream::Config {
                name: name.clone(),
                subjects: vec![format!("{prefix}.>")],
                ..Default::default()
            })
            .await
            .ok()?;
        Some(context)
    })
    .await;
    eventually(Duration::from_secs(30), "all 12 drained", || async {
        (message_count(&context, &name).await >= 12).then_some(())
    })
    .await;
    // Give late retries a moment: still one message per event.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let messages = read_all(&context, &name).await;
    let mut got: Vec<String> = messages
        .iter()
        .filter_map(|message| header(message, "Nats-Msg-Id").map(str::to_owned))
        .collect();
    got.sort();
    let mut expected = guids.clone();
    expected.sort();
    assert_eq!(got, expected);
    let _ = server.kill().await;
}

async fn create(app: &TestApp, token: String, body: String) -> (u16, Value) {
    app.request(
        reqwest::Method::POST,
        "/v1/accounts/vimond/subscriptions",
        Some(&token),
        Some(&body),
    )
    .await
}

async fn key(app: &TestApp) -> String {
    let (status, created) = app.post("/v1/accounts/vimond/keys", "").await;
    assert_eq!(status, 201, "{created}");
    created["key"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn the_servers_nats_url_is_the_default_and_account_keys_give_a_url_only_where_allowed() {
    let prefix = unique("op");
    let name = unique("OP_");
    let context = stream_on(NATS, &name, &prefix).await;
    let other = unique("op");
    let other_name = unique("OP_");
    stream_on(NATS, &other_name, &other).await;
    let body = |url: Option<&str>| {
        let mut destination = json!({"type": "nats", "subject": format!("{prefix}.{{eventName}}")});
        if let Some(url) = url {
            destination["url"] = json!(url);
        }
        json!({"destination": destination, "topics": ["asset-operations"]}).to_string()
    };

    // No --nats-url: a destination must give its url.
    let app = TestApp::start().await;
    let (status, answer) = create(&app, crate::app::ADMIN.into(), body(None)).await;
    assert_eq!(status, 422, "{answer}");
    assert_eq!(answer["error"]["field"], "destination.url", "{answer}");
    // From an account key, a url is not allowed without --allow-nats-url.
    let account = key(&app).await;
    let (status, answer) = create(&app, account, body(Some(NATS))).await;
    assert_eq!(status, 422, "{answer}");
    assert_eq!(
        answer["error"]["code"], "destination_not_allowed",
        "{answer}"
    );
    assert_eq!(answer["error"]["field"], "destination.url", "{answer}");
    drop(app);

    // With the flags: the default serves a destination without url, the allowlist lets
    // an account key give one under it, and events arrive.
    let app = TestApp::start_with(&[
        ("REELAY_NATS_URL", NATS),
        ("REELAY_ALLOW_NATS_URLS", "nats://127.0.0.1:4222"),
    ])
    .await;
    let account = key(&app).await;
    let (status, answer) = create(&app, account.clone(), body(None)).await;
    assert_eq!(status, 201, "{answer}");
    let (status, answer) = create(&app, account.clone(), body(Some("nats://127.0.0.2:4222"))).await;
    assert_eq!(status, 422, "{answer}");
    assert_eq!(
        answer["error"]["code"], "destination_not_allowed",
        "{answer}"
    );
    let (status, answer) = app
        .request(
            reqwest::Method::POST,
            "/v1/accounts/vimond/subscriptions",
            Some(&account),
            Some(
                &json!({"destination": {"type": "nats", "subject": format!("{other}.{{topic}}"), "url": NATS},
                        "topics": ["asset-operations"]})
                .to_string(),
            ),
        )
        .await;
    assert_eq!(status, 201, "{answer}");
    publish(&app, &[format!("op-{prefix}")]).await;
    for (stream, subject) in [
        (&name, format!("{prefix}.asset-updated")),
        (&other_name, format!("{other}.asset-operations")),
    ] {
        eventually(Duration::from_secs(15), "the message", || async {
            (message_count(&context, stream).await >= 1).then_some(())
        })
        .await;
        let messages = read_all(&context, stream).await;
        assert_eq!(messages.len(), 1);
        assert_eq!(messages[0].subject.as_str(), subject);
        context
            .delete_stream(stream)
            .await
            .expect("delete the stream");
    }
}
