//! The one API error type: every failure a client sees, with a stable machine-readable
//! code, an HTTP status, and a message. Internal errors are logged, never shown.

use axum::Json;
use axum::extract::rejection::BytesRejection;
use axum::http::header::{ALLOW, RETRY_AFTER};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::ingest::IngestError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("missing or invalid bearer token")]
    Unauthorized,
    #[error("{0}")]
    Forbidden(String),
    /// The key reaches the account but may not do this (a missing scope, an event it
    /// may not publish): the code says which.
    #[error("{message}")]
    Denied {
        code: &'static str,
        message: String,
        index: Option<usize>,
    },
    #[error("{0}")]
    NotFound(String),
    #[error("malformed JSON at line {line}, column {column}: {message}")]
    MalformedJson {
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },
    /// The request is well-formed but cannot be accepted: names the code, and for a
    /// batch the item and field at fault.
    #[error("{message}")]
    Unprocessable {
        code: &'static str,
        message: String,
        index: Option<usize>,
        field: Option<String>,
    },
    /// A CloudEvent's user token (`data.userIdentifier`) was missing or did not
    /// verify. The message never quotes the token.
    #[error("{message}")]
    UserToken {
        code: &'static str,
        message: String,
        index: Option<usize>,
    },
    /// The resource exists but does not take this method; `allow` lists those it takes.
    #[error("{message}")]
    MethodNotAllowed {
        code: &'static str,
        message: String,
        allow: &'static str,
    },
    /// The request conflicts with what is under way (a resync already running).
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    #[error("the request body is larger than the limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    /// A limit on what one request may carry (an event's size, the number of events);
    /// `index` names the item at fault.
    #[error("{message}")]
    TooLarge {
        code: &'static str,
        message: String,
        index: Option<usize>,
    },
    /// The caller's key is over its publish rate: it may try again after `retry_after`
    /// seconds.
    #[error("{message}")]
    RateLimited { message: String, retry_after: u64 },
    /// The client did not send its request in time.
    #[error("{message}")]
    Timeout { code: &'static str, message: String },
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// A read or replay from before what retention kept of the account's log:
    /// `oldest_sequence` is the first position from which it is complete.
    #[error("{message}")]
    BeforeRetention {
        message: String,
        oldest_sequence: i64,
    },
    #[error("storage is unavailable")]
    Store(#[from] StoreError),
}

impl ApiError {
    pub fn unprocessable(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::Unprocessable {
            code,
            message: message.into(),
            index: None,
            field: None,
        }
    }

    /// `after` (a query's, or the position a replay goes on after) is before the
    /// account's retention mark `mark`: events after it are gone.
    pub fn check_retained(after: i64, mark: i64) -> Result<(), ApiError> {
        // Mark 0: nothing was ever removed, and any `after` (even below 0) starts at the
        // beginning of a complete log.
        if after >= mark || mark == 0 {
            return Ok(());
        }
        Err(ApiError::BeforeRetention {
            message: format!(
                "events from sequence number {} on are no longer all kept (retention): the \
                 log of this account is complete from sequence number {} on",
                after.saturating_add(1),
                mark.saturating_add(1)
            ),
            oldest_sequence: mark.saturating_add(1),
        })
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::BadRequest {
            code,
            message: message.into(),
        }
    }

    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::Denied { code, .. } => (StatusCode::FORBIDDEN, code),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::MalformedJson { .. } => (StatusCode::BAD_REQUEST, "malformed_json"),
            ApiError::BadRequest { code, .. } => (StatusCode::BAD_REQUEST, code),
            ApiError::Unprocessable { code, .. } => (StatusCode::UNPROCESSABLE_ENTITY, code),
            ApiError::UserToken { code, .. } => (StatusCode::UNAUTHORIZED, code),
            ApiError::MethodNotAllowed { code, .. } => (StatusCode::METHOD_NOT_ALLOWED, code),
            ApiError::Conflict { code, .. } => (StatusCode::CONFLICT, code),
            ApiError::PayloadTooLarge { .. } => {
                (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
            }
            ApiError::TooLarge { code, .. } => (StatusCode::PAYLOAD_TOO_LARGE, code),
            ApiError::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            ApiError::Timeout { code, .. } => (StatusCode::REQUEST_TIMEOUT, code),
            ApiError::UnsupportedMediaType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            ApiError::BeforeRetention { .. } => (StatusCode::GONE, "before_retention"),
            ApiError::Store(_) => (StatusCode::SERVICE_UNAVAILABLE, "storage_unavailable"),
        }
    }
}

impl From<IngestError> for ApiError {
    fn from(error: IngestError) -> ApiError {
        let message = error.to_string();
        match error {
            IngestError::Malformed { line, column, .. } => ApiError::MalformedJson {
                line,
                column,
                message,
            },
            IngestError::Invalid { index, field, .. } => ApiError::Unprocessable {
                code: "invalid_event",
                message,
                index,
                field: Some(field),
            },
            IngestError::Empty => ApiError::unprocessable("empty_batch", message),
            IngestError::UnsupportedMediaType(message) => ApiError::UnsupportedMediaType(message),
        }
    }
}

impl From<BytesRejection> for ApiError {
    /// The body could not be read: too large (the router's limit), or cut short.
    fn from(rejection: BytesRejection) -> ApiError {
        match rejection.status() {
            // The body is read (and bounded) before any handler runs, by
            // `limits::read_body`; this is the router's own backstop.
            StatusCode::PAYLOAD_TOO_LARGE => ApiError::TooLarge {
                code: "payload_too_large",
                message: "the request body is larger than this server accepts".into(),
                index: None,
            },
            _ => ApiError::bad_request("unreadable_body", rejection.body_text()),
        }
    }
}

/// The code of an error answer, kept in the response's extensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorCode(pub &'static str);

/// The error body: `{"error": {"code", "message", "index"?, "field"?}}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable, machine-readable.
    pub code: String,
    pub message: String,
    /// For a batch: the position of the item at fault, from 0.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<usize>,
    /// The field at fault.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub column: Option<usize>,
    /// With `before_retention`: the first sequence number from which the account's log
    /// is complete (query with `after` one less, replay with `fromSequence` this).
    #[serde(rename = "oldestSequence", skip_serializing_if = "Option::is_none")]
    pub oldest_sequence: Option<i64>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        if let ApiError::Store(error) = &self {
            tracing::error!(%error, "storage error");
        }
        let allow = match &self {
            ApiError::MethodNotAllowed { allow, .. } => Some(*allow),
            _ => None,
        };
        let retry_after = match &self {
            ApiError::RateLimited { retry_after, .. } => Some(*retry_after),
            _ => None,
        };
        let mut detail = ErrorDetail {
            code: code.to_owned(),
            message: self.to_string(),
            index: None,
            field: None,
            line: None,
            column: None,
            oldest_sequence: None,
        };
        match self {
            ApiError::Unprocessable { index, field, .. } => {
                detail.index = index;
                detail.field = field;
            }
            ApiError::MalformedJson { line, column, .. } => {
                detail.line = Some(line);
                detail.column = Some(column);
            }
            ApiError::Denied { index, .. } => detail.index = index,
            ApiError::UserToken { index, .. } => {
                detail.index = index;
                detail.field = Some("data.userIdentifier".into());
            }
            ApiError::TooLarge { index, .. } => detail.index = index,
            ApiError::BeforeRetention {
                oldest_sequence, ..
            } => detail.oldest_sequence = Some(oldest_sequence),
            _ => {}
        }
        let mut response = (status, Json(ErrorBody { error: detail })).into_response();
        // For the metrics of refused publishes (`publish_metrics`), without parsing the body.
        response.extensions_mut().insert(ErrorCode(code));
        if let Some(allow) = allow {
            response
                .headers_mut()
                .insert(ALLOW, HeaderValue::from_static(allow));
        }
        if let Some(seconds) = retry_after {
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_position_before_what_retention_removed_is_refused() {
        // Nothing removed yet: any position starts a complete log, even one below 0.
        assert!(ApiError::check_retained(-5, 0).is_ok());
        assert!(ApiError::check_retained(0, 0).is_ok());
        assert!(ApiError::check_retained(100, 100).is_ok());
        match ApiError::check_retained(99, 100) {
            Err(ApiError::BeforeRetention {
                oldest_sequence, ..
            }) => assert_eq!(oldest_sequence, 101),
            other => panic!("{other:?}"),
        }
    }
}
