//! Distributed tracing over OTLP/HTTP: one trace per published event, from its publish
//! request through the group commit it joined to every delivery attempt.
//!
//! Off unless an OTLP endpoint is configured (`--otlp-endpoint`, or the standard
//! `OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`). When off, no
//! span is built anywhere: every site asks [`tracer`] first, one atomic load, and an
//! event only carries the `traceparent` its publisher sent, passed on as it came
//! ([`context`]). When on, [`spans`] makes the publish, commit and delivery spans, and
//! a batch processor exports them on a thread of its own ([`export`]).
//!
//! The tracer is process-wide, like the `metrics` recorder: the spans are made deep in
//! the log writer and the dispatch workers, and handing a handle to each of them would
//! buy nothing (one process has one exporter).
//!
//! Sampling is parent-based: a publisher's `traceparent` that says "sampled" is traced
//! whatever the ratio, one that says "not sampled" is not, and a publish without one is
//! sampled at `--trace-sample-ratio` (by its trace id, so all spans of one trace agree).

pub mod context;
mod export;
pub mod metrics;
pub mod spans;

use std::sync::OnceLock;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider};

/// The standard variables that turn tracing on without `--otlp-endpoint`.
pub const OTEL_ENDPOINT_VARS: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
];

/// How traces are exported, from the server configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceSettings {
    /// The OTLP/HTTP base URL (`/v1/traces` is added, as for
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`); `None`: the standard variables decide.
    pub endpoint: Option<String>,
    /// The share of new traces (publishes without a `traceparent`) that are recorded,
    /// from 0 to 1.
    pub sample_ratio: f64,
}

impl TraceSettings {
    /// Whether tracing is on: an endpoint is given, by flag or standard variable.
    pub fn enabled(&self) -> bool {
        self.endpoint.is_some()
            || OTEL_ENDPOINT_VARS
                .iter()
                .any(|var| std::env::var(var).is_ok_and(|value| !value.is_empty()))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("the OTLP exporter cannot be made: {0}")]
    Exporter(String),
    #[error("tracing was started twice")]
    AlreadyStarted,
}

static TRACER: OnceLock<SdkTracer> = OnceLock::new();

/// The tracer, when tracing is on. The one check every span site makes first.
#[inline]
pub fn tracer() -> Option<&'static SdkTracer> {
    TRACER.get()
}

/// Tracing while it runs; [`Tracing::shutdown`] exports what is left.
pub struct Tracing {
    provider: SdkTracerProvider,
}

impl Tracing {
    /// Exports the spans still queued and stops the exporter (blocking: call off the
    /// async threads, or at the end).
    pub fn shutdown(self) {
        if let Err(error) = self.provider.shutdown() {
            tracing::warn!(%error, "exporting the last spans failed");
        }
    }
}

/// Starts tracing when `settings` turn it on (`None` otherwise). Call once, inside the
/// Tokio runtime: the exporter's requests run on it.
pub fn start(settings: &TraceSettings) -> Result<Option<Tracing>, TraceError> {
    if !settings.enabled() {
        return Ok(None);
    }
    let client = export::Client::new(tokio::runtime::Handle::current())
        .map_err(|error| TraceError::Exporter(error.to_string()))?;
    let mut exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(client)
        .with_protocol(Protocol::HttpBinary);
    if let Some(endpoint) = &settings.endpoint {
        exporter = exporter.with_endpoint(traces_url(endpoint));
    }
    let exporter = exporter
        .build()
        .map_err(|error| TraceError::Exporter(error.to_string()))?;
    let service = service_name();
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            settings.sample_ratio,
        ))))
        .with_resource(Resource::builder().with_service_name(service).build())
        .build();
    TRACER
        .set(provider.tracer("reelay"))
        .map_err(|_| TraceError::AlreadyStarted)?;
    Ok(Some(Tracing { provider }))
}

/// The service name spans and metrics carry: `OTEL_SERVICE_NAME`, or `reelay`.
fn service_name() -> String {
    std::env::var("OTEL_SERVICE_NAME")
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "reelay".to_owned())
}

/// The traces URL under an OTLP base URL, as the standard variable's rule has it.
pub fn traces_url(base: &str) -> String {
    format!("{}/v1/traces", base.trim_end_matches('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_traces_path_goes_under_the_base_url() {
        assert_eq!(
            traces_url("http://collector:4318"),
            "http://collector:4318/v1/traces"
        );
        assert_eq!(
            traces_url("http://collector:4318/otel/"),
            "http://collector:4318/otel/v1/traces"
        );
    }
}
