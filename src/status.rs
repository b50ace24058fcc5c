//! "Did my event arrive?": one event's delivery status on every subscription that wants
//! it, derived from what the store keeps anyway (each subscription's cursor, its retry
//! set and the attempt records), so no row per successful delivery is needed for it.

use crate::model::{StoredEvent, Subscription};
use crate::store::{Database, EventRetry, StoreError, StoredAttempt};

/// Where one event stands on one subscription.
#[derive(Debug, Clone, PartialEq)]
pub enum Status {
    /// Delivered (at once, or by a retry).
    Delivered,
    /// Not reached yet: the subscription's cursor is `behind` sequence numbers before it.
    Pending { behind: i64 },
    /// Failed, and waits for its next attempt.
    Retrying(EventRetry),
    /// Used up its retries (a dead letter).
    Dead(EventRetry),
}

impl Status {
    pub fn as_str(&self) -> &'static str {
        match self {
            Status::Delivered => "delivered",
            Status::Pending { .. } => "pending",
            Status::Retrying(_) => "retrying",
            Status::Dead(_) => "dead",
        }
    }
}

/// One subscription's side of an event.
#[derive(Debug, Clone)]
pub struct SubscriptionStatus {
    pub subscription: Subscription,
    pub status: Status,
    /// Its attempt records for the event, oldest first (a delivery that succeeded at
    /// once has none).
    pub attempts: Vec<StoredAttempt>,
}

/// An event and where it stands on each subscription that wants it.
#[derive(Debug, Clone)]
pub struct EventDeliveries {
    pub event: StoredEvent,
    pub subscriptions: Vec<SubscriptionStatus>,
}

/// The delivery status of the account's event `id`; `None` when the log has no such
/// event. Subscriptions created after the event was committed are not counted: it was
/// before their time (a replay may still send it to them).
pub async fn event_deliveries(
    db: &Database,
    account: &str,
    id: &str,
) -> Result<Option<EventDeliveries>, StoreError> {
    let Some(event) = db.event_by_id(account, id).await? else {
        return Ok(None);
    };
    let wanting: Vec<Subscription> = db
        .list_subscriptions(account)
        .await?
        .into_iter()
        .filter(|s| s.created_at <= event.received_at && s.wants(&event))
        .collect();
    let retries = db.retries_of_event(event.seq).await?;
    let attempts = db.attempts_of_event(event.seq).await?;
    let subscriptions = wanting
        .into_iter()
        .map(|subscription| {
            let retry = retries
                .iter()
                .find(|r| r.subscription_id == subscription.id)
                .cloned();
            let status = match retry {
                Some(retry) if retry.dead_at.is_some() => Status::Dead(retry),
                Some(retry) => Status::Retrying(retry),
                // Every event up to the cursor was delivered or went to the retry set.
                None if subscription.cursor >= event.seq => Status::Delivered,
                None => Status::Pending {
                    behind: event.seq - subscription.cursor,
                },
            };
            let mine = attempts
                .iter()
                .filter(|(s, _)| *s == subscription.id)
                .map(|(_, a)| a.clone())
                .collect();
            SubscriptionStatus {
                subscription,
                status,
                attempts: mine,
            }
        })
        .collect();
    Ok(Some(EventDeliveries {
        event,
        subscriptions,
    }))
}
