//! The benchmark report: the numbers, the targets of the performance issue beside them,
//! and the table and JSON forms.

use std::fmt::Write;
use std::time::Duration;

use serde::Serialize;

/// What the table says of a phase `--only` left out.
const NOT_RUN: &str = "not run";

#[derive(Debug, Default, Clone, Serialize)]
pub struct PhaseResources {
    pub peak_rss_mb: Option<f64>,
    pub cpu_seconds: Option<f64>,
    pub cpu_seconds_per_1000_deliveries: Option<f64>,
}

#[derive(Debug, Default, Serialize)]
pub struct ThroughputResult {
    pub requests_or_events: usize,
    pub seconds: f64,
    pub per_second: f64,
    pub request_p50_ms: f64,
    pub request_p99_ms: f64,
    pub resources: PhaseResources,
}

impl ThroughputResult {
    /// Whether its phase ran (`--only` may leave it out).
    fn ran(&self) -> bool {
        self.requests_or_events > 0
    }

    pub fn new(
        count: usize,
        elapsed: Duration,
        mut latencies_us: Vec<u64>,
        resources: PhaseResources,
    ) -> Self {
        latencies_us.sort_unstable();
        ThroughputResult {
            requests_or_events: count,
            seconds: elapsed.as_secs_f64(),
            per_second: count as f64 / elapsed.as_secs_f64(),
            request_p50_ms: percentile(&latencies_us, 50.0) / 1000.0,
            request_p99_ms: percentile(&latencies_us, 99.0) / 1000.0,
            resources,
        }
    }
}

#[derive(Debug, Default, Serialize)]
pub struct DeliveryResult {
    pub events: usize,
    pub subscriptions: usize,
    pub deliveries: u64,
    pub duplicates: u64,
    pub missing: u64,
    /// From the first publish to the last arrival.
    pub seconds: f64,
    pub per_second: f64,
    pub publish_per_second: f64,
    pub ratio_to_raw: f64,
    /// With PostgreSQL: how many of the phase's subscriptions each node delivered.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub subscriptions_per_node: Vec<u64>,
    pub resources: PhaseResources,
}

impl DeliveryResult {
    /// Whether its phase ran (`--only` may leave it out).
    fn ran(&self) -> bool {
        self.events > 0
    }

    /// With how many of the phase's subscriptions each node delivered.
    pub fn with_split(self, subscriptions_per_node: Vec<u64>) -> DeliveryResult {
        DeliveryResult {
            subscriptions_per_node,
            ..self
        }
    }
}

#[derive(Debug, Default, Serialize)]
pub struct LatencyResult {
    pub rate_per_second: u64,
    pub events: usize,
    pub delivered: u64,
    pub duplicates: u64,
    pub missing: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub resources: PhaseResources,
}

impl LatencyResult {
    /// Whether its phase ran (`--only` may leave it out).
    fn ran(&self) -> bool {
        self.events > 0
    }

    pub fn new(
        rate: u64,
        events: usize,
        delivered: u64,
        duplicates: u64,
        missing: u64,
        latencies_us: &mut [u64],
        resources: PhaseResources,
    ) -> Self {
        latencies_us.sort_unstable();
        LatencyResult {
            rate_per_second: rate,
            events,
            delivered,
            duplicates,
            missing,
            p50_ms: percentile(latencies_us, 50.0) / 1000.0,
            p99_ms: percentile(latencies_us, 99.0) / 1000.0,
            max_ms: latencies_us.last().copied().unwrap_or(0) as f64 / 1000.0,
            resources,
        }
    }
}

#[derive(Debug, Default, Serialize)]
pub struct OutageResult {
    pub events: usize,
    pub publish_seconds: f64,
    pub peak_rss_mb_while_down: Option<f64>,
    pub recovery_seconds: f64,
    pub peak_rss_mb_recovering: Option<f64>,
    pub delivered: u64,
    pub duplicates: u64,
    pub missing: u64,
}

/// A full resync of a catalog to one webhook subscription.
#[derive(Debug, Default, Serialize)]
pub struct ResyncResult {
    pub entities: usize,
    /// Entities the run counted (its `total`) and said it sent (`sent`).
    pub total: u64,
    pub sent: u64,
    pub delivered: u64,
    pub duplicates: u64,
    pub missing: u64,
    /// From the resync request to the last arrival.
    pub seconds: f64,
    pub per_second: f64,
    /// From the request to the run's `completed` state.
    pub completed_seconds: f64,
    pub resources: PhaseResources,
}

/// The many-tenants phase: the hot subscription measured again while `idle_subscriptions`
/// idle subscriptions, each in an account of its own, are present.
#[derive(Debug, Default, Serialize)]
pub struct TenantsResult {
    pub idle_subscriptions: usize,
    /// Creating them through the API.
    pub create_seconds: f64,
    /// The server's memory with them, idle, before any traffic of the phase.
    pub idle_rss_mb: Option<f64>,
    /// Cores the server kept busy while idle with them (CPU seconds per second).
    pub idle_cpu_cores: Option<f64>,
    /// On PostgreSQL: the database's work while the servers idled with them.
    pub database: Option<IdleDatabase>,
    /// The server's memory after the phase's traffic.
    pub after_traffic_rss_mb: Option<f64>,
    /// The server started again with them in place (servers the bench started).
    pub restart: Option<RestartResult>,
    pub delivery: DeliveryResult,
    pub latency: LatencyResult,
    /// The hot deliveries/s over the same measure without them (`delivery_one`), when
    /// that ran too.
    pub ratio_to_without: Option<f64>,
    pub latency_p99_without_ms: Option<f64>,
    /// Deliveries that reached an idle subscription: each one is a routing error.
    pub deliveries_to_idle: u64,
}

/// The database's work per second while the servers idle (PostgreSQL).
#[derive(Debug, Default, Serialize)]
pub struct IdleDatabase {
    /// Transactions committed or rolled back (pg_stat_database), by every client.
    pub transactions_per_second: f64,
    /// Rows inserted, updated or deleted in the lease tables (`nodes`,
    /// `subscription_leases`): the lease upkeep.
    pub lease_rows_per_second: f64,
}

/// The many-tenants phase's restart: every node killed and started again with the idle
/// subscriptions in place.
#[derive(Debug, Default, Serialize)]
pub struct RestartResult {
    /// From the start of the process until it said it listens (the slowest node).
    pub listening_seconds: f64,
    /// Until `/healthz` answered 200.
    pub healthy_seconds: f64,
    /// Until a publish was accepted (after `/healthz` answered).
    pub first_publish_seconds: f64,
    /// Memory and CPU while idle after the restart.
    pub idle_rss_mb: Option<f64>,
    pub idle_cpu_cores: Option<f64>,
    pub database: Option<IdleDatabase>,
}

fn idle_database(database: &Option<IdleDatabase>) -> String {
    database.as_ref().map_or("n/a".to_owned(), |db| {
        format!(
            "{:.1} transactions/s, {:.0} lease rows written/s",
            db.transactions_per_second, db.lease_rows_per_second
        )
    })
}

fn cores(cores: Option<f64>) -> String {
    cores.map_or("n/a".to_owned(), |c| format!("{:.1}% core", c * 100.0))
}

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub cores: usize,
    pub concurrency: usize,
    pub quick: bool,
    /// `sqlite`, `postgresql`, or `remote` (`--url`).
    pub backend: &'static str,
    /// `reelay serve` processes sharing the database.
    pub nodes: usize,
    pub idle_rss_mb: Option<f64>,
    pub raw: ThroughputResult,
    pub publish_single: ThroughputResult,
    /// Single events that change a video (each also derives a `video-change`).
    pub publish_video_changes: ThroughputResult,
    pub publish_batch: ThroughputResult,
    /// Batches of events that change a video.
    pub publish_batch_changes: ThroughputResult,
    pub delivery_one: DeliveryResult,
    pub delivery_one_changes: DeliveryResult,
    pub delivery_ten: DeliveryResult,
    pub delivery_ten_changes: DeliveryResult,
    /// 10 subscriptions, each with a payload filter every event passes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivery_filter: Option<DeliveryResult>,
    /// 10 subscriptions, each with a jq transform.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivery_transform: Option<DeliveryResult>,
    /// 10 subscriptions, each with `"ordering": "entity"`, over 1,000 entities.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivery_ordering: Option<DeliveryResult>,
    /// 1 subscription on a server with tracing off, then on at 1%.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tracing: Option<super::tracing::TracingResult>,
    pub latency: LatencyResult,
    pub latency_changes: LatencyResult,
    /// Many accounts publishing at once, one subscription each.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accounts: Option<DeliveryResult>,
    pub outage: Option<OutageResult>,
    pub resync: Option<ResyncResult>,
    /// `--idle-subscriptions N`.
    pub tenants: Option<TenantsResult>,
    /// `--only retention`: the database's size over several retention windows.
    pub retention: Option<super::retention::RetentionResult>,
    /// Delivery to Kinesis and SNS through moto (`--aws`).
    pub aws: Vec<super::aws::AwsResult>,
    /// Delivery to a JetStream stream (`--nats`) and a RabbitMQ exchange (`--amqp`).
    pub buses: Vec<super::nats::BusResult>,
    pub peak_rss_mb: Option<f64>,
}

impl Report {
    pub fn new(concurrency: usize, quick: bool, backend: &'static str, nodes: usize) -> Report {
        Report {
            cores: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            concurrency,
            quick,
            backend,
            nodes,
            ..Report::default()
        }
    }

    pub fn finish(&mut self) {
        let raw = self.raw.per_second.max(1e-9);
        for delivery in [
            &mut self.delivery_one,
            &mut self.delivery_one_changes,
            &mut self.delivery_ten,
            &mut self.delivery_ten_changes,
        ] {
            delivery.ratio_to_raw = delivery.per_second / raw;
        }
        if let Some(accounts) = &mut self.accounts {
            accounts.ratio_to_raw = accounts.per_second / raw;
        }
        if let Some(tenants) = &mut self.tenants {
            tenants.delivery.ratio_to_raw = tenants.delivery.per_second / raw;
            if self.delivery_one.deliveries > 0 {
                tenants.ratio_to_without =
                    Some(tenants.delivery.per_second / self.delivery_one.per_second.max(1e-9));
            }
            if self.latency.delivered > 0 {
                tenants.latency_p99_without_ms = Some(self.latency.p99_ms);
            }
        }
        self.peak_rss_mb = [
            &self.publish_single.resources,
            &self.publish_video_changes.resources,
            &self.publish_batch.resources,
            &self.publish_batch_changes.resources,
            &self.delivery_one.resources,
            &self.delivery_one_changes.resources,
            &self.delivery_ten.resources,
            &self.delivery_ten_changes.resources,
            &self.latency.resources,
            &self.latency_changes.resources,
        ]
        .iter()
        .filter_map(|r| r.peak_rss_mb)
        .reduce(f64::max);
    }

    pub fn missing(&self) -> u64 {
        self.deliveries().map(|d| d.missing).sum::<u64>()
            + self.latency.missing
            + self.latency_changes.missing
            + self.outage.as_ref().map_or(0, |o| o.missing)
            + self.resync.as_ref().map_or(0, |r| r.missing)
            + self
                .tenants
                .as_ref()
                .map_or(0, |t| t.delivery.missing + t.latency.missing)
            + self
                .aws
                .iter()
                .map(|a| (a.events as u64).saturating_sub(a.delivered))
                .sum::<u64>()
    }

    /// Deliveries sent twice (the outage phase's included).
    pub fn duplicates(&self) -> u64 {
        self.deliveries().map(|d| d.duplicates).sum::<u64>()
            + self.latency.duplicates
            + self.latency_changes.duplicates
            + self.outage.as_ref().map_or(0, |o| o.duplicates)
            + self
                .tenants
                .as_ref()
                .map_or(0, |t| t.delivery.duplicates + t.latency.duplicates)
    }

    /// Deliveries that reached the many-tenants phase's idle subscriptions.
    pub fn strays(&self) -> u64 {
        self.tenants.as_ref().map_or(0, |t| t.deliveries_to_idle)
    }

    /// Every delivery phase's row (those that did not run are empty).
    fn deliveries(&self) -> impl Iterator<Item = &DeliveryResult> {
        [
            &self.delivery_one,
            &self.delivery_one_changes,
            &self.delivery_ten,
            &self.delivery_ten_changes,
        ]
        .into_iter()
        .chain(
            [
                &self.delivery_filter,
                &self.delivery_transform,
                &self.delivery_ordering,
                &self.accounts,
            ]
            .into_iter()
            .flatten(),
        )
        .chain(self.tracing.iter().flat_map(|t| [&t.off, &t.on]))
    }

    pub fn table(&self) -> String {
        let mb = |v: Option<f64>| v.map_or("n/a".to_owned(), |v| format!("{v:.1} MB"));
        let cpu = |r: &PhaseResources| {
            r.cpu_seconds_per_1000_deliveries
                .map_or("n/a".to_owned(), |v| format!("{v:.3} s"))
        };
        // A phase left out by `--only` says so, rather than a rate of 0/s against its
        // target; a ratio to a phase left out has nothing to compare with.
        let rate = |ran: bool, per_second: f64| {
            if ran {
                format!("{per_second:.0}/s")
            } else {
                NOT_RUN.to_owned()
            }
        };
        let times = |of: &DeliveryResult, to: &DeliveryResult| match (of.ran(), to.ran()) {
            (false, _) => NOT_RUN.to_owned(),
            (true, false) => "n/a".to_owned(),
            (true, true) => format!("{:.2}x", of.per_second / to.per_second.max(1e-9)),
        };
        let mut t = String::new();
        let storage = match (self.backend, self.nodes) {
            ("postgresql", 1) => ", PostgreSQL, 1 node".to_owned(),
            ("postgresql", nodes) => format!(", PostgreSQL, {nodes} nodes"),
            ("sqlite", _) => ", SQLite".to_owned(),
            _ => String::new(),
        };
        let _ = writeln!(
            t,
            "reelay bench: {} cores, {} concurrent requests{storage}{}",
            self.cores,
            self.concurrency,
            if self.quick { " (quick)" } else { "" }
        );
        let _ = writeln!(t, "{:<56} {:>26} {:>22}", "measure", "result", "target");
        let mut row = |name: &str, value: String, target: &str| {
            let _ = writeln!(t, "{name:<56} {value:>26} {target:>22}");
        };
        row(
            "raw limit: POSTs/s to the receiver",
            format!("{:.0}/s", self.raw.per_second),
            "",
        );
        row(
            "publish, single events: events/s",
            rate(self.publish_single.ran(), self.publish_single.per_second),
            "",
        );
        row(
            "  request p50 / p99",
            if self.publish_single.ran() {
                format!(
                    "{:.2} / {:.2} ms",
                    self.publish_single.request_p50_ms, self.publish_single.request_p99_ms
                )
            } else {
                NOT_RUN.to_owned()
            },
            "",
        );
        row(
            "  events that change a video: events/s",
            rate(
                self.publish_video_changes.ran(),
                self.publish_video_changes.per_second,
            ),
            "",
        );
        row(
            "publish, batches of 100: events/s",
            rate(self.publish_batch.ran(), self.publish_batch.per_second),
            ">= 200000/s",
        );
        row(
            "  events that change a video: events/s",
            rate(
                self.publish_batch_changes.ran(),
                self.publish_batch_changes.per_second,
            ),
            ">= 80000/s",
        );
        for (kind, one, ten, one_target) in [
            ("", &self.delivery_one, &self.delivery_ten, ""),
            (
                ", video changes",
                &self.delivery_one_changes,
                &self.delivery_ten_changes,
                ">= 0.35",
            ),
        ] {
            row(
                &format!("deliveries/s, 1 subscription{kind}"),
                rate(one.ran(), one.per_second),
                "",
            );
            row(
                "  ratio to the raw limit",
                if one.ran() {
                    format!("{:.3}", one.ratio_to_raw)
                } else {
                    NOT_RUN.to_owned()
                },
                one_target,
            );
            row(
                &format!("deliveries/s, 10 subscriptions{kind}"),
                rate(ten.ran(), ten.per_second),
                "",
            );
            row("  ratio to 1 subscription", times(ten, one), ">= 2.5x");
        }
        if let Some(tracing) = &self.tracing {
            row(
                &format!(
                    "tracing on at {}%: deliveries/s, 1 subscription",
                    tracing.sample_ratio * 100.0
                ),
                format!(
                    "{:.0}/s (off: {:.0}/s)",
                    tracing.on.per_second, tracing.off.per_second
                ),
                "",
            );
            row(
                "  ratio to tracing off",
                format!("{:.2}x", tracing.ratio),
                ">= 0.9x",
            );
        }
        for bus in &self.buses {
            row(
                &format!(
                    "deliveries/s to {} ({}), {} events",
                    bus.sink,
                    if bus.held_in == "queue" {
                        "confirmed"
                    } else {
                        "acked"
                    },
                    bus.events
                ),
                format!("{:.0}/s", bus.per_second),
                "",
            );
            row(
                &format!("  messages on the {} / events", bus.held_in),
                format!("{} / {}", bus.stored, bus.events),
                "",
            );
        }
        for (name, result) in [
            ("  with a filter on each", &self.delivery_filter),
            ("  with a transform on each", &self.delivery_transform),
            (
                "  ordered per entity (1,000 entities)",
                &self.delivery_ordering,
            ),
        ] {
            if let Some(result) = result {
                row(
                    name,
                    format!(
                        "{:.0}/s ({})",
                        result.per_second,
                        times(result, &self.delivery_ten)
                    ),
                    "",
                );
            }
        }
        if self.nodes > 1 {
            let split: Vec<String> = self
                .delivery_ten
                .subscriptions_per_node
                .iter()
                .map(u64::to_string)
                .collect();
            row("  subscriptions per node", split.join(" / "), "");
        }
        if let Some(accounts) = &self.accounts {
            row(
                &format!(
                    "{} accounts publishing at once: deliveries/s",
                    accounts.subscriptions
                ),
                format!("{:.0}/s", accounts.per_second),
                "",
            );
            row(
                "  ratio to 1 account",
                times(accounts, &self.delivery_one),
                ">= 0.8x",
            );
        }
        for (kind, latency) in [
            ("", &self.latency),
            (", video changes", &self.latency_changes),
        ] {
            let at = if latency.ran() {
                format!(" at {}/s", latency.rate_per_second)
            } else {
                String::new()
            };
            row(
                &format!("publish->arrival{at}{kind}: p50 / p99 / max"),
                if latency.ran() {
                    format!(
                        "{:.1} / {:.1} / {:.1} ms",
                        latency.p50_ms, latency.p99_ms, latency.max_ms
                    )
                } else {
                    NOT_RUN.to_owned()
                },
                "p99 <= 5 ms",
            );
        }
        // With several nodes: the largest node's memory, and all nodes' CPU.
        let largest = if self.nodes > 1 { " per node" } else { "" };
        row(
            &format!("idle RSS{largest}"),
            mb(self.idle_rss_mb),
            "<= 40 MB",
        );
        row(
            &format!("peak RSS{largest}: publish single / batch"),
            format!(
                "{} / {}",
                mb(self.publish_single.resources.peak_rss_mb),
                mb(self.publish_batch.resources.peak_rss_mb)
            ),
            "<= 200 MB",
        );
        row(
            &format!("peak RSS{largest}: deliver 1 / 10 subs"),
            format!(
                "{} / {}",
                mb(self.delivery_one.resources.peak_rss_mb),
                mb(self.delivery_ten.resources.peak_rss_mb)
            ),
            "<= 200 MB",
        );
        row(
            &format!("peak RSS{largest}: latency phase"),
            mb(self.latency.resources.peak_rss_mb),
            "<= 200 MB",
        );
        row(
            if self.nodes > 1 {
                "nodes' CPU per 1000 deliveries: 1 / 10 subs"
            } else {
                "server CPU per 1000 deliveries: 1 / 10 subs"
            },
            format!(
                "{} / {}",
                cpu(&self.delivery_one.resources),
                cpu(&self.delivery_ten.resources)
            ),
            "<= 0.035 s (1 sub)",
        );
        row(
            "missing / duplicate deliveries (all phases)",
            format!("{} / {}", self.missing(), self.duplicates()),
            "0 / 0",
        );
        for aws in &self.aws {
            row(
                &format!("deliveries/s to {} (moto), {} events", aws.sink, aws.events),
                format!("{:.0}/s", aws.per_second),
                "",
            );
            row(
                "  API calls per 1,000 events",
                format!("{:.1}", aws.api_calls_per_1000_events),
                "",
            );
        }
        if let Some(resync) = &self.resync {
            row(
                &format!("resync of {} entities to a webhook", resync.entities),
                format!("{:.1} s", resync.seconds),
                "< 30 s for 100k",
            );
            row("  entities/s", format!("{:.0}/s", resync.per_second), "");
            row(
                "  peak RSS / missing / duplicates",
                format!(
                    "{} / {} / {}",
                    mb(resync.resources.peak_rss_mb),
                    resync.missing,
                    resync.duplicates
                ),
                "0 missing",
            );
        }
        if let Some(retention) = &self.retention {
            row(
                &format!(
                    "retention {:.0}s: {} events at {}/s over {} windows",
                    retention.retention_seconds,
                    retention.published,
                    retention.rate_per_second,
                    retention.windows
                ),
                match retention.removal_started_seconds {
                    Some(at) => format!("removal from {at:.0} s"),
                    None => "nothing removed".to_owned(),
                },
                "",
            );
            row(
                "  publish p99 before / during removal",
                format!(
                    "{:.1} / {:.1} ms",
                    retention.publish_p99_ms_before_removal,
                    retention.publish_p99_ms_during_removal
                ),
                "during < 2x before",
            );
            row(
                "  publish p50 before / during removal",
                format!(
                    "{:.1} / {:.1} ms",
                    retention.publish_p50_ms_before_removal,
                    retention.publish_p50_ms_during_removal
                ),
                "",
            );
            row(
                "  late requests (generator at its bound)",
                retention.late_requests.to_string(),
                "",
            );
            for sample in &retention.curve {
                row(
                    &format!("  t = {:>4.0} s", sample.seconds),
                    format!(
                        "db {:.1} MB + WAL {:.1} MB",
                        sample.db_bytes as f64 / 1e6,
                        sample.wal_bytes as f64 / 1e6
                    ),
                    &format!(
                        "{:.0} kept / {} published",
                        sample.stored_events, sample.published
                    ),
                );
            }
        }
        if let Some(tenants) = &self.tenants {
            let n = tenants.idle_subscriptions;
            row(
                &format!("{n} idle subscriptions in {n} accounts"),
                format!("created in {:.1} s", tenants.create_seconds),
                "",
            );
            row(
                "  idle RSS / idle CPU with them",
                format!(
                    "{} / {}",
                    mb(tenants.idle_rss_mb),
                    cores(tenants.idle_cpu_cores)
                ),
                "<= 150 MB (10k)",
            );
            if tenants.database.is_some() {
                row(
                    "  database work while idle with them",
                    idle_database(&tenants.database),
                    "lease upkeep small",
                );
            }
            if let Some(restart) = &tenants.restart {
                row(
                    &format!("  start with {n} subscriptions: /healthz / publish"),
                    format!(
                        "{:.1} s / {:.1} s (listening {:.1} s)",
                        restart.healthy_seconds,
                        restart.first_publish_seconds,
                        restart.listening_seconds
                    ),
                    "<= 10 s (100k)",
                );
                row(
                    "  after the restart: idle RSS / idle CPU",
                    format!(
                        "{} / {}",
                        mb(restart.idle_rss_mb),
                        cores(restart.idle_cpu_cores)
                    ),
                    "<= 400 MB (100k)",
                );
                if restart.database.is_some() {
                    row(
                        "  after the restart: database work while idle",
                        idle_database(&restart.database),
                        "",
                    );
                }
            }
            row(
                "  deliveries/s, the hot subscription",
                format!("{:.0}/s", tenants.delivery.per_second),
                "",
            );
            row(
                "  ratio to without them",
                tenants
                    .ratio_to_without
                    .map_or("n/a".to_owned(), |r| format!("{r:.2}x")),
                ">= 0.9x",
            );
            row(
                &format!(
                    "  publish->arrival at {}/s: p50 / p99 / max",
                    tenants.latency.rate_per_second
                ),
                format!(
                    "{:.1} / {:.1} / {:.1} ms",
                    tenants.latency.p50_ms, tenants.latency.p99_ms, tenants.latency.max_ms
                ),
                "p99 <= 5 ms",
            );
            row(
                "  p99 without them",
                tenants
                    .latency_p99_without_ms
                    .map_or("n/a".to_owned(), |p| format!("{p:.1} ms")),
                "",
            );
            row(
                "  server CPU per 1000 deliveries: with / without",
                format!(
                    "{} / {}",
                    cpu(&tenants.delivery.resources),
                    cpu(&self.delivery_one.resources)
                ),
                "",
            );
            row(
                "  missing / duplicate / to idle subscriptions",
                format!(
                    "{} / {} / {}",
                    tenants.delivery.missing + tenants.latency.missing,
                    tenants.delivery.duplicates + tenants.latency.duplicates,
                    tenants.deliveries_to_idle
                ),
                "0 / 0 / 0",
            );
        }
        if let Some(outage) = &self.outage {
            row(
                &format!("outage: {} events published while down", outage.events),
                format!("{:.1} s", outage.publish_seconds),
                "",
            );
            row(
                "  peak RSS while down / recovering",
                format!(
                    "{} / {}",
                    mb(outage.peak_rss_mb_while_down),
                    mb(outage.peak_rss_mb_recovering)
                ),
                "< 200 MB",
            );
            row(
                "  all delivered after the receiver is back",
                format!("{:.1} s", outage.recovery_seconds),
                "",
            );
            row(
                "  missing / duplicates",
                format!("{} / {}", outage.missing, outage.duplicates),
                "0 missing",
            );
        }
        t
    }
}

pub(super) fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)] as f64
}
