//! The HTTP API (axum only, no SQL): shared state, the router, and one file per resource.

pub mod admin;
pub mod auth;
pub mod body;
pub mod cloudevents;
pub mod entities;
pub mod error;
pub mod events;
pub mod jobs;
pub mod openapi;
pub mod resync;
pub mod subscriptions;
pub mod token_verification;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::catalog::Catalog;
use crate::dispatch::Dispatcher;
use crate::store::Store;

/// Largest request body accepted (a publish batch).
pub const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub catalog: Arc<Catalog>,
    pub dispatcher: Dispatcher,
    pub keys: Arc<auth::Keys>,
    pub metrics: PrometheusHandle,
    pub allow_private_destinations: bool,
    pub max_subscriptions_per_event: usize,
    /// What replaces the user tokens of CloudEvents, per account.
    pub user_tokens: Arc<token_verification::UserTokens>,
    /// The server's public URL (`--public-url`), the `source` of its answers.
    pub public_url: Option<url::Url>,
    /// The `WebHook-Request-Origin` of validation handshakes (its host, or a default).
    pub webhook_origin: String,
    /// How long a job's callback registration lasts.
    pub job_callback_ttl: std::time::Duration,
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
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}
