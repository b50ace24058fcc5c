//! The retry scheduler: claims due entries of the retry set, attempts them again, and
//! records the outcome (delivered, rescheduled, or dead-lettered).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;

use super::worker::attempt_record;
use super::{Dispatcher, policy};
use crate::model::{Millis, now_millis};
use crate::sinks::resync::resync_copy;
use crate::store::{DueRetry, Progress, RetryState, RetryUpdate};

/// Retries claimed per pass.
const CLAIM_BATCH: u32 = 256;
/// Retries in flight at once.
const MAX_IN_FLIGHT: usize = 128;
/// Even when nothing is known to be due, look again this often (another process or a
/// re-enabled subscription may have made retries due).
const IDLE_POLL: Duration = Duration::from_secs(5);

/// What a retry's claim lasts beyond the delivery timeout.
const CLAIM_MARGIN: Duration = Duration::from_secs(5);
/// How soon a retry claimed for a subscription that does not run here is due again.
const UNCLAIMED_PAUSE: Duration = Duration::from_secs(1);

pub(super) struct Scheduler {
    dispatcher: Dispatcher,
}

impl Scheduler {
    pub(super) fn new(dispatcher: Dispatcher) -> Scheduler {
        Scheduler { dispatcher }
    }

    pub(super) async fn run(self) {
        let cancel = self.dispatcher.shared.cancel.clone();
        loop {
            let wait = match self.pass().await {
                Ok(true) => continue,
                Ok(false) => self.time_to_next().await,
                Err(error) => {
                    tracing::error!(%error, "retry pass failed");
                    Duration::from_secs(1)
                }
            };
            let wake = &self.dispatcher.shared.retry_wake;
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
                _ = wake.notify.notified() => {}
            }
        }
    }

    /// How long to sleep: until the earliest known retry, at most [`IDLE_POLL`].
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
        let next = hinted.min(stored);
        if let Ok(count) = self.dispatcher.store().db().pending_retry_count().await {
            metrics::gauge!("reelay_retry_queue_depth").set(count as f64);
        }
        let wait = next.saturating_sub(now_millis()).max(0) as u64;
        Duration::from_millis(wait).min(IDLE_POLL)
    }

    /// Attempts every retry that is due now. Returns whether it found any.
    async fn pass(&self) -> Result<bool, crate::store::StoreError> {
        let now = now_millis();
        // A hint that has come due is answered by this pass; later hints stay.
        let wake = &self.dispatcher.shared.retry_wake;
        let _ = wake
            .earliest
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |hint| {
                (hint <= now).then_some(Millis::MAX)
            });
        // Long enough for the attempt and the commit of its outcome; a crash meanwhile
        // delays the retry by this much, no more.
        let lease = self.dispatcher.config().delivery_timeout + CLAIM_MARGIN;
        let due = self
            .dispatcher
            .store()
            .db()
            .claim_due_retries(now, now + lease.as_millis() as Millis, CLAIM_BATCH)
            .await?;
        if due.is_empty() {
            return Ok(false);
        }
        let mut reports: HashMap<String, Progress> = HashMap::new();
        let mut attempts = FuturesUnordered::new();
        let mut due = due.into_iter();
        loop {
            while attempts.len() < MAX_IN_FLIGHT {
                let Some(retry) = due.next() else { break };
                attempts.push(self.attempt(retry));
            }
            match attempts.next().await {
                Some(Some((id, update))) => merge(
                    reports.entry(id.clone()).or_insert_with(|| Progress {
                        subscription_id: id,
                        ..Progress::default()
                    }),
                    update,
                ),
                Some(None) => {}
                None => break,
            }
        }
        let mut disabled = Vec::new();
        for report in reports.into_values() {
            if report.disable.is_some() {
                disabled.push(report.subscription_id.clone());
            }
            self.dispatcher.store().record_progress(report).await?;
        }
        if !disabled.is_empty() {
            // Their workers stop once the disabling is committed, so nothing starts them
            // again from the old state meanwhile.
            self.dispatcher.store().flush().await?;
            for id in disabled {
                self.dispatcher.remove(&id);
            }
        }
        Ok(true)
    }

    /// One retry; `None` when its subscription does not run here.
    async fn attempt(&self, retry: DueRetry) -> Option<(String, Progress)> {
        let Some(target) = self.dispatcher.target(&retry.subscription_id) else {
            self.unclaim(&retry).await;
            return None;
        };
        let event = match self.dispatcher.store().db().event_by_seq(retry.seq).await {
            // A resync delivery is retried as the marked copy it was.
            Ok(Some(event)) => std::sync::Arc::new(match &retry.resync_id {
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
        let attempted = self.dispatcher.attempt(&target, &event).await;
        let now = now_millis();
        let config = self.dispatcher.config();
        let verdict = policy::decide(
            &attempted.result,
            attempt,
            &config.retry_schedule,
            now,
            policy::jitter(),
        );
        let (health, too_long) = target.note(&attempted.result, now, config.disable_after);
        match &verdict.retry {
            RetryState::Delivered => {
                tracing::info!(subscription = target.id(), event = %event.id, attempt, "delivered on retry")
            }
            RetryState::Scheduled {
                next_attempt_at, ..
            } => self.dispatcher.shared.retry_wake.at(*next_attempt_at),
            RetryState::Dead { .. } => {
                tracing::warn!(subscription = target.id(), event = %event.id, attempt, "retries used up; dead-lettered")
            }
        }
        // An in-order subscription waits for this retry before its next delivery.
        if target.subscription.in_order()
            && retry.resync_id.is_none()
            && !matches!(verdict.retry, RetryState::Scheduled { .. })
        {
            self.dispatcher.retry_resolved(target.id(), event.seq).await;
        }
        let disable = verdict.disable.clone().or(too_long);
        if let Some(reason) = &disable {
            tracing::warn!(
                subscription = target.id(),
                reason = reason.message(),
                "subscription disabled"
            );
        }
        let progress = Progress {
            subscription_id: retry.subscription_id.clone(),
            cursor: None,
            delivered: 0,
            attempts: vec![attempt_record(
                &event,
                retry.resync_id.as_deref(),
                attempt,
                now,
                &attempted,
                &verdict.retry,
            )],
            retries: vec![RetryUpdate {
                seq: event.seq,
                resync_id: retry.resync_id.clone(),
                state: verdict.retry,
            }],
            health,
            disable,
            resync: None,
        };
        Some((retry.subscription_id, progress))
    }

    /// Gives back a retry claimed for a subscription whose worker does not run here:
    /// deleted or disabled meanwhile (the entry waits in the store), or not started
    /// yet, e.g. while the lease pass takes it back after the database was unreachable.
    /// Without this its claim would hold it for the delivery timeout and more; given
    /// back, it is due again after a short pause (not at once: the scheduler would spin
    /// on it until the worker runs).
    async fn unclaim(&self, retry: &DueRetry) {
        let at = now_millis() + UNCLAIMED_PAUSE.as_millis() as Millis;
        if let Err(error) = self.dispatcher.store().db().unclaim_retry(retry, at).await {
            tracing::warn!(%error, subscription = %retry.subscription_id, "giving a retry back failed; it waits for its claim to run out");
        }
    }
}

fn merge(into: &mut Progress, from: Progress) {
    into.attempts.extend(from.attempts);
    into.retries.extend(from.retries);
    into.health = from.health.or(into.health);
    into.disable = from.disable.or(into.disable.take());
}
