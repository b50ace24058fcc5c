//! The retention phase of `reelay bench` (`--only retention`): a server of its own on a
//! scratch SQLite database with a short `--retention`, small events published at a fixed
//! rate over several retention windows to one subscription that receives them all, and
//! the database's size sampled as it goes. Once removal starts the size should level off
//! instead of growing with the total, and the publish p99 while removal runs is compared
//! with the p99 of the first window, before anything was old enough to remove.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use serde_json::json;
use tokio::sync::Mutex;

use super::events::Traffic;
use super::server::{BenchServer, Storage};

/// Events per publish request.
const BATCH: usize = 20;
/// How often the database's size is sampled.
const SAMPLE_EVERY: Duration = Duration::from_secs(5);
/// Publish requests in flight at most: past it the generator falls behind its rate (and
/// says so) rather than pile up requests.
const MAX_IN_FLIGHT: usize = 64;

/// One sample of the curve.
#[derive(Debug, Clone, Serialize)]
pub struct SizeSample {
    pub seconds: f64,
    pub published: u64,
    /// The database file, in bytes.
    pub db_bytes: u64,
    /// Its write-ahead log (restarted by checkpoints once past 64 MB).
    pub wal_bytes: u64,
    /// The events the server counts in its log (`reelay_stored_events`).
    pub stored_events: f64,
    pub removed_events: f64,
}

#[derive(Debug, Default, Serialize)]
pub struct RetentionResult {
    pub retention_seconds: f64,
    pub windows: u32,
    pub rate_per_second: u64,
    pub published: u64,
    /// Seconds from the start until the first removal was counted.
    pub removal_started_seconds: Option<f64>,
    pub publish_p99_ms_before_removal: f64,
    pub publish_p99_ms_during_removal: f64,
    pub publish_p50_ms_before_removal: f64,
    pub publish_p50_ms_during_removal: f64,
    /// Requests the generator could not send on time (it was at its in-flight bound).
    pub late_requests: u64,
    pub curve: Vec<SizeSample>,
}

/// Runs the phase: `windows` windows of `retention` at `rate` events/s.
pub async fn run(
    http: &reqwest::Client,
    receiver_url: &str,
    retention: Duration,
    windows: u32,
    rate: u64,
) -> anyhow::Result<RetentionResult> {
    let dir = std::env::temp_dir().join(format!("reelay-bench-retention-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let server = BenchServer::start(
        Storage::SqliteIn(dir.clone()),
        false,
        vec![
            ("REELAY_RETENTION", format!("{}ms", retention.as_millis())),
            ("REELAY_RETENTION_INTERVAL", "2s".to_owned()),
        ],
    )
    .await?;
    let outcome = measure(http, &server, receiver_url, &dir, retention, windows, rate).await;
    server.stop().await;
    outcome
}

async fn measure(
    http: &reqwest::Client,
    server: &BenchServer,
    receiver_url: &str,
    dir: &std::path::Path,
    retention: Duration,
    windows: u32,
    rate: u64,
) -> anyhow::Result<RetentionResult> {
    let account = format!(
        "bench-retention-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let base = server.url(0).to_owned();
    let token = server.token().to_owned();
    // One subscription receives every event: removal waits for its deliveries.
    let created = http
        .post(format!("{base}/v1/accounts/{account}/subscriptions"))
        .bearer_auth(&token)
        .json(&json!({"endpoint": format!("{receiver_url}/raw"), "events": [Traffic::Player.event_name()]}))
        .send()
        .await?;
    anyhow::ensure!(
        created.status().is_success(),
        "subscription refused: {}",
        created.text().await.unwrap_or_default()
    );

    let total = retention * windows;
    let started = Instant::now();
    let latencies: Arc<Mutex<Vec<(f64, u64)>>> = Arc::default();
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (http, base, done, dir) = (http.clone(), base.clone(), done.clone(), dir.to_owned());
        let latencies = latencies.clone();
        tokio::spawn(async move {
            let mut curve = Vec::new();
            loop {
                let published = latencies.lock().await.len() as u64 * BATCH as u64;
                let metrics = metrics_text(&http, &base).await.unwrap_or_default();
                curve.push(SizeSample {
                    seconds: started.elapsed().as_secs_f64(),
                    published,
                    db_bytes: file_bytes(&dir, "bench.db"),
                    wal_bytes: file_bytes(&dir, "bench.db-wal"),
                    stored_events: metric(&metrics, "reelay_stored_events"),
                    removed_events: metric(
                        &metrics,
                        "reelay_retention_removed_total{kind=\"events\"}",
                    ),
                });
                eprint!(
                    "\rretention: {:>4.0}s published {published:>9}, database {:>7.1} MB",
                    started.elapsed().as_secs_f64(),
                    file_bytes(&dir, "bench.db") as f64 / 1e6
                );
                if done.load(Ordering::Relaxed) {
                    return curve;
                }
                tokio::time::sleep(SAMPLE_EVERY).await;
            }
        })
    };

    let gap = Duration::from_secs_f64(BATCH as f64 / rate.max(1) as f64);
    let mut ticker = tokio::time::interval(gap);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
    let mut late = 0;
    let mut n = 0usize;
    let mut requests = tokio::task::JoinSet::new();
    while started.elapsed() < total {
        ticker.tick().await;
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            late += 1;
            continue;
        };
        let events = Traffic::Player.batch(n..n + BATCH);
        n += BATCH;
        let (http, url, token, latencies) = (
            http.clone(),
            format!("{base}/v1/accounts/{account}/events"),
            token.clone(),
            latencies.clone(),
        );
        requests.spawn(async move {
            let sent = Instant::now();
            let response = http
                .post(&url)
                .bearer_auth(&token)
                .header("content-type", "application/json")
                .body(events)
                .send()
                .await?;
            anyhow::ensure!(
                response.status().is_success(),
                "publish answered {}",
                response.status()
            );
            let at = sent.duration_since(started).as_secs_f64();
            latencies
                .lock()
                .await
                .push((at, sent.elapsed().as_micros() as u64));
            drop(slot);
            Ok(())
        });
        while let Some(finished) = requests.try_join_next() {
            finished.context("a publish task")??;
        }
    }
    while let Some(finished) = requests.join_next().await {
        finished.context("a publish task")??;
    }
    // One more window: what was published last ages out too.
    tokio::time::sleep(retention + Duration::from_secs(5)).await;
    done.store(true, Ordering::Relaxed);
    let curve = sampler.await?;

    let removal_started = curve
        .iter()
        .find(|sample| sample.removed_events > 0.0)
        .map(|sample| sample.seconds);
    let latencies = latencies.lock().await;
    let split = |before: bool| {
        let mut picked: Vec<u64> = latencies
            .iter()
            .filter(|(at, _)| match removal_started {
                Some(start) => (*at < start) == before,
                None => before,
            })
            .map(|(_, micros)| *micros)
            .collect();
        picked.sort_unstable();
        picked
    };
    let (before, during) = (split(true), split(false));
    Ok(RetentionResult {
        retention_seconds: retention.as_secs_f64(),
        windows,
        rate_per_second: rate,
        published: latencies.len() as u64 * BATCH as u64,
        removal_started_seconds: removal_started,
        publish_p99_ms_before_removal: super::report::percentile(&before, 99.0) / 1000.0,
        publish_p99_ms_during_removal: super::report::percentile(&during, 99.0) / 1000.0,
        publish_p50_ms_before_removal: super::report::percentile(&before, 50.0) / 1000.0,
        publish_p50_ms_during_removal: super::report::percentile(&during, 50.0) / 1000.0,
        late_requests: late,
        curve,
    })
}

async fn metrics_text(http: &reqwest::Client, base: &str) -> anyhow::Result<String> {
    Ok(http
        .get(format!("{base}/metrics"))
        .send()
        .await?
        .text()
        .await?)
}

/// The value of the series that starts with `series` (name and labels), summed.
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|line| {
            line.strip_prefix(series)
                .is_some_and(|rest| rest.starts_with([' ', '{']))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn file_bytes(dir: &std::path::Path, name: &str) -> u64 {
    std::fs::metadata(dir.join(name)).map_or(0, |meta| meta.len())
}
