//! The small routes: health, metrics, the catalog, and the OpenAPI document.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use utoipa::OpenApi;

use super::AppState;
use super::auth::Caller;
use super::error::ErrorBody;
use crate::catalog::Catalog;

/// Liveness; no authentication. `503` with the error body when the store cannot take
/// publishes: code `log_halted` when the log writer has stopped appending (its sequence
/// numbers are exhausted or corrupt; publishes fail until an operator repairs the log),
/// `storage_unavailable` while its last commit failed (a full disk, the database down;
/// it answers `ok` again after the next commit that succeeds).
#[utoipa::path(get, path = "/healthz", tag = "operations", responses(
    (status = 200, description = "ok"),
    (status = 503, body = ErrorBody, description = "the log writer has halted, or cannot write"),
))]
pub async fn healthz(State(state): State<AppState>) -> axum::response::Response {
    match state.store.halted() {
        None => match state.store.write_failure() {
            None => "ok".into_response(),
            // The space may have come back since (retention, an operator): look.
            Some(_) if state.store.probe_write().await.is_ok() => "ok".into_response(),
            Some(reason) => (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(serde_json::json!({"error": {
                    "code": "storage_unavailable",
                    "message": format!("the store cannot write: {reason}"),
                }})),
            )
                .into_response(),
        },
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"error": {
                "code": "log_halted",
                "message": format!("the event log is halted: {reason}"),
            }})),
        )
            .into_response(),
    }
}

/// Prometheus metrics: publishes and refusals, deliveries by outcome and status class,
/// delivery latency, lag and the retry set (server-wide, and for the top subscriptions
/// only: see the README's "Metrics and logs"), storage.
#[utoipa::path(get, path = "/metrics", tag = "operations", responses((status = 200, description = "Prometheus text format")))]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let mut text = state.metrics.render();
    text.push_str(&state.dispatcher.subscription_metrics());
    ([(CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}

/// Topics and event types, with their fields and entity keys.
#[utoipa::path(
    get, path = "/v1/catalog", tag = "catalog",
    responses((status = 200, body = Catalog)),
    security(("bearer" = []))
)]
pub async fn catalog(State(state): State<AppState>, _caller: Caller) -> Json<Arc<Catalog>> {
    Json(state.catalog.clone())
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Reelay", description = "Event stream and webhook notifications for video platforms"),
    paths(
        healthz, metrics, catalog, super::keys::create_key, super::keys::list_keys,
        super::keys::revoke_key, super::keys::rotate_admin_token, super::signing::rotate,
        super::events::publish, super::events::query,
        super::cloudevents::receive, super::token_verification::put_settings,
        super::token_verification::get_settings, super::token_verification::delete_settings,
        super::subscriptions::create, super::subscriptions::list, super::subscriptions::get_one,
        super::subscriptions::delete, super::subscriptions::update, super::subscriptions::enable, super::subscriptions::deliveries,
        super::subscriptions::replay, super::resync::start, super::resync::latest,
        super::jobs::register, super::jobs::list, super::jobs::publish,
        super::entities::list, super::entities::get,
        super::operations::whoami, super::operations::accounts, super::operations::stats,
        super::operations::event_deliveries, super::operations::redeliver,
        super::operations::test_event, super::stream::stream, super::portal::create,
        super::portal::exchange,
    ),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The OpenAPI 3.1 document, generated from the handlers' own types.
pub async fn openapi(State(state): State<AppState>) -> Json<serde_json::Value> {
    Json(super::openapi::with_catalog(&state.catalog))
}

pub fn router() -> axum::Router<AppState> {
    axum::Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
        .route("/v1/catalog", get(catalog))
}
