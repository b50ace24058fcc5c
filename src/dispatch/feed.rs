//! The events one subscription wants, in log order, for its worker: from its inbox in the
//! router as they are committed, or from the log in the database (its account's events
//! that it wants) when the worker starts behind or fell behind.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::router::{Attached, Router, Wake, Wants};
use crate::model::StoredEvent;
use crate::store::{PageSize, Store, WantedEvents};

/// Events read from the database per query while catching up (fewer when their
/// documents reach the page's byte bound first).
const CATCH_UP_PAGE: u32 = 512;

pub(super) struct Feed {
    store: Store,
    router: Router,
    /// Shared with its route in the router's index.
    wants: Arc<Wants>,
    /// How many events may wait in the inbox.
    capacity: usize,
    /// Every event with `seq <= seen` that the subscription wants has been returned.
    seen: i64,
    /// The router's inbox, while attached.
    attached: Option<Attached>,
    /// What one catch-up read may hold.
    page: PageSize,
    /// Set while everything routed is read and the feed waits for its inbox (for the
    /// metrics' lag: `gauges`).
    caught_up: Arc<AtomicBool>,
    /// Told when the router puts something in the inbox (wakes a sleeping worker).
    waker: Option<Arc<dyn Wake>>,
}

/// Whom a feed tells about what it does.
pub(super) struct Signals {
    /// Set while it waits for its inbox with everything routed read (the metrics' lag).
    pub caught_up: Arc<AtomicBool>,
    /// Woken when the router puts something in the inbox (a sleeping worker).
    pub waker: Option<Arc<dyn Wake>>,
}

impl Feed {
    /// A feed of the events after `cursor`.
    pub(super) fn new(
        store: Store,
        router: Router,
        wants: Wants,
        cursor: i64,
        capacity: usize,
        page_bytes: usize,
        signals: Signals,
    ) -> Feed {
        let Signals { caught_up, waker } = signals;
        Feed {
            waker,
            store,
            router,
            wants: Arc::new(wants),
            capacity,
            seen: cursor,
            attached: None,
            page: PageSize {
                rows: CATCH_UP_PAGE,
                bytes: page_bytes,
            },
            caught_up,
        }
    }

    pub(super) fn seen(&self) -> i64 {
        self.seen
    }

    /// Whether everything it wants comes through the inbox now (none of the log is left
    /// to read), and the inbox is empty: nothing to do until the router puts something
    /// there.
    pub(super) fn is_quiet(&self) -> bool {
        self.attached
            .as_ref()
            .is_some_and(|attached| self.seen >= attached.routed && !attached.inbox.changed())
    }

    /// Whether the router put something in the inbox since the last take (or the
    /// feed has no inbox).
    pub(super) fn has_news(&self) -> bool {
        self.attached
            .as_ref()
            .is_none_or(|attached| attached.inbox.changed())
    }

    /// Starts again after `cursor` (a replay).
    pub(super) fn rewind(&mut self, cursor: i64) {
        self.detach();
        self.seen = cursor;
        self.caught_up.store(false, Ordering::Relaxed);
    }

    /// Before the worker stops: moves the position to where the log is, when nothing is
    /// waiting, so the saved cursor does not lag behind events the subscription skipped.
    pub(super) fn settle(&mut self) {
        if let Some(attached) = &self.attached
            && self.seen >= attached.routed
            && let Some(position) = self.router.settle(attached.id)
        {
            self.seen = self.seen.max(position);
        }
    }

    /// Attaches to the router now, rather than at the first [`Feed::next`].
    pub(super) fn attach(&mut self) {
        if self.attached.is_none() {
            self.attached = Some(self.router.attach(
                &self.wants,
                self.capacity,
                self.waker.clone(),
            ));
        }
    }

    /// Whether it is attached, and the router brings it everything after `head` (a
    /// position up to which the caller has read the log some other way).
    pub(super) fn attached_by(&self, head: i64) -> bool {
        self.attached
            .as_ref()
            .is_some_and(|attached| attached.routed <= head)
    }

    /// After the caller learned (from a read that saw everything up to the router's
    /// position for it, see [`Feed::attached_by`]) that the log
    /// holds nothing of its account past its position: the read of the log up to the
    /// router's position is skipped, and everything comes through the inbox.
    pub(super) fn skip_log(&mut self) {
        if let Some(attached) = &self.attached {
            self.seen = self.seen.max(attached.routed);
            self.caught_up.store(true, Ordering::Relaxed);
        }
    }

    fn detach(&mut self) {
        if let Some(attached) = self.attached.take() {
            self.router.detach(attached.id);
        }
    }

    /// The next events the subscription wants, in order; waits until there are some or
    /// the position moved (then the result may be empty).
    /// Cancel-safe: state changes only after the last await of each step.
    pub(super) async fn next(&mut self) -> Vec<Arc<StoredEvent>> {
        loop {
            let Some(attached) = &self.attached else {
                // Attached first, then the log is read up to the router's position: what
                // is committed after it reaches the inbox meanwhile.
                self.attach();
                continue;
            };
            if self.seen < attached.routed {
                self.caught_up.store(false, Ordering::Relaxed);
                let upto = attached.routed;
                let wanted = WantedEvents {
                    account: &self.wants.account,
                    names: &self.wants.filter.events,
                    topics: &self.wants.filter.topics,
                    entity_key: self.wants.job.as_deref(),
                };
                let turn = self.router.log_read_turn().await;
                let read = self
                    .store
                    .db()
                    .wanted_events_after(wanted, self.seen, upto, self.page)
                    .await;
                drop(turn);
                let page = match read {
                    Ok(page) => page,
                    Err(error) => {
                        tracing::error!(%error, account = %self.wants.account, "reading the log failed; retrying");
                        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                        continue;
                    }
                };
                let bytes = page.iter().map(|event| event.body.bytes().len()).sum();
                let full = self.page.is_full(page.len(), bytes);
                match page.last() {
                    Some(last) if full => self.seen = last.seq,
                    // Everything up to `upto` was committed before the query ran.
                    _ => self.seen = upto,
                }
                return page.into_iter().map(Arc::new).collect();
            }
            self.caught_up.store(true, Ordering::Relaxed);
            let taken = attached.inbox.take().await;
            // The inbox may hold events the log read returned already.
            let seen = self.seen;
            let events: Vec<_> = taken
                .events
                .into_iter()
                .filter(|event| event.seq > seen)
                .collect();
            self.seen = self.seen.max(taken.upto);
            if !taken.attached {
                // It overflowed (the worker did not keep up): the router dropped it, and
                // the rest is read from the log.
                self.attached = None;
                self.caught_up.store(false, Ordering::Relaxed);
            }
            return events;
        }
    }
}

impl Drop for Feed {
    fn drop(&mut self) {
        self.detach();
    }
}
