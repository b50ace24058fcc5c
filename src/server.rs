//! Wiring: opens the store, starts dispatch, serves the API until shutdown, then stops
//! the parts in order (stop accepting, let deliveries finish or hand them back, commit
//! the last progress).

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::serve::ListenerExt;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::catalog::{Catalog, CatalogError};
use crate::config::ServeConfig;
use crate::dispatch::{DispatchConfig, DispatchError, Dispatcher};
use crate::http::token_verification::UserTokens;
use crate::http::{self, AppState, auth::Keys};
use crate::store::{Derivation, SecretKey, Store, StoreError, StoreOptions};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("catalog: {0}")]
    Catalog(#[from] CatalogError),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("dispatch: {0}")]
    Dispatch(#[from] DispatchError),
    #[error("HTTP server: {0}")]
    Io(#[from] std::io::Error),
}

/// Runs the server on `listener` until `shutdown` completes.
pub async fn run(
    config: ServeConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let catalog = match &config.catalog {
        Some(path) => Catalog::from_file(path)?,
        None => Catalog::builtin(),
    };
    let store_tasks = TaskTracker::new();
    let derivation = Derivation {
        video_change_topic: catalog.video_change_topic()?.to_owned(),
    };
    let store = Store::open(
        &config.database_url,
        &StoreOptions {
            durability: config.durability,
            node_id: config.node_id.clone(),
            max_connections: config.database_max_connections,
            secret_key: match (&config.secret_key, &config.secret_key_file) {
                (Some(key), _) => SecretKey::Given(key.clone()),
                (None, Some(path)) => SecretKey::File(path.clone()),
                (None, None) => SecretKey::BesideDatabase,
            },
        },
        derivation,
        &store_tasks,
    )
    .await?;

    let mut keys = Keys::new(store.clone());
    let configured: Vec<&str> = [&config.admin_token, &config.admin_token_next]
        .into_iter()
        .flatten()
        .map(String::as_str)
        .collect();
    if let Some(token) = keys.ensure_admin(&configured).await? {
        // Printed once: only its hash is stored.
        println!("Generated admin token (shown once, stored hashed): {token}");
    }
    let keys = Arc::new(keys);
    tokio::spawn(Keys::follow_revocations(Arc::downgrade(&keys)));

    let user_tokens = Arc::new(UserTokens::open(store.clone()).await?);

    // Installed before dispatch starts, which takes its metric handles at start.
    let metrics = metrics_handle();
    let cancel = CancellationToken::new();
    let dispatch_tasks = TaskTracker::new();
    let dispatcher = Dispatcher::start(
        store.clone(),
        DispatchConfig {
            retry_schedule: config.retry_schedule.clone(),
            disable_after: config.disable_after,
            max_in_flight: config.max_in_flight,
            delivery_timeout: config.delivery_timeout,
            allow_private_destinations: config.allow_private_destinations,
            shutdown_grace: Duration::from_secs(5),
            lease_ttl: config.lease_ttl,
        },
        cancel.clone(),
        dispatch_tasks.clone(),
    )
    .await?;

    let state = AppState {
        store: store.clone(),
        catalog: Arc::new(catalog),
        dispatcher,
        keys,
        metrics,
        allow_private_destinations: config.allow_private_destinations,
        aws_policy: Arc::new(crate::sinks::aws_policy::AwsPolicy {
            endpoints: config.allow_aws_endpoints.clone(),
            regions: config.allow_aws_regions.clone(),
            role_arns: config.allow_role_arns.clone(),
        }),
        max_subscriptions_per_event: config.max_subscriptions_per_event,
        user_tokens,
        public_url: config.public_url.clone(),
        webhook_origin: config.webhook_origin(),
        job_callback_ttl: config.job_callback_ttl,
    };
    let address = listener.local_addr()?;
    tracing::info!(%address, "reelay listening");
    // Tests and scripts wait for this line to learn the port.
    println!("reelay listening on http://{address}");

    let http_cancel = cancel.child_token();
    // Answers are small and written whole: send them now, not when Nagle's algorithm
    // thinks the peer has acknowledged enough.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let serve = axum::serve(listener, http::router(state))
        .with_graceful_shutdown(async move { http_cancel.cancelled().await });
    let trigger = cancel.clone();
    tokio::spawn(async move {
        shutdown.await;
        tracing::info!("shutting down");
        trigger.cancel();
    });
    serve.await?;

    // The HTTP server has stopped accepting; now the workers finish their deliveries (or
    // hand them back), save their progress, and the writer commits it.
    cancel.cancel();
    dispatch_tasks.close();
    dispatch_tasks.wait().await;
    store.flush().await?;
    drop(store);
    store_tasks.close();
    tracing::info!("stopped");
    Ok(())
}

/// The process-wide Prometheus recorder (the `metrics` crate has one global recorder).
fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let seconds = [
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0,
            ];
            let counts = [
                1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 5000.0,
            ];
            let recorder = PrometheusBuilder::new()
                .set_buckets(&seconds)
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Full("reelay_commit_events".into()), &counts)
                })
                .map(PrometheusBuilder::build_recorder)
                .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
            let handle = recorder.handle();
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}
