//! Container resource metrics straight from the kernel's cgroup files.
//!
//! The agent runs on every node and has to report CPU, memory, disk I/O and pid usage of every
//! container, including containers the kubelet does not know about (podman, plain docker) and
//! containers that are about to disappear. Reading cgroups directly needs no runtime socket and
//! no kubelet API, and works the same for every runtime, so the agent walks the cgroup tree,
//! recognises container cgroups by their directory names (which every runtime and both cgroup
//! drivers derive from the container id), parses the kernel's stat files and turns them into
//! OTLP metrics under the OpenTelemetry semantic-convention / kubeletstats-receiver names.
//!
//! Both cgroup layouts are supported: v2 (one unified tree, all controllers in one directory per
//! cgroup) and v1 (one tree per controller, possibly co-mounted as `cpu,cpuacct`). Hybrid hosts,
//! where a controller-less v2 tree sits at `<root>/unified`, are read as v1.
//!
//! Kernel files come and go (controllers not enabled, containers exiting mid-read, older
//! kernels lacking keys), so every value is optional: a missing or malformed file makes that
//! metric absent, logged at debug, and never fails the whole read.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};

use opentelemetry_proto::tonic::common::v1::{InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum, metric,
    number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use tracing::debug;

use crate::identity::{ContainerIdentity, string_attribute};

/// The instrumentation scope of every metric produced here, so the store can tell agent-read
/// cgroup metrics apart from metrics the workloads export themselves.
pub const SCOPE_NAME: &str = "wake.agent.cgroup";

/// How deep discovery descends below a hierarchy root. The deepest real layouts (rootless
/// podman under `user.slice/user-N.slice/user@N.service/...`, kubelet's systemd slices) stay
/// within six levels; the bound keeps a pathological or nested tree from costing unbounded time.
const MAX_DEPTH: usize = 8;

/// cgroup v1 reports this (`i64::MAX` rounded down to the page size) when no limit is set.
/// Anything at or above 2^62 is treated as "unlimited", because no real limit is that large and
/// page sizes other than 4 KiB round `i64::MAX` to other values.
const UNLIMITED_THRESHOLD: u64 = 1 << 62;

/// `cpuacct.stat` counts in USER_HZ ticks. USER_HZ is 100 on every Linux architecture the
/// agent targets (it is part of the ABI, unlike the kernel's internal HZ).
const NS_PER_USER_HZ_TICK: u64 = 10_000_000;

/// Runtime names that prefix a container id in a cgroup directory name (`<runtime>-<id>` or
/// `<runtime>-<id>.scope`).
const RUNTIME_PREFIXES: &[&str] = &["cri-containerd", "crio", "docker", "libpod", "containerd", "nerdctl"];

/// Directory names under which a bare `<id>` directory is a container even outside a pod
/// (docker's cgroupfs driver puts containers at `docker/<id>`).
const BARE_ID_PARENTS: &[&str] = &["docker"];

/// v1 mount names to try for each controller, in order: distributions either co-mount
/// `cpu,cpuacct` (usually with `cpu` and `cpuacct` symlinks) or mount them separately.
const V1_CPUACCT: &[&str] = &["cpuacct", "cpu,cpuacct", "cpuacct,cpu"];
const V1_CPU: &[&str] = &["cpu", "cpu,cpuacct", "cpuacct,cpu"];
const V1_MEMORY: &[&str] = &["memory"];
const V1_BLKIO: &[&str] = &["blkio"];
const V1_PIDS: &[&str] = &["pids"];

/// Which cgroup layout a host (or a discovered cgroup) uses; the two differ in file names,
/// units and where each controller's files live.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CgroupVersion {
    V1,
    V2,
}

/// Where one controller's files of a container live. In v2 every field is the same unified
/// directory; in v1 each controller has its own hierarchy, and a controller that is not mounted
/// (or has no directory for this container) is `None`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ControllerDirs {
    pub cpu: Option<PathBuf>,
    pub cpuacct: Option<PathBuf>,
    pub memory: Option<PathBuf>,
    pub blkio: Option<PathBuf>,
    pub pids: Option<PathBuf>,
}

/// One container's cgroup as found by [`CgroupReader::discover`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerCgroup {
    /// The runtime's container id (12–64 lowercase hex), as it appears in the directory name;
    /// this is what joins the cgroup to the container's logs and Kubernetes identity.
    pub container_id: String,
    /// The pod's uid (with `-`), when the cgroup sits under a kubelet pod cgroup.
    pub pod_uid: Option<String>,
    pub version: CgroupVersion,
    /// The cgroup's path relative to its hierarchy root (the same in every v1 hierarchy), kept
    /// for logs and for matching against `/proc/<pid>/cgroup`.
    pub relative_path: PathBuf,
    pub dirs: ControllerDirs,
}

/// Reads container cgroups below one cgroup mount root (`--cgroup-root`, normally
/// `/sys/fs/cgroup`; inside a container the host's tree is usually mounted elsewhere).
#[derive(Clone, Debug)]
pub struct CgroupReader {
    root: PathBuf,
}

/// One sample of a container's resource usage. Every field is `None` when the kernel did not
/// report it, so that "unknown" is never exported as zero.
#[derive(Default, Debug, Clone, PartialEq)]
pub struct CgroupStats {
    pub cpu_user_ns: Option<u64>,
    pub cpu_system_ns: Option<u64>,
    /// Total CPU time (user + system as the scheduler accounts it).
    pub cpu_usage_ns: Option<u64>,
    pub throttled_periods: Option<u64>,
    pub throttled_ns: Option<u64>,
    /// CFS quota / period in cores; `None` when unlimited.
    pub cpu_limit_cores: Option<f64>,
    pub memory_usage_bytes: Option<u64>,
    /// `None` when unlimited.
    pub memory_limit_bytes: Option<u64>,
    /// Usage minus inactive file cache, which is what the kubelet evicts on and what
    /// dashboards mean by "memory used".
    pub memory_working_set_bytes: Option<u64>,
    pub memory_rss_bytes: Option<u64>,
    pub page_faults: Option<u64>,
    pub major_page_faults: Option<u64>,
    /// Processes killed by the OOM killer inside the cgroup.
    pub oom_events: Option<u64>,
    pub io_read_bytes: Option<u64>,
    pub io_write_bytes: Option<u64>,
    pub pids_current: Option<u64>,
    /// `None` when unlimited.
    pub pids_limit: Option<u64>,
}

impl CgroupReader {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The layout of the tree under the root, or `None` when the root is not a cgroup mount
    /// (then there is nothing to read). A v2 root has `cgroup.controllers`; on hybrid hosts the
    /// root is a tmpfs of v1 mounts and the v2 tree at `unified` carries no controllers, so v1
    /// is what holds the data.
    pub fn version(&self) -> Option<CgroupVersion> {
        if self.root.join("cgroup.controllers").is_file() {
            Some(CgroupVersion::V2)
        } else if V1_MEMORY.iter().chain(V1_CPUACCT).any(|name| self.root.join(name).is_dir()) {
            Some(CgroupVersion::V1)
        } else {
            None
        }
    }

    /// Every container cgroup under the root, found by walking the tree (bounded depth).
    ///
    /// For v1 the memory hierarchy is walked (every runtime creates a memory cgroup per
    /// container) and the other controllers' directories are derived from the same relative
    /// path. Results are sorted by path and deduplicated by container id.
    pub fn discover(&self) -> Vec<ContainerCgroup> {
        let Some(version) = self.version() else {
            debug!(root = %self.root.display(), "no cgroup hierarchy found");
            return Vec::new();
        };
        let base = match version {
            CgroupVersion::V2 => self.root.clone(),
            CgroupVersion::V1 => {
                let Some(base) = [V1_MEMORY, V1_CPUACCT, V1_PIDS, V1_BLKIO]
                    .iter()
                    .find_map(|candidates| self.controller_base(candidates))
                else {
                    return Vec::new();
                };
                base
            }
        };
        let mut found = Vec::new();
        walk(&base, Path::new(""), 0, None, &mut found);
        found.sort_by(|a, b| a.relative_path.cmp(&b.relative_path));
        let mut seen = HashSet::new();
        found.retain(|f| seen.insert(f.container_id.clone()));
        found
            .into_iter()
            .map(|f| {
                let dirs = match version {
                    CgroupVersion::V2 => {
                        let dir = self.root.join(&f.relative_path);
                        ControllerDirs {
                            cpu: Some(dir.clone()),
                            cpuacct: Some(dir.clone()),
                            memory: Some(dir.clone()),
                            blkio: Some(dir.clone()),
                            pids: Some(dir),
                        }
                    }
                    CgroupVersion::V1 => ControllerDirs {
                        cpu: self.v1_dir(V1_CPU, &f.relative_path),
                        cpuacct: self.v1_dir(V1_CPUACCT, &f.relative_path),
                        memory: self.v1_dir(V1_MEMORY, &f.relative_path),
                        blkio: self.v1_dir(V1_BLKIO, &f.relative_path),
                        pids: self.v1_dir(V1_PIDS, &f.relative_path),
                    },
                };
                ContainerCgroup {
                    container_id: f.container_id,
                    pod_uid: f.pod_uid,
                    version,
                    relative_path: f.relative_path,
                    dirs,
                }
            })
            .collect()
    }

    /// Reads one sample of the cgroup's files; whatever is missing or unparsable stays `None`.
    pub fn read(&self, cgroup: &ContainerCgroup) -> CgroupStats {
        match cgroup.version {
            CgroupVersion::V2 => read_v2(&cgroup.dirs),
            CgroupVersion::V1 => read_v1(&cgroup.dirs),
        }
    }

    /// Discovers and reads every container in one go, the usual per-scrape call.
    pub fn read_all(&self) -> Vec<(ContainerCgroup, CgroupStats)> {
        self.discover()
            .into_iter()
            .map(|cgroup| {
                let stats = self.read(&cgroup);
                (cgroup, stats)
            })
            .collect()
    }

    /// The first mounted v1 hierarchy among `candidates` (symlinks such as `cpu` ->
    /// `cpu,cpuacct` are followed).
    fn controller_base(&self, candidates: &[&str]) -> Option<PathBuf> {
        candidates.iter().map(|name| self.root.join(name)).find(|path| path.is_dir())
    }

    fn v1_dir(&self, candidates: &[&str], relative_path: &Path) -> Option<PathBuf> {
        candidates.iter().map(|name| self.root.join(name).join(relative_path)).find(|path| path.is_dir())
    }
}

/// A container cgroup found by the walk, before its controller directories are resolved.
struct Found {
    container_id: String,
    pod_uid: Option<String>,
    relative_path: PathBuf,
}

/// What a cgroup directory's name says about it.
#[derive(Debug, PartialEq, Eq)]
enum DirKind {
    Container(String),
    Pod(String),
    /// A runtime helper (conmon) that must not be reported as a container.
    Skip,
    Other,
}

/// Walks one hierarchy depth-first. Container directories end the descent: their children
/// (podman's `container` sub-cgroup, nested runtimes) are already accounted in the parent, and
/// reporting them too would double count.
fn walk(base: &Path, relative: &Path, depth: usize, pod_uid: Option<&str>, found: &mut Vec<Found>) {
    if depth >= MAX_DEPTH {
        return;
    }
    let dir = base.join(relative);
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(error) => {
            debug!(dir = %dir.display(), %error, "cannot list cgroup directory");
            return;
        }
    };
    let parent_name = relative.file_name().and_then(|name| name.to_str()).unwrap_or("");
    let bare_id_allowed =
        (pod_uid.is_some() && parse_pod_dir(parent_name).is_some()) || BARE_ID_PARENTS.contains(&parent_name);
    for entry in entries.flatten() {
        // file_type() does not follow symlinks, so a link cannot send the walk in circles.
        if !entry.file_type().is_ok_and(|kind| kind.is_dir()) {
            continue;
        }
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let child = relative.join(name);
        match classify(name, bare_id_allowed) {
            DirKind::Container(container_id) => {
                found.push(Found { container_id, pod_uid: pod_uid.map(str::to_string), relative_path: child })
            }
            DirKind::Pod(uid) => walk(base, &child, depth + 1, Some(&uid), found),
            DirKind::Skip => {}
            DirKind::Other => walk(base, &child, depth + 1, pod_uid, found),
        }
    }
}

/// Recognises container and pod cgroups by the names kubelet and the runtimes give them:
/// `<runtime>-<id>.scope` (systemd driver), `<runtime>-<id>` (podman's cgroupfs
/// `libpod_parent/libpod-<id>`), bare `<id>` under a pod or `docker/` (cgroupfs driver),
/// `pod<uid>` and `kubepods[-<qos>]-pod<uid>.slice` for pods.
fn classify(name: &str, bare_id_allowed: bool) -> DirKind {
    let stem = name.strip_suffix(".scope").unwrap_or(name);
    if let Some((prefix, id)) = stem.rsplit_once('-')
        && is_container_id(id)
    {
        if prefix.ends_with("conmon") {
            return DirKind::Skip;
        }
        if RUNTIME_PREFIXES.contains(&prefix) {
            return DirKind::Container(id.to_string());
        }
    }
    if let Some(uid) = parse_pod_dir(name) {
        return DirKind::Pod(uid);
    }
    if bare_id_allowed && is_container_id(name) {
        return DirKind::Container(name.to_string());
    }
    DirKind::Other
}

/// The pod uid of a pod-level cgroup directory: `pod<uid>` (cgroupfs) or
/// `kubepods[-<qos>]-pod<uid_with_underscores>.slice` (systemd, which reserves `-` as the
/// slice hierarchy separator, hence kubelet's `_`).
fn parse_pod_dir(name: &str) -> Option<String> {
    let uid = if let Some(slice) = name.strip_suffix(".slice") {
        let (prefix, uid) = slice.rsplit_once("-pod")?;
        if !prefix.starts_with("kubepods") {
            return None;
        }
        uid
    } else {
        name.strip_prefix("pod")?
    };
    let valid = !uid.is_empty() && uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-' || b == b'_');
    valid.then(|| uid.replace('_', "-"))
}

/// Runtimes use 64 lowercase hex characters; shortened ids (12+) appear in some setups.
fn is_container_id(text: &str) -> bool {
    (12..=64).contains(&text.len()) && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

// ---------------------------------------------------------------------------------------------
// Reading
// ---------------------------------------------------------------------------------------------

fn read_v2(dirs: &ControllerDirs) -> CgroupStats {
    let mut stats = CgroupStats::default();

    if let Some(dir) = &dirs.cpu {
        if let Some(text) = read_text(&dir.join("cpu.stat")) {
            let usec = |key| keyed_value(&text, key).and_then(|v| v.checked_mul(1_000));
            stats.cpu_usage_ns = usec("usage_usec");
            stats.cpu_user_ns = usec("user_usec");
            stats.cpu_system_ns = usec("system_usec");
            stats.throttled_periods = keyed_value(&text, "nr_throttled");
            stats.throttled_ns = usec("throttled_usec");
        }
        if let Some(text) = read_text(&dir.join("cpu.max")) {
            stats.cpu_limit_cores = parse_cpu_max(&text);
        }
    }

    if let Some(dir) = &dirs.memory {
        stats.memory_usage_bytes = read_u64(&dir.join("memory.current"));
        stats.memory_limit_bytes = read_limit(&dir.join("memory.max"));
        let stat = read_text(&dir.join("memory.stat"));
        let stat_value = |key| stat.as_deref().and_then(|text| keyed_value(text, key));
        stats.memory_rss_bytes = stat_value("anon");
        stats.page_faults = stat_value("pgfault");
        stats.major_page_faults = stat_value("pgmajfault");
        stats.memory_working_set_bytes = working_set(stats.memory_usage_bytes, stat_value("inactive_file"));
        if let Some(text) = read_text(&dir.join("memory.events")) {
            // `oom` counts hitting the limit; `oom_kill` counts processes actually killed, which
            // is what an "OOM event" means to users. Kernels before 4.13 lack `oom_kill`.
            stats.oom_events = keyed_value(&text, "oom_kill").or_else(|| keyed_value(&text, "oom"));
        }
    }

    if let Some(dir) = &dirs.blkio
        && let Some(text) = read_text(&dir.join("io.stat"))
    {
        let (read, write) = parse_io_stat(&text);
        stats.io_read_bytes = Some(read);
        stats.io_write_bytes = Some(write);
    }

    if let Some(dir) = &dirs.pids {
        stats.pids_current = read_u64(&dir.join("pids.current"));
        stats.pids_limit = read_limit(&dir.join("pids.max"));
    }

    stats
}

fn read_v1(dirs: &ControllerDirs) -> CgroupStats {
    let mut stats = CgroupStats::default();

    if let Some(dir) = &dirs.cpuacct {
        stats.cpu_usage_ns = read_u64(&dir.join("cpuacct.usage"));
        if let Some(text) = read_text(&dir.join("cpuacct.stat")) {
            let ticks = |key| keyed_value(&text, key).and_then(|v| v.checked_mul(NS_PER_USER_HZ_TICK));
            stats.cpu_user_ns = ticks("user");
            stats.cpu_system_ns = ticks("system");
        }
    }

    if let Some(dir) = &dirs.cpu {
        if let Some(text) = read_text(&dir.join("cpu.stat")) {
            stats.throttled_periods = keyed_value(&text, "nr_throttled");
            stats.throttled_ns = keyed_value(&text, "throttled_time");
        }
        let quota = read_text(&dir.join("cpu.cfs_quota_us")).and_then(|text| parse_number::<i64>(&text));
        let period = read_u64(&dir.join("cpu.cfs_period_us"));
        stats.cpu_limit_cores = match (quota, period) {
            (Some(quota), Some(period)) if quota > 0 && period > 0 => Some(quota as f64 / period as f64),
            _ => None,
        };
    }

    if let Some(dir) = &dirs.memory {
        stats.memory_usage_bytes = read_u64(&dir.join("memory.usage_in_bytes"));
        stats.memory_limit_bytes = read_limit(&dir.join("memory.limit_in_bytes"));
        let stat = read_text(&dir.join("memory.stat"));
        // The `total_` keys include descendant cgroups (podman's `container` sub-cgroup, for
        // one); the plain keys are this cgroup alone and serve when hierarchy stats are absent.
        let stat_value = |keys: [&str; 2]| {
            let text = stat.as_deref()?;
            keys.iter().find_map(|key| keyed_value(text, key))
        };
        stats.memory_rss_bytes = stat_value(["total_rss", "rss"]);
        stats.page_faults = stat_value(["total_pgfault", "pgfault"]);
        stats.major_page_faults = stat_value(["total_pgmajfault", "pgmajfault"]);
        let inactive_file = stat_value(["total_inactive_file", "inactive_file"]);
        stats.memory_working_set_bytes = working_set(stats.memory_usage_bytes, inactive_file);
        if let Some(text) = read_text(&dir.join("memory.oom_control")) {
            stats.oom_events = keyed_value(&text, "oom_kill");
        }
    }

    if let Some(dir) = &dirs.blkio {
        // The throttle file is filled whatever the I/O scheduler; the recursive one only
        // under CFQ/BFQ, so it is the fallback.
        let throttle = read_text(&dir.join("blkio.throttle.io_service_bytes")).map(|text| parse_blkio(&text));
        let chosen = match throttle {
            Some(parsed) if parsed.devices > 0 => Some(parsed),
            throttle => {
                let recursive = read_text(&dir.join("blkio.io_service_bytes_recursive")).map(|text| parse_blkio(&text));
                match recursive {
                    Some(parsed) if parsed.devices > 0 => Some(parsed),
                    recursive => throttle.or(recursive),
                }
            }
        };
        if let Some(parsed) = chosen {
            stats.io_read_bytes = Some(parsed.read);
            stats.io_write_bytes = Some(parsed.write);
        }
    }

    if let Some(dir) = &dirs.pids {
        stats.pids_current = read_u64(&dir.join("pids.current"));
        stats.pids_limit = read_limit(&dir.join("pids.max"));
    }

    stats
}

/// As cAdvisor computes it: usage minus inactive file pages (clamped at zero, since the two
/// are read at slightly different moments); plain usage when the stat is unavailable.
fn working_set(usage: Option<u64>, inactive_file: Option<u64>) -> Option<u64> {
    usage.map(|usage| usage.saturating_sub(inactive_file.unwrap_or(0)))
}

/// `cpu.max` is `<quota> <period>` in microseconds, quota `max` when unlimited.
fn parse_cpu_max(text: &str) -> Option<f64> {
    let mut fields = text.split_whitespace();
    let quota = fields.next()?;
    let period: u64 = fields.next()?.parse().ok()?;
    if quota == "max" || period == 0 {
        return None;
    }
    let quota: u64 = quota.parse().ok()?;
    Some(quota as f64 / period as f64)
}

/// Sums `rbytes`/`wbytes` over the devices of a v2 `io.stat`. A device line appears only once
/// the cgroup did I/O on it, so an empty file means zero bytes, not unknown.
fn parse_io_stat(text: &str) -> (u64, u64) {
    let (mut read, mut write) = (0u64, 0u64);
    for line in text.lines() {
        for field in line.split_whitespace().skip(1) {
            let Some((key, value)) = field.split_once('=') else { continue };
            let target = match key {
                "rbytes" => &mut read,
                "wbytes" => &mut write,
                _ => continue,
            };
            match value.parse::<u64>() {
                Ok(value) => *target = target.saturating_add(value),
                Err(_) => debug!(line, "unparsable io.stat field"),
            }
        }
    }
    (read, write)
}

struct BlkioBytes {
    read: u64,
    write: u64,
    /// Device lines seen, to tell an idle cgroup from a file this kernel does not fill.
    devices: usize,
}

/// Sums the `Read`/`Write` lines of a v1 blkio `io_service_bytes` file; the per-device
/// `Total` lines and the trailing grand `Total` would count bytes twice.
fn parse_blkio(text: &str) -> BlkioBytes {
    let mut bytes = BlkioBytes { read: 0, write: 0, devices: 0 };
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [_device, operation, value] = fields[..] else { continue };
        bytes.devices += 1;
        let target = match operation {
            "Read" => &mut bytes.read,
            "Write" => &mut bytes.write,
            _ => continue,
        };
        match value.parse::<u64>() {
            Ok(value) => *target = target.saturating_add(value),
            Err(_) => debug!(line, "unparsable blkio line"),
        }
    }
    bytes
}

/// The value of `key` in a flat-keyed file (`key value` per line, as `cpu.stat`,
/// `memory.stat`, `memory.events`, `cpuacct.stat` and `memory.oom_control` are).
fn keyed_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        if fields.next()? != key {
            return None;
        }
        fields.next()?.parse().ok()
    })
}

fn read_text(path: &Path) -> Option<String> {
    match fs::read_to_string(path) {
        Ok(text) => Some(text),
        Err(error) => {
            debug!(path = %path.display(), %error, "cgroup file unavailable");
            None
        }
    }
}

fn parse_number<T: std::str::FromStr>(text: &str) -> Option<T> {
    let parsed = text.trim().parse().ok();
    if parsed.is_none() {
        debug!(text, "unparsable cgroup value");
    }
    parsed
}

fn read_u64(path: &Path) -> Option<u64> {
    read_text(path).and_then(|text| parse_number(&text))
}

/// A limit file: `max` (v2) or a value of 2^62 or more (v1's "unlimited") mean no limit.
fn read_limit(path: &Path) -> Option<u64> {
    let text = read_text(path)?;
    if text.trim() == "max" {
        return None;
    }
    parse_number::<u64>(&text).filter(|&limit| limit < UNLIMITED_THRESHOLD)
}

// ---------------------------------------------------------------------------------------------
// OTLP
// ---------------------------------------------------------------------------------------------

/// OTLP ResourceMetrics, one per container, with `identity.resource_attributes()` as resource
/// attributes. Only known values become metrics; a container with nothing known is left out
/// rather than sent as an empty resource. Cumulative sums carry `start_time_unix_nano` (when
/// the agent started counting, as the kernel's counters have no reset time of their own).
pub fn to_resource_metrics(
    samples: &[(ContainerIdentity, CgroupStats)],
    start_time_unix_nano: u64,
    time_unix_nano: u64,
) -> Vec<ResourceMetrics> {
    samples
        .iter()
        .filter_map(|(identity, stats)| {
            let metrics = container_metrics(stats, &Times { start: start_time_unix_nano, now: time_unix_nano });
            if metrics.is_empty() {
                return None;
            }
            Some(ResourceMetrics {
                resource: Some(Resource { attributes: identity.resource_attributes(), ..Default::default() }),
                scope_metrics: vec![ScopeMetrics {
                    scope: Some(InstrumentationScope { name: SCOPE_NAME.to_string(), ..Default::default() }),
                    metrics,
                    ..Default::default()
                }],
                ..Default::default()
            })
        })
        .collect()
}

struct Times {
    start: u64,
    now: u64,
}

fn container_metrics(stats: &CgroupStats, times: &Times) -> Vec<Metric> {
    let mut metrics = Vec::new();
    let seconds = |ns: u64| ns as f64 / 1e9;

    let mut cpu_points = Vec::new();
    for (mode, ns) in [("user", stats.cpu_user_ns), ("system", stats.cpu_system_ns)] {
        if let Some(ns) = ns {
            cpu_points.push(double_point(
                seconds(ns),
                vec![string_attribute("cpu.mode", mode)],
                times.start,
                times.now,
            ));
        }
    }
    // Only when no per-mode split is known does the total stand in, without `cpu.mode`;
    // mixing both in one metric would double count when summed.
    if cpu_points.is_empty()
        && let Some(ns) = stats.cpu_usage_ns
    {
        cpu_points.push(double_point(seconds(ns), Vec::new(), times.start, times.now));
    }
    if !cpu_points.is_empty() {
        metrics.push(sum("container.cpu.time", "Total CPU time consumed by the container.", "s", cpu_points));
    }

    let cumulative_int = |value: Option<u64>| value.map(|v| vec![int_point(v, Vec::new(), times.start, times.now)]);
    let gauge_int = |value: Option<u64>| value.map(|v| vec![int_point(v, Vec::new(), 0, times.now)]);

    if let Some(points) = cumulative_int(stats.throttled_periods) {
        let description = "CFS periods in which the container was throttled.";
        metrics.push(sum("container.cpu.throttling_data.throttled_periods", description, "{period}", points));
    }
    if let Some(ns) = stats.throttled_ns {
        let points = vec![double_point(seconds(ns), Vec::new(), times.start, times.now)];
        let description = "Time the container was throttled for.";
        metrics.push(sum("container.cpu.throttling_data.throttled_time", description, "s", points));
    }
    if let Some(cores) = stats.cpu_limit_cores {
        let points = vec![double_point(cores, Vec::new(), 0, times.now)];
        metrics.push(gauge("container.cpu.limit", "CPU limit of the container, in cores.", "{cpu}", points));
    }

    let gauges = [
        ("container.memory.usage", "Memory charged to the container, page cache included.", stats.memory_usage_bytes),
        (
            "container.memory.working_set",
            "Memory usage minus inactive file cache (what eviction looks at).",
            stats.memory_working_set_bytes,
        ),
        ("container.memory.rss", "Anonymous memory of the container.", stats.memory_rss_bytes),
        ("container.memory.limit", "Memory limit of the container.", stats.memory_limit_bytes),
    ];
    for (name, description, value) in gauges {
        if let Some(points) = gauge_int(value) {
            metrics.push(gauge(name, description, "By", points));
        }
    }

    let counters = [
        ("container.memory.page_faults", "Page faults in the container.", "{fault}", stats.page_faults),
        (
            "container.memory.major_page_faults",
            "Major page faults in the container.",
            "{fault}",
            stats.major_page_faults,
        ),
        ("container.memory.oom_events", "Processes killed by the OOM killer.", "{event}", stats.oom_events),
    ];
    for (name, description, unit, value) in counters {
        if let Some(points) = cumulative_int(value) {
            metrics.push(sum(name, description, unit, points));
        }
    }

    let mut io_points = Vec::new();
    for (direction, bytes) in [("read", stats.io_read_bytes), ("write", stats.io_write_bytes)] {
        if let Some(bytes) = bytes {
            let attributes = vec![string_attribute("disk.io.direction", direction)];
            io_points.push(int_point(bytes, attributes, times.start, times.now));
        }
    }
    if !io_points.is_empty() {
        metrics.push(sum("container.disk.io", "Bytes read from and written to block devices.", "By", io_points));
    }

    if let Some(points) = gauge_int(stats.pids_current) {
        metrics.push(gauge("container.pids.count", "Processes and threads in the container.", "{pid}", points));
    }
    if let Some(points) = gauge_int(stats.pids_limit) {
        metrics.push(gauge("container.pids.limit", "Maximum processes and threads allowed.", "{pid}", points));
    }

    metrics
}

fn sum(name: &str, description: &str, unit: &str, data_points: Vec<NumberDataPoint>) -> Metric {
    Metric {
        name: name.to_string(),
        description: description.to_string(),
        unit: unit.to_string(),
        data: Some(metric::Data::Sum(Sum {
            data_points,
            aggregation_temporality: AggregationTemporality::Cumulative as i32,
            is_monotonic: true,
        })),
        ..Default::default()
    }
}

fn gauge(name: &str, description: &str, unit: &str, data_points: Vec<NumberDataPoint>) -> Metric {
    Metric {
        name: name.to_string(),
        description: description.to_string(),
        unit: unit.to_string(),
        data: Some(metric::Data::Gauge(Gauge { data_points })),
        ..Default::default()
    }
}

fn int_point(value: u64, attributes: Vec<KeyValue>, start: u64, now: u64) -> NumberDataPoint {
    NumberDataPoint {
        attributes,
        start_time_unix_nano: start,
        time_unix_nano: now,
        // OTLP integers are signed; no cgroup counter reaches 2^63.
        value: Some(number_data_point::Value::AsInt(i64::try_from(value).unwrap_or(i64::MAX))),
        ..Default::default()
    }
}

fn double_point(value: f64, attributes: Vec<KeyValue>, start: u64, now: u64) -> NumberDataPoint {
    NumberDataPoint {
        attributes,
        start_time_unix_nano: start,
        time_unix_nano: now,
        value: Some(number_data_point::Value::AsDouble(value)),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::any_value;

    const ID_A: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const ID_B: &str = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210";
    const ID_C: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const ID_D: &str = "dddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddd";
    const UID_1: &str = "1b2c3d4e-5f60-4a1b-8c2d-9e0f1a2b3c4d";
    const UID_2: &str = "99999999-8888-7777-6666-555555555555";

    fn write(root: &Path, relative: &str, contents: &str) {
        let path = root.join(relative);
        fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        fs::write(path, contents).expect("write");
    }

    fn mkdir(root: &Path, relative: &str) {
        fs::create_dir_all(root.join(relative)).expect("mkdir");
    }

    fn systemd_uid(uid: &str) -> String {
        uid.replace('-', "_")
    }

    fn write_v2_full(root: &Path, dir: &str) {
        write(
            root,
            &format!("{dir}/cpu.stat"),
            "usage_usec 123456\nuser_usec 100000\nsystem_usec 23456\nnr_periods 10\nnr_throttled 2\nthrottled_usec 5000\nnr_bursts 0\nburst_usec 0\n",
        );
        write(root, &format!("{dir}/cpu.max"), "max 100000\n");
        write(root, &format!("{dir}/memory.current"), "12345678\n");
        write(root, &format!("{dir}/memory.max"), "max\n");
        write(
            root,
            &format!("{dir}/memory.stat"),
            "anon 1234\nfile 5678\nkernel 0\nactive_anon 0\ninactive_file 100\nactive_file 5578\npgfault 42\npgmajfault 1\n",
        );
        write(root, &format!("{dir}/memory.events"), "low 0\nhigh 0\nmax 0\noom 1\noom_kill 1\noom_group_kill 0\n");
        write(
            root,
            &format!("{dir}/io.stat"),
            "8:0 rbytes=1024 wbytes=2048 rios=1 wios=2 dbytes=0 dios=0\n8:16 rbytes=1 wbytes=2 rios=1 wios=1 dbytes=0 dios=0\n",
        );
        write(root, &format!("{dir}/pids.current"), "7\n");
        write(root, &format!("{dir}/pids.max"), "max\n");
    }

    fn ids(found: &[ContainerCgroup]) -> Vec<(&str, Option<&str>)> {
        found.iter().map(|c| (c.container_id.as_str(), c.pod_uid.as_deref())).collect()
    }

    #[test]
    fn cgroup_v2_systemd_layout() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path();
        write(root, "cgroup.controllers", "cpuset cpu io memory hugetlb pids rdma misc\n");
        let burstable =
            format!("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice", systemd_uid(UID_1));
        let container_a = format!("{burstable}/cri-containerd-{ID_A}.scope");
        write_v2_full(root, &container_a);
        write(root, &format!("{burstable}/crio-conmon-{ID_C}.scope/cgroup.procs"), "");
        write(root, &format!("{burstable}/memory.current"), "1\n");
        let guaranteed = format!("kubepods.slice/kubepods-pod{}.slice/cri-containerd-{ID_B}.scope", systemd_uid(UID_2));
        write(root, &format!("{guaranteed}/cpu.max"), "50000 100000\n");
        write(root, &format!("{guaranteed}/memory.max"), "536870912\n");
        write(root, &format!("{guaranteed}/memory.current"), "50\n");
        write(root, &format!("{guaranteed}/memory.stat"), "anon 10\ninactive_file 100\n");
        write(root, &format!("{guaranteed}/io.stat"), "");
        write(root, &format!("{guaranteed}/pids.max"), "4096\n");
        // Podman with systemd: the container's processes live in a `container` sub-cgroup.
        mkdir(root, &format!("machine.slice/libpod-{ID_D}.scope/container"));
        mkdir(root, &format!("machine.slice/libpod-conmon-{ID_D}.scope"));
        mkdir(root, "system.slice/containerd.service");
        mkdir(root, "user.slice/user-1000.slice/session-3.scope");

        let reader = CgroupReader::new(root);
        assert_eq!(reader.version(), Some(CgroupVersion::V2));
        let found = reader.discover();
        assert_eq!(ids(&found), vec![(ID_A, Some(UID_1)), (ID_B, Some(UID_2)), (ID_D, None)]);
        assert!(found.iter().all(|c| c.version == CgroupVersion::V2));
        assert_eq!(found[0].relative_path, PathBuf::from(&container_a));
        assert_eq!(found[0].dirs.memory, Some(root.join(&container_a)));
        assert_eq!(found[2].dirs.cpu, Some(root.join(format!("machine.slice/libpod-{ID_D}.scope"))));

        let stats = reader.read(&found[0]);
        assert_eq!(
            stats,
            CgroupStats {
                cpu_user_ns: Some(100_000_000),
                cpu_system_ns: Some(23_456_000),
                cpu_usage_ns: Some(123_456_000),
                throttled_periods: Some(2),
                throttled_ns: Some(5_000_000),
                cpu_limit_cores: None,
                memory_usage_bytes: Some(12_345_678),
                memory_limit_bytes: None,
                memory_working_set_bytes: Some(12_345_578),
                memory_rss_bytes: Some(1234),
                page_faults: Some(42),
                major_page_faults: Some(1),
                oom_events: Some(1),
                io_read_bytes: Some(1025),
                io_write_bytes: Some(2050),
                pids_current: Some(7),
                pids_limit: None,
            }
        );

        let stats = reader.read(&found[1]);
        assert_eq!(
            stats,
            CgroupStats {
                cpu_limit_cores: Some(0.5),
                memory_usage_bytes: Some(50),
                memory_limit_bytes: Some(536_870_912),
                // inactive_file larger than usage (read at different moments) clamps to zero.
                memory_working_set_bytes: Some(0),
                memory_rss_bytes: Some(10),
                io_read_bytes: Some(0),
                io_write_bytes: Some(0),
                pids_limit: Some(4096),
                ..Default::default()
            }
        );

        assert_eq!(reader.read(&found[2]), CgroupStats::default());
    }

    #[test]
    fn cgroup_v2_cgroupfs_layout() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path();
        write(root, "cgroup.controllers", "cpu io memory pids\n");
        let burstable = format!("kubepods/burstable/pod{UID_1}/{ID_A}");
        write(root, &format!("{burstable}/memory.current"), "4096\n");
        write(root, &format!("{burstable}/memory.stat"), "anon 1\ninactive_file 96\npgfault 3\n");
        write(root, &format!("{burstable}/memory.events"), "low 0\nhigh 0\nmax 4\noom 2\n");
        write(root, &format!("{burstable}/cpu.max"), "garbage\n");
        write(root, &format!("{burstable}/pids.current"), "not a number\n");
        write(root, &format!("{burstable}/cpu.stat"), "usage_usec\nuser_usec x\nsystem_usec 5\n");
        write(root, &format!("kubepods/pod{UID_2}/{ID_B}/memory.current"), "1\n");
        write(root, &format!("kubepods/besteffort/pod{UID_2}/memory.current"), "1\n");
        write(root, "docker/0123456789ab/pids.current", "3\n");
        // A bare hex directory outside a pod or docker/ is not a container.
        mkdir(root, "process_api/f11b888592a43c4ca1889f6c6c880511");

        let reader = CgroupReader::new(root);
        let found = reader.discover();
        assert_eq!(ids(&found), vec![("0123456789ab", None), (ID_A, Some(UID_1)), (ID_B, Some(UID_2))]);

        let stats = reader.read(&found[1]);
        assert_eq!(
            stats,
            CgroupStats {
                cpu_system_ns: Some(5_000),
                memory_usage_bytes: Some(4096),
                memory_working_set_bytes: Some(4000),
                memory_rss_bytes: Some(1),
                page_faults: Some(3),
                oom_events: Some(2),
                ..Default::default()
            }
        );
        assert_eq!(reader.read(&found[0]).pids_current, Some(3));
    }

    /// Builds a v1 tree the way podman's cgroupfs manager does, with `cpu,cpuacct` co-mounted
    /// and reached through symlinks.
    #[test]
    fn cgroup_v1_libpod_parent_layout() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path();
        mkdir(root, "cpu,cpuacct");
        std::os::unix::fs::symlink(root.join("cpu,cpuacct"), root.join("cpu")).expect("symlink");
        std::os::unix::fs::symlink(root.join("cpu,cpuacct"), root.join("cpuacct")).expect("symlink");
        // Hybrid host: a controller-less v2 tree that must be ignored.
        write(root, "unified/cgroup.controllers", "");
        write(root, &format!("unified/libpod_parent/libpod-{ID_B}/cgroup.procs"), "");
        let container = format!("libpod_parent/libpod-{ID_A}");
        let cpu = format!("cpu,cpuacct/{container}");
        write(root, &format!("{cpu}/cpuacct.usage"), "1680000000\n");
        write(root, &format!("{cpu}/cpuacct.stat"), "user 123\nsystem 45\n");
        write(root, &format!("{cpu}/cpu.stat"), "nr_periods 10\nnr_throttled 2\nthrottled_time 5000000\n");
        write(root, &format!("{cpu}/cpu.cfs_quota_us"), "-1\n");
        write(root, &format!("{cpu}/cpu.cfs_period_us"), "100000\n");
        let memory = format!("memory/{container}");
        write(root, &format!("{memory}/memory.usage_in_bytes"), "1000\n");
        write(root, &format!("{memory}/memory.limit_in_bytes"), "9223372036854771712\n");
        write(
            root,
            &format!("{memory}/memory.stat"),
            "cache 1\nrss 2\ninactive_file 9\npgfault 9\ntotal_rss 2\ntotal_inactive_file 3\ntotal_pgfault 4\ntotal_pgmajfault 5\n",
        );
        write(root, &format!("{memory}/memory.oom_control"), "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n");
        write(
            root,
            &format!("blkio/{container}/blkio.throttle.io_service_bytes"),
            "8:0 Read 1024\n8:0 Write 2048\n8:0 Sync 0\n8:0 Async 3072\n8:0 Total 3072\nTotal 3072\n",
        );
        write(root, &format!("pids/{container}/pids.current"), "12\n");
        write(root, &format!("pids/{container}/pids.max"), "max\n");
        mkdir(root, &format!("memory/libpod_parent/libpod-conmon-{ID_A}"));
        mkdir(root, "memory/libpod_parent/conmon");

        let reader = CgroupReader::new(root);
        assert_eq!(reader.version(), Some(CgroupVersion::V1));
        let found = reader.discover();
        assert_eq!(ids(&found), vec![(ID_A, None)]);
        let dirs = &found[0].dirs;
        assert_eq!(dirs.cpu, Some(root.join("cpu").join(&container)));
        assert_eq!(dirs.cpuacct, Some(root.join("cpuacct").join(&container)));
        assert_eq!(dirs.blkio, Some(root.join("blkio").join(&container)));

        assert_eq!(
            reader.read(&found[0]),
            CgroupStats {
                cpu_user_ns: Some(1_230_000_000),
                cpu_system_ns: Some(450_000_000),
                cpu_usage_ns: Some(1_680_000_000),
                throttled_periods: Some(2),
                throttled_ns: Some(5_000_000),
                cpu_limit_cores: None,
                memory_usage_bytes: Some(1000),
                memory_limit_bytes: None,
                memory_working_set_bytes: Some(997),
                memory_rss_bytes: Some(2),
                page_faults: Some(4),
                major_page_faults: Some(5),
                oom_events: Some(0),
                io_read_bytes: Some(1024),
                io_write_bytes: Some(2048),
                pids_current: Some(12),
                pids_limit: None,
            }
        );
    }

    /// Separately mounted `cpu` and `cpuacct` (as on this build machine), kubelet's systemd
    /// driver, the recursive blkio file as fallback and no pids controller.
    #[test]
    fn cgroup_v1_systemd_kubepods_layout() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path();
        let pod = format!("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice", systemd_uid(UID_1));
        let container = format!("{pod}/cri-containerd-{ID_A}.scope");
        let guaranteed = format!("kubepods.slice/kubepods-pod{}.slice/docker-{ID_B}.scope", systemd_uid(UID_2));
        for controller in ["cpu", "cpuacct", "blkio"] {
            mkdir(root, &format!("{controller}/{container}"));
        }
        write(root, &format!("cpuacct/{container}/cpuacct.usage"), "999\n");
        write(root, &format!("cpu/{container}/cpu.cfs_quota_us"), "200000\n");
        write(root, &format!("cpu/{container}/cpu.cfs_period_us"), "100000\n");
        write(root, &format!("memory/{container}/memory.usage_in_bytes"), "5000\n");
        write(root, &format!("memory/{container}/memory.limit_in_bytes"), "268435456\n");
        write(root, &format!("memory/{container}/memory.stat"), "rss 300\ninactive_file 1000\npgfault 8\n");
        write(root, &format!("memory/{container}/memory.oom_control"), "oom_kill_disable 0\nunder_oom 0\n");
        write(root, &format!("blkio/{container}/blkio.throttle.io_service_bytes"), "Total 0\n");
        write(
            root,
            &format!("blkio/{container}/blkio.io_service_bytes_recursive"),
            "8:0 Read 10\n8:0 Write 20\n8:0 Total 30\n8:16 Read 1\n8:16 Write 2\n8:16 Total 3\nTotal 33\n",
        );
        write(root, &format!("memory/{pod}/crio-conmon-{ID_C}.scope/memory.usage_in_bytes"), "1\n");
        write(root, &format!("memory/{guaranteed}/memory.usage_in_bytes"), "1\n");
        write(root, &format!("memory/{guaranteed}/memory.limit_in_bytes"), "9223372036854775807\n");

        let reader = CgroupReader::new(root);
        assert_eq!(reader.version(), Some(CgroupVersion::V1));
        let found = reader.discover();
        assert_eq!(ids(&found), vec![(ID_A, Some(UID_1)), (ID_B, Some(UID_2))]);
        assert_eq!(found[0].dirs.pids, None);
        assert_eq!(found[1].dirs.cpu, None);

        assert_eq!(
            reader.read(&found[0]),
            CgroupStats {
                cpu_usage_ns: Some(999),
                cpu_limit_cores: Some(2.0),
                memory_usage_bytes: Some(5000),
                memory_limit_bytes: Some(268_435_456),
                memory_working_set_bytes: Some(4000),
                memory_rss_bytes: Some(300),
                page_faults: Some(8),
                io_read_bytes: Some(11),
                io_write_bytes: Some(22),
                ..Default::default()
            }
        );
        let guaranteed_stats = reader.read(&found[1]);
        assert_eq!(guaranteed_stats.memory_limit_bytes, None);
        assert_eq!(guaranteed_stats.memory_working_set_bytes, Some(1));
    }

    #[test]
    fn cgroup_classify_names() {
        assert_eq!(classify(&format!("crio-{ID_A}.scope"), false), DirKind::Container(ID_A.into()));
        assert_eq!(classify(&format!("libpod-{ID_A}"), false), DirKind::Container(ID_A.into()));
        assert_eq!(classify(&format!("libpod-conmon-{ID_A}.scope"), false), DirKind::Skip);
        assert_eq!(classify(&format!("crio-conmon-{ID_A}.scope"), false), DirKind::Skip);
        assert_eq!(classify(ID_A, false), DirKind::Other);
        assert_eq!(classify(ID_A, true), DirKind::Container(ID_A.into()));
        assert_eq!(classify(&ID_A.to_uppercase(), true), DirKind::Other);
        assert_eq!(classify("0123456789a", true), DirKind::Other);
        assert_eq!(classify(&format!("pod{UID_1}"), false), DirKind::Pod(UID_1.into()));
        assert_eq!(classify("kubepods-besteffort-pod1_2.slice", false), DirKind::Pod("1-2".into()));
        assert_eq!(classify("kubepods-besteffort.slice", false), DirKind::Other);
        assert_eq!(classify("system-pod1.slice", false), DirKind::Other);
        assert_eq!(classify("session-3.scope", false), DirKind::Other);
        assert_eq!(classify("pod", false), DirKind::Other);
    }

    #[test]
    fn cgroup_parsers_tolerate_odd_contents() {
        assert_eq!(parse_cpu_max("max 100000\n"), None);
        assert_eq!(parse_cpu_max("150000 100000\n"), Some(1.5));
        assert_eq!(parse_cpu_max("50000 0\n"), None);
        assert_eq!(parse_cpu_max(""), None);
        assert_eq!(parse_io_stat(""), (0, 0));
        assert_eq!(parse_io_stat("8:0 rbytes=x wbytes=5 junk\nnonsense\n"), (0, 5));
        let blkio = parse_blkio("garbage\n8:0 Read nope\n8:0 Write 7\n");
        assert_eq!((blkio.read, blkio.write), (0, 7));
        assert_eq!(keyed_value("a 1\nab 2\n", "ab"), Some(2));
        assert_eq!(keyed_value("a -1\n", "a"), None);
        assert_eq!(working_set(Some(10), None), Some(10));
        assert_eq!(working_set(None, Some(1)), None);

        let tmp = tempfile::tempdir().expect("tempdir");
        assert_eq!(CgroupReader::new(tmp.path()).version(), None);
        assert!(CgroupReader::new(tmp.path()).discover().is_empty());
        assert!(CgroupReader::new(tmp.path().join("missing")).discover().is_empty());
    }

    fn find<'a>(metrics: &'a [Metric], name: &str) -> &'a Metric {
        metrics.iter().find(|m| m.name == name).unwrap_or_else(|| panic!("metric {name} missing"))
    }

    fn sum_of(metric: &Metric) -> &Sum {
        match &metric.data {
            Some(metric::Data::Sum(sum)) => sum,
            other => panic!("{} is not a sum: {other:?}", metric.name),
        }
    }

    fn gauge_of(metric: &Metric) -> &Gauge {
        match &metric.data {
            Some(metric::Data::Gauge(gauge)) => gauge,
            other => panic!("{} is not a gauge: {other:?}", metric.name),
        }
    }

    fn attribute<'a>(point: &'a NumberDataPoint, key: &str) -> Option<&'a str> {
        point.attributes.iter().find(|kv| kv.key == key).and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
            any_value::Value::StringValue(value) => Some(value.as_str()),
            _ => None,
        })
    }

    fn value(point: &NumberDataPoint) -> number_data_point::Value {
        point.value.expect("point value")
    }

    #[test]
    fn cgroup_to_resource_metrics() {
        let identity = ContainerIdentity {
            namespace: Some("shop".into()),
            pod_name: Some("cart-0".into()),
            container_name: Some("cart".into()),
            container_id: Some(ID_A.into()),
            ..Default::default()
        };
        let stats = CgroupStats {
            cpu_user_ns: Some(1_500_000_000),
            cpu_system_ns: Some(250_000_000),
            cpu_usage_ns: Some(1_750_000_000),
            throttled_periods: Some(2),
            throttled_ns: Some(5_000_000),
            cpu_limit_cores: Some(0.5),
            memory_usage_bytes: Some(1000),
            memory_limit_bytes: None,
            memory_working_set_bytes: Some(900),
            memory_rss_bytes: Some(400),
            page_faults: Some(42),
            major_page_faults: Some(1),
            oom_events: Some(3),
            io_read_bytes: Some(1024),
            io_write_bytes: Some(2048),
            pids_current: Some(7),
            pids_limit: None,
        };
        let samples = vec![(identity.clone(), stats), (ContainerIdentity::default(), CgroupStats::default())];
        let out = to_resource_metrics(&samples, 100, 200);
        assert_eq!(out.len(), 1, "a container with nothing known is left out");
        let resource = out[0].resource.as_ref().expect("resource");
        assert_eq!(resource.attributes, identity.resource_attributes());
        let scope = &out[0].scope_metrics[0];
        assert_eq!(scope.scope.as_ref().map(|s| s.name.as_str()), Some("wake.agent.cgroup"));
        let metrics = &scope.metrics;
        let names: Vec<_> = metrics.iter().map(|m| (m.name.as_str(), m.unit.as_str())).collect();
        assert_eq!(
            names,
            vec![
                ("container.cpu.time", "s"),
                ("container.cpu.throttling_data.throttled_periods", "{period}"),
                ("container.cpu.throttling_data.throttled_time", "s"),
                ("container.cpu.limit", "{cpu}"),
                ("container.memory.usage", "By"),
                ("container.memory.working_set", "By"),
                ("container.memory.rss", "By"),
                ("container.memory.page_faults", "{fault}"),
                ("container.memory.major_page_faults", "{fault}"),
                ("container.memory.oom_events", "{event}"),
                ("container.disk.io", "By"),
                ("container.pids.count", "{pid}"),
            ]
        );

        let cpu = sum_of(find(metrics, "container.cpu.time"));
        assert!(cpu.is_monotonic);
        assert_eq!(cpu.aggregation_temporality, AggregationTemporality::Cumulative as i32);
        assert_eq!(cpu.data_points.len(), 2);
        assert_eq!(attribute(&cpu.data_points[0], "cpu.mode"), Some("user"));
        assert_eq!(value(&cpu.data_points[0]), number_data_point::Value::AsDouble(1.5));
        assert_eq!(attribute(&cpu.data_points[1], "cpu.mode"), Some("system"));
        assert_eq!(value(&cpu.data_points[1]), number_data_point::Value::AsDouble(0.25));
        assert_eq!((cpu.data_points[0].start_time_unix_nano, cpu.data_points[0].time_unix_nano), (100, 200));

        let throttled = sum_of(find(metrics, "container.cpu.throttling_data.throttled_time"));
        assert_eq!(value(&throttled.data_points[0]), number_data_point::Value::AsDouble(0.005));
        let periods = sum_of(find(metrics, "container.cpu.throttling_data.throttled_periods"));
        assert_eq!(value(&periods.data_points[0]), number_data_point::Value::AsInt(2));

        let limit = gauge_of(find(metrics, "container.cpu.limit"));
        assert_eq!(value(&limit.data_points[0]), number_data_point::Value::AsDouble(0.5));
        let working_set = gauge_of(find(metrics, "container.memory.working_set"));
        assert_eq!(value(&working_set.data_points[0]), number_data_point::Value::AsInt(900));
        assert_eq!(working_set.data_points[0].time_unix_nano, 200);

        let oom = sum_of(find(metrics, "container.memory.oom_events"));
        assert!(oom.is_monotonic);
        assert_eq!(value(&oom.data_points[0]), number_data_point::Value::AsInt(3));
        assert_eq!(oom.data_points[0].start_time_unix_nano, 100);

        let io = sum_of(find(metrics, "container.disk.io"));
        assert!(io.is_monotonic);
        let directions: Vec<_> = io.data_points.iter().map(|p| (attribute(p, "disk.io.direction"), value(p))).collect();
        assert_eq!(
            directions,
            vec![
                (Some("read"), number_data_point::Value::AsInt(1024)),
                (Some("write"), number_data_point::Value::AsInt(2048)),
            ]
        );
        let pids = gauge_of(find(metrics, "container.pids.count"));
        assert_eq!(value(&pids.data_points[0]), number_data_point::Value::AsInt(7));
    }

    #[test]
    fn cgroup_cpu_total_without_modes() {
        let stats = CgroupStats { cpu_usage_ns: Some(2_000_000_000), ..Default::default() };
        let out = to_resource_metrics(&[(ContainerIdentity::default(), stats)], 1, 2);
        let metrics = &out[0].scope_metrics[0].metrics;
        assert_eq!(metrics.len(), 1);
        let cpu = sum_of(&metrics[0]);
        assert_eq!(cpu.data_points.len(), 1);
        assert!(cpu.data_points[0].attributes.is_empty());
        assert_eq!(value(&cpu.data_points[0]), number_data_point::Value::AsDouble(2.0));
    }

    /// The real hierarchy of whatever machine runs the tests: nothing is assumed about its
    /// contents, only what holds on any host. Without a hierarchy there are no containers; each
    /// container is found once, by an id of 12 to 64 lowercase hex digits; each exported
    /// resource is one of them, with its id, in the order found.
    #[test]
    fn cgroup_real_sys_fs_cgroup_gives_each_container_once() {
        let reader = CgroupReader::new("/sys/fs/cgroup");
        let samples = reader.read_all();
        let ids: Vec<&str> = samples.iter().map(|(cgroup, _)| cgroup.container_id.as_str()).collect();
        if reader.version().is_none() {
            assert!(ids.is_empty(), "containers without a hierarchy: {ids:?}");
        }
        assert_eq!(ids.iter().collect::<HashSet<_>>().len(), ids.len(), "a container found twice: {ids:?}");
        let is_id = |id: &str| {
            (12..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        assert!(ids.iter().all(|id| is_id(id)), "{ids:?}");
        let with_identity: Vec<_> = samples
            .iter()
            .map(|(cgroup, stats)| {
                (
                    ContainerIdentity { container_id: Some(cgroup.container_id.clone()), ..Default::default() },
                    stats.clone(),
                )
            })
            .collect();
        let resources = to_resource_metrics(&with_identity, 0, 1);
        let exported: Vec<String> = resources
            .iter()
            .map(|resource| {
                let attributes = &resource.resource.as_ref().expect("a resource").attributes;
                let id = attributes.iter().find(|kv| kv.key == "container.id").expect("container.id");
                match id.value.as_ref().and_then(|v| v.value.as_ref()) {
                    Some(any_value::Value::StringValue(id)) => id.clone(),
                    other => panic!("container.id is not a string: {other:?}"),
                }
            })
            .collect();
        // A subsequence of the containers found: those without any statistic are left out.
        let mut found = ids.iter();
        for id in &exported {
            assert!(found.any(|found| found == id), "{id} is not among {ids:?}, in order");
        }
        assert!(resources.iter().all(|r| !r.scope_metrics[0].metrics.is_empty()));
    }
}
