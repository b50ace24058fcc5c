//! The server's own counters over time, for the console's charts: events published,
//! deliveries, failures and publish→arrival latency, per account and for the whole
//! server, in buckets of [`BUCKET_MILLIS`] over the last [`BUCKETS`] of them. In memory
//! only (a restart starts them again): Prometheus (`GET /metrics`) is the durable record.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use serde::Serialize;
use utoipa::ToSchema;

use crate::model::Millis;

/// The width of a bucket.
pub const BUCKET_MILLIS: Millis = 10_000;
/// How many buckets are kept (an hour).
pub const BUCKETS: usize = 360;
/// Upper bounds of the latency histogram's classes, in milliseconds (the last: more).
const LATENCY_BOUNDS: [i64; 15] = [
    1, 2, 5, 10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 30_000, 60_000,
];

#[derive(Debug, Clone, Default)]
struct Bucket {
    start: Millis,
    published: u64,
    delivered: u64,
    failed: u64,
    retry_depth: Option<i64>,
    latency: [u32; LATENCY_BOUNDS.len() + 1],
}

impl Bucket {
    fn percentile(&self, fraction: f64) -> Option<i64> {
        let total: u64 = self.latency.iter().map(|&n| u64::from(n)).sum();
        if total == 0 {
            return None;
        }
        let rank = ((total as f64) * fraction).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (class, &count) in self.latency.iter().enumerate() {
            seen += u64::from(count);
            if seen >= rank {
                // Past the last bound: report the last bound (at least that much).
                return Some(LATENCY_BOUNDS[class.min(LATENCY_BOUNDS.len() - 1)]);
            }
        }
        None
    }
}

#[derive(Debug, Default)]
struct Series {
    buckets: VecDeque<Bucket>,
}

impl Series {
    fn at(&mut self, now: Millis) -> &mut Bucket {
        let start = now - now.rem_euclid(BUCKET_MILLIS);
        if self.buckets.back().is_none_or(|last| last.start < start) {
            self.buckets.push_back(Bucket {
                start,
                ..Bucket::default()
            });
        }
        while self.buckets.len() > BUCKETS
            || self
                .buckets
                .front()
                .is_some_and(|first| first.start <= start - BUCKET_MILLIS * BUCKETS as i64)
        {
            self.buckets.pop_front();
        }
        // A clock that went back lands in the newest bucket.
        self.buckets.back_mut().unwrap_or_else(|| unreachable!())
    }
}

/// One bucket as the API shows it.
#[derive(Debug, Clone, Serialize, ToSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Point {
    /// The bucket's start, in epoch milliseconds.
    pub at: Millis,
    pub published: u64,
    pub delivered: u64,
    /// Failed attempts (a retry follows, or the delivery is dead).
    pub failed: u64,
    /// Deliveries waiting for a retry, server-wide (the largest seen in the bucket).
    pub retry_depth: Option<i64>,
    /// Publish→arrival latency percentiles of the bucket's deliveries, in milliseconds
    /// (the upper bound of their histogram class).
    pub latency_p50_ms: Option<i64>,
    pub latency_p95_ms: Option<i64>,
    pub latency_p99_ms: Option<i64>,
}

/// The counters, per account (`Some`) and in all (`None`).
#[derive(Debug, Default)]
pub struct Stats {
    series: Mutex<HashMap<Option<String>, Series>>,
}

impl Stats {
    pub fn new() -> Stats {
        Stats::default()
    }

    fn record(&self, account: &str, now: Millis, mut change: impl FnMut(&mut Bucket)) {
        let mut series = self.series.lock().unwrap_or_else(|e| e.into_inner());
        change(series.entry(None).or_default().at(now));
        match series.get_mut(&Some(account.to_owned())) {
            Some(one) => change(one.at(now)),
            None => change(series.entry(Some(account.to_owned())).or_default().at(now)),
        }
    }

    pub fn published(&self, account: &str, count: u64, now: Millis) {
        if count > 0 {
            self.record(account, now, |bucket| bucket.published += count);
        }
    }

    /// A delivery of an event committed at `received_at` arrived at `now`.
    pub fn delivered(&self, account: &str, received_at: Millis, now: Millis) {
        let latency = (now - received_at).max(0);
        let class = LATENCY_BOUNDS
            .iter()
            .position(|&bound| latency <= bound)
            .unwrap_or(LATENCY_BOUNDS.len());
        self.record(account, now, |bucket| {
            bucket.delivered += 1;
            bucket.latency[class] = bucket.latency[class].saturating_add(1);
        });
    }

    pub fn failed(&self, account: &str, now: Millis) {
        self.record(account, now, |bucket| bucket.failed += 1);
    }

    /// The retry set's size, server-wide, as the retry scheduler last counted it.
    pub fn retry_depth(&self, depth: i64, now: Millis) {
        let mut series = self.series.lock().unwrap_or_else(|e| e.into_inner());
        let bucket = series.entry(None).or_default().at(now);
        bucket.retry_depth = Some(bucket.retry_depth.map_or(depth, |d| d.max(depth)));
    }

    /// The series of an account (`None`: the whole server), oldest first, every bucket
    /// of the last `buckets` present (empty ones as zeros).
    pub fn points(&self, account: Option<&str>, buckets: usize, now: Millis) -> Vec<Point> {
        let series = self.series.lock().unwrap_or_else(|e| e.into_inner());
        let kept = series.get(&account.map(str::to_owned));
        let last = now - now.rem_euclid(BUCKET_MILLIS);
        let buckets = buckets.clamp(1, BUCKETS);
        (0..buckets)
            .rev()
            .map(|back| {
                let start = last - back as i64 * BUCKET_MILLIS;
                let bucket = kept
                    .and_then(|s| s.buckets.iter().find(|b| b.start == start))
                    .cloned()
                    .unwrap_or(Bucket {
                        start,
                        ..Bucket::default()
                    });
                Point {
                    at: start,
                    published: bucket.published,
                    delivered: bucket.delivered,
                    failed: bucket.failed,
                    retry_depth: bucket.retry_depth,
                    latency_p50_ms: bucket.percentile(0.50),
                    latency_p95_ms: bucket.percentile(0.95),
                    latency_p99_ms: bucket.percentile(0.99),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_land_in_their_bucket_per_account_and_in_all() {
        let stats = Stats::new();
        let now = 1_000_000_000;
        stats.failed("a", now - BUCKET_MILLIS);
        stats.published("a", 3, now);
        stats.published("b", 1, now);
        stats.delivered("a", now - 40, now);
        // A clock that went back counts in the newest bucket.
        stats.failed("b", now - 3 * BUCKET_MILLIS);
        let all = stats.points(None, 2, now);
        assert_eq!(all.len(), 2);
        assert_eq!(all[1].published, 4);
        assert_eq!(all[0].failed, 1);
        let a = stats.points(Some("a"), 2, now);
        assert_eq!(a[1].published, 3);
        assert_eq!(a[1].delivered, 1);
        assert_eq!(a[1].latency_p99_ms, Some(50));
        assert_eq!(stats.points(Some("c"), 2, now)[1].published, 0);
        assert_eq!(stats.points(Some("b"), 2, now)[1].failed, 1);
        // Buckets older than the kept hour are dropped.
        stats.published("a", 1, now + BUCKET_MILLIS * BUCKETS as i64);
        let later = stats.points(Some("a"), BUCKETS, now + BUCKET_MILLIS * BUCKETS as i64);
        assert_eq!(later.iter().map(|p| p.published).sum::<u64>(), 1);
    }
}
