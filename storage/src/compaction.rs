//! Compaction: which files to merge ([`plan`]) and the merge itself ([`merge_files`]). The
//! store runs one pass at a time, beside its flushes, and swaps the outputs in atomically with
//! the manifest (`Store::compact`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::catalog::DataFile;
use crate::config::StoreConfig;
use crate::error::Result;
use crate::schema::Signal;
use crate::writer;

/// One compaction: `inputs` rewritten as one file per hour partition, or as one file of the
/// UTC day `into_day` (days since 1970-01-01).
/// Most files one merge reads. A streaming merge holds a decoded batch and the current row
/// group's column chunks of every input at once, so its memory grows with their number, and
/// small flushes make many small files: the size bound alone let one merge take hundreds.
pub(crate) const MAX_MERGE_INPUTS: usize = 16;

#[derive(Debug)]
pub(crate) struct Merge {
    pub(crate) inputs: Vec<Arc<DataFile>>,
    pub(crate) into_day: Option<i64>,
}

fn is_settled(file: &DataFile, config: &StoreConfig, now: Instant) -> bool {
    now.saturating_duration_since(file.known_since) >= Duration::from_secs(config.compaction_settle_secs)
}

/// What one compaction pass merges. Signals without a full-text index (metrics, spans) first
/// merge their settled small files, day by day, in time order, into files of several hours up
/// to `compaction_target_bytes`: a query over a day then opens a few files rather than one per
/// hour, which is most of the cost of reading a few series over a long range (Prometheus
/// compacts its two-hour blocks into longer ones for the same reason). Logs stay in hour
/// files: merging them would rebuild their full-text index for little gain. The files left
/// are merged per hour partition ([`small_file_groups`]).
pub(crate) fn plan(
    signal: Signal,
    files: &[Arc<DataFile>],
    config: &StoreConfig,
    now: Instant,
    now_ns: i64,
) -> Vec<Merge> {
    let mut merges = Vec::new();
    let mut remaining: Vec<Arc<DataFile>> = files.to_vec();
    // Recent hours stay in hour files: a query over the last hour would otherwise decompress
    // pages holding several hours of each series it reads.
    let recent_from_ns = now_ns
        .saturating_sub(i64::try_from(config.day_merge_age_secs).unwrap_or(i64::MAX).saturating_mul(1_000_000_000));
    if signal != Signal::Logs {
        let mut by_day: std::collections::BTreeMap<i64, Vec<Arc<DataFile>>> = Default::default();
        for file in files {
            let day = file.min_time_ns.div_euclid(writer::NANOS_PER_DAY);
            if file.size_bytes < config.compaction_target_bytes
                && is_settled(file, config, now)
                && file.max_time_ns < recent_from_ns
                && file.max_time_ns.div_euclid(writer::NANOS_PER_DAY) == day
            {
                by_day.entry(day).or_default().push(file.clone());
            }
        }
        for (day, mut candidates) in by_day {
            candidates.sort_by_key(|file| (file.min_time_ns, file.max_time_ns));
            let mut group: Vec<Arc<DataFile>> = Vec::new();
            let mut total = 0;
            for file in candidates {
                if total + file.size_bytes > config.compaction_target_bytes || group.len() == MAX_MERGE_INPUTS {
                    if group.len() >= 2 {
                        merges.push(Merge { inputs: std::mem::take(&mut group), into_day: Some(day) });
                    }
                    group.clear();
                    total = 0;
                }
                total += file.size_bytes;
                group.push(file);
            }
            if group.len() >= 2 {
                merges.push(Merge { inputs: group, into_day: Some(day) });
            }
        }
        let merged: std::collections::HashSet<&Path> =
            merges.iter().flat_map(|m| m.inputs.iter().map(|f| f.path.as_path())).collect();
        remaining.retain(|file| !merged.contains(file.path.as_path()));
    }
    merges
        .extend(small_file_groups(&remaining, config, now).into_iter().map(|inputs| Merge { inputs, into_day: None }));
    merges
}

/// Per hour partition, the smallest files whose sizes add up to at most the compaction target,
/// when there are enough of them, or at least two once the partition has settled (received no
/// file for `compaction_settle_secs` before `now`). Merging the smallest first keeps write
/// amplification low: a file near the target is rewritten only once enough data has gathered
/// around it. A partition still receiving a file per flush is merged `compaction_min_files` at a
/// time; once its hour is over (or a backfill has moved on), what is left becomes one file.
fn small_file_groups(files: &[Arc<DataFile>], config: &StoreConfig, now: Instant) -> Vec<Vec<Arc<DataFile>>> {
    let mut by_partition: std::collections::BTreeMap<PathBuf, Vec<Arc<DataFile>>> = Default::default();
    for file in files {
        if file.size_bytes < config.compaction_target_bytes
            && let Some(dir) = file.partition_dir()
        {
            by_partition.entry(dir.to_path_buf()).or_default().push(file.clone());
        }
    }
    by_partition
        .into_values()
        .filter_map(|mut candidates| {
            let settled = candidates.iter().all(|file| is_settled(file, config, now));
            candidates.sort_by_key(|file| file.size_bytes);
            let mut total = 0;
            let group: Vec<_> = candidates
                .into_iter()
                .take_while(|file| {
                    total += file.size_bytes;
                    total <= config.compaction_target_bytes
                })
                .take(MAX_MERGE_INPUTS)
                .collect();
            let enough = if settled { 2 } else { config.compaction_min_files };
            (group.len() >= enough).then_some(group)
        })
        .collect()
}

/// Writes the merge of `inputs`: one file of the UTC day `into_day`, or one per hour partition.
/// Inputs that are already sorted the same way stream through a k-way merge (one batch per
/// input in memory); others are read whole and re-sorted.
pub(crate) fn merge_files(
    data_dir: &Path,
    signal: Signal,
    inputs: &[Arc<DataFile>],
    into_day: Option<i64>,
    config: &StoreConfig,
    name: &str,
) -> Result<Vec<Arc<DataFile>>> {
    if writer::can_merge_streaming(inputs)? {
        let dir = match into_day {
            Some(day) => writer::day_dir(data_dir, signal, day),
            // An hour merge's inputs share their partition.
            None => inputs.first().and_then(|file| file.path.parent()).unwrap_or(data_dir).to_path_buf(),
        };
        return writer::merge_sorted_files(inputs, &dir, signal, config, name).map(|f| vec![f]);
    }
    let batches = writer::read_files(inputs)?;
    match into_day {
        Some(day) => writer::write_day_file(data_dir, signal, &batches, config, name, day).map(|f| vec![f]),
        None => writer::write_partitioned(data_dir, signal, &batches, config, name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::FileStats;
    use crate::now_ns;

    fn file(partition: &str, name: &str, size_bytes: u64) -> Arc<DataFile> {
        let stats = FileStats {
            size_bytes,
            index_bytes: 0,
            num_rows: 1,
            min_time_ns: 0,
            max_time_ns: 0,
            row_group_row_counts: vec![1],
        };
        Arc::new(DataFile::new(Signal::Logs, PathBuf::from(partition).join(name), None, stats))
    }

    /// A settled metrics file of `hour` (hours since 1970) in its hour partition.
    fn hour_file(signal: Signal, hour: i64, size_bytes: u64) -> Arc<DataFile> {
        let hour_ns = hour * 3_600_000_000_000;
        let stats = FileStats {
            size_bytes,
            index_bytes: 0,
            num_rows: 1,
            min_time_ns: hour_ns,
            max_time_ns: hour_ns + 3_599_999_999_999,
            row_group_row_counts: vec![1],
        };
        let path = PathBuf::from(format!("h{hour}")).join(format!("f{hour}-{size_bytes}"));
        Arc::new(DataFile::new(signal, path, None, stats))
    }

    #[test]
    fn settled_metrics_hours_are_merged_into_day_files_in_time_order() {
        let config = StoreConfig { compaction_target_bytes: 100, ..StoreConfig::default() };
        // Day 1 (hours 24..48): 30 + 30 + 30 fit, the fourth would not; 90 alone is left; the
        // last two fit again. Hour 50 is the only file of day 2: nothing to merge it with.
        let sizes = [(24, 30), (25, 30), (26, 30), (27, 30), (28, 90), (29, 40), (30, 40), (50, 10)];
        let files: Vec<_> = sizes.iter().map(|&(hour, size)| hour_file(Signal::Metrics, hour, size)).collect();
        let logs: Vec<_> = sizes.iter().map(|&(hour, size)| hour_file(Signal::Logs, hour, size)).collect();
        let mut spanning = Arc::into_inner(hour_file(Signal::Metrics, 47, 10)).unwrap();
        spanning.max_time_ns += 1;
        let across_days = vec![hour_file(Signal::Metrics, 46, 10), Arc::new(spanning)];
        let settled = Instant::now() + Duration::from_secs(config.compaction_settle_secs);
        let merges = plan(Signal::Metrics, &files, &config, settled, now_ns());
        let described: Vec<(Option<i64>, Vec<i64>)> = merges
            .iter()
            .map(|merge| (merge.into_day, merge.inputs.iter().map(|f| f.min_time_ns / 3_600_000_000_000).collect()))
            .collect();
        assert_eq!(described, vec![(Some(1), vec![24, 25, 26]), (Some(1), vec![29, 30])]);

        // Files still arriving are left to the hour partitions; logs never leave them.
        assert!(plan(Signal::Metrics, &files, &config, Instant::now(), now_ns()).is_empty());
        // Hours younger than `day_merge_age_secs` stay hour files: here hour 30 (and 50), so
        // 29 has no neighbour to merge with.
        let age_ns = config.day_merge_age_secs as i64 * 1_000_000_000;
        let hour_30_is_young = 31 * 3_600_000_000_000 + age_ns - 1;
        let merges = plan(Signal::Metrics, &files, &config, settled, hour_30_is_young);
        let starts: Vec<Vec<i64>> =
            merges.iter().map(|m| m.inputs.iter().map(|f| f.min_time_ns / 3_600_000_000_000).collect()).collect();
        assert_eq!(starts, vec![vec![24, 25, 26]]);
        let day_one_aged = 48 * 3_600_000_000_000 + age_ns;
        assert_eq!(plan(Signal::Metrics, &files, &config, settled, day_one_aged).len(), 2);
        assert!(plan(Signal::Logs, &logs, &config, settled, now_ns()).is_empty());
        // A file reaching into the next day stays where it is.
        assert!(plan(Signal::Metrics, &across_days, &config, settled, now_ns()).is_empty());
    }

    /// Gauge points of `series` series (told apart by an `instance` attribute) at each of `times`.

    #[test]
    fn compaction_merges_the_smallest_files_of_a_partition_up_to_the_target() {
        let config = StoreConfig { compaction_min_files: 3, compaction_target_bytes: 100, ..StoreConfig::default() };
        let files = vec![
            file("a", "big", 90),
            file("a", "s1", 10),
            file("a", "s2", 20),
            file("a", "s3", 30),
            file("a", "done", 100),
            file("b", "s1", 5),
            file("b", "s2", 5),
        ];
        let names = |group: &[Arc<DataFile>]| -> Vec<String> {
            group.iter().map(|f| f.path.file_name().unwrap().to_str().unwrap().to_string()).collect()
        };
        let groups = small_file_groups(&files, &config, Instant::now());
        assert_eq!(groups.len(), 1, "partition b has too few files");
        assert_eq!(names(&groups[0]), vec!["s1", "s2", "s3"]);

        // Once no file has come for the settle time, two small files are enough.
        let settled = Instant::now() + Duration::from_secs(config.compaction_settle_secs);
        let groups = small_file_groups(&files, &config, settled);
        assert_eq!(groups.iter().map(|g| names(g)).collect::<Vec<_>>(), vec![vec!["s1", "s2", "s3"], vec!["s1", "s2"]]);
        // A file that just arrived unsettles its partition again.
        let config = StoreConfig { compaction_min_files: 4, ..config };
        let mut files = files;
        let mut late = Arc::into_inner(file("b", "late", 5)).unwrap();
        late.known_since = settled + Duration::from_secs(100);
        files.push(Arc::new(late));
        let groups = small_file_groups(&files, &config, settled + Duration::from_secs(159));
        assert_eq!(groups.iter().map(|g| names(g)).collect::<Vec<_>>(), vec![vec!["s1", "s2", "s3"]]);
    }

    #[test]
    fn a_merge_reads_at_most_max_merge_inputs_files() {
        let config = StoreConfig { compaction_target_bytes: 1 << 30, ..StoreConfig::default() };
        let hour_files: Vec<_> = (0..40).map(|n| file("a", &format!("s{n}"), 10)).collect();
        // Forty settled metrics hours of day 1, old enough for day files: groups of 16, 16, 8.
        let day_files: Vec<_> = (0..40).map(|n| hour_file(Signal::Metrics, 24 + n % 24, 10 + n as u64)).collect();
        let settled = Instant::now() + Duration::from_secs(config.compaction_settle_secs);
        let groups = small_file_groups(&hour_files, &config, settled);
        assert_eq!(groups.iter().map(Vec::len).collect::<Vec<_>>(), vec![MAX_MERGE_INPUTS]);

        let merges = plan(Signal::Metrics, &day_files, &config, settled, 10 * writer::NANOS_PER_DAY);
        let sizes: Vec<usize> = merges.iter().map(|merge| merge.inputs.len()).collect();
        assert_eq!(sizes, vec![MAX_MERGE_INPUTS, MAX_MERGE_INPUTS, 8]);
    }
}
