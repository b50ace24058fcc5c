//! The delivery engine: what every delivery path does around an attempt, written once.
//! The paths are a worker's first attempts, the retry scheduler's retries and a resync
//! run's copies; each keeps only what is its own (where its events come from, how many it
//! keeps in flight, when it saves).
//!
//! One delivery goes through four steps, each shared:
//! 1. admission: whether a call may start now ([`Target::admit`]: the endpoint's breaker,
//!    one probe at a time while it is down; then the subscription's pace, its
//!    `rateLimit` and any `429` pause, [`super::pace`]);
//! 2. the call through the subscription's sink ([`call`], over
//!    [`Dispatcher::attempt_batch`]);
//! 3. the decision: what the result means for the delivery and the subscription, a pure
//!    function of the result, the endpoint's state and the policy ([`policy::decide`]),
//!    given as an [`AttemptOutcome`];
//! 4. the record: the outcome into the path's progress [`Report`], committed with its
//!    cursor or resync position so neither passes a failure not yet in the retry set.
//!
//! A new delivery mode (in order per entity) is a new gate in step 1 or a new caller of
//! these steps, and holds for first attempts, retries and resyncs alike, as the rate
//! limit does.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures::future::BoxFuture;

use super::breaker::{Admission, ProbePermit};
use super::policy::{self, AttemptOutcome, Decision, Endpoint, Policy};
use super::{DispatchConfig, Dispatcher, RetryWake, Target};
use crate::config::RetrySchedule;
use crate::model::{Millis, StoredEvent, now_millis};
use crate::sinks::{AttemptResult, Attempted};
use crate::store::{AttemptRecord, Progress, ResyncProgress, RetryUpdate};

/// A delivery call under way, as a future that owns what it needs.
pub(super) type Call<T> = BoxFuture<'static, Called<T>>;

/// What a delivery call produced: the caller's `tag`, and each event with its result, in
/// the order given.
pub(super) struct Called<T> {
    pub tag: T,
    pub results: Vec<(Arc<StoredEvent>, Attempted)>,
}

/// Starts one delivery call for `events` (one event for a webhook, a batch for the AWS
/// sinks). A probe of a down endpoint holds the breaker's slot until the call is over.
pub(super) fn call<T: Send + 'static>(
    dispatcher: &Dispatcher,
    target: &Arc<Target>,
    events: Vec<Arc<StoredEvent>>,
    tag: T,
    probe: Option<ProbePermit>,
) -> Call<T> {
    let (dispatcher, target) = (dispatcher.clone(), target.clone());
    Box::pin(async move {
        // A worker's and a resync's calls are first attempts; retries go one by one.
        let attempted = dispatcher.attempt_batch(&target, &events, 1).await;
        drop(probe);
        Called {
            tag,
            results: events.into_iter().zip(attempted).collect(),
        }
    })
}

impl Target {
    /// Whether a delivery call carrying `events` may start now: the endpoint's breaker
    /// (see [`super::breaker::Breaker::admit`]), then the subscription's pace (its rate
    /// limit, a `429`'s pause: [`super::pace`]). An admitted call has taken its tokens.
    pub(super) fn admit(
        &self,
        schedule: &RetrySchedule,
        may_probe: bool,
        events: usize,
    ) -> Admission {
        if let Some(next_at) = self.pace.wait() {
            return Admission::Paced { next_at };
        }
        let admission = self
            .breaker
            .admit(self.consecutive_failures(), schedule, may_probe);
        match &admission {
            Admission::Open => self.pace.take(events),
            // A probe is one event, whatever the caller could carry.
            Admission::Probe(_) => self.pace.take(1),
            Admission::Closed { .. } | Admission::Paced { .. } => {}
        }
        admission
    }

    /// Decides what an attempt's result means and moves the endpoint's state on. Under
    /// the lock, so attempts finishing together each see the others' failures.
    fn conclude(
        &self,
        result: &AttemptResult,
        attempt: u32,
        config: &DispatchConfig,
        now: Millis,
    ) -> Decision {
        // A poisoned lock only means another task panicked mid-update of a timestamp.
        let mut failing_since = self.failing_since.lock().unwrap_or_else(|e| e.into_inner());
        let before = Endpoint {
            failing_since: *failing_since,
            consecutive_failures: self.consecutive_failures(),
        };
        let policy = Policy {
            schedule: &config.retry_schedule,
            disable_after: config.disable_after,
        };
        let decision = policy::decide(result, attempt, before, policy, now, policy::jitter());
        if let AttemptResult::Throttled { retry_after, .. } = result {
            // The endpoint asked for less: every path pauses, then goes on at its pace.
            let pause = retry_after.unwrap_or(super::pace::THROTTLED_PAUSE);
            self.pace.hold(tokio::time::Instant::now() + pause);
        }
        *failing_since = decision.endpoint.failing_since;
        // Written only here, under the lock; read without it (the breaker's check).
        self.consecutive_failures
            .store(decision.endpoint.consecutive_failures, Ordering::Relaxed);
        decision
    }
}

/// Which delivery an attempt was.
#[derive(Debug, Clone, Copy)]
pub(super) struct Delivery<'a> {
    pub event: &'a StoredEvent,
    /// The resync run it belongs to; `None` for an incremental delivery.
    pub resync_id: Option<&'a str>,
    /// 1 for the first attempt (not in the retry set yet), then the retry set's count.
    pub attempt: u32,
}

/// What [`Report::record`] decided about one attempt.
#[derive(Debug)]
pub(super) struct Recorded {
    pub outcome: AttemptOutcome,
    /// The subscription is now disabled (the report says why): its deliveries stop once
    /// the report is committed.
    pub disabled: bool,
}

/// What a delivery path learned about one subscription since its last save.
pub(super) struct Report {
    progress: Progress,
}

impl Report {
    pub(super) fn new(subscription_id: &str) -> Report {
        Report {
            progress: Progress {
                subscription_id: subscription_id.to_owned(),
                ..Progress::default()
            },
        }
    }

    /// Decides what an attempt's result means and records it: a first attempt's success
    /// is counted, every other outcome gets an attempt record and its state in the retry
    /// set; the endpoint's health is noted, and a disabling kept.
    pub(super) fn record(
        &mut self,
        dispatcher: &Dispatcher,
        target: &Target,
        delivery: Delivery<'_>,
        attempted: &Attempted,
    ) -> Recorded {
        let config = dispatcher.config();
        let wake = &dispatcher.shared.retry_wake;
        self.record_at(config, wake, target, delivery, attempted, now_millis())
    }

    /// [`Report::record`] with the settings, the retry scheduler's wake-up and the time
    /// given.
    fn record_at(
        &mut self,
        config: &DispatchConfig,
        wake: &RetryWake,
        target: &Target,
        delivery: Delivery<'_>,
        attempted: &Attempted,
        now: Millis,
    ) -> Recorded {
        let Delivery { event, attempt, .. } = delivery;
        let decision = target.conclude(&attempted.result, attempt, config, now);
        let report = &mut self.progress;
        report.health = decision.health.or(report.health.take());
        let subscription = target.id();
        let account = target.subscription.account.as_str();
        match &decision.outcome {
            AttemptOutcome::Delivered if attempt == 1 => {}
            AttemptOutcome::Delivered => {
                tracing::info!(account, subscription, event = %event.id, attempt, "delivered on retry")
            }
            AttemptOutcome::Retry { at, reason } => {
                wake.at(*at);
                tracing::debug!(account, subscription, event = %event.id, attempt, status = attempted.status, error = %reason, "delivery failed; retry scheduled");
            }
            AttemptOutcome::Dead { reason } if attempt > 1 => {
                tracing::warn!(account, subscription, event = %event.id, attempt, status = attempted.status, error = %reason, "retries used up; dead-lettered")
            }
            AttemptOutcome::Dead { reason } | AttemptOutcome::Rejected { reason } => {
                tracing::debug!(account, subscription, event = %event.id, attempt, error = %reason, "delivery dead-lettered")
            }
        }
        if matches!(
            decision.outcome,
            AttemptOutcome::Dead { .. } | AttemptOutcome::Rejected { .. }
        ) {
            // Rare: a lookup of the handle each time costs nothing that matters.
            metrics::counter!("reelay_dead_letters_total").increment(1);
        }
        if attempt == 1 && decision.outcome == AttemptOutcome::Delivered {
            // The common case costs a counter, not a row.
            report.delivered += 1;
        } else {
            report
                .attempts
                .push(attempt_record(delivery, now, attempted, &decision.outcome));
            report.retries.push(RetryUpdate {
                seq: event.seq,
                resync_id: delivery.resync_id.map(str::to_owned),
                state: decision.outcome.retry_state(attempt),
            });
        }
        let disabled = decision.disable.is_some();
        if let Some(reason) = decision.disable {
            tracing::warn!(
                account,
                subscription,
                reason = reason.message(),
                "subscription disabled"
            );
            report.disable = Some(reason);
        }
        Recorded {
            outcome: decision.outcome,
            disabled,
        }
    }

    /// Whether there is no outcome to save.
    pub(super) fn is_empty(&self) -> bool {
        let report = &self.progress;
        report.delivered == 0
            && report.attempts.is_empty()
            && report.retries.is_empty()
            && report.disable.is_none()
    }

    /// Attempt records waiting to be saved.
    pub(super) fn records(&self) -> usize {
        self.progress.attempts.len()
    }

    /// Whether the outcomes disable the subscription.
    pub(super) fn disables(&self) -> bool {
        self.progress.disable.is_some()
    }

    /// The report to save, with the path's position (an incremental cursor, or a resync
    /// run's progress); the next one starts empty.
    pub(super) fn take(&mut self, cursor: Option<i64>, resync: Option<ResyncProgress>) -> Progress {
        let report = &mut self.progress;
        Progress {
            subscription_id: report.subscription_id.clone(),
            cursor,
            delivered: std::mem::take(&mut report.delivered),
            attempts: std::mem::take(&mut report.attempts),
            retries: std::mem::take(&mut report.retries),
            health: report.health.take(),
            disable: report.disable.take(),
            resync: resync.map(Box::new),
        }
    }
}

impl Dispatcher {
    /// Waits until a queued report that disables a subscription is committed: only then
    /// may its deliveries stop, so nothing starts them again from the old state meanwhile.
    pub(super) async fn commit_disabling(&self, id: &str) {
        if let Err(error) = self.store().flush().await {
            tracing::error!(%error, subscription = id, "saving the disabling failed");
        }
    }
}

/// The delivery-log entry of one attempt.
fn attempt_record(
    delivery: Delivery<'_>,
    at: Millis,
    attempted: &Attempted,
    outcome: &AttemptOutcome,
) -> AttemptRecord {
    let event = delivery.event;
    AttemptRecord {
        seq: event.seq,
        event_id: event.id.clone(),
        resync_id: delivery.resync_id.map(str::to_owned),
        attempt: delivery.attempt,
        at,
        outcome: outcome.record_name(),
        status: attempted.status,
        error: match &attempted.result {
            AttemptResult::Failed { error, .. }
            | AttemptResult::Throttled { error, .. }
            | AttemptResult::Rejected { error } => Some(error.clone()),
            AttemptResult::Gone => Some(policy::GONE.to_owned()),
            AttemptResult::Delivered => None,
        },
        latency_ms: attempted.latency.as_millis() as i64,
        response: attempted.response.clone(),
        next_attempt_at: outcome.retry_at(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicI64;
    use std::time::Duration;

    use tokio::sync::Notify;

    use super::*;
    use crate::model::{
        Destination, DisabledReason, EventFilter, Format, Subscription, SubscriptionKind,
    };
    use crate::store::{Health, RetryState};

    const NOW: Millis = 1_000_000;

    fn config() -> DispatchConfig {
        DispatchConfig {
            retry_schedule: RetrySchedule(vec![Duration::from_secs(10), Duration::from_secs(60)]),
            disable_after: Duration::from_secs(3_600),
            max_in_flight: 64,
            delivery_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(1),
            lease_ttl: Duration::from_secs(30),
            max_page_bytes: 1 << 20,
            metrics: crate::metrics_scope::MetricsScope::default(),
        }
    }

    fn wake() -> RetryWake {
        RetryWake {
            earliest: AtomicI64::new(Millis::MAX),
            notify: Notify::new(),
        }
    }

    fn sinks() -> Arc<crate::sinks::Sinks> {
        Arc::new(
            crate::sinks::Sinks::new(crate::sinks::SinkConfig::new(Duration::from_secs(10), true))
                .expect("a webhook client"),
        )
    }

    fn target() -> Target {
        Target::new(
            Subscription {
                id: "sub_1".into(),
                account: "a".into(),
                kind: SubscriptionKind::Standing,
                destination: Destination::Webhook(crate::sinks::webhook::WebhookDestination {
                    url: "http://127.0.0.1:9/".into(),
                }),
                filter: EventFilter {
                    events: vec!["asset-updated".into()],
                    topics: Vec::new(),
                },
                payload_filter: None,
                transform: None,
                rate_limit: None,
                ordering: crate::model::Ordering::None,
                format: Format::Native,
                secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into(),
                public_key: None,
                previous_secret: None,
                created_at: 0,
                cursor: 0,
                disabled: None,
                disabled_at: None,
                failing_since: None,
                last_success_at: None,
                delivered: 0,
            },
            &sinks(),
        )
        .expect("a usable subscription")
    }

    fn event(seq: i64) -> StoredEvent {
        StoredEvent {
            seq,
            account: "a".into(),
            id: format!("evt_{seq}"),
            name: "asset-updated".into(),
            topic: "asset-operations".into(),
            entity_key: None,
            occurred_at: 0,
            received_at: 0,
            body: "{}".into(),
            trace: None,
        }
    }

    fn attempted(result: AttemptResult) -> Attempted {
        Attempted {
            status: match &result {
                AttemptResult::Delivered => Some(200),
                AttemptResult::Failed { .. } => Some(503),
                AttemptResult::Throttled { .. } => Some(429),
                AttemptResult::Gone => Some(410),
                AttemptResult::Rejected { .. } => None,
            },
            result,
            latency: Duration::from_millis(7),
            response: None,
        }
    }

    fn failed() -> Attempted {
        attempted(AttemptResult::Failed {
            error: "HTTP 503".into(),
            retry_after: None,
        })
    }

    fn first(event: &StoredEvent) -> Delivery<'_> {
        Delivery {
            event,
            resync_id: None,
            attempt: 1,
        }
    }

    #[test]
    fn a_first_attempt_that_arrives_costs_a_counter_not_a_row() {
        let (config, wake, target) = (config(), wake(), target());
        let mut report = Report::new(target.id());
        assert!(report.is_empty());
        let event = event(5);
        let ok = attempted(AttemptResult::Delivered);
        let recorded = report.record_at(&config, &wake, &target, first(&event), &ok, NOW);
        assert_eq!(recorded.outcome, AttemptOutcome::Delivered);
        assert!(!recorded.disabled);
        assert!(!report.is_empty());
        assert_eq!(report.records(), 0);
        let progress = report.take(Some(5), None);
        assert_eq!(progress.delivered, 1);
        assert_eq!(progress.cursor, Some(5));
        assert!(progress.attempts.is_empty() && progress.retries.is_empty());
        assert_eq!(progress.health, Some(Health::Succeeded { at: NOW }));
        // The next report starts empty.
        assert!(report.is_empty());
        assert_eq!(wake.earliest.load(Ordering::Relaxed), Millis::MAX);
    }

    #[test]
    fn a_failed_first_attempt_goes_to_the_retry_set_and_wakes_the_scheduler() {
        let (config, wake, target) = (config(), wake(), target());
        let mut report = Report::new(target.id());
        let event = event(7);
        let recorded = report.record_at(&config, &wake, &target, first(&event), &failed(), NOW);
        let at = recorded.outcome.retry_at().expect("a retry");
        // The schedule's first delay, jittered by at most a fifth.
        assert!((NOW + 8_000..=NOW + 12_000).contains(&at), "{at}");
        assert_eq!(wake.earliest.load(Ordering::Relaxed), at);
        assert_eq!(target.consecutive_failures(), 1);
        let progress = report.take(None, None);
        assert_eq!(progress.delivered, 0);
        let [record] = progress.attempts.as_slice() else {
            panic!("one attempt record: {:?}", progress.attempts)
        };
        assert_eq!(
            (record.seq, record.attempt, record.outcome, record.status),
            (7, 1, "failed", Some(503))
        );
        assert_eq!(record.error.as_deref(), Some("HTTP 503"));
        assert_eq!(record.next_attempt_at, Some(at));
        assert_eq!(
            progress.retries[0].state,
            RetryState::Scheduled {
                attempts: 1,
                next_attempt_at: at,
                error: "HTTP 503".into()
            }
        );
        assert_eq!(progress.health, Some(Health::Failed { at: NOW }));
    }

    #[test]
    fn a_retry_that_arrives_is_recorded_and_leaves_the_retry_set_and_heals_the_endpoint() {
        let (config, wake, target) = (config(), wake(), target());
        let mut report = Report::new(target.id());
        let event = event(9);
        report.record_at(&config, &wake, &target, first(&event), &failed(), NOW);
        let retry = Delivery {
            event: &event,
            resync_id: Some("rsy_1"),
            attempt: 2,
        };
        let ok = attempted(AttemptResult::Delivered);
        let recorded = report.record_at(&config, &wake, &target, retry, &ok, NOW + 10_000);
        assert_eq!(recorded.outcome, AttemptOutcome::Delivered);
        assert_eq!(target.consecutive_failures(), 0);
        let progress = report.take(None, None);
        assert_eq!(progress.delivered, 0);
        assert_eq!(progress.attempts[1].outcome, "delivered");
        assert_eq!(progress.attempts[1].resync_id.as_deref(), Some("rsy_1"));
        assert_eq!(progress.retries[1].state, RetryState::Delivered);
        // The newest health wins.
        assert_eq!(
            progress.health,
            Some(Health::Succeeded { at: NOW + 10_000 })
        );
    }

    #[test]
    fn the_last_retry_dead_letters_and_a_rejected_delivery_is_dead_at_once() {
        let (config, wake, target) = (config(), wake(), target());
        let mut report = Report::new(target.id());
        let event = event(11);
        let last = Delivery {
            event: &event,
            resync_id: None,
            attempt: 3,
        };
        let recorded = report.record_at(&config, &wake, &target, last, &failed(), NOW);
        assert!(matches!(recorded.outcome, AttemptOutcome::Dead { .. }));
        let rejected = attempted(AttemptResult::Rejected {
            error: "the transform failed".into(),
        });
        let other = self::event(12);
        let recorded = report.record_at(&config, &wake, &target, first(&other), &rejected, NOW);
        assert!(matches!(recorded.outcome, AttemptOutcome::Rejected { .. }));
        // Only the real failure counted against the endpoint.
        assert_eq!(target.consecutive_failures(), 1);
        let progress = report.take(None, None);
        let outcomes: Vec<_> = progress.attempts.iter().map(|a| a.outcome).collect();
        assert_eq!(outcomes, ["dead", "dead"]);
        assert_eq!(
            progress.attempts[1].error.as_deref(),
            Some("the transform failed")
        );
        assert!(matches!(
            progress.retries[1].state,
            RetryState::Dead { attempts: 1, .. }
        ));
        // The rejection said nothing of the endpoint: the failure's health stays.
        assert_eq!(progress.health, Some(Health::Failed { at: NOW }));
        assert_eq!(wake.earliest.load(Ordering::Relaxed), Millis::MAX);
    }

    #[test]
    fn gone_disables_the_subscription_and_keeps_the_delivery() {
        let (config, wake, target) = (config(), wake(), target());
        let mut report = Report::new(target.id());
        let event = event(13);
        let gone = attempted(AttemptResult::Gone);
        let recorded = report.record_at(&config, &wake, &target, first(&event), &gone, NOW);
        assert!(recorded.disabled);
        assert!(report.disables());
        let progress = report.take(None, None);
        assert!(matches!(
            progress.disable,
            Some(DisabledReason::EndpointGone(_))
        ));
        assert_eq!(progress.attempts[0].error.as_deref(), Some(policy::GONE));
        assert!(matches!(
            progress.retries[0].state,
            RetryState::Scheduled { .. }
        ));
        assert!(!report.disables());
    }

    #[tokio::test(start_paused = true)]
    async fn a_429_pauses_every_path_for_its_retry_after_without_a_failure() {
        let (config, wake, target) = (config(), wake(), target());
        let schedule = &config.retry_schedule;
        let mut report = Report::new(target.id());
        let event = event(21);
        let throttled = attempted(AttemptResult::Throttled {
            error: "HTTP 429 Too Many Requests".into(),
            retry_after: Some(Duration::from_secs(2)),
        });
        let recorded = report.record_at(&config, &wake, &target, first(&event), &throttled, NOW);
        assert!(recorded.outcome.retry_at().is_some());
        assert_eq!(target.consecutive_failures(), 0);
        let paused_until = tokio::time::Instant::now() + Duration::from_secs(2);
        for may_probe in [true, false] {
            match target.admit(schedule, may_probe, 1) {
                Admission::Paced { next_at } => assert_eq!(next_at, paused_until),
                other => panic!("expected a pause, got {other:?}"),
            }
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(matches!(target.admit(schedule, false, 1), Admission::Open));
        assert_eq!(report.take(None, None).health, None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_rate_limited_target_admits_its_burst_then_paces_every_path() {
        let config = config();
        let schedule = &config.retry_schedule;
        let mut subscription = target().subscription;
        subscription.rate_limit = Some(crate::model::RateLimit {
            per_second: 20,
            burst: 5,
        });
        let target = Target::new(subscription, &sinks()).expect("a usable subscription");
        for _ in 0..5 {
            assert!(matches!(target.admit(schedule, false, 1), Admission::Open));
        }
        // The worker, a retry and a resync run alike wait for the next token.
        let next = tokio::time::Instant::now() + Duration::from_millis(50);
        for may_probe in [true, false] {
            match target.admit(schedule, may_probe, 1) {
                Admission::Paced { next_at } => assert_eq!(next_at, next),
                other => panic!("expected a pace, got {other:?}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(matches!(target.admit(schedule, true, 1), Admission::Open));
        assert!(matches!(
            target.admit(schedule, true, 1),
            Admission::Paced { .. }
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn failures_recorded_by_any_path_open_the_breaker_for_all_of_them() {
        let (config, wake, target) = (config(), wake(), target());
        let schedule = &config.retry_schedule;
        let mut report = Report::new(target.id());
        for seq in 0..i64::from(super::super::breaker::BREAKER_THRESHOLD) {
            assert!(matches!(target.admit(schedule, false, 1), Admission::Open));
            let event = event(seq);
            report.record_at(&config, &wake, &target, first(&event), &failed(), NOW);
        }
        // A resync (which does not probe) waits; a worker or a retry probes, one at a time.
        assert!(matches!(
            target.admit(schedule, false, 1),
            Admission::Closed { .. }
        ));
        let probe = target.admit(schedule, true, 1);
        assert!(matches!(probe, Admission::Probe(_)));
        assert!(matches!(
            target.admit(schedule, true, 1),
            Admission::Closed { probing: true, .. }
        ));
        let event = event(100);
        let ok = attempted(AttemptResult::Delivered);
        report.record_at(&config, &wake, &target, first(&event), &ok, NOW);
        drop(probe);
        assert!(matches!(target.admit(schedule, false, 1), Admission::Open));
    }
}
