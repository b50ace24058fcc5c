//! The webhook sink: a signed HTTP POST per event, over pooled keep-alive connections.
//!
//! Signatures follow Standard Webhooks: `webhook-signature: v1,<base64 HMAC-SHA256 of
//! "{id}.{timestamp}.{body}">` keyed with the decoded `whsec_` secret, so receivers check
//! them with any Standard Webhooks library.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderValue, RETRY_AFTER};
use sha2::Sha256;

use super::{AttemptResult, Attempted};

/// How much of a destination's answer is kept in the delivery log.
const RESPONSE_SNIPPET_BYTES: usize = 1024;
/// A `Retry-After` beyond this is clamped: a receiver cannot park deliveries for weeks.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("a signing secret starts with whsec_ followed by base64")]
    Malformed,
}

/// A keyed HMAC, prepared once per subscription; signing a message clones it instead of
/// re-deriving the key.
#[derive(Clone)]
pub struct Signer {
    mac: Hmac<Sha256>,
}

impl Signer {
    pub fn new(secret: &str) -> Result<Signer, SecretError> {
        let encoded = secret
            .strip_prefix("whsec_")
            .ok_or(SecretError::Malformed)?;
        let key = BASE64.decode(encoded).map_err(|_| SecretError::Malformed)?;
        let mac = Hmac::<Sha256>::new_from_slice(&key).map_err(|_| SecretError::Malformed)?;
        Ok(Signer { mac })
    }

    /// The `webhook-signature` header value for one message.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut mac = self.mac.clone();
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        let digest = mac.finalize().into_bytes();
        let mut header = String::with_capacity(3 + 44);
        header.push_str("v1,");
        BASE64.encode_string(digest, &mut header);
        header
    }
}

/// A new random signing secret, `whsec_` + 32 random bytes in base64.
pub fn generate_secret() -> String {
    let key: [u8; 32] = rand::random();
    format!("whsec_{}", BASE64.encode(key))
}

/// One message to POST.
pub struct WebhookRequest<'a> {
    pub url: &'a reqwest::Url,
    pub id: &'a str,
    pub sequence: i64,
    pub body: &'a bytes::Bytes,
}

/// Shared HTTP client: one connection pool for every webhook destination.
#[derive(Clone)]
pub struct WebhookSink {
    client: reqwest::Client,
}

impl WebhookSink {
    pub fn new(timeout: Duration, allow_private: bool) -> WebhookSink {
        let builder = reqwest::Client::builder();
        // Checked at creation too, but a name can be re-pointed later (DNS rebinding):
        // every connection resolves through the same rule.
        let builder = match allow_private {
            true => builder,
            false => builder.dns_resolver(PublicOnly),
        };
        let client = builder
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .pool_idle_timeout(Duration::from_secs(60))
            .user_agent(concat!("reelay/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        WebhookSink { client }
    }

    pub async fn send(&self, signer: &Signer, request: WebhookRequest<'_>) -> Attempted {
        let timestamp = chrono::Utc::now().timestamp();
        let signature = signer.sign(request.id, timestamp, request.body);
        let mut headers = HeaderMap::with_capacity(5);
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Ok(id) = HeaderValue::from_str(request.id) {
            headers.insert("webhook-id", id);
        }
        headers.insert("webhook-timestamp", HeaderValue::from(timestamp));
        if let Ok(signature) = HeaderValue::from_str(&signature) {
            headers.insert("webhook-signature", signature);
        }
        headers.insert("reelay-sequence", HeaderValue::from(request.sequence));

        let started = Instant::now();
        let sent = self
            .client
            .post(request.url.clone())
            .headers(headers)
            .body(request.body.clone())
            .send()
            .await;
        let mut response = match sent {
            Ok(response) => response,
            Err(error) => {
                return Attempted {
                    result: AttemptResult::Failed {
                        error: describe_error(&error),
                        retry_after: None,
                    },
                    status: None,
                    latency: started.elapsed(),
                    response: None,
                };
            }
        };
        let status = response.status();
        let retry_after = retry_after(status, response.headers());
        let snippet = read_snippet(&mut response).await;
        let latency = started.elapsed();
        Attempted {
            result: classify(status, retry_after),
            status: Some(status.as_u16()),
            latency,
            response: snippet,
        }
    }
}

/// 2xx is success; 410 means the endpoint is gone; every other answer is retried
/// (seed 004 retries 4xx as well as 5xx: a receiver's 404 is often a deploy in progress).
pub fn classify(status: StatusCode, retry_after: Option<Duration>) -> AttemptResult {
    if status.is_success() {
        AttemptResult::Delivered
    } else if status == StatusCode::GONE {
        AttemptResult::Gone
    } else {
        AttemptResult::Failed {
            error: format!("HTTP {status}"),
            retry_after,
        }
    }
}

/// `Retry-After` counts on 429 and 503 only, in seconds or as an HTTP date.
fn retry_after(status: StatusCode, headers: &HeaderMap) -> Option<Duration> {
    if status != StatusCode::TOO_MANY_REQUESTS && status != StatusCode::SERVICE_UNAVAILABLE {
        return None;
    }
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    let wait = match value.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => {
            let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
            (at.with_timezone(&chrono::Utc) - chrono::Utc::now())
                .to_std()
                .unwrap_or(Duration::ZERO)
        }
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

async fn read_snippet(response: &mut reqwest::Response) -> Option<String> {
    let mut bytes = Vec::new();
    while bytes.len() < RESPONSE_SNIPPET_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => bytes.extend_from_slice(&chunk),
            _ => break,
        }
    }
    if bytes.is_empty() {
        return None;
    }
    bytes.truncate(RESPONSE_SNIPPET_BYTES);
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

fn describe_error(error: &reqwest::Error) -> String {
    if error.is_timeout() {
        "timed out".to_owned()
    } else if error.is_connect() {
        format!("connection failed: {}", root_cause(error))
    } else {
        format!("request failed: {}", root_cause(error))
    }
}

fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = error;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// Why a webhook URL cannot be a destination.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DestinationError {
    #[error("{0:?} is not an absolute http(s) URL")]
    InvalidUrl(String),
    #[error("the host of {0:?} does not resolve")]
    Unresolvable(String),
    #[error(
        "{url:?} resolves to {address}, a loopback, private or link-local address; start the server with --allow-private-destinations to allow it"
    )]
    PrivateAddress { url: String, address: IpAddr },
}

/// Checks that `url` is an http(s) URL whose host resolves to public addresses only
/// (unless private destinations are allowed), so a tenant cannot make Reelay call
/// services inside its own network.
pub async fn check_destination(url: &str, allow_private: bool) -> Result<(), DestinationError> {
    let invalid = || DestinationError::InvalidUrl(url.to_owned());
    let parsed = url::Url::parse(url).map_err(|_| invalid())?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(invalid());
    }
    let host = parsed.host_str().ok_or_else(invalid)?;
    if allow_private {
        return Ok(());
    }
    let port = parsed.port_or_known_default().unwrap_or(80);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let addresses: Vec<IpAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|_| DestinationError::Unresolvable(url.to_owned()))?
        .map(|address| address.ip())
        .collect();
    if addresses.is_empty() {
        return Err(DestinationError::Unresolvable(url.to_owned()));
    }
    match addresses.into_iter().find(|address| !is_public(address)) {
        Some(address) => Err(DestinationError::PrivateAddress {
            url: url.to_owned(),
            address,
        }),
        None => Ok(()),
    }
}

/// A DNS resolver that drops loopback, private and link-local addresses.
struct PublicOnly;

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let public: Vec<std::net::SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|address| is_public(&address.ip()))
                .collect();
            if public.is_empty() {
                return Err(format!("{host} resolves to no public address").into());
            }
            Ok(Box::new(public.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

fn is_public(address: &IpAddr) -> bool {
    match address {
        IpAddr::V4(v4) => {
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_documentation()
                // 100.64.0.0/10, carrier-grade NAT: private in practice.
                || (v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64))
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(&IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || (first & 0xfe00) == 0xfc00 // unique local
                || (first & 0xffc0) == 0xfe80) // link-local
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_the_standard_webhooks_example() {
        // The example of the Standard Webhooks specification.
        let signer = Signer::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            signer.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn malformed_secrets_are_refused() {
        assert!(Signer::new("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_err());
        assert!(Signer::new("whsec_not base64!").is_err());
        assert!(Signer::new(&generate_secret()).is_ok());
    }

    #[test]
    fn status_classes() {
        assert_eq!(classify(StatusCode::OK, None), AttemptResult::Delivered);
        assert_eq!(
            classify(StatusCode::NO_CONTENT, None),
            AttemptResult::Delivered
        );
        assert_eq!(classify(StatusCode::GONE, None), AttemptResult::Gone);
        for status in [400, 404, 408, 429, 500, 502, 503] {
            let status = StatusCode::from_u16(status).unwrap();
            assert!(matches!(
                classify(status, None),
                AttemptResult::Failed { .. }
            ));
        }
    }

    #[test]
    fn retry_after_only_on_429_and_503() {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(
            retry_after(StatusCode::TOO_MANY_REQUESTS, &headers),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            retry_after(StatusCode::SERVICE_UNAVAILABLE, &headers),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            retry_after(StatusCode::INTERNAL_SERVER_ERROR, &headers),
            None
        );
        headers.insert(RETRY_AFTER, HeaderValue::from_static("99999999"));
        assert_eq!(
            retry_after(StatusCode::TOO_MANY_REQUESTS, &headers),
            Some(MAX_RETRY_AFTER)
        );
    }

    #[tokio::test]
    async fn a_name_that_resolves_to_a_private_address_is_not_called() {
        // A listener that would answer if the connection were made.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                drop(socket);
            }
        });
        let url: reqwest::Url = format!("http://localhost:{port}/hook").parse().unwrap();
        let body = bytes::Bytes::from_static(b"{}");
        let signer = Signer::new(&generate_secret()).unwrap();
        let request = || WebhookRequest {
            url: &url,
            id: "e-1",
            sequence: 1,
            body: &body,
        };

        let refused = WebhookSink::new(Duration::from_secs(5), false)
            .send(&signer, request())
            .await;
        match refused.result {
            AttemptResult::Failed { error, .. } => {
                assert!(error.contains("no public address"), "{error}")
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert_eq!(refused.status, None);

        // Allowed: the connection is made (the listener hangs up, so it still fails,
        // but not at name resolution).
        let allowed = WebhookSink::new(Duration::from_secs(5), true)
            .send(&signer, request())
            .await;
        match allowed.result {
            AttemptResult::Failed { error, .. } => {
                assert!(!error.contains("no public address"), "{error}")
            }
            AttemptResult::Delivered | AttemptResult::Gone => {}
        }
    }

    #[tokio::test]
    async fn private_destinations_are_refused_unless_allowed() {
        for url in [
            "http://127.0.0.1:9/hook",
            "http://10.1.2.3/hook",
            "http://192.168.0.10/hook",
            "http://169.254.169.254/latest/meta-data",
            "http://[::1]:8080/",
            "http://localhost:8080/",
        ] {
            assert!(
                matches!(
                    check_destination(url, false).await,
                    Err(DestinationError::PrivateAddress { .. })
                ),
                "{url} should be refused"
            );
            assert_eq!(check_destination(url, true).await, Ok(()));
        }
        assert!(matches!(
            check_destination("ftp://example.com/", true).await,
            Err(DestinationError::InvalidUrl(_))
        ));
        assert!(matches!(
            check_destination("not a url", true).await,
            Err(DestinationError::InvalidUrl(_))
        ));
        assert_eq!(
            check_destination("http://93.184.215.14/hook", false).await,
            Ok(())
        );
    }
}
