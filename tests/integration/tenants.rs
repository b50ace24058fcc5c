//! Many tenants on one server: events reach only the subscriptions that want them, so
//! thousands of idle subscriptions in other accounts receive nothing, and the hot
//! subscription still gets every event exactly once.

use std::collections::HashSet;
use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};

use crate::app::{TestApp, eventually};
use crate::publish::asset_event;
use crate::support::receiver::Receiver;

const IDLE: usize = 2_000;
const EVENTS: usize = 300;

/// `asset_event` names its tenant; another account's events name theirs.
fn event_of(account: &str, name: &str, guid: &str) -> Value {
    let mut event = asset_event(name, guid);
    event["tenant"] = Value::String(account.to_owned());
    event
}

#[tokio::test]
async fn idle_subscriptions_in_other_accounts_get_nothing_and_the_hot_one_gets_every_event_once() {
    let app = TestApp::start().await;
    let receiver = Receiver::start().await;
    let (_, _) = app
        .subscribe_receiver(&receiver, "/hot", json!({"events": ["asset-updated"]}), &[])
        .await;
    // In the hot account too: a subscription to another event, and one to another topic.
    app.subscribe_receiver(
        &receiver,
        "/other-event",
        json!({"events": ["asset-deleted"]}),
        &[],
    )
    .await;
    app.subscribe_receiver(
        &receiver,
        "/other-topic",
        json!({"topics": ["player-events"]}),
        &[],
    )
    .await;
    // The idle ones want the very event the hot one gets, in accounts of their own.
    let idle_body = json!({"endpoint": receiver.url("/idle"), "events": ["asset-updated"]});
    let created: Vec<u16> = futures::stream::iter(0..IDLE)
        .map(|n| {
            let (app, body) = (&app, idle_body.to_string());
            async move {
                let (status, answer) = app
                    .post(&format!("/v1/accounts/idle-{n}/subscriptions"), &body)
                    .await;
                assert_eq!(status, 201, "{answer}");
                status
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    assert_eq!(created.len(), IDLE);

    let guids: Vec<String> = (0..EVENTS).map(|n| format!("hot-{n}")).collect();
    for chunk in guids.chunks(50) {
        let events: Vec<Value> = chunk
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
    // Then one event for the last idle account: once its subscription has it, every
    // earlier event has been routed.
    let last = format!("idle-{}", IDLE - 1);
    let (status, answer) = app
        .post(
            &format!("/v1/accounts/{last}/events"),
            &event_of(&last, "asset-updated", "sentinel").to_string(),
        )
        .await;
    assert_eq!(status, 202, "{answer}");

    eventually(
        Duration::from_secs(60),
        "the last idle account's own event",
        || async { (!receiver.deliveries("/idle").await.is_empty()).then_some(()) },
    )
    .await;
    // A last hot event, published after everything: once it is in, a second copy of any
    // earlier one would have come before it.
    let (status, answer) = app
        .post(
            "/v1/accounts/vimond/events",
            &asset_event("asset-updated", "hot-last").to_string(),
        )
        .await;
    assert_eq!(status, 202, "{answer}");
    let mut expected: HashSet<String> = guids.into_iter().collect();
    expected.insert("hot-last".to_owned());
    let hot = eventually(Duration::from_secs(60), "every event at /hot", || async {
        let got = receiver.deliveries("/hot").await;
        let ids: HashSet<String> = got.iter().filter_map(|d| d.webhook_id.clone()).collect();
        (ids == expected).then_some(got)
    })
    .await;
    assert_eq!(hot.len(), EVENTS + 1, "each hot event arrived exactly once");
    assert!(hot.iter().all(|d| d.verified == Some(true)));
    let idle: Vec<Option<String>> = receiver
        .deliveries("/idle")
        .await
        .into_iter()
        .map(|d| d.webhook_id)
        .collect();
    assert_eq!(
        idle,
        vec![Some("sentinel".to_owned())],
        "the idle subscriptions got only their own account's event"
    );
    assert!(receiver.deliveries("/other-event").await.is_empty());
    assert!(receiver.deliveries("/other-topic").await.is_empty());
}

/// Longer than a worker's idle time before it sleeps (its task ends until the router or
/// a command brings it something).
const ASLEEP: Duration = Duration::from_millis(6_500);

#[tokio::test]
async fn a_subscription_idle_long_enough_to_sleep_still_gets_new_events_and_replays() {
    let app = TestApp::start().await;
    let receiver = Receiver::start().await;
    let (id, _) = app
        .subscribe_receiver(
            &receiver,
            "/dozy",
            json!({"events": ["asset-updated"]}),
            &[],
        )
        .await;
    let publish = |guid: &'static str| {
        let app = &app;
        async move {
            let (status, answer) = app
                .post(
                    "/v1/accounts/vimond/events",
                    &asset_event("asset-updated", guid).to_string(),
                )
                .await;
            assert_eq!(status, 202, "{answer}");
        }
    };
    let arrived = |count: usize| {
        let receiver = &receiver;
        async move {
            eventually(Duration::from_secs(30), "the deliveries", || async {
                let got = receiver.deliveries("/dozy").await;
                (got.len() >= count).then_some(got)
            })
            .await
        }
    };
    publish("d-1").await;
    arrived(1).await;
    // Asleep: the next event wakes it.
    tokio::time::sleep(ASLEEP).await;
    publish("d-2").await;
    let got = arrived(2).await;
    assert_eq!(got[1].webhook_id.as_deref(), Some("d-2"));
    // Asleep again: a replay wakes it and everything after the sequence comes again.
    tokio::time::sleep(ASLEEP).await;
    let first = app.stored_events("vimond").await[0]["sequence"]
        .as_i64()
        .expect("sequence");
    let (status, answer) = app
        .post(
            &format!("/v1/accounts/vimond/subscriptions/{id}/replay"),
            &json!({"fromSequence": first}).to_string(),
        )
        .await;
    assert_eq!(status, 202, "{answer}");
    let got = arrived(4).await;
    let mut replayed: Vec<String> = got[2..]
        .iter()
        .filter_map(|d| d.webhook_id.clone())
        .collect();
    replayed.sort();
    assert_eq!(replayed, vec!["d-1", "d-2"]);
    // Nothing more: each event once per delivery and once per replay.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.deliveries("/dozy").await.len(), 4);
}

async fn publish(app: &TestApp, account: &str, guid: &str) {
    let (status, answer) = app
        .post(
            &format!("/v1/accounts/{account}/events"),
            &event_of(account, "asset-updated", guid).to_string(),
        )
        .await;
    assert_eq!(status, 202, "{answer}");
}

/// How many quiet accounts the restart test subscribes: more than the workers from which a
/// PostgreSQL node's lease pass reads where each account's log ends, as a start does.
const QUIET_ACCOUNTS: usize = 70;

/// At a start, a subscription whose account logged nothing past its cursor starts asleep
/// without reading the log; one with its account's events past its cursor reads them.
/// On PostgreSQL the same holds for the first lease pass of the restarted node.
#[tokio::test]
async fn after_a_restart_idle_subscriptions_wake_for_new_events_and_those_behind_read_the_log() {
    let mut app = TestApp::start().await;
    let receiver = Receiver::start().await;
    let wants = json!({"events": ["asset-updated"]});
    let (behind, _) = app
        .subscribe_receiver(&receiver, "/behind", wants.clone(), &[])
        .await;
    let quiet_account = |n: usize| match n {
        0 => "quiet".to_owned(),
        n => format!("quiet-{n}"),
    };
    for n in 0..QUIET_ACCOUNTS {
        let account = quiet_account(n);
        let body =
            json!({"endpoint": receiver.url(&format!("/{account}")), "events": ["asset-updated"]});
        let (status, answer) = app
            .post(
                &format!("/v1/accounts/{account}/subscriptions"),
                &body.to_string(),
            )
            .await;
        assert_eq!(status, 201, "{answer}");
    }
    publish(&app, "vimond", "before-1").await;
    publish(&app, "vimond", "before-2").await;
    eventually(Duration::from_secs(30), "the first deliveries", || async {
        (receiver.deliveries("/behind").await.len() == 2).then_some(())
    })
    .await;
    assert!(app.terminate().await.success());
    // As if it had stopped before saving its progress: its account's two events lie
    // past its cursor.
    let changed = app
        .execute(
            "UPDATE subscriptions SET cursor = 0 WHERE id = $1",
            &[behind.as_str()],
        )
        .await;
    assert_eq!(changed, 1);
    app.kill_and_restart().await;

    let again = eventually(
        Duration::from_secs(30),
        "the events past its cursor",
        || async {
            let got = receiver.deliveries("/behind").await;
            (got.len() >= 4).then_some(got)
        },
    )
    .await;
    let mut redelivered: Vec<String> = again[2..]
        .iter()
        .filter_map(|d| d.webhook_id.clone())
        .collect();
    redelivered.sort();
    assert_eq!(redelivered, vec!["before-1", "before-2"]);
    // The quiet one started asleep: a new event of its account wakes it.
    publish(&app, "quiet", "after-1").await;
    let quiet = eventually(
        Duration::from_secs(30),
        "the quiet account's event",
        || async {
            let got = receiver.deliveries("/quiet").await;
            (!got.is_empty()).then_some(got)
        },
    )
    .await;
    assert_eq!(quiet[0].webhook_id.as_deref(), Some("after-1"));
    publish(&app, "vimond", "after-2").await;
    let behind_now = eventually(Duration::from_secs(30), "the next event", || async {
        let got = receiver.deliveries("/behind").await;
        (got.len() >= 5).then_some(got)
    })
    .await;
    assert_eq!(behind_now[4].webhook_id.as_deref(), Some("after-2"));
    // And one more of the quiet ones, the last subscribed.
    let last = quiet_account(QUIET_ACCOUNTS - 1);
    publish(&app, &last, "after-3").await;
    let woken = eventually(
        Duration::from_secs(30),
        "the last quiet account's event",
        || async {
            let got = receiver.deliveries(&format!("/{last}")).await;
            (!got.is_empty()).then_some(got)
        },
    )
    .await;
    assert_eq!(woken[0].webhook_id.as_deref(), Some("after-3"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.deliveries("/behind").await.len(), 5);
    for n in 0..QUIET_ACCOUNTS {
        let expected = usize::from(n == 0 || n == QUIET_ACCOUNTS - 1);
        let path = format!("/{}", quiet_account(n));
        assert_eq!(receiver.deliveries(&path).await.len(), expected, "{path}");
    }
}
