//! The SQLite backend: how the embedded database is opened and checkpointed, what it
//! does differently from PostgreSQL, and the log writer's own connection.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use sqlx::Row;
use sqlx::sqlite::{
    SqliteAutoVacuum, SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool,
    SqlitePoolOptions,
};

use super::database::ClaimLimits;
use super::derive::Derivation;
use super::rows::{DueRetryRow, resync_key, resync_position};
use super::statements;
use super::writer::{LogRow, Written};
use super::{Health, Progress, Result, RetryState, StoreError};
use crate::config::Durability;
use crate::model::StoredEvent;

/// WAL frames (pages) past which a checkpoint restarts the WAL: 64 MB of 4 KB pages.
const WAL_RESTART_FRAMES: i64 = 16_384;
/// A restarting checkpoint holds writers back while it copies what a passive one left:
/// it is only started when that is at most this many frames (4 MB), a few milliseconds.
const RESTART_AT_MOST_FRAMES: i64 = 1_024;
/// How long a statement waits for a lock another connection holds.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a restarting checkpoint waits for the writers' lock and for the readers in
/// the WAL, writers held back meanwhile.
const RESTART_WAIT: Duration = Duration::from_millis(50);
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

/// The database file a URL names (`sqlite://path` or a bare path).
fn database_file(url: &str) -> Result<PathBuf> {
    let path = SqliteConnectOptions::from_str(url)?
        .get_filename()
        .to_path_buf();
    if path.as_os_str().is_empty() || path.as_os_str() == ":memory:" {
        return Err(StoreError::InMemory);
    }
    Ok(path)
}

/// The directory of a SQLite database file (where its secret key is kept by default).
pub(super) fn database_dir(url: &str) -> Result<Option<PathBuf>> {
    let path = database_file(url)?;
    Ok(Some(
        path.parent()
            .filter(|dir| !dir.as_os_str().is_empty())
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf),
    ))
}

/// Opens (creating if needed) the database and brings its schema up to date.
pub(super) async fn open_pool(
    url: &str,
    durability: Durability,
    max_page_count: Option<u64>,
) -> Result<SqlitePool> {
    let path = database_file(url)?;
    let mut options = SqliteConnectOptions::from_str(url)?
        .create_if_missing(true)
        .page_size(PAGE_SIZE)
        // A new database gives the pages retention frees back to the file system, a
        // few at a time ([`reclaim_space`]); an older one needs `reelay migrate` once.
        .auto_vacuum(SqliteAutoVacuum::Incremental)
        .journal_mode(SqliteJournalMode::Wal)
        .pragma("synchronous", synchronous(durability))
        .busy_timeout(BUSY_TIMEOUT)
        .pragma("foreign_keys", "ON")
        // SQLite's default page cache, 2 MB, for each of the pool's connections. Their
        // caches stay full while the server idles: at 16 MB each, a restart's read of
        // 100,000 subscriptions left the idle server 26-47 MB larger (409-445 MB against
        // 383-398 MB, two runs each), and the reads they serve are mostly in the OS's
        // page cache anyway (the resync of 100,000 entities took no longer). The log
        // writer keeps 16 MB ([`log_connection`]).
        .pragma("cache_size", "-2000")
        // Commits never checkpoint (copy the WAL back into the database and fsync it):
        // that would stall every publisher queued behind that commit. A background
        // task checkpoints instead ([`checkpoint`]).
        .pragma("wal_autocheckpoint", "0")
        // After a checkpoint restarts the WAL, shrink its file back to this size.
        .pragma("journal_size_limit", "67108864");
    if let Some(pages) = max_page_count {
        options = options.pragma("max_page_count", pages.to_string());
    }
    if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::DataDir {
            path: dir.display().to_string(),
            source,
        })?;
    }
    // Created readable by this user only; SQLite gives its WAL and shared-memory files
    // the database file's permissions.
    if !path.exists() {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(|source| StoreError::DataDir {
                path: path.display().to_string(),
                source,
            })?;
    }
    let pool = SqlitePoolOptions::new()
        .max_connections(8)
        .connect_with(options)
        .await?;
    sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
    if !incremental_vacuum(&pool).await? {
        tracing::warn!(
            "this SQLite database was made without incremental auto-vacuum: the space of \
             removed events is reused but the file does not shrink; run `reelay migrate` \
             once (it rewrites the file with VACUUM) to give it back"
        );
    }
    Ok(pool)
}

/// Whether the database gives freed pages back to the file system on request
/// (`auto_vacuum = INCREMENTAL`).
async fn incremental_vacuum(pool: &SqlitePool) -> Result<bool> {
    let mode: i64 = sqlx::query_scalar("PRAGMA auto_vacuum")
        .fetch_one(pool)
        .await?;
    Ok(mode == 2)
}

/// Switches a database made before incremental auto-vacuum to it: VACUUM rewrites the
/// whole file (it needs as much free disk again, and holds every writer back while it
/// runs), so `reelay migrate` does it, never `serve`. Returns whether it had to.
pub(super) async fn use_incremental_vacuum(pool: &SqlitePool) -> Result<bool> {
    if incremental_vacuum(pool).await? {
        return Ok(false);
    }
    sqlx::query("PRAGMA auto_vacuum = INCREMENTAL")
        .execute(pool)
        .await?;
    sqlx::query("VACUUM").execute(pool).await?;
    sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
        .execute(pool)
        .await?;
    Ok(true)
}

/// Free pages kept for new writes rather than given back (a tenth of the file): giving
/// back what is written again soon only moves pages about.
const FREE_PAGES_KEPT_PERCENT: i64 = 10;
/// Pages given back per step: each step is a short write transaction.
const VACUUM_STEP_PAGES: i64 = 1_024;
/// Steps per retention pass (16 MB of 2 KB pages).
const VACUUM_STEPS_PER_PASS: usize = 8;

/// Gives the free pages that retention left back to the file system, a step at a time
/// with pauses (each step holds the write lock briefly), down to a reserve for the
/// writes to come. Nothing to do without incremental auto-vacuum.
pub(super) async fn reclaim_space(pool: &SqlitePool) -> Result<()> {
    if !incremental_vacuum(pool).await? {
        return Ok(());
    }
    // A bounded share per pass: what is left goes at the next one.
    for _ in 0..VACUUM_STEPS_PER_PASS {
        let pages: i64 = sqlx::query_scalar("PRAGMA page_count")
            .fetch_one(pool)
            .await?;
        let free: i64 = sqlx::query_scalar("PRAGMA freelist_count")
            .fetch_one(pool)
            .await?;
        let excess = free - pages * FREE_PAGES_KEPT_PERCENT / 100;
        if excess <= 0 {
            break;
        }
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "PRAGMA incremental_vacuum({})",
            excess.min(VACUUM_STEP_PAGES)
        )))
        .execute(pool)
        .await?;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

/// The database file's size in bytes (its pages; the WAL not counted).
pub(super) async fn database_bytes(pool: &SqlitePool) -> Result<i64> {
    let pages: i64 = sqlx::query_scalar("PRAGMA page_count")
        .fetch_one(pool)
        .await?;
    let size: i64 = sqlx::query_scalar("PRAGMA page_size")
        .fetch_one(pool)
        .await?;
    Ok(pages * size)
}

/// Copies what it can of the WAL into the database without blocking writers or readers
/// (PASSIVE). Under constant writes a passive checkpoint never reaches the end of the
/// WAL, so the WAL would grow without end: once it is past `WAL_RESTART_FRAMES`, and a
/// passive checkpoint has left little to copy, a restarting checkpoint copies that little
/// and starts the WAL over. A restart holds writers back while it runs, so it is only
/// started when it is short: a long one stalls every publisher. Returns whether the WAL
/// is still too long (call again soon).
pub(super) async fn checkpoint(pool: &SqlitePool) -> Result<bool> {
    let started = std::time::Instant::now();
    let row = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
        .fetch_one(pool)
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
    // A restart takes the writers' lock, then waits for the readers still in the WAL,
    // holding every writer back: on the pool's busy timeout (10 s) that wait stalled
    // publishing for seconds. Here it waits at most `RESTART_WAIT` (the pool's timeout
    // once the WAL is past the forced restart), then finishes as a passive one would and
    // says busy, and the next call tries again.
    let wait = match frames < WAL_FORCE_RESTART_FRAMES {
        true => RESTART_WAIT,
        false => BUSY_TIMEOUT,
    };
    let mut connection = pool.acquire().await?;
    set_busy_timeout(&mut connection, wait).await?;
    let started = std::time::Instant::now();
    let restarted = sqlx::query("PRAGMA wal_checkpoint(RESTART)")
        .fetch_one(&mut *connection)
        .await;
    // The connection goes back to the pool with the pool's timeout, or not at all.
    if set_busy_timeout(&mut connection, BUSY_TIMEOUT)
        .await
        .is_err()
    {
        connection.close_on_drop();
    }
    let row = restarted?;
    metrics::histogram!("reelay_checkpoint_seconds", "mode" => "restart")
        .record(started.elapsed().as_secs_f64());
    // Busy: a reader or writer kept it from finishing; the WAL is still long.
    let busy: i64 = row.try_get(0)?;
    Ok(busy != 0)
}

async fn set_busy_timeout(connection: &mut SqliteConnection, timeout: Duration) -> Result<()> {
    // A number of ours, not input.
    let pragma = format!("PRAGMA busy_timeout = {}", timeout.as_millis());
    sqlx::query(sqlx::AssertSqlSafe(pragma))
        .execute(connection)
        .await?;
    Ok(())
}

/// The last position in the log: its last event. Never a cursor: a subscriber cannot
/// move where new events go (a cursor left past it is moved back at start, see
/// [`clamp_cursors`]).
pub(super) async fn head(pool: &SqlitePool) -> Result<i64> {
    let head: Option<i64> = sqlx::query_scalar("SELECT MAX(seq) FROM events")
        .fetch_one(pool)
        .await?;
    Ok(head.unwrap_or(0))
}

/// Moves every cursor past `head` back to it; returns their subscriptions. One process
/// owns the database, and its writer has not started: nothing moves a cursor meanwhile.
/// Such a cursor was saved on a position only a duplicate had taken (writers before
/// positions were given back), or by a replay past the head (before replays were
/// checked); from the head it skips nothing that is stored.
pub(super) async fn clamp_cursors(pool: &SqlitePool, head: i64) -> Result<Vec<String>> {
    Ok(
        sqlx::query_scalar("UPDATE subscriptions SET cursor = $1 WHERE cursor > $1 RETURNING id")
            .bind(head)
            .fetch_all(pool)
            .await?,
    )
}

/// Claims due retries: one process owns all the work, so every due retry is its own.
/// Each subscription's due retries are numbered earliest first, and only those within
/// its share (`per_subscription` less what it has in flight, passed as a JSON object)
/// are taken.
pub(super) async fn claim_due_retries(
    pool: &SqlitePool,
    now: i64,
    lease_until: i64,
    claim: &ClaimLimits<'_>,
) -> Result<Vec<DueRetryRow>> {
    // An UPDATE takes the database's one write lock even when it changes nothing, and
    // the log writer commits back to back under load: a claim with nothing due waited
    // over a second for the lock in the bench's batch phase, and while it held it, the
    // log writer's next commit slept in SQLite's busy handler. A read takes no lock.
    let any_due: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM retries WHERE dead_at IS NULL AND next_attempt_at <= $1)",
    )
    .bind(now)
    .fetch_one(pool)
    .await?;
    if !any_due {
        return Ok(Vec::new());
    }
    let in_flight = serde_json::to_string(claim.in_flight).unwrap_or_else(|_| "{}".to_owned());
    Ok(sqlx::query_as(
        "UPDATE retries SET next_attempt_at = $1 WHERE rowid IN ( \
           SELECT w.rid FROM ( \
             SELECT r.rowid AS rid, r.subscription_id AS sub, r.next_attempt_at AS due, \
                    ROW_NUMBER() OVER (PARTITION BY r.subscription_id \
                                       ORDER BY r.next_attempt_at, r.seq) AS n \
             FROM retries r JOIN subscriptions s ON s.id = r.subscription_id \
             WHERE r.dead_at IS NULL AND r.next_attempt_at <= $2 AND s.disabled_at IS NULL) w \
           LEFT JOIN json_each($5) b ON b.key = w.sub \
           WHERE w.n <= $4 - COALESCE(b.value, 0) \
           ORDER BY w.due LIMIT $3) \
         RETURNING subscription_id, seq, resync_id, attempts",
    )
    .bind(lease_until)
    .bind(now)
    .bind(claim.limit)
    .bind(claim.per_subscription)
    .bind(in_flight)
    .fetch_all(pool)
    .await?)
}

/// The log writer's own connection (see [`LogConnection`]), with the pool's settings but a
/// larger page cache.
pub(super) fn log_connection(
    url: &str,
    durability: Durability,
    max_page_count: Option<u64>,
) -> Result<LogConnection> {
    let path = database_file(url)?;
    let connection = rusqlite::Connection::open(Path::new(&path))?;
    if let Some(pages) = max_page_count {
        // A pragma that answers with the new limit: read, not executed.
        let _: i64 =
            connection.query_row(&format!("PRAGMA max_page_count = {pages}"), [], |r| {
                r.get(0)
            })?;
    }
    connection.busy_timeout(BUSY_TIMEOUT)?;
    // Its page cache is not free to grow: at the end of nearly every commit SQLite
    // scans the cache's whole hash table (a B-tree balance renumbers pages through the
    // pending-byte page, far past the end of the file, and the commit then drops every
    // cached page past the end: `pcache1TruncateUnsafe`, 14 % of the writer's commits
    // with 1,000 accounts publishing). 16 MB is where batches publish fastest; 2-4 MB
    // made that scan cheaper and batches slower (more pages read again).
    connection.execute_batch(&format!(
        "PRAGMA synchronous = {}; PRAGMA foreign_keys = ON; PRAGMA cache_size = -16000; \
         PRAGMA wal_autocheckpoint = 0; PRAGMA journal_size_limit = 67108864;",
        synchronous(durability)
    ))?;
    Ok(LogConnection(connection))
}

/// The log writer's connection. It lives on the writer's own thread and talks to SQLite
/// directly (rusqlite), so a whole group commit runs in one go: an async driver would
/// send every statement to a connection thread and wait for the answer, and those round
/// trips, not SQLite, were most of a commit's time. Everything else uses the pool.
pub(super) struct LogConnection(rusqlite::Connection);

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
        event.trace.as_ref().map(|trace| trace.traceparent.as_str()),
        event
            .trace
            .as_ref()
            .and_then(|trace| trace.tracestate.as_deref()),
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
            // Prepared once for the group, not looked up in the cache for each row.
            let mut insert = tx.prepare_cached(statements::INSERT_EVENT)?;
            let mut next_version = tx.prepare_cached(statements::NEXT_VIDEO_VERSION.sqlite)?;
            let mut set_entity = tx.prepare_cached(statements::SET_ENTITY)?;
            for row in rows {
                if !insert_event(&mut insert, &row.event)? {
                    written.push(Written::Duplicate);
                    continue;
                }
                let video_change = match &row.video_change {
                    None => None,
                    Some((video, seq)) => {
                        let version: i64 = next_version
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
                    set_entity.execute(rusqlite::params![
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

/// Applies one dispatcher's progress report (the statements both backends run:
/// [`statements`]).
fn apply_progress(tx: &rusqlite::Transaction<'_>, report: &Progress) -> Result<()> {
    use rusqlite::{OptionalExtension, params};
    let id = report.subscription_id.as_str();
    let (succeeded, failed) = match report.health {
        Some(Health::Succeeded { at }) => (Some(at), None),
        Some(Health::Failed { at }) => (None, Some(at)),
        None => (None, None),
    };
    let saved: Option<String> = tx
        .prepare_cached(statements::SAVE_PROGRESS)?
        .query_row(
            params![
                report.cursor,
                report.delivered as i64,
                succeeded,
                failed,
                id
            ],
            |row| row.get(0),
        )
        .optional()?;
    // A worker's last report can arrive after its subscription was deleted: drop it, or
    // its retries would outlive the subscription.
    if saved.is_none() {
        return Ok(());
    }
    if !report.attempts.is_empty() {
        let mut insert = tx.prepare_cached(statements::INSERT_ATTEMPT.sqlite)?;
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
        let resync_id = resync_key(update.resync_id.as_deref());
        match &update.state {
            RetryState::Delivered => {
                tx.prepare_cached(statements::DELETE_RETRY.sqlite)?
                    .execute(params![id, update.seq, resync_id])?;
            }
            RetryState::Scheduled {
                attempts,
                next_attempt_at,
                error,
            } => {
                tx.prepare_cached(statements::SCHEDULE_RETRY.sqlite)?
                    .execute(params![
                        id,
                        update.seq,
                        attempts,
                        next_attempt_at,
                        error,
                        resync_id
                    ])?;
            }
            RetryState::Dead { attempts, error } => {
                let now = crate::model::now_millis();
                tx.prepare_cached(statements::BURY_RETRY.sqlite)?
                    .execute(params![id, update.seq, attempts, now, error, resync_id])?;
            }
        }
    }
    if let Some(resync) = &report.resync {
        let (position_type, position_id) = resync_position(resync);
        tx.prepare_cached(statements::SAVE_RESYNC.sqlite)?
            .execute(params![
                resync.sent as i64,
                position_type,
                position_id,
                resync.completed_at,
                resync.id
            ])?;
    }
    if let Some(reason) = &report.disable {
        tx.prepare_cached(statements::DISABLE_SUBSCRIPTION.sqlite)?
            .execute(params![
                reason.code(),
                reason.message(),
                crate::model::now_millis(),
                id
            ])?;
    }
    Ok(())
}
