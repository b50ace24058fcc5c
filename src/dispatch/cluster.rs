//! Several nodes on one PostgreSQL database: which subscriptions this node delivers.
//!
//! Each node holds leases on its share of the enabled subscriptions (all of them divided
//! by the live nodes, rounded up) and renews them every third of the lease's life, all
//! at once: a lease lasts as long as its node's own, one row per node. A
//! node over its share hands the extra ones over: it stops their workers, waits until
//! their progress is committed, and only then gives the lease up, so the next holder
//! starts from a cursor that nothing after it was sent from (no delivery twice). A node
//! under its share takes subscriptions that nobody holds or whose lease ran out: that is
//! how a dead node's work is taken over, at most one lease's life after its last renewal.
//! Changes (a subscription created, deleted, enabled; a node leaving) are announced on
//! a channel so every node looks at once rather than at its next renewal.

use std::collections::HashSet;
use std::time::Duration;

use sqlx::postgres::PgListener;
// Tokio's clock (the system's monotonic clock, except in tests with paused time).
use tokio::time::Instant;

use super::Dispatcher;
use crate::model::now_millis;
use crate::store::{Cluster, StoreError};

/// A pass that starts at least this many workers reads where each account's log ends
/// first (see `Dispatcher::start_workers`).
const LOG_ENDS_FROM: usize = 64;

/// At most this many announcements are taken at once before the next pass.
const ANNOUNCEMENTS_PER_PASS: usize = 10_000;

/// The announcements the listener has received, taken without waiting for more (an
/// error is left for the next wait to meet).
async fn received_already(listener: &mut PgListener) -> Vec<String> {
    let mut messages = Vec::new();
    while messages.len() < ANNOUNCEMENTS_PER_PASS {
        // A zero timeout still polls the receive once: what is readable comes at once.
        match tokio::time::timeout(Duration::ZERO, listener.try_recv()).await {
            Ok(Ok(Some(notification))) => messages.push(notification.payload().to_owned()),
            _ => break,
        }
    }
    messages
}

/// The announcement that the subscriptions changed.
pub(super) const CHANGED: &str = "changed";

/// The announcement that a subscription is to be replayed from `cursor`.
pub(super) fn rewind_message(id: &str, cursor: i64) -> String {
    format!("rewind {id} {cursor}")
}

/// The announcement that a subscription's signing secret was rotated.
pub(super) fn rekey_message(id: &str) -> String {
    format!("rekey {id}")
}

/// The announcement that a subscription has a new resync run to send.
pub(super) fn resync_message(id: &str) -> String {
    format!("resync {id}")
}

pub(super) struct Leases {
    dispatcher: Dispatcher,
    cluster: Cluster,
    ttl: Duration,
    /// The unreadable subscriptions this node has reported (each once, not at every
    /// pass).
    reported: std::sync::Mutex<HashSet<String>>,
}

impl Leases {
    pub(super) fn new(dispatcher: Dispatcher, cluster: Cluster) -> Leases {
        let ttl = dispatcher.config().lease_ttl;
        Leases {
            dispatcher,
            cluster,
            ttl,
            reported: Default::default(),
        }
    }

    pub(super) async fn run(self) {
        let cancel = self.dispatcher.shared.cancel.clone();
        let mut listener: Option<PgListener> = None;
        let mut clock = LeaseClock::new(self.ttl);
        loop {
            self.stop_if_expired(&clock).await;
            let started = Instant::now();
            let passed = match self.pass().await {
                Ok(()) => {
                    clock.renewed(started);
                    true
                }
                Err(error) => {
                    tracing::warn!(%error, node = self.cluster.node(), "renewing leases failed");
                    false
                }
            };
            self.stop_if_expired(&clock).await;
            // Without the database, trying to listen only waits out the pool's timeout
            // again: the next pass that works tries.
            if listener.is_none() && passed {
                listener = self.cluster.listen().await.ok();
            }
            let announced = async {
                match listener.as_mut() {
                    Some(listener) => listener.try_recv().await,
                    None => std::future::pending().await,
                }
            };
            let wake = clock.next_wake();
            let message = tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep_until(wake) => None,
                received = announced => match received {
                    Ok(Some(notification)) => Some(notification.payload().to_owned()),
                    Ok(None) => None,
                    Err(error) => {
                        tracing::warn!(%error, "listening for subscription changes failed");
                        listener = None;
                        None
                    }
                },
            };
            if let Some(message) = message {
                self.announced(&message).await;
                // Each announcement used to cost a pass of its own: 10,000 subscriptions
                // created in a burst queued 10,000 passes, each reading every lease, that
                // kept a core busy long after. Those received already share the next.
                if let Some(listener) = listener.as_mut() {
                    for message in received_already(listener).await {
                        self.announced(&message).await;
                    }
                }
            }
        }
        // Shutdown: the workers stop (their tokens are children of the one cancelled),
        // their last progress is committed, then the leases go so the others take over
        // at once.
        self.dispatcher.stop_all().await;
        if let Err(error) = self.dispatcher.store().flush().await {
            tracing::warn!(%error, "saving progress at shutdown failed");
        }
        if let Err(error) = self.cluster.leave().await {
            tracing::warn!(%error, "giving the leases up at shutdown failed; they run out instead");
        }
    }

    /// Once this node's leases have run out unrenewed (the database is unreachable),
    /// another node may have taken its subscriptions over: it stops delivering them. The
    /// next pass that works takes back what is still free.
    async fn stop_if_expired(&self, clock: &LeaseClock) {
        if clock.expired() && !self.dispatcher.running().is_empty() {
            tracing::warn!(
                node = self.cluster.node(),
                "leases ran out: stopping every worker"
            );
            self.dispatcher.stop_all().await;
        }
    }

    /// Acts on an announcement; a change is looked at by the next pass, right after.
    /// Only the node that runs the subscription's worker acts on a rewind or a resync.
    async fn announced(&self, message: &str) {
        let mut words = message.split(' ');
        match (words.next(), words.next(), words.next()) {
            (Some("rewind"), Some(id), Some(cursor)) => {
                if let Ok(cursor) = cursor.parse() {
                    self.dispatcher
                        .control(id, super::worker::Control::Rewind(cursor));
                }
            }
            (Some("rekey"), Some(id), None) => self.dispatcher.reload_signer(id).await,
            (Some("resync"), Some(id), None) if self.dispatcher.is_running(id) => {
                if let Err(error) = self.dispatcher.resume_resync(id).await {
                    tracing::error!(%error, subscription = id, "starting a resync failed");
                }
            }
            _ => {}
        }
    }

    /// These subscriptions, those this node holds and can read. The others are skipped (one
    /// unreadable row must not stop this node's deliveries) and reported once each.
    async fn held_subscriptions(
        &self,
        ids: &[String],
    ) -> Result<Vec<crate::model::Subscription>, StoreError> {
        let (readable, unreadable) = self.cluster.held_subscriptions(ids).await?;
        let new: Vec<StoreError> = {
            let mut reported = self.reported.lock().unwrap_or_else(|e| e.into_inner());
            unreadable
                .into_iter()
                .filter(|error| reported.insert(error.to_string()))
                .collect()
        };
        super::report_unreadable(&new);
        Ok(readable)
    }

    /// Renews this node's leases, stops what it no longer holds, hands over or takes
    /// subscriptions to reach its share, and starts the workers it lacks.
    async fn pass(&self) -> Result<(), StoreError> {
        let _leasing = self.dispatcher.shared.leasing.lock().await;
        let now = now_millis();
        let ttl = self.dispatcher.lease_ttl_millis();
        // The heartbeat renews every lease of this node in one row: the upkeep of its
        // leases costs the same for ten subscriptions as for a hundred thousand.
        let live = self.cluster.heartbeat(now, ttl).await?.max(1);
        let held: HashSet<String> = self.cluster.renew().await?.into_iter().collect();
        // Taken over by another node (this one was too slow to renew) or deleted.
        for id in self.dispatcher.running() {
            if !held.contains(&id) {
                tracing::info!(subscription = %id, "no longer held by this node: stopping its worker");
                self.dispatcher.remove(&id);
            }
        }
        let mut enabled = held;
        for id in self.cluster.held_disabled().await? {
            // Its worker stopped when it was disabled; whoever enables it takes it.
            self.dispatcher.remove(&id);
            self.cluster.release(&id).await?;
            enabled.remove(&id);
        }
        let total = self.cluster.enabled_count().await?;
        match rebalance(enabled.len(), share(total, live)) {
            Rebalance::Keep => {}
            Rebalance::HandOver { keep } => {
                // The most recently created go: the oldest stay where they are.
                for id in self.cluster.held_newest(keep).await? {
                    self.dispatcher.hand_over(&id).await;
                    self.cluster.release(&id).await?;
                    enabled.remove(&id);
                    tracing::info!(subscription = %id, "handed over to another node");
                }
                self.cluster.notify(CHANGED).await?;
            }
            Rebalance::Take { wanted } => {
                let claimed = self.cluster.claim(now, now + ttl, wanted).await?;
                if !claimed.is_empty() {
                    tracing::info!(count = claimed.len(), "took subscriptions over");
                    enabled.extend(claimed);
                }
            }
        }
        // Only those without a worker here are read (all of them at the first pass, a
        // few after): a pass reads no subscription it runs already.
        let missing: Vec<String> = enabled
            .into_iter()
            .filter(|id| !self.dispatcher.is_running(id))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        // Read before the subscriptions, so that where the log ends holds for those that
        // attach before anything else is committed (under traffic the others read). It
        // looks at every subscribed account: worth it for a node's first pass or a
        // takeover, not for the few subscriptions just created (they read their own).
        let ends = match missing.len() >= LOG_ENDS_FROM {
            true => self.dispatcher.log_ends().await,
            false => None,
        };
        let subscriptions = self.held_subscriptions(&missing).await?;
        self.dispatcher
            .start_workers(subscriptions, ends.as_ref())
            .await;
        Ok(())
    }
}

/// When this node's leases were last renewed, so when they run out and when the next
/// pass is due.
#[derive(Debug)]
struct LeaseClock {
    renewed: Instant,
    ttl: Duration,
}

impl LeaseClock {
    /// Leases just taken (or none yet: nothing runs before the first pass).
    fn new(ttl: Duration) -> LeaseClock {
        LeaseClock {
            renewed: Instant::now(),
            ttl,
        }
    }

    /// A pass that began at `started` renewed the leases. One started before they ran
    /// out may end after: they last from its start, not its end.
    fn renewed(&mut self, started: Instant) {
        self.renewed = started;
    }

    /// Whether the leases have run out unrenewed: another node may hold them now.
    fn expired(&self) -> bool {
        self.renewed.elapsed() >= self.ttl
    }

    /// When to run the next pass: a third of the lease's life from now, or when the
    /// leases run out if that comes first (so the node stops its workers in time).
    fn next_wake(&self) -> Instant {
        let now = Instant::now();
        let expiry = self.renewed + self.ttl;
        let next_pass = now + self.ttl / 3;
        match expiry > now {
            true => next_pass.min(expiry),
            false => next_pass,
        }
    }
}

/// This node's share of `total` enabled subscriptions among `live` nodes: rounded up, so
/// every subscription has a node.
fn share(total: i64, live: i64) -> usize {
    let live = live.max(1);
    usize::try_from((total.max(0) + live - 1) / live).unwrap_or(usize::MAX)
}

/// What a node holding `held` subscriptions does to reach its `share`.
#[derive(Debug, PartialEq, Eq)]
enum Rebalance {
    Keep,
    /// Over its share: hand over all but the first `keep` (the oldest).
    HandOver {
        keep: usize,
    },
    /// Under its share: take up to `wanted` that nobody holds.
    Take {
        wanted: i64,
    },
}

fn rebalance(held: usize, share: usize) -> Rebalance {
    match held.cmp(&share) {
        std::cmp::Ordering::Equal => Rebalance::Keep,
        std::cmp::Ordering::Greater => Rebalance::HandOver { keep: share },
        std::cmp::Ordering::Less => Rebalance::Take {
            wanted: i64::try_from(share - held).unwrap_or(i64::MAX),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(30);

    #[tokio::test(start_paused = true)]
    async fn passes_come_every_third_of_the_lease_life() {
        let clock = LeaseClock::new(TTL);
        assert!(!clock.expired());
        assert_eq!(clock.next_wake(), Instant::now() + TTL / 3);
    }

    #[tokio::test(start_paused = true)]
    async fn unrenewed_leases_run_out_after_their_life_and_stop_the_node_in_time() {
        let mut clock = LeaseClock::new(TTL);
        let renewed_at = Instant::now();
        clock.renewed(renewed_at);
        // Passes fail (the database is unreachable): the node wakes at the expiry even
        // when the next regular pass would come later.
        tokio::time::advance(TTL - Duration::from_secs(2)).await;
        assert!(!clock.expired());
        assert_eq!(clock.next_wake(), renewed_at + TTL);
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(clock.expired(), "another node may take the leases over now");
        // Past the expiry it keeps trying at the regular pace.
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(clock.next_wake(), Instant::now() + TTL / 3);
        // A pass that works renews them.
        clock.renewed(Instant::now());
        assert!(!clock.expired());
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_pass_renews_from_its_start() {
        let mut clock = LeaseClock::new(TTL);
        tokio::time::advance(TTL - Duration::from_secs(1)).await;
        let started = Instant::now();
        // The pass takes 10 s: the leases it renewed last from when it began.
        tokio::time::advance(Duration::from_secs(10)).await;
        clock.renewed(started);
        assert!(!clock.expired());
        tokio::time::advance(TTL - Duration::from_secs(10)).await;
        assert!(clock.expired());
    }

    #[test]
    fn each_node_takes_its_share_rounded_up() {
        assert_eq!(share(10, 3), 4);
        assert_eq!(share(9, 3), 3);
        assert_eq!(share(0, 3), 0);
        // No live node counted yet (this one's heartbeat is being written): all of it.
        assert_eq!(share(7, 0), 7);
    }

    #[test]
    fn a_node_over_its_share_hands_the_newest_over_and_one_under_takes() {
        assert_eq!(rebalance(4, 4), Rebalance::Keep);
        assert_eq!(rebalance(7, 4), Rebalance::HandOver { keep: 4 });
        assert_eq!(rebalance(1, 4), Rebalance::Take { wanted: 3 });
        // A third node joined: 10 subscriptions, 3 nodes.
        let share = share(10, 3);
        assert_eq!(rebalance(5, share), Rebalance::HandOver { keep: 4 });
        assert_eq!(rebalance(0, share), Rebalance::Take { wanted: 4 });
    }
}
