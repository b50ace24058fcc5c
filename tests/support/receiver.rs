//! A real webhook receiver for tests: `tests/peers/webhook_receiver.py`, which checks
//! every signature with the `standardwebhooks` Python package, reads CloudEvents with the
//! `cloudevents` SDK, answers from a script, and plays the validation handshake.

use std::collections::HashMap;
use std::process::Stdio;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};

pub struct Receiver {
    port: u16,
    http: reqwest::Client,
    _child: Child,
}

/// One scripted answer.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub retry_after: Option<String>,
}

impl Response {
    pub fn status(status: u16) -> Response {
        Response {
            status,
            retry_after: None,
        }
    }

    pub fn retry_after(status: u16, seconds: &str) -> Response {
        Response {
            status,
            retry_after: Some(seconds.to_owned()),
        }
    }
}

/// A delivery as the receiver recorded it.
#[derive(Debug, Clone, Deserialize)]
pub struct Delivery {
    pub webhook_id: Option<String>,
    pub webhook_timestamp: Option<String>,
    pub webhook_signature: Option<String>,
    pub headers: HashMap<String, String>,
    pub body: String,
    /// The body's bytes, in base64.
    pub body_base64: String,
    /// Arrival time, seconds since the epoch.
    pub at: f64,
    /// How long the receiver waited before answering, in milliseconds.
    #[serde(default)]
    pub delay_ms: f64,
    /// The status the receiver answered.
    #[serde(default)]
    pub status: Option<u16>,
    /// The `standardwebhooks` verdict, when a secret was registered for the path.
    pub verified: Option<bool>,
    pub error: Option<String>,
    /// A CloudEvent as the `cloudevents` SDK read it: `{"mode", "attributes", "data" or
    /// "data_base64"}` (times as ISO 8601).
    pub cloudevent: Option<Value>,
    /// Why the SDK could not read a delivery that looked like a CloudEvent.
    pub cloudevent_error: Option<String>,
    /// The verdict with each of the path's extra `secrets`, in order.
    #[serde(default)]
    pub verified_each: Vec<bool>,
    /// Whether a `v1a` (ed25519) signature verifies with the path's public key.
    #[serde(default)]
    pub ed25519_verified: Option<bool>,
    /// The same, over the body with one byte changed (must be false).
    #[serde(default)]
    pub ed25519_tampered_verified: Option<bool>,
}

/// A validation handshake (OPTIONS request) as the receiver recorded it.
#[derive(Debug, Clone, Deserialize)]
pub struct Handshake {
    pub headers: HashMap<String, String>,
    /// The status it answered.
    pub status: u16,
}

/// How the receiver answers a validation handshake.
#[derive(Debug, Clone)]
pub struct HandshakeAnswer {
    pub status: u16,
    /// `WebHook-Allowed-Origin`; `"echo"` repeats the request's origin.
    pub allowed_origin: Option<String>,
    pub allowed_rate: Option<String>,
}

impl Receiver {
    pub async fn start() -> Receiver {
        Receiver::start_on(0, &[]).await
    }

    /// Starts on a given port (0: any free one) with `hooks` (path, secret) registered
    /// before the first delivery can arrive.
    pub async fn start_on(port: u16, hooks: &[(&str, &str)]) -> Receiver {
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/peers/webhook_receiver.py"
        );
        let mut args = vec![script.to_owned(), "--port".into(), port.to_string()];
        for (path, secret) in hooks {
            args.extend(["--hook".to_owned(), format!("{path}={secret}")]);
        }
        let mut child = Command::new("python3")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 runs");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .expect("receiver starts within 20s")
            .expect("read receiver stdout");
        let Some(port) = line.as_deref().and_then(|l| l.strip_prefix("LISTENING ")) else {
            let mut stderr = String::new();
            if let Some(mut err) = child.stderr.take() {
                let _ = err.read_to_string(&mut stderr).await;
            }
            panic!(
                "the webhook receiver did not start (is `standardwebhooks` installed? run scripts/test): {stderr}"
            );
        };
        Receiver {
            port: port.trim().parse().expect("port"),
            http: reqwest::Client::new(),
            _child: child,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Registers the secret that signs deliveries to `path`, and the answers to give.
    pub async fn hook(&self, path: &str, secret: &str, responses: &[Response]) {
        let responses: Vec<_> = responses
            .iter()
            .map(|r| json!({"status": r.status, "retry_after": r.retry_after}))
            .collect();
        self.http
            .post(self.url("/_control/hooks"))
            .json(&json!({"path": path, "secret": secret, "responses": responses}))
            .send()
            .await
            .expect("register hook")
            .error_for_status()
            .expect("hook registered");
    }

    /// Checks every delivery to `path` with each of `secrets` on its own (e.g. the old
    /// and the new secret of a rotation), and, given a `whpk_` public key, its ed25519
    /// (`v1a`) signatures.
    pub async fn verify_with(&self, path: &str, secrets: &[&str], public_key: Option<&str>) {
        self.http
            .post(self.url("/_control/hooks"))
            .json(&json!({"path": path, "secrets": secrets, "public_key": public_key}))
            .send()
            .await
            .expect("set verification")
            .error_for_status()
            .expect("verification set");
    }

    /// Makes `path` wait this long before answering each delivery (a slow receiver).
    pub async fn delay(&self, path: &str, delay_ms: u64) {
        self.http
            .post(self.url("/_control/hooks"))
            .json(&json!({"path": path, "delay_ms": delay_ms}))
            .send()
            .await
            .expect("set delay")
            .error_for_status()
            .expect("delay set");
    }

    /// Makes `path` wait a random time from 0 to `max_ms` before answering each delivery
    /// (each delivery's `delay_ms` says how long).
    pub async fn random_delay(&self, path: &str, max_ms: u64) {
        self.http
            .post(self.url("/_control/hooks"))
            .json(&json!({"path": path, "delay_ms_max": max_ms}))
            .send()
            .await
            .expect("set delay")
            .error_for_status()
            .expect("delay set");
    }

    /// How `path` answers validation handshakes (before its secret is known).
    pub async fn handshake(&self, path: &str, answer: HandshakeAnswer) {
        let answer = json!({"status": answer.status, "allowed_origin": answer.allowed_origin,
                            "allowed_rate": answer.allowed_rate});
        self.http
            .post(self.url("/_control/hooks"))
            .json(&json!({"path": path, "handshake": answer}))
            .send()
            .await
            .expect("register handshake")
            .error_for_status()
            .expect("handshake registered");
    }

    /// Deliveries to `path`, in arrival order.
    pub async fn deliveries(&self, path: &str) -> Vec<Delivery> {
        self.received(path).await.deliveries
    }

    /// Validation handshakes asked of `path`, in arrival order.
    pub async fn handshakes(&self, path: &str) -> Vec<Handshake> {
        self.received(path).await.handshakes
    }

    async fn received(&self, path: &str) -> Received {
        self.http
            .get(
                url::Url::parse_with_params(&self.url("/_control/received"), [("path", path)])
                    .expect("control URL"),
            )
            .send()
            .await
            .expect("query receiver")
            .json()
            .await
            .expect("receiver JSON")
    }
}

#[derive(Deserialize)]
struct Received {
    deliveries: Vec<Delivery>,
    handshakes: Vec<Handshake>,
}
