//! `reelay bench --database postgres://…`: a scratch database on that server for one run
//! (created before the nodes start, dropped after they stop, so runs never see each
//! other's data), and what the bench reads from it directly: which nodes are alive and
//! which node holds each subscription.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use sqlx::{Connection, PgConnection};

use reelay::model::now_millis;

/// A database of its own for one bench run, on the server the user named.
pub struct ScratchDatabase {
    /// The URL the user gave: where the scratch database is created from and dropped.
    admin_url: String,
    name: String,
    /// The scratch database's URL, for the nodes.
    pub url: String,
}

impl ScratchDatabase {
    pub async fn create(admin_url: &str) -> anyhow::Result<ScratchDatabase> {
        let name = format!(
            "reelay_bench_{}_{}",
            std::process::id(),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let mut url = url::Url::parse(admin_url).context("--database is not a URL")?;
        url.set_path(&format!("/{name}"));
        let mut connection = PgConnection::connect(admin_url)
            .await
            .with_context(|| format!("connecting to {}", redacted(admin_url)))?;
        // The name is made here of letters, digits and underscores: safe to splice in.
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut connection)
            .await
            .context("creating the bench's scratch database (the role needs CREATEDB)")?;
        Ok(ScratchDatabase {
            admin_url: admin_url.to_owned(),
            name,
            url: url.to_string(),
        })
    }

    /// Drops the database, with any connection still open to it.
    pub async fn remove(self) {
        let dropped = async {
            let mut connection = PgConnection::connect(&self.admin_url).await?;
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            )))
            .execute(&mut connection)
            .await?;
            Ok::<_, sqlx::Error>(())
        };
        if let Err(error) = dropped.await {
            eprintln!(
                "could not drop the bench's scratch database {}: {error}",
                self.name
            );
        }
    }
}

/// A URL without its password, for messages.
fn redacted(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            if parsed.password().is_some() {
                let _ = parsed.set_password(Some("***"));
            }
            parsed.to_string()
        }
        Err(_) => "the --database URL".to_owned(),
    }
}

/// Counters of the database's work, from its statistics views.
pub struct Activity {
    transactions: i64,
    lease_rows: i64,
}

impl Activity {
    /// The work per second from `before` to this, over `seconds`.
    pub fn since(&self, before: &Activity, seconds: f64) -> super::report::IdleDatabase {
        let per_second = |now: i64, then: i64| (now - then).max(0) as f64 / seconds.max(1e-9);
        super::report::IdleDatabase {
            transactions_per_second: per_second(self.transactions, before.transactions),
            lease_rows_per_second: per_second(self.lease_rows, before.lease_rows),
        }
    }
}

/// The scratch database as the bench watches it, on a connection of its own.
pub struct Watcher {
    connection: PgConnection,
}

impl Watcher {
    pub async fn connect(url: &str) -> anyhow::Result<Watcher> {
        Ok(Watcher {
            connection: PgConnection::connect(url).await?,
        })
    }

    /// The database's work so far: committed transactions, and rows written to the
    /// lease tables (`nodes`, `subscription_leases`).
    pub async fn activity(&mut self) -> anyhow::Result<Activity> {
        let (transactions,): (i64,) = sqlx::query_as(
            "SELECT (xact_commit + xact_rollback)::BIGINT FROM pg_stat_database \
             WHERE datname = current_database()",
        )
        .fetch_one(&mut self.connection)
        .await?;
        let (lease_rows,): (i64,) = sqlx::query_as(
            "SELECT COALESCE(SUM(n_tup_ins + n_tup_upd + n_tup_del), 0)::BIGINT \
             FROM pg_stat_user_tables WHERE relname IN ('nodes', 'subscription_leases')",
        )
        .fetch_one(&mut self.connection)
        .await?;
        Ok(Activity {
            transactions,
            lease_rows,
        })
    }

    /// Waits until `nodes` nodes have said they are alive (within the last `ttl`).
    pub async fn wait_for_nodes(&mut self, nodes: usize, ttl: Duration) -> anyhow::Result<()> {
        let started = Instant::now();
        loop {
            let live: i64 =
                sqlx::query_scalar("SELECT COUNT(*) FROM nodes WHERE heartbeat_at >= $1")
                    .bind(now_millis() - ttl.as_millis() as i64)
                    .fetch_one(&mut self.connection)
                    .await?;
            if live as usize >= nodes {
                return Ok(());
            }
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(30),
                "only {live} of {nodes} nodes joined within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until every enabled subscription is held by a live node and none holds
    /// more than its share (all of them divided by `nodes`, rounded up): the nodes have
    /// split the work as they will keep it. Returns how many of `account`'s
    /// subscriptions each node holds, by node name.
    pub async fn wait_for_split(
        &mut self,
        account: &str,
        nodes: usize,
    ) -> anyhow::Result<BTreeMap<String, u64>> {
        let started = Instant::now();
        loop {
            let rows: Vec<(Option<String>, String, i64)> = sqlx::query_as(
                "SELECT l.node_id, s.account, COUNT(*) FROM subscriptions s \
                 LEFT JOIN (subscription_leases l JOIN nodes n \
                   ON n.id = l.node_id AND n.lease_until >= $1) \
                   ON l.subscription_id = s.id \
                 WHERE s.disabled_at IS NULL GROUP BY l.node_id, s.account",
            )
            .bind(now_millis())
            .fetch_all(&mut self.connection)
            .await?;
            let total: i64 = rows.iter().map(|(_, _, count)| count).sum();
            let share = (total as usize).div_ceil(nodes.max(1)) as u64;
            let mut held: BTreeMap<&str, u64> = BTreeMap::new();
            let mut free = 0;
            let mut phase = BTreeMap::new();
            for (node, subscriptions, count) in &rows {
                let count = *count as u64;
                match node {
                    None => free += count,
                    Some(node) => {
                        *held.entry(node).or_default() += count;
                        if subscriptions == account {
                            *phase.entry(node.clone()).or_default() += count;
                        }
                    }
                }
            }
            if free == 0 && held.values().all(|&count| count <= share) {
                return Ok(phase);
            }
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(30),
                "the nodes did not split the subscriptions within 30 s: {free} not held, \
                 held by node: {held:?}, share {share}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
