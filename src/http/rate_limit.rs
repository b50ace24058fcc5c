//! Publish rate limits (`--publish-rate-limit`, `--publish-burst`): a token bucket per
//! API key, so one key's flood of publishes is refused with `429` while every other key's
//! publishes go on. The admin token is a key of its own.
//!
//! The bucket is [`TokenBucket`], the one subscriptions' delivery rate limits use too: the
//! cost of a request is its number of events (not one), a batch larger than the burst
//! must still pass on a full bucket, and the state is one map behind a mutex held for a
//! few arithmetic operations (never across an `.await`).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use sha2::{Digest, Sha256};

use super::error::ApiError;
use crate::model::TokenBucket;

/// Keys tracked before the full buckets (which hold nothing worth keeping) are dropped.
const PRUNE_AT: usize = 10_000;

/// The publish rate of every key.
pub struct PublishRate {
    /// Events per second.
    rate: f64,
    /// The bucket's size, in events.
    burst: f64,
    buckets: Mutex<HashMap<[u8; 32], TokenBucket>>,
}

impl PublishRate {
    /// `rate` events per second, bursts of `burst` (default: one second's worth).
    pub fn new(rate: f64, burst: Option<u32>) -> PublishRate {
        let burst = burst.map_or(rate, f64::from).max(1.0);
        PublishRate {
            rate,
            burst,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes `events` from the bucket of the request's key, or refuses with `429
    /// rate_limited` and how long to wait.
    pub fn check(&self, headers: &HeaderMap, events: usize) -> Result<(), ApiError> {
        let key = key_of(headers);
        self.take(key, events, Instant::now())
            .map_err(|wait| {
                // Whole seconds, rounded up: a client that waits this long gets through.
                let retry_after = wait.as_secs_f64().ceil().max(1.0) as u64;
                ApiError::RateLimited {
                    message: format!(
                        "this key publishes more than {} events per second (bursts of {}); try again in {retry_after} s",
                        self.rate, self.burst
                    ),
                    retry_after,
                }
            })
    }

    fn take(&self, key: [u8; 32], events: usize, now: Instant) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= PRUNE_AT {
            buckets.retain(|_, bucket| !bucket.is_full(now));
        }
        buckets
            .entry(key)
            .or_insert_with(|| TokenBucket::full(self.rate, self.burst, now))
            .take(events as f64, now)
    }
}

/// Which key a request was made with: a digest of its bearer token (the request has
/// already been authenticated, so the token is a known key).
fn key_of(headers: &HeaderMap) -> [u8; 32] {
    let token = headers
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::trim)
        .unwrap_or_default();
    Sha256::digest(token.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_over_its_rate_waits_and_others_go_on() {
        let limit = PublishRate::new(10.0, Some(20));
        let start = Instant::now();
        let (a, b) = ([1; 32], [2; 32]);
        assert!(limit.take(a, 15, start).is_ok());
        assert!(limit.take(a, 5, start).is_ok());
        let wait = limit.take(a, 5, start).unwrap_err();
        assert!((wait.as_secs_f64() - 0.5).abs() < 1e-9, "{wait:?}");
        // Another key has its own bucket.
        assert!(limit.take(b, 20, start).is_ok());
        // Half a second later, five more of `a`'s fit.
        let later = start + Duration::from_millis(500);
        assert!(limit.take(a, 5, later).is_ok());
        assert!(limit.take(a, 1, later).is_err());
    }

    #[test]
    fn a_batch_larger_than_the_burst_passes_on_a_full_bucket_and_leaves_a_debt() {
        let limit = PublishRate::new(10.0, Some(20));
        let start = Instant::now();
        let key = [3; 32];
        assert!(limit.take(key, 50, start).is_ok());
        // 30 events of debt: three seconds until the next one, and then some.
        let wait = limit.take(key, 1, start).unwrap_err();
        assert!((wait.as_secs_f64() - 3.1).abs() < 1e-9, "{wait:?}");
        assert!(limit.take(key, 1, start + Duration::from_secs(4)).is_ok());
    }
}
