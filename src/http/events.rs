//! `/v1/accounts/{account}/events`: publish (Vimond envelope) and query the log.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::header::{ACCEPT, CONTENT_TYPE};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::auth::Caller;
use super::body::Query;
use super::error::{ApiError, ErrorBody};
use crate::ingest;
use crate::model::Scope;
use crate::model::{NewEvent, StoredEvent};
use crate::store::{Appended, EventQuery, PageSize};
use crate::trace::spans::{Publish, Published};

/// The answer to a publish: the ids of the accepted events, in request order.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PublishOut {
    pub ids: Vec<String>,
    /// How many were new.
    pub stored: usize,
    /// How many had been published before (accepted, stored and delivered once).
    pub duplicates: usize,
}

/// Publish one event object or an array of them. Answers once they are committed.
#[utoipa::path(
    post, path = "/v1/accounts/{account}/events", tag = "events",
    params(("account" = String, Path, description = "account (tenant)")),
    request_body(content = Object, description = "one Vimond event object, or an array of them"),
    responses(
        (status = 202, description = "committed", body = PublishOut),
        (status = 400, description = "malformed JSON", body = ErrorBody),
        (status = 408, description = "the body did not arrive in time (`body_timeout`)", body = ErrorBody),
        (status = 413, description = "the body, an event (`event_too_large`, with its index) or the number of events (`too_many_events`) is over its limit; nothing stored", body = ErrorBody),
        (status = 422, description = "an event is invalid; nothing stored", body = ErrorBody),
        (status = 429, description = "the key is over its publish rate (`rate_limited`, with `Retry-After`)", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn publish(
    State(state): State<AppState>,
    caller: Caller,
    Path(account): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<PublishOut>), ApiError> {
    let span = Publish::start(&headers, &account, "/v1/accounts/{account}/events");
    let published = async {
        caller.require(Scope::Publish, &account)?;
        state.limits.check_array_count(&body)?;
        let events = ingest::native::parse(&state.catalog, &account, &body)?;
        admit(&state, &headers, &events)?;
        append(&state, &caller, events, &span).await
    }
    .await;
    span.end(outcome(&published));
    Ok((StatusCode::ACCEPTED, Json(published?)))
}

/// What a publish's span records of its answer.
pub(super) fn outcome(published: &Result<PublishOut, ApiError>) -> Published {
    match published {
        Ok(out) => Published::Stored {
            events: out.ids.len(),
            stored: out.stored,
        },
        Err(error) => Published::Failed(error.to_string()),
    }
}

/// Gives each event the trace context of its publish (the publish span, or with
/// tracing off the publisher's own `traceparent`), so its deliveries continue it.
pub(super) fn carry_trace(events: &mut [NewEvent], span: &Publish) {
    if let Some(trace) = span.trace() {
        for event in events {
            event.trace = Some(trace.clone());
        }
    }
}

/// The limits every publish passes before anything is stored: the number and size of
/// its events, then its key's publish rate (a refused request takes none of it).
pub(super) fn admit(
    state: &AppState,
    headers: &HeaderMap,
    events: &[NewEvent],
) -> Result<(), ApiError> {
    state.limits.check_events(events)?;
    match &state.publish_rate {
        Some(rate) => rate.check(headers, events.len()),
        None => Ok(()),
    }
}

/// Appends validated events to the log, if the caller may publish each of them;
/// answers once they are committed.
pub(super) async fn append(
    state: &AppState,
    caller: &Caller,
    mut events: Vec<NewEvent>,
    span: &Publish,
) -> Result<PublishOut, ApiError> {
    caller.may_publish(&events)?;
    carry_trace(&mut events, span);
    let count = events.len();
    let account = events
        .first()
        .map(|e| e.account.clone())
        .unwrap_or_default();
    let appended = state
        .store
        .append_traced(events, span.commit_parent())
        .await?;
    let stored = appended
        .iter()
        .filter(|a| matches!(a, Appended::Stored(_)))
        .count();
    metrics::counter!("reelay_events_published_total").increment(stored as u64);
    if state.dispatcher.metrics_scope().covers(&account) {
        metrics::counter!("reelay_account_events_published_total", "account" => account.clone())
            .increment(stored as u64);
    }
    state
        .dispatcher
        .stats()
        .published(&account, stored as u64, crate::model::now_millis());
    let ids: Vec<String> = appended.iter().map(|a| a.id().to_owned()).collect();
    tracing::debug!(account, stored, duplicates = count - stored, events = ?ids, "events published");
    Ok(PublishOut {
        ids,
        stored,
        duplicates: count - stored,
    })
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Only events of this topic.
    pub topic: Option<String>,
    /// Only events of this name.
    pub event: Option<String>,
    /// Only events of this entity (its key: an `assetId`, `categoryId`, …).
    pub entity: Option<String>,
    /// Only events committed at or after this time (RFC 3339).
    #[param(format = DateTime)]
    pub since: Option<String>,
    /// Only events after this sequence number (for paging: the previous page's `next`).
    /// Before the oldest position retention kept whole: `410 before_retention` with
    /// `oldestSequence`. Without it, the page starts at that position.
    pub after: Option<i64>,
    /// At most this many (default 100, at most 1000); fewer when their documents reach
    /// `--max-page-bytes` (4 MiB by default) first, and then `next` is still given.
    pub limit: Option<u32>,
}

/// An event as stored in the log.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventOut {
    pub sequence: i64,
    pub id: String,
    pub name: String,
    pub topic: String,
    pub entity_key: Option<String>,
    /// The event's own `timestamp`, in epoch milliseconds.
    pub occurred_at: i64,
    /// When Reelay committed it, in epoch milliseconds.
    pub received_at: i64,
    /// The document as published.
    #[schema(value_type = Object)]
    pub event: Box<RawValue>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EventPage {
    pub events: Vec<EventOut>,
    /// Pass as `after` for the next page; absent on the last page.
    pub next: Option<i64>,
}

impl EventOut {
    pub(super) fn new(event: StoredEvent) -> Result<EventOut, ApiError> {
        let body = RawValue::from_string(event.body.as_str().to_owned()).map_err(|_| {
            ApiError::Store(crate::store::StoreError::Corrupt(format!(
                "event {} is not JSON",
                event.seq
            )))
        })?;
        Ok(EventOut {
            sequence: event.seq,
            id: event.id,
            name: event.name,
            topic: event.topic,
            entity_key: event.entity_key,
            occurred_at: event.occurred_at,
            received_at: event.received_at,
            event: body,
        })
    }
}

/// Query the log, oldest first. `Accept: application/x-ndjson` streams one event per line.
#[utoipa::path(
    get, path = "/v1/accounts/{account}/events", tag = "events",
    params(("account" = String, Path, description = "account (tenant)"), EventsQuery),
    responses(
        (status = 200, description = "a page of events", body = EventPage),
        (status = 410, description = "`after` is before what retention kept of the log (`before_retention`, with `oldestSequence`)", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn query(
    State(state): State<AppState>,
    caller: Caller,
    Path(account): Path<String>,
    Query(params): Query<EventsQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    caller.require(Scope::Read, &account)?;
    let limit = params.limit.unwrap_or(100).clamp(1, 1000);
    // Below the retention mark the log has gaps: a page from there would hide them.
    let mark = state.store.db().retention_mark(&account).await?;
    let after = match params.after {
        Some(after) => {
            ApiError::check_retained(after, mark)?;
            after
        }
        None => mark,
    };
    let query = EventQuery {
        topic: params.topic,
        event: params.event,
        entity: params.entity,
        since: params.since.as_deref().map(since_millis).transpose()?,
        after: Some(after),
        limit,
    };
    let events = state
        .store
        .db()
        .query_events(&account, &query, state.limits.max_page_bytes)
        .await?;
    let page = PageSize {
        rows: limit,
        bytes: state.limits.max_page_bytes,
    };
    let bytes = events.iter().map(|e| e.body.bytes().len()).sum();
    let next = page
        .is_full(events.len(), bytes)
        .then(|| events.last().map(|e| e.seq))
        .flatten();
    let events = events
        .into_iter()
        .map(EventOut::new)
        .collect::<Result<Vec<_>, _>>()?;
    let wants_ndjson = headers
        .get(ACCEPT)
        .and_then(|accept| accept.to_str().ok())
        .is_some_and(|accept| accept.contains("application/x-ndjson"));
    if wants_ndjson {
        // One line at a time as the client reads: the page is never written out whole.
        let lines = futures::stream::iter(events.into_iter().map(|event| {
            let mut line = serde_json::to_vec(&event).unwrap_or_default();
            line.push(b'\n');
            Ok::<_, std::convert::Infallible>(line)
        }));
        return Ok((
            [(CONTENT_TYPE, "application/x-ndjson")],
            axum::body::Body::from_stream(lines),
        )
            .into_response());
    }
    Ok(Json(EventPage { events, next }).into_response())
}

/// A `since` parameter as epoch milliseconds; not an RFC 3339 time: `400 invalid_query`.
pub(super) fn since_millis(since: &str) -> Result<i64, ApiError> {
    chrono::DateTime::parse_from_rfc3339(since)
        .map(|time| time.timestamp_millis())
        .map_err(|_| {
            ApiError::bad_request(
                "invalid_query",
                format!("since: {since:?} is not an RFC 3339 time"),
            )
        })
}

pub fn router() -> axum::Router<AppState> {
    axum::Router::new().route("/v1/accounts/{account}/events", post(publish).get(query))
}
