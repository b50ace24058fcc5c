//! Subscriptions: an account's standing order to receive some events at a destination.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{Millis, StoredEvent};

/// Where deliveries go. One variant per sink; SNS and Kinesis join here.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Destination {
    /// An HTTP endpoint that receives each event as a signed POST.
    Webhook { url: String },
}

/// Which events a subscription wants: whole topics and/or single event names. An event
/// matches when its name is in `events` or its topic is in `topics`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct EventFilter {
    pub events: Vec<String>,
    pub topics: Vec<String>,
}

impl EventFilter {
    pub fn matches(&self, name: &str, topic: &str) -> bool {
        self.events.iter().any(|e| e == name) || self.topics.iter().any(|t| t == topic)
    }
}

/// How an event is written on the wire to the subscriber.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    /// The event document exactly as it was published.
    #[default]
    Native,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Native => "native",
        }
    }

    pub fn parse(text: &str) -> Option<Format> {
        match text {
            "native" => Some(Format::Native),
            _ => None,
        }
    }
}

/// Why a subscription stopped receiving deliveries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case", tag = "code", content = "message")]
pub enum DisabledReason {
    /// The endpoint answered `410 Gone`: it asked not to be called again.
    EndpointGone(String),
    /// Every attempt failed for longer than the configured window.
    FailingTooLong(String),
    /// An operator disabled it through the API.
    Manual(String),
}

impl DisabledReason {
    pub fn code(&self) -> &'static str {
        match self {
            DisabledReason::EndpointGone(_) => "endpoint_gone",
            DisabledReason::FailingTooLong(_) => "failing_too_long",
            DisabledReason::Manual(_) => "manual",
        }
    }

    pub fn message(&self) -> &str {
        match self {
            DisabledReason::EndpointGone(m)
            | DisabledReason::FailingTooLong(m)
            | DisabledReason::Manual(m) => m,
        }
    }

    pub fn from_parts(code: &str, message: String) -> DisabledReason {
        match code {
            "endpoint_gone" => DisabledReason::EndpointGone(message),
            "failing_too_long" => DisabledReason::FailingTooLong(message),
            _ => DisabledReason::Manual(message),
        }
    }
}

/// What a subscription is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubscriptionKind {
    /// A standing order, made through the subscription API.
    Standing,
    /// A callback URL of one Dynamic Ingest job (seed 003): it receives that job's
    /// notifications (events whose entity key is the job) one at a time, in publish
    /// order, until it expires.
    JobCallback { job: String, expires_at: Millis },
}

/// A subscription as the API creates it.
#[derive(Debug, Clone, PartialEq)]
pub struct NewSubscription {
    pub id: String,
    pub account: String,
    pub kind: SubscriptionKind,
    pub destination: Destination,
    pub filter: EventFilter,
    pub format: Format,
    /// Standard Webhooks signing secret, `whsec_<base64>`.
    pub secret: String,
}

/// A stored subscription with its delivery state.
#[derive(Debug, Clone, PartialEq)]
pub struct Subscription {
    pub id: String,
    pub account: String,
    pub kind: SubscriptionKind,
    pub destination: Destination,
    pub filter: EventFilter,
    pub format: Format,
    pub secret: String,
    pub created_at: Millis,
    /// Every event with `seq <= cursor` has been delivered or handed to the retry set.
    pub cursor: i64,
    pub disabled: Option<DisabledReason>,
    pub disabled_at: Option<Millis>,
    /// Start of the current run of failures (cleared by a success).
    pub failing_since: Option<Millis>,
    pub last_success_at: Option<Millis>,
    /// Deliveries that succeeded at the first attempt.
    pub delivered: u64,
}

impl Subscription {
    /// Whether this subscription receives `event`.
    pub fn wants(&self, event: &StoredEvent) -> bool {
        self.filter.matches(&event.name, &event.topic)
            && match &self.kind {
                SubscriptionKind::Standing => true,
                SubscriptionKind::JobCallback { job, .. } => {
                    event.entity_key.as_deref() == Some(job.as_str())
                }
            }
    }

    /// Whether deliveries go one at a time, each only once the one before it is
    /// delivered or dead: a job's callbacks see its notifications in publish order.
    pub fn in_order(&self) -> bool {
        matches!(self.kind, SubscriptionKind::JobCallback { .. })
    }

    /// When it stops and is removed, if it does.
    pub fn expires_at(&self) -> Option<Millis> {
        match self.kind {
            SubscriptionKind::Standing => None,
            SubscriptionKind::JobCallback { expires_at, .. } => Some(expires_at),
        }
    }
}
