//! Delivery formats: the seeds' Vimond events and seed 002's Zapp CloudEvents delivered
//! as CloudEvents in the structured and the binary mode, each read back by the Python
//! `cloudevents` SDK and checked against the log, every delivery signed; the native format
//! unchanged beside them; the validation handshake before a subscription is stored; bad
//! input.

use std::collections::HashMap;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Map, Value, json};

use crate::app::{ADMIN, TestApp, eventually};
use crate::cloudevents::{endpoint, zapp_client};
use crate::publish::{asset_event, seed_events};
use crate::support::receiver::{Delivery, HandshakeAnswer, Receiver};

async fn wait_for(receiver: &Receiver, path: &str, count: usize) -> Vec<Delivery> {
    eventually(
        Duration::from_secs(30),
        &format!("{count} deliveries at {path}"),
        || async {
            let got = receiver.deliveries(path).await;
            (got.len() >= count).then_some(got)
        },
    )
    .await
}

/// Epoch milliseconds of an RFC 3339 time (the SDK writes `…+00:00`, the log `…Z`).
fn millis(time: &Value) -> i64 {
    let text = time.as_str().expect("a time string");
    chrono::DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|_| panic!("{text} is not RFC 3339"))
        .timestamp_millis()
}

/// What the SDK must have read from a delivery of `stored` (an entry of the events API),
/// in `mode`: the attributes (times as epoch milliseconds) and the data.
fn expected(stored: &Value, mode: &str) -> (Map<String, Value>, Value) {
    let document = &stored["event"];
    let sequence = stored["sequence"].as_i64().unwrap().to_string();
    let topic = stored["topic"].as_str().unwrap();
    let mut attributes = Map::new();
    let data;
    if stored["id"].as_str().unwrap().starts_with("ce_") {
        // It arrived as a CloudEvent: its own attributes, not null ones.
        for (name, value) in document.as_object().unwrap() {
            match (name.as_str(), value) {
                ("data" | "data_base64", _) | (_, Value::Null) => {}
                ("time", time) => {
                    attributes.insert(name.clone(), json!(millis(time)));
                }
                // Headers are text.
                (_, Value::String(_)) => {
                    attributes.insert(name.clone(), value.clone());
                }
                (_, other) if mode == "binary" => {
                    attributes.insert(name.clone(), json!(other.to_string()));
                }
                _ => {
                    attributes.insert(name.clone(), value.clone());
                }
            }
        }
        data = match (document.get("data"), document.get("data_base64")) {
            (Some(data), _) => json!({"data": data}),
            (None, Some(encoded)) => json!({"data_base64": encoded}),
            (None, None) => json!({}),
        };
    } else {
        attributes = json!({
            "specversion": "1.0",
            "id": stored["id"],
            "source": format!("/reelay/accounts/vimond/topics/{topic}"),
            "type": stored["name"],
            "time": stored["occurredAt"],
            "datacontenttype": "application/json",
        })
        .as_object()
        .unwrap()
        .clone();
        if let Some(key) = stored["entityKey"].as_str() {
            attributes.insert("subject".into(), json!(key));
        }
        data = json!({"data": document});
    }
    attributes.insert("reelaysequence".into(), json!(sequence));
    attributes.insert("reelaytopic".into(), json!(topic));
    (attributes, data)
}

/// Checks a CloudEvents delivery against the log: signed, read by the SDK in `mode`,
/// with the mapping's attributes and the stored data.
fn check_cloudevent(delivery: &Delivery, stored: &Value, mode: &str) {
    let what = format!("{mode} delivery of {}", stored["id"]);
    assert_eq!(
        delivery.verified,
        Some(true),
        "{what}: {:?}",
        delivery.error
    );
    assert_eq!(
        delivery.webhook_id.as_deref(),
        stored["id"].as_str(),
        "{what}"
    );
    assert_eq!(
        delivery.headers["reelay-sequence"],
        stored["sequence"].to_string(),
        "{what}"
    );
    let read = delivery
        .cloudevent
        .as_ref()
        .unwrap_or_else(|| panic!("{what}: not read: {:?}", delivery.cloudevent_error));
    assert_eq!(read["mode"], mode, "{what}");
    match mode {
        "structured" => assert_eq!(
            delivery.headers["content-type"], "application/cloudevents+json",
            "{what}"
        ),
        _ => assert!(
            delivery.headers.contains_key("ce-specversion"),
            "{what}: {:?}",
            delivery.headers
        ),
    }
    let mut attributes = read["attributes"].as_object().unwrap().clone();
    if let Some(time) = attributes.get("time").cloned() {
        attributes.insert("time".into(), json!(millis(&time)));
    }
    let (mut expected_attributes, expected_data) = expected(stored, mode);
    if !expected_attributes.contains_key("time") {
        // The SDK makes up a `time` (now) for an event without one: check that none was
        // sent, then leave it out.
        let sent = match mode {
            "structured" => serde_json::from_str::<Value>(&delivery.body).unwrap()["time"].clone(),
            _ => delivery
                .headers
                .get("ce-time")
                .map_or(Value::Null, |t| json!(t)),
        };
        assert_eq!(sent, Value::Null, "{what}: no time was sent");
        attributes.remove("time");
    }
    // Binary mode says what JSON data without a type is.
    if mode == "binary"
        && !expected_attributes.contains_key("datacontenttype")
        && expected_data.get("data").is_some()
    {
        expected_attributes.insert("datacontenttype".into(), json!("application/json"));
    }
    assert_eq!(
        Value::Object(attributes),
        Value::Object(expected_attributes),
        "{what}"
    );
    let data = match (read.get("data"), read.get("data_base64")) {
        (Some(Value::Null), None) | (None, None) => json!({}),
        (Some(data), _) => json!({"data": data}),
        (None, Some(encoded)) => json!({"data_base64": encoded}),
    };
    assert_eq!(data, expected_data, "{what}");
}

#[tokio::test]
async fn vimond_events_and_zapp_cloudevents_arrive_as_cloudevents_in_both_modes() {
    let app = TestApp::start().await;
    let receiver = Receiver::start().await;
    let (_, catalog) = app.get("/v1/catalog").await;
    let topics: Vec<&str> = catalog["topics"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    for (path, format) in [
        ("/structured", "cloudevents"),
        ("/binary", "cloudevents-binary"),
        ("/native", "native"),
    ] {
        let (id, _) = app
            .subscribe_receiver(
                &receiver,
                path,
                json!({"topics": topics, "format": format}),
                &[],
            )
            .await;
        let (status, shown) = app
            .get(&format!("/v1/accounts/vimond/subscriptions/{id}"))
            .await;
        assert_eq!((status, shown["format"].as_str()), (200, Some(format)));
    }

    // The seeds' Vimond events, as written.
    let seeds = seed_events();
    for text in &seeds {
        let (status, answer) = app.post("/v1/accounts/vimond/events", text).await;
        assert_eq!(status, 202, "{answer}");
    }
    // Every Zapp example of seed 002, sent by the SDK in structured and binary mode.
    for mode in ["structured", "binary"] {
        zapp_client(&app, mode, "zapp-access-token", &endpoint(&app)).await;
    }
    // A CloudEvent with bytes as data and an extension, in binary mode …
    let response = app
        .http
        .post(endpoint(&app))
        .bearer_auth(ADMIN)
        .header("ce-specversion", "1.0")
        .header("ce-id", "file-1")
        .header("ce-source", "/transcoder/eu-1")
        .header("ce-type", "vmfm-video-file-deleted")
        .header("ce-subject", "file%201%20deleted")
        .header("ce-partitionkey", "asset-9")
        .header("content-type", "application/octet-stream")
        .body(vec![0u8, 255, 1])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    // … and one with text as data, a number extension and a null subject, structured.
    let note = json!({"specversion": "1.0", "id": "file-2", "source": "/transcoder/eu-1",
                      "type": "vmfm-video-file-deleted", "subject": null, "appversion": 9,
                      "time": "2024-06-07T16:27:16.035+02:00", "datacontenttype": "text/plain; charset=utf-8",
                      "data": "a \"quoted\" note, é"});
    let (status, answer) = app
        .post("/v1/accounts/vimond/cloudevents", &note.to_string())
        .await;
    assert_eq!(status, 201, "{answer}");

    let stored = app.stored_events("vimond").await;
    // The video-changes Reelay derived from some of them are delivered too (every topic).
    let derived = stored
        .iter()
        .filter(|event| event["name"] == "video-change")
        .count();
    assert!(derived > 0, "the seeds change videos");
    let count = seeds.len() + 16 + 2 + derived;
    assert_eq!(stored.len(), count);
    let by_id: HashMap<&str, &Value> = stored
        .iter()
        .map(|event| (event["id"].as_str().unwrap(), event))
        .collect();

    for (path, mode) in [("/structured", "structured"), ("/binary", "binary")] {
        let deliveries = wait_for(&receiver, path, count).await;
        assert_eq!(deliveries.len(), count, "{path}: each event once");
        for delivery in &deliveries {
            let stored = by_id[delivery.webhook_id.as_deref().unwrap()];
            check_cloudevent(delivery, stored, mode);
        }
    }

    // Binary mode carries the bytes themselves, and text as its characters.
    let binary = receiver.deliveries("/binary").await;
    let body_of = |source_id: &str| {
        let delivery = binary
            .iter()
            .find(|d| d.headers.get("ce-id").map(String::as_str) == Some(source_id))
            .unwrap();
        (
            BASE64.decode(&delivery.body_base64).unwrap(),
            delivery.headers["content-type"].clone(),
        )
    };
    assert_eq!(
        body_of("file-1"),
        (vec![0u8, 255, 1], "application/octet-stream".to_owned())
    );
    assert_eq!(
        body_of("file-2"),
        (
            "a \"quoted\" note, é".as_bytes().to_vec(),
            "text/plain; charset=utf-8".to_owned()
        )
    );

    // The native format is unchanged: the stored document, byte for byte, no ce-*.
    let native = wait_for(&receiver, "/native", count).await;
    for delivery in &native {
        assert_eq!(delivery.verified, Some(true), "{:?}", delivery.error);
        assert_eq!(delivery.headers["content-type"], "application/json");
        assert!(delivery.cloudevent.is_none());
        assert!(!delivery.headers.keys().any(|name| name.starts_with("ce-")));
        let stored = by_id[delivery.webhook_id.as_deref().unwrap()];
        assert_eq!(
            serde_json::from_str::<Value>(&delivery.body).unwrap(),
            stored["event"]
        );
    }
    for text in &seeds {
        let guid = serde_json::from_str::<Value>(text).unwrap()["guid"].clone();
        let delivery = native
            .iter()
            .find(|d| d.webhook_id.as_deref() == guid.as_str())
            .unwrap();
        assert_eq!(&delivery.body, text, "as published");
    }
}

#[tokio::test]
async fn the_validation_handshake_asks_first_and_a_refusal_stores_nothing() {
    let app =
        TestApp::start_with(&[("REELAY_PUBLIC_URL", "https://events.example.test/reelay/")]).await;
    let receiver = Receiver::start().await;
    let consent = |allowed_origin: &str| HandshakeAnswer {
        status: 200,
        allowed_origin: Some(allowed_origin.to_owned()),
        allowed_rate: Some("120".to_owned()),
    };
    receiver.handshake("/echo", consent("echo")).await;
    receiver.handshake("/any", consent("*")).await;
    receiver
        .handshake("/other", consent("someone-else.example.test"))
        .await;
    receiver
        .handshake(
            "/no-header",
            HandshakeAnswer {
                status: 200,
                allowed_origin: None,
                allowed_rate: None,
            },
        )
        .await;
    receiver
        .handshake(
            "/error",
            HandshakeAnswer {
                status: 500,
                allowed_origin: Some("*".to_owned()),
                allowed_rate: None,
            },
        )
        .await;
    let create = |path: &str, validate: Value| {
        let body = json!({"endpoint": receiver.url(path), "events": ["asset-updated"],
                          "format": "cloudevents", "validationHandshake": validate});
        let app = &app;
        async move {
            app.post("/v1/accounts/vimond/subscriptions", &body.to_string())
                .await
        }
    };

    // Consent: the origin echoed, or any.
    for path in ["/echo", "/any"] {
        let (status, subscription) = create(path, json!(true)).await;
        assert_eq!(status, 201, "{path}: {subscription}");
        let asked = receiver.handshakes(path).await;
        assert_eq!(asked.len(), 1, "{path}");
        assert_eq!(
            asked[0].headers["webhook-request-origin"], "events.example.test",
            "the host of the public URL"
        );
        assert_eq!(asked[0].status, 200);
        receiver
            .hook(path, subscription["secret"].as_str().unwrap(), &[])
            .await;
    }
    // No consent: another origin, no header, not a success, not an OPTIONS server (405).
    for path in ["/other", "/no-header", "/error", "/silent"] {
        let (status, error) = create(path, json!(true)).await;
        assert_eq!(status, 422, "{path}: {error}");
        assert_eq!(error["error"]["code"], "handshake_refused", "{path}");
        assert_eq!(error["error"]["field"], "validationHandshake");
        assert!(
            error["error"]["message"]
                .as_str()
                .unwrap()
                .contains("events.example.test"),
            "the message names the origin: {error}"
        );
        assert_eq!(receiver.handshakes(path).await.len(), 1, "{path}");
    }
    // Nobody there at all.
    let (status, error) = app
        .post(
            "/v1/accounts/vimond/subscriptions",
            &json!({"endpoint": "http://127.0.0.1:9/closed", "events": ["asset-updated"],
                    "validationHandshake": true})
            .to_string(),
        )
        .await;
    assert_eq!(
        (status, error["error"]["code"].as_str()),
        (422, Some("handshake_failed")),
        "{error}"
    );
    // Not asked: no OPTIONS request.
    let (status, plain) = create("/plain", Value::Null).await;
    assert_eq!(status, 201, "{plain}");
    let (status, _) = create("/plain-false", json!(false)).await;
    assert_eq!(status, 201);
    assert!(receiver.handshakes("/plain").await.is_empty());
    assert!(receiver.handshakes("/plain-false").await.is_empty());

    let (_, list) = app.get("/v1/accounts/vimond/subscriptions").await;
    let mut endpoints: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["endpoint"].as_str())
        .collect();
    endpoints.sort();
    let mut expected = ["/echo", "/any", "/plain", "/plain-false"].map(|p| receiver.url(p));
    expected.sort();
    assert_eq!(
        endpoints, expected,
        "only the consenting endpoints and those not asked are stored"
    );

    // The consenting endpoints receive their events.
    let (status, _) = app
        .post(
            "/v1/accounts/vimond/events",
            &asset_event("asset-updated", "h-1").to_string(),
        )
        .await;
    assert_eq!(status, 202);
    for path in ["/echo", "/any"] {
        let delivered = wait_for(&receiver, path, 1).await;
        assert_eq!(
            delivered[0].verified,
            Some(true),
            "{:?}",
            delivered[0].error
        );
        assert!(delivered[0].cloudevent.is_some());
    }
}

#[tokio::test]
async fn the_handshake_keeps_to_the_destination_rules_and_its_default_origin() {
    // Private destinations refused: the endpoint is not even asked.
    let strict = TestApp::start_with(&[("REELAY_ALLOW_PRIVATE_DESTINATIONS", "false")]).await;
    let receiver = Receiver::start().await;
    let any = HandshakeAnswer {
        status: 200,
        allowed_origin: Some("echo".to_owned()),
        allowed_rate: None,
    };
    receiver.handshake("/hook", any).await;
    let body = json!({"endpoint": receiver.url("/hook"), "events": ["asset-updated"],
                      "validationHandshake": true})
    .to_string();
    let (status, error) = strict
        .post("/v1/accounts/vimond/subscriptions", &body)
        .await;
    assert_eq!(
        (status, error["error"]["code"].as_str()),
        (422, Some("destination_refused")),
        "{error}"
    );
    assert!(receiver.handshakes("/hook").await.is_empty());

    // Without --public-url the origin is "reelay".
    let app = TestApp::start().await;
    let (status, created) = app.post("/v1/accounts/vimond/subscriptions", &body).await;
    assert_eq!(status, 201, "{created}");
    let asked = receiver.handshakes("/hook").await;
    assert_eq!(asked.len(), 1);
    assert_eq!(asked[0].headers["webhook-request-origin"], "reelay");
}

#[tokio::test]
async fn formats_are_shown_and_unknown_ones_refused() {
    let app = TestApp::start().await;
    let create = |extra: Value| {
        let mut body = json!({"endpoint": "http://127.0.0.1:9/f", "events": ["asset-updated"]});
        for (name, value) in extra.as_object().unwrap() {
            body[name] = value.clone();
        }
        let app = &app;
        async move {
            app.post("/v1/accounts/vimond/subscriptions", &body.to_string())
                .await
        }
    };
    for (extra, code) in [
        (json!({"format": "xml"}), "invalid_format"),
        (json!({"format": "CloudEvents"}), "invalid_format"),
        (json!({"format": 1}), "invalid_format"),
        (
            json!({"validationHandshake": "yes"}),
            "invalid_validation_handshake",
        ),
    ] {
        let (status, error) = create(extra.clone()).await;
        assert_eq!(status, 422, "{extra}: {error}");
        assert_eq!(error["error"]["code"], code, "{extra}");
        if code == "invalid_format" {
            assert_eq!(error["error"]["field"], "format");
            let message = error["error"]["message"].as_str().unwrap();
            for name in ["native", "cloudevents", "cloudevents-binary"] {
                assert!(message.contains(name), "{message}");
            }
        }
    }
    let (_, list) = app.get("/v1/accounts/vimond/subscriptions").await;
    assert_eq!(list, json!([]), "nothing stored");

    let (status, created) = create(json!({"format": "cloudevents-binary"})).await;
    assert_eq!(
        (status, created["format"].as_str()),
        (201, Some("cloudevents-binary"))
    );
    let (status, created) = create(json!({"events": ["asset-created"]})).await;
    assert_eq!(
        (status, created["format"].as_str()),
        (201, Some("native")),
        "the default"
    );
    let (_, list) = app.get("/v1/accounts/vimond/subscriptions").await;
    let mut formats: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["format"].as_str())
        .collect();
    formats.sort();
    assert_eq!(formats, ["cloudevents-binary", "native"]);

    // The OpenAPI document says the same.
    let (_, spec) = app
        .request(reqwest::Method::GET, "/openapi.json", None, None)
        .await;
    let schemas = &spec["components"]["schemas"];
    assert_eq!(
        schemas["Format"]["enum"],
        json!(["native", "cloudevents", "cloudevents-binary"])
    );
    let request = &schemas["SubscriptionIn"]["properties"];
    assert!(
        request["format"]
            .to_string()
            .contains("#/components/schemas/Format")
    );
    assert!(
        request["validationHandshake"]["type"]
            .to_string()
            .contains("boolean")
    );
}
