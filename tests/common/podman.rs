//! Real containers for the end-to-end tests: podman + runc running busybox-static, logging
//! with conmon's `k8s-file` driver (CRI format), in cgroups the agent can read without systemd.
//!
//! Needs root, podman, runc and busybox-static (scripts/test.sh installs them).

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The image every container runs, imported by [`Podman::new`].
pub const IMAGE: &str = "localhost/wake-test-busybox:latest";

/// podman with a project-local containers.conf (this sandbox refuses podman's default ulimits).
/// Dropping it removes the containers it created and did not remove.
pub struct Podman {
    /// podman (and the conmon it starts, which writes an `oom` file into its working directory
    /// when the kernel kills a container) runs here.
    dir: PathBuf,
    conf: PathBuf,
    /// podman's events log (`events_logger = "file"`): the private storage's own.
    events_log: PathBuf,
    storage: Option<PrivateStorage>,
    names: Vec<String>,
}

/// The `--root` and `--runroot` of a containers/storage only one test uses.
struct PrivateStorage {
    root: PathBuf,
    runroot: PathBuf,
}

impl Podman {
    /// podman on the host's containers/storage; its files go to `dir`.
    pub fn new(dir: &Path) -> Podman {
        Podman::with_storage(dir, None)
    }

    /// podman on its own containers/storage under `dir`, so that the test sees only its own
    /// containers.
    pub fn with_private_storage(dir: &Path) -> Podman {
        Podman::with_storage(dir, Some(PrivateStorage { root: dir.join("storage"), runroot: dir.join("run") }))
    }

    fn with_storage(dir: &Path, storage: Option<PrivateStorage>) -> Podman {
        let found = Command::new("podman").arg("--version").output().is_ok_and(|o| o.status.success());
        assert!(found, "podman is needed (apt-get install podman runc busybox-static; scripts/test.sh does it)");
        let conf = dir.join("containers.conf");
        // A private storage gets its own events log too, so that its test sees only its events.
        let events_log = if storage.is_some() {
            dir.join("podman-events.log")
        } else {
            PathBuf::from("/run/libpod/events/events.log")
        };
        let mut text = "[containers]\ndefault_ulimits = []\n".to_string();
        if storage.is_some() {
            text += &format!(
                "[engine]\nevents_logger = \"file\"\nevents_logfile_path = {:?}\n",
                events_log.display().to_string()
            );
        }
        std::fs::write(&conf, text).expect("containers.conf");
        let podman = Podman { dir: dir.to_path_buf(), conf, events_log, storage, names: Vec::new() };
        podman.import_busybox(dir);
        podman
    }

    /// The `--root` of the private containers/storage (where `containers.json` and
    /// `overlay-containers/<id>/userdata/ctr.log` are); panics for podman on the host's.
    pub fn storage_root(&self) -> &Path {
        &self.storage.as_ref().expect("podman on a private containers/storage").root
    }

    /// The events log podman writes its lifecycle events to.
    #[allow(dead_code)]
    pub fn events_log(&self) -> &Path {
        &self.events_log
    }

    fn command(&self) -> Command {
        let mut command = Command::new("podman");
        command.current_dir(&self.dir).env("CONTAINERS_CONF", &self.conf);
        if let Some(storage) = &self.storage {
            command.arg("--root").arg(&storage.root).arg("--runroot").arg(&storage.runroot);
        }
        command
    }

    fn run(&self, args: &[&OsStr]) -> String {
        let output = self.command().args(args).output().expect("running podman");
        assert!(output.status.success(), "podman {args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    }

    /// No registry is reachable here: the image is busybox-static imported from a tarball.
    fn import_busybox(&self, dir: &Path) {
        let root = dir.join("image-root");
        std::fs::create_dir_all(root.join("bin")).expect("image root");
        std::fs::copy("/bin/busybox", root.join("bin/busybox")).expect("/bin/busybox (busybox-static)");
        std::os::unix::fs::symlink("busybox", root.join("bin/sh")).expect("sh link");
        let tarball = dir.join("busybox.tar");
        let tar = Command::new("tar").arg("-C").arg(&root).arg("-cf").arg(&tarball).arg(".").status();
        assert!(tar.is_ok_and(|s| s.success()), "tar of the image root");
        self.run(&["import".as_ref(), "-q".as_ref(), tarball.as_os_str(), IMAGE.as_ref()]);
    }

    /// Creates (not starts) a container running `script`, logging with `k8s-file` to
    /// `log_path`, or to podman's default place (`userdata/ctr.log`) without one; returns its id.
    pub fn create(&mut self, name: &str, log_path: Option<&Path>, script: &str) -> String {
        self.create_with(name, log_path, &[], script)
    }

    /// [`Podman::create`] with more `podman create` options (`--memory 16m`, …).
    pub fn create_with(&mut self, name: &str, log_path: Option<&Path>, options: &[&str], script: &str) -> String {
        let log_opt = log_path.map(|path| format!("path={}", path.display()));
        let mut args: Vec<&OsStr> = vec![
            "create".as_ref(),
            "--name".as_ref(),
            name.as_ref(),
            "--runtime".as_ref(),
            "runc".as_ref(),
            "--cgroup-manager".as_ref(),
            "cgroupfs".as_ref(),
            "--log-driver".as_ref(),
            "k8s-file".as_ref(),
        ];
        if let Some(log_opt) = &log_opt {
            args.extend(["--log-opt", log_opt.as_str()].map(OsStr::new));
        }
        args.extend(options.iter().map(OsStr::new));
        args.extend([IMAGE, "/bin/sh", "-c", script].map(OsStr::new));
        let id = self.run(&args);
        self.names.push(name.to_string());
        id
    }

    pub fn start(&self, name: &str) {
        self.run(&["start".as_ref(), name.as_ref()]);
    }

    pub fn wait(&self, name: &str) {
        self.run(&["wait".as_ref(), name.as_ref()]);
    }

    /// `podman inspect --format <format> <name>`.
    #[allow(dead_code)]
    pub fn inspect(&self, name: &str, format: &str) -> String {
        self.run(&["inspect".as_ref(), "--format".as_ref(), format.as_ref(), name.as_ref()])
    }

    pub fn remove(&mut self, name: &str) {
        self.run(&["rm".as_ref(), "-f".as_ref(), name.as_ref()]);
        self.names.retain(|n| n != name);
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        for name in &self.names {
            let _ = self.command().args(["rm", "-f", name]).output();
        }
    }
}
