//! A real OTLP/HTTP receiver for tests: `tests/peers/otlp_receiver.py`, which decodes
//! what the exporters send with PyPI `opentelemetry-proto` and shows the spans and the
//! metrics' latest points.

use std::collections::HashMap;
use std::process::Stdio;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};

pub struct OtlpReceiver {
    port: u16,
    http: reqwest::Client,
    _child: Child,
}

/// A span as the receiver decoded it.
#[derive(Debug, Clone, Deserialize)]
pub struct Span {
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    pub name: String,
    pub attributes: HashMap<String, Value>,
    pub status: SpanStatus,
    pub service: Option<String>,
    pub start_ns: u64,
    pub end_ns: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct SpanStatus {
    /// 0 unset, 1 ok, 2 error.
    pub code: i32,
    pub message: String,
}

impl Span {
    pub fn attribute(&self, name: &str) -> &Value {
        self.attributes.get(name).unwrap_or(&Value::Null)
    }
}

/// The latest point of one metric series, as the receiver decoded it.
#[derive(Debug, Clone, Deserialize)]
pub struct MetricPoint {
    pub name: String,
    /// "sum", "gauge" or "histogram".
    pub kind: String,
    pub attributes: HashMap<String, Value>,
    /// A sum's or gauge's value; a histogram's count.
    pub value: f64,
    pub service: Option<String>,
}

#[derive(Deserialize)]
struct Metrics {
    metrics: Vec<MetricPoint>,
}

#[derive(Deserialize)]
struct Spans {
    spans: Vec<Span>,
}

#[derive(Debug, Deserialize)]
pub struct Requests {
    pub count: usize,
    pub errors: Vec<String>,
}

impl OtlpReceiver {
    pub async fn start() -> OtlpReceiver {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/otlp_receiver.py");
        let mut child = Command::new("python3")
            .args([script, "--port", "0"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 runs");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .expect("the OTLP receiver starts within 20s")
            .expect("read its stdout");
        let Some(port) = line.as_deref().and_then(|l| l.strip_prefix("LISTENING ")) else {
            let mut stderr = String::new();
            if let Some(mut err) = child.stderr.take() {
                let _ = err.read_to_string(&mut stderr).await;
            }
            panic!(
                "the OTLP receiver did not start (is `opentelemetry-proto` installed? pip install -r tests/peers/requirements.txt): {stderr}"
            );
        };
        OtlpReceiver {
            port: port.trim().parse().expect("port"),
            http: reqwest::Client::new(),
            _child: child,
        }
    }

    /// The base URL to give as `--otlp-endpoint` (the exporter adds `/v1/traces`).
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every span received so far, in arrival order.
    pub async fn spans(&self) -> Vec<Span> {
        self.control::<Spans>("spans").await.spans
    }

    /// The latest point of every metric series received so far.
    pub async fn metrics(&self) -> Vec<MetricPoint> {
        self.control::<Metrics>("metrics").await.metrics
    }

    /// The export requests received, and why any could not be decoded.
    pub async fn requests(&self) -> Requests {
        self.control("requests").await
    }

    /// What the receiver shows at `/_control/<what>`.
    async fn control<T: serde::de::DeserializeOwned>(&self, what: &str) -> T {
        self.http
            .get(format!("{}/_control/{what}", self.endpoint()))
            .send()
            .await
            .expect("query the OTLP receiver")
            .json()
            .await
            .unwrap_or_else(|error| panic!("the receiver's {what} as JSON: {error}"))
    }
}
