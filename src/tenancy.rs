//! Tenants on every listener: each request is served by its tenant's own routers (its store,
//! query engine and ruler), chosen from the authenticated token's tenant or, without
//! authentication, from `X-Scope-OrgID` (the default tenant when it is absent). Handlers
//! below never see another tenant's store, so no API can return another tenant's data.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use parking_lot::RwLock;
use tower::ServiceExt;
use tracing::info;
use wake_query::QueryEngine;
use wake_query::QueryLimitOverrides;
use wake_query::auth::{Refusal, Tenant, refusal_response};
use wake_query::rules::{RuleSources, Ruler, RulerConfig};
use wake_storage::{DEFAULT_TENANT, Store, TenantStores};

/// The header that names the tenant, as in Loki, Mimir and Tempo.
const TENANT_HEADER: &str = "x-scope-orgid";

/// The listeners whose routes are per tenant.
#[derive(Clone, Copy, Debug)]
pub enum Listener {
    OtlpGrpc,
    OtlpHttp,
    Query,
}

/// One tenant's store, engine, ruler and routers.
pub struct TenantApps {
    pub ruler: Arc<Ruler>,
    otlp_grpc: Router,
    otlp_http: Router,
    query: Router,
}

impl TenantApps {
    /// The routers over `store` and `engine`.
    pub fn new(store: Arc<Store>, engine: Arc<QueryEngine>, ruler: Arc<Ruler>) -> TenantApps {
        let query = wake_query::router(engine)
            .merge(wake_query::rules::router(ruler.clone()))
            .merge(admin_router(store.clone()))
            .merge(wake_storage::receiver::remote_write_router(store.clone()));
        TenantApps {
            otlp_grpc: wake_storage::receiver::grpc_routes(store.clone()).into_axum_router(),
            otlp_http: wake_storage::receiver::http_router(store.clone()),
            query,
            ruler,
        }
    }

    fn router(&self, listener: Listener) -> Router {
        match listener {
            Listener::OtlpGrpc => self.otlp_grpc.clone(),
            Listener::OtlpHttp => self.otlp_http.clone(),
            Listener::Query => self.query.clone(),
        }
    }
}

/// Flushes every buffered row to Parquet now, as Loki's `/flush` does: for benchmarks and
/// before maintenance.
async fn flush(State(store): State<Arc<Store>>) -> impl IntoResponse {
    match store.flush_all().await {
        Ok(()) => (StatusCode::OK, axum::Json(serde_json::json!({ "flushed": true }))),
        Err(error) => (StatusCode::SERVICE_UNAVAILABLE, axum::Json(serde_json::json!({ "error": error.to_string() }))),
    }
}

/// Applies retention and the disk bound now, rather than at the next interval.
async fn retention(State(store): State<Arc<Store>>) -> impl IntoResponse {
    match store.apply_retention().await {
        Ok(outcome) => (
            StatusCode::OK,
            axum::Json(serde_json::json!({ "files": outcome.files, "bytes": outcome.bytes, "rows": outcome.rows })),
        ),
        Err(error) => (StatusCode::SERVICE_UNAVAILABLE, axum::Json(serde_json::json!({ "error": error.to_string() }))),
    }
}

/// The administration of one tenant's store.
fn admin_router(store: Arc<Store>) -> Router {
    Router::new()
        .route("/api/v1/admin/flush", axum::routing::post(flush))
        .route("/api/v1/admin/retention", axum::routing::post(retention))
        .with_state(store)
}

/// Every tenant's apps, the default tenant's built at start-up and the others' at their first
/// request.
pub struct Tenancy {
    pub stores: Arc<TenantStores<QueryLimitOverrides>>,
    /// The default tenant's engine: the others share its threads, memory and queues.
    engine: Arc<QueryEngine>,
    ruler_config: RulerConfig,
    apps: RwLock<HashMap<String, Arc<TenantApps>>>,
    building: tokio::sync::Mutex<()>,
}

impl Tenancy {
    pub fn new(
        stores: Arc<TenantStores<QueryLimitOverrides>>,
        engine: Arc<QueryEngine>,
        ruler: Arc<Ruler>,
    ) -> Arc<Tenancy> {
        let default = TenantApps::new(stores.default_store(), engine.clone(), ruler.clone());
        Arc::new(Tenancy {
            stores,
            engine,
            ruler_config: ruler.config().clone(),
            apps: RwLock::new(HashMap::from([(DEFAULT_TENANT.to_string(), Arc::new(default))])),
            building: tokio::sync::Mutex::new(()),
        })
    }

    /// The tenant's apps, built now if this is its first request.
    pub async fn apps(&self, tenant: &str) -> Result<Arc<TenantApps>, Refusal> {
        if let Some(apps) = self.apps.read().get(tenant) {
            return Ok(apps.clone());
        }
        let _building = self.building.lock().await;
        if let Some(apps) = self.apps.read().get(tenant) {
            return Ok(apps.clone());
        }
        let store = self.stores.get(tenant).await?;
        let unavailable = |what: String| Refusal::TenantUnavailable { message: what, too_many: false };
        let limits = self.stores.limits(tenant).map(|limits| limits.query.clone()).unwrap_or_default();
        let engine = Arc::new(
            self.engine
                .for_tenant(tenant, store.clone(), &limits)
                .map_err(|e| unavailable(format!("the query engine of tenant {tenant:?}: {e}")))?,
        );
        let registry = self.stores.registry(tenant).unwrap_or_default();
        // The server's rule files are the default tenant's; another tenant has those of its
        // overrides, if any.
        let sources = self
            .stores
            .limits(tenant)
            .map(|limits| RuleSources {
                rule_files: limits.rule_files.clone(),
                loki_rule_files: limits.loki_rule_files.clone(),
            })
            .unwrap_or_default();
        let ruler = Ruler::new(
            self.ruler_config.clone(),
            sources,
            Arc::new(wake_query::rules::EngineQuerier::new(engine.clone())),
            Arc::new(wake_query::rules::StoreWriter::new(store.clone())),
            Arc::new(wake_query::prom::select::StoreSource::new(engine.clone())),
            &registry,
        )
        .map_err(|e| unavailable(format!("the ruler of tenant {tenant:?}: {e}")))?;
        ruler.reload().await.map_err(|e| unavailable(format!("the rule files of tenant {tenant:?}: {e}")))?;
        let apps = Arc::new(TenantApps::new(store, engine, ruler));
        self.apps.write().insert(tenant.to_string(), apps.clone());
        info!(tenant, "tenant ready");
        Ok(apps)
    }

    /// Builds now the apps of every tenant whose overrides name rule files, so that their
    /// rules run from the start; a rule file refused stops the server, as the server's own do.
    pub async fn start_rulers(&self, tenants: impl Iterator<Item = String>) -> anyhow::Result<()> {
        for tenant in tenants {
            self.apps(&tenant).await.map_err(|refusal| anyhow::anyhow!("tenant {tenant:?}: {refusal}"))?;
        }
        Ok(())
    }

    /// Reloads every tenant's rule files (SIGHUP).
    pub async fn reload_rules(&self) {
        for apps in self.all() {
            // `reload` logs a refusal itself.
            let _ = apps.ruler.reload().await;
        }
    }

    /// Every tenant's apps built so far.
    pub fn all(&self) -> Vec<Arc<TenantApps>> {
        self.apps.read().values().cloned().collect()
    }

    /// A router that hands each request to its tenant's router of `listener`.
    pub fn dispatch(self: &Arc<Self>, listener: Listener) -> Router {
        Router::new().fallback(forward).with_state((self.clone(), listener))
    }

    /// Stops every tenant's ruler, then flushes and closes every store.
    pub async fn shutdown(&self) -> anyhow::Result<()> {
        for apps in self.all() {
            apps.ruler.stop().await;
        }
        self.stores.shutdown().await?;
        Ok(())
    }
}

/// The tenant of a request: its token's, else its `X-Scope-OrgID`, else the default one.
fn tenant_of(request: &Request) -> String {
    if let Some(Tenant(tenant)) = request.extensions().get::<Tenant>() {
        return tenant.clone();
    }
    request
        .headers()
        .get(TENANT_HEADER)
        .and_then(|value| value.to_str().ok())
        .map(str::trim)
        .filter(|tenant| !tenant.is_empty())
        .unwrap_or(DEFAULT_TENANT)
        .to_string()
}

async fn forward(State((tenancy, listener)): State<(Arc<Tenancy>, Listener)>, request: Request) -> Response {
    let tenant = tenant_of(&request);
    match tenancy.apps(&tenant).await {
        Ok(apps) => match apps.router(listener).oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        },
        Err(refusal) => {
            tracing::debug!(tenant, %refusal, "tenant refused");
            refusal_response(request.uri().path(), request.headers(), &refusal)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tenant_comes_from_the_token_then_the_header() {
        let request = |header: Option<&str>, token: Option<&str>| {
            let mut builder = Request::builder().uri("/api/v1/sql");
            if let Some(header) = header {
                builder = builder.header(TENANT_HEADER, header);
            }
            let mut request = builder.body(axum::body::Body::empty()).unwrap();
            if let Some(token) = token {
                request.extensions_mut().insert(Tenant(token.to_string()));
            }
            request
        };
        assert_eq!(tenant_of(&request(None, None)), DEFAULT_TENANT);
        assert_eq!(tenant_of(&request(Some(" team-a "), None)), "team-a");
        assert_eq!(tenant_of(&request(Some(""), None)), DEFAULT_TENANT);
        assert_eq!(tenant_of(&request(Some("team-a"), Some("team-b"))), "team-b");
    }
}
