//! The metrics pass: every `--metrics-interval`, where each subscription stands (how far
//! behind the head, its oldest undelivered event, its retry set, its breaker), computed
//! from what the dispatcher holds anyway (each worker's [`Standing`], the log head) and
//! one grouped read of the retry set, never per event.
//!
//! Server-wide figures are gauges of the `metrics` recorder. The per-subscription ones
//! are emitted for the `--metrics-top-subscriptions` worst subscriptions only, and are
//! rendered here as text that `/metrics` appends: the recorder cannot forget a series,
//! so a top-N drawn from it would keep every subscription that was ever in it.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

use super::breaker::is_open;
use super::{Dispatcher, Shared, Target};
use crate::model::{Millis, now_millis};
use crate::store::RetrySetCount;
use crate::trace::metrics::Observed;

/// Where a worker stands, written by the worker at each wake-up, read by the pass.
#[derive(Debug, Default)]
pub(super) struct Standing {
    /// The position of the oldest event the worker holds undelivered (read, or in
    /// flight); 0: none (positions start at 1).
    oldest_seq: AtomicI64,
    /// When that event was committed.
    oldest_received_at: AtomicI64,
    /// Every event up to here is delivered or in the retry set.
    position: AtomicI64,
    /// Nothing the subscription wants waits in the log for it: set by its feed, which
    /// knows (the worker's loop does not run while its feed waits for a commit).
    caught_up: Arc<AtomicBool>,
}

impl Standing {
    pub(super) fn show(&self, oldest: Option<(i64, Millis)>, position: i64) {
        let (seq, received_at) = oldest.unwrap_or((0, 0));
        self.oldest_seq.store(seq, Ordering::Relaxed);
        self.oldest_received_at
            .store(received_at, Ordering::Relaxed);
        self.position.store(position, Ordering::Relaxed);
    }

    /// The flag the subscription's feed sets while it has read everything routed.
    pub(super) fn caught_up_flag(&self) -> Arc<AtomicBool> {
        self.caught_up.clone()
    }

    /// Log positions between the subscription's oldest undelivered event and `head`
    /// (an upper bound of the events it has yet to receive: other accounts' events and
    /// those it does not want are in between), 0 when it is caught up.
    fn lag(&self, head: i64) -> i64 {
        let oldest = self.oldest_seq.load(Ordering::Relaxed);
        if oldest > 0 {
            return (head - oldest + 1).max(0);
        }
        if self.caught_up.load(Ordering::Relaxed) {
            return 0;
        }
        (head - self.position.load(Ordering::Relaxed)).max(0)
    }

    fn oldest_received_at(&self) -> Option<Millis> {
        (self.oldest_seq.load(Ordering::Relaxed) > 0)
            .then(|| self.oldest_received_at.load(Ordering::Relaxed))
    }
}

/// One subscription's figures in a pass.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct Row {
    pub subscription: String,
    pub account: String,
    pub lag: i64,
    /// Seconds since the oldest undelivered event (held by the worker or waiting for a
    /// retry) was committed; 0 when there is none.
    pub oldest_age: f64,
    pub retry_waiting: i64,
    pub retry_due: i64,
    pub dead: i64,
    pub consecutive_failures: u32,
    pub breaker_open: bool,
}

impl Row {
    /// Whether there is anything to show: healthy, idle subscriptions get no series.
    fn notable(&self) -> bool {
        self.lag > 0
            || self.oldest_age > 0.0
            || self.retry_waiting > 0
            || self.dead > 0
            || self.consecutive_failures > 0
    }
}

/// The `n` rows most worth a look, worst first (an open breaker, then the most behind,
/// the most retries waiting, the most failures in a row, the oldest undelivered event,
/// the most dead letters), and how many notable rows were left out.
pub(super) fn top(mut rows: Vec<Row>, n: usize) -> (Vec<Row>, usize) {
    rows.retain(Row::notable);
    rows.sort_by(|a, b| {
        b.breaker_open
            .cmp(&a.breaker_open)
            .then(b.lag.cmp(&a.lag))
            .then(b.retry_waiting.cmp(&a.retry_waiting))
            .then(b.consecutive_failures.cmp(&a.consecutive_failures))
            .then(b.oldest_age.total_cmp(&a.oldest_age))
            .then(b.dead.cmp(&a.dead))
            .then(a.subscription.cmp(&b.subscription))
    });
    let omitted = rows.len().saturating_sub(n);
    rows.truncate(n);
    (rows, omitted)
}

/// A per-subscription family: its name, its help text, and its value in a row.
type Family = (&'static str, &'static str, fn(&Row) -> f64);

/// The per-subscription families (gauges labelled `account`, `subscription`).
const FAMILIES: [Family; 7] = [
    (
        "reelay_subscription_lag_events",
        "Log positions between the subscription's oldest undelivered event and the head (top subscriptions only).",
        |r| r.lag as f64,
    ),
    (
        "reelay_subscription_oldest_undelivered_age_seconds",
        "Age of the subscription's oldest undelivered event (top subscriptions only).",
        |r| r.oldest_age,
    ),
    (
        "reelay_subscription_retry_depth",
        "Deliveries of the subscription waiting for a retry (top subscriptions only).",
        |r| r.retry_waiting as f64,
    ),
    (
        "reelay_subscription_retry_due",
        "Of those, the ones due now (top subscriptions only).",
        |r| r.retry_due as f64,
    ),
    (
        "reelay_subscription_dead_letters",
        "Dead letters of the subscription kept (top subscriptions only).",
        |r| r.dead as f64,
    ),
    (
        "reelay_subscription_breaker_open",
        "1 while the subscription's endpoint counts as down (one probe at a time), else 0 (top subscriptions only).",
        |r| f64::from(u8::from(r.breaker_open)),
    ),
    (
        "reelay_subscription_consecutive_failures",
        "Failed attempts of the subscription since its last success (top subscriptions only).",
        |r| f64::from(r.consecutive_failures),
    ),
];

/// The per-subscription families, as `/metrics` text.
pub(super) fn render(rows: &[Row]) -> String {
    let mut text = String::new();
    for (name, help, value) in FAMILIES {
        let _ = writeln!(text, "# HELP {name} {help}");
        let _ = writeln!(text, "# TYPE {name} gauge");
        for row in rows {
            let _ = writeln!(
                text,
                "{name}{{account=\"{}\",subscription=\"{}\"}} {}",
                escape(&row.account),
                escape(&row.subscription),
                value(row)
            );
        }
    }
    text
}

/// The same figures as samples, for the OTLP export.
fn samples(rows: &[Row]) -> Vec<Observed> {
    FAMILIES
        .iter()
        .flat_map(|(name, _, value)| {
            rows.iter().map(move |row| Observed {
                name,
                labels: vec![
                    ("account", row.account.clone()),
                    ("subscription", row.subscription.clone()),
                ],
                value: value(row),
            })
        })
        .collect()
}

/// A label value in the Prometheus text format.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The subscription's row, from its worker's standing and its side of the retry set.
fn row_of(target: &Target, retries: Option<&RetrySetCount>, head: i64, now: Millis) -> Row {
    let standing = &target.standing;
    let oldest = [
        standing.oldest_received_at(),
        retries.and_then(|r| r.oldest_received_at),
    ]
    .into_iter()
    .flatten()
    .min();
    let failures = target.consecutive_failures();
    Row {
        subscription: target.id().to_owned(),
        account: target.subscription.account.clone(),
        lag: standing.lag(head),
        oldest_age: oldest.map_or(0.0, |at| (now - at).max(0) as f64 / 1000.0),
        retry_waiting: retries.map_or(0, |r| r.waiting),
        retry_due: retries.map_or(0, |r| r.due),
        dead: retries.map_or(0, |r| r.dead),
        consecutive_failures: failures,
        breaker_open: is_open(failures),
    }
}

/// Runs the pass until the dispatcher stops.
pub(super) async fn run(dispatcher: Dispatcher) {
    let cancel = dispatcher.shared.cancel.clone();
    let mut tick = tokio::time::interval(dispatcher.config().metrics.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tick.tick() => {}
        }
        dispatcher.record_gauges().await;
    }
}

impl Dispatcher {
    /// One metrics pass.
    async fn record_gauges(&self) {
        let now = now_millis();
        let store = self.store();
        let head = store.head();
        let targets: Vec<Arc<Target>> = self
            .workers()
            .values()
            .map(|handle| handle.target.clone())
            .collect();
        let retry_set = match store.db().retry_set_by_subscription(now).await {
            Ok(rows) => Some(rows),
            Err(error) => {
                tracing::warn!(%error, "reading the retry set for the metrics failed");
                None
            }
        };
        let by_subscription: std::collections::HashMap<&str, &RetrySetCount> = retry_set
            .iter()
            .flatten()
            .map(|r| (r.subscription_id.as_str(), r))
            .collect();
        let rows: Vec<Row> = targets
            .iter()
            .map(|target| row_of(target, by_subscription.get(target.id()).copied(), head, now))
            .collect();

        // Server-wide, always: bounded whatever the number of subscriptions.
        metrics::gauge!("reelay_subscriptions_running").set(rows.len() as f64);
        metrics::gauge!("reelay_subscriptions_behind")
            .set(rows.iter().filter(|r| r.lag > 0).count() as f64);
        metrics::gauge!("reelay_subscriptions_lag_events_max")
            .set(rows.iter().map(|r| r.lag).max().unwrap_or(0) as f64);
        metrics::gauge!("reelay_subscriptions_lag_events_sum")
            .set(rows.iter().map(|r| r.lag).sum::<i64>() as f64);
        metrics::gauge!("reelay_subscriptions_oldest_undelivered_age_seconds")
            .set(rows.iter().map(|r| r.oldest_age).fold(0.0, f64::max));
        metrics::gauge!("reelay_breakers_open")
            .set(rows.iter().filter(|r| r.breaker_open).count() as f64);
        metrics::gauge!("reelay_subscriptions_failing")
            .set(rows.iter().filter(|r| r.consecutive_failures > 0).count() as f64);
        if let Some(retry_set) = &retry_set {
            // The whole database's retry set (with several nodes, every node sees it all).
            metrics::gauge!("reelay_retry_due")
                .set(retry_set.iter().map(|r| r.due).sum::<i64>() as f64);
            metrics::gauge!("reelay_dead_letters")
                .set(retry_set.iter().map(|r| r.dead).sum::<i64>() as f64);
        }
        metrics::gauge!("reelay_log_halted").set(f64::from(u8::from(store.halted().is_some())));
        metrics::gauge!("reelay_storage_available").set(f64::from(u8::from(
            store.halted().is_none() && store.write_failure().is_none(),
        )));
        if let Ok(Some(file)) = store.db().database_file().await
            && let Some((size, available)) = crate::store::disk::space(&file)
        {
            metrics::gauge!("reelay_disk_size_bytes").set(size as f64);
            metrics::gauge!("reelay_disk_available_bytes").set(available as f64);
        }

        let (top, omitted) = top(rows, self.config().metrics.top_subscriptions);
        metrics::gauge!("reelay_metrics_subscriptions_omitted").set(omitted as f64);
        *self
            .shared
            .subscription_series
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = top.into();
    }

    /// The names of the per-subscription series.
    pub const SUBSCRIPTION_FAMILIES: [&'static str; FAMILIES.len()] = {
        let mut names = [""; FAMILIES.len()];
        let mut i = 0;
        while i < FAMILIES.len() {
            names[i] = FAMILIES[i].0;
            i += 1;
        }
        names
    };

    /// The top subscriptions' rows of the last metrics pass.
    fn top_rows(shared: &Shared) -> Arc<[Row]> {
        shared
            .subscription_series
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The per-subscription series of the last metrics pass, as `/metrics` text.
    pub fn subscription_metrics(&self) -> String {
        render(&Self::top_rows(&self.shared))
    }

    /// The same series for the OTLP export, read at each export for as long as the
    /// dispatcher runs (nothing after it stopped).
    pub fn subscription_samples(&self) -> impl Fn() -> Vec<Observed> + Send + Sync + 'static {
        let shared = Arc::downgrade(&self.shared);
        move || {
            shared
                .upgrade()
                .map(|shared| samples(&Self::top_rows(&shared)))
                .unwrap_or_default()
        }
    }

    /// Which accounts and subscriptions get series of their own.
    pub fn metrics_scope(&self) -> &crate::metrics_scope::MetricsScope {
        &self.config().metrics
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, lag: i64, waiting: i64, failures: u32) -> Row {
        Row {
            subscription: id.into(),
            account: "a".into(),
            lag,
            retry_waiting: waiting,
            consecutive_failures: failures,
            breaker_open: is_open(failures),
            ..Row::default()
        }
    }

    #[test]
    fn the_top_is_the_worst_and_idle_ones_are_left_out() {
        let rows = vec![
            row("idle", 0, 0, 0),
            row("behind", 500, 0, 0),
            row("failing", 3, 7, 4),
            row("down", 1, 40, 12),
            row("little", 2, 0, 0),
        ];
        let (top3, omitted) = top(rows.clone(), 3);
        let ids: Vec<&str> = top3.iter().map(|r| r.subscription.as_str()).collect();
        assert_eq!(ids, ["down", "behind", "failing"]);
        assert_eq!(
            omitted, 1,
            "`little` is notable but left out; `idle` is not notable"
        );
        let (none, omitted) = top(rows, 0);
        assert!(none.is_empty());
        assert_eq!(omitted, 4);
    }

    #[test]
    fn the_lag_counts_from_the_oldest_undelivered_event_or_the_position() {
        let standing = Standing::default();
        let caught_up = standing.caught_up_flag();
        caught_up.store(true, Ordering::Relaxed);
        standing.show(Some((91, 5)), 90);
        assert_eq!(standing.lag(100), 10);
        assert_eq!(standing.oldest_received_at(), Some(5));
        // Nothing held, caught up: an idle subscription is not behind, whatever its
        // saved position.
        standing.show(None, 3);
        assert_eq!(standing.lag(100), 0);
        assert_eq!(standing.oldest_received_at(), None);
        // Reading the log to catch up: behind by its position.
        caught_up.store(false, Ordering::Relaxed);
        standing.show(None, 60);
        assert_eq!(standing.lag(100), 40);
    }

    #[test]
    fn the_text_has_one_sample_per_row_and_escapes_labels() {
        let mut odd = row("sub_1", 4, 1, 1);
        odd.account = "we\"ird\\".into();
        let text = render(&[odd, row("sub_2", 0, 2, 0)]);
        assert!(text.contains(
            "reelay_subscription_lag_events{account=\"we\\\"ird\\\\\",subscription=\"sub_1\"} 4\n"
        ));
        assert_eq!(
            text.lines()
                .filter(|l| l.starts_with("reelay_subscription_retry_depth{"))
                .count(),
            2
        );
        assert!(text.contains("# TYPE reelay_subscription_breaker_open gauge\n"));
    }
}
