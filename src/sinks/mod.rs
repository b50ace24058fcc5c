//! Sinks carry one event to one destination and report what happened. They do not decide
//! about retries: that is [`crate::dispatch`]'s job, from the [`Attempted`] they return.
//!
//! What is sent is the event in its subscription's format ([`Payload`]): the stored
//! document, or a CloudEvent ([`cloudevents`]).
//!
//! The set of destinations is closed and declared in one place ([`destination`]): each
//! sink is a module of its own, and [`Sinks`] is what dispatch and the API ask about a
//! destination (check it, prepare its client, send).

pub mod address;
pub mod amqp;
pub mod aws;
pub mod aws_policy;
pub mod bus;
pub mod cloudevents;
pub mod destination;
pub mod eventbridge;
pub mod guard;
pub mod handshake;
pub mod nats;
pub mod resync;
pub mod transform;
pub mod webhook;

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use hyper::header::{HeaderName, HeaderValue};

pub use self::destination::{Admission, Batch, Destination, Prepared, Refusal, Sink};
use crate::model::{Format, StoredEvent, TraceContext};

/// Without `--slow-retry`: the least wait before retrying a misconfigured destination.
pub const DEFAULT_SLOW_RETRY: Duration = Duration::from_secs(10 * 60);

/// The sinks' settings, from the server configuration.
#[derive(Debug, Clone)]
pub struct SinkConfig {
    /// For one delivery call, and (capped at [`destination::CHECK_TIMEOUT`]) for the
    /// check at creation.
    pub delivery_timeout: Duration,
    /// The least wait before retrying a delivery to a destination that is missing or
    /// refuses this server's credentials (`--slow-retry`).
    pub slow_retry: Duration,
    /// Whether destinations may reach loopback, private and other special-purpose
    /// addresses (`--allow-private-destinations`).
    pub allow_private: bool,
    /// Webhook requests in flight at once, in all and to one host.
    pub max_outbound: usize,
    pub max_connections_per_host: usize,
    /// What account keys may give of an AWS destination's overrides.
    pub aws_policy: aws_policy::AwsPolicy,
    /// Connection URLs of the message-bus sinks, by destination `type`: the server's
    /// default and what account keys may give.
    pub buses: HashMap<&'static str, aws_policy::UrlPolicy>,
}

impl SinkConfig {
    /// The settings for a server with `delivery_timeout` and nothing else configured.
    pub fn new(delivery_timeout: Duration, allow_private: bool) -> SinkConfig {
        SinkConfig {
            delivery_timeout,
            slow_retry: DEFAULT_SLOW_RETRY,
            allow_private,
            max_outbound: webhook::DEFAULT_MAX_OUTBOUND,
            max_connections_per_host: webhook::DEFAULT_MAX_CONNECTIONS_PER_HOST,
            aws_policy: aws_policy::AwsPolicy::default(),
            buses: HashMap::new(),
        }
    }
}

/// Every sink's shared state (connection pools, SDK configurations), and the one entry
/// point for what is asked of a destination.
pub struct Sinks {
    config: SinkConfig,
    webhooks: webhook::WebhookSink,
    aws: Arc<aws::AwsSinks>,
    /// The shared state of the other sinks, by type, made at its first use.
    shared: Mutex<HashMap<TypeId, Arc<dyn Any + Send + Sync>>>,
}

impl Sinks {
    pub fn new(config: SinkConfig) -> Result<Sinks, webhook::ClientError> {
        let webhooks = webhook::WebhookSink::new(config.delivery_timeout, config.allow_private)?
            .with_limits(config.max_outbound, config.max_connections_per_host);
        Ok(Sinks {
            aws: Arc::new(
                aws::AwsSinks::new(config.allow_private).with_slow_retry(config.slow_retry),
            ),
            webhooks,
            config,
            shared: Mutex::new(HashMap::new()),
        })
    }

    pub fn config(&self) -> &SinkConfig {
        &self.config
    }

    /// The webhook client (one pool for every webhook destination).
    pub fn webhooks(&self) -> &webhook::WebhookSink {
        &self.webhooks
    }

    /// The AWS SDK configurations, shared by every AWS destination.
    pub fn aws(&self) -> &Arc<aws::AwsSinks> {
        &self.aws
    }

    /// A sink's own shared state, made at the first call.
    pub fn shared<T: Default + Send + Sync + 'static>(&self) -> Arc<T> {
        let mut shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        let entry = shared
            .entry(TypeId::of::<T>())
            .or_insert_with(|| Arc::new(T::default()));
        entry
            .clone()
            .downcast::<T>()
            .unwrap_or_else(|_| Arc::new(T::default()))
    }

    /// The checks of a new destination: its own rules, then the operator's (private
    /// addresses, allowlists), then, when `reach`, that it exists and answers: its client
    /// is made and its healthcheck run, all within the check timeout.
    pub async fn check(
        self: &Arc<Self>,
        destination: &Destination,
        account: &str,
        by_admin: bool,
        reach: bool,
    ) -> Result<(), Refusal> {
        let sink = destination.sink();
        sink.validate()?;
        let admission = Admission {
            sinks: self,
            by_admin,
        };
        sink.admit(&admission).await?;
        if !reach {
            return Ok(());
        }
        let timeout = self.config.delivery_timeout.min(destination::CHECK_TIMEOUT);
        let check = async {
            let prepared = sink.prepare(self, account)?;
            prepared.healthcheck().await
        };
        let checked = tokio::time::timeout(timeout, check)
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {timeout:?}")));
        checked.map_err(|error| Refusal {
            code: "destination_unreachable",
            field: None,
            message: format!(
                "the destination cannot be reached: {error} (set skipDestinationCheck to create it anyway)"
            ),
        })
    }

    /// The client of `destination` for `account`.
    pub fn prepare(
        self: &Arc<Self>,
        destination: &Destination,
        account: &str,
    ) -> Result<Arc<dyn Prepared>, String> {
        destination.sink().prepare(self, account)
    }

    /// The CloudEvents validation handshake with an HTTP endpoint.
    pub async fn handshake(
        &self,
        endpoint: &str,
        origin: &str,
        per_second: Option<u32>,
    ) -> Result<handshake::Granted, handshake::HandshakeError> {
        let Some(uri) = webhook::parse_url(endpoint) else {
            return Err(handshake::HandshakeError::Unanswered(format!(
                "{endpoint:?} is not a usable URL"
            )));
        };
        self.webhooks.handshake(&uri, origin, per_second).await
    }
}

/// What a delivery sends, in its subscription's format. Built once per attempt; the
/// signature covers exactly `body`.
#[derive(Debug, Clone)]
pub struct Payload {
    pub content_type: Option<HeaderValue>,
    /// The format's own headers (`ce-*` in CloudEvents binary mode), sent beside the
    /// signature headers.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Bytes,
}

impl Payload {
    /// The event in `format`; a CloudEvent carries `trace` in its distributed-tracing
    /// extension (the transports carry it too, each in its own way).
    pub fn new(format: Format, event: &StoredEvent, trace: Option<&TraceContext>) -> Payload {
        match format {
            // The hot path: the log's buffer itself, no header to build.
            Format::Native => Payload {
                content_type: Some(HeaderValue::from_static("application/json")),
                headers: Vec::new(),
                body: event.body.bytes().clone(),
            },
            Format::Cloudevents => Payload {
                content_type: Some(HeaderValue::from_static(cloudevents::STRUCTURED)),
                headers: Vec::new(),
                body: cloudevents::structured(event, trace),
            },
            Format::CloudeventsBinary => {
                let binary = cloudevents::binary(event, trace);
                Payload {
                    content_type: binary.content_type,
                    headers: binary.headers,
                    body: binary.body,
                }
            }
        }
    }
}

/// What one attempt produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Attempted {
    pub result: AttemptResult,
    /// The HTTP status the destination answered, if it answered.
    pub status: Option<u16>,
    pub latency: Duration,
    /// The start of the destination's answer, for the delivery log.
    pub response: Option<String>,
}

/// The outcome of an attempt, as a sink classifies it.
#[derive(Debug, Clone, PartialEq)]
pub enum AttemptResult {
    Delivered,
    /// Failed in a way worth retrying; `retry_after` is the destination's own request.
    Failed {
        error: String,
        retry_after: Option<Duration>,
    },
    /// The destination asked to be sent less (HTTP 429): retried like a failure, but it
    /// says nothing bad of the endpoint's health (it never counts toward disabling) and
    /// pauses the subscription's deliveries for `retry_after` (or a second).
    Throttled {
        error: String,
        retry_after: Option<Duration>,
    },
    /// The destination said it is gone for good (HTTP 410): stop sending to it.
    Gone,
    /// The delivery cannot be made, whatever the destination does (the subscription's
    /// transform failed on the event): nothing was sent, it is dead-lettered at once, and
    /// the destination's health does not change.
    Rejected {
        error: String,
    },
}
