//! Tenants: each one's data in a store of its own, so that no query of one can reach
//! another's rows, and so that each has its own retention, disk share and ingestion rate.
//!
//! Layout: the default tenant's store is the data dir itself, so that data written before
//! tenants existed belongs to it without a rewrite; every other tenant's store is
//! `<data_dir>/tenants/<tenant>/`, a complete store (WAL, manifest, Parquet, indexes,
//! inventory), as Mimir's ingesters keep one TSDB per tenant. A tenant's store is opened the
//! first time a request names it, and at start-up when its directory exists (so that its WAL
//! is replayed and its retention runs). At most `max_tenants` exist: without authentication
//! any client chooses its tenant, and each store costs a WAL thread and buffers.
//!
//! Self-metrics: the default tenant's store registers on the server's registry as before;
//! every other tenant's on a registry of its own whose series carry `tenant="<name>"`, and
//! [`TenantStores::gather`] merges them for `/metrics`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::RwLock;
use prometheus::Registry;
use prometheus::proto::MetricFamily;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::config::StoreConfig;
use crate::error::{Error, Result};
use crate::retention::RetentionConfig;
use crate::store::Store;

/// The tenant of requests that name none and of tokens bound to none, and of all data written
/// before tenants existed (Mimir's name for it; Loki without `auth_enabled` calls it `fake`).
pub const DEFAULT_TENANT: &str = "anonymous";

/// The directory under the data dir that holds the other tenants' stores.
pub const TENANTS_DIR: &str = "tenants";

/// Longest tenant name, as in Mimir and Loki.
pub const MAX_TENANT_BYTES: usize = 150;

/// `tenants:` in the config file. `Q` is the per-tenant query limits, which the query side
/// defines; the store only carries them.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default, bound(deserialize = "Q: Deserialize<'de> + Default"))]
pub struct TenantsConfig<Q = NoQueryLimits> {
    /// Tenants a data dir may hold, the default one included.
    pub max_tenants: usize,
    /// A tenant's weight in `store.retention.max_disk_bytes` unless it has its own.
    pub default_disk_share: f64,
    /// Limits of named tenants; the others have the store's and the query engine's.
    pub overrides: BTreeMap<String, TenantLimits<Q>>,
}

impl<Q> Default for TenantsConfig<Q> {
    fn default() -> Self {
        TenantsConfig { max_tenants: 100, default_disk_share: 1.0, overrides: BTreeMap::new() }
    }
}

/// One tenant's limits; each one unset is the server's.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default, bound(deserialize = "Q: Deserialize<'de> + Default"))]
pub struct TenantLimits<Q = NoQueryLimits> {
    /// Replaces `store.retention` for this tenant (its own `max_disk_bytes` too, if set).
    pub retention: Option<RetentionConfig>,
    /// This tenant's `ingestion_rate_bytes` and `ingestion_burst_bytes`.
    pub ingestion_rate_bytes: Option<u64>,
    pub ingestion_burst_bytes: Option<u64>,
    /// This tenant's weight in the disk bound: with shares 2 and 1, the first keeps up to two
    /// thirds of `max_disk_bytes` and the second one third, whatever either writes.
    pub disk_share: Option<f64>,
    /// The query limits of this tenant.
    pub query: Q,
    /// Globs of this tenant's Prometheus rule files (as the server's `rule_files:`), evaluated
    /// over its data alone; its store opens at start-up so that they run without a request.
    pub rule_files: Vec<String>,
    /// Globs of this tenant's Loki rule files (as `loki_rule_files:`).
    pub loki_rule_files: Vec<String>,
}

/// The query limits where no query engine defines them (the store's own tests).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoQueryLimits {}

impl<Q> TenantsConfig<Q> {
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.max_tenants == 0 {
            return Err("max_tenants must be at least 1".into());
        }
        let share_ok = |share: f64| share.is_finite() && share > 0.0;
        if !share_ok(self.default_disk_share) {
            return Err(format!("default_disk_share must be a positive number, got {}", self.default_disk_share));
        }
        for (tenant, limits) in &self.overrides {
            validate_tenant(tenant).map_err(|e| format!("overrides: {e}"))?;
            if let Some(share) = limits.disk_share
                && !share_ok(share)
            {
                return Err(format!("overrides.{tenant}.disk_share must be a positive number, got {share}"));
            }
            if let Some(retention) = &limits.retention {
                retention.validate().map_err(|e| format!("overrides.{tenant}.retention: {e}"))?;
            }
        }
        Ok(())
    }
}

/// Checks a tenant name as Mimir does: 1 to 150 bytes of letters, digits and `!-_.*'()`, and
/// neither `.` nor `..` (it names a directory).
pub fn validate_tenant(tenant: &str) -> std::result::Result<(), String> {
    if tenant.is_empty() || tenant.len() > MAX_TENANT_BYTES {
        return Err(format!("a tenant name has 1 to {MAX_TENANT_BYTES} bytes, {:?} has {}", tenant, tenant.len()));
    }
    if tenant == "." || tenant == ".." {
        return Err(format!("{tenant:?} is not a tenant name"));
    }
    if let Some(bad) = tenant.chars().find(|c| !(c.is_ascii_alphanumeric() || "!-_.*'()".contains(*c))) {
        return Err(format!(
            "tenant {tenant:?}: {bad:?} is not allowed (letters, digits and !-_.*'() are; a `|` of several tenants is not supported)"
        ));
    }
    Ok(())
}

/// Where a tenant's store lives.
pub fn tenant_dir(data_dir: &Path, tenant: &str) -> PathBuf {
    if tenant == DEFAULT_TENANT { data_dir.to_path_buf() } else { data_dir.join(TENANTS_DIR).join(tenant) }
}

/// The tenants whose stores exist under `data_dir`, the default one first.
pub fn existing_tenants(data_dir: &Path) -> Vec<String> {
    let mut tenants = vec![DEFAULT_TENANT.to_string()];
    let Ok(entries) = std::fs::read_dir(data_dir.join(TENANTS_DIR)) else { return tenants };
    let mut found: Vec<String> = entries
        .flatten()
        .filter(|entry| entry.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|entry| entry.file_name().to_str().map(str::to_string))
        .filter(|name| name != DEFAULT_TENANT && validate_tenant(name).is_ok())
        .collect();
    found.sort();
    tenants.extend(found);
    tenants
}

/// Why a tenant's store cannot be had.
#[derive(Debug, thiserror::Error)]
pub enum TenantError {
    #[error("{0}")]
    InvalidName(String),
    #[error("tenant {tenant:?} would be one more than the {max} tenants allowed (tenants.max_tenants)")]
    TooManyTenants { tenant: String, max: usize },
    #[error("opening the store of tenant {tenant:?}: {source}")]
    Open { tenant: String, source: Error },
}

struct OpenTenant {
    store: Arc<Store>,
    registry: Registry,
    background: Option<tokio::task::JoinHandle<()>>,
}

/// The registry of a tenant's self-metrics: the server's for the default tenant, else one whose
/// series carry `tenant="<name>"`.
fn tenant_registry(server: &Registry, tenant: &str) -> Result<Registry> {
    if tenant == DEFAULT_TENANT {
        return Ok(server.clone());
    }
    Registry::new_custom(None, Some(HashMap::from([("tenant".to_string(), tenant.to_string())])))
        .map_err(|e| Error::Internal(format!("a registry for tenant {tenant:?}: {e}")))
}

/// Opens one tenant's store (blocking: it replays the WAL).
fn open_tenant(config: StoreConfig, tenant: &str, registry: Registry) -> Result<OpenTenant> {
    let store = Store::open(config, &registry)?;
    info!(tenant, data_dir = %store.data_dir().display(), "tenant store opened");
    Ok(OpenTenant { store, registry, background: None })
}

/// The stores of all tenants of one data dir.
pub struct TenantStores<Q = NoQueryLimits> {
    base: StoreConfig,
    config: TenantsConfig<Q>,
    registry: Registry,
    open: RwLock<BTreeMap<String, OpenTenant>>,
    /// Opening a store takes its directory's lock and replays its WAL: one at a time, so that
    /// two first requests of one tenant do not both try.
    opening: tokio::sync::Mutex<()>,
}

impl<Q: Clone + Send + Sync + 'static> TenantStores<Q> {
    /// Opens the default tenant's store and every tenant store found in the data dir (blocking:
    /// each replays its WAL). Call [`TenantStores::start_background`] in a runtime afterwards.
    pub fn open(base: StoreConfig, config: TenantsConfig<Q>, registry: &Registry) -> Result<Arc<Self>> {
        base.validate()?;
        config.validate().map_err(|e| Error::Config(format!("tenants: {e}")))?;
        let data_dir = std::path::absolute(&base.data_dir).map_err(|e| Error::io(&base.data_dir, e))?;
        let base = StoreConfig { data_dir, ..base };
        let stores = TenantStores {
            base,
            config,
            registry: registry.clone(),
            open: RwLock::new(BTreeMap::new()),
            opening: tokio::sync::Mutex::new(()),
        };
        for tenant in stores.config.overrides.keys() {
            stores
                .store_config(tenant)
                .validate()
                .map_err(|e| Error::Config(format!("tenants.overrides.{tenant}: {e}")))?;
        }
        let existing = existing_tenants(&stores.base.data_dir);
        if existing.len() > stores.config.max_tenants {
            warn!(
                tenants = existing.len(),
                max_tenants = stores.config.max_tenants,
                "the data dir holds more tenants than max_tenants; opening them all"
            );
        }
        for tenant in existing {
            let opened = open_tenant(stores.store_config(&tenant), &tenant, tenant_registry(registry, &tenant)?)?;
            stores.open.write().insert(tenant, opened);
        }
        stores.share_disk_bound();
        Ok(Arc::new(stores))
    }

    /// The store configuration of `tenant`: the server's, with the tenant's overrides.
    pub fn store_config(&self, tenant: &str) -> StoreConfig {
        let mut config = self.base.clone();
        config.data_dir = tenant_dir(&self.base.data_dir, tenant);
        if let Some(limits) = self.config.overrides.get(tenant) {
            if let Some(retention) = &limits.retention {
                config.retention = retention.clone();
            }
            if let Some(rate) = limits.ingestion_rate_bytes {
                config.ingestion_rate_bytes = rate;
            }
            if let Some(burst) = limits.ingestion_burst_bytes {
                config.ingestion_burst_bytes = burst;
            }
        }
        config
    }

    /// The tenant's limits as configured, if any.
    pub fn limits(&self, tenant: &str) -> Option<&TenantLimits<Q>> {
        self.config.overrides.get(tenant)
    }

    /// Each tenant's part of `max_disk_bytes`, in proportion to its share among the open
    /// tenants; a tenant whose own retention sets `max_disk_bytes` keeps that.
    fn share_disk_bound(&self) {
        let total = self.base.retention.max_disk_bytes;
        let open = self.open.read();
        let share = |tenant: &str| {
            self.config.overrides.get(tenant).and_then(|l| l.disk_share).unwrap_or(self.config.default_disk_share)
        };
        let own = |tenant: &str| {
            self.config.overrides.get(tenant).and_then(|l| l.retention.as_ref()).map(|r| r.max_disk_bytes)
        };
        let sharing: Vec<&String> = open.keys().filter(|tenant| own(tenant).is_none_or(|b| b == 0)).collect();
        let shares: f64 = sharing.iter().map(|tenant| share(tenant)).sum();
        for (tenant, opened) in open.iter() {
            let bound = match own(tenant) {
                Some(bytes) if bytes > 0 => bytes,
                _ if total == 0 => 0,
                _ => ((total as f64) * share(tenant) / shares.max(f64::MIN_POSITIVE)).max(1.0) as u64,
            };
            opened.store.set_disk_bound(bound);
        }
    }

    /// Starts the flush, compaction and retention loops of the stores opened so far.
    pub fn start_background(&self) {
        for opened in self.open.write().values_mut() {
            if opened.background.is_none() {
                opened.background = Some(opened.store.start_background());
            }
        }
    }

    /// The default tenant's store.
    pub fn default_store(&self) -> Arc<Store> {
        match self.open.read().get(DEFAULT_TENANT) {
            Some(opened) => opened.store.clone(),
            None => unreachable!("the default tenant's store is opened with the others"),
        }
    }

    /// The tenant's store, opened now if this is its first request.
    pub async fn get(&self, tenant: &str) -> std::result::Result<Arc<Store>, TenantError> {
        if let Some(opened) = self.open.read().get(tenant) {
            return Ok(opened.store.clone());
        }
        validate_tenant(tenant).map_err(TenantError::InvalidName)?;
        let _opening = self.opening.lock().await;
        if let Some(opened) = self.open.read().get(tenant) {
            return Ok(opened.store.clone());
        }
        if self.open.read().len() >= self.config.max_tenants {
            return Err(TenantError::TooManyTenants { tenant: tenant.to_string(), max: self.config.max_tenants });
        }
        let open_error = |source| TenantError::Open { tenant: tenant.to_string(), source };
        let registry = tenant_registry(&self.registry, tenant).map_err(open_error)?;
        let (config, name) = (self.store_config(tenant), tenant.to_string());
        let OpenTenant { store, registry, .. } =
            tokio::task::spawn_blocking(move || open_tenant(config, &name, registry))
                .await
                .map_err(|e| open_error(Error::Internal(format!("opening task failed: {e}"))))?
                .map_err(open_error)?;
        let background = Some(store.start_background());
        self.open.write().insert(tenant.to_string(), OpenTenant { store: store.clone(), registry, background });
        self.share_disk_bound();
        Ok(store)
    }

    /// The open tenants and their stores, the default one first.
    pub fn list(&self) -> Vec<(String, Arc<Store>)> {
        let open = self.open.read();
        let mut list: Vec<(String, Arc<Store>)> =
            open.iter().map(|(tenant, opened)| (tenant.clone(), opened.store.clone())).collect();
        list.sort_by_key(|(tenant, _)| tenant != DEFAULT_TENANT);
        list
    }

    /// The registry a tenant's other components (its query engine, its ruler) register on.
    pub fn registry(&self, tenant: &str) -> Option<Registry> {
        self.open.read().get(tenant).map(|opened| opened.registry.clone())
    }

    /// The metric families of the server's registry and every tenant's, merged by name.
    pub fn gather(&self) -> Vec<MetricFamily> {
        let mut families: BTreeMap<String, MetricFamily> = BTreeMap::new();
        let registries: Vec<Registry> = std::iter::once(self.registry.clone())
            .chain(
                self.open
                    .read()
                    .iter()
                    .filter(|(tenant, _)| tenant.as_str() != DEFAULT_TENANT)
                    .map(|(_, opened)| opened.registry.clone()),
            )
            .collect();
        for registry in registries {
            for family in registry.gather() {
                match families.get_mut(family.name()) {
                    Some(known) => known.mut_metric().extend(family.get_metric().iter().cloned()),
                    None => {
                        families.insert(family.name().to_string(), family);
                    }
                }
            }
        }
        families.into_values().collect()
    }

    /// Flushes and closes every tenant's store.
    pub async fn shutdown(&self) -> Result<()> {
        let mut first_error = None;
        for (tenant, store) in self.list() {
            if let Err(error) = store.shutdown().await {
                warn!(tenant, %error, "flushing a tenant's store at shutdown failed");
                first_error.get_or_insert(error);
            }
        }
        let loops: Vec<tokio::task::JoinHandle<()>> =
            self.open.write().values_mut().filter_map(|opened| opened.background.take()).collect();
        for background in loops {
            background.abort();
            // Until the task is gone it holds its store, and with it the data dir's lock.
            let _ = background.await;
        }
        first_error.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path) -> StoreConfig {
        StoreConfig { data_dir: dir.to_path_buf(), ..StoreConfig::default() }
    }

    #[test]
    fn tenant_names_follow_mimir() {
        for good in ["team-a", "a", "A_1.b", "x!*'()", &"t".repeat(150)] {
            assert!(validate_tenant(good).is_ok(), "{good}");
        }
        for bad in ["", ".", "..", "a/b", "a|b", "a b", "ü", &"t".repeat(151), "../etc"] {
            assert!(validate_tenant(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_default_tenant_is_the_data_dir_itself() {
        let dir = Path::new("/data");
        assert_eq!(tenant_dir(dir, DEFAULT_TENANT), dir);
        assert_eq!(tenant_dir(dir, "team-a"), dir.join("tenants/team-a"));
    }

    #[tokio::test]
    async fn tenants_get_stores_of_their_own_up_to_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        let tenants_config = TenantsConfig::<NoQueryLimits> { max_tenants: 2, ..TenantsConfig::default() };
        let stores = TenantStores::open(config(dir.path()), tenants_config.clone(), &Registry::new()).unwrap();
        stores.start_background();
        let a = stores.get("team-a").await.unwrap();
        assert_eq!(a.data_dir(), dir.path().join("tenants/team-a"));
        assert!(Arc::ptr_eq(&a, &stores.get("team-a").await.unwrap()));
        assert!(matches!(stores.get("team-b").await, Err(TenantError::TooManyTenants { .. })));
        assert!(matches!(stores.get("a/b").await, Err(TenantError::InvalidName(_))));
        assert!(Arc::ptr_eq(&stores.default_store(), &stores.get(DEFAULT_TENANT).await.unwrap()));
        stores.shutdown().await.unwrap();
        drop((a, stores));

        // Found again at the next start.
        let reopened = TenantStores::open(config(dir.path()), tenants_config, &Registry::new()).unwrap();
        let names: Vec<String> = reopened.list().into_iter().map(|(tenant, _)| tenant).collect();
        assert_eq!(names, [DEFAULT_TENANT, "team-a"]);
    }

    #[tokio::test]
    async fn the_disk_bound_is_shared_by_weight() {
        let dir = tempfile::tempdir().unwrap();
        let mut base = config(dir.path());
        base.retention.max_disk_bytes = 3_000_000;
        let mut tenants_config = TenantsConfig::<NoQueryLimits>::default();
        tenants_config.overrides.insert("big".into(), TenantLimits { disk_share: Some(2.0), ..Default::default() });
        let stores = TenantStores::open(base, tenants_config, &Registry::new()).unwrap();
        assert_eq!(stores.default_store().disk_bound(), 3_000_000, "alone, the default tenant has it all");
        let big = stores.get("big").await.unwrap();
        assert_eq!((stores.default_store().disk_bound(), big.disk_bound()), (1_000_000, 2_000_000));
        stores.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn metrics_of_tenants_carry_their_name_and_merge_with_the_servers() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::new();
        let stores =
            TenantStores::open(config(dir.path()), TenantsConfig::<NoQueryLimits>::default(), &registry).unwrap();
        stores.get("team-a").await.unwrap();
        let families = stores.gather();
        let files = families.iter().find(|f| f.name() == "wake_server_files").expect("wake_server_files");
        let tenants: Vec<Option<&str>> = files
            .get_metric()
            .iter()
            .map(|m| m.get_label().iter().find(|l| l.name() == "tenant").map(|l| l.value()))
            .collect();
        assert!(tenants.contains(&None) && tenants.contains(&Some("team-a")), "{tenants:?}");
        assert_eq!(families.iter().filter(|f| f.name() == "wake_server_files").count(), 1);
        stores.shutdown().await.unwrap();
    }
}
