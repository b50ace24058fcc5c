//! Dispatch: from the committed log to the sinks.
//!
//! Every enabled subscription has one `worker` that follows the log with its own cursor;
//! one with nothing to do sleeps (no task) until the router brings it something.
//! The `router` looks up who wants each committed event (by account, then event name or
//! topic, a job's callbacks by job) and puts it in those workers' inboxes only, so an
//! idle subscription costs memory, not work per event. A worker takes its events from
//! its inbox (`feed`), or from its account's log in the database when it starts behind
//! or fell behind, keeps a bounded number of deliveries in flight, and reports progress
//! (cursor, attempt records, failures) to the store in batches. A
//! failed delivery moves to the retry set in the database, where the `retry` scheduler
//! picks it up when due. So a successful delivery costs no row of its own, and a
//! receiver that is down for hours costs disk, not memory.
//!
//! A full resync of a subscription (catalog mirroring) has a `resync` runner of its own
//! beside the worker: it sends the latest event of each live entity through the same
//! sink, signer and retry set, and stops with the worker.
//!
//! The worker, the retry scheduler and the resync runner deliver through one `engine`:
//! the same admission (the endpoint's `breaker`), the same call to the sink, the same
//! decision (`policy::decide`, pure, giving a [`policy::AttemptOutcome`]) and the same
//! record of it in their progress reports.

mod breaker;
mod cluster;
mod engine;
mod feed;
mod gauges;
mod order;
mod pace;
pub mod policy;
mod resync;
mod retry;
mod router;
mod status_class;
mod worker;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicI64, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::RetrySchedule;
use crate::model::{Millis, StoredEvent, Subscription};
use crate::sinks::webhook::{SecretError, Signer};
use crate::sinks::{AttemptResult, Attempted, Batch, Prepared, Sinks};
use crate::store::{Cluster, ResyncRun, Store, StoreError};

/// Dispatch settings, taken from the server configuration.
#[derive(Debug, Clone)]
pub struct DispatchConfig {
    pub retry_schedule: RetrySchedule,
    pub disable_after: Duration,
    pub max_in_flight: usize,
    pub delivery_timeout: Duration,
    /// How long shutdown waits for deliveries in flight before handing them back (they
    /// stay behind the saved cursor and are sent again after the restart).
    pub shutdown_grace: Duration,
    /// With several nodes: how long a node's leases last without renewal.
    pub lease_ttl: Duration,
    /// The byte bound of a page read from the log or the entities (`--max-page-bytes`).
    pub max_page_bytes: usize,
    /// Which subscriptions and accounts get metric series of their own, and how often
    /// the per-subscription figures are computed.
    pub metrics: crate::metrics_scope::MetricsScope,
}

#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("subscription {id} has an unusable signing secret: {source}")]
    Secret { id: String, source: SecretError },
    #[error("subscription {id} has an unusable destination: {error}")]
    Destination { id: String, error: String },
}

/// The dispatcher: cheap to clone, shared by the HTTP layer (which adds and removes
/// subscriptions) and by its own tasks.
#[derive(Clone)]
pub struct Dispatcher {
    shared: Arc<Shared>,
}

struct Shared {
    store: Store,
    /// Every destination's client and checks.
    sinks: Arc<Sinks>,
    /// The worker processes that run subscriptions' transforms.
    transformer: crate::sinks::transform::Transformer,
    metrics: DeliveryMetrics,
    config: DispatchConfig,
    /// The running workers, by subscription id.
    workers: Mutex<HashMap<String, WorkerHandle>>,
    /// Hands each committed event to the workers that want it.
    router: router::Router,
    /// With PostgreSQL: the subscriptions are shared with the other nodes, and this one
    /// runs workers only for those it holds a lease on.
    cluster: Option<Cluster>,
    /// Held while this node changes which subscriptions it holds (a lease pass, or taking
    /// a new subscription), so one does not act on what the other is changing.
    leasing: tokio::sync::Mutex<()>,
    retry_wake: RetryWake,
    /// The counters over time of the console's charts.
    stats: Arc<crate::stats::Stats>,
    /// The top subscriptions of the last metrics pass (`gauges`), for their series.
    subscription_series: Mutex<Arc<[gauges::Row]>>,
    cancel: CancellationToken,
    tasks: TaskTracker,
}

impl WorkerHandle {
    /// Stops the worker: a running one at its next step, a sleeping one at once.
    fn stop(&self) {
        self.cancel.cancel();
        self.slot.discard();
    }
}

/// Subscriptions read per query at a start.
const START_PAGE: u32 = 1_000;

/// Where each subscribed account's log ended when read (its last event's position;
/// accounts without events are not there), and the head of the log then: a worker
/// attached to the router at or before `head` has none of its account's events to read
/// past `last`.
pub(super) struct LogEnds {
    head: i64,
    last: HashMap<String, i64>,
}

struct WorkerHandle {
    target: Arc<Target>,
    cancel: CancellationToken,
    /// Its task, or the worker itself while it sleeps.
    slot: Arc<worker::Slot>,
    /// The resync run whose runner goes beside this worker, if any.
    resync: Mutex<Option<String>>,
}

/// A subscription as dispatch needs it: its settings, its prepared signer, and how its
/// endpoint has been doing.
pub(crate) struct Target {
    subscription: Subscription,
    /// Its destination's client, from its sink.
    destination: Arc<dyn Prepared>,
    /// Replaced when the signing secret is rotated (see [`Dispatcher::rekey`]).
    signer: RwLock<Arc<Signer>>,
    failing_since: Mutex<Option<Millis>>,
    /// Failed attempts since the last success (first attempts and retries alike).
    consecutive_failures: AtomicU32,
    /// While the endpoint is down: one probe at a time, from the worker or the retries.
    breaker: Arc<breaker::Breaker>,
    /// Its rate limit and any pause its endpoint asked for, for every delivery path.
    pace: pace::Pace,
    /// Where its worker stands, as the metrics pass reads it.
    standing: gauges::Standing,
}

/// The signer of a subscription's deliveries: its secret, and during a rotation's
/// overlap its previous secret too.
fn signer_of(subscription: &Subscription) -> Result<Signer, DispatchError> {
    let unusable = |source| DispatchError::Secret {
        id: subscription.id.clone(),
        source,
    };
    let signer = Signer::new(&subscription.secret).map_err(unusable)?;
    match &subscription.previous_secret {
        Some(previous) => signer
            .with_previous(&previous.secret, previous.until)
            .map_err(unusable),
        None => Ok(signer),
    }
}

impl Target {
    fn new(subscription: Subscription, sinks: &Arc<Sinks>) -> Result<Target, DispatchError> {
        let destination = sinks
            .prepare(&subscription.destination, &subscription.account)
            .map_err(|error| DispatchError::Destination {
                id: subscription.id.clone(),
                error,
            })?;
        let signer = RwLock::new(Arc::new(signer_of(&subscription)?));
        let failing_since = Mutex::new(subscription.failing_since);
        let pace = pace::Pace::new(subscription.rate_limit);
        Ok(Target {
            pace,
            subscription,
            destination,
            signer,
            failing_since,
            consecutive_failures: AtomicU32::new(0),
            breaker: breaker::Breaker::new(),
            standing: gauges::Standing::default(),
        })
    }

    fn id(&self) -> &str {
        &self.subscription.id
    }

    fn signer(&self) -> Arc<Signer> {
        self.signer
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// How many events one delivery call carries.
    fn batch_size(&self) -> usize {
        self.destination.batch_size().max(1)
    }

    /// How many delivery calls may be in flight at once.
    fn max_in_flight(&self, configured: usize) -> usize {
        match self.destination.ordered() {
            true => 1,
            false => configured.max(1),
        }
    }

    fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures.load(Ordering::Relaxed)
    }
}

/// Metric handles, looked up once: a lookup per delivery showed in profiles.
struct DeliveryMetrics {
    delivered: metrics::Counter,
    failed: metrics::Counter,
    gone: metrics::Counter,
    latency: metrics::Histogram,
    /// `reelay_delivery_attempts_total{class, outcome}`, by class, then outcome
    /// (delivered, failed, gone).
    attempts: Vec<[metrics::Counter; 3]>,
    /// Which accounts get series of their own.
    scope: crate::metrics_scope::MetricsScope,
}

impl DeliveryMetrics {
    fn new(scope: crate::metrics_scope::MetricsScope) -> DeliveryMetrics {
        let outcome =
            |name: &'static str| metrics::counter!("reelay_deliveries_total", "outcome" => name);
        let attempt = |class: &'static str, outcome: &'static str| metrics::counter!("reelay_delivery_attempts_total", "class" => class, "outcome" => outcome);
        // Shown at 0 from the start, so an alert on its rate has a series to watch.
        metrics::counter!("reelay_dead_letters_total").increment(0);
        DeliveryMetrics {
            delivered: outcome("delivered"),
            failed: outcome("failed"),
            gone: outcome("gone"),
            latency: metrics::histogram!("reelay_delivery_latency_seconds"),
            attempts: status_class::StatusClass::ALL
                .iter()
                .map(|class| {
                    let class = class.label();
                    [
                        attempt(class, "delivered"),
                        attempt(class, "failed"),
                        attempt(class, "gone"),
                    ]
                })
                .collect(),
            scope,
        }
    }

    /// Counts one attempt by its class (and for an opted-in account, in its own series).
    fn attempted(&self, account: &str, attempted: &Attempted) {
        let class = status_class::StatusClass::of(attempted);
        let outcome = status_class::outcome_label(&attempted.result);
        let column = match outcome {
            "delivered" => 0,
            "failed" => 1,
            _ => 2,
        };
        if let Some(counters) = self.attempts.get(class.index()) {
            counters[column].increment(1);
        }
        if self.scope.covers(account) {
            metrics::counter!(
                "reelay_account_delivery_attempts_total",
                "account" => account.to_owned(),
                "class" => class.label(),
                "outcome" => outcome
            )
            .increment(1);
        }
    }
}

/// Lets workers tell the retry scheduler that a retry is due sooner than it planned.
struct RetryWake {
    earliest: AtomicI64,
    notify: Notify,
}

impl RetryWake {
    fn at(&self, when: Millis) {
        if self.earliest.fetch_min(when, Ordering::AcqRel) > when {
            self.notify.notify_one();
        }
    }
}

impl Dispatcher {
    /// Starts a worker for every enabled subscription, and the retry scheduler.
    pub async fn start(
        store: Store,
        config: DispatchConfig,
        sinks: Arc<Sinks>,
        cancel: CancellationToken,
        tasks: TaskTracker,
    ) -> Result<Dispatcher, DispatchError> {
        // Listening before the head is read: every commit after it reaches the router.
        let committed = store.subscribe_committed();
        let router = router::Router::new(store.head());
        let page_bytes = config.max_page_bytes;
        let dispatcher = Dispatcher {
            shared: Arc::new(Shared {
                store: store.clone(),
                sinks,
                transformer: crate::sinks::transform::Transformer::new(),
                metrics: DeliveryMetrics::new(config.metrics.clone()),
                config,
                workers: Mutex::new(HashMap::new()),
                router: router.clone(),
                cluster: store.db().cluster(),
                leasing: tokio::sync::Mutex::new(()),
                retry_wake: RetryWake {
                    earliest: AtomicI64::new(Millis::MAX),
                    notify: Notify::new(),
                },
                stats: Arc::new(crate::stats::Stats::new()),
                subscription_series: Mutex::new(Arc::from(Vec::new())),
                cancel: cancel.clone(),
                tasks: tasks.clone(),
            }),
        };
        tasks.spawn(router.run(store.clone(), committed, page_bytes, cancel.clone()));
        // A sleeping worker is no task, so the runtime's shutdown would not drop it, and it
        // holds the dispatcher that holds it: let them all go when dispatch stops (a
        // sleeping worker has nothing unsaved).
        let shared = Arc::downgrade(&dispatcher.shared);
        tasks.spawn(async move {
            cancel.cancelled().await;
            if let Some(shared) = shared.upgrade() {
                let slots: Vec<Arc<worker::Slot>> = (shared.workers.lock())
                    .unwrap_or_else(|e| e.into_inner())
                    .values()
                    .map(|handle| handle.slot.clone())
                    .collect();
                for slot in slots {
                    slot.discard();
                }
            }
        });
        // Callbacks that expired while the server was down go first.
        store
            .db()
            .delete_expired_callbacks(crate::model::now_millis())
            .await?;
        match dispatcher.shared.cluster.clone() {
            // One process: every enabled subscription is its own.
            None => {
                let ends = dispatcher.log_ends().await;
                let mut after = String::new();
                loop {
                    let page = store.db().subscriptions_after(&after, START_PAGE).await?;
                    report_unreadable(&page.unreadable);
                    dispatcher
                        .start_workers(page.subscriptions, ends.as_ref())
                        .await;
                    match page.last {
                        Some(last) => after = last,
                        None => break,
                    }
                }
            }
            Some(cluster) => {
                let leases = cluster::Leases::new(dispatcher.clone(), cluster);
                dispatcher.shared.tasks.spawn(leases.run());
            }
        }
        let scheduler = retry::Scheduler::new(dispatcher.clone());
        dispatcher.shared.tasks.spawn(scheduler.run());
        dispatcher
            .shared
            .tasks
            .spawn(gauges::run(dispatcher.clone()));
        Ok(dispatcher)
    }

    /// Starts delivering to a new (or re-enabled) subscription. With several nodes, this
    /// node takes it if no other holds it, and the others are told so they rebalance.
    pub async fn add(&self, subscription: Subscription) -> Result<(), DispatchError> {
        let Some(cluster) = &self.shared.cluster else {
            return self.start_worker(subscription);
        };
        // It is stored already: if the database does not answer now, a lease pass (of
        // this node or another) takes it later.
        {
            let _leasing = self.shared.leasing.lock().await;
            let now = crate::model::now_millis();
            let until = now + self.lease_ttl_millis();
            match cluster.claim_one(&subscription.id, now, until).await {
                Ok(true) => self.start_worker(subscription)?,
                Ok(false) => {}
                Err(error) => tracing::warn!(%error, "taking a new subscription failed"),
            }
        }
        if let Err(error) = cluster.notify(cluster::CHANGED).await {
            tracing::warn!(%error, "telling the other nodes of a subscription failed");
        }
        Ok(())
    }

    /// Stops delivering to a deleted subscription, here and (with several nodes) on
    /// the node that delivers it.
    pub async fn deleted(&self, id: &str) {
        self.remove(id);
        if let Some(cluster) = &self.shared.cluster
            && let Err(error) = cluster.notify(cluster::CHANGED).await
        {
            // Its node notices at its next lease renewal instead.
            tracing::warn!(%error, "telling the other nodes of a deletion failed");
        }
    }

    /// Where each subscribed account's log ends, and the head it was read at (`None`
    /// when the read failed: every worker then reads its own account's log).
    async fn log_ends(&self) -> Option<LogEnds> {
        // Everything up to the head is committed before the query: the query sees it.
        let head = self.store().head();
        match self.store().db().last_event_of_subscribed_accounts().await {
            Ok(last) => Some(LogEnds { head, last }),
            Err(error) => {
                tracing::error!(%error, "reading where each account's log ends failed; every worker reads its own");
                None
            }
        }
    }

    /// Starts this node's workers for subscriptions read at a start (a page of them) or
    /// a lease pass (disabled ones and those running here already are skipped), then
    /// resumes their unfinished resyncs. One query finds those runs for all of them
    /// (10,000 lookups at once took PostgreSQL's whole pool), made once the workers are
    /// in place, so that a run started meanwhile is found by it or finds the worker.
    /// Most of many subscriptions are idle: those whose account logged nothing past
    /// their cursor (by `ends`) start asleep rather than each reading its account's log
    /// (100,000 reads kept both cores busy for many seconds after a restart).
    async fn start_workers(&self, subscriptions: Vec<Subscription>, ends: Option<&LogEnds>) {
        let mut started = HashSet::new();
        for subscription in subscriptions {
            if subscription.disabled.is_some() || self.is_running(&subscription.id) {
                continue;
            }
            let id = subscription.id.clone();
            // A destination its sink cannot prepare is skipped, not fatal.
            match self.place_worker(subscription) {
                Ok((mut worker, slot)) => {
                    started.insert(id);
                    let skips = worker.attach_before_start()
                        && ends.is_some_and(|ends| worker.skip_an_empty_log(ends));
                    if skips {
                        slot.start_asleep(worker);
                    } else {
                        slot.start(worker);
                    }
                }
                Err(error) => {
                    tracing::error!(%error, subscription = %id, "a stored subscription cannot be delivered; it is skipped");
                }
            }
        }
        if started.is_empty() {
            return;
        }
        // The workers run either way: a failed lookup costs the resumption of their
        // resyncs (until their next start), as one worker's failed lookup always did.
        match self.store().db().unfinished_resync_runs().await {
            Ok(runs) => {
                for run in runs {
                    if started.contains(&run.subscription_id) {
                        self.start_local_resync(run);
                    }
                }
            }
            Err(error) => tracing::error!(%error, "looking for resyncs to resume failed"),
        }
    }

    /// Starts this node's worker for one subscription (created or enabled), and resumes
    /// its resync if one was interrupted.
    fn start_worker(&self, subscription: Subscription) -> Result<(), DispatchError> {
        let id = subscription.id.clone();
        self.launch_worker(subscription)?;
        let dispatcher = self.clone();
        self.shared.tasks.spawn(async move {
            if let Err(error) = dispatcher.resume_resync(&id).await {
                tracing::error!(%error, subscription = %id, "resuming a resync failed");
            }
        });
        Ok(())
    }

    /// Starts this node's worker for a subscription, from its cursor; its resync, if any,
    /// is the caller's to resume.
    fn launch_worker(&self, subscription: Subscription) -> Result<(), DispatchError> {
        let (mut worker, slot) = self.place_worker(subscription)?;
        // A new subscription starts at the head: with nothing to read, it sleeps until
        // the router brings it something, rather than running idle until it would.
        if worker.attach_before_start() && worker.is_idle() {
            slot.start_asleep(worker);
        } else {
            slot.start(worker);
        }
        Ok(())
    }

    /// Makes this node's worker for a subscription and puts its handle in place (any
    /// previous one is stopped); the worker is the caller's to start in its slot.
    fn place_worker(
        &self,
        subscription: Subscription,
    ) -> Result<(worker::Worker, Arc<worker::Slot>), DispatchError> {
        let target = Arc::new(Target::new(subscription, &self.shared.sinks)?);
        let cancel = self.shared.cancel.child_token();
        let slot = worker::Slot::new(self.shared.tasks.clone());
        let worker =
            worker::Worker::new(self.clone(), target.clone(), cancel.clone(), slot.clone());
        let handle = WorkerHandle {
            target,
            cancel,
            slot: slot.clone(),
            resync: Mutex::new(None),
        };
        let id = handle.target.id().to_owned();
        let previous = self.workers().insert(id.clone(), handle);
        if let Some(previous) = previous {
            previous.stop();
        }
        // Its retries (if it was disabled and is enabled again) may be due now.
        self.shared.retry_wake.at(crate::model::now_millis());
        Ok((worker, slot))
    }

    /// Starts (or resumes) sending a resync run to its subscription, on the node that
    /// delivers it. Returns false when no node does (disabled): the run waits in the
    /// store, and goes on when a worker starts for the subscription again.
    pub async fn start_resync(&self, run: ResyncRun) -> bool {
        if self.start_local_resync(run.clone()) {
            return true;
        }
        let Some(cluster) = &self.shared.cluster else {
            return false;
        };
        match cluster
            .holder(&run.subscription_id, crate::model::now_millis())
            .await
        {
            Ok(Some(_)) => cluster
                .notify(&cluster::resync_message(&run.subscription_id))
                .await
                .is_ok(),
            _ => false,
        }
    }

    /// Starts a resync runner beside this node's worker for the run's subscription, unless
    /// that worker has one for this run already. False when no worker runs here.
    fn start_local_resync(&self, run: ResyncRun) -> bool {
        let running = {
            let workers = self.workers();
            let Some(handle) = workers.get(&run.subscription_id) else {
                return false;
            };
            let mut current = handle.resync.lock().unwrap_or_else(|e| e.into_inner());
            if current.as_deref() == Some(run.id.as_str()) {
                return true;
            }
            *current = Some(run.id.clone());
            (handle.target.clone(), handle.cancel.child_token())
        };
        let (target, cancel) = running;
        // A child of the worker's token: deleting or disabling the subscription, or
        // handing it to another node, stops it; the next worker resumes it.
        let runner = resync::Runner::new(self.clone(), target, run, cancel);
        self.shared.tasks.spawn(runner.run());
        true
    }

    /// Resumes the subscription's running resync, if it has one and its worker runs here
    /// (a worker started: after a restart, a takeover, or enabling).
    async fn resume_resync(&self, subscription_id: &str) -> Result<(), StoreError> {
        if let Some(run) = self.store().db().latest_resync_run(subscription_id).await?
            && run.completed_at.is_none()
        {
            self.start_local_resync(run);
        }
        Ok(())
    }

    /// Stops and forgets the worker of `target` once its subscription's disabling is
    /// committed (the worker itself, or the resync runner beside it, disabled it), unless
    /// another worker has replaced it since.
    fn stop_worker_of(&self, target: &Arc<Target>) {
        let mut workers = self.workers();
        if workers
            .get(target.id())
            .is_some_and(|handle| Arc::ptr_eq(&handle.target, target))
            && let Some(handle) = workers.remove(target.id())
        {
            drop(workers);
            handle.stop();
        }
    }

    /// Stops this node's worker for a subscription (deleted, disabled, or taken over).
    pub fn remove(&self, id: &str) {
        let removed = self.workers().remove(id);
        if let Some(handle) = removed {
            handle.stop();
        }
    }

    /// Stops a worker and waits until its progress is committed: after this, another
    /// node may take the subscription over from its saved cursor without sending
    /// anything twice.
    async fn hand_over(&self, id: &str) {
        let Some(handle) = self.workers().remove(id) else {
            return;
        };
        handle.cancel.cancel();
        handle.slot.stopped().await;
        if let Err(error) = self.store().flush().await {
            tracing::warn!(%error, subscription = id, "saving progress before a hand-over failed");
        }
    }

    /// Stops every worker and waits for them (shutdown, or this node lost its leases).
    async fn stop_all(&self) {
        let handles: Vec<WorkerHandle> = self.workers().drain().map(|(_, handle)| handle).collect();
        for handle in &handles {
            handle.cancel.cancel();
        }
        for handle in handles {
            handle.slot.stopped().await;
        }
    }

    fn running(&self) -> Vec<String> {
        self.workers().keys().cloned().collect()
    }

    fn is_running(&self, id: &str) -> bool {
        self.workers().contains_key(id)
    }

    fn lease_ttl_millis(&self) -> Millis {
        Millis::try_from(self.config().lease_ttl.as_millis()).unwrap_or(Millis::MAX)
    }

    /// Moves a subscription's cursor back to `cursor`, so every event after it is
    /// delivered again. Returns false when no worker runs for it (on any node).
    pub async fn rewind(&self, id: &str, cursor: i64) -> bool {
        if self.control(id, worker::Control::Rewind(cursor)) {
            return true;
        }
        let Some(cluster) = &self.shared.cluster else {
            return false;
        };
        // Another node delivers it: tell that node.
        match cluster.holder(id, crate::model::now_millis()).await {
            Ok(Some(_)) => cluster
                .notify(&cluster::rewind_message(id, cursor))
                .await
                .is_ok(),
            _ => false,
        }
    }

    /// Signs the subscription's deliveries with its new secret (and its previous one,
    /// for the overlap) from now on, here or on the node that delivers it. Retries go
    /// through the same worker, so they are signed with the new secret too.
    pub async fn rekey(&self, subscription: &Subscription) -> Result<(), DispatchError> {
        let signer = Arc::new(signer_of(subscription)?);
        if self.swap_signer(&subscription.id, signer) {
            return Ok(());
        }
        if let Some(cluster) = &self.shared.cluster
            && let Err(error) = cluster
                .notify(&cluster::rekey_message(&subscription.id))
                .await
        {
            // Its node reads the secret again when the worker next starts.
            tracing::warn!(%error, subscription = %subscription.id, "telling the other nodes of a new secret failed");
        }
        Ok(())
    }

    /// Replaces the signer of this node's worker for `id`; false when none runs here.
    fn swap_signer(&self, id: &str, signer: Arc<Signer>) -> bool {
        let workers = self.workers();
        let Some(handle) = workers.get(id) else {
            return false;
        };
        *handle
            .target
            .signer
            .write()
            .unwrap_or_else(|e| e.into_inner()) = signer;
        true
    }

    /// Reads a subscription's secrets again and signs with them (another node rotated
    /// them), if its worker runs here.
    async fn reload_signer(&self, id: &str) {
        if !self.is_running(id) {
            return;
        }
        let found = match self.store().db().subscription_by_id(id).await {
            Ok(found) => found,
            Err(error) => {
                tracing::warn!(%error, subscription = id, "reading a new secret failed");
                return;
            }
        };
        if let Some(subscription) = found {
            match signer_of(&subscription) {
                Ok(signer) => {
                    self.swap_signer(id, Arc::new(signer));
                }
                Err(error) => {
                    tracing::error!(%error, subscription = id, "a new secret is unusable")
                }
            }
        }
    }

    /// Tells an in-order subscription's worker that the retry it waits for is over
    /// (delivered or dead), so the next delivery may go.
    fn retry_resolved(&self, id: &str, seq: i64) {
        self.control(id, worker::Control::Resolved(seq));
    }

    /// Hands a command to this node's worker of the subscription; false when none runs
    /// here.
    fn control(&self, id: &str, command: worker::Control) -> bool {
        let slot = self
            .workers()
            .get(id)
            .filter(|handle| !handle.cancel.is_cancelled())
            .map(|handle| handle.slot.clone());
        let Some(slot) = slot else {
            return false;
        };
        // A sleeping worker starts again to act on it.
        slot.send(command);
        true
    }

    /// The sinks, shared with the API for the checks at creation and the validation
    /// handshake.
    pub fn sinks(&self) -> &Arc<Sinks> {
        &self.shared.sinks
    }

    /// Removes an expired job callback: its worker has stopped; its row, retries and
    /// attempt records go.
    async fn expire(&self, target: &Target) {
        let subscription = &target.subscription;
        match self
            .store()
            .db()
            .delete_subscription(&subscription.account, &subscription.id)
            .await
        {
            Ok(_) => tracing::info!(subscription = %subscription.id, "job callback expired"),
            // It stays in the database and is removed at the next start.
            Err(error) => {
                tracing::error!(%error, subscription = %subscription.id, "removing an expired job callback failed")
            }
        }
        self.remove(&subscription.id);
    }

    fn target(&self, id: &str) -> Option<Arc<Target>> {
        self.workers().get(id).map(|handle| handle.target.clone())
    }

    fn workers(&self) -> std::sync::MutexGuard<'_, HashMap<String, WorkerHandle>> {
        self.shared
            .workers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn store(&self) -> &Store {
        &self.shared.store
    }

    fn config(&self) -> &DispatchConfig {
        &self.shared.config
    }

    /// Attempt number `attempt` to deliver `event` to `target`, with its metrics.
    async fn attempt(&self, target: &Target, event: &Arc<StoredEvent>, attempt: u32) -> Attempted {
        let mut attempted = self
            .attempt_batch(target, std::slice::from_ref(event), attempt)
            .await;
        attempted.pop().unwrap_or_else(|| Attempted {
            result: AttemptResult::Failed {
                error: "not sent".to_owned(),
                retry_after: None,
            },
            status: None,
            latency: Duration::ZERO,
            response: None,
        })
    }

    /// One delivery call for `events` (as many as the destination's batch size), each
    /// at its attempt number `attempt`: one result per event, in order, with the metrics
    /// counted and (tracing on) a span per event sent.
    async fn attempt_batch(
        &self,
        target: &Target,
        events: &[Arc<StoredEvent>],
        attempt: u32,
    ) -> Vec<Attempted> {
        let format = target.subscription.format;
        // The subscription's transform first: an event it fails on is rejected, not sent,
        // and the rest of the batch goes on.
        let prepared: Vec<Result<Arc<StoredEvent>, String>> = match &target.subscription.transform {
            None => events.iter().cloned().map(Ok).collect(),
            Some(transform) => {
                let mut prepared = Vec::with_capacity(events.len());
                for event in events {
                    let result = self.shared.transformer.apply(transform, event).await;
                    if let Err(error) = &result {
                        tracing::info!(account = %target.subscription.account, subscription = target.id(), event = %event.id, %error, "transform failed; dead-lettered");
                    }
                    prepared.push(result.map_err(|error| error.to_string()));
                }
                prepared
            }
        };
        let rejected = |error: &String| Attempted {
            result: AttemptResult::Rejected {
                error: error.clone(),
            },
            status: None,
            latency: Duration::ZERO,
            response: None,
        };
        let sendable: Vec<&Arc<StoredEvent>> = prepared
            .iter()
            .filter_map(|event| event.as_ref().ok())
            .collect();
        let mut sent = Vec::new();
        // Tracing off: nothing here, and each event passes on its stored context.
        let spans = delivery_spans(target, &sendable, attempt);
        if !sendable.is_empty() {
            let signer = target.signer();
            let traces: Vec<_> = spans
                .iter()
                .map(|span| span.as_ref().map(crate::trace::spans::Delivery::trace))
                .collect();
            let batch = Batch {
                events: &sendable,
                format,
                signer: &signer,
                traces: &traces,
            };
            sent = target.destination.send(batch).await;
        }
        for (span, attempted) in spans.into_iter().zip(&sent) {
            if let Some(span) = span {
                end_delivery_span(span, attempted);
            }
        }
        let mut sent = sent.into_iter();
        let attempted: Vec<Attempted> = prepared
            .iter()
            .map(|event| match event {
                Ok(_) => sent.next().unwrap_or_else(|| Attempted {
                    result: AttemptResult::Failed {
                        error: "not sent".to_owned(),
                        retry_after: None,
                    },
                    status: None,
                    latency: Duration::ZERO,
                    response: None,
                }),
                Err(error) => rejected(error),
            })
            .collect();
        let metrics = &self.shared.metrics;
        let stats = &self.shared.stats;
        let account = &target.subscription.account;
        let now = crate::model::now_millis();
        for (attempted, event) in attempted.iter().zip(events) {
            match attempted.result {
                AttemptResult::Delivered => {
                    metrics.delivered.increment(1);
                    stats.delivered(account, event.received_at, now);
                }
                AttemptResult::Failed { .. }
                | AttemptResult::Throttled { .. }
                | AttemptResult::Rejected { .. } => {
                    metrics.failed.increment(1);
                    stats.failed(account, now);
                }
                AttemptResult::Gone => {
                    metrics.gone.increment(1);
                    stats.failed(account, now);
                }
            }
            metrics.latency.record(attempted.latency.as_secs_f64());
            metrics.attempted(account, attempted);
        }
        attempted
    }

    /// The counters over time of the console's charts.
    pub fn stats(&self) -> &Arc<crate::stats::Stats> {
        &self.shared.stats
    }

    /// Tells the retry scheduler that retries were made due now (redelivered dead
    /// letters, "retry now"). Other nodes find them at their next look at the retry set.
    pub fn retries_due(&self) {
        self.shared.retry_wake.at(crate::model::now_millis());
    }

    /// Sends `event` (not in the log: a test event) to `subscription`'s destination once,
    /// signed and formatted like its deliveries, and answers what happened. Nothing is
    /// recorded and nothing is retried.
    pub async fn send_test(
        &self,
        subscription: Subscription,
        event: StoredEvent,
    ) -> Result<Attempted, DispatchError> {
        let target = Target::new(subscription, &self.shared.sinks)?;
        Ok(self.attempt(&target, &Arc::new(event), 1).await)
    }
}

/// Says which stored subscriptions cannot be read (a row of a newer version, or
/// damaged): they are skipped, and the others delivered.
fn report_unreadable(unreadable: &[StoreError]) {
    for error in unreadable {
        tracing::error!(%error, "a stored subscription cannot be read; it is skipped (nothing is delivered to it)");
    }
    if !unreadable.is_empty() {
        eprintln!(
            "reelay: {} stored subscription(s) cannot be read and are skipped; the log names them",
            unreadable.len()
        );
    }
}

/// A delivery attempt's span for each event about to be sent; empty with tracing off.
fn delivery_spans(
    target: &Target,
    events: &[&Arc<StoredEvent>],
    attempt: u32,
) -> Vec<Option<crate::trace::spans::Delivery>> {
    if crate::trace::tracer().is_none() {
        return Vec::new();
    }
    let subscription = &target.subscription;
    events
        .iter()
        .map(|event| {
            crate::trace::spans::Delivery::start(
                event.trace.as_deref(),
                crate::trace::spans::Attempt {
                    destination: subscription.destination.kind(),
                    subscription: &subscription.id,
                    account: &subscription.account,
                    event_id: &event.id,
                    event_name: &event.name,
                    sequence: event.seq,
                    attempt,
                },
            )
        })
        .collect()
}

/// Ends an attempt's span with what the sink said.
fn end_delivery_span(span: crate::trace::spans::Delivery, attempted: &Attempted) {
    let (outcome, error) = match &attempted.result {
        AttemptResult::Delivered => ("delivered", None),
        AttemptResult::Failed { error, .. } => ("failed", Some(error.as_str())),
        AttemptResult::Throttled { error, .. } => ("throttled", Some(error.as_str())),
        AttemptResult::Gone => ("gone", Some(policy::GONE)),
        AttemptResult::Rejected { error } => ("rejected", Some(error.as_str())),
    };
    span.end(outcome, attempted.status, error);
}
