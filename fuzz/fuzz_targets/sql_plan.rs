//! SQL (`POST /api/v1/sql`, rule files): `QueryEngine::plan_sql` parses, plans and physically
//! plans a statement through the read-only sandbox (depth limit, no DDL, DML or statements)
//! without running it, over a store whose tables each have a Parquet file (with its full-text
//! index, for logs) and buffered rows. Errors are answers; a panic or a stack overflow is a bug.
#![no_main]

mod common;

use std::sync::{Arc, LazyLock};

use libfuzzer_sys::fuzz_target;
use wake_query::QueryEngine;
use wake_storage::{OtlpRequest, Signal, Store, StoreConfig};

struct Setup {
    runtime: tokio::runtime::Runtime,
    engine: QueryEngine,
    /// Kept so the data dir lives as long as the process (statics are never dropped, so it is
    /// left in the temp dir, named `wake-fuzz-sql-plan-…`).
    _dir: tempfile::TempDir,
}

/// Flushed to Parquet, then buffered: the otlp_json target's seeds (after their first byte, which
/// picks the signal there).
const FLUSHED: [(Signal, &[u8]); 3] = [
    (Signal::Logs, include_bytes!("../seeds/otlp_json/logs_plain.json")),
    (Signal::Metrics, include_bytes!("../seeds/otlp_json/metrics_gauge_sum.json")),
    (Signal::Spans, include_bytes!("../seeds/otlp_json/traces_server_client.json")),
];
const BUFFERED: [(Signal, &[u8]); 3] = [
    (Signal::Logs, include_bytes!("../seeds/otlp_json/logs_values.json")),
    (Signal::Metrics, include_bytes!("../seeds/otlp_json/metrics_histograms.json")),
    (Signal::Spans, include_bytes!("../seeds/otlp_json/traces_spec.json")),
];

static SETUP: LazyLock<Setup> = LazyLock::new(|| {
    let dir = tempfile::Builder::new().prefix("wake-fuzz-sql-plan-").tempdir().expect("a temp dir");
    let config = StoreConfig {
        data_dir: dir.path().to_path_buf(),
        min_free_disk_bytes: 0,
        max_record_age_secs: 0,
        max_record_future_secs: 0,
        ..Default::default()
    };
    let registry = prometheus::Registry::new();
    let store: Arc<Store> = Store::open(config, &registry).expect("the store opens");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    runtime.block_on(async {
        for (signal, json) in FLUSHED {
            let request = OtlpRequest::decode_json(signal, &json[1..]).expect("a seed decodes");
            store.ingest(request, None).await.expect("a seed is ingested");
        }
        store.flush_all().await.expect("the store flushes");
        for (signal, json) in BUFFERED {
            let request = OtlpRequest::decode_json(signal, &json[1..]).expect("a seed decodes");
            store.ingest(request, None).await.expect("a seed is ingested");
        }
    });
    for signal in Signal::ALL {
        let snapshot = store.snapshot(signal);
        assert!(!snapshot.files.is_empty(), "no {signal} file");
    }
    let engine = QueryEngine::new(store, &registry).expect("the engine starts");
    Setup { runtime, engine, _dir: dir }
});

fuzz_target!(init: common::tolerate_parser_panics(), |data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    common::set_input(data);
    let setup = &*SETUP;
    let _ = setup.runtime.block_on(setup.engine.plan_sql(text));
});
