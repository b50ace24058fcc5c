//! The SQLite backend: every SQL statement Reelay runs against the embedded database.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
};
use sqlx::{FromRow, QueryBuilder, Row, Sqlite};

use super::derive::Derivation;
use super::writer::{LogRow, Written};
use super::{
    AttemptRecord, DueRetry, EntityState, EventQuery, Health, KeyOwner, LiveEntityCount, Progress,
    Result, ResyncPosition, ResyncRun, RetryEntry, RetryState, StoreError, StoredAttempt,
};
use crate::config::Durability;
use crate::model::{
    Destination, DisabledReason, EventFilter, Format, Millis, NewSubscription, StoredEvent,
    Subscription, SubscriptionKind, TokenVerification,
};

/// WAL frames (pages) past which a checkpoint restarts the WAL: 64 MB of 4 KB pages.
const WAL_RESTART_FRAMES: i64 = 16_384;
/// A restarting checkpoint holds writers back while it copies what a passive one left:
/// it is only started when that is at most this many frames (4 MB), a few milliseconds.
const RESTART_AT_MOST_FRAMES: i64 = 1_024;
/// Past this (1 GB) the WAL is restarted even when that means a long stall: writes have
/// outrun passive checkpoints for too long.
const WAL_FORCE_RESTART_FRAMES: i64 = 262_144;

/// In WAL mode FULL syncs the log at every commit: an acknowledged event is on disk.
/// NORMAL syncs only at checkpoints: a power cut may lose the last commits.
fn synchronous(durability: Durability) -> &'static str {
    match durability {
        Durability::Fsync => "FULL",
        Durability::Relaxed => "NORMAL",
    }
}

/// Page size of a new database (an existing one keeps its own). Every event lands on a
/// random page of the `(account, event_id)` index (ids are random UUIDs), and a commit
/// writes each page it dirtied to the WAL whole: 2 KB pages halve those bytes. Measured
/// with `reelay bench`: 1 subscription 23.4k -> 25.0k deliveries/s over 4 KB pages, same
/// server CPU; 1 KB pages cost more CPU (deeper trees, overflow pages for large events).
const PAGE_SIZE: u32 = 2048;

#[derive(Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    /// The database file, for the log writer's own connection.
    path: PathBuf,
}

const EVENT_COLUMNS: &str =
    "seq, account, event_id, name, topic, entity_key, occurred_at, received_at, body";

impl SqliteStore {
    pub async fn open(url: &str, durability: Durability) -> Result<SqliteStore> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .page_size(PAGE_SIZE)
            .journal_mode(SqliteJournalMode::Wal)
            .pragma("synchronous", synchronous(durability))
            .busy_timeout(Duration::from_secs(10))
            .pragma("foreign_keys", "ON")
            // 16 MB of page cache per connection (the default is 2 MB).
            .pragma("cache_size", "-16000")
            // Commits never checkpoint (copy the WAL back into the database and fsync it):
            // that would stall every publisher queued behind that commit. A background
            // task checkpoints instead ([`SqliteStore::checkpoint`]).
            .pragma("wal_autocheckpoint", "0")
            // After a checkpoint restarts the WAL, shrink its file back to this size.
            .pragma("journal_size_limit", "67108864");
        let path = options.get_filename().to_path_buf();
        if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::DataDir {
                path: dir.display().to_string(),
                source,
            })?;
        }
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(options)
            .await?;
        sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
        Ok(SqliteStore { pool, path })
    }

    /// Copies what it can of the WAL into the database without blocking writers or
    /// readers (PASSIVE). Under constant writes a passive checkpoint never reaches the end
    /// of the WAL, so the WAL would grow without end: once it is past
    /// `WAL_RESTART_FRAMES`, and a passive checkpoint has left little to copy, a
    /// restarting checkpoint copies that little and starts the WAL over. A restart holds
    /// writers back while it runs, so it is only started when it is short: a long one
    /// stalls every publisher. Returns whether the WAL is still too long (call again soon).
    pub async fn checkpoint(&self) -> Result<bool> {
        let started = std::time::Instant::now();
        let row = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
            .fetch_one(&self.pool)
            .await?;
        metrics::histogram!("reelay_checkpoint_seconds", "mode" => "passive")
            .record(started.elapsed().as_secs_f64());
        let (frames, copied): (i64, i64) = (row.try_get(1)?, row.try_get(2)?);
        if frames <= WAL_RESTART_FRAMES {
            return Ok(false);
        }
        // Past `WAL_FORCE_RESTART_FRAMES` the disk matters more than a stall.
        if frames - copied > RESTART_AT_MOST_FRAMES && frames < WAL_FORCE_RESTART_FRAMES {
            return Ok(true);
        }
        let started = std::time::Instant::now();
        let row = sqlx::query("PRAGMA wal_checkpoint(RESTART)")
            .fetch_one(&self.pool)
            .await?;
        metrics::histogram!("reelay_checkpoint_seconds", "mode" => "restart")
            .record(started.elapsed().as_secs_f64());
        // Busy: a reader or writer kept it from finishing; the WAL is still long.
        let busy: i64 = row.try_get(0)?;
        Ok(busy != 0)
    }

    /// The last position handed out: the last event, or a cursor past it. Writers before
    /// this one could save a cursor on a position that only a duplicate had taken; new
    /// events start after it, so that cursor skips none of them.
    pub async fn head(&self) -> Result<i64> {
        let head: Option<i64> = sqlx::query_scalar(
            "SELECT MAX(position) FROM (SELECT MAX(seq) AS position FROM events \
             UNION ALL SELECT MAX(cursor) FROM subscriptions)",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(head.unwrap_or(0))
    }

    /// The log writer's own connection (see [`LogConnection`]), with the pool's settings.
    pub(super) fn log_connection(&self, durability: Durability) -> Result<LogConnection> {
        if self.path.as_os_str().is_empty() || self.path.as_os_str() == ":memory:" {
            return Err(StoreError::InMemory);
        }
        let connection = rusqlite::Connection::open(&self.path)?;
        connection.busy_timeout(Duration::from_secs(10))?;
        connection.execute_batch(&format!(
            "PRAGMA synchronous = {}; PRAGMA foreign_keys = ON; PRAGMA cache_size = -16000; \
             PRAGMA wal_autocheckpoint = 0; PRAGMA journal_size_limit = 67108864;",
            synchronous(durability)
        ))?;
        Ok(LogConnection(connection))
    }

    /// Events of one account after `after` and up to `upto`, in log order: how a
    /// dispatcher that fell behind the in-memory hand-off catches up. `upto` is the
    /// durable head: a commit still waiting for its fsync is not dispatched yet.
    pub async fn events_after(
        &self,
        account: &str,
        after: i64,
        upto: i64,
        limit: u32,
    ) -> Result<Vec<StoredEvent>> {
        let rows = sqlx::query_as::<_, EventRow>(
            "SELECT seq, account, event_id, name, topic, entity_key, occurred_at, received_at, body \
             FROM events WHERE account = ? AND seq > ? AND seq <= ? ORDER BY seq LIMIT ?",
        )
        .bind(account)
        .bind(after)
        .bind(upto)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(StoredEvent::from).collect())
    }

    /// A page of an account's entities of one type, by id, with the event that set each
    /// one's state: ids after `after`, at most `limit`.
    pub async fn list_entities(
        &self,
        account: &str,
        entity_type: &str,
        after: &str,
        limit: u32,
    ) -> Result<Vec<EntityState>> {
        let rows = sqlx::query(
            "SELECT n.type, n.id, n.deleted, e.seq, e.account, e.event_id, e.name, e.topic, \
             e.entity_key, e.occurred_at, e.received_at, e.body \
             FROM entities n JOIN events e ON e.seq = n.seq \
             WHERE n.account = ? AND n.type = ? AND n.id > ? ORDER BY n.id LIMIT ?",
        )
        .bind(account)
        .bind(entity_type)
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(entity_from_row).collect()
    }

    /// One entity's state, with the event that set it.
    pub async fn get_entity(
        &self,
        account: &str,
        entity_type: &str,
        id: &str,
    ) -> Result<Option<EntityState>> {
        let row = sqlx::query(
            "SELECT n.type, n.id, n.deleted, e.seq, e.account, e.event_id, e.name, e.topic, \
             e.entity_key, e.occurred_at, e.received_at, e.body \
             FROM entities n JOIN events e ON e.seq = n.seq \
             WHERE n.account = ? AND n.type = ? AND n.id = ?",
        )
        .bind(account)
        .bind(entity_type)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(entity_from_row).transpose()
    }

    /// A page of an account's live (not deleted) entities of one type, by id, with the
    /// event that set each one's state: ids after `after`, at most `limit`. What a resync
    /// sends; keyset paging on the primary key, so each page costs the same.
    pub async fn live_entities(
        &self,
        account: &str,
        entity_type: &str,
        after: &str,
        limit: u32,
    ) -> Result<Vec<EntityState>> {
        let rows = sqlx::query(
            "SELECT n.type, n.id, n.deleted, e.seq, e.account, e.event_id, e.name, e.topic, \
             e.entity_key, e.occurred_at, e.received_at, e.body \
             FROM entities n JOIN events e ON e.seq = n.seq \
             WHERE n.account = ? AND n.type = ? AND n.id > ? AND n.deleted = 0 ORDER BY n.id LIMIT ?",
        )
        .bind(account)
        .bind(entity_type)
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(entity_from_row).collect()
    }

    /// How many live entities of a type there are, grouped by the name and topic of their
    /// latest event: a resync's total, once a subscription's filter has picked its groups.
    pub async fn live_entity_counts(
        &self,
        account: &str,
        entity_type: &str,
    ) -> Result<Vec<LiveEntityCount>> {
        let rows = sqlx::query(
            "SELECT e.name, e.topic, COUNT(*) AS entities \
             FROM entities n JOIN events e ON e.seq = n.seq \
             WHERE n.account = ? AND n.type = ? AND n.deleted = 0 GROUP BY e.name, e.topic",
        )
        .bind(account)
        .bind(entity_type)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(LiveEntityCount {
                    name: row.try_get("name")?,
                    topic: row.try_get("topic")?,
                    count: u64::try_from(row.try_get::<i64, _>("entities")?).unwrap_or(0),
                })
            })
            .collect()
    }

    /// Stores a new resync run; false (and nothing stored) when the subscription already
    /// has one running (the unique index on running runs decides, so two requests at
    /// once cannot both start one).
    pub async fn insert_resync_run(&self, run: &ResyncRun) -> Result<bool> {
        let (position_type, position_id) = match &run.position {
            Some(position) => (
                Some(position.entity_type.as_str()),
                position.after_id.as_str(),
            ),
            None => (None, ""),
        };
        let inserted = sqlx::query(
            "INSERT INTO resync_runs (id, subscription_id, account, types, snapshot_seq, total, sent, \
             position_type, position_id, started_at, completed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
             ON CONFLICT DO NOTHING",
        )
        .bind(&run.id)
        .bind(&run.subscription_id)
        .bind(&run.account)
        .bind(to_json(&run.types))
        .bind(run.snapshot_seq)
        .bind(run.total as i64)
        .bind(run.sent as i64)
        .bind(position_type)
        .bind(position_id)
        .bind(run.started_at)
        .bind(run.completed_at)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(inserted == 1)
    }

    /// A subscription's latest resync run, running or not.
    pub async fn latest_resync_run(&self, subscription_id: &str) -> Result<Option<ResyncRun>> {
        let row: Option<ResyncRunRow> = sqlx::query_as(
            "SELECT * FROM resync_runs WHERE subscription_id = ? \
             ORDER BY started_at DESC, id DESC LIMIT 1",
        )
        .bind(subscription_id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(ResyncRun::try_from).transpose()
    }

    /// Every resync run not completed yet, of every subscription: what dispatch resumes.
    pub async fn running_resync_runs(&self) -> Result<Vec<ResyncRun>> {
        let rows: Vec<ResyncRunRow> = sqlx::query_as(
            "SELECT * FROM resync_runs WHERE completed_at IS NULL ORDER BY started_at, id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(ResyncRun::try_from).collect()
    }

    pub async fn event_by_seq(&self, seq: i64) -> Result<Option<StoredEvent>> {
        let row = sqlx::query_as::<_, EventRow>(
            "SELECT seq, account, event_id, name, topic, entity_key, occurred_at, received_at, body \
             FROM events WHERE seq = ?",
        )
        .bind(seq)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(StoredEvent::from))
    }

    pub async fn query_events(
        &self,
        account: &str,
        query: &EventQuery,
    ) -> Result<Vec<StoredEvent>> {
        let mut select: QueryBuilder<Sqlite> = QueryBuilder::new(format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE account = "
        ));
        select.push_bind(account);
        if let Some(topic) = &query.topic {
            select.push(" AND topic = ").push_bind(topic);
        }
        if let Some(event) = &query.event {
            select.push(" AND name = ").push_bind(event);
        }
        select
            .push(" AND seq > ")
            .push_bind(query.after.unwrap_or(0))
            .push(" ORDER BY seq LIMIT ")
            .push_bind(query.limit);
        let rows: Vec<EventRow> = select.build_query_as().fetch_all(&self.pool).await?;
        Ok(rows.into_iter().map(StoredEvent::from).collect())
    }

    /// The last sequence number committed before `time`: replaying "from a time" starts
    /// after it.
    pub async fn last_seq_before(&self, time: Millis) -> Result<i64> {
        let seq: Option<i64> =
            sqlx::query_scalar("SELECT MAX(seq) FROM events WHERE received_at < ?")
                .bind(time)
                .fetch_one(&self.pool)
                .await?;
        Ok(seq.unwrap_or(0))
    }

    pub async fn insert_subscription(
        &self,
        subscription: &NewSubscription,
        cursor: i64,
        created_at: Millis,
    ) -> Result<()> {
        let (job_id, expires_at) = match &subscription.kind {
            SubscriptionKind::Standing => (None, None),
            SubscriptionKind::JobCallback { job, expires_at } => (Some(job), Some(*expires_at)),
        };
        sqlx::query(
            "INSERT INTO subscriptions (id, account, destination, events, topics, format, secret, created_at, cursor, \
             job_id, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&subscription.id)
        .bind(&subscription.account)
        .bind(to_json(&subscription.destination))
        .bind(to_json(&subscription.filter.events))
        .bind(to_json(&subscription.filter.topics))
        .bind(subscription.format.as_str())
        .bind(&subscription.secret)
        .bind(created_at)
        .bind(cursor)
        .bind(job_id)
        .bind(expires_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The standing subscriptions of one account (what the subscription API lists; job
    /// callbacks are listed per job).
    pub async fn list_subscriptions(&self, account: &str) -> Result<Vec<Subscription>> {
        let rows: Vec<SubscriptionRow> = sqlx::query_as(
            "SELECT * FROM subscriptions WHERE account = ? AND job_id IS NULL ORDER BY created_at, id",
        )
        .bind(account)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(Subscription::try_from).collect()
    }

    /// Every subscription of every kind and account: what dispatch runs.
    pub async fn all_subscriptions(&self) -> Result<Vec<Subscription>> {
        let rows: Vec<SubscriptionRow> =
            sqlx::query_as("SELECT * FROM subscriptions ORDER BY created_at, id")
                .fetch_all(&self.pool)
                .await?;
        rows.into_iter().map(Subscription::try_from).collect()
    }

    /// The callback registrations of one job.
    pub async fn job_callbacks(&self, account: &str, job: &str) -> Result<Vec<Subscription>> {
        let rows: Vec<SubscriptionRow> = sqlx::query_as(
            "SELECT * FROM subscriptions WHERE account = ? AND job_id = ? ORDER BY created_at, id",
        )
        .bind(account)
        .bind(job)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(Subscription::try_from).collect()
    }

    /// Deletes the job callbacks that expired by `now`, with their retry sets and
    /// attempt records; returns their ids.
    pub async fn delete_expired_callbacks(&self, now: Millis) -> Result<Vec<String>> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "DELETE FROM retries WHERE subscription_id IN \
             (SELECT id FROM subscriptions WHERE expires_at <= ?)",
        )
        .bind(now)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "DELETE FROM attempts WHERE subscription_id IN \
             (SELECT id FROM subscriptions WHERE expires_at <= ?)",
        )
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let ids: Vec<String> =
            sqlx::query_scalar("DELETE FROM subscriptions WHERE expires_at <= ? RETURNING id")
                .bind(now)
                .fetch_all(&mut *tx)
                .await?;
        tx.commit().await?;
        Ok(ids)
    }

    /// The earliest delivery of a subscription that waits for a retry (not dead).
    pub async fn first_pending_retry(&self, subscription_id: &str) -> Result<Option<i64>> {
        Ok(sqlx::query_scalar(
            "SELECT MIN(seq) FROM retries WHERE subscription_id = ? AND dead_at IS NULL",
        )
        .bind(subscription_id)
        .fetch_one(&self.pool)
        .await?)
    }

    pub async fn get_subscription(&self, account: &str, id: &str) -> Result<Option<Subscription>> {
        let row: Option<SubscriptionRow> =
            sqlx::query_as("SELECT * FROM subscriptions WHERE account = ? AND id = ?")
                .bind(account)
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        row.map(Subscription::try_from).transpose()
    }

    /// Deletes a subscription with its retry set and attempt records.
    pub async fn delete_subscription(&self, account: &str, id: &str) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let deleted = sqlx::query("DELETE FROM subscriptions WHERE account = ? AND id = ?")
            .bind(account)
            .bind(id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if deleted > 0 {
            sqlx::query("DELETE FROM retries WHERE subscription_id = ?")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM attempts WHERE subscription_id = ?")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM resync_runs WHERE subscription_id = ?")
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(deleted > 0)
    }

    /// Re-enables a disabled subscription; its waiting retries become due at once.
    pub async fn enable_subscription(&self, id: &str, now: Millis) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "UPDATE subscriptions SET disabled_code = NULL, disabled_message = NULL, disabled_at = NULL, \
             failing_since = NULL WHERE id = ?",
        )
        .bind(id)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE retries SET next_attempt_at = ? WHERE subscription_id = ? AND dead_at IS NULL",
        )
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Moves a subscription's cursor (replay) while no dispatcher runs for it.
    pub async fn set_cursor(&self, id: &str, cursor: i64) -> Result<()> {
        sqlx::query("UPDATE subscriptions SET cursor = ? WHERE id = ?")
            .bind(cursor)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Claims up to `limit` due retries of enabled subscriptions: their next attempt is
    /// pushed to `lease_until`, so a crash during the attempt only delays it.
    pub async fn claim_due_retries(
        &self,
        now: Millis,
        lease_until: Millis,
        limit: u32,
    ) -> Result<Vec<DueRetry>> {
        let rows = sqlx::query(
            "UPDATE retries SET next_attempt_at = ? WHERE rowid IN ( \
               SELECT r.rowid FROM retries r JOIN subscriptions s ON s.id = r.subscription_id \
               WHERE r.dead_at IS NULL AND r.next_attempt_at <= ? AND s.disabled_at IS NULL \
               ORDER BY r.next_attempt_at LIMIT ?) \
             RETURNING subscription_id, seq, resync_id, attempts",
        )
        .bind(lease_until)
        .bind(now)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(DueRetry {
                    subscription_id: row.try_get("subscription_id")?,
                    seq: row.try_get("seq")?,
                    resync_id: resync_from_column(row.try_get("resync_id")?),
                    attempts: row.try_get::<i64, _>("attempts")? as u32,
                })
            })
            .collect()
    }

    /// When the earliest pending retry is due.
    pub async fn next_retry_at(&self) -> Result<Option<Millis>> {
        Ok(sqlx::query_scalar(
            "SELECT MIN(r.next_attempt_at) FROM retries r JOIN subscriptions s ON s.id = r.subscription_id \
             WHERE r.dead_at IS NULL AND s.disabled_at IS NULL",
        )
        .fetch_one(&self.pool)
        .await?)
    }

    pub async fn pending_retry_count(&self) -> Result<i64> {
        Ok(
            sqlx::query_scalar("SELECT COUNT(*) FROM retries WHERE dead_at IS NULL")
                .fetch_one(&self.pool)
                .await?,
        )
    }

    /// Attempt records of a subscription, newest first.
    pub async fn list_attempts(
        &self,
        subscription_id: &str,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<StoredAttempt>> {
        let rows = sqlx::query(
            "SELECT * FROM attempts WHERE subscription_id = ? AND id < ? ORDER BY id DESC LIMIT ?",
        )
        .bind(subscription_id)
        .bind(before.unwrap_or(i64::MAX))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(attempt_from_row).collect()
    }

    /// The retry set of a subscription (pending retries and dead letters), oldest first.
    pub async fn list_retries(&self, subscription_id: &str, limit: u32) -> Result<Vec<RetryEntry>> {
        let rows = sqlx::query(
            "SELECT r.seq, r.resync_id, e.event_id, r.attempts, r.next_attempt_at, r.last_error, r.dead_at \
             FROM retries r JOIN events e ON e.seq = r.seq WHERE r.subscription_id = ? \
             ORDER BY r.seq, r.resync_id LIMIT ?",
        )
        .bind(subscription_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(RetryEntry {
                    seq: row.try_get("seq")?,
                    event_id: row.try_get("event_id")?,
                    resync_id: resync_from_column(row.try_get("resync_id")?),
                    attempts: row.try_get::<i64, _>("attempts")? as u32,
                    next_attempt_at: row.try_get("next_attempt_at")?,
                    last_error: row.try_get("last_error")?,
                    dead_at: row.try_get("dead_at")?,
                })
            })
            .collect()
    }

    pub async fn insert_key(
        &self,
        hash: &str,
        owner: &KeyOwner,
        prefix: &str,
        now: Millis,
    ) -> Result<()> {
        let account = match owner {
            KeyOwner::Admin => None,
            KeyOwner::Account(account) => Some(account.as_str()),
        };
        sqlx::query("INSERT INTO api_keys (hash, account, prefix, created_at) VALUES (?, ?, ?, ?)")
            .bind(hash)
            .bind(account)
            .bind(prefix)
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn find_key(&self, hash: &str) -> Result<Option<KeyOwner>> {
        let account: Option<Option<String>> =
            sqlx::query_scalar("SELECT account FROM api_keys WHERE hash = ?")
                .bind(hash)
                .fetch_optional(&self.pool)
                .await?;
        Ok(account.map(|account| match account {
            None => KeyOwner::Admin,
            Some(account) => KeyOwner::Account(account),
        }))
    }

    pub async fn has_admin_key(&self) -> Result<bool> {
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM api_keys WHERE account IS NULL")
            .fetch_one(&self.pool)
            .await?;
        Ok(count > 0)
    }

    /// Sets (replaces) an account's user-token verification.
    pub async fn put_token_verification(&self, settings: &TokenVerification) -> Result<()> {
        sqlx::query(
            "INSERT INTO token_verification (account, hs256_secret, public_keys, issuer, audience, leeway_seconds, updated_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?) \
             ON CONFLICT (account) DO UPDATE SET hs256_secret = excluded.hs256_secret, \
             public_keys = excluded.public_keys, issuer = excluded.issuer, audience = excluded.audience, \
             leeway_seconds = excluded.leeway_seconds, updated_at = excluded.updated_at",
        )
        .bind(&settings.account)
        .bind(&settings.hs256_secret)
        .bind(to_json(&settings.public_keys))
        .bind(&settings.issuer)
        .bind(&settings.audience)
        .bind(i64::try_from(settings.leeway_seconds).unwrap_or(i64::MAX))
        .bind(settings.updated_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn get_token_verification(&self, account: &str) -> Result<Option<TokenVerification>> {
        let row = sqlx::query(
            "SELECT account, hs256_secret, public_keys, issuer, audience, leeway_seconds, updated_at \
             FROM token_verification WHERE account = ?",
        )
        .bind(account)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let keys: String = row.try_get("public_keys")?;
        let public_keys: Vec<String> = serde_json::from_str(&keys).map_err(|_| {
            StoreError::Corrupt(format!("token verification of {account}: public_keys"))
        })?;
        Ok(Some(TokenVerification {
            account: row.try_get("account")?,
            hs256_secret: row.try_get("hs256_secret")?,
            public_keys,
            issuer: row.try_get("issuer")?,
            audience: row.try_get("audience")?,
            leeway_seconds: u64::try_from(row.try_get::<i64, _>("leeway_seconds")?).unwrap_or(0),
            updated_at: row.try_get("updated_at")?,
        }))
    }

    /// Removes an account's user-token verification; says whether there was one.
    pub async fn delete_token_verification(&self, account: &str) -> Result<bool> {
        let deleted = sqlx::query("DELETE FROM token_verification WHERE account = ?")
            .bind(account)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(deleted > 0)
    }

    /// The server secret called `name`: `candidate` becomes it if it has none yet, so
    /// it is generated once and then kept, whichever process starts first.
    pub async fn server_secret(&self, name: &str, candidate: &str, now: Millis) -> Result<String> {
        sqlx::query("INSERT INTO server_secrets (name, value, created_at) VALUES (?, ?, ?) ON CONFLICT (name) DO NOTHING")
            .bind(name)
            .bind(candidate)
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(
            sqlx::query_scalar("SELECT value FROM server_secrets WHERE name = ?")
                .bind(name)
                .fetch_one(&self.pool)
                .await?,
        )
    }
}

#[derive(FromRow)]
struct EventRow {
    seq: i64,
    account: String,
    event_id: String,
    name: String,
    topic: String,
    entity_key: Option<String>,
    occurred_at: i64,
    received_at: i64,
    body: String,
}

impl From<EventRow> for StoredEvent {
    fn from(row: EventRow) -> StoredEvent {
        StoredEvent {
            seq: row.seq,
            account: row.account,
            id: row.event_id,
            name: row.name,
            topic: row.topic,
            entity_key: row.entity_key,
            occurred_at: row.occurred_at,
            received_at: row.received_at,
            body: row.body.into(),
        }
    }
}

#[derive(FromRow)]
struct SubscriptionRow {
    id: String,
    account: String,
    destination: String,
    events: String,
    topics: String,
    format: String,
    secret: String,
    created_at: i64,
    cursor: i64,
    disabled_code: Option<String>,
    disabled_message: Option<String>,
    disabled_at: Option<i64>,
    failing_since: Option<i64>,
    last_success_at: Option<i64>,
    delivered: i64,
    job_id: Option<String>,
    expires_at: Option<i64>,
}

impl TryFrom<SubscriptionRow> for Subscription {
    type Error = StoreError;

    fn try_from(row: SubscriptionRow) -> Result<Subscription> {
        let corrupt = |what: &str| StoreError::Corrupt(format!("subscription {}: {what}", row.id));
        let destination: Destination =
            serde_json::from_str(&row.destination).map_err(|_| corrupt("destination"))?;
        let events: Vec<String> =
            serde_json::from_str(&row.events).map_err(|_| corrupt("events"))?;
        let topics: Vec<String> =
            serde_json::from_str(&row.topics).map_err(|_| corrupt("topics"))?;
        let format = Format::parse(&row.format).ok_or_else(|| corrupt("format"))?;
        let disabled = row.disabled_code.map(|code| {
            DisabledReason::from_parts(&code, row.disabled_message.unwrap_or_default())
        });
        let kind = match (row.job_id, row.expires_at) {
            (None, None) => SubscriptionKind::Standing,
            (Some(job), Some(expires_at)) => SubscriptionKind::JobCallback { job, expires_at },
            _ => return Err(corrupt("job_id and expires_at")),
        };
        Ok(Subscription {
            id: row.id,
            account: row.account,
            kind,
            destination,
            filter: EventFilter { events, topics },
            format,
            secret: row.secret,
            created_at: row.created_at,
            cursor: row.cursor,
            disabled,
            disabled_at: row.disabled_at,
            failing_since: row.failing_since,
            last_success_at: row.last_success_at,
            delivered: row.delivered as u64,
        })
    }
}

fn entity_from_row(row: &SqliteRow) -> Result<EntityState> {
    Ok(EntityState {
        entity_type: row.try_get("type")?,
        id: row.try_get("id")?,
        deleted: row.try_get::<i64, _>("deleted")? != 0,
        event: StoredEvent {
            seq: row.try_get("seq")?,
            account: row.try_get("account")?,
            id: row.try_get("event_id")?,
            name: row.try_get("name")?,
            topic: row.try_get("topic")?,
            entity_key: row.try_get("entity_key")?,
            occurred_at: row.try_get("occurred_at")?,
            received_at: row.try_get("received_at")?,
            body: row.try_get::<String, _>("body")?.into(),
        },
    })
}

fn attempt_from_row(row: &SqliteRow) -> Result<StoredAttempt> {
    let outcome: String = row.try_get("outcome")?;
    Ok(StoredAttempt {
        id: row.try_get("id")?,
        record: AttemptRecord {
            seq: row.try_get("seq")?,
            event_id: row.try_get("event_id")?,
            resync_id: row.try_get("resync_id")?,
            attempt: row.try_get::<i64, _>("attempt")? as u32,
            at: row.try_get("at")?,
            outcome: match outcome.as_str() {
                "delivered" => "delivered",
                "dead" => "dead",
                _ => "failed",
            },
            status: row
                .try_get::<Option<i64>, _>("status")?
                .and_then(|status| u16::try_from(status).ok()),
            error: row.try_get("error")?,
            latency_ms: row.try_get("latency_ms")?,
            response: row.try_get("response")?,
            next_attempt_at: row.try_get("next_attempt_at")?,
        },
    })
}

/// The retry set keys incremental deliveries with `''` (a key column cannot be NULL in
/// every database); everywhere else that is `None`.
fn resync_to_column(resync_id: Option<&str>) -> &str {
    resync_id.unwrap_or("")
}

fn resync_from_column(resync_id: String) -> Option<String> {
    (!resync_id.is_empty()).then_some(resync_id)
}

#[derive(FromRow)]
struct ResyncRunRow {
    id: String,
    subscription_id: String,
    account: String,
    types: String,
    snapshot_seq: i64,
    total: i64,
    sent: i64,
    position_type: Option<String>,
    position_id: String,
    started_at: i64,
    completed_at: Option<i64>,
}

impl TryFrom<ResyncRunRow> for ResyncRun {
    type Error = StoreError;

    fn try_from(row: ResyncRunRow) -> Result<ResyncRun> {
        let types: Vec<String> = serde_json::from_str(&row.types)
            .map_err(|_| StoreError::Corrupt(format!("resync run {}: types", row.id)))?;
        Ok(ResyncRun {
            id: row.id,
            subscription_id: row.subscription_id,
            account: row.account,
            types,
            snapshot_seq: row.snapshot_seq,
            total: u64::try_from(row.total).unwrap_or(0),
            sent: u64::try_from(row.sent).unwrap_or(0),
            position: row.position_type.map(|entity_type| ResyncPosition {
                entity_type,
                after_id: row.position_id,
            }),
            started_at: row.started_at,
            completed_at: row.completed_at,
        })
    }
}

fn to_json<T: serde::Serialize>(value: &T) -> String {
    // Serializing these plain types cannot fail.
    serde_json::to_string(value).unwrap_or_default()
}

/// The log writer's connection. It lives on the writer's own thread and talks to SQLite
/// directly (rusqlite), so a whole group commit runs in one go: an async driver would
/// send every statement to a connection thread and wait for the answer, and those round
/// trips, not SQLite, were most of a commit's time. Everything else uses the pool.
pub(super) struct LogConnection(rusqlite::Connection);

const INSERT_EVENT: &str = "INSERT INTO events (seq, account, event_id, name, topic, entity_key, \
     occurred_at, received_at, body) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) \
     ON CONFLICT (account, event_id) DO NOTHING";

/// An entity's latest state: the event with the highest sequence number wins.
const SET_ENTITY: &str = "INSERT INTO entities (account, type, id, seq, deleted) \
     VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (account, type, id) DO UPDATE SET \
     seq = excluded.seq, deleted = excluded.deleted WHERE excluded.seq > entities.seq";

/// The video's next version, in one statement: 1 for a video never seen.
const NEXT_VIDEO_VERSION: &str = "INSERT INTO video_versions (account, video, version) \
     VALUES (?1, ?2, 1) ON CONFLICT (account, video) DO UPDATE SET version = version + 1 \
     RETURNING version";

fn insert_event(insert: &mut rusqlite::CachedStatement<'_>, event: &StoredEvent) -> Result<bool> {
    let changed = insert.execute(rusqlite::params![
        event.seq,
        event.account,
        event.id,
        event.name,
        event.topic,
        event.entity_key,
        event.occurred_at,
        event.received_at,
        event.body.as_str(),
    ])?;
    // Nothing changed: an earlier commit stored this id.
    Ok(changed == 1)
}

impl LogConnection {
    /// Commits new events, the events they cause ([`Derivation`]) and progress reports
    /// in one transaction. Returns what became of each row, in order.
    pub(super) fn commit_group(
        &mut self,
        rows: &[LogRow],
        progress: &[Progress],
        derivation: &Derivation,
    ) -> Result<Vec<Written>> {
        // IMMEDIATE takes the write lock first, so another writer (the retry claims, a
        // checkpoint) makes this wait under the busy timeout instead of failing with
        // "database is locked" when a read turns into a write mid-transaction.
        let tx = self
            .0
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let mut written = Vec::with_capacity(rows.len());
        {
            let mut insert = tx.prepare_cached(INSERT_EVENT)?;
            for row in rows {
                if !insert_event(&mut insert, &row.event)? {
                    written.push(Written::Duplicate);
                    continue;
                }
                let video_change = match &row.video_change {
                    None => None,
                    Some((video, seq)) => {
                        let version: i64 = tx
                            .prepare_cached(NEXT_VIDEO_VERSION)?
                            .query_row(rusqlite::params![row.event.account, video], |r| r.get(0))?;
                        let change = derivation.video_change(&row.event, video, version, *seq);
                        // Its id is fresh and random: a conflict means the log is not
                        // what this writer thinks, and the whole commit must not stand.
                        if !insert_event(&mut insert, &change)? {
                            return Err(StoreError::Corrupt(format!(
                                "derived event id {} already taken",
                                change.id
                            )));
                        }
                        Some(change)
                    }
                };
                if let Some(entity) = &row.entity {
                    tx.prepare_cached(SET_ENTITY)?.execute(rusqlite::params![
                        row.event.account,
                        entity.entity_type,
                        entity.id,
                        row.event.seq,
                        entity.deleted,
                    ])?;
                }
                written.push(Written::Stored { video_change });
            }
        }
        for report in progress {
            apply_progress(&tx, report)?;
        }
        tx.commit()?;
        Ok(written)
    }
}

fn apply_progress(tx: &rusqlite::Transaction<'_>, report: &Progress) -> Result<()> {
    use rusqlite::params;
    let id = report.subscription_id.as_str();
    // A worker's last report can arrive after its subscription was deleted: drop it, or
    // its retries would outlive the subscription.
    let exists = tx
        .prepare_cached("SELECT 1 FROM subscriptions WHERE id = ?1")?
        .exists(params![id])?;
    if !exists {
        return Ok(());
    }
    if !report.attempts.is_empty() {
        let mut insert = tx.prepare_cached(
            "INSERT INTO attempts (subscription_id, seq, event_id, attempt, at, outcome, status, \
             error, latency_ms, response, next_attempt_at, resync_id) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
        )?;
        for attempt in &report.attempts {
            insert.execute(params![
                id,
                attempt.seq,
                attempt.event_id,
                attempt.attempt,
                attempt.at,
                attempt.outcome,
                attempt.status,
                attempt.error,
                attempt.latency_ms,
                attempt.response,
                attempt.next_attempt_at,
                attempt.resync_id,
            ])?;
        }
    }
    for update in &report.retries {
        let resync_id = resync_to_column(update.resync_id.as_deref());
        match &update.state {
            RetryState::Delivered => {
                tx.prepare_cached(
                    "DELETE FROM retries WHERE subscription_id = ?1 AND seq = ?2 AND resync_id = ?3",
                )?
                .execute(params![id, update.seq, resync_id])?;
            }
            RetryState::Scheduled {
                attempts,
                next_attempt_at,
                error,
            } => {
                tx.prepare_cached(
                    "INSERT INTO retries (subscription_id, seq, attempts, next_attempt_at, last_error, resync_id) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (subscription_id, seq, resync_id) DO UPDATE SET \
                     attempts = excluded.attempts, next_attempt_at = excluded.next_attempt_at, \
                     last_error = excluded.last_error, dead_at = NULL",
                )?
                .execute(params![id, update.seq, attempts, next_attempt_at, error, resync_id])?;
            }
            RetryState::Dead { attempts, error } => {
                let now = crate::model::now_millis();
                tx.prepare_cached(
                    "INSERT INTO retries (subscription_id, seq, attempts, next_attempt_at, last_error, dead_at, resync_id) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?4, ?6) ON CONFLICT (subscription_id, seq, resync_id) DO UPDATE SET \
                     attempts = excluded.attempts, last_error = excluded.last_error, dead_at = excluded.dead_at",
                )?
                .execute(params![id, update.seq, attempts, now, error, resync_id])?;
            }
        }
    }
    let (succeeded, failed) = match report.health {
        Some(Health::Succeeded { at }) => (Some(at), None),
        Some(Health::Failed { at }) => (None, Some(at)),
        None => (None, None),
    };
    // One statement for the cursor, the count and the health: this runs for every
    // subscription at every flush.
    tx.prepare_cached(
        "UPDATE subscriptions SET cursor = COALESCE(?1, cursor), delivered = delivered + ?2, \
         last_success_at = COALESCE(?3, last_success_at), \
         failing_since = CASE WHEN ?3 IS NOT NULL THEN NULL \
                              WHEN ?4 IS NOT NULL THEN COALESCE(failing_since, ?4) \
                              ELSE failing_since END \
         WHERE id = ?5",
    )?
    .execute(params![
        report.cursor,
        report.delivered as i64,
        succeeded,
        failed,
        id
    ])?;
    if let Some(resync) = &report.resync {
        let (position_type, position_id) = match &resync.position {
            Some(position) => (
                Some(position.entity_type.as_str()),
                position.after_id.as_str(),
            ),
            None => (None, ""),
        };
        tx.prepare_cached(
            "UPDATE resync_runs SET sent = ?1, position_type = ?2, position_id = ?3, completed_at = ?4 \
             WHERE id = ?5",
        )?
        .execute(params![
            resync.sent as i64,
            position_type,
            position_id,
            resync.completed_at,
            resync.id
        ])?;
    }
    if let Some(reason) = &report.disable {
        tx.prepare_cached(
            "UPDATE subscriptions SET disabled_code = ?1, disabled_message = ?2, disabled_at = ?3 \
             WHERE id = ?4 AND disabled_at IS NULL",
        )?
        .execute(params![
            reason.code(),
            reason.message(),
            crate::model::now_millis(),
            id
        ])?;
    }
    Ok(())
}
