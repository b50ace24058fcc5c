//! `/v1/accounts/{account}/jobs/{job}`: Brightcove Dynamic Ingest jobs (seed 003): a job's
//! callback URLs, and the job's notifications.
//!
//! A callback registration is a subscription of its own kind
//! ([`SubscriptionKind::JobCallback`]): filtered on the job, delivered one at a time in
//! publish order, signed and retried like any other, removed when it expires. The
//! notifications are events of the catalog's Dynamic Ingest topic, so standing
//! subscriptions to that topic receive them too.

use std::collections::{HashMap, HashSet};

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::AppState;
use super::auth::Caller;
use super::error::{ApiError, ErrorBody};
use super::events::PublishOut;
use crate::ingest::brightcove::{self, NOTIFICATION};
use crate::model::Scope;
use crate::model::{
    Destination, EventFilter, Format, Millis, NewSubscription, Subscription, SubscriptionKind,
    now_millis,
};
use crate::sinks::webhook::generate_secret;
use crate::trace::spans::Publish;

/// Callback URLs one job may have: each is a delivery worker until it expires.
const MAX_CALLBACKS_PER_JOB: usize = 10;
/// Longest job id accepted.
const MAX_JOB_ID_CHARS: usize = 256;

/// The callback URLs of a job, as Brightcove's ingest request carries them.
#[derive(Debug, Deserialize, ToSchema)]
pub struct CallbacksIn {
    /// http(s) URLs that receive each notification of the job, as it was published.
    #[schema(min_items = 1, max_items = 10)]
    pub callbacks: Vec<String>,
}

/// A job's callback registration.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CallbackOut {
    /// Also a subscription id: `GET …/subscriptions/{id}/deliveries` shows its
    /// deliveries, `DELETE …/subscriptions/{id}` ends it early.
    pub id: String,
    pub url: String,
    /// The signing secret of its deliveries (Standard Webhooks); only in the answer to
    /// the registration.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// When it stops receiving notifications (epoch milliseconds).
    pub expires_at: Millis,
    /// `enabled` or `disabled`.
    pub status: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CallbacksOut {
    pub job: String,
    pub callbacks: Vec<CallbackOut>,
}

impl CallbackOut {
    fn new(subscription: Subscription, with_secret: bool) -> CallbackOut {
        let expires_at = subscription.expires_at().unwrap_or_default();
        // Callbacks are registered as webhook URLs only.
        let url = subscription
            .destination
            .endpoint()
            .unwrap_or_default()
            .to_owned();
        CallbackOut {
            expires_at,
            status: match subscription.disabled {
                Some(_) => "disabled",
                None => "enabled",
            }
            .to_owned(),
            id: subscription.id,
            url,
            secret: with_secret.then_some(subscription.secret),
        }
    }
}

// The job path parameter's pattern in the annotations below is `check_job`'s rule: no
// control characters (Unicode Cc).

/// Register callback URLs for a job: from now until they expire (`--job-callback-ttl`,
/// 7 days by default), each receives every notification published for the job, one at
/// a time in publish order. A URL already registered for the job stays as it is.
#[utoipa::path(
    post, path = "/v1/accounts/{account}/jobs/{job}/callbacks", tag = "jobs",
    params(("account" = String, Path), ("job" = String, Path, description = "the Dynamic Ingest job id", min_length = 1, max_length = 256, pattern = r"^[^\x00-\x1f\x7f-\x9f]+$")),
    request_body = CallbacksIn,
    responses(
        (status = 201, description = "the registrations of the URLs given, in request order", body = CallbacksOut),
        (status = 400, description = "malformed JSON", body = ErrorBody),
        (status = 422, description = "callbacks missing or not an array of URLs, a refused destination, too many for the job (`too_many_callbacks`, counted before any URL is read) or for the account (`too_many_job_callbacks`)", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn register(
    State(state): State<AppState>,
    caller: Caller,
    Path((account, job)): Path<(String, String)>,
    body: Bytes,
) -> Result<(StatusCode, Json<CallbacksOut>), ApiError> {
    caller.require(Scope::Manage, &account)?;
    check_job(&job)?;
    // Counted first, in one pass over the bytes that builds nothing; then de-duplicated
    // before any URL is parsed or resolved.
    count_callbacks(&body)?;
    let urls = parse_callbacks(&body)?;
    for (index, url) in urls.iter().enumerate() {
        let destination = Destination::from_endpoint(url.clone());
        let by_admin = caller == Caller::Admin;
        state
            .dispatcher
            .sinks()
            .check(&destination, &account, by_admin, false)
            .await
            .map_err(|refusal| ApiError::Unprocessable {
                code: refusal.code,
                message: refusal.message,
                index: Some(index),
                field: Some("callbacks".into()),
            })?;
    }

    let db = state.store.db();
    let existing = db.job_callbacks(&account, &job).await?;
    let by_url: HashMap<&str, &Subscription> = existing
        .iter()
        .filter_map(|s| s.destination.endpoint().map(|url| (url, s)))
        .collect();
    let registered = |url: &str| by_url.get(url).copied();
    let new_urls: Vec<&String> = urls
        .iter()
        .filter(|url| registered(url).is_none())
        .collect();
    if existing.len() + new_urls.len() > MAX_CALLBACKS_PER_JOB {
        return Err(field_error(
            "too_many_callbacks",
            &format!(
                "job {job:?} would have {} callback URLs (at most {MAX_CALLBACKS_PER_JOB})",
                existing.len() + new_urls.len()
            ),
        ));
    }
    let now = now_millis();
    let max_live = state.limits.max_job_callbacks_per_account;
    let live = db.live_job_callbacks(&account, now).await?;
    if !new_urls.is_empty() && live + new_urls.len() > max_live {
        return Err(too_many_live(live + new_urls.len(), max_live));
    }
    let ttl = Millis::try_from(state.job_callback_ttl.as_millis()).unwrap_or(Millis::MAX);
    let mut created = Vec::with_capacity(new_urls.len());
    let position = state.store.log_position().await?;
    for url in new_urls {
        let new = NewSubscription {
            id: format!("cb_{}", uuid::Uuid::now_v7().simple()),
            account: account.clone(),
            kind: SubscriptionKind::JobCallback {
                job: job.clone(),
                expires_at: now.saturating_add(ttl),
            },
            destination: Destination::from_endpoint(url.clone()),
            filter: EventFilter {
                events: vec![NOTIFICATION.to_owned()],
                topics: Vec::new(),
            },
            payload_filter: None,
            transform: None,
            rate_limit: None,
            ordering: crate::model::Ordering::None,
            format: Format::Native,
            secret: generate_secret(),
            public_key: None,
        };
        // Notifications published from now on. Checked again in the insert's transaction:
        // a concurrent request (to any node) may have registered the URL meanwhile.
        let registered_meanwhile = db
            // The account's total is checked again here, for the same reason.
            .insert_subscription_checked(&new, position, now, |existing, live| {
                let taken = existing
                    .iter()
                    .any(|s| s.destination.endpoint() == Some(url.as_str()));
                if taken {
                    Err(None)
                } else if existing.len() >= MAX_CALLBACKS_PER_JOB {
                    Err(Some(field_error(
                        "too_many_callbacks",
                        &format!("job {job:?} has {MAX_CALLBACKS_PER_JOB} callback URLs already"),
                    )))
                } else if live >= max_live {
                    Err(Some(too_many_live(live + 1, max_live)))
                } else {
                    Ok(())
                }
            })
            .await?;
        match registered_meanwhile {
            Ok(()) => {}
            Err(None) => continue,
            Err(Some(refused)) => return Err(refused),
        }
        let subscription = db
            .get_subscription(&account, &new.id)
            .await?
            .ok_or_else(|| ApiError::NotFound("callback registration vanished".into()))?;
        state
            .dispatcher
            .add(subscription.clone())
            .await
            .map_err(|error| ApiError::unprocessable("invalid_callback", error.to_string()))?;
        tracing::info!(subscription = %new.id, %account, %job, "job callback registered");
        created.push(subscription);
    }
    let callbacks = urls
        .iter()
        .filter_map(|url| {
            registered(url)
                .or_else(|| {
                    created
                        .iter()
                        .find(|s| s.destination.endpoint() == Some(url.as_str()))
                })
                .cloned()
        })
        .map(|subscription| CallbackOut::new(subscription, true))
        .collect();
    Ok((StatusCode::CREATED, Json(CallbacksOut { job, callbacks })))
}

/// Refuses more callback URLs than a job may have, counted without building them: a
/// request of 100,000 URLs costs one pass over its bytes. Any other shape passes, for
/// [`parse_callbacks`] to name what is wrong with it.
fn count_callbacks(body: &[u8]) -> Result<(), ApiError> {
    #[derive(Deserialize)]
    struct Counted {
        callbacks: Vec<IgnoredAny>,
    }
    match serde_json::from_slice::<Counted>(body) {
        Ok(counted) if counted.callbacks.len() > MAX_CALLBACKS_PER_JOB => Err(field_error(
            "too_many_callbacks",
            &format!(
                "the request gives {} callback URLs (at most {MAX_CALLBACKS_PER_JOB} per job)",
                counted.callbacks.len()
            ),
        )),
        _ => Ok(()),
    }
}

/// Reads `{"callbacks": [URL, …]}` by hand, so each mistake gets its own message.
/// Returns the URLs without repeats, in order.
fn parse_callbacks(body: &[u8]) -> Result<Vec<String>, ApiError> {
    let object = super::body::object(body, "CallbacksIn", "invalid_body")?;
    let items = match object.get("callbacks") {
        Some(Value::Array(items)) if items.len() > MAX_CALLBACKS_PER_JOB => {
            return Err(field_error(
                "too_many_callbacks",
                &format!(
                    "the request gives {} callback URLs (at most {MAX_CALLBACKS_PER_JOB} per job)",
                    items.len()
                ),
            ));
        }
        None | Some(Value::Null) => {
            return Err(field_error(
                "missing_callbacks",
                "the callbacks field is required: an array of callback URLs",
            ));
        }
        Some(Value::Array(items)) if items.is_empty() => {
            return Err(field_error(
                "missing_callbacks",
                "the callbacks array is empty: give at least one callback URL",
            ));
        }
        Some(Value::Array(items)) => items,
        Some(_) => {
            return Err(field_error(
                "callbacks_not_array",
                "the callbacks field must be an array of callback URLs",
            ));
        }
    };
    let mut seen = HashSet::with_capacity(items.len());
    let mut urls: Vec<String> = Vec::with_capacity(items.len());
    for (index, item) in items.iter().enumerate() {
        let Value::String(url) = item else {
            return Err(ApiError::Unprocessable {
                code: "invalid_callback",
                message: format!("callbacks[{index}] must be a URL string, not {item}"),
                index: Some(index),
                field: Some("callbacks".into()),
            });
        };
        if seen.insert(url.as_str()) {
            urls.push(url.clone());
        }
    }
    Ok(urls)
}

/// The account would have more live job callbacks than `--max-job-callbacks-per-account`.
fn too_many_live(would_have: usize, max: usize) -> ApiError {
    field_error(
        "too_many_job_callbacks",
        &format!(
            "the account would have {would_have} live job callbacks (at most {max}; each expires after --job-callback-ttl)"
        ),
    )
}

fn field_error(code: &'static str, message: &str) -> ApiError {
    ApiError::Unprocessable {
        code,
        message: message.to_owned(),
        index: None,
        field: Some("callbacks".into()),
    }
}

/// A job id is a path segment: not empty, not huge, no control characters (it is part
/// of stored notification ids and log lines).
fn check_job(job: &str) -> Result<(), ApiError> {
    if job.is_empty() || job.chars().count() > MAX_JOB_ID_CHARS || job.chars().any(char::is_control)
    {
        return Err(ApiError::Unprocessable {
            code: "invalid_job",
            message: format!(
                "a job id has 1 to {MAX_JOB_ID_CHARS} characters and no control characters"
            ),
            index: None,
            field: Some("job".into()),
        });
    }
    Ok(())
}

/// The job's callback registrations (without their secrets); none for a job never
/// registered.
#[utoipa::path(
    get, path = "/v1/accounts/{account}/jobs/{job}/callbacks", tag = "jobs",
    params(("account" = String, Path), ("job" = String, Path, min_length = 1, max_length = 256, pattern = r"^[^\x00-\x1f\x7f-\x9f]+$")),
    responses(
        (status = 200, body = CallbacksOut),
        (status = 422, description = "not a job id (`invalid_job`)", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Path((account, job)): Path<(String, String)>,
) -> Result<Json<CallbacksOut>, ApiError> {
    caller.require(Scope::Read, &account)?;
    check_job(&job)?;
    let callbacks = state
        .store
        .db()
        .job_callbacks(&account, &job)
        .await?
        .into_iter()
        .map(|subscription| CallbackOut::new(subscription, false))
        .collect();
    Ok(Json(CallbacksOut { job, callbacks }))
}

/// Publish a job's Dynamic Ingest notifications, one object or an array, in Brightcove's
/// own shape (seed 003). Each is stored as sent, as an event of the catalog's Dynamic
/// Ingest topic, and POSTed as sent to each of the job's callback URLs and to the
/// topic's subscribers; one with a `videoId` is followed by a `video-change`. A job
/// without callbacks is no error. Answers once the notifications are committed; the
/// same notification sent again for the job is stored and delivered once.
#[utoipa::path(
    post, path = "/v1/accounts/{account}/jobs/{job}/notifications", tag = "jobs",
    params(("account" = String, Path), ("job" = String, Path, min_length = 1, max_length = 256, pattern = r"^[^\x00-\x1f\x7f-\x9f]+$")),
    request_body(content = Object, description = "one Dynamic Ingest notification (entity, entityType, version, action, jobId, videoId, accountId, status, errorMessage, rendition fields), or an array of them"),
    responses(
        (status = 202, description = "committed", body = PublishOut),
        (status = 400, description = "malformed JSON", body = ErrorBody),
        (status = 413, description = "a notification (`event_too_large`, with its index), the number of them (`too_many_events`) or the body is over its limit; nothing stored", body = ErrorBody),
        (status = 422, description = "a notification is invalid (with index and field), or its jobId or accountId is not the path's; nothing stored", body = ErrorBody),
        (status = 429, description = "the key is over its publish rate (`rate_limited`, with `Retry-After`)", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn publish(
    State(state): State<AppState>,
    caller: Caller,
    Path((account, job)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<PublishOut>), ApiError> {
    let span = Publish::start(
        &headers,
        &account,
        "/v1/accounts/{account}/jobs/{job}/notifications",
    );
    let published = async {
        caller.require(Scope::Publish, &account)?;
        check_job(&job)?;
        state.limits.check_array_count(&body)?;
        let events = brightcove::parse(&state.catalog, &account, &job, &body, now_millis())?;
        super::events::admit(&state, &headers, &events)?;
        super::events::append(&state, &caller, events, &span).await
    }
    .await;
    span.end(super::events::outcome(&published));
    Ok((StatusCode::ACCEPTED, Json(published?)))
}

pub fn router() -> axum::Router<AppState> {
    axum::Router::new()
        .route(
            "/v1/accounts/{account}/jobs/{job}/callbacks",
            post(register).get(list),
        )
        .route(
            "/v1/accounts/{account}/jobs/{job}/notifications",
            post(publish),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(result: Result<Vec<String>, ApiError>) -> (&'static str, Option<usize>) {
        match result {
            Err(ApiError::Unprocessable { code, index, .. }) => (code, index),
            other => panic!("expected a 422, got {other:?}"),
        }
    }

    #[test]
    fn callbacks_must_be_an_array_of_url_strings() {
        assert_eq!(
            parse_callbacks(br#"{"callbacks": ["https://host1/path1", "https://host2/path2", "https://host1/path1"]}"#)
                .unwrap(),
            vec!["https://host1/path1", "https://host2/path2"]
        );
        assert_eq!(code(parse_callbacks(b"{}")), ("missing_callbacks", None));
        assert_eq!(
            code(parse_callbacks(br#"{"callbacks": []}"#)),
            ("missing_callbacks", None)
        );
        assert_eq!(
            code(parse_callbacks(br#"{"callbacks": "https://host1/path1"}"#)),
            ("callbacks_not_array", None)
        );
        assert_eq!(
            code(parse_callbacks(
                br#"{"callbacks": ["https://host1/path1", 7]}"#
            )),
            ("invalid_callback", Some(1))
        );
        assert_eq!(
            code(parse_callbacks(br#"["https://host1/path1"]"#)),
            ("invalid_body", None)
        );
        assert!(matches!(
            parse_callbacks(b"{\"callbacks\": [").unwrap_err(),
            ApiError::MalformedJson { .. }
        ));
    }

    #[test]
    fn callback_urls_are_counted_before_anything_is_read() {
        let body = |n: usize| {
            let urls: Vec<String> = (0..n).map(|i| format!("https://host{i}/cb")).collect();
            serde_json::json!({ "callbacks": urls }).to_string()
        };
        assert!(count_callbacks(body(MAX_CALLBACKS_PER_JOB).as_bytes()).is_ok());
        assert!(matches!(
            count_callbacks(body(100_000).as_bytes()),
            Err(ApiError::Unprocessable {
                code: "too_many_callbacks",
                ..
            })
        ));
        // Not an array, or not JSON: left for the parser to name.
        assert!(count_callbacks(br#"{"callbacks": "https://host1/cb"}"#).is_ok());
        assert!(count_callbacks(b"{\"callbacks\": [").is_ok());
    }

    #[test]
    fn job_ids_are_checked() {
        assert!(check_job("d3ef8751-2b88-4141-95d5-83f0393aca07").is_ok());
        assert!(check_job("").is_err());
        assert!(check_job("a\u{0}b").is_err());
        assert!(check_job(&"j".repeat(MAX_JOB_ID_CHARS + 1)).is_err());
    }
}
