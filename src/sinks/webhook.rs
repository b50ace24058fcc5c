//! The webhook sink: a signed HTTP POST per event, over pooled keep-alive connections
//! (HTTP/2 when the receiver offers it in TLS ALPN).
//!
//! It drives hyper's pooled client directly rather than through reqwest: reqwest's
//! redirect, retry and URL layers parsed the URL twice more per request and cost about a
//! third of the instructions of a delivery, and a webhook needs none of them.
//!
//! Signatures follow Standard Webhooks: `webhook-signature: v1,<base64 HMAC-SHA256 of
//! "{id}.{timestamp}.{body}">` keyed with the decoded `whsec_` secret (or `v1a,<base64
//! ed25519 signature>` of the same text, for a subscription that asked for ed25519), so
//! receivers check them with any Standard Webhooks library.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hyper::header::{CONTENT_TYPE, HeaderMap, HeaderValue, RETRY_AFTER, USER_AGENT};
use hyper::{Request, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use sha2::Sha256;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::destination::BoxFuture;
use super::guard::GuardedConnector;
pub use super::guard::{DestinationError, check_destination};
use super::{Admission, AttemptResult, Attempted, Batch, Payload, Prepared, Refusal, Sink, Sinks};
use crate::model::{Format, TraceContext};

/// How much of a destination's answer is kept in the delivery log.
const RESPONSE_SNIPPET_BYTES: usize = 1024;
/// A `Retry-After` beyond this is clamped: a receiver cannot park deliveries for weeks.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("a signing secret is whsec_ (HMAC) or whsk_ (ed25519) followed by base64")]
    Malformed,
}

/// One signing key, prepared once per subscription.
#[derive(Clone)]
enum Key {
    /// Standard Webhooks `v1`: HMAC-SHA256 keyed with the decoded `whsec_` secret; signing
    /// clones the keyed state instead of re-deriving the key.
    Hmac(Hmac<Sha256>),
    /// Standard Webhooks `v1a`: ed25519 with the `whsk_` secret key.
    Ed25519(Box<ed25519_dalek::SigningKey>),
}

/// A subscription's signing keys: the current one, and during a secret rotation's
/// overlap the previous one, so receivers that still hold the old secret verify too.
#[derive(Clone)]
pub struct Signer {
    current: Key,
    /// The previous key and when it stops signing (epoch milliseconds).
    previous: Option<(Key, i64)>,
}

impl Key {
    fn new(secret: &str) -> Result<Key, SecretError> {
        if let Some(encoded) = secret.strip_prefix("whsec_") {
            let key = BASE64.decode(encoded).map_err(|_| SecretError::Malformed)?;
            let mac = Hmac::<Sha256>::new_from_slice(&key).map_err(|_| SecretError::Malformed)?;
            return Ok(Key::Hmac(mac));
        }
        let encoded = secret.strip_prefix("whsk_").ok_or(SecretError::Malformed)?;
        let seed: [u8; 32] = BASE64
            .decode(encoded)
            .ok()
            .and_then(|bytes| bytes.try_into().ok())
            .ok_or(SecretError::Malformed)?;
        Ok(Key::Ed25519(Box::new(
            ed25519_dalek::SigningKey::from_bytes(&seed),
        )))
    }

    /// Appends this key's `v1,…` or `v1a,…` signature of the message to `header`.
    fn sign_into(&self, id: &str, timestamp: &str, body: &[u8], header: &mut String) {
        match self {
            Key::Hmac(mac) => {
                let mut mac = mac.clone();
                mac.update(id.as_bytes());
                mac.update(b".");
                mac.update(timestamp.as_bytes());
                mac.update(b".");
                mac.update(body);
                header.push_str("v1,");
                BASE64.encode_string(mac.finalize().into_bytes(), header);
            }
            Key::Ed25519(key) => {
                use ed25519_dalek::Signer as _;
                let mut message = Vec::with_capacity(id.len() + timestamp.len() + body.len() + 2);
                message.extend_from_slice(id.as_bytes());
                message.push(b'.');
                message.extend_from_slice(timestamp.as_bytes());
                message.push(b'.');
                message.extend_from_slice(body);
                header.push_str("v1a,");
                BASE64.encode_string(key.sign(&message).to_bytes(), header);
            }
        }
    }
}

impl Signer {
    pub fn new(secret: &str) -> Result<Signer, SecretError> {
        Ok(Signer {
            current: Key::new(secret)?,
            previous: None,
        })
    }

    /// Also signs with `previous` until `until` (epoch milliseconds).
    pub fn with_previous(mut self, previous: &str, until: i64) -> Result<Signer, SecretError> {
        self.previous = Some((Key::new(previous)?, until));
        Ok(self)
    }

    /// The `webhook-signature` header value for one message: the current key's
    /// signature, and the previous key's while its overlap lasts (space-separated, as
    /// Standard Webhooks allows).
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let time = timestamp.to_string();
        let mut header = String::with_capacity(96);
        self.current.sign_into(id, &time, body, &mut header);
        if let Some((previous, until)) = &self.previous
            && timestamp.saturating_mul(1000) < *until
        {
            header.push(' ');
            previous.sign_into(id, &time, body, &mut header);
        }
        header
    }
}

/// A new random signing secret, `whsec_` + 32 random bytes in base64.
pub fn generate_secret() -> String {
    let key: [u8; 32] = rand::random();
    format!("whsec_{}", BASE64.encode(key))
}

/// A new ed25519 signing key: the secret key (`whsk_` + the base64 of its 32-byte seed,
/// never shown) and its Standard Webhooks public key (`whpk_` + base64).
pub fn generate_ed25519() -> (String, String) {
    let seed: [u8; 32] = rand::random();
    let key = ed25519_dalek::SigningKey::from_bytes(&seed);
    (
        format!("whsk_{}", BASE64.encode(seed)),
        format!("whpk_{}", BASE64.encode(key.verifying_key().as_bytes())),
    )
}

/// An HTTP endpoint that receives each event as a signed POST.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
pub struct WebhookDestination {
    pub url: String,
}

impl Sink for WebhookDestination {
    fn validate(&self) -> Result<(), Refusal> {
        Ok(())
    }

    fn admit<'a>(&'a self, admission: &'a Admission<'a>) -> BoxFuture<'a, Result<(), Refusal>> {
        Box::pin(async move {
            check_destination(&self.url, admission.sinks.config().allow_private)
                .await
                .map_err(|error| Refusal {
                    code: "destination_refused",
                    field: Some("url"),
                    message: error.to_string(),
                })
        })
    }

    fn prepare(&self, sinks: &Arc<Sinks>, _account: &str) -> Result<Arc<dyn Prepared>, String> {
        let url =
            parse_url(&self.url).ok_or_else(|| format!("{:?} is not a usable URL", self.url))?;
        Ok(Arc::new(PreparedWebhook {
            url,
            sinks: sinks.clone(),
        }))
    }

    fn takes(&self, _format: Format) -> bool {
        true
    }

    fn endpoint(&self) -> Option<&str> {
        Some(&self.url)
    }
}

/// A webhook destination's parsed URL, with the shared client (through the sinks: a
/// copy of the client in each of many subscriptions cost hundreds of bytes apiece).
struct PreparedWebhook {
    url: Uri,
    sinks: Arc<Sinks>,
}

impl Prepared for PreparedWebhook {
    fn batch_size(&self) -> usize {
        1
    }

    /// An endpoint is not asked at creation (the validation handshake is the consent
    /// check, on request).
    fn healthcheck(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async { Ok(()) })
    }

    fn send<'a>(&'a self, batch: Batch<'a>) -> BoxFuture<'a, Vec<Attempted>> {
        Box::pin(async move {
            let mut results = Vec::with_capacity(batch.events.len());
            for (index, event) in batch.events.iter().enumerate() {
                let trace = batch.trace(index);
                let request = WebhookRequest {
                    url: &self.url,
                    id: &event.id,
                    sequence: event.seq,
                    payload: Payload::new(batch.format, event, trace),
                    trace,
                };
                results.push(self.sinks.webhooks().send(batch.signer, request).await);
            }
            results
        })
    }
}

/// A webhook URL as the client takes it, or `None` when it is not one.
pub fn parse_url(url: &str) -> Option<Uri> {
    // Through `url` first: it puts international host names in ASCII form.
    let parsed = url::Url::parse(url).ok()?;
    parsed.as_str().parse().ok()
}

/// One message to POST.
pub struct WebhookRequest<'a> {
    pub url: &'a Uri,
    pub id: &'a str,
    pub sequence: i64,
    pub payload: Payload,
    /// Sent as `traceparent` and `tracestate` (W3C Trace Context).
    pub trace: Option<&'a TraceContext>,
}

type Connector = hyper_rustls::HttpsConnector<GuardedConnector>;

/// Shared HTTP client: one connection pool for every webhook destination.
#[derive(Clone)]
pub struct WebhookSink {
    client: Client<Connector, Full<Bytes>>,
    /// For the whole attempt: connecting, sending, the answer's head and snippet.
    timeout: Duration,
    limits: Arc<OutboundLimits>,
}

/// Without `--max-outbound`: webhook requests in flight at once, in all.
pub const DEFAULT_MAX_OUTBOUND: usize = 1024;
/// Without `--max-connections-per-host`: requests in flight at once to one host.
pub const DEFAULT_MAX_CONNECTIONS_PER_HOST: usize = 64;

/// Bounds on the requests in flight: in all, and per host (scheme, host and port, as the
/// connection pool keys its connections). A request holds one slot of each until its
/// attempt is over; with HTTP/1 a request in flight is a connection in use, and the pool
/// opens a connection only when none is idle, so a host never gets more connections
/// than its slots.
struct OutboundLimits {
    outbound: Arc<tokio::sync::Semaphore>,
    per_host: usize,
    /// Only hosts with a request in flight or waiting: the others are removed.
    hosts: std::sync::Mutex<std::collections::HashMap<String, HostSlots>>,
}

/// One host's slots, and how many requests hold or wait for one.
struct HostSlots {
    semaphore: Arc<tokio::sync::Semaphore>,
    users: usize,
}

/// The slots one request holds (or waits for); the host's entry goes with its last user,
/// also when a wait is given up.
struct OutboundPermit<'a> {
    limits: &'a OutboundLimits,
    host: String,
    host_permit: Option<tokio::sync::OwnedSemaphorePermit>,
    _outbound: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl OutboundLimits {
    fn new(outbound: usize, per_host: usize) -> OutboundLimits {
        OutboundLimits {
            outbound: Arc::new(tokio::sync::Semaphore::new(outbound.max(1))),
            per_host: per_host.max(1),
            hosts: Default::default(),
        }
    }

    fn hosts(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, HostSlots>> {
        // A poisoned lock only means a panic mid-update of one entry.
        self.hosts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits for a slot of `url`'s host, then for one in all. In that order: a request
    /// queued behind a host that hangs must not hold a slot every other host needs.
    async fn acquire(&self, url: &Uri) -> OutboundPermit<'_> {
        let host = format!(
            "{}://{}",
            url.scheme_str().unwrap_or("http"),
            url.authority().map_or("", |authority| authority.as_str())
        );
        let semaphore = {
            let mut hosts = self.hosts();
            let slots = hosts.entry(host.clone()).or_insert_with(|| HostSlots {
                semaphore: Arc::new(tokio::sync::Semaphore::new(self.per_host)),
                users: 0,
            });
            slots.users += 1;
            slots.semaphore.clone()
        };
        // From here on, dropping the permit (even mid-wait) gives the host back.
        let mut permit = OutboundPermit {
            limits: self,
            host,
            host_permit: None,
            _outbound: None,
        };
        // The semaphores are never closed: acquiring cannot fail.
        permit.host_permit = semaphore.acquire_owned().await.ok();
        permit._outbound = self.outbound.clone().acquire_owned().await.ok();
        permit
    }
}

impl Drop for OutboundPermit<'_> {
    fn drop(&mut self) {
        drop(self.host_permit.take());
        let mut hosts = self.limits.hosts();
        if let Some(slots) = hosts.get_mut(&self.host) {
            slots.users = slots.users.saturating_sub(1);
            if slots.users == 0 {
                hosts.remove(&self.host);
            }
        }
    }
}

#[cfg(test)]
mod limits_tests {
    use super::*;

    fn url(text: &str) -> Uri {
        text.parse().unwrap()
    }

    #[tokio::test]
    async fn a_busy_host_holds_its_own_slots_not_everyone_elses() {
        let limits = OutboundLimits::new(3, 2);
        let slow = url("http://10.0.0.1:8080/hook");
        let held = [limits.acquire(&slow).await, limits.acquire(&slow).await];
        // The host is at its cap: a third request to it waits…
        let waiting = tokio::time::timeout(Duration::from_millis(50), limits.acquire(&slow));
        assert!(waiting.await.is_err(), "the host's cap holds");
        // …without a slot of the global bound: another host still gets one.
        let other = tokio::time::timeout(
            Duration::from_millis(50),
            limits.acquire(&url("http://10.0.0.2:8080/hook")),
        )
        .await
        .expect("another host is not held back");
        // The same host on another port is another pool key.
        let other_port = url("http://10.0.0.1:9090/hook");
        let port = tokio::time::timeout(Duration::from_millis(50), limits.acquire(&other_port));
        assert!(port.await.is_err(), "the global bound (3) is reached");
        drop(other);
        drop(held);
        // Nobody uses a host any more: its entry is gone.
        assert!(limits.hosts().is_empty());
        let again = limits.acquire(&slow).await;
        assert_eq!(limits.hosts().len(), 1);
        drop(again);
        assert!(limits.hosts().is_empty());
    }
}

/// Why the webhook client cannot start.
#[derive(Debug, thiserror::Error)]
#[error("cannot set up TLS for webhooks: {0}")]
pub struct ClientError(#[from] rustls::Error);

pub(super) const CLIENT_NAME: &str = concat!("reelay/", env!("CARGO_PKG_VERSION"));

impl WebhookSink {
    pub fn new(timeout: Duration, allow_private: bool) -> Result<WebhookSink, ClientError> {
        // Checked at creation too, but a name can be re-pointed later (DNS rebinding), and
        // a stored literal was checked by an older rule: every connection is checked.
        let mut guarded = GuardedConnector::new(allow_private);
        let http = guarded.http();
        http.set_nodelay(true);
        http.set_connect_timeout(Some(timeout.min(Duration::from_secs(10))));
        // The provider is named, not taken from the process default: with more than one
        // in the build, rustls cannot choose by itself.
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?;
        let tls = rustls_platform_verifier::BuilderVerifierExt::with_platform_verifier(tls)?
            .with_no_client_auth();
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(guarded);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(https);
        Ok(WebhookSink {
            client,
            timeout,
            limits: Arc::new(OutboundLimits::new(
                DEFAULT_MAX_OUTBOUND,
                DEFAULT_MAX_CONNECTIONS_PER_HOST,
            )),
        })
    }

    /// The same client with other bounds on requests in flight: `max_outbound` in all,
    /// `max_per_host` to one host.
    pub fn with_limits(mut self, max_outbound: usize, max_per_host: usize) -> WebhookSink {
        self.limits = Arc::new(OutboundLimits::new(max_outbound, max_per_host));
        self
    }

    /// One request through the pool, for the other requests of the webhook sink (the
    /// validation handshake).
    pub(super) async fn request(
        &self,
        request: Request<Full<Bytes>>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, hyper_util::client::legacy::Error> {
        self.client.request(request).await
    }

    pub(super) fn timeout(&self) -> Duration {
        self.timeout
    }

    pub async fn send(&self, signer: &Signer, request: WebhookRequest<'_>) -> Attempted {
        // The wait for a slot is not the receiver's doing: it is neither in the time
        // limit nor in the latency.
        let _permit = self.limits.acquire(request.url).await;
        let started = Instant::now();
        let attempt = tokio::time::timeout(self.timeout, self.post(signer, request)).await;
        let latency = started.elapsed();
        let failed = |error: String| Attempted {
            result: AttemptResult::Failed {
                error,
                retry_after: None,
            },
            status: None,
            latency,
            response: None,
        };
        match attempt {
            Ok(Ok((status, retry_after, snippet))) => Attempted {
                result: classify(status, retry_after),
                status: Some(status.as_u16()),
                latency,
                response: snippet,
            },
            Ok(Err(error)) => failed(error),
            Err(_) => failed("timed out".to_owned()),
        }
    }

    /// Sends one signed POST: the answer's status, its `Retry-After` and the start of its
    /// body, or why there was no answer.
    async fn post(
        &self,
        signer: &Signer,
        request: WebhookRequest<'_>,
    ) -> Result<(StatusCode, Option<Duration>, Option<String>), String> {
        let timestamp = chrono::Utc::now().timestamp();
        let payload = request.payload;
        // The signature covers exactly the body sent (in CloudEvents binary mode, the
        // data; the attributes in the headers are not signed).
        let signature = signer.sign(request.id, timestamp, &payload.body);
        let mut builder = Request::post(request.url.clone());
        if let Some(content_type) = payload.content_type {
            builder = builder.header(CONTENT_TYPE, content_type);
        }
        builder = builder
            .header(USER_AGENT, HeaderValue::from_static(CLIENT_NAME))
            .header("webhook-timestamp", timestamp)
            .header("webhook-signature", signature)
            .header("reelay-sequence", request.sequence);
        if let Ok(id) = HeaderValue::from_str(request.id) {
            builder = builder.header("webhook-id", id);
        }
        for (name, value) in payload.headers {
            builder = builder.header(name, value);
        }
        if let Some(trace) = request.trace {
            // Stored and sent only after validation: always a valid header value.
            if let Ok(value) = HeaderValue::from_str(&trace.traceparent) {
                builder = builder.header("traceparent", value);
            }
            if let Some(Ok(value)) = trace.tracestate.as_deref().map(HeaderValue::from_str) {
                builder = builder.header("tracestate", value);
            }
        }
        let message = builder
            .body(Full::new(payload.body))
            .map_err(|error| format!("request failed: {error}"))?;
        let response = self.client.request(message).await.map_err(|error| {
            let cause = root_cause(&error);
            match error.is_connect() {
                true => format!("connection failed: {cause}"),
                false => format!("request failed: {cause}"),
            }
        })?;
        let status = response.status();
        let retry_after = retry_after(status, response.headers());
        let snippet = read_snippet(response.into_body()).await;
        Ok((status, retry_after, snippet))
    }
}

/// 2xx is success; 410 means the endpoint is gone; every other answer is retried
/// (seed 004 retries 4xx as well as 5xx: a receiver's 404 is often a deploy in progress).
pub fn classify(status: StatusCode, retry_after: Option<Duration>) -> AttemptResult {
    if status.is_success() {
        AttemptResult::Delivered
    } else if status == StatusCode::GONE {
        AttemptResult::Gone
    } else if status == StatusCode::TOO_MANY_REQUESTS {
        AttemptResult::Throttled {
            error: format!("HTTP {status}"),
            retry_after,
        }
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

/// The start of an answer's body, for the delivery log. A longer body is not read to
/// its end (its connection is then not reused).
pub(super) async fn read_snippet(mut body: hyper::body::Incoming) -> Option<String> {
    let mut bytes = Vec::new();
    while bytes.len() < RESPONSE_SNIPPET_BYTES {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Some(chunk) = frame.data_ref() {
                    bytes.extend_from_slice(chunk);
                }
            }
            _ => break,
        }
    }
    if bytes.is_empty() {
        return None;
    }
    bytes.truncate(RESPONSE_SNIPPET_BYTES);
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

pub(super) fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = error;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
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
        assert!(Signer::new(&generate_ed25519().0).is_ok());
        assert!(Signer::new("whsk_c2hvcnQ=").is_err());
    }

    #[test]
    fn during_an_overlap_both_keys_sign_and_after_it_only_the_new_one() {
        let old = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let body = br#"{"test": 2432232314}"#;
        let id = "msg_p5jXN8AQM9LWM0D4loKWxJek";
        let new = Signer::new(&generate_secret()).unwrap();
        let fresh = new.sign(id, 1614265330, body);
        let rotated = new.with_previous(old, 1_614_265_331_000).unwrap();
        let during = rotated.sign(id, 1614265330, body);
        assert_eq!(
            during,
            format!("{fresh} v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=")
        );
        assert!(!rotated.sign(id, 1614265331, body).contains(' '));
    }

    #[test]
    fn ed25519_signatures_verify_with_the_public_key() {
        use ed25519_dalek::Verifier as _;
        let (secret, public) = generate_ed25519();
        let signer = Signer::new(&secret).unwrap();
        let header = signer.sign("msg_1", 1614265330, b"{}");
        let signature = BASE64.decode(header.strip_prefix("v1a,").unwrap()).unwrap();
        let key: [u8; 32] = BASE64
            .decode(public.strip_prefix("whpk_").unwrap())
            .unwrap()
            .try_into()
            .unwrap();
        let key = ed25519_dalek::VerifyingKey::from_bytes(&key).unwrap();
        let signature = ed25519_dalek::Signature::from_slice(&signature).unwrap();
        assert!(key.verify(b"msg_1.1614265330.{}", &signature).is_ok());
        assert!(key.verify(b"msg_1.1614265330.{ }", &signature).is_err());
    }

    #[test]
    fn status_classes() {
        assert_eq!(classify(StatusCode::OK, None), AttemptResult::Delivered);
        assert_eq!(
            classify(StatusCode::NO_CONTENT, None),
            AttemptResult::Delivered
        );
        assert_eq!(classify(StatusCode::GONE, None), AttemptResult::Gone);
        assert_eq!(
            classify(StatusCode::TOO_MANY_REQUESTS, Some(Duration::from_secs(2))),
            AttemptResult::Throttled {
                error: "HTTP 429 Too Many Requests".into(),
                retry_after: Some(Duration::from_secs(2))
            }
        );
        for status in [400, 404, 408, 500, 502, 503] {
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
        let url: Uri = format!("http://localhost:{port}/hook").parse().unwrap();
        let signer = Signer::new(&generate_secret()).unwrap();
        let request = || WebhookRequest {
            url: &url,
            id: "e-1",
            sequence: 1,
            payload: Payload {
                content_type: None,
                headers: Vec::new(),
                body: Bytes::from_static(b"{}"),
            },
            trace: None,
        };

        let refused = WebhookSink::new(Duration::from_secs(5), false)
            .unwrap()
            .send(&signer, request())
            .await;
        match refused.result {
            AttemptResult::Failed { error, .. } => {
                assert!(error.contains("refused:"), "{error}")
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert_eq!(refused.status, None);

        // Allowed: the connection is made (the listener hangs up, so it still fails,
        // but not at name resolution).
        let allowed = WebhookSink::new(Duration::from_secs(5), true)
            .unwrap()
            .send(&signer, request())
            .await;
        match allowed.result {
            AttemptResult::Failed { error, .. } => {
                assert!(!error.contains("refused:"), "{error}")
            }
            AttemptResult::Delivered
            | AttemptResult::Gone
            | AttemptResult::Throttled { .. }
            | AttemptResult::Rejected { .. } => {}
        }
    }
}
