//! The server under test: `reelay serve` child processes on a scratch database (so their
//! memory and CPU can be read from /proc): one on SQLite, or one or more nodes sharing a
//! PostgreSQL database; or a running server given by URL.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use super::report::PhaseResources;

pub struct BenchServer {
    nodes: Vec<Node>,
    token: String,
    scratch: Option<PathBuf>,
}

/// One `reelay serve` process (or the running server given by URL).
struct Node {
    url: String,
    pid: Option<u32>,
    child: Option<Child>,
    /// How it was started, to start it again (none for a running server given by URL).
    start: Option<NodeStart>,
}

/// What `reelay serve` is started with.
#[derive(Clone)]
struct NodeStart {
    database: String,
    node: Option<String>,
    short_retries: bool,
    env: Vec<(&'static str, String)>,
}

/// How long a restarted server took to serve again.
pub struct Restarted {
    /// Until it printed that it listens.
    pub listening: Duration,
    /// Until `/healthz` answered 200.
    pub healthy: Duration,
}

/// Where the started servers keep their data.
pub enum Storage<'a> {
    /// A scratch SQLite file, one process.
    Sqlite,
    /// A SQLite file in this directory (removed with the server).
    SqliteIn(PathBuf),
    /// A scratch PostgreSQL database (its URL), shared by `nodes` processes.
    Postgres { url: &'a str, nodes: usize },
}

/// The name the bench gives node `i` (1-based) on PostgreSQL.
pub fn node_id(i: usize) -> String {
    format!("bench-node-{i}")
}

impl BenchServer {
    pub fn remote(url: String, token: String) -> BenchServer {
        BenchServer {
            nodes: vec![Node {
                url,
                pid: None,
                child: None,
                start: None,
            }],
            token,
            scratch: None,
        }
    }

    /// Starts `reelay serve` (this same executable): on a scratch SQLite database, with
    /// every acknowledged event fsynced as in production, or as several nodes on one
    /// PostgreSQL database, each on its own port and with its own node name.
    pub async fn start(
        storage: Storage<'_>,
        short_retries: bool,
        env: Vec<(&'static str, String)>,
    ) -> anyhow::Result<BenchServer> {
        let token = format!("bench-{}", uuid::Uuid::new_v4().simple());
        let mut server = BenchServer {
            nodes: Vec::new(),
            token,
            scratch: None,
        };
        let databases: Vec<(String, Option<String>)> = match storage {
            Storage::Sqlite => {
                let scratch =
                    std::env::temp_dir().join(format!("reelay-bench-{}", std::process::id()));
                std::fs::create_dir_all(&scratch)?;
                let url = format!("sqlite://{}/bench.db", scratch.display());
                server.scratch = Some(scratch);
                vec![(url, None)]
            }
            Storage::SqliteIn(scratch) => {
                let url = format!("sqlite://{}/bench.db", scratch.display());
                server.scratch = Some(scratch);
                vec![(url, None)]
            }
            Storage::Postgres { url, nodes } => (1..=nodes)
                .map(|i| (url.to_owned(), Some(node_id(i))))
                .collect(),
        };
        // One after the other: the first one creates the schema.
        for (database, node) in databases {
            let start = NodeStart {
                database,
                node,
                short_retries,
                env: env.clone(),
            };
            let started = start_node(&server.token, start).await;
            match started {
                Ok(node) => server.nodes.push(node),
                Err(error) => {
                    server.stop().await;
                    return Err(error);
                }
            }
        }
        Ok(server)
    }

    /// The base URL of node `n` modulo the number of nodes: requests spread round-robin.
    pub fn url(&self, n: usize) -> &str {
        &self.nodes[n % self.nodes.len()].url
    }

    /// Whether the bench started the servers (and can start them again).
    pub fn restartable(&self) -> bool {
        self.nodes.iter().all(|node| node.start.is_some())
    }

    pub fn nodes(&self) -> usize {
        self.nodes.len()
    }

    pub fn token(&self) -> &str {
        &self.token
    }

    /// Resident memory of the largest node.
    pub fn rss_mb(&self) -> Option<f64> {
        self.pids().filter_map(rss_mb).reduce(f64::max)
    }

    fn pids(&self) -> impl Iterator<Item = u32> + '_ {
        self.nodes.iter().filter_map(|node| node.pid)
    }

    /// Starts watching the servers' memory (the largest node's) and CPU (all nodes
    /// together) for one phase.
    pub fn watch(&self) -> Watch {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(0));
        let pids: Vec<u32> = self.pids().collect();
        if !pids.is_empty() {
            let (stop, peak, pids) = (stop.clone(), peak.clone(), pids.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    for &pid in &pids {
                        if let Some(rss) = rss_mb(pid) {
                            peak.fetch_max((rss * 1000.0) as u64, Ordering::Relaxed);
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            });
        }
        Watch {
            cpu_start: total_cpu_seconds(&pids),
            pids,
            stop,
            peak,
        }
    }

    /// Stops every node (SIGKILL) and starts it again on the same database, one after
    /// the other; returns the slowest node's time from its start until it listened, and
    /// until `/healthz` answered. Only for servers the bench started.
    pub async fn restart(&mut self, http: &reqwest::Client) -> anyhow::Result<Restarted> {
        let mut slowest = Restarted {
            listening: Duration::ZERO,
            healthy: Duration::ZERO,
        };
        for node in &mut self.nodes {
            let start = node
                .start
                .clone()
                .context("a server given by URL is not restarted")?;
            if let Some(child) = &mut node.child {
                let _ = child.start_kill();
                let _ = child.wait().await;
            }
            let began = std::time::Instant::now();
            *node = start_node(&self.token, start).await?;
            let listening = began.elapsed();
            loop {
                let answered = http.get(format!("{}/healthz", node.url)).send().await;
                if answered.is_ok_and(|response| response.status().is_success()) {
                    break;
                }
                anyhow::ensure!(
                    began.elapsed() < Duration::from_secs(120),
                    "the restarted server did not answer /healthz within 120 s"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            slowest.listening = slowest.listening.max(listening);
            slowest.healthy = slowest.healthy.max(began.elapsed());
        }
        Ok(slowest)
    }

    pub async fn stop(mut self) {
        for node in &mut self.nodes {
            if let Some(child) = &mut node.child {
                let _ = child.start_kill();
                let _ = child.wait().await;
            }
        }
        if let Some(scratch) = &self.scratch {
            let _ = std::fs::remove_dir_all(scratch);
        }
    }
}

/// Starts one `reelay serve` and waits until it listens.
async fn start_node(token: &str, start: NodeStart) -> anyhow::Result<Node> {
    let NodeStart {
        database,
        node,
        short_retries,
        env,
    } = &start;
    let short_retries = *short_retries;
    let mut command = Command::new(reelay_binary()?);
    command
        .arg("serve")
        .env("REELAY_LISTEN", "127.0.0.1:0")
        .env("REELAY_DATABASE_URL", database)
        .env("REELAY_ADMIN_TOKEN", token)
        .env("REELAY_ALLOW_PRIVATE_DESTINATIONS", "true")
        .env("REELAY_DURABILITY", "fsync")
        .env("REELAY_LOG", "warn")
        .stdout(Stdio::piped())
        .kill_on_drop(true);
    if let Some(node) = &node {
        command.env("REELAY_NODE_ID", node);
    }
    // E.g. the AWS chain pointed at moto.
    command.envs(env.iter().cloned());
    if short_retries {
        // The outage phase brings the receiver back after the publishes: retries must
        // come within seconds, not on the production schedule.
        command.env("REELAY_RETRY_SCHEDULE", vec!["1s"; 20].join(","));
    }
    let mut child = command.spawn().context("starting reelay serve")?;
    let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
    // A server with many subscriptions loads them all before it listens.
    let url = tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(line) = lines.next_line().await? {
            if let Some(url) = line.strip_prefix("reelay listening on ") {
                return Ok(url.to_owned());
            }
        }
        anyhow::bail!("reelay serve exited before listening")
    })
    .await
    .context("reelay serve did not start within 120 s")??;
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(Node {
        url,
        pid: child.id(),
        child: Some(child),
        start: Some(start),
    })
}

pub struct Watch {
    pids: Vec<u32>,
    cpu_start: Option<f64>,
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
}

impl Watch {
    /// Ends the phase; `deliveries` turns CPU time into CPU per 1,000 deliveries.
    pub fn finish(self, deliveries: u64) -> PhaseResources {
        self.stop.store(true, Ordering::Relaxed);
        let cpu = match (total_cpu_seconds(&self.pids), self.cpu_start) {
            (Some(end), Some(start)) => Some(end - start),
            _ => None,
        };
        let peak = self.peak.load(Ordering::Relaxed);
        PhaseResources {
            peak_rss_mb: (peak > 0).then(|| peak as f64 / 1000.0),
            cpu_seconds: cpu,
            cpu_seconds_per_1000_deliveries: cpu
                .filter(|_| deliveries > 0)
                .map(|cpu| cpu * 1000.0 / deliveries as f64),
        }
    }
}

/// CPU time of all these processes together; `None` if one cannot be read.
fn total_cpu_seconds(pids: &[u32]) -> Option<f64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|&pid| cpu_seconds(pid)).sum()
}

/// Resident memory of a process, from /proc (Linux).
fn rss_mb(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// User + system CPU time of a process, from /proc (Linux, 100 ticks per second).
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start after ") ".
    let fields: Vec<&str> = stat.rsplit_once(") ")?.1.split_whitespace().collect();
    let user: f64 = fields.get(11)?.parse().ok()?;
    let system: f64 = fields.get(12)?.parse().ok()?;
    Some((user + system) / 100.0)
}

/// The `reelay` binary the bench starts: `REELAY_BIN` when set, else the one built beside
/// this binary (cargo puts both in the same target directory).
fn reelay_binary() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("REELAY_BIN") {
        return Ok(PathBuf::from(path));
    }
    let path =
        std::env::current_exe()?.with_file_name(format!("reelay{}", std::env::consts::EXE_SUFFIX));
    if !path.exists() {
        anyhow::bail!(
            "the bench starts the reelay server binary, and there is none at {} (build both: \
             `cargo build --release`, or set REELAY_BIN)",
            path.display()
        );
    }
    Ok(path)
}
