//! The W3C Trace Context an event carries from its publish to its deliveries.

/// An event's place in a distributed trace: the `traceparent` (and `tracestate`) its
/// deliveries continue. Stored with the event, so retries and deliveries after a restart
/// join the same trace. When tracing is on it names the publish span; when it is off, it
/// is the publisher's own header, passed on as it came (never invented).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    /// `00-<trace id>-<parent id>-<flags>`, as W3C Trace Context writes it.
    pub traceparent: String,
    /// The vendors' entries that go with it, as the publisher sent them.
    pub tracestate: Option<String>,
}

impl TraceContext {
    /// The trace id: the 32 hex digits after the version.
    pub fn trace_id(&self) -> Option<&str> {
        self.traceparent.get(3..35)
    }
}
