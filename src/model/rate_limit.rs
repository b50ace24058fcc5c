//! Rate limits: a subscription's `rateLimit` and the token bucket that enforces it, the
//! same bucket the publish rate limit keeps per API key.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The largest `perSecond` and `burst` a subscription may ask for: beyond it a limit
/// limits nothing a single node could send anyway.
pub const MAX_RATE: u32 = 10_000;

/// A subscription's delivery rate limit (`"rateLimit"`): at most `perSecond` deliveries a
/// second on average, and at most `burst` at once after a quiet time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimit {
    /// Deliveries a second, 1 to 10000.
    #[schema(minimum = 1, maximum = 10000, example = 20)]
    pub per_second: u32,
    /// Deliveries that may go at once after a quiet time, 1 to 10000.
    #[schema(minimum = 1, maximum = 10000, example = 5)]
    pub burst: u32,
}

/// Why a `rateLimit` is refused: names the member at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("rateLimit.{member} must be a whole number from 1 to {MAX_RATE}, not {given}")]
pub struct RateLimitError {
    pub member: &'static str,
    pub given: String,
}

impl RateLimit {
    /// Reads a `rateLimit` member: an object with whole `perSecond` and `burst` in
    /// `1..=MAX_RATE`.
    pub fn parse(value: &serde_json::Value) -> Result<RateLimit, RateLimitError> {
        let member = |member: &'static str| {
            let given = value.get(member);
            given
                .and_then(serde_json::Value::as_u64)
                .filter(|n| (1..=u64::from(MAX_RATE)).contains(n))
                .map(|n| n as u32)
                .ok_or_else(|| RateLimitError {
                    member,
                    given: given.map_or("missing".to_owned(), ToString::to_string),
                })
        };
        Ok(RateLimit {
            per_second: member("perSecond")?,
            burst: member("burst")?,
        })
    }
}

/// A token bucket: `rate` tokens a second, holding at most `burst`. Taking more than is
/// left may leave a debt (see [`TokenBucket::take`]), paid back before the next take.
/// The caller gives the time, so it runs under a test's paused clock as well.
#[derive(Debug, Clone, Copy)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    /// A full bucket of `burst` (at least one) tokens, refilled at `rate` a second.
    pub fn full(rate: f64, burst: f64, now: Instant) -> TokenBucket {
        let burst = burst.max(1.0);
        TokenBucket {
            rate,
            burst,
            tokens: burst,
            at: now,
        }
    }

    /// Takes `count` tokens, or says how long until they are there. A count larger than
    /// the whole burst passes on a full bucket (and leaves it in debt) rather than being
    /// refused for ever.
    pub fn take(&mut self, count: f64, now: Instant) -> Result<(), Duration> {
        let tokens = self.refilled(now);
        self.at = now.max(self.at);
        let needed = count.min(self.burst);
        if tokens >= needed {
            self.tokens = tokens - count;
            return Ok(());
        }
        self.tokens = tokens;
        Err(Duration::from_secs_f64((needed - tokens) / self.rate))
    }

    /// How long until one token is there (zero: now).
    pub fn wait(&self, now: Instant) -> Duration {
        let missing = 1.0 - self.refilled(now);
        Duration::from_secs_f64(missing.max(0.0) / self.rate)
    }

    /// Whether the bucket is full (it holds nothing worth keeping).
    pub fn is_full(&self, now: Instant) -> bool {
        self.refilled(now) >= self.burst
    }

    /// A new refill rate (and burst) from now on; what the bucket holds stays, up to the
    /// new burst.
    pub fn set_rate(&mut self, rate: f64, burst: f64, now: Instant) {
        self.tokens = self.refilled(now);
        self.at = now.max(self.at);
        self.rate = rate;
        self.burst = burst.max(1.0);
        self.tokens = self.tokens.min(self.burst);
    }

    fn refilled(&self, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        (self.tokens + elapsed * self.rate).min(self.burst)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_rate_limit_is_whole_numbers_from_one_to_the_maximum() {
        assert_eq!(
            RateLimit::parse(&json!({"perSecond": 20, "burst": 5})),
            Ok(RateLimit {
                per_second: 20,
                burst: 5
            })
        );
        for (value, member) in [
            (json!({"perSecond": 0, "burst": 5}), "perSecond"),
            (json!({"perSecond": -3, "burst": 5}), "perSecond"),
            (json!({"perSecond": 2.5, "burst": 5}), "perSecond"),
            (json!({"perSecond": 1_000_000, "burst": 5}), "perSecond"),
            (json!({"perSecond": "20", "burst": 5}), "perSecond"),
            (json!({"burst": 5}), "perSecond"),
            (json!({"perSecond": 20, "burst": 0}), "burst"),
            (json!({"perSecond": 20}), "burst"),
        ] {
            let error = RateLimit::parse(&value).unwrap_err();
            assert_eq!(error.member, member, "{value}");
        }
    }

    #[test]
    fn the_bucket_gives_its_burst_then_its_rate() {
        let start = Instant::now();
        let mut bucket = TokenBucket::full(20.0, 5.0, start);
        for _ in 0..5 {
            assert!(bucket.take(1.0, start).is_ok());
        }
        let wait = bucket.take(1.0, start).unwrap_err();
        assert!((wait.as_secs_f64() - 0.05).abs() < 1e-9, "{wait:?}");
        assert_eq!(bucket.wait(start), wait);
        let later = start + Duration::from_millis(50);
        assert!(bucket.take(1.0, later).is_ok());
        assert!(bucket.take(1.0, later).is_err());
        // A slower rate from now on.
        bucket.set_rate(2.0, 1.0, later);
        let wait = bucket.take(1.0, later).unwrap_err();
        assert!((wait.as_secs_f64() - 0.5).abs() < 1e-9, "{wait:?}");
        assert!(!bucket.is_full(later));
        assert!(bucket.is_full(later + Duration::from_secs(1)));
    }
}
