//! `TestApp`: the real `reelay` binary on a free port with a scratch database, and the
//! helpers the tests share.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::receiver::{Receiver, Response};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub const ADMIN: &str = "test-admin-token";
/// The key of the stored secrets of PostgreSQL test servers (32 bytes, hex).
pub const TEST_SECRET_KEY: &str =
    "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

pub struct TestApp {
    pub url: String,
    pub http: reqwest::Client,
    child: Child,
    data: PathBuf,
    /// The server's `--database`: a SQLite file in `data`, or (when the suite runs on
    /// PostgreSQL) a schema of its own in the scratch database.
    pub database: String,
    env: Vec<(String, String)>,
    /// Everything the server wrote to standard error (its log), across restarts.
    logs: Arc<Mutex<String>>,
    _dir: Option<tempfile::TempDir>,
}

impl TestApp {
    /// A server with a retry schedule shrunk for tests and private destinations allowed
    /// (the receivers run on loopback).
    pub async fn start() -> TestApp {
        TestApp::start_with(&[]).await
    }

    pub async fn start_with(env: &[(&str, &str)]) -> TestApp {
        let dir = tempfile::tempdir().expect("temp dir");
        let database = scratch_database(dir.path()).await;
        TestApp::start_on(database, env, dir).await
    }

    /// A server on `database`, which other servers may share (several nodes on one
    /// PostgreSQL database); `dir` is its data directory, kept as long as it lives.
    pub async fn start_on(
        database: String,
        env: &[(&str, &str)],
        dir: tempfile::TempDir,
    ) -> TestApp {
        let data = dir.path().to_path_buf();
        let mut all = vec![
            (
                "REELAY_ALLOW_PRIVATE_DESTINATIONS".to_owned(),
                "true".to_owned(),
            ),
            (
                "REELAY_RETRY_SCHEDULE".to_owned(),
                "200ms,400ms,600ms".to_owned(),
            ),
        ];
        if database.starts_with("postgres") {
            // Kept across restarts, like a SQLite server's data: a restarted server takes
            // its subscriptions back at once.
            all.push((
                "REELAY_NODE_ID".to_owned(),
                format!("node-{}", uuid::Uuid::new_v4().simple()),
            ));
            // Nodes sharing a database share the key of its stored secrets.
            all.push(("REELAY_SECRET_KEY".to_owned(), TEST_SECRET_KEY.to_owned()));
        }
        all.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let logs = Arc::new(Mutex::new(String::new()));
        let (child, url) = spawn(&database, &all, &logs).await;
        TestApp {
            url,
            http: reqwest::Client::new(),
            child,
            data,
            database,
            env: all,
            logs,
            _dir: Some(dir),
        }
    }

    /// Every byte of the server's data directory (the database, its write-ahead log),
    /// or with PostgreSQL every row of its schema as text, for tests that check what is
    /// never stored.
    pub async fn data_bytes(&self) -> Vec<u8> {
        if let Some(schema) = postgres_schema(&self.database) {
            return postgres_rows(&schema).await;
        }
        let mut bytes = Vec::new();
        for entry in std::fs::read_dir(&self.data).expect("data dir").flatten() {
            if entry.path().is_file() {
                bytes.extend(std::fs::read(entry.path()).unwrap_or_default());
            }
        }
        bytes
    }

    /// Runs one statement on the server's database, whichever backend it is (`$n`
    /// placeholders, text values); returns how many rows it changed. For tests that
    /// damage what is stored.
    pub async fn execute(&self, sql: &str, values: &[&str]) -> u64 {
        let sql = sqlx::AssertSqlSafe(sql.to_owned());
        if self.database.starts_with("postgres") {
            let pool = sqlx::PgPool::connect(&self.database)
                .await
                .expect("connect");
            let mut query = sqlx::query(sql);
            for value in values {
                query = query.bind(*value);
            }
            let changed = query.execute(&pool).await.expect("execute").rows_affected();
            pool.close().await;
            changed
        } else {
            let pool = sqlx::SqlitePool::connect(&self.database)
                .await
                .expect("open");
            let mut query = sqlx::query(sql);
            for value in values {
                query = query.bind(*value);
            }
            let changed = query.execute(&pool).await.expect("execute").rows_affected();
            pool.close().await;
            changed
        }
    }

    /// The server's log so far (set `REELAY_LOG` in `start_with` for more of it).
    pub fn logs(&self) -> String {
        self.logs.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Kills the server with SIGKILL (no shutdown at all) and starts it again on the same
    /// database.
    pub async fn kill_and_restart(&mut self) {
        // It may have exited already (after `terminate`).
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
        let (child, url) = spawn(&self.database, &self.env, &self.logs).await;
        self.child = child;
        self.url = url;
    }

    /// Sets (or with `None` removes) an environment variable of the server from its
    /// next restart on.
    pub fn set_env(&mut self, key: &str, value: Option<&str>) {
        self.env.retain(|(k, _)| k != key);
        if let Some(value) = value {
            self.env.push((key.to_owned(), value.to_owned()));
        }
    }

    /// The server's node name (PostgreSQL), as `REELAY_NODE_ID` set it.
    pub fn node_id(&self) -> Option<&str> {
        self.env
            .iter()
            .rev()
            .find(|(key, _)| key == "REELAY_NODE_ID")
            .map(|(_, value)| value.as_str())
    }

    /// Kills the server with SIGKILL, for good.
    pub async fn kill(&mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }

    /// Sends SIGTERM and waits for the process to exit; returns its exit status.
    pub async fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().expect("running") as i32;
        // SAFETY-free: plain kill(2) through the shell's kill command.
        std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("kill -TERM");
        tokio::time::timeout(Duration::from_secs(20), self.child.wait())
            .await
            .expect("server stops within 20s after SIGTERM")
            .expect("wait")
    }

    pub async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> (u16, Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.url));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_owned());
        }
        let response = request.send().await.expect("request");
        let status = response.status().as_u16();
        let text = response.text().await.expect("body");
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, value)
    }

    pub async fn post(&self, path: &str, body: &str) -> (u16, Value) {
        self.request(reqwest::Method::POST, path, Some(ADMIN), Some(body))
            .await
    }

    /// A metric's value in `/metrics`, summed over the series whose labels contain
    /// `labels` (0 when there is none).
    pub async fn metric(&self, name: &str, labels: &str) -> f64 {
        let text = self
            .http
            .get(format!("{}/metrics", self.url))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text");
        text.lines()
            .filter(|line| line.starts_with(name) && line.contains(labels))
            .filter(|line| line[name.len()..].starts_with(['{', ' ']))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.request(reqwest::Method::GET, path, Some(ADMIN), None)
            .await
    }

    pub async fn delete(&self, path: &str) -> (u16, Value) {
        self.request(reqwest::Method::DELETE, path, Some(ADMIN), None)
            .await
    }

    /// Creates a webhook subscription and returns (id, secret).
    pub async fn subscribe(&self, account: &str, body: Value) -> (String, String) {
        let (status, created) = self
            .post(
                &format!("/v1/accounts/{account}/subscriptions"),
                &body.to_string(),
            )
            .await;
        assert_eq!(status, 201, "subscription refused: {created}");
        (
            created["id"].as_str().expect("id").to_owned(),
            created["secret"].as_str().expect("secret").to_owned(),
        )
    }

    /// Subscribes the receiver's `path` in the account "vimond" with `filter` (the
    /// subscription body without its endpoint), and tells the receiver the secret and
    /// the answers to give. Returns (id, secret).
    pub async fn subscribe_receiver(
        &self,
        receiver: &Receiver,
        path: &str,
        mut filter: Value,
        script: &[Response],
    ) -> (String, String) {
        filter["endpoint"] = Value::String(receiver.url(path));
        let (id, secret) = self.subscribe("vimond", filter).await;
        receiver.hook(path, &secret, script).await;
        (id, secret)
    }

    /// Every stored event of an account.
    pub async fn stored_events(&self, account: &str) -> Vec<Value> {
        let (status, page) = self
            .get(&format!("/v1/accounts/{account}/events?limit=1000"))
            .await;
        assert_eq!(status, 200, "{page}");
        page["events"].as_array().expect("events").clone()
    }
}

/// Set by `scripts/test` for the suite's PostgreSQL run: a scratch database, created for
/// the run and dropped after it.
const POSTGRES_URL: &str = "REELAY_TEST_POSTGRES_URL";

/// The database a new test server uses: a SQLite file in its data directory, or a fresh
/// schema in the run's PostgreSQL database.
pub async fn scratch_database(data: &Path) -> String {
    let Ok(base) = std::env::var(POSTGRES_URL) else {
        return format!("sqlite://{}/reelay.db", data.display());
    };
    let schema = format!("t_{}", uuid::Uuid::new_v4().simple());
    let mut connection = <sqlx::PgConnection as sqlx::Connection>::connect(&base)
        .await
        .expect("connect to the test PostgreSQL database");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
        .execute(&mut connection)
        .await
        .expect("create a schema");
    let separator = if base.contains('?') { '&' } else { '?' };
    format!("{base}{separator}options=-c%20search_path%3D{schema}")
}

/// The schema of a PostgreSQL test database URL.
fn postgres_schema(database: &str) -> Option<String> {
    database
        .split("search_path%3D")
        .nth(1)
        .map(|schema| schema.split('&').next().unwrap_or(schema).to_owned())
}

/// Every row of every table of `schema`, as text.
async fn postgres_rows(schema: &str) -> Vec<u8> {
    let base = std::env::var(POSTGRES_URL).expect("a PostgreSQL run");
    let pool = sqlx::PgPool::connect(&base).await.expect("connect");
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables WHERE table_schema = $1",
    )
    .bind(schema)
    .fetch_all(&pool)
    .await
    .expect("list tables");
    let mut bytes = Vec::new();
    for table in tables {
        let rows: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT t::text FROM {schema}.{table} t"
        )))
        .fetch_all(&pool)
        .await
        .expect("read a table");
        for row in rows {
            bytes.extend(row.into_bytes());
            bytes.push(b'\n');
        }
    }
    bytes
}

async fn spawn(
    database: &str,
    env: &[(String, String)],
    logs: &Arc<Mutex<String>>,
) -> (Child, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_reelay"));
    command
        .arg("serve")
        .env("REELAY_LISTEN", "127.0.0.1:0")
        .env("REELAY_DATABASE_URL", database)
        .env("REELAY_ADMIN_TOKEN", ADMIN)
        .env("REELAY_LOG", "warn,reelay=info")
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = command.spawn().expect("start reelay");
    // The log is kept for tests that read it, and still shown as the test's output.
    let stderr = child.stderr.take().expect("stderr");
    let kept = logs.clone();
    tokio::spawn(async move {
        // Bytes, not `lines()`: a line that is not UTF-8 must not stop the draining (the
        // server would block on a full pipe).
        let mut reader = BufReader::new(stderr);
        let mut line = Vec::new();
        while reader.read_until(b'\n', &mut line).await.unwrap_or(0) > 0 {
            let text = String::from_utf8_lossy(&line);
            eprint!("{text}");
            kept.lock()
                .unwrap_or_else(|e| e.into_inner())
                .push_str(&text);
            line.clear();
        }
    });
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let url = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.expect("read stdout") {
            if let Some(url) = line.strip_prefix("reelay listening on ") {
                return url.to_owned();
            }
        }
        panic!("reelay exited before listening")
    })
    .await
    .expect("reelay starts within 30s");
    // Keep draining stdout so the server never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, url)
}

/// Polls `check` until it returns `Some`, or panics after `within`.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if Instant::now() > deadline {
            panic!("timed out after {within:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
