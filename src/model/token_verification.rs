//! How an account verifies the user tokens its apps put in CloudEvents
//! (`data.userIdentifier`): the keys and claims an operator configured.

use super::Millis;

/// An account's user-token verification settings. At least one key is set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenVerification {
    pub account: String,
    /// The shared secret of HS256 tokens. Never shown by the API once set.
    pub hs256_secret: Option<String>,
    /// PEM public keys: RSA keys verify RS256 tokens, EC P-256 keys ES256 tokens.
    pub public_keys: Vec<String>,
    /// When set, the token's `iss` must equal it.
    pub issuer: Option<String>,
    /// When set, the token's `aud` must contain it.
    pub audience: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    pub leeway_seconds: u64,
    pub updated_at: Millis,
}
