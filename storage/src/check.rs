//! `wake check`: the manifest, the files, the indexes, the WAL and the inventory of a stopped
//! store, checked against each other without changing anything.
//!
//! The manifest, WAL and inventory logs are read from copies (in a temporary directory) by the
//! same code that opens the store, so that a check sees exactly what the next start would,
//! and what that start would tidy (a torn last record, a superseded log, a file no manifest
//! names) is reported as a leftover, not as damage: a crash at any point may leave those, and
//! the next start removes them. Damage is what no start can undo: a file the manifest names
//! that is missing, of another size, unreadable or of another row count; an index the manifest
//! names that is gone; a manifest, WAL or inventory that does not open. `repair` opens the
//! store (which tidies the leftovers) and writes a manifest checkpoint of the files that are
//! really there.

use std::fs;
use std::path::{Path, PathBuf};

use crate::catalog::{INDEX_EXTENSION, PARQUET_EXTENSION};
use crate::error::{Error, Result};
use crate::schema::Signal;

/// What a check found.
#[derive(Debug, Default)]
pub struct CheckReport {
    /// Problems the next start cannot undo.
    pub damage: Vec<String>,
    /// What a crash leaves and the next start tidies.
    pub leftovers: Vec<String>,
    pub files: usize,
    pub rows: u64,
    pub wal_records: usize,
    pub containers: usize,
}

impl CheckReport {
    pub fn is_clean(&self) -> bool {
        self.damage.is_empty()
    }
}

struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    fs::create_dir_all(to).map_err(|e| Error::io(to, e))?;
    let Ok(entries) = fs::read_dir(from) else { return Ok(()) };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            copy_dir(&path, &to.join(entry.file_name()))?;
        } else {
            fs::copy(&path, to.join(entry.file_name())).map_err(|e| Error::io(&path, e))?;
        }
    }
    Ok(())
}

fn sizes(dir: &Path) -> Vec<(String, u64)> {
    let mut sizes: Vec<(String, u64)> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_string_lossy().into_owned(), e.metadata().ok()?.len())))
        .collect();
    sizes.sort();
    sizes
}

/// What opening the copy changed: files cut short or removed.
fn tidied(what: &str, before: &[(String, u64)], after: &[(String, u64)], leftovers: &mut Vec<String>) {
    for (name, len) in before {
        match after.iter().find(|(n, _)| n == name) {
            None => leftovers.push(format!("{what}: {name} is superseded (removed at the next start)")),
            Some((_, now)) if now < len => {
                leftovers.push(format!(
                    "{what}: {name} ends in a torn record of {} bytes (cut at the next start)",
                    len - now
                ));
            }
            _ => {}
        }
    }
}

/// Checks the store in `data_dir`, which must not be running.
pub fn check(data_dir: &Path) -> Result<CheckReport> {
    let data_dir = std::path::absolute(data_dir).map_err(|e| Error::io(data_dir, e))?;
    if !data_dir.is_dir() {
        return Err(Error::Config(format!("{} is not a directory", data_dir.display())));
    }
    let _lock = crate::store::lock_data_dir(&data_dir)?;
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let scratch = Scratch(std::env::temp_dir().join(format!("wake-check-{}-{nanos}", std::process::id())));
    fs::create_dir_all(&scratch.0).map_err(|e| Error::io(&scratch.0, e))?;
    let mut report = CheckReport::default();

    // The manifest, opened from a copy.
    let manifest_copy = scratch.0.join("manifest");
    fs::create_dir_all(&manifest_copy).map_err(|e| Error::io(&manifest_copy, e))?;
    for entry in fs::read_dir(&data_dir).map_err(|e| Error::io(&data_dir, e))?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("manifest.") && entry.path().is_file() {
            fs::copy(entry.path(), manifest_copy.join(&name)).map_err(|e| Error::io(entry.path(), e))?;
        }
    }
    let before = sizes(&manifest_copy);
    let stored = match crate::manifest::open(&manifest_copy) {
        Ok((_, stored)) => stored,
        Err(error) => {
            report.damage.push(format!("the manifest does not open: {error}"));
            return Ok(report);
        }
    };
    tidied("manifest", &before, &sizes(&manifest_copy), &mut report.leftovers);

    let mut known = std::collections::HashSet::new();
    for file in &stored.files {
        let relative = file.path.strip_prefix(&manifest_copy).unwrap_or(&file.path);
        let path = data_dir.join(relative);
        known.insert(path.clone());
        report.files += 1;
        report.rows += file.stats.num_rows;
        let shown = relative.display();
        match fs::metadata(&path) {
            Err(_) => {
                report.damage.push(format!("{shown}: named by the manifest, missing"));
                continue;
            }
            Ok(metadata) if metadata.len() != file.stats.size_bytes => {
                report.damage.push(format!(
                    "{shown}: {} bytes, the manifest says {}",
                    metadata.len(),
                    file.stats.size_bytes
                ));
                continue;
            }
            Ok(_) => {}
        }
        let rows = fs::File::open(&path)
            .map_err(|e| e.to_string())
            .and_then(|handle| {
                parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(handle)
                    .map_err(|e| e.to_string())
            })
            .map(|builder| builder.metadata().file_metadata().num_rows());
        match rows {
            Err(error) => report.damage.push(format!("{shown}: not a readable Parquet file: {error}")),
            Ok(rows) if u64::try_from(rows).ok() != Some(file.stats.num_rows) => {
                report.damage.push(format!("{shown}: {rows} rows, the manifest says {}", file.stats.num_rows));
            }
            Ok(_) => {}
        }
        if let Some(index) = &file.index_dir {
            let index = data_dir.join(index.strip_prefix(&manifest_copy).unwrap_or(index));
            if !index.join("meta.json").is_file() {
                report.damage.push(format!("{shown}: its full-text index {} is missing", index.display()));
            }
            known.insert(index);
        }
    }

    // Files no manifest names: what an interrupted flush, compaction or retention left.
    for signal in Signal::ALL {
        let mut stack = vec![data_dir.join(signal.table_name())];
        while let Some(dir) = stack.pop() {
            for entry in fs::read_dir(&dir).into_iter().flatten().flatten() {
                let path = entry.path();
                let extension = path.extension().and_then(|e| e.to_str());
                let is_data = matches!(extension, Some(PARQUET_EXTENSION) | Some(INDEX_EXTENSION) | Some("tmp"));
                if is_data && !known.contains(&path) {
                    let shown = path.strip_prefix(&data_dir).unwrap_or(&path).display().to_string();
                    report.leftovers.push(format!("{shown}: named by no manifest (removed at the next start)"));
                } else if path.is_dir() && !is_data {
                    stack.push(path);
                }
            }
        }
    }

    // The WAL, replayed from a copy.
    let wal_copy = scratch.0.join("wal");
    copy_dir(&data_dir.join("wal"), &wal_copy)?;
    let before = sizes(&wal_copy);
    match crate::wal::replay(&wal_copy) {
        Ok(records) => report.wal_records = records.len(),
        Err(error) => report.damage.push(format!("the write-ahead log does not replay: {error}")),
    }
    tidied("wal", &before, &sizes(&wal_copy), &mut report.leftovers);

    // The inventory, opened from a copy.
    let inventory_copy = scratch.0.join("store");
    copy_dir(&data_dir.join("inventory"), &inventory_copy.join("inventory"))?;
    let before = sizes(&inventory_copy.join("inventory"));
    let metrics = crate::metrics::StorageMetrics::new(&prometheus::Registry::new())?.inventory;
    match crate::inventory::Inventory::open(&inventory_copy, crate::inventory::InventoryConfig::default(), metrics) {
        Ok(inventory) => report.containers = inventory.read().len(),
        Err(error) => report.damage.push(format!("the inventory does not open: {error}")),
    }
    tidied("inventory", &before, &sizes(&inventory_copy.join("inventory")), &mut report.leftovers);
    Ok(report)
}
