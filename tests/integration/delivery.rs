//! The delivery rules: retries on the (shrunk) schedule, dead letters, `Retry-After`,
//! `410 Gone`, failing for too long, re-enabling, replay, and the attempt log.

use std::time::Duration;

use serde_json::{Value, json};

use crate::app::{TestApp, eventually};
use crate::publish::asset_event;
use crate::support::receiver::{Delivery, Receiver, Response};

async fn subscribed(
    app: &TestApp,
    receiver: &Receiver,
    path: &str,
    script: &[Response],
) -> (String, String) {
    app.subscribe_receiver(receiver, path, json!({"events": ["asset-updated"]}), script)
        .await
}

async fn publish(app: &TestApp, guid: &str) {
    let (status, answer) = app
        .post(
            "/v1/accounts/vimond/events",
            &asset_event("asset-updated", guid).to_string(),
        )
        .await;
    assert_eq!(status, 202, "{answer}");
}

async fn wait_for(receiver: &Receiver, path: &str, count: usize) -> Vec<Delivery> {
    eventually(
        Duration::from_secs(15),
        &format!("{count} deliveries at {path}"),
        || async {
            let got = receiver.deliveries(path).await;
            (got.len() >= count).then_some(got)
        },
    )
    .await
}

async fn delivery_log(app: &TestApp, id: &str) -> Value {
    let (status, log) = app
        .get(&format!(
            "/v1/accounts/vimond/subscriptions/{id}/deliveries"
        ))
        .await;
    assert_eq!(status, 200, "{log}");
    log
}

#[tokio::test]
async fn a_receiver_that_fails_then_recovers_gets_the_event_and_the_log_shows_both_attempts() {
    let app = TestApp::start().await;
    let receiver = Receiver::start().await;
    let (id, _) = subscribed(
        &app,
        &receiver,
        "/flaky",
        &[Response::status(500), Response::status(200)],
    )
    .await;
    publish(&app, "r-1").await;

    let got = wait_for(&receiver, "/flaky", 2).await;
    assert!(
        got.iter()
            .all(|d| d.webhook_id.as_deref() == Some("r-1") && d.verified == Some(true))
    );
    let gap = got[1].at - got[0].at;
    assert!(
        gap >= 0.15,
        "the retry waited for the schedule (200 ms ± 20%), waited {gap}s"
    );

    let log = eventually(Duration::from_secs(5), "both attempts logged", || async {
        let log = delivery_log(&app, &id).await;
        (log["attempts"].as_array().unwrap().len() == 2).then_some(log)
    })
    .await;
    let attempts = log["attempts"].as_array().unwrap();
    // Newest first.
    assert_eq!(attempts[0]["attempt"], 2);
    assert_eq!(attempts[0]["outcome"], "delivered");
    assert_eq!(attempts[0]["statusCode"], 200);
    assert_eq!(attempts[1]["attempt"], 1);
    assert_eq!(attempts[1]["outcome"], "failed");
    assert_eq!(attempts[1]["statusCode"], 500);
    assert!(attempts[1]["nextAttemptAt"].is_i64());
    assert_eq!(attempts[1]["eventId"], "r-1");
    assert!(log["retrying"].as_array().unwrap().is_empty());
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        receiver.deliveries("/flaky").await.len(),
        2,
        "no more attempts after success"
    );

    let (_, metrics) = app
        .request(reqwest::Method::GET, "/metrics", None, None)
        .await;
    let metrics = metrics.as_str().unwrap().to_owned();
    assert!(
        metrics.contains("reelay_deliveries_total{outcome=\"failed\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("reelay_deliveries_total{outcome=\"delivered\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("reelay_delivery_latency_seconds_count 2"),
        "{metrics}"
    );
}

#[tokio::test]
async fn retries_follow_the_schedule_and_stop_at_the_dead_letter() {
    let app = TestApp::start().await;
    let receiver = Receiver::start().await;
    let (id, _) = subscribed(&app, &receiver, "/down", &[Response::status(503)]).await;
    publish(&app, "d-1").await;

    // The first attempt and the three retries of the schedule "200ms,400ms,600ms".
    let got = wait_for(&receiver, "/down", 4).await;
    let gaps: Vec<f64> = got.windows(2).map(|w| w[1].at - w[0].at).collect();
    for (gap, planned) in gaps.iter().zip([0.2, 0.4, 0.6]) {
        assert!(
            *gap >= planned * 0.8 - 0.02,
            "gaps {gaps:?} follow the schedule"
        );
    }
    let log = eventually(Duration::from_secs(5), "dead letter", || async {
        let log = delivery_log(&app, &id).await;
        (!log["deadLetters"].as_array().unwrap().is_empty()).then_some(log)
    })
    .await;
    assert_eq!(log["deadLetters"][0]["eventId"], "d-1");
    assert_eq!(log["deadLetters"][0]["attempts"], 4);
    assert_eq!(log["attempts"][0]["outcome"], "dead");
    assert!(log["retrying"].as_array().unwrap().is_empty());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        receiver.deliveries("/down").await.len(),
        4,
        "nothing after the dead letter"
    );
}

#[tokio::test]
async fn retry_after_is_waited_for() {
    let app = TestApp::start().await;
    let receiver = Receiver::start().await;
    subscribed(
        &app,
        &receiver,
        "/busy",
        &[Response::retry_after(429, "2"), Response::status(200)],
    )
    .await;
    publish(&app, "ra-1").await;
    let got = wait_for(&receiver, "/busy", 2).await;
    let gap = got[1].at - got[0].at;
    assert!(
        gap >= 1.9,
        "Retry-After: 2 was honoured (waited {gap}s, the schedule says 0.2s)"
    );
}

#[tokio::test]
async fn gone_disables_at_once_and_enabling_delivers_what_waited() {
    let app = TestApp::start().await;
    let receiver = Receiver::start().await;
    let (id, secret) = subscribed(&app, &receiver, "/gone", &[Response::status(410)]).await;
    publish(&app, "g-1").await;
    let subscription = eventually(Duration::from_secs(5), "disabled", || async {
        let (_, s) = app
            .get(&format!("/v1/accounts/vimond/subscriptions/{id}"))
            .await;
        (s["status"] == "disabled").then_some(s)
    })
    .await;
    assert_eq!(subscription["disabledReason"]["code"], "endpoint_gone");
    assert!(
        subscription["disabledReason"]["message"]
            .as_str()
            .unwrap()
            .contains("410")
    );

    // Disabled: nothing more is sent, not even new events.
    publish(&app, "g-2").await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(receiver.deliveries("/gone").await.len(), 1);

    // The receiver is back; enabling delivers the waiting event and the new one.
    receiver
        .hook("/gone", &secret, &[Response::status(200)])
        .await;
    let (status, enabled) = app
        .post(
            &format!("/v1/accounts/vimond/subscriptions/{id}/enable"),
            "",
        )
        .await;
    assert_eq!(
        (status, enabled["status"].as_str()),
        (200, Some("enabled")),
        "{enabled}"
    );
    let got = wait_for(&receiver, "/gone", 3).await;
    let mut ids: Vec<_> = got[1..]
        .iter()
        .filter_map(|d| d.webhook_id.clone())
        .collect();
    ids.sort();
    assert_eq!(ids, vec!["g-1", "g-2"]);
}

#[tokio::test]
async fn a_subscription_failing_for_too_long_is_disabled() {
    let app = TestApp::start_with(&[("REELAY_DISABLE_AFTER", "500ms")]).await;
    let receiver = Receiver::start().await;
    let (id, _) = subscribed(&app, &receiver, "/broken", &[Response::status(500)]).await;
    publish(&app, "f-1").await;
    let subscription = eventually(Duration::from_secs(10), "disabled", || async {
        let (_, s) = app
            .get(&format!("/v1/accounts/vimond/subscriptions/{id}"))
            .await;
        (s["status"] == "disabled").then_some(s)
    })
    .await;
    assert_eq!(subscription["disabledReason"]["code"], "failing_too_long");
    assert!(subscription["failingSince"].is_i64());
}

#[tokio::test]
async fn replay_redelivers_from_a_sequence_number_or_a_time() {
    let app = TestApp::start().await;
    let receiver = Receiver::start().await;
    let (id, _) = subscribed(&app, &receiver, "/replay", &[]).await;
    publish(&app, "p-1").await;
    publish(&app, "p-2").await;
    wait_for(&receiver, "/replay", 2).await;
    let second = app.stored_events("vimond").await[1]["sequence"]
        .as_i64()
        .unwrap();

    let (status, answer) = app
        .post(
            &format!("/v1/accounts/vimond/subscriptions/{id}/replay"),
            &json!({"fromSequence": second}).to_string(),
        )
        .await;
    assert_eq!(status, 202, "{answer}");
    let got = wait_for(&receiver, "/replay", 3).await;
    assert_eq!(got[2].webhook_id.as_deref(), Some("p-2"));

    let (status, _) = app
        .post(
            &format!("/v1/accounts/vimond/subscriptions/{id}/replay"),
            &json!({"since": "2000-01-01T00:00:00Z"}).to_string(),
        )
        .await;
    assert_eq!(status, 202);
    let got = wait_for(&receiver, "/replay", 5).await;
    // Deliveries run concurrently: the order of arrival is not the order of the log.
    let mut replayed: Vec<_> = got[3..]
        .iter()
        .filter_map(|d| d.webhook_id.clone())
        .collect();
    replayed.sort();
    assert_eq!(replayed, vec!["p-1", "p-2"]);

    let (status, error) = app
        .post(
            &format!("/v1/accounts/vimond/subscriptions/{id}/replay"),
            &json!({}).to_string(),
        )
        .await;
    assert_eq!(status, 422, "{error}");
}

#[tokio::test]
async fn an_endpoint_that_is_down_is_probed_not_flooded_and_gets_everything_back() {
    let app = TestApp::start_with(&[("REELAY_MAX_IN_FLIGHT", "4")]).await;
    let receiver = Receiver::start().await;
    let (id, secret) = subscribed(&app, &receiver, "/outage", &[Response::status(503)]).await;
    let batch: Vec<Value> = (0..200)
        .map(|n| asset_event("asset-updated", &format!("o-{n}")))
        .collect();
    let (status, _) = app
        .post(
            "/v1/accounts/vimond/events",
            &Value::Array(batch).to_string(),
        )
        .await;
    assert_eq!(status, 202);

    tokio::time::sleep(Duration::from_millis(1500)).await;
    let tried: std::collections::HashSet<_> = receiver
        .deliveries("/outage")
        .await
        .into_iter()
        .filter_map(|d| d.webhook_id)
        .collect();
    assert!(
        tried.len() < 40,
        "after 10 failures in a row only probes go out, not all 200 ({} tried)",
        tried.len()
    );

    receiver
        .hook("/outage", &secret, &[Response::status(200)])
        .await;
    eventually(
        Duration::from_secs(20),
        "all 200 events after the outage",
        || async {
            let ids: std::collections::HashSet<_> = receiver
                .deliveries("/outage")
                .await
                .into_iter()
                .filter_map(|d| d.webhook_id)
                .collect();
            (ids.len() == 200).then_some(())
        },
    )
    .await;
    let subscription = eventually(Duration::from_secs(5), "delivered count saved", || async {
        let (_, s) = app
            .get(&format!("/v1/accounts/vimond/subscriptions/{id}"))
            .await;
        (s["delivered"].as_u64().unwrap_or(0) > 0 && s["status"] == "enabled").then_some(s)
    })
    .await;
    assert!(subscription.get("failingSince").is_none(), "{subscription}");
}
