//! `/v1/accounts/{account}/subscriptions/{id}/resync`: a full resync of a subscription
//! (catalog mirroring, seed 001), and its progress.
//!
//! A run sends the subscription the latest event of every live entity of the requested
//! types whose event the subscription's filter accepts, marked `"resyncType": "full"` with
//! the run's `resyncId`; incremental deliveries carry on beside it (see
//! [`crate::dispatch`]). One run at a time per subscription.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::post;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::AppState;
use super::auth::Caller;
use super::error::{ApiError, ErrorBody};
use super::subscriptions::find;
use crate::model::Scope;
use crate::model::{Subscription, SubscriptionKind, now_millis};
use crate::store::{ResyncPosition, ResyncRun};

/// What to resync. Without a body, or without `types`, every entity type of the catalog.
#[derive(Debug, Deserialize, ToSchema)]
pub struct ResyncIn {
    /// Entity types (`asset`, `category`, `contentPanel`, see `GET /v1/catalog`).
    pub types: Option<Vec<String>>,
}

/// A resync run and how far it got.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResyncOut {
    /// The `resyncId` of every delivery of the run.
    pub resync_id: String,
    pub subscription_id: String,
    /// The entity types sent, in the order they are sent.
    pub types: Vec<String>,
    /// `running` or `completed` (every entity was delivered or waits in the retry set).
    pub state: String,
    /// Entities sent so far (delivered, or failed and in the retry set).
    pub sent: u64,
    /// Live entities the subscription was to receive, counted when the run started.
    /// Entities created or deleted during the run make `sent` end above or below it.
    pub total: u64,
    /// The log head when the run started: incremental deliveries cover every change
    /// after it.
    pub snapshot_sequence: i64,
    pub started_at: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<i64>,
}

impl From<ResyncRun> for ResyncOut {
    fn from(run: ResyncRun) -> ResyncOut {
        ResyncOut {
            state: match run.completed_at {
                Some(_) => "completed",
                None => "running",
            }
            .to_owned(),
            resync_id: run.id,
            subscription_id: run.subscription_id,
            types: run.types,
            sent: run.sent,
            total: run.total,
            snapshot_sequence: run.snapshot_seq,
            started_at: run.started_at,
            completed_at: run.completed_at,
        }
    }
}

/// The entity types a request names (`field`), checked against the catalog, sorted and
/// without repeats; none named: every type the catalog keeps.
pub(super) fn entity_types(
    state: &AppState,
    given: Option<&Value>,
    field: &str,
) -> Result<Vec<String>, ApiError> {
    let known = state.catalog.entity_types();
    let invalid = |message: String| ApiError::Unprocessable {
        code: "invalid_resync",
        message,
        index: None,
        field: Some(field.to_owned()),
    };
    let mut types: Vec<String> = match given {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| {
                item.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| invalid(format!("every item of {field} must be a string")))
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(invalid(format!("{field} must be an array of entity types"))),
    };
    if let Some(unknown) = types.iter().find(|t| !known.contains(&t.as_str())) {
        return Err(ApiError::Unprocessable {
            code: "unknown_entity_type",
            message: format!(
                "{unknown:?} is not an entity type of the catalog (one of: {})",
                known.join(", ")
            ),
            index: None,
            field: Some(field.to_owned()),
        });
    }
    if types.is_empty() {
        types = known.into_iter().map(str::to_owned).collect();
    }
    types.sort();
    types.dedup();
    Ok(types)
}

/// Starts a resync run of `subscription` over `types`; `409` while another one runs.
pub(super) async fn start_run(
    state: &AppState,
    subscription: &Subscription,
    types: Vec<String>,
) -> Result<ResyncRun, ApiError> {
    if !matches!(subscription.kind, SubscriptionKind::Standing) {
        return Err(ApiError::unprocessable(
            "resync_not_supported",
            "a job's callback receives that job's notifications only: it has no resync",
        ));
    }
    // Every event up to here is in the entities table (committed before the head moved),
    // and the subscription's cursor is at or before it, so no change falls in between.
    let snapshot_seq = state.store.log_position().await?;
    let mut total = 0;
    for entity_type in &types {
        total += state
            .store
            .db()
            .live_entity_counts(&subscription.account, entity_type)
            .await?
            .iter()
            .filter(|group| subscription.filter.matches(&group.name, &group.topic))
            .map(|group| group.count)
            .sum::<u64>();
    }
    let started_at = now_millis();
    let run = ResyncRun {
        id: format!("rs_{}", uuid::Uuid::now_v7().simple()),
        subscription_id: subscription.id.clone(),
        account: subscription.account.clone(),
        position: types.first().map(|first| ResyncPosition {
            entity_type: first.clone(),
            after_id: String::new(),
        }),
        // No type at all (a catalog without entities): nothing to send.
        completed_at: types.is_empty().then_some(started_at),
        types,
        snapshot_seq,
        total,
        sent: 0,
        started_at,
    };
    if !state.store.db().insert_resync_run(&run).await? {
        let running = state
            .store
            .db()
            .latest_resync_run(&subscription.id)
            .await?
            .map(|run| run.id)
            .unwrap_or_default();
        return Err(ApiError::Conflict {
            code: "resync_running",
            message: format!(
                "subscription {:?} already has a resync running ({running}); wait until it is completed (GET …/resync)",
                subscription.id
            ),
        });
    }
    if run.completed_at.is_none() && !state.dispatcher.start_resync(run.clone()).await {
        tracing::info!(subscription = %subscription.id, resync = %run.id, "resync waits until the subscription is enabled");
    }
    tracing::info!(subscription = %subscription.id, resync = %run.id, total, "resync started");
    Ok(run)
}

/// Start a full resync of the subscription: the latest event of each live entity, marked
/// `"resyncType": "full"` and `"resyncId"`, then incremental changes as before.
#[utoipa::path(
    post, path = "/v1/accounts/{account}/subscriptions/{id}/resync", tag = "subscriptions",
    params(("account" = String, Path), ("id" = String, Path)),
    request_body(content = Option<ResyncIn>, description = "optional: the entity types (default all)"),
    responses(
        (status = 202, body = ResyncOut),
        (status = 404, description = "no such subscription in the account", body = ErrorBody),
        (status = 409, description = "a resync of this subscription is running (`resync_running`)", body = ErrorBody),
        (status = 422, description = "`unknown_entity_type`, `invalid_resync`, `resync_not_supported` (a job callback)", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn start(
    State(state): State<AppState>,
    caller: Caller,
    Path((account, id)): Path<(String, String)>,
    body: Bytes,
) -> Result<(StatusCode, Json<ResyncOut>), ApiError> {
    let subscription = find(&state, &caller, Scope::Manage, &account, &id).await?;
    // No body: every type. A body is a ResyncIn and nothing more.
    let types = match super::body::optional_object(&body, "ResyncIn", "invalid_resync")? {
        None => entity_types(&state, None, "types")?,
        Some(object) => entity_types(&state, object.get("types"), "types")?,
    };
    let run = start_run(&state, &subscription, types).await?;
    Ok((StatusCode::ACCEPTED, Json(ResyncOut::from(run))))
}

/// The subscription's latest resync run (running or completed).
#[utoipa::path(
    get, path = "/v1/accounts/{account}/subscriptions/{id}/resync", tag = "subscriptions",
    params(("account" = String, Path), ("id" = String, Path)),
    responses(
        (status = 200, body = ResyncOut),
        (status = 404, description = "no such subscription, or it never had a resync", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn latest(
    State(state): State<AppState>,
    caller: Caller,
    Path((account, id)): Path<(String, String)>,
) -> Result<Json<ResyncOut>, ApiError> {
    find(&state, &caller, Scope::Read, &account, &id).await?;
    let run = state
        .store
        .db()
        .latest_resync_run(&id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("subscription {id:?} has had no resync")))?;
    Ok(Json(ResyncOut::from(run)))
}

pub fn router() -> axum::Router<AppState> {
    axum::Router::new().route(
        "/v1/accounts/{account}/subscriptions/{id}/resync",
        post(start).get(latest),
    )
}
