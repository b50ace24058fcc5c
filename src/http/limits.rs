//! What one request may make the server spend: its body (size and read time, checked
//! before any handler runs, so every route answers the same JSON errors), the number and
//! size of the events it publishes, and the page sizes of the reads it asks for.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{FromRequestParts, Request, State};
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::de::IgnoredAny;

use super::AppState;
use super::auth::Caller;
use super::error::ApiError;
use crate::model::NewEvent;

/// The limits of the API (`serve` flags).
#[derive(Debug, Clone)]
pub struct Limits {
    /// `--max-request-bytes`.
    pub max_request_bytes: usize,
    /// `--body-timeout`.
    pub body_timeout: Duration,
    /// `--max-event-bytes`.
    pub max_event_bytes: usize,
    /// `--max-events-per-request`.
    pub max_events_per_request: usize,
    /// `--max-page-bytes`.
    pub max_page_bytes: usize,
    /// `--max-job-callbacks-per-account`.
    pub max_job_callbacks_per_account: usize,
    /// `--max-subscriptions-per-account`.
    pub max_subscriptions_per_account: usize,
}

impl Limits {
    /// Refuses a publish of more events than one request may carry. Checked on the
    /// count alone, before the events are looked at one by one where the format allows.
    pub fn check_count(&self, events: usize) -> Result<(), ApiError> {
        if events > self.max_events_per_request {
            return Err(ApiError::TooLarge {
                code: "too_many_events",
                message: format!(
                    "the request carries {events} events (at most {} per request)",
                    self.max_events_per_request
                ),
                index: None,
            });
        }
        Ok(())
    }

    /// Refuses a body that is a JSON array of more items than one request may carry,
    /// counted in one pass over its bytes without building any item (the formats' parsers
    /// then build them all before their own checks). Anything else passes: the parser
    /// says what is wrong with it.
    pub fn check_array_count(&self, body: &[u8]) -> Result<(), ApiError> {
        if body.iter().find(|byte| !byte.is_ascii_whitespace()) != Some(&b'[') {
            return Ok(());
        }
        // A `Vec` of a zero-sized type: counting allocates nothing, however many items.
        match serde_json::from_slice::<Vec<IgnoredAny>>(body) {
            Ok(items) => self.check_count(items.len()),
            Err(_) => Ok(()),
        }
    }

    /// Refuses a publish with too many events, or with an event document larger than
    /// `--max-event-bytes` (naming the first such event by its position, from 0).
    pub fn check_events(&self, events: &[NewEvent]) -> Result<(), ApiError> {
        self.check_count(events.len())?;
        for (index, event) in events.iter().enumerate() {
            let size = event.body.bytes().len();
            if size > self.max_event_bytes {
                return Err(ApiError::TooLarge {
                    code: "event_too_large",
                    message: format!(
                        "event {index} is {size} bytes (at most {} bytes per event)",
                        self.max_event_bytes
                    ),
                    index: Some(index),
                });
            }
        }
        Ok(())
    }
}

/// Refuses a new standing subscription to an account that has `existing` already and may
/// have `max` (`--max-subscriptions-per-account`); checked in the insert's transaction.
pub fn check_subscriptions_per_account(existing: usize, max: usize) -> Result<(), ApiError> {
    if existing >= max {
        return Err(ApiError::unprocessable(
            "too_many_subscriptions",
            format!("the account has {existing} subscriptions already (at most {max})"),
        ));
    }
    Ok(())
}

/// Reads an authenticated request's whole body before its handler runs: at most
/// `--max-request-bytes` (`413 payload_too_large`), within `--body-timeout` of the headers
/// (`408 body_timeout`). A body declared larger is still read up to the limit before the
/// answer: a client that only reads the answer once it has sent its body (most do) then
/// gets the `413` rather than a broken connection. A request without a valid key is passed on unread: its handler
/// refuses it (`401`) without reading, so no one without a key makes the server buffer.
pub async fn read_body(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let limits = &state.limits;
    let (mut parts, body) = request.into_parts();
    let declared = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared == Some(0)
        || Caller::from_request_parts(&mut parts, &state)
            .await
            .is_err()
    {
        return next.run(Request::from_parts(parts, body)).await;
    }
    let too_large = || ApiError::PayloadTooLarge {
        limit: limits.max_request_bytes,
    };
    let read = Limited::new(body, limits.max_request_bytes).collect();
    let bytes: Bytes = match tokio::time::timeout(limits.body_timeout, read).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(error)) if error.downcast_ref::<LengthLimitError>().is_some() => {
            return too_large().into_response();
        }
        Ok(Err(error)) => {
            return ApiError::bad_request(
                "unreadable_body",
                format!("the request body could not be read: {error}"),
            )
            .into_response();
        }
        Err(_) => {
            return ApiError::Timeout {
                code: "body_timeout",
                message: format!(
                    "the request body did not arrive within {:?}",
                    limits.body_timeout
                ),
            }
            .into_response();
        }
    };
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

/// Every `413` is a JSON error like any other: one that a layer below the handlers
/// answered in plain text (axum's own body limit) is rewritten.
pub async fn json_too_large(response: Response) -> Response {
    let is_json = response
        .headers()
        .get(CONTENT_TYPE)
        .is_some_and(|value| value == HeaderValue::from_static("application/json"));
    if response.status() != StatusCode::PAYLOAD_TOO_LARGE || is_json {
        return response;
    }
    ApiError::TooLarge {
        code: "payload_too_large",
        message: "the request body is larger than this server accepts".into(),
        index: None,
    }
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Document;

    fn limits() -> Limits {
        Limits {
            max_request_bytes: 1000,
            body_timeout: Duration::from_secs(1),
            max_event_bytes: 10,
            max_events_per_request: 2,
            max_page_bytes: 100,
            max_job_callbacks_per_account: 1,
            max_subscriptions_per_account: 1,
        }
    }

    fn event(body: &str) -> NewEvent {
        NewEvent {
            account: "a".into(),
            id: "1".into(),
            name: "n".into(),
            topic: "t".into(),
            entity_key: None,
            video: None,
            entity: None,
            occurred_at: 0,
            body: Document::from(body),
            trace: None,
        }
    }

    #[tokio::test]
    async fn a_plain_text_413_from_below_becomes_json() {
        let plain = (StatusCode::PAYLOAD_TOO_LARGE, "length limit exceeded").into_response();
        let answer = json_too_large(plain).await;
        assert_eq!(answer.status(), StatusCode::PAYLOAD_TOO_LARGE);
        let body = axum::body::to_bytes(answer.into_body(), 4096)
            .await
            .unwrap();
        let error: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(error["error"]["code"], "payload_too_large");
        // Other answers pass untouched.
        let ok = json_too_large((StatusCode::OK, "fine").into_response()).await;
        let body = axum::body::to_bytes(ok.into_body(), 4096).await.unwrap();
        assert_eq!(&body[..], b"fine");
    }

    #[test]
    fn the_first_event_over_the_size_is_named() {
        let limits = limits();
        assert!(
            limits
                .check_events(&[event("{}"), event("0123456789")])
                .is_ok()
        );
        match limits.check_events(&[event("{}"), event("0123456789X")]) {
            Err(ApiError::TooLarge { code, index, .. }) => {
                assert_eq!((code, index), ("event_too_large", Some(1)));
            }
            other => panic!("expected event_too_large, got {other:?}"),
        }
        match limits.check_events(&[event("{}"), event("{}"), event("{}")]) {
            Err(ApiError::TooLarge { code, .. }) => assert_eq!(code, "too_many_events"),
            other => panic!("expected too_many_events, got {other:?}"),
        }
        // Counted on the body's bytes alone.
        assert!(limits.check_array_count(b" [{}, 7]").is_ok());
        assert!(limits.check_array_count(b"{\"a\": [1, 2, 3]}").is_ok());
        assert!(limits.check_array_count(b"[1, 2").is_ok());
        assert!(matches!(
            limits.check_array_count(b"[{}, [], \"x\"]"),
            Err(ApiError::TooLarge {
                code: "too_many_events",
                ..
            })
        ));
    }
}
