//! Counts refused publishes by their error code, on every publish route (the Vimond
//! envelope, CloudEvents, a job's notifications), whichever layer refused them (the
//! body's limits and timeout, the caller's key, validation, the publish rate, storage).
//! Server-wide by code (a fixed set); per account only for the accounts opted in
//! (`--metrics-accounts`, `--metrics-all-accounts`).

use axum::extract::{Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;

use super::AppState;
use super::error::ErrorCode;

/// The account of a publish route's path, or `None` when the path is no publish route.
fn publish_account(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/v1/accounts/")?;
    let mut parts = rest.split('/');
    let account = parts.next().filter(|a| !a.is_empty())?;
    let tail: Vec<&str> = parts.collect();
    match tail.as_slice() {
        ["events"] | ["cloudevents"] => Some(account),
        ["jobs", job, "notifications"] if !job.is_empty() => Some(account),
        _ => None,
    }
}

pub async fn count_refusals(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let account = match *request.method() == Method::POST {
        true => publish_account(request.uri().path()).map(str::to_owned),
        false => None,
    };
    let response = next.run(request).await;
    let Some(account) = account else {
        return response;
    };
    let status = response.status();
    if status.is_client_error() || status.is_server_error() {
        let code = response
            .extensions()
            .get::<ErrorCode>()
            .map_or("other", |code| code.0);
        metrics::counter!("reelay_publishes_refused_total", "code" => code).increment(1);
        if state.dispatcher.metrics_scope().covers(&account) {
            metrics::counter!("reelay_account_publishes_refused_total", "account" => account.clone(), "code" => code)
                .increment(1);
        }
        tracing::debug!(account, code, status = status.as_u16(), "publish refused");
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_publish_routes_are_counted() {
        assert_eq!(
            publish_account("/v1/accounts/vimond/events"),
            Some("vimond")
        );
        assert_eq!(
            publish_account("/v1/accounts/vimond/cloudevents"),
            Some("vimond")
        );
        assert_eq!(
            publish_account("/v1/accounts/bc/jobs/j1/notifications"),
            Some("bc")
        );
        assert_eq!(publish_account("/v1/accounts/vimond/subscriptions"), None);
        assert_eq!(publish_account("/v1/accounts//events"), None);
        assert_eq!(publish_account("/v1/accounts/bc/jobs/j1/callbacks"), None);
        assert_eq!(publish_account("/metrics"), None);
    }
}
