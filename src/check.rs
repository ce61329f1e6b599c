//! `wake check`: verifies a stopped store's manifest, files, indexes, WAL and inventory
//! against each other ([`wake_storage::check`]), and with `--repair` tidies what a crash left
//! and stops the manifest naming files that are gone.

use std::io::Write;
use std::path::PathBuf;

use wake_storage::check::{CheckReport, check};
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

fn print(report: &CheckReport, json: bool) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        let value = serde_json::json!({
            "clean": report.is_clean(),
            "damage": report.damage,
            "leftovers": report.leftovers,
            "files": report.files,
            "rows": report.rows,
            "wal_records": report.wal_records,
            "containers": report.containers,
        });
        return writeln!(out, "{value}");
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
    writeln!(
        out,
        "{}",
        if report.is_clean() { "clean" } else { "damaged: run `wake check --repair` and restore what is lost" }
    )
}

/// Whether the store is clean (after the repair, with `--repair`).
pub fn run(args: &CheckArgs) -> anyhow::Result<bool> {
    if args.repair {
        let config = StoreConfig { data_dir: args.data_dir.clone(), min_free_disk_bytes: 0, ..StoreConfig::default() };
        tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(async {
            let store = Store::open(config, &prometheus::Registry::new())?;
            store.rewrite_manifest().await?;
            store.shutdown().await?;
            anyhow::Ok(())
        })?;
    }
    let report = check(&args.data_dir)?;
    print(&report, args.json)?;
    Ok(report.is_clean())
}
