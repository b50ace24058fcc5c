//! The worker of one subscription: follows the log from the subscription's cursor and
//! delivers every matching event, several at a time.
//!
//! A worker with nothing to do for [`SLEEP_AFTER`] (nothing in flight, waiting or
//! unsaved, and none of the log left to read) sleeps: its task ends and the worker
//! waits in its [`Slot`], without a task or a timer, until the router puts something in
//! its inbox or a command comes. So an idle subscription costs a little memory and no
//! task.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::breaker::{Admission, ProbePermit};
use super::engine::{self, Call, Called, Delivery, Report};
use super::feed::{Feed, Signals};
use super::order::{self, Admit, EntityOrder};
use super::router::{Wake, Wants};
use super::{Dispatcher, LogEnds, Target};
use crate::model::{Millis, StoredEvent, now_millis};
use crate::sinks::Attempted;

/// Commands from the API and the retry scheduler to a running worker.
pub(super) enum Control {
    /// Deliver again every event after this sequence number.
    Rewind(i64),
    /// The retry of this event is over (delivered or dead): an in-order subscription
    /// that waited for it carries on.
    Resolved(i64),
}

/// How often progress is saved while deliveries flow. Crashing loses at most this much
/// progress, and those events are delivered again (at-least-once).
pub(super) const FLUSH_EVERY: Duration = Duration::from_millis(50);
/// Progress is saved early when this many attempt records wait.
const FLUSH_RECORDS: usize = 1_024;
/// At least this many events wait in a worker's inbox before it counts as fallen behind
/// (and reads the log instead); more when it reads further ahead than half of this.
const INBOX_EVENTS: usize = 1_024;
/// An in-order subscription that waits for a retry is told when it is over (delivered or
/// dead); it also looks at the retry set this often, so a word lost to a restart of its
/// worker cannot stall it.
const RECHECK_WAITING: Duration = Duration::from_secs(5);
/// While another probe (a retry's) is under way, how often to look whether it is over.
const PROBE_BUSY_POLL: Duration = Duration::from_millis(250);
/// A worker with nothing to do for this long sleeps (its task ends) until it has.
pub(super) const SLEEP_AFTER: Duration = Duration::from_secs(5);

/// Where a worker is: its task, or while it sleeps, the worker itself (no task); and the
/// commands that wait for it.
pub(super) struct Slot {
    state: Mutex<SlotState>,
    /// In the order they came. Unbounded, but commands are few: replays asked through
    /// the API, and for in-order subscriptions the end of the retry they wait for. (A
    /// channel would cost every idle subscription a kilobyte: tokio's allocates its
    /// first block of slots at once.)
    commands: Mutex<VecDeque<Control>>,
    command_came: Notify,
    tasks: TaskTracker,
}

enum SlotState {
    /// Its task runs, or ran (the handle of its last run, if any).
    Awake(Option<JoinHandle<()>>),
    Asleep(Box<Worker>),
}

impl Slot {
    pub(super) fn new(tasks: TaskTracker) -> Arc<Slot> {
        Arc::new(Slot {
            state: Mutex::new(SlotState::Awake(None)),
            commands: Mutex::new(VecDeque::new()),
            command_came: Notify::new(),
            tasks,
        })
    }

    fn commands(&self) -> MutexGuard<'_, VecDeque<Control>> {
        // A poisoned lock only means a panic during a push or a pop.
        self.commands.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Hands a command to the worker, and wakes it if it sleeps.
    pub(super) fn send(&self, command: Control) {
        self.commands().push_back(command);
        self.command_came.notify_one();
        self.wake();
    }

    /// The next command, once there is one. Cancel-safe: it is taken after the last
    /// await.
    async fn next_command(&self) -> Control {
        loop {
            if let Some(command) = self.commands().pop_front() {
                return command;
            }
            // A send between the look and this wait leaves a permit: none is missed.
            self.command_came.notified().await;
        }
    }

    fn lock(&self) -> MutexGuard<'_, SlotState> {
        // A poisoned lock only means a panic between two plain assignments.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts the worker's task.
    pub(super) fn start(&self, worker: Worker) {
        let mut state = self.lock();
        *state = SlotState::Awake(Some(self.tasks.spawn(worker.run())));
    }

    /// Puts the worker to sleep, unless something came for it meanwhile (then it is
    /// handed back to go on). Under the slot's lock, so a put in its inbox or a command
    /// either is seen here or finds it asleep and wakes it.
    fn sleep(&self, worker: Box<Worker>) -> Result<(), Box<Worker>> {
        let mut state = self.lock();
        if worker.cancel.is_cancelled() || !self.commands().is_empty() || worker.feed.has_news() {
            return Err(worker);
        }
        *state = SlotState::Asleep(worker);
        Ok(())
    }

    /// The sleeping worker, taken out (it is dropped by the caller, outside the lock:
    /// its feed leaves the router).
    fn take_sleeping(&self) -> Option<Box<Worker>> {
        let mut state = self.lock();
        match std::mem::replace(&mut *state, SlotState::Awake(None)) {
            SlotState::Asleep(worker) => Some(worker),
            awake => {
                *state = awake;
                None
            }
        }
    }

    /// Puts a worker that has nothing to do to sleep without running it, or starts it
    /// if something came for it already.
    pub(super) fn start_asleep(&self, worker: Worker) {
        if let Err(worker) = self.sleep(Box::new(worker)) {
            self.start(*worker);
        }
    }

    /// After its token was cancelled: forgets a sleeping worker (it has nothing unsaved,
    /// but for a position it skipped to at its start, which the next start finds again).
    pub(super) fn discard(&self) {
        drop(self.take_sleeping());
    }

    /// After its token was cancelled: waits until the worker has stopped and queued its
    /// last progress report (a sleeping one has nothing unsaved).
    pub(super) async fn stopped(&self) {
        self.discard();
        let handle = match &mut *self.lock() {
            SlotState::Awake(handle) => handle.take(),
            SlotState::Asleep(_) => None,
        };
        if let Some(handle) = handle {
            let _ = handle.await;
        }
    }
}

impl Wake for Slot {
    fn wake(&self) {
        let mut state = self.lock();
        if !matches!(*state, SlotState::Asleep(_)) {
            return;
        }
        let SlotState::Asleep(worker) = std::mem::replace(&mut *state, SlotState::Awake(None))
        else {
            return;
        };
        if worker.cancel.is_cancelled() {
            // Dropped in a task of its own: its feed leaves the router, which may be
            // routing (and holding its lock) right now.
            self.tasks.spawn(async move { drop(worker) });
            return;
        }
        *state = SlotState::Awake(Some(self.tasks.spawn(worker.run())));
    }
}

/// A worker's delivery calls under way. The queue is made at the first call and let go
/// before the worker sleeps: an empty `FuturesUnordered` holds an allocated queue of about
/// 250 bytes, which every sleeping worker would keep for nothing.
#[derive(Default)]
struct Calls(Option<FuturesUnordered<Call<()>>>);

impl Calls {
    fn len(&self) -> usize {
        self.0.as_ref().map_or(0, FuturesUnordered::len)
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn push(&mut self, call: Call<()>) {
        self.0.get_or_insert_with(FuturesUnordered::new).push(call);
    }

    /// The next call to finish; `None` at once when none is under way.
    async fn next(&mut self) -> Option<Called<()>> {
        match &mut self.0 {
            Some(calls) => calls.next().await,
            None => None,
        }
    }

    /// Lets the queue go, when nothing is under way.
    fn release(&mut self) {
        if self.is_empty() {
            self.0 = None;
        }
    }
}

/// Why a worker's delivery loop ended.
enum Stop {
    /// Nothing to do: it may sleep.
    Idle,
    /// Cancelled, disabled, or (a job's callback) expired.
    End { expired: bool },
}

pub(super) struct Worker {
    dispatcher: Dispatcher,
    target: Arc<Target>,
    cancel: CancellationToken,
    feed: Feed,
    /// Matching events read from the feed, not yet started.
    pending: VecDeque<Arc<StoredEvent>>,
    /// Delivery calls under way: one event each for a webhook, a batch for AWS sinks.
    in_flight: Calls,
    /// The events of the calls under way: their position, and when each was committed
    /// (for the metrics' oldest undelivered event).
    in_flight_seqs: BTreeMap<i64, Millis>,
    report: Report,
    saved_cursor: i64,
    /// In-order subscriptions only: the event whose retry must be over before the next
    /// delivery starts.
    waiting_for: Option<i64>,
    /// Subscriptions ordered per entity only: which events may go next. Boxed: most
    /// subscriptions are not ordered, and every sleeping worker would hold its 168 bytes.
    order: Option<Box<EntityOrder>>,
    /// Ordered per entity: admitted events (their entity's turn), not started yet.
    ready: VecDeque<Arc<StoredEvent>>,
    /// Where it sleeps when it has nothing to do.
    slot: Arc<Slot>,
    /// Whether it ran before (woken from sleep).
    woken: bool,
}

impl Worker {
    pub(super) fn new(
        dispatcher: Dispatcher,
        target: Arc<Target>,
        cancel: CancellationToken,
        slot: Arc<Slot>,
    ) -> Worker {
        let cursor = target.subscription.cursor;
        let (max_in_flight, batch_size) = limits(&dispatcher, &target);
        let feed = Feed::new(
            dispatcher.store().clone(),
            dispatcher.shared.router.clone(),
            Wants::of(&target.subscription),
            cursor,
            INBOX_EVENTS.max(2 * max_in_flight * batch_size),
            dispatcher.config().max_page_bytes,
            Signals {
                caught_up: target.standing.caught_up_flag(),
                waker: Some(slot.clone() as Arc<dyn Wake>),
            },
        );
        let report = Report::new(target.id());
        let order = target
            .subscription
            .ordering
            .by_entity()
            .then(|| Box::new(EntityOrder::new(order::PARKED_MAX)));
        Worker {
            dispatcher,
            target,
            cancel,
            feed,
            pending: VecDeque::new(),
            in_flight: Calls::default(),
            in_flight_seqs: BTreeMap::new(),
            report,
            saved_cursor: cursor,
            waiting_for: None,
            order,
            ready: VecDeque::new(),
            slot,
            woken: false,
        }
    }

    pub(super) async fn run(mut self) {
        if !self.woken {
            if self.target.subscription.in_order() {
                // A retry left from before a restart still comes first.
                self.waiting_for = pending_retry(&self.dispatcher, self.target.id()).await;
            }
            if let Some(order) = &mut self.order {
                // The retries left from before a restart hold their entities back.
                for (seq, key) in pending_retry_entities(&self.dispatcher, self.target.id()).await {
                    if let Some(key) = key {
                        order.retrying(seq, key);
                    }
                }
            }
        }
        self.woken = true;
        let expired = loop {
            match self.deliver().await {
                Stop::Idle => {
                    self.in_flight.release();
                    let slot = self.slot.clone();
                    match slot.sleep(Box::new(self)) {
                        Ok(()) => return,
                        Err(worker) => self = *worker,
                    }
                }
                Stop::End { expired } => break expired,
            }
        };
        self.finish_in_flight().await;
        // The position of a subscription that skipped its account's events is saved, so
        // a restart or the next node reads less of the log.
        self.feed.settle();
        let disabled = self.report.disables();
        self.flush().await;
        if disabled {
            self.dispatcher.commit_disabling(self.target.id()).await;
            self.dispatcher.stop_worker_of(&self.target);
        }
        if expired {
            self.dispatcher.expire(&self.target).await;
        }
    }

    /// In-order subscriptions, those ordered per entity (their parked events and retries
    /// are in memory) and jobs' callbacks (whose expiry is a timer) keep their task.
    fn may_sleep(&self) -> bool {
        let subscription = &self.target.subscription;
        !subscription.in_order() && self.order.is_none() && subscription.expires_at().is_none()
    }

    /// At a start: attaches the feed of a worker that may sleep (true), so that the
    /// caller can then look where its account's log ends (see
    /// [`Worker::skip_an_empty_log`]).
    pub(super) fn attach_before_start(&mut self) -> bool {
        if !self.may_sleep() {
            return false;
        }
        self.feed.attach();
        true
    }

    /// At a start, after [`Worker::attach_before_start`]: true (and nothing to read)
    /// when its account's log, as `ends` read it, ends at or before its position, and
    /// nothing was committed between that read and its attachment.
    pub(super) fn skip_an_empty_log(&mut self, ends: &LogEnds) -> bool {
        if !self.feed.attached_by(ends.head) {
            return false;
        }
        let last = ends.last.get(&self.target.subscription.account);
        if last.is_some_and(|&last| last > self.feed.seen()) {
            return false;
        }
        self.feed.skip_log();
        self.show_standing();
        true
    }

    /// Whether nothing is left to do until the router or a command brings something.
    pub(super) fn is_idle(&self) -> bool {
        self.pending.is_empty()
            && self.in_flight.is_empty()
            && self.waiting_for.is_none()
            && self.feed.is_quiet()
            && !self.has_progress()
    }

    /// Delivers until cancelled, disabled or expired, or until it has had nothing to do
    /// for [`SLEEP_AFTER`].
    async fn deliver(&mut self) -> Stop {
        let subscription = &self.target.subscription;
        let (max_in_flight, batch_size) = limits(&self.dispatcher, &self.target);
        // Events read ahead of the calls that will carry them.
        let read_ahead = max_in_flight * batch_size;
        let mut recheck = tokio::time::interval_at(
            tokio::time::Instant::now() + RECHECK_WAITING,
            RECHECK_WAITING,
        );
        let expires = subscription.expires_at().map(|at| {
            let left = u64::try_from(at.saturating_sub(now_millis())).unwrap_or(0);
            tokio::time::Instant::now() + Duration::from_millis(left)
        });
        let may_sleep = self.may_sleep();
        // Armed only while there is progress to save: an idle worker has no timer that
        // wakes it.
        let flush = tokio::time::sleep(FLUSH_EVERY);
        tokio::pin!(flush);
        let mut flush_armed = false;
        let drowsy = tokio::time::sleep(SLEEP_AFTER);
        tokio::pin!(drowsy);
        let mut drowsy_armed = false;
        loop {
            if !flush_armed && self.has_progress() {
                flush
                    .as_mut()
                    .reset(tokio::time::Instant::now() + FLUSH_EVERY);
                flush_armed = true;
            }
            // While the endpoint is down (the breaker is open), the worker stops sending
            // new events (they wait in the log, behind the cursor) and sends one probe at
            // a time, shared with the retry scheduler, until a delivery succeeds again:
            // an outage of hours costs one failed attempt per probe, not one per event.
            // It probes only when none of its own calls is under way; without one, it
            // looks again when a probe may go.
            // A rate limited subscription (or one whose endpoint answered 429) starts a
            // call only with a token: the rest wait in the log, and it looks again when
            // the next token is there.
            let mut probe_at = None;
            if self.order.is_some() {
                self.read_due(max_in_flight).await;
                probe_at = self.start_ordered(max_in_flight);
            } else if self.waiting_for.is_none() {
                let dispatcher = self.dispatcher.clone();
                let schedule = &dispatcher.config().retry_schedule;
                while self.in_flight.len() < max_in_flight && !self.pending.is_empty() {
                    let size = batch_size.min(self.pending.len());
                    match self.target.admit(schedule, self.in_flight.is_empty(), size) {
                        Admission::Open => {
                            let batch: Vec<_> = self.pending.drain(..size).collect();
                            self.start(batch, None);
                        }
                        // A probe is one event, whatever the sink could carry.
                        Admission::Probe(permit) => {
                            let batch: Vec<_> = self.pending.drain(..1).collect();
                            self.start(batch, Some(permit));
                            break;
                        }
                        Admission::Closed { next_at, probing } => {
                            if self.in_flight.is_empty() {
                                probe_at = Some(match probing {
                                    // Its end is not announced: look a little later.
                                    true => {
                                        next_at.max(tokio::time::Instant::now() + PROBE_BUSY_POLL)
                                    }
                                    false => next_at,
                                });
                            }
                            break;
                        }
                        Admission::Paced { next_at } => {
                            probe_at = Some(next_at);
                            break;
                        }
                    }
                }
            }
            self.show_standing();
            let idle = may_sleep && probe_at.is_none() && !flush_armed && self.is_idle();
            if idle && !drowsy_armed {
                drowsy
                    .as_mut()
                    .reset(tokio::time::Instant::now() + SLEEP_AFTER);
            }
            drowsy_armed = idle;
            tokio::select! {
                biased;
                _ = self.cancel.cancelled() => return Stop::End { expired: false },
                command = self.slot.next_command() => self.command(command),
                Some(Called { results, .. }) = self.in_flight.next(), if !self.in_flight.is_empty() => {
                    for (event, attempted) in results {
                        if self.finished(&event, &attempted) {
                            // Disabled: save what we know and stop.
                            self.cancel.cancel();
                        }
                    }
                    if self.report.records() >= FLUSH_RECORDS {
                        self.flush().await;
                    }
                }
                events = self.feed.next(), if self.pending.len() < read_ahead && !self.order.as_deref().is_some_and(EntityOrder::full) => {
                    let subscription = &self.target.subscription;
                    self.pending.extend(events.into_iter().filter(|event| subscription.wants(event)));
                }
                _ = &mut flush, if flush_armed => {
                    flush_armed = false;
                    self.flush().await;
                }
                _ = sleep_until_some(probe_at), if probe_at.is_some() => {}
                _ = recheck.tick(), if self.waiting_for.is_some() || self.order.as_deref().is_some_and(EntityOrder::has_retries) => {
                    // Everything this worker reported is committed before the look.
                    self.flush().await;
                    if self.dispatcher.store().flush().await.is_ok() {
                        if self.order.is_some() {
                            let pending: HashSet<i64> = pending_retry_entities(&self.dispatcher, self.target.id())
                                .await
                                .into_iter()
                                .map(|(seq, _)| seq)
                                .collect();
                            if let Some(order) = &mut self.order {
                                order.reconcile(&pending);
                            }
                        } else {
                            self.waiting_for = pending_retry(&self.dispatcher, self.target.id()).await;
                        }
                    }
                }
                _ = sleep_until_some(expires) => return Stop::End { expired: true },
                _ = &mut drowsy, if drowsy_armed => {
                    drowsy_armed = false;
                    // Its position is saved first (as at a stop), so a restart reads less.
                    self.feed.settle();
                    self.flush().await;
                    if self.is_idle() {
                        return Stop::Idle;
                    }
                }
            }
        }
    }

    /// Starts one delivery call; a probe holds the breaker's slot until it is over.
    fn start(&mut self, batch: Vec<Arc<StoredEvent>>, probe: Option<ProbePermit>) {
        self.in_flight_seqs
            .extend(batch.iter().map(|event| (event.seq, event.received_at)));
        let call = engine::call(&self.dispatcher, &self.target, batch, (), probe);
        self.in_flight.push(call);
    }

    /// Ordered per entity: reads the due events (their entity's turn came while they
    /// were parked) from the log again, as many as there are free slots.
    async fn read_due(&mut self, max_in_flight: usize) {
        let Some(order) = &mut self.order else {
            return;
        };
        while order.has_due() {
            let room = max_in_flight.saturating_sub(self.in_flight.len() + self.ready.len());
            if room == 0 {
                return;
            }
            let seqs = order.take_due(room);
            let events = match self.dispatcher.store().db().events_by_seqs(&seqs).await {
                Ok(events) => events,
                Err(error) => {
                    // Read again at the next turn of the loop.
                    tracing::error!(%error, subscription = self.target.id(), "reading parked events failed");
                    for seq in seqs.into_iter().rev() {
                        order.push_due_front(seq);
                    }
                    return;
                }
            };
            let mut found = events.into_iter().map(Arc::new).peekable();
            for seq in seqs {
                match found.next_if(|event| event.seq == seq) {
                    Some(event) => self.ready.push_back(event),
                    // Gone from the log (retention): over, and its entity goes on.
                    None => order.finished(seq, false),
                }
            }
        }
    }

    /// Ordered per entity: starts what may go, the due events first, then the events
    /// read from the log whose entity is free (the others are parked). Returns when to
    /// look again, if admission said so.
    fn start_ordered(&mut self, max_in_flight: usize) -> Option<tokio::time::Instant> {
        let dispatcher = self.dispatcher.clone();
        let schedule = &dispatcher.config().retry_schedule;
        while self.in_flight.len() < max_in_flight {
            if self.ready.is_empty() {
                let event = self.pending.pop_front()?;
                let order = self.order.as_mut()?;
                match order.admit(&event) {
                    Admit::Go => self.ready.push_back(event),
                    Admit::Park | Admit::Skip => continue,
                }
            }
            match self.target.admit(schedule, self.in_flight.is_empty(), 1) {
                Admission::Open => {
                    let event = self.ready.pop_front()?;
                    self.started_ordered(event.seq);
                    self.start(vec![event], None);
                }
                Admission::Probe(permit) => {
                    let event = self.ready.pop_front()?;
                    self.started_ordered(event.seq);
                    self.start(vec![event], Some(permit));
                    return None;
                }
                Admission::Closed { next_at, probing } => {
                    if !self.in_flight.is_empty() {
                        return None;
                    }
                    return Some(match probing {
                        true => next_at.max(tokio::time::Instant::now() + PROBE_BUSY_POLL),
                        false => next_at,
                    });
                }
                Admission::Paced { next_at } => return Some(next_at),
            }
        }
        None
    }

    fn started_ordered(&mut self, seq: i64) {
        if let Some(order) = &mut self.order {
            order.started(seq);
        }
    }

    fn command(&mut self, command: Control) {
        match command {
            Control::Rewind(cursor) => {
                // Never past what this node has seen of the log (the API refuses that
                // already; a rewind also comes from another node's announcement): a
                // cursor past the head would skip the events that get those positions.
                let cursor = cursor.min(self.dispatcher.store().head());
                // In-flight deliveries finish; everything after `cursor` is read again.
                self.pending.clear();
                self.ready.clear();
                if let Some(order) = &mut self.order {
                    let in_flight = &self.in_flight_seqs;
                    order.rewind(|seq| in_flight.contains_key(&seq));
                }
                self.feed.rewind(cursor);
                self.saved_cursor = i64::MAX; // force the next flush to save the cursor
            }
            Control::Resolved(seq) => {
                if let Some(order) = &mut self.order {
                    order.resolved(seq);
                }
                if self.waiting_for == Some(seq) {
                    self.waiting_for = None;
                }
            }
        }
    }

    /// Records a first attempt's outcome. Returns true when the subscription must stop.
    fn finished(&mut self, event: &StoredEvent, attempted: &Attempted) -> bool {
        self.in_flight_seqs.remove(&event.seq);
        let delivery = Delivery {
            event,
            resync_id: None,
            attempt: 1,
        };
        let recorded = self
            .report
            .record(&self.dispatcher, &self.target, delivery, attempted);
        if let Some(order) = &mut self.order {
            // Delivered or dead: the entity's next event goes; in the retry set: it
            // waits for the retry to be over.
            order.finished(event.seq, recorded.outcome.retry_at().is_some());
        }
        if recorded.outcome.retry_at().is_some() && self.target.subscription.in_order() {
            // The next delivery waits until the retry set has delivered this one or
            // given up on it: the receiver sees the events in order.
            self.waiting_for = Some(event.seq);
        }
        // The worker stops; it leaves the running set only once the disabling is
        // committed, so nothing starts it again from the old state meanwhile.
        recorded.disabled
    }

    /// Every event at or below this has been delivered or put in the retry set.
    fn watermark(&self) -> i64 {
        let in_flight = self.in_flight_seqs.keys().next().map(|seq| seq - 1);
        let pending = self.pending.front().map(|event| event.seq - 1);
        // Ordered per entity: parked, due and admitted events are not delivered yet.
        let parked = self
            .order
            .as_deref()
            .and_then(EntityOrder::first_waiting)
            .map(|seq| seq - 1);
        let ready = self.ready.iter().map(|event| event.seq - 1).min();
        [in_flight, pending, parked, ready]
            .into_iter()
            .flatten()
            .fold(self.feed.seen(), i64::min)
    }

    /// Tells the metrics pass where this worker stands: a few stores per wake-up (not
    /// per event), read every `--metrics-interval`.
    fn show_standing(&self) {
        let in_flight = self.in_flight_seqs.iter().next();
        let pending = self
            .pending
            .front()
            .map(|event| (&event.seq, &event.received_at));
        let oldest = match (in_flight, pending) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.target.standing.show(
            oldest.map(|(&seq, &received_at)| (seq, received_at)),
            self.watermark(),
        );
    }

    /// Whether a flush would save anything.
    fn has_progress(&self) -> bool {
        self.watermark() != self.saved_cursor || !self.report.is_empty()
    }

    async fn flush(&mut self) {
        if !self.has_progress() {
            return;
        }
        let cursor = self.watermark();
        let moved = cursor != self.saved_cursor;
        let report = self.report.take(moved.then_some(cursor), None);
        match self.dispatcher.store().record_progress(report).await {
            Ok(()) => self.saved_cursor = cursor,
            Err(error) => {
                tracing::error!(%error, subscription = self.target.id(), "saving progress failed")
            }
        }
    }

    /// On shutdown: give deliveries in flight a little time to finish. Those that do not
    /// stay behind the saved cursor and are delivered again after a restart.
    async fn finish_in_flight(&mut self) {
        let grace = tokio::time::sleep(self.dispatcher.config().shutdown_grace);
        tokio::pin!(grace);
        while !self.in_flight.is_empty() {
            tokio::select! {
                Some(Called { results, .. }) = self.in_flight.next() => {
                    for (event, attempted) in results {
                        self.finished(&event, &attempted);
                    }
                }
                _ = &mut grace => break,
            }
        }
    }
}

/// How many delivery calls a worker keeps in flight, and how many events each carries.
fn limits(dispatcher: &Dispatcher, target: &Target) -> (usize, usize) {
    match target.subscription.in_order() {
        true => (1, 1),
        // Ordered per entity: one event a call, each its entity's turn.
        false if target.subscription.ordering.by_entity() => {
            (target.max_in_flight(dispatcher.config().max_in_flight), 1)
        }
        false => (
            target.max_in_flight(dispatcher.config().max_in_flight),
            target.batch_size(),
        ),
    }
}

/// The first of a subscription's deliveries waiting in the retry set.
async fn pending_retry(dispatcher: &Dispatcher, id: &str) -> Option<i64> {
    match dispatcher.store().db().first_pending_retry(id).await {
        Ok(seq) => seq,
        Err(error) => {
            tracing::error!(%error, subscription = id, "reading pending retries failed");
            None
        }
    }
}

/// A subscription's incremental deliveries in the retry set, with their entity keys.
async fn pending_retry_entities(dispatcher: &Dispatcher, id: &str) -> Vec<(i64, Option<String>)> {
    match dispatcher.store().db().pending_retry_entities(id).await {
        Ok(pending) => pending,
        Err(error) => {
            tracing::error!(%error, subscription = id, "reading pending retries failed");
            Vec::new()
        }
    }
}

/// Completes at `at`, or never.
async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewind_to(command: Control) -> i64 {
        match command {
            Control::Rewind(cursor) => cursor,
            Control::Resolved(seq) => panic!("expected a rewind, got the end of retry {seq}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn commands_reach_the_worker_in_order_whether_sent_before_or_while_it_waits() {
        let slot = Slot::new(TaskTracker::new());
        slot.send(Control::Rewind(3));
        slot.send(Control::Rewind(7));
        assert_eq!(rewind_to(slot.next_command().await), 3);
        assert_eq!(rewind_to(slot.next_command().await), 7);

        // Waiting: a command sent later wakes it.
        let sender = slot.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            sender.send(Control::Rewind(11));
        });
        let waited = tokio::time::timeout(Duration::from_secs(5), slot.next_command()).await;
        assert_eq!(rewind_to(waited.expect("woken by the send")), 11);

        // A wait given up (another branch of the worker's select won) takes nothing.
        assert!(
            tokio::time::timeout(Duration::from_millis(10), slot.next_command())
                .await
                .is_err()
        );
        slot.send(Control::Rewind(13));
        assert_eq!(rewind_to(slot.next_command().await), 13);
        assert!(slot.commands().is_empty());
    }
}
