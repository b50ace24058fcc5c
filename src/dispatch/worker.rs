//! The worker of one subscription: follows the log from the subscription's cursor and
//! delivers every matching event, several at a time.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::breaker::{self, ProbePermit};
use super::feed::Feed;
use super::router::Wants;
use super::{Dispatcher, Target, policy};
use crate::model::{StoredEvent, now_millis};
use crate::sinks::Attempted;
use crate::store::{AttemptRecord, Progress, RetryState, RetryUpdate};

/// Commands from the API and the retry scheduler to a running worker.
pub(super) enum Control {
    /// Deliver again every event after this sequence number.
    Rewind(i64),
    /// The retry of this event is over (delivered or dead): an in-order subscription
    /// that waited for it carries on.
    Resolved(i64),
}

/// How often progress is saved while deliveries flow. Crashing loses at most this much
/// progress, and those events are delivered again (at-least-once).
pub(super) const FLUSH_EVERY: Duration = Duration::from_millis(50);
/// Progress is saved early when this many attempt records wait.
const FLUSH_RECORDS: usize = 1_024;
/// At least this many events wait in a worker's inbox before it counts as fallen behind
/// (and reads the log instead); more when it reads further ahead than half of this.
const INBOX_EVENTS: usize = 1_024;
/// After this many failures in a row the endpoint counts as down: the worker stops
/// sending new events (they wait in the log, behind the cursor) and sends one probe at
/// a time, shared with the retry scheduler ([`breaker`]), until a delivery succeeds
/// again. So an outage of hours costs one failed attempt per probe, not one per event.
pub(super) use super::breaker::BREAKER_THRESHOLD;
/// An in-order subscription that waits for a retry is told when it is over (delivered or
/// dead); it also looks at the retry set this often, so a word lost to a restart of its
/// worker cannot stall it.
const RECHECK_WAITING: Duration = Duration::from_secs(5);
/// While another probe (a retry's) is under way, how often to look whether it is over.
const PROBE_BUSY_POLL: Duration = Duration::from_millis(250);

/// An event and what its attempt produced.
type Outcome = (Arc<StoredEvent>, Attempted);

pub(super) struct Worker {
    dispatcher: Dispatcher,
    target: Arc<Target>,
    cancel: CancellationToken,
    control: mpsc::Receiver<Control>,
    feed: Feed,
    /// Matching events read from the feed, not yet started.
    pending: VecDeque<Arc<StoredEvent>>,
    /// Delivery calls under way: one event each for a webhook, a batch for AWS sinks.
    in_flight: FuturesUnordered<BoxFuture<'static, Vec<Outcome>>>,
    in_flight_seqs: BTreeSet<i64>,
    report: Progress,
    saved_cursor: i64,
    /// In-order subscriptions only: the event whose retry must be over before the next
    /// delivery starts.
    waiting_for: Option<i64>,
}

impl Worker {
    pub(super) fn new(
        dispatcher: Dispatcher,
        target: Arc<Target>,
        cancel: CancellationToken,
        control: mpsc::Receiver<Control>,
    ) -> Worker {
        let cursor = target.subscription.cursor;
        let (max_in_flight, batch_size) = limits(&dispatcher, &target);
        let feed = Feed::new(
            dispatcher.store().clone(),
            dispatcher.shared.router.clone(),
            Wants::of(&target.subscription),
            cursor,
            INBOX_EVENTS.max(2 * max_in_flight * batch_size),
            dispatcher.config().max_page_bytes,
        );
        let report = Progress {
            subscription_id: target.id().to_owned(),
            ..Progress::default()
        };
        Worker {
            dispatcher,
            target,
            cancel,
            control,
            feed,
            pending: VecDeque::new(),
            in_flight: FuturesUnordered::new(),
            in_flight_seqs: BTreeSet::new(),
            report,
            saved_cursor: cursor,
            waiting_for: None,
        }
    }

    pub(super) async fn run(mut self) {
        let subscription = &self.target.subscription;
        let in_order = subscription.in_order();
        let (max_in_flight, batch_size) = limits(&self.dispatcher, &self.target);
        // Events read ahead of the calls that will carry them.
        let read_ahead = max_in_flight * batch_size;
        if in_order {
            // A retry left from before a restart still comes first.
            self.waiting_for = pending_retry(&self.dispatcher, self.target.id()).await;
        }
        let mut recheck = tokio::time::interval_at(
            tokio::time::Instant::now() + RECHECK_WAITING,
            RECHECK_WAITING,
        );
        let expires = subscription.expires_at().map(|at| {
            let left = u64::try_from(at.saturating_sub(now_millis())).unwrap_or(0);
            tokio::time::Instant::now() + Duration::from_millis(left)
        });
        let mut expired = false;
        // Armed only while there is progress to save: an idle worker has no timer that
        // wakes it.
        let flush = tokio::time::sleep(FLUSH_EVERY);
        tokio::pin!(flush);
        let mut flush_armed = false;
        loop {
            if !flush_armed && self.has_progress() {
                flush
                    .as_mut()
                    .reset(tokio::time::Instant::now() + FLUSH_EVERY);
                flush_armed = true;
            }
            let endpoint_down = breaker::is_open(self.target.consecutive_failures());
            let mut probe = None;
            let may_start = match endpoint_down {
                _ if self.waiting_for.is_some() => 0,
                false => max_in_flight,
                true if self.in_flight.is_empty() && !self.pending.is_empty() => {
                    probe = self.target.breaker.try_probe(self.probe_interval());
                    usize::from(probe.is_some())
                }
                true => 0,
            };
            while self.in_flight.len() < may_start && !self.pending.is_empty() {
                // A probe is one event, whatever the sink could carry.
                let size = if endpoint_down { 1 } else { batch_size };
                let batch: Vec<_> = self.pending.drain(..size.min(self.pending.len())).collect();
                self.start(batch, probe.take());
            }
            let wait_for_probe = endpoint_down
                && self.waiting_for.is_none()
                && self.in_flight.is_empty()
                && !self.pending.is_empty();
            let probe_at = self.probe_at();
            tokio::select! {
                biased;
                _ = self.cancel.cancelled() => break,
                Some(command) = self.control.recv() => self.command(command),
                Some(results) = self.in_flight.next(), if !self.in_flight.is_empty() => {
                    for (event, attempted) in results {
                        if self.finished(&event, attempted) {
                            // Disabled: save what we know and stop.
                            self.cancel.cancel();
                        }
                    }
                    if self.report.attempts.len() >= FLUSH_RECORDS {
                        self.flush().await;
                    }
                }
                events = self.feed.next(), if self.pending.len() < read_ahead => {
                    let subscription = &self.target.subscription;
                    self.pending.extend(events.into_iter().filter(|event| subscription.wants(event)));
                }
                _ = &mut flush, if flush_armed => {
                    flush_armed = false;
                    self.flush().await;
                }
                _ = tokio::time::sleep_until(probe_at), if wait_for_probe => {}
                _ = recheck.tick(), if self.waiting_for.is_some() => {
                    // Everything this worker reported is committed before the look.
                    self.flush().await;
                    if self.dispatcher.store().flush().await.is_ok() {
                        self.waiting_for = pending_retry(&self.dispatcher, self.target.id()).await;
                    }
                }
                _ = sleep_until_some(expires) => {
                    expired = true;
                    break;
                }
            }
        }
        self.finish_in_flight().await;
        // The position of a subscription that skipped its account's events is saved, so
        // a restart or the next node reads less of the log.
        self.feed.settle();
        let disabled = self.report.disable.is_some();
        self.flush().await;
        if disabled {
            if let Err(error) = self.dispatcher.store().flush().await {
                tracing::error!(%error, subscription = self.target.id(), "saving the disabling failed");
            }
            self.dispatcher.stop_worker_of(&self.target);
        }
        if expired {
            self.dispatcher.expire(&self.target).await;
        }
    }

    /// Starts one delivery call; a probe holds the breaker's slot until it is over.
    fn start(&mut self, batch: Vec<Arc<StoredEvent>>, probe: Option<ProbePermit>) {
        self.in_flight_seqs
            .extend(batch.iter().map(|event| event.seq));
        let dispatcher = self.dispatcher.clone();
        let target = self.target.clone();
        self.in_flight.push(Box::pin(async move {
            let attempted = dispatcher.attempt_batch(&target, &batch).await;
            drop(probe);
            batch.into_iter().zip(attempted).collect()
        }));
    }

    /// The wait between probes of an endpoint that is down.
    fn probe_interval(&self) -> Duration {
        breaker::probe_interval(
            &self.dispatcher.config().retry_schedule,
            self.target.consecutive_failures(),
        )
    }

    /// When to try for the probe slot again: when the interval has passed, or, while a
    /// retry's probe is under way, a little later (its end is not announced).
    fn probe_at(&self) -> tokio::time::Instant {
        let (next_at, in_flight) = self.target.breaker.next_probe();
        match in_flight {
            true => next_at.max(tokio::time::Instant::now() + PROBE_BUSY_POLL),
            false => next_at,
        }
    }

    fn command(&mut self, command: Control) {
        match command {
            Control::Rewind(cursor) => {
                // Never past what this node has seen of the log (the API refuses that
                // already; a rewind also comes from another node's announcement): a
                // cursor past the head would skip the events that get those positions.
                let cursor = cursor.min(self.dispatcher.store().head());
                // In-flight deliveries finish; everything after `cursor` is read again.
                self.pending.clear();
                self.feed.rewind(cursor);
                self.saved_cursor = i64::MAX; // force the next flush to save the cursor
            }
            Control::Resolved(seq) => {
                if self.waiting_for == Some(seq) {
                    self.waiting_for = None;
                }
            }
        }
    }

    /// Records a first attempt's outcome. Returns true when the subscription must stop.
    fn finished(&mut self, event: &StoredEvent, attempted: Attempted) -> bool {
        self.in_flight_seqs.remove(&event.seq);
        let outcome = record_first_attempt(
            &self.dispatcher,
            &self.target,
            &mut self.report,
            event,
            None,
            &attempted,
        );
        if outcome.scheduled && self.target.subscription.in_order() {
            // The next delivery waits until the retry set has delivered this one or
            // given up on it: the receiver sees the events in order.
            self.waiting_for = Some(event.seq);
        }
        // The worker stops; it leaves the running set only once the disabling is
        // committed, so nothing starts it again from the old state meanwhile.
        outcome.disabled
    }

    /// Every event at or below this has been delivered or put in the retry set.
    fn watermark(&self) -> i64 {
        let in_flight = self.in_flight_seqs.first().map(|seq| seq - 1);
        let pending = self.pending.front().map(|event| event.seq - 1);
        [in_flight, pending]
            .into_iter()
            .flatten()
            .fold(self.feed.seen(), i64::min)
    }

    /// Whether a flush would save anything.
    fn has_progress(&self) -> bool {
        self.watermark() != self.saved_cursor
            || self.report.delivered != 0
            || !self.report.attempts.is_empty()
            || !self.report.retries.is_empty()
            || self.report.disable.is_some()
    }

    async fn flush(&mut self) {
        if !self.has_progress() {
            return;
        }
        let cursor = self.watermark();
        let moved = cursor != self.saved_cursor;
        let report = Progress {
            subscription_id: self.report.subscription_id.clone(),
            cursor: moved.then_some(cursor),
            delivered: std::mem::take(&mut self.report.delivered),
            attempts: std::mem::take(&mut self.report.attempts),
            retries: std::mem::take(&mut self.report.retries),
            health: self.report.health.take(),
            disable: self.report.disable.take(),
            resync: None,
        };
        match self.dispatcher.store().record_progress(report).await {
            Ok(()) => self.saved_cursor = cursor,
            Err(error) => {
                tracing::error!(%error, subscription = self.target.id(), "saving progress failed")
            }
        }
    }

    /// On shutdown: give deliveries in flight a little time to finish. Those that do not
    /// stay behind the saved cursor and are delivered again after a restart.
    async fn finish_in_flight(&mut self) {
        let grace = tokio::time::sleep(self.dispatcher.config().shutdown_grace);
        tokio::pin!(grace);
        while !self.in_flight.is_empty() {
            tokio::select! {
                Some(results) = self.in_flight.next() => {
                    for (event, attempted) in results {
                        self.finished(&event, attempted);
                    }
                }
                _ = &mut grace => break,
            }
        }
    }
}

/// How many delivery calls a worker keeps in flight, and how many events each carries.
fn limits(dispatcher: &Dispatcher, target: &Target) -> (usize, usize) {
    match target.subscription.in_order() {
        true => (1, 1),
        false => (
            target.max_in_flight(dispatcher.config().max_in_flight),
            target.batch_size(),
        ),
    }
}

/// The first of a subscription's deliveries waiting in the retry set.
async fn pending_retry(dispatcher: &Dispatcher, id: &str) -> Option<i64> {
    match dispatcher.store().db().first_pending_retry(id).await {
        Ok(seq) => seq,
        Err(error) => {
            tracing::error!(%error, subscription = id, "reading pending retries failed");
            None
        }
    }
}

/// Completes at `at`, or never.
async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The delivery-log entry of one attempt.
/// What [`record_first_attempt`] decided.
pub(super) struct FirstAttempt {
    /// Failed: the delivery waits in the retry set.
    pub scheduled: bool,
    /// The subscription is disabled (the report says why): its deliveries stop.
    pub disabled: bool,
}

/// Records a first attempt's outcome in `report`, as every first delivery does (a
/// worker's, and a resync run's with its `resync_id`): a success is counted, a failure
/// gets an attempt record and a place in the retry set; the endpoint's health is noted.
pub(super) fn record_first_attempt(
    dispatcher: &Dispatcher,
    target: &Target,
    report: &mut Progress,
    event: &StoredEvent,
    resync_id: Option<&str>,
    attempted: &Attempted,
) -> FirstAttempt {
    let now = now_millis();
    let config = dispatcher.config();
    let verdict = policy::decide(
        &attempted.result,
        1,
        &config.retry_schedule,
        now,
        policy::jitter(),
    );
    let (health, too_long) = target.note(&attempted.result, now, config.disable_after);
    report.health = health.or(report.health.take());
    let scheduled = matches!(verdict.retry, RetryState::Scheduled { .. });
    if let RetryState::Scheduled {
        next_attempt_at, ..
    } = &verdict.retry
    {
        dispatcher.shared.retry_wake.at(*next_attempt_at);
    }
    if verdict.retry == RetryState::Delivered {
        // The common case costs a counter, not a row.
        report.delivered += 1;
    } else {
        tracing::debug!(subscription = target.id(), event = %event.id, "delivery failed; retry scheduled");
        report.attempts.push(attempt_record(
            event,
            resync_id,
            1,
            now,
            attempted,
            &verdict.retry,
        ));
        report.retries.push(RetryUpdate {
            seq: event.seq,
            resync_id: resync_id.map(str::to_owned),
            state: verdict.retry,
        });
    }
    let disable = verdict.disable.or(too_long);
    let disabled = disable.is_some();
    if let Some(reason) = disable {
        tracing::warn!(
            subscription = target.id(),
            reason = reason.message(),
            "subscription disabled"
        );
        report.disable = Some(reason);
    }
    FirstAttempt {
        scheduled,
        disabled,
    }
}

pub(super) fn attempt_record(
    event: &StoredEvent,
    resync_id: Option<&str>,
    attempt: u32,
    at: i64,
    attempted: &Attempted,
    state: &RetryState,
) -> AttemptRecord {
    let (outcome, next_attempt_at) = match state {
        RetryState::Delivered => ("delivered", None),
        RetryState::Scheduled {
            next_attempt_at, ..
        } => ("failed", Some(*next_attempt_at)),
        RetryState::Dead { .. } => ("dead", None),
    };
    AttemptRecord {
        seq: event.seq,
        event_id: event.id.clone(),
        resync_id: resync_id.map(str::to_owned),
        attempt,
        at,
        outcome,
        status: attempted.status,
        error: match &attempted.result {
            crate::sinks::AttemptResult::Failed { error, .. }
            | crate::sinks::AttemptResult::Rejected { error } => Some(error.clone()),
            crate::sinks::AttemptResult::Gone => Some("HTTP 410 Gone".to_owned()),
            crate::sinks::AttemptResult::Delivered => None,
        },
        latency_ms: attempted.latency.as_millis() as i64,
        response: attempted.response.clone(),
        next_attempt_at,
    }
}
