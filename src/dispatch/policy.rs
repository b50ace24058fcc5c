//! The retry policy, as pure functions: what an attempt's result means for the delivery
//! and for the subscription. No I/O here, so every rule has a plain unit test.

use std::time::Duration;

use crate::config::RetrySchedule;
use crate::model::{DisabledReason, Millis};
use crate::sinks::AttemptResult;
use crate::store::{Health, RetryState};

/// What one attempt means for its delivery, decided by [`decide`]; every delivery path
/// (first attempts, retries, resync copies) acts on it the same way.
#[derive(Debug, Clone, PartialEq)]
pub enum AttemptOutcome {
    /// It arrived: out of the retry set (a first attempt's success is only counted).
    Delivered,
    /// Failed in a way worth trying again: it waits in the retry set until `at`.
    Retry { at: Millis, reason: String },
    /// Failed and out of retries: kept as a dead letter.
    Dead { reason: String },
    /// Cannot be made whatever the destination does (the subscription's transform failed
    /// on the event): nothing was sent, it is a dead letter at once.
    Rejected { reason: String },
}

impl AttemptOutcome {
    /// The delivery's state in the retry set after attempt number `attempts`.
    pub fn retry_state(&self, attempts: u32) -> RetryState {
        match self {
            AttemptOutcome::Delivered => RetryState::Delivered,
            AttemptOutcome::Retry { at, reason } => RetryState::Scheduled {
                attempts,
                next_attempt_at: *at,
                error: reason.clone(),
            },
            AttemptOutcome::Dead { reason } | AttemptOutcome::Rejected { reason } => {
                RetryState::Dead {
                    attempts,
                    error: reason.clone(),
                }
            }
        }
    }

    /// The outcome's name in the delivery log.
    pub fn record_name(&self) -> &'static str {
        match self {
            AttemptOutcome::Delivered => "delivered",
            AttemptOutcome::Retry { .. } => "failed",
            AttemptOutcome::Dead { .. } | AttemptOutcome::Rejected { .. } => "dead",
        }
    }

    /// When the delivery is tried again, if it is.
    pub fn retry_at(&self) -> Option<Millis> {
        match self {
            AttemptOutcome::Retry { at, .. } => Some(*at),
            _ => None,
        }
    }
}

/// How a subscription's endpoint has been doing: what the breaker and the disable rule
/// look at. Kept per subscription by the dispatcher; [`decide`] says what it becomes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Endpoint {
    /// Since when every attempt failed (`None` after a success).
    pub failing_since: Option<Millis>,
    /// Failed attempts since the last success (first attempts and retries alike).
    pub consecutive_failures: u32,
}

/// The rules an attempt is judged by, from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct Policy<'a> {
    pub schedule: &'a RetrySchedule,
    /// A subscription failing this long without a success is disabled.
    pub disable_after: Duration,
}

/// Everything one attempt decides.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub outcome: AttemptOutcome,
    /// The subscription is disabled by this attempt: its endpoint is gone, or it has
    /// failed for too long.
    pub disable: Option<DisabledReason>,
    /// The endpoint after this attempt.
    pub endpoint: Endpoint,
    /// What to store of the endpoint's health (`None`: this attempt says nothing of it).
    pub health: Option<Health>,
}

/// Decides what attempt number `attempt` (1 = the first delivery) means, from its result
/// and the endpoint's state before it. `jitter` is a factor in `[0.8, 1.2]` that spreads
/// retries of many deliveries that failed together.
pub fn decide(
    result: &AttemptResult,
    attempt: u32,
    endpoint: Endpoint,
    policy: Policy<'_>,
    now: Millis,
    jitter: f64,
) -> Decision {
    let retry_or_dead =
        |reason: String, retry_after: Option<Duration>| match policy.schedule.delay_before(attempt)
        {
            Some(delay) => {
                let delay = delay.mul_f64(jitter).max(retry_after.unwrap_or_default());
                AttemptOutcome::Retry {
                    at: now + delay.as_millis() as Millis,
                    reason,
                }
            }
            None => AttemptOutcome::Dead { reason },
        };
    // A failure that reached (or tried to reach) the endpoint: it counts against its
    // health, and a long enough run of them disables the subscription.
    let failed = |outcome: AttemptOutcome, gone: Option<DisabledReason>| {
        let since = endpoint.failing_since.unwrap_or(now);
        Decision {
            outcome,
            disable: gone.or_else(|| failing_too_long(Some(since), now, policy.disable_after)),
            endpoint: Endpoint {
                failing_since: Some(since),
                consecutive_failures: endpoint.consecutive_failures.saturating_add(1),
            },
            health: Some(Health::Failed { at: since }),
        }
    };
    match result {
        AttemptResult::Delivered => Decision {
            outcome: AttemptOutcome::Delivered,
            disable: None,
            endpoint: Endpoint::default(),
            health: Some(Health::Succeeded { at: now }),
        },
        AttemptResult::Failed { error, retry_after } => {
            failed(retry_or_dead(error.clone(), *retry_after), None)
        }
        // The endpoint is there and answering: it asked for less, which is no failure of
        // its health (the subscription's pace slows instead: see the engine).
        AttemptResult::Throttled { error, retry_after } => Decision {
            outcome: retry_or_dead(error.clone(), *retry_after),
            disable: None,
            endpoint,
            health: None,
        },
        // Nothing reached the destination: it says nothing about its health.
        AttemptResult::Rejected { error } => Decision {
            outcome: AttemptOutcome::Rejected {
                reason: error.clone(),
            },
            disable: None,
            endpoint,
            health: None,
        },
        // The event stays in the retry set: if the subscription is enabled again, it is
        // delivered then.
        AttemptResult::Gone => failed(
            retry_or_dead(GONE.to_owned(), None),
            Some(DisabledReason::EndpointGone(
                "the endpoint answered 410 Gone".to_owned(),
            )),
        ),
    }
}

/// The error an attempt answered with 410 Gone is recorded with.
pub const GONE: &str = "HTTP 410 Gone";

/// A subscription whose deliveries have failed, without one success, since
/// `failing_since` is disabled once that is longer ago than `disable_after`.
pub fn failing_too_long(
    failing_since: Option<Millis>,
    now: Millis,
    disable_after: Duration,
) -> Option<DisabledReason> {
    let since = failing_since?;
    let window = disable_after.as_millis() as Millis;
    (now - since >= window).then(|| {
        DisabledReason::FailingTooLong(format!(
            "every delivery failed for {}s without a success",
            (now - since) / 1000
        ))
    })
}

/// A random jitter factor for [`decide`].
pub fn jitter() -> f64 {
    rand::random_range(0.8..=1.2)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule() -> RetrySchedule {
        RetrySchedule(vec![Duration::from_secs(1), Duration::from_secs(10)])
    }

    const WINDOW: Duration = Duration::from_secs(100);

    fn policy(schedule: &RetrySchedule) -> Policy<'_> {
        Policy {
            schedule,
            disable_after: WINDOW,
        }
    }

    fn failed(retry_after: Option<Duration>) -> AttemptResult {
        AttemptResult::Failed {
            error: "HTTP 500".into(),
            retry_after,
        }
    }

    fn healthy() -> Endpoint {
        Endpoint::default()
    }

    #[test]
    fn a_429_is_retried_after_its_retry_after_and_never_counts_toward_disabling() {
        let schedule = schedule();
        // Failing for longer than the window already: a 429 still does not disable.
        let failing = Endpoint {
            failing_since: Some(0),
            consecutive_failures: 3,
        };
        let throttled = AttemptResult::Throttled {
            error: "HTTP 429 Too Many Requests".into(),
            retry_after: Some(Duration::from_secs(30)),
        };
        let now = 1_000_000;
        let decision = decide(&throttled, 1, failing, policy(&schedule), now, 1.0);
        assert_eq!(
            decision.outcome,
            AttemptOutcome::Retry {
                at: now + 30_000,
                reason: "HTTP 429 Too Many Requests".into()
            }
        );
        assert_eq!(decision.disable, None);
        assert_eq!(decision.endpoint, failing);
        assert_eq!(decision.health, None);
    }

    #[test]
    fn success_leaves_the_retry_set_and_heals_the_endpoint() {
        let schedule = schedule();
        let failing = Endpoint {
            failing_since: Some(500),
            consecutive_failures: 12,
        };
        let decision = decide(
            &AttemptResult::Delivered,
            2,
            failing,
            policy(&schedule),
            1_000,
            1.0,
        );
        assert_eq!(decision.outcome, AttemptOutcome::Delivered);
        assert_eq!(decision.outcome.retry_state(2), RetryState::Delivered);
        assert_eq!(decision.disable, None);
        assert_eq!(decision.endpoint, healthy());
        assert_eq!(decision.health, Some(Health::Succeeded { at: 1_000 }));
    }

    #[test]
    fn failures_follow_the_schedule_then_die() {
        let schedule = schedule();
        let first = decide(&failed(None), 1, healthy(), policy(&schedule), 1_000, 1.0);
        assert_eq!(first.outcome.retry_at(), Some(2_000));
        assert_eq!(
            first.outcome.retry_state(1),
            RetryState::Scheduled {
                attempts: 1,
                next_attempt_at: 2_000,
                error: "HTTP 500".into(),
            }
        );
        assert_eq!(first.outcome.record_name(), "failed");
        let second = decide(
            &failed(None),
            2,
            first.endpoint,
            policy(&schedule),
            1_000,
            1.2,
        );
        assert_eq!(second.outcome.retry_at(), Some(13_000));
        let third = decide(
            &failed(None),
            3,
            second.endpoint,
            policy(&schedule),
            1_000,
            1.0,
        );
        assert_eq!(
            third.outcome,
            AttemptOutcome::Dead {
                reason: "HTTP 500".into()
            }
        );
        assert!(matches!(
            third.outcome.retry_state(3),
            RetryState::Dead { attempts: 3, .. }
        ));
        assert_eq!(third.outcome.record_name(), "dead");
        // Each failure counts against the endpoint, from the first one's time.
        assert_eq!(
            third.endpoint,
            Endpoint {
                failing_since: Some(1_000),
                consecutive_failures: 3
            }
        );
        assert_eq!(third.health, Some(Health::Failed { at: 1_000 }));
    }

    #[test]
    fn retry_after_is_waited_for_but_never_shortens_the_schedule() {
        let schedule = schedule();
        let long = decide(
            &failed(Some(Duration::from_secs(30))),
            1,
            healthy(),
            policy(&schedule),
            0,
            1.0,
        );
        assert_eq!(long.outcome.retry_at(), Some(30_000));
        let short = decide(
            &failed(Some(Duration::from_millis(10))),
            1,
            healthy(),
            policy(&schedule),
            0,
            1.0,
        );
        assert_eq!(short.outcome.retry_at(), Some(1_000));
    }

    #[test]
    fn gone_disables_and_keeps_the_event() {
        let schedule = schedule();
        let decision = decide(
            &AttemptResult::Gone,
            1,
            healthy(),
            policy(&schedule),
            0,
            1.0,
        );
        assert!(matches!(decision.outcome, AttemptOutcome::Retry { .. }));
        assert!(matches!(
            decision.disable,
            Some(DisabledReason::EndpointGone(_))
        ));
        assert_eq!(decision.endpoint.consecutive_failures, 1);
    }

    #[test]
    fn a_rejected_delivery_is_dead_at_once_and_says_nothing_of_the_endpoint() {
        let schedule = schedule();
        let failing = Endpoint {
            failing_since: Some(0),
            consecutive_failures: 4,
        };
        let decision = decide(
            &AttemptResult::Rejected {
                error: "transform failed".into(),
            },
            1,
            failing,
            policy(&schedule),
            // Past the window: only a real failure may disable.
            1_000_000,
            1.0,
        );
        assert_eq!(
            decision.outcome,
            AttemptOutcome::Rejected {
                reason: "transform failed".into()
            }
        );
        assert!(matches!(
            decision.outcome.retry_state(1),
            RetryState::Dead { attempts: 1, .. }
        ));
        assert_eq!(decision.disable, None);
        assert_eq!(decision.endpoint, failing);
        assert_eq!(decision.health, None);
    }

    #[test]
    fn a_failure_after_the_whole_window_of_failures_disables() {
        let schedule = schedule();
        let since = Endpoint {
            failing_since: Some(900_000),
            consecutive_failures: 50,
        };
        let within = decide(&failed(None), 1, since, policy(&schedule), 999_999, 1.0);
        assert_eq!(within.disable, None);
        let past = decide(&failed(None), 1, since, policy(&schedule), 1_000_000, 1.0);
        assert!(matches!(
            past.disable,
            Some(DisabledReason::FailingTooLong(_))
        ));
        // The delivery itself still waits in the retry set, for an enabling.
        assert!(matches!(past.outcome, AttemptOutcome::Retry { .. }));
    }

    #[test]
    fn disabled_only_after_the_whole_window_of_failures() {
        assert_eq!(failing_too_long(None, 1_000_000, WINDOW), None);
        assert_eq!(failing_too_long(Some(950_000), 1_000_000, WINDOW), None);
        assert!(matches!(
            failing_too_long(Some(900_000), 1_000_000, WINDOW),
            Some(DisabledReason::FailingTooLong(_))
        ));
    }
}
