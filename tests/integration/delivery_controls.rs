//! Delivery controls (issue 19): payload filters, jq transforms and JSON Schemas for the
//! operator's event types, through the real binary, a webhook receiver that checks every
//! signature, and SQS on `moto_server`.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{Value, json};

use crate::app::{TestApp, eventually};
use crate::support::moto::Moto;
use crate::support::receiver::{HandshakeAnswer, Receiver, Response};

/// Assets in the set, on the web: what the filter of these tests lets through.
const FILTER: &str = r#"{"platforms": {"$contains": "web"}, "assetId": {"$in": [1, 3, 5, "7"]}}"#;

fn asset(name: &str, guid: &str, asset_id: Value, platforms: Option<Value>) -> Value {
    let mut event = json!({
        "eventName": name, "originator": "tests", "tenant": "vimond",
        "timestamp": "2026-11-30T08:36:30Z", "guid": guid, "assetId": asset_id
    });
    if let Some(platforms) = platforms {
        event["platforms"] = platforms;
    }
    event
}

/// Assets 1..=8 as numbers, and "7" also as a string, on the web, on TV, on both or
/// without platforms; `(events, guids the filter lets through)`.
fn mixed_events(prefix: &str) -> (Vec<Value>, BTreeSet<String>) {
    let name = "asset-updated";
    let mut events = Vec::new();
    let mut wanted = BTreeSet::new();
    let kinds = [
        Some(json!(["web", "tv"])),
        Some(json!(["tv"])),
        Some(json!(["web"])),
        None,
    ];
    for id in 1..=8 {
        for (k, platforms) in kinds.iter().enumerate() {
            let guid = format!("{prefix}-{id}-{k}");
            let on_web = matches!(k, 0 | 2);
            if on_web && [1, 3, 5].contains(&id) {
                wanted.insert(guid.clone());
            }
            events.push(asset(name, &guid, json!(id), platforms.clone()));
        }
    }
    // Filters compare values, not spellings: "7" is not 7, and the string is in the set.
    events.push(asset(
        name,
        &format!("{prefix}-s7"),
        json!("7"),
        Some(json!(["web"])),
    ));
    wanted.insert(format!("{prefix}-s7"));
    events.push(asset(
        name,
        &format!("{prefix}-n7"),
        json!(7),
        Some(json!(["web"])),
    ));
    (events, wanted)
}

async fn publish(app: &TestApp, events: &[Value]) {
    let (status, answer) = app
        .post(
            "/v1/accounts/vimond/events",
            &Value::Array(events.to_vec()).to_string(),
        )
        .await;
    assert_eq!(status, 202, "{answer}");
}

async fn subscription(app: &TestApp, id: &str) -> Value {
    let (status, body) = app
        .get(&format!("/v1/accounts/vimond/subscriptions/{id}"))
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

/// Waits until the subscription's cursor passed the whole log: every event was delivered,
/// filtered out or handed to the retry set.
async fn until_caught_up(app: &TestApp, id: &str) {
    let head = app
        .stored_events("vimond")
        .await
        .iter()
        .filter_map(|event| event["sequence"].as_i64())
        .max()
        .expect("events in the log");
    eventually(
        Duration::from_secs(30),
        "the cursor at the head",
        || async { (subscription(app, id).await["cursor"].as_i64() >= Some(head)).then_some(()) },
    )
    .await;
}

async fn sqs_app(moto: &Moto) -> TestApp {
    let env = moto.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    TestApp::start_with(&env).await
}

async fn queue(sqs: &aws_sdk_sqs::Client, name: &str) -> String {
    sqs.create_queue()
        .queue_name(name)
        .send()
        .await
        .expect("create queue")
        .queue_url()
        .expect("queue url")
        .to_owned()
}

/// Every message body in the queue (deleting them), until `expected` came.
async fn receive(sqs: &aws_sdk_sqs::Client, queue_url: &str, expected: usize) -> Vec<Value> {
    let received = std::sync::Mutex::new(Vec::new());
    eventually(Duration::from_secs(30), "messages in the queue", || async {
        let page = sqs
            .receive_message()
            .queue_url(queue_url)
            .max_number_of_messages(10)
            .wait_time_seconds(0)
            .send()
            .await
            .expect("receive");
        for message in page.messages() {
            let body: Value = serde_json::from_str(message.body().unwrap_or_default()).unwrap();
            received.lock().unwrap().push(body);
            sqs.delete_message()
                .queue_url(queue_url)
                .receipt_handle(message.receipt_handle().unwrap_or_default())
                .send()
                .await
                .expect("delete");
        }
        (received.lock().unwrap().len() >= expected).then_some(())
    })
    .await;
    received.into_inner().unwrap()
}

fn guids(bodies: &[Value]) -> BTreeSet<String> {
    bodies
        .iter()
        .map(|body| body["guid"].as_str().expect("guid").to_owned())
        .collect()
}

#[tokio::test]
async fn a_payload_filter_delivers_exactly_the_matching_events_to_a_webhook_and_to_sqs() {
    let moto = Moto::start().await.expect("moto_server");
    let sqs = aws_sdk_sqs::Client::new(&moto.sdk_config().await);
    let filtered_queue = queue(&sqs, "filtered").await;
    let transformed_queue = queue(&sqs, "transformed").await;
    let app = sqs_app(&moto).await;
    let receiver = Receiver::start().await;
    let filter: Value = serde_json::from_str(FILTER).unwrap();

    let (hook, _) = app
        .subscribe_receiver(
            &receiver,
            "/filtered",
            json!({"events": ["asset-updated"], "filter": filter}),
            &[],
        )
        .await;
    let (queue_id, _) = app
        .subscribe(
            "vimond",
            json!({"destination": {"type": "sqs", "queueUrl": filtered_queue},
                   "events": ["asset-updated"], "filter": filter}),
        )
        .await;
    // The transform runs on SQS too, after the filter.
    let (transformed_id, _) = app
        .subscribe(
            "vimond",
            json!({"destination": {"type": "sqs", "queueUrl": transformed_queue},
                   "events": ["asset-updated"], "filter": filter,
                   "transform": "{asset: .assetId, guid: .guid}"}),
        )
        .await;
    let shown = subscription(&app, &hook).await;
    assert_eq!(
        shown["filter"], filter,
        "the filter is shown as given: {shown}"
    );

    let (events, wanted) = mixed_events("f");
    publish(&app, &events).await;

    eventually(
        Duration::from_secs(30),
        "the matching deliveries",
        || async { (receiver.deliveries("/filtered").await.len() >= wanted.len()).then_some(()) },
    )
    .await;
    until_caught_up(&app, &hook).await;
    let deliveries = receiver.deliveries("/filtered").await;
    assert_eq!(
        deliveries.len(),
        wanted.len(),
        "each matching event once, nothing else"
    );
    assert!(deliveries.iter().all(|d| d.verified == Some(true)));
    let bodies: Vec<Value> = deliveries
        .iter()
        .map(|d| serde_json::from_str(&d.body).unwrap())
        .collect();
    assert_eq!(guids(&bodies), wanted);

    let messages = receive(&sqs, &filtered_queue, wanted.len()).await;
    until_caught_up(&app, &queue_id).await;
    let mut messages = messages;
    messages.extend(receive(&sqs, &filtered_queue, 0).await);
    assert_eq!(messages.len(), wanted.len(), "{messages:?}");
    assert_eq!(guids(&messages), wanted);

    let transformed = receive(&sqs, &transformed_queue, wanted.len()).await;
    until_caught_up(&app, &transformed_id).await;
    let mut transformed = transformed;
    transformed.extend(receive(&sqs, &transformed_queue, 0).await);
    assert_eq!(guids(&transformed), wanted);
    for message in &transformed {
        assert_eq!(
            message.as_object().unwrap().len(),
            2,
            "only the program's members: {message}"
        );
        assert!(message["asset"].is_number() || message["asset"] == "7");
    }
}

#[tokio::test]
async fn a_full_resync_sends_only_the_entities_the_filter_accepts() {
    let app = TestApp::start().await;
    let receiver = Receiver::start().await;
    // Assets 1..=10: 1-4 on the web and TV, 5-6 on TV, 7-10 on the web.
    let created: Vec<Value> = (1..=10)
        .map(|n| {
            let platforms = match n {
                1..=4 => json!(["web", "tv"]),
                5 | 6 => json!(["tv"]),
                _ => json!(["web"]),
            };
            asset(
                "asset-created",
                &format!("r-{n}"),
                json!(n),
                Some(platforms),
            )
        })
        .collect();
    publish(&app, &created).await;
    // Asset 3 leaves the web: its latest state no longer matches.
    publish(
        &app,
        &[asset(
            "asset-updated",
            "r-3b",
            json!(3),
            Some(json!(["tv"])),
        )],
    )
    .await;

    let filter: Value = serde_json::from_str(FILTER).unwrap();
    let (status, created) = app
        .post(
            "/v1/accounts/vimond/subscriptions",
            &json!({"endpoint": receiver.url("/mirror"), "topics": ["asset-operations"],
                    "filter": filter, "resync": true})
            .to_string(),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    receiver
        .hook("/mirror", created["secret"].as_str().unwrap(), &[])
        .await;
    let run = eventually(
        Duration::from_secs(60),
        "the resync to complete",
        || async {
            let (_, run) = app
                .get(&format!("/v1/accounts/vimond/subscriptions/{id}/resync"))
                .await;
            (run["state"] == "completed").then_some(run)
        },
    )
    .await;
    assert_eq!(run["sent"], 1, "{run}");
    let copies = eventually(Duration::from_secs(30), "the resync copy", || async {
        let deliveries = receiver.deliveries("/mirror").await;
        (!deliveries.is_empty()).then_some(deliveries)
    })
    .await;
    until_caught_up(&app, &id).await;
    let bodies: Vec<Value> = receiver
        .deliveries("/mirror")
        .await
        .iter()
        .map(|d| serde_json::from_str(&d.body).unwrap())
        .collect();
    assert_eq!(copies.len(), bodies.len());
    assert_eq!(bodies.len(), 1, "asset 1 only: {bodies:?}");
    assert_eq!(bodies[0]["assetId"], 1);
    assert_eq!(bodies[0]["resyncType"], "full");
}

#[tokio::test]
async fn malformed_filters_and_transforms_are_refused_with_the_path() {
    let app = TestApp::start().await;
    let receiver = Receiver::start().await;
    let cases = [
        (json!("assetId"), "invalid_filter", "filter"),
        (json!({}), "invalid_filter", "filter"),
        (
            json!({"assetId": {"$in": 3}}),
            "invalid_filter",
            "filter.assetId.$in",
        ),
        (
            json!({"metadata.score": {"$gt": "soon"}}),
            "invalid_filter",
            "filter.metadata.score.$gt",
        ),
        (
            json!({"assetId": {"$regex": "^a"}}),
            "invalid_filter",
            "filter.assetId.$regex",
        ),
        (
            json!({"$or": [{"a": 1}, {"b": {"$exists": "yes"}}]}),
            "invalid_filter",
            "filter.$or[1].b.$exists",
        ),
        (json!({"a..b": 1}), "invalid_filter", "filter.a..b"),
    ];
    for (filter, code, field) in cases {
        let (status, body) = app
            .post(
                "/v1/accounts/vimond/subscriptions",
                &json!({"endpoint": receiver.url("/x"), "events": ["asset-updated"], "filter": filter})
                    .to_string(),
            )
            .await;
        assert_eq!(status, 422, "{filter}: {body}");
        assert_eq!(body["error"]["code"], code, "{filter}: {body}");
        assert_eq!(body["error"]["field"], field, "{filter}: {body}");
    }
    for (transform, message) in [
        (json!("{asset: .assetId"), "expected"),
        (
            json!(".a | no_such_function"),
            "undefined filter no_such_function",
        ),
        (json!(42), "must be a string"),
    ] {
        let (status, body) = app
            .post(
                "/v1/accounts/vimond/subscriptions",
                &json!({"endpoint": receiver.url("/x"), "events": ["asset-updated"], "transform": transform})
                    .to_string(),
            )
            .await;
        assert_eq!(status, 422, "{transform}: {body}");
        assert_eq!(body["error"]["code"], "invalid_transform", "{body}");
        assert_eq!(body["error"]["field"], "transform", "{body}");
        let text = body["error"]["message"].as_str().unwrap();
        assert!(text.contains(message), "{transform}: {text}");
    }
    let (_, list) = app.get("/v1/accounts/vimond/subscriptions").await;
    assert_eq!(list, json!([]), "nothing stored");
}

#[tokio::test]
async fn a_transform_delivers_exactly_its_output_signed() {
    let app = TestApp::start().await;
    let receiver = Receiver::start().await;
    let program = "{asset: .assetId, event: .eventName}";
    let (id, _) = app
        .subscribe_receiver(
            &receiver,
            "/t",
            json!({"events": ["asset-updated"], "transform": program}),
            &[],
        )
        .await;
    // Another subscription of the same events without a transform gets the document.
    let (plain, _) = app
        .subscribe_receiver(
            &receiver,
            "/plain",
            json!({"events": ["asset-updated"]}),
            &[],
        )
        .await;
    assert_eq!(subscription(&app, &id).await["transform"], program);
    assert!(subscription(&app, &plain).await.get("transform").is_none());

    publish(
        &app,
        &[asset(
            "asset-updated",
            "t-1",
            json!("a-7"),
            Some(json!(["web"])),
        )],
    )
    .await;
    let delivery = eventually(Duration::from_secs(20), "the delivery", || async {
        receiver.deliveries("/t").await.into_iter().next()
    })
    .await;
    assert_eq!(delivery.body, r#"{"asset":"a-7","event":"asset-updated"}"#);
    assert_eq!(
        delivery.verified,
        Some(true),
        "the signature covers the output: {delivery:?}"
    );
    assert_eq!(delivery.webhook_id.as_deref(), Some("t-1"));
    let original = eventually(Duration::from_secs(20), "the plain delivery", || async {
        receiver.deliveries("/plain").await.into_iter().next()
    })
    .await;
    assert_eq!(
        serde_json::from_str::<Value>(&original.body).unwrap()["platforms"],
        json!(["web"])
    );
}

#[tokio::test]
async fn a_transform_that_fails_at_run_time_dead_letters_the_delivery_with_the_reason() {
    let app = TestApp::start().await;
    let receiver = Receiver::start().await;
    let program = r#"if .assetId == 2 then error("asset 2 is private") else {asset: .assetId} end"#;
    let (id, _) = app
        .subscribe_receiver(
            &receiver,
            "/t",
            json!({"events": ["asset-updated"], "transform": program}),
            &[],
        )
        .await;
    publish(
        &app,
        &[1, 2, 3].map(|n| asset("asset-updated", &format!("d-{n}"), json!(n), None)),
    )
    .await;
    eventually(Duration::from_secs(20), "assets 1 and 3", || async {
        (receiver.deliveries("/t").await.len() >= 2).then_some(())
    })
    .await;
    let deliveries = eventually(Duration::from_secs(20), "the dead letter", || async {
        let (status, deliveries) = app
            .get(&format!(
                "/v1/accounts/vimond/subscriptions/{id}/deliveries"
            ))
            .await;
        assert_eq!(status, 200, "{deliveries}");
        (!deliveries["deadLetters"].as_array().unwrap().is_empty()).then_some(deliveries)
    })
    .await;
    let dead = &deliveries["deadLetters"][0];
    assert_eq!(dead["eventId"], "d-2", "{deliveries}");
    assert_eq!(dead["attempts"], 1, "no retries: it would fail again");
    assert!(
        dead["lastError"]
            .as_str()
            .unwrap()
            .contains("asset 2 is private"),
        "{deliveries}"
    );
    let attempt = &deliveries["attempts"][0];
    assert_eq!(attempt["outcome"], "dead", "{deliveries}");
    assert!(
        attempt["error"]
            .as_str()
            .unwrap()
            .contains("asset 2 is private")
    );
    let bodies: Vec<String> = receiver
        .deliveries("/t")
        .await
        .into_iter()
        .map(|d| d.body)
        .collect();
    assert_eq!(bodies.len(), 2, "{bodies:?}");
    assert!(bodies.contains(&r#"{"asset":1}"#.to_owned()));
    assert!(bodies.contains(&r#"{"asset":3}"#.to_owned()));
    let shown = subscription(&app, &id).await;
    assert_eq!(shown["status"], "enabled", "the endpoint is fine: {shown}");
    assert!(shown.get("failingSince").is_none(), "{shown}");
}

#[tokio::test]
async fn a_transform_that_crashes_or_runs_too_long_fails_only_its_own_delivery() {
    let app = TestApp::start().await;
    let receiver = Receiver::start().await;
    // Asset 1: a recursion that overflows any stack; asset 2: a billion steps.
    let program = "def f: 1 + f; if .assetId == 1 then f \
                   elif .assetId == 2 then reduce range(1000000000) as $i (0; . + 1) \
                   else {asset: .assetId} end";
    let (id, _) = app
        .subscribe_receiver(
            &receiver,
            "/t",
            json!({"events": ["asset-updated"], "transform": program}),
            &[],
        )
        .await;
    publish(
        &app,
        &[1, 2, 3].map(|n| asset("asset-updated", &format!("c-{n}"), json!(n), None)),
    )
    .await;
    let deliveries = eventually(Duration::from_secs(30), "two dead letters", || async {
        let (_, deliveries) = app
            .get(&format!(
                "/v1/accounts/vimond/subscriptions/{id}/deliveries"
            ))
            .await;
        (deliveries["deadLetters"].as_array().unwrap().len() >= 2).then_some(deliveries)
    })
    .await;
    let reason = |event: &str| {
        deliveries["deadLetters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|dead| dead["eventId"] == event)
            .and_then(|dead| dead["lastError"].as_str())
            .unwrap_or_else(|| panic!("{event} dead-lettered: {deliveries}"))
            .to_owned()
    };
    // The overflow ends the worker, or (a deep stack, a loaded machine) the deadline
    // comes first and the worker is killed: either way only this delivery fails.
    let overflow = reason("c-1");
    assert!(
        overflow.contains("process ended") || overflow.contains("longer than 500 ms"),
        "{deliveries}"
    );
    assert!(reason("c-2").contains("longer than 500 ms"), "{deliveries}");
    // The server and the later events are unharmed.
    publish(&app, &[asset("asset-updated", "c-4", json!(4), None)]).await;
    eventually(Duration::from_secs(20), "assets 3 and 4", || async {
        (receiver.deliveries("/t").await.len() >= 2).then_some(())
    })
    .await;
    let bodies: BTreeSet<String> = receiver
        .deliveries("/t")
        .await
        .into_iter()
        .map(|d| d.body)
        .collect();
    assert_eq!(
        bodies,
        [r#"{"asset":3}"#, r#"{"asset":4}"#]
            .map(String::from)
            .into()
    );
}

fn catalog_file(dir: &std::path::Path, schema: Value) -> std::path::PathBuf {
    let path = dir.join("catalog.json");
    let catalog = json!({
        "topics": [{"name": "scores", "description": "Match scores"}],
        "eventTypes": [{
            "name": "score-changed", "topic": "scores",
            "required": [{"name": "matchId", "kind": "id"}],
            "entityKey": "matchId",
            "schema": schema
        }]
    });
    std::fs::write(&path, catalog.to_string()).expect("write catalog");
    path
}

fn score_schema() -> Value {
    json!({
        "type": "object",
        "required": ["score"],
        "properties": {
            "score": {
                "type": "object",
                "required": ["home", "away"],
                "properties": {
                    "home": {"type": "integer", "minimum": 0},
                    "away": {"type": "integer", "minimum": 0}
                }
            },
            "periods": {"type": "array", "items": {"enum": ["first", "second", "extra"]}}
        }
    })
}

fn score(guid: &str, score: Value) -> Value {
    json!({"eventName": "score-changed", "guid": guid, "timestamp": "2026-11-30T20:00:00Z",
           "matchId": "m-1", "score": score, "periods": ["first"]})
}

#[tokio::test]
async fn a_catalog_type_with_a_json_schema_refuses_documents_that_break_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = catalog_file(dir.path(), score_schema());
    let app = TestApp::start_with(&[("REELAY_CATALOG", path.to_str().unwrap())]).await;

    let (status, catalog) = app.get("/v1/catalog").await;
    assert_eq!(status, 200);
    let shown = catalog["eventTypes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "score-changed")
        .expect("the operator's type")
        .clone();
    assert_eq!(shown["schema"], score_schema(), "{shown}");
    let builtin = catalog["eventTypes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "asset-updated")
        .unwrap();
    assert!(
        builtin.get("schema").is_none(),
        "built-in types keep their field rules"
    );

    let (status, body) = app
        .post(
            "/v1/accounts/vimond/events",
            &score("s-1", json!({"home": 1, "away": 0})).to_string(),
        )
        .await;
    assert_eq!(status, 202, "{body}");

    let (status, body) = app
        .post(
            "/v1/accounts/vimond/events",
            &score("s-2", json!({"home": 1, "away": -2})).to_string(),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["field"], "score.away", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("schema"),
        "{body}"
    );

    // In a batch, the item is named too, and nothing of the batch is stored.
    let mut missing = score("s-4", json!({"home": 2}));
    missing["periods"] = json!(["first", "overtime"]);
    let batch = json!([score("s-3", json!({"home": 2, "away": 0})), missing]);
    let (status, body) = app
        .post("/v1/accounts/vimond/events", &batch.to_string())
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["index"], 1, "{body}");
    let field = body["error"]["field"].as_str().unwrap();
    assert!(field == "score.away" || field == "periods.1", "{body}");
    let stored: Vec<Value> = app
        .stored_events("vimond")
        .await
        .into_iter()
        .map(|event| event["event"].clone())
        .collect();
    let stored = guids(&stored);
    assert_eq!(stored, ["s-1".to_owned()].into(), "only the valid event");

    // The built-in types keep their rules, and no schema.
    let (status, body) = app
        .post(
            "/v1/accounts/vimond/events",
            &asset("asset-updated", "a-1", json!(1), Some(json!("web"))).to_string(),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["field"], "platforms", "{body}");
}

#[tokio::test]
async fn a_schema_that_does_not_compile_stops_the_start_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let path = catalog_file(dir.path(), json!({"type": "whole-number"}));
    let output = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_reelay"))
            .arg("serve")
            .env("REELAY_LISTEN", "127.0.0.1:0")
            .env(
                "REELAY_DATABASE_URL",
                format!("sqlite://{}/reelay.db", dir.path().display()),
            )
            .env("REELAY_ADMIN_TOKEN", "t")
            .env("REELAY_CATALOG", &path)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("it stops at once")
    .expect("runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("JSON Schema") && stderr.contains("whole-number"),
        "{stderr}"
    );
}

#[tokio::test]
async fn the_openapi_document_shows_the_controls() {
    let app = TestApp::start().await;
    let (status, spec) = app
        .request(reqwest::Method::GET, "/openapi.json", None, None)
        .await;
    assert_eq!(status, 200);
    let schemas = &spec["components"]["schemas"];
    for member in ["filter", "transform", "rateLimit"] {
        let request = &schemas["SubscriptionIn"]["properties"][member];
        assert!(request.is_object(), "SubscriptionIn.{member}: {request}");
        // utoipa writes the description of a member that refers to a schema beside
        // its `$ref`.
        assert!(
            request.to_string().contains(r#""description":"#),
            "{request}"
        );
        assert!(schemas["SubscriptionOut"]["properties"][member].is_object());
    }
    assert!(schemas["EventType"]["properties"]["schema"].is_object());
    // The limit is closed, and its members are bounded as the API checks them.
    let limit = &schemas["RateLimit"];
    assert_eq!(limit["additionalProperties"], false, "{limit}");
    assert_eq!(limit["required"], json!(["perSecond", "burst"]), "{limit}");
    for member in ["perSecond", "burst"] {
        assert_eq!(limit["properties"][member]["minimum"], 1, "{limit}");
        assert_eq!(limit["properties"][member]["maximum"], 10000, "{limit}");
    }
}

/// `count` asset events with guids `<prefix>-<n>`, published in requests of 50.
async fn publish_assets(app: &TestApp, prefix: &str, count: usize) {
    let events: Vec<Value> = (0..count)
        .map(|n| asset("asset-updated", &format!("{prefix}-{n}"), json!(n), None))
        .collect();
    for chunk in events.chunks(50) {
        publish(app, chunk).await;
    }
}

/// Waits until `path` has received at least `count` deliveries; their arrival times.
async fn arrivals(receiver: &Receiver, path: &str, count: usize, within: Duration) -> Vec<f64> {
    let what = format!("{count} deliveries at {path}");
    let deliveries = eventually(within, &what, || async {
        let deliveries = receiver.deliveries(path).await;
        (deliveries.len() >= count).then_some(deliveries)
    })
    .await;
    let mut times: Vec<f64> = deliveries.iter().map(|d| d.at).collect();
    times.sort_by(f64::total_cmp);
    times
}

/// No stretch of arrivals is denser than `per_second` with bursts of `burst` allows:
/// `k` arrivals take at least `(k - burst) / per_second`, less `slack` seconds for the
/// network and a loaded machine.
fn assert_paced(times: &[f64], per_second: f64, burst: usize, slack: f64) {
    for i in 0..times.len() {
        for j in i + burst..times.len() {
            let k = j - i + 1;
            let least = (k - burst) as f64 / per_second - slack;
            let took = times[j] - times[i];
            assert!(
                took >= least,
                "arrivals {i}..={j} ({k}) took {took:.3}s, the limit allows no less than {least:.3}s: {times:?}"
            );
        }
    }
}

#[tokio::test]
async fn a_rate_limited_subscription_is_paced_while_an_unlimited_one_is_not_slowed() {
    let app = TestApp::start().await;
    let receiver = Receiver::start().await;
    let (limited, _) = app
        .subscribe_receiver(
            &receiver,
            "/limited",
            json!({"events": ["asset-updated"], "rateLimit": {"perSecond": 20, "burst": 5}}),
            &[],
        )
        .await;
    app.subscribe_receiver(
        &receiver,
        "/free",
        json!({"events": ["asset-updated"]}),
        &[],
    )
    .await;
    let shown = subscription(&app, &limited).await;
    assert_eq!(
        shown["rateLimit"],
        json!({"perSecond": 20, "burst": 5}),
        "{shown}"
    );

    const EVENTS: usize = 100;
    publish_assets(&app, "paced", EVENTS).await;
    let limited_at = arrivals(&receiver, "/limited", EVENTS, Duration::from_secs(60)).await;
    let free_at = arrivals(&receiver, "/free", EVENTS, Duration::from_secs(60)).await;
    // 100 events at 20/s after a burst of 5: 4.75 s at the least.
    let limited_span = limited_at[EVENTS - 1] - limited_at[0];
    assert!(limited_span >= 4.0, "{limited_span:.3}s: {limited_at:?}");
    assert_paced(&limited_at, 20.0, 5, 0.25);
    // The account's other subscription got them at once, long before.
    let free_done = free_at[EVENTS - 1];
    assert!(
        free_done < limited_at[EVENTS - 1] - 2.0,
        "the unlimited subscription finished at {free_done:.3}, the limited one at {:.3}",
        limited_at[EVENTS - 1]
    );
}

#[tokio::test]
async fn retries_keep_to_the_rate_limit_too() {
    let app = TestApp::start().await;
    let receiver = Receiver::start().await;
    // The first six deliveries fail: each event is retried (200 ms later by the tests'
    // schedule), and the retries share the limit with the first attempts.
    let mut script = vec![Response::status(500); 6];
    script.push(Response::status(200));
    let (id, _) = app
        .subscribe_receiver(
            &receiver,
            "/retried",
            json!({"events": ["asset-updated"], "rateLimit": {"perSecond": 5, "burst": 6}}),
            &script,
        )
        .await;
    publish_assets(&app, "retried", 6).await;
    let times = arrivals(&receiver, "/retried", 12, Duration::from_secs(60)).await;
    // The burst lets the six first attempts go at once; their retries, due together
    // 200 ms later, wait for tokens: 1.2 s at 5/s (unlimited, all within half a second).
    assert_paced(&times, 5.0, 6, 0.25);
    let deliveries = receiver.deliveries("/retried").await;
    let failed = deliveries.iter().filter(|d| d.status == Some(500)).count();
    assert_eq!(failed, 6, "six first attempts failed and were retried");
    until_caught_up(&app, &id).await;
    let delivered: BTreeSet<String> = deliveries
        .iter()
        .filter(|d| d.status == Some(200))
        .map(|d| serde_json::from_str::<Value>(&d.body).unwrap()["guid"].to_string())
        .collect();
    assert_eq!(delivered.len(), 6, "every event arrived once retried");
}

#[tokio::test]
async fn a_429_pauses_the_subscription_for_its_retry_after_and_does_not_count_as_failing() {
    let app = TestApp::start().await;
    let receiver = Receiver::start().await;
    let script = [Response::retry_after(429, "2"), Response::status(200)];
    let (id, _) = app
        .subscribe_receiver(
            &receiver,
            "/busy",
            json!({"events": ["asset-updated"]}),
            &script,
        )
        .await;
    publish_assets(&app, "first", 1).await;
    let first = arrivals(&receiver, "/busy", 1, Duration::from_secs(30)).await[0];
    publish_assets(&app, "later", 4).await;
    // The retry of the first and the four new events: none before the pause is over.
    let times = arrivals(&receiver, "/busy", 6, Duration::from_secs(30)).await;
    for at in &times[1..] {
        assert!(
            at - first >= 1.8,
            "a delivery {:.3}s after the 429 that asked for 2s: {times:?}",
            at - first
        );
    }
    let shown = subscription(&app, &id).await;
    assert_eq!(shown["status"], "enabled", "{shown}");
    assert!(shown.get("failingSince").is_none(), "{shown}");
}

#[tokio::test]
async fn bad_rate_limits_are_refused_and_nothing_is_stored() {
    let app = TestApp::start().await;
    let receiver = Receiver::start().await;
    for (limit, field) in [
        (json!({"perSecond": 0, "burst": 5}), "rateLimit.perSecond"),
        (json!({"perSecond": -1, "burst": 5}), "rateLimit.perSecond"),
        (json!({"perSecond": 1.5, "burst": 5}), "rateLimit.perSecond"),
        (
            json!({"perSecond": 100_000_000, "burst": 5}),
            "rateLimit.perSecond",
        ),
        (json!({"perSecond": 20, "burst": 0}), "rateLimit.burst"),
        (json!({"perSecond": 20}), "rateLimit.burst"),
        (
            json!({"perSecond": 20, "burst": 5, "jitter": 1}),
            "rateLimit.jitter",
        ),
        (json!(20), "rateLimit"),
    ] {
        let body = json!({"endpoint": receiver.url("/bad"), "events": ["asset-updated"],
                          "rateLimit": limit});
        let (status, answer) = app
            .post("/v1/accounts/vimond/subscriptions", &body.to_string())
            .await;
        assert_eq!(status, 422, "{limit}: {answer}");
        assert_eq!(answer["error"]["field"], field, "{limit}: {answer}");
    }
    let (status, list) = app.get("/v1/accounts/vimond/subscriptions").await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list, json!([]), "nothing stored");
}

#[tokio::test]
async fn the_validation_handshake_asks_for_the_rate_and_takes_the_allowed_one() {
    let app =
        TestApp::start_with(&[("REELAY_PUBLIC_URL", "https://events.example.test/reelay/")]).await;
    let receiver = Receiver::start().await;
    receiver
        .handshake(
            "/hs",
            HandshakeAnswer {
                status: 200,
                allowed_origin: Some("*".to_owned()),
                // Requests a minute: ten a second.
                allowed_rate: Some("600".to_owned()),
            },
        )
        .await;
    let body = json!({"endpoint": receiver.url("/hs"), "events": ["asset-updated"],
                      "validationHandshake": true,
                      "rateLimit": {"perSecond": 20, "burst": 5}});
    let (status, created) = app
        .post("/v1/accounts/vimond/subscriptions", &body.to_string())
        .await;
    assert_eq!(status, 201, "{created}");
    let asked = receiver.handshakes("/hs").await;
    assert_eq!(asked[0].headers["webhook-request-rate"], "1200");
    let id = created["id"].as_str().expect("id");
    assert_eq!(
        subscription(&app, id).await["rateLimit"],
        json!({"perSecond": 10, "burst": 5})
    );
}

#[tokio::test]
async fn a_full_resync_keeps_to_the_rate_limit() {
    let app = TestApp::start().await;
    let receiver = Receiver::start().await;
    const ASSETS: usize = 20;
    let created: Vec<Value> = (0..ASSETS)
        .map(|n| asset("asset-created", &format!("rl-{n}"), json!(n), None))
        .collect();
    publish(&app, &created).await;
    let (status, created) = app
        .post(
            "/v1/accounts/vimond/subscriptions",
            &json!({"endpoint": receiver.url("/copies"), "topics": ["asset-operations"],
                    "resync": true, "rateLimit": {"perSecond": 10, "burst": 2}})
            .to_string(),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    receiver
        .hook("/copies", created["secret"].as_str().unwrap(), &[])
        .await;
    let times = arrivals(&receiver, "/copies", ASSETS, Duration::from_secs(60)).await;
    // Twenty copies at 10/s after a burst of 2: 1.8 s at the least (unlimited: at once).
    assert_paced(&times, 10.0, 2, 0.25);
    let bodies: Vec<Value> = receiver
        .deliveries("/copies")
        .await
        .iter()
        .map(|d| serde_json::from_str(&d.body).unwrap())
        .collect();
    assert!(
        bodies.iter().all(|b| b["resyncType"] == "full"),
        "{bodies:?}"
    );
}
