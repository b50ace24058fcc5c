//! The pace of one subscription's deliveries, shared by its worker, the retry scheduler
//! and its resync runs: its `rateLimit` as a token bucket (one token per event carried),
//! and a hold while the endpoint asked for a pause (a `429`, with its `Retry-After`).
//! A call that finds no token does not start: its events stay where they wait (the log,
//! the retry set, the entity store), and the caller looks again when one is there.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::model::{RateLimit, TokenBucket};

/// How long a `429` without `Retry-After` holds the subscription's deliveries.
pub(super) const THROTTLED_PAUSE: Duration = Duration::from_secs(1);

#[derive(Debug)]
struct State {
    bucket: Option<TokenBucket>,
    /// A `429` asked for a pause until then.
    held_until: Option<Instant>,
}

#[derive(Debug)]
pub(super) struct Pace {
    state: Mutex<State>,
}

impl Pace {
    pub(super) fn new(limit: Option<RateLimit>) -> Pace {
        let bucket = limit.map(|limit| {
            TokenBucket::full(
                f64::from(limit.per_second),
                f64::from(limit.burst),
                Instant::now().into_std(),
            )
        });
        Pace {
            state: Mutex::new(State {
                bucket,
                held_until: None,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A poisoned lock only means a panic mid-update of plain numbers.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// When the next call may start, if not now.
    pub(super) fn wait(&self) -> Option<Instant> {
        let now = Instant::now();
        let state = self.lock();
        let held = state.held_until.filter(|until| *until > now);
        let refill = state
            .bucket
            .map(|bucket| bucket.wait(now.into_std()))
            .filter(|wait| !wait.is_zero())
            .map(|wait| now + wait);
        held.max(refill)
    }

    /// Takes the tokens of a call that carries `events`: a call that found a token
    /// starts whole, and a larger batch leaves a debt the next calls wait for.
    pub(super) fn take(&self, events: usize) {
        let now = Instant::now().into_std();
        if let Some(bucket) = &mut self.lock().bucket {
            let _ = bucket.take(events as f64, now);
        }
    }

    /// The endpoint answered `429`: nothing starts before `until`.
    pub(super) fn hold(&self, until: Instant) {
        let mut state = self.lock();
        state.held_until = Some(state.held_until.map_or(until, |held| held.max(until)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_limited_pace_gives_its_burst_then_its_rate() {
        let pace = Pace::new(Some(RateLimit {
            per_second: 20,
            burst: 5,
        }));
        let start = Instant::now();
        let mut started = Vec::new();
        while started.len() < 25 {
            match pace.wait() {
                None => {
                    pace.take(1);
                    started.push(Instant::now() - start);
                }
                Some(at) => tokio::time::sleep_until(at).await,
            }
        }
        // Five at once, then one every 50 ms: the 25th at one second.
        assert!(started[..5].iter().all(|at| at.is_zero()), "{started:?}");
        assert_eq!(started[5], Duration::from_millis(50));
        let last = started[24].as_secs_f64();
        assert!((last - 1.0).abs() < 0.002, "{started:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_leaves_a_debt_and_a_hold_pauses_even_an_unlimited_pace() {
        let limited = Pace::new(Some(RateLimit {
            per_second: 10,
            burst: 10,
        }));
        limited.take(30);
        let wait = limited.wait().expect("a debt") - Instant::now();
        // 20 tokens owed, and one to take: 2.1 s.
        assert!((wait.as_secs_f64() - 2.1).abs() < 1e-6, "{wait:?}");

        let unlimited = Pace::new(None);
        assert_eq!(unlimited.wait(), None);
        unlimited.take(1_000);
        assert_eq!(unlimited.wait(), None);
        let until = Instant::now() + Duration::from_secs(3);
        unlimited.hold(until);
        // A shorter hold does not end a longer one.
        unlimited.hold(Instant::now() + Duration::from_secs(1));
        assert_eq!(unlimited.wait(), Some(until));
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(unlimited.wait(), None);
    }
}
