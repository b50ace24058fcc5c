//! The subscription API and seed 004's rules.

use serde_json::json;

use crate::app::TestApp;

#[tokio::test]
async fn create_list_get_delete() {
    let app = TestApp::start().await;
    let (status, created) = app
        .post(
            "/v1/accounts/vimond/subscriptions",
            &json!({"endpoint": "http://127.0.0.1:9/hook", "events": ["asset-updated"]})
                .to_string(),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap();
    assert!(created["secret"].as_str().unwrap().starts_with("whsec_"));
    assert_eq!(created["endpoint"], "http://127.0.0.1:9/hook");
    assert_eq!(created["events"], json!(["asset-updated"]));
    assert_eq!(created["status"], "enabled");

    let (status, list) = app.get("/v1/accounts/vimond/subscriptions").await;
    assert_eq!(status, 200);
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["id"], id);
    assert!(
        list[0].get("secret").is_none(),
        "the secret is shown only once"
    );

    let (status, one) = app
        .get(&format!("/v1/accounts/vimond/subscriptions/{id}"))
        .await;
    assert_eq!((status, one["id"].as_str()), (200, Some(id)));
    // Another account does not see it.
    assert_eq!(
        app.get(&format!("/v1/accounts/other/subscriptions/{id}"))
            .await
            .0,
        404
    );

    assert_eq!(
        app.delete(&format!("/v1/accounts/vimond/subscriptions/{id}"))
            .await
            .0,
        204
    );
    assert_eq!(
        app.get(&format!("/v1/accounts/vimond/subscriptions/{id}"))
            .await
            .0,
        404
    );
    assert_eq!(
        app.delete(&format!("/v1/accounts/vimond/subscriptions/{id}"))
            .await
            .0,
        404
    );

    // The general shape: a destination object and topics.
    let (status, created) = app
        .post(
            "/v1/accounts/vimond/subscriptions",
            &json!({"destination": {"type": "webhook", "url": "http://127.0.0.1:9/t"}, "topics": ["asset-operations"], "format": "native"}).to_string(),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["topics"], json!(["asset-operations"]));
}

#[tokio::test]
async fn seed_004_refusals_each_with_its_own_message() {
    let app = TestApp::start().await;
    let create = |body: serde_json::Value| {
        let app = &app;
        async move {
            app.post("/v1/accounts/vimond/subscriptions", &body.to_string())
                .await
        }
    };
    let cases = [
        (json!({"events": ["asset-updated"]}), "missing_endpoint"),
        (
            json!({"endpoint": "http://127.0.0.1:9/a"}),
            "missing_events",
        ),
        (
            json!({"endpoint": "http://127.0.0.1:9/a", "events": "asset-updated"}),
            "events_not_array",
        ),
        (
            json!({"endpoint": "http://127.0.0.1:9/a", "events": ["no-such-event"]}),
            "unknown_event",
        ),
        (
            json!({"endpoint": "http://127.0.0.1:9/a", "topics": ["no-such-topic"]}),
            "unknown_topic",
        ),
        (
            json!({"endpoint": "not a url", "events": ["asset-updated"]}),
            "destination_refused",
        ),
        (
            json!({"endpoint": "http://127.0.0.1:9/a", "events": ["asset-updated"], "format": "xml"}),
            "invalid_format",
        ),
    ];
    for (body, code) in cases {
        let (status, error) = create(body.clone()).await;
        assert_eq!(status, 422, "{body} -> {error}");
        assert_eq!(error["error"]["code"], code, "{body} -> {error}");
        assert!(!error["error"]["message"].as_str().unwrap().is_empty());
    }
    assert_eq!(create(json!("[")).await.0, 422);

    let first = json!({"endpoint": "http://127.0.0.1:9/dup", "events": ["asset-updated"]});
    assert_eq!(create(first.clone()).await.0, 201);
    let (status, error) = create(first).await;
    assert_eq!(
        (status, error["error"]["code"].as_str()),
        (422, Some("duplicate_subscription"))
    );

    // Up to 10 per event name: 9 more fit, the 11th is refused.
    for n in 0..9 {
        let body =
            json!({"endpoint": format!("http://127.0.0.1:9/n{n}"), "events": ["asset-updated"]});
        assert_eq!(create(body).await.0, 201);
    }
    let (status, error) =
        create(json!({"endpoint": "http://127.0.0.1:9/eleventh", "events": ["asset-updated"]}))
            .await;
    assert_eq!(status, 422);
    assert_eq!(error["error"]["code"], "too_many_subscriptions");
    // Another event name still has room.
    assert_eq!(
        create(json!({"endpoint": "http://127.0.0.1:9/eleventh", "events": ["asset-deleted"]}))
            .await
            .0,
        201
    );
    assert_eq!(app.stored_events("vimond").await.len(), 0);
}

#[tokio::test]
async fn the_per_event_limit_is_configurable() {
    let app = TestApp::start_with(&[("REELAY_MAX_SUBSCRIPTIONS_PER_EVENT", "2")]).await;
    for n in 0..2 {
        let body =
            json!({"endpoint": format!("http://127.0.0.1:9/{n}"), "events": ["asset-updated"]});
        assert_eq!(
            app.post("/v1/accounts/a/subscriptions", &body.to_string())
                .await
                .0,
            201
        );
    }
    let body = json!({"endpoint": "http://127.0.0.1:9/3", "events": ["asset-updated"]});
    assert_eq!(
        app.post("/v1/accounts/a/subscriptions", &body.to_string())
            .await
            .0,
        422
    );
}

#[tokio::test]
async fn private_destinations_are_refused_unless_allowed() {
    let app = TestApp::start_with(&[("REELAY_ALLOW_PRIVATE_DESTINATIONS", "false")]).await;
    for url in [
        "http://127.0.0.1:8080/hook",
        "http://10.0.0.8/hook",
        "http://169.254.169.254/",
        "http://localhost/",
    ] {
        let body = json!({"endpoint": url, "events": ["asset-updated"]});
        let (status, error) = app
            .post("/v1/accounts/a/subscriptions", &body.to_string())
            .await;
        assert_eq!(status, 422, "{url}: {error}");
        assert_eq!(error["error"]["code"], "destination_refused");
        assert!(
            error["error"]["message"]
                .as_str()
                .unwrap()
                .contains("--allow-private-destinations")
        );
    }
}

#[tokio::test]
async fn deleting_another_accounts_subscription_id_changes_nothing() {
    let app = TestApp::start().await;
    let receiver = crate::support::receiver::Receiver::start().await;
    let (id, _) = app
        .subscribe_receiver(
            &receiver,
            "/theirs",
            json!({"events": ["asset-updated"]}),
            &[],
        )
        .await;
    // The id exists, but in account "vimond", not "other".
    assert_eq!(
        app.delete(&format!("/v1/accounts/other/subscriptions/{id}"))
            .await
            .0,
        404
    );
    let event = crate::publish::asset_event("asset-updated", "still-delivered");
    assert_eq!(
        app.post("/v1/accounts/vimond/events", &event.to_string())
            .await
            .0,
        202
    );
    crate::app::eventually(std::time::Duration::from_secs(10), "delivery", || async {
        (!receiver.deliveries("/theirs").await.is_empty()).then_some(())
    })
    .await;
}

/// A stored subscription the server cannot read (a row of a newer version, or damaged)
/// is skipped and reported at start; the server starts and the others are delivered. On
/// whichever backend the suite runs: SQLite starts every worker from the stored rows in
/// one pass, PostgreSQL from the rows of the subscriptions the node holds, at each of
/// its lease passes.
#[tokio::test]
async fn an_unreadable_stored_subscription_is_skipped_and_reported_at_start() {
    use std::time::Duration;

    use crate::app::eventually;
    use crate::support::receiver::Receiver;

    let mut app = TestApp::start().await;
    let receiver = Receiver::start().await;
    let (kept, _) = app
        .subscribe_receiver(
            &receiver,
            "/kept",
            json!({"events": ["asset-updated"]}),
            &[],
        )
        .await;
    let (broken, _) = app
        .subscribe_receiver(
            &receiver,
            "/broken",
            json!({"events": ["asset-updated"]}),
            &[],
        )
        .await;
    app.kill().await;
    let changed = app
        .execute(
            "UPDATE subscriptions SET destination = $1 WHERE id = $2",
            &[r#"{"version":"99","type":"webhook","where":"?"}"#, &broken],
        )
        .await;
    assert_eq!(changed, 1);
    app.kill_and_restart().await;
    let (status, answer) = app
        .post(
            "/v1/accounts/vimond/events",
            &crate::publish::asset_event("asset-updated", "after-restart").to_string(),
        )
        .await;
    assert_eq!(status, 202, "{answer}");
    eventually(
        Duration::from_secs(15),
        "the readable subscription delivers",
        || async {
            let got = receiver.deliveries("/kept").await;
            got.iter()
                .any(|d| d.webhook_id.as_deref() == Some("after-restart"))
                .then_some(())
        },
    )
    .await;
    let logs = app.logs();
    assert!(
        logs.contains("cannot be read") && logs.contains(&broken),
        "the start reports the unreadable row by id: {logs}"
    );
    assert!(!logs.contains(&format!("subscription {kept}: destination")));
    assert_eq!(
        logs.matches("cannot be read; it is skipped").count(),
        1,
        "reported once: {logs}"
    );
    assert!(receiver.deliveries("/broken").await.is_empty());
}
