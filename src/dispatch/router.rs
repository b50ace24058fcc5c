//! The router: hands each committed event to the workers of the subscriptions that want
//! it, found through an index (account, then event name or topic; a job's callbacks by the
//! job), so an idle subscription costs memory and no work per event, and a commit wakes
//! only the workers it concerns.
//!
//! One task follows the log (from memory as it is committed, or from the database when it
//! fell behind the in-memory hand-off) and puts each matching event in the `Inbox` of each
//! attached subscription. An inbox is bounded: a worker that does not keep up is detached
//! and reads its account's log from the database until it has caught up (see `feed`).
//!
//! A subscription learns its position in the log only from what reaches its inbox, so
//! its saved cursor stays where it is while nothing it wants is committed: after a
//! restart it reads its account's log from there, filtered. So that this read stays
//! short, the router also tells every subscription of an account where the log is every
//! `NUDGE_EVERY` events of that account, and at a worker's stop (`Router::settle`).

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::broadcast::{self, error::RecvError};
use tokio::sync::{Notify, Semaphore, SemaphorePermit};
use tokio_util::sync::CancellationToken;

use crate::model::{EventFilter, StoredEvent, Subscription, SubscriptionKind};
use crate::store::{CommittedBatch, PageSize, Store};

/// Events read from the database per query while the router catches up.
const CATCH_UP_PAGE: u32 = 2_000;
/// Every this many events of an account, each of its subscriptions learns where the log
/// is, even those that wanted none of them: at most this many of its account's events
/// are read again after a crash. Costs one cursor write per subscription per this many.
const NUDGE_EVERY: u64 = 4_096;

/// Identifies one attachment of a worker to the router.
pub(super) type RouteId = u64;

/// What a subscription wants, as the index needs it.
#[derive(Debug, Clone)]
pub(super) struct Wants {
    pub account: String,
    pub filter: EventFilter,
    /// A job's callback: only events whose entity key is this job.
    pub job: Option<String>,
}

impl Wants {
    pub(super) fn of(subscription: &Subscription) -> Wants {
        Wants {
            account: subscription.account.clone(),
            filter: subscription.filter.clone(),
            job: match &subscription.kind {
                SubscriptionKind::Standing => None,
                SubscriptionKind::JobCallback { job, .. } => Some(job.clone()),
            },
        }
    }
}

/// Told when something is put in an inbox: starts the task of a worker that sleeps
/// (idle, without a task of its own).
pub(super) trait Wake: Send + Sync {
    fn wake(&self);
}

/// Where the router puts a subscription's events, and the worker takes them from.
pub(super) struct Inbox {
    state: Mutex<InboxState>,
    notify: Notify,
    /// At most this many events wait here; one more detaches the subscription.
    capacity: usize,
    waker: Option<Arc<dyn Wake>>,
}

struct InboxState {
    events: VecDeque<Arc<StoredEvent>>,
    /// Every event the subscription wants with `seq <= upto` is in `events` or was taken.
    upto: i64,
    /// False once the router no longer puts events here (the inbox overflowed).
    attached: bool,
    /// Something was put here since the last take.
    changed: bool,
}

/// What a worker took from its inbox.
pub(super) struct Taken {
    pub events: Vec<Arc<StoredEvent>>,
    pub upto: i64,
    /// False: the router dropped this inbox (it overflowed); everything after `upto`
    /// must be read from the log.
    pub attached: bool,
}

impl Inbox {
    fn new(upto: i64, capacity: usize, waker: Option<Arc<dyn Wake>>) -> Inbox {
        Inbox {
            waker,
            state: Mutex::new(InboxState {
                events: VecDeque::new(),
                upto,
                attached: true,
                changed: false,
            }),
            notify: Notify::new(),
            capacity,
        }
    }

    fn lock(&self) -> MutexGuard<'_, InboxState> {
        // A poisoned lock only means a task panicked between two plain assignments.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds `events` and moves the position to `upto`; false (and detached) when they do
    /// not fit.
    fn push(&self, events: Vec<Arc<StoredEvent>>, upto: i64) -> bool {
        let fits = {
            let mut state = self.lock();
            if !state.attached {
                return false;
            }
            let fits = state.events.len() + events.len() <= self.capacity;
            if fits {
                state.events.extend(events);
                state.upto = state.upto.max(upto);
            } else {
                // What is here stays valid: the worker takes it, then reads the rest
                // from the log after `upto`.
                state.attached = false;
            }
            state.changed = true;
            fits
        };
        self.notify.notify_one();
        if let Some(waker) = &self.waker {
            waker.wake();
        }
        fits
    }

    /// Whether something was put here since the last take.
    pub(super) fn changed(&self) -> bool {
        self.lock().changed
    }

    /// What was put here since the last take, if anything.
    fn try_take(&self) -> Option<Taken> {
        let mut state = self.lock();
        if !state.changed {
            return None;
        }
        state.changed = false;
        Some(Taken {
            events: state.events.drain(..).collect(),
            upto: state.upto,
            attached: state.attached,
        })
    }

    /// Waits until something is put here, and takes it. Cancel-safe: nothing is taken
    /// before the last await.
    pub(super) async fn take(&self) -> Taken {
        loop {
            if let Some(taken) = self.try_take() {
                return taken;
            }
            // A push between the look and this wait leaves a permit: no wake-up is lost.
            self.notify.notified().await;
        }
    }
}

/// One attached subscription in the index.
struct Route {
    wants: Arc<Wants>,
    inbox: Arc<Inbox>,
    /// Its account's event count when it last learned its position.
    mark: u64,
}

/// What a subscription is listed under in the index, within its account.
#[derive(Clone, Copy, Hash)]
enum Listed {
    Event,
    Topic,
    /// A job's callback, by its job (its filter is checked at each event).
    Job,
}

impl Route {
    /// Whether this route, listed under `listed`, wants `event`: the exact check behind
    /// the index's hashed keys.
    fn wants(&self, listed: Listed, event: &StoredEvent) -> bool {
        let wants = &*self.wants;
        wants.account == event.account
            && match listed {
                Listed::Event => wants.job.is_none() && wants.filter.events.contains(&event.name),
                Listed::Topic => wants.job.is_none() && wants.filter.topics.contains(&event.topic),
                Listed::Job => {
                    wants.job.is_some()
                        && wants.job == event.entity_key
                        && wants.filter.matches(&event.name, &event.topic)
                }
            }
    }
}

/// An account with attached subscriptions.
#[derive(Default)]
struct AccountRoutes {
    routes: Vec<RouteId>,
    /// Events of this account routed since its first subscription attached.
    events: u64,
}

/// Which attached subscription wants what: by account, then event name, topic or job.
///
/// Flat: one entry per route and one per name it lists, under a hash of (account, kind,
/// name), not a set of maps per account. Most accounts of a platform hold one or two
/// subscriptions, and four maps each cost about 900 bytes per idle subscription (100,000
/// of them: 90 MB); a hashed key holds no copy of either string. Two keys may share a
/// hash: every route found is checked against the event ([`Route::wants`]).
#[derive(Default)]
pub(super) struct Index {
    routes: HashMap<RouteId, Route>,
    accounts: HashMap<Box<str>, AccountRoutes>,
    listed: HashMap<u64, Vec<RouteId>>,
    hasher: std::hash::RandomState,
}

impl Index {
    fn key(&self, account: &str, listed: Listed, name: &str) -> u64 {
        use std::hash::BuildHasher;
        self.hasher.hash_one((account, listed, name))
    }

    /// The names a route is listed under.
    fn keys(&self, wants: &Wants) -> Vec<u64> {
        match &wants.job {
            Some(job) => vec![self.key(&wants.account, Listed::Job, job)],
            None => {
                let events = wants.filter.events.iter().map(|name| (Listed::Event, name));
                let topics = wants
                    .filter
                    .topics
                    .iter()
                    .map(|topic| (Listed::Topic, topic));
                events
                    .chain(topics)
                    .map(|(listed, name)| self.key(&wants.account, listed, name))
                    .collect()
            }
        }
    }

    fn add(&mut self, id: RouteId, wants: Arc<Wants>, inbox: Arc<Inbox>) {
        for key in self.keys(&wants) {
            let ids = self.listed.entry(key).or_default();
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        let account = match self.accounts.get_mut(wants.account.as_str()) {
            Some(account) => account,
            None => self
                .accounts
                .entry(wants.account.as_str().into())
                .or_default(),
        };
        account.routes.push(id);
        let mark = account.events;
        self.routes.insert(id, Route { wants, inbox, mark });
    }

    /// Removes a route; its inbox gets nothing more. False when it was not there.
    fn remove(&mut self, id: RouteId) -> bool {
        let Some(route) = self.routes.remove(&id) else {
            return false;
        };
        for key in self.keys(&route.wants) {
            if let Entry::Occupied(mut ids) = self.listed.entry(key) {
                ids.get_mut().retain(|&other| other != id);
                if ids.get().is_empty() {
                    ids.remove();
                }
            }
        }
        if let Some(account) = self.accounts.get_mut(route.wants.account.as_str()) {
            account.routes.retain(|&other| other != id);
            // An account without subscriptions costs nothing.
            if account.routes.is_empty() {
                self.accounts.remove(route.wants.account.as_str());
            }
        }
        true
    }

    /// The routes that want `event`, each once and in order, in `out` (cleared first).
    fn matching_into(&self, event: &StoredEvent, out: &mut Vec<RouteId>) {
        out.clear();
        let mut look = |listed: Listed, name: &str| {
            if let Some(ids) = self.listed.get(&self.key(&event.account, listed, name)) {
                out.extend(ids.iter().filter(|id| {
                    self.routes
                        .get(id)
                        .is_some_and(|route| route.wants(listed, event))
                }));
            }
        };
        look(Listed::Event, &event.name);
        look(Listed::Topic, &event.topic);
        if let Some(key) = &event.entity_key {
            look(Listed::Job, key);
        }
        // A subscription to both an event and its topic is found twice.
        if out.len() > 1 {
            out.sort_unstable();
            out.dedup();
        }
    }

    #[cfg(test)]
    fn matching(&self, event: &StoredEvent) -> Vec<RouteId> {
        let mut out = Vec::new();
        self.matching_into(event, &mut out);
        out
    }
}

/// Events of one batch on their way to one inbox.
struct Staged {
    id: RouteId,
    inbox: Arc<Inbox>,
    events: Vec<Arc<StoredEvent>>,
}

struct Routing {
    index: Index,
    /// Every committed event up to here has been put in the inboxes of the subscriptions
    /// attached at the time.
    routed: i64,
    next_id: RouteId,
}

/// The router's shared state: cheap to clone.
#[derive(Clone)]
pub(super) struct Router {
    routing: Arc<Mutex<Routing>>,
    /// Turns for the feeds' reads of the log: after a restart every worker behind the
    /// head reads once (100,000 at once queued the whole connection pool for 15 s, and
    /// the server's start with it), so a few read at a time and the pool stays free for
    /// everything else.
    log_reads: Arc<Semaphore>,
}

/// Feeds reading the log at once, at most.
const LOG_READS: usize = 4;

/// A worker's place in the router.
pub(super) struct Attached {
    pub id: RouteId,
    pub inbox: Arc<Inbox>,
    /// Every event after this reaches the inbox; those up to it are read from the log.
    pub routed: i64,
}

impl Router {
    /// A router that starts after `head` (everything up to it was committed before the
    /// dispatcher started: the workers read it from the log).
    pub(super) fn new(head: i64) -> Router {
        Router {
            routing: Arc::new(Mutex::new(Routing {
                index: Index::default(),
                routed: head,
                next_id: 0,
            })),
            log_reads: Arc::new(Semaphore::new(LOG_READS)),
        }
    }

    /// Waits for a turn to read the log; the turn lasts as long as what it returns.
    pub(super) async fn log_read_turn(&self) -> Option<SemaphorePermit<'_>> {
        // The semaphore is never closed: `None` cannot happen, and would only mean no wait.
        self.log_reads.acquire().await.ok()
    }

    fn lock(&self) -> MutexGuard<'_, Routing> {
        // Held for plain map updates only: a panic mid-update leaves usable maps.
        self.routing.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Attaches a subscription: every event it wants committed after the returned
    /// `routed` position goes to the returned inbox, which holds at most `capacity`.
    /// `waker` is told of each put.
    pub(super) fn attach(
        &self,
        wants: &Arc<Wants>,
        capacity: usize,
        waker: Option<Arc<dyn Wake>>,
    ) -> Attached {
        let mut routing = self.lock();
        let routing = &mut *routing;
        let id = routing.next_id;
        routing.next_id += 1;
        let inbox = Arc::new(Inbox::new(routing.routed, capacity, waker));
        routing.index.add(id, wants.clone(), inbox.clone());
        Attached {
            id,
            inbox,
            routed: routing.routed,
        }
    }

    pub(super) fn detach(&self, id: RouteId) {
        self.lock().index.remove(id);
    }

    /// Where the log is for an attached subscription whose inbox is empty, if events of
    /// its account went by since it last learned its position (a worker about to stop
    /// saves it, so a restart reads less).
    pub(super) fn settle(&self, id: RouteId) -> Option<i64> {
        let mut routing = self.lock();
        let routing = &mut *routing;
        let index = &mut routing.index;
        let route = index.routes.get_mut(&id)?;
        let account = index.accounts.get(route.wants.account.as_str())?;
        if route.mark == account.events {
            return None;
        }
        let mut inbox = route.inbox.lock();
        // Holding the routing lock: nothing is being put in the inbox meanwhile.
        if !inbox.attached || !inbox.events.is_empty() {
            return None;
        }
        inbox.upto = inbox.upto.max(routing.routed);
        route.mark = account.events;
        Some(inbox.upto)
    }

    /// Puts each event of `batch` after the routed position in the inboxes of the
    /// subscriptions that want it; detaches those whose inbox is full.
    fn route(&self, batch: &CommittedBatch) {
        let mut routing = self.lock();
        let routing = &mut *routing;
        let mut staged: Vec<Staged> = Vec::new();
        // Where each route's events are in `staged`.
        let mut slots: HashMap<RouteId, usize> = HashMap::new();
        let mut matched = Vec::new();
        let mut targets = Vec::new();
        let routed = routing.routed;
        for event in batch.events.iter().filter(|e| e.seq > routed) {
            let index = &mut routing.index;
            let Some(account) = index.accounts.get_mut(event.account.as_str()) else {
                continue;
            };
            account.events += 1;
            let events = account.events;
            targets.clear();
            if events.is_multiple_of(NUDGE_EVERY) {
                // Everyone in the account learns the position (with or without events).
                targets.extend_from_slice(&account.routes);
            }
            index.matching_into(event, &mut matched);
            if targets.is_empty() {
                targets.extend_from_slice(&matched);
            }
            for &id in &targets {
                let Some(route) = index.routes.get_mut(&id) else {
                    continue;
                };
                route.mark = events;
                let slot = *slots.entry(id).or_insert_with(|| {
                    staged.push(Staged {
                        id,
                        inbox: route.inbox.clone(),
                        events: Vec::new(),
                    });
                    staged.len() - 1
                });
                if matched.binary_search(&id).is_ok() {
                    staged[slot].events.push(event.clone());
                }
            }
        }
        routing.routed = routing.routed.max(batch.upto);
        for Staged { id, inbox, events } in staged {
            if !inbox.push(events, batch.upto) {
                tracing::debug!(route = id, "a worker fell behind: it reads the log instead");
                routing.index.remove(id);
            }
        }
    }

    /// Follows the log and routes every committed event, until `cancel`.
    pub(super) async fn run(
        self,
        store: Store,
        mut committed: broadcast::Receiver<Arc<CommittedBatch>>,
        page_bytes: usize,
        cancel: CancellationToken,
    ) {
        let page = PageSize {
            rows: CATCH_UP_PAGE,
            bytes: page_bytes,
        };
        let mut behind = false;
        loop {
            let routed = self.lock().routed;
            if behind {
                let head = store.head();
                if routed >= head {
                    behind = false;
                    continue;
                }
                let read = tokio::select! {
                    _ = cancel.cancelled() => return,
                    read = store.db().log_range(routed, head, page) => read,
                };
                match read {
                    Ok(events) => {
                        let bytes = events.iter().map(|event| event.body.bytes().len()).sum();
                        let full = page.is_full(events.len(), bytes);
                        // Everything up to `head` was committed before the query ran, so
                        // a page that is not full saw all of it.
                        let upto = match events.last() {
                            Some(last) if full => last.seq,
                            _ => head,
                        };
                        self.route(&CommittedBatch {
                            after: routed,
                            upto,
                            events: events.into_iter().map(Arc::new).collect(),
                        });
                        behind = full;
                    }
                    Err(error) => {
                        tracing::error!(%error, "reading the log failed; retrying");
                        tokio::select! {
                            _ = cancel.cancelled() => return,
                            _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                        }
                    }
                }
                continue;
            }
            let received = tokio::select! {
                _ = cancel.cancelled() => return,
                received = committed.recv() => received,
            };
            match received {
                Ok(batch) if batch.upto <= routed => {}
                // Some commits went by unseen: read the log.
                Ok(batch) if batch.after > routed => behind = true,
                Ok(batch) => self.route(&batch),
                Err(RecvError::Lagged(_)) => behind = true,
                Err(RecvError::Closed) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wants(account: &str, events: &[&str], topics: &[&str], job: Option<&str>) -> Arc<Wants> {
        Arc::new(Wants {
            account: account.to_owned(),
            filter: EventFilter {
                events: events.iter().map(|e| e.to_string()).collect(),
                topics: topics.iter().map(|t| t.to_string()).collect(),
            },
            job: job.map(str::to_owned),
        })
    }

    fn event(seq: i64, account: &str, name: &str, topic: &str, key: Option<&str>) -> StoredEvent {
        StoredEvent {
            seq,
            account: account.to_owned(),
            id: format!("e-{seq}"),
            name: name.to_owned(),
            topic: topic.to_owned(),
            entity_key: key.map(str::to_owned),
            occurred_at: 0,
            received_at: 0,
            body: "{}".into(),
            trace: None,
        }
    }

    fn inbox() -> Arc<Inbox> {
        Arc::new(Inbox::new(0, 16, None))
    }

    #[test]
    fn the_index_matches_by_account_then_event_name_or_topic() {
        let mut index = Index::default();
        index.add(1, wants("a", &["asset-updated"], &[], None), inbox());
        index.add(2, wants("a", &[], &["asset-operations"], None), inbox());
        // Both the event and its topic: matched once.
        index.add(
            3,
            wants("a", &["asset-updated"], &["asset-operations"], None),
            inbox(),
        );
        index.add(4, wants("b", &["asset-updated"], &[], None), inbox());
        index.add(5, wants("a", &["player_log_event"], &[], None), inbox());

        let updated = event(1, "a", "asset-updated", "asset-operations", None);
        assert_eq!(index.matching(&updated), vec![1, 2, 3]);
        let created = event(2, "a", "asset-created", "asset-operations", None);
        assert_eq!(index.matching(&created), vec![2, 3]);
        assert_eq!(
            index.matching(&event(3, "b", "asset-updated", "asset-operations", None)),
            vec![4]
        );
        assert_eq!(
            index.matching(&event(4, "c", "asset-updated", "asset-operations", None)),
            Vec::<RouteId>::new()
        );
        assert_eq!(
            index.matching(&event(5, "a", "player_log_event", "player", None)),
            vec![5]
        );
    }

    #[test]
    fn a_job_callback_matches_its_job_s_events_that_pass_its_filter() {
        let mut index = Index::default();
        index.add(1, wants("a", &[], &["ingest"], Some("job-1")), inbox());
        index.add(2, wants("a", &[], &["ingest"], Some("job-2")), inbox());
        assert_eq!(
            index.matching(&event(1, "a", "job-finished", "ingest", Some("job-1"))),
            vec![1]
        );
        // Its job, but not its filter; its filter, but no job.
        assert!(
            index
                .matching(&event(2, "a", "asset-updated", "assets", Some("job-1")))
                .is_empty()
        );
        assert!(
            index
                .matching(&event(3, "a", "job-finished", "ingest", None))
                .is_empty()
        );
    }

    #[test]
    fn removed_routes_match_nothing_and_an_empty_account_is_forgotten() {
        let mut index = Index::default();
        index.add(
            1,
            wants("a", &["asset-updated"], &["assets"], None),
            inbox(),
        );
        index.add(2, wants("a", &["asset-updated"], &[], None), inbox());
        index.add(3, wants("b", &[], &[], Some("job")), inbox());
        let updated = event(1, "a", "asset-updated", "assets", None);
        assert!(index.remove(1));
        assert!(!index.remove(1), "a route is removed once");
        assert_eq!(index.matching(&updated), vec![2]);
        assert!(index.remove(2));
        assert!(index.matching(&updated).is_empty());
        assert!(!index.accounts.contains_key("a"));
        assert!(index.remove(3));
        assert!(index.accounts.is_empty() && index.routes.is_empty() && index.listed.is_empty());
    }

    fn batch(after: i64, events: Vec<StoredEvent>) -> CommittedBatch {
        CommittedBatch {
            after,
            upto: events.last().map_or(after, |e| e.seq),
            events: events.into_iter().map(Arc::new).collect(),
        }
    }

    #[test]
    fn a_batch_reaches_only_the_inboxes_that_want_its_events() {
        let router = Router::new(0);
        let hot = router.attach(&wants("a", &["asset-updated"], &[], None), 16, None);
        let idle = router.attach(&wants("b", &["asset-updated"], &[], None), 16, None);
        let other = router.attach(&wants("a", &["asset-deleted"], &[], None), 16, None);
        router.route(&batch(
            0,
            vec![
                event(1, "a", "asset-updated", "assets", None),
                event(2, "c", "asset-updated", "assets", None),
                event(3, "a", "asset-updated", "assets", None),
            ],
        ));
        let taken = hot.inbox.try_take().expect("woken");
        let seqs: Vec<i64> = taken.events.iter().map(|e| e.seq).collect();
        assert_eq!((seqs, taken.upto, taken.attached), (vec![1, 3], 3, true));
        assert!(
            idle.inbox.try_take().is_none(),
            "another account: not woken"
        );
        assert!(other.inbox.try_take().is_none(), "another event: not woken");
        // Events of its account went by: at its stop it learns where the log is; the
        // idle one in an account without events keeps its position.
        assert_eq!(router.settle(other.id), Some(3));
        assert_eq!(router.settle(idle.id), None);
    }

    #[test]
    fn a_full_inbox_is_detached_and_keeps_what_it_holds() {
        let router = Router::new(0);
        let slow = router.attach(&wants("a", &["asset-updated"], &[], None), 2, None);
        let updated = |seq| event(seq, "a", "asset-updated", "assets", None);
        router.route(&batch(0, vec![updated(1), updated(2)]));
        router.route(&batch(2, vec![updated(3)]));
        router.route(&batch(3, vec![updated(4)]));
        let taken = slow.inbox.try_take().expect("woken");
        let seqs: Vec<i64> = taken.events.iter().map(|e| e.seq).collect();
        // Events 3 and 4 are read from the log, after 2.
        assert_eq!((seqs, taken.upto, taken.attached), (vec![1, 2], 2, false));
        assert!(router.lock().index.accounts.is_empty());
    }

    #[test]
    fn every_subscription_of_an_account_learns_the_position_now_and_then() {
        let router = Router::new(0);
        let quiet = router.attach(&wants("a", &["asset-deleted"], &[], None), 16, None);
        let mut seq = 0;
        for _ in 0..NUDGE_EVERY - 1 {
            seq += 1;
            router.route(&batch(
                seq - 1,
                vec![event(seq, "a", "asset-updated", "x", None)],
            ));
        }
        assert!(quiet.inbox.try_take().is_none());
        seq += 1;
        router.route(&batch(
            seq - 1,
            vec![event(seq, "a", "asset-updated", "x", None)],
        ));
        let taken = quiet.inbox.try_take().expect("nudged");
        assert!(taken.events.is_empty());
        assert_eq!(taken.upto, seq);
    }
}
