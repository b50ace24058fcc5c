//! `/v1/accounts/{account}/keys` (admin): account keys with scopes, limits on what they
//! publish and an expiry; listed without the keys themselves, revoked by id. And
//! `/v1/admin/token/rotate`: a new admin token, the old ones ending after an overlap.

use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, post};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::AppState;
use super::auth::{Caller, KeySpec};
use super::error::{ApiError, ErrorBody};
use crate::model::{ApiKey, Scope, now_millis};

/// Longest key name accepted.
const MAX_NAME_CHARS: usize = 200;
/// How long the previous admin tokens keep working after a rotation, by default.
const DEFAULT_ADMIN_OVERLAP_SECONDS: u64 = 3600;

/// A new account key. Everything is optional: an empty body (or none) makes a key with
/// every scope and no limit, as keys were before scopes.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KeyIn {
    /// A name to tell keys apart (e.g. "zapp-app-ios").
    #[schema(min_length = 1, max_length = 200, pattern = "\\S")]
    pub name: Option<String>,
    /// What the key may do: `publish`, `read`, `manage`. Default: all three.
    #[schema(min_items = 1)]
    pub scopes: Option<Vec<Scope>>,
    /// Event names it may publish. With `topics`: it may publish an event whose name is
    /// here or whose topic is in `topics`; neither given: any event.
    pub events: Option<Vec<String>>,
    /// Topics it may publish to.
    pub topics: Option<Vec<String>>,
    /// When the key stops working (RFC 3339, in the future); never, if not given.
    #[schema(format = DateTime)]
    pub expires_at: Option<String>,
}

/// A key as listed: never the key itself or its hash.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyInfo {
    pub id: String,
    pub account: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub scopes: Vec<Scope>,
    /// Event names it may publish (empty with `topics` empty: any).
    pub events: Vec<String>,
    /// Topics it may publish to.
    pub topics: Vec<String>,
    /// The first characters of the key, to recognize it.
    pub prefix: String,
    /// Epoch milliseconds, as every time in the API's answers.
    pub created_at: i64,
    /// When it was last used (written at most about once a minute).
    pub last_used_at: Option<i64>,
    pub expires_at: Option<i64>,
}

/// A created key: its description, and the key, shown this once.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyOut {
    #[serde(flatten)]
    pub info: KeyInfo,
    /// The key: shown once, stored only as a hash.
    pub key: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct KeyList {
    pub keys: Vec<KeyInfo>,
}

impl KeyInfo {
    fn new(account: &str, key: ApiKey) -> KeyInfo {
        KeyInfo {
            id: key.id,
            account: account.to_owned(),
            name: key.name,
            scopes: key.scopes,
            events: key.events,
            topics: key.topics,
            prefix: key.prefix,
            created_at: key.created_at,
            last_used_at: key.last_used_at,
            expires_at: key.expires_at,
        }
    }
}

fn invalid(field: &str, message: String) -> ApiError {
    ApiError::Unprocessable {
        code: "invalid_key",
        message,
        index: None,
        field: Some(field.to_owned()),
    }
}

/// Reads and checks a creation body against the catalog.
fn parse_key(state: &AppState, body: &[u8]) -> Result<KeySpec, ApiError> {
    let input: KeyIn = super::body::read_optional(body, "invalid_key")?.unwrap_or_default();
    if let Some(name) = &input.name
        && (name.trim().is_empty() || name.chars().count() > MAX_NAME_CHARS)
    {
        return Err(invalid(
            "name",
            format!("a key's name has 1 to {MAX_NAME_CHARS} characters"),
        ));
    }
    let scopes = match input.scopes {
        None => Scope::ALL.to_vec(),
        Some(scopes) if scopes.is_empty() => {
            return Err(invalid(
                "scopes",
                "give at least one scope (publish, read, manage), or leave scopes out for all"
                    .into(),
            ));
        }
        Some(mut scopes) => {
            scopes.sort_by_key(|scope| Scope::ALL.iter().position(|s| s == scope));
            scopes.dedup();
            scopes
        }
    };
    let events = input.events.unwrap_or_default();
    if let Some(unknown) = events
        .iter()
        .find(|e| state.catalog.event_type(e).is_none())
    {
        return Err(invalid(
            "events",
            format!("{unknown:?} is not an event of the catalog"),
        ));
    }
    let topics = input.topics.unwrap_or_default();
    if let Some(unknown) = topics.iter().find(|t| state.catalog.topic(t).is_none()) {
        return Err(invalid(
            "topics",
            format!("{unknown:?} is not a topic of the catalog"),
        ));
    }
    let expires_at = match input.expires_at {
        None => None,
        Some(text) => {
            let at = chrono::DateTime::parse_from_rfc3339(&text)
                .map_err(|_| invalid("expiresAt", format!("{text:?} is not an RFC 3339 time")))?
                .timestamp_millis();
            if at <= now_millis() {
                return Err(invalid("expiresAt", format!("{text:?} is in the past")));
            }
            Some(at)
        }
    };
    Ok(KeySpec {
        name: input.name,
        scopes,
        events,
        topics,
        expires_at,
    })
}

/// Admin: create an API key that reaches only this account, with what it may do there.
#[utoipa::path(
    post, path = "/v1/accounts/{account}/keys", tag = "keys",
    params(("account" = String, Path)),
    request_body(content = KeyIn, description = "optional: without a body, a key with every scope"),
    responses(
        (status = 201, body = KeyOut),
        (status = 403, body = ErrorBody),
        (status = 422, description = "unknown scope, event or topic, expiry in the past", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn create_key(
    State(state): State<AppState>,
    caller: Caller,
    Path(account): Path<String>,
    body: Bytes,
) -> Result<(StatusCode, Json<KeyOut>), ApiError> {
    caller.check_admin()?;
    let spec = parse_key(&state, &body)?;
    let (key, token) = state.keys.create_account_key(&account, spec).await?;
    tracing::info!(%account, key = %key.id, "account key created");
    Ok((
        StatusCode::CREATED,
        Json(KeyOut {
            info: KeyInfo::new(&account, key),
            key: token,
        }),
    ))
}

/// Admin: the account's keys, oldest first (never the keys themselves).
#[utoipa::path(
    get, path = "/v1/accounts/{account}/keys", tag = "keys",
    params(("account" = String, Path)),
    responses((status = 200, body = KeyList), (status = 403, body = ErrorBody)),
    security(("bearer" = []))
)]
pub async fn list_keys(
    State(state): State<AppState>,
    caller: Caller,
    Path(account): Path<String>,
) -> Result<Json<KeyList>, ApiError> {
    caller.check_admin()?;
    let keys = state.store.db().list_keys(&account).await?;
    Ok(Json(KeyList {
        keys: keys
            .into_iter()
            .map(|key| KeyInfo::new(&account, key))
            .collect(),
    }))
}

/// Admin: revoke a key. Refused from the next request on here; the other nodes sharing a
/// PostgreSQL database are told at once (and check again within a second regardless).
#[utoipa::path(
    delete, path = "/v1/accounts/{account}/keys/{id}", tag = "keys",
    params(("account" = String, Path), ("id" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)),
    security(("bearer" = []))
)]
pub async fn revoke_key(
    State(state): State<AppState>,
    caller: Caller,
    Path((account, id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    caller.check_admin()?;
    if !state.keys.revoke(&account, &id).await? {
        return Err(ApiError::NotFound(format!(
            "no key {id:?} in account {account:?}"
        )));
    }
    tracing::info!(%account, key = %id, "account key revoked");
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RotateAdminIn {
    /// How long the previous stored admin tokens keep working (default 3600).
    pub overlap_seconds: Option<u64>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RotateAdminOut {
    /// The new admin token: shown once, stored only as a hash.
    pub token: String,
    /// When the previous stored admin tokens stop working (epoch milliseconds). A token
    /// given in the configuration (`REELAY_ADMIN_TOKEN`) works as long as it is given.
    pub previous_valid_until: i64,
}

/// Admin: a new admin token; the stored ones before it keep working for the overlap.
#[utoipa::path(
    post, path = "/v1/admin/token/rotate", tag = "keys",
    request_body(content = RotateAdminIn, description = "optional"),
    responses((status = 201, body = RotateAdminOut), (status = 403, body = ErrorBody)),
    security(("bearer" = []))
)]
pub async fn rotate_admin_token(
    State(state): State<AppState>,
    caller: Caller,
    body: Bytes,
) -> Result<(StatusCode, Json<RotateAdminOut>), ApiError> {
    caller.check_admin()?;
    let input: RotateAdminIn =
        super::body::read_optional(&body, "invalid_rotation")?.unwrap_or_default();
    let overlap = Duration::from_secs(
        input
            .overlap_seconds
            .unwrap_or(DEFAULT_ADMIN_OVERLAP_SECONDS),
    );
    let (token, until) = state.keys.rotate_admin(overlap).await?;
    tracing::info!("admin token rotated");
    Ok((
        StatusCode::CREATED,
        Json(RotateAdminOut {
            token,
            previous_valid_until: until,
        }),
    ))
}

pub fn router() -> axum::Router<AppState> {
    axum::Router::new()
        .route(
            "/v1/accounts/{account}/keys",
            post(create_key).get(list_keys),
        )
        .route("/v1/accounts/{account}/keys/{id}", delete(revoke_key))
        .route("/v1/admin/token/rotate", post(rotate_admin_token))
}
