//! What replaces a user token (`data.userIdentifier` of a CloudEvent, seed 002) before
//! the event is stored: the token's verified subject when the account verifies tokens,
//! else a keyed hash of it. Either way the same user keeps the same identifier, and the
//! token itself (a credential) never reaches the log, the logs or a subscriber.
//!
//! Pure: the keys come in, a verdict comes out. The HTTP layer loads and caches an
//! account's settings ([`crate::http::token_verification`]).

use hmac::{Hmac, Mac};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use sha2::Sha256;

use crate::model::TokenVerification;

/// A user token taken out of `data.userIdentifier`. It never prints: a stray `{:?}` in a
/// log line must not leak a credential.
pub struct UserToken(String);

impl UserToken {
    pub fn new(token: impl Into<String>) -> UserToken {
        UserToken(token.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for UserToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UserToken(<redacted>)")
    }
}

/// A key the operator gave that cannot verify anything.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("neither hs256Secret nor publicKeys is set: nothing could verify a token")]
    NoKey,
    #[error("hs256Secret is empty")]
    EmptySecret,
    #[error("publicKeys[{index}] is not a PEM RSA or EC public key")]
    BadPublicKey { index: usize },
}

/// Why a user token was refused. The messages are fixed texts: they never quote the
/// token, and they are safe to show and to log.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("data.userIdentifier is missing: this account verifies user tokens")]
    Missing,
    #[error("the user token has expired")]
    Expired,
    #[error("the user token's signature does not verify with this account's keys")]
    BadSignature,
    #[error("the user token is not valid: {0}")]
    Invalid(&'static str),
}

impl TokenError {
    /// Stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            TokenError::Missing => "missing_user_token",
            TokenError::Expired => "expired_user_token",
            TokenError::BadSignature | TokenError::Invalid(_) => "invalid_user_token",
        }
    }
}

/// An account's settings, with its keys parsed once.
pub struct Verifier {
    hs256: Option<DecodingKey>,
    rsa: Vec<DecodingKey>,
    ec: Vec<DecodingKey>,
    issuer: Option<String>,
    audience: Option<String>,
    leeway: u64,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("hs256", &self.hs256.is_some())
            .field("rsa", &self.rsa.len())
            .field("ec", &self.ec.len())
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish()
    }
}

/// The kind of a PEM public key, or `None` when it is neither RSA nor EC.
pub fn public_key_algorithm(pem: &str) -> Option<Algorithm> {
    if DecodingKey::from_rsa_pem(pem.as_bytes()).is_ok() {
        Some(Algorithm::RS256)
    } else if DecodingKey::from_ec_pem(pem.as_bytes()).is_ok() {
        Some(Algorithm::ES256)
    } else {
        None
    }
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
}

impl Verifier {
    pub fn new(settings: &TokenVerification) -> Result<Verifier, KeyError> {
        let hs256 = match settings.hs256_secret.as_deref() {
            Some("") => return Err(KeyError::EmptySecret),
            Some(secret) => Some(DecodingKey::from_secret(secret.as_bytes())),
            None => None,
        };
        let (mut rsa, mut ec) = (Vec::new(), Vec::new());
        for (index, pem) in settings.public_keys.iter().enumerate() {
            let pem = pem.as_bytes();
            match public_key_algorithm(&settings.public_keys[index]) {
                Some(Algorithm::RS256) => rsa.push(
                    DecodingKey::from_rsa_pem(pem).map_err(|_| KeyError::BadPublicKey { index })?,
                ),
                Some(_) => ec.push(
                    DecodingKey::from_ec_pem(pem).map_err(|_| KeyError::BadPublicKey { index })?,
                ),
                None => return Err(KeyError::BadPublicKey { index }),
            }
        }
        if hs256.is_none() && rsa.is_empty() && ec.is_empty() {
            return Err(KeyError::NoKey);
        }
        Ok(Verifier {
            hs256,
            rsa,
            ec,
            issuer: settings.issuer.clone(),
            audience: settings.audience.clone(),
            leeway: settings.leeway_seconds,
        })
    }

    /// The token's `sub` when it is a JWT signed by one of the keys, in force (`exp`
    /// required, `nbf` honoured), and from the configured issuer and audience.
    pub fn verify(&self, token: &UserToken) -> Result<String, TokenError> {
        let token = token.expose();
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| TokenError::Invalid("it is not a JWT"))?;
        // The algorithm is fixed by the key, never chosen by the token: an RS256 public
        // key is never used as an HS256 secret.
        let keys: Vec<&DecodingKey> = match header.alg {
            Algorithm::HS256 => self.hs256.iter().collect(),
            Algorithm::RS256 => self.rsa.iter().collect(),
            Algorithm::ES256 => self.ec.iter().collect(),
            _ => {
                return Err(TokenError::Invalid(
                    "its algorithm is not HS256, RS256 or ES256",
                ));
            }
        };
        if keys.is_empty() {
            return Err(TokenError::Invalid(
                "no key of this account verifies its algorithm",
            ));
        }
        let mut validation = Validation::new(header.alg);
        validation.leeway = self.leeway;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        if let Some(issuer) = &self.issuer {
            validation.set_issuer(&[issuer]);
        }
        match &self.audience {
            Some(audience) => validation.set_audience(&[audience]),
            None => validation.validate_aud = false,
        }
        let mut refused = TokenError::BadSignature;
        for key in keys {
            match jsonwebtoken::decode::<Claims>(token, key, &validation) {
                Ok(data) if data.claims.sub.is_empty() => {
                    return Err(TokenError::Invalid("its sub claim is empty"));
                }
                Ok(data) => return Ok(data.claims.sub),
                // Another key of the same kind may have signed it.
                Err(error) if *error.kind() == ErrorKind::InvalidSignature => {}
                Err(error) => {
                    refused = match error.kind() {
                        ErrorKind::ExpiredSignature => TokenError::Expired,
                        ErrorKind::ImmatureSignature => {
                            TokenError::Invalid("it is not valid yet (nbf)")
                        }
                        ErrorKind::InvalidIssuer => {
                            TokenError::Invalid("its issuer (iss) is not the configured one")
                        }
                        ErrorKind::InvalidAudience => {
                            TokenError::Invalid("its audience (aud) is not the configured one")
                        }
                        ErrorKind::MissingRequiredClaim(_) => {
                            TokenError::Invalid("it lacks an exp or sub claim")
                        }
                        ErrorKind::Json(_) => TokenError::Invalid(
                            "its claims are not as expected (sub must be a string)",
                        ),
                        _ => TokenError::Invalid("it cannot be decoded"),
                    };
                    break;
                }
            }
        }
        Err(refused)
    }
}

/// The stable stand-in for a token that is not verified: `uid_` and 22 characters of
/// HMAC-SHA256 over the account and the token, keyed with a server secret. The same
/// token in the same account always gives the same identifier; without the key it
/// cannot be turned back into the token, nor tried against guessed tokens; and two
/// accounts see unrelated identifiers for the same token.
pub fn pseudonym(key: &[u8], account: &str, token: &UserToken) -> String {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    // HMAC takes keys of any length.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    mac.update(account.as_bytes());
    mac.update(&[0]);
    mac.update(token.expose().as_bytes());
    let digest = mac.finalize().into_bytes();
    format!("uid_{}", URL_SAFE_NO_PAD.encode(&digest[..16]))
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    use super::*;

    // Key pairs made for these tests only (openssl genpkey); they guard nothing.
    const RSA_PRIVATE: &str = include_str!("../../tests/fixtures/jwt_rs256_private.pem");
    const RSA_PUBLIC: &str = include_str!("../../tests/fixtures/jwt_rs256_public.pem");
    const EC_PRIVATE: &str = include_str!("../../tests/fixtures/jwt_es256_private.pem");
    const EC_PUBLIC: &str = include_str!("../../tests/fixtures/jwt_es256_public.pem");
    const SECRET: &str = "an HS256 secret shared with the identity provider";

    fn settings() -> TokenVerification {
        TokenVerification {
            account: "zapp".into(),
            hs256_secret: Some(SECRET.into()),
            public_keys: vec![RSA_PUBLIC.into(), EC_PUBLIC.into()],
            issuer: Some("https://login.example.com".into()),
            audience: Some("zapp-app".into()),
            leeway_seconds: 0,
            updated_at: 0,
        }
    }

    fn claims(exp_from_now: i64) -> serde_json::Value {
        let now = jsonwebtoken::get_current_timestamp() as i64;
        json!({"sub": "user-42", "exp": now + exp_from_now, "iss": "https://login.example.com", "aud": "zapp-app"})
    }

    fn sign(algorithm: Algorithm, claims: &serde_json::Value) -> UserToken {
        let key = match algorithm {
            Algorithm::HS256 => EncodingKey::from_secret(SECRET.as_bytes()),
            Algorithm::RS256 => EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap(),
            _ => EncodingKey::from_ec_pem(EC_PRIVATE.as_bytes()).unwrap(),
        };
        UserToken::new(jsonwebtoken::encode(&Header::new(algorithm), claims, &key).unwrap())
    }

    #[test]
    fn tokens_signed_by_each_kind_of_key_give_their_subject() {
        let verifier = Verifier::new(&settings()).unwrap();
        for algorithm in [Algorithm::HS256, Algorithm::RS256, Algorithm::ES256] {
            assert_eq!(
                verifier.verify(&sign(algorithm, &claims(600))),
                Ok("user-42".to_owned()),
                "{algorithm:?}"
            );
        }
    }

    #[test]
    fn expired_forged_and_foreign_tokens_are_refused() {
        let verifier = Verifier::new(&settings()).unwrap();
        assert_eq!(
            verifier.verify(&sign(Algorithm::HS256, &claims(-600))),
            Err(TokenError::Expired)
        );
        // Signed with another secret.
        let forged = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims(600),
            &EncodingKey::from_secret(b"guessed"),
        )
        .unwrap();
        assert_eq!(
            verifier.verify(&UserToken::new(forged)),
            Err(TokenError::BadSignature)
        );
        // A payload changed after signing.
        let token = sign(Algorithm::RS256, &claims(600)).expose().to_owned();
        let parts: Vec<&str> = token.split('.').collect();
        let other = sign(
            Algorithm::RS256,
            &json!({"sub": "admin", "exp": 4_000_000_000u64,
            "iss": "https://login.example.com", "aud": "zapp-app"}),
        )
        .expose()
        .to_owned();
        let tampered = format!(
            "{}.{}.{}",
            parts[0],
            other.split('.').nth(1).unwrap(),
            parts[2]
        );
        assert_eq!(
            verifier.verify(&UserToken::new(tampered)),
            Err(TokenError::BadSignature)
        );
        let mut wrong_issuer = claims(600);
        wrong_issuer["iss"] = json!("https://evil.example.com");
        assert!(matches!(
            verifier.verify(&sign(Algorithm::ES256, &wrong_issuer)),
            Err(TokenError::Invalid(_))
        ));
        let mut wrong_audience = claims(600);
        wrong_audience["aud"] = json!("another-app");
        assert!(matches!(
            verifier.verify(&sign(Algorithm::HS256, &wrong_audience)),
            Err(TokenError::Invalid(_))
        ));
        let mut no_subject = claims(600);
        no_subject.as_object_mut().unwrap().remove("sub");
        assert!(matches!(
            verifier.verify(&sign(Algorithm::HS256, &no_subject)),
            Err(TokenError::Invalid(_))
        ));
        assert!(matches!(
            verifier.verify(&UserToken::new("not-a-jwt")),
            Err(TokenError::Invalid(_))
        ));
    }

    #[test]
    fn the_token_cannot_pick_a_key_of_another_kind() {
        // Only an RSA key is configured: an HS256 token (e.g. "signed" with the public
        // key as secret) finds no key.
        let mut only_rsa = settings();
        only_rsa.hs256_secret = None;
        only_rsa.public_keys = vec![RSA_PUBLIC.into()];
        let verifier = Verifier::new(&only_rsa).unwrap();
        let confused = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims(600),
            &EncodingKey::from_secret(RSA_PUBLIC.as_bytes()),
        )
        .unwrap();
        assert!(matches!(
            verifier.verify(&UserToken::new(confused)),
            Err(TokenError::Invalid(_))
        ));
        assert!(matches!(
            verifier.verify(&sign(Algorithm::ES256, &claims(600))),
            Err(TokenError::Invalid(_))
        ));
    }

    #[test]
    fn settings_without_a_usable_key_are_refused() {
        let mut none = settings();
        none.hs256_secret = None;
        none.public_keys.clear();
        assert_eq!(Verifier::new(&none).err(), Some(KeyError::NoKey));
        none.hs256_secret = Some(String::new());
        assert_eq!(Verifier::new(&none).err(), Some(KeyError::EmptySecret));
        none.hs256_secret = None;
        none.public_keys = vec![
            EC_PUBLIC.into(),
            "-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----".into(),
        ];
        assert_eq!(
            Verifier::new(&none).err(),
            Some(KeyError::BadPublicKey { index: 1 })
        );
        assert_eq!(public_key_algorithm(RSA_PUBLIC), Some(Algorithm::RS256));
        assert_eq!(public_key_algorithm(EC_PUBLIC), Some(Algorithm::ES256));
    }

    #[test]
    fn pseudonyms_are_stable_per_account_and_keyed() {
        let token = UserToken::new("access-token-1");
        let a = pseudonym(b"key-1", "zapp", &token);
        assert_eq!(a, pseudonym(b"key-1", "zapp", &token));
        assert!(a.starts_with("uid_") && a.len() == 4 + 22);
        assert!(!a.contains("access-token-1"));
        assert_ne!(a, pseudonym(b"key-2", "zapp", &token));
        assert_ne!(a, pseudonym(b"key-1", "other", &token));
        assert_ne!(
            a,
            pseudonym(b"key-1", "zapp", &UserToken::new("access-token-2"))
        );
        assert_eq!(format!("{token:?}"), "UserToken(<redacted>)");
    }
}
