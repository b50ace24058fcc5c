//! One account's events in log order, for one worker: from memory as they are committed,
//! or from the database when the worker starts behind or falls behind.

use std::sync::Arc;

use tokio::sync::broadcast::{self, error::RecvError};

use crate::model::StoredEvent;
use crate::store::{CommittedBatch, PageSize, Store};

/// Events read from the database per query while catching up (fewer when their
/// documents reach the page's byte bound first).
const CATCH_UP_PAGE: u32 = 512;

pub(super) struct Feed {
    store: Store,
    account: String,
    /// Every event with `seq <= seen` has been returned (or belonged to another account).
    seen: i64,
    committed: broadcast::Receiver<Arc<CommittedBatch>>,
    behind: bool,
    /// What one catch-up read may hold.
    page: PageSize,
}

impl Feed {
    /// A feed of the events after `cursor`.
    pub(super) fn new(store: Store, account: String, cursor: i64, page_bytes: usize) -> Feed {
        let committed = store.subscribe_committed();
        Feed {
            store,
            account,
            seen: cursor,
            committed,
            // Events may have been committed after the cursor was saved: read them first.
            behind: true,
            page: PageSize {
                rows: CATCH_UP_PAGE,
                bytes: page_bytes,
            },
        }
    }

    pub(super) fn seen(&self) -> i64 {
        self.seen
    }

    /// Starts again after `cursor` (a replay).
    pub(super) fn rewind(&mut self, cursor: i64) {
        self.seen = cursor;
        self.behind = true;
    }

    /// The next events of the account, in order; waits until there are some.
    /// Cancel-safe: state changes only after the last await of each step.
    pub(super) async fn next(&mut self) -> Vec<Arc<StoredEvent>> {
        loop {
            if self.behind {
                let head = self.store.head();
                let page = match self
                    .store
                    .db()
                    .events_after(&self.account, self.seen, head, self.page)
                    .await
                {
                    Ok(page) => page,
                    Err(error) => {
                        tracing::error!(%error, account = %self.account, "reading the log failed; retrying");
                        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                        continue;
                    }
                };
                let bytes = page.iter().map(|event| event.body.bytes().len()).sum();
                let full = self.page.is_full(page.len(), bytes);
                if let Some(last) = page.last() {
                    self.seen = last.seq;
                }
                if !full {
                    // Everything up to `head` was committed before the query ran, so the
                    // query saw it: memory can take over from here.
                    self.seen = self.seen.max(head);
                    self.behind = false;
                }
                if !page.is_empty() {
                    return page.into_iter().map(Arc::new).collect();
                }
                continue;
            }
            match self.committed.recv().await {
                Ok(batch) => {
                    if batch.upto <= self.seen {
                        continue;
                    }
                    if batch.after > self.seen {
                        // Some commits went by unseen (this worker lagged): read the log.
                        self.behind = true;
                        continue;
                    }
                    let events: Vec<_> = batch
                        .events
                        .iter()
                        .filter(|event| event.seq > self.seen && event.account == self.account)
                        .cloned()
                        .collect();
                    self.seen = batch.upto;
                    if !events.is_empty() {
                        return events;
                    }
                }
                Err(RecvError::Lagged(_)) => self.behind = true,
                Err(RecvError::Closed) => std::future::pending::<()>().await,
            }
        }
    }
}
