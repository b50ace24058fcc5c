//! Rows as both backends return them, and their conversion to the model. The columns
//! have the same names and kinds (64-bit integers, text) in SQLite and PostgreSQL, so
//! one `FromRow` serves both.

use sqlx::FromRow;

use super::{
    AttemptRecord, EntityState, LiveEntityCount, Result, ResyncPosition, ResyncProgress, ResyncRun,
    RetryEntry, Sealer, StoreError, StoredAttempt,
};
use crate::model::{
    ApiKey, Destination, DisabledReason, EventFilter, Format, KeyOwner, Ordering, PayloadFilter,
    PreviousSecret, Scope, StoredEvent, Subscription, SubscriptionKind, TokenVerification,
    TraceContext, Transform,
};
use crate::sinks::destination::StoredDestination;

#[derive(FromRow)]
pub(super) struct EventRow {
    seq: i64,
    account: String,
    event_id: String,
    name: String,
    topic: String,
    entity_key: Option<String>,
    occurred_at: i64,
    received_at: i64,
    body: String,
    traceparent: Option<String>,
    tracestate: Option<String>,
}

impl From<EventRow> for StoredEvent {
    fn from(row: EventRow) -> StoredEvent {
        StoredEvent {
            seq: row.seq,
            account: row.account,
            id: row.event_id,
            name: row.name,
            topic: row.topic,
            entity_key: row.entity_key,
            occurred_at: row.occurred_at,
            received_at: row.received_at,
            body: row.body.into(),
            trace: row.traceparent.map(|traceparent| {
                std::sync::Arc::new(TraceContext {
                    traceparent,
                    tracestate: row.tracestate,
                })
            }),
        }
    }
}

#[derive(FromRow)]
pub(super) struct SubscriptionRow {
    id: String,
    account: String,
    destination: String,
    events: String,
    topics: String,
    format: String,
    secret: String,
    public_key: Option<String>,
    previous_secret: Option<String>,
    previous_until: Option<i64>,
    created_at: i64,
    cursor: i64,
    disabled_code: Option<String>,
    disabled_message: Option<String>,
    disabled_at: Option<i64>,
    failing_since: Option<i64>,
    last_success_at: Option<i64>,
    delivered: i64,
    job_id: Option<String>,
    expires_at: Option<i64>,
    payload_filter: Option<String>,
    transform: Option<String>,
    rate_limit: Option<String>,
    ordering: Option<String>,
}

/// The rows that can be read as subscriptions, and why the others cannot.
pub(super) fn open_subscriptions(
    rows: Vec<SubscriptionRow>,
    sealer: &Sealer,
) -> (Vec<Subscription>, Vec<StoreError>) {
    let mut readable = Vec::with_capacity(rows.len());
    let mut unreadable = Vec::new();
    for row in rows {
        match open_subscription(row, sealer) {
            Ok(subscription) => readable.push(subscription),
            Err(error) => unreadable.push(error),
        }
    }
    (readable, unreadable)
}

impl SubscriptionRow {
    pub(super) fn id(&self) -> &str {
        &self.id
    }
}

/// A stored subscription with its secrets decrypted.
pub(super) fn open_subscription(row: SubscriptionRow, sealer: &Sealer) -> Result<Subscription> {
    let mut subscription = Subscription::try_from(row)?;
    subscription.secret = sealer.open(&subscription.secret)?;
    if let Some(previous) = &mut subscription.previous_secret {
        previous.secret = sealer.open(&previous.secret)?;
    }
    Ok(subscription)
}

impl TryFrom<SubscriptionRow> for Subscription {
    type Error = StoreError;

    fn try_from(row: SubscriptionRow) -> Result<Subscription> {
        let corrupt = |what: &str| StoreError::Corrupt(format!("subscription {}: {what}", row.id));
        let destination: Destination =
            StoredDestination::parse(&row.destination).map_err(|_| corrupt("destination"))?;
        let events: Vec<String> =
            serde_json::from_str(&row.events).map_err(|_| corrupt("events"))?;
        let topics: Vec<String> =
            serde_json::from_str(&row.topics).map_err(|_| corrupt("topics"))?;
        let format = Format::parse(&row.format).ok_or_else(|| corrupt("format"))?;
        let disabled = row.disabled_code.map(|code| {
            DisabledReason::from_parts(&code, row.disabled_message.unwrap_or_default())
        });
        let kind = match (row.job_id, row.expires_at) {
            (None, None) => SubscriptionKind::Standing,
            (Some(job), Some(expires_at)) => SubscriptionKind::JobCallback { job, expires_at },
            _ => return Err(corrupt("job_id and expires_at")),
        };
        let payload_filter = match &row.payload_filter {
            None => None,
            Some(text) => {
                let source: serde_json::Value =
                    serde_json::from_str(text).map_err(|_| corrupt("payload_filter"))?;
                Some(PayloadFilter::compile(&source).map_err(|_| corrupt("payload_filter"))?)
            }
        };
        // Compiled at its first run: reading a subscription stays cheap.
        let transform = row.transform.map(Transform::stored);
        let rate_limit = match &row.rate_limit {
            None => None,
            Some(text) => Some(serde_json::from_str(text).map_err(|_| corrupt("rate_limit"))?),
        };
        let ordering = match &row.ordering {
            None => Ordering::None,
            Some(name) => Ordering::parse(name).ok_or_else(|| corrupt("ordering"))?,
        };
        Ok(Subscription {
            id: row.id,
            account: row.account,
            kind,
            destination,
            filter: EventFilter { events, topics },
            payload_filter,
            transform,
            rate_limit,
            ordering,
            format,
            secret: row.secret,
            public_key: row.public_key,
            previous_secret: match (row.previous_secret, row.previous_until) {
                (Some(secret), Some(until)) => Some(PreviousSecret { secret, until }),
                _ => None,
            },
            created_at: row.created_at,
            cursor: row.cursor,
            disabled,
            disabled_at: row.disabled_at,
            failing_since: row.failing_since,
            last_success_at: row.last_success_at,
            delivered: row.delivered as u64,
        })
    }
}

/// An entity joined with the event that set its state.
#[derive(FromRow)]
pub(super) struct EntityRow {
    #[sqlx(rename = "type")]
    entity_type: String,
    id: String,
    deleted: i64,
    #[sqlx(flatten)]
    event: EventRow,
}

impl From<EntityRow> for EntityState {
    fn from(row: EntityRow) -> EntityState {
        EntityState {
            entity_type: row.entity_type,
            id: row.id,
            deleted: row.deleted != 0,
            event: row.event.into(),
        }
    }
}

/// An attempt record with its subscription (one event's attempts, across subscriptions).
#[derive(FromRow)]
pub(super) struct EventAttemptRow {
    pub(super) subscription_id: String,
    #[sqlx(flatten)]
    pub(super) attempt: AttemptRow,
}

#[derive(FromRow)]
pub(super) struct AttemptRow {
    id: i64,
    seq: i64,
    event_id: String,
    attempt: i64,
    at: i64,
    outcome: String,
    status: Option<i64>,
    error: Option<String>,
    latency_ms: i64,
    response: Option<String>,
    next_attempt_at: Option<i64>,
    resync_id: Option<String>,
}

impl From<AttemptRow> for StoredAttempt {
    fn from(row: AttemptRow) -> StoredAttempt {
        StoredAttempt {
            id: row.id,
            record: AttemptRecord {
                seq: row.seq,
                event_id: row.event_id,
                resync_id: row.resync_id,
                attempt: row.attempt as u32,
                at: row.at,
                outcome: match row.outcome.as_str() {
                    "delivered" => "delivered",
                    "dead" => "dead",
                    _ => "failed",
                },
                status: row.status.and_then(|status| u16::try_from(status).ok()),
                error: row.error,
                latency_ms: row.latency_ms,
                response: row.response,
                next_attempt_at: row.next_attempt_at,
            },
        }
    }
}

#[derive(FromRow)]
pub(super) struct RetryRow {
    seq: i64,
    resync_id: String,
    event_id: String,
    attempts: i64,
    next_attempt_at: i64,
    last_error: String,
    dead_at: Option<i64>,
}

impl From<RetryRow> for RetryEntry {
    fn from(row: RetryRow) -> RetryEntry {
        RetryEntry {
            seq: row.seq,
            event_id: row.event_id,
            resync_id: resync_from_key(row.resync_id),
            attempts: row.attempts as u32,
            next_attempt_at: row.next_attempt_at,
            last_error: row.last_error,
            dead_at: row.dead_at,
        }
    }
}

#[derive(FromRow)]
pub(super) struct DueRetryRow {
    pub subscription_id: String,
    pub seq: i64,
    pub resync_id: String,
    pub attempts: i64,
}

/// The retry set keys incremental deliveries with `''` (a key column cannot be NULL);
/// everywhere else that is `None`.
pub(super) fn resync_key(resync_id: Option<&str>) -> &str {
    resync_id.unwrap_or("")
}

pub(super) fn resync_from_key(resync_id: String) -> Option<String> {
    (!resync_id.is_empty()).then_some(resync_id)
}

/// A resync's position as its two columns (`position_type` NULL: completed).
pub(super) fn resync_position(resync: &ResyncProgress) -> (Option<&str>, &str) {
    match &resync.position {
        Some(position) => (
            Some(position.entity_type.as_str()),
            position.after_id.as_str(),
        ),
        None => (None, ""),
    }
}

#[derive(FromRow)]
pub(super) struct ResyncRunRow {
    id: String,
    subscription_id: String,
    account: String,
    types: String,
    snapshot_seq: i64,
    total: i64,
    sent: i64,
    position_type: Option<String>,
    position_id: String,
    started_at: i64,
    completed_at: Option<i64>,
}

impl TryFrom<ResyncRunRow> for ResyncRun {
    type Error = StoreError;

    fn try_from(row: ResyncRunRow) -> Result<ResyncRun> {
        let types: Vec<String> = serde_json::from_str(&row.types)
            .map_err(|_| StoreError::Corrupt(format!("resync run {}: types", row.id)))?;
        Ok(ResyncRun {
            id: row.id,
            subscription_id: row.subscription_id,
            account: row.account,
            types,
            snapshot_seq: row.snapshot_seq,
            total: u64::try_from(row.total).unwrap_or(0),
            sent: u64::try_from(row.sent).unwrap_or(0),
            position: row.position_type.map(|entity_type| ResyncPosition {
                entity_type,
                after_id: row.position_id,
            }),
            started_at: row.started_at,
            completed_at: row.completed_at,
        })
    }
}

#[derive(FromRow)]
pub(super) struct LiveEntityCountRow {
    name: String,
    topic: String,
    entities: i64,
}

impl From<LiveEntityCountRow> for LiveEntityCount {
    fn from(row: LiveEntityCountRow) -> LiveEntityCount {
        LiveEntityCount {
            name: row.name,
            topic: row.topic,
            count: u64::try_from(row.entities).unwrap_or(0),
        }
    }
}

#[derive(FromRow)]
pub(super) struct TokenVerificationRow {
    account: String,
    hs256_secret: Option<String>,
    public_keys: String,
    issuer: Option<String>,
    audience: Option<String>,
    leeway_seconds: i64,
    updated_at: i64,
}

impl TryFrom<TokenVerificationRow> for TokenVerification {
    type Error = StoreError;

    fn try_from(row: TokenVerificationRow) -> Result<TokenVerification> {
        let public_keys: Vec<String> = serde_json::from_str(&row.public_keys).map_err(|_| {
            StoreError::Corrupt(format!(
                "token verification of {}: public_keys",
                row.account
            ))
        })?;
        Ok(TokenVerification {
            account: row.account,
            hs256_secret: row.hs256_secret,
            public_keys,
            issuer: row.issuer,
            audience: row.audience,
            leeway_seconds: u64::try_from(row.leeway_seconds).unwrap_or(0),
            updated_at: row.updated_at,
        })
    }
}

pub(super) fn to_json<T: serde::Serialize>(value: &T) -> String {
    // Serializing these plain types cannot fail.
    serde_json::to_string(value).unwrap_or_default()
}

#[derive(FromRow)]
pub(super) struct KeyRow {
    id: String,
    account: Option<String>,
    name: Option<String>,
    scopes: String,
    events: Option<String>,
    topics: Option<String>,
    prefix: String,
    created_at: i64,
    last_used_at: Option<i64>,
    expires_at: Option<i64>,
}

impl TryFrom<KeyRow> for ApiKey {
    type Error = StoreError;

    fn try_from(row: KeyRow) -> Result<ApiKey> {
        let corrupt = |what: &str| StoreError::Corrupt(format!("key {}: {what}", row.id));
        let names: Vec<String> =
            serde_json::from_str(&row.scopes).map_err(|_| corrupt("scopes"))?;
        let scopes = names
            .iter()
            .map(|name| Scope::parse(name).ok_or_else(|| corrupt("scopes")))
            .collect::<Result<Vec<_>>>()?;
        let list = |text: Option<String>, what: &str| -> Result<Vec<String>> {
            match text {
                None => Ok(Vec::new()),
                Some(text) => serde_json::from_str(&text).map_err(|_| corrupt(what)),
            }
        };
        let events = list(row.events, "events")?;
        let topics = list(row.topics, "topics")?;
        Ok(ApiKey {
            owner: match row.account {
                None => KeyOwner::Admin,
                Some(account) => KeyOwner::Account(account),
            },
            id: row.id,
            name: row.name,
            scopes,
            events,
            topics,
            prefix: row.prefix,
            created_at: row.created_at,
            last_used_at: row.last_used_at,
            expires_at: row.expires_at,
        })
    }
}

/// A list column of a key: NULL when empty (no limit).
pub(super) fn key_list(values: &[String]) -> Option<String> {
    (!values.is_empty()).then(|| to_json(&values))
}
