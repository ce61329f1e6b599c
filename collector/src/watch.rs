//! What the reader must look at after file-system events under the log directories.
//!
//! inotify (through `notify`) reports far more than the reader needs: `notify` watches
//! `IN_OPEN` and `IN_CLOSE_*` too, so the agent's own directory scans and file opens come back
//! as events. Reacting to them made an idle agent with 1,000 files spend a tenth of a core
//! reading every file again, because each pass opened directories that raised more events. So
//! [`classify`] keeps only what can bring new data or new files:
//! - a file's data changed (`IN_MODIFY`, truncation included): read that file;
//! - something was created, deleted or renamed (files or directories): scan the directories,
//!   and look at the files under that path (a renamed or deleted file is read to its end);
//! - the kernel's queue overflowed: scan and look at everything;
//! - the watcher failed (inotify's watch limit: new directories go unwatched): poll from then on.
//!
//! Opens, reads, closes and attribute changes are dropped where they arrive and never wake the
//! reader. Events accumulate, deduplicated by path, in one shared [`Wakeups`] until the reader
//! takes them, so a reader that is blocked on a full queue holds one entry per changed file,
//! not one per write.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::time::Duration;

use notify::event::{EventKind, ModifyKind};
use parking_lot::Mutex;
use tracing::{info, warn};

/// Paths held for the reader before they are given up for a full look: a bound on memory when
/// the reader is blocked and files keep appearing.
const MAX_WAKEUP_PATHS: usize = 100_000;

/// What an event asks of the reader.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wake {
    /// The data of the event's files changed: read them.
    Changed,
    /// Files or directories appeared, went or moved: scan, and look at the files there.
    Structural,
    /// Events were lost (or the event is of no known kind): scan and look at every file.
    Rescan,
}

/// What `event` asks of the reader, if anything.
pub fn classify(event: &notify::Event) -> Option<Wake> {
    if event.need_rescan() {
        return Some(Wake::Rescan);
    }
    match event.kind {
        // Opens, reads and closes are what the agent itself does to files and directories.
        EventKind::Access(_) => None,
        // chmod, chown, times and link counts: no data (a deletion also raises IN_DELETE).
        EventKind::Modify(ModifyKind::Metadata(_)) => None,
        EventKind::Modify(ModifyKind::Name(_)) | EventKind::Create(_) | EventKind::Remove(_) => Some(Wake::Structural),
        EventKind::Modify(_) => Some(Wake::Changed),
        EventKind::Any | EventKind::Other => Some(Wake::Rescan),
    }
}

/// Events gathered since the reader last looked.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Wakeups {
    /// Files whose data changed.
    pub changed: HashSet<PathBuf>,
    /// Files or directories created, deleted or renamed (either name of a rename).
    pub structural: HashSet<PathBuf>,
    /// Scan and look at every file.
    pub rescan: bool,
    /// The watcher lost track of directories: events can no longer be relied on.
    pub watch_failed: bool,
}

impl Wakeups {
    pub fn is_empty(&self) -> bool {
        self.changed.is_empty() && self.structural.is_empty() && !self.rescan && !self.watch_failed
    }

    fn add(&mut self, wake: Wake, paths: &[PathBuf]) {
        match wake {
            Wake::Changed => self.changed.extend(paths.iter().cloned()),
            Wake::Structural if !paths.is_empty() => self.structural.extend(paths.iter().cloned()),
            Wake::Structural | Wake::Rescan => self.rescan = true,
        }
        if self.changed.len() + self.structural.len() > MAX_WAKEUP_PATHS {
            self.changed.clear();
            self.structural.clear();
            self.rescan = true;
        }
    }
}

/// The receiving end of the events: what the reader waits on.
struct Inbox {
    wakeups: Arc<Mutex<Wakeups>>,
    /// Rung (never more than once queued) after each addition to `wakeups`.
    bell: Receiver<()>,
}

/// The handler `notify` calls for every event: classify, keep what matters, ring the bell.
fn handler(
    wakeups: Arc<Mutex<Wakeups>>,
    bell: SyncSender<()>,
) -> impl Fn(notify::Result<notify::Event>) + Send + 'static {
    move |event| {
        match &event {
            Ok(event) => match classify(event) {
                Some(wake) => wakeups.lock().add(wake, &event.paths),
                None => return,
            },
            // notify reports only the watch limit this way: a new directory went unwatched.
            Err(error) => {
                warn!(%error, "inotify cannot watch every directory; polling instead");
                let mut wakeups = wakeups.lock();
                wakeups.rescan = true;
                wakeups.watch_failed = true;
            }
        }
        // A bell already rung wakes the reader, which then takes this addition too; and a
        // reader that is gone has nothing to be woken for.
        let _ = bell.try_send(());
    }
}

/// The inotify watch on the log directories, and the events it gathered.
pub struct Watch {
    watcher: Option<notify::RecommendedWatcher>,
    roots: Vec<(PathBuf, bool)>,
    failed: bool,
    inbox: Inbox,
    ring: SyncSender<()>,
}

/// Wakes a reader waiting in [`Watch::wait`] (at shutdown), from any thread.
pub struct Waker(SyncSender<()>);

impl Waker {
    pub fn wake(&self) {
        // Already rung, or nobody waits any more: either way nothing to do.
        let _ = self.0.try_send(());
    }
}

impl Watch {
    /// Watches every directory of `roots` that exists (recursively); the others are watched
    /// once [`Watch::watch_new_roots`] finds them. If inotify is unavailable, [`Watch::polling`]
    /// says so and the reader polls.
    pub fn new(roots: &[PathBuf]) -> Watch {
        let wakeups = Arc::new(Mutex::new(Wakeups::default()));
        let (ring, bell) = sync_channel(1);
        let watcher = match notify::recommended_watcher(handler(wakeups.clone(), ring.clone())) {
            Ok(watcher) => Some(watcher),
            Err(error) => {
                warn!(%error, "inotify unavailable; finding and reading files by polling");
                None
            }
        };
        let mut roots: Vec<(PathBuf, bool)> = roots.iter().map(|root| (root.clone(), false)).collect();
        roots.dedup_by(|a, b| a.0 == b.0);
        let mut watch = Watch { failed: watcher.is_none(), watcher, roots, inbox: Inbox { wakeups, bell }, ring };
        watch.watch_new_roots();
        watch
    }

    /// Whether events cannot be relied on (no inotify, or a directory could not be watched), so
    /// that the reader must scan and look at every file on its own.
    pub fn polling(&self) -> bool {
        self.failed
    }

    /// Whether some root does not exist yet, so the reader should check now and then.
    pub fn missing_roots(&self) -> bool {
        !self.failed && self.roots.iter().any(|(_, watched)| !watched)
    }

    /// Watches the roots that appeared since; true if any did.
    pub fn watch_new_roots(&mut self) -> bool {
        use notify::{RecursiveMode, Watcher};
        let Some(watcher) = self.watcher.as_mut() else { return false };
        let mut added = false;
        for (root, watched) in &mut self.roots {
            if *watched || !root.is_dir() {
                continue;
            }
            match watcher.watch(root, RecursiveMode::Recursive) {
                Ok(()) => {
                    info!(dir = %root.display(), "watching");
                    *watched = true;
                    added = true;
                }
                Err(error) => {
                    warn!(dir = %root.display(), %error, "cannot watch; polling instead");
                    self.failed = true;
                }
            }
        }
        added
    }

    pub fn waker(&self) -> Waker {
        Waker(self.ring.clone())
    }

    /// Waits up to `timeout` for an event that matters (or a [`Waker`]), then hands over
    /// everything gathered (possibly nothing).
    pub fn wait(&mut self, timeout: Duration) -> Wakeups {
        // `self.ring` keeps the channel connected, so this waits (it never fails at once).
        let _ = self.inbox.bell.recv_timeout(timeout);
        self.take()
    }

    /// Everything gathered so far, without waiting.
    pub fn take(&mut self) -> Wakeups {
        let wakeups = std::mem::take(&mut *self.inbox.wakeups.lock());
        self.failed |= wakeups.watch_failed;
        wakeups
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::path::Path;

    use notify::event::{AccessKind, AccessMode, CreateKind, DataChange, Flag, MetadataKind, RemoveKind, RenameMode};

    use super::*;

    fn event(kind: EventKind, path: &str) -> notify::Event {
        notify::Event::new(kind).add_path(PathBuf::from(path))
    }

    #[test]
    fn opens_reads_closes_and_attributes_are_dropped() {
        for kind in [
            EventKind::Access(AccessKind::Open(AccessMode::Any)),
            EventKind::Access(AccessKind::Read),
            EventKind::Access(AccessKind::Close(AccessMode::Read)),
            EventKind::Access(AccessKind::Close(AccessMode::Write)),
            EventKind::Modify(ModifyKind::Metadata(MetadataKind::Any)),
        ] {
            assert_eq!(classify(&event(kind, "/pods/a/0.log")), None, "{kind:?}");
        }
        assert_eq!(classify(&event(EventKind::Modify(ModifyKind::Data(DataChange::Any)), "/x")), Some(Wake::Changed));
        for kind in [
            EventKind::Create(CreateKind::File),
            EventKind::Create(CreateKind::Folder),
            EventKind::Remove(RemoveKind::File),
            EventKind::Remove(RemoveKind::Folder),
            EventKind::Modify(ModifyKind::Name(RenameMode::From)),
            EventKind::Modify(ModifyKind::Name(RenameMode::To)),
        ] {
            assert_eq!(classify(&event(kind, "/x")), Some(Wake::Structural), "{kind:?}");
        }
        let overflow = notify::Event::new(EventKind::Other).set_flag(Flag::Rescan);
        assert_eq!(classify(&overflow), Some(Wake::Rescan));
    }

    #[test]
    fn dropped_events_do_not_ring_and_the_rest_gather_by_path() {
        let wakeups = Arc::new(Mutex::new(Wakeups::default()));
        let (ring, bell) = sync_channel(1);
        let handle = handler(wakeups.clone(), ring);
        for _ in 0..100 {
            handle(Ok(event(EventKind::Access(AccessKind::Open(AccessMode::Any)), "/pods/a")));
            handle(Ok(event(EventKind::Access(AccessKind::Close(AccessMode::Read)), "/pods/a")));
        }
        assert!(bell.try_recv().is_err(), "an open or close woke the reader");
        assert!(wakeups.lock().is_empty());

        for _ in 0..100 {
            handle(Ok(event(EventKind::Modify(ModifyKind::Data(DataChange::Any)), "/pods/a/0.log")));
        }
        handle(Ok(event(EventKind::Create(CreateKind::File), "/pods/b/0.log")));
        assert!(bell.try_recv().is_ok());
        let expected = Wakeups {
            changed: HashSet::from([PathBuf::from("/pods/a/0.log")]),
            structural: HashSet::from([PathBuf::from("/pods/b/0.log")]),
            ..Wakeups::default()
        };
        assert_eq!(std::mem::take(&mut *wakeups.lock()), expected);

        handle(Err(notify::Error::new(notify::ErrorKind::MaxFilesWatch)));
        let failed = std::mem::take(&mut *wakeups.lock());
        assert!(failed.rescan && failed.watch_failed);
    }

    #[test]
    fn a_watcher_past_the_watch_limit_turns_to_polling() {
        let dir = tempfile::tempdir().unwrap();
        let mut watch = Watch::new(&[dir.path().to_path_buf(), dir.path().join("not-yet")]);
        assert!(!watch.polling() && watch.missing_roots());
        handler(watch.inbox.wakeups.clone(), watch.ring.clone())(Err(notify::Error::new(
            notify::ErrorKind::MaxFilesWatch,
        )));
        assert!(watch.take().rescan);
        assert!(watch.polling());
        // Polling covers the missing root too.
        assert!(!watch.missing_roots());
    }

    /// Against the real inotify: what the agent itself does to the tree (list directories, open
    /// and read files) raises nothing; the write that follows it is all that arrives.
    #[test]
    fn the_agents_own_scans_and_reads_raise_no_wakeup() {
        let dir = tempfile::tempdir().unwrap();
        let container = dir.path().join("ns_pod_uid").join("app");
        std::fs::create_dir_all(&container).unwrap();
        let log = container.join("0.log");
        let other = container.join("1.log");
        std::fs::write(&log, "first\n").unwrap();
        std::fs::write(&other, "other\n").unwrap();
        let mut watch = Watch::new(&[dir.path().to_path_buf()]);
        assert!(!watch.polling());

        for _ in 0..20 {
            for entry in walk(dir.path()) {
                if entry.is_file() {
                    let mut text = String::new();
                    std::fs::File::open(&entry).unwrap().read_to_string(&mut text).unwrap();
                }
            }
        }
        // Events arrive in order: once this write's arrives, any event of the reads before it has.
        std::fs::OpenOptions::new().append(true).open(&log).unwrap().write_all(b"second\n").unwrap();
        let mut gathered = Wakeups::default();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !gathered.changed.contains(&log) {
            assert!(std::time::Instant::now() < deadline, "no event for the write: {gathered:?}");
            let more = watch.wait(Duration::from_millis(100));
            gathered.changed.extend(more.changed);
            gathered.structural.extend(more.structural);
            gathered.rescan |= more.rescan;
        }
        assert_eq!(gathered, Wakeups { changed: HashSet::from([log]), ..Wakeups::default() });
    }

    fn walk(dir: &Path) -> Vec<PathBuf> {
        let mut paths = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                paths.extend(walk(&path));
            }
            paths.push(path);
        }
        paths
    }
}
