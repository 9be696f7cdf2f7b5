//! Checkpoint and restore of a real container through ferry-oci, against
//! real CRIU. The container is started by runc (the reference runtime,
//! installed by hack/setup), which also shows that Ferry can checkpoint
//! containers it did not start; the ferry CLI's own end-to-end tests cover
//! containers Ferry runs.

use std::fs;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use criu_rpc::{Criu, PageServerAddr};
use ferry_oci::checkpoint::{self, CheckpointOptions, Target};
use ferry_oci::restore::{self, Destination, RestoreHooks, RestoreOptions};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use oci_spec::runtime::Spec;

/// A busybox counter bundle: one number per line into /out/count.
fn bundle(dir: &Path) -> PathBuf {
    let b = dir.join("bundle");
    let root = b.join("rootfs");
    for d in ["bin", "dev", "proc", "sys", "out", "tmp"] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    fs::copy("/bin/busybox", root.join("bin/busybox"))
        .expect("/bin/busybox is missing: install busybox-static (hack/setup does)");
    for a in ["sh", "sleep", "echo"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(a)).unwrap();
    }
    for (l, t) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        std::os::unix::fs::symlink(t, root.join("dev").join(l)).unwrap();
    }
    let st = Command::new("runc")
        .arg("spec")
        .current_dir(&b)
        .status()
        .expect("runc is missing: install it (hack/setup does)");
    assert!(st.success());
    let mut spec: serde_json::Value =
        serde_json::from_slice(&fs::read(b.join("config.json")).unwrap()).unwrap();
    spec["process"]["terminal"] = false.into();
    spec["process"]["args"] = serde_json::json!([
        "/bin/sh",
        "-c",
        "i=0; while :; do echo $i >> /out/count; i=$((i+1)); sleep 0.05; done"
    ]);
    spec["root"]["readonly"] = false.into();
    fs::write(b.join("config.json"), spec.to_string()).unwrap();
    b
}

struct RuncContainer {
    id: String,
    init: Pid,
}

impl RuncContainer {
    fn run(id: &str, bundle: &Path) -> RuncContainer {
        let pidfile = bundle.join("pid");
        let st = Command::new("runc")
            .args(["run", "-d", "--pid-file"])
            .arg(&pidfile)
            .arg(id)
            .current_dir(bundle)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(st.success(), "runc run failed");
        let pid = fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        RuncContainer {
            id: id.into(),
            init: Pid::from_raw(pid),
        }
    }
}

impl Drop for RuncContainer {
    fn drop(&mut self) {
        let _ = Command::new("runc")
            .args(["delete", "-f", &self.id])
            .stderr(Stdio::null())
            .status();
    }
}

fn numbers(rootfs: &Path) -> Vec<u64> {
    fs::read_to_string(rootfs.join("out/count"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.parse().ok())
        .collect()
}

fn wait_for(rootfs: &Path, n: usize) -> Vec<u64> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let v = numbers(rootfs);
        if v.len() >= n {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "counter stuck at {} lines",
            v.len()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn assert_consecutive(v: &[u64]) {
    for (i, n) in v.iter().enumerate() {
        assert_eq!(*n, i as u64, "line {i} is {n}");
    }
}

/// Records what the restore asked of the runtime.
#[derive(Default)]
struct Hooks {
    criu: Option<Pid>,
    setup: Option<Pid>,
    restored: Option<Pid>,
}

impl RestoreHooks for Hooks {
    fn criu_started(&mut self, criu: Pid) -> ferry_oci::Result<()> {
        self.criu = Some(criu);
        Ok(())
    }
    fn setup_namespaces(&mut self, pid: Pid) -> ferry_oci::Result<()> {
        self.setup = Some(pid);
        Ok(())
    }
    fn restored(&mut self, pid: Pid) -> ferry_oci::Result<()> {
        self.restored = Some(pid);
        Ok(())
    }
    fn console(&mut self, _master: OwnedFd) -> ferry_oci::Result<()> {
        panic!("this container has no console")
    }
}

struct Killed(Pid);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = kill(self.0, Signal::SIGKILL);
        let _ = nix::sys::wait::waitpid(self.0, None);
    }
}

#[test]
fn a_runc_container_is_checkpointed_and_restored_and_counts_on() {
    assert!(nix::unistd::geteuid().is_root(), "these tests need root");
    let tmp = tempfile::tempdir().unwrap();
    let b = bundle(tmp.path());
    let rootfs = b.join("rootfs");
    let id = format!("ferry-cr-{}", std::process::id());
    let c = RuncContainer::run(&id, &b);
    wait_for(&rootfs, 5);
    let spec: Spec = serde_json::from_slice(&fs::read(b.join("config.json")).unwrap()).unwrap();
    let freezer = PathBuf::from(format!("/sys/fs/cgroup/freezer/{id}"));
    let target = Target {
        id: &id,
        init: c.init,
        spec: &spec,
        rootfs: &rootfs,
        freezer: freezer.exists().then_some(freezer.as_path()),
        fresh_netns: None,
        frozen_by_caller: false,
        network_locked_by_caller: false,
    };

    // A dump that cannot reach its page server fails, and the container
    // keeps counting.
    let err = checkpoint::checkpoint(
        &Criu::new(),
        &target,
        CheckpointOptions {
            image_path: tmp.path().join("failed"),
            page_server: Some(PageServerAddr::Tcp("127.0.0.1:1".parse().unwrap())),
            ..Default::default()
        },
        &mut |_| {},
    )
    .unwrap_err();
    assert!(err.to_string().contains("criu dump failed"), "{err}");
    let n = numbers(&rootfs).len();
    assert_consecutive(&wait_for(&rootfs, n + 5));

    let images = tmp.path().join("images");
    let mut seen = Vec::new();
    let done = checkpoint::checkpoint(
        &Criu::new(),
        &target,
        CheckpointOptions {
            image_path: images.clone(),
            ..Default::default()
        },
        &mut |n| seen.push(n.script()),
    )
    .unwrap();
    assert_eq!(seen, ["pre-dump", "network-lock", "post-dump"]);
    assert!(done.frozen.unwrap() <= done.duration);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        fs::metadata(&images).unwrap().permissions().mode() & 0o777,
        0o700
    );
    assert!(images.join("descriptors.json").exists());
    let before = numbers(&rootfs);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        numbers(&rootfs),
        before,
        "the container ran on after its dump"
    );

    let state = tmp.path().join("state");
    fs::create_dir(&state).unwrap();
    let mut hooks = Hooks::default();
    let restored = restore::restore(
        &Criu::new(),
        Destination {
            id: "restored",
            spec: &spec,
            rootfs: &rootfs,
            state_dir: &state,
            stdio: [None, None, None],
        },
        &RestoreOptions {
            image_path: images.clone(),
            ..Default::default()
        },
        &mut hooks,
    )
    .unwrap();
    let _guard = Killed(restored.pid);
    assert!(hooks.criu.is_some());
    assert_eq!(hooks.setup, Some(restored.pid));
    assert_eq!(hooks.restored, Some(restored.pid));
    let after = wait_for(&rootfs, before.len() + 10);
    assert_consecutive(&after);
    // CRIU's root mount is gone.
    assert!(!state.join("criu-root").exists());
    drop(c);
}

#[test]
fn restoring_a_non_checkpoint_is_refused_before_anything_happens() {
    let tmp = tempfile::tempdir().unwrap();
    let b = bundle(tmp.path());
    let spec: Spec = serde_json::from_slice(&fs::read(b.join("config.json")).unwrap()).unwrap();
    let state = tmp.path().join("state");
    fs::create_dir(&state).unwrap();
    let empty = tmp.path().join("empty");
    fs::create_dir(&empty).unwrap();
    let err = restore::restore(
        &Criu::new(),
        Destination {
            id: "x",
            spec: &spec,
            rootfs: &b.join("rootfs"),
            state_dir: &state,
            stdio: [None, None, None],
        },
        &RestoreOptions {
            image_path: empty.clone(),
            ..Default::default()
        },
        &mut Hooks::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("inventory.img"), "{err}");
    // Nothing was touched: no CRIU root in the state dir.
    assert_eq!(fs::read_dir(&state).unwrap().count(), 0);
}
