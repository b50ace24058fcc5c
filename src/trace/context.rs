//! W3C Trace Context headers in and out: the publisher's `traceparent`/`tracestate`
//! read into a span context, and a span context written back as the [`TraceContext`]
//! an event carries and its deliveries send.

use hyper::HeaderMap;
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{SpanContext, TraceContextExt};
use opentelemetry_sdk::propagation::TraceContextPropagator;

use crate::model::TraceContext;

pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";

/// The two headers, as the propagator asks for them.
struct Headers<'a> {
    traceparent: &'a str,
    tracestate: Option<&'a str>,
}

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            TRACEPARENT => Some(self.traceparent),
            TRACESTATE => self.tracestate,
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        vec![TRACEPARENT, TRACESTATE]
    }
}

/// The span context a `traceparent` (and `tracestate`) names; `None` when it is not
/// valid W3C Trace Context (which the recommendation says to ignore, not to pass on).
pub fn parse(traceparent: &str, tracestate: Option<&str>) -> Option<SpanContext> {
    // The propagator reads a short id as a number; W3C's fields have fixed widths.
    let fields: Vec<&str> = traceparent.split('-').collect();
    if fields.len() < 4 || fields[1].len() != 32 || fields[2].len() != 16 || fields[3].len() != 2 {
        return None;
    }
    let context = TraceContextPropagator::new().extract(&Headers {
        traceparent,
        tracestate,
    });
    let span = context.span().span_context().clone();
    span.is_valid().then_some(span)
}

/// The publisher's trace context from a request's headers, validated.
pub fn from_headers(headers: &HeaderMap) -> Option<SpanContext> {
    let traceparent = headers.get(TRACEPARENT)?.to_str().ok()?;
    let tracestate = headers.get(TRACESTATE).and_then(|v| v.to_str().ok());
    parse(traceparent.trim(), tracestate)
}

/// The span context of a stored trace context.
pub fn of_stored(trace: &TraceContext) -> Option<SpanContext> {
    parse(&trace.traceparent, trace.tracestate.as_deref())
}

/// A span context as the headers that continue it.
pub fn to_trace_context(span: &SpanContext) -> TraceContext {
    let state = span.trace_state().header();
    TraceContext {
        traceparent: format!(
            "00-{}-{}-{:02x}",
            span.trace_id(),
            span.span_id(),
            span.trace_flags().to_u8()
        ),
        tracestate: (!state.is_empty()).then_some(state),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_traceparent_round_trips_with_its_state() {
        let span = parse(PARENT, Some("congo=t61rcWkgMzE,rojo=00f067aa0ba902b7")).unwrap();
        assert!(span.is_sampled());
        let trace = to_trace_context(&span);
        assert_eq!(trace.traceparent, PARENT);
        assert_eq!(
            trace.tracestate.as_deref(),
            Some("congo=t61rcWkgMzE,rojo=00f067aa0ba902b7")
        );
        assert_eq!(trace.trace_id(), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
    }

    #[test]
    fn an_invalid_traceparent_is_ignored() {
        for bad in [
            "",
            "garbage",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e47-00f067aa0ba902b7-01",
        ] {
            assert!(parse(bad, None).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn an_unsampled_parent_stays_unsampled() {
        let span = parse(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
            None,
        )
        .unwrap();
        assert!(!span.is_sampled());
        assert!(to_trace_context(&span).traceparent.ends_with("-00"));
        assert_eq!(to_trace_context(&span).tracestate, None);
    }
}
