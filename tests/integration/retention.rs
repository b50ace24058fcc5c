//! Retention and compaction (issue 16), on whichever backend the suite runs: events past
//! a short retention that every subscription wanting them received are removed from the
//! log, those a down subscription still wants stay until it gets them, the latest event
//! of every catalog entity stays (entities view, full resync), and reads or replays from
//! before what is kept whole are answered `410 before_retention`.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::{Value, json};

use crate::app::{TestApp, eventually};
use crate::entities::{catalog_event, publish};
use crate::support::receiver::{Receiver, Response};

/// The guids of the account's events as stored, read from the database itself (the API
/// starts at the retention mark and cannot show what lies below it).
async fn stored_guids(app: &TestApp, account: &str) -> HashSet<String> {
    let query = "SELECT event_id FROM events WHERE account = $1";
    let guids: Vec<String> = if app.database.starts_with("postgres") {
        let pool = sqlx::PgPool::connect(&app.database).await.expect("connect");
        let guids = sqlx::query_scalar(query)
            .bind(account)
            .fetch_all(&pool)
            .await
            .expect("read the log");
        pool.close().await;
        guids
    } else {
        let pool = sqlx::SqlitePool::connect(&app.database)
            .await
            .expect("open");
        let guids = sqlx::query_scalar(query)
            .bind(account)
            .fetch_all(&pool)
            .await
            .expect("read the log");
        pool.close().await;
        guids
    };
    guids.into_iter().collect()
}

fn guids<'a>(prefix: &str, range: impl Iterator<Item = u32> + 'a) -> Vec<String> {
    range.map(|n| format!("{prefix}-{n}")).collect()
}

#[tokio::test]
async fn short_retention_removes_what_was_delivered_and_keeps_what_is_still_wanted() {
    let app = TestApp::start_with(&[
        ("REELAY_RETENTION", "2s"),
        ("REELAY_RETENTION_INTERVAL", "300ms"),
        ("REELAY_TOMBSTONE_RETENTION", "1h"),
    ])
    .await;
    let receiver = Receiver::start().await;
    // `live` takes the asset and player events at once; `down` wants playback events
    // (no entity's: compaction keeps none of them) and its endpoint answers 410, which
    // disables it at its first delivery.
    let (_live, _) = app
        .subscribe_receiver(
            &receiver,
            "/live",
            json!({"topics": ["asset-operations", "player-events"]}),
            &[Response::status(200)],
        )
        .await;
    let (down, down_secret) = app
        .subscribe_receiver(
            &receiver,
            "/down",
            json!({"events": ["user-asset_playback-event"]}),
            &[Response::status(410)],
        )
        .await;
    publish(
        &app,
        vec![catalog_event(
            "user-asset_playback-event",
            "pb-1",
            json!({"assetId": 1}),
        )],
    )
    .await;
    eventually(Duration::from_secs(10), "down disabled", || async {
        let (_, s) = app
            .get(&format!("/v1/accounts/vimond/subscriptions/{down}"))
            .await;
        (s["status"] == "disabled").then_some(())
    })
    .await;

    // Assets 1..=5 created then updated, asset 5 deleted; player events nobody keeps; a
    // second playback event `down` has not received.
    let mut events = Vec::new();
    for n in 1..=5 {
        events.push(catalog_event(
            "asset-created",
            &format!("ac-{n}"),
            json!({"assetId": n}),
        ));
    }
    for n in 1..=20 {
        events.push(catalog_event(
            "player_log_event",
            &format!("pl-{n}"),
            json!({"assetId": 1}),
        ));
    }
    publish(&app, events).await;
    let mut events = Vec::new();
    for n in 1..=5 {
        events.push(catalog_event(
            "asset-updated",
            &format!("au-{n}"),
            json!({"assetId": n}),
        ));
    }
    events.push(catalog_event(
        "asset-deleted",
        "ad-5",
        json!({"assetId": 5}),
    ));
    events.push(catalog_event(
        "user-asset_playback-event",
        "pb-2",
        json!({"assetId": 1}),
    ));
    // The log head (the last event) is always kept: a restart reads it.
    events.push(catalog_event(
        "player_log_event",
        "head",
        json!({"assetId": 1}),
    ));
    publish(&app, events).await;
    eventually(
        Duration::from_secs(15),
        "live to receive its 32 events",
        || async { (receiver.deliveries("/live").await.len() >= 32).then_some(()) },
    )
    .await;

    // Past retention and delivered: the creations and the player events go; the latest
    // event of each asset (the deletion of asset 5 too) and the playback events `down`
    // has not received stay.
    let gone: Vec<String> = guids("ac", 1..=5)
        .into_iter()
        .chain(guids("pl", 1..=20))
        .collect();
    let kept: HashSet<String> = guids("au", 1..=4)
        .into_iter()
        .chain(["ad-5", "pb-1", "pb-2", "head"].map(String::from))
        .collect();
    let stored = eventually(Duration::from_secs(20), "retention to remove", || async {
        let stored = stored_guids(&app, "vimond").await;
        gone.iter().all(|g| !stored.contains(g)).then_some(stored)
    })
    .await;
    assert_eq!(stored, kept, "exactly what is still needed is kept");
    // The pass counts what it removed once it is over.
    eventually(Duration::from_secs(10), "the removals counted", || async {
        let removed = app
            .metric("reelay_retention_removed_total", "kind=\"events\"")
            .await;
        (removed >= 25.0).then_some(())
    })
    .await;

    // The entities view still has every asset, each at its latest event.
    let (status, page) = app.get("/v1/accounts/vimond/entities?type=asset").await;
    assert_eq!(status, 200, "{page}");
    let entities: Vec<(String, String, bool)> = page["entities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["id"].as_str().unwrap().to_owned(),
                e["event"]["event"]["guid"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                e["deleted"].as_bool().unwrap(),
            )
        })
        .collect();
    let mut expected: Vec<(String, String, bool)> = (1..=4)
        .map(|n| (n.to_string(), format!("au-{n}"), false))
        .collect();
    expected.push(("5".into(), "ad-5".into(), true));
    assert_eq!(entities, expected, "{page}");

    // A full resync still rebuilds a mirror of the live assets.
    let (status, created) = app
        .post(
            "/v1/accounts/vimond/subscriptions",
            &json!({"endpoint": receiver.url("/mirror"), "topics": ["asset-operations"], "resync": true})
                .to_string(),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let mirrored = eventually(Duration::from_secs(15), "the resync", || async {
        let got: HashSet<String> = receiver
            .deliveries("/mirror")
            .await
            .iter()
            .filter_map(|d| {
                let body: Value = serde_json::from_str(&d.body).ok()?;
                Some(body["guid"].as_str()?.to_owned())
            })
            .collect();
        (got.len() >= 4).then_some(got)
    })
    .await;
    assert_eq!(mirrored, guids("au", 1..=4).into_iter().collect());

    // Reading or replaying from before what is kept whole: 410 with where it starts.
    let (status, answer) = app.get("/v1/accounts/vimond/events?after=0").await;
    assert_eq!(status, 410, "{answer}");
    assert_eq!(answer["error"]["code"], "before_retention");
    let oldest = answer["error"]["oldestSequence"]
        .as_i64()
        .expect("oldestSequence");
    assert!(oldest > 1, "{answer}");
    let (status, page) = app
        .get(&format!("/v1/accounts/vimond/events?after={}", oldest - 1))
        .await;
    assert_eq!(status, 200, "{page}");
    let (status, page) = app.get("/v1/accounts/vimond/events").await;
    assert_eq!(
        status, 200,
        "without `after` the page starts where the log is whole: {page}"
    );
    let (status, answer) = app
        .post(
            &format!("/v1/accounts/vimond/subscriptions/{_live}/replay"),
            r#"{"fromSequence": 1}"#,
        )
        .await;
    assert_eq!(status, 410, "{answer}");
    assert_eq!(answer["error"]["oldestSequence"], json!(oldest));
    let (status, answer) = app
        .post(
            &format!("/v1/accounts/vimond/subscriptions/{_live}/replay"),
            &json!({"fromSequence": oldest}).to_string(),
        )
        .await;
    assert_eq!(status, 202, "{answer}");

    // `down` comes back: it still gets both playback events, long past retention.
    receiver
        .hook("/down", &down_secret, &[Response::status(200)])
        .await;
    let (status, enabled) = app
        .post(
            &format!("/v1/accounts/vimond/subscriptions/{down}/enable"),
            "",
        )
        .await;
    assert_eq!(status, 200, "{enabled}");
    let got = eventually(Duration::from_secs(15), "down's events", || async {
        let got: HashSet<String> = receiver
            .deliveries("/down")
            .await
            .iter()
            .filter(|d| d.status == Some(200))
            .filter_map(|d| d.webhook_id.clone())
            .collect();
        (got.len() >= 2).then_some(got)
    })
    .await;
    assert_eq!(got, HashSet::from(["pb-1".to_owned(), "pb-2".to_owned()]));
    // Once received, they go too (at the next full sweep, which looks again at what
    // was held back).
    eventually(
        Duration::from_secs(30),
        "playback events removed",
        || async {
            let stored = stored_guids(&app, "vimond").await;
            (!stored.contains("pb-1") && !stored.contains("pb-2")).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn another_accounts_down_subscription_holds_back_only_its_own_events() {
    let app = TestApp::start_with(&[
        ("REELAY_RETENTION", "1s"),
        ("REELAY_RETENTION_INTERVAL", "300ms"),
    ])
    .await;
    let receiver = Receiver::start().await;
    // Account "other" has a subscription to player events that is down for good.
    let (_, secret) = app
        .subscribe(
            "other",
            json!({"endpoint": receiver.url("/dead"), "topics": ["player-events"]}),
        )
        .await;
    receiver
        .hook("/dead", &secret, &[Response::status(410)])
        .await;
    let mut events = Vec::new();
    for n in 1..=10 {
        events.push(catalog_event(
            "player_log_event",
            &format!("v-{n}"),
            json!({"assetId": 1}),
        ));
    }
    publish(&app, events).await;
    let mut events = Vec::new();
    for n in 1..=10 {
        let mut event = catalog_event("player_log_event", &format!("o-{n}"), json!({"assetId": 1}));
        event["tenant"] = Value::String("other".into());
        events.push(event);
    }
    let (status, answer) = app
        .post(
            "/v1/accounts/other/events",
            &Value::Array(events).to_string(),
        )
        .await;
    assert_eq!(status, 202, "{answer}");
    // Nobody of "vimond" wants its player events: they go, while "other"'s stay.
    eventually(
        Duration::from_secs(20),
        "vimond's events removed",
        || async { stored_guids(&app, "vimond").await.is_empty().then_some(()) },
    )
    .await;
    assert_eq!(stored_guids(&app, "other").await.len(), 10);
}

#[tokio::test]
async fn attempt_records_and_dead_letters_have_their_own_retention() {
    let app = TestApp::start_with(&[
        ("REELAY_ATTEMPT_RETENTION", "3s"),
        ("REELAY_RETENTION_INTERVAL", "300ms"),
    ])
    .await;
    let receiver = Receiver::start().await;
    let (id, _) = app
        .subscribe_receiver(
            &receiver,
            "/failing",
            json!({"events": ["asset-updated"]}),
            &[Response::status(500)],
        )
        .await;
    publish(
        &app,
        vec![catalog_event("asset-updated", "f-1", json!({"assetId": 1}))],
    )
    .await;
    let path = format!("/v1/accounts/vimond/subscriptions/{id}/deliveries");
    eventually(Duration::from_secs(10), "a dead letter", || async {
        let (_, log) = app.get(&path).await;
        (log["deadLetters"].as_array()?.len() == 1).then_some(())
    })
    .await;
    let (_, log) = app.get(&path).await;
    assert!(!log["attempts"].as_array().unwrap().is_empty(), "{log}");
    let since = log["retainedSince"].as_i64().expect("retainedSince");
    let now = chrono::Utc::now().timestamp_millis();
    assert!((now - 3_000 - since).abs() < 5_000, "{log}");
    // Three seconds on, the records and the dead letter are gone.
    eventually(Duration::from_secs(10), "records removed", || async {
        let (_, log) = app.get(&path).await;
        (log["attempts"].as_array()?.is_empty() && log["deadLetters"].as_array()?.is_empty())
            .then_some(())
    })
    .await;
}

/// The number of pages of a SQLite database file (with what its WAL adds).
async fn page_count(database: &str) -> i64 {
    let pool = sqlx::SqlitePool::connect(database).await.expect("open");
    let pages = sqlx::query_scalar("PRAGMA page_count")
        .fetch_one(&pool)
        .await
        .expect("page_count");
    pool.close().await;
    pages
}

/// A full disk, simulated with SQLite's `max_page_count` (so this runs on SQLite in both
/// of the suite's runs): publishes get `503 storage_unavailable`, `/healthz` says the
/// store cannot write, nothing acknowledged is lost, and once there is room again the
/// acknowledged events are all delivered.
#[tokio::test]
async fn a_full_disk_refuses_publishes_loses_nothing_acknowledged_and_recovers() {
    let dir = tempfile::tempdir().expect("temp dir");
    let database = format!("sqlite://{}/reelay.db", dir.path().display());
    let mut app = TestApp::start_on(database.clone(), &[], dir).await;
    let receiver = Receiver::start().await;
    app.subscribe_receiver(
        &receiver,
        "/all",
        json!({"topics": ["player-events"]}),
        &[Response::status(200)],
    )
    .await;
    // Room for a few hundred small events more than the schema takes.
    let limit = page_count(&database).await + 60;
    app.set_env("REELAY_SQLITE_MAX_PAGE_COUNT", Some(&limit.to_string()));
    app.kill_and_restart().await;

    let mut acknowledged = HashSet::new();
    let mut refused = None;
    for request in 0..500 {
        let events: Vec<Value> = (0..20)
            .map(|n| {
                let mut event = catalog_event(
                    "player_log_event",
                    &format!("full-{request}-{n}"),
                    json!({"assetId": n}),
                );
                event["padding"] = Value::String("p".repeat(200));
                event
            })
            .collect();
        let (status, answer) = app
            .post(
                "/v1/accounts/vimond/events",
                &Value::Array(events).to_string(),
            )
            .await;
        match status {
            202 => acknowledged.extend((0..20).map(|n| format!("full-{request}-{n}"))),
            503 => {
                refused = Some(answer);
                break;
            }
            other => panic!("unexpected {other}: {answer}"),
        }
    }
    let refused = refused.expect("the database filled up");
    assert_eq!(refused["error"]["code"], "storage_unavailable", "{refused}");
    assert!(
        !acknowledged.is_empty(),
        "some events fit before it filled up"
    );
    let (status, health) = app
        .request(reqwest::Method::GET, "/healthz", None, None)
        .await;
    assert_eq!(status, 503, "{health}");
    assert_eq!(health["error"]["code"], "storage_unavailable", "{health}");

    // Room again: every acknowledged event is delivered, and publishing works.
    app.set_env("REELAY_SQLITE_MAX_PAGE_COUNT", None);
    app.kill_and_restart().await;
    let delivered = eventually(
        Duration::from_secs(30),
        "every acknowledged event delivered",
        || async {
            let got: HashSet<String> = receiver
                .deliveries("/all")
                .await
                .iter()
                .filter_map(|d| d.webhook_id.clone())
                .collect();
            acknowledged.is_subset(&got).then_some(got)
        },
    )
    .await;
    assert!(acknowledged.is_subset(&delivered));
    let (status, health) = app
        .request(reqwest::Method::GET, "/healthz", None, None)
        .await;
    assert_eq!(status, 200, "{health}");
    publish(
        &app,
        vec![catalog_event(
            "player_log_event",
            "after",
            json!({"assetId": 1}),
        )],
    )
    .await;
}

/// A SQLite database made before incremental auto-vacuum (SQLite's default: none) is
/// switched by `reelay migrate`, once, and the server then runs on it.
#[tokio::test]
async fn migrate_switches_an_older_sqlite_database_to_incremental_vacuum() {
    use sqlx::sqlite::{SqliteAutoVacuum, SqliteConnectOptions, SqliteJournalMode};
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("reelay.db");
    let database = format!("sqlite://{}", path.display());
    let auto_vacuum = |database: String| async move {
        let pool = sqlx::SqlitePool::connect(&database).await.expect("open");
        let mode: i64 = sqlx::query_scalar("PRAGMA auto_vacuum")
            .fetch_one(&pool)
            .await
            .expect("auto_vacuum");
        pool.close().await;
        mode
    };
    let old = sqlx::SqlitePool::connect_with(
        SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true)
            .auto_vacuum(SqliteAutoVacuum::None)
            .journal_mode(SqliteJournalMode::Wal),
    )
    .await
    .expect("create");
    sqlx::query("CREATE TABLE older (x TEXT)")
        .execute(&old)
        .await
        .expect("a table");
    old.close().await;
    assert_eq!(auto_vacuum(database.clone()).await, 0);

    let migrate = || async {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_reelay"))
            .args(["migrate", "--database", &database])
            .output()
            .await
            .expect("run reelay migrate")
    };
    let done = migrate().await;
    assert!(done.status.success(), "{done:?}");
    assert!(
        String::from_utf8_lossy(&done.stdout).contains("gives the space of removed events back"),
        "{done:?}"
    );
    assert_eq!(auto_vacuum(database.clone()).await, 2, "incremental");
    // Once is enough.
    let again = migrate().await;
    assert!(again.status.success(), "{again:?}");
    assert!(!String::from_utf8_lossy(&again.stdout).contains("gives the space"));
    let app = TestApp::start_on(database.clone(), &[], dir).await;
    assert_eq!(app.get("/v1/catalog").await.0, 200);
}
