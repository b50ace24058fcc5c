//! The HTTP API (axum only, no SQL): shared state, the router, and one file per resource.

pub mod admin;
pub mod auth;
pub mod body;
pub mod cloudevents;
pub mod console;
mod destinations;
pub mod entities;
pub mod error;
pub mod events;
pub mod jobs;
pub mod keys;
pub mod limits;
pub mod openapi;
pub mod operations;
pub mod portal;
pub mod publish_metrics;
pub mod rate_limit;
pub mod resync;
pub mod signing;
pub mod stream;
pub mod subscriptions;
pub mod token_verification;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::catalog::Catalog;
use crate::dispatch::Dispatcher;
use crate::store::Store;

/// What every handler can reach: one shared [`AppContext`]. The router clones the state
/// for every request (twice with the middleware), so it is a single reference count, not
/// a copy of each field (that copy was 5 % of a publish's instructions under callgrind).
#[derive(Clone)]
pub struct AppState(Arc<AppContext>);

impl AppState {
    pub fn new(context: AppContext) -> AppState {
        AppState(Arc::new(context))
    }
}

impl std::ops::Deref for AppState {
    type Target = AppContext;

    fn deref(&self) -> &AppContext {
        &self.0
    }
}

/// The server's parts and settings, shared by every request.
pub struct AppContext {
    pub store: Store,
    pub catalog: Arc<Catalog>,
    pub dispatcher: Dispatcher,
    pub keys: Arc<auth::Keys>,
    pub metrics: PrometheusHandle,
    pub max_subscriptions_per_event: usize,
    /// What replaces the user tokens of CloudEvents, per account.
    pub user_tokens: Arc<token_verification::UserTokens>,
    /// The server's public URL (`--public-url`), the `source` of its answers.
    pub public_url: Option<url::Url>,
    /// The `WebHook-Request-Origin` of validation handshakes (its host, or a default).
    pub webhook_origin: String,
    /// How long a job's callback registration lasts.
    pub job_callback_ttl: std::time::Duration,
    /// What one request may carry and read (`--max-*` flags).
    pub limits: Arc<limits::Limits>,
    /// The publish rate per key (`--publish-rate-limit`), when there is one.
    pub publish_rate: Option<Arc<rate_limit::PublishRate>>,
    /// How long attempt records and dead letters are kept (`--attempt-retention`).
    pub attempt_retention: std::time::Duration,
    /// Cancelled when the server stops accepting requests (long-lived responses end).
    pub stopping: tokio_util::sync::CancellationToken,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(admin::router())
        .merge(events::router())
        .merge(cloudevents::router())
        .merge(token_verification::router())
        .merge(subscriptions::router())
        .merge(resync::router())
        .merge(jobs::router())
        .merge(entities::router())
        .merge(keys::router())
        .merge(signing::router())
        .merge(operations::router())
        .merge(stream::router())
        .merge(portal::router())
        .merge(console::router())
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            limits::read_body,
        ))
        .layer(DefaultBodyLimit::max(state.limits.max_request_bytes))
        .layer(axum::middleware::map_response(limits::json_too_large))
        // Outermost: it sees every refusal, the body limits' too.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            publish_metrics::count_refusals,
        ))
        .with_state(state)
}
