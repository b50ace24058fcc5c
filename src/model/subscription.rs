//! Subscriptions: an account's standing order to receive some events at a destination.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{Millis, Ordering, PayloadFilter, RateLimit, StoredEvent, Transform};

/// Where deliveries go: the closed set of destinations is the sinks' own
/// ([`crate::sinks::destination`]).
pub use crate::sinks::Destination;
pub use crate::sinks::aws::AwsOptions;

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
    /// A CloudEvent 1.0 in the structured JSON mode
    /// (`Content-Type: application/cloudevents+json`).
    Cloudevents,
    /// A CloudEvent 1.0 in the binary HTTP mode: the attributes as `ce-*` headers, the
    /// data as the body with its own content type.
    CloudeventsBinary,
}

impl Format {
    /// Every format, in the order the API lists them.
    pub const ALL: [Format; 3] = [
        Format::Native,
        Format::Cloudevents,
        Format::CloudeventsBinary,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Format::Native => "native",
            Format::Cloudevents => "cloudevents",
            Format::CloudeventsBinary => "cloudevents-binary",
        }
    }

    pub fn parse(text: &str) -> Option<Format> {
        Format::ALL
            .into_iter()
            .find(|format| format.as_str() == text)
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
    /// Conditions on the event document (`"filter"`), beside the names and topics.
    pub payload_filter: Option<PayloadFilter>,
    /// A jq program applied to the event document before it is written (`"transform"`).
    pub transform: Option<Transform>,
    /// Deliveries a second at most (`"rateLimit"`), for every delivery path.
    pub rate_limit: Option<RateLimit>,
    /// Per-entity order of deliveries (`"ordering"`, webhooks only).
    pub ordering: Ordering,
    pub format: Format,
    /// Standard Webhooks signing secret, `whsec_<base64>` (HMAC), or for ed25519
    /// signatures the secret key `whsk_<base64>`.
    pub secret: String,
    /// For ed25519 signatures: the public key receivers verify with, `whpk_<base64>`.
    pub public_key: Option<String>,
}

/// A rotated-out signing secret that still signs until its overlap ends.
#[derive(Debug, Clone, PartialEq)]
pub struct PreviousSecret {
    pub secret: String,
    pub until: Millis,
}

/// A stored subscription with its delivery state.
#[derive(Debug, Clone, PartialEq)]
pub struct Subscription {
    pub id: String,
    pub account: String,
    pub kind: SubscriptionKind,
    pub destination: Destination,
    pub filter: EventFilter,
    pub payload_filter: Option<PayloadFilter>,
    pub transform: Option<Transform>,
    pub rate_limit: Option<RateLimit>,
    pub ordering: Ordering,
    pub format: Format,
    pub secret: String,
    /// For ed25519 signatures: the public key (`whpk_…`) of `secret`.
    pub public_key: Option<String>,
    /// During a secret rotation's overlap: the previous secret, which signs deliveries
    /// too until `until`.
    pub previous_secret: Option<PreviousSecret>,
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
    /// Whether this subscription receives `event`. The payload filter goes last: it is
    /// the only test that needs the document parsed (once per event, however many
    /// subscriptions ask).
    pub fn wants(&self, event: &StoredEvent) -> bool {
        self.filter.matches(&event.name, &event.topic)
            && match &self.kind {
                SubscriptionKind::Standing => true,
                SubscriptionKind::JobCallback { job, .. } => {
                    event.entity_key.as_deref() == Some(job.as_str())
                }
            }
            && self.payload_filter.as_ref().is_none_or(|filter| {
                event
                    .body
                    .value()
                    .is_some_and(|document| filter.matches(document))
            })
    }

    /// Whether deliveries go one at a time, each only once the one before it is
    /// delivered or dead: a job's callbacks see its notifications in publish order.
    pub fn in_order(&self) -> bool {
        matches!(self.kind, SubscriptionKind::JobCallback { .. })
    }

    /// Whether its worker must hear when a retry is over (delivered or dead): an
    /// in-order subscription, or one ordered per entity, holds later events back until
    /// then.
    pub fn waits_for_retries(&self) -> bool {
        self.in_order() || self.ordering.by_entity()
    }

    /// When it stops and is removed, if it does.
    pub fn expires_at(&self) -> Option<Millis> {
        match self.kind {
            SubscriptionKind::Standing => None,
            SubscriptionKind::JobCallback { expires_at, .. } => Some(expires_at),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn standing(payload_filter: Option<serde_json::Value>) -> Subscription {
        Subscription {
            id: "sub_1".into(),
            account: "a".into(),
            kind: SubscriptionKind::Standing,
            destination: Destination::from_endpoint("http://127.0.0.1/".into()),
            filter: EventFilter {
                events: vec!["asset-updated".into()],
                topics: Vec::new(),
            },
            payload_filter: payload_filter.map(|f| PayloadFilter::compile(&f).unwrap()),
            transform: None,
            rate_limit: None,
            ordering: Ordering::None,
            format: Format::Native,
            secret: String::new(),
            public_key: None,
            previous_secret: None,
            created_at: 0,
            cursor: 0,
            disabled: None,
            disabled_at: None,
            failing_since: None,
            last_success_at: None,
            delivered: 0,
        }
    }

    fn event(name: &str, body: &str) -> StoredEvent {
        StoredEvent {
            seq: 1,
            account: "a".into(),
            id: "e".into(),
            name: name.into(),
            topic: "asset-operations".into(),
            entity_key: None,
            occurred_at: 0,
            received_at: 0,
            body: body.into(),
            trace: None,
        }
    }

    #[test]
    fn the_payload_filter_narrows_the_names_and_topics() {
        let web = standing(Some(serde_json::json!({"platforms": {"$contains": "web"}})));
        assert!(web.wants(&event("asset-updated", r#"{"platforms": ["web"]}"#)));
        assert!(!web.wants(&event("asset-updated", r#"{"platforms": ["tv"]}"#)));
        assert!(!web.wants(&event("asset-created", r#"{"platforms": ["web"]}"#)));
        let all = standing(None);
        assert!(all.wants(&event("asset-updated", r#"{"platforms": ["tv"]}"#)));
    }

    #[test]
    fn subscriptions_share_one_parse_of_the_document() {
        let event = event("asset-updated", r#"{"platforms": ["web"]}"#);
        let filters = [
            standing(Some(serde_json::json!({"platforms": {"$contains": "web"}}))),
            standing(Some(serde_json::json!({"platforms.0": "web"}))),
        ];
        assert!(filters.iter().all(|s| s.wants(&event)));
        let first = event.body.value().unwrap() as *const serde_json::Value;
        assert!(filters.iter().all(|s| s.wants(&event)));
        assert!(std::ptr::eq(first, event.body.value().unwrap()));
        // A subscription without a filter never parses it.
        let fresh = self::event("asset-updated", "{}");
        assert!(standing(None).wants(&fresh));
        assert!(fresh.body.parsed_yet().is_none());
    }

    #[test]
    fn formats_read_back_as_written_and_as_serde_names_them() {
        for format in Format::ALL {
            assert_eq!(Format::parse(format.as_str()), Some(format));
            assert_eq!(
                serde_json::to_value(format).unwrap(),
                serde_json::Value::String(format.as_str().to_owned())
            );
        }
        assert_eq!(Format::parse("CloudEvents"), None);
        assert_eq!(Format::parse("json"), None);
    }
}
