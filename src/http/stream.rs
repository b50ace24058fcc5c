//! `GET /v1/accounts/{account}/events/stream`: the log's committed events as they
//! happen, as Server-Sent Events (`id:` is the sequence number, so a client that comes
//! back with `Last-Event-ID` resumes after it), with the log query's filters.
//!
//! Each connection has a task of its own that reads the log and a bounded buffer (events
//! and bytes) between that task and the connection. While it catches up from the
//! database it reads as fast as the client takes. Live, it takes the commits broadcast
//! in memory, and a client that reads slower than events come fills its buffer and is
//! cut off (a last `cutoff` event says so; it may resume with `Last-Event-ID`): nothing
//! waits for a client, the log writer least of all.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use serde::Deserialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast, mpsc};
use utoipa::IntoParams;

use super::AppState;
use super::auth::Caller;
use super::body::Query;
use super::error::ApiError;
use super::events::EventOut;
use crate::model::{Scope, StoredEvent};
use crate::store::{EventQuery, PageSize, Store};

/// Events one connection's buffer holds at most…
const BUFFER_EVENTS: usize = 1_024;
/// …and bytes (one larger event takes the whole buffer).
const BUFFER_BYTES: usize = 4 << 20;
/// Events read from the database at a time while catching up.
const CATCH_UP_PAGE: u32 = 500;
/// A comment this often keeps proxies from closing a quiet stream; the log is also
/// read again then (a commit broadcast that was missed is caught up).
const KEEPALIVE: Duration = Duration::from_secs(15);

/// The last message to a client that was cut off.
const CUTOFF: &[u8] = b"event: cutoff\ndata: {\"error\":{\"code\":\"slow_reader\",\"message\":\"this client read slower than events came and its buffer filled: resume with Last-Event-ID\"}}\n\n";

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StreamQuery {
    /// Only events of this topic.
    pub topic: Option<String>,
    /// Only events of this name.
    pub event: Option<String>,
    /// Only events of this entity (its key: an `assetId`, …).
    pub entity: Option<String>,
    /// Only events committed at or after this time (RFC 3339).
    #[param(format = DateTime)]
    pub since: Option<String>,
    /// Start after this sequence number (`0`: the whole log); without it (and without
    /// `Last-Event-ID`), with the events committed from now on. `Last-Event-ID` wins.
    #[param(minimum = 0)]
    pub after: Option<i64>,
}

/// What a connection's task matches events with.
struct Filter {
    account: String,
    topic: Option<String>,
    event: Option<String>,
    entity: Option<String>,
    since: Option<i64>,
}

impl Filter {
    fn matches(&self, event: &StoredEvent) -> bool {
        event.account == self.account
            && self.topic.as_ref().is_none_or(|t| *t == event.topic)
            && self.event.as_ref().is_none_or(|e| *e == event.name)
            && self
                .entity
                .as_ref()
                .is_none_or(|k| Some(k) == event.entity_key.as_ref())
            && self.since.is_none_or(|since| event.received_at >= since)
    }
}

/// A frame in a connection's buffer, holding its share of the buffer's bytes.
type Held = (Bytes, OwnedSemaphorePermit);

/// The buffer between a connection's task and its client.
struct Buffer {
    frames: mpsc::Sender<Held>,
    /// The buffer's bytes (a frame larger than all of them takes them all).
    room: Arc<Semaphore>,
    cut_off: Arc<AtomicBool>,
}

enum Sent {
    Ok,
    /// The client is gone, or was cut off: the task ends.
    Stop,
}

impl Buffer {
    fn share(frame: &Bytes) -> u32 {
        u32::try_from(frame.len().clamp(1, BUFFER_BYTES)).unwrap_or(u32::MAX)
    }

    /// Live: a full buffer cuts the client off (the task never waits for a client).
    fn send(&self, frame: Bytes) -> Sent {
        let Ok(permit) = self
            .room
            .clone()
            .try_acquire_many_owned(Self::share(&frame))
        else {
            self.cut_off.store(true, Ordering::Release);
            return Sent::Stop;
        };
        match self.frames.try_send((frame, permit)) {
            Ok(()) => Sent::Ok,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.cut_off.store(true, Ordering::Release);
                Sent::Stop
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Sent::Stop,
        }
    }

    /// Catching up from the database: waits for room (only this connection's reads
    /// wait; nothing else does).
    async fn send_waiting(&self, frame: Bytes) -> Sent {
        let Ok(permit) = self
            .room
            .clone()
            .acquire_many_owned(Self::share(&frame))
            .await
        else {
            return Sent::Stop;
        };
        match self.frames.send((frame, permit)).await {
            Ok(()) => Sent::Ok,
            Err(_) => Sent::Stop,
        }
    }
}

fn frame(event: StoredEvent) -> Option<Bytes> {
    let seq = event.seq;
    let out = EventOut::new(event).ok()?;
    let json = serde_json::to_string(&out).ok()?;
    Some(Bytes::from(format!("id: {seq}\ndata: {json}\n\n")))
}

/// Live events of the account as Server-Sent Events: one `data:` line of the event as
/// the log query shows it, with `id:` its sequence number. Resumable with
/// `Last-Event-ID`. A client that falls too far behind gets an `event: cutoff` and the
/// stream ends.
#[utoipa::path(
    get, path = "/v1/accounts/{account}/events/stream", tag = "events",
    params(
        ("account" = String, Path, description = "account (tenant)"),
        ("Last-Event-ID" = Option<i64>, Header, description = "resume after this sequence number"),
        StreamQuery
    ),
    responses((status = 200, description = "`text/event-stream`: one event per committed event", content_type = "text/event-stream", body = String)),
    security(("bearer" = []))
)]
pub async fn stream(
    State(state): State<AppState>,
    caller: Caller,
    Path(account): Path<String>,
    Query(params): Query<StreamQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    caller.require(Scope::Read, &account)?;
    let since = params
        .since
        .as_deref()
        .map(super::events::since_millis)
        .transpose()?;
    let resume = match headers.get("last-event-id") {
        None => None,
        Some(value) => Some(
            value
                .to_str()
                .ok()
                .and_then(|v| v.trim().parse::<i64>().ok())
                .filter(|seq| *seq >= 0)
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid_last_event_id",
                        "Last-Event-ID must be a sequence number",
                    )
                })?,
        ),
    };
    // Listening before the head is read: no commit falls between the two.
    let committed = state.store.subscribe_committed();
    let after = match resume.or(params.after) {
        Some(after) => after.max(0),
        None => state.store.log_position().await?,
    };
    let filter = Filter {
        account,
        topic: params.topic,
        event: params.event,
        entity: params.entity,
        since,
    };
    let (frames, receiver) = mpsc::channel(BUFFER_EVENTS);
    let cut_off = Arc::new(AtomicBool::new(false));
    let buffer = Buffer {
        frames,
        room: Arc::new(Semaphore::new(BUFFER_BYTES)),
        cut_off: cut_off.clone(),
    };
    let page_bytes = state.limits.max_page_bytes;
    let stopping = state.stopping.clone();
    tokio::spawn(async move {
        tokio::select! {
            // The stream ends (its sender dropped) when the server stops.
            _ = stopping.cancelled() => {}
            _ = follow(state.store.clone(), committed, filter, after, buffer, page_bytes) => {}
        }
    });
    let opening = Bytes::from("retry: 1000\n: connected\n\n");
    struct Reader {
        receiver: mpsc::Receiver<Held>,
        opening: Option<Bytes>,
        ended: bool,
        cut_off: Arc<AtomicBool>,
    }
    let reader = Reader {
        receiver,
        opening: Some(opening),
        ended: false,
        cut_off,
    };
    let body = futures::stream::unfold(reader, |mut reader| async move {
        if let Some(first) = reader.opening.take() {
            return Some((Ok::<_, std::convert::Infallible>(first), reader));
        }
        if reader.ended {
            return None;
        }
        let frame = match reader.receiver.recv().await {
            // Its permit goes back to the buffer as the frame goes to the connection.
            Some((frame, _permit)) => frame,
            None if reader.cut_off.load(Ordering::Acquire) => {
                reader.ended = true;
                Bytes::from_static(CUTOFF)
            }
            None => return None,
        };
        Some((Ok(frame), reader))
    });
    // `receiver` moved into the stream: the task sees the channel closed when the
    // client goes away.
    Ok((
        [
            (CONTENT_TYPE, "text/event-stream"),
            (CACHE_CONTROL, "no-cache"),
        ],
        [("x-accel-buffering", "no")],
        Body::from_stream(body),
    )
        .into_response())
}

/// A connection's task: sends every matching event after `after`, from the database
/// until caught up, then from the commits as they happen; ends when the client is gone
/// or cut off.
async fn follow(
    store: Store,
    mut committed: broadcast::Receiver<Arc<crate::store::CommittedBatch>>,
    filter: Filter,
    mut after: i64,
    buffer: Buffer,
    page_bytes: usize,
) {
    'catch_up: loop {
        // Every matching event up to `after` has been sent.
        loop {
            let head = store.head();
            let query = EventQuery {
                topic: filter.topic.clone(),
                event: filter.event.clone(),
                entity: filter.entity.clone(),
                since: filter.since,
                after: Some(after),
                limit: CATCH_UP_PAGE,
            };
            let events = match store
                .db()
                .query_events(&filter.account, &query, page_bytes)
                .await
            {
                Ok(events) => events,
                Err(error) => {
                    tracing::warn!(%error, "reading the log for an event stream failed");
                    return;
                }
            };
            // A page ends at its row limit or its bytes: either way more may follow.
            let bytes = events.iter().map(|e| e.body.bytes().len()).sum();
            let full = PageSize {
                rows: CATCH_UP_PAGE,
                bytes: page_bytes,
            }
            .is_full(events.len(), bytes);
            for event in events {
                after = event.seq;
                if let Some(frame) = frame(event)
                    && let Sent::Stop = buffer.send_waiting(frame).await
                {
                    return;
                }
            }
            if !full {
                after = after.max(head);
                break;
            }
        }
        let mut keepalive =
            tokio::time::interval_at(tokio::time::Instant::now() + KEEPALIVE, KEEPALIVE);
        loop {
            tokio::select! {
                _ = buffer.frames.closed() => return,
                _ = keepalive.tick() => {
                    if let Sent::Stop = buffer.send(Bytes::from_static(b": keepalive\n\n")) {
                        return;
                    }
                    continue 'catch_up;
                }
                batch = committed.recv() => match batch {
                    Ok(batch) => {
                        if batch.after > after {
                            // Commits this task did not see (it lagged): read them.
                            continue 'catch_up;
                        }
                        for event in batch.events.iter().filter(|e| e.seq > after) {
                            if filter.matches(event)
                                && let Some(frame) = frame(StoredEvent::clone(event))
                                && let Sent::Stop = buffer.send(frame)
                            {
                                return;
                            }
                        }
                        after = after.max(batch.upto);
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => continue 'catch_up,
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            }
        }
    }
}

pub fn router() -> axum::Router<AppState> {
    axum::Router::new().route("/v1/accounts/{account}/events/stream", get(stream))
}
