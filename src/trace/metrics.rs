//! The same figures `/metrics` shows, exported over OTLP/HTTP metrics when OTLP is on.
//!
//! Reelay's code records through the `metrics` crate, whose one process-wide recorder
//! is Prometheus's. When an OTLP endpoint is configured, the server installs a fan-out
//! of that recorder and [`OtlpRecorder`], which turns every counter, gauge and histogram
//! (name and labels unchanged) into an OpenTelemetry instrument of the same kind; a
//! periodic reader exports them every `OTEL_METRIC_EXPORT_INTERVAL` ms (60 s by default)
//! to `<endpoint>/v1/metrics`. The cardinality bound is the same for both: the series
//! exist because the code recorded them, and [`crate::metrics_scope`] decides which.
//!
//! The bridge is written here because the crates that do it (`metrics-exporter-otel`,
//! `metrics-exporter-opentelemetry`) are built against an older `opentelemetry` than
//! the one the tracer uses.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use metrics::{
    Counter, CounterFn, Gauge, GaugeFn, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder,
    SharedString, Unit,
};
use metrics_util::registry::{Registry, Storage};
use opentelemetry::KeyValue;
use opentelemetry::metrics::{Meter, MeterProvider as _, ObservableGauge};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};

use super::{TraceError, TraceSettings, export, service_name};

/// The standard variables that turn metrics export on without `--otlp-endpoint` (the
/// general one turns on traces too; the traces-only one does not turn on metrics).
pub const OTEL_METRICS_ENDPOINT_VARS: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
];

/// Histogram bounds of the `*_seconds` histograms, the same on `/metrics` and over OTLP.
pub const SECONDS_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Histogram bounds of the histograms that count (events in one commit).
pub const COUNT_BUCKETS: [f64; 11] = [
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 5000.0,
];
/// The histograms that count rather than time.
pub const COUNT_HISTOGRAMS: [&str; 1] = ["reelay_commit_events"];

/// Whether metrics go over OTLP: an endpoint by flag, or a standard variable.
pub fn enabled(settings: &TraceSettings) -> bool {
    settings.endpoint.is_some()
        || OTEL_METRICS_ENDPOINT_VARS
            .iter()
            .any(|var| std::env::var(var).is_ok_and(|value| !value.is_empty()))
}

/// A figure that is not in the `metrics` recorder (the top subscriptions' series, which
/// come and go), read at each export: a gauge's name, labels and value.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    pub name: &'static str,
    pub labels: Vec<(&'static str, String)>,
    pub value: f64,
}

/// Metrics export while it runs; [`OtlpMetrics::shutdown`] exports the last figures.
pub struct OtlpMetrics {
    provider: SdkMeterProvider,
    meter: Meter,
    observed: Mutex<Vec<ObservableGauge<f64>>>,
}

impl OtlpMetrics {
    /// Exports the gauges `names` as `read` gives them at each export: only the series
    /// it returns then, so a subscription that left the top has none.
    pub fn observe(
        &self,
        names: &[&'static str],
        read: impl Fn() -> Vec<Observed> + Send + Sync + 'static,
    ) {
        let read = Arc::new(read);
        let mut observed = self.observed.lock().unwrap_or_else(PoisonError::into_inner);
        for &name in names {
            let read = read.clone();
            let gauge = self
                .meter
                .f64_observable_gauge(name)
                .with_callback(move |observer| {
                    for sample in read().into_iter().filter(|sample| sample.name == name) {
                        let attributes: Vec<KeyValue> = sample
                            .labels
                            .into_iter()
                            .map(|(key, value)| KeyValue::new(key, value))
                            .collect();
                        observer.observe(sample.value, &attributes);
                    }
                })
                .build();
            observed.push(gauge);
        }
    }

    /// Exports once more and stops (blocking: call off the async threads).
    pub fn shutdown(self) {
        if let Err(error) = self.provider.shutdown() {
            tracing::warn!(%error, "exporting the last metrics failed");
        }
    }
}

/// Starts the OTLP metrics pipeline when `settings` turn it on: the recorder to install
/// beside Prometheus's, and the pipeline to shut down at the end. Call inside the Tokio
/// runtime: the exporter's requests run on it.
pub fn start(settings: &TraceSettings) -> Result<Option<(OtlpRecorder, OtlpMetrics)>, TraceError> {
    if !enabled(settings) {
        return Ok(None);
    }
    let client = export::Client::new(tokio::runtime::Handle::current())
        .map_err(|error| TraceError::Exporter(error.to_string()))?;
    let mut exporter = opentelemetry_otlp::MetricExporter::builder()
        .with_http()
        .with_http_client(client)
        .with_protocol(Protocol::HttpBinary);
    if let Some(endpoint) = &settings.endpoint {
        exporter = exporter.with_endpoint(metrics_url(endpoint));
    }
    let exporter = exporter
        .build()
        .map_err(|error| TraceError::Exporter(error.to_string()))?;
    let provider = SdkMeterProvider::builder()
        .with_reader(PeriodicReader::builder(exporter).build())
        .with_resource(
            Resource::builder()
                .with_service_name(service_name())
                .build(),
        )
        .build();
    let meter = provider.meter("reelay");
    let recorder = OtlpRecorder::new(meter.clone());
    let pipeline = OtlpMetrics {
        provider,
        meter,
        observed: Mutex::new(Vec::new()),
    };
    Ok(Some((recorder, pipeline)))
}

/// The metrics URL under an OTLP base URL, as the standard variable's rule has it.
pub fn metrics_url(base: &str) -> String {
    format!("{}/v1/metrics", base.trim_end_matches('/'))
}

/// A `metrics` recorder whose series are OpenTelemetry instruments.
pub struct OtlpRecorder {
    registry: Registry<Key, Instruments>,
}

impl OtlpRecorder {
    pub fn new(meter: Meter) -> OtlpRecorder {
        OtlpRecorder {
            registry: Registry::new(Instruments {
                meter,
                made: Mutex::new(HashMap::new()),
            }),
        }
    }
}

impl Recorder for OtlpRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        self.registry
            .get_or_create_counter(key, |series| Counter::from_arc(series.clone()))
    }

    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        self.registry
            .get_or_create_gauge(key, |series| Gauge::from_arc(series.clone()))
    }

    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        self.registry
            .get_or_create_histogram(key, |series| Histogram::from_arc(series.clone()))
    }
}

/// One OpenTelemetry instrument per metric name, made on its first series.
#[derive(Clone)]
enum Instrument {
    Counter(opentelemetry::metrics::Counter<u64>),
    Gauge(opentelemetry::metrics::Gauge<f64>),
    Histogram(opentelemetry::metrics::Histogram<f64>),
}

/// The registry's storage: each new series (name and labels) gets its name's
/// instrument and its labels as attributes.
struct Instruments {
    meter: Meter,
    made: Mutex<HashMap<String, Instrument>>,
}

impl Instruments {
    fn instrument(
        &self,
        name: &str,
        make: impl FnOnce(&Meter, String) -> Instrument,
    ) -> Instrument {
        let mut made = self.made.lock().unwrap_or_else(PoisonError::into_inner);
        made.entry(name.to_owned())
            .or_insert_with(|| make(&self.meter, name.to_owned()))
            .clone()
    }

    fn series(&self, key: &Key, make: impl FnOnce(&Meter, String) -> Instrument) -> Arc<Series> {
        Arc::new(Series {
            instrument: self.instrument(key.name(), make),
            attributes: key
                .labels()
                .map(|label| KeyValue::new(label.key().to_owned(), label.value().to_owned()))
                .collect(),
            value: AtomicU64::new(0),
        })
    }
}

impl Storage<Key> for Instruments {
    type Counter = Arc<Series>;
    type Gauge = Arc<Series>;
    type Histogram = Arc<Series>;

    fn counter(&self, key: &Key) -> Arc<Series> {
        self.series(key, |meter, name| {
            Instrument::Counter(meter.u64_counter(name).build())
        })
    }

    fn gauge(&self, key: &Key) -> Arc<Series> {
        self.series(key, |meter, name| {
            Instrument::Gauge(meter.f64_gauge(name).build())
        })
    }

    fn histogram(&self, key: &Key) -> Arc<Series> {
        self.series(key, |meter, name| {
            let bounds = match COUNT_HISTOGRAMS.contains(&name.as_str()) {
                true => COUNT_BUCKETS.to_vec(),
                false => SECONDS_BUCKETS.to_vec(),
            };
            Instrument::Histogram(meter.f64_histogram(name).with_boundaries(bounds).build())
        })
    }
}

/// One series: its instrument, its labels, and what `metrics` needs kept that
/// OpenTelemetry does not (a counter's total, a gauge's value as f64 bits).
struct Series {
    instrument: Instrument,
    attributes: Vec<KeyValue>,
    value: AtomicU64,
}

impl Series {
    fn add(&self, value: u64) {
        if let Instrument::Counter(counter) = &self.instrument {
            counter.add(value, &self.attributes);
        }
    }

    fn set_gauge(&self, change: impl Fn(f64) -> f64) {
        let Instrument::Gauge(gauge) = &self.instrument else {
            return;
        };
        let mut now = 0.0;
        let _ = self
            .value
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |bits| {
                now = change(f64::from_bits(bits));
                Some(now.to_bits())
            });
        gauge.record(now, &self.attributes);
    }
}

impl CounterFn for Series {
    fn increment(&self, value: u64) {
        self.value.fetch_add(value, Ordering::AcqRel);
        self.add(value);
    }

    /// OpenTelemetry counters only add: an absolute value adds what it moved the total by.
    fn absolute(&self, value: u64) {
        let before = self.value.fetch_max(value, Ordering::AcqRel);
        if value > before {
            self.add(value - before);
        }
    }
}

impl GaugeFn for Series {
    fn increment(&self, value: f64) {
        self.set_gauge(|now| now + value);
    }

    fn decrement(&self, value: f64) {
        self.set_gauge(|now| now - value);
    }

    fn set(&self, value: f64) {
        self.set_gauge(|_| value);
    }
}

impl HistogramFn for Series {
    fn record(&self, value: f64) {
        if let Instrument::Histogram(histogram) = &self.instrument {
            histogram.record(value, &self.attributes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_sdk::metrics::InMemoryMetricExporter;
    use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData};

    #[test]
    fn the_metrics_path_goes_under_the_base_url() {
        assert_eq!(
            metrics_url("http://collector:4318/"),
            "http://collector:4318/v1/metrics"
        );
    }

    /// What `metrics` records arrives as OpenTelemetry data of the same kind, name and
    /// labels, with an absolute counter and a moved gauge turned into their values.
    #[test]
    fn counters_gauges_and_histograms_become_instruments_of_the_same_kind() {
        let exporter = InMemoryMetricExporter::default();
        let provider = SdkMeterProvider::builder()
            .with_reader(PeriodicReader::builder(exporter.clone()).build())
            .build();
        let recorder = OtlpRecorder::new(provider.meter("test"));
        let metadata = Metadata::new("test", metrics::Level::INFO, None);
        let counter = recorder.register_counter(&Key::from_name("c_total"), &metadata);
        counter.increment(2);
        counter.absolute(10);
        counter.absolute(4);
        let key = Key::from_parts("g", vec![metrics::Label::new("account", "vimond")]);
        let gauge = recorder.register_gauge(&key, &metadata);
        gauge.set(5.0);
        gauge.increment(2.5);
        let histogram = recorder.register_histogram(&Key::from_name("h_seconds"), &metadata);
        histogram.record(0.003);
        histogram.record(0.2);
        provider.force_flush().expect("flush");

        let exported = exporter.get_finished_metrics().expect("finished metrics");
        let metrics: Vec<_> = exported
            .iter()
            .flat_map(|resource| resource.scope_metrics())
            .flat_map(|scope| scope.metrics())
            .collect();
        let find = |name: &str| {
            metrics
                .iter()
                .find(|metric| metric.name() == name)
                .unwrap_or_else(|| panic!("{name} exported"))
                .data()
        };
        match find("c_total") {
            AggregatedMetrics::U64(MetricData::Sum(sum)) => {
                let total: u64 = sum.data_points().map(|point| point.value()).sum();
                assert_eq!(total, 10, "2 added, then the absolute 10");
            }
            _ => panic!("c_total is a u64 sum"),
        }
        match find("g") {
            AggregatedMetrics::F64(MetricData::Gauge(gauge)) => {
                let point = gauge.data_points().next().expect("one point");
                assert_eq!(point.value(), 7.5);
                let attributes: Vec<_> = point.attributes().collect();
                assert_eq!(attributes, vec![&KeyValue::new("account", "vimond")]);
            }
            _ => panic!("g is an f64 gauge"),
        }
        match find("h_seconds") {
            AggregatedMetrics::F64(MetricData::Histogram(histogram)) => {
                let point = histogram.data_points().next().expect("one point");
                assert_eq!(point.count(), 2);
                assert_eq!(point.bounds().collect::<Vec<_>>(), SECONDS_BUCKETS.to_vec());
            }
            _ => panic!("h_seconds is an f64 histogram"),
        }
    }
}
