//! The RabbitMQ (AMQP 0-9-1) sink: each event is published to an exchange as a
//! persistent message, and counts as delivered only when the broker confirmed it
//! (publisher confirms).
//!
//! `message_id` is the delivery id (RabbitMQ does not de-duplicate: a consumer that must
//! see each event once keeps the ids it has seen); the `Reelay-*` headers
//! ([`super::bus::headers`]) name the event. The routing key is a template
//! (`{account}.{eventName}`, default `{eventName}`). Subscriptions to one URL share one
//! connection, and each has a channel of its own, in confirm mode; a connection or
//! channel that closed is opened again at the next batch. A batch is published pipelined:
//! every message goes out before the first confirm is awaited.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ErrorKind};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::bus::{self, Template};
use super::destination::BoxFuture;
use super::{Admission, AttemptResult, Attempted, Batch, Payload, Prepared, Refusal, Sink, Sinks};

/// The destination `type`.
const KIND: &str = "amqp";
/// Events one call publishes (pipelined).
const BATCH: usize = 100;
/// The routing key when the destination gives none.
const DEFAULT_ROUTING_KEY: &str = "{eventName}";
/// AMQP short strings (exchange names, routing keys) hold at most 255 bytes; RabbitMQ
/// names an exchange in at most 127 characters.
const MAX_KEY: usize = 255;
const MAX_EXCHANGE: usize = 127;

/// A RabbitMQ exchange. Delivered means confirmed by the broker (publisher confirms),
/// persistent (`delivery_mode` 2); `message_id` is the delivery id. RabbitMQ does not
/// de-duplicate: a redelivery arrives again with the same `message_id`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AmqpDestination {
    /// The exchange to publish to; it must exist (`""`: the default exchange, whose
    /// routing keys are queue names).
    #[schema(pattern = "^[A-Za-z0-9_.:-]*$", max_length = 127)]
    pub exchange: String,
    /// The routing key, with placeholders `{account}`, `{eventName}`, `{topic}` and
    /// `{entity}` (default `{eventName}`): at most 255 bytes, no control characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 255, pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]*$")]
    pub routing_key: Option<String>,
    /// The broker, `amqp://user:password@host:port/vhost` or `amqps://…` (default: the
    /// server's `--amqp-url`). From an account key only where the operator allows it
    /// (`--allow-amqp-url`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

impl AmqpDestination {
    fn routing_key(&self) -> Result<Template, String> {
        Template::parse(self.routing_key.as_deref().unwrap_or(DEFAULT_ROUTING_KEY))
    }
}

impl Sink for AmqpDestination {
    fn validate(&self) -> Result<(), Refusal> {
        let exchange_ok = self.exchange.len() <= MAX_EXCHANGE
            && self
                .exchange
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-'));
        if !exchange_ok {
            return Err(Refusal::invalid(
                Some("exchange"),
                format!(
                    "{:?} is not an exchange name: at most {MAX_EXCHANGE} letters, digits, '_', '.', ':' or '-'",
                    self.exchange
                ),
            ));
        }
        let invalid = |message: String| Refusal::invalid(Some("routingKey"), message);
        let template = self.routing_key().map_err(invalid)?;
        let sample = template.sample();
        if sample.len() > MAX_KEY || sample.chars().any(char::is_control) {
            return Err(invalid(format!(
                "{:?} is not a routing key: at most {MAX_KEY} bytes, no control characters",
                self.routing_key.as_deref().unwrap_or_default()
            )));
        }
        Ok(())
    }

    fn admit<'a>(&'a self, admission: &'a Admission<'a>) -> BoxFuture<'a, Result<(), Refusal>> {
        Box::pin(bus::admit_url(
            admission,
            KIND,
            self.url.as_deref(),
            &["amqp", "amqps"],
            ("--allow-amqp-url", "--amqp-url"),
        ))
    }

    fn prepare(&self, sinks: &Arc<Sinks>, _account: &str) -> Result<Arc<dyn Prepared>, String> {
        let url = bus::connection_url(sinks, KIND, self.url.as_deref())?;
        Ok(Arc::new(PreparedAmqp {
            connections: sinks.shared::<Connections>(),
            url,
            exchange: self.exchange.clone(),
            routing_key: self.routing_key()?,
            channel: tokio::sync::Mutex::new(None),
            timeout: sinks.config().delivery_timeout,
            slow_retry: sinks.config().slow_retry,
        }))
    }
}

/// One connection per broker URL, shared by its subscriptions.
#[derive(Default)]
struct Connections {
    open: tokio::sync::Mutex<HashMap<String, Arc<Connection>>>,
}

impl Connections {
    /// The open connection to `url`, or a new one if it has none (or it closed).
    async fn connection(
        &self,
        url: &url::Url,
        timeout: Duration,
    ) -> Result<Arc<Connection>, Failure> {
        let mut open = self.open.lock().await;
        if let Some(connection) = open.get(url.as_str())
            && connection.status().connected()
        {
            return Ok(connection.clone());
        }
        let connect = Connection::connect(
            url.as_str(),
            ConnectionProperties::default().with_connection_name("reelay".into()),
        );
        let connection = tokio::time::timeout(timeout, connect)
            .await
            .map_err(|_| Failure::transient("timed out connecting to the broker"))?
            .map_err(|error| Failure::of("could not connect to the broker", error.kind()))?;
        let connection = Arc::new(connection);
        open.insert(url.as_str().to_owned(), connection.clone());
        Ok(connection)
    }
}

struct PreparedAmqp {
    connections: Arc<Connections>,
    url: url::Url,
    exchange: String,
    routing_key: Template,
    /// This subscription's channel, in confirm mode.
    channel: tokio::sync::Mutex<Option<Channel>>,
    timeout: Duration,
    /// A missing exchange, or one these credentials may not use, waits this long.
    slow_retry: Duration,
}

impl PreparedAmqp {
    /// The subscription's channel, opened again if it (or its connection) closed.
    async fn channel(&self) -> Result<Channel, Failure> {
        let mut slot = self.channel.lock().await;
        if let Some(channel) = slot.as_ref()
            && channel.status().connected()
        {
            return Ok(channel.clone());
        }
        let connection = self.connections.connection(&self.url, self.timeout).await?;
        let open = async {
            let channel = connection.create_channel().await?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            Ok::<_, lapin::Error>(channel)
        };
        let channel = tokio::time::timeout(self.timeout, open)
            .await
            .map_err(|_| Failure::transient("timed out opening a channel"))?
            .map_err(|error| Failure::of("could not open a channel", error.kind()))?;
        *slot = Some(channel.clone());
        Ok(channel)
    }

    fn properties(
        &self,
        event: &crate::model::StoredEvent,
        payload: &Payload,
        trace: Option<&crate::model::TraceContext>,
    ) -> BasicProperties {
        let mut headers = FieldTable::default();
        for (name, value) in bus::headers(event, trace) {
            headers.insert(ShortString::from(name), AMQPValue::LongString(value.into()));
        }
        let mut properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_message_id(event.id.as_str().into())
            .with_app_id("reelay".into())
            .with_timestamp(u64::try_from(event.occurred_at / 1000).unwrap_or(0))
            .with_headers(headers);
        if let Some(content_type) = payload.content_type.as_ref().and_then(|v| v.to_str().ok()) {
            properties = properties.with_content_type(content_type.into());
        }
        properties
    }
}

impl Prepared for PreparedAmqp {
    fn batch_size(&self) -> usize {
        BATCH
    }

    /// Connects and checks that the exchange exists (a passive declare, on a channel of
    /// its own: a missing exchange closes the channel it is asked on).
    fn healthcheck(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let connection = self
                .connections
                .connection(&self.url, self.timeout)
                .await
                .map_err(|failure| failure.message)?;
            if self.exchange.is_empty() {
                return Ok(());
            }
            let channel = connection
                .create_channel()
                .await
                .map_err(|error| Failure::of("could not open a channel", error.kind()).message)?;
            let declared = channel
                .exchange_declare(
                    self.exchange.as_str().into(),
                    lapin::ExchangeKind::Direct,
                    ExchangeDeclareOptions {
                        passive: true,
                        ..ExchangeDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await;
            if channel.status().connected() {
                let _ = channel.close(200, "OK".into()).await;
            }
            declared.map_err(|error| {
                Failure::of(&format!("exchange {:?}", self.exchange), error.kind()).message
            })
        })
    }

    fn send<'a>(&'a self, batch: Batch<'a>) -> BoxFuture<'a, Vec<Attempted>> {
        Box::pin(async move {
            let started = Instant::now();
            let deadline = tokio::time::Instant::now() + self.timeout;
            let attempted = |outcome: Result<(), Failure>| Attempted {
                result: match outcome {
                    Ok(()) => AttemptResult::Delivered,
                    Err(failure) => failure.into_result(self.slow_retry),
                },
                status: None,
                latency: started.elapsed(),
                response: None,
            };
            let channel = match self.channel().await {
                Ok(channel) => channel,
                Err(failure) => {
                    return batch
                        .events
                        .iter()
                        .map(|_| attempted(Err(failure.clone())))
                        .collect();
                }
            };
            // Every message goes out first; then the confirms are awaited.
            let mut pending = Vec::with_capacity(batch.events.len());
            for (index, event) in batch.events.iter().enumerate() {
                let trace = batch.trace(index);
                let payload = Payload::new(batch.format, event, trace);
                let properties = self.properties(event, &payload, trace);
                let publish = channel.basic_publish(
                    self.exchange.as_str().into(),
                    self.routing_key.render(event).into(),
                    BasicPublishOptions::default(),
                    &payload.body,
                    properties,
                );
                pending.push(tokio::time::timeout_at(deadline, publish).await);
            }
            metrics::counter!("reelay_sink_calls_total", "sink" => KIND).increment(1);
            let mut outcomes = Vec::with_capacity(pending.len());
            for sent in pending {
                let outcome = match sent {
                    Err(_) => Err(Failure::transient("timed out publishing")),
                    Ok(Err(error)) => Err(Failure::of("publish failed", error.kind())),
                    Ok(Ok(confirm)) => match tokio::time::timeout_at(deadline, confirm).await {
                        Err(_) => Err(Failure::transient("the broker did not confirm in time")),
                        Ok(Err(error)) => Err(Failure::of("publish failed", error.kind())),
                        Ok(Ok(confirmation)) if confirmation.is_ack() => Ok(()),
                        Ok(Ok(_)) => Err(Failure::transient(
                            "the broker did not take the message (nack)",
                        )),
                    },
                };
                outcomes.push(outcome);
            }
            // A missing exchange closes the channel: the messages after the one that
            // found out fail on the closed channel, for the same reason.
            if let Some(cause) = outcomes
                .iter()
                .find_map(|outcome| outcome.as_ref().err())
                .filter(|failure| failure.kind == AmqpFailureKind::Misconfigured)
                .cloned()
            {
                for outcome in &mut outcomes {
                    if outcome
                        .as_ref()
                        .is_err_and(|failure| failure.kind == AmqpFailureKind::Transient)
                    {
                        *outcome = Err(cause.clone());
                    }
                }
            }
            outcomes.into_iter().map(attempted).collect()
        })
    }
}

/// What an AMQP failure means for the delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AmqpFailureKind {
    /// The broker is down or unreachable, the connection or channel closed, the broker
    /// is busy: retried on the schedule.
    Transient,
    /// The exchange or virtual host does not exist, or these credentials may not use
    /// it: retried on the slow pace (`--slow-retry`) until someone fixes it.
    Misconfigured,
}

/// Classifies an AMQP failure.
pub fn classify(error: &ErrorKind) -> AmqpFailureKind {
    match error {
        ErrorKind::ProtocolError(error) => match error.kind() {
            AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND | AMQPSoftError::ACCESSREFUSED)
            | AMQPErrorKind::Hard(AMQPHardError::INVALIDPATH | AMQPHardError::NOTALLOWED) => {
                AmqpFailureKind::Misconfigured
            }
            _ => AmqpFailureKind::Transient,
        },
        ErrorKind::AuthProviderError(_) => AmqpFailureKind::Misconfigured,
        _ => AmqpFailureKind::Transient,
    }
}

/// One failed publish or connection: what the tenant reads, and what it means.
#[derive(Debug, Clone)]
struct Failure {
    message: String,
    kind: AmqpFailureKind,
}

impl Failure {
    fn transient(message: impl Into<String>) -> Failure {
        Failure {
            message: message.into(),
            kind: AmqpFailureKind::Transient,
        }
    }

    /// `what` failed with `error`: the broker's own code and text when it answered, else
    /// what kind of failure it was (the addresses tried go to the server's log only).
    fn of(what: &str, error: &ErrorKind) -> Failure {
        let detail = match error {
            ErrorKind::ProtocolError(error) => error.to_string(),
            ErrorKind::IOError(io) => {
                tracing::warn!(error = %io, "AMQP connection failed");
                match io.kind() {
                    std::io::ErrorKind::ConnectionRefused => "connection refused".to_owned(),
                    std::io::ErrorKind::TimedOut => "timed out".to_owned(),
                    _ => "the connection failed or closed".to_owned(),
                }
            }
            ErrorKind::InvalidChannelState(..) | ErrorKind::InvalidConnectionState(_) => {
                "the channel or connection closed".to_owned()
            }
            ErrorKind::MissingHeartbeatError => "the broker stopped answering".to_owned(),
            other => {
                tracing::warn!(error = ?other, "AMQP call failed");
                "the AMQP call failed (the server's log says why)".to_owned()
            }
        };
        Failure {
            message: format!("{what}: {detail}"),
            kind: classify(error),
        }
    }

    fn into_result(self, slow_retry: Duration) -> AttemptResult {
        match self.kind {
            AmqpFailureKind::Transient => AttemptResult::Failed {
                error: self.message,
                retry_after: None,
            },
            AmqpFailureKind::Misconfigured => AttemptResult::Failed {
                error: format!(
                    "{} (the exchange is missing or refuses these credentials: retried at most every {slow_retry:?} until fixed)",
                    self.message
                ),
                retry_after: Some(slow_retry),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::protocol::AMQPError;

    fn protocol(kind: AMQPErrorKind) -> ErrorKind {
        ErrorKind::ProtocolError(AMQPError::new(kind, "text".into()))
    }

    #[test]
    fn a_missing_or_refused_exchange_is_slow_and_a_broker_that_is_down_is_fast() {
        use AmqpFailureKind::{Misconfigured, Transient};
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let cases = [
            (ErrorKind::IOError(Arc::new(refused)), Transient),
            (
                protocol(AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND)),
                Misconfigured,
            ),
            (
                protocol(AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED)),
                Misconfigured,
            ),
            (
                protocol(AMQPErrorKind::Hard(AMQPHardError::INVALIDPATH)),
                Misconfigured,
            ),
            (
                protocol(AMQPErrorKind::Hard(AMQPHardError::CONNECTIONFORCED)),
                Transient,
            ),
            (
                protocol(AMQPErrorKind::Soft(AMQPSoftError::RESOURCELOCKED)),
                Transient,
            ),
            (ErrorKind::MissingHeartbeatError, Transient),
        ];
        for (error, expected) in cases {
            assert_eq!(classify(&error), expected, "{error:?}");
        }
        let slow = Failure::of(
            "exchange",
            &protocol(AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND)),
        )
        .into_result(Duration::from_secs(60));
        assert!(
            matches!(&slow, AttemptResult::Failed { retry_after: Some(wait), .. } if *wait == Duration::from_secs(60)),
            "{slow:?}"
        );
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let fast = Failure::of("connect", &ErrorKind::IOError(Arc::new(refused)))
            .into_result(Duration::from_secs(60));
        assert_eq!(
            fast,
            AttemptResult::Failed {
                error: "connect: connection refused".into(),
                retry_after: None
            }
        );
    }

    #[test]
    fn exchange_names_and_routing_keys_are_checked() {
        let destination = |exchange: &str, key: Option<&str>| AmqpDestination {
            exchange: exchange.into(),
            routing_key: key.map(str::to_owned),
            url: None,
        };
        assert!(destination("events", None).validate().is_ok());
        assert!(destination("", Some("a-queue")).validate().is_ok());
        assert!(
            destination("amq.topic", Some("{account}.{eventName}"))
                .validate()
                .is_ok()
        );
        let bad = destination("has space", None).validate().unwrap_err();
        assert_eq!(bad.field, Some("exchange"));
        let bad = destination("events", Some("a.{tenant}"))
            .validate()
            .unwrap_err();
        assert_eq!(bad.field, Some("routingKey"));
        assert!(bad.message.contains("{tenant}"), "{}", bad.message);
        let long = "k".repeat(256);
        let bad = destination("events", Some(&long)).validate().unwrap_err();
        assert_eq!(bad.field, Some("routingKey"));
    }
}
