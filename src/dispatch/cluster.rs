//! Several nodes on one PostgreSQL database: which subscriptions this node delivers.
//!
//! Each node holds leases on its share of the enabled subscriptions (all of them divided
//! by the live nodes, rounded up) and renews them every third of the lease's life. A
//! node over its share hands the extra ones over: it stops their workers, waits until
//! their progress is committed, and only then gives the lease up, so the next holder
//! starts from a cursor that nothing after it was sent from (no delivery twice). A node
//! under its share takes subscriptions that nobody holds or whose lease ran out: that is
//! how a dead node's work is taken over, at most one lease's life after its last renewal.
//! Changes (a subscription created, deleted, enabled; a node leaving) are announced on
//! a channel so every node looks at once rather than at its next renewal.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use sqlx::postgres::PgListener;

use super::Dispatcher;
use crate::model::now_millis;
use crate::store::{Cluster, StoreError};

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
}

impl Leases {
    pub(super) fn new(dispatcher: Dispatcher, cluster: Cluster) -> Leases {
        let ttl = dispatcher.config().lease_ttl;
        Leases {
            dispatcher,
            cluster,
            ttl,
        }
    }

    pub(super) async fn run(self) {
        let cancel = self.dispatcher.shared.cancel.clone();
        let mut listener: Option<PgListener> = None;
        let mut renewed = Instant::now();
        loop {
            self.stop_if_expired(renewed).await;
            // A pass started before the leases ran out may end after: it counts from
            // its start.
            let started = Instant::now();
            let passed = match self.pass().await {
                Ok(()) => {
                    renewed = started;
                    true
                }
                Err(error) => {
                    tracing::warn!(%error, node = self.cluster.node(), "renewing leases failed");
                    false
                }
            };
            self.stop_if_expired(renewed).await;
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
            // Wake up when the leases run out, too, if that comes before the next pass.
            let now = tokio::time::Instant::now();
            let expiry = tokio::time::Instant::from_std(renewed + self.ttl);
            let wake = match now + self.ttl / 3 {
                next_pass if expiry > now => next_pass.min(expiry),
                next_pass => next_pass,
            };
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
    async fn stop_if_expired(&self, renewed: Instant) {
        if renewed.elapsed() >= self.ttl && !self.dispatcher.running().is_empty() {
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
                        .control(id, super::worker::Control::Rewind(cursor))
                        .await;
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

    /// Renews this node's leases, stops what it no longer holds, hands over or takes
    /// subscriptions to reach its share, and starts the workers it lacks.
    async fn pass(&self) -> Result<(), StoreError> {
        let _leasing = self.dispatcher.shared.leasing.lock().await;
        let now = now_millis();
        let ttl = self.dispatcher.lease_ttl_millis();
        let live = self.cluster.heartbeat(now, ttl).await?.max(1);
        let held: HashSet<String> = self.cluster.renew(now + ttl).await?.into_iter().collect();
        // Taken over by another node (this one was too slow to renew) or deleted.
        for id in self.dispatcher.running() {
            if !held.contains(&id) {
                tracing::info!(subscription = %id, "no longer held by this node: stopping its worker");
                self.dispatcher.remove(&id);
            }
        }
        let mut enabled = Vec::new();
        for subscription in self.cluster.held_subscriptions().await? {
            if subscription.disabled.is_some() {
                // Its worker stopped when it was disabled; whoever enables it takes it.
                self.dispatcher.remove(&subscription.id);
                self.cluster.release(&subscription.id).await?;
            } else {
                enabled.push(subscription);
            }
        }
        let total = self.cluster.enabled_count().await?;
        let share = usize::try_from((total + live - 1) / live).unwrap_or(usize::MAX);
        if enabled.len() > share {
            // The most recently created go: the oldest stay where they are.
            for subscription in enabled.split_off(share) {
                self.dispatcher.hand_over(&subscription.id).await;
                self.cluster.release(&subscription.id).await?;
                tracing::info!(subscription = %subscription.id, "handed over to another node");
            }
            self.cluster.notify(CHANGED).await?;
        } else if enabled.len() < share {
            let wanted = i64::try_from(share - enabled.len()).unwrap_or(i64::MAX);
            let claimed = self.cluster.claim(now, now + ttl, wanted).await?;
            if !claimed.is_empty() {
                let claimed: HashSet<String> = claimed.into_iter().collect();
                tracing::info!(count = claimed.len(), "took subscriptions over");
                enabled.extend(
                    self.cluster
                        .held_subscriptions()
                        .await?
                        .into_iter()
                        .filter(|s| claimed.contains(&s.id)),
                );
            }
        }
        for subscription in enabled {
            if self.dispatcher.is_running(&subscription.id) {
                continue;
            }
            let id = subscription.id.clone();
            if let Err(error) = self.dispatcher.start_worker(subscription) {
                tracing::error!(%error, subscription = %id, "cannot deliver to this subscription");
            }
        }
        Ok(())
    }
}
