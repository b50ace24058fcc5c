//! `reelay-bench` (run as `reelay bench`): measures a Reelay server on this machine. It is a
//! binary of its own, outside the library, so the server does not ship its load generator;
//! it drives the `reelay` binary beside it. It starts a server on a
//! scratch embedded database, or `--nodes` servers sharing a scratch database on a
//! PostgreSQL server (`--database`), or uses a running one (`--url`); starts its own
//! webhook receiver, and reports the raw HTTP limit of the same run next to publish
//! throughput, delivery throughput to 1 and 10 subscriptions, publish→arrival latency at a
//! fixed rate, and the servers' memory and CPU, counting every missing or duplicated
//! delivery. The many-tenants phase measures the hot subscription again while thousands
//! of idle subscriptions in other accounts are present.

mod accounts;
mod amqp;
mod aws;
mod controls;
mod events;
pub mod moto;
mod nats;
mod postgres;
mod receiver;
mod report;
mod retention;
mod server;
mod tracing;

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use clap::{Args, Parser};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use aws::AwsSink;
use events::Traffic;
use moto::Moto;
use postgres::{ScratchDatabase, Watcher};
use receiver::{Expectation, Receiver};
use report::{
    DeliveryResult, LatencyResult, PhaseResources, Report, ResyncResult, ThroughputResult,
};
use server::{BenchServer, Storage};

// glibc's allocator took a sixth of the server's CPU under load (perf); the load generator
// uses the same allocator as the server it measures.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "reelay bench",
    version,
    about = "Measure a Reelay server's throughput, latency and memory on this machine"
)]
struct Cli {
    #[command(flatten)]
    config: BenchConfig,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("REELAY_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    run(Cli::parse().config).await
}

#[derive(Debug, Clone, Args)]
pub struct BenchConfig {
    /// Measure a running server instead of starting one (it must allow private
    /// destinations, since the receiver listens on loopback).
    #[arg(long, conflicts_with_all = ["database", "nodes"])]
    pub url: Option<String>,
    /// Run the servers on this PostgreSQL server (postgres://…) instead of SQLite: the
    /// bench creates a scratch database there for the run (the role needs CREATEDB) and
    /// drops it after.
    #[arg(long)]
    pub database: Option<String>,
    /// How many `reelay serve` nodes share the PostgreSQL database (each on its own
    /// port): publishes and API calls go to them round-robin, and they split the
    /// subscriptions between them.
    #[arg(long, default_value_t = 1)]
    pub nodes: usize,
    /// Admin token of the server given with --url.
    #[arg(long, env = "REELAY_ADMIN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// A short run that checks the command works (for CI); its numbers mean little.
    #[arg(long)]
    pub quick: bool,
    /// Concurrent requests of the load generator.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Run the outage phase: publish this many events while the receiver answers 503,
    /// then bring it back and wait for all of them (watching the server's memory).
    #[arg(long)]
    pub outage_events: Option<usize>,
    /// Also measure delivery to a Kinesis stream and an SNS topic served by a local
    /// `moto_server` (it must be on PATH: pip install 'moto[server]'): events/s and API
    /// calls per 1,000 events.
    #[arg(long)]
    pub aws: bool,
    /// Also measure delivery to a JetStream stream on this NATS server
    /// (`nats://127.0.0.1:4222`): events/s acknowledged by the stream.
    #[arg(long)]
    pub nats: Option<String>,
    /// Also measure delivery to an exchange on this RabbitMQ broker
    /// (`amqp://guest:guest@127.0.0.1:5672/%2f`): events/s confirmed by the broker.
    #[arg(long)]
    pub amqp: Option<String>,
    /// Catalog entities of the resync phase (a full resync to one webhook); default
    /// 100,000 (2,000 with --quick).
    #[arg(long)]
    pub resync_entities: Option<usize>,
    /// Run only these phases (for profiling one of them): raw, single, changes, batch,
    /// batch-changes, one, one-changes, tracing, ten, ten-changes, filter, transform, ordering, latency,
    /// latency-changes, accounts, resync, kinesis, sns, nats, amqp, retention. The raw limit
    /// always runs; the retention phase runs only when named.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Run the many-tenants phase last: create this many idle subscriptions, each in an
    /// account of its own (webhooks to the bench receiver, which never get an event), then
    /// measure the hot subscription's deliveries/s and publish→arrival latency again
    /// with them present, and the server's memory and CPU with them while idle.
    #[arg(long)]
    pub idle_subscriptions: Option<usize>,
    /// Accounts of the many-publishers phase: each has one subscription, and all of them
    /// publish at once; default 1,000 (20 with --quick).
    #[arg(long)]
    pub publishing_accounts: Option<usize>,
    /// The retention phase's `--retention`: its server removes events older than this.
    #[arg(long, default_value = "30s", value_parser = reelay::config::parse_duration)]
    pub retention_window: Duration,
    /// How many retention windows the retention phase publishes for.
    #[arg(long, default_value_t = 4)]
    pub retention_windows: u32,
    /// Events per second the retention phase publishes (in requests of 20).
    #[arg(long, default_value_t = 2_000)]
    pub retention_rate: u64,
}

/// Sizes of each phase.
struct Sizes {
    raw: usize,
    single: usize,
    batches: usize,
    delivery_one: usize,
    delivery_ten: usize,
    latency_seconds: u64,
    aws: usize,
    resync: usize,
    accounts: usize,
}

const LATENCY_RATE: u64 = 1_000;
/// Requests of the latency phase in flight at once, at most.
const LATENCY_IN_FLIGHT: usize = 256;
/// How long the many-tenants phase watches the idle server's CPU.
const TENANTS_IDLE_WATCH: Duration = Duration::from_secs(3);
const BATCH: usize = 100;

pub async fn run(config: BenchConfig) -> anyhow::Result<()> {
    if config.nodes == 0 {
        bail!("--nodes must be at least 1");
    }
    if let Some(database) = &config.database
        && reelay::store::Backend::of(database) != reelay::store::Backend::Postgres
    {
        bail!(
            "--database takes a PostgreSQL server (postgres://…); without it the bench uses \
             a scratch SQLite database"
        );
    }
    if config.nodes > 1 && config.database.is_none() {
        bail!(
            "--nodes {} needs --database postgres://…: nodes share a PostgreSQL database, \
             and a SQLite database belongs to one process",
            config.nodes
        );
    }
    let sizes = if config.quick {
        Sizes {
            raw: 5_000,
            single: 5_000,
            batches: 100,
            delivery_one: 5_000,
            delivery_ten: 1_000,
            latency_seconds: 2,
            aws: 2_000,
            resync: config.resync_entities.unwrap_or(2_000),
            accounts: config.publishing_accounts.unwrap_or(20),
        }
    } else {
        Sizes {
            raw: 200_000,
            single: 100_000,
            batches: 5_000,
            delivery_one: 100_000,
            delivery_ten: 20_000,
            latency_seconds: 10,
            aws: 20_000,
            resync: config.resync_entities.unwrap_or(100_000),
            accounts: config.publishing_accounts.unwrap_or(1_000),
        }
    };
    let moto = match config.aws {
        true => Some(Moto::start().await?),
        false => None,
    };
    let scratch = match &config.database {
        Some(url) => Some(ScratchDatabase::create(url).await?),
        None => None,
    };
    let cancel = CancellationToken::new();
    // Whatever happens (an error, Ctrl-C), the servers stop and the scratch database goes.
    let outcome = tokio::select! {
        outcome = measure(&config, &sizes, moto.as_ref(), scratch.as_ref(), &cancel) => outcome,
        _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
    };
    cancel.cancel();
    let report = match outcome {
        Ok((report, server)) => {
            server.stop().await;
            report
        }
        // The servers were dropped (killed) with the failed measurement.
        Err(error) => {
            if let Some(scratch) = scratch {
                scratch.remove().await;
            }
            return Err(error);
        }
    };
    if let Some(scratch) = scratch {
        scratch.remove().await;
    }
    eprint!("\r{:70}\r", "");
    println!("{}", report.table());
    let json = serde_json::to_string_pretty(&report)?;
    match &config.json {
        Some(path) => {
            std::fs::write(path, &json).with_context(|| format!("writing {}", path.display()))?
        }
        None => println!("{json}"),
    }
    if report.missing() > 0 {
        bail!("{} deliveries are missing", report.missing());
    }
    if report.duplicates() > 0 {
        bail!("{} deliveries were sent twice", report.duplicates());
    }
    if report.strays() > 0 {
        bail!(
            "{} deliveries reached idle subscriptions of other accounts",
            report.strays()
        );
    }
    Ok(())
}

/// Starts the receiver and the servers, and runs the phases.
async fn measure(
    config: &BenchConfig,
    sizes: &Sizes,
    moto: Option<&Moto>,
    scratch: Option<&ScratchDatabase>,
    cancel: &CancellationToken,
) -> anyhow::Result<(Report, BenchServer)> {
    let (receiver, receiver_url) = Receiver::start(cancel.clone())
        .await
        .context("starting the receiver")?;
    let server = match &config.url {
        Some(url) => BenchServer::remote(
            url.clone(),
            config.token.clone().context("--url needs --token")?,
        ),
        None => {
            let storage = match scratch {
                Some(scratch) => Storage::Postgres {
                    url: &scratch.url,
                    nodes: config.nodes,
                },
                None => Storage::Sqlite,
            };
            BenchServer::start(
                storage,
                config.outage_events.is_some(),
                moto.map(Moto::env).unwrap_or_default(),
            )
            .await?
        }
    };
    let watcher = match scratch {
        Some(scratch) => {
            let mut watcher = Watcher::connect(&scratch.url).await?;
            // Every node takes its share of the subscriptions only once it counts the
            // others as alive.
            watcher
                .wait_for_nodes(config.nodes, LEASE_TTL_DEFAULT)
                .await?;
            Some(tokio::sync::Mutex::new(watcher))
        }
        None => None,
    };
    let mut bench = Bench {
        run: format!("bench-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]),
        http: reqwest::Client::builder()
            .pool_max_idle_per_host(config.concurrency * 2)
            // Under the server's 10 s `--header-timeout`, which closes connections idle
            // that long: a pooled connection is never reused just as the server closes it.
            .pool_idle_timeout(Duration::from_secs(5))
            .build()?,
        server,
        receiver,
        receiver_url,
        concurrency: config.concurrency,
        watcher,
        api_calls: AtomicUsize::new(0),
    };

    let mut report = Report::new(
        config.concurrency,
        config.quick,
        if scratch.is_some() {
            "postgresql"
        } else if config.url.is_some() {
            "remote"
        } else {
            "sqlite"
        },
        bench.server.nodes(),
    );
    report.idle_rss_mb = bench.server.rss_mb();

    let runs = |phase: &str| config.only.is_empty() || config.only.iter().any(|p| p == phase);
    report.raw = bench.raw_limit(sizes.raw).await?;
    if runs("single") {
        report.publish_single = bench
            .publish_single("single", sizes.single, Traffic::Player)
            .await?;
    }
    if runs("changes") {
        report.publish_video_changes = bench
            .publish_single("changes", sizes.single, Traffic::VideoChange)
            .await?;
    }
    if runs("batch") {
        report.publish_batch = bench
            .publish_batches("batch", sizes.batches, Traffic::Player)
            .await?;
    }
    if runs("batch-changes") {
        report.publish_batch_changes = bench
            .publish_batches("batch-changes", sizes.batches, Traffic::VideoChange)
            .await?;
    }
    if runs("one") {
        report.delivery_one = bench
            .delivery("one", sizes.delivery_one, 1, Traffic::Player)
            .await?;
    }
    if runs("one-changes") {
        report.delivery_one_changes = bench
            .delivery("one-changes", sizes.delivery_one, 1, Traffic::VideoChange)
            .await?;
    }
    if runs("tracing") {
        report.tracing = Some(bench.tracing(sizes.delivery_one).await?);
    }
    if runs("ten") {
        report.delivery_ten = bench
            .delivery("ten", sizes.delivery_ten, 10, Traffic::Player)
            .await?;
    }
    if runs("ten-changes") {
        report.delivery_ten_changes = bench
            .delivery("ten-changes", sizes.delivery_ten, 10, Traffic::VideoChange)
            .await?;
    }
    if runs("filter") {
        report.delivery_filter = Some(
            bench
                .controlled_delivery(
                    "filter",
                    sizes.delivery_ten,
                    controls::filter(),
                    Traffic::Player,
                )
                .await?,
        );
    }
    if runs("transform") {
        report.delivery_transform = Some(
            bench
                .controlled_delivery(
                    "transform",
                    sizes.delivery_ten,
                    controls::transform(),
                    Traffic::Player,
                )
                .await?,
        );
    }
    if runs("ordering") {
        report.delivery_ordering = Some(
            bench
                .controlled_delivery(
                    "ordering",
                    sizes.delivery_ten,
                    controls::ordering(),
                    Traffic::Entities(controls::ORDERED_ENTITIES),
                )
                .await?,
        );
    }
    if runs("latency") {
        report.latency = bench
            .latency_in("latency", sizes.latency_seconds, Traffic::Player)
            .await?;
    }
    if runs("latency-changes") {
        report.latency_changes = bench
            .latency_in(
                "latency-changes",
                sizes.latency_seconds,
                Traffic::VideoChange,
            )
            .await?;
    }
    if runs("accounts") {
        report.accounts = Some(
            bench
                .publishing_accounts(sizes.accounts, sizes.delivery_one)
                .await?,
        );
    }
    if runs("resync") {
        report.resync = Some(bench.resync(sizes.resync).await?);
    }
    if let Some(moto) = moto {
        for sink in [AwsSink::Kinesis, AwsSink::Sns] {
            if runs(sink.name()) {
                report
                    .aws
                    .push(bench.aws_delivery(moto, sink, sizes.aws).await?);
            }
        }
    }
    if let Some(url) = &config.nats
        && runs("nats")
    {
        report
            .buses
            .push(bench.nats_delivery(url, sizes.aws).await?);
    }
    if let Some(url) = &config.amqp
        && runs("amqp")
    {
        report
            .buses
            .push(bench.amqp_delivery(url, sizes.aws).await?);
    }
    if let Some(events) = config.outage_events {
        report.outage = Some(bench.outage(events).await?);
    }
    // Minutes long, with a server of its own: only when asked for.
    if config.only.iter().any(|p| p == "retention") {
        report.retention = Some(
            retention::run(
                &bench.http,
                &bench.receiver_url,
                config.retention_window,
                config.retention_windows,
                config.retention_rate,
            )
            .await?,
        );
    }
    if let Some(idle) = config.idle_subscriptions {
        report.tenants = Some(bench.tenants(sizes, idle).await?);
    }
    report.finish();
    Ok((report, bench.server))
}

/// `reelay serve`'s default `--lease-ttl`: a node that said it was alive within it counts.
const LEASE_TTL_DEFAULT: Duration = Duration::from_secs(5);

struct Bench {
    /// Accounts are named per run, so runs against one server never see each other's
    /// events as duplicates.
    run: String,
    http: reqwest::Client,
    server: BenchServer,
    receiver: Receiver,
    receiver_url: String,
    concurrency: usize,
    /// With PostgreSQL: the scratch database, to see how the nodes split the work.
    watcher: Option<tokio::sync::Mutex<Watcher>>,
    /// API calls so far, to send each to the next node.
    api_calls: AtomicUsize,
}

/// Runs `total` requests with `concurrency` in flight; returns the elapsed time and
/// each request's latency in microseconds.
async fn closed_loop<F, Fut>(
    label: &str,
    total: usize,
    concurrency: usize,
    request: F,
) -> anyhow::Result<(Duration, Vec<u64>)>
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let progress = spawn_progress(label.to_owned(), total, done.clone());
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (next, done, request) = (next.clone(), done.clone(), request.clone());
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= total {
                    return Ok::<_, anyhow::Error>(latencies);
                }
                let sent = Instant::now();
                request(n).await?;
                latencies.push(sent.elapsed().as_micros() as u64);
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let mut latencies = Vec::with_capacity(total);
    for worker in workers {
        latencies.extend(worker.await??);
    }
    progress.abort();
    Ok((started.elapsed(), latencies))
}

fn spawn_progress(
    label: String,
    total: usize,
    done: Arc<AtomicUsize>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let count = done.load(Ordering::Relaxed);
            eprint!("\r{label:<40} {count:>9}/{total:<9}");
            let _ = std::io::stderr().flush();
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
}

impl Bench {
    fn account(&self, phase: &str) -> String {
        format!("{}-{phase}", self.run)
    }

    async fn raw_limit(&self, total: usize) -> anyhow::Result<ThroughputResult> {
        let http = self.http.clone();
        let url = format!("{}/raw", self.receiver_url);
        let body = Traffic::Player.event(0).to_string();
        let (elapsed, latencies) = closed_loop(
            "raw POSTs to the receiver",
            total,
            self.concurrency,
            move |_| {
                let (http, url, body) = (http.clone(), url.clone(), body.clone());
                async move {
                    let response = http.post(&url).body(body).send().await?;
                    anyhow::ensure!(
                        response.status().is_success(),
                        "receiver answered {}",
                        response.status()
                    );
                    Ok(())
                }
            },
        )
        .await?;
        Ok(ThroughputResult::new(
            total,
            elapsed,
            latencies,
            PhaseResources::default(),
        ))
    }

    fn publisher(
        &self,
        account: &str,
    ) -> impl Fn(
        String,
    )
        -> std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<()>> + Send>>
    + Clone
    + Send
    + 'static {
        let http = self.http.clone();
        // Round-robin over the nodes.
        let urls: Arc<Vec<String>> = Arc::new(
            (0..self.server.nodes())
                .map(|n| {
                    format!(
                        "{}/v1/accounts/{}/events",
                        self.server.url(n),
                        self.account(account)
                    )
                })
                .collect(),
        );
        let next = Arc::new(AtomicUsize::new(0));
        let token = self.server.token().to_owned();
        move |body: String| {
            let n = next.fetch_add(1, Ordering::Relaxed);
            let (http, url, token) = (http.clone(), urls[n % urls.len()].clone(), token.clone());
            Box::pin(async move {
                let send = || {
                    http.post(&url)
                        .bearer_auth(&token)
                        .body(body.clone())
                        .send()
                };
                // A connection lost before any answer is tried once more, as a publisher
                // would: the event's guid makes a second copy a duplicate, not an event.
                let response = match send().await {
                    Err(error) if error.is_request() || error.is_connect() => send().await?,
                    answer => answer?,
                };
                let status = response.status();
                anyhow::ensure!(
                    status.as_u16() == 202,
                    "publish answered {status}: {}",
                    response.text().await.unwrap_or_default()
                );
                Ok(())
            })
        }
    }

    async fn publish_single(
        &self,
        phase: &str,
        total: usize,
        traffic: Traffic,
    ) -> anyhow::Result<ThroughputResult> {
        let publish = self.publisher(phase);
        let watch = self.server.watch();
        let (elapsed, latencies) = closed_loop(
            &format!("publish, single events ({phase})"),
            total,
            self.concurrency,
            move |n| publish(traffic.event(n).to_string()),
        )
        .await?;
        Ok(ThroughputResult::new(
            total,
            elapsed,
            latencies,
            watch.finish(0),
        ))
    }

    async fn publish_batches(
        &self,
        phase: &str,
        batches: usize,
        traffic: Traffic,
    ) -> anyhow::Result<ThroughputResult> {
        let publish = self.publisher(phase);
        let watch = self.server.watch();
        let (elapsed, latencies) = closed_loop(
            &format!("publish, batches of 100 ({phase})"),
            batches,
            self.concurrency.min(16),
            move |n| publish(traffic.batch(n * BATCH..(n + 1) * BATCH)),
        )
        .await?;
        Ok(ThroughputResult::new(
            batches * BATCH,
            elapsed,
            latencies,
            watch.finish(0),
        ))
    }

    /// Creates a subscription in the phase's account; returns its id.
    async fn subscribe_to(&self, phase: &str, body: Value) -> anyhow::Result<String> {
        let response = self
            .http
            .post(format!(
                "{}/v1/accounts/{}/subscriptions",
                self.server
                    .url(self.api_calls.fetch_add(1, Ordering::Relaxed)),
                self.account(phase)
            ))
            .bearer_auth(self.server.token())
            .json(&body)
            .send()
            .await?;
        anyhow::ensure!(
            response.status().as_u16() == 201,
            "subscription refused: {}",
            response.text().await?
        );
        let created: Value = response.json().await?;
        created["id"]
            .as_str()
            .map(str::to_owned)
            .context("no id in the answer")
    }

    /// Subscribes the receiver's `/hook/{i}` paths to the phase's event, `subscriptions`
    /// times; returns how many of them each node delivers (with PostgreSQL, once the
    /// nodes have split all subscriptions between them).
    async fn subscribe(
        &self,
        account: &str,
        subscriptions: usize,
        traffic: Traffic,
    ) -> anyhow::Result<Vec<u64>> {
        for i in 0..subscriptions {
            let endpoint = format!("{}/hook/{i}", self.receiver_url);
            self.subscribe_to(
                account,
                json!({"endpoint": endpoint, "events": [traffic.event_name()]}),
            )
            .await?;
        }
        self.split(account).await
    }

    /// With PostgreSQL, waits until the nodes have split the subscriptions; returns how
    /// many of `account`'s each node holds, in node order.
    async fn split(&self, account: &str) -> anyhow::Result<Vec<u64>> {
        let Some(watcher) = &self.watcher else {
            return Ok(Vec::new());
        };
        let held = watcher
            .lock()
            .await
            .wait_for_split(&self.account(account), self.server.nodes())
            .await?;
        Ok((1..=self.server.nodes())
            .map(|i| held.get(&server::node_id(i)).copied().unwrap_or(0))
            .collect())
    }

    /// Waits until every expected delivery arrived, or nothing arrived for 30 seconds.
    async fn drain(&self, label: &str, expectation: &Expectation) {
        let expected = (expectation.events * expectation.subscriptions) as u64;
        let mut last = (0, Instant::now());
        loop {
            let (distinct, _, _) = expectation.tally();
            eprint!("\r{label:<40} {distinct:>9}/{expected:<9}");
            if distinct >= expected {
                return;
            }
            if distinct != last.0 {
                last = (distinct, Instant::now());
            } else if last.1.elapsed() > Duration::from_secs(30) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn delivery(
        &self,
        account: &str,
        events: usize,
        subscriptions: usize,
        traffic: Traffic,
    ) -> anyhow::Result<DeliveryResult> {
        let expectation = Expectation::new(events, subscriptions);
        self.receiver.expect(Some(expectation.clone()));
        let subscriptions_per_node = self.subscribe(account, subscriptions, traffic).await?;
        let label = format!("deliver to {subscriptions} subscription(s) ({account})");
        self.measure_delivery(
            account,
            &label,
            expectation,
            subscriptions_per_node,
            traffic,
        )
        .await
    }

    /// Publishes the expected events to `account`, whose subscriptions are in place, and
    /// times them to their last arrival.
    async fn measure_delivery(
        &self,
        account: &str,
        label: &str,
        expectation: Arc<Expectation>,
        subscriptions_per_node: Vec<u64>,
        traffic: Traffic,
    ) -> anyhow::Result<DeliveryResult> {
        let events = expectation.events;
        let publish = self.publisher(account);
        let watch = self.server.watch();
        let started = self.receiver.now();
        let (publish_elapsed, _) = closed_loop(label, events, self.concurrency, move |n| {
            publish(traffic.event(n).to_string())
        })
        .await?;
        Ok(self
            .delivery_result(label, &expectation, events, watch, started, publish_elapsed)
            .await
            .with_split(subscriptions_per_node))
    }

    /// Waits for the phase's arrivals, then tallies them: `events` published in
    /// `publish_elapsed`, timed from `started` (receiver clock) to the last arrival.
    pub(crate) async fn delivery_result(
        &self,
        label: &str,
        expectation: &Expectation,
        events: usize,
        watch: server::Watch,
        started: u64,
        publish_elapsed: Duration,
    ) -> DeliveryResult {
        self.drain(label, expectation).await;
        let (distinct, duplicates, missing) = expectation.tally();
        let elapsed = Duration::from_nanos(
            expectation
                .last_arrival
                .load(Ordering::Relaxed)
                .saturating_sub(started),
        );
        let resources = watch.finish(distinct);
        self.receiver.expect(None);
        DeliveryResult {
            events,
            subscriptions: expectation.subscriptions,
            deliveries: distinct,
            duplicates,
            missing,
            seconds: elapsed.as_secs_f64(),
            per_second: distinct as f64 / elapsed.as_secs_f64().max(1e-9),
            publish_per_second: events as f64 / publish_elapsed.as_secs_f64(),
            ratio_to_raw: 0.0,
            subscriptions_per_node: Vec::new(),
            resources,
        }
    }

    /// Publishes to one subscription of `account` at [`LATENCY_RATE`] for `seconds`, and
    /// measures each event's publish→arrival time.
    async fn latency_in(
        &self,
        account: &str,
        seconds: u64,
        traffic: Traffic,
    ) -> anyhow::Result<LatencyResult> {
        let events = (LATENCY_RATE * seconds) as usize;
        let expectation = Expectation::new(events, 1);
        self.receiver.expect(Some(expectation.clone()));
        self.subscribe(account, 1, traffic).await?;
        let publish = self.publisher(account);
        let watch = self.server.watch();
        let sent: Arc<Vec<AtomicU64>> = Arc::new((0..events).map(|_| AtomicU64::new(0)).collect());
        let done = Arc::new(AtomicUsize::new(0));
        let progress = spawn_progress(
            format!("latency at {LATENCY_RATE} events/s"),
            events,
            done.clone(),
        );
        // A client's connection pool: a server that stalls makes requests wait for one
        // (and the wait counts), rather than opening a connection per request.
        let permits = Arc::new(tokio::sync::Semaphore::new(LATENCY_IN_FLIGHT));
        let mut ticker = tokio::time::interval(Duration::from_micros(1_000_000 / LATENCY_RATE));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let mut requests = Vec::with_capacity(events);
        for n in 0..events {
            ticker.tick().await;
            let (publish, sent, done, receiver) = (
                publish.clone(),
                sent.clone(),
                done.clone(),
                self.receiver.clone(),
            );
            let permits = permits.clone();
            requests.push(tokio::spawn(async move {
                // Timed from when it was due, so waiting for a connection counts.
                sent[n].store(receiver.now(), Ordering::Relaxed);
                let _permit = permits.acquire_owned().await?;
                let result = publish(traffic.event(n).to_string()).await;
                done.fetch_add(1, Ordering::Relaxed);
                result
            }));
        }
        for request in requests {
            request.await??;
        }
        progress.abort();
        self.drain("latency: waiting for arrivals", &expectation)
            .await;
        let (distinct, duplicates, missing) = expectation.tally();
        let mut latencies: Vec<u64> = (0..events)
            .filter_map(|n| {
                Some(
                    expectation
                        .arrival(n)?
                        .saturating_sub(sent[n].load(Ordering::Relaxed))
                        / 1_000,
                )
            })
            .collect();
        self.receiver.expect(None);
        Ok(LatencyResult::new(
            LATENCY_RATE,
            events,
            distinct,
            duplicates,
            missing,
            &mut latencies,
            watch.finish(distinct),
        ))
    }

    /// A full resync of `entities` assets to one webhook subscription: the catalog is
    /// published first (no subscriber yet), then a subscription is created with
    /// `"resync": true`; timed from that request to the last arrival.
    async fn resync(&self, entities: usize) -> anyhow::Result<ResyncResult> {
        let publish = self.publisher("resync");
        closed_loop(
            "resync: publishing the catalog",
            entities.div_ceil(BATCH),
            8,
            move |n| {
                let events: Vec<_> = (n * BATCH..((n + 1) * BATCH).min(entities))
                    .map(events::catalog_event)
                    .collect();
                publish(serde_json::Value::Array(events).to_string())
            },
        )
        .await?;
        let expectation = Expectation::new(entities, 1);
        self.receiver.expect(Some(expectation.clone()));
        let watch = self.server.watch();
        let started = self.receiver.now();
        let requested = Instant::now();
        let subscription = self
            .subscribe_to(
                "resync",
                json!({"endpoint": format!("{}/hook/0", self.receiver_url),
                       "events": ["asset-created"], "resync": true}),
            )
            .await?;
        let run_url = format!(
            "{}/v1/accounts/{}/subscriptions/{subscription}/resync",
            self.server.url(0),
            self.account("resync")
        );
        let run = loop {
            let run: Value = self
                .http
                .get(&run_url)
                .bearer_auth(self.server.token())
                .send()
                .await?
                .json()
                .await?;
            if run["state"] == "completed" {
                break run;
            }
            let sent = run["sent"].as_u64().unwrap_or(0);
            eprint!("\r{:<40} {sent:>9}/{entities:<9}", "resync: running");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let completed = requested.elapsed();
        self.drain("resync: waiting for arrivals", &expectation)
            .await;
        let (distinct, duplicates, missing) = expectation.tally();
        let elapsed = Duration::from_nanos(
            expectation
                .last_arrival
                .load(Ordering::Relaxed)
                .saturating_sub(started),
        );
        self.receiver.expect(None);
        Ok(ResyncResult {
            entities,
            total: run["total"].as_u64().unwrap_or(0),
            sent: run["sent"].as_u64().unwrap_or(0),
            delivered: distinct,
            duplicates,
            missing,
            seconds: elapsed.as_secs_f64(),
            per_second: distinct as f64 / elapsed.as_secs_f64().max(1e-9),
            completed_seconds: completed.as_secs_f64(),
            resources: watch.finish(distinct),
        })
    }

    /// The many-tenants phase: `idle` subscriptions in as many other accounts, then the
    /// hot subscription's deliveries and latency with them present.
    async fn tenants(
        &mut self,
        sizes: &Sizes,
        idle: usize,
    ) -> anyhow::Result<report::TenantsResult> {
        let http = self.http.clone();
        let urls: Arc<Vec<String>> = Arc::new(
            (0..self.server.nodes())
                .map(|n| self.server.url(n).to_owned())
                .collect(),
        );
        let (token, run) = (self.server.token().to_owned(), self.run.clone());
        let body =
            json!({"endpoint": format!("{}/idle", self.receiver_url), "events": [Traffic::Player.event_name()]})
                .to_string();
        let (created_in, _) = closed_loop(
            &format!("tenants: creating {idle} idle subscriptions"),
            idle,
            self.concurrency.min(16),
            move |n| {
                let (http, token, body) = (http.clone(), token.clone(), body.clone());
                let url = format!(
                    "{}/v1/accounts/{run}-idle-{n}/subscriptions",
                    urls[n % urls.len()]
                );
                async move {
                    let response = http
                        .post(&url)
                        .bearer_auth(&token)
                        .header("content-type", "application/json")
                        .body(body)
                        .send()
                        .await?;
                    let status = response.status();
                    anyhow::ensure!(
                        status.as_u16() == 201,
                        "subscription refused: {}",
                        response.text().await.unwrap_or_default()
                    );
                    Ok(())
                }
            },
        )
        .await?;
        // Idle: what they cost while nothing is published.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (idle_rss_mb, idle_cpu_cores, database) = self.idle_watch().await?;
        let delivery = self
            .delivery("tenants-one", sizes.delivery_one, 1, Traffic::Player)
            .await?;
        let latency = self
            .latency_in("tenants-latency", sizes.latency_seconds, Traffic::Player)
            .await?;
        let after_traffic_rss_mb = self.server.rss_mb();
        // Start-up with them: the server (every node) is killed and started again on the
        // same database, and timed until it serves (answers /healthz, accepts a publish).
        let restart = match self.server.restartable() {
            true => Some(self.restart_with_them().await?),
            false => None,
        };
        Ok(report::TenantsResult {
            idle_subscriptions: idle,
            create_seconds: created_in.as_secs_f64(),
            idle_rss_mb,
            idle_cpu_cores,
            database,
            after_traffic_rss_mb,
            restart,
            delivery,
            latency,
            ratio_to_without: None,
            latency_p99_without_ms: None,
            deliveries_to_idle: self.receiver.idle_deliveries(),
        })
    }

    /// The servers' memory, CPU and (on PostgreSQL) database work while nothing is
    /// published, over [`TENANTS_IDLE_WATCH`].
    async fn idle_watch(
        &self,
    ) -> anyhow::Result<(Option<f64>, Option<f64>, Option<report::IdleDatabase>)> {
        let before = match &self.watcher {
            Some(watcher) => Some(watcher.lock().await.activity().await?),
            None => None,
        };
        let watch = self.server.watch();
        let started = Instant::now();
        tokio::time::sleep(TENANTS_IDLE_WATCH).await;
        let resources = watch.finish(0);
        let seconds = started.elapsed().as_secs_f64();
        let database = match (&self.watcher, before) {
            (Some(watcher), Some(before)) => {
                // The statistics reach pg_stat_* within a second of each transaction.
                tokio::time::sleep(Duration::from_millis(1_100)).await;
                let after = watcher.lock().await.activity().await?;
                Some(after.since(&before, seconds))
            }
            _ => None,
        };
        Ok((
            self.server.rss_mb(),
            resources.cpu_seconds.map(|cpu| cpu / seconds),
            database,
        ))
    }

    /// Restarts the servers with every subscription in place and times them until they
    /// serve, then watches them idle again.
    async fn restart_with_them(&mut self) -> anyhow::Result<report::RestartResult> {
        let restarted = self.server.restart(&self.http).await?;
        let began = Instant::now();
        let publish = self.publisher("restart");
        publish(Traffic::Player.batch(0..1)).await?;
        let first_publish = began.elapsed();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (idle_rss_mb, idle_cpu_cores, database) = self.idle_watch().await?;
        Ok(report::RestartResult {
            listening_seconds: restarted.listening.as_secs_f64(),
            healthy_seconds: restarted.healthy.as_secs_f64(),
            first_publish_seconds: (restarted.healthy + first_publish).as_secs_f64(),
            idle_rss_mb,
            idle_cpu_cores,
            database,
        })
    }

    async fn outage(&self, events: usize) -> anyhow::Result<report::OutageResult> {
        let expectation = Expectation::new(events, 1);
        expectation.down.store(true, Ordering::Relaxed);
        self.receiver.expect(Some(expectation.clone()));
        self.subscribe("outage", 1, Traffic::Player).await?;
        let publish = self.publisher("outage");
        let watch = self.server.watch();
        let batches = events.div_ceil(BATCH);
        let (published_in, _) = closed_loop(
            "outage: publish while receiver is down",
            batches,
            8,
            move |n| publish(Traffic::Player.batch(n * BATCH..((n + 1) * BATCH).min(events))),
        )
        .await?;
        let down = watch.finish(0);
        let watch = self.server.watch();
        let back = Instant::now();
        expectation.down.store(false, Ordering::Relaxed);
        self.drain("outage: receiver back, waiting", &expectation)
            .await;
        let (distinct, duplicates, missing) = expectation.tally();
        let recovery = back.elapsed();
        self.receiver.expect(None);
        Ok(report::OutageResult {
            events,
            publish_seconds: published_in.as_secs_f64(),
            peak_rss_mb_while_down: down.peak_rss_mb,
            recovery_seconds: recovery.as_secs_f64(),
            peak_rss_mb_recovering: watch.finish(distinct).peak_rss_mb,
            delivered: distinct,
            duplicates,
            missing,
        })
    }
}
