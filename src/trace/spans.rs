//! The spans of an event's path: its publish request, the group commit it joined, and
//! each delivery attempt, all in the trace the publisher's `traceparent` started (or a
//! new one). Each is made only when [`super::tracer`] says tracing is on, and given its
//! attributes only when it is recorded (sampled): an unsampled span costs its ids.

use std::sync::Arc;
use std::time::SystemTime;

use opentelemetry::trace::{
    Span as _, SpanContext, SpanKind, Status, TraceContextExt, Tracer as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::Span;

use super::context;
use crate::model::TraceContext;

/// A publish request's span, or (tracing off) the publisher's trace context alone.
pub struct Publish {
    span: Option<Span>,
    /// What the request's events carry to their deliveries.
    trace: Option<Arc<TraceContext>>,
}

/// How a publish ended, for its span.
pub enum Published {
    Stored { events: usize, stored: usize },
    Failed(String),
}

impl Publish {
    /// Starts the span of a publish to `account` on `route`, continuing the request's
    /// `traceparent`. With tracing off, only reads that header (when there is one), so
    /// the events pass it on unchanged.
    pub fn start(headers: &hyper::HeaderMap, account: &str, route: &'static str) -> Publish {
        let publisher = || context::from_headers(headers);
        let Some(tracer) = super::tracer() else {
            return Publish {
                span: None,
                trace: headers
                    .contains_key(context::TRACEPARENT)
                    .then(publisher)
                    .flatten()
                    .map(|span| Arc::new(context::to_trace_context(&span))),
            };
        };
        let parent = match publisher() {
            Some(span) => Context::new().with_remote_span_context(span),
            None => Context::new(),
        };
        let mut span = tracer
            .span_builder("reelay.publish")
            .with_kind(SpanKind::Server)
            .start_with_context(tracer, &parent);
        if span.is_recording() {
            span.set_attribute(KeyValue::new("reelay.account", account.to_owned()));
            span.set_attribute(KeyValue::new("http.route", route));
            span.set_attribute(KeyValue::new("http.request.method", "POST"));
        }
        let trace = Some(Arc::new(context::to_trace_context(span.span_context())));
        Publish {
            span: Some(span),
            trace,
        }
    }

    /// The trace context the request's events carry.
    pub fn trace(&self) -> Option<&Arc<TraceContext>> {
        self.trace.as_ref()
    }

    /// The span the group commit's span goes under: this one, when it is recorded.
    pub fn commit_parent(&self) -> Option<SpanContext> {
        self.span
            .as_ref()
            .map(|span| span.span_context())
            .filter(|span| span.is_sampled())
            .cloned()
    }

    /// Ends the span with what became of the request.
    pub fn end(self, published: Published) {
        let Some(mut span) = self.span else {
            return;
        };
        if span.is_recording() {
            match published {
                Published::Stored { events, stored } => {
                    span.set_attribute(KeyValue::new("reelay.publish.events", events as i64));
                    span.set_attribute(KeyValue::new("reelay.publish.stored", stored as i64));
                    span.set_attribute(KeyValue::new(
                        "reelay.publish.duplicates",
                        events.saturating_sub(stored) as i64,
                    ));
                }
                Published::Failed(error) => span.set_status(Status::error(error)),
            }
        }
        span.end();
    }
}

/// The span of one group commit under one publish that joined it (a commit serves many
/// publishes, each in its own trace: each sampled one gets a span of the commit).
pub fn commit(
    parent: &SpanContext,
    started: SystemTime,
    events: usize,
    requests: usize,
    failed: Option<&str>,
) {
    let Some(tracer) = super::tracer() else {
        return;
    };
    let parent = Context::new().with_remote_span_context(parent.clone());
    let mut span = tracer
        .span_builder("reelay.commit")
        .with_kind(SpanKind::Internal)
        .with_start_time(started)
        .with_attributes([
            KeyValue::new("reelay.commit.events", events as i64),
            KeyValue::new("reelay.commit.requests", requests as i64),
        ])
        .start_with_context(tracer, &parent);
    if let Some(error) = failed {
        span.set_status(Status::error(error.to_owned()));
    }
    span.end();
}

/// One delivery attempt of one event to one subscription.
pub struct Delivery {
    span: Span,
}

/// Which delivery an attempt is, for its span's attributes.
pub struct Attempt<'a> {
    pub destination: &'static str,
    pub subscription: &'a str,
    pub account: &'a str,
    pub event_id: &'a str,
    pub event_name: &'a str,
    pub sequence: i64,
    pub attempt: u32,
}

impl Delivery {
    /// Starts an attempt's span under the event's stored trace context (a root span when
    /// it has none); `None` with tracing off.
    pub fn start(stored: Option<&TraceContext>, attempt: Attempt<'_>) -> Option<Delivery> {
        let tracer = super::tracer()?;
        let parent = match stored.and_then(context::of_stored) {
            Some(span) => Context::new().with_remote_span_context(span),
            None => Context::new(),
        };
        let mut span = tracer
            .span_builder("reelay.deliver")
            .with_kind(SpanKind::Producer)
            .start_with_context(tracer, &parent);
        if span.is_recording() {
            span.set_attributes([
                KeyValue::new("reelay.destination.type", attempt.destination),
                KeyValue::new("reelay.subscription.id", attempt.subscription.to_owned()),
                KeyValue::new("reelay.account", attempt.account.to_owned()),
                KeyValue::new("reelay.event.id", attempt.event_id.to_owned()),
                KeyValue::new("reelay.event.name", attempt.event_name.to_owned()),
                KeyValue::new("reelay.event.sequence", attempt.sequence),
                KeyValue::new("reelay.attempt", i64::from(attempt.attempt)),
            ]);
        }
        Some(Delivery { span })
    }

    /// The trace context the attempt sends to the receiver: this span as the parent.
    pub fn trace(&self) -> TraceContext {
        context::to_trace_context(self.span.span_context())
    }

    /// Ends the span with the attempt's outcome and the destination's status code.
    pub fn end(mut self, outcome: &'static str, status: Option<u16>, error: Option<&str>) {
        if self.span.is_recording() {
            self.span
                .set_attribute(KeyValue::new("reelay.outcome", outcome));
            if let Some(status) = status {
                self.span.set_attribute(KeyValue::new(
                    "http.response.status_code",
                    i64::from(status),
                ));
            }
            if let Some(error) = error {
                self.span.set_status(Status::error(error.to_owned()));
            }
        }
        self.span.end();
    }
}
