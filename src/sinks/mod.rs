//! Sinks carry one event to one destination and report what happened. They do not decide
//! about retries: that is [`crate::dispatch`]'s job, from the [`Attempted`] they return.
//!
//! What is sent is the event in its subscription's format ([`Payload`]): the stored
//! document, or a CloudEvent ([`cloudevents`]).

pub mod address;
pub mod aws;
pub mod aws_policy;
pub mod cloudevents;
pub mod guard;
pub mod handshake;
pub mod resync;
pub mod transform;
pub mod webhook;

use std::time::Duration;

use bytes::Bytes;
use hyper::header::{HeaderName, HeaderValue};

use crate::model::{Format, StoredEvent};

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
    pub fn new(format: Format, event: &StoredEvent) -> Payload {
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
                body: cloudevents::structured(event),
            },
            Format::CloudeventsBinary => {
                let binary = cloudevents::binary(event);
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
