//! The operator's hold on AWS destinations: which `endpointUrl`, `region` and `roleArn`
//! an account key may give (`--allow-aws-endpoint`, `--allow-aws-region`,
//! `--allow-role-arn`; the admin token may give any), and the ExternalId every assumed
//! role is asked with, so a role's trust policy can name exactly one account.
//!
//! Without these, an account key would make the server sign requests with its own AWS
//! identity to any host, in any region, or as any role the server may assume.

use sha2::{Digest, Sha256};

use crate::model::AwsOptions;

/// What account keys may give; empty lists allow nothing.
#[derive(Debug, Clone, Default)]
pub struct AwsPolicy {
    /// Endpoint URL prefixes (`--allow-aws-endpoint`).
    pub endpoints: Vec<url::Url>,
    /// Region patterns (`--allow-aws-region`).
    pub regions: Vec<String>,
    /// Role ARN patterns (`--allow-role-arn`).
    pub role_arns: Vec<String>,
}

/// Why a destination's AWS overrides are refused; `field` is the member at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// Malformed, whoever gives it.
    #[error("{message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    /// Well-formed, but not for an account key on this server.
    #[error("{message}")]
    NotAllowed {
        field: &'static str,
        message: String,
    },
}

impl PolicyError {
    pub fn field(&self) -> &'static str {
        match self {
            PolicyError::Invalid { field, .. } | PolicyError::NotAllowed { field, .. } => field,
        }
    }

    /// The API error code: `invalid_destination` or `destination_not_allowed`.
    pub fn code(&self) -> &'static str {
        match self {
            PolicyError::Invalid { .. } => "invalid_destination",
            PolicyError::NotAllowed { .. } => "destination_not_allowed",
        }
    }
}

const ENDPOINT_FIELD: &str = "endpointUrl";
const REGION_FIELD: &str = "region";
const ROLE_FIELD: &str = "roleArn";

impl AwsPolicy {
    /// Checks a destination's overrides: well-formed for everyone, and for an account
    /// key (`by_admin` false) within the operator's allowlists.
    pub fn check(&self, options: &AwsOptions, by_admin: bool) -> Result<(), PolicyError> {
        if let Some(endpoint) = &options.endpoint_url {
            let parsed = parse_endpoint(endpoint).map_err(|message| PolicyError::Invalid {
                field: ENDPOINT_FIELD,
                message,
            })?;
            if !by_admin
                && !self
                    .endpoints
                    .iter()
                    .any(|prefix| has_prefix(&parsed, prefix))
            {
                return Err(PolicyError::NotAllowed {
                    field: ENDPOINT_FIELD,
                    message: format!(
                        "endpointUrl {endpoint:?} is not one this server lets account keys give (--allow-aws-endpoint); leave it out to use the server's AWS endpoints"
                    ),
                });
            }
        }
        if let Some(region) = &options.region {
            if !valid_region(region) {
                return Err(PolicyError::Invalid {
                    field: REGION_FIELD,
                    message: format!(
                        "region {region:?} is not an AWS region name such as eu-west-1"
                    ),
                });
            }
            if !by_admin && !self.regions.iter().any(|pattern| glob(pattern, region)) {
                return Err(PolicyError::NotAllowed {
                    field: REGION_FIELD,
                    message: format!(
                        "region {region:?} is not one this server lets account keys give (--allow-aws-region); leave it out to use the server's region"
                    ),
                });
            }
        }
        if let Some(role) = &options.role_arn {
            if !valid_role_arn(role) {
                return Err(PolicyError::Invalid {
                    field: ROLE_FIELD,
                    message: format!(
                        "roleArn {role:?} is not an IAM role ARN (arn:aws:iam::<account>:role/<name>)"
                    ),
                });
            }
            if !by_admin && !self.role_arns.iter().any(|pattern| glob(pattern, role)) {
                return Err(PolicyError::NotAllowed {
                    field: ROLE_FIELD,
                    message: format!(
                        "roleArn {role:?} is not one this server lets account keys assume (--allow-role-arn)"
                    ),
                });
            }
        }
        Ok(())
    }
}

/// The operator's hold on the connection URL of a message-bus destination (NATS,
/// AMQP): the server's own URL, used when a destination gives none (`--nats-url`,
/// `--amqp-url`), and the URL prefixes an account key may give (`--allow-nats-url`,
/// `--allow-amqp-url`; the admin token may give any).
#[derive(Debug, Clone, Default)]
pub struct UrlPolicy {
    pub default: Option<url::Url>,
    pub allowed: Vec<url::Url>,
}

impl UrlPolicy {
    /// Checks a destination's own `url` (`flag` names the allowlist flag in the message).
    pub fn check(&self, given: &url::Url, by_admin: bool, flag: &str) -> Result<(), PolicyError> {
        if by_admin || self.allowed.iter().any(|prefix| has_prefix(given, prefix)) {
            return Ok(());
        }
        Err(PolicyError::NotAllowed {
            field: "url",
            message: format!(
                "url {:?} is not one this server lets account keys give ({flag}); leave it out to use the server's",
                redacted(given)
            ),
        })
    }
}

/// A URL without its password, for messages and logs.
pub fn redacted(url: &url::Url) -> String {
    let mut shown = url.clone();
    if shown.password().is_some() {
        let _ = shown.set_password(Some("***"));
    }
    shown.to_string()
}

/// A connection URL of one of `schemes`, with a host.
pub fn parse_bus_url(text: &str, schemes: &[&str]) -> Result<url::Url, String> {
    let invalid = || format!("{text:?} is not a {} URL with a host", schemes.join(" or "));
    let parsed = url::Url::parse(text.trim()).map_err(|_| invalid())?;
    if !schemes.contains(&parsed.scheme()) || parsed.host_str().is_none_or(str::is_empty) {
        return Err(invalid());
    }
    Ok(parsed)
}

/// An `endpointUrl`: an absolute http(s) URL with a host and no credentials in it.
pub fn parse_endpoint(endpoint: &str) -> Result<url::Url, String> {
    let invalid = || format!("endpointUrl {endpoint:?} is not an absolute http(s) URL");
    let parsed = url::Url::parse(endpoint).map_err(|_| invalid())?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(invalid());
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(format!(
            "endpointUrl {endpoint:?} carries credentials; AWS credentials come from the server"
        ));
    }
    Ok(parsed)
}

/// Whether `url` is at or under `prefix`: the same scheme, host and port, and a path
/// that is the prefix's or goes on below it (`https://sqs.example.com` does not cover
/// `https://sqs.example.com.evil.net`, nor `/a` cover `/ab`).
fn has_prefix(url: &url::Url, prefix: &url::Url) -> bool {
    if url.scheme() != prefix.scheme()
        || url.host_str() != prefix.host_str()
        || url.port_or_known_default() != prefix.port_or_known_default()
    {
        return false;
    }
    let base = prefix.path().trim_end_matches('/');
    let path = url.path();
    path == base || path.starts_with(&format!("{base}/"))
}

/// `eu-west-1`, `us-gov-east-1`, `cn-north-1`: lowercase letters, digits and hyphens.
/// The region becomes part of the endpoint's host name, so nothing else may pass.
fn valid_region(region: &str) -> bool {
    (2..=32).contains(&region.len())
        && region.starts_with(|c: char| c.is_ascii_lowercase())
        && region
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

fn valid_role_arn(role: &str) -> bool {
    role.starts_with("arn:")
        && role.contains(":role/")
        && role.len() <= 2048
        && role.chars().all(|c| c.is_ascii_graphic())
}

/// `*` matches any run of characters, `/` and `:` included (an ARN's parts are not
/// path segments, so a path glob's rules would not fit); everything else matches itself.
pub fn glob(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        // No `*`: the whole text.
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// The ExternalId an account's destinations assume roles with: `reelay:<account>` when
/// the account name is made of the characters STS takes (letters, digits, `_+=,.@:/-`,
/// at most 1,200 of them, and not starting with `sha256:`), else
/// `reelay:sha256:<hex SHA-256 of the account name>`. Stable, so a role's trust policy
/// can require it (`"Condition": {"StringEquals": {"sts:ExternalId": "reelay:acme"}}`).
pub fn external_id(account: &str) -> String {
    let allowed = |c: char| c.is_ascii_alphanumeric() || "_+=,.@:/-".contains(c);
    if !account.is_empty()
        && account.len() <= 1200
        && !account.starts_with("sha256:")
        && account.chars().all(allowed)
    {
        return format!("reelay:{account}");
    }
    let digest: String = Sha256::digest(account.as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    format!("reelay:sha256:{digest}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(endpoint: Option<&str>, region: Option<&str>, role: Option<&str>) -> AwsOptions {
        AwsOptions {
            endpoint_url: endpoint.map(str::to_owned),
            region: region.map(str::to_owned),
            role_arn: role.map(str::to_owned),
        }
    }

    fn policy() -> AwsPolicy {
        AwsPolicy {
            endpoints: vec![
                url::Url::parse("https://sqs.eu-west-1.amazonaws.com").unwrap(),
                url::Url::parse("http://localstack.internal:4566/tenant-a/").unwrap(),
            ],
            regions: vec!["eu-*".into()],
            role_arns: vec!["arn:aws:iam::123456789012:role/reelay-*".into()],
        }
    }

    #[test]
    fn account_keys_get_only_what_the_operator_allows() {
        let policy = policy();
        for allowed in [
            options(Some("https://sqs.eu-west-1.amazonaws.com"), None, None),
            options(Some("https://sqs.eu-west-1.amazonaws.com/"), None, None),
            options(
                Some("https://sqs.eu-west-1.amazonaws.com:443/x"),
                None,
                None,
            ),
            options(Some("http://localstack.internal:4566/tenant-a"), None, None),
            options(
                Some("http://localstack.internal:4566/tenant-a/q"),
                None,
                None,
            ),
            options(None, Some("eu-west-1"), None),
            options(
                None,
                None,
                Some("arn:aws:iam::123456789012:role/reelay-acme"),
            ),
        ] {
            assert_eq!(policy.check(&allowed, false), Ok(()), "{allowed:?}");
        }
        for (refused, field) in [
            (
                options(
                    Some("https://sqs.eu-west-1.amazonaws.com.evil.net"),
                    None,
                    None,
                ),
                ENDPOINT_FIELD,
            ),
            (
                options(Some("http://sqs.eu-west-1.amazonaws.com"), None, None),
                ENDPOINT_FIELD,
            ),
            (
                options(Some("https://sqs.eu-west-1.amazonaws.com:8443"), None, None),
                ENDPOINT_FIELD,
            ),
            (
                options(
                    Some("http://localstack.internal:4566/tenant-ab"),
                    None,
                    None,
                ),
                ENDPOINT_FIELD,
            ),
            (
                options(Some("http://localstack.internal:4566/"), None, None),
                ENDPOINT_FIELD,
            ),
            (options(None, Some("us-east-1"), None), REGION_FIELD),
            (
                options(None, None, Some("arn:aws:iam::123456789012:role/admin")),
                ROLE_FIELD,
            ),
            (
                options(None, None, Some("arn:aws:iam::999999999999:role/reelay-x")),
                ROLE_FIELD,
            ),
        ] {
            let error = policy.check(&refused, false).unwrap_err();
            assert_eq!(error.code(), "destination_not_allowed", "{refused:?}");
            assert_eq!(error.field(), field, "{refused:?}");
            // The admin token may give any of them.
            assert_eq!(policy.check(&refused, true), Ok(()), "{refused:?}");
        }
        // Nothing is allowed by default.
        let error = AwsPolicy::default()
            .check(&options(None, Some("eu-west-1"), None), false)
            .unwrap_err();
        assert_eq!(error.code(), "destination_not_allowed");
    }

    #[test]
    fn malformed_overrides_are_refused_for_everyone() {
        for (refused, field) in [
            (options(Some("not a url"), None, None), ENDPOINT_FIELD),
            (
                options(Some("ftp://example.com"), None, None),
                ENDPOINT_FIELD,
            ),
            (
                options(Some("https://key:secret@example.com"), None, None),
                ENDPOINT_FIELD,
            ),
            (
                options(None, Some("eu-west-1.evil.net/"), None),
                REGION_FIELD,
            ),
            (options(None, Some("EU-WEST-1"), None), REGION_FIELD),
            (options(None, None, Some("admin")), ROLE_FIELD),
        ] {
            let error = AwsPolicy::default().check(&refused, true).unwrap_err();
            assert_eq!(error.code(), "invalid_destination", "{refused:?}");
            assert_eq!(error.field(), field, "{refused:?}");
        }
    }

    #[test]
    fn globs() {
        assert!(glob("*", ""));
        assert!(glob("*", "arn:aws:iam::1:role/x"));
        assert!(glob("arn:aws:iam::1:role/*", "arn:aws:iam::1:role/a/b"));
        assert!(glob("arn:*:role/reelay-*", "arn:aws:iam::1:role/reelay-x"));
        assert!(glob("a*b*c", "abc"));
        assert!(glob("a*b*c", "axxbyyc"));
        assert!(!glob("a*b*c", "axxbyy"));
        assert!(!glob("ab", "abc"));
        assert!(glob("ab", "ab"));
        assert!(!glob("a*a", "a"));
        assert!(!glob("arn:aws:iam::1:role/*", "arn:aws:iam::2:role/x"));
    }

    #[test]
    fn external_ids_are_stable_and_fit_sts() {
        assert_eq!(external_id("acme"), "reelay:acme");
        assert_eq!(external_id("team.a@b-c"), "reelay:team.a@b-c");
        let odd = external_id("un compte é");
        assert!(odd.starts_with("reelay:sha256:"), "{odd}");
        assert_eq!(odd.len(), "reelay:sha256:".len() + 64);
        assert_eq!(odd, external_id("un compte é"));
        // An account cannot take another's hashed form.
        assert!(external_id("sha256:abc").starts_with("reelay:sha256:"));
        assert_ne!(external_id("sha256:abc"), "reelay:sha256:abc");
    }
}
