//! The single writer: group commit of appends and delivery progress.
//!
//! SQLite allows one writer at a time, and every commit costs an fsync. So one thread
//! owns all hot-path writes: it takes the first queued operation, then everything else
//! already queued (up to a bound), and commits them in one transaction. Under load many publishes
//! share one fsync; when idle a publish commits alone, at once. After the commit the new
//! events are handed to dispatch in memory, so no one polls the database for them.

use std::collections::HashSet;
use std::sync::{Arc, OnceLock};

use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::{broadcast, mpsc, oneshot, watch};

use super::derive::Derivation;
use super::{Appended, Database, LogConnection, Progress, Result, StoreError, postgres};
use crate::model::{EntityChange, NewEvent, StoredEvent, now_millis};
use opentelemetry::trace::SpanContext;

/// Events committed together, and the range of sequence numbers the commit covered.
/// Batches arrive in commit order and `after` of one is `upto` of the previous one, so a
/// reader that sees `after` above what it has read knows it missed some.
#[derive(Debug)]
pub struct CommittedBatch {
    pub after: i64,
    pub upto: i64,
    pub events: Vec<Arc<StoredEvent>>,
}

pub(super) enum WriteOp {
    Append {
        events: Vec<NewEvent>,
        /// The publish's span, when it is traced: the commit gets a span under it.
        trace: Option<SpanContext>,
        reply: oneshot::Sender<Result<Vec<Appended>>>,
    },
    Progress(Progress),
    Flush(oneshot::Sender<()>),
    /// A flush after which the writer ends, whatever [`super::Store`] handles are still
    /// about: the server's shutdown does not depend on every clone being dropped.
    Close(oneshot::Sender<()>),
}

/// An event on its way into the log.
pub(super) struct LogRow {
    pub event: StoredEvent,
    /// The video the event changes, and the position reserved for its `video-change`
    /// (right after the event, so a subscriber sees the change after its cause).
    pub video_change: Option<(String, i64)>,
    /// The catalog entity whose latest state this event becomes.
    pub entity: Option<EntityChange>,
}

/// What became of a [`LogRow`] in its commit.
#[derive(Debug)]
pub(super) enum Written {
    /// An earlier commit stored this id: nothing new, nothing derived.
    Duplicate,
    Stored {
        video_change: Option<StoredEvent>,
    },
}

/// Bounds one transaction, so a burst does not hold every publisher for one long commit.
const MAX_EVENTS_PER_COMMIT: usize = 5_000;
const MAX_OPS_PER_COMMIT: usize = 1_024;

/// Where the writer commits.
pub(super) enum Log {
    /// Its own SQLite connection: this process is the only writer.
    Sqlite(LogConnection),
    /// The shared PostgreSQL database; other nodes append too.
    Postgres { db: Database, pool: sqlx::PgPool },
}

/// Who learns of a commit.
pub(super) enum Announce {
    /// The dispatchers, directly: no other process appends, so commits are the log.
    Dispatchers {
        committed: broadcast::Sender<Arc<CommittedBatch>>,
        head: watch::Sender<i64>,
    },
    /// This node's log follower, which merges them with the other nodes' commits. The
    /// head moves at once (every position up to it is committed), the dispatchers get
    /// the events from the follower.
    Follower {
        follower: mpsc::UnboundedSender<CommittedBatch>,
        head: watch::Sender<i64>,
    },
}

/// Moves a head forward (never back: the writer and the log follower both move it).
pub(super) fn advance(head: &watch::Sender<i64>, to: i64) {
    head.send_if_modified(|head| {
        let forward = to > *head;
        if forward {
            *head = to;
        }
        forward
    });
}

/// After a failed commit, progress reports are tried again after this long even if no
/// new work arrives.
const PROGRESS_RETRY: Duration = Duration::from_millis(200);

/// Why the writer stopped appending, once it has: set once, read by `/healthz` and by
/// every publish (which then gets `503` instead of events stored where no one reads).
pub(super) type Halted = Arc<OnceLock<String>>;

/// Why the last group commit failed (a full disk, a database that is down), until one
/// succeeds again: `/healthz` says the store cannot write meanwhile.
pub(super) type Failing = Arc<std::sync::Mutex<Option<String>>>;

/// The first of `count` consecutive positions from `next`, and the position after them;
/// `None` when they would pass the largest sequence number. The writer hands out
/// positions below `i64::MAX` only, so the one after the last is always representable.
pub(super) fn reserve(next: i64, count: i64) -> Option<(i64, i64)> {
    next.checked_add(count).map(|after| (next, after))
}

/// Why a log head read at start cannot be appended after.
pub(super) fn unusable_head(head: i64) -> Option<String> {
    if head < 0 {
        return Some(format!(
            "the log head {head} is negative: the log is corrupt"
        ));
    }
    // Room for at least one event (and the position after it).
    head.checked_add(1)
        .and_then(|next| reserve(next, 1))
        .is_none()
        .then(|| format!("the log head {head} leaves no sequence number for a new event"))
}

pub(super) struct Writer {
    log: Log,
    queue: mpsc::Receiver<WriteOp>,
    announce: Announce,
    next_seq: i64,
    halted: Halted,
    failing: Failing,
    derivation: Derivation,
    runtime: Handle,
    /// Progress reports whose commit failed, to go first into the next one: a
    /// dispatcher has moved on believing them saved, so they cannot be refused like a
    /// publish. Flushes wait until they are in.
    carried: Vec<Progress>,
    carried_flushes: Vec<oneshot::Sender<()>>,
    /// A [`WriteOp::Close`] came: the writer ends after this commit.
    closing: bool,
}

impl Writer {
    /// A writer that numbers new events from `head_seq + 1`. Call in the runtime the
    /// writer's thread should use for async work. A head with no room after it halts the
    /// writer at once.
    pub(super) fn new(
        log: Log,
        queue: mpsc::Receiver<WriteOp>,
        announce: Announce,
        head_seq: i64,
        derivation: Derivation,
        halted: Halted,
        failing: Failing,
    ) -> Writer {
        let mut writer = Writer {
            log,
            queue,
            announce,
            next_seq: head_seq.saturating_add(1),
            halted,
            failing,
            derivation,
            runtime: Handle::current(),
            carried: Vec::new(),
            carried_flushes: Vec::new(),
            closing: false,
        };
        if let Some(reason) = unusable_head(head_seq) {
            writer.halt(reason);
        }
        // Shown at 0 from the start, so an alert on its rate has a series to watch.
        metrics::counter!("reelay_commit_errors_total").increment(0);
        writer
    }

    /// Stops appending for good (until an operator repairs the log and restarts): events
    /// stored past a corrupt head would reach no one while their publishers got `202`.
    /// Progress reports and flushes go on, so deliveries of what is stored continue.
    fn halt(&mut self, reason: String) {
        if self.halted.get().is_none() {
            tracing::error!(
                reason = %reason,
                "the log writer has stopped appending: publishes get 503 and /healthz reports it until the log is repaired"
            );
            let _ = self.halted.set(reason);
        }
    }

    fn halted_error(&self) -> Option<StoreError> {
        self.halted
            .get()
            .map(|reason| StoreError::LogHalted(reason.clone()))
    }

    /// Waits for the next operation; with progress left from a failed commit, only for a
    /// while. `None` when the queue is closed and empty and nothing is left to save.
    fn next_op(&mut self) -> Option<Option<WriteOp>> {
        if self.carried.is_empty() {
            return self.queue.blocking_recv().map(Some);
        }
        let queue = &mut self.queue;
        match self
            .runtime
            .block_on(tokio::time::timeout(PROGRESS_RETRY, queue.recv()))
        {
            Ok(Some(op)) => Some(Some(op)),
            // Closed: the carried progress is tried once more, then the writer ends.
            Ok(None) => None,
            Err(_) => Some(None),
        }
    }

    /// Runs on a thread of its own until every [`super::Store`] handle is dropped and the
    /// queue is empty, or a [`WriteOp::Close`] is committed.
    pub(super) fn run(mut self) {
        while !self.closing
            && let Some(first) = self.next_op()
        {
            let Some(first) = first else {
                self.commit(Vec::new());
                continue;
            };
            let mut ops = vec![first];
            let mut events = ops_event_count(&ops);
            while ops.len() < MAX_OPS_PER_COMMIT && events < MAX_EVENTS_PER_COMMIT {
                match self.queue.try_recv() {
                    Ok(op) => {
                        events += ops_event_count(std::slice::from_ref(&op));
                        ops.push(op);
                    }
                    Err(_) => break,
                }
            }
            self.commit(ops);
        }
        if !self.carried.is_empty() {
            self.commit(Vec::new());
        }
    }

    fn commit(&mut self, ops: Vec<WriteOp>) {
        let received_at = now_millis();
        let after = self.next_seq - 1;

        // Give every new event its sequence number; an id seen earlier in this same
        // commit is a duplicate without asking the database.
        let mut rows = Vec::new();
        let mut seen = HashSet::new();
        let mut progress = std::mem::take(&mut self.carried);
        let mut appends = Vec::new();
        let mut flushes = std::mem::take(&mut self.carried_flushes);
        let mut exhausted = false;
        // The traced publishes of this commit (none with tracing off).
        let mut traced = Vec::new();
        for op in ops {
            match op {
                WriteOp::Append {
                    events,
                    trace,
                    reply,
                } => {
                    traced.extend(trace);
                    if let Some(error) = self.halted_error() {
                        let _ = reply.send(Err(error));
                        continue;
                    }
                    let mut slots = Vec::with_capacity(events.len());
                    for event in events {
                        if seen.insert((event.account.clone(), event.id.clone())) {
                            // Reserved even if the event turns out to be a duplicate: a
                            // gap in the log is fine. The `video-change` goes right after.
                            let count = if event.video.is_some() { 2 } else { 1 };
                            let Some((seq, next)) = reserve(self.next_seq, count) else {
                                exhausted = true;
                                break;
                            };
                            self.next_seq = next;
                            let video_change = event.video.map(|video| (video, seq + 1));
                            slots.push(Slot::New(rows.len()));
                            rows.push(LogRow {
                                event: StoredEvent {
                                    seq,
                                    account: event.account,
                                    id: event.id,
                                    name: event.name,
                                    topic: event.topic,
                                    entity_key: event.entity_key,
                                    occurred_at: event.occurred_at,
                                    received_at,
                                    body: event.body,
                                    trace: event.trace,
                                },
                                video_change,
                                entity: event.entity,
                            });
                        } else {
                            slots.push(Slot::Duplicate(event.id));
                        }
                    }
                    appends.push((slots, reply));
                }
                WriteOp::Progress(report) => progress.push(report),
                WriteOp::Flush(reply) => flushes.push(reply),
                WriteOp::Close(reply) => {
                    flushes.push(reply);
                    self.closing = true;
                }
            }
        }
        if exhausted {
            // No event of this commit is stored: refusing some of one request and not
            // the rest would answer it by halves.
            self.halt(format!(
                "sequence numbers are exhausted: the log head is {after}"
            ));
            rows.clear();
            self.next_seq = after + 1;
            let reason = self.halted.get().cloned().unwrap_or_default();
            for (_, reply) in appends.drain(..) {
                let _ = reply.send(Err(StoreError::LogHalted(reason.clone())));
            }
        }

        let reserved = self.next_seq - 1 - after;
        let started = std::time::Instant::now();
        let started_at = (!traced.is_empty()).then(std::time::SystemTime::now);
        let committed = self.commit_group(&mut rows, after, reserved, &progress);
        metrics::histogram!("reelay_commit_seconds").record(started.elapsed().as_secs_f64());
        if let Some(started_at) = started_at {
            let failed = committed.as_ref().err().map(ToString::to_string);
            for parent in &traced {
                crate::trace::spans::commit(
                    parent,
                    started_at,
                    rows.len(),
                    appends.len(),
                    failed.as_deref(),
                );
            }
        }
        metrics::histogram!("reelay_commit_events").record(rows.len() as f64);
        // Only commits that append say whether events can be stored: a progress report
        // (an update in place) may still fit where a new event does not.
        if !rows.is_empty() {
            *self.failing.lock().unwrap_or_else(|e| e.into_inner()) =
                committed.as_ref().err().map(ToString::to_string);
        }
        match committed {
            Ok((written, log_after)) => {
                // In log order: each derived event right after its cause.
                let mut events = Vec::with_capacity(rows.len());
                // A row the database skipped had its id stored by an earlier commit.
                let stored: Vec<Result<Arc<StoredEvent>, String>> = rows
                    .into_iter()
                    .zip(written)
                    .map(|(row, written)| match written {
                        Written::Stored { video_change } => {
                            let event = Arc::new(row.event);
                            events.push(event.clone());
                            events.extend(video_change.map(Arc::new));
                            Ok(event)
                        }
                        Written::Duplicate => Err(row.event.id),
                    })
                    .collect();
                // The head moves before publishers are answered: a subscription created
                // after a 202 starts after that event, and a resync's snapshot covers it.
                self.announce(log_after, reserved, events);
                for (slots, reply) in appends {
                    let answer = slots
                        .into_iter()
                        .map(|slot| match slot {
                            Slot::New(index) => match &stored[index] {
                                Ok(event) => Appended::Stored(event.clone()),
                                Err(id) => Appended::Duplicate { id: id.clone() },
                            },
                            Slot::Duplicate(id) => Appended::Duplicate { id },
                        })
                        .collect();
                    let _ = reply.send(Ok(answer));
                }
            }
            Err(error) => {
                if let StoreError::LogHalted(reason) = &error {
                    self.halt(reason.clone());
                }
                metrics::counter!("reelay_commit_errors_total").increment(1);
                tracing::error!(%error, "group commit failed; its publishers get an error");
                // Nothing was stored: the positions handed out above are free again.
                self.next_seq = after + 1;
                for (_, reply) in appends {
                    let _ = reply.send(Err(StoreError::CommitFailed(error.to_string())));
                }
                if !progress.is_empty() {
                    tracing::error!("delivery progress not saved; trying again");
                    self.carried = progress;
                    self.carried_flushes = flushes;
                    return;
                }
            }
        }
        for flush in flushes {
            let _ = flush.send(());
        }
    }

    /// Commits one group where the log lives. Returns what became of each row and the
    /// position the group starts after (PostgreSQL: other nodes may have appended since
    /// this writer last looked, and the rows are moved up to follow them).
    fn commit_group(
        &mut self,
        rows: &mut [LogRow],
        after: i64,
        reserved: i64,
        progress: &[Progress],
    ) -> Result<(Vec<Written>, i64)> {
        match &mut self.log {
            Log::Sqlite(connection) => connection
                .commit_group(rows, progress, &self.derivation)
                .map(|written| (written, after)),
            Log::Postgres { db, pool } => self.runtime.block_on(postgres::commit_group(
                db,
                pool,
                rows,
                after,
                reserved,
                progress,
                &self.derivation,
            )),
        }
    }

    /// Hands a commit's events on, and settles where the next commit starts.
    fn announce(&mut self, after: i64, reserved: i64, events: Vec<Arc<StoredEvent>>) {
        match &self.announce {
            Announce::Dispatchers { committed, head } => {
                // Positions handed out to rows that turned out to be duplicates are given
                // back when nothing stored follows them: the head must be the last stored
                // event, as a restart reads it from the log. Otherwise a cursor could be
                // saved past that head, and the events that reuse those positions after a
                // restart would be skipped.
                let upto = events.last().map_or(after, |event| event.seq);
                self.next_seq = upto + 1;
                if upto > after {
                    advance(head, upto);
                    // No receiver is fine: dispatchers that start later read the log.
                    let _ = committed.send(Arc::new(CommittedBatch {
                        after,
                        upto,
                        events,
                    }));
                }
            }
            Announce::Follower { follower, head } => {
                // The shared head keeps every reserved position (it is stored, not read
                // from the log), so a gap left by a duplicate is never reused.
                let upto = after + reserved;
                self.next_seq = upto + 1;
                if upto > after {
                    advance(head, upto);
                    let _ = follower.send(CommittedBatch {
                        after,
                        upto,
                        events,
                    });
                }
            }
        }
    }
}

/// Where an appended event's answer comes from.
enum Slot {
    New(usize),
    Duplicate(String),
}

fn ops_event_count(ops: &[WriteOp]) -> usize {
    ops.iter()
        .map(|op| match op {
            WriteOp::Append { events, .. } => events.len(),
            _ => 1,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_stop_short_of_the_largest_sequence_number() {
        assert_eq!(reserve(1, 1), Some((1, 2)));
        assert_eq!(reserve(41, 2), Some((41, 43)));
        // The last position handed out is i64::MAX - 1: the next one stays representable.
        assert_eq!(reserve(i64::MAX - 1, 1), Some((i64::MAX - 1, i64::MAX)));
        assert_eq!(reserve(i64::MAX - 1, 2), None);
        assert_eq!(reserve(i64::MAX, 1), None);
    }

    #[test]
    fn a_head_with_no_room_after_it_is_unusable() {
        assert_eq!(unusable_head(0), None);
        assert_eq!(unusable_head(1_000), None);
        assert_eq!(unusable_head(i64::MAX - 2), None);
        for head in [i64::MAX - 1, i64::MAX] {
            let reason = unusable_head(head).expect("no room");
            assert!(reason.contains(&head.to_string()), "{reason}");
        }
        assert!(unusable_head(-1).expect("negative").contains("corrupt"));
    }
}
