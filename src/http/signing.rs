//! `POST /v1/accounts/{account}/subscriptions/{id}/rotate-secret`: a new signing secret
//! (or ed25519 key) for a subscription or a job's callback registration, with an overlap
//! during which deliveries carry the signatures of both the old and the new one, so
//! receivers switch at their own pace. The subscription keeps its retries and dead
//! letters.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::routing::post;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::AppState;
use super::auth::Caller;
use super::error::{ApiError, ErrorBody};
use super::subscriptions::find;
use crate::model::{Millis, Scope, now_millis};
use crate::sinks::webhook::{generate_ed25519, generate_secret};

/// The overlap when none is given: a day.
const DEFAULT_OVERLAP_SECONDS: u64 = 86_400;
/// The longest overlap accepted: 30 days.
const MAX_OVERLAP_SECONDS: u64 = 30 * 86_400;

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RotateIn {
    /// How long deliveries are signed with the old secret too (default 86400, at most
    /// 30 days; 0: the old secret stops at once).
    #[schema(maximum = 2592000)]
    pub overlap_seconds: Option<u64>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RotateOut {
    pub id: String,
    /// The new `whsec_` secret (HMAC subscriptions; shown this once).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// The new `whpk_` public key (ed25519 subscriptions).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
    /// Until when (epoch milliseconds) deliveries carry the old signature beside the
    /// new one.
    pub previous_valid_until: i64,
}

/// Rotate a subscription's signing secret, with an overlap.
#[utoipa::path(
    post, path = "/v1/accounts/{account}/subscriptions/{id}/rotate-secret", tag = "subscriptions",
    params(("account" = String, Path), ("id" = String, Path)),
    request_body(content = RotateIn, description = "optional"),
    responses(
        (status = 200, body = RotateOut),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 422, description = "an overlap that is not a number of seconds up to 30 days", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn rotate(
    State(state): State<AppState>,
    caller: Caller,
    Path((account, id)): Path<(String, String)>,
    body: Bytes,
) -> Result<Json<RotateOut>, ApiError> {
    let subscription = find(&state, &caller, Scope::Manage, &account, &id).await?;
    let input: RotateIn =
        super::body::read_optional(&body, "invalid_rotation")?.unwrap_or_default();
    let overlap = input.overlap_seconds.unwrap_or(DEFAULT_OVERLAP_SECONDS);
    if overlap > MAX_OVERLAP_SECONDS {
        return Err(ApiError::Unprocessable {
            code: "invalid_rotation",
            message: format!("overlapSeconds is at most {MAX_OVERLAP_SECONDS} (30 days)"),
            index: None,
            field: Some("overlapSeconds".into()),
        });
    }
    let until = now_millis().saturating_add(Millis::try_from(overlap * 1000).unwrap_or(0));
    // The same scheme as before: a receiver holding a public key gets a public key.
    let (secret, public_key) = match subscription.public_key {
        Some(_) => {
            let (secret, public_key) = generate_ed25519();
            (secret, Some(public_key))
        }
        None => (generate_secret(), None),
    };
    let db = state.store.db();
    if !db
        .rotate_secret(&account, &id, &secret, public_key.as_deref(), until)
        .await?
    {
        return Err(ApiError::NotFound(format!(
            "no subscription {id:?} in account {account:?}"
        )));
    }
    let rotated = find(&state, &caller, Scope::Manage, &account, &id).await?;
    state
        .dispatcher
        .rekey(&rotated)
        .await
        .map_err(|error| ApiError::unprocessable("invalid_subscription", error.to_string()))?;
    tracing::info!(subscription = %id, %account, overlap, "signing secret rotated");
    Ok(Json(RotateOut {
        id,
        secret: public_key.is_none().then_some(secret),
        public_key,
        previous_valid_until: until,
    }))
}

pub fn router() -> axum::Router<AppState> {
    axum::Router::new().route(
        "/v1/accounts/{account}/subscriptions/{id}/rotate-secret",
        post(rotate),
    )
}
