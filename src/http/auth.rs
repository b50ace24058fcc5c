//! Bearer-token authentication and authorization: the admin token reaches everything,
//! an account key only its own account, and there only what its scopes allow
//! ([`Scope`]) and, for publishing, the events it is limited to.
//!
//! Tokens are stored as SHA-256 hashes (they are long random strings, so a fast hash is
//! enough). Known keys are cached in memory and looked at again in the database once
//! their entry is older than [`Keys`]' revalidation period (a second with PostgreSQL,
//! where another node may revoke a key; a revocation on this node takes effect at once,
//! and is announced to the others, which drop the key from their caches when told).
//! Tokens that cannot be keys (wrong prefix or length) are refused without a query, and
//! well-formed tokens that are not keys are remembered for a while in a bounded
//! negative cache, so a client retrying a bad token costs no query per request.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

use super::AppState;
use super::error::ApiError;
use crate::model::{ApiKey, KeyOwner, Millis, NewEvent, Scope, now_millis};
use crate::store::{Backend, Store, StoreError};

/// The start of an account key.
const ACCOUNT_PREFIX: &str = "rl_";
/// The start of a generated admin token.
const ADMIN_PREFIX: &str = "rl_admin_";
/// Random bytes in a key (base64url: 32 characters after the prefix).
const KEY_BYTES: usize = 24;
/// How many characters of a key its listing shows.
const SHOWN_PREFIX: usize = 10;
/// A key's last use is written at most this often (per key and node).
const NOTE_USE_EVERY: Millis = 60_000;
/// Well-formed tokens found to be no key are refused without a query for this long.
const UNKNOWN_TTL: Duration = Duration::from_secs(60);
/// At most this many of them are remembered (a client spraying random tokens cannot
/// grow the memory without bound).
const UNKNOWN_MAX: usize = 10_000;

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    Admin,
    Account(Arc<ApiKey>),
}

impl Caller {
    /// The check every account route makes: refuses a caller that may not reach
    /// `account`, or may not do `scope` there (`403 missing_scope_<scope>`). There is
    /// no check of the account alone: a route must say which scope it needs.
    pub fn require(&self, scope: Scope, account: &str) -> Result<(), ApiError> {
        let Caller::Account(key) = self else {
            return Ok(());
        };
        if key.owner != KeyOwner::Account(account.to_owned()) {
            return Err(ApiError::Forbidden(format!(
                "this key cannot reach account {account:?}"
            )));
        }
        if !key.has(scope) {
            return Err(ApiError::Denied {
                code: missing_scope_code(scope),
                message: format!(
                    "this key lacks the {:?} scope this route needs",
                    scope.as_str()
                ),
                index: None,
            });
        }
        Ok(())
    }

    /// Refuses a batch with an event this caller may not publish (a key limited to some
    /// events or topics): `403 event_not_allowed` naming the first such event.
    pub fn may_publish(&self, events: &[NewEvent]) -> Result<(), ApiError> {
        let Caller::Account(key) = self else {
            return Ok(());
        };
        match events
            .iter()
            .position(|event| !key.may_publish(&event.name, &event.topic))
        {
            None => Ok(()),
            Some(index) => Err(ApiError::Denied {
                code: "event_not_allowed",
                message: format!(
                    "this key may not publish {:?} events (topic {:?})",
                    events[index].name, events[index].topic
                ),
                index: (events.len() > 1).then_some(index),
            }),
        }
    }

    pub fn check_admin(&self) -> Result<(), ApiError> {
        match self {
            Caller::Admin => Ok(()),
            Caller::Account(_) => Err(ApiError::Forbidden("this needs the admin token".into())),
        }
    }
}

/// The error code of a missing scope.
fn missing_scope_code(scope: Scope) -> &'static str {
    match scope {
        Scope::Publish => "missing_scope_publish",
        Scope::Read => "missing_scope_read",
        Scope::Manage => "missing_scope_manage",
    }
}

/// What a new account key may do.
#[derive(Debug, Clone, Default)]
pub struct KeySpec {
    pub name: Option<String>,
    pub scopes: Vec<Scope>,
    pub events: Vec<String>,
    pub topics: Vec<String>,
    pub expires_at: Option<Millis>,
}

/// A key in the cache.
struct Known {
    key: Arc<ApiKey>,
    /// When it was last read from the database.
    checked: Instant,
    /// When its use was last written (or read) as `last_used_at`.
    noted: AtomicI64,
}

/// Resolves tokens to callers.
pub struct Keys {
    store: Store,
    /// Hashes of the configured admin tokens (`REELAY_ADMIN_TOKEN`): never stored.
    configured: Vec<String>,
    known: RwLock<HashMap<String, Arc<Known>>>,
    unknown: Mutex<HashMap<String, Instant>>,
    /// How old a cache entry may be before the database is asked again.
    revalidate: Duration,
}

impl Keys {
    pub fn new(store: Store) -> Keys {
        // With PostgreSQL another node may revoke a key: no entry outlives that by more
        // than a second. A SQLite database has one server, which revokes in its cache.
        let revalidate = match store.db().backend() {
            Backend::Postgres => Duration::from_secs(1),
            Backend::Sqlite => Duration::from_secs(60),
        };
        Keys {
            store,
            configured: Vec::new(),
            known: RwLock::new(HashMap::new()),
            unknown: Mutex::new(HashMap::new()),
            revalidate,
        }
    }

    /// Makes sure an admin token exists. The `configured` ones (`REELAY_ADMIN_TOKEN`,
    /// `REELAY_ADMIN_TOKEN_NEXT`) are accepted as given; without any, a token is
    /// generated once, printed, and stored hashed. Returns the generated token, if one
    /// was made.
    pub async fn ensure_admin(
        &mut self,
        configured: &[&str],
    ) -> Result<Option<String>, StoreError> {
        if !configured.is_empty() {
            self.configured = configured.iter().map(|token| hash(token)).collect();
            return Ok(None);
        }
        if self.store.db().has_admin_key().await? {
            return Ok(None);
        }
        let token = new_token(ADMIN_PREFIX);
        self.store
            .db()
            .insert_key(&hash(&token), &admin_key())
            .await?;
        Ok(Some(token))
    }

    /// Creates an account key; the key itself is returned once and never stored.
    pub async fn create_account_key(
        &self,
        account: &str,
        spec: KeySpec,
    ) -> Result<(ApiKey, String), StoreError> {
        let token = new_token(ACCOUNT_PREFIX);
        let key = ApiKey {
            id: format!("key_{}", uuid::Uuid::now_v7().simple()),
            owner: KeyOwner::Account(account.to_owned()),
            name: spec.name,
            scopes: spec.scopes,
            events: spec.events,
            topics: spec.topics,
            prefix: token[..SHOWN_PREFIX].to_owned(),
            created_at: now_millis(),
            last_used_at: None,
            expires_at: spec.expires_at,
        };
        let digest = hash(&token);
        self.store.db().insert_key(&digest, &key).await?;
        self.lock_unknown().remove(&digest);
        Ok((key, token))
    }

    /// Revokes an account's key: refused from the next request on here, on the other
    /// nodes when they are told (within the revalidation period at the latest). False if
    /// the account has no such key.
    pub async fn revoke(&self, account: &str, id: &str) -> Result<bool, StoreError> {
        let Some(digest) = self.store.db().delete_key(account, id).await? else {
            return Ok(false);
        };
        self.forget(&digest);
        if let Err(error) = self.store.db().announce_revoked(&digest).await {
            // The other nodes check it again within their revalidation period anyway.
            tracing::warn!(%error, key = id, "announcing a revocation failed");
        }
        Ok(true)
    }

    /// With PostgreSQL: drops the keys other nodes revoke from this node's cache as soon
    /// as they are announced (the revalidation period stays as the bound when a
    /// notification is missed). Runs until the `Keys` are dropped.
    pub async fn follow_revocations(keys: std::sync::Weak<Keys>) {
        loop {
            let Some(db) = keys.upgrade().map(|keys| keys.store.db().clone()) else {
                return;
            };
            match db.listen_revoked().await {
                Ok(None) => return,
                Ok(Some(mut listener)) => loop {
                    match listener.try_recv().await {
                        Ok(Some(notification)) => match keys.upgrade() {
                            Some(keys) => keys.forget(notification.payload()),
                            None => return,
                        },
                        // The connection was lost: listen again.
                        Ok(None) => break,
                        Err(error) => {
                            tracing::warn!(%error, "listening for revoked keys failed");
                            break;
                        }
                    }
                },
                Err(error) => {
                    tracing::warn!(%error, "cannot listen for revoked keys; trying again")
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Admin token rotation: a new stored admin token, returned once; the stored ones
    /// before it keep working until `overlap` has passed (the configured ones are the
    /// operator's: they stay as long as they are configured). Returns the token and
    /// when the previous ones stop.
    pub async fn rotate_admin(&self, overlap: Duration) -> Result<(String, Millis), StoreError> {
        let token = new_token(ADMIN_PREFIX);
        let now = now_millis();
        let until =
            now.saturating_add(Millis::try_from(overlap.as_millis()).unwrap_or(Millis::MAX));
        self.store
            .db()
            .rotate_admin_key(&hash(&token), &admin_key(), until)
            .await?;
        // Their new end is read again at their next use here.
        self.known
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, known| known.key.owner != KeyOwner::Admin);
        Ok((token, until))
    }

    async fn resolve(&self, token: &str) -> Result<Caller, ApiError> {
        let digest = hash(token);
        if self.configured.contains(&digest) {
            return Ok(Caller::Admin);
        }
        if !well_formed(token) {
            return Err(ApiError::Unauthorized);
        }
        let cached = self
            .known
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&digest)
            .cloned();
        let known = match cached {
            Some(known) if known.checked.elapsed() < self.revalidate => known,
            cached => {
                if cached.is_none() && self.recently_unknown(&digest) {
                    return Err(ApiError::Unauthorized);
                }
                match self.store.db().find_key(&digest).await {
                    Ok(Some(key)) => self.remember(digest.clone(), key, cached.as_deref()),
                    Ok(None) => {
                        self.forget(&digest);
                        return Err(ApiError::Unauthorized);
                    }
                    // A database that does not answer now does not make a known key
                    // unknown; a revocation needs the database too.
                    Err(error) => match cached {
                        Some(known) => {
                            tracing::warn!(%error, "checking a key again failed; using the cached one");
                            known
                        }
                        None => return Err(error.into()),
                    },
                }
            }
        };
        let now = now_millis();
        if known.key.expired(now) {
            return Err(ApiError::Unauthorized);
        }
        self.note_use(&digest, &known, now);
        Ok(match known.key.owner {
            KeyOwner::Admin => Caller::Admin,
            KeyOwner::Account(_) => Caller::Account(known.key.clone()),
        })
    }

    fn remember(&self, digest: String, key: ApiKey, previous: Option<&Known>) -> Arc<Known> {
        let noted = previous
            .map(|p| p.noted.load(Ordering::Relaxed))
            .unwrap_or(0)
            .max(key.last_used_at.unwrap_or(0));
        let known = Arc::new(Known {
            key: Arc::new(key),
            checked: Instant::now(),
            noted: AtomicI64::new(noted),
        });
        self.known
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(digest, known.clone());
        known
    }

    /// A token found to be no key (any more).
    fn forget(&self, digest: &str) {
        self.known
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(digest);
        let mut unknown = self.lock_unknown();
        if unknown.len() >= UNKNOWN_MAX {
            unknown.retain(|_, at| at.elapsed() < UNKNOWN_TTL);
            if unknown.len() >= UNKNOWN_MAX {
                unknown.clear();
            }
        }
        unknown.insert(digest.to_owned(), Instant::now());
    }

    fn recently_unknown(&self, digest: &str) -> bool {
        self.lock_unknown()
            .get(digest)
            .is_some_and(|at| at.elapsed() < UNKNOWN_TTL)
    }

    fn lock_unknown(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        self.unknown.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes the key's last use, in the background, if the one written is older than
    /// [`NOTE_USE_EVERY`]: not a write per request.
    fn note_use(&self, digest: &str, known: &Known, now: Millis) {
        let noted = known.noted.load(Ordering::Relaxed);
        if now - noted < NOTE_USE_EVERY
            || known
                .noted
                .compare_exchange(noted, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let store = self.store.clone();
        let digest = digest.to_owned();
        tokio::spawn(async move {
            if let Err(error) = store.db().key_used(&digest, now).await {
                tracing::warn!(%error, "recording a key's last use failed");
            }
        });
    }
}

/// A stored admin token's record (its listing shows only the fixed start).
fn admin_key() -> ApiKey {
    ApiKey {
        id: format!("key_{}", uuid::Uuid::now_v7().simple()),
        owner: KeyOwner::Admin,
        name: Some("admin".into()),
        scopes: Scope::ALL.to_vec(),
        events: Vec::new(),
        topics: Vec::new(),
        prefix: ADMIN_PREFIX.to_owned(),
        created_at: now_millis(),
        last_used_at: None,
        expires_at: None,
    }
}

/// Whether `token` has the shape of a key Reelay makes (its prefix, then the base64url
/// of [`KEY_BYTES`] random bytes).
fn well_formed(token: &str) -> bool {
    let length = (KEY_BYTES * 4).div_ceil(3);
    [ADMIN_PREFIX, ACCOUNT_PREFIX].iter().any(|prefix| {
        token.strip_prefix(prefix).is_some_and(|random| {
            random.len() == length
                && random
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        })
    })
}

fn hash(token: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(token.as_bytes()))
}

fn new_token(prefix: &str) -> String {
    let secret: [u8; KEY_BYTES] = rand::random();
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
        state.keys.resolve(token).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_tokens_shaped_like_keys_are_looked_up() {
        assert!(well_formed(&new_token(ACCOUNT_PREFIX)));
        assert!(well_formed(&new_token(ADMIN_PREFIX)));
        assert!(!well_formed("wrong"));
        assert!(!well_formed("rl_short"));
        assert!(!well_formed(&format!("rl_{}", "a".repeat(33))));
        assert!(!well_formed(&format!("rl_{}!", "a".repeat(31))));
        assert!(!well_formed(&format!("xx_{}", "a".repeat(32))));
    }
}
