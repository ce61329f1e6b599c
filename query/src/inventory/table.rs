//! The `containers` table: the store's inventory as one in-memory batch, rebuilt when the
//! inventory changed since the last query (a few milliseconds per 100,000 rows) and shared by
//! every query until then.

use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Builder, MapBuilder, MapFieldNames, StringBuilder, TimestampNanosecondBuilder};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::datasource::TableType;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use parking_lot::Mutex;
use wake_storage::Store;
use wake_storage::inventory::{ContainerRow, InventoryState};
use wake_storage::schema::{attribute_map_type, timestamp_type};

pub const TABLE_NAME: &str = "containers";

pub fn schema() -> SchemaRef {
    let text = |name: &str| Field::new(name, DataType::Utf8, true);
    let time = |name: &str, nullable: bool| Field::new(name, timestamp_type(), nullable);
    Arc::new(Schema::new(vec![
        Field::new("container_id", DataType::Utf8, false),
        time("first_seen", false),
        time("last_seen", false),
        Field::new("status", DataType::Utf8, false),
        Field::new("exit_code", DataType::Int64, true),
        text("reason"),
        Field::new("restarts", DataType::Int64, false),
        text("image_name"),
        text("image_id"),
        text("image_digest"),
        text("workload_kind"),
        text("workload"),
        text("node"),
        text("namespace"),
        text("pod"),
        text("pod_uid"),
        text("container"),
        text("runtime"),
        time("removed_at", true),
        Field::new("labels", attribute_map_type(), false),
    ]))
}

/// The rows as one batch, sorted by `first_seen`.
pub fn to_batch(state: &InventoryState) -> arrow::error::Result<RecordBatch> {
    let mut rows: Vec<&ContainerRow> = state.rows().collect();
    rows.sort_unstable_by(|a, b| (a.first_seen_ns, &a.container_id).cmp(&(b.first_seen_ns, &b.container_id)));
    let strings = |get: fn(&ContainerRow) -> Option<&str>| -> ArrayRef {
        let mut builder = StringBuilder::with_capacity(rows.len(), rows.len() * 16);
        for row in &rows {
            builder.append_option(get(row));
        }
        Arc::new(builder.finish())
    };
    let times = |get: fn(&ContainerRow) -> Option<i64>| -> ArrayRef {
        let mut builder = TimestampNanosecondBuilder::with_capacity(rows.len()).with_timezone("UTC");
        for row in &rows {
            builder.append_option(get(row));
        }
        Arc::new(builder.finish())
    };
    let ints = |get: fn(&ContainerRow) -> Option<i64>| -> ArrayRef {
        let mut builder = Int64Builder::with_capacity(rows.len());
        for row in &rows {
            builder.append_option(get(row));
        }
        Arc::new(builder.finish())
    };
    let names = MapFieldNames { entry: "entries".to_string(), key: "keys".to_string(), value: "values".to_string() };
    let mut labels = MapBuilder::new(Some(names), StringBuilder::new(), StringBuilder::new());
    for row in &rows {
        for (key, value) in &row.labels {
            labels.keys().append_value(key);
            labels.values().append_value(value);
        }
        labels.append(true)?;
    }
    let columns: Vec<ArrayRef> = vec![
        strings(|r| Some(&r.container_id)),
        times(|r| Some(r.first_seen_ns)),
        times(|r| Some(r.last_seen_ns)),
        strings(|r| Some(r.status.as_str())),
        ints(|r| r.exit_code),
        strings(|r| r.reason.as_deref()),
        ints(|r| Some(r.restarts)),
        strings(|r| r.image_name.as_deref()),
        strings(|r| r.image_id.as_deref()),
        strings(|r| r.image_digest.as_deref()),
        strings(|r| r.workload_kind.as_deref()),
        strings(|r| r.workload.as_deref()),
        strings(|r| r.node.as_deref()),
        strings(|r| r.namespace.as_deref()),
        strings(|r| r.pod.as_deref()),
        strings(|r| r.pod_uid.as_deref()),
        strings(|r| r.container.as_deref()),
        strings(|r| r.runtime.as_deref()),
        times(|r| r.removed_at_ns),
        Arc::new(labels.finish()),
    ];
    RecordBatch::try_new(schema(), columns)
}

/// The `containers` table over a store's inventory.
pub struct ContainersTable {
    store: Arc<Store>,
    schema: SchemaRef,
    cached: Mutex<Option<(u64, RecordBatch)>>,
}

impl std::fmt::Debug for ContainersTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContainersTable").finish_non_exhaustive()
    }
}

impl ContainersTable {
    pub fn new(store: Arc<Store>) -> ContainersTable {
        ContainersTable { store, schema: schema(), cached: Mutex::new(None) }
    }

    /// The inventory as a batch, rebuilt only if it changed.
    pub fn batch(&self) -> arrow::error::Result<RecordBatch> {
        let mut cached = self.cached.lock();
        let inventory = self.store.inventory().read();
        if let Some((version, batch)) = cached.as_ref()
            && *version == inventory.version()
        {
            return Ok(batch.clone());
        }
        let batch = to_batch(&inventory)?;
        *cached = Some((inventory.version(), batch.clone()));
        Ok(batch)
    }
}

#[async_trait]
impl TableProvider for ContainersTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(&self, filters: &[&Expr]) -> DfResult<Vec<TableProviderFilterPushDown>> {
        Ok(vec![TableProviderFilterPushDown::Unsupported; filters.len()])
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let batch = self.batch()?;
        Ok(MemorySourceConfig::try_new_exec(&[vec![batch]], self.schema.clone(), projection.cloned())?)
    }
}
