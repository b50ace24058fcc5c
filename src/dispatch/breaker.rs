//! The circuit breaker of one subscription's endpoint, shared by its worker and the retry
//! scheduler: after [`BREAKER_THRESHOLD`] failures in a row the endpoint counts as down,
//! and then only one probe at a time goes to it (a new event from the worker, or a due
//! retry), spaced along the retry schedule, until one succeeds. So an outage of hours
//! costs one failed attempt per probe interval, whichever path the probe takes, not one
//! per event or per retry.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::config::RetrySchedule;

/// After this many failures in a row the endpoint counts as down.
pub(super) const BREAKER_THRESHOLD: u32 = 10;
/// Probes are spaced by the retry schedule, but never further apart than its entry at
/// this position (5 minutes by default), so a recovery is noticed soon.
const PROBE_SCHEDULE_CAP: u32 = 5;
/// Without a schedule to space probes by.
const DEFAULT_PROBE_INTERVAL: Duration = Duration::from_secs(5);

/// Whether an endpoint with this many failures in a row counts as down.
pub(super) fn is_open(consecutive_failures: u32) -> bool {
    consecutive_failures >= BREAKER_THRESHOLD
}

/// The wait between probes of an endpoint that is down, after `consecutive_failures`:
/// the retry schedule's first entry, then its next ones as the outage goes on, up to
/// its entry at [`PROBE_SCHEDULE_CAP`].
pub(super) fn probe_interval(schedule: &RetrySchedule, consecutive_failures: u32) -> Duration {
    let step = consecutive_failures
        .saturating_add(1)
        .saturating_sub(BREAKER_THRESHOLD)
        .clamp(1, PROBE_SCHEDULE_CAP);
    schedule
        .delay_before(step)
        .or_else(|| schedule.0.last().copied())
        .unwrap_or(DEFAULT_PROBE_INTERVAL)
}

/// When the next probe may go, and whether one is under way.
#[derive(Debug)]
struct State {
    in_flight: bool,
    next_at: Instant,
}

#[derive(Debug)]
pub(super) struct Breaker {
    state: Mutex<State>,
}

/// The one probe under way; the next may start once this is dropped (and its interval
/// has passed).
#[derive(Debug)]
pub(super) struct ProbePermit {
    breaker: Arc<Breaker>,
}

/// What [`Breaker::admit`] lets a delivery path do.
#[derive(Debug)]
pub(super) enum Admission {
    /// The endpoint is up: calls start as the caller's own limits allow.
    Open,
    /// The endpoint is down and this call is its probe: one event, holding the slot
    /// until the permit is dropped.
    Probe(ProbePermit),
    /// The endpoint is down and nothing may start now: the next probe may go at
    /// `next_at`, or, while `probing`, once the probe under way is over.
    Closed { next_at: Instant, probing: bool },
    /// The endpoint is up but the subscription's pace (its rate limit, or a pause its
    /// endpoint asked for with `429`) lets nothing start before `next_at`.
    Paced { next_at: Instant },
}

impl Drop for ProbePermit {
    fn drop(&mut self) {
        self.breaker.lock().in_flight = false;
    }
}

impl Breaker {
    pub(super) fn new() -> Arc<Breaker> {
        Arc::new(Breaker {
            state: Mutex::new(State {
                in_flight: false,
                next_at: Instant::now(),
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A poisoned lock only means a panic mid-update of two plain fields.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes the probe slot if no probe is under way and the last one started at least
    /// its interval ago; the next one may then start `interval` from now at the earliest.
    pub(super) fn try_probe(self: &Arc<Self>, interval: Duration) -> Option<ProbePermit> {
        let now = Instant::now();
        let mut state = self.lock();
        if state.in_flight || now < state.next_at {
            return None;
        }
        state.in_flight = true;
        state.next_at = now + interval;
        Some(ProbePermit {
            breaker: self.clone(),
        })
    }

    /// Whether a delivery call to an endpoint with `consecutive_failures` may start now,
    /// for every path alike (first attempts, retries, resync copies). While it is down,
    /// only a caller that `may_probe` can take the probe slot.
    pub(super) fn admit(
        self: &Arc<Self>,
        consecutive_failures: u32,
        schedule: &RetrySchedule,
        may_probe: bool,
    ) -> Admission {
        if !is_open(consecutive_failures) {
            return Admission::Open;
        }
        let probe = may_probe
            .then(|| self.try_probe(probe_interval(schedule, consecutive_failures)))
            .flatten();
        match probe {
            Some(permit) => Admission::Probe(permit),
            None => {
                let (next_at, probing) = self.next_probe();
                Admission::Closed { next_at, probing }
            }
        }
    }

    /// The earliest the next probe may start (in the past when it may start now), and
    /// whether one is under way (then it may start only once that one is over).
    pub(super) fn next_probe(&self) -> (Instant, bool) {
        let state = self.lock();
        (state.next_at, state.in_flight)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule() -> RetrySchedule {
        RetrySchedule(
            [1, 2, 3, 4, 5, 6, 7]
                .into_iter()
                .map(Duration::from_secs)
                .collect(),
        )
    }

    #[test]
    fn the_breaker_opens_at_the_threshold() {
        assert!(!is_open(BREAKER_THRESHOLD - 1));
        assert!(is_open(BREAKER_THRESHOLD));
        assert!(is_open(u32::MAX));
    }

    #[test]
    fn probes_follow_the_schedule_up_to_its_cap() {
        let schedule = schedule();
        assert_eq!(
            probe_interval(&schedule, BREAKER_THRESHOLD),
            Duration::from_secs(1)
        );
        assert_eq!(
            probe_interval(&schedule, BREAKER_THRESHOLD + 1),
            Duration::from_secs(2)
        );
        assert_eq!(
            probe_interval(&schedule, BREAKER_THRESHOLD + 100),
            Duration::from_secs(5)
        );
        assert_eq!(probe_interval(&schedule, u32::MAX), Duration::from_secs(5));
        // A short schedule: its last entry; none: a default.
        let short = RetrySchedule(vec![Duration::from_secs(9)]);
        assert_eq!(
            probe_interval(&short, BREAKER_THRESHOLD + 3),
            Duration::from_secs(9)
        );
        assert_eq!(
            probe_interval(&RetrySchedule(Vec::new()), BREAKER_THRESHOLD),
            DEFAULT_PROBE_INTERVAL
        );
    }

    #[tokio::test(start_paused = true)]
    async fn one_probe_at_a_time_spaced_by_the_interval() {
        let breaker = Breaker::new();
        let interval = Duration::from_secs(30);
        let first = breaker
            .try_probe(interval)
            .expect("the first probe goes at once");
        // Whoever asks next (the worker or the retries) waits for it.
        assert!(breaker.try_probe(interval).is_none());
        let (next_at, in_flight) = breaker.next_probe();
        assert!(in_flight);
        assert_eq!(next_at, Instant::now() + interval);

        // Over quickly: the next still waits for the interval.
        tokio::time::advance(Duration::from_secs(1)).await;
        drop(first);
        assert!(!breaker.next_probe().1);
        assert!(breaker.try_probe(interval).is_none());
        tokio::time::advance(Duration::from_secs(28)).await;
        assert!(breaker.try_probe(interval).is_none());
        tokio::time::advance(Duration::from_secs(1)).await;
        let second = breaker.try_probe(interval).expect("due after the interval");

        // A probe that outlasts its interval holds the next one back until it is over.
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(breaker.try_probe(interval).is_none());
        drop(second);
        assert!(breaker.try_probe(interval).is_some());
    }

    fn probe(admission: Admission) -> ProbePermit {
        match admission {
            Admission::Probe(permit) => permit,
            other => panic!("expected a probe, got {other:?}"),
        }
    }

    fn closed(admission: &Admission) -> bool {
        matches!(admission, Admission::Closed { .. })
    }

    #[tokio::test(start_paused = true)]
    async fn admission_is_open_below_the_threshold_for_every_path() {
        let breaker = Breaker::new();
        let schedule = schedule();
        for failures in [0, 1, BREAKER_THRESHOLD - 1] {
            assert!(matches!(
                breaker.admit(failures, &schedule, true),
                Admission::Open
            ));
            assert!(matches!(
                breaker.admit(failures, &schedule, false),
                Admission::Open
            ));
        }
        // Open costs no probe slot.
        assert!(!breaker.next_probe().1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_path_that_may_not_probe_waits_while_the_endpoint_is_down() {
        let breaker = Breaker::new();
        let schedule = schedule();
        // A resync run, or a worker with calls of its own under way.
        let admission = breaker.admit(BREAKER_THRESHOLD, &schedule, false);
        assert!(matches!(
            admission,
            Admission::Closed { probing: false, next_at } if next_at <= Instant::now()
        ));
        // It did not use the slot: a path that may probe still can.
        let _permit = probe(breaker.admit(BREAKER_THRESHOLD, &schedule, true));
    }

    /// An outage as the engine sees it: each attempt's result goes through the policy,
    /// which moves the endpoint on; the breaker admits from that.
    #[tokio::test(start_paused = true)]
    async fn an_outage_opens_the_breaker_probes_are_spaced_by_the_schedule_and_a_success_closes_it()
    {
        use super::super::policy::{self, Endpoint, Policy};
        use crate::sinks::AttemptResult;

        let schedule = schedule();
        let policy = Policy {
            schedule: &schedule,
            disable_after: Duration::from_secs(3_600),
        };
        let failed = AttemptResult::Failed {
            error: "HTTP 503".into(),
            retry_after: None,
        };
        let breaker = Breaker::new();
        let mut endpoint = Endpoint::default();
        let attempt = |endpoint: &mut Endpoint, result: &AttemptResult| {
            let decision = policy::decide(result, 1, *endpoint, policy, 0, 1.0);
            *endpoint = decision.endpoint;
        };
        // Deliveries flow until the threshold of failures in a row.
        for _ in 0..BREAKER_THRESHOLD {
            assert!(matches!(
                breaker.admit(endpoint.consecutive_failures, &schedule, true),
                Admission::Open
            ));
            attempt(&mut endpoint, &failed);
        }
        // Down: the first probe goes at once, and nothing else meanwhile.
        let start = Instant::now();
        let first = probe(breaker.admit(endpoint.consecutive_failures, &schedule, true));
        assert!(matches!(
            breaker.admit(endpoint.consecutive_failures, &schedule, true),
            Admission::Closed { probing: true, .. }
        ));
        attempt(&mut endpoint, &failed);
        drop(first);
        // Each failed probe waits longer for the next, along the schedule: 1 s after
        // the first, then 2 s, 3 s, 4 s, then 5 s (the cap) however long it lasts.
        let mut at = start;
        for wait in [1, 2, 3, 4, 5, 5, 5] {
            let wait = Duration::from_secs(wait);
            let admission = breaker.admit(endpoint.consecutive_failures, &schedule, true);
            assert!(
                matches!(admission, Admission::Closed { next_at, probing: false } if next_at == at + wait),
                "{admission:?}"
            );
            tokio::time::advance(at + wait - Instant::now() - Duration::from_millis(1)).await;
            assert!(closed(&breaker.admit(
                endpoint.consecutive_failures,
                &schedule,
                true
            )));
            tokio::time::advance(Duration::from_millis(1)).await;
            at = Instant::now();
            let permit = probe(breaker.admit(endpoint.consecutive_failures, &schedule, true));
            attempt(&mut endpoint, &failed);
            drop(permit);
        }
        // The endpoint is back: the next probe succeeds and every path is let through.
        tokio::time::advance(Duration::from_secs(5)).await;
        let permit = probe(breaker.admit(endpoint.consecutive_failures, &schedule, true));
        attempt(&mut endpoint, &AttemptResult::Delivered);
        drop(permit);
        assert_eq!(endpoint, Endpoint::default());
        assert!(matches!(
            breaker.admit(endpoint.consecutive_failures, &schedule, false),
            Admission::Open
        ));
    }
}
