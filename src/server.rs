//! `wake server`: opens the tenants' stores and serves OTLP/gRPC, OTLP/HTTP and the
//! query/admin API until SIGTERM or Ctrl-C, then drains the listeners and flushes the stores.

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
use wake_storage::{OtlpRequest, Store, TenantStores};

use crate::config::ServerConfig;
use crate::tenancy::{Listener, Tenancy};

#[derive(Clone)]
struct AdminState {
    tenancy: Arc<Tenancy>,
}

/// Every tenant's self-metrics: the server's own, and the other tenants' with `tenant=`.
async fn metrics(State(state): State<AdminState>) -> impl IntoResponse {
    let mut body = Vec::new();
    match TextEncoder::new().encode(&state.tenancy.stores.gather(), &mut body) {
        Ok(()) => (StatusCode::OK, [(header::CONTENT_TYPE, TextEncoder::new().format_type().to_string())], body),
        Err(error) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain".to_string())],
            error.to_string().into_bytes(),
        ),
    }
}

async fn ready(State(state): State<AdminState>) -> impl IntoResponse {
    if state.tenancy.stores.default_store().is_shutting_down() {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
    } else {
        (StatusCode::OK, "ready\n")
    }
}

/// A listener's serving task.
type ServerTask = tokio::task::JoinHandle<std::io::Result<()>>;

/// The routes of the query listener that are the server's, not a tenant's; every other path
/// goes to the tenant's routers.
fn server_router(state: AdminState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(state.clone())
        .merge(state.tenancy.dispatch(Listener::Query))
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

/// Reloads every tenant's rule files on SIGHUP, as Prometheus does; a refused file is logged
/// and the previous rules keep running.
async fn reload_on_sighup(tenancy: Arc<Tenancy>, mut stop: watch::Receiver<bool>) {
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
                tenancy.reload_rules().await;
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
    let (store_config, tenants_config) = (config.store.clone(), config.tenants.clone());
    let store_registry = registry.clone();
    let stores = tokio::task::spawn_blocking(move || TenantStores::open(store_config, tenants_config, &store_registry))
        .await
        .context("opening the store")?
        .context("opening the store")?;
    stores.start_background();
    let store = stores.default_store();
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
    let tenancy = Tenancy::new(stores, engine, ruler.clone());
    let with_rules = config
        .tenants
        .overrides
        .iter()
        .filter(|(_, limits)| !(limits.rule_files.is_empty() && limits.loki_rule_files.is_empty()));
    tenancy.start_rulers(with_rules.map(|(tenant, _)| tenant.clone())).await?;
    info!(
        otlp_grpc_addr = %grpc_listener.local_addr()?,
        otlp_http_addr = %http_listener.local_addr()?,
        http_addr = %query_listener.local_addr()?,
        data_dir = %config.store.data_dir.display(),
        tenants = tenancy.stores.list().len(),
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
    let grpc_app = guarded(tenancy.dispatch(Listener::OtlpGrpc));
    let otlp_http_app = guarded(tenancy.dispatch(Listener::OtlpHttp));
    let (grpc, otlp_http): (ServerTask, ServerTask) = match &tls {
        Some(tls) => (
            tokio::spawn(crate::tls::serve(grpc_listener, grpc_app, tls.clone(), stop.clone())),
            tokio::spawn(crate::tls::serve(http_listener, otlp_http_app, tls.clone(), stop.clone())),
        ),
        None => {
            let grpc = tonic::transport::Server::builder()
                .add_routes(tonic::service::Routes::from(grpc_app))
                .serve_with_incoming_shutdown(
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
    let reloads = tokio::spawn(reload_on_sighup(tenancy.clone(), stop.clone()));
    let query_app = guarded(server_router(AdminState { tenancy: tenancy.clone() }));
    let query_http: ServerTask = match &tls {
        Some(tls) => tokio::spawn(crate::tls::serve(query_listener, query_app, tls.clone(), stop.clone())),
        None => tokio::spawn(
            axum::serve(query_listener, query_app).with_graceful_shutdown(stopped(stop.clone())).into_future(),
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
    // Before the stores close: the last evaluations write through them, and the notifiers
    // send what is queued.
    tenancy.shutdown().await.context("flushing the stores at shutdown")?;
    info!("stopped");
    Ok(())
}
