//! Portal links: a URL that opens the console signed in to one account alone, for an
//! operator to hand to that account's team (or embed in an iframe). The link carries a
//! one-time token; the console exchanges it for a session, which is an account key of
//! that account expiring with the link, so it reaches nothing else. The token works
//! once (it is deleted as it is exchanged, on whichever node) and not after it expires.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::header::HOST;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use super::AppState;
use super::auth::{Caller, KeySpec};
use super::error::{ApiError, ErrorBody};
use crate::model::{KeyOwner, Millis, Scope, now_millis};
use crate::store::PortalLink;

/// A link's default lifetime: an hour.
const DEFAULT_SECONDS: i64 = 3_600;
/// The longest: a day.
const MAX_SECONDS: i64 = 86_400;
/// The start of a link token (not the shape of a key: it cannot be used as one).
const LINK_PREFIX: &str = "rlp_";

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortalLinkIn {
    /// How long the link (and the session it opens) lasts, in seconds: default 3600,
    /// at most 86400.
    #[serde(default, deserialize_with = "super::body::integer")]
    #[schema(minimum = 1, maximum = 86400)]
    pub expires_in_seconds: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PortalLinkOut {
    /// Opens the console signed in to the account; works once.
    pub url: String,
    pub account: String,
    /// What the session may do: the creator's scopes (the admin's: all).
    pub scopes: Vec<String>,
    /// When the link, and the session it opens, expire (epoch milliseconds).
    pub expires_at: Millis,
}

/// Admin, or a `manage` key of the account: a link that opens the console signed in to
/// this account alone, for a limited time.
#[utoipa::path(
    post, path = "/v1/accounts/{account}/portal-links", tag = "console",
    params(("account" = String, Path)),
    request_body(content = Option<PortalLinkIn>, description = "optional: `{\"expiresInSeconds\": n}`"),
    responses(
        (status = 201, body = PortalLinkOut),
        (status = 422, description = "`invalid_portal_link`: expiresInSeconds is not 1 to 86400", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Path(account): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<PortalLinkOut>), ApiError> {
    caller.require(Scope::Manage, &account)?;
    let request: Option<PortalLinkIn> = super::body::read_optional(&body, "invalid_portal_link")?;
    let seconds = request
        .and_then(|r| r.expires_in_seconds)
        .unwrap_or(DEFAULT_SECONDS);
    if !(1..=MAX_SECONDS).contains(&seconds) {
        return Err(ApiError::Unprocessable {
            code: "invalid_portal_link",
            message: format!("expiresInSeconds must be 1 to {MAX_SECONDS} (a day)"),
            index: None,
            field: Some("expiresInSeconds".into()),
        });
    }
    let scopes = match &caller {
        Caller::Admin => Scope::ALL.to_vec(),
        Caller::Account(key) => key.scopes.clone(),
    };
    let now = now_millis();
    let link = PortalLink {
        account: account.clone(),
        scopes: scopes.clone(),
        expires_at: now + seconds * 1000,
    };
    let secret: [u8; 24] = rand::random();
    let token = format!("{LINK_PREFIX}{}", URL_SAFE_NO_PAD.encode(secret));
    state
        .store
        .db()
        .insert_portal_link(&hash(&token), &link, now)
        .await?;
    let base = match &state.public_url {
        Some(url) => url.as_str().trim_end_matches('/').to_owned(),
        None => format!(
            "http://{}",
            headers
                .get(HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or("localhost")
        ),
    };
    tracing::info!(%account, seconds, "portal link created");
    Ok((
        StatusCode::CREATED,
        Json(PortalLinkOut {
            // In the fragment: the browser does not send it to any server, logs included.
            url: format!("{base}/console#/portal/{token}"),
            account,
            scopes: scopes.iter().map(|s| s.as_str().to_owned()).collect(),
            expires_at: link.expires_at,
        }),
    ))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortalSessionIn {
    /// The token of a portal link (the end of its URL).
    pub token: String,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PortalSessionOut {
    pub account: String,
    /// The session's bearer token: an account key of the account, expiring with the link.
    pub token: String,
    pub scopes: Vec<String>,
    pub expires_at: Millis,
}

/// Exchange a portal link's token for a session (no bearer token needed: the link is
/// the credential). Works once per link, and not after it expires.
#[utoipa::path(
    post, path = "/v1/portal-sessions", tag = "console",
    request_body = PortalSessionIn,
    responses(
        (status = 201, body = PortalSessionOut),
        (status = 401, description = "`invalid_portal_link`: unknown, used already, or expired", body = ErrorBody),
    )
)]
pub async fn exchange(
    State(state): State<AppState>,
    body: Bytes,
) -> Result<(StatusCode, Json<PortalSessionOut>), ApiError> {
    let request: PortalSessionIn = super::body::read(&body, "invalid_portal_session")?;
    let now = now_millis();
    let refused = || ApiError::UserToken {
        code: "invalid_portal_link",
        message: "this portal link is unknown, was used already, or has expired".into(),
        index: None,
    };
    if !request.token.starts_with(LINK_PREFIX) {
        return Err(refused());
    }
    let link = state
        .store
        .db()
        .take_portal_link(&hash(&request.token), now)
        .await?
        .ok_or_else(refused)?;
    let (key, token) = state
        .keys
        .create_account_key(
            &link.account,
            KeySpec {
                name: Some("portal session".into()),
                scopes: link.scopes.clone(),
                events: Vec::new(),
                topics: Vec::new(),
                expires_at: Some(link.expires_at),
            },
        )
        .await?;
    let account = match key.owner {
        KeyOwner::Account(account) => account,
        KeyOwner::Admin => link.account,
    };
    tracing::info!(%account, key = %key.id, "portal link exchanged for a session");
    Ok((
        StatusCode::CREATED,
        Json(PortalSessionOut {
            account,
            token,
            scopes: link.scopes.iter().map(|s| s.as_str().to_owned()).collect(),
            expires_at: link.expires_at,
        }),
    ))
}

fn hash(token: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(token.as_bytes()))
}

pub fn router() -> axum::Router<AppState> {
    axum::Router::new()
        .route("/v1/accounts/{account}/portal-links", post(create))
        .route("/v1/portal-sessions", post(exchange))
}
