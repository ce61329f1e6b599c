//! `wake check`: verifies a stopped store's manifest, files, indexes, WAL and inventory
//! against each other ([`wake_storage::check`]), and with `--repair` tidies what a crash left
//! and stops the manifest naming files that are gone. Every tenant's store is checked.

use std::io::Write;
use std::path::PathBuf;

use wake_storage::check::{CheckReport, check};
use wake_storage::tenants::{existing_tenants, tenant_dir};
use wake_storage::{Store, StoreConfig};

#[derive(clap::Args, Debug)]
pub struct CheckArgs {
    /// The store's data directory (the server must be stopped).
    #[arg(long, env = "WAKE_DATA_DIR")]
    pub data_dir: PathBuf,
    /// Open the store once (it removes what interrupted writes left and replays the WAL), write
    /// a manifest of the files that are there, then check again.
    #[arg(long)]
    pub repair: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

fn report_json(report: &CheckReport) -> serde_json::Value {
    serde_json::json!({
        "clean": report.is_clean(),
        "damage": report.damage,
        "leftovers": report.leftovers,
        "files": report.files,
        "rows": report.rows,
        "wal_records": report.wal_records,
        "containers": report.containers,
    })
}

/// The default tenant's report at the top, every other tenant's under `tenants` (JSON) or
/// after its name (text).
fn print(reports: &[(String, CheckReport)], json: bool) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    let clean = reports.iter().all(|(_, report)| report.is_clean());
    if json {
        let mut value = reports.first().map(|(_, report)| report_json(report)).unwrap_or_default();
        let others: serde_json::Map<String, serde_json::Value> =
            reports.iter().skip(1).map(|(tenant, report)| (tenant.clone(), report_json(report))).collect();
        value["clean"] = clean.into();
        if !others.is_empty() {
            value["tenants"] = others.into();
        }
        return writeln!(out, "{value}");
    }
    for (index, (tenant, report)) in reports.iter().enumerate() {
        if index > 0 {
            writeln!(out, "tenant {tenant}:")?;
        }
        writeln!(
            out,
            "{} files, {} rows; {} WAL records to replay; {} containers in the inventory",
            report.files, report.rows, report.wal_records, report.containers
        )?;
        for leftover in &report.leftovers {
            writeln!(out, "leftover: {leftover}")?;
        }
        for damage in &report.damage {
            writeln!(out, "DAMAGE: {damage}")?;
        }
    }
    writeln!(out, "{}", if clean { "clean" } else { "damaged: run `wake check --repair` and restore what is lost" })
}

/// Whether every tenant's store is clean (after the repair, with `--repair`).
pub fn run(args: &CheckArgs) -> anyhow::Result<bool> {
    let tenants = existing_tenants(&args.data_dir);
    if args.repair {
        tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(async {
            for tenant in &tenants {
                let data_dir = tenant_dir(&args.data_dir, tenant);
                let config = StoreConfig { data_dir, min_free_disk_bytes: 0, ..StoreConfig::default() };
                let store = Store::open(config, &prometheus::Registry::new())?;
                store.rewrite_manifest().await?;
                store.shutdown().await?;
            }
            anyhow::Ok(())
        })?;
    }
    let mut reports = Vec::new();
    for tenant in tenants {
        let report = check(&tenant_dir(&args.data_dir, &tenant))?;
        reports.push((tenant, report));
    }
    print(&reports, args.json)?;
    Ok(reports.iter().all(|(_, report)| report.is_clean()))
}
