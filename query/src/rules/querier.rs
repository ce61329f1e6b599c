//! How rules reach the data in a running server: [`EngineQuerier`] answers a rule's instant
//! query in its language over the query engine, within the engine's limits and admission
//! queues; [`StoreWriter`] stores what rules produce through the store's ingest API, as a
//! Prometheus remote write would (the ruler is a client of the store, not a back door).
//!
//! Expression checks at load ([`check_expression`]) parse without an engine, so that
//! `wake rules check` needs no store.

use std::sync::Arc;
use std::time::Instant;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, Float64Type};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::Parser;

use super::file::Lang;
use super::group::{RuleQuerier, SampleWriter};
use crate::QueryEngine;
use crate::limits::Api;
use crate::loki::eval as loki;
use crate::prom::eval::{self as prom, EvalLimits, QueryValue, SeriesSource};
use crate::prom::naming::Labels;
use crate::prom::select::StoreSource;

/// Deepest expression accepted at load, the query engine's default `max_query_depth`.
const LOAD_MAX_DEPTH: usize = 256;

/// Checks that `expr` parses in `lang` (and, for SQL, is one statement).
pub fn check_expression(lang: Lang, expr: &str) -> Result<(), String> {
    match lang {
        // Only the syntax, as Prometheus' rulefmt: an expression of another type than vector
        // or scalar fails its evaluations ("rule result is not a vector or scalar").
        Lang::Promql => prom::parse_limited(expr, LOAD_MAX_DEPTH).map(|_| ()).map_err(|e| prom_message(&e)),
        Lang::Logql => match loki::parse(expr, LOAD_MAX_DEPTH).map_err(|e| e.to_string())? {
            loki::Parsed::Metric(_) => Ok(()),
            loki::Parsed::Log(_) => Err("a rule needs a metric query, not a log query".into()),
        },
        Lang::Sql => {
            let statements = Parser::parse_sql(&GenericDialect {}, expr).map_err(|e| e.to_string())?;
            match statements.as_slice() {
                [datafusion::sql::sqlparser::ast::Statement::Query(_)] => Ok(()),
                [_] => Err("an SQL rule must be one SELECT query".into()),
                _ => Err(format!("an SQL rule must be one statement, not {}", statements.len())),
            }
        }
    }
}

/// `invalid parameter "query": ` is the HTTP API's wording, not a rule file's.
fn prom_message(error: &prom::PromError) -> String {
    let text = error.to_string();
    text.strip_prefix("invalid parameter \"query\": ").map(str::to_string).unwrap_or(text)
}

/// A PromQL instant query as Prometheus' rule query function answers it: a vector, or a
/// scalar as one sample without labels.
pub async fn promql_instant(
    source: &dyn SeriesSource,
    expr: &str,
    ts_ms: i64,
    limits: EvalLimits,
) -> Result<Vec<(Labels, f64)>, String> {
    let parsed = prom::parse(expr).map_err(|e| prom_message(&e))?;
    match prom::instant_query(source, &parsed, ts_ms, limits).await.map_err(|e| prom_message(&e))? {
        QueryValue::Vector(samples) => Ok(samples.into_iter().map(|(labels, _, value)| (labels, value)).collect()),
        QueryValue::Scalar(_, value) => Ok(vec![(Labels::new(), value)]),
        QueryValue::String(..) | QueryValue::Matrix(_) => Err("rule result is not a vector or scalar".into()),
    }
}

/// Rule queries over the query engine.
pub struct EngineQuerier {
    engine: Arc<QueryEngine>,
    source: Arc<StoreSource>,
    /// Rule queries in the engine's `rules` gate at once: no more than the gate runs, so that
    /// however many groups are due, a rule waits here for its turn instead of being refused
    /// by a full queue (a late evaluation is a missed slot, counted; a refused one a failure).
    turns: Arc<tokio::sync::Semaphore>,
}

impl EngineQuerier {
    pub fn new(engine: Arc<QueryEngine>) -> EngineQuerier {
        let turns = Arc::new(tokio::sync::Semaphore::new(engine.config().max_concurrent_queries.max(1)));
        EngineQuerier { source: Arc::new(StoreSource::new(engine.clone())), engine, turns }
    }

    async fn run(&self, lang: Lang, expr: &str, ts_ms: i64) -> Result<Vec<(Labels, f64)>, String> {
        let config = self.engine.config();
        match lang {
            Lang::Promql => {
                let limits = EvalLimits {
                    deadline: Instant::now().checked_add(config.timeout()),
                    max_samples: config.max_samples,
                    max_series: config.max_series,
                };
                promql_instant(self.source.as_ref(), expr, ts_ms, limits).await
            }
            Lang::Logql => {
                let parsed = loki::parse(expr, config.max_query_depth).map_err(|e| e.to_string())?;
                let loki::Parsed::Metric(metric) = parsed else {
                    return Err("a rule needs a metric query, not a log query".into());
                };
                let ts_ns = ts_ms.saturating_mul(1_000_000);
                let steps = loki::Steps { start_ns: ts_ns, end_ns: ts_ns, step_ns: 1 };
                match loki::metric_query(&self.engine, &metric, steps).await.map_err(|e| e.to_string())? {
                    loki::Value::Scalar(values) => {
                        Ok(vec![(Labels::new(), values.first().copied().unwrap_or(f64::NAN))])
                    }
                    loki::Value::Vector(series) => Ok(series
                        .into_iter()
                        .filter_map(|one| one.points.first().copied().flatten().map(|value| (one.labels, value)))
                        .collect()),
                }
            }
            Lang::Sql => {
                let output = self.engine.sql(expr).await.map_err(|e| e.to_string())?;
                sql_samples(&output)
            }
        }
    }
}

#[async_trait::async_trait]
impl RuleQuerier for EngineQuerier {
    async fn instant(&self, lang: Lang, expr: &str, ts_ms: i64) -> Result<Vec<(Labels, f64)>, String> {
        let _turn = self.turns.acquire().await.map_err(|e| e.to_string())?;
        let engine = self.engine.clone();
        let this = EngineQuerier { engine: engine.clone(), source: self.source.clone(), turns: self.turns.clone() };
        let text = expr.to_string();
        // Through an admission queue of their own and the timeout of client queries, so that
        // rules and people do not wait for each other and a stuck rule query is cancelled.
        engine
            .run_request(Api::Rules, expr, async move { Ok(this.run(lang, &text, ts_ms).await) })
            .await
            .map_err(|e| e.to_string())?
    }
}

/// The rows of an SQL rule as samples: the `value` column is the value, every other column a
/// label (NULLs left out).
pub fn sql_samples(output: &crate::QueryOutput) -> Result<Vec<(Labels, f64)>, String> {
    let schema = &output.schema;
    let Some(value_index) = schema.fields().iter().position(|f| f.name() == "value") else {
        return Err("an SQL rule must return a numeric column named `value`".into());
    };
    let value_type = schema.field(value_index).data_type();
    if !value_type.is_numeric() {
        return Err(format!("the `value` column of an SQL rule must be numeric, not {value_type}"));
    }
    let mut samples = Vec::with_capacity(output.num_rows());
    for batch in &output.batches {
        let values = arrow::compute::cast(batch.column(value_index), &DataType::Float64).map_err(|e| e.to_string())?;
        let values = values.as_primitive::<Float64Type>();
        let mut label_columns = Vec::with_capacity(batch.num_columns());
        for (index, field) in schema.fields().iter().enumerate() {
            if index == value_index {
                continue;
            }
            let text = arrow::compute::cast(batch.column(index), &DataType::Utf8)
                .map_err(|e| format!("the column {:?} of an SQL rule cannot be a label: {e}", field.name()))?;
            label_columns.push((field.name().clone(), text));
        }
        for row in 0..batch.num_rows() {
            if values.is_null(row) {
                continue;
            }
            let mut labels = Labels::new();
            for (name, column) in &label_columns {
                let column = column.as_string::<i32>();
                if column.is_valid(row) && !column.value(row).is_empty() {
                    labels.insert(name.clone(), column.value(row).to_string());
                }
            }
            samples.push((labels, values.value(row)));
        }
    }
    Ok(samples)
}

/// Stores rule output through [`wake_storage::Store::ingest`].
pub struct StoreWriter {
    store: Arc<wake_storage::Store>,
}

impl StoreWriter {
    pub fn new(store: Arc<wake_storage::Store>) -> StoreWriter {
        StoreWriter { store }
    }
}

#[async_trait::async_trait]
impl SampleWriter for StoreWriter {
    async fn write(&self, ts_ms: i64, samples: Vec<(Labels, f64)>) -> Result<(), String> {
        use wake_storage::prompb::{Label, Sample, TimeSeries, WriteRequest};
        let timeseries = samples
            .into_iter()
            .map(|(labels, value)| TimeSeries {
                labels: labels.into_iter().map(|(name, value)| Label { name, value }).collect(),
                samples: vec![Sample { value, timestamp: ts_ms }],
            })
            .collect();
        let request = WriteRequest { timeseries, ..Default::default() };
        let otlp = wake_storage::receiver::prometheus_to_otlp(request).map_err(|e| e.to_string())?;
        self.store.ingest(wake_storage::OtlpRequest::Metrics(otlp), None).await.map(|_| ()).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expressions_are_checked_in_their_language() {
        assert!(check_expression(Lang::Promql, "sum by (job) (rate(x[5m])) > 0").is_ok());
        assert!(check_expression(Lang::Promql, "sum(").is_err());
        // As promtool: the type is an evaluation error, not a load error.
        assert!(check_expression(Lang::Promql, "x[5m]").is_ok());
        assert!(check_expression(Lang::Logql, r#"sum(count_over_time({app="a"} |= "panic" [5m])) > 0"#).is_ok());
        assert!(check_expression(Lang::Logql, r#"{app="a"}"#).unwrap_err().contains("metric query"));
        assert!(check_expression(Lang::Sql, "SELECT 1 AS value").is_ok());
        assert!(check_expression(Lang::Sql, "SELECT 1; SELECT 2").is_err());
        assert!(check_expression(Lang::Sql, "DROP TABLE logs").is_err());
        assert!(check_expression(Lang::Sql, "SELEC 1").is_err());
    }
}
