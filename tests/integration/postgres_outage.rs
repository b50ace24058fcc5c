//! PostgreSQL restarted under load: publishes while it is down are refused with `503
//! storage_unavailable` (never a `202` for an event that was not stored), the node
//! reconnects by itself, and every acknowledged event is delivered.
//!
//! The server is a private one (`support::postgres`), whatever backend the suite's pass
//! uses: stopping the machine's shared server would break the other tests.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::FutureExt;
use serde_json::{Value, json};

use crate::app::{ADMIN, TestApp};
use crate::publish::asset_event;
use crate::support::postgres::PrivatePostgres;
use crate::support::receiver::{Receiver, Response};

/// Concurrent publishers, and the pause each takes between two publishes.
const PUBLISHERS: usize = 3;
const PAUSE: Duration = Duration::from_millis(5);
/// How long PostgreSQL stays down: longer than the node waits for a connection (3s), so
/// publishes meanwhile are refused, and than a lease lasts (5s), so the node stops its
/// workers and must take them back.
const OUTAGE: Duration = Duration::from_secs(6);

/// Deliveries failed (answered 500) right before PostgreSQL stops.
const FAILURES: usize = 20;

/// One publish and its answer; times from the start of the test.
#[derive(Debug)]
struct Publish {
    id: String,
    /// `None`: no HTTP answer at all.
    status: Option<u16>,
    code: Option<String>,
    sent: Duration,
    answered: Duration,
}

#[tokio::test]
async fn postgres_restarted_under_load_refuses_with_503_and_loses_no_acknowledged_event() {
    let Some(postgres) = PrivatePostgres::start().await else {
        return;
    };
    // Retries enough to outlast the failures below.
    let app = TestApp::start_on(
        postgres.url(),
        &[("REELAY_RETRY_SCHEDULE", "200ms,400ms,600ms,1s,1s,1s,1s,1s")],
        tempfile::tempdir().expect("temp dir"),
    )
    .await;
    let receiver = Receiver::start().await;
    let (_, secret) = app
        .subscribe_receiver(
            &receiver,
            "/hook",
            json!({"topics": ["asset-operations"]}),
            &[],
        )
        .await;

    let start = Instant::now();
    let publishes = Mutex::new(Vec::<Publish>::new());
    let stop = AtomicBool::new(false);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client");
    let url = format!("{}/v1/accounts/vimond/events", app.url);

    let publisher = |n: usize| {
        let (http, url, publishes, stop) = (&http, &url, &publishes, &stop);
        async move {
            let mut k = 0;
            while !stop.load(Ordering::Relaxed) {
                let id = format!("outage-{n}-{k}");
                k += 1;
                let body = asset_event("asset-published", &id);
                let sent = start.elapsed();
                let answer = http.post(url).bearer_auth(ADMIN).json(&body).send().await;
                let (status, code) = match answer {
                    Ok(response) => {
                        let status = response.status().as_u16();
                        let body: Value = response.json().await.unwrap_or(Value::Null);
                        let code = body["error"]["code"].as_str().map(str::to_owned);
                        (Some(status), code)
                    }
                    Err(error) => {
                        eprintln!("publish {id}: no answer: {error}");
                        (None, None)
                    }
                };
                publishes.lock().unwrap().push(Publish {
                    id,
                    status,
                    code,
                    sent,
                    answered: start.elapsed(),
                });
                tokio::time::sleep(PAUSE).await;
            }
        }
    };

    // Publish a while, stop PostgreSQL, start it again, publish until the node has
    // recovered and then a while more.
    let control = async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        // The next deliveries fail: retries are due while PostgreSQL is down.
        let mut script = vec![Response::status(500); FAILURES];
        script.push(Response::status(200));
        receiver.hook("/hook", &secret, &script).await;
        let stopping = start.elapsed();
        postgres.stop().await;
        let down = start.elapsed();
        tokio::time::sleep(OUTAGE).await;
        postgres.start_again().await;
        let up = start.elapsed();
        let recovered = loop {
            let first_accepted = publishes
                .lock()
                .unwrap()
                .iter()
                .filter(|p| p.sent >= up && p.status == Some(202))
                .map(|p| p.answered)
                .min();
            if let Some(at) = first_accepted {
                break at;
            }
            assert!(
                start.elapsed() < up + Duration::from_secs(30),
                "no publish accepted within 30s after PostgreSQL came back:\n{}",
                app.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        tokio::time::sleep(Duration::from_secs(3)).await;
        stop.store(true, Ordering::Relaxed);
        (stopping, down, up, recovered)
    };
    let ((stopping, down, up, recovered), ()) = tokio::join!(
        control,
        futures::future::join_all((0..PUBLISHERS).map(publisher)).map(drop)
    );
    let publishes = publishes.into_inner().unwrap();

    let accepted: HashSet<&str> = publishes
        .iter()
        .filter(|p| p.status == Some(202))
        .map(|p| p.id.as_str())
        .collect();
    let refused: Vec<&Publish> = publishes.iter().filter(|p| p.status == Some(503)).collect();
    eprintln!(
        "PostgreSQL stopping at {stopping:?}, down at {down:?}, up at {up:?}; first publish \
         accepted again at {recovered:?}; refused from {:?} to {:?}",
        refused.iter().map(|p| p.sent).min(),
        refused.iter().map(|p| p.answered).max(),
    );

    let others: Vec<&Publish> = publishes
        .iter()
        .filter(|p| !matches!(p.status, Some(202) | Some(503)))
        .collect();
    assert!(
        others.is_empty(),
        "answers other than 202 and 503: {others:?}"
    );
    let wrong_code: Vec<&&Publish> = refused
        .iter()
        .filter(|p| p.code.as_deref() != Some("storage_unavailable"))
        .collect();
    assert!(
        wrong_code.is_empty(),
        "503 without storage_unavailable: {wrong_code:?}"
    );
    assert!(
        !refused.is_empty(),
        "no publish was refused: the outage was not seen"
    );
    let before: Vec<&Publish> = publishes.iter().filter(|p| p.answered < stopping).collect();
    assert!(
        !before.is_empty() && before.iter().all(|p| p.status == Some(202)),
        "publishes before the outage were refused"
    );
    // Recovered by itself, and for good: everything sent a moment after the first
    // success is accepted.
    let settled = recovered + Duration::from_secs(1);
    let after: Vec<&Publish> = publishes.iter().filter(|p| p.sent >= settled).collect();
    let refused_after: Vec<&&Publish> = after.iter().filter(|p| p.status != Some(202)).collect();
    assert!(
        after.len() >= 10 && refused_after.is_empty(),
        "after recovering: {} publishes, refused: {refused_after:?}",
        after.len()
    );

    // Every acknowledged event arrives.
    let deadline = Instant::now() + Duration::from_secs(60);
    let (deliveries, failed) = loop {
        let mut deliveries = receiver.deliveries("/hook").await;
        let failed = deliveries.len();
        deliveries.retain(|d| d.status == Some(200));
        let failed = failed - deliveries.len();
        let ids: HashSet<&str> = deliveries
            .iter()
            .filter_map(|d| d.webhook_id.as_deref())
            .collect();
        let missing: Vec<&str> = accepted.difference(&ids).copied().collect();
        if missing.is_empty() {
            break (deliveries, failed);
        }
        if Instant::now() > deadline {
            panic!(
                "{} of {} acknowledged events never delivered, e.g. {:?}\n{}",
                missing.len(),
                accepted.len(),
                &missing[..missing.len().min(10)],
                app.logs()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut times: HashMap<&str, usize> = HashMap::new();
    for id in deliveries.iter().filter_map(|d| d.webhook_id.as_deref()) {
        *times.entry(id).or_default() += 1;
    }
    let duplicates: usize = times.values().map(|n| n - 1).sum();
    let refused_but_delivered = refused
        .iter()
        .filter(|p| times.contains_key(p.id.as_str()))
        .count();
    eprintln!(
        "published {}: acknowledged {}, refused {} (of which delivered anyway: \
         {refused_but_delivered}); delivered {} distinct in {} deliveries ({duplicates} \
         duplicates), {failed} failed deliveries retried",
        publishes.len(),
        accepted.len(),
        refused.len(),
        times.len(),
        deliveries.len(),
    );
    assert!(deliveries.iter().all(|d| d.verified == Some(true)));
    // Nothing but what was published arrives.
    let published: HashSet<&str> = publishes.iter().map(|p| p.id.as_str()).collect();
    assert!(times.keys().all(|id| published.contains(id)));
}
