//! `wake server`: opens the store and serves OTLP/gRPC, OTLP/HTTP and the query/admin API
//! until SIGTERM or Ctrl-C, then drains the listeners and flushes the store.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus::{Encoder, Registry, TextEncoder};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{debug, error, info, warn};
use wake_collector::time::now_unix_nano;
use wake_query::QueryEngine;
use wake_query::rules::{RuleSources, Ruler};
use wake_storage::{OtlpRequest, Store};

use crate::config::ServerConfig;

#[derive(Clone)]
struct AdminState {
    registry: Registry,
    store: Arc<Store>,
}

async fn metrics(State(state): State<AdminState>) -> impl IntoResponse {
    let mut body = Vec::new();
    match TextEncoder::new().encode(&state.registry.gather(), &mut body) {
        Ok(()) => (StatusCode::OK, [(header::CONTENT_TYPE, TextEncoder::new().format_type().to_string())], body),
        Err(error) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain".to_string())],
            error.to_string().into_bytes(),
        ),
    }
}

async fn ready(State(state): State<AdminState>) -> impl IntoResponse {
    if state.store.is_shutting_down() {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
    } else {
        (StatusCode::OK, "ready\n")
    }
}

/// A listener's serving task.
type ServerTask = tokio::task::JoinHandle<std::io::Result<()>>;

/// Flushes every buffered row to Parquet now, as Loki's `/flush` does: for benchmarks and
/// before maintenance.
async fn flush(State(state): State<AdminState>) -> impl IntoResponse {
    match state.store.flush_all().await {
        Ok(()) => (StatusCode::OK, axum::Json(serde_json::json!({ "flushed": true }))),
        Err(error) => (StatusCode::SERVICE_UNAVAILABLE, axum::Json(serde_json::json!({ "error": error.to_string() }))),
    }
}

/// Applies retention and the disk bound now, rather than at the next interval.
async fn retention(State(state): State<AdminState>) -> impl IntoResponse {
    match state.store.apply_retention().await {
        Ok(outcome) => (
            StatusCode::OK,
            axum::Json(serde_json::json!({ "files": outcome.files, "bytes": outcome.bytes, "rows": outcome.rows })),
        ),
        Err(error) => (StatusCode::SERVICE_UNAVAILABLE, axum::Json(serde_json::json!({ "error": error.to_string() }))),
    }
}

fn admin_router(state: AdminState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/api/v1/admin/flush", axum::routing::post(flush))
        .route("/api/v1/admin/retention", axum::routing::post(retention))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(state)
}

/// Stores the server's own metrics (the registry behind `/metrics`) in the store every
/// `interval`, under `service.name=wake-server` (`job="wake-server"` in PromQL), so that a
/// dashboard of the pipeline needs no Prometheus. Ends when `stop` turns true.
async fn store_self_metrics(
    store: Arc<Store>,
    registry: Registry,
    interval: Duration,
    start_ns: u64,
    mut stop: watch::Receiver<bool>,
) {
    let mut resource = vec![wake_collector::identity::string_attribute("service.name", "wake-server")];
    if let Some(host) = wake_collector::self_metrics::host_name() {
        resource.push(wake_collector::identity::string_attribute("service.instance.id", &host));
    }
    // The first snapshot one interval after the start, not at once: a store that was only
    // started (or a short-lived one) does not fill up with all-zero series.
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut failing = false;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.wait_for(|stopped| *stopped) => return,
        }
        let request = wake_collector::registry_to_otlp(&registry, resource.clone(), now_unix_nano(), start_ns);
        if request.resource_metrics.is_empty() {
            continue;
        }
        // Refused (back-pressure, a full disk, shutdown): this snapshot is dropped, the next
        // one carries the same cumulative values anyway.
        match store.ingest(OtlpRequest::Metrics(request), None).await {
            Ok(_) => failing = false,
            Err(error) if failing => debug!(%error, "storing the server's own metrics failed again"),
            Err(error) => {
                failing = true;
                warn!(%error, "storing the server's own metrics failed; dropping them");
            }
        }
    }
}

/// Creates the ruler over the engine and the store and loads the rule files: a file refused
/// at start-up stops the server, as a bad configuration does.
async fn start_ruler(
    config: &ServerConfig,
    engine: &Arc<QueryEngine>,
    store: &Arc<Store>,
    registry: &Registry,
    query_addr: SocketAddr,
) -> anyhow::Result<Arc<Ruler>> {
    let mut ruler_config = config.ruler.clone();
    if ruler_config.external_url.is_none() {
        let host = wake_collector::self_metrics::host_name().unwrap_or_else(|| query_addr.ip().to_string());
        ruler_config.external_url = Some(format!("http://{host}:{}", query_addr.port()));
    }
    let sources =
        RuleSources { rule_files: config.rule_files.clone(), loki_rule_files: config.loki_rule_files.clone() };
    let querier = Arc::new(wake_query::rules::EngineQuerier::new(engine.clone()));
    let restore_source = Arc::new(wake_query::prom::select::StoreSource::new(engine.clone()));
    let writer = Arc::new(wake_query::rules::StoreWriter::new(store.clone()));
    let ruler =
        Ruler::new(ruler_config, sources, querier, writer, restore_source, registry).context("starting the ruler")?;
    ruler.reload().await.context("loading the rule files")?;
    Ok(ruler)
}

/// Reloads the rule files on SIGHUP, as Prometheus does; a refused file is logged and the
/// previous rules keep running.
async fn reload_on_sighup(ruler: Arc<Ruler>, mut stop: watch::Receiver<bool>) {
    let mut hangups = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(signal) => signal,
        Err(error) => {
            warn!(%error, "cannot listen for SIGHUP; reload rules with POST /-/reload");
            return;
        }
    };
    loop {
        tokio::select! {
            received = hangups.recv() => {
                if received.is_none() {
                    return;
                }
                info!("SIGHUP received, reloading the rule files");
                // `reload` logs a refusal itself.
                let _ = ruler.reload().await;
            }
            // Only ever set to true: any change is the stop.
            _ = stop.changed() => return,
        }
    }
}

async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| format!("binding the {what} listener to {addr}"))
}

pub async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = terminate => info!("SIGTERM received, shutting down"),
        _ = tokio::signal::ctrl_c() => info!("interrupt received, shutting down"),
    }
}

pub async fn run(config: ServerConfig) -> anyhow::Result<()> {
    let start_ns = now_unix_nano();
    let registry = Registry::new();
    let store_config = config.store.clone();
    let store_registry = registry.clone();
    let store = tokio::task::spawn_blocking(move || Store::open(store_config, &store_registry))
        .await
        .context("opening the store")?
        .context("opening the store")?;
    let background = store.start_background();
    let engine = Arc::new(
        QueryEngine::with_config(store.clone(), config.query.clone(), &registry)
            .context("starting the query engine")?,
    );

    let grpc_listener = bind(config.otlp_grpc_addr, "OTLP/gRPC").await?;
    let http_listener = bind(config.otlp_http_addr, "OTLP/HTTP").await?;
    let query_listener = bind(config.http_addr, "query HTTP").await?;
    // Before `listening`: a rule file refused at start-up stops the server before any client
    // is told it is up.
    let ruler = start_ruler(&config, &engine, &store, &registry, query_listener.local_addr()?).await?;
    info!(
        otlp_grpc_addr = %grpc_listener.local_addr()?,
        otlp_http_addr = %http_listener.local_addr()?,
        http_addr = %query_listener.local_addr()?,
        data_dir = %config.store.data_dir.display(),
        "listening"
    );

    let (stop_sender, stop) = watch::channel(false);
    let stopped = |mut stop: watch::Receiver<bool>| async move {
        let _ = stop.wait_for(|stopped| *stopped).await;
    };

    let auth = wake_query::auth::Authenticator::new(config.auth.clone())
        .map_err(|message| anyhow::anyhow!("auth: {message}"))?;
    let _token_reloads = auth.as_ref().and_then(|auth| auth.watch(Duration::from_secs(2)));
    let guarded = |router: Router| match &auth {
        Some(auth) => router.layer(axum::middleware::from_fn_with_state(auth.clone(), wake_query::auth::layer)),
        None => router,
    };
    let tls = crate::tls::server_config(&config.tls)?;
    let grpc_routes = wake_storage::receiver::grpc_routes(store.clone());
    let otlp_http_app = guarded(wake_storage::receiver::http_router(store.clone()));
    let (grpc, otlp_http): (ServerTask, ServerTask) = match &tls {
        Some(tls) => (
            tokio::spawn(crate::tls::serve(
                grpc_listener,
                guarded(grpc_routes.into_axum_router()),
                tls.clone(),
                stop.clone(),
            )),
            tokio::spawn(crate::tls::serve(http_listener, otlp_http_app, tls.clone(), stop.clone())),
        ),
        None => {
            let grpc_routes = match &auth {
                Some(_) => tonic::service::Routes::from(guarded(grpc_routes.into_axum_router())),
                None => grpc_routes,
            };
            let grpc = tonic::transport::Server::builder().add_routes(grpc_routes).serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(grpc_listener),
                stopped(stop.clone()),
            );
            let otlp_http = axum::serve(http_listener, otlp_http_app).with_graceful_shutdown(stopped(stop.clone()));
            (
                tokio::spawn(async move { grpc.await.map_err(std::io::Error::other) }),
                tokio::spawn(otlp_http.into_future()),
            )
        }
    };
    let self_metrics = (!config.self_metrics_interval.is_zero()).then(|| {
        tokio::spawn(store_self_metrics(
            store.clone(),
            registry.clone(),
            config.self_metrics_interval,
            start_ns,
            stop.clone(),
        ))
    });
    let reloads = tokio::spawn(reload_on_sighup(ruler.clone(), stop.clone()));
    let query_app = wake_query::router(engine)
        .merge(wake_query::rules::router(ruler.clone()))
        .merge(admin_router(AdminState { registry, store: store.clone() }))
        .merge(wake_storage::receiver::remote_write_router(store.clone()));
    let query_http: ServerTask = match &tls {
        Some(tls) => tokio::spawn(crate::tls::serve(query_listener, guarded(query_app), tls.clone(), stop.clone())),
        None => tokio::spawn(
            axum::serve(query_listener, guarded(query_app)).with_graceful_shutdown(stopped(stop.clone())).into_future(),
        ),
    };
    shutdown_signal().await;
    let _ = stop_sender.send(true);

    let (grpc, otlp_http, query_http) = tokio::join!(grpc, otlp_http, query_http);
    grpc.context("OTLP/gRPC server task")?.context("OTLP/gRPC server")?;
    otlp_http.context("OTLP/HTTP server task")?.context("OTLP/HTTP server")?;
    query_http.context("query server task")?.context("query server")?;
    if let Some(self_metrics) = self_metrics {
        self_metrics.await.context("self-metrics task")?;
    }
    reloads.abort();
    // Before the store closes: the last evaluations write through it, and the notifier sends
    // what is queued.
    ruler.stop().await;

    store.shutdown().await.context("flushing the store at shutdown")?;
    background.abort();
    info!("stopped");
    Ok(())
}
