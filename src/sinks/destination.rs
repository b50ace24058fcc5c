//! The closed set of destinations, and the one place that asks a destination's own sink
//! for what dispatch and the API need: its checks at creation, its prepared client, its
//! batch size and order, and its deliveries.
//!
//! A sink is one module that implements [`Sink`] for its destination type (the members a
//! subscription gives) and [`Prepared`] for the client it sends with. Adding one is one
//! line in [`destinations!`] below; nothing in `dispatch` or `http` names a sink.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Attempted, Sinks};
use crate::model::{Format, StoredEvent, TraceContext};

/// What a future of a sink returns through the trait objects below.
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// Why a destination cannot be created. `field` is the member at fault, relative to the
/// destination (`url`, `endpointUrl`; `None`: the destination as a whole).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The API error code: `invalid_destination`, `destination_refused` (a private
    /// address), `destination_not_allowed` (outside the operator's allowlists) or
    /// `destination_unreachable` (its healthcheck failed).
    pub code: &'static str,
    pub field: Option<&'static str>,
    pub message: String,
}

impl Refusal {
    pub fn invalid(field: Option<&'static str>, message: impl Into<String>) -> Refusal {
        Refusal {
            code: "invalid_destination",
            field,
            message: message.into(),
        }
    }
}

/// What the checks at creation may know: the server's sinks (their settings and
/// policies) and who asks.
pub struct Admission<'a> {
    pub sinks: &'a Sinks,
    /// The admin token may give what account keys may give only where allowlisted.
    pub by_admin: bool,
}

/// A destination type: implemented in its sink's own module.
pub trait Sink: Send + Sync {
    /// The rules on its own members, whoever gives them (a blank name, a bad template).
    fn validate(&self) -> Result<(), Refusal>;

    /// The operator's rules on what it connects to: the private-address rule
    /// ([`super::guard`]) and the allowlists for what account keys may give.
    fn admit<'a>(&'a self, admission: &'a Admission<'a>) -> BoxFuture<'a, Result<(), Refusal>>;

    /// Its client, ready to send for `account` (connections are made at the first use).
    fn prepare(&self, sinks: &Arc<Sinks>, account: &str) -> Result<Arc<dyn Prepared>, String>;

    /// Whether it can carry `format` (`cloudevents-binary` needs HTTP headers).
    fn takes(&self, format: Format) -> bool {
        format != Format::CloudeventsBinary
    }

    /// For a destination that is an HTTP endpoint: its URL (the Brightcove `endpoint`,
    /// job callbacks, the validation handshake).
    fn endpoint(&self) -> Option<&str> {
        None
    }
}

/// A destination's client, made once per subscription.
pub trait Prepared: Send + Sync {
    /// How many events one delivery call carries.
    fn batch_size(&self) -> usize;

    /// Whether its order needs one call in flight at a time (a Kinesis shard, a FIFO
    /// group: the order in which calls arrive is the order kept).
    fn ordered(&self) -> bool {
        false
    }

    /// Whether the destination exists and can be reached (at creation; the caller bounds
    /// its time).
    fn healthcheck(&self) -> BoxFuture<'_, Result<(), String>>;

    /// One delivery call: one result per event of `batch`, in order.
    fn send<'a>(&'a self, batch: Batch<'a>) -> BoxFuture<'a, Vec<Attempted>>;
}

/// The events of one delivery call, with what the sink needs to write them.
pub struct Batch<'a> {
    pub events: &'a [&'a Arc<StoredEvent>],
    pub format: Format,
    /// The subscription's signer (webhooks sign each delivery).
    pub signer: &'a super::webhook::Signer,
    /// With tracing on, the trace context each event's delivery sends (its attempt's
    /// span), in order; empty with tracing off, when each event sends its stored one.
    pub traces: &'a [Option<TraceContext>],
}

impl Batch<'_> {
    /// The trace context the delivery of `events[index]` sends to the destination: the
    /// attempt's span, or with tracing off the publisher's `traceparent` as it came.
    pub fn trace(&self, index: usize) -> Option<&TraceContext> {
        match self.traces.get(index) {
            Some(trace) => trace.as_ref(),
            None => self
                .events
                .get(index)
                .and_then(|event| event.trace.as_deref()),
        }
    }
}

/// The most a check at creation may take, its connection and the destination's own
/// healthcheck included (less if the delivery timeout is shorter).
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// Declares the destinations: the enum the API takes (internally tagged by `type`), and
/// the one match that hands each to its sink.
macro_rules! destinations {
    ($( $(#[$doc:meta])* $variant:ident($sink:ty) = $name:literal, )+) => {
        /// Where deliveries go: a `type` and that sink's own members.
        #[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(tag = "type")]
        pub enum Destination {
            $( $(#[$doc])* #[serde(rename = $name)] $variant($sink), )+
        }

        impl Destination {
            /// Every `type`, in the order the API documents them.
            pub const TYPES: &'static [&'static str] = &[$($name),+];

            /// Its sink.
            pub fn sink(&self) -> &dyn Sink {
                match self {
                    $( Destination::$variant(destination) => destination, )+
                }
            }

            /// Its `type`.
            pub fn kind(&self) -> &'static str {
                match self {
                    $( Destination::$variant(_) => $name, )+
                }
            }

            /// The API schema: one alternative per type, each that sink's own members
            /// and its `type`.
            fn alternatives() -> Vec<(&'static str, utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>)> {
                vec![$( ($name, <$sink as utoipa::PartialSchema>::schema()), )+]
            }
        }
    };
}

destinations! {
    /// An HTTP endpoint that receives each event as a signed POST.
    Webhook(super::webhook::WebhookDestination) = "webhook",
    /// An Amazon SNS topic (PublishBatch, 10 events a call).
    Sns(super::aws::SnsDestination) = "sns",
    /// An Amazon Kinesis data stream (PutRecords, up to 500 events a call); the partition
    /// key is the event's entity key, else its account.
    Kinesis(super::aws::KinesisDestination) = "kinesis",
    /// An Amazon SQS queue (SendMessageBatch, 10 events a call).
    Sqs(super::aws::SqsDestination) = "sqs",
    /// A NATS JetStream stream, through a subject it captures.
    Nats(super::nats::NatsDestination) = "nats",
    /// A RabbitMQ exchange (AMQP 0-9-1, publisher confirms, persistent messages).
    Amqp(super::amqp::AmqpDestination) = "amqp",
    /// An Amazon EventBridge event bus (PutEvents, 10 events a call).
    EventBridge(super::eventbridge::EventBridgeDestination) = "eventbridge",
}

impl Destination {
    /// A webhook destination, from the URL of the Brightcove `endpoint` shape or of a job
    /// callback.
    pub fn from_endpoint(url: String) -> Destination {
        Destination::Webhook(super::webhook::WebhookDestination { url })
    }

    /// The URL of a destination that is an HTTP endpoint.
    pub fn endpoint(&self) -> Option<&str> {
        self.sink().endpoint()
    }
}

impl utoipa::PartialSchema for Destination {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use serde_json::{Value, json};
        let alternatives: Vec<Value> = Destination::alternatives()
            .into_iter()
            .map(|(name, schema)| {
                let mut schema = merge_all_of(serde_json::to_value(schema).unwrap_or(Value::Null));
                if let Some(object) = schema.as_object_mut() {
                    let properties = object.entry("properties").or_insert_with(|| json!({}));
                    if let Some(properties) = properties.as_object_mut() {
                        properties.insert("type".into(), json!({"type": "string", "enum": [name]}));
                    }
                    let required = object.entry("required").or_insert_with(|| json!([]));
                    if let Some(required) = required.as_array_mut() {
                        required.insert(0, json!("type"));
                    }
                    object.insert("type".into(), json!("object"));
                }
                schema
            })
            .collect();
        let union = json!({"oneOf": alternatives});
        serde_json::from_value(union).unwrap_or_else(|_| {
            utoipa::openapi::RefOr::T(utoipa::openapi::schema::Schema::default())
        })
    }
}

impl utoipa::ToSchema for Destination {}

/// One object schema of an `allOf` of inline object schemas (what `#[serde(flatten)]`
/// with `#[schema(inline)]` gives), so that each alternative is one closed object.
fn merge_all_of(schema: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    let Value::Object(mut object) = schema else {
        return schema;
    };
    let Some(Value::Array(parts)) = object.remove("allOf") else {
        return Value::Object(object);
    };
    let mut properties = serde_json::Map::new();
    let mut required = Vec::new();
    for part in parts {
        let part = merge_all_of(part);
        if let Some(Value::Object(members)) = part.get("properties") {
            properties.extend(members.clone());
        }
        if let Some(Value::Array(names)) = part.get("required") {
            required.extend(names.iter().cloned());
        }
        if let Some(description) = part.get("description")
            && !object.contains_key("description")
        {
            object.insert("description".into(), description.clone());
        }
    }
    object.insert("properties".into(), Value::Object(properties));
    object.insert("required".into(), Value::Array(required));
    Value::Object(object)
}

/// How a destination is kept in the database: versioned, and apart from the API type, so
/// that the API may rename a member without making stored rows unreadable (a later
/// version reads the older ones and converts them).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "version")]
pub enum StoredDestination {
    #[serde(rename = "1")]
    V1 { destination: Destination },
}

impl StoredDestination {
    pub fn of(destination: &Destination) -> StoredDestination {
        StoredDestination::V1 {
            destination: destination.clone(),
        }
    }

    /// The stored text.
    pub fn to_json(destination: &Destination) -> String {
        serde_json::to_string(&StoredDestination::of(destination)).unwrap_or_default()
    }

    /// Reads a stored destination: this version, or the rows written before destinations
    /// had one (the API form itself).
    pub fn parse(text: &str) -> Result<Destination, serde_json::Error> {
        match serde_json::from_str::<StoredDestination>(text) {
            Ok(StoredDestination::V1 { destination }) => Ok(destination),
            Err(versioned) => serde_json::from_str::<Destination>(text).map_err(|_| versioned),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_destinations_read_back_and_so_do_the_unversioned_rows() {
        let destination = Destination::from_endpoint("https://example.com/hook".into());
        let stored = StoredDestination::to_json(&destination);
        assert!(stored.contains(r#""version":"1""#), "{stored}");
        assert_eq!(StoredDestination::parse(&stored).unwrap(), destination);
        let legacy = r#"{"type":"webhook","url":"https://example.com/hook"}"#;
        assert_eq!(StoredDestination::parse(legacy).unwrap(), destination);
        assert!(StoredDestination::parse(r#"{"type":"carrier-pigeon"}"#).is_err());
    }

    #[test]
    fn every_type_has_an_alternative_in_the_schema() {
        let schema =
            serde_json::to_value(<Destination as utoipa::PartialSchema>::schema()).unwrap();
        let alternatives = schema["oneOf"].as_array().unwrap();
        assert_eq!(alternatives.len(), Destination::TYPES.len());
        for (alternative, name) in alternatives.iter().zip(Destination::TYPES) {
            assert_eq!(alternative["properties"]["type"]["enum"][0], *name);
            assert_eq!(alternative["required"][0], "type");
            assert!(
                alternative["description"]
                    .as_str()
                    .is_some_and(|d| !d.is_empty())
            );
            assert!(alternative.get("allOf").is_none(), "{alternative}");
            assert!(
                alternative["properties"].as_object().unwrap().len() > 1,
                "{alternative}"
            );
        }
    }
}
