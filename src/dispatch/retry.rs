//! The retry scheduler: claims due entries of the retry set, attempts them again, and
//! records the outcome (delivered, rescheduled, or dead-lettered).
//!
//! Fair between subscriptions: a claim takes at most [`PER_SUBSCRIPTION`] retries of one
//! subscription at a time (counting those it has in flight), each attempt runs as a task
//! of its own whose end frees its slot at once, so a receiver that hangs holds its own
//! slots and nothing else; and while an endpoint is down its retries go through its
//! breaker, shared with its worker: one probe at a time, the rest postponed to the next
//! probe (not attempted, so they do not use up their retries).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::task::{Id, JoinError, JoinSet};
use tokio::time::Instant;

use super::breaker::{Admission, ProbePermit};
use super::engine::{Delivery, Report};
use super::{Dispatcher, Target};
use crate::model::{Millis, now_millis};
use crate::sinks::resync::resync_copy;
use crate::store::{DueRetry, Progress, StoreError};

/// Retries in flight at once, in all.
const MAX_IN_FLIGHT: usize = 128;
/// Retries of one subscription in flight at once.
const PER_SUBSCRIPTION: u32 = 8;
/// While retries are flowing, claims are made at most this often: each claim looks at
/// every due retry (to give each subscription its share), so not one per attempt.
const CLAIM_EVERY: Duration = Duration::from_millis(50);
/// Even when nothing is known to be due, look again this often (another process or a
/// re-enabled subscription may have made retries due).
const IDLE_POLL: Duration = Duration::from_secs(5);

/// What a retry's claim lasts beyond the delivery timeout.
const CLAIM_MARGIN: Duration = Duration::from_secs(5);
/// How soon a retry claimed for a subscription that does not run here is due again.
const UNCLAIMED_PAUSE: Duration = Duration::from_secs(1);
/// While another probe of a down endpoint is under way and past its interval, its
/// retries wait at least this long.
const PROBE_BUSY_PAUSE: Duration = Duration::from_secs(1);

/// An attempt's subscription and its progress report (`None`: nothing to record).
type Finished = (String, Option<Progress>);

pub(super) struct Scheduler {
    dispatcher: Dispatcher,
    attempts: JoinSet<Finished>,
    /// The subscription of each attempt under way (a task that panicked says only its id).
    tasks: HashMap<Id, String>,
    /// Attempts under way, per subscription.
    in_flight: HashMap<String, u32>,
}

impl Scheduler {
    pub(super) fn new(dispatcher: Dispatcher) -> Scheduler {
        Scheduler {
            dispatcher,
            attempts: JoinSet::new(),
            tasks: HashMap::new(),
            in_flight: HashMap::new(),
        }
    }

    pub(super) async fn run(mut self) {
        let cancel = self.dispatcher.shared.cancel.clone();
        let mut next_claim = Instant::now();
        let mut last_claim = Instant::now();
        loop {
            let room = self.attempts.len() < MAX_IN_FLIGHT;
            if room && Instant::now() >= next_claim {
                last_claim = Instant::now();
                next_claim = match self.claim().await {
                    // Every free slot taken: more may be due.
                    Ok(true) => last_claim + CLAIM_EVERY,
                    Ok(false) => {
                        let wait = self.time_to_next().await;
                        Instant::now() + wait
                    }
                    Err(error) => {
                        tracing::error!(%error, "claiming due retries failed");
                        last_claim + Duration::from_secs(1)
                    }
                };
            }
            // A finished attempt frees a slot (and its subscription's share); a hint
            // says a retry is due sooner. Either way, claim again soon, not at once.
            let soon = last_claim + CLAIM_EVERY;
            let room = self.attempts.len() < MAX_IN_FLIGHT;
            let wake = &self.dispatcher.shared.retry_wake;
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                Some(done) = self.attempts.join_next_with_id(), if !self.attempts.is_empty() => {
                    self.finished(done).await;
                    next_claim = next_claim.min(soon);
                }
                _ = wake.notify.notified() => next_claim = next_claim.min(soon),
                _ = tokio::time::sleep_until(next_claim), if room => {}
            }
        }
        self.drain().await;
    }

    /// How long until the next claim: until the earliest known retry, at most
    /// [`IDLE_POLL`]. One due already (it came due since the claim looked, or it waits
    /// for its subscription's share) is looked at again after [`CLAIM_EVERY`].
    async fn time_to_next(&self) -> Duration {
        let wake = &self.dispatcher.shared.retry_wake;
        let hinted = wake.earliest.load(Ordering::Acquire);
        let stored = self
            .dispatcher
            .store()
            .db()
            .next_retry_at()
            .await
            .ok()
            .flatten()
            .unwrap_or(Millis::MAX);
        if let Ok(count) = self.dispatcher.store().db().pending_retry_count().await {
            metrics::gauge!("reelay_retry_queue_depth").set(count as f64);
            self.dispatcher.stats().retry_depth(count, now_millis());
        }
        let now = now_millis();
        let next = hinted.min(stored);
        if next <= now {
            return CLAIM_EVERY;
        }
        // A millisecond more: a retry due at `next` is due once that millisecond is over.
        Duration::from_millis(
            u64::try_from(next - now)
                .unwrap_or(u64::MAX)
                .saturating_add(1),
        )
        .min(IDLE_POLL)
    }

    /// Claims the retries that are due, within the free slots and each subscription's
    /// share, and starts them. Returns whether it took every free slot.
    async fn claim(&mut self) -> Result<bool, StoreError> {
        let now = now_millis();
        // A hint that has come due is answered by this claim; later hints stay.
        let wake = &self.dispatcher.shared.retry_wake;
        let _ = wake
            .earliest
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |hint| {
                (hint <= now).then_some(Millis::MAX)
            });
        let free = MAX_IN_FLIGHT.saturating_sub(self.attempts.len());
        // Long enough for the attempt and the commit of its outcome; a crash meanwhile
        // delays the retry by this much, no more.
        let lease = self.dispatcher.config().delivery_timeout + CLAIM_MARGIN;
        let due = self
            .dispatcher
            .store()
            .db()
            .claim_due_retries(
                now,
                now.saturating_add(millis(lease)),
                u32::try_from(free).unwrap_or(u32::MAX),
                PER_SUBSCRIPTION,
                &self.in_flight,
            )
            .await?;
        let filled = due.len() >= free;
        tracing::debug!(claimed = due.len(), free, "retries claimed");
        let mut postponed = HashSet::new();
        // Per subscription: retries given back in this claim because of its pace.
        let mut paced: HashMap<String, u32> = HashMap::new();
        for retry in due {
            let Some(target) = self.dispatcher.target(&retry.subscription_id) else {
                // Deleted or disabled meanwhile (the entry waits in the store), or not
                // started yet, e.g. while the lease pass takes it back after the database
                // was unreachable. Given back, it is due again after a short pause (not
                // at once: the scheduler would spin on it until the worker runs).
                self.unclaim(&retry, now_millis() + millis(UNCLAIMED_PAUSE))
                    .await;
                continue;
            };
            let schedule = &self.dispatcher.config().retry_schedule;
            let admission = target.admit(schedule, true, 1);
            if let Admission::Paced { next_at } = admission {
                // Over its rate limit (or paused by a 429): given back, spaced by the
                // rate, and the scheduler wakes for the first.
                let count = paced.entry(retry.subscription_id.clone()).or_default();
                let spacing = target
                    .subscription
                    .rate_limit
                    .map_or(0, |limit| 1_000 / i64::from(limit.per_second));
                let wait = next_at.saturating_duration_since(Instant::now());
                let at = now_millis().saturating_add(millis(wait)) + i64::from(*count) * spacing;
                *count += 1;
                self.unclaim(&retry, at).await;
                self.dispatcher.shared.retry_wake.at(at);
                continue;
            }
            if !matches!(admission, Admission::Open)
                && postponed.insert(retry.subscription_id.clone())
            {
                // The endpoint is down: its other retries wait for the next probe.
                self.postpone(&target).await;
            }
            let probe = match admission {
                Admission::Open => None,
                Admission::Probe(permit) => Some(permit),
                Admission::Closed { .. } | Admission::Paced { .. } => {
                    self.unclaim(&retry, next_probe_millis(&target)).await;
                    continue;
                }
            };
            *self
                .in_flight
                .entry(retry.subscription_id.clone())
                .or_default() += 1;
            let subscription = retry.subscription_id.clone();
            let task = self
                .attempts
                .spawn(attempt(self.dispatcher.clone(), target, retry, probe));
            self.tasks.insert(task.id(), subscription);
        }
        Ok(filled)
    }

    /// Records what an attempt found, and frees its slot.
    async fn finished(&mut self, done: Result<(Id, Finished), JoinError>) {
        let (id, progress) = match done {
            Ok((task, (subscription, progress))) => {
                self.tasks.remove(&task);
                (subscription, progress)
            }
            Err(error) => {
                // Its claim runs out and it is tried again.
                tracing::error!(%error, "a retry attempt failed to finish");
                match self.tasks.remove(&error.id()) {
                    Some(subscription) => (subscription, None),
                    None => return,
                }
            }
        };
        if let Some(count) = self.in_flight.get_mut(&id) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.in_flight.remove(&id);
            }
        }
        let Some(progress) = progress else { return };
        let disabled = progress.disable.is_some();
        let store = self.dispatcher.store();
        if let Err(error) = store.record_progress(progress).await {
            tracing::error!(%error, subscription = %id, "saving a retry's outcome failed");
            return;
        }
        if disabled {
            // Its worker stops once the disabling is committed, so nothing starts it
            // again from the old state meanwhile.
            self.dispatcher.commit_disabling(&id).await;
            self.dispatcher.remove(&id);
        }
    }

    /// At shutdown: attempts under way get the grace period to finish and be recorded;
    /// the others' claims run out and they are tried again after the restart.
    async fn drain(&mut self) {
        let grace = tokio::time::sleep(self.dispatcher.config().shutdown_grace);
        tokio::pin!(grace);
        while !self.attempts.is_empty() {
            tokio::select! {
                Some(done) = self.attempts.join_next_with_id() => self.finished(done).await,
                _ = &mut grace => break,
            }
        }
        self.attempts.abort_all();
    }

    /// Gives a claimed retry back unattempted: it is due again at `at`.
    async fn unclaim(&self, retry: &DueRetry, at: Millis) {
        if let Err(error) = self.dispatcher.store().db().unclaim_retry(retry, at).await {
            tracing::warn!(%error, subscription = %retry.subscription_id, "giving a retry back failed; it waits for its claim to run out");
        }
    }

    /// Moves a down endpoint's due retries to its next probe, so claims do not look at
    /// them again and again meanwhile.
    async fn postpone(&self, target: &Target) {
        let at = next_probe_millis(target);
        if let Err(error) = self
            .dispatcher
            .store()
            .db()
            .postpone_retries(target.id(), at)
            .await
        {
            tracing::warn!(%error, subscription = target.id(), "postponing the retries of a down endpoint failed");
        }
    }
}

fn millis(duration: Duration) -> Millis {
    Millis::try_from(duration.as_millis()).unwrap_or(Millis::MAX)
}

/// When the breaker lets the next probe of `target` go, as a time in the retry set.
fn next_probe_millis(target: &Target) -> Millis {
    let (next_at, in_flight) = target.breaker.next_probe();
    let mut wait = next_at.saturating_duration_since(Instant::now());
    if in_flight {
        wait = wait.max(PROBE_BUSY_PAUSE);
    }
    now_millis().saturating_add(millis(wait))
}

/// One retry, as a task of its own; a probe of a down endpoint holds the breaker's slot
/// until it is over.
async fn attempt(
    dispatcher: Dispatcher,
    target: Arc<Target>,
    retry: DueRetry,
    probe: Option<ProbePermit>,
) -> Finished {
    let progress = attempt_once(&dispatcher, &target, &retry).await;
    drop(probe);
    (retry.subscription_id, progress)
}

/// Attempts one retry; the report to record (`None` when there is none: the event is
/// gone, or reading it failed and the claim running out brings it back).
async fn attempt_once(
    dispatcher: &Dispatcher,
    target: &Target,
    retry: &DueRetry,
) -> Option<Progress> {
    let event = match dispatcher.store().db().event_by_seq(retry.seq).await {
        // A resync delivery is retried as the marked copy it was.
        Ok(Some(event)) => Arc::new(match &retry.resync_id {
            Some(resync_id) => resync_copy(&event, resync_id),
            None => event,
        }),
        Ok(None) => return None,
        Err(error) => {
            tracing::error!(%error, "reading an event to retry failed");
            return None;
        }
    };
    let attempt = retry.attempts + 1;
    let attempted = dispatcher.attempt(target, &event, attempt).await;
    let delivery = Delivery {
        event: &event,
        resync_id: retry.resync_id.as_deref(),
        attempt,
    };
    let mut report = Report::new(&retry.subscription_id);
    let recorded = report.record(dispatcher, target, delivery, &attempted);
    // An in-order subscription (or one ordered per entity) waits for this retry before
    // its next delivery (of that entity).
    if target.subscription.waits_for_retries()
        && retry.resync_id.is_none()
        && recorded.outcome.retry_at().is_none()
    {
        dispatcher.retry_resolved(target.id(), event.seq);
    }
    Some(report.take(None, None))
}
