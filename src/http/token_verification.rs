//! `/v1/accounts/{account}/cloudevents/token-verification` (admin): how an account
//! verifies the user tokens of its CloudEvents (`data.userIdentifier`), and [`UserTokens`],
//! which turns each token into what is stored in its place.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::put;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::AppState;
use super::auth::Caller;
use super::error::{ApiError, ErrorBody};
use crate::ingest::user_token::{self, KeyError, TokenError, UserToken, Verifier};
use crate::model::{Millis, TokenVerification, now_millis};
use crate::store::{Store, StoreError};

/// Name of the HMAC key of [`user_token::pseudonym`] among the server secrets.
const PSEUDONYM_KEY: &str = "user-identifier-hmac";

/// How long an account's settings are trusted from memory. This process forgets them at
/// once when they change; the limit bounds how stale another process sharing the
/// database can be.
const CACHE_FOR: Duration = Duration::from_secs(30);

/// What replaces user tokens, per account: settings loaded once and cached.
pub struct UserTokens {
    store: Store,
    pseudonym_key: Vec<u8>,
    cache: RwLock<HashMap<String, Cached>>,
}

/// When an account's settings were loaded, and the verifier they make (`None`: the
/// account does not verify tokens).
type Cached = (Instant, Option<Arc<Verifier>>);

impl UserTokens {
    /// Loads the server's pseudonym key, generating it on the first start.
    pub async fn open(store: Store) -> Result<UserTokens, StoreError> {
        let candidate = STANDARD.encode(rand::random::<[u8; 32]>());
        let key = store
            .db()
            .server_secret(PSEUDONYM_KEY, &candidate, now_millis())
            .await?;
        let pseudonym_key = STANDARD
            .decode(key)
            .map_err(|_| StoreError::Corrupt(format!("server secret {PSEUDONYM_KEY}")))?;
        Ok(UserTokens {
            store,
            pseudonym_key,
            cache: RwLock::new(HashMap::new()),
        })
    }

    /// The account's verifier, or `None` when it does not verify tokens.
    pub async fn verifier(&self, account: &str) -> Result<Option<Arc<Verifier>>, ApiError> {
        let cached = self
            .cache
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(account)
            .filter(|(at, _)| at.elapsed() < CACHE_FOR)
            .map(|(_, verifier)| verifier.clone());
        if let Some(verifier) = cached {
            return Ok(verifier);
        }
        let verifier = match self.store.db().get_token_verification(account).await? {
            Some(settings) => Some(Arc::new(Verifier::new(&settings).map_err(|error| {
                StoreError::Corrupt(format!("token verification of {account}: {error}"))
            })?)),
            None => None,
        };
        self.cache
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(account.to_owned(), (Instant::now(), verifier.clone()));
        Ok(verifier)
    }

    fn forget(&self, account: &str) {
        self.cache
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(account);
    }

    /// What is stored instead of `token`: its verified `sub` when the account verifies
    /// tokens, else its pseudonym.
    pub fn replacement(
        &self,
        verifier: Option<&Verifier>,
        account: &str,
        token: Option<&UserToken>,
    ) -> Result<Option<String>, TokenError> {
        match (verifier, token) {
            (Some(verifier), Some(token)) => verifier.verify(token).map(Some),
            (Some(_), None) => Err(TokenError::Missing),
            (None, Some(token)) => Ok(Some(user_token::pseudonym(
                &self.pseudonym_key,
                account,
                token,
            ))),
            (None, None) => Ok(None),
        }
    }
}

/// The settings an operator sends.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TokenVerificationIn {
    /// Shared secret of HS256 tokens.
    pub hs256_secret: Option<String>,
    /// PEM public keys: RSA keys verify RS256 tokens, EC P-256 keys ES256 tokens.
    #[serde(default)]
    pub public_keys: Vec<String>,
    /// When set, a token's `iss` must equal it.
    pub issuer: Option<String>,
    /// When set, a token's `aud` must contain it.
    pub audience: Option<String>,
    /// Clock skew allowed on `exp` and `nbf` (default 60).
    #[serde(default, deserialize_with = "super::body::integer")]
    pub leeway_seconds: Option<u64>,
}

/// The settings as shown: never the HS256 secret, only whether one is set.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TokenVerificationOut {
    pub account: String,
    /// Whether an HS256 secret is set (the secret itself is never shown).
    pub hs256: bool,
    pub public_keys: Vec<PublicKeyOut>,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    pub leeway_seconds: u64,
    /// Epoch milliseconds.
    pub updated_at: Millis,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PublicKeyOut {
    /// `RS256` or `ES256`.
    pub algorithm: String,
    pub pem: String,
}

impl TokenVerificationOut {
    fn new(settings: TokenVerification) -> TokenVerificationOut {
        TokenVerificationOut {
            account: settings.account,
            hs256: settings.hs256_secret.is_some(),
            public_keys: settings
                .public_keys
                .into_iter()
                .map(|pem| PublicKeyOut {
                    algorithm: user_token::public_key_algorithm(&pem)
                        .map(|algorithm| format!("{algorithm:?}"))
                        .unwrap_or_default(),
                    pem,
                })
                .collect(),
            issuer: settings.issuer,
            audience: settings.audience,
            leeway_seconds: settings.leeway_seconds,
            updated_at: settings.updated_at,
        }
    }
}

/// Admin: verify this account's user tokens with these keys. From then on a CloudEvent
/// whose `data.userIdentifier` is missing or does not verify is refused with `401`.
#[utoipa::path(
    put, path = "/v1/accounts/{account}/cloudevents/token-verification", tag = "cloudevents",
    params(("account" = String, Path, description = "account (tenant)")),
    request_body = TokenVerificationIn,
    responses(
        (status = 200, description = "in force at once", body = TokenVerificationOut),
        (status = 403, body = ErrorBody),
        (status = 422, description = "no key, or a key that is not a PEM RSA or EC public key", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn put_settings(
    State(state): State<AppState>,
    caller: Caller,
    Path(account): Path<String>,
    body: Bytes,
) -> Result<Json<TokenVerificationOut>, ApiError> {
    caller.check_admin()?;
    let input: TokenVerificationIn = super::body::read(&body, "invalid_settings")?;
    let settings = TokenVerification {
        account: account.clone(),
        hs256_secret: input.hs256_secret,
        public_keys: input.public_keys,
        issuer: input.issuer.filter(|issuer| !issuer.is_empty()),
        audience: input.audience.filter(|audience| !audience.is_empty()),
        leeway_seconds: input.leeway_seconds.unwrap_or(60),
        updated_at: now_millis(),
    };
    // Checked before storing, so a stored setting always builds a verifier.
    Verifier::new(&settings).map_err(|error| {
        let field = match &error {
            KeyError::NoKey => "publicKeys".to_owned(),
            KeyError::EmptySecret => "hs256Secret".to_owned(),
            KeyError::BadPublicKey { index } => format!("publicKeys[{index}]"),
        };
        ApiError::Unprocessable {
            code: "invalid_key",
            message: error.to_string(),
            index: None,
            field: Some(field),
        }
    })?;
    state.store.db().put_token_verification(&settings).await?;
    state.user_tokens.forget(&account);
    tracing::info!(%account, "user-token verification set");
    Ok(Json(TokenVerificationOut::new(settings)))
}

/// Admin: this account's user-token verification (without the HS256 secret).
#[utoipa::path(
    get, path = "/v1/accounts/{account}/cloudevents/token-verification", tag = "cloudevents",
    params(("account" = String, Path, description = "account (tenant)")),
    responses(
        (status = 200, body = TokenVerificationOut),
        (status = 404, description = "tokens are not verified in this account", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn get_settings(
    State(state): State<AppState>,
    caller: Caller,
    Path(account): Path<String>,
) -> Result<Json<TokenVerificationOut>, ApiError> {
    caller.check_admin()?;
    match state.store.db().get_token_verification(&account).await? {
        Some(settings) => Ok(Json(TokenVerificationOut::new(settings))),
        None => Err(not_configured(&account)),
    }
}

/// Admin: stop verifying this account's user tokens (they are still replaced by a
/// keyed hash).
#[utoipa::path(
    delete, path = "/v1/accounts/{account}/cloudevents/token-verification", tag = "cloudevents",
    params(("account" = String, Path, description = "account (tenant)")),
    responses((status = 204, description = "removed"), (status = 404, body = ErrorBody)),
    security(("bearer" = []))
)]
pub async fn delete_settings(
    State(state): State<AppState>,
    caller: Caller,
    Path(account): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.check_admin()?;
    let deleted = state.store.db().delete_token_verification(&account).await?;
    state.user_tokens.forget(&account);
    if !deleted {
        return Err(not_configured(&account));
    }
    tracing::info!(%account, "user-token verification removed");
    Ok(StatusCode::NO_CONTENT)
}

fn not_configured(account: &str) -> ApiError {
    ApiError::NotFound(format!("account {account:?} does not verify user tokens"))
}

pub fn router() -> axum::Router<AppState> {
    axum::Router::new().route(
        "/v1/accounts/{account}/cloudevents/token-verification",
        put(put_settings).get(get_settings).delete(delete_settings),
    )
}
