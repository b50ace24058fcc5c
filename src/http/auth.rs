//! Bearer-token authentication: the admin token reaches everything, an account key only
//! its own account. Tokens are stored as SHA-256 hashes (they are long random strings, so
//! a fast hash is enough), and known hashes are cached in memory.

use std::collections::HashMap;
use std::sync::RwLock;

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

use super::AppState;
use super::error::ApiError;
use crate::store::{KeyOwner, Store, StoreError};

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    Admin,
    Account(String),
}

impl Caller {
    /// Refuses a caller that may not reach `account`.
    pub fn check_account(&self, account: &str) -> Result<(), ApiError> {
        match self {
            Caller::Admin => Ok(()),
            Caller::Account(own) if own == account => Ok(()),
            Caller::Account(_) => Err(ApiError::Forbidden(format!(
                "this key cannot reach account {account:?}"
            ))),
        }
    }

    pub fn check_admin(&self) -> Result<(), ApiError> {
        match self {
            Caller::Admin => Ok(()),
            Caller::Account(_) => Err(ApiError::Forbidden("this needs the admin token".into())),
        }
    }
}

/// Resolves tokens to callers.
pub struct Keys {
    store: Store,
    known: RwLock<HashMap<String, KeyOwner>>,
}

impl Keys {
    pub fn new(store: Store) -> Keys {
        Keys {
            store,
            known: RwLock::new(HashMap::new()),
        }
    }

    /// Makes sure an admin token exists. `configured` (from `REELAY_ADMIN_TOKEN`) is
    /// accepted as given; without it a token is generated once, printed, and stored
    /// hashed. Returns the generated token, if one was made.
    pub async fn ensure_admin(
        &self,
        configured: Option<&str>,
    ) -> Result<Option<String>, StoreError> {
        if let Some(token) = configured {
            self.remember(hash(token), KeyOwner::Admin);
            return Ok(None);
        }
        if self.store.db().has_admin_key().await? {
            return Ok(None);
        }
        let token = new_token("rl_admin_");
        self.store
            .db()
            .insert_key(
                &hash(&token),
                &KeyOwner::Admin,
                "rl_admin_",
                crate::model::now_millis(),
            )
            .await?;
        Ok(Some(token))
    }

    /// Creates an account key; the key itself is returned once and never stored.
    pub async fn create_account_key(&self, account: &str) -> Result<String, StoreError> {
        let token = new_token("rl_");
        let owner = KeyOwner::Account(account.to_owned());
        self.store
            .db()
            .insert_key(
                &hash(&token),
                &owner,
                &token[..10],
                crate::model::now_millis(),
            )
            .await?;
        self.remember(hash(&token), owner);
        Ok(token)
    }

    async fn resolve(&self, token: &str) -> Result<Option<Caller>, StoreError> {
        let digest = hash(token);
        let cached = self
            .known
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&digest)
            .cloned();
        let owner = match cached {
            Some(owner) => Some(owner),
            None => {
                let found = self.store.db().find_key(&digest).await?;
                if let Some(owner) = &found {
                    self.remember(digest, owner.clone());
                }
                found
            }
        };
        Ok(owner.map(|owner| match owner {
            KeyOwner::Admin => Caller::Admin,
            KeyOwner::Account(account) => Caller::Account(account),
        }))
    }

    fn remember(&self, digest: String, owner: KeyOwner) {
        self.known
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(digest, owner);
    }
}

fn hash(token: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(token.as_bytes()))
}

fn new_token(prefix: &str) -> String {
    let secret: [u8; 24] = rand::random();
    format!("{prefix}{}", URL_SAFE_NO_PAD.encode(secret))
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Caller, ApiError> {
        let token = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|token| !token.is_empty())
            .ok_or(ApiError::Unauthorized)?;
        state
            .keys
            .resolve(token)
            .await?
            .ok_or(ApiError::Unauthorized)
    }
}
