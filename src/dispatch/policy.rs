//! The retry policy, as pure functions: what an attempt's result means for the delivery
//! and for the subscription. No I/O here, so every rule has a plain unit test.

use std::time::Duration;

use crate::config::RetrySchedule;
use crate::model::{DisabledReason, Millis};
use crate::sinks::AttemptResult;
use crate::store::RetryState;

/// The decision after attempt number `attempt` (1 = the first delivery).
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub retry: RetryState,
    pub disable: Option<DisabledReason>,
}

/// Decides what happens after an attempt. `jitter` is a factor in `[0.8, 1.2]` that
/// spreads retries of many deliveries that failed together.
pub fn decide(
    result: &AttemptResult,
    attempt: u32,
    schedule: &RetrySchedule,
    now: Millis,
    jitter: f64,
) -> Verdict {
    let retry_at =
        |error: String, retry_after: Option<Duration>| match schedule.delay_before(attempt) {
            Some(delay) => {
                let delay = delay.mul_f64(jitter).max(retry_after.unwrap_or_default());
                RetryState::Scheduled {
                    attempts: attempt,
                    next_attempt_at: now + delay.as_millis() as Millis,
                    error,
                }
            }
            None => RetryState::Dead {
                attempts: attempt,
                error,
            },
        };
    match result {
        AttemptResult::Delivered => Verdict {
            retry: RetryState::Delivered,
            disable: None,
        },
        AttemptResult::Failed { error, retry_after } => Verdict {
            retry: retry_at(error.clone(), *retry_after),
            disable: None,
        },
        AttemptResult::Rejected { error } => Verdict {
            retry: RetryState::Dead {
                attempts: attempt,
                error: error.clone(),
            },
            disable: None,
        },
        // The event stays in the retry set: if the subscription is enabled again, it is
        // delivered then.
        AttemptResult::Gone => Verdict {
            retry: retry_at("HTTP 410 Gone".to_owned(), None),
            disable: Some(DisabledReason::EndpointGone(
                "the endpoint answered 410 Gone".to_owned(),
            )),
        },
    }
}

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

    fn failed(retry_after: Option<Duration>) -> AttemptResult {
        AttemptResult::Failed {
            error: "HTTP 500".into(),
            retry_after,
        }
    }

    #[test]
    fn success_leaves_the_retry_set() {
        let verdict = decide(&AttemptResult::Delivered, 2, &schedule(), 0, 1.0);
        assert_eq!(verdict.retry, RetryState::Delivered);
        assert_eq!(verdict.disable, None);
    }

    #[test]
    fn failures_follow_the_schedule_then_die() {
        let first = decide(&failed(None), 1, &schedule(), 1_000, 1.0);
        assert!(matches!(
            first.retry,
            RetryState::Scheduled {
                attempts: 1,
                next_attempt_at: 2_000,
                ..
            }
        ));
        let second = decide(&failed(None), 2, &schedule(), 1_000, 1.2);
        assert!(matches!(
            second.retry,
            RetryState::Scheduled {
                attempts: 2,
                next_attempt_at: 13_000,
                ..
            }
        ));
        let third = decide(&failed(None), 3, &schedule(), 1_000, 1.0);
        assert!(matches!(third.retry, RetryState::Dead { attempts: 3, .. }));
    }

    #[test]
    fn retry_after_is_waited_for_but_never_shortens_the_schedule() {
        let long = decide(
            &failed(Some(Duration::from_secs(30))),
            1,
            &schedule(),
            0,
            1.0,
        );
        assert!(matches!(
            long.retry,
            RetryState::Scheduled {
                next_attempt_at: 30_000,
                ..
            }
        ));
        let short = decide(
            &failed(Some(Duration::from_millis(10))),
            1,
            &schedule(),
            0,
            1.0,
        );
        assert!(matches!(
            short.retry,
            RetryState::Scheduled {
                next_attempt_at: 1_000,
                ..
            }
        ));
    }

    #[test]
    fn gone_disables_and_keeps_the_event() {
        let verdict = decide(&AttemptResult::Gone, 1, &schedule(), 0, 1.0);
        assert!(matches!(verdict.retry, RetryState::Scheduled { .. }));
        assert!(matches!(
            verdict.disable,
            Some(DisabledReason::EndpointGone(_))
        ));
    }

    #[test]
    fn disabled_only_after_the_whole_window_of_failures() {
        let window = Duration::from_secs(100);
        assert_eq!(failing_too_long(None, 1_000_000, window), None);
        assert_eq!(failing_too_long(Some(950_000), 1_000_000, window), None);
        assert!(matches!(
            failing_too_long(Some(900_000), 1_000_000, window),
            Some(DisabledReason::FailingTooLong(_))
        ));
    }
}
