//! The benchmark's webhook receiver: answers every POST with 200 at once and counts
//! arrivals per subscription and event, with their arrival times, so the report can say
//! how many were missing or duplicated and how long each took.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// What one phase expects: `events` events to each of `subscriptions` paths.
pub struct Expectation {
    pub events: usize,
    pub subscriptions: usize,
    counts: Vec<AtomicU32>,
    /// Arrival time of each event at subscription 0, in nanoseconds since `clock`.
    arrivals: Vec<AtomicU64>,
    pub total: AtomicU64,
    /// When the last arrival happened, nanoseconds since `clock`.
    pub last_arrival: AtomicU64,
    /// Whether the receiver answers 503 (an outage) instead of 200.
    pub down: std::sync::atomic::AtomicBool,
}

impl Expectation {
    pub fn new(events: usize, subscriptions: usize) -> Arc<Expectation> {
        Arc::new(Expectation {
            events,
            subscriptions,
            counts: (0..events * subscriptions)
                .map(|_| AtomicU32::new(0))
                .collect(),
            arrivals: (0..events).map(|_| AtomicU64::new(0)).collect(),
            total: AtomicU64::new(0),
            last_arrival: AtomicU64::new(0),
            down: Default::default(),
        })
    }

    /// (distinct deliveries, duplicates, missing).
    pub fn tally(&self) -> (u64, u64, u64) {
        let mut distinct = 0;
        let mut duplicates = 0;
        for count in &self.counts {
            let count = u64::from(count.load(Ordering::Relaxed));
            distinct += u64::from(count > 0);
            duplicates += count.saturating_sub(1);
        }
        (distinct, duplicates, self.counts.len() as u64 - distinct)
    }

    pub fn arrival(&self, event: usize) -> Option<u64> {
        let at = self.arrivals.get(event)?.load(Ordering::Relaxed);
        (at > 0).then_some(at)
    }
}

#[derive(Clone)]
pub struct Receiver {
    pub clock: Instant,
    current: Arc<RwLock<Option<Arc<Expectation>>>>,
    /// Deliveries to `/idle`, where the many-tenants phase's idle subscriptions point:
    /// any is a stray.
    idle: Arc<AtomicU64>,
}

impl Receiver {
    /// Starts on a free loopback port; returns the receiver and its base URL.
    pub async fn start(cancel: CancellationToken) -> std::io::Result<(Receiver, String)> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let receiver = Receiver {
            clock: Instant::now(),
            current: Arc::default(),
            idle: Arc::default(),
        };
        let idle = receiver.idle.clone();
        let app = axum::Router::new()
            .route("/raw", post(|| async { StatusCode::OK }))
            .route(
                "/idle",
                post(move || async move {
                    idle.fetch_add(1, Ordering::Relaxed);
                    StatusCode::OK
                }),
            )
            .route("/hook/{subscription}", post(arrive))
            .with_state(receiver.clone());
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(cancel.cancelled_owned())
                .await;
        });
        Ok((receiver, url))
    }

    pub fn expect(&self, expectation: Option<Arc<Expectation>>) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = expectation;
    }

    pub fn idle_deliveries(&self) -> u64 {
        self.idle.load(Ordering::Relaxed)
    }

    pub fn now(&self) -> u64 {
        self.clock.elapsed().as_nanos() as u64
    }
}

/// Event ids are the bench's UUIDs, which carry the event's number (a resync delivery's:
/// `<uuid>.<resync id>`, see [`super::events::event_number`]); any other id counts only in
/// the total.
async fn arrive(
    State(receiver): State<Receiver>,
    Path(subscription): Path<usize>,
    headers: HeaderMap,
) -> StatusCode {
    let now = receiver.now();
    let Some(expectation) = receiver
        .current
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
    else {
        return StatusCode::OK;
    };
    if expectation.down.load(Ordering::Relaxed) {
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    let event = headers
        .get("webhook-id")
        .and_then(|id| id.to_str().ok())
        .and_then(super::events::event_number);
    if let Some(event) =
        event.filter(|&e| e < expectation.events && subscription < expectation.subscriptions)
    {
        expectation.counts[subscription * expectation.events + event]
            .fetch_add(1, Ordering::Relaxed);
        if subscription == 0 {
            let _ = expectation.arrivals[event].compare_exchange(
                0,
                now,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }
    expectation.total.fetch_add(1, Ordering::Relaxed);
    expectation.last_arrival.fetch_max(now, Ordering::Relaxed);
    StatusCode::OK
}
