//! The NATS JetStream sink: each event is published to a subject of a stream, and counts
//! as delivered only when the stream acknowledged it.
//!
//! `Nats-Msg-Id` is the delivery id, so JetStream drops a redelivery within the stream's
//! duplicate window; the `Reelay-*` headers ([`super::bus::headers`]) name the event.
//! The subject is a template (`video.{account}.{eventName}`). A batch is published
//! pipelined: every message goes out before the first acknowledgement is awaited.
//! Subscriptions to one URL share one connection, which the client re-establishes by
//! itself; an unreachable server fails the batch, which is retried on the schedule.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use async_nats::jetstream::context::PublishErrorKind;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::bus::{self, Template};
use super::destination::BoxFuture;
use super::{Admission, AttemptResult, Attempted, Batch, Payload, Prepared, Refusal, Sink, Sinks};

/// The destination `type`.
const KIND: &str = "nats";
/// Events one call publishes (pipelined).
const BATCH: usize = 100;

/// A NATS JetStream stream, through a subject it captures. Delivered means acknowledged
/// by the stream; `Nats-Msg-Id` is the delivery id, so the stream de-duplicates
/// redeliveries within its duplicate window.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
pub struct NatsDestination {
    /// The subject, with placeholders `{account}`, `{eventName}`, `{topic}` and
    /// `{entity}` (e.g. `video.{account}.{eventName}`).
    #[schema(
        pattern = "^(?:[^\\s*>.{}\\x00-\\x1f\\x7f-\\x9f]|\\{(?:account|eventName|topic|entity)\\})+(?:\\.(?:[^\\s*>.{}\\x00-\\x1f\\x7f-\\x9f]|\\{(?:account|eventName|topic|entity)\\})+)*$",
        max_length = 255
    )]
    pub subject: String,
    /// The server, `nats://host:port` (default: the server's `--nats-url`). From an
    /// account key only where the operator allows it (`--allow-nats-url`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

impl Sink for NatsDestination {
    fn validate(&self) -> Result<(), Refusal> {
        let invalid = |message: String| Refusal::invalid(Some("subject"), message);
        let template = Template::parse(&self.subject).map_err(invalid)?;
        let sample = template.sample();
        let malformed = sample.is_empty()
            || sample.len() > 255
            || sample.split('.').any(str::is_empty)
            || sample
                .chars()
                .any(|c| c.is_whitespace() || c == '*' || c == '>');
        if malformed {
            return Err(invalid(format!(
                "{:?} is not a subject to publish to: tokens separated by dots, no spaces or wildcards",
                self.subject
            )));
        }
        Ok(())
    }

    fn admit<'a>(&'a self, admission: &'a Admission<'a>) -> BoxFuture<'a, Result<(), Refusal>> {
        Box::pin(bus::admit_url(
            admission,
            KIND,
            self.url.as_deref(),
            &["nats", "tls"],
            ("--allow-nats-url", "--nats-url"),
        ))
    }

    fn prepare(&self, sinks: &Arc<Sinks>, _account: &str) -> Result<Arc<dyn Prepared>, String> {
        let url = bus::connection_url(sinks, KIND, self.url.as_deref())?;
        let subject = Template::parse(&self.subject)?;
        Ok(Arc::new(PreparedNats {
            connections: sinks.shared::<Connections>(),
            url,
            subject,
            timeout: sinks.config().delivery_timeout,
            slow_retry: sinks.config().slow_retry,
        }))
    }
}

/// One client per server URL, shared by its subscriptions.
#[derive(Default)]
struct Connections {
    clients: tokio::sync::Mutex<HashMap<String, async_nats::Client>>,
}

impl Connections {
    async fn client(
        &self,
        url: &url::Url,
        timeout: Duration,
    ) -> Result<async_nats::Client, String> {
        let mut clients = self.clients.lock().await;
        if let Some(client) = clients.get(url.as_str()) {
            return Ok(client.clone());
        }
        let connect = async_nats::ConnectOptions::new()
            .name("reelay")
            .connection_timeout(timeout)
            .connect(url.as_str());
        let client = tokio::time::timeout(timeout, connect)
            .await
            .map_err(|_| "timed out connecting to the NATS server".to_owned())?
            .map_err(|error| format!("could not connect to the NATS server: {}", error.kind()))?;
        clients.insert(url.as_str().to_owned(), client.clone());
        Ok(client)
    }
}

struct PreparedNats {
    connections: Arc<Connections>,
    url: url::Url,
    subject: Template,
    timeout: Duration,
    /// A subject no stream captures waits this long between attempts.
    slow_retry: Duration,
}

impl PreparedNats {
    async fn jetstream(&self) -> Result<jetstream::Context, String> {
        let client = self.connections.client(&self.url, self.timeout).await?;
        let mut context = jetstream::new(client);
        context.set_timeout(self.timeout);
        Ok(context)
    }
}

impl Prepared for PreparedNats {
    fn batch_size(&self) -> usize {
        BATCH
    }

    /// Connects, and for a subject without placeholders asks that a stream captures it.
    fn healthcheck(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let context = self.jetstream().await?;
            let Some(fixed) = self.subject.fixed() else {
                return Ok(());
            };
            context
                .stream_by_subject(fixed)
                .await
                .map(drop)
                .map_err(|error| format!("no JetStream stream captures {fixed:?}: {error}"))
        })
    }

    fn send<'a>(&'a self, batch: Batch<'a>) -> BoxFuture<'a, Vec<Attempted>> {
        Box::pin(async move {
            let started = Instant::now();
            let failed = |error: String| Attempted {
                result: AttemptResult::Failed {
                    error,
                    retry_after: None,
                },
                status: None,
                latency: started.elapsed(),
                response: None,
            };
            let context = match self.jetstream().await {
                Ok(context) => context,
                Err(error) => return vec![failed(error); batch.events.len()],
            };
            // Every message goes out first; then the acknowledgements are awaited.
            let mut pending = Vec::with_capacity(batch.events.len());
            for (index, event) in batch.events.iter().enumerate() {
                let trace = batch.trace(index);
                let payload = Payload::new(batch.format, event, trace);
                let mut headers = async_nats::HeaderMap::new();
                if let Some(content_type) =
                    payload.content_type.as_ref().and_then(|v| v.to_str().ok())
                {
                    headers.insert("Content-Type", content_type);
                }
                for (name, value) in bus::headers(event, trace) {
                    headers.insert(name, value.as_str());
                }
                let message = jetstream::message::PublishMessage::build()
                    .payload(payload.body)
                    .headers(headers)
                    .message_id(&event.id);
                pending.push(
                    context
                        .send_publish(self.subject.render(event), message)
                        .await,
                );
            }
            metrics::counter!("reelay_sink_calls_total", "sink" => KIND).increment(1);
            let mut results = Vec::with_capacity(pending.len());
            for sent in pending {
                let acked = match sent {
                    Ok(ack) => ack.await,
                    Err(error) => Err(error),
                };
                results.push(match acked {
                    // A duplicate was stored before: delivered all the same.
                    Ok(_) => Attempted {
                        result: AttemptResult::Delivered,
                        status: None,
                        latency: started.elapsed(),
                        response: None,
                    },
                    Err(error) => {
                        let kind = error.kind();
                        let mut attempted = failed(describe(kind));
                        if kind == PublishErrorKind::StreamNotFound
                            && let AttemptResult::Failed { retry_after, .. } = &mut attempted.result
                        {
                            *retry_after = Some(self.slow_retry);
                        }
                        attempted
                    }
                });
            }
            results
        })
    }
}

/// A publish failure as the delivery log shows it.
fn describe(kind: PublishErrorKind) -> String {
    match kind {
        PublishErrorKind::StreamNotFound => {
            "no JetStream stream captures this subject (no responders)".to_owned()
        }
        PublishErrorKind::TimedOut => "the stream did not acknowledge in time".to_owned(),
        other => format!("publish failed: {other}"),
    }
}
