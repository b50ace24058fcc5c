//! Per-entity order (`"ordering": "entity"`): which of a worker's events may go next.
//!
//! The events of one entity key go one at a time, in log order: while one is in flight
//! or waits in the retry set, the entity's later events are parked, by sequence number
//! only (their documents are read from the log again when their turn comes). When it is
//! delivered or dead-lettered, the next parked one is due. Events without an entity key
//! are not ordered. Different entities go in parallel. When more than a bound of events
//! are parked, the worker stops reading ahead: the backlog waits in the log, and the
//! cursor stays below the first parked event.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};

use crate::model::StoredEvent;

/// At most this many events are parked (plus one page the feed read); beyond it the
/// worker reads no further until entities free up.
pub(super) const PARKED_MAX: usize = 100_000;

/// What to do with an event read from the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Admit {
    /// Its entity is free (or it has none): it may go now.
    Go,
    /// Its entity is busy: it waits for its turn.
    Park,
    /// It waits in the retry set already (read again after a restart or a rewind).
    Skip,
}

/// One busy entity.
#[derive(Debug, Default)]
struct Hold {
    /// Its event in flight, or admitted and about to start.
    live: Option<i64>,
    /// Its deliveries waiting in the retry set.
    retries: BTreeSet<i64>,
    /// Its later events, in log order.
    parked: VecDeque<i64>,
}

impl Hold {
    fn busy(&self) -> bool {
        self.live.is_some() || !self.retries.is_empty()
    }
}

/// The order state of one worker.
#[derive(Debug)]
pub(super) struct EntityOrder {
    holds: HashMap<String, Hold>,
    /// The entity of every live or retrying event.
    owners: HashMap<i64, String>,
    /// Every parked or due event: the cursor stays below the first.
    waiting: BTreeSet<i64>,
    /// Released (their entity is free for them), to be read from the log and started.
    due: VecDeque<i64>,
    /// How many deliveries wait in the retry set (of every entity).
    retries: usize,
    parked_max: usize,
}

impl EntityOrder {
    pub(super) fn new(parked_max: usize) -> EntityOrder {
        EntityOrder {
            holds: HashMap::new(),
            owners: HashMap::new(),
            waiting: BTreeSet::new(),
            due: VecDeque::new(),
            retries: 0,
            parked_max,
        }
    }

    /// A delivery found in the retry set (at the start): its entity waits for it.
    pub(super) fn retrying(&mut self, seq: i64, key: String) {
        if self
            .holds
            .entry(key.clone())
            .or_default()
            .retries
            .insert(seq)
        {
            self.retries += 1;
        }
        self.owners.insert(seq, key);
    }

    /// Whether `event` may go now; a `Go` makes its entity busy until [`Self::finished`].
    pub(super) fn admit(&mut self, event: &StoredEvent) -> Admit {
        let Some(key) = &event.entity_key else {
            return Admit::Go;
        };
        let hold = self.holds.entry(key.clone()).or_default();
        if hold.retries.contains(&event.seq) {
            return Admit::Skip;
        }
        if hold.busy() {
            hold.parked.push_back(event.seq);
            self.waiting.insert(event.seq);
            return Admit::Park;
        }
        hold.live = Some(event.seq);
        self.owners.insert(event.seq, key.clone());
        Admit::Go
    }

    /// Up to `n` due events, to read from the log; they stay waiting until started.
    pub(super) fn take_due(&mut self, n: usize) -> Vec<i64> {
        let n = n.min(self.due.len());
        self.due.drain(..n).collect()
    }

    /// A due event given back unread (reading the log failed): it comes first again.
    pub(super) fn push_due_front(&mut self, seq: i64) {
        self.due.push_front(seq);
    }

    pub(super) fn has_due(&self) -> bool {
        !self.due.is_empty()
    }

    /// A due event started.
    pub(super) fn started(&mut self, seq: i64) {
        self.waiting.remove(&seq);
    }

    /// A first attempt is over: in the retry set now (`retrying`), or delivered or dead,
    /// which frees its entity for the next parked event. Also for a due event no longer
    /// in the log.
    pub(super) fn finished(&mut self, seq: i64, retrying: bool) {
        self.waiting.remove(&seq);
        let Some(key) = self.owners.get(&seq).cloned() else {
            return;
        };
        if let Some(hold) = self.holds.get_mut(&key) {
            if hold.live == Some(seq) {
                hold.live = None;
            }
            if retrying && hold.retries.insert(seq) {
                self.retries += 1;
            }
        }
        if !retrying {
            self.owners.remove(&seq);
        }
        self.release(&key);
    }

    /// A retry is over (delivered or dead): its entity goes on.
    pub(super) fn resolved(&mut self, seq: i64) {
        let Some(key) = self.owners.get(&seq).cloned() else {
            return;
        };
        let Some(hold) = self.holds.get_mut(&key) else {
            return;
        };
        if hold.retries.remove(&seq) {
            self.retries -= 1;
            self.owners.remove(&seq);
            self.release(&key);
        }
    }

    /// Whether some entity waits for the retry set.
    pub(super) fn has_retries(&self) -> bool {
        self.retries > 0
    }

    /// The retry set as it is now (`pending`): retries no longer in it are over (a word
    /// of their end was lost, e.g. to a restart of the worker).
    pub(super) fn reconcile(&mut self, pending: &HashSet<i64>) {
        let over: Vec<i64> = self
            .holds
            .values()
            .flat_map(|hold| hold.retries.iter().copied())
            .filter(|seq| !pending.contains(seq))
            .collect();
        for seq in over {
            self.resolved(seq);
        }
    }

    /// Whether the worker must stop reading ahead.
    pub(super) fn full(&self) -> bool {
        self.waiting.len() >= self.parked_max
    }

    /// The first parked or due event.
    pub(super) fn first_waiting(&self) -> Option<i64> {
        self.waiting.first().copied()
    }

    /// The log is read again from the cursor: parked and due events are forgotten (they
    /// come again), and so is an admitted event that did not start (`in_flight` did).
    pub(super) fn rewind(&mut self, in_flight: impl Fn(i64) -> bool) {
        self.waiting.clear();
        self.due.clear();
        let owners = &mut self.owners;
        self.holds.retain(|_, hold| {
            hold.parked.clear();
            if let Some(seq) = hold.live
                && !in_flight(seq)
            {
                hold.live = None;
                owners.remove(&seq);
            }
            hold.busy()
        });
    }

    /// After an entity's event is over: its next parked event is due, or it is forgotten.
    fn release(&mut self, key: &str) {
        let Some(hold) = self.holds.get_mut(key) else {
            return;
        };
        if hold.busy() {
            return;
        }
        match hold.parked.pop_front() {
            Some(next) => {
                hold.live = Some(next);
                self.owners.insert(next, key.to_owned());
                self.due.push_back(next);
            }
            None => {
                self.holds.remove(key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(seq: i64, key: Option<&str>) -> StoredEvent {
        StoredEvent {
            seq,
            account: "a".into(),
            id: format!("evt_{seq}"),
            name: "video-change".into(),
            topic: "video".into(),
            entity_key: key.map(str::to_owned),
            occurred_at: 0,
            received_at: 0,
            body: "{}".into(),
            trace: None,
        }
    }

    /// Admits the due events, as the worker does once it read them from the log.
    fn start_due(order: &mut EntityOrder) -> Vec<i64> {
        let due = order.take_due(usize::MAX);
        for seq in &due {
            order.started(*seq);
        }
        due
    }

    #[test]
    fn one_entity_goes_one_at_a_time_and_others_in_parallel() {
        let mut order = EntityOrder::new(10);
        assert_eq!(order.admit(&event(1, Some("v1"))), Admit::Go);
        assert_eq!(order.admit(&event(2, Some("v2"))), Admit::Go);
        assert_eq!(order.admit(&event(3, Some("v1"))), Admit::Park);
        assert_eq!(order.admit(&event(4, Some("v1"))), Admit::Park);
        assert_eq!(order.admit(&event(5, None)), Admit::Go);
        assert_eq!(order.admit(&event(6, None)), Admit::Go);
        assert_eq!(order.first_waiting(), Some(3));
        // The other entity finishing frees nothing of v1.
        order.finished(2, false);
        assert!(!order.has_due());
        order.finished(1, false);
        assert_eq!(start_due(&mut order), vec![3]);
        assert_eq!(order.first_waiting(), Some(4));
        // 4 waits for 3 although 3 is no longer parked.
        assert!(!order.has_due());
        order.finished(3, false);
        assert_eq!(start_due(&mut order), vec![4]);
        order.finished(4, false);
        assert!(!order.has_due());
        assert_eq!(order.first_waiting(), None);
        assert!(order.holds.is_empty() && order.owners.is_empty());
        // A free entity goes at once again.
        assert_eq!(order.admit(&event(7, Some("v1"))), Admit::Go);
    }

    #[test]
    fn a_retry_holds_back_only_its_entity_until_it_is_over() {
        let mut order = EntityOrder::new(10);
        assert_eq!(order.admit(&event(1, Some("v1"))), Admit::Go);
        order.finished(1, true);
        assert!(order.has_retries());
        assert_eq!(order.admit(&event(2, Some("v1"))), Admit::Park);
        assert_eq!(order.admit(&event(3, Some("v2"))), Admit::Go);
        order.finished(3, false);
        assert!(!order.has_due());
        // Read again (a rewind): an event in the retry set is not sent beside its retry.
        assert_eq!(order.admit(&event(1, Some("v1"))), Admit::Skip);
        // Delivered or dead: the next goes.
        order.resolved(1);
        assert!(!order.has_retries());
        assert_eq!(start_due(&mut order), vec![2]);
        // A word of the same end again changes nothing.
        order.resolved(1);
        assert!(!order.has_due());
    }

    #[test]
    fn a_retry_found_at_the_start_holds_its_entity_and_a_lost_word_is_made_up() {
        let mut order = EntityOrder::new(10);
        order.retrying(5, "v1".into());
        assert_eq!(order.admit(&event(5, Some("v1"))), Admit::Skip);
        assert_eq!(order.admit(&event(6, Some("v1"))), Admit::Park);
        order.reconcile(&HashSet::from([5]));
        assert!(!order.has_due());
        // The retry set no longer has it: it is over.
        order.reconcile(&HashSet::new());
        assert_eq!(start_due(&mut order), vec![6]);
    }

    #[test]
    fn parking_past_the_bound_stops_reading_ahead_until_entities_free_up() {
        let mut order = EntityOrder::new(3);
        assert_eq!(order.admit(&event(1, Some("v1"))), Admit::Go);
        for seq in 2..=4 {
            assert_eq!(order.admit(&event(seq, Some("v1"))), Admit::Park);
        }
        assert!(order.full());
        order.finished(1, false);
        // Due but not started: still below the cursor, still counted.
        assert_eq!(order.take_due(8), vec![2]);
        assert!(order.full());
        order.started(2);
        assert!(!order.full());
        assert_eq!(order.first_waiting(), Some(3));
    }

    #[test]
    fn a_rewind_forgets_what_did_not_start_and_keeps_what_is_under_way() {
        let mut order = EntityOrder::new(10);
        assert_eq!(order.admit(&event(1, Some("v1"))), Admit::Go);
        assert_eq!(order.admit(&event(2, Some("v1"))), Admit::Park);
        assert_eq!(order.admit(&event(3, Some("v2"))), Admit::Go);
        assert_eq!(order.admit(&event(4, Some("v3"))), Admit::Go);
        order.finished(4, true);
        // 1 is in flight; 3 was admitted but did not start.
        order.rewind(|seq| seq == 1);
        assert_eq!(order.first_waiting(), None);
        assert_eq!(order.admit(&event(2, Some("v1"))), Admit::Park);
        assert_eq!(order.admit(&event(3, Some("v2"))), Admit::Go);
        assert_eq!(order.admit(&event(5, Some("v3"))), Admit::Park);
        order.finished(1, false);
        assert_eq!(start_due(&mut order), vec![2]);
    }

    #[test]
    fn a_due_event_gone_from_the_log_frees_its_entity_for_the_next() {
        let mut order = EntityOrder::new(10);
        assert_eq!(order.admit(&event(1, Some("v1"))), Admit::Go);
        assert_eq!(order.admit(&event(2, Some("v1"))), Admit::Park);
        assert_eq!(order.admit(&event(3, Some("v1"))), Admit::Park);
        order.finished(1, false);
        assert_eq!(order.take_due(8), vec![2]);
        // Not in the log any more (retention): over, like a delivered one.
        order.finished(2, false);
        assert_eq!(start_due(&mut order), vec![3]);
        assert_eq!(order.first_waiting(), None);
    }
}
