//! The CloudEvents webhook validation handshake ("abuse protection", section 4 of the
//! CloudEvents HTTP Webhook spec): before a subscription that asks for it is stored,
//! Reelay asks the endpoint whether it wants events from this sender, with an `OPTIONS`
//! request carrying `WebHook-Request-Origin`. The endpoint consents by answering 2xx
//! with `WebHook-Allowed-Origin` set to that origin or `*`. Anything else is a refusal:
//! the spec says a status code alone is no consent, as many servers answer `OPTIONS`
//! to everything.
//!
//! A subscription with a `rateLimit` asks for its rate (`WebHook-Request-Rate`, in
//! requests a minute as the spec counts); a `WebHook-Allowed-Rate` in the answer lowers
//! the subscription's limit to it (or gives one to a subscription without), which the
//! dispatcher enforces. Rates are kept in whole deliveries a second: an allowed rate
//! below 60 a minute becomes one a second. Consent by callback (`WebHook-Request-Callback`)
//! is not offered: the subscription is created or refused within its request.

use http_body_util::Full;
use hyper::header::{HeaderValue, USER_AGENT};
use hyper::{Method, Request, Uri};

use super::webhook::{CLIENT_NAME, WebhookSink, read_snippet, root_cause};
use crate::model::MAX_RATE;

const REQUEST_ORIGIN: &str = "webhook-request-origin";
const ALLOWED_ORIGIN: &str = "webhook-allowed-origin";
const ALLOWED_RATE: &str = "webhook-allowed-rate";
const REQUEST_RATE: &str = "webhook-request-rate";

/// The endpoint's consent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Granted {
    /// `WebHook-Allowed-Origin`: the origin sent, or `*`.
    pub allowed_origin: String,
    /// `WebHook-Allowed-Rate`, as the endpoint wrote it, when it sent one.
    pub allowed_rate: Option<String>,
}

impl Granted {
    /// The allowed rate in whole deliveries a second (at least one, at most
    /// [`MAX_RATE`]), when the endpoint sent a number of requests a minute; `*` or
    /// anything else sets no limit.
    pub fn allowed_per_second(&self) -> Option<u32> {
        let per_minute: u64 = self.allowed_rate.as_deref()?.parse().ok()?;
        Some((per_minute / 60).clamp(1, u64::from(MAX_RATE)) as u32)
    }
}

/// Why the endpoint did not consent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// No answer: the connection failed (a private address without
    /// `--allow-private-destinations` included), or it timed out.
    #[error("the endpoint did not answer the validation request (OPTIONS): {0}")]
    Unanswered(String),
    /// An answer that is not consent.
    #[error(
        "the endpoint answered the validation request (OPTIONS) with HTTP {status} and {}, which does not allow origin {origin:?}",
        match allowed { Some(allowed) => format!("WebHook-Allowed-Origin {allowed:?}"), None => "no WebHook-Allowed-Origin".to_owned() }
    )]
    Refused {
        status: u16,
        origin: String,
        allowed: Option<String>,
    },
}

impl WebhookSink {
    /// Asks `url` whether it accepts events from `origin` (a DNS name that identifies
    /// this Reelay), at `per_second` deliveries a second when given. Through the
    /// deliveries' client, so the same address rules apply.
    pub async fn handshake(
        &self,
        url: &Uri,
        origin: &str,
        per_second: Option<u32>,
    ) -> Result<Granted, HandshakeError> {
        let ask = self.ask(url, origin, per_second);
        let attempt = tokio::time::timeout(self.timeout(), ask).await;
        let (status, allowed_origin, allowed_rate) = match attempt {
            Ok(answer) => answer?,
            Err(_) => return Err(HandshakeError::Unanswered("timed out".into())),
        };
        match allowed_origin {
            Some(allowed)
                if status.is_success()
                    && (allowed == "*" || allowed.eq_ignore_ascii_case(origin)) =>
            {
                Ok(Granted {
                    allowed_origin: allowed,
                    allowed_rate,
                })
            }
            allowed => Err(HandshakeError::Refused {
                status: status.as_u16(),
                origin: origin.to_owned(),
                allowed,
            }),
        }
    }

    /// Sends the `OPTIONS` request: the answer's status, `WebHook-Allowed-Origin` and
    /// `WebHook-Allowed-Rate`.
    async fn ask(
        &self,
        url: &Uri,
        origin: &str,
        per_second: Option<u32>,
    ) -> Result<(hyper::StatusCode, Option<String>, Option<String>), HandshakeError> {
        let origin = HeaderValue::from_str(origin).map_err(|_| {
            HandshakeError::Unanswered(format!("{origin:?} cannot be a header value"))
        })?;
        let mut request = Request::builder()
            .method(Method::OPTIONS)
            .uri(url.clone())
            .header(USER_AGENT, HeaderValue::from_static(CLIENT_NAME))
            .header(REQUEST_ORIGIN, origin);
        if let Some(per_second) = per_second {
            request = request.header(REQUEST_RATE, u64::from(per_second) * 60);
        }
        let request = request
            .body(Full::default())
            .map_err(|error| HandshakeError::Unanswered(format!("request failed: {error}")))?;
        let response = self.request(request).await.map_err(|error| {
            let cause = root_cause(&error);
            HandshakeError::Unanswered(match error.is_connect() {
                true => format!("connection failed: {cause}"),
                false => format!("request failed: {cause}"),
            })
        })?;
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|value| value.to_str().ok())
                .map(|value| value.trim().to_owned())
        };
        let status = response.status();
        let allowed_origin = header(ALLOWED_ORIGIN);
        let allowed_rate = header(ALLOWED_RATE);
        // Read so the connection can serve the deliveries that follow.
        let _ = read_snippet(response.into_body()).await;
        Ok((status, allowed_origin, allowed_rate))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A one-connection server that answers with `answer` and hands back the request.
    async fn endpoint(answer: &'static str) -> (Uri, tokio::task::JoinHandle<String>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap())
            .parse()
            .unwrap();
        let served = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = Vec::new();
            let mut buffer = [0u8; 1024];
            while !request.ends_with(b"\r\n\r\n") {
                let read = socket.read(&mut buffer).await.unwrap();
                if read == 0 {
                    break;
                }
                request.extend_from_slice(&buffer[..read]);
            }
            socket.write_all(answer.as_bytes()).await.unwrap();
            String::from_utf8(request).unwrap()
        });
        (url, served)
    }

    fn sink() -> WebhookSink {
        WebhookSink::new(Duration::from_secs(5), true).unwrap()
    }

    #[tokio::test]
    async fn consent_is_a_2xx_naming_the_origin_or_any() {
        for allowed in ["events.example.com", "EVENTS.example.com", "*"] {
            let answer = Box::leak(
                format!(
                    "HTTP/1.1 200 OK\r\nWebHook-Allowed-Origin: {allowed}\r\nWebHook-Allowed-Rate: 120\r\ncontent-length: 0\r\n\r\n"
                )
                .into_boxed_str(),
            );
            let (url, served) = endpoint(answer).await;
            let granted = sink().handshake(&url, "events.example.com", Some(20)).await;
            assert_eq!(
                granted,
                Ok(Granted {
                    allowed_origin: allowed.to_owned(),
                    allowed_rate: Some("120".into())
                })
            );
            // 120 requests a minute: two a second.
            assert_eq!(granted.unwrap().allowed_per_second(), Some(2));
            let request = served.await.unwrap().to_ascii_lowercase();
            assert!(
                request.starts_with("options /hook http/1.1\r\n"),
                "{request}"
            );
            assert!(
                request.contains("webhook-request-origin: events.example.com\r\n"),
                "{request}"
            );
            // 20 a second, asked for as the spec counts: a minute's worth.
            assert!(
                request.contains("webhook-request-rate: 1200\r\n"),
                "{request}"
            );
        }
    }

    #[test]
    fn an_allowed_rate_is_whole_deliveries_a_second() {
        let granted = |rate: Option<&str>| Granted {
            allowed_origin: "*".into(),
            allowed_rate: rate.map(str::to_owned),
        };
        assert_eq!(granted(Some("600")).allowed_per_second(), Some(10));
        assert_eq!(granted(Some("30")).allowed_per_second(), Some(1));
        assert_eq!(granted(Some("*")).allowed_per_second(), None);
        assert_eq!(granted(None).allowed_per_second(), None);
        assert_eq!(
            granted(Some("999999999")).allowed_per_second(),
            Some(MAX_RATE)
        );
    }

    #[tokio::test]
    async fn anything_else_is_a_refusal() {
        for answer in [
            // Another origin.
            "HTTP/1.1 200 OK\r\nWebHook-Allowed-Origin: other.example.com\r\ncontent-length: 0\r\n\r\n",
            // A server that answers OPTIONS to everything, without consent.
            "HTTP/1.1 200 OK\r\nAllow: GET, POST, OPTIONS\r\ncontent-length: 0\r\n\r\n",
            // Not a success.
            "HTTP/1.1 405 Method Not Allowed\r\nWebHook-Allowed-Origin: *\r\ncontent-length: 0\r\n\r\n",
        ] {
            let (url, _served) = endpoint(answer).await;
            let refused = sink().handshake(&url, "events.example.com", None).await;
            assert!(
                matches!(refused, Err(HandshakeError::Refused { .. })),
                "{answer}: {refused:?}"
            );
        }
    }

    #[tokio::test]
    async fn private_addresses_are_not_asked_unless_allowed() {
        let (url, _served) =
            endpoint("HTTP/1.1 200 OK\r\nWebHook-Allowed-Origin: *\r\ncontent-length: 0\r\n\r\n")
                .await;
        let sink = WebhookSink::new(Duration::from_secs(5), false).unwrap();
        // A name goes through the resolver that refuses private addresses (IP literals
        // do not: the API checks them before asking, with `check_destination`).
        let by_name: Uri = format!("http://localhost:{}/hook", url.port_u16().unwrap())
            .parse()
            .unwrap();
        match sink.handshake(&by_name, "reelay", None).await {
            Err(HandshakeError::Unanswered(reason)) => {
                assert!(reason.contains("no public address"), "{reason}")
            }
            other => panic!("expected no answer, got {other:?}"),
        }
    }
}
