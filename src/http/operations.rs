//! The routes under the console that any client may use too: who a token is, the
//! accounts the server knows, one event's delivery status, redelivering dead letters, a
//! test event to one subscription, and the counters over time of the charts.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::auth::Caller;
use super::body::Query;
use super::error::{ApiError, ErrorBody};
use super::events::EventOut;
use super::subscriptions::{AttemptOut, find};
use crate::model::{Scope, StoredEvent, now_millis};
use crate::sinks::AttemptResult;
use crate::stats::Point;
use crate::status::{self, Status};

/// Who the bearer token speaks for.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WhoamiOut {
    /// True for the admin token (every account).
    pub admin: bool,
    /// The account of an account key.
    pub account: Option<String>,
    /// What the token may do (`publish`, `read`, `manage`).
    pub scopes: Vec<String>,
    /// When an expiring key (or a portal session) stops working, in epoch milliseconds.
    pub expires_at: Option<i64>,
}

/// Who the token is: the admin, or an account key with its account and scopes.
#[utoipa::path(
    get, path = "/v1/whoami", tag = "console",
    responses((status = 200, body = WhoamiOut)),
    security(("bearer" = []))
)]
pub async fn whoami(caller: Caller) -> Json<WhoamiOut> {
    Json(match caller {
        Caller::Admin => WhoamiOut {
            admin: true,
            account: None,
            scopes: Scope::ALL.iter().map(|s| s.as_str().to_owned()).collect(),
            expires_at: None,
        },
        Caller::Account(key) => WhoamiOut {
            admin: false,
            account: match &key.owner {
                crate::model::KeyOwner::Account(account) => Some(account.clone()),
                crate::model::KeyOwner::Admin => None,
            },
            scopes: key.scopes.iter().map(|s| s.as_str().to_owned()).collect(),
            expires_at: key.expires_at,
        },
    })
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AccountOut {
    pub account: String,
    /// Its account keys (portal sessions included).
    pub keys: i64,
    /// Its subscriptions (job callbacks included).
    pub subscriptions: i64,
    /// Its events in the log.
    pub events: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AccountsOut {
    pub accounts: Vec<AccountOut>,
}

/// Admin: the accounts the server knows (from keys, subscriptions and events), by name.
#[utoipa::path(
    get, path = "/v1/accounts", tag = "console",
    responses((status = 200, body = AccountsOut)),
    security(("bearer" = []))
)]
pub async fn accounts(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<AccountsOut>, ApiError> {
    caller.check_admin()?;
    let accounts = state.store.db().accounts().await?;
    Ok(Json(AccountsOut {
        accounts: accounts
            .into_iter()
            .map(|a| AccountOut {
                account: a.account,
                keys: a.keys,
                subscriptions: a.subscriptions,
                events: a.events,
            })
            .collect(),
    }))
}

/// One subscription's side of an event.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventDeliveryOut {
    pub subscription_id: String,
    /// `delivered`, `pending` (not reached yet), `retrying` (failed, a retry is
    /// scheduled) or `dead` (no retries left: a dead letter).
    pub status: String,
    /// The subscription's destination (a webhook's URL, an AWS resource).
    pub destination: crate::model::Destination,
    /// The subscription's cursor: every event up to it was delivered or went to the
    /// retry set.
    pub cursor: i64,
    /// `pending`: how many sequence numbers the cursor is behind the event.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub behind: Option<i64>,
    /// `retrying`: when the next attempt is due.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<i64>,
    /// `retrying` and `dead`: the last attempt's error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dead_at: Option<i64>,
    /// The subscription is disabled (its reason's code): pending events wait.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disabled: Option<String>,
    /// Its attempt records of the event, oldest first (none for a delivery that
    /// succeeded at once).
    pub attempts: Vec<AttemptOut>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EventDeliveriesOut {
    pub event: EventOut,
    /// Every subscription that wants the event (and existed when it was committed).
    pub deliveries: Vec<EventDeliveryOut>,
}

/// One event's delivery status on every subscription that wants it, derived from the
/// cursors, the retry set and the attempt records.
#[utoipa::path(
    get, path = "/v1/accounts/{account}/events/{id}/deliveries", tag = "events",
    params(("account" = String, Path), ("id" = String, Path, description = "the event's id (`guid`)")),
    responses((status = 200, body = EventDeliveriesOut), (status = 404, body = ErrorBody)),
    security(("bearer" = []))
)]
pub async fn event_deliveries(
    State(state): State<AppState>,
    caller: Caller,
    Path((account, id)): Path<(String, String)>,
) -> Result<Json<EventDeliveriesOut>, ApiError> {
    caller.require(Scope::Read, &account)?;
    let found = status::event_deliveries(state.store.db(), &account, &id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no event {id:?} in account {account:?}")))?;
    let deliveries = found
        .subscriptions
        .into_iter()
        .map(|one| {
            let retry = match &one.status {
                Status::Retrying(retry) | Status::Dead(retry) => Some(retry.clone()),
                _ => None,
            };
            EventDeliveryOut {
                subscription_id: one.subscription.id.clone(),
                status: one.status.as_str().to_owned(),
                destination: one.subscription.destination.clone(),
                cursor: one.subscription.cursor,
                behind: match one.status {
                    Status::Pending { behind } => Some(behind),
                    _ => None,
                },
                next_attempt_at: retry
                    .as_ref()
                    .filter(|r| r.dead_at.is_none())
                    .map(|r| r.next_attempt_at),
                last_error: retry.as_ref().map(|r| r.last_error.clone()),
                dead_at: retry.as_ref().and_then(|r| r.dead_at),
                disabled: one
                    .subscription
                    .disabled
                    .as_ref()
                    .map(|d| d.code().to_owned()),
                attempts: one.attempts.into_iter().map(AttemptOut::from).collect(),
            }
        })
        .collect();
    Ok(Json(EventDeliveriesOut {
        event: EventOut::new(found.event)?,
        deliveries,
    }))
}

/// Which deliveries to send again: without `sequence`, every dead letter of the
/// subscription; with it, that event's (a dead letter, or a waiting retry: "retry now").
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RedeliverIn {
    /// The event's sequence number.
    #[serde(default, deserialize_with = "super::body::integer")]
    #[schema(minimum = 1)]
    pub sequence: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RedeliverOut {
    /// How many deliveries were made due now.
    pub redelivered: u64,
}

/// Redeliver dead letters (all of the subscription's, or one event's), or retry a
/// waiting delivery now: each gets one more attempt at once (failing again, it is dead
/// again).
#[utoipa::path(
    post, path = "/v1/accounts/{account}/subscriptions/{id}/redeliver", tag = "subscriptions",
    params(("account" = String, Path), ("id" = String, Path)),
    request_body(content = Option<RedeliverIn>, description = "optional: `{\"sequence\": n}` for one event"),
    responses((status = 202, body = RedeliverOut), (status = 404, body = ErrorBody)),
    security(("bearer" = []))
)]
pub async fn redeliver(
    State(state): State<AppState>,
    caller: Caller,
    Path((account, id)): Path<(String, String)>,
    body: Bytes,
) -> Result<(StatusCode, Json<RedeliverOut>), ApiError> {
    let subscription = find(&state, &caller, Scope::Manage, &account, &id).await?;
    let request: Option<RedeliverIn> = super::body::read_optional(&body, "invalid_redeliver")?;
    let sequence = request.and_then(|r| r.sequence);
    // The worker's last progress (its newest dead letters) must land first.
    state.store.flush().await?;
    let redelivered = state
        .store
        .db()
        .redeliver(&subscription.id, sequence, now_millis())
        .await?;
    if redelivered > 0 {
        state.dispatcher.retries_due();
    }
    tracing::info!(subscription = %id, redelivered, "redelivery requested");
    Ok((StatusCode::ACCEPTED, Json(RedeliverOut { redelivered })))
}

/// What the destination answered to a test event.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TestEventOut {
    /// The test event's id (its `webhook-id`).
    pub id: String,
    pub delivered: bool,
    pub status_code: Option<u16>,
    pub error: Option<String>,
    pub latency_ms: i64,
    pub response: Option<String>,
}

/// Send a test event (`reelay.test`, not in the log) to this subscription alone, signed
/// and formatted like its deliveries, once: the answer says what its destination did.
/// Nothing is recorded or retried.
#[utoipa::path(
    post, path = "/v1/accounts/{account}/subscriptions/{id}/test", tag = "subscriptions",
    params(("account" = String, Path), ("id" = String, Path)),
    responses((status = 200, body = TestEventOut), (status = 404, body = ErrorBody)),
    security(("bearer" = []))
)]
pub async fn test_event(
    State(state): State<AppState>,
    caller: Caller,
    Path((account, id)): Path<(String, String)>,
) -> Result<Json<TestEventOut>, ApiError> {
    let subscription = find(&state, &caller, Scope::Manage, &account, &id).await?;
    let now = now_millis();
    let event_id = format!("test_{}", uuid::Uuid::now_v7().simple());
    let time = chrono::DateTime::from_timestamp_millis(now)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let body = serde_json::json!({
        "eventName": "reelay.test",
        "guid": event_id,
        "timestamp": time,
        "tenant": account,
        "message": "a test event sent from Reelay to this subscription alone",
        "subscriptionId": id,
    });
    let event = StoredEvent {
        seq: 0,
        account: account.clone(),
        id: event_id.clone(),
        name: "reelay.test".into(),
        topic: "test".into(),
        entity_key: None,
        occurred_at: now,
        received_at: now,
        body: body.to_string().into(),
        trace: None,
    };
    let attempted = state
        .dispatcher
        .send_test(subscription, event)
        .await
        .map_err(|error| ApiError::unprocessable("invalid_subscription", error.to_string()))?;
    let error = match &attempted.result {
        AttemptResult::Delivered => None,
        AttemptResult::Failed { error, .. }
        | AttemptResult::Throttled { error, .. }
        | AttemptResult::Rejected { error } => Some(error.clone()),
        AttemptResult::Gone => Some("the destination answered 410 Gone".to_owned()),
    };
    Ok(Json(TestEventOut {
        id: event_id,
        delivered: matches!(attempted.result, AttemptResult::Delivered),
        status_code: attempted.status,
        error,
        latency_ms: i64::try_from(attempted.latency.as_millis()).unwrap_or(i64::MAX),
        response: attempted.response,
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StatsQuery {
    /// Only this account's counters (an account key: always its own); without it, the
    /// whole server's (admin).
    pub account: Option<String>,
    /// How many buckets of 10 s, newest last (default 60, at most 360: an hour).
    #[param(minimum = 1, maximum = 360)]
    pub buckets: Option<u32>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StatsOut {
    /// The account, or absent for the whole server.
    pub account: Option<String>,
    /// The width of a bucket, in milliseconds.
    pub bucket_ms: i64,
    /// The log head now (the last sequence number handed out): a subscription's lag is
    /// this less its cursor.
    pub log_head: i64,
    /// Deliveries waiting for a retry now (of the account's subscriptions, or all).
    pub retrying: i64,
    /// Dead letters now.
    pub dead_letters: i64,
    pub points: Vec<Point>,
}

/// The counters over time of the console's charts (in memory since the server
/// started): events published, deliveries, failed attempts, retry depth and
/// publish→arrival latency percentiles, per bucket of 10 s.
#[utoipa::path(
    get, path = "/v1/stats", tag = "console",
    params(StatsQuery),
    responses((status = 200, body = StatsOut)),
    security(("bearer" = []))
)]
pub async fn stats(
    State(state): State<AppState>,
    caller: Caller,
    Query(params): Query<StatsQuery>,
) -> Result<Json<StatsOut>, ApiError> {
    let account = match (&caller, params.account) {
        (Caller::Admin, account) => account,
        (Caller::Account(key), account) => {
            let own = match &key.owner {
                crate::model::KeyOwner::Account(own) => own.clone(),
                crate::model::KeyOwner::Admin => String::new(),
            };
            let account = account.unwrap_or(own);
            caller.require(Scope::Read, &account)?;
            Some(account)
        }
    };
    let buckets = params.buckets.unwrap_or(60) as usize;
    let log_head = state.store.log_position().await?;
    let (retrying, dead_letters) = state.store.db().retry_counts(account.as_deref()).await?;
    Ok(Json(StatsOut {
        log_head,
        retrying,
        dead_letters,
        points: state
            .dispatcher
            .stats()
            .points(account.as_deref(), buckets, now_millis()),
        account,
        bucket_ms: crate::stats::BUCKET_MILLIS,
    }))
}

pub fn router() -> axum::Router<AppState> {
    axum::Router::new()
        .route("/v1/whoami", get(whoami))
        .route("/v1/accounts", get(accounts))
        .route("/v1/stats", get(stats))
        .route(
            "/v1/accounts/{account}/events/{id}/deliveries",
            get(event_deliveries),
        )
        .route(
            "/v1/accounts/{account}/subscriptions/{id}/redeliver",
            post(redeliver),
        )
        .route(
            "/v1/accounts/{account}/subscriptions/{id}/test",
            post(test_event),
        )
}
