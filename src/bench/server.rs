//! The server under test: a `reelay serve` child process on a scratch database (so its
//! memory and CPU can be read from /proc), or a running server given by URL.

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
    url: String,
    token: String,
    pid: Option<u32>,
    child: Option<Child>,
    scratch: Option<PathBuf>,
}

impl BenchServer {
    pub fn remote(url: String, token: String) -> BenchServer {
        BenchServer {
            url,
            token,
            pid: None,
            child: None,
            scratch: None,
        }
    }

    /// Starts `reelay serve` (this same executable) on a scratch SQLite database, with
    /// every acknowledged event fsynced as in production.
    pub async fn start(
        short_retries: bool,
        env: Vec<(&'static str, String)>,
    ) -> anyhow::Result<BenchServer> {
        let scratch = std::env::temp_dir().join(format!("reelay-bench-{}", std::process::id()));
        std::fs::create_dir_all(&scratch)?;
        let token = format!("bench-{}", uuid::Uuid::new_v4().simple());
        let mut command = Command::new(std::env::current_exe()?);
        command
            .arg("serve")
            .env("REELAY_LISTEN", "127.0.0.1:0")
            .env(
                "REELAY_DATABASE_URL",
                format!("sqlite://{}/bench.db", scratch.display()),
            )
            .env("REELAY_ADMIN_TOKEN", &token)
            .env("REELAY_ALLOW_PRIVATE_DESTINATIONS", "true")
            .env("REELAY_DURABILITY", "fsync")
            .env("REELAY_LOG", "warn")
            .stdout(Stdio::piped())
            .kill_on_drop(true);
        // E.g. the AWS chain pointed at moto.
        command.envs(env);
        if short_retries {
            // The outage phase brings the receiver back after the publishes: retries must
            // come within seconds, not on the production schedule.
            command.env("REELAY_RETRY_SCHEDULE", vec!["1s"; 20].join(","));
        }
        let mut child = command.spawn().context("starting reelay serve")?;
        let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
        let url = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await? {
                if let Some(url) = line.strip_prefix("reelay listening on ") {
                    return Ok(url.to_owned());
                }
            }
            anyhow::bail!("reelay serve exited before listening")
        })
        .await
        .context("reelay serve did not start within 30s")??;
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(BenchServer {
            url,
            token,
            pid: child.id(),
            child: Some(child),
            scratch: Some(scratch),
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn token(&self) -> &str {
        &self.token
    }

    pub fn rss_mb(&self) -> Option<f64> {
        self.pid.and_then(rss_mb)
    }

    /// Starts watching the server's memory and CPU for one phase.
    pub fn watch(&self) -> Watch {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(0));
        if let Some(pid) = self.pid {
            let (stop, peak) = (stop.clone(), peak.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    if let Some(rss) = rss_mb(pid) {
                        peak.fetch_max((rss * 1000.0) as u64, Ordering::Relaxed);
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            });
        }
        Watch {
            pid: self.pid,
            cpu_start: self.pid.and_then(cpu_seconds),
            stop,
            peak,
        }
    }

    pub async fn stop(mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
        if let Some(scratch) = &self.scratch {
            let _ = std::fs::remove_dir_all(scratch);
        }
    }
}

pub struct Watch {
    pid: Option<u32>,
    cpu_start: Option<f64>,
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
}

impl Watch {
    /// Ends the phase; `deliveries` turns CPU time into CPU per 1,000 deliveries.
    pub fn finish(self, deliveries: u64) -> PhaseResources {
        self.stop.store(true, Ordering::Relaxed);
        let cpu = match (self.pid.and_then(cpu_seconds), self.cpu_start) {
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
