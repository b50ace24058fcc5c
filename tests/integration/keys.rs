//! Account keys with a lifecycle (scopes, limits on what they publish, expiry,
//! revocation on every node), the admin token's rotation, signing secret rotation,
//! ed25519 signatures, and secrets encrypted at rest.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};

use crate::app::{TestApp, eventually, scratch_database};
use crate::publish::asset_event;
use crate::support::receiver::{Delivery, Receiver, Response};

/// Creates a key in `account` with the creation body `body`; returns the whole answer.
async fn create_key(app: &TestApp, account: &str, body: Value) -> Value {
    let (status, created) = app
        .post(&format!("/v1/accounts/{account}/keys"), &body.to_string())
        .await;
    assert_eq!(status, 201, "key refused: {created}");
    created
}

fn key_of(created: &Value) -> String {
    created["key"].as_str().expect("key").to_owned()
}

/// The error code of an answer.
fn code(answer: &Value) -> Option<&str> {
    answer["error"]["code"].as_str()
}

async fn call(
    app: &TestApp,
    method: Method,
    path: &str,
    key: &str,
    body: Option<&Value>,
) -> (u16, Value) {
    let body = body.map(Value::to_string);
    app.request(method, path, Some(key), body.as_deref()).await
}

/// A seed 002 "video started" CloudEvent (topic app-playback).
fn video_started(id: &str) -> Value {
    json!({"specversion": "1.0", "type": "com.applicaster.video.started.v1",
           "source": "zapp://tests", "id": id, "time": "2024-06-07T14:27:16.035Z",
           "datacontenttype": "application/json", "data": {"videoId": "v-1"}})
}

async fn post_cloudevent(app: &TestApp, key: &str, event: &Value) -> (u16, Value) {
    let response = app
        .http
        .post(format!("{}/v1/accounts/vimond/cloudevents", app.url))
        .bearer_auth(key)
        .header(
            "content-type",
            if event.is_array() {
                "application/cloudevents-batch+json"
            } else {
                "application/cloudevents+json"
            },
        )
        .body(event.to_string())
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

#[tokio::test]
async fn a_publish_only_key_publishes_and_may_not_read_or_manage() {
    let app = TestApp::start().await;
    let created = create_key(
        &app,
        "vimond",
        json!({"name": "ingest", "scopes": ["publish"]}),
    )
    .await;
    assert_eq!(created["scopes"], json!(["publish"]));
    assert_eq!(created["account"], "vimond");
    assert!(created["id"].as_str().unwrap().starts_with("key_"));
    let publisher = key_of(&created);

    let event = asset_event("asset-updated", "p-1");
    let (status, answer) = call(
        &app,
        Method::POST,
        "/v1/accounts/vimond/events",
        &publisher,
        Some(&event),
    )
    .await;
    assert_eq!(status, 202, "{answer}");
    let (status, answer) = post_cloudevent(&app, &publisher, &video_started("ce-1")).await;
    assert_eq!(status, 201, "{answer}");

    // Reading the log, listing subscriptions: the read scope.
    for path in [
        "/v1/accounts/vimond/events",
        "/v1/accounts/vimond/subscriptions",
    ] {
        let (status, answer) = call(&app, Method::GET, path, &publisher, None).await;
        assert_eq!(
            (status, code(&answer)),
            (403, Some("missing_scope_read")),
            "{path}: {answer}"
        );
        assert!(answer.get("events").is_none());
    }
    // Creating a subscription, replaying: the manage scope.
    let (id, _) = app
        .subscribe(
            "vimond",
            json!({"endpoint": "http://127.0.0.1:9/h", "events": ["asset-updated"]}),
        )
        .await;
    let (status, answer) = call(
        &app,
        Method::POST,
        &format!("/v1/accounts/vimond/subscriptions/{id}/replay"),
        &publisher,
        Some(&json!({"fromSequence": 1})),
    )
    .await;
    assert_eq!(
        (status, code(&answer)),
        (403, Some("missing_scope_manage")),
        "{answer}"
    );
    let subscription = json!({"endpoint": "http://127.0.0.1:9/x", "events": ["asset-created"]});
    let (status, answer) = call(
        &app,
        Method::POST,
        "/v1/accounts/vimond/subscriptions",
        &publisher,
        Some(&subscription),
    )
    .await;
    assert_eq!(
        (status, code(&answer)),
        (403, Some("missing_scope_manage")),
        "{answer}"
    );
    let (status, _) = call(
        &app,
        Method::DELETE,
        &format!("/v1/accounts/vimond/subscriptions/{id}"),
        &publisher,
        None,
    )
    .await;
    assert_eq!(status, 403);
    assert_eq!(
        app.get(&format!("/v1/accounts/vimond/subscriptions/{id}"))
            .await
            .0,
        200
    );
    // Only the subscription the admin made exists.
    let (_, list) = app.get("/v1/accounts/vimond/subscriptions").await;
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");

    // A read-only key reads, and may not publish.
    let reader = key_of(&create_key(&app, "vimond", json!({"scopes": ["read"]})).await);
    let (status, page) = call(
        &app,
        Method::GET,
        "/v1/accounts/vimond/events",
        &reader,
        None,
    )
    .await;
    assert_eq!(status, 200, "{page}");
    // The two published, and the video-change that follows the asset update.
    let published = app.stored_events("vimond").await.len();
    assert_eq!(page["events"].as_array().map(Vec::len), Some(published));
    assert!(published >= 2);
    let (status, answer) = call(
        &app,
        Method::POST,
        "/v1/accounts/vimond/events",
        &reader,
        Some(&asset_event("asset-updated", "p-2")),
    )
    .await;
    assert_eq!(
        (status, code(&answer)),
        (403, Some("missing_scope_publish")),
        "{answer}"
    );
    assert_eq!(app.stored_events("vimond").await.len(), published);

    // A key made without scopes has all three, as keys always had.
    let full = create_key(&app, "vimond", json!({})).await;
    assert_eq!(full["scopes"], json!(["publish", "read", "manage"]));

    // Bad creations: a clear 422 and no key.
    for (body, field) in [
        (json!({"scopes": ["admin"]}), Some("scopes[0]")),
        (json!({"scopes": []}), Some("scopes")),
        (json!({"events": ["no-such-event"]}), Some("events")),
        (json!({"topics": ["no-such-topic"]}), Some("topics")),
        (json!({"expiresAt": "yesterday"}), Some("expiresAt")),
        (
            json!({"expiresAt": "2001-01-01T00:00:00Z"}),
            Some("expiresAt"),
        ),
        (json!({"scope": ["read"]}), Some("scope")),
    ] {
        let (status, answer) = app
            .post("/v1/accounts/vimond/keys", &body.to_string())
            .await;
        // A member keys do not have is refused like in every other body.
        let expected = match body.get("scope") {
            Some(_) => "unknown_member",
            None => "invalid_key",
        };
        assert_eq!(
            (status, code(&answer)),
            (422, Some(expected)),
            "{body}: {answer}"
        );
        assert_eq!(answer["error"]["field"].as_str(), field, "{body}: {answer}");
    }
    let (_, listed) = app.get("/v1/accounts/vimond/keys").await;
    assert_eq!(listed["keys"].as_array().map(Vec::len), Some(3), "{listed}");
}

#[tokio::test]
async fn a_key_limited_to_app_playback_cannot_publish_asset_events() {
    let app = TestApp::start().await;
    let key = key_of(
        &create_key(
            &app,
            "vimond",
            json!({"scopes": ["publish"], "topics": ["app-playback"]}),
        )
        .await,
    );
    let (status, answer) = call(
        &app,
        Method::POST,
        "/v1/accounts/vimond/events",
        &key,
        Some(&asset_event("asset-created", "l-1")),
    )
    .await;
    assert_eq!(
        (status, code(&answer)),
        (403, Some("event_not_allowed")),
        "{answer}"
    );
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("asset-created"),
        "{answer}"
    );
    // A batch with one such event stores nothing, and says which.
    let batch = json!([video_started("ok-1"), video_started("ok-2")]);
    let (status, answer) = post_cloudevent(&app, &key, &batch).await;
    assert_eq!(status, 201, "a batch of playback events: {answer}");
    let mut favorite = video_started("fav-1");
    favorite["type"] = json!("com.applicaster.favorites.added.v1");
    favorite["data"] = json!({"entryId": "e-1"});
    let (status, answer) =
        post_cloudevent(&app, &key, &json!([video_started("ok-3"), favorite])).await;
    assert_eq!(
        (status, code(&answer)),
        (403, Some("event_not_allowed")),
        "{answer}"
    );
    assert_eq!(answer["error"]["index"], 1, "{answer}");
    let stored = app.stored_events("vimond").await;
    assert_eq!(stored.len(), 2, "only the allowed batch is stored");
    assert!(stored.iter().all(|e| e["topic"] == "app-playback"));

    // Limited to one event name.
    let one = key_of(&create_key(&app, "vimond", json!({"events": ["asset-updated"]})).await);
    assert_eq!(
        call(
            &app,
            Method::POST,
            "/v1/accounts/vimond/events",
            &one,
            Some(&asset_event("asset-updated", "l-2"))
        )
        .await
        .0,
        202
    );
    assert_eq!(
        call(
            &app,
            Method::POST,
            "/v1/accounts/vimond/events",
            &one,
            Some(&asset_event("asset-deleted", "l-3"))
        )
        .await
        .0,
        403
    );
}

#[tokio::test]
async fn an_expired_key_is_refused() {
    let app = TestApp::start().await;
    let expires = chrono::Utc::now() + chrono::Duration::milliseconds(1500);
    let created = create_key(&app, "vimond", json!({"expiresAt": expires.to_rfc3339()})).await;
    assert_eq!(created["expiresAt"], expires.timestamp_millis());
    let key = key_of(&created);
    // Works until it expires (the request may be slow on a busy machine: only the
    // answers before the expiry must be 200), then 401 for good.
    let path = "/v1/accounts/vimond/events";
    loop {
        let asked = chrono::Utc::now();
        let (status, answer) = call(&app, Method::GET, path, &key, None).await;
        if asked < expires - chrono::Duration::milliseconds(100) {
            assert_eq!(status, 200, "{answer}");
        } else if status == 401 {
            break;
        }
        assert!(
            chrono::Utc::now() < expires + chrono::Duration::seconds(5),
            "still accepted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, answer) = call(&app, Method::GET, path, &key, None).await;
    assert_eq!((status, code(&answer)), (401, Some("unauthorized")));
}

#[tokio::test]
async fn keys_are_listed_without_the_key_and_revoked_at_once() {
    let app = TestApp::start().await;
    let created = create_key(
        &app,
        "vimond",
        json!({"name": "zapp-ios", "scopes": ["publish", "read"], "topics": ["app-playback"]}),
    )
    .await;
    let key = key_of(&created);
    let id = created["id"].as_str().unwrap().to_owned();
    create_key(&app, "other", json!({})).await;
    assert_eq!(
        call(&app, Method::GET, "/v1/accounts/vimond/events", &key, None)
            .await
            .0,
        200
    );

    let (status, listed) = app.get("/v1/accounts/vimond/keys").await;
    assert_eq!(status, 200);
    let keys = listed["keys"].as_array().expect("keys");
    assert_eq!(keys.len(), 1, "only this account's keys: {listed}");
    let shown = &keys[0];
    assert_eq!(shown["id"], id.as_str());
    assert_eq!(shown["name"], "zapp-ios");
    assert_eq!(shown["scopes"], json!(["publish", "read"]));
    assert_eq!(shown["topics"], json!(["app-playback"]));
    assert!(key.starts_with(shown["prefix"].as_str().unwrap()));
    assert!(shown["createdAt"].is_i64() && shown.get("expiresAt").is_some());
    assert!(shown.get("key").is_none());
    let text = listed.to_string();
    assert!(!text.contains(&key), "the listing shows the key");
    assert!(
        !text.contains(&key[10..20]),
        "the listing shows part of the key past its prefix"
    );
    // Its use is noted (once a minute at most, in the background).
    eventually(Duration::from_secs(10), "lastUsedAt", || async {
        let (_, listed) = app.get("/v1/accounts/vimond/keys").await;
        listed["keys"][0]["lastUsedAt"].as_i64()
    })
    .await;
    // A key (not the admin) may not list, make or revoke keys.
    assert_eq!(
        call(&app, Method::GET, "/v1/accounts/vimond/keys", &key, None)
            .await
            .0,
        403
    );
    assert_eq!(
        call(
            &app,
            Method::DELETE,
            &format!("/v1/accounts/vimond/keys/{id}"),
            &key,
            None
        )
        .await
        .0,
        403
    );

    // Revoked: 401 from the next request on.
    assert_eq!(
        app.delete(&format!("/v1/accounts/other/keys/{id}")).await.0,
        404,
        "another account's id"
    );
    assert_eq!(
        app.delete(&format!("/v1/accounts/vimond/keys/{id}"))
            .await
            .0,
        204
    );
    let (status, answer) = call(&app, Method::GET, "/v1/accounts/vimond/events", &key, None).await;
    assert_eq!(
        (status, code(&answer)),
        (401, Some("unauthorized")),
        "{answer}"
    );
    assert_eq!(
        app.delete(&format!("/v1/accounts/vimond/keys/{id}"))
            .await
            .0,
        404
    );
    let (_, listed) = app.get("/v1/accounts/vimond/keys").await;
    assert_eq!(listed["keys"], json!([]));

    // Nothing in the database gives the key away.
    let bytes = app.data_bytes().await;
    let stored = String::from_utf8_lossy(&bytes);
    assert!(!stored.contains(&key));
}

#[tokio::test]
#[ignore = "needs PostgreSQL: runs in the PostgreSQL pass of scripts/test"]
async fn a_revoked_key_is_refused_on_another_node_within_a_second() {
    let first_dir = tempfile::tempdir().expect("temp dir");
    let database = scratch_database(first_dir.path()).await;
    assert!(
        database.starts_with("postgres"),
        "several nodes need PostgreSQL: set REELAY_TEST_POSTGRES_URL (scripts/test does)"
    );
    let a = TestApp::start_on(database.clone(), &[], first_dir).await;
    let b = TestApp::start_on(database, &[], tempfile::tempdir().expect("temp dir")).await;
    let created = create_key(&a, "vimond", json!({"scopes": ["read"]})).await;
    let key = key_of(&created);
    let id = created["id"].as_str().unwrap();
    let path = "/v1/accounts/vimond/events";
    // Known (cached) on both nodes.
    assert_eq!(call(&a, Method::GET, path, &key, None).await.0, 200);
    assert_eq!(call(&b, Method::GET, path, &key, None).await.0, 200);

    assert_eq!(
        a.delete(&format!("/v1/accounts/vimond/keys/{id}")).await.0,
        204
    );
    let revoked = Instant::now();
    assert_eq!(call(&a, Method::GET, path, &key, None).await.0, 401);
    eventually(
        Duration::from_secs(5),
        "the other node refuses the key",
        || async { (call(&b, Method::GET, path, &key, None).await.0 == 401).then_some(()) },
    )
    .await;
    eprintln!(
        "revoked key refused by the other node after {:?}",
        revoked.elapsed()
    );
    // The cache entry lives a second at most (and the request takes some time).
    assert!(
        revoked.elapsed() < Duration::from_millis(1900),
        "took {:?}",
        revoked.elapsed()
    );
    // Once refused, refused for good.
    for _ in 0..5 {
        assert_eq!(call(&b, Method::GET, path, &key, None).await.0, 401);
    }
}

#[tokio::test]
async fn the_admin_token_rotates_with_an_overlap() {
    // The generated (stored) admin token, and a configured second one.
    let app = TestApp::start_with(&[("REELAY_ADMIN_TOKEN_NEXT", "next-admin-token")]).await;
    assert_eq!(
        app.request(
            Method::GET,
            "/v1/accounts/vimond/keys",
            Some("next-admin-token"),
            None
        )
        .await
        .0,
        200
    );
    let (status, rotated) = app
        .post(
            "/v1/admin/token/rotate",
            &json!({"overlapSeconds": 2}).to_string(),
        )
        .await;
    assert_eq!(status, 201, "{rotated}");
    let first = rotated["token"].as_str().unwrap().to_owned();
    assert!(first.starts_with("rl_admin_"));
    assert_eq!(
        app.request(Method::GET, "/v1/accounts/vimond/keys", Some(&first), None)
            .await
            .0,
        200
    );
    // Rotated again with the token it gave: the first keeps working for the overlap,
    // then only the second.
    let (status, rotated) = app
        .request(
            Method::POST,
            "/v1/admin/token/rotate",
            Some(&first),
            Some(&json!({"overlapSeconds": 1}).to_string()),
        )
        .await;
    assert_eq!(status, 201, "{rotated}");
    let second = rotated["token"].as_str().unwrap().to_owned();
    let until = rotated["previousValidUntil"].as_i64().unwrap();
    let keys = "/v1/accounts/vimond/keys";
    if chrono::Utc::now().timestamp_millis() < until - 200 {
        assert_eq!(
            app.request(Method::GET, keys, Some(&first), None).await.0,
            200
        );
    }
    eventually(
        Duration::from_secs(10),
        "the old admin token ends",
        || async {
            (app.request(Method::GET, keys, Some(&first), None).await.0 == 401).then_some(())
        },
    )
    .await;
    assert!(chrono::Utc::now().timestamp_millis() >= until);
    assert_eq!(
        app.request(Method::GET, keys, Some(&second), None).await.0,
        200
    );
    // A key may not rotate the admin token.
    let key = key_of(&create_key(&app, "vimond", json!({})).await);
    assert_eq!(
        app.request(Method::POST, "/v1/admin/token/rotate", Some(&key), None)
            .await
            .0,
        403
    );
}

#[tokio::test]
async fn unknown_tokens_are_refused_cheaply() {
    let app = TestApp::start().await;
    // A token shaped like a key that is none, asked many times: refused every time
    // (from the negative cache after the first), and a real key made afterwards works.
    let fake = format!("rl_{}", "A".repeat(32));
    for _ in 0..20 {
        assert_eq!(
            call(&app, Method::GET, "/v1/accounts/vimond/events", &fake, None)
                .await
                .0,
            401
        );
    }
    let key = key_of(&create_key(&app, "vimond", json!({})).await);
    assert_eq!(
        call(&app, Method::GET, "/v1/accounts/vimond/events", &key, None)
            .await
            .0,
        200
    );
}

/// Waits until `path` has received `count` deliveries; returns them all.
/// Publishes one `asset-updated` event to account `vimond` with the admin token.
async fn publish_asset_update(app: &TestApp, guid: &str) {
    let (status, answer) = app
        .post(
            "/v1/accounts/vimond/events",
            &asset_event("asset-updated", guid).to_string(),
        )
        .await;
    assert_eq!(status, 202, "{answer}");
}

async fn deliveries(receiver: &Receiver, path: &str, count: usize) -> Vec<Delivery> {
    eventually(
        Duration::from_secs(30),
        &format!("{count} deliveries to {path}"),
        || async {
            let got = receiver.deliveries(path).await;
            (got.len() >= count).then_some(got)
        },
    )
    .await
}

fn signatures(delivery: &Delivery) -> Vec<String> {
    delivery
        .webhook_signature
        .as_deref()
        .unwrap_or_default()
        .split(' ')
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn during_a_rotation_both_secrets_verify_and_after_it_only_the_new_one() {
    // Retries 2 s apart: the first attempt fails before the rotation, its retry comes
    // after it.
    let app = TestApp::start_with(&[("REELAY_RETRY_SCHEDULE", "2s,2s")]).await;
    let receiver = Receiver::start().await;
    let path = "/rotating";
    let (id, old) = app
        .subscribe_receiver(
            &receiver,
            path,
            json!({"events": ["asset-updated"]}),
            &[Response::status(500), Response::status(200)],
        )
        .await;
    let publish = |guid: &'static str| publish_asset_update(&app, guid);
    publish("r-1").await;
    let first = deliveries(&receiver, path, 1).await;
    assert_eq!(first[0].status, Some(500));
    assert_eq!(signatures(&first[0]).len(), 1);

    // A key without the manage scope may not rotate.
    let reader = key_of(&create_key(&app, "vimond", json!({"scopes": ["read", "publish"]})).await);
    let rotate_path = format!("/v1/accounts/vimond/subscriptions/{id}/rotate-secret");
    let (status, answer) = call(&app, Method::POST, &rotate_path, &reader, None).await;
    assert_eq!(
        (status, code(&answer)),
        (403, Some("missing_scope_manage")),
        "{answer}"
    );
    let (status, answer) = app
        .post(&rotate_path, &json!({"overlapSeconds": -1}).to_string())
        .await;
    assert_eq!(
        (status, code(&answer)),
        (422, Some("invalid_rotation")),
        "{answer}"
    );

    let (status, rotated) = app
        .post(&rotate_path, &json!({"overlapSeconds": 8}).to_string())
        .await;
    assert_eq!(status, 200, "{rotated}");
    let new = rotated["secret"].as_str().expect("new secret").to_owned();
    assert!(new.starts_with("whsec_") && new != old);
    let until = rotated["previousValidUntil"].as_i64().unwrap();
    receiver.verify_with(path, &[&old, &new], None).await;

    // The retry scheduled before the rotation is delivered, and verifies with both.
    let retried = deliveries(&receiver, path, 2).await;
    assert_eq!(retried[1].webhook_id.as_deref(), Some("r-1"));
    assert_eq!(retried[1].status, Some(200));
    assert!(
        chrono::Utc::now().timestamp_millis() < until,
        "the retry came after the overlap"
    );
    assert_eq!(retried[1].verified_each, [true, true], "{:?}", retried[1]);
    assert_eq!(signatures(&retried[1]).len(), 2);
    // As does every delivery during the overlap.
    publish("r-2").await;
    let during = deliveries(&receiver, path, 3).await;
    assert_eq!(during[2].verified_each, [true, true], "{:?}", during[2]);
    let (_, subscription) = app
        .get(&format!(
            "/v1/accounts/vimond/subscriptions/{id}/deliveries"
        ))
        .await;
    assert_eq!(subscription["retrying"], json!([]), "{subscription}");

    // After it: only the new secret.
    eventually(Duration::from_secs(20), "the overlap ends", || async {
        (chrono::Utc::now().timestamp_millis() > until + 1000).then_some(())
    })
    .await;
    publish("r-3").await;
    let after = deliveries(&receiver, path, 4).await;
    assert_eq!(after[3].webhook_id.as_deref(), Some("r-3"));
    assert_eq!(after[3].verified_each, [false, true], "{:?}", after[3]);
    assert_eq!(signatures(&after[3]).len(), 1);

    // The subscription is the same one: its attempt records stayed.
    let (_, log) = app
        .get(&format!(
            "/v1/accounts/vimond/subscriptions/{id}/deliveries"
        ))
        .await;
    assert!(!log["attempts"].as_array().unwrap().is_empty(), "{log}");
    let (status, shown) = app
        .get(&format!("/v1/accounts/vimond/subscriptions/{id}"))
        .await;
    assert_eq!(status, 200);
    assert!(shown.get("secret").is_none(), "{shown}");
}

#[tokio::test]
async fn job_callbacks_rotate_their_secret_too() {
    let app = TestApp::start().await;
    let (status, registered) = app
        .post(
            "/v1/accounts/vimond/jobs/job-1/callbacks",
            &json!({"callbacks": ["http://127.0.0.1:9/cb"]}).to_string(),
        )
        .await;
    assert_eq!(status, 201, "{registered}");
    let callback = &registered["callbacks"][0];
    let id = callback["id"].as_str().unwrap();
    let (status, rotated) = app
        .post(
            &format!("/v1/accounts/vimond/subscriptions/{id}/rotate-secret"),
            "",
        )
        .await;
    assert_eq!(status, 200, "{rotated}");
    let secret = rotated["secret"].as_str().unwrap();
    assert!(secret.starts_with("whsec_") && secret != callback["secret"].as_str().unwrap());
    // The default overlap is a day.
    let day =
        rotated["previousValidUntil"].as_i64().unwrap() - chrono::Utc::now().timestamp_millis();
    assert!((86_000_000..=86_400_000).contains(&day), "{day}");
    assert_eq!(
        app.post(
            "/v1/accounts/vimond/subscriptions/sub_none/rotate-secret",
            ""
        )
        .await
        .0,
        404
    );
}

#[tokio::test]
async fn ed25519_deliveries_verify_with_the_public_key_and_rotate() {
    let app = TestApp::start().await;
    let receiver = Receiver::start().await;
    let path = "/ed25519";
    let (status, created) = app
        .post(
            "/v1/accounts/vimond/subscriptions",
            &json!({"endpoint": receiver.url(path), "events": ["asset-updated"], "signature": "ed25519"})
                .to_string(),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    assert!(
        created.get("secret").is_none(),
        "the secret key is never shown: {created}"
    );
    let public_key = created["publicKey"].as_str().expect("publicKey").to_owned();
    assert!(public_key.starts_with("whpk_"));
    let id = created["id"].as_str().unwrap().to_owned();
    // Every answer about the subscription shows the public key.
    let (_, one) = app
        .get(&format!("/v1/accounts/vimond/subscriptions/{id}"))
        .await;
    assert_eq!(one["publicKey"], public_key.as_str());
    let (_, list) = app.get("/v1/accounts/vimond/subscriptions").await;
    assert_eq!(list[0]["publicKey"], public_key.as_str());
    receiver.verify_with(path, &[], Some(&public_key)).await;

    let publish = |guid: &'static str| publish_asset_update(&app, guid);
    publish("ed-1").await;
    let got = deliveries(&receiver, path, 1).await;
    assert_eq!(signatures(&got[0]).len(), 1);
    assert!(signatures(&got[0])[0].starts_with("v1a,"), "{:?}", got[0]);
    assert_eq!(got[0].ed25519_verified, Some(true), "{:?}", got[0]);
    assert_eq!(
        got[0].ed25519_tampered_verified,
        Some(false),
        "a tampered body verified"
    );

    // Rotated: a new public key; during the overlap both keys sign.
    let (status, rotated) = app
        .post(
            &format!("/v1/accounts/vimond/subscriptions/{id}/rotate-secret"),
            &json!({"overlapSeconds": 600}).to_string(),
        )
        .await;
    assert_eq!(status, 200, "{rotated}");
    assert!(rotated.get("secret").is_none());
    let new_key = rotated["publicKey"].as_str().unwrap().to_owned();
    assert!(new_key.starts_with("whpk_") && new_key != public_key);
    receiver.verify_with(path, &[], Some(&new_key)).await;
    publish("ed-2").await;
    let got = deliveries(&receiver, path, 2).await;
    assert_eq!(signatures(&got[1]).len(), 2, "{:?}", got[1]);
    assert!(signatures(&got[1]).iter().all(|s| s.starts_with("v1a,")));
    assert_eq!(got[1].ed25519_verified, Some(true));
    receiver.verify_with(path, &[], Some(&public_key)).await;
    publish("ed-3").await;
    let got = deliveries(&receiver, path, 3).await;
    assert_eq!(
        got[2].ed25519_verified,
        Some(true),
        "the old key during the overlap"
    );
    assert_eq!(got[2].ed25519_tampered_verified, Some(false));
    let (_, one) = app
        .get(&format!("/v1/accounts/vimond/subscriptions/{id}"))
        .await;
    assert_eq!(one["publicKey"], new_key.as_str());

    // Another scheme: refused, nothing stored.
    let (status, answer) = app
        .post(
            "/v1/accounts/vimond/subscriptions",
            &json!({"endpoint": receiver.url("/x"), "events": ["asset-created"], "signature": "rsa"})
                .to_string(),
        )
        .await;
    assert_eq!(
        (status, code(&answer)),
        (422, Some("invalid_signature")),
        "{answer}"
    );
    assert_eq!(answer["error"]["field"], "signature");
    let (_, list) = app.get("/v1/accounts/vimond/subscriptions").await;
    assert_eq!(list.as_array().map(Vec::len), Some(1));
}

/// Every `value` of the server's own secrets, read from its database.
async fn server_secret_values(database: &str) -> Vec<String> {
    let query = "SELECT value FROM server_secrets";
    if database.starts_with("postgres") {
        let pool = sqlx::PgPool::connect(database).await.expect("connect");
        sqlx::query_scalar(query)
            .fetch_all(&pool)
            .await
            .expect("read")
    } else {
        let pool = sqlx::SqlitePool::connect(database).await.expect("connect");
        let values = sqlx::query_scalar(query)
            .fetch_all(&pool)
            .await
            .expect("read");
        pool.close().await;
        values
    }
}

/// Runs `reelay serve` on `database` with `env` and returns its exit status and
/// standard error, for a start that must fail.
async fn failed_start(database: &str, env: &[(&str, &str)]) -> (bool, String) {
    let output = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_reelay"))
            .arg("serve")
            .env("REELAY_LISTEN", "127.0.0.1:0")
            .env("REELAY_DATABASE_URL", database)
            .env("REELAY_ADMIN_TOKEN", crate::app::ADMIN)
            .envs(env.iter().copied())
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("a start with the wrong key ends within 30 s")
    .expect("run reelay");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn secrets_are_encrypted_at_rest() {
    let mut app = TestApp::start().await;
    let receiver = Receiver::start().await;
    let (id, first) = app
        .subscribe_receiver(
            &receiver,
            "/at-rest",
            json!({"events": ["asset-updated"]}),
            &[],
        )
        .await;
    let (status, rotated) = app
        .post(
            &format!("/v1/accounts/vimond/subscriptions/{id}/rotate-secret"),
            "",
        )
        .await;
    assert_eq!(status, 200);
    let second = rotated["secret"].as_str().unwrap().to_owned();
    receiver
        .verify_with("/at-rest", &[&first, &second], None)
        .await;
    let (status, _) = app
        .post(
            "/v1/accounts/vimond/subscriptions",
            &json!({"endpoint": receiver.url("/ed"), "events": ["asset-updated"], "signature": "ed25519"})
                .to_string(),
        )
        .await;
    assert_eq!(status, 201);
    let (status, registered) = app
        .post(
            "/v1/accounts/vimond/jobs/job-9/callbacks",
            &json!({"callbacks": [receiver.url("/cb")]}).to_string(),
        )
        .await;
    assert_eq!(status, 201, "{registered}");
    let callback = registered["callbacks"][0]["secret"]
        .as_str()
        .unwrap()
        .to_owned();
    let hs256 = "an-hs256-secret-that-must-not-be-stored-in-clear";
    let (status, answer) = app
        .request(
            Method::PUT,
            "/v1/accounts/vimond/cloudevents/token-verification",
            Some(crate::app::ADMIN),
            Some(&json!({"hs256Secret": hs256}).to_string()),
        )
        .await;
    assert!(status == 200 || status == 204, "{status} {answer}");

    // The server still signs with them: deliveries verify with both secrets.
    let (status, _) = app
        .post(
            "/v1/accounts/vimond/events",
            &asset_event("asset-updated", "rest-1").to_string(),
        )
        .await;
    assert_eq!(status, 202);
    let got = deliveries(&receiver, "/at-rest", 1).await;
    assert_eq!(got[0].verified_each, [true, true]);

    // Neither the SQLite file and its WAL nor a dump of the PostgreSQL schema (every row
    // as text, and pg_dump's own output) shows them.
    let mut bytes = app.data_bytes().await;
    if let Some(schema) = app.database.split("search_path%3D").nth(1) {
        let base = std::env::var("REELAY_TEST_POSTGRES_URL").expect("a PostgreSQL run");
        let dump = tokio::process::Command::new("pg_dump")
            .args([
                "--data-only",
                "--schema",
                schema.split('&').next().unwrap(),
                &base,
            ])
            .output()
            .await
            .expect("pg_dump runs");
        assert!(
            dump.status.success(),
            "{}",
            String::from_utf8_lossy(&dump.stderr)
        );
        assert!(
            String::from_utf8_lossy(&dump.stdout).contains("enc1:"),
            "the dump has the sealed values"
        );
        bytes.extend(dump.stdout);
    }
    let stored = String::from_utf8_lossy(&bytes);
    for secret in [&first, &second, &callback] {
        let key = secret.strip_prefix("whsec_").unwrap();
        assert!(!stored.contains(key), "a signing secret is stored in clear");
    }
    assert!(
        !stored.contains(hs256),
        "the HS256 secret is stored in clear"
    );
    assert!(
        !stored.contains("whsk_"),
        "an ed25519 secret key is stored in clear"
    );
    assert!(
        !stored.contains("whsec_"),
        "a signing secret is stored in clear"
    );
    // The pseudonym key and the others: sealed.
    let values = server_secret_values(&app.database).await;
    assert!(!values.is_empty());
    assert!(values.iter().all(|v| v.starts_with("enc1:")), "{values:?}");

    if !app.database.starts_with("postgres") {
        // The generated key and the database are this user's alone.
        use std::os::unix::fs::PermissionsExt;
        let file = app.database.strip_prefix("sqlite://").unwrap().to_owned();
        let dir = std::path::Path::new(&file).parent().unwrap().to_path_buf();
        for name in ["secret.key", "reelay.db", "reelay.db-wal"] {
            let mode = std::fs::metadata(dir.join(name))
                .expect(name)
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{name}");
        }
    }

    // Another key cannot read them: the server refuses to start, saying why.
    app.terminate().await;
    let other = "ff".repeat(32);
    let (started, log) = failed_start(&app.database, &[("REELAY_SECRET_KEY", &other)]).await;
    assert!(!started, "started with another key");
    assert!(log.contains("REELAY_SECRET_KEY"), "{log}");
    // With its own key it starts again and delivers, signed as before.
    app.kill_and_restart().await;
    let (status, _) = app
        .post(
            "/v1/accounts/vimond/events",
            &asset_event("asset-updated", "rest-2").to_string(),
        )
        .await;
    assert_eq!(status, 202);
    let got = deliveries(&receiver, "/at-rest", 2).await;
    assert_eq!(got[1].verified_each, [true, true]);
}

#[tokio::test]
async fn plain_secrets_of_an_older_database_are_encrypted_in_place() {
    let mut app = TestApp::start().await;
    let receiver = Receiver::start().await;
    let (id, secret) = app
        .subscribe_receiver(&receiver, "/old", json!({"events": ["asset-updated"]}), &[])
        .await;
    app.terminate().await;
    // As a database written before secrets were encrypted: the secret in clear.
    let update = "UPDATE subscriptions SET secret = $1 WHERE id = $2";
    if app.database.starts_with("postgres") {
        let pool = sqlx::PgPool::connect(&app.database).await.expect("connect");
        sqlx::query(update)
            .bind(&secret)
            .bind(&id)
            .execute(&pool)
            .await
            .expect("update");
        pool.close().await;
    } else {
        let pool = sqlx::SqlitePool::connect(&app.database)
            .await
            .expect("connect");
        sqlx::query(update)
            .bind(&secret)
            .bind(&id)
            .execute(&pool)
            .await
            .expect("update");
        pool.close().await;
    }
    let key = secret.strip_prefix("whsec_").unwrap().to_owned();
    assert!(String::from_utf8_lossy(&app.data_bytes().await).contains(&key));

    app.kill_and_restart().await;
    let bytes = app.data_bytes().await;
    assert!(
        !String::from_utf8_lossy(&bytes).contains(&key),
        "still in clear after the start"
    );
    let (status, _) = app
        .post(
            "/v1/accounts/vimond/events",
            &asset_event("asset-updated", "old-1").to_string(),
        )
        .await;
    assert_eq!(status, 202);
    let got = deliveries(&receiver, "/old", 1).await;
    assert_eq!(got[0].verified, Some(true), "{:?}", got[0]);
}

#[tokio::test]
#[ignore = "needs PostgreSQL: runs in the PostgreSQL pass of scripts/test"]
async fn a_secret_rotated_through_any_node_signs_on_the_node_that_delivers() {
    let first_dir = tempfile::tempdir().expect("temp dir");
    let database = scratch_database(first_dir.path()).await;
    assert!(
        database.starts_with("postgres"),
        "several nodes need PostgreSQL: set REELAY_TEST_POSTGRES_URL (scripts/test does)"
    );
    let a = TestApp::start_on(database.clone(), &[], first_dir).await;
    let b = TestApp::start_on(database, &[], tempfile::tempdir().expect("temp dir")).await;
    let receiver = Receiver::start().await;
    let path = "/two-nodes";
    let (id, old) = a
        .subscribe_receiver(&receiver, path, json!({"events": ["asset-updated"]}), &[])
        .await;
    let mut published = 0;
    // Through each node in turn (one of them does not deliver it): without an overlap,
    // the deliveries are soon signed with the new secret alone.
    let mut previous = old;
    for (n, node) in [&b, &a, &b].into_iter().enumerate() {
        let (status, rotated) = node
            .post(
                &format!("/v1/accounts/vimond/subscriptions/{id}/rotate-secret"),
                &json!({"overlapSeconds": 0}).to_string(),
            )
            .await;
        assert_eq!(status, 200, "{rotated}");
        let new = rotated["secret"].as_str().unwrap().to_owned();
        receiver.verify_with(path, &[&previous, &new], None).await;
        let started = Instant::now();
        loop {
            published += 1;
            let guid = format!("node-rotation-{n}-{published}");
            let (status, _) = a
                .post(
                    "/v1/accounts/vimond/events",
                    &asset_event("asset-updated", &guid).to_string(),
                )
                .await;
            assert_eq!(status, 202);
            let got = deliveries(&receiver, path, published).await;
            let last = got
                .iter()
                .find(|d| d.webhook_id.as_deref() == Some(guid.as_str()))
                .expect("delivered");
            if last.verified_each == [false, true] {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "still signed with the old secret: {last:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        previous = new;
    }
}

#[tokio::test]
async fn the_openapi_document_has_the_key_and_rotation_routes() {
    let app = TestApp::start().await;
    let (status, spec) = app.request(Method::GET, "/openapi.json", None, None).await;
    assert_eq!(status, 200);
    let paths = &spec["paths"];
    assert!(paths["/v1/accounts/{account}/keys"]["post"].is_object());
    assert!(paths["/v1/accounts/{account}/keys"]["get"].is_object());
    assert!(paths["/v1/accounts/{account}/keys/{id}"]["delete"].is_object());
    assert!(paths["/v1/admin/token/rotate"]["post"].is_object());
    assert!(paths["/v1/accounts/{account}/subscriptions/{id}/rotate-secret"]["post"].is_object());
    let schemas = &spec["components"]["schemas"];
    assert!(
        schemas["KeyIn"]["properties"]["scopes"].is_object(),
        "{}",
        schemas["KeyIn"]
    );
    assert!(schemas["SubscriptionIn"]["properties"]["signature"].is_object());
    assert!(schemas["SubscriptionOut"]["properties"]["publicKey"].is_object());
}
