//! The tracing phase (`tracing`): what tracing costs the hot path. Deliveries/s to one
//! subscription (single-event publishes, as the "1 subscription" row) on a server with
//! tracing off, then on one exporting `--trace-sample-ratio 0.01` of its traces over
//! OTLP/HTTP to a collector the bench runs, which takes every export request and drops
//! it. Each server is new, on a scratch SQLite database of its own, so the two differ in
//! tracing only.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::Bench;
use super::events::Traffic;
use super::report::DeliveryResult;
use super::server::{BenchServer, Storage};

/// The share of traces recorded with tracing on.
pub const SAMPLE_RATIO: f64 = 0.01;

#[derive(Debug, Serialize)]
pub struct TracingResult {
    pub sample_ratio: f64,
    pub off: DeliveryResult,
    pub on: DeliveryResult,
    /// On over off: the target is >= 0.9.
    pub ratio: f64,
    /// Export requests and their bytes the collector took during the traced run.
    pub export_requests: u64,
    pub export_bytes: u64,
}

/// An OTLP/HTTP collector that answers every export with an empty success (a valid
/// empty `Export*ServiceResponse`) and counts what it took.
struct Collector {
    url: String,
    requests: Arc<AtomicU64>,
    bytes: Arc<AtomicU64>,
    stop: CancellationToken,
}

impl Collector {
    async fn start() -> anyhow::Result<Collector> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let counts = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let app = axum::Router::new()
            .route(
                "/v1/traces",
                post(
                    |State((requests, bytes)): State<(Arc<AtomicU64>, Arc<AtomicU64>)>,
                     body: Bytes| async move {
                        requests.fetch_add(1, Ordering::Relaxed);
                        bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
                        ([("content-type", "application/x-protobuf")], Bytes::new())
                    },
                ),
            )
            .with_state(counts.clone());
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(stopped.cancelled_owned())
                .await;
        });
        Ok(Collector {
            url,
            requests: counts.0,
            bytes: counts.1,
            stop,
        })
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Bench {
    /// `events` single-event publishes to one subscription, tracing off then on.
    pub(super) async fn tracing(&mut self, events: usize) -> anyhow::Result<TracingResult> {
        let collector = Collector::start().await?;
        let traced = vec![
            ("REELAY_OTLP_ENDPOINT", collector.url.clone()),
            ("REELAY_TRACE_SAMPLE_RATIO", SAMPLE_RATIO.to_string()),
        ];
        let off = self
            .on_a_server_of_its_own("tracing-off", Vec::new(), events)
            .await?;
        let on = self
            .on_a_server_of_its_own("tracing-on", traced, events)
            .await?;
        Ok(TracingResult {
            sample_ratio: SAMPLE_RATIO,
            ratio: on.per_second / off.per_second.max(1e-9),
            off,
            on,
            export_requests: collector.requests.load(Ordering::Relaxed),
            export_bytes: collector.bytes.load(Ordering::Relaxed),
        })
    }

    /// The 1-subscription delivery measure on a new SQLite server started with `env`,
    /// stopped after it; the bench's own server (and its PostgreSQL watcher) set aside
    /// meanwhile.
    async fn on_a_server_of_its_own(
        &mut self,
        phase: &str,
        env: Vec<(&'static str, String)>,
        events: usize,
    ) -> anyhow::Result<DeliveryResult> {
        let dir = std::env::temp_dir().join(format!("reelay-bench-{phase}-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let server = BenchServer::start(Storage::SqliteIn(dir), false, env).await?;
        let own = std::mem::replace(&mut self.server, server);
        let watcher = self.watcher.take();
        let measured = self.delivery(phase, events, 1, Traffic::Player).await;
        self.watcher = watcher;
        let server = std::mem::replace(&mut self.server, own);
        server.stop().await;
        measured
    }
}
