//! `POST /v1/accounts/{account}/cloudevents`: CloudEvents 1.0 over HTTP (structured,
//! binary and batch modes), answered with the response CloudEvent of seed 002.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::header::{CONTENT_TYPE, HOST};
use axum::http::uri::Authority;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::AppState;
use super::auth::Caller;
use super::error::{ApiError, ErrorBody};
use crate::ingest::cloudevents::{self, Incoming};
use crate::model::Scope;
use crate::model::now_millis;
use crate::store::Appended;
use crate::trace::spans::{Publish, Published};

/// The answer: a CloudEvent saying which events were received (seed 002's shape).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ReceivedEvent {
    /// `1.0`.
    pub specversion: String,
    /// `com.applicaster.event.received.v1`.
    #[serde(rename = "type")]
    pub event_type: String,
    /// This endpoint's URL (the configured public URL, else the request's `Host`).
    pub source: String,
    /// `Event <id> was successfully received`; for a batch, `Events <id1>, <id2>, … were
    /// successfully received`, in request order.
    pub subject: String,
    /// A new UUID.
    pub id: String,
    /// RFC 3339.
    pub time: String,
}

/// Receive CloudEvents: one structured event (`application/cloudevents+json`, or plain
/// JSON), one binary event (`ce-*` headers, the data as body), or a batch
/// (`application/cloudevents-batch+json`). The `type` must be in the catalog. Answers
/// `201` once the events are committed; an id already received from the same `source`
/// is accepted and stored once.
#[utoipa::path(
    post, path = "/v1/accounts/{account}/cloudevents", tag = "cloudevents",
    params(("account" = String, Path, description = "account (tenant)")),
    request_body(description = "a structured CloudEvent, a batch (array of them), or in binary mode the data (attributes in ce-* headers)",
        content((Object = "application/cloudevents+json"), (Vec<Object> = "application/cloudevents-batch+json"), (Object = "application/json"))),
    responses(
        (status = 201, description = "committed", body = ReceivedEvent, content_type = "application/cloudevents+json"),
        (status = 400, description = "malformed JSON", body = ErrorBody),
        (status = 401, description = "missing, invalid or expired user token (when the account verifies them)", body = ErrorBody),
        (status = 413, description = "the body, an event (`event_too_large`, with its index) or the number of events (`too_many_events`) is over its limit; nothing stored", body = ErrorBody),
        (status = 415, description = "not a CloudEvents content mode", body = ErrorBody),
        (status = 422, description = "an event is invalid or of an unknown type; nothing stored", body = ErrorBody),
        (status = 429, description = "the key is over its publish rate (`rate_limited`, with `Retry-After`)", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn receive(
    State(state): State<AppState>,
    caller: Caller,
    Path(account): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let span = Publish::start(&headers, &account, "/v1/accounts/{account}/cloudevents");
    let received = receive_traced(&state, &caller, &account, &uri, &headers, body, &span).await;
    span.end(match &received {
        Ok((events, stored, _)) => Published::Stored {
            events: *events,
            stored: *stored,
        },
        Err(error) => Published::Failed(error.to_string()),
    });
    received.map(|(_, _, response)| response)
}

/// [`receive`] inside its publish span: the events received, how many were new, and
/// the answer.
async fn receive_traced(
    state: &AppState,
    caller: &Caller,
    account: &str,
    uri: &Uri,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    span: &Publish,
) -> Result<(usize, usize, Response), ApiError> {
    caller.require(Scope::Publish, account)?;
    let body = body?;
    state.limits.check_array_count(&body)?;
    let (mode, incoming) = cloudevents::parse(&state.catalog, headers, &body)?;
    state.limits.check_count(incoming.len())?;
    let verifier = state.user_tokens.verifier(account).await?;
    let now = now_millis();
    let mut ids = Vec::with_capacity(incoming.len());
    let mut events = Vec::with_capacity(incoming.len());
    for mut event in incoming {
        let token = event.take_user_token();
        let user = state
            .user_tokens
            .replacement(verifier.as_deref(), account, token.as_ref())
            .map_err(|error| {
                // Never the token: only which event, and the fixed reason.
                tracing::info!(%account, index = ?event.index, code = error.code(), "user token refused");
                ApiError::UserToken {
                    code: error.code(),
                    message: error.to_string(),
                    index: event.index,
                }
            })?;
        ids.push(event.id.clone());
        events.push(Incoming::into_event(event, account, user.as_deref(), now));
    }
    // The size limit is on the document as stored (with the user token replaced).
    super::events::admit(state, headers, &events)?;
    caller.may_publish(&events)?;
    super::events::carry_trace(&mut events, span);
    let appended = state
        .store
        .append_traced(events, span.commit_parent())
        .await?;
    let stored = appended
        .iter()
        .filter(|a| matches!(a, Appended::Stored(_)))
        .count();
    metrics::counter!("reelay_events_published_total").increment(stored as u64);
    if state.dispatcher.metrics_scope().covers(account) {
        metrics::counter!("reelay_account_events_published_total", "account" => account.to_owned())
            .increment(stored as u64);
    }
    tracing::debug!(%account, ?mode, events = ?ids, stored, "cloudevents received");

    let answer = ReceivedEvent {
        specversion: "1.0".into(),
        event_type: "com.applicaster.event.received.v1".into(),
        source: endpoint_url(state.public_url.as_ref(), headers, uri, account),
        subject: match ids.as_slice() {
            [one] => format!("Event {one} was successfully received"),
            many => format!("Events {} were successfully received", many.join(", ")),
        },
        id: uuid::Uuid::new_v4().to_string(),
        time: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    };
    let text = serde_json::to_string(&answer)
        .map_err(|error| ApiError::Store(crate::store::StoreError::Corrupt(error.to_string())))?;
    let response = (
        StatusCode::CREATED,
        [(CONTENT_TYPE, cloudevents::STRUCTURED)],
        text,
    )
        .into_response();
    Ok((appended.len(), stored, response))
}

/// The URL of this endpoint for `account`: under the configured public URL, else on the
/// host the client called (plain `http`: behind a TLS proxy, configure the public URL).
fn endpoint_url(
    public_url: Option<&url::Url>,
    headers: &HeaderMap,
    uri: &Uri,
    account: &str,
) -> String {
    let base = match public_url {
        Some(url) => Some(url.clone()),
        None => headers
            .get(HOST)
            .and_then(|host| host.to_str().ok())
            .and_then(|host| host.parse::<Authority>().ok())
            .or_else(|| uri.authority().cloned())
            .and_then(|authority| url::Url::parse(&format!("http://{authority}/")).ok()),
    };
    let Some(mut url) = base else {
        // No host at all (an HTTP/1.0 client): a URI reference is still a valid source.
        return format!("/v1/accounts/{account}/cloudevents");
    };
    if let Ok(mut path) = url.path_segments_mut() {
        path.pop_if_empty()
            .extend(["v1", "accounts", account, "cloudevents"]);
    }
    url.to_string()
}

pub fn router() -> axum::Router<AppState> {
    axum::Router::new().route("/v1/accounts/{account}/cloudevents", post(receive))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_source_is_the_public_url_or_the_called_host() {
        let mut headers = HeaderMap::new();
        headers.insert(HOST, "reelay.local:8080".parse().unwrap());
        let uri: Uri = "/v1/accounts/zapp/cloudevents".parse().unwrap();
        assert_eq!(
            endpoint_url(None, &headers, &uri, "zapp"),
            "http://reelay.local:8080/v1/accounts/zapp/cloudevents"
        );
        let public = url::Url::parse("https://events.example.com/reelay/").unwrap();
        assert_eq!(
            endpoint_url(Some(&public), &headers, &uri, "zapp"),
            "https://events.example.com/reelay/v1/accounts/zapp/cloudevents"
        );
        headers.insert(HOST, "bad host".parse().unwrap());
        assert_eq!(
            endpoint_url(None, &headers, &uri, "zapp"),
            "/v1/accounts/zapp/cloudevents"
        );
    }
}
