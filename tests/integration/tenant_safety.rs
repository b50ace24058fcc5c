//! Tenant safety: no account can stop or slow the others' deliveries. A replay past the
//! log head is refused and cursors never move the head (every other account still gets
//! every event after a restart); a log with no sequence numbers left halts loudly
//! (`/healthz`, `503`) instead of storing events no one receives; PostgreSQL commits
//! as `--durability` says whatever the database's defaults; a receiver that hangs every
//! request delays only its own subscription's retries.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::app::{TestApp, eventually};
use crate::support::receiver::{Delivery, Receiver, Response};

/// The largest sequence number PostgreSQL's and SQLite's 64-bit integers hold.
const LARGEST: i64 = i64::MAX;

/// An `asset-updated` event of `account`.
fn event_of(account: &str, guid: &str) -> Value {
    json!({
        "eventName": "asset-updated", "originator": "tests", "tenant": account,
        "versions": ["1.0"], "timestamp": "2022-09-19T08:36:30.321Z", "guid": guid,
        "assetId": 897874
    })
}

async fn publish_to(app: &TestApp, account: &str, guid: &str) -> (u16, Value) {
    app.post(
        &format!("/v1/accounts/{account}/events"),
        &event_of(account, guid).to_string(),
    )
    .await
}

async fn publish_ok(app: &TestApp, account: &str, guid: &str) {
    let (status, answer) = publish_to(app, account, guid).await;
    assert_eq!(status, 202, "publish of {guid} to {account}: {answer}");
}

/// Subscribes the receiver's `path` to `account`'s `asset-updated` events.
async fn subscribe_path(
    app: &TestApp,
    account: &str,
    receiver: &Receiver,
    path: &str,
    script: &[Response],
) -> String {
    let (id, secret) = app
        .subscribe(
            account,
            json!({"endpoint": receiver.url(path), "events": ["asset-updated"]}),
        )
        .await;
    receiver.hook(path, &secret, script).await;
    id
}

/// An account key of `account`, as a tenant holds it.
async fn account_key(app: &TestApp, account: &str) -> String {
    let (status, created) = app
        .post(&format!("/v1/accounts/{account}/keys"), "{}")
        .await;
    assert_eq!(status, 201, "{created}");
    created["key"].as_str().expect("key").to_owned()
}

/// The distinct event ids delivered to `path`.
fn delivered_ids(deliveries: &[Delivery]) -> std::collections::BTreeSet<String> {
    deliveries
        .iter()
        .filter_map(|delivery| delivery.webhook_id.clone())
        .collect()
}

/// Waits until `path` has received every one of `guids`; returns its deliveries.
async fn wait_for_ids(receiver: &Receiver, path: &str, guids: &[String]) -> Vec<Delivery> {
    eventually(
        Duration::from_secs(30),
        &format!("{guids:?} at {path}"),
        || async {
            let got = receiver.deliveries(path).await;
            let ids = delivered_ids(&got);
            guids.iter().all(|guid| ids.contains(guid)).then_some(got)
        },
    )
    .await
}

/// The highest sequence number stored so far, as the events API shows it.
async fn highest_sequence(app: &TestApp, accounts: &[&str]) -> i64 {
    let mut highest = 0;
    for account in accounts {
        for event in app.stored_events(account).await {
            highest = highest.max(event["sequence"].as_i64().expect("sequence"));
        }
    }
    highest
}

/// Runs one statement on the server's database (SQLite file or PostgreSQL schema),
/// while the server is stopped.
async fn execute(app: &TestApp, statement: &str) {
    if app.database.starts_with("postgres") {
        let pool = sqlx::PgPool::connect(&app.database).await.expect("connect");
        sqlx::query(sqlx::AssertSqlSafe(statement.to_owned()))
            .execute(&pool)
            .await
            .expect("statement");
        pool.close().await;
    } else {
        let pool = sqlx::SqlitePool::connect(&app.database)
            .await
            .expect("open the SQLite file");
        sqlx::query(sqlx::AssertSqlSafe(statement.to_owned()))
            .execute(&pool)
            .await
            .expect("statement");
        pool.close().await;
    }
}

/// Makes the log's head `head`, as a damaged (or very old) log would have it: with
/// SQLite the head is the last event, so one is stored there (for another account);
/// with PostgreSQL it is the `log_head` row.
async fn set_head(app: &TestApp, head: i64) {
    if app.database.starts_with("postgres") {
        execute(
            app,
            &format!("UPDATE log_head SET seq = {head} WHERE id = 1"),
        )
        .await;
    } else {
        execute(
            app,
            &format!(
                "INSERT INTO events (seq, account, event_id, name, topic, entity_key, \
                 occurred_at, received_at, body) VALUES ({head}, 'elsewhere', 'planted', \
                 'asset-updated', 'asset', NULL, 0, 0, '{{}}')"
            ),
        )
        .await;
    }
}

#[tokio::test]
async fn a_replay_past_the_head_is_refused_and_every_other_account_keeps_receiving_after_a_restart()
{
    let mut app = TestApp::start().await;
    let receiver = Receiver::start().await;
    let victim = subscribe_path(&app, "acme", &receiver, "/victim", &[]).await;
    let attacker = subscribe_path(&app, "vimond", &receiver, "/attacker", &[]).await;
    let mut victim_events = vec!["acme-1".to_owned(), "acme-2".to_owned()];
    for guid in &victim_events {
        publish_ok(&app, "acme", guid).await;
    }
    publish_ok(&app, "vimond", "vimond-1").await;
    wait_for_ids(&receiver, "/victim", &victim_events).await;
    let head = highest_sequence(&app, &["acme", "vimond"]).await;
    assert!(
        head >= 3,
        "three events (and any derived) stored: head {head}"
    );

    // The attack, with the tenant's own key: refused, naming the head.
    let key = account_key(&app, "vimond").await;
    let replay = format!("/v1/accounts/vimond/subscriptions/{attacker}/replay");
    for from in [LARGEST, head + 2] {
        let (status, answer) = app
            .request(
                Method::POST,
                &replay,
                Some(&key),
                Some(&json!({"fromSequence": from}).to_string()),
            )
            .await;
        assert_eq!(status, 422, "fromSequence {from}: {answer}");
        assert_eq!(answer["error"]["code"], "invalid_replay", "{answer}");
        assert_eq!(answer["error"]["field"], "fromSequence", "{answer}");
        let message = answer["error"]["message"].as_str().expect("message");
        assert!(
            message.contains(&format!("log head {head}")),
            "the refusal names the head {head}: {message}"
        );
    }
    // Up to the head (from the next event on) is a replay like any other.
    let (status, answer) = app
        .request(
            Method::POST,
            &replay,
            Some(&key),
            Some(&json!({"fromSequence": head + 1}).to_string()),
        )
        .await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["after"], head, "{answer}");
    // The subscription is still the attacker's: nothing the victim sees changes.
    let (status, _) = app
        .get(&format!("/v1/accounts/acme/subscriptions/{victim}"))
        .await;
    assert_eq!(status, 200);

    app.kill_and_restart().await;
    for guid in ["acme-3", "acme-4", "acme-5"] {
        publish_ok(&app, "acme", guid).await;
        victim_events.push(guid.to_owned());
    }
    publish_ok(&app, "vimond", "vimond-2").await;
    let got = wait_for_ids(&receiver, "/victim", &victim_events).await;
    wait_for_ids(&receiver, "/attacker", &["vimond-2".to_owned()]).await;
    // New events were numbered after the log, not after anything a tenant asked for.
    for delivery in &got {
        let sequence: i64 = delivery.headers["reelay-sequence"]
            .parse()
            .expect("a sequence number");
        assert!(
            sequence <= head + 20,
            "{:?} got sequence {sequence}, far past the head {head}",
            delivery.webhook_id
        );
    }
}

#[tokio::test]
async fn a_cursor_saved_past_the_head_neither_moves_the_head_nor_stops_its_subscription() {
    let mut app = TestApp::start().await;
    let receiver = Receiver::start().await;
    subscribe_path(&app, "acme", &receiver, "/victim", &[]).await;
    let attacker = subscribe_path(&app, "vimond", &receiver, "/attacker", &[]).await;
    publish_ok(&app, "acme", "acme-1").await;
    wait_for_ids(&receiver, "/victim", &["acme-1".to_owned()]).await;
    let head = highest_sequence(&app, &["acme", "vimond"]).await;

    // What a replay past the head left behind before replays were checked.
    app.kill().await;
    execute(
        &app,
        &format!(
            "UPDATE subscriptions SET cursor = {} WHERE id = '{attacker}'",
            LARGEST - 1
        ),
    )
    .await;
    app.kill_and_restart().await;

    publish_ok(&app, "acme", "acme-2").await;
    publish_ok(&app, "vimond", "vimond-1").await;
    let got = wait_for_ids(&receiver, "/victim", &["acme-1".into(), "acme-2".into()]).await;
    // The cursor was moved back to the head: its own subscription receives again.
    wait_for_ids(&receiver, "/attacker", &["vimond-1".to_owned()]).await;
    let newest = highest_sequence(&app, &["acme", "vimond"]).await;
    assert!(
        newest > head && newest <= head + 10,
        "new events follow the log's head {head}, not the cursor: newest {newest}"
    );
    assert!(got.iter().all(|delivery| delivery.verified == Some(true)));
    assert!(
        app.logs()
            .contains("cursors past the log head were moved back"),
        "the repair is logged"
    );
}

#[tokio::test]
async fn a_log_that_runs_out_of_sequence_numbers_halts_publishes_and_says_so_on_healthz() {
    let mut app = TestApp::start().await;
    let receiver = Receiver::start().await;
    subscribe_path(&app, "acme", &receiver, "/hook", &[]).await;
    publish_ok(&app, "acme", "before").await;
    wait_for_ids(&receiver, "/hook", &["before".to_owned()]).await;

    // Three positions left below the largest sequence number.
    app.kill().await;
    set_head(&app, LARGEST - 3).await;
    app.kill_and_restart().await;
    let (status, body) = app.request(Method::GET, "/healthz", None, None).await;
    assert_eq!(status, 200, "room is left: {body}");

    // Publishes go on while positions are left, then get 503: none is stored at or past
    // the largest sequence number, and none is acknowledged without being stored.
    let mut accepted = Vec::new();
    let refused = loop {
        let guid = format!("late-{}", accepted.len());
        let (status, answer) = publish_to(&app, "acme", &guid).await;
        match status {
            202 => accepted.push(guid),
            _ => break (status, answer),
        }
        assert!(accepted.len() <= 3, "more events than positions left");
    };
    assert!(!accepted.is_empty(), "the last positions are used");
    assert_eq!(refused.0, 503, "{}", refused.1);
    assert_eq!(
        refused.1["error"]["code"], "storage_unavailable",
        "{}",
        refused.1
    );
    let stored = app.stored_events("acme").await;
    // Each `asset-updated` brings its derived `video-change` right after it.
    let published: Vec<&str> = stored
        .iter()
        .filter(|event| event["name"] == "asset-updated")
        .filter_map(|event| event["id"].as_str())
        .collect();
    for guid in &accepted {
        assert!(
            published.contains(&guid.as_str()),
            "{guid} acknowledged and stored"
        );
    }
    assert_eq!(
        published.len(),
        1 + accepted.len(),
        "nothing else stored: {stored:?}"
    );
    assert!(
        stored
            .iter()
            .all(|event| event["sequence"].as_i64().is_some_and(|seq| seq < LARGEST)),
        "{stored:?}"
    );
    // What was stored is still delivered.
    wait_for_ids(&receiver, "/hook", &accepted).await;

    let (status, body) = app.request(Method::GET, "/healthz", None, None).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "log_halted", "{body}");
    let message = body["error"]["message"].as_str().expect("message");
    assert!(message.contains("exhausted"), "{message}");

    // After a restart the writer halts at once: the head leaves no room.
    app.kill_and_restart().await;
    let (status, body) = app.request(Method::GET, "/healthz", None, None).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "log_halted", "{body}");
    let (status, answer) = publish_to(&app, "acme", "after-restart").await;
    assert_eq!(status, 503, "{answer}");
    assert!(
        app.logs().contains("the log writer has stopped appending"),
        "the halt is logged"
    );
}

#[tokio::test]
#[ignore = "needs PostgreSQL: runs in the PostgreSQL pass of scripts/test"]
async fn postgres_sessions_commit_as_durability_says_whatever_the_database_default() {
    let base = std::env::var("REELAY_TEST_POSTGRES_URL").expect(
        "synchronous_commit is PostgreSQL's: set REELAY_TEST_POSTGRES_URL (scripts/test does)",
    );
    // A database of its own, whose default an operator turned off.
    let name = format!("reelay_sc_{}", uuid::Uuid::new_v4().simple());
    let admin = sqlx::PgPool::connect(&base).await.expect("connect");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&admin)
        .await
        .expect("create a database");
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "ALTER DATABASE {name} SET synchronous_commit = off"
    )))
    .execute(&admin)
    .await
    .expect("turn synchronous_commit off by default");
    let mut url = url::Url::parse(&base).expect("a URL");
    url.set_path(&format!("/{name}"));
    url.set_query(None);
    let database = url.to_string();
    let own: String = {
        let pool = sqlx::PgPool::connect(&database).await.expect("connect");
        let value = sqlx::query_scalar("SHOW synchronous_commit")
            .fetch_one(&pool)
            .await
            .expect("show");
        pool.close().await;
        value
    };
    assert_eq!(own, "off", "a plain session gets the database's default");

    // fsync: every session the server opens commits synchronously.
    let dir = tempfile::tempdir().expect("temp dir");
    let mut app = TestApp::start_on(database.clone(), &[], dir).await;
    publish_ok(&app, "acme", "durable").await;
    // The log is read from the server's stderr by a task of the test: wait for it.
    let logs = eventually(
        Duration::from_secs(10),
        "the durability check logged",
        || {
            let logs = app.logs();
            async move {
                logs.contains("PostgreSQL commit durability checked")
                    .then_some(logs)
            }
        },
    )
    .await;
    assert!(
        logs.contains("synchronous_commit=on") && !logs.contains("synchronous_commit=off"),
        "the pool's sessions read back synchronous_commit = on: {logs}"
    );
    app.terminate().await;

    // relaxed: the log writer's commits only are asynchronous, as with SQLite.
    let dir = tempfile::tempdir().expect("temp dir");
    let mut app =
        TestApp::start_on(database.clone(), &[("REELAY_DURABILITY", "relaxed")], dir).await;
    publish_ok(&app, "acme", "relaxed").await;
    let published = app.stored_events("acme").await;
    assert!(
        ["durable", "relaxed"]
            .iter()
            .all(|guid| published.iter().any(|event| event["id"] == *guid)),
        "{published:?}"
    );
    // The log is read from the server's stderr by a task of the test: wait until both
    // checks have come through it.
    let logs = eventually(
        Duration::from_secs(10),
        "both durability checks logged",
        || {
            let logs = app.logs();
            async move {
                (logs.matches("PostgreSQL commit durability checked").count() >= 2).then_some(logs)
            }
        },
    )
    .await;
    let pool_line = logs
        .lines()
        .find(|line| line.contains("the connection pool") && line.contains("synchronous_commit"))
        .expect("the pool's check is logged");
    assert!(pool_line.contains("synchronous_commit=on"), "{pool_line}");
    let writer_line = logs
        .lines()
        .find(|line| line.contains("the log writer") && line.contains("synchronous_commit"))
        .expect("the writer's check is logged");
    assert!(
        writer_line.contains("synchronous_commit=off"),
        "{writer_line}"
    );
    app.terminate().await;

    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE {name} WITH (FORCE)"
    )))
    .execute(&admin)
    .await
    .expect("drop the database");
}

#[tokio::test]
async fn a_receiver_that_hangs_does_not_delay_another_subscriptions_retries() {
    // Each request to the hanging receiver takes the whole delivery timeout. The old
    // scheduler waited for every retry it had claimed before claiming again, so the
    // other subscription's retries, due a second after each failure, waited for the
    // hanging ones: about the timeout (4 s) between them instead of the schedule's 1 s.
    let timeout = 4.0;
    let app = TestApp::start_with(&[
        ("REELAY_DELIVERY_TIMEOUT", "4s"),
        ("REELAY_RETRY_SCHEDULE", "1s,1s,1s"),
    ])
    .await;
    let hanging = Receiver::start().await;
    let healthy = Receiver::start().await;
    subscribe_path(&app, "vimond", &hanging, "/hangs", &[]).await;
    hanging.delay("/hangs", 120_000).await;
    let script = [
        Response::status(500),
        Response::status(500),
        Response::status(500),
        Response::status(200),
    ];
    subscribe_path(&app, "acme", &healthy, "/recovers", &script).await;

    // Enough events for the hanging endpoint's breaker, and retries of them in flight.
    const HANGING_EVENTS: usize = 12;
    for n in 0..HANGING_EVENTS {
        publish_ok(&app, "vimond", &format!("hang-{n}")).await;
    }
    eventually(
        Duration::from_secs(30),
        "the hanging receiver's first retry",
        || async { (hanging.deliveries("/hangs").await.len() > HANGING_EVENTS).then_some(()) },
    )
    .await;

    publish_ok(&app, "acme", "recovers").await;
    let got = eventually(
        Duration::from_secs(30),
        "four attempts at the other receiver",
        || async {
            let got = healthy.deliveries("/recovers").await;
            (got.len() >= 4).then_some(got)
        },
    )
    .await;
    let schedule = 1.0;
    let jitter = 1.2;
    // Slack for a loaded test machine; well under the hanging receiver's timeout.
    let slack = 1.3;
    assert!(schedule * jitter + slack < timeout);
    let gaps: Vec<f64> = got.windows(2).map(|pair| pair[1].at - pair[0].at).collect();
    eprintln!("the other subscription's retries came {gaps:?} s apart");
    for gap in &gaps {
        assert!(
            *gap <= schedule * jitter + slack,
            "a retry waited {gap:.2}s instead of about {schedule}s: {gaps:?}"
        );
        assert!(*gap >= schedule * 0.8 - 0.05, "retried early: {gaps:?}");
    }
    assert!(
        got.iter()
            .all(|delivery| delivery.webhook_id.as_deref() == Some("recovers"))
    );
    assert!(
        got.iter().all(|delivery| delivery.verified == Some(true)),
        "{got:?}"
    );
}

#[tokio::test]
async fn while_an_endpoint_is_down_its_retries_go_one_probe_at_a_time() {
    // Without the breaker on retries, every failed delivery was retried on its own
    // schedule: here 20 retries within the same 0.4 s, again and again.
    let app = TestApp::start_with(&[("REELAY_RETRY_SCHEDULE", "1s,1s,1s,1s,1s,1s")]).await;
    let receiver = Receiver::start().await;
    let id = subscribe_path(&app, "acme", &receiver, "/down", &[Response::status(500)]).await;
    const EVENTS: usize = 20;
    for n in 0..EVENTS {
        publish_ok(&app, "acme", &format!("down-{n}")).await;
    }
    let probes = 4;
    let got = eventually(
        Duration::from_secs(30),
        "first attempts and a few probes",
        || async {
            let got = receiver.deliveries("/down").await;
            (got.len() >= EVENTS + probes).then_some(got)
        },
    )
    .await;
    // Every first attempt failed (the breaker opened at the tenth); since then one retry
    // at a time, spaced by the probe interval (the schedule's 1 s).
    let retries: Vec<f64> = got[EVENTS..].iter().map(|delivery| delivery.at).collect();
    let gaps: Vec<f64> = retries.windows(2).map(|pair| pair[1] - pair[0]).collect();
    eprintln!("probes of the down endpoint came {gaps:?} s apart");
    assert!(
        gaps.iter().all(|gap| *gap >= 0.7),
        "retries of a down endpoint went together: {gaps:?}"
    );
    // The others wait unattempted: none has used up its retries.
    let (status, log) = app
        .get(&format!("/v1/accounts/acme/subscriptions/{id}/deliveries"))
        .await;
    assert_eq!(status, 200, "{log}");
    assert_eq!(
        log["deadLetters"].as_array().map(Vec::len),
        Some(0),
        "{log}"
    );
    let retrying = log["retrying"].as_array().map_or(0, Vec::len);
    assert_eq!(retrying, EVENTS, "{log}");
}
