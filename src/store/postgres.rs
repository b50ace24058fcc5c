//! The PostgreSQL backend: what it does differently from SQLite. Several `reelay serve`
//! processes (nodes) may share one database, so:
//!
//! - the log's positions come from the `log_head` row, whose lock every append takes:
//!   positions are handed out, and become visible, in commit order across all nodes;
//! - every append notifies the other nodes (`NOTIFY reelay_log`), and each node follows
//!   the log ([`follow_log`]) to hand new events to its dispatchers;
//! - each node delivers the subscriptions it holds a lease on; its progress reports are
//!   only applied while it still holds that lease, so a node that was taken over cannot
//!   move a cursor the new owner relies on.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};
use sqlx::{Postgres, Transaction};
use tokio::sync::{broadcast, mpsc, watch};

use super::database::{ClaimLimits, PageSize, STATEMENT_TIMEOUT};
use super::derive::Derivation;
use super::rows::{DueRetryRow, resync_key, resync_position};
use super::statements;
use super::writer::{LogRow, Written};
use super::{CommittedBatch, Database, Health, Progress, Result, RetryState, StoreError};
use crate::config::Durability;
use crate::model::{Millis, StoredEvent};

/// The channel appends notify on (the payload, the new head, is for people watching).
pub(super) const LOG_CHANNEL: &str = "reelay_log";

/// How long a request waits for a connection before it fails (and a publish is answered
/// `503`): long enough for a burst, short enough that an outage is reported, not hidden.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

/// A session's settings, given at connection start: they take precedence over the
/// database's and the role's defaults (`ALTER DATABASE … SET`), and over an `options`
/// parameter in the URL, so a `202` means what `--durability` says whatever the server's
/// configuration. `synchronous_commit = on` (PostgreSQL's default): a commit returns
/// once its WAL is flushed to disk (and, with synchronous standbys, to theirs).
fn connect_options(url: &str, synchronous_commit: &str) -> Result<PgConnectOptions> {
    Ok(PgConnectOptions::from_str(url)?.options([
        (
            "statement_timeout",
            format!("{}ms", STATEMENT_TIMEOUT.as_millis()),
        ),
        ("synchronous_commit", synchronous_commit.to_owned()),
    ]))
}

pub(super) async fn open_pool(url: &str, max_connections: u32) -> Result<PgPool> {
    let pool = PgPoolOptions::new()
        .max_connections(max_connections.max(2))
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect_with(connect_options(url, "on")?)
        .await?;
    // sqlx holds an advisory lock while it migrates: nodes starting together take turns.
    sqlx::migrate!("./migrations/postgres").run(&pool).await?;
    check_synchronous_commit(&pool, "on", "the connection pool").await?;
    Ok(pool)
}

/// The connections the log writer commits on. `fsync`: the pool's (every commit waits
/// for its flush). `relaxed`: one connection of its own with `synchronous_commit = off`,
/// so an append is acknowledged before its WAL is flushed (a crash of the database
/// server, not of PostgreSQL's clients, may lose the last ones), as SQLite's `relaxed`
/// does; everything else (subscriptions, keys, leases) still commits synchronously.
pub(super) async fn log_pool(url: &str, durability: Durability, pool: &PgPool) -> Result<PgPool> {
    match durability {
        Durability::Fsync => Ok(pool.clone()),
        Durability::Relaxed => {
            // The writer commits one group at a time: one connection serves it.
            let log = PgPoolOptions::new()
                .max_connections(1)
                .acquire_timeout(ACQUIRE_TIMEOUT)
                .connect_with(connect_options(url, "off")?)
                .await?;
            check_synchronous_commit(&log, "off", "the log writer").await?;
            Ok(log)
        }
    }
}

/// Reads `synchronous_commit` back from a session of `pool` and refuses to start unless
/// it is `expected`: a connection pooler that drops startup options would otherwise
/// leave durability to the database's defaults, silently.
async fn check_synchronous_commit(pool: &PgPool, expected: &str, whose: &str) -> Result<()> {
    let actual: String = sqlx::query_scalar("SHOW synchronous_commit")
        .fetch_one(pool)
        .await?;
    if actual != expected {
        return Err(StoreError::Durability(format!(
            "{whose}'s PostgreSQL sessions run with synchronous_commit = {actual}, not \
             {expected} as asked at connection start (is a connection pooler dropping \
             startup options?)"
        )));
    }
    tracing::info!(
        sessions = whose,
        synchronous_commit = %actual,
        "PostgreSQL commit durability checked"
    );
    Ok(())
}

pub(super) async fn head(pool: &PgPool) -> Result<i64> {
    Ok(sqlx::query_scalar("SELECT seq FROM log_head WHERE id = 1")
        .fetch_one(pool)
        .await?)
}

/// Moves every cursor past the shared head back to it; returns their subscriptions. A
/// cursor is never saved past the head by a delivery (the head moves before the events
/// are handed out), so one past it came from a replay before replays were checked. The
/// head is read by the statement itself: other nodes may append meanwhile.
pub(super) async fn clamp_cursors(pool: &PgPool) -> Result<Vec<String>> {
    Ok(sqlx::query_scalar(
        "UPDATE subscriptions SET cursor = (SELECT seq FROM log_head WHERE id = 1) \
         WHERE cursor > (SELECT seq FROM log_head WHERE id = 1) RETURNING id",
    )
    .fetch_all(pool)
    .await?)
}

/// Claims due retries of the subscriptions `node` holds: each subscription's due
/// retries are numbered earliest first, and only those within its share
/// (`per_subscription` less what it has in flight) are taken. The due condition is
/// checked again on the row the update locks: a retry another transaction claimed
/// meanwhile (a node taking the subscription over) is no longer due, and is skipped.
pub(super) async fn claim_due_retries(
    pool: &PgPool,
    node: &str,
    now: Millis,
    lease_until: Millis,
    claim: &ClaimLimits<'_>,
) -> Result<Vec<DueRetryRow>> {
    let (busy, counts): (Vec<String>, Vec<i64>) = claim
        .in_flight
        .iter()
        .map(|(id, count)| (id.clone(), i64::from(*count)))
        .unzip();
    Ok(sqlx::query_as(
        "UPDATE retries SET next_attempt_at = $1 \
         WHERE dead_at IS NULL AND next_attempt_at <= $2 \
           AND (subscription_id, seq, resync_id) IN ( \
           SELECT w.subscription_id, w.seq, w.resync_id FROM ( \
             SELECT r.subscription_id, r.seq, r.resync_id, r.next_attempt_at, \
                    ROW_NUMBER() OVER (PARTITION BY r.subscription_id \
                                       ORDER BY r.next_attempt_at, r.seq) AS n \
             FROM retries r \
             JOIN subscriptions s ON s.id = r.subscription_id \
             JOIN subscription_leases l ON l.subscription_id = r.subscription_id \
             WHERE r.dead_at IS NULL AND r.next_attempt_at <= $2 AND s.disabled_at IS NULL \
               AND l.node_id = $4) w \
           LEFT JOIN UNNEST($6::text[], $7::bigint[]) AS b(id, n) ON b.id = w.subscription_id \
           WHERE w.n <= $5 - COALESCE(b.n, 0) \
           ORDER BY w.next_attempt_at LIMIT $3) \
         RETURNING subscription_id, seq, resync_id, attempts",
    )
    .bind(lease_until)
    .bind(now)
    .bind(claim.limit)
    .bind(node)
    .bind(claim.per_subscription)
    .bind(busy)
    .bind(counts)
    .fetch_all(pool)
    .await?)
}

/// Commits a group of appends and progress reports in one transaction. The writer
/// numbered `rows` from `after + 1`, reserving `reserved` positions; the log's real head
/// may be further on (other nodes appended), so the rows are moved up to follow it.
/// Returns what became of each row and the position the group starts after.
pub(super) async fn commit_group(
    db: &Database,
    pool: &PgPool,
    rows: &mut [LogRow],
    after: i64,
    reserved: i64,
    progress: &[Progress],
    derivation: &Derivation,
) -> Result<(Vec<Written>, i64)> {
    let derives = rows
        .iter()
        .any(|row| row.video_change.is_some() || row.entity.is_some());
    if reserved > 0 && progress.is_empty() && !derives {
        // The common group (events that change no video and no entity, no progress) is
        // one statement, and one statement is a transaction of its own: no BEGIN and
        // COMMIT round trips around it.
        let (log_after, inserted) = append_events(pool, rows, after, reserved).await?;
        return Ok((stored_or_duplicate(rows, &inserted), log_after));
    }
    let mut tx = pool.begin().await?;
    let mut log_after = after;
    let mut written = Vec::with_capacity(rows.len());
    if reserved > 0 {
        let inserted;
        (log_after, inserted) = append_events(&mut *tx, rows, after, reserved).await?;
        let mut versions = next_video_versions(&mut tx, rows, &inserted).await?;
        let mut changes = Vec::new();
        for row in rows.iter() {
            if !inserted.contains(&row.event.seq) {
                written.push(Written::Duplicate);
                continue;
            }
            let video_change = match &row.video_change {
                None => None,
                Some((video, seq)) => {
                    let version = versions.next(&row.event.account, video)?;
                    let change = derivation.video_change(&row.event, video, version, *seq);
                    changes.push(change.clone());
                    Some(change)
                }
            };
            written.push(Written::Stored { video_change });
        }
        // Their ids are fresh and random: a conflict means the log is not what this
        // writer thinks, and the whole commit must not stand.
        let derived = insert_events(&mut tx, changes.iter()).await?;
        if derived.len() != changes.len() {
            return Err(StoreError::Corrupt(
                "a derived event's id was already taken".into(),
            ));
        }
        set_entities(&mut tx, rows, &inserted).await?;
    }
    for report in progress {
        apply_progress(&mut tx, db.node(), report).await?;
    }
    tx.commit().await?;
    Ok((written, log_after))
}

/// Takes `reserved` positions from the log's head and inserts the rows after them, in
/// one statement (a commit's round trips cost as much as PostgreSQL's work in it). The
/// rows (numbered from `after + 1`) are moved up to follow the real head; returns the
/// position they now start after and the positions actually stored (an id already in
/// the log is not).
async fn append_events<'c>(
    executor: impl sqlx::postgres::PgExecutor<'c>,
    rows: &mut [LogRow],
    after: i64,
    reserved: i64,
) -> Result<(i64, HashSet<i64>)> {
    let appended: Vec<(i64, Option<i64>)> = EventColumns::of(rows.iter().map(|row| &row.event))
        .bind(sqlx::query_as(statements::APPEND_EVENTS))
        .bind(reserved)
        .bind(after)
        .bind(LOG_CHANNEL)
        .fetch_all(executor)
        .await?;
    let Some(&(top, _)) = appended.first() else {
        return Err(StoreError::LogHalted(format!(
            "sequence numbers are exhausted (or the log_head row is missing): {reserved} \
             more positions do not fit"
        )));
    };
    let inserted = appended.iter().filter_map(|&(_, seq)| seq).collect();
    let log_after = top - reserved;
    let shift = log_after - after;
    for row in rows.iter_mut() {
        row.event.seq += shift;
        if let Some((_, seq)) = &mut row.video_change {
            *seq += shift;
        }
    }
    Ok((log_after, inserted))
}

/// What became of rows that derive nothing.
fn stored_or_duplicate(rows: &[LogRow], inserted: &HashSet<i64>) -> Vec<Written> {
    rows.iter()
        .map(|row| {
            if inserted.contains(&row.event.seq) {
                Written::Stored { video_change: None }
            } else {
                Written::Duplicate
            }
        })
        .collect()
}

/// Inserts events in one statement; returns the positions actually stored (an id
/// already in the log is skipped).
async fn insert_events<'a>(
    tx: &mut Transaction<'static, Postgres>,
    events: impl Iterator<Item = &'a StoredEvent>,
) -> Result<HashSet<i64>> {
    let columns = EventColumns::of(events);
    if columns.seq.is_empty() {
        return Ok(HashSet::new());
    }
    let stored: Vec<(i64,)> = columns
        .bind(sqlx::query_as(statements::INSERT_EVENTS))
        .fetch_all(&mut **tx)
        .await?;
    Ok(stored.into_iter().map(|(seq,)| seq).collect())
}

/// The versions the stored rows give their videos, taken in one statement.
async fn next_video_versions(
    tx: &mut Transaction<'static, Postgres>,
    rows: &[LogRow],
    inserted: &HashSet<i64>,
) -> Result<VideoVersions> {
    let mut taken: HashMap<(String, String), i64> = HashMap::new();
    for row in rows.iter().filter(|row| inserted.contains(&row.event.seq)) {
        if let Some((video, _)) = &row.video_change {
            *taken
                .entry((row.event.account.clone(), video.clone()))
                .or_default() += 1;
        }
    }
    if taken.is_empty() {
        return Ok(VideoVersions::default());
    }
    let (mut account, mut video, mut count) = (vec![], vec![], vec![]);
    for ((a, v), n) in &taken {
        account.push(a.as_str());
        video.push(v.as_str());
        count.push(*n);
    }
    let last: Vec<(String, String, i64)> = sqlx::query_as(statements::NEXT_VIDEO_VERSIONS)
        .bind(account)
        .bind(video)
        .bind(count)
        .fetch_all(&mut **tx)
        .await?;
    let mut next = HashMap::with_capacity(last.len());
    for (account, video, version) in last {
        let key = (account, video);
        let first = version - taken.get(&key).copied().unwrap_or(1) + 1;
        next.insert(key, first);
    }
    Ok(VideoVersions { next })
}

/// Each video's next version within a commit, handed out in log order.
#[derive(Default)]
struct VideoVersions {
    next: HashMap<(String, String), i64>,
}

impl VideoVersions {
    fn next(&mut self, account: &str, video: &str) -> Result<i64> {
        // Keyed by owned strings: a lookup per video-changing event, not worth a borrow
        // dance.
        let version = self
            .next
            .get_mut(&(account.to_owned(), video.to_owned()))
            .ok_or_else(|| {
                StoreError::Corrupt(format!("no version was taken for video {video}"))
            })?;
        let this = *version;
        *version += 1;
        Ok(this)
    }
}

/// Events as columns, for one multi-row insert.
#[derive(Default)]
struct EventColumns {
    seq: Vec<i64>,
    account: Vec<String>,
    event_id: Vec<String>,
    name: Vec<String>,
    topic: Vec<String>,
    entity_key: Vec<Option<String>>,
    occurred_at: Vec<i64>,
    received_at: Vec<i64>,
    body: Vec<String>,
    traceparent: Vec<Option<String>>,
    tracestate: Vec<Option<String>>,
}

impl EventColumns {
    fn of<'a>(events: impl Iterator<Item = &'a StoredEvent>) -> EventColumns {
        let mut columns = EventColumns::default();
        for event in events {
            columns.push(event);
        }
        columns
    }

    /// Binds the columns as `$1` to `$11`.
    fn bind<'q, O>(
        self,
        query: sqlx::query::QueryAs<'q, Postgres, O, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::QueryAs<'q, Postgres, O, sqlx::postgres::PgArguments> {
        query
            .bind(self.seq)
            .bind(self.account)
            .bind(self.event_id)
            .bind(self.name)
            .bind(self.topic)
            .bind(self.entity_key)
            .bind(self.occurred_at)
            .bind(self.received_at)
            .bind(self.body)
            .bind(self.traceparent)
            .bind(self.tracestate)
    }

    fn push(&mut self, event: &StoredEvent) {
        self.seq.push(event.seq);
        self.account.push(event.account.clone());
        self.event_id.push(event.id.clone());
        self.name.push(event.name.clone());
        self.topic.push(event.topic.clone());
        self.entity_key.push(event.entity_key.clone());
        self.occurred_at.push(event.occurred_at);
        self.received_at.push(event.received_at);
        self.body.push(event.body.as_str().to_owned());
        let trace = event.trace.as_ref();
        self.traceparent
            .push(trace.map(|trace| trace.traceparent.clone()));
        self.tracestate
            .push(trace.and_then(|trace| trace.tracestate.clone()));
    }
}

/// Each entity's latest state: the stored event with the highest position wins. One
/// statement may not update a row twice, so only the last change of each entity in the
/// group is written.
async fn set_entities(
    tx: &mut Transaction<'static, Postgres>,
    rows: &[LogRow],
    inserted: &HashSet<i64>,
) -> Result<()> {
    let mut latest: HashMap<(&str, &str, &str), (i64, bool)> = HashMap::new();
    for row in rows.iter().filter(|row| inserted.contains(&row.event.seq)) {
        if let Some(entity) = &row.entity {
            // Rows are in log order: a later one replaces an earlier one.
            latest.insert(
                (&row.event.account, &entity.entity_type, &entity.id),
                (row.event.seq, entity.deleted),
            );
        }
    }
    if latest.is_empty() {
        return Ok(());
    }
    let (mut account, mut entity_type, mut id, mut seq, mut deleted) =
        (vec![], vec![], vec![], vec![], vec![]);
    for ((a, t, i), (s, d)) in latest {
        account.push(a.to_owned());
        entity_type.push(t.to_owned());
        id.push(i.to_owned());
        seq.push(s);
        deleted.push(i64::from(d));
    }
    sqlx::query(statements::SET_ENTITIES)
        .bind(account)
        .bind(entity_type)
        .bind(id)
        .bind(seq)
        .bind(deleted)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Applies one dispatcher's progress report, if this node still holds the subscription
/// (a deleted subscription has no lease either: its last report is dropped, or its
/// retries would outlive it).
async fn apply_progress(
    tx: &mut Transaction<'static, Postgres>,
    node: &str,
    report: &Progress,
) -> Result<()> {
    let id = report.subscription_id.as_str();
    let (succeeded, failed) = match report.health {
        Some(Health::Succeeded { at }) => (Some(at), None),
        Some(Health::Failed { at }) => (None, Some(at)),
        None => (None, None),
    };
    // The lease is checked by the statement that moves the cursor (one round trip, not
    // two): the rest of the report is applied only if it moved.
    let held: Option<String> = sqlx::query_scalar(statements::SAVE_HELD_PROGRESS)
        .bind(report.cursor)
        .bind(report.delivered as i64)
        .bind(succeeded)
        .bind(failed)
        .bind(id)
        .bind(node)
        .fetch_optional(&mut **tx)
        .await?;
    if held.is_none() {
        tracing::warn!(
            subscription = id,
            "progress of a subscription this node no longer holds: dropped"
        );
        return Ok(());
    }
    for attempt in &report.attempts {
        sqlx::query(statements::INSERT_ATTEMPT.postgres)
            .bind(id)
            .bind(attempt.seq)
            .bind(&attempt.event_id)
            .bind(i64::from(attempt.attempt))
            .bind(attempt.at)
            .bind(attempt.outcome)
            .bind(attempt.status.map(i64::from))
            .bind(&attempt.error)
            .bind(attempt.latency_ms)
            .bind(&attempt.response)
            .bind(attempt.next_attempt_at)
            .bind(&attempt.resync_id)
            .execute(&mut **tx)
            .await?;
    }
    for update in &report.retries {
        let resync_id = resync_key(update.resync_id.as_deref());
        match &update.state {
            RetryState::Delivered => {
                sqlx::query(statements::DELETE_RETRY.postgres)
                    .bind(id)
                    .bind(update.seq)
                    .bind(resync_id)
                    .execute(&mut **tx)
                    .await?;
            }
            RetryState::Scheduled {
                attempts,
                next_attempt_at,
                error,
            } => {
                sqlx::query(statements::SCHEDULE_RETRY.postgres)
                    .bind(id)
                    .bind(update.seq)
                    .bind(i64::from(*attempts))
                    .bind(next_attempt_at)
                    .bind(error)
                    .bind(resync_id)
                    .execute(&mut **tx)
                    .await?;
            }
            RetryState::Dead { attempts, error } => {
                sqlx::query(statements::BURY_RETRY.postgres)
                    .bind(id)
                    .bind(update.seq)
                    .bind(i64::from(*attempts))
                    .bind(crate::model::now_millis())
                    .bind(error)
                    .bind(resync_id)
                    .execute(&mut **tx)
                    .await?;
            }
        }
    }
    if let Some(resync) = &report.resync {
        let (position_type, position_id) = resync_position(resync);
        sqlx::query(statements::SAVE_RESYNC.postgres)
            .bind(resync.sent as i64)
            .bind(position_type)
            .bind(position_id)
            .bind(resync.completed_at)
            .bind(&resync.id)
            .execute(&mut **tx)
            .await?;
    }
    if let Some(reason) = &report.disable {
        sqlx::query(statements::DISABLE_SUBSCRIPTION.postgres)
            .bind(reason.code())
            .bind(reason.message())
            .bind(crate::model::now_millis())
            .bind(id)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

/// Events read from the log per query while following it.
const FOLLOW_PAGE: PageSize = PageSize {
    rows: 2_000,
    // Every account's events go through here: a page of large documents stops at this.
    bytes: 16 << 20,
};
/// Even without a notification, look at the log this often: a notification sent while
/// this node's listening connection was down is lost.
const FOLLOW_POLL: Duration = Duration::from_secs(1);

/// Follows the log for this node: hands every committed event, whichever node appended
/// it, to the dispatchers in log order (`committed`, `head`). This node's own commits
/// arrive on `local` with their events, and need no read when they follow on from what
/// was handed out; the other nodes' commits are read from the database when their
/// notification (or the poll) says the head moved. Runs until `local` closes (the store
/// is gone).
pub(super) async fn follow_log(
    db: Database,
    pool: PgPool,
    mut local: mpsc::UnboundedReceiver<CommittedBatch>,
    committed: broadcast::Sender<Arc<CommittedBatch>>,
    head: watch::Sender<i64>,
) {
    let mut last = *head.borrow();
    let mut listener = None;
    let mut poll = tokio::time::interval(FOLLOW_POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if listener.is_none() {
            listener = listen(&pool).await;
        }
        let notified = async {
            match listener.as_mut() {
                Some(listener) => listener.try_recv().await,
                None => std::future::pending().await,
            }
        };
        let wake = tokio::select! {
            batch = local.recv() => match batch {
                None => return,
                Some(batch) => Wake::Local(batch),
            },
            notification = notified => match notification {
                // The head is read from the database rather than taken from the payload:
                // the channel is the database's, and another Reelay in another schema of
                // it notifies on it too.
                Ok(Some(_)) => Wake::Head,
                // The connection was lost (and is made again at the next receive):
                // notifications may have been missed, so look.
                Ok(None) => Wake::Head,
                Err(error) => Wake::ListenerFailed(error),
            },
            _ = poll.tick() => Wake::Head,
        };
        match wake {
            Wake::Local(batch) => {
                if batch.after > last {
                    catch_up(&db, &mut last, batch.after, &committed, &head).await;
                }
                // Hand out what was not read from the database already.
                if batch.after <= last && batch.upto > last {
                    let events = batch
                        .events
                        .into_iter()
                        .filter(|event| event.seq > last)
                        .collect();
                    let _ = committed.send(Arc::new(CommittedBatch {
                        after: last,
                        upto: batch.upto,
                        events,
                    }));
                    last = batch.upto;
                    super::writer::advance(&head, last);
                }
                continue;
            }
            Wake::ListenerFailed(error) => {
                tracing::warn!(%error, "listening for new events failed; reconnecting");
                listener = None;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Wake::Head => {}
        }
        let upto = match self::head(&pool).await {
            Ok(upto) => upto,
            Err(error) => {
                tracing::warn!(%error, "reading the log head failed");
                continue;
            }
        };
        if upto > last {
            catch_up(&db, &mut last, upto, &committed, &head).await;
        }
    }
}

/// Why [`follow_log`] woke up.
enum Wake {
    /// This node committed these events.
    Local(CommittedBatch),
    /// Another node may have moved the head.
    Head,
    ListenerFailed(sqlx::Error),
}

async fn listen(pool: &PgPool) -> Option<PgListener> {
    let connect = async {
        let mut listener = PgListener::connect_with(pool).await?;
        listener.listen(LOG_CHANNEL).await?;
        // Report a lost connection at once (`Ok(None)`: look at the log), and connect again
        // at the next receive. Reconnecting eagerly, the report came only once the new
        // connection was made, and the receive making it is dropped whenever another
        // wake-up wins the select: while the database was down the loss was never
        // reported, and only the poll looked.
        listener.eager_reconnect(false);
        Ok::<_, sqlx::Error>(listener)
    };
    match connect.await {
        Ok(listener) => Some(listener),
        Err(error) => {
            tracing::warn!(%error, "cannot listen for new events; polling until it works");
            None
        }
    }
}

/// Reads and hands out the log after `last` up to `upto`.
async fn catch_up(
    db: &Database,
    last: &mut i64,
    upto: i64,
    committed: &broadcast::Sender<Arc<CommittedBatch>>,
    head: &watch::Sender<i64>,
) {
    while *last < upto {
        let events = match db.log_range(*last, upto, FOLLOW_PAGE).await {
            Ok(events) => events,
            Err(error) => {
                tracing::warn!(%error, "reading new events failed; will look again");
                return;
            }
        };
        let bytes = events.iter().map(|e| e.body.bytes().len()).sum();
        let full = FOLLOW_PAGE.is_full(events.len(), bytes);
        let page_upto = match events.last() {
            Some(event) if full => event.seq,
            _ => upto,
        };
        let batch = CommittedBatch {
            after: *last,
            upto: page_upto,
            events: events.into_iter().map(Arc::new).collect(),
        };
        *last = page_upto;
        super::writer::advance(head, page_upto);
        let _ = committed.send(Arc::new(batch));
    }
}

/// The channel subscription changes are announced on, so every node looks at its leases
/// at once. Payloads: `changed`, or `rewind <subscription> <cursor>` (a replay for the
/// node that delivers that subscription).
pub const SUBSCRIPTIONS_CHANNEL: &str = "reelay_subscriptions";

/// How the nodes sharing a PostgreSQL database split the subscriptions: each one holds
/// leases on its share and renews them while it lives.
#[derive(Clone)]
pub struct Cluster {
    pool: PgPool,
    node: String,
    sealer: std::sync::Arc<super::Sealer>,
}

impl Cluster {
    pub(super) fn new(
        pool: PgPool,
        node: String,
        sealer: std::sync::Arc<super::Sealer>,
    ) -> Cluster {
        Cluster { pool, node, sealer }
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Says this node is alive and extends its leases to `now + ttl` (one row, however
    /// many subscriptions it holds); returns how many nodes are alive (heard from within
    /// `ttl`). Nodes silent for ten times that are forgotten.
    pub async fn heartbeat(&self, now: Millis, ttl: Millis) -> Result<i64> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO nodes (id, started_at, heartbeat_at, lease_until) VALUES ($1, $2, $2, $3) \
             ON CONFLICT (id) DO UPDATE \
             SET heartbeat_at = excluded.heartbeat_at, lease_until = excluded.lease_until",
        )
        .bind(&self.node)
        .bind(now)
        .bind(now.saturating_add(ttl))
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM nodes WHERE heartbeat_at < $1")
            .bind(now - 10 * ttl)
            .execute(&mut *tx)
            .await?;
        let live: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM nodes WHERE heartbeat_at >= $1")
            .bind(now - ttl)
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(live)
    }

    /// The subscriptions this node holds (its leases last as long as its own, which
    /// [`Cluster::heartbeat`] renews). One missing from the answer was taken over (or
    /// deleted).
    pub async fn renew(&self) -> Result<Vec<String>> {
        Ok(
            sqlx::query_scalar(
                "SELECT subscription_id FROM subscription_leases WHERE node_id = $1",
            )
            .bind(&self.node)
            .fetch_all(&self.pool)
            .await?,
        )
    }

    /// Of the subscriptions this node holds, those that are disabled.
    pub async fn held_disabled(&self) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar(
            "SELECT l.subscription_id FROM subscription_leases l \
             JOIN subscriptions s ON s.id = l.subscription_id \
             WHERE l.node_id = $1 AND s.disabled_at IS NOT NULL",
        )
        .bind(&self.node)
        .fetch_all(&self.pool)
        .await?)
    }

    /// The enabled subscriptions this node holds after the oldest `keep` (by creation):
    /// those it hands over when it holds more than its share.
    pub async fn held_newest(&self, keep: usize) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar(
            "SELECT s.id FROM subscriptions s \
             JOIN subscription_leases l ON l.subscription_id = s.id \
             WHERE l.node_id = $1 AND s.disabled_at IS NULL \
             ORDER BY s.created_at, s.id OFFSET $2",
        )
        .bind(&self.node)
        .bind(i64::try_from(keep).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await?)
    }

    /// These subscriptions, read in one query (those still held by this node), oldest
    /// first, and why the others cannot be read (a row written by a newer version, or
    /// damaged), as [`Database::all_subscriptions`] answers for SQLite: one unreadable row
    /// must not keep the others from being delivered. The lease on an unreadable one stays
    /// where it is (another node could not read it either).
    pub async fn held_subscriptions(
        &self,
        ids: &[String],
    ) -> Result<(Vec<crate::model::Subscription>, Vec<StoreError>)> {
        let rows: Vec<super::rows::SubscriptionRow> = sqlx::query_as(
            "SELECT s.* FROM subscriptions s \
             JOIN subscription_leases l ON l.subscription_id = s.id \
             WHERE l.node_id = $1 AND s.id = ANY($2) ORDER BY s.created_at, s.id",
        )
        .bind(&self.node)
        .bind(ids)
        .fetch_all(&self.pool)
        .await?;
        Ok(super::rows::open_subscriptions(rows, &self.sealer))
    }

    /// How many subscriptions are to be delivered (enabled), by all nodes together.
    pub async fn enabled_count(&self) -> Result<i64> {
        Ok(
            sqlx::query_scalar("SELECT COUNT(*) FROM subscriptions WHERE disabled_at IS NULL")
                .fetch_one(&self.pool)
                .await?,
        )
    }

    /// Takes up to `limit` enabled subscriptions that no node holds, or whose node's
    /// lease ran out by `now`. Two nodes claiming the same one: the row lock lets one
    /// win, and the other's condition no longer holds when it gets the row.
    pub async fn claim(&self, now: Millis, until: Millis, limit: i64) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar(
            "INSERT INTO subscription_leases (subscription_id, node_id, lease_until) \
             SELECT s.id, $1, $2 FROM subscriptions s \
             LEFT JOIN subscription_leases l ON l.subscription_id = s.id \
             WHERE s.disabled_at IS NULL AND (l.subscription_id IS NULL OR NOT EXISTS \
               (SELECT 1 FROM nodes n WHERE n.id = l.node_id AND n.lease_until >= $3)) \
             ORDER BY s.created_at, s.id LIMIT $4 \
             ON CONFLICT (subscription_id) DO UPDATE \
             SET node_id = excluded.node_id, lease_until = excluded.lease_until \
             WHERE NOT EXISTS (SELECT 1 FROM nodes n \
               WHERE n.id = subscription_leases.node_id AND n.lease_until >= $3) \
             RETURNING subscription_id",
        )
        .bind(&self.node)
        .bind(until)
        .bind(now)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Takes one subscription if no live node holds it; says whether this node now does.
    pub async fn claim_one(&self, id: &str, now: Millis, until: Millis) -> Result<bool> {
        let claimed: Option<String> = sqlx::query_scalar(
            "INSERT INTO subscription_leases (subscription_id, node_id, lease_until) \
             VALUES ($1, $2, $3) \
             ON CONFLICT (subscription_id) DO UPDATE \
             SET node_id = excluded.node_id, lease_until = excluded.lease_until \
             WHERE subscription_leases.node_id = $2 OR NOT EXISTS (SELECT 1 FROM nodes n \
               WHERE n.id = subscription_leases.node_id AND n.lease_until >= $4) \
             RETURNING subscription_id",
        )
        .bind(id)
        .bind(&self.node)
        .bind(until)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        Ok(claimed.is_some())
    }

    /// The node whose lease on a subscription is live at `now`, if any.
    pub async fn holder(&self, id: &str, now: Millis) -> Result<Option<String>> {
        Ok(sqlx::query_scalar(
            "SELECT l.node_id FROM subscription_leases l JOIN nodes n ON n.id = l.node_id \
             WHERE l.subscription_id = $1 AND n.lease_until >= $2",
        )
        .bind(id)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Gives a subscription up (its worker has stopped and its progress is saved).
    pub async fn release(&self, id: &str) -> Result<()> {
        sqlx::query("DELETE FROM subscription_leases WHERE subscription_id = $1 AND node_id = $2")
            .bind(id)
            .bind(&self.node)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Gives everything up and says goodbye (at shutdown, after the workers stopped):
    /// the other nodes take over at once instead of waiting for the leases to run out.
    pub async fn leave(&self) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM subscription_leases WHERE node_id = $1")
            .bind(&self.node)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM nodes WHERE id = $1")
            .bind(&self.node)
            .execute(&mut *tx)
            .await?;
        sqlx::query("SELECT pg_notify($1, 'changed')")
            .bind(SUBSCRIPTIONS_CHANNEL)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Tells every node (this one too) something about the subscriptions.
    pub async fn notify(&self, message: &str) -> Result<()> {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(SUBSCRIPTIONS_CHANNEL)
            .bind(message)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// A connection that receives [`SUBSCRIPTIONS_CHANNEL`]'s messages.
    pub async fn listen(&self) -> Result<PgListener> {
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener.listen(SUBSCRIPTIONS_CHANNEL).await?;
        // As the log follower's (`listen`): a lost connection is reported at once, not
        // after a reconnect that a select may drop halfway.
        listener.eager_reconnect(false);
        Ok(listener)
    }
}

/// A node's turn at the retention pass on a shared database: a session-level advisory
/// lock (one per schema, so Reelays in several schemas of one database do not wait for
/// each other) held by a connection of its own. Dropping the turn closes that
/// connection, which ends the session and so releases the lock whatever happened
/// meanwhile: a lock left on a pooled connection would stop every node's passes.
pub(super) struct RetentionTurn(Option<sqlx::pool::PoolConnection<sqlx::Postgres>>);

impl Drop for RetentionTurn {
    fn drop(&mut self) {
        if let Some(connection) = self.0.take() {
            drop(connection.detach());
        }
    }
}

/// Takes the retention turn if no other node holds it.
pub(super) async fn retention_turn(pool: &PgPool) -> Result<Option<RetentionTurn>> {
    let mut connection = pool.acquire().await?;
    let taken: bool = sqlx::query_scalar(
        "SELECT pg_try_advisory_lock(hashtext('reelay_retention:' || current_schema()))",
    )
    .fetch_one(&mut *connection)
    .await?;
    Ok(taken.then(|| RetentionTurn(Some(connection))))
}

/// The bytes of this schema's tables with their indexes and TOAST.
pub(super) async fn database_bytes(pool: &PgPool) -> Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT CAST(COALESCE(SUM(pg_total_relation_size(c.oid)), 0) AS BIGINT) \
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = current_schema() AND c.relkind = 'r'",
    )
    .fetch_one(pool)
    .await?)
}
