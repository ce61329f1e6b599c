//! Log files for the agent benchmark, written as container runtimes write them, from the
//! benchmark corpus (`benches/common/mod.rs`).
//!
//! Logical line `g` is corpus row `g` (its timestamp prefix identifies it: 8.64 ms per row, so no
//! two rows share a millisecond), lengthened for a few rows so that line lengths spread the way
//! real containers' do: 2 % of the lines get 1–4 KiB more (a stack trace, a dumped request), 1 in
//! 2,000 becomes a 16–64 KiB payload. It belongs to container `g % containers` and goes to
//! `stderr` when `g % 10 == 9`, as the corpus says.
//!
//! - CRI (containerd, CRI-O): `<time> <stream> <P|F> <text>` records in
//!   `var/log/pods/<ns>_<pod>_<uid>/<container>/0.log`, with kubelet's
//!   `var/log/containers/<pod>_<ns>_<container>-<id>.log` symlinks. A line over 16 KiB is cut into
//!   `P` records of 16 KiB and an `F` (containerd's default `max_container_log_line_size`), and 1 %
//!   of the other lines reach the file in two writes, a `P` then an `F` (the application flushed
//!   half a line).
//! - Docker `json-file`: `{"log":…,"stream":…,"time":…}` lines in
//!   `var/lib/docker/containers/<id>/<id>-json.log` (with the `config.v2.json` cri-dockerd writes);
//!   a line over 16 KiB is cut into 16 KiB messages without the newline, as Docker's log copier
//!   does, the last one ending in `\n`.
//!
//! [`Written`] records what was written: the exact number of logical lines, each line's length,
//! their bytes, and an order-independent checksum of their texts, which the sink (`sink.rs`)
//! recomputes from what it received.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::common::{Corpus, civil_from_days, splitmix64};

/// containerd's default `max_container_log_line_size`; Docker's json-file logger cuts at the
/// same size.
pub const RUNTIME_SPLIT_BYTES: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Cri,
    Docker,
}

/// When to stop writing.
#[derive(Debug, Clone, Copy)]
pub enum Bound {
    /// Until the files hold at least this many bytes (the line that crosses it is the last).
    Bytes(u64),
    Lines(u64),
}

/// A node's file system, rooted in a temporary directory.
#[derive(Debug, Clone)]
pub struct Node {
    pub root: PathBuf,
}

impl Node {
    pub fn new(root: impl Into<PathBuf>) -> Node {
        Node { root: root.into() }
    }

    pub fn log_root(&self) -> PathBuf {
        self.root.join("var/log/pods")
    }

    pub fn containers_dir(&self) -> PathBuf {
        self.root.join("var/log/containers")
    }

    pub fn docker_root(&self) -> PathBuf {
        self.root.join("var/lib/docker/containers")
    }

    pub fn cgroup_root(&self) -> PathBuf {
        self.root.join("sys/fs/cgroup")
    }

    /// A glob for every CRI log file (Fluent Bit's `Path`).
    pub fn cri_glob(&self) -> String {
        format!("{}/*/*/*.log", self.log_root().display())
    }
}

/// What a generator wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Written {
    /// Logical lines `first_row..first_row + lines`, each exactly once.
    pub first_row: u64,
    pub lines: u64,
    /// Physical records (CRI `P` and `F` records, Docker json lines).
    pub records: u64,
    /// Logical lines written as more than one record.
    pub split_lines: u64,
    /// Bytes in the files.
    pub file_bytes: u64,
    /// Bytes of the lines' texts, as a tailer should deliver them (no newline).
    pub text_bytes: u64,
    /// Sum (wrapping) of [`fingerprint`] over the lines' texts.
    pub checksum: u64,
    pub longest_line: usize,
    pub files: u64,
    /// Each line's text length, by row.
    pub lengths: Lengths,
}

/// The text length of each line written, by row (a line arriving cut, or joined to another,
/// has another length).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Lengths(pub Vec<u32>);

impl std::fmt::Debug for Lengths {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[{} lengths]", self.0.len())
    }
}

/// The identity of container `c`: namespace `ns-<c % 10>`, pod `pod-<c>`, container `app`.
#[derive(Debug, Clone)]
pub struct Container {
    pub namespace: String,
    pub pod: String,
    pub uid: String,
    pub name: &'static str,
    pub id: String,
}

impl Container {
    pub fn new(c: u64) -> Container {
        let id = (0..4).map(|k| format!("{:016x}", splitmix64(c.wrapping_mul(4).wrapping_add(k)))).collect();
        Container {
            namespace: format!("ns-{}", c % 10),
            pod: format!("pod-{c}"),
            uid: format!("{:08x}-0000-4000-8000-{c:012x}", splitmix64(c) as u32),
            name: "app",
            id,
        }
    }

    fn cri_path(&self, node: &Node) -> PathBuf {
        node.log_root().join(format!("{}_{}_{}", self.namespace, self.pod, self.uid)).join(self.name).join("0.log")
    }

    fn docker_path(&self, node: &Node) -> PathBuf {
        node.docker_root().join(&self.id).join(format!("{}-json.log", self.id))
    }
}

/// A 64-bit hash of `bytes`, the same in the generator and the sink.
pub fn fingerprint(bytes: &[u8]) -> u64 {
    const K: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut hash = 0x243F_6A88_85A3_08D3 ^ bytes.len() as u64;
    let mut words = bytes.chunks_exact(8);
    for word in &mut words {
        let word = u64::from_le_bytes([word[0], word[1], word[2], word[3], word[4], word[5], word[6], word[7]]);
        hash = (hash ^ word).wrapping_mul(K).rotate_left(29);
    }
    let mut tail = [0u8; 8];
    tail[..words.remainder().len()].copy_from_slice(words.remainder());
    splitmix64((hash ^ u64::from_le_bytes(tail)).wrapping_mul(K))
}

/// The text of logical line `g`.
pub fn line(corpus: &Corpus, g: u64) -> String {
    let mut text = corpus.row(g).body;
    let shape = splitmix64(g ^ 0x5EED_1E4C_7A11_0000);
    let extra = match shape % 2000 {
        0 => 16 * 1024 + (shape >> 16) as usize % (48 * 1024),
        1..=40 => 1024 + (shape >> 16) as usize % (3 * 1024),
        _ => 0,
    };
    if extra > 0 {
        let target = text.len() + extra;
        let mut k = 0;
        while text.len() < target {
            text.push_str(" | ");
            text.push_str(corpus.loghub_line(g.wrapping_mul(31).wrapping_add(k)));
            k += 1;
        }
        let mut end = target;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

/// Whether line `g`, short enough to be written whole, reaches a CRI file as `P` then `F`.
fn flushed_in_halves(g: u64) -> bool {
    splitmix64(g ^ 0x0F1A_5BED_0000_0001).is_multiple_of(100)
}

/// RFC 3339 with nanoseconds, as runtimes write times: `2026-11-22T00:00:00.008640000Z`.
pub fn rfc3339_nanos(time_ns: i64) -> String {
    let secs = time_ns.div_euclid(1_000_000_000);
    let nanos = time_ns.rem_euclid(1_000_000_000);
    let (year, month, day) = civil_from_days(secs.div_euclid(86_400));
    let second_of_day = secs.rem_euclid(86_400);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        second_of_day / 3600,
        second_of_day / 60 % 60,
        second_of_day % 60
    )
}

/// Splits `text` into pieces of at most `max` bytes, on character boundaries.
pub fn pieces(text: &str, max: usize) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = text;
    while rest.len() > max {
        let mut cut = max;
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        out.push(&rest[..cut]);
        rest = &rest[cut..];
    }
    out.push(rest);
    out
}

#[derive(serde::Serialize)]
struct DockerLine<'a> {
    log: &'a str,
    stream: &'a str,
    time: &'a str,
}

/// Writes `containers` containers' log files under `node` in `format`, lines `0..` until
/// `bound`.
pub fn write(corpus: &Corpus, node: &Node, format: Format, containers: u64, bound: Bound) -> std::io::Result<Written> {
    let mut files = Vec::new();
    for c in 0..containers {
        let container = Container::new(c);
        let path = match format {
            Format::Cri => {
                let path = container.cri_path(node);
                std::fs::create_dir_all(node.containers_dir())?;
                let link = node
                    .containers_dir()
                    .join(format!("{}_{}_{}-{}.log", container.pod, container.namespace, container.name, container.id));
                std::os::unix::fs::symlink(&path, link)?;
                path
            }
            Format::Docker => {
                let path = container.docker_path(node);
                std::fs::create_dir_all(path.parent().unwrap_or(node.root.as_path()))?;
                write_docker_config(&container, &path.with_file_name("config.v2.json"))?;
                path
            }
        };
        std::fs::create_dir_all(path.parent().unwrap_or(node.root.as_path()))?;
        files.push(BufWriter::with_capacity(64 * 1024, File::create(&path)?));
    }
    let mut written = Written { files: containers, ..Written::default() };
    let mut record = Vec::with_capacity(64 * 1024);
    let mut g = 0;
    loop {
        let done = match bound {
            Bound::Bytes(bytes) => written.file_bytes >= bytes,
            Bound::Lines(lines) => g >= lines,
        };
        if done {
            break;
        }
        let text = line(corpus, g);
        let time = rfc3339_nanos(Corpus::time_ns(g));
        let stream = if g % 10 == 9 { "stderr" } else { "stdout" };
        record.clear();
        let split = match format {
            Format::Cri => {
                let mut parts = pieces(&text, RUNTIME_SPLIT_BYTES);
                if parts.len() == 1 && flushed_in_halves(g) && text.len() > 20 {
                    let mut half = text.len() / 2;
                    while !text.is_char_boundary(half) {
                        half -= 1;
                    }
                    parts = vec![&text[..half], &text[half..]];
                }
                let last = parts.len() - 1;
                for (i, part) in parts.iter().enumerate() {
                    let tag = if i == last { "F" } else { "P" };
                    writeln!(record, "{time} {stream} {tag} {part}")?;
                }
                parts.len()
            }
            Format::Docker => {
                let parts = pieces(&text, RUNTIME_SPLIT_BYTES);
                let last = parts.len() - 1;
                for (i, part) in parts.iter().enumerate() {
                    let log = if i == last { format!("{part}\n") } else { (*part).to_string() };
                    serde_json::to_writer(&mut record, &DockerLine { log: &log, stream, time: &time })?;
                    record.push(b'\n');
                }
                parts.len()
            }
        };
        let file = (g % containers) as usize;
        files[file].write_all(&record)?;
        written.lines += 1;
        written.records += split as u64;
        written.split_lines += u64::from(split > 1);
        written.file_bytes += record.len() as u64;
        written.text_bytes += text.len() as u64;
        written.checksum = written.checksum.wrapping_add(fingerprint(text.as_bytes()));
        written.longest_line = written.longest_line.max(text.len());
        // A line is far below 4 GiB (the longest is 64 KiB).
        written.lengths.0.push(u32::try_from(text.len()).unwrap_or(u32::MAX));
        g += 1;
    }
    for mut file in files {
        file.flush()?;
    }
    Ok(written)
}

/// The `config.v2.json` cri-dockerd leaves beside a container's log: its name and Kubernetes
/// labels.
fn write_docker_config(container: &Container, path: &Path) -> std::io::Result<()> {
    let config = serde_json::json!({
        "ID": container.id,
        "Name": format!("/k8s_{}_{}_{}_{}_0", container.name, container.pod, container.namespace, container.uid),
        "Config": {
            "Image": "registry.local/app:1.0",
            "Labels": {
                "io.kubernetes.pod.namespace": container.namespace,
                "io.kubernetes.pod.name": container.pod,
                "io.kubernetes.pod.uid": container.uid,
                "io.kubernetes.container.name": container.name,
                "io.kubernetes.container.restartCount": "0"
            }
        }
    });
    std::fs::write(path, config.to_string())
}

/// A cgroup v2 tree (systemd driver, as kubelet sets it up) with one burstable pod per container
/// `0..containers`, each container's scope holding the files the agent reads, in the kernel's
/// formats.
pub fn write_cgroup_v2(node: &Node, containers: u64) -> std::io::Result<()> {
    let root = node.cgroup_root();
    std::fs::create_dir_all(&root)?;
    std::fs::write(root.join("cgroup.controllers"), "cpuset cpu io memory hugetlb pids rdma misc\n")?;
    let qos = root.join("kubepods.slice/kubepods-burstable.slice");
    for c in 0..containers {
        let container = Container::new(c);
        let pod = qos.join(format!("kubepods-burstable-pod{}.slice", container.uid.replace('-', "_")));
        let scope = pod.join(format!("cri-containerd-{}.scope", container.id));
        std::fs::create_dir_all(&scope)?;
        let n = splitmix64(c) % 1000 + 1;
        for dir in [&pod, &scope] {
            std::fs::write(
                dir.join("cgroup.procs"),
                if dir == &scope { format!("{}\n", 1000 + c) } else { String::new() },
            )?;
            std::fs::write(dir.join("memory.current"), format!("{}\n", n * 1_048_576))?;
        }
        let files = [
            (
                "cpu.stat",
                format!(
                    "usage_usec {}\nuser_usec {}\nsystem_usec {}\ncore_sched.force_idle_usec 0\nnr_periods {n}\n\
                     nr_throttled 0\nthrottled_usec 0\nnr_bursts 0\nburst_usec 0\n",
                    n * 3_000_000,
                    n * 2_000_000,
                    n * 1_000_000
                ),
            ),
            ("cpu.max", "200000 100000\n".to_string()),
            ("cpu.weight", "79\n".to_string()),
            ("memory.max", "536870912\n".to_string()),
            ("memory.stat", memory_stat(n)),
            ("memory.events", "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\noom_group_kill 0\n".to_string()),
            ("io.stat", format!("254:0 rbytes={} wbytes={} rios={n} wios={n} dbytes=0 dios=0\n", n * 4096, n * 8192)),
            ("pids.current", format!("{}\n", n % 40 + 1)),
            ("pids.max", "max\n".to_string()),
        ];
        for (name, contents) in files {
            std::fs::write(scope.join(name), contents)?;
        }
    }
    Ok(())
}

/// `memory.stat` of a cgroup v2 container as Linux 6.1 writes it.
fn memory_stat(n: u64) -> String {
    let page = 4096;
    let anon = n * 700 * page;
    let file = n * 300 * page;
    [
        ("anon", anon),
        ("file", file),
        ("kernel", n * 20 * page),
        ("kernel_stack", n * 16384),
        ("pagetables", n * 8 * page),
        ("sec_pagetables", 0),
        ("percpu", 960),
        ("sock", 0),
        ("vmalloc", 0),
        ("shmem", 0),
        ("zswap", 0),
        ("zswapped", 0),
        ("file_mapped", file / 3),
        ("file_dirty", 0),
        ("file_writeback", 0),
        ("swapcached", 0),
        ("anon_thp", 0),
        ("file_thp", 0),
        ("shmem_thp", 0),
        ("inactive_anon", anon),
        ("active_anon", 0),
        ("inactive_file", file / 2),
        ("active_file", file / 2),
        ("unevictable", 0),
        ("slab_reclaimable", n * 4 * page),
        ("slab_unreclaimable", n * 2 * page),
        ("slab", n * 6 * page),
        ("workingset_refault_anon", 0),
        ("workingset_refault_file", n),
        ("workingset_activate_anon", 0),
        ("workingset_activate_file", 0),
        ("workingset_restore_anon", 0),
        ("workingset_restore_file", 0),
        ("workingset_nodereclaim", 0),
        ("pgscan", 0),
        ("pgsteal", 0),
        ("pgscan_kswapd", 0),
        ("pgscan_direct", 0),
        ("pgsteal_kswapd", 0),
        ("pgsteal_direct", 0),
        ("pgfault", n * 5000),
        ("pgmajfault", n),
        ("pgrefill", 0),
        ("pgactivate", n * 10),
        ("pgdeactivate", 0),
        ("pglazyfree", 0),
        ("pglazyfreed", 0),
        ("zswpin", 0),
        ("zswpout", 0),
        ("thp_fault_alloc", 0),
        ("thp_collapse_alloc", 0),
    ]
    .iter()
    .map(|(key, value)| format!("{key} {value}\n"))
    .collect()
}
