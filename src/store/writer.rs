//! The single writer: group commit of appends and delivery progress.
//!
//! SQLite allows one writer at a time, and every commit costs an fsync. So one thread
//! owns all hot-path writes: it takes the first queued operation, then everything else
//! already queued (up to a bound), and commits them in one transaction. Under load many publishes
//! share one fsync; when idle a publish commits alone, at once. After the commit the new
//! events are handed to dispatch in memory, so no one polls the database for them.

use std::collections::HashSet;
use std::sync::Arc;

use tokio::sync::{broadcast, mpsc, oneshot, watch};

use super::derive::Derivation;
use super::{Appended, LogConnection, Progress, Result, StoreError};
use crate::model::{EntityChange, NewEvent, StoredEvent, now_millis};

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
        reply: oneshot::Sender<Result<Vec<Appended>>>,
    },
    Progress(Progress),
    Flush(oneshot::Sender<()>),
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

pub(super) struct Writer {
    connection: LogConnection,
    queue: mpsc::Receiver<WriteOp>,
    committed: broadcast::Sender<Arc<CommittedBatch>>,
    head: watch::Sender<i64>,
    next_seq: i64,
    derivation: Derivation,
}

impl Writer {
    pub(super) fn new(
        connection: LogConnection,
        queue: mpsc::Receiver<WriteOp>,
        committed: broadcast::Sender<Arc<CommittedBatch>>,
        head: watch::Sender<i64>,
        head_seq: i64,
        derivation: Derivation,
    ) -> Writer {
        Writer {
            connection,
            queue,
            committed,
            head,
            next_seq: head_seq + 1,
            derivation,
        }
    }

    /// Runs on a thread of its own until every [`super::Store`] handle is dropped and the
    /// queue is empty.
    pub(super) fn run(mut self) {
        while let Some(first) = self.queue.blocking_recv() {
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
    }

    fn commit(&mut self, ops: Vec<WriteOp>) {
        let received_at = now_millis();
        let after = self.next_seq - 1;

        // Give every new event its sequence number; an id seen earlier in this same
        // commit is a duplicate without asking the database.
        let mut rows = Vec::new();
        let mut seen = HashSet::new();
        let mut progress = Vec::new();
        let mut appends = Vec::new();
        let mut flushes = Vec::new();
        for op in ops {
            match op {
                WriteOp::Append { events, reply } => {
                    let mut slots = Vec::with_capacity(events.len());
                    for event in events {
                        if seen.insert((event.account.clone(), event.id.clone())) {
                            let seq = self.next_seq;
                            self.next_seq += 1;
                            // Reserved even if the event turns out to be a duplicate: a
                            // gap in the log is fine.
                            let video_change = event.video.map(|video| {
                                self.next_seq += 1;
                                (video, seq + 1)
                            });
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
            }
        }

        let started = std::time::Instant::now();
        let committed = self
            .connection
            .commit_group(&rows, &progress, &self.derivation);
        metrics::histogram!("reelay_commit_seconds").record(started.elapsed().as_secs_f64());
        metrics::histogram!("reelay_commit_events").record(rows.len() as f64);
        match committed {
            Ok(written) => {
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
                // Positions handed out to rows that turned out to be duplicates are given
                // back when nothing stored follows them: the head must be the last stored
                // event, as a restart reads it from the log. Otherwise a cursor could be
                // saved past that head, and the events that reuse those positions after a
                // restart would be skipped.
                let upto = events.last().map_or(after, |event| event.seq);
                self.next_seq = upto + 1;
                // The head moves before publishers are answered: a subscription created
                // after a 202 starts after that event, and a resync's snapshot covers it.
                if upto > after {
                    self.head.send_replace(upto);
                    // No receiver is fine: dispatchers that start later read the log.
                    let _ = self.committed.send(Arc::new(CommittedBatch {
                        after,
                        upto,
                        events,
                    }));
                }
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
                tracing::error!(%error, "group commit failed; its publishers get an error");
                // Nothing was stored: the positions handed out above are free again.
                self.next_seq = after + 1;
                for (_, reply) in appends {
                    let _ = reply.send(Err(StoreError::CommitFailed(error.to_string())));
                }
                self.save_progress_until_committed(&progress);
            }
        }
        for flush in flushes {
            let _ = flush.send(());
        }
    }
}

impl Writer {
    /// Progress cannot be refused like a publish: its worker has moved on, believing its
    /// cursor and its failed deliveries saved. So it is committed again, alone, until it
    /// goes in; meanwhile everything else waits in the queue (publishers see the delay).
    fn save_progress_until_committed(&mut self, progress: &[Progress]) {
        if progress.is_empty() {
            return;
        }
        let mut wait = std::time::Duration::from_millis(50);
        loop {
            match self
                .connection
                .commit_group(&[], progress, &self.derivation)
            {
                Ok(_) => return,
                Err(error) => {
                    tracing::error!(%error, "saving delivery progress failed; trying again");
                    std::thread::sleep(wait);
                    wait = (wait * 2).min(std::time::Duration::from_secs(5));
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
