//! Per-entity order (issue 19): `"ordering": "entity"` delivers the events of one entity
//! one at a time in log order, while entities go in parallel, through the real binary and
//! a webhook receiver that answers slowly and fails at first.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::app::TestApp;
use crate::support::receiver::{Delivery, Receiver, Response};

const VIDEOS: i64 = 20;
const CHANGES: i64 = 30;

/// `(video, version)` of a `video-change` delivery.
fn change(delivery: &Delivery) -> (String, i64) {
    let body: Value = serde_json::from_str(&delivery.body).expect("a JSON delivery");
    (
        body["video"].as_str().expect("video").to_owned(),
        body["version"].as_i64().expect("version"),
    )
}

/// Versions per video, in arrival order, of the deliveries `keep` selects.
fn versions(
    deliveries: &[Delivery],
    keep: impl Fn(&Delivery) -> bool,
) -> BTreeMap<String, Vec<i64>> {
    let mut by_video: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for delivery in deliveries.iter().filter(|d| keep(d)) {
        let (video, version) = change(delivery);
        by_video.entry(video).or_default().push(version);
    }
    by_video
}

fn delivered(delivery: &Delivery) -> bool {
    delivery.status == Some(200)
}

async fn all_delivered(receiver: &Receiver, path: &str) -> Vec<Delivery> {
    let want = usize::try_from(VIDEOS * CHANGES).expect("a count");
    // Looked at twice a second only: each look copies every record, and a busy receiver
    // would measure its own lookups.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = receiver.deliveries(path).await;
        if got.iter().filter(|d| delivered(d)).count() >= want {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {want} deliveries at {path}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test]
async fn each_video_gets_its_versions_in_order_while_videos_go_in_parallel() {
    // Retries come soon and often: an event that fails is delivered on a later try.
    let app = TestApp::start_with(&[(
        "REELAY_RETRY_SCHEDULE",
        "100ms,100ms,100ms,100ms,100ms,100ms",
    )])
    .await;
    let receiver = Receiver::start().await;
    // A receiver of its own: the plain subscription's traffic does not slow the other.
    let plain_receiver = Receiver::start().await;
    // Some requests fail at first: one in three of the first 60.
    let script: Vec<Response> = (0..60)
        .map(|i| Response::status(if i % 3 == 0 { 500 } else { 200 }))
        .chain([Response::status(200)])
        .collect();
    let (ordered, _) = app
        .subscribe_receiver(
            &receiver,
            "/ordered",
            json!({"events": ["video-change"], "ordering": "entity"}),
            &script,
        )
        .await;
    let (plain, _) = app
        .subscribe_receiver(
            &plain_receiver,
            "/plain",
            json!({"events": ["video-change"]}),
            &[],
        )
        .await;
    receiver.random_delay("/ordered", 50).await;
    plain_receiver.random_delay("/plain", 50).await;
    let (status, shown) = app
        .get(&format!("/v1/accounts/vimond/subscriptions/{ordered}"))
        .await;
    assert_eq!(
        (status, &shown["ordering"]),
        (200, &json!("entity")),
        "{shown}"
    );
    let (status, shown) = app
        .get(&format!("/v1/accounts/vimond/subscriptions/{plain}"))
        .await;
    assert_eq!(status, 200);
    assert!(
        shown.get("ordering").is_none(),
        "no order by default: {shown}"
    );

    // 30 changes of each of 20 videos, interleaved in the log, in one publish.
    let events: Vec<Value> = (0..CHANGES)
        .flat_map(|round| {
            (0..VIDEOS).map(move |video| {
                json!({"eventName": "asset-updated", "guid": format!("o-{round}-{video}"),
                       "timestamp": "2026-12-01T08:00:00Z", "assetId": 1000 + video})
            })
        })
        .collect();
    let (status, answer) = app
        .post(
            "/v1/accounts/vimond/events",
            &Value::Array(events).to_string(),
        )
        .await;
    assert_eq!(status, 202, "{answer}");
    let got = all_delivered(&receiver, "/ordered").await;
    // From the first request to the last answer, at the receiver.
    let first = got.iter().map(|d| d.at).fold(f64::INFINITY, f64::min);
    let last = got
        .iter()
        .map(|d| d.at + d.delay_ms / 1_000.0)
        .fold(0.0, f64::max);
    let elapsed = last - first;

    let every: Vec<i64> = (1..=CHANGES).collect();
    // Delivered: every version of every video, once, in strictly increasing order.
    let successes = versions(&got, delivered);
    assert_eq!(successes.len(), usize::try_from(VIDEOS).expect("a count"));
    for (video, versions) in &successes {
        assert_eq!(versions, &every, "video {video}: {versions:?}");
    }
    // Not even attempted early: a failed version is retried before the next is tried.
    let failed = got.iter().filter(|d| d.status == Some(500)).count();
    assert!(failed >= 10, "some deliveries failed at first ({failed})");
    for (video, attempts) in versions(&got, |_| true) {
        assert!(
            attempts.windows(2).all(|pair| pair[0] <= pair[1]),
            "video {video}: attempts {attempts:?}"
        );
    }
    // In parallel: far quicker than one request at a time would be.
    let sequential: f64 = got.iter().map(|d| d.delay_ms).sum::<f64>() / 1_000.0;
    assert!(
        elapsed < sequential / 3.0,
        "took {elapsed:.1} s; one at a time the receiver alone would take {sequential:.1} s"
    );

    // Without ordering: as before, everything arrives.
    let plain_got = all_delivered(&plain_receiver, "/plain").await;
    let plain_versions = versions(&plain_got, delivered);
    for (video, versions) in plain_versions {
        let mut sorted = versions.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, every, "video {video}");
    }
}

#[tokio::test]
async fn a_bad_ordering_is_refused_naming_the_field() {
    let app = TestApp::start().await;
    let refused = [
        (
            json!({"endpoint": "http://127.0.0.1:9/h", "events": ["video-change"], "ordering": "fifo"}),
            "\"fifo\" is not an ordering",
        ),
        (
            json!({"endpoint": "http://127.0.0.1:9/h", "events": ["video-change"], "ordering": true}),
            "ordering must be a string",
        ),
        (
            json!({"destination": {"type": "sqs", "queueUrl": "http://q"}, "events": ["video-change"],
                "ordering": "entity", "skipDestinationCheck": true}),
            "for webhook destinations",
        ),
    ];
    for (body, message) in refused {
        let (status, answer) = app
            .post("/v1/accounts/vimond/subscriptions", &body.to_string())
            .await;
        assert_eq!(status, 422, "{body}: {answer}");
        assert_eq!(answer["error"]["code"], "invalid_ordering", "{answer}");
        assert_eq!(answer["error"]["field"], "ordering", "{answer}");
        let text = answer["error"]["message"].as_str().expect("a message");
        assert!(text.contains(message), "{text}");
    }
    // "none" is the default, said out loud.
    let (status, answer) = app
        .post(
            "/v1/accounts/vimond/subscriptions",
            &json!({"endpoint": "http://127.0.0.1:9/h", "events": ["video-change"], "ordering": "none"}).to_string(),
        )
        .await;
    assert_eq!(status, 201, "{answer}");
    assert!(answer.get("ordering").is_none(), "{answer}");
}
