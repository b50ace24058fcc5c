//! CloudEvents ingest: every Zapp example of seed 002 sent by the Python `cloudevents`
//! SDK in each content mode; user tokens verified or pseudonymised and never stored,
//! logged or delivered; bad input refused whole; duplicates per source.

use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::Method;
use serde_json::{Value, json};

use crate::app::{ADMIN, TestApp, eventually};
use crate::support::receiver::{Delivery, Receiver};

const ZAPP_TOPICS: [&str; 2] = ["app-playback", "app-favorites"];
/// Test-only keys (openssl genpkey); they guard nothing.
const EC_PRIVATE: &str = include_str!("../fixtures/jwt_es256_private.pem");
const EC_PUBLIC: &str = include_str!("../fixtures/jwt_es256_public.pem");
const HS256_SECRET: &str = "hs256-secret-shared-with-the-identity-provider";

pub(crate) fn endpoint(app: &TestApp) -> String {
    format!("{}/v1/accounts/vimond/cloudevents", app.url)
}

/// Runs the Python SDK client; returns its report.
pub(crate) async fn zapp_client(
    app: &TestApp,
    mode: &str,
    user_token: &str,
    source: &str,
) -> Value {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/peers/cloudevents_client.py"
    );
    let output = tokio::process::Command::new("python3")
        .args([
            script,
            "--url",
            &endpoint(app),
            "--api-key",
            ADMIN,
            "--mode",
            mode,
        ])
        .args(["--user-token", user_token, "--expect-source", source])
        .output()
        .await
        .expect("python3 runs");
    assert!(
        output.status.success(),
        "the cloudevents client failed in {mode} mode (is `cloudevents` installed? run scripts/test): {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("client report")
}

/// A structured event of seed 002's Add to favorites, with `token` as the user.
fn favorite(id: &str, source: &str, token: Option<&str>) -> Value {
    let mut data = json!({"entryId": "entry-7"});
    if let Some(token) = token {
        data["userIdentifier"] = json!(token);
    }
    json!({"specversion": "1.0", "type": "com.applicaster.favorites.added.v1", "source": source,
           "subject": "entry-7 added to favorites", "id": id, "time": "2024-06-07T14:27:16.035Z",
           "datacontenttype": "applicastion/json", "data": data})
}

async fn send(app: &TestApp, content_type: &str, body: &str) -> (u16, Value) {
    let response = app
        .http
        .post(endpoint(app))
        .bearer_auth(ADMIN)
        .header("content-type", content_type)
        .body(body.to_owned())
        .send()
        .await
        .expect("request");
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

async fn structured(app: &TestApp, event: &Value) -> (u16, Value) {
    send(app, "application/cloudevents+json", &event.to_string()).await
}

/// Sends `event` in binary mode: attributes as percent-encoded `ce-*` headers.
async fn binary(app: &TestApp, event: &Value) -> (u16, Value) {
    let mut request = app.http.post(endpoint(app)).bearer_auth(ADMIN);
    for (name, value) in event.as_object().expect("object") {
        let text = value
            .as_str()
            .map(str::to_owned)
            .unwrap_or(value.to_string());
        match name.as_str() {
            "data" => request = request.body(value.to_string()),
            "datacontenttype" => request = request.header("content-type", text),
            _ => {
                let encoded: String = url::form_urlencoded::byte_serialize(text.as_bytes())
                    .collect::<String>()
                    .replace('+', "%20");
                request = request.header(format!("ce-{name}"), encoded);
            }
        }
    }
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

async fn subscribe_zapp(app: &TestApp, receiver: &Receiver) {
    app.subscribe_receiver(receiver, "/zapp", json!({"topics": ZAPP_TOPICS}), &[])
        .await;
}

async fn wait_for(receiver: &Receiver, count: usize) -> Vec<Delivery> {
    eventually(
        Duration::from_secs(20),
        &format!("{count} deliveries"),
        || async {
            let got = receiver.deliveries("/zapp").await;
            (got.len() >= count).then_some(got)
        },
    )
    .await
}

/// Asserts that none of `secrets` is anywhere in the log, the server's logs or the
/// deliveries.
async fn assert_nowhere(app: &TestApp, receiver: &Receiver, secrets: &[&str]) {
    let stored = serde_json::to_string(&app.stored_events("vimond").await).unwrap();
    let logs = app.logs();
    let delivered = receiver.deliveries("/zapp").await;
    let on_disk = app.data_bytes().await;
    for secret in secrets {
        assert!(!stored.contains(secret), "{secret} is stored: {stored}");
        // The operator's HS256 key is kept (it verifies tokens); user tokens never are.
        let kept = *secret == HS256_SECRET;
        assert!(
            kept || !on_disk
                .windows(secret.len())
                .any(|window| window == secret.as_bytes()),
            "{secret} is in the database files"
        );
        assert!(!logs.contains(secret), "{secret} is in the server's log");
        for delivery in &delivered {
            assert!(!delivery.body.contains(secret), "{secret} was delivered");
            assert!(
                delivery
                    .headers
                    .values()
                    .all(|value| !value.contains(secret)),
                "{secret} is in a delivery header"
            );
        }
    }
}

#[tokio::test]
async fn every_zapp_example_arrives_in_every_mode_through_the_python_sdk() {
    let app = TestApp::start_with(&[
        ("REELAY_PUBLIC_URL", "https://events.example.test/reelay/"),
        ("REELAY_LOG", "debug"),
    ])
    .await;
    let receiver = Receiver::start().await;
    let (status, catalog) = app.get("/v1/catalog").await;
    assert_eq!(status, 200);
    let names: Vec<&str> = catalog["eventTypes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["envelope"] == "cloudevents")
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert_eq!(
        names.len(),
        7,
        "the Zapp types are in the catalog: {names:?}"
    );
    subscribe_zapp(&app, &receiver).await;

    let token = "zapp-access-token-eyJhbGciOiJub25lIn0.Q2xpZW50";
    let source = "https://events.example.test/reelay/v1/accounts/vimond/cloudevents";
    let mut sent = Vec::new();
    for mode in ["structured", "binary", "batch"] {
        let report = zapp_client(&app, mode, token, source).await;
        let events = report["sent"].as_array().unwrap().clone();
        assert_eq!(events.len(), 8, "every example of seed 002");
        let answers = report["answers"].as_array().unwrap();
        assert_eq!(answers.len(), if mode == "batch" { 1 } else { 8 });
        sent.extend(events);
    }

    let stored = app.stored_events("vimond").await;
    assert_eq!(stored.len(), 24, "each example stored once per mode");
    for (event, sent) in stored.iter().zip(&sent) {
        let document = &event["event"];
        assert_eq!(document["id"], sent["id"]);
        assert_eq!(event["name"], sent["type"]);
        assert_eq!(event["entityKey"], sent["key"]);
        let user = document["data"]["userIdentifier"].as_str().unwrap();
        assert!(user.starts_with("uid_"), "{user}");
        assert_eq!(
            user, stored[0]["event"]["data"]["userIdentifier"],
            "one user, one pseudonym"
        );
    }
    let topics: Vec<&str> = stored
        .iter()
        .map(|e| e["topic"].as_str().unwrap())
        .collect();
    assert_eq!(topics.iter().filter(|t| **t == "app-favorites").count(), 6);
    // The extra continue-watching keys are kept.
    assert_eq!(stored[5]["event"]["data"]["key2"], "some info2");
    // Binary mode is stored in structured form.
    assert_eq!(stored[8]["event"]["specversion"], "1.0");
    assert_eq!(stored[8]["event"]["datacontenttype"], "applicastion/json");

    let deliveries = wait_for(&receiver, 24).await;
    assert_eq!(deliveries.len(), 24);
    for delivery in &deliveries {
        assert_eq!(delivery.verified, Some(true), "{:?}", delivery.error);
        let body: Value = serde_json::from_str(&delivery.body).unwrap();
        let stored = stored
            .iter()
            .find(|e| e["id"].as_str() == delivery.webhook_id.as_deref())
            .expect("a stored event");
        assert_eq!(body, stored["event"]);
    }
    assert_nowhere(&app, &receiver, &[token]).await;
}

fn jwt(algorithm: Algorithm, sub: &str, exp_from_now: i64, signer: &EncodingKey) -> String {
    let now = jsonwebtoken::get_current_timestamp() as i64;
    let claims = json!({"sub": sub, "exp": now + exp_from_now, "iss": "https://login.example.test",
                        "aud": "zapp-tv"});
    jsonwebtoken::encode(&Header::new(algorithm), &claims, signer).unwrap()
}

#[tokio::test]
async fn verified_user_tokens_become_their_subject_and_bad_ones_are_refused() {
    let app = TestApp::start_with(&[("REELAY_LOG", "trace")]).await;
    let receiver = Receiver::start().await;
    subscribe_zapp(&app, &receiver).await;
    let settings_path = "/v1/accounts/vimond/cloudevents/token-verification";
    assert_eq!(app.get(settings_path).await.0, 404);
    let settings = json!({"hs256Secret": HS256_SECRET, "publicKeys": [EC_PUBLIC],
                          "issuer": "https://login.example.test", "audience": "zapp-tv"});
    let (status, shown) = app
        .request(
            Method::PUT,
            settings_path,
            Some(ADMIN),
            Some(&settings.to_string()),
        )
        .await;
    assert_eq!(status, 200, "{shown}");
    let (status, shown) = app.get(settings_path).await;
    assert_eq!(status, 200);
    assert_eq!(shown["hs256"], true);
    assert_eq!(shown["publicKeys"][0]["algorithm"], "ES256");
    assert!(
        !shown.to_string().contains(HS256_SECRET),
        "the secret is never shown"
    );
    // Only the admin sets it; a key must be a key.
    let (_, key) = app.post("/v1/accounts/vimond/keys", "").await;
    let account_key = key["key"].as_str().unwrap();
    let put = |token: &str, body: Value| {
        let (app, token) = (&app, token.to_owned());
        async move {
            app.request(
                Method::PUT,
                settings_path,
                Some(&token),
                Some(&body.to_string()),
            )
            .await
        }
    };
    assert_eq!(put(account_key, settings.clone()).await.0, 403);
    let (status, error) = put(ADMIN, json!({"publicKeys": ["not a key"]})).await;
    assert_eq!(
        (status, error["error"]["field"].as_str()),
        (422, Some("publicKeys[0]"))
    );
    assert_eq!(put(ADMIN, json!({})).await.0, 422);

    let hs = EncodingKey::from_secret(HS256_SECRET.as_bytes());
    let ec = EncodingKey::from_ec_pem(EC_PRIVATE.as_bytes()).unwrap();
    let good_hs = jwt(Algorithm::HS256, "user-42", 600, &hs);
    let good_ec = jwt(Algorithm::ES256, "user-43", 600, &ec);
    let expired = jwt(Algorithm::HS256, "user-42", -3600, &hs);
    let forged = jwt(
        Algorithm::HS256,
        "user-42",
        600,
        &EncodingKey::from_secret(b"guessed-secret"),
    );

    let (status, answer) = structured(&app, &favorite("t-1", "app://tv", Some(&good_hs))).await;
    assert_eq!(status, 201, "{answer}");
    let (status, answer) = binary(&app, &favorite("t-2", "app://tv", Some(&good_ec))).await;
    assert_eq!(status, 201, "{answer}");

    for (token, code) in [
        (Some(expired.as_str()), "expired_user_token"),
        (Some(forged.as_str()), "invalid_user_token"),
        (Some("not-a-jwt-at-all"), "invalid_user_token"),
        (None, "missing_user_token"),
    ] {
        for mode in ["structured", "binary"] {
            let event = favorite("t-bad", "app://tv", token);
            let (status, error) = match mode {
                "structured" => structured(&app, &event).await,
                _ => binary(&app, &event).await,
            };
            assert_eq!(status, 401, "{mode} {code}: {error}");
            assert_eq!(error["error"]["code"], code);
            assert_eq!(error["error"]["field"], "data.userIdentifier");
        }
    }
    // One bad token refuses the whole batch.
    let batch = json!([
        favorite("t-3", "app://tv", Some(&good_hs)),
        favorite("t-4", "app://tv", Some(&forged))
    ]);
    let (status, error) = send(
        &app,
        "application/cloudevents-batch+json",
        &batch.to_string(),
    )
    .await;
    assert_eq!(
        (status, error["error"]["index"].clone()),
        (401, json!(1)),
        "{error}"
    );

    let stored = app.stored_events("vimond").await;
    let users: Vec<&str> = stored
        .iter()
        .map(|e| e["event"]["data"]["userIdentifier"].as_str().unwrap())
        .collect();
    assert_eq!(users, vec!["user-42", "user-43"], "the verified subjects");
    wait_for(&receiver, 2).await;

    // Without verification tokens are pseudonymised again.
    assert_eq!(app.delete(settings_path).await.0, 204);
    assert_eq!(app.delete(settings_path).await.0, 404);
    let (status, _) = structured(&app, &favorite("t-5", "app://tv", Some(&expired))).await;
    assert_eq!(status, 201);
    let stored = app.stored_events("vimond").await;
    assert!(
        stored[2]["event"]["data"]["userIdentifier"]
            .as_str()
            .unwrap()
            .starts_with("uid_")
    );
    wait_for(&receiver, 3).await;
    // Let a wrong delivery arrive before judging.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.deliveries("/zapp").await.len(), 3);
    assert!(app.logs().contains("TRACE"), "the log was at trace level");
    assert_nowhere(
        &app,
        &receiver,
        &[
            &good_hs,
            &good_ec,
            &expired,
            &forged,
            "not-a-jwt-at-all",
            HS256_SECRET,
        ],
    )
    .await;
}

#[tokio::test]
async fn bad_input_gets_a_clear_4xx_and_nothing_is_stored() {
    let app = TestApp::start().await;
    let receiver = Receiver::start().await;
    subscribe_zapp(&app, &receiver).await;
    let good = favorite("b-1", "app://tv", Some("token"));

    for attribute in ["specversion", "id", "source", "type"] {
        let mut event = good.clone();
        event.as_object_mut().unwrap().remove(attribute);
        for (mode, (status, error)) in [
            ("structured", structured(&app, &event).await),
            ("binary", binary(&app, &event).await),
        ] {
            assert_eq!(status, 422, "{mode} without {attribute}: {error}");
            assert_eq!(error["error"]["field"], attribute, "{mode}");
        }
    }
    let mut old = good.clone();
    old["specversion"] = json!("0.3");
    let (status, error) = structured(&app, &old).await;
    assert_eq!(
        (status, error["error"]["field"].as_str()),
        (422, Some("specversion"))
    );
    let mut unknown = good.clone();
    unknown["type"] = json!("com.applicaster.video.exploded.v1");
    let (status, error) = structured(&app, &unknown).await;
    assert_eq!(
        (status, error["error"]["field"].as_str()),
        (422, Some("type")),
        "{error}"
    );
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not an event type in the catalog")
    );
    let mut no_entry = good.clone();
    no_entry["data"].as_object_mut().unwrap().remove("entryId");
    let (status, error) = binary(&app, &no_entry).await;
    assert_eq!(
        (status, error["error"]["field"].as_str()),
        (422, Some("data.entryId"))
    );

    let (status, error) = send(
        &app,
        "application/cloudevents+json",
        "{\"specversion\": \"1.0\",\n \"id\": }",
    )
    .await;
    assert_eq!(
        (status, error["error"]["code"].as_str()),
        (400, Some("malformed_json"))
    );
    assert_eq!(error["error"]["line"], 2);

    let mut bad = good.clone();
    bad["id"] = json!("b-3");
    bad["time"] = json!("last tuesday");
    let batch = json!([good, favorite("b-2", "app://tv", Some("token")), bad]);
    let (status, error) = send(
        &app,
        "application/cloudevents-batch+json",
        &batch.to_string(),
    )
    .await;
    assert_eq!(status, 422, "{error}");
    assert_eq!(
        (
            error["error"]["index"].clone(),
            error["error"]["field"].clone()
        ),
        (json!(2), json!("time"))
    );

    let (status, error) = send(&app, "text/plain", "hello").await;
    assert_eq!(
        (status, error["error"]["code"].as_str()),
        (415, Some("unsupported_media_type"))
    );

    // Past the 16 MiB body limit: a JSON error, not a bare status.
    let huge = format!(
        "{{\"specversion\":\"1.0\",\"pad\":\"{}\"}}",
        "x".repeat(16 * 1024 * 1024)
    );
    let (status, error) = send(&app, "application/cloudevents+json", &huge).await;
    assert_eq!(
        (status, error["error"]["code"].as_str()),
        (413, Some("payload_too_large")),
        "{error}"
    );

    assert!(
        app.stored_events("vimond").await.is_empty(),
        "nothing stored"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        receiver.deliveries("/zapp").await.is_empty(),
        "nothing delivered"
    );
}

#[tokio::test]
async fn an_id_is_one_event_per_source() {
    let app = TestApp::start().await;
    let receiver = Receiver::start().await;
    subscribe_zapp(&app, &receiver).await;
    let event = favorite("same-id", "app://tv", Some("token"));

    let (status, answer) = structured(&app, &event).await;
    assert_eq!(status, 201, "{answer}");
    // The source is this endpoint on the host called.
    assert_eq!(answer["source"], endpoint(&app));
    assert_eq!(answer["subject"], "Event same-id was successfully received");
    // Again, in binary mode, and twice in one batch.
    assert_eq!(binary(&app, &event).await.0, 201);
    let batch = json!([event, event]).to_string();
    let (status, answer) = send(&app, "application/cloudevents-batch+json", &batch).await;
    assert_eq!(status, 201);
    assert_eq!(
        answer["subject"],
        "Events same-id, same-id were successfully received"
    );
    // The same id from another app is another event.
    let other = favorite("same-id", "app://phone", Some("token"));
    assert_eq!(structured(&app, &other).await.0, 201);

    let stored = app.stored_events("vimond").await;
    assert_eq!(stored.len(), 2, "{stored:?}");
    assert_eq!(stored[0]["event"]["source"], "app://tv");
    assert_eq!(stored[1]["event"]["source"], "app://phone");
    assert_ne!(stored[0]["id"], stored[1]["id"]);
    let delivered = wait_for(&receiver, 2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.deliveries("/zapp").await.len(), 2);
    assert!(delivered.iter().all(|d| d.verified == Some(true)));
}
