//! The runner of one full resync: sends a subscription the latest event of each live
//! catalog entity of the run's types, marked as a resync copy
//! ([`crate::sinks::resync`]), through the subscription's own sink and signer.
//!
//! The entities are read from the store in pages, in (type, id) order, by keyset (the
//! last id read), so memory holds a few pages whatever the catalog's size. A page's
//! entities go out several at a time, like a worker's deliveries; failed ones go to the
//! retry set with the run's id, and are retried as resync copies. The run's position
//! moves past a page only when every entity of it and of the pages before it was
//! delivered or handed to the retry set, and it is saved in the same commit as those
//! retries: a crash resends at most the pages after the last save, and skips none.
//!
//! The run does not touch the subscription's cursor: incremental deliveries carry on
//! beside it. Entities are read as they are now, which is at or after the log head when
//! the run started, so together with the incremental stream from that head a mirror that
//! keeps the highest sequence per entity ends at the current state.

use std::collections::VecDeque;
use std::sync::Arc;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio_util::sync::CancellationToken;

use super::breaker::Admission;
use super::engine::{self, Call, Called, Delivery, Report};
use super::worker::FLUSH_EVERY;
use super::{Dispatcher, Target};
use crate::model::{StoredEvent, now_millis};
use crate::sinks::resync::resync_copy;
use crate::store::{PageSize, Progress, ResyncPosition, ResyncProgress, ResyncRun, StoreError};

/// Entities read per query (fewer when their documents reach `--max-page-bytes` first).
const PAGE: u32 = 500;
/// Pages read ahead of the one being sent, so the sink never waits for the store.
const PAGES_AHEAD: usize = 2;

/// One page of the run: where the run stands once it and every page before it are done.
struct Page {
    number: u64,
    /// The position after this page: `None` after the last page of the last type.
    end: Option<ResyncPosition>,
    /// Entities of the page still being sent.
    left: usize,
    /// Entities of the page the subscription receives.
    entities: u64,
}

pub(super) struct Runner {
    dispatcher: Dispatcher,
    target: Arc<Target>,
    run: ResyncRun,
    cancel: CancellationToken,
    /// Where the next page is read from; `None` once every page was read.
    reading: Option<ResyncPosition>,
    next_page: u64,
    /// Pages read and not yet done, oldest first.
    pages: VecDeque<Page>,
    /// Copies read and not yet started, with their page.
    pending: VecDeque<(u64, Arc<StoredEvent>)>,
    /// Delivery calls under way, each with the page of each of its events.
    in_flight: FuturesUnordered<Call<Vec<u64>>>,
    /// What the store knows once the next report is committed.
    sent: u64,
    position: Option<ResyncPosition>,
    report: Report,
    /// Whether `sent` or `position` moved since the last report.
    moved: bool,
}

impl Runner {
    pub(super) fn new(
        dispatcher: Dispatcher,
        target: Arc<Target>,
        run: ResyncRun,
        cancel: CancellationToken,
    ) -> Runner {
        let report = Report::new(&run.subscription_id);
        Runner {
            reading: run.position.clone(),
            position: run.position.clone(),
            sent: run.sent,
            dispatcher,
            target,
            run,
            cancel,
            next_page: 0,
            pages: VecDeque::new(),
            pending: VecDeque::new(),
            in_flight: FuturesUnordered::new(),
            report,
            moved: false,
        }
    }

    pub(super) async fn run(mut self) {
        let (subscription, resync) = (self.target.id().to_owned(), self.run.id.clone());
        tracing::info!(%subscription, %resync, sent = self.sent, total = self.run.total, "resync running");
        let max_in_flight = self
            .target
            .max_in_flight(self.dispatcher.config().max_in_flight);
        let batch_size = self.target.batch_size();
        let mut flush = tokio::time::interval(FLUSH_EVERY);
        flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if self.pending.len() < batch_size * max_in_flight
                && self.pages.len() <= PAGES_AHEAD
                && self.reading.is_some()
            {
                if let Err(error) = self.read_page().await {
                    tracing::error!(%error, %subscription, %resync, "reading entities for a resync failed; trying again");
                    tokio::select! {
                        _ = self.cancel.cancelled() => break,
                        _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                    }
                }
                continue;
            }
            if self.reading.is_none() && self.pages.is_empty() {
                self.complete().await;
                return;
            }
            // While the endpoint is down the run waits (it does not probe): the worker's
            // probes and the retries tell when it is back, and its entities wait in the
            // store, not in the retry set.
            // Its copies keep to the subscription's pace too (its rate limit, a 429's
            // pause): it looks again when the next call may start.
            let schedule = &self.dispatcher.config().retry_schedule;
            let mut paced_until = None;
            while self.in_flight.len() < max_in_flight && !self.pending.is_empty() {
                let size = batch_size.min(self.pending.len());
                match self.target.admit(schedule, false, size) {
                    Admission::Open => {
                        let (pages, events): (Vec<u64>, Vec<_>) =
                            self.pending.drain(..size).unzip();
                        let call =
                            engine::call(&self.dispatcher, &self.target, events, pages, None);
                        self.in_flight.push(call);
                    }
                    Admission::Paced { next_at } => {
                        paced_until = Some(next_at);
                        break;
                    }
                    Admission::Probe(_) | Admission::Closed { .. } => break,
                }
            }
            tokio::select! {
                biased;
                _ = self.cancel.cancelled() => break,
                Some(called) = self.in_flight.next(), if !self.in_flight.is_empty() => {
                    self.finished(called);
                }
                _ = flush.tick() => self.flush().await,
                _ = sleep_until_some(paced_until), if paced_until.is_some() => {}
            }
        }
        // Stopped (subscription deleted or disabled, or shutdown): what is done is saved;
        // deliveries in flight are sent again when the run resumes.
        let disabled = self.report.disables();
        self.flush().await;
        if disabled {
            self.dispatcher.commit_disabling(&subscription).await;
            self.dispatcher.stop_worker_of(&self.target);
        }
    }

    /// Reads the page at `reading`, queues the copies the subscription wants, and moves
    /// `reading` on.
    async fn read_page(&mut self) -> Result<(), StoreError> {
        let Some(at) = self.reading.clone() else {
            return Ok(());
        };
        let page = PageSize {
            rows: PAGE,
            bytes: self.dispatcher.config().max_page_bytes,
        };
        let states = self
            .dispatcher
            .store()
            .db()
            .live_entities(&self.run.account, &at.entity_type, &at.after_id, page)
            .await?;
        let bytes = states
            .iter()
            .map(|state| state.event.body.bytes().len())
            .sum();
        let end = match states.last() {
            Some(last) if page.is_full(states.len(), bytes) => Some(ResyncPosition {
                entity_type: at.entity_type.clone(),
                after_id: last.id.clone(),
            }),
            // The type is done: the next one, from its start.
            _ => self
                .next_type(&at.entity_type)
                .map(|entity_type| ResyncPosition {
                    entity_type,
                    after_id: String::new(),
                }),
        };
        let number = self.next_page;
        self.next_page += 1;
        let subscription = &self.target.subscription;
        let before = self.pending.len();
        self.pending.extend(
            states
                .iter()
                .filter(|state| subscription.wants(&state.event))
                .map(|state| (number, Arc::new(resync_copy(&state.event, &self.run.id)))),
        );
        let entities = self.pending.len() - before;
        self.pages.push_back(Page {
            number,
            end: end.clone(),
            left: entities,
            entities: entities as u64,
        });
        self.reading = end;
        self.pages_done();
        Ok(())
    }

    /// The run's type after `entity_type`, if any.
    fn next_type(&self, entity_type: &str) -> Option<String> {
        let types = &self.run.types;
        let at = types.iter().position(|t| t == entity_type)?;
        types.get(at + 1).cloned()
    }

    /// Records the outcome of first attempts, as a worker does, and moves the position
    /// past the pages now done.
    fn finished(&mut self, called: Called<Vec<u64>>) {
        for (page, (event, attempted)) in called.tag.into_iter().zip(called.results) {
            let delivery = Delivery {
                event: &event,
                resync_id: Some(&self.run.id),
                attempt: 1,
            };
            let recorded = self
                .report
                .record(&self.dispatcher, &self.target, delivery, &attempted);
            if recorded.disabled {
                // This run stops now; the worker once the disabling is committed (see
                // `run`), so nothing starts it again from the old state meanwhile.
                self.cancel.cancel();
            }
            let first = self.pages.front().map_or(0, |p| p.number);
            if let Some(page) = page
                .checked_sub(first)
                .and_then(|index| self.pages.get_mut(index as usize))
            {
                page.left = page.left.saturating_sub(1);
            }
        }
        self.pages_done();
    }

    /// Pops the pages at the front that are done.
    fn pages_done(&mut self) {
        while let Some(page) = self.pages.front().filter(|page| page.left == 0) {
            self.sent += page.entities;
            self.position = page.end.clone();
            self.moved = true;
            self.pages.pop_front();
        }
    }

    async fn flush(&mut self) {
        if !self.moved && self.report.is_empty() {
            return;
        }
        let progress = self.take_report(None);
        match self.dispatcher.store().record_progress(progress).await {
            Ok(()) => self.moved = false,
            Err(error) => {
                tracing::error!(%error, subscription = self.target.id(), resync = %self.run.id, "saving resync progress failed")
            }
        }
    }

    /// The report so far, with the run's position (and its end, if `completed_at`).
    fn take_report(&mut self, completed_at: Option<i64>) -> Progress {
        let resync = ResyncProgress {
            id: self.run.id.clone(),
            sent: self.sent,
            position: self.position.clone(),
            completed_at,
        };
        self.report.take(None, Some(resync))
    }

    /// Every entity was sent: the run ends, in the same commit as its last retries.
    async fn complete(&mut self) {
        self.position = None;
        let progress = self.take_report(Some(now_millis()));
        match self.dispatcher.store().record_progress(progress).await {
            Ok(()) => {
                tracing::info!(subscription = self.target.id(), resync = %self.run.id, sent = self.sent, "resync completed")
            }
            Err(error) => {
                tracing::error!(%error, subscription = self.target.id(), resync = %self.run.id, "saving the end of a resync failed; it resumes at the next start")
            }
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
