//! The durable store: the event log, subscriptions with their cursors, the retry set,
//! attempt records, API keys, the accounts' user-token verification settings and the
//! server's own secrets.
//!
//! Writes that sit on the hot path (appending events, recording delivery progress) go
//! through one writer thread (`writer`) that commits whatever has queued up in a single
//! transaction: concurrent publishers share one fsync (group commit). Everything else is
//! a plain query on the connection pool (`database`). Both are written once for both
//! backends: the writer's statements in `statements`, the pool's in `database` and
//! `retention`.
//!
//! Two backends: an embedded SQLite file (the default; one process) and PostgreSQL
//! (several processes may share it: see `postgres`).

/// Runs the same statements on whichever pool this is: `$body` is compiled once per
/// backend, with `$pool` bound to that backend's pool.
macro_rules! on_pool {
    ($self:expr, |$pool:ident| $body:expr) => {
        match &$self.pool {
            $crate::store::database::Pool::Sqlite($pool) => $body,
            $crate::store::database::Pool::Postgres($pool) => $body,
        }
    };
}

mod database;
mod derive;
pub mod disk;
mod postgres;
mod retention;
mod rows;
mod sealing;
mod sqlite;
mod statements;
mod writer;

use std::sync::Arc;

use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio_util::task::TaskTracker;

use crate::config::Durability;
pub use crate::model::KeyOwner;
use crate::model::{DisabledReason, Millis, NewEvent, StoredEvent};

pub use database::{Backend, Database, PageSize, RetrySetCount, SubscriptionPage, WantedEvents};
pub use derive::Derivation;
pub use postgres::Cluster;
pub use retention::{PassReport, RetentionPolicy, RetentionState, run_retention};
pub use sealing::{Sealer, SecretKey};
use sqlite::LogConnection;
pub use writer::CommittedBatch;

/// Errors of the storage layer. Callers log them; clients only learn that storage failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database error: {0}")]
    Log(#[from] rusqlite::Error),
    #[error(
        "an in-memory SQLite database is not supported: give a file, e.g. sqlite://reelay-data/reelay.db"
    )]
    InMemory,
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("cannot create the data directory {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error("the key of stored secrets: {0}")]
    SecretKey(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("commit failed: {0}")]
    CommitFailed(String),
    /// The log writer found its sequence numbers in a state it cannot append after (see
    /// [`Store::halted`]): nothing more is appended until the log is repaired.
    #[error("the event log is halted: {0}")]
    LogHalted(String),
    #[error("the store is shutting down")]
    Closed,
    /// The database does not commit as `--durability` asks.
    #[error("durability: {0}")]
    Durability(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// What became of one event handed to [`Store::append`].
#[derive(Debug, Clone, PartialEq)]
pub enum Appended {
    /// Newly committed at this position.
    Stored(Arc<StoredEvent>),
    /// An event with the same account and id was already in the log (or earlier in the
    /// same request): nothing new was stored.
    Duplicate { id: String },
}

impl Appended {
    pub fn id(&self) -> &str {
        match self {
            Appended::Stored(event) => &event.id,
            Appended::Duplicate { id } => id,
        }
    }
}

/// Filters of the event query API.
#[derive(Debug, Clone, Default)]
pub struct EventQuery {
    pub topic: Option<String>,
    pub event: Option<String>,
    /// Only events of this entity (its key: `assetId`, `categoryId`, …).
    pub entity: Option<String>,
    /// Only events committed at or after this time (epoch milliseconds).
    pub since: Option<Millis>,
    /// Only events with a sequence number above this.
    pub after: Option<i64>,
    pub limit: u32,
}

/// An account the server knows of (from its keys, subscriptions or events), with counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountSummary {
    pub account: String,
    pub keys: i64,
    pub subscriptions: i64,
    pub events: i64,
}

/// One subscription's retry-set entry for one event (incremental deliveries only).
#[derive(Debug, Clone, PartialEq)]
pub struct EventRetry {
    pub subscription_id: String,
    pub attempts: u32,
    pub next_attempt_at: Millis,
    pub last_error: String,
    pub dead_at: Option<Millis>,
}

/// What an unused portal link opens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortalLink {
    pub account: String,
    pub scopes: Vec<crate::model::Scope>,
    pub expires_at: Millis,
}

/// The state of a delivery after an attempt, as the dispatcher decided it.
#[derive(Debug, Clone, PartialEq)]
pub enum RetryState {
    /// Delivered: remove it from the retry set (if it was there).
    Delivered,
    /// Failed; try again at `next_attempt_at`.
    Scheduled {
        attempts: u32,
        next_attempt_at: Millis,
        error: String,
    },
    /// Out of retries: kept as a dead letter.
    Dead { attempts: u32, error: String },
}

#[derive(Debug, Clone, PartialEq)]
pub struct RetryUpdate {
    pub seq: i64,
    /// The resync run the delivery belongs to; `None` for an incremental delivery.
    pub resync_id: Option<String>,
    pub state: RetryState,
}

/// One attempt to deliver one event to one subscription.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptRecord {
    pub seq: i64,
    pub event_id: String,
    /// The resync run the delivery belongs to; `None` for an incremental delivery.
    pub resync_id: Option<String>,
    pub attempt: u32,
    pub at: Millis,
    /// `delivered`, `failed` or `dead`.
    pub outcome: &'static str,
    pub status: Option<u16>,
    pub error: Option<String>,
    pub latency_ms: i64,
    pub response: Option<String>,
    pub next_attempt_at: Option<Millis>,
}

/// How the subscription's endpoint is doing, for the disable rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Succeeded { at: Millis },
    Failed { at: Millis },
}

/// Everything a dispatcher learned about one subscription since its last report,
/// written in one transaction so the cursor never passes a failure that is not yet in
/// the retry set.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Progress {
    pub subscription_id: String,
    pub cursor: Option<i64>,
    /// Deliveries that succeeded at the first attempt since the last report.
    pub delivered: u64,
    /// Failed attempts and retries (a first-attempt success has no record of its own).
    pub attempts: Vec<AttemptRecord>,
    pub retries: Vec<RetryUpdate>,
    pub health: Option<Health>,
    pub disable: Option<DisabledReason>,
    /// A resync run's progress: saved with the retries of the deliveries before it, so
    /// the position never passes a failure that is not yet in the retry set. Boxed: rare,
    /// and every queued write would carry its size.
    pub resync: Option<Box<ResyncProgress>>,
}

/// Where a resync run stands, as its runner reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct ResyncProgress {
    pub id: String,
    /// Entities sent so far (delivered or in the retry set), in all.
    pub sent: u64,
    /// Where to go on from; `None` when the run is over.
    pub position: Option<ResyncPosition>,
    pub completed_at: Option<Millis>,
}

/// A resync's place in the (type, id) order: every entity of the run's types before
/// `entity_type`, and of `entity_type` up to `after_id` (`""`: none yet), was sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResyncPosition {
    pub entity_type: String,
    pub after_id: String,
}

/// A full resync of one subscription: the latest event of each live entity of `types`.
#[derive(Debug, Clone, PartialEq)]
pub struct ResyncRun {
    pub id: String,
    pub subscription_id: String,
    pub account: String,
    /// Entity types, sorted: the run sends them in this order.
    pub types: Vec<String>,
    /// The log head when the run started: the subscription's incremental deliveries
    /// cover every change after it.
    pub snapshot_seq: i64,
    /// Live entities the subscription would receive, counted when the run started.
    pub total: u64,
    pub sent: u64,
    /// `None` once completed.
    pub position: Option<ResyncPosition>,
    pub started_at: Millis,
    pub completed_at: Option<Millis>,
}

/// How many live entities of a type have their latest event of this name and topic
/// (what a subscription's filter decides on).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveEntityCount {
    pub name: String,
    pub topic: String,
    pub count: u64,
}

/// A retry that is due, claimed for one attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct DueRetry {
    pub subscription_id: String,
    pub seq: i64,
    pub resync_id: Option<String>,
    pub attempts: u32,
}

/// An attempt as the deliveries API shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredAttempt {
    pub id: i64,
    pub record: AttemptRecord,
}

/// Retry-set entries of a subscription (pending and dead).
#[derive(Debug, Clone, PartialEq)]
pub struct RetryEntry {
    pub seq: i64,
    pub event_id: String,
    pub resync_id: Option<String>,
    pub attempts: u32,
    pub next_attempt_at: Millis,
    pub last_error: String,
    pub dead_at: Option<Millis>,
}

/// A catalog entity's latest state (mirroring): the event that set it, and whether that
/// event deleted it.
#[derive(Debug, Clone, PartialEq)]
pub struct EntityState {
    pub entity_type: String,
    pub id: String,
    pub deleted: bool,
    pub event: StoredEvent,
}

/// How to open the store.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    pub durability: Durability,
    /// With PostgreSQL: this node's name among those sharing the database (random if
    /// not given).
    pub node_id: Option<String>,
    /// With PostgreSQL: the most connections to open.
    pub max_connections: u32,
    /// The key stored secrets are encrypted with.
    pub secret_key: SecretKey,
    /// With SQLite: the most pages the database may have (`PRAGMA max_page_count`), to
    /// simulate a full disk in tests.
    pub sqlite_max_page_count: Option<u64>,
}

impl Default for StoreOptions {
    fn default() -> StoreOptions {
        StoreOptions {
            durability: Durability::Fsync,
            node_id: None,
            max_connections: 16,
            secret_key: SecretKey::default(),
            sqlite_max_page_count: None,
        }
    }
}

/// The handle everyone shares: cheap to clone.
#[derive(Clone)]
pub struct Store {
    db: Database,
    writes: mpsc::Sender<writer::WriteOp>,
    committed: broadcast::Sender<Arc<CommittedBatch>>,
    head: watch::Receiver<i64>,
    halted: writer::Halted,
    failing: writer::Failing,
}

/// Checkpoints the WAL every second while the store is open (it is open as long as a
/// handle to the writer queue exists).
async fn checkpoints(db: Database, open: mpsc::WeakSender<writer::WriteOp>) {
    use std::time::Duration;
    let mut pause = Duration::from_secs(1);
    loop {
        tokio::time::sleep(pause).await;
        if open.upgrade().is_none() {
            return;
        }
        // While the WAL is too long, checkpoint again soon: each passive pass copies
        // what was written since, until a short restart can finish the job.
        pause = match db.checkpoint().await {
            Ok(true) => Duration::from_millis(50),
            Ok(false) => Duration::from_secs(1),
            Err(error) => {
                tracing::warn!(%error, "WAL checkpoint failed; will try again");
                Duration::from_secs(1)
            }
        };
    }
}

/// How many committed batches the in-memory hand-off keeps for slow dispatchers; one
/// that falls further behind reads the log from the database instead.
const COMMITTED_BACKLOG: usize = 64;

impl Store {
    /// Opens (creating if needed) the database, runs migrations and starts the writer,
    /// which derives events as `derivation` says.
    pub async fn open(
        url: &str,
        options: &StoreOptions,
        derivation: Derivation,
        tasks: &TaskTracker,
    ) -> Result<Store> {
        let durability = options.durability;
        let db = Database::open(url, options).await?;
        // The head comes from the log alone: a cursor is a subscriber's claim, and one
        // past the head (a replay asked for before replays were checked, or a position
        // an old writer gave a duplicate) must not move where new events go.
        let head_seq = db.head().await?;
        let clamped = db.clamp_cursors(head_seq).await?;
        if !clamped.is_empty() {
            tracing::warn!(
                subscriptions = ?clamped,
                head = head_seq,
                "cursors past the log head were moved back to it"
            );
        }
        let halted = writer::Halted::default();
        let failing = writer::Failing::default();
        let (committed, _) = broadcast::channel(COMMITTED_BACKLOG);
        let (head_tx, head) = watch::channel(head_seq);
        let (writes, queue) = mpsc::channel(4096);
        let (log, announce) = match &db.pool {
            database::Pool::Sqlite(_) => (
                writer::Log::Sqlite(sqlite::log_connection(
                    url,
                    durability,
                    options.sqlite_max_page_count,
                )?),
                writer::Announce::Dispatchers {
                    committed: committed.clone(),
                    head: head_tx,
                },
            ),
            database::Pool::Postgres(pool) => {
                let (follower, local) = mpsc::unbounded_channel();
                tasks.spawn(postgres::follow_log(
                    db.clone(),
                    pool.clone(),
                    local,
                    committed.clone(),
                    head_tx.clone(),
                ));
                (
                    writer::Log::Postgres {
                        db: db.clone(),
                        pool: postgres::log_pool(url, durability, pool).await?,
                    },
                    writer::Announce::Follower {
                        follower,
                        head: head_tx,
                    },
                )
            }
        };
        let writer = writer::Writer::new(
            log,
            queue,
            announce,
            head_seq,
            derivation,
            halted.clone(),
            failing.clone(),
        );
        // The writer blocks on the database and its fsync: it gets a thread of its own.
        tasks.spawn(async move {
            if let Err(error) = tokio::task::spawn_blocking(move || writer.run()).await {
                tracing::error!(%error, "the log writer stopped");
            }
        });
        if db.backend() == Backend::Sqlite {
            tasks.spawn(checkpoints(db.clone(), writes.downgrade()));
        }
        Ok(Store {
            db,
            writes,
            committed,
            head,
            halted,
            failing,
        })
    }

    /// Why the last commit of the log writer failed, while no commit has succeeded
    /// since (a full disk, the database down): the store cannot write.
    pub fn write_failure(&self) -> Option<String> {
        self.failing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// After a failed append, whether the store can write again: a write as large as a
    /// few events, taken back in the same transaction. Clears the failure when it can,
    /// so a store that got its space back says so before the next publish.
    pub async fn probe_write(&self) -> Result<()> {
        self.db.probe_write().await?;
        *self.failing.lock().unwrap_or_else(|e| e.into_inner()) = None;
        Ok(())
    }

    /// Why the log writer stopped appending, if it has: its sequence numbers reached a
    /// state it cannot go on from (the largest sequence number, a negative head). Every
    /// publish fails meanwhile, and `/healthz` says why.
    pub fn halted(&self) -> Option<&str> {
        self.halted.get().map(String::as_str)
    }

    /// Appends events to the log; returns once they are committed (durable per the
    /// configured [`Durability`]). The result has one entry per input, in order.
    pub async fn append(&self, events: Vec<NewEvent>) -> Result<Vec<Appended>> {
        self.append_traced(events, None).await
    }

    /// [`Store::append`] for a traced publish: the group commit gets a span under
    /// `trace` (the publish's span).
    pub async fn append_traced(
        &self,
        events: Vec<NewEvent>,
        trace: Option<opentelemetry::trace::SpanContext>,
    ) -> Result<Vec<Appended>> {
        if let Some(reason) = self.halted() {
            return Err(StoreError::LogHalted(reason.to_owned()));
        }
        let (reply, answer) = oneshot::channel();
        self.writes
            .send(writer::WriteOp::Append {
                events,
                trace,
                reply,
            })
            .await
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// Queues a dispatcher's progress report for the next group commit.
    pub async fn record_progress(&self, progress: Progress) -> Result<()> {
        self.writes
            .send(writer::WriteOp::Progress(progress))
            .await
            .map_err(|_| StoreError::Closed)
    }

    /// Waits until everything queued before this call is committed.
    pub async fn flush(&self) -> Result<()> {
        let (reply, answer) = oneshot::channel();
        self.writes
            .send(writer::WriteOp::Flush(reply))
            .await
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)
    }

    /// Saves what is queued, then stops the log writer: later writes through any handle
    /// fail with [`StoreError::Closed`]. For the server's shutdown.
    pub async fn close(self) -> Result<()> {
        let (reply, answer) = oneshot::channel();
        self.writes
            .send(writer::WriteOp::Close(reply))
            .await
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)
    }

    /// Committed batches, in commit order, as they happen.
    pub fn subscribe_committed(&self) -> broadcast::Receiver<Arc<CommittedBatch>> {
        self.committed.subscribe()
    }

    /// The highest sequence number handed to this node's dispatchers so far.
    pub fn head(&self) -> i64 {
        *self.head.borrow()
    }

    /// Where the log ends now, for a new subscription that receives what is published
    /// from now on: with several nodes, the shared head (this node may not have seen an
    /// event another node just acknowledged).
    pub async fn log_position(&self) -> Result<i64> {
        match self.db.backend() {
            Backend::Sqlite => Ok(self.head()),
            Backend::Postgres => self.db.head().await,
        }
    }

    /// The underlying database, for reads and for writes off the hot path.
    pub fn db(&self) -> &Database {
        &self.db
    }
}
