//! Nothing acknowledged is lost: SIGKILL with the receiver down, restart, and every event
//! arrives; SIGTERM stops cleanly.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::json;

use crate::app::{TestApp, eventually};
use crate::publish::asset_event;
use crate::support::receiver::Receiver;

#[tokio::test]
async fn every_acknowledged_event_arrives_after_sigkill_with_the_receiver_down() {
    let mut app = TestApp::start_with(&[(
        "REELAY_RETRY_SCHEDULE",
        "100ms,200ms,300ms,500ms,500ms,500ms,500ms,500ms,500ms,500ms,500ms,500ms,500ms,500ms,500ms,500ms,500ms,500ms,500ms,500ms",
    )])
    .await;
    // A port where nothing listens yet: the receiver is down.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}/hook");
    let (_, secret) = app
        .subscribe(
            "vimond",
            json!({"endpoint": url, "topics": ["asset-operations"]}),
        )
        .await;

    // Publish concurrently, single events and batches; keep the acknowledged ids.
    let mut acknowledged = HashSet::new();
    let mut requests = Vec::new();
    for n in 0..40 {
        let body = if n % 4 == 0 {
            json!([
                asset_event("asset-updated", &format!("k-{n}-a")),
                asset_event("asset-deleted", &format!("k-{n}-b"))
            ])
        } else {
            asset_event("asset-published", &format!("k-{n}"))
        };
        let app = &app;
        requests.push(async move {
            app.post("/v1/accounts/vimond/events", &body.to_string())
                .await
        });
    }
    for (status, answer) in futures::future::join_all(requests).await {
        assert_eq!(status, 202, "{answer}");
        for id in answer["ids"].as_array().unwrap() {
            acknowledged.insert(id.as_str().unwrap().to_owned());
        }
    }
    assert_eq!(acknowledged.len(), 50);

    app.kill_and_restart().await;
    // Deliveries start the moment it listens: it must know the secret from the start.
    let receiver = Receiver::start_on(port, &[("/hook", &secret)]).await;

    let arrived = eventually(
        Duration::from_secs(30),
        "every acknowledged event",
        || async {
            let got = receiver.deliveries("/hook").await;
            let ids: HashSet<String> = got.iter().filter_map(|d| d.webhook_id.clone()).collect();
            (ids.len() >= acknowledged.len()).then_some(got)
        },
    )
    .await;
    let ids: HashSet<String> = arrived
        .iter()
        .filter_map(|d| d.webhook_id.clone())
        .collect();
    assert_eq!(ids, acknowledged);
    assert!(arrived.iter().all(|d| d.verified == Some(true)));
}

#[tokio::test]
async fn sigterm_stops_cleanly_and_a_restart_carries_on() {
    let mut app = TestApp::start().await;
    let receiver = Receiver::start().await;
    app.subscribe_receiver(&receiver, "/h", json!({"events": ["asset-updated"]}), &[])
        .await;
    assert_eq!(
        app.post(
            "/v1/accounts/vimond/events",
            &asset_event("asset-updated", "s-1").to_string()
        )
        .await
        .0,
        202
    );
    eventually(Duration::from_secs(10), "first delivery", || async {
        (!receiver.deliveries("/h").await.is_empty()).then_some(())
    })
    .await;
    let status = app.terminate().await;
    assert!(status.success(), "exit status {status}");

    // Restarted, it delivers new events and does not resend the delivered one.
    app.kill_and_restart().await;
    assert_eq!(
        app.post(
            "/v1/accounts/vimond/events",
            &asset_event("asset-updated", "s-2").to_string()
        )
        .await
        .0,
        202
    );
    let got = eventually(Duration::from_secs(10), "second delivery", || async {
        let got = receiver.deliveries("/h").await;
        (got.len() >= 2).then_some(got)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ids: Vec<_> = receiver
        .deliveries("/h")
        .await
        .iter()
        .filter_map(|d| d.webhook_id.clone())
        .collect();
    assert_eq!(ids, vec!["s-1", "s-2"], "{got:?}");
}

#[tokio::test]
async fn a_duplicate_published_last_before_a_restart_costs_no_later_event() {
    let mut app = TestApp::start().await;
    let receiver = Receiver::start().await;
    app.subscribe_receiver(&receiver, "/h", json!({"events": ["asset-updated"]}), &[])
        .await;
    let first = asset_event("asset-updated", "d-1").to_string();
    assert_eq!(app.post("/v1/accounts/vimond/events", &first).await.0, 202);
    // The same id again: stored once. The position it was offered must not end up
    // behind the subscription's saved cursor and be handed out again after a restart.
    let (status, answer) = app.post("/v1/accounts/vimond/events", &first).await;
    assert_eq!((status, answer["duplicates"].clone()), (202, json!(1)));
    eventually(Duration::from_secs(10), "first delivery", || async {
        (!receiver.deliveries("/h").await.is_empty()).then_some(())
    })
    .await;
    assert!(app.terminate().await.success());
    app.kill_and_restart().await;

    let next = asset_event("asset-updated", "d-2").to_string();
    assert_eq!(app.post("/v1/accounts/vimond/events", &next).await.0, 202);
    let got = eventually(
        Duration::from_secs(10),
        "the event after the restart",
        || async {
            let got = receiver.deliveries("/h").await;
            (got.len() >= 2).then_some(got)
        },
    )
    .await;
    let ids: Vec<_> = got.iter().filter_map(|d| d.webhook_id.clone()).collect();
    assert_eq!(ids, vec!["d-1", "d-2"]);
}

#[tokio::test]
async fn migrate_creates_the_schema_and_an_unreachable_database_fails_clearly() {
    let dir = tempfile::tempdir().expect("temp dir");
    let database = crate::app::scratch_database(dir.path()).await;
    let migrate = |url: String| async move {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_reelay"))
            .args(["migrate", "--database", &url])
            .output()
            .await
            .expect("run reelay migrate")
    };
    let done = migrate(database.clone()).await;
    assert!(done.status.success(), "{done:?}");
    // Twice is fine: nothing left to apply.
    let again = migrate(database.clone()).await;
    assert!(again.status.success(), "{again:?}");
    // The server starts on the migrated database and works.
    let app = crate::app::TestApp::start_on(database, &[], dir).await;
    assert_eq!(app.get("/v1/catalog").await.0, 200);

    let refused = migrate("postgres://postgres@127.0.0.1:1/nowhere".to_owned()).await;
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("database error"), "{said}");
}
