//! Sinks carry one event to one destination and report what happened. They do not decide
//! about retries: that is [`crate::dispatch`]'s job, from the [`Attempted`] they return.

pub mod aws;
pub mod webhook;

use std::time::Duration;

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
    /// The destination said it is gone for good (HTTP 410): stop sending to it.
    Gone,
}
