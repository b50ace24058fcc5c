//! Wiring: opens the store, starts dispatch, serves the API until shutdown, then stops
//! the parts in order (stop accepting, let deliveries finish or hand them back, commit
//! the last progress).

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use metrics_util::layers::FanoutBuilder;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::catalog::{Catalog, CatalogError};
use crate::config::ServeConfig;
use crate::dispatch::{DispatchConfig, DispatchError, Dispatcher};
use crate::http::limits::Limits;
use crate::http::rate_limit::PublishRate;
use crate::http::token_verification::UserTokens;
use crate::http::{self, AppContext, AppState, auth::Keys};
use crate::sinks::aws_policy::AwsPolicy;
use crate::sinks::{SinkConfig, Sinks};
use crate::store::{Derivation, RetentionPolicy, SecretKey, Store, StoreError, StoreOptions};
use crate::trace::metrics::{COUNT_BUCKETS, COUNT_HISTOGRAMS, OtlpRecorder, SECONDS_BUCKETS};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("catalog: {0}")]
    Catalog(#[from] CatalogError),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("dispatch: {0}")]
    Dispatch(#[from] DispatchError),
    #[error("sinks: {0}")]
    Sinks(#[from] crate::sinks::webhook::ClientError),
    #[error("HTTP server: {0}")]
    Io(#[from] std::io::Error),
    #[error("tracing: {0}")]
    Trace(#[from] crate::trace::TraceError),
}

/// Runs the server on `listener` until `shutdown` completes.
pub async fn run(
    config: ServeConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    // Installed first: the store's writer and dispatch take metric handles at start.
    // With OTLP on, the same figures also go to the collector.
    let otlp_metrics = crate::trace::metrics::start(&config.trace_settings())?;
    let (otlp_recorder, otlp_metrics) = match otlp_metrics {
        Some((recorder, pipeline)) => {
            tracing::info!("exporting metrics over OTLP/HTTP");
            (Some(recorder), Some(pipeline))
        }
        None => (None, None),
    };
    let metrics = metrics_handle(otlp_recorder);
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
            sqlite_max_page_count: config.sqlite_max_page_count,
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

    let traces = crate::trace::start(&config.trace_settings())?;
    if traces.is_some() {
        tracing::info!(
            sample_ratio = config.trace_sample_ratio,
            "exporting traces over OTLP/HTTP"
        );
    }
    let cancel = CancellationToken::new();
    let dispatch_tasks = TaskTracker::new();
    let sinks = Sinks::new(SinkConfig {
        delivery_timeout: config.delivery_timeout,
        slow_retry: config.slow_retry,
        allow_private: config.allow_private_destinations,
        max_outbound: config.max_outbound,
        max_connections_per_host: config.max_connections_per_host,
        aws_policy: AwsPolicy {
            endpoints: config.allow_aws_endpoints.clone(),
            regions: config.allow_aws_regions.clone(),
            role_arns: config.allow_role_arns.clone(),
        },
        buses: config.bus_policies(),
    })?;
    let dispatcher = Dispatcher::start(
        store.clone(),
        DispatchConfig {
            retry_schedule: config.retry_schedule.clone(),
            disable_after: config.disable_after,
            max_in_flight: config.max_in_flight,
            delivery_timeout: config.delivery_timeout,
            shutdown_grace: Duration::from_secs(5),
            lease_ttl: config.lease_ttl,
            max_page_bytes: config.max_page_bytes,
            metrics: config.metrics.scope(),
        },
        Arc::new(sinks),
        cancel.clone(),
        dispatch_tasks.clone(),
    )
    .await?;
    if let Some(otlp_metrics) = &otlp_metrics {
        // The top subscriptions' series are not in the recorder: read at each export.
        otlp_metrics.observe(
            &Dispatcher::SUBSCRIPTION_FAMILIES,
            dispatcher.subscription_samples(),
        );
    }

    // Retention runs beside dispatch and stops with it.
    dispatch_tasks.spawn(crate::store::run_retention(
        store.db().clone(),
        RetentionPolicy {
            retention: config.retention.0,
            retention_bytes: config.retention_bytes.map(|bytes| bytes as u64),
            topics: catalog.topic_retentions(),
            tombstone_retention: config.tombstone_retention,
            grace: config.retention_grace,
            attempt_retention: config.attempt_retention,
            interval: config.retention_interval,
        },
        cancel.clone(),
    ));

    // Cancelled when the server stops accepting: open event streams end then, so the
    // graceful shutdown does not wait for clients that never hang up.
    let http_cancel = cancel.child_token();
    let state = AppState::new(AppContext {
        stopping: http_cancel.clone(),
        store: store.clone(),
        catalog: Arc::new(catalog),
        dispatcher,
        keys,
        metrics,
        max_subscriptions_per_event: config.max_subscriptions_per_event,
        user_tokens,
        public_url: config.public_url.clone(),
        webhook_origin: config.webhook_origin(),
        job_callback_ttl: config.job_callback_ttl,
        limits: Arc::new(Limits {
            max_request_bytes: config.max_request_bytes,
            body_timeout: config.body_timeout,
            max_event_bytes: config.max_event_bytes,
            max_events_per_request: config.max_events_per_request as usize,
            max_page_bytes: config.max_page_bytes,
            max_job_callbacks_per_account: config.max_job_callbacks_per_account,
            max_subscriptions_per_account: config.max_subscriptions_per_account,
        }),
        publish_rate: config
            .publish_rate_limit
            .map(|rate| Arc::new(PublishRate::new(rate, config.publish_burst))),
        attempt_retention: config.attempt_retention,
    });
    let address = listener.local_addr()?;
    tracing::info!(%address, "reelay listening");
    // Tests and scripts wait for this line to learn the port.
    println!("reelay listening on http://{address}");

    let trigger = cancel.clone();
    tokio::spawn(async move {
        shutdown.await;
        tracing::info!("shutting down");
        trigger.cancel();
    });
    serve_http(listener, http::router(state), &config, http_cancel).await;

    // The HTTP server has stopped accepting; now the workers finish their deliveries (or
    // hand them back), save their progress, and the writer commits it.
    cancel.cancel();
    dispatch_tasks.close();
    dispatch_tasks.wait().await;
    store.close().await?;
    store_tasks.close();
    if let Some(traces) = traces {
        // The exporter's last requests run on this runtime: flush from a thread beside it.
        let _ = tokio::task::spawn_blocking(move || traces.shutdown()).await;
    }
    if let Some(otlp_metrics) = otlp_metrics {
        let _ = tokio::task::spawn_blocking(move || otlp_metrics.shutdown()).await;
    }
    tracing::info!("stopped");
    Ok(())
}

/// Serves the API on `listener` until `stop` is cancelled, then stops accepting and waits
/// for the connections open to finish the requests under way (idle ones are closed).
///
/// HTTP/1.1 only, so that every connection has a header timeout (hyper's HTTP/2 and its
/// version detection have none): a client that has not sent a request's headers within
/// `--header-timeout` (also between two requests of a kept-alive connection) is
/// disconnected. At most `--max-connections` are open at once: one accepted over that is
/// closed at once, unanswered, so that the ones open are not slowed.
async fn serve_http(
    listener: TcpListener,
    app: axum::Router,
    config: &ServeConfig,
    stop: CancellationToken,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new()).http1_only();
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_timeout);
    let open = Arc::new(Semaphore::new(config.max_connections as usize));
    let graceful = GracefulShutdown::new();
    loop {
        let (tcp, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors, or a connection reset before it was
                    // accepted: wait a little rather than spin on the error.
                    tracing::warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = open.clone().try_acquire_owned() else {
            metrics::counter!("reelay_connections_refused_total").increment(1);
            tracing::debug!(%peer, "connection closed: --max-connections are open");
            drop(tcp);
            continue;
        };
        // Answers are small and written whole: send them now, not when Nagle's algorithm
        // thinks the peer has acknowledged enough.
        let _ = tcp.set_nodelay(true);
        let connection = builder
            .serve_connection_with_upgrades(
                TokioIo::new(tcp),
                TowerToHyperService::new(app.clone()),
            )
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, %peer, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// The process-wide Prometheus recorder (the `metrics` crate has one global recorder),
/// beside `otlp` when metrics also go over OTLP. The first call in a process decides.
fn metrics_handle(otlp: Option<OtlpRecorder>) -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(&SECONDS_BUCKETS)
                .and_then(|builder| {
                    COUNT_HISTOGRAMS.iter().try_fold(builder, |builder, name| {
                        builder
                            .set_buckets_for_metric(Matcher::Full((*name).into()), &COUNT_BUCKETS)
                    })
                })
                .map(PrometheusBuilder::build_recorder)
                .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
            let handle = recorder.handle();
            // A process has one recorder: a second install (none today) is a no-op.
            let _installed = match otlp {
                Some(otlp) => metrics::set_global_recorder(
                    FanoutBuilder::default()
                        .add_recorder(recorder)
                        .add_recorder(otlp)
                        .build(),
                )
                .is_ok(),
                None => metrics::set_global_recorder(recorder).is_ok(),
            };
            handle
        })
        .clone()
}
