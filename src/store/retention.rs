//! Retention and compaction: a background pass that removes events past retention which
//! every subscription wanting them has received, keeps the latest event of each catalog
//! entity whatever its age, and removes old attempt records and dead letters.
//!
//! What holds an event back (it is kept even past retention):
//! - it is the latest event of a catalog entity (compaction): `GET …/entities` and a full
//!   resync read it; a deletion is kept `tombstone_retention` past its retention, then the
//!   entity is forgotten;
//! - it is in the retry set (a pending retry or a dead letter) of any subscription;
//! - an enabled subscription of its account wants it (by event name or topic, a job's
//!   callback by the job; the payload filter is not looked at, so this errs on keeping)
//!   and its cursor is before it. A disabled subscription holds back for `grace` after it
//!   was disabled; a deleted or expired one holds nothing. One subscription that is down
//!   holds back only its account's events it wants, never everyone's;
//! - it is the log head (SQLite reads the head from the log: removing it would hand its
//!   position out again).
//!
//! The pass reads the log in small batches of positions and removes each batch in its own
//! short transaction, pausing between them, so the log writer never waits long for the
//! database. Ordinary passes go on from where the last one stopped (what has newly aged,
//! and what they held back for a subscription a little behind); a full sweep from the
//! start of the log, at start and every `FULL_SWEEP_EVERY` passes, looks again at
//! everything kept (a subscription that was down and caught up, an entity that has a
//! newer event, a topic with a longer retention).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use sqlx::QueryBuilder;

use super::database::Pool;
use super::{Database, Result, postgres, sqlite};
use crate::model::{EventFilter, Millis};

/// Positions read (and at most removed) per batch: a delete of this many rows is a
/// millisecond or two of the write lock.
const BATCH: u32 = 1_000;
/// The pause between two batches: the log writer's commits go first.
const BATCH_PAUSE: Duration = Duration::from_millis(5);
/// Every this many passes, one looks at the whole log again (see the module's notes).
const FULL_SWEEP_EVERY: u64 = 30;
/// An ordinary pass goes on from the first event it held back for a subscription or a
/// retry (a subscription a little behind catches up within seconds), unless that is
/// more than this many positions back: a subscription that is down leaves its events
/// to the full sweeps, so that each pass does not read them all again.
const RESCAN_AT_MOST: i64 = 20_000;
/// Attempt records or dead letters removed per statement.
const RECORD_BATCH: u32 = 1_000;

/// What the pass keeps and for how long (`reelay serve`'s retention flags).
#[derive(Debug, Clone)]
pub struct RetentionPolicy {
    /// How long events are kept; `None`: for ever (nothing is removed from the log).
    pub retention: Option<Duration>,
    /// Most bytes of event documents kept.
    pub retention_bytes: Option<u64>,
    /// Topics with a retention of their own.
    pub topics: HashMap<String, Duration>,
    pub tombstone_retention: Duration,
    /// How long a disabled subscription still holds back the events it wants.
    pub grace: Duration,
    pub attempt_retention: Duration,
    pub interval: Duration,
}

impl RetentionPolicy {
    /// The retention of one topic's events; `None`: kept for ever.
    fn retention_of(&self, topic: &str) -> Option<Duration> {
        match self.topics.get(topic) {
            Some(retention) => Some(*retention),
            None => self.retention,
        }
    }

    /// The shortest retention of any event: nothing received after `now` less this is
    /// past retention. `None`: no event ever is.
    fn shortest(&self) -> Option<Duration> {
        self.topics.values().copied().chain(self.retention).min()
    }

    fn removes_events(&self) -> bool {
        self.shortest().is_some() || self.retention_bytes.is_some()
    }
}

fn millis(duration: Duration) -> Millis {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// One event as the pass looks at it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(super) struct Candidate {
    pub seq: i64,
    pub account: String,
    pub name: String,
    pub topic: String,
    pub entity_key: Option<String>,
    pub received_at: i64,
    pub bytes: i64,
}

/// A subscription as the pass needs it: what it wants and how far it has got.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(super) struct HolderRow {
    pub account: String,
    pub events: String,
    pub topics: String,
    pub job_id: Option<String>,
    pub cursor: i64,
}

#[derive(Debug, Clone)]
struct Holder {
    filter: EventFilter,
    job: Option<String>,
    cursor: i64,
}

impl Holder {
    fn of(row: HolderRow) -> (String, Holder) {
        let list = |json: &str| serde_json::from_str::<Vec<String>>(json).unwrap_or_default();
        (
            row.account,
            Holder {
                filter: EventFilter {
                    events: list(&row.events),
                    topics: list(&row.topics),
                },
                job: row.job_id,
                cursor: row.cursor,
            },
        )
    }

    /// Whether this subscription still has to receive `event` (the router's rule: by
    /// name or topic; a job's callback only its job's events).
    fn holds(&self, event: &Candidate) -> bool {
        if event.seq <= self.cursor || !self.filter.matches(&event.name, &event.topic) {
            return false;
        }
        match &self.job {
            None => true,
            Some(job) => event.entity_key.as_deref() == Some(job.as_str()),
        }
    }
}

/// The latest event of an entity in a batch's range.
#[derive(Debug, Clone, Copy, sqlx::FromRow)]
pub(super) struct EntityHead {
    pub seq: i64,
    pub deleted: i64,
}

/// What became of one event the pass looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Not past its retention yet.
    Young,
    /// The latest event of its entity (compaction).
    EntityHead,
    /// A pending retry or dead letter needs it.
    Retrying,
    /// A subscription has not received it yet.
    Undelivered,
    Remove,
    /// A deletion past its tombstone retention: the event and the entity go.
    RemoveTombstone,
}

/// Decides one event's fate; pure, for the unit tests.
fn verdict(
    event: &Candidate,
    policy: &RetentionPolicy,
    now: Millis,
    over_bytes: bool,
    head: Option<EntityHead>,
    retrying: bool,
    holders: Option<&Vec<Holder>>,
) -> Verdict {
    let aged = policy
        .retention_of(&event.topic)
        .is_some_and(|retention| event.received_at < now.saturating_sub(millis(retention)));
    if !aged && !over_bytes {
        return Verdict::Young;
    }
    let mut tombstone = false;
    if let Some(head) = head {
        let gone = head.deleted != 0
            && policy.retention_of(&event.topic).is_some_and(|retention| {
                event.received_at
                    < now.saturating_sub(millis(retention) + millis(policy.tombstone_retention))
            });
        if !gone {
            return Verdict::EntityHead;
        }
        tombstone = true;
    }
    if retrying {
        return Verdict::Retrying;
    }
    if holders.is_some_and(|holders| holders.iter().any(|h| h.holds(event))) {
        return Verdict::Undelivered;
    }
    if tombstone {
        Verdict::RemoveTombstone
    } else {
        Verdict::Remove
    }
}

/// What one pass did, for the metrics and the logs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PassReport {
    pub removed_events: u64,
    pub removed_bytes: u64,
    pub removed_tombstones: u64,
    /// Past retention but kept: the latest events of entities.
    pub kept_entities: u64,
    /// Past retention but kept for a subscription or a retry.
    pub held: u64,
    pub removed_attempts: u64,
    pub removed_dead_letters: u64,
    pub full_sweep: bool,
}

/// What the pass remembers from one run to the next.
#[derive(Debug, Default)]
pub struct RetentionState {
    passes: u64,
    /// Ordinary passes go on after this position.
    resume: i64,
    /// The log's events and bytes up to `counted_upto`, as last counted and kept up.
    events: i64,
    bytes: i64,
    counted_upto: Option<i64>,
}

impl Database {
    /// The subscriptions that hold events back at `now` (see the module's notes).
    async fn retention_holders(
        &self,
        now: Millis,
        grace: Duration,
    ) -> Result<HashMap<String, Vec<Holder>>> {
        let rows: Vec<HolderRow> = on_pool!(self, |pool| sqlx::query_as(
            "SELECT account, events, topics, job_id, cursor FROM subscriptions \
             WHERE (disabled_at IS NULL OR disabled_at > $1) \
               AND (expires_at IS NULL OR expires_at > $2)"
        )
        .bind(now.saturating_sub(millis(grace)))
        .bind(now)
        .fetch_all(pool)
        .await?);
        let mut holders: HashMap<String, Vec<Holder>> = HashMap::new();
        for row in rows {
            let (account, holder) = Holder::of(row);
            holders.entry(account).or_default().push(holder);
        }
        Ok(holders)
    }

    /// Up to `limit` events after `after` and before `below`, in log order.
    async fn retention_candidates(
        &self,
        after: i64,
        below: i64,
        limit: u32,
    ) -> Result<Vec<Candidate>> {
        Ok(on_pool!(self, |pool| sqlx::query_as(
            "SELECT seq, account, name, topic, entity_key, received_at, \
             CAST(octet_length(body) AS BIGINT) AS bytes FROM events \
             WHERE seq > $1 AND seq < $2 ORDER BY seq LIMIT $3"
        )
        .bind(after)
        .bind(below)
        .bind(i64::from(limit))
        .fetch_all(pool)
        .await?))
    }

    /// The entity heads and the retried positions from `low` to `high`.
    async fn retention_keeps(
        &self,
        low: i64,
        high: i64,
    ) -> Result<(HashMap<i64, EntityHead>, HashSet<i64>)> {
        let (heads, retried): (Vec<EntityHead>, Vec<i64>) = on_pool!(self, |pool| {
            let heads =
                sqlx::query_as("SELECT seq, deleted FROM entities WHERE seq >= $1 AND seq <= $2")
                    .bind(low)
                    .bind(high)
                    .fetch_all(pool)
                    .await?;
            let retried = sqlx::query_scalar(
                "SELECT DISTINCT seq FROM retries WHERE seq >= $1 AND seq <= $2",
            )
            .bind(low)
            .bind(high)
            .fetch_all(pool)
            .await?;
            (heads, retried)
        });
        Ok((
            heads.into_iter().map(|head| (head.seq, head)).collect(),
            retried.into_iter().collect(),
        ))
    }

    /// Removes events (and the entities of expired deletions) in one transaction, and
    /// moves each account's retention mark up to the last position removed.
    async fn remove_events(
        &self,
        events: &[(i64, &str)],
        tombstones: &[i64],
        now: Millis,
    ) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let mut marks: HashMap<&str, i64> = HashMap::new();
        for (seq, account) in events {
            let mark = marks.entry(account).or_insert(*seq);
            *mark = (*mark).max(*seq);
        }
        on_pool!(self, |pool| {
            let mut tx = pool.begin().await?;
            let mut delete = QueryBuilder::new("DELETE FROM events WHERE seq IN (");
            let mut list = delete.separated(", ");
            for (seq, _) in events {
                list.push_bind(*seq);
            }
            delete.push(")");
            delete.build().execute(&mut *tx).await?;
            if !tombstones.is_empty() {
                let mut delete =
                    QueryBuilder::new("DELETE FROM entities WHERE deleted = 1 AND seq IN (");
                let mut list = delete.separated(", ");
                for seq in tombstones {
                    list.push_bind(*seq);
                }
                delete.push(")");
                delete.build().execute(&mut *tx).await?;
            }
            for (account, upto) in marks {
                sqlx::query(
                    "INSERT INTO retention_marks (account, removed_upto, updated_at) \
                     VALUES ($1, $2, $3) ON CONFLICT (account) DO UPDATE SET \
                     removed_upto = excluded.removed_upto, updated_at = excluded.updated_at \
                     WHERE excluded.removed_upto > retention_marks.removed_upto",
                )
                .bind(account)
                .bind(upto)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// The highest position of the account's log that retention removed an event at
    /// (0: none): the log of the account is complete after it.
    pub async fn retention_mark(&self, account: &str) -> Result<i64> {
        let mark: Option<i64> = on_pool!(self, |pool| sqlx::query_scalar(
            "SELECT removed_upto FROM retention_marks WHERE account = $1"
        )
        .bind(account)
        .fetch_optional(pool)
        .await?);
        Ok(mark.unwrap_or(0))
    }

    /// Events and bytes of documents after `after` and up to `upto`.
    async fn log_size(&self, after: i64, upto: i64) -> Result<(i64, i64)> {
        Ok(on_pool!(self, |pool| sqlx::query_as(
            "SELECT COUNT(*), CAST(COALESCE(SUM(octet_length(body)), 0) AS BIGINT) FROM events \
             WHERE seq > $1 AND seq <= $2"
        )
        .bind(after)
        .bind(upto)
        .fetch_one(pool)
        .await?))
    }

    /// The oldest event kept: its position and when it was committed.
    async fn oldest_event(&self) -> Result<Option<(i64, i64)>> {
        Ok(on_pool!(self, |pool| sqlx::query_as(
            "SELECT seq, received_at FROM events ORDER BY seq LIMIT 1"
        )
        .fetch_optional(pool)
        .await?))
    }

    /// Removes attempt records made before `before`, a batch at a time; returns how
    /// many.
    async fn remove_old_attempts(&self, before: Millis) -> Result<u64> {
        let mut removed = 0;
        loop {
            let batch = on_pool!(self, |pool| sqlx::query(
                "DELETE FROM attempts WHERE id IN \
                 (SELECT id FROM attempts WHERE at < $1 ORDER BY at LIMIT $2)"
            )
            .bind(before)
            .bind(i64::from(RECORD_BATCH))
            .execute(pool)
            .await?
            .rows_affected());
            removed += batch;
            if batch < u64::from(RECORD_BATCH) {
                return Ok(removed);
            }
            tokio::time::sleep(BATCH_PAUSE).await;
        }
    }

    /// Removes dead letters that died before `before`, a batch at a time; returns how
    /// many.
    async fn remove_old_dead_letters(&self, before: Millis) -> Result<u64> {
        let mut removed = 0;
        loop {
            let batch = on_pool!(self, |pool| sqlx::query(
                "DELETE FROM retries WHERE (subscription_id, seq, resync_id) IN \
                 (SELECT subscription_id, seq, resync_id FROM retries \
                  WHERE dead_at IS NOT NULL AND dead_at < $1 LIMIT $2)"
            )
            .bind(before)
            .bind(i64::from(RECORD_BATCH))
            .execute(pool)
            .await?
            .rows_affected());
            removed += batch;
            if batch < u64::from(RECORD_BATCH) {
                return Ok(removed);
            }
            tokio::time::sleep(BATCH_PAUSE).await;
        }
    }

    /// This node's turn at the retention pass: with PostgreSQL, `None` while another
    /// node holds it; SQLite has one process.
    async fn retention_turn(&self) -> Result<Option<Option<postgres::RetentionTurn>>> {
        match &self.pool {
            Pool::Sqlite(_) => Ok(Some(None)),
            Pool::Postgres(pool) => Ok(postgres::retention_turn(pool).await?.map(Some)),
        }
    }

    /// Gives the space of removed rows back (SQLite: incremental vacuum). PostgreSQL
    /// needs nothing here: autovacuum makes the dead rows' space reusable, so the
    /// tables stop growing once retention is reached.
    async fn reclaim_space(&self) -> Result<()> {
        match &self.pool {
            Pool::Sqlite(pool) => sqlite::reclaim_space(pool).await,
            Pool::Postgres(_) => Ok(()),
        }
    }

    /// The database's size on disk, in bytes.
    pub async fn database_bytes(&self) -> Result<Option<i64>> {
        Ok(Some(match &self.pool {
            Pool::Sqlite(pool) => sqlite::database_bytes(pool).await?,
            Pool::Postgres(pool) => postgres::database_bytes(pool).await?,
        }))
    }

    /// With SQLite: switches a database made before incremental auto-vacuum to it (see
    /// [`sqlite::use_incremental_vacuum`]); returns whether it had to.
    pub async fn use_incremental_vacuum(&self) -> Result<bool> {
        match &self.pool {
            Pool::Sqlite(pool) => sqlite::use_incremental_vacuum(pool).await,
            Pool::Postgres(_) => Ok(false),
        }
    }

    /// Writes a row as large as a few events and removes it in the same transaction:
    /// fails as an append would when the disk (or the database) is full.
    pub async fn probe_write(&self) -> Result<()> {
        on_pool!(self, |pool| {
            let mut tx = pool.begin().await?;
            sqlx::query(
                "INSERT INTO server_secrets (name, value, created_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            )
            .bind("write_probe")
            .bind("x".repeat(16 * 1024))
            .bind(crate::model::now_millis())
            .execute(&mut *tx)
            .await?;
            sqlx::query("DELETE FROM server_secrets WHERE name = $1")
                .bind("write_probe")
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
        });
        Ok(())
    }

    /// One retention pass at `now` (see the module's notes).
    pub async fn retention_pass(
        &self,
        policy: &RetentionPolicy,
        state: &mut RetentionState,
        now: Millis,
    ) -> Result<PassReport> {
        let Some(_turn) = self.retention_turn().await? else {
            // Another node is running a pass on the shared database.
            return Ok(PassReport::default());
        };
        let mut report = PassReport::default();
        let head = self.head().await?;
        // Keep the count of the log up: in full at a full sweep, else what was added.
        let full = state.passes.is_multiple_of(FULL_SWEEP_EVERY);
        state.passes += 1;
        report.full_sweep = full;
        match state.counted_upto {
            Some(upto) if !full => {
                let (events, bytes) = self.log_size(upto, head).await?;
                state.events += events;
                state.bytes += bytes;
            }
            _ => {
                (state.events, state.bytes) = self.log_size(0, head).await?;
            }
        }
        state.counted_upto = Some(head.max(state.counted_upto.unwrap_or(0)));
        let mut over_bytes = match policy.retention_bytes {
            Some(limit) => state.bytes - i64::try_from(limit).unwrap_or(i64::MAX),
            None => 0,
        };
        if policy.removes_events() {
            // Read at the first batch that has anything old: a pass that finds nothing to
            // remove does not read every subscription (100,000 of them: 50 MB for a moment).
            let mut holders = None;
            // Nothing received after this is past any retention.
            let young = policy
                .shortest()
                .map_or(i64::MIN, |shortest| now.saturating_sub(millis(shortest)));
            let mut after = if full || over_bytes > 0 {
                0
            } else {
                state.resume
            };
            let mut first_held = None;
            loop {
                let batch = self.retention_candidates(after, head, BATCH).await?;
                let (Some(first), Some(last)) = (batch.first(), batch.last()) else {
                    break;
                };
                if first.received_at >= young && over_bytes <= 0 {
                    break;
                }
                let holders = match holders {
                    Some(ref holders) => holders,
                    None => holders.insert(self.retention_holders(now, policy.grace).await?),
                };
                let (heads, retried) = self.retention_keeps(first.seq, last.seq).await?;
                let mut remove = Vec::new();
                let mut tombstones = Vec::new();
                let mut stop = None;
                for event in &batch {
                    let verdict = verdict(
                        event,
                        policy,
                        now,
                        over_bytes > 0,
                        heads.get(&event.seq).copied(),
                        retried.contains(&event.seq),
                        holders.get(&event.account),
                    );
                    match verdict {
                        Verdict::Young => {
                            if event.received_at >= young {
                                // Everything from here on is younger still (positions
                                // follow commit order): the next pass goes on here.
                                stop = Some(event.seq - 1);
                                break;
                            }
                        }
                        Verdict::EntityHead => report.kept_entities += 1,
                        Verdict::Retrying | Verdict::Undelivered => {
                            report.held += 1;
                            first_held.get_or_insert(event.seq);
                        }
                        Verdict::Remove | Verdict::RemoveTombstone => {
                            if verdict == Verdict::RemoveTombstone {
                                tombstones.push(event.seq);
                            }
                            remove.push((event.seq, event.account.as_str()));
                            over_bytes -= event.bytes;
                            report.removed_bytes += u64::try_from(event.bytes).unwrap_or(0);
                        }
                    }
                }
                let started = Instant::now();
                self.remove_events(&remove, &tombstones, now).await?;
                metrics::histogram!("reelay_retention_batch_seconds")
                    .record(started.elapsed().as_secs_f64());
                report.removed_events += remove.len() as u64;
                report.removed_tombstones += tombstones.len() as u64;
                state.events -= remove.len() as i64;
                after = stop.unwrap_or(last.seq);
                if stop.is_some() || batch.len() < BATCH as usize {
                    break;
                }
                tokio::time::sleep(BATCH_PAUSE).await;
            }
            state.resume = match first_held {
                Some(held) if after - held <= RESCAN_AT_MOST => held - 1,
                _ => after,
            };
            state.bytes -= i64::try_from(report.removed_bytes).unwrap_or(0);
        }
        let records_before = now.saturating_sub(millis(policy.attempt_retention));
        report.removed_attempts = self.remove_old_attempts(records_before).await?;
        report.removed_dead_letters = self.remove_old_dead_letters(records_before).await?;
        if report.removed_events > 0 || report.removed_attempts > 0 {
            self.reclaim_space().await?;
        }
        self.record_retention_metrics(state, &report, now).await?;
        Ok(report)
    }

    async fn record_retention_metrics(
        &self,
        state: &RetentionState,
        report: &PassReport,
        now: Millis,
    ) -> Result<()> {
        let backend = match self.backend() {
            super::Backend::Sqlite => "sqlite",
            super::Backend::Postgres => "postgres",
        };
        metrics::gauge!("reelay_stored_events", "backend" => backend).set(state.events as f64);
        metrics::gauge!("reelay_stored_event_bytes", "backend" => backend).set(state.bytes as f64);
        if let Some(bytes) = self.database_bytes().await? {
            metrics::gauge!("reelay_database_bytes", "backend" => backend).set(bytes as f64);
        }
        if let Some((seq, received_at)) = self.oldest_event().await? {
            metrics::gauge!("reelay_oldest_retained_sequence").set(seq as f64);
            metrics::gauge!("reelay_oldest_retained_age_seconds")
                .set(now.saturating_sub(received_at) as f64 / 1000.0);
        }
        for (kind, count) in [
            ("events", report.removed_events),
            ("tombstones", report.removed_tombstones),
            ("attempts", report.removed_attempts),
            ("dead_letters", report.removed_dead_letters),
        ] {
            metrics::counter!("reelay_retention_removed_total", "kind" => kind).increment(count);
        }
        metrics::gauge!("reelay_retention_held_events").set(report.held as f64);
        metrics::gauge!("reelay_retention_compacted_events").set(report.kept_entities as f64);
        Ok(())
    }
}

/// Runs retention passes every `policy.interval` until `stop` is cancelled.
pub async fn run_retention(
    db: Database,
    policy: RetentionPolicy,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut state = RetentionState::default();
    loop {
        let started = Instant::now();
        // A pass stops at shutdown wherever it is: a batch not committed is rolled back.
        let pass = tokio::select! {
            _ = stop.cancelled() => return,
            pass = db.retention_pass(&policy, &mut state, crate::model::now_millis()) => pass,
        };
        match pass {
            Ok(report) => {
                metrics::histogram!("reelay_retention_pass_seconds")
                    .record(started.elapsed().as_secs_f64());
                if report.removed_events + report.removed_attempts + report.removed_dead_letters > 0
                {
                    tracing::info!(
                        events = report.removed_events,
                        bytes = report.removed_bytes,
                        tombstones = report.removed_tombstones,
                        attempts = report.removed_attempts,
                        dead_letters = report.removed_dead_letters,
                        held = report.held,
                        seconds = started.elapsed().as_secs_f64(),
                        "retention pass"
                    );
                }
            }
            Err(error) => tracing::warn!(%error, "retention pass failed; will try again"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(policy.interval) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400_000;

    fn policy() -> RetentionPolicy {
        RetentionPolicy {
            retention: Some(Duration::from_secs(86_400)),
            retention_bytes: None,
            topics: HashMap::from([("catalog".to_owned(), Duration::from_secs(30 * 86_400))]),
            tombstone_retention: Duration::from_secs(7 * 86_400),
            grace: Duration::from_secs(86_400),
            attempt_retention: Duration::from_secs(86_400),
            interval: Duration::from_secs(30),
        }
    }

    fn event(seq: i64, topic: &str, received_at: i64) -> Candidate {
        Candidate {
            seq,
            account: "a".into(),
            name: "player_log_event".into(),
            topic: topic.into(),
            entity_key: None,
            received_at,
            bytes: 100,
        }
    }

    fn holder(topic: &str, cursor: i64) -> Holder {
        Holder {
            filter: EventFilter {
                events: vec![],
                topics: vec![topic.into()],
            },
            job: None,
            cursor,
        }
    }

    #[test]
    fn an_aged_delivered_event_goes_and_a_young_one_stays() {
        let now = 100 * DAY;
        let policy = policy();
        let old = event(5, "player", now - 2 * DAY);
        let young = event(6, "player", now - DAY / 2);
        let holders = vec![holder("player", 10)];
        assert_eq!(
            verdict(&old, &policy, now, false, None, false, Some(&holders)),
            Verdict::Remove
        );
        assert_eq!(
            verdict(&young, &policy, now, false, None, false, Some(&holders)),
            Verdict::Young
        );
        // The topic's own retention (30 days) keeps it.
        let catalog = event(7, "catalog", now - 2 * DAY);
        assert_eq!(
            verdict(&catalog, &policy, now, false, None, false, None),
            Verdict::Young
        );
        // Over the byte limit, age does not matter.
        assert_eq!(
            verdict(&young, &policy, now, true, None, false, Some(&holders)),
            Verdict::Remove
        );
    }

    #[test]
    fn only_a_subscription_that_wants_it_and_has_not_received_it_holds_it() {
        let now = 100 * DAY;
        let old = event(5, "player", now - 2 * DAY);
        let behind = vec![holder("player", 4)];
        let other_topic = vec![holder("catalog", 0)];
        assert_eq!(
            verdict(&old, &policy(), now, false, None, false, Some(&behind)),
            Verdict::Undelivered
        );
        assert_eq!(
            verdict(&old, &policy(), now, false, None, false, Some(&other_topic)),
            Verdict::Remove
        );
        assert_eq!(
            verdict(&old, &policy(), now, false, None, true, None),
            Verdict::Retrying
        );
        // A job's callback holds only its job's events.
        let mut job = holder("player", 0);
        job.job = Some("job-1".into());
        assert_eq!(
            verdict(&old, &policy(), now, false, None, false, Some(&vec![job])),
            Verdict::Remove
        );
    }

    #[test]
    fn an_entity_keeps_its_latest_event_and_a_deletion_for_a_while() {
        let now = 100 * DAY;
        let live = EntityHead { seq: 5, deleted: 0 };
        let deleted = EntityHead { seq: 5, deleted: 1 };
        let old = event(5, "player", now - 2 * DAY);
        assert_eq!(
            verdict(&old, &policy(), now, false, Some(live), false, None),
            Verdict::EntityHead
        );
        assert_eq!(
            verdict(&old, &policy(), now, false, Some(deleted), false, None),
            Verdict::EntityHead
        );
        let ancient = event(5, "player", now - 9 * DAY);
        assert_eq!(
            verdict(&ancient, &policy(), now, false, Some(live), false, None),
            Verdict::EntityHead
        );
        assert_eq!(
            verdict(&ancient, &policy(), now, false, Some(deleted), false, None),
            Verdict::RemoveTombstone
        );
    }
}
