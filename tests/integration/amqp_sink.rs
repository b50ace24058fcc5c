//! The RabbitMQ sink against the machine's broker (127.0.0.1:5672, guest/guest): what
//! Reelay publishes is read back from a queue bound to the exchange. A broker that is
//! down is a TCP proxy in front of it that the test stops and starts again.

use std::collections::BTreeSet;
use std::time::Duration;

use lapin::options::{
    BasicGetOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};

use crate::app::{TestApp, eventually};
use crate::publish::asset_event;

const AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

fn unique(prefix: &str) -> String {
    format!("{prefix}{}", uuid::Uuid::new_v4().simple())
}

/// A topic exchange of its own, and a queue bound to it with `binding`.
async fn exchange_with_queue(exchange: &str, binding: &str) -> (Connection, Channel, String) {
    let connection = Connection::connect(AMQP, ConnectionProperties::default())
        .await
        .expect("RabbitMQ");
    let channel = connection.create_channel().await.expect("channel");
    channel
        .exchange_declare(
            exchange.into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("declare the exchange");
    let queue = unique("q-");
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("declare the queue");
    channel
        .queue_bind(
            queue.as_str().into(),
            exchange.into(),
            binding.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind");
    (connection, channel, queue)
}

/// What one message carried.
#[derive(Debug)]
struct Received {
    routing_key: String,
    body: Value,
    message_id: Option<String>,
    delivery_mode: Option<u8>,
    content_type: Option<String>,
    headers: std::collections::BTreeMap<String, String>,
}

/// Takes every message the queue holds now.
async fn take_all(channel: &Channel, queue: &str) -> Vec<Received> {
    let mut taken = Vec::new();
    while let Some(message) = channel
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .expect("basic.get")
    {
        let delivery = &message.delivery;
        let properties = &delivery.properties;
        let headers = properties
            .headers()
            .as_ref()
            .map(|table| {
                table
                    .inner()
                    .iter()
                    .map(|(name, value)| {
                        let value = match value {
                            AMQPValue::LongString(text) => text.to_string(),
                            other => format!("{other:?}"),
                        };
                        (name.to_string(), value)
                    })
                    .collect()
            })
            .unwrap_or_default();
        taken.push(Received {
            routing_key: delivery.routing_key.to_string(),
            body: serde_json::from_slice(&delivery.data).expect("JSON"),
            message_id: properties.message_id().as_ref().map(|id| id.to_string()),
            delivery_mode: *properties.delivery_mode(),
            content_type: properties.content_type().as_ref().map(|t| t.to_string()),
            headers,
        });
    }
    taken
}

/// Reads the queue until it gave `count` messages in all.
async fn receive(channel: &Channel, queue: &str, count: usize) -> Vec<Received> {
    let mut received = Vec::new();
    for _ in 0..300 {
        received.extend(take_all(channel, queue).await);
        if received.len() >= count {
            return received;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{} of {count} messages arrived", received.len());
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

async fn delete_exchange(channel: &Channel, exchange: &str) {
    let _ = channel
        .exchange_delete(exchange.into(), ExchangeDeleteOptions::default())
        .await;
}

#[tokio::test]
async fn events_arrive_on_a_bound_queue_confirmed_persistent_with_their_headers_and_replays_arrive_again()
 {
    let exchange = unique("reelay-x-");
    let (_connection, channel, queue) = exchange_with_queue(&exchange, "vimond.*").await;
    let app = TestApp::start().await;
    let (id, _) = app
        .subscribe(
            "vimond",
            json!({"destination": {"type": "amqp", "exchange": exchange, "routingKey": "{account}.{eventName}", "url": AMQP},
                   "topics": ["asset-operations"]}),
        )
        .await;
    let guids: Vec<String> = (0..5).map(|n| format!("a-{n}-{exchange}")).collect();
    publish(&app, &guids).await;
    let messages = receive(&channel, &queue, 5).await;
    assert_eq!(messages.len(), 5);

    let stored = app.stored_events("vimond").await;
    for guid in &guids {
        let message = messages
            .iter()
            .find(|message| message.body["guid"] == guid.as_str())
            .unwrap_or_else(|| panic!("{guid} arrived: {messages:?}"));
        assert_eq!(message.routing_key, "vimond.asset-updated");
        assert_eq!(message.body["custom"]["kept"], true, "the whole event");
        assert_eq!(message.message_id.as_deref(), Some(guid.as_str()));
        assert_eq!(message.delivery_mode, Some(2), "persistent");
        assert_eq!(message.content_type.as_deref(), Some("application/json"));
        let header = |name: &str| message.headers.get(name).map(String::as_str);
        assert_eq!(header("Reelay-Event-Name"), Some("asset-updated"));
        assert_eq!(header("Reelay-Topic"), Some("asset-operations"));
        assert_eq!(header("Reelay-Account"), Some("vimond"));
        let sequence = stored
            .iter()
            .find(|event| event["id"] == guid.as_str() || event["guid"] == guid.as_str())
            .and_then(|event| event["sequence"].as_i64())
            .map(|sequence| sequence.to_string());
        assert!(sequence.is_some(), "{stored:?}");
        assert_eq!(header("Reelay-Sequence"), sequence.as_deref());
    }

    // A replay sends every event again: RabbitMQ does not de-duplicate, so each arrives
    // a second time, with the same message_id (what a consumer de-duplicates on).
    let (status, answer) = app
        .post(
            &format!("/v1/accounts/vimond/subscriptions/{id}/replay"),
            &json!({"since": "2000-01-01T00:00:00Z"}).to_string(),
        )
        .await;
    assert_eq!(status, 202, "{answer}");
    let again = receive(&channel, &queue, 5).await;
    let ids: BTreeSet<String> = again.iter().filter_map(|m| m.message_id.clone()).collect();
    assert_eq!(ids, guids.iter().cloned().collect::<BTreeSet<_>>());
    delete_exchange(&channel, &exchange).await;
}

#[tokio::test]
async fn a_bad_exchange_or_key_or_an_exchange_that_does_not_exist_is_refused_at_creation() {
    let app = TestApp::start().await;
    let create = |destination: Value| {
        json!({"destination": destination, "topics": ["asset-operations"]}).to_string()
    };
    for (destination, field) in [
        (
            json!({"type": "amqp", "exchange": "has space", "url": AMQP}),
            "destination.exchange",
        ),
        (
            json!({"type": "amqp", "exchange": "x", "routingKey": "a.{tenant}", "url": AMQP}),
            "destination.routingKey",
        ),
        (
            json!({"type": "amqp", "exchange": "x", "url": "http://127.0.0.1:5672"}),
            "destination.url",
        ),
    ] {
        let (status, answer) = app
            .post(
                "/v1/accounts/vimond/subscriptions",
                &create(destination.clone()),
            )
            .await;
        assert_eq!(status, 422, "{destination}: {answer}");
        assert_eq!(answer["error"]["field"], field, "{answer}");
    }
    let (status, answer) = app
        .post(
            "/v1/accounts/vimond/subscriptions",
            &create(json!({"type": "amqp", "exchange": unique("nowhere-"), "url": AMQP})),
        )
        .await;
    assert_eq!(status, 422, "{answer}");
    assert_eq!(
        answer["error"]["code"], "destination_unreachable",
        "{answer}"
    );
    assert!(
        answer["error"]["message"]
            .as_str()
            .is_some_and(|message| message.contains("NOT_FOUND") || message.contains("not found")),
        "{answer}"
    );
}

/// A TCP proxy on a port of its own in front of the broker, that can be stopped (its
/// connections closed and its port refusing) and started again on the same port.
struct Proxy {
    port: u16,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Proxy {
    async fn start() -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("address").port();
        let mut proxy = Proxy { port, task: None };
        proxy.serve(listener);
        proxy
    }

    fn serve(&mut self, listener: TcpListener) {
        self.task = Some(tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                connections.spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect("127.0.0.1:5672").await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        }));
    }

    /// Closes every connection and the port.
    async fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    async fn restart(&mut self) {
        let listener = eventually(Duration::from_secs(10), "the port again", || async {
            TcpListener::bind(("127.0.0.1", self.port)).await.ok()
        })
        .await;
        self.serve(listener);
    }

    fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }
}

#[tokio::test]
async fn a_broker_that_goes_down_is_retried_and_drained_once_it_is_back_with_nothing_lost() {
    let exchange = unique("reelay-down-");
    let (_connection, channel, queue) = exchange_with_queue(&exchange, "#").await;
    let mut proxy = Proxy::start().await;
    let app = TestApp::start_with(&[
        ("REELAY_RETRY_SCHEDULE", &vec!["300ms"; 60].join(",")),
        ("REELAY_SLOW_RETRY", "1s"),
    ])
    .await;
    let (id, _) = app
        .subscribe(
            "vimond",
            json!({"destination": {"type": "amqp", "exchange": exchange, "url": proxy.url()},
                   "topics": ["asset-operations"]}),
        )
        .await;
    let first: Vec<String> = (0..3).map(|n| format!("up-{n}-{exchange}")).collect();
    publish(&app, &first).await;
    let mut received = receive(&channel, &queue, 3).await;

    // The broker goes away: the open connection closes and the port refuses.
    proxy.stop().await;
    let rest: Vec<String> = (0..9).map(|n| format!("down-{n}-{exchange}")).collect();
    publish(&app, &rest).await;
    let path = format!("/v1/accounts/vimond/subscriptions/{id}/deliveries");
    let log = eventually(Duration::from_secs(20), "failed attempts", || async {
        let (_, log) = app.get(&path).await;
        let failed: Vec<Value> = log["attempts"]
            .as_array()
            .map(|attempts| {
                attempts
                    .iter()
                    .filter(|attempt| attempt["error"].is_string())
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        (failed.len() >= 9).then_some(failed)
    })
    .await;
    assert!(
        log.iter().any(|attempt| attempt["error"]
            .as_str()
            .is_some_and(|error| error.contains("connect") || error.contains("closed"))),
        "{log:?}"
    );
    assert!(take_all(&channel, &queue).await.is_empty());

    // Back: every event arrives.
    proxy.restart().await;
    received.extend(receive(&channel, &queue, 9).await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    received.extend(take_all(&channel, &queue).await);
    let got: BTreeSet<String> = received
        .iter()
        .filter_map(|m| m.message_id.clone())
        .collect();
    let expected: BTreeSet<String> = first.iter().chain(&rest).cloned().collect();
    assert_eq!(got, expected);
    proxy.stop().await;
    delete_exchange(&channel, &exchange).await;
}

#[tokio::test]
async fn a_missing_exchange_fails_visibly_on_the_slow_schedule_and_delivers_once_it_exists() {
    let exchange = unique("reelay-late-");
    let app = TestApp::start_with(&[
        ("REELAY_RETRY_SCHEDULE", &vec!["100ms"; 60].join(",")),
        ("REELAY_SLOW_RETRY", "2s"),
        ("REELAY_AMQP_URL", AMQP),
    ])
    .await;
    let (id, _) = app
        .subscribe(
            "vimond",
            json!({"destination": {"type": "amqp", "exchange": exchange},
                   "topics": ["asset-operations"], "skipDestinationCheck": true}),
        )
        .await;
    let guid = format!("late-{exchange}");
    publish(&app, std::slice::from_ref(&guid)).await;
    let path = format!("/v1/accounts/vimond/subscriptions/{id}/deliveries");
    let log = eventually(Duration::from_secs(15), "a failed attempt", || async {
        let (_, log) = app.get(&path).await;
        log["attempts"][0]["error"].is_string().then_some(log)
    })
    .await;
    let error = log["attempts"][0]["error"].as_str().unwrap_or_default();
    assert!(error.contains("NOT_FOUND"), "{log}");
    assert!(error.contains("retried at most every 2s"), "{log}");
    // The slow schedule: not retried every 100 ms.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (_, log) = app.get(&path).await;
    let attempts = log["attempts"].as_array().map_or(0, Vec::len);
    assert!(attempts <= 2, "{log}");

    let (_connection, channel, queue) = exchange_with_queue(&exchange, "#").await;
    let messages = receive(&channel, &queue, 1).await;
    assert_eq!(messages[0].message_id.as_deref(), Some(guid.as_str()));
    assert_eq!(messages[0].routing_key, "asset-updated", "the default key");
    delete_exchange(&channel, &exchange).await;
}

#[tokio::test]
async fn account_keys_give_a_broker_url_only_where_allowed() {
    let exchange = unique("reelay-op-");
    let (_connection, channel, _queue) = exchange_with_queue(&exchange, "#").await;
    let app = TestApp::start_with(&[
        ("REELAY_AMQP_URL", AMQP),
        (
            "REELAY_ALLOW_AMQP_URLS",
            "amqp://guest:guest@127.0.0.1:5672",
        ),
    ])
    .await;
    let (status, created) = app.post("/v1/accounts/vimond/keys", "").await;
    assert_eq!(status, 201, "{created}");
    let key = created["key"].as_str().unwrap_or_default().to_owned();
    let create = |url: Option<&str>| {
        let mut destination = json!({"type": "amqp", "exchange": exchange});
        if let Some(url) = url {
            destination["url"] = json!(url);
        }
        json!({"destination": destination, "topics": ["asset-operations"]}).to_string()
    };
    for (url, expected) in [
        (None, 201),
        (Some(AMQP), 201),
        (Some("amqp://guest:guest@127.0.0.2:5672/%2f"), 422),
    ] {
        let (status, answer) = app
            .request(
                reqwest::Method::POST,
                "/v1/accounts/vimond/subscriptions",
                Some(&key),
                Some(&create(url)),
            )
            .await;
        assert_eq!(status, expected, "{url:?}: {answer}");
        if expected == 422 {
            assert_eq!(
                answer["error"]["code"], "destination_not_allowed",
                "{answer}"
            );
            assert!(
                !answer.to_string().contains("guest:guest"),
                "the password is not echoed: {answer}"
            );
        }
    }
    delete_exchange(&channel, &exchange).await;
}
