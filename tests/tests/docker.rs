//! Ferry under dockerd, as root: dockerd 20.10 (Debian's docker.io) runs in
//! a network namespace of its own with `--add-runtime ferry=<ferry>`, and a
//! busybox image imported from a tarball (no registry).
//!
//! - containers run with ferry: output, exec, stop, rm, nothing left;
//! - with `--experimental`: `docker checkpoint create` and `docker start
//!   --checkpoint` continue a counter;
//! - WITHOUT `--experimental`, on two dockerds: `ferry --root <dockerd's
//!   runtime dir> checkpoint` on one, `docker create -e FERRY_RESTORE=...`
//!   and `docker start` on the other; the counter continues.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ferry_tests::*;

const DOCKERD: &str = "/usr/sbin/dockerd";
const DOCKER: &str = "/usr/bin/docker";
/// The counter as docker runs it: numbers on stdout (docker logs).
const LOOP: &str = "i=0; while :; do echo $i; i=$((i+1)); sleep 0.1; done";

struct Dockerd {
    dir: tempfile::TempDir,
    netns: String,
    child: Option<std::process::Child>,
}

impl Dockerd {
    fn start(tag: &str, experimental: bool) -> Dockerd {
        require_root();
        assert!(
            Path::new(DOCKERD).exists(),
            "{DOCKERD} is missing: apt-get install docker.io (hack/setup does)"
        );
        let dir = tempfile::Builder::new()
            .prefix("ferry-dockerd-")
            .tempdir()
            .unwrap();
        let netns = format!("fd{}{tag}", std::process::id() % 100000);
        ip(&["netns", "add", &netns]);
        ip(&["-n", &netns, "link", "set", "lo", "up"]);
        let mut d = Dockerd {
            dir,
            netns,
            child: None,
        };
        let log = std::fs::File::create(d.path().join("dockerd.log")).unwrap();
        // nsenter, not `ip netns exec`: the latter remounts /sys and hides
        // the cgroup hierarchies from dockerd.
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", d.netns))
            .arg(DOCKERD)
            .arg("--data-root")
            .arg(d.path().join("data"))
            .arg("--exec-root")
            .arg(d.path().join("exec"))
            .arg("-H")
            .arg(format!("unix://{}", d.sock().display()))
            .arg("--pidfile")
            .arg(d.path().join("docker.pid"))
            .arg("--add-runtime")
            .arg(format!("ferry={}", ferry_bin().display()))
            .args(["--iptables=false", "--bridge=none"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        if experimental {
            cmd.arg("--experimental");
        }
        d.child = Some(cmd.spawn().expect("starting dockerd"));
        let deadline = Instant::now() + Duration::from_secs(60);
        while !d.docker(&["info"]).status.success() {
            assert!(
                Instant::now() < deadline,
                "dockerd did not come up: {}",
                std::fs::read_to_string(d.path().join("dockerd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        // A busybox image, imported: no registry here.
        let rootfs = busybox_bundle(d.path(), &["sh"]).join("rootfs");
        let mut tar = Command::new("tar")
            .arg("-C")
            .arg(&rootfs)
            .args(["-c", "."])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let st = Command::new(DOCKER)
            .arg("-H")
            .arg(format!("unix://{}", d.sock().display()))
            .args(["import", "-", "busybox:ferry"])
            .stdin(tar.stdout.take().unwrap())
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(
            tar.wait().unwrap().success(),
            "tar of the busybox rootfs failed"
        );
        assert!(st.success(), "docker import failed");
        d
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn sock(&self) -> PathBuf {
        self.path().join("docker.sock")
    }

    /// Where dockerd 20.10 keeps the runtime's state (its `--root`).
    fn runtime_root(&self) -> PathBuf {
        self.path().join("exec/runtime-runc/moby")
    }

    fn docker(&self, args: &[&str]) -> std::process::Output {
        run_ferry(
            Command::new(DOCKER)
                .arg("-H")
                .arg(format!("unix://{}", self.sock().display()))
                .args(args),
        )
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.docker(args);
        assert!(
            out.status.success(),
            "docker {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// `docker run -d` of the counter with ferry, under docker's default
    /// seccomp profile; returns the container id.
    fn run_counter(&self) -> String {
        self.ok(&[
            "run",
            "-d",
            "--runtime",
            "ferry",
            "busybox:ferry",
            "sh",
            "-c",
            LOOP,
        ])
    }

    fn log_numbers(&self, id: &str) -> Vec<u64> {
        let out = self.docker(&["logs", id]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    fn wait_logs(&self, id: &str, n: usize) -> Vec<u64> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let v = self.log_numbers(id);
            if v.len() >= n {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "docker logs {id} stuck at {}",
                v.len()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        let ids = self.docker(&["ps", "-aq"]);
        for id in String::from_utf8_lossy(&ids.stdout).lines() {
            let _ = self.docker(&["rm", "-f", id]);
        }
        if let Ok(pid) = std::fs::read_to_string(self.path().join("docker.pid")) {
            if let Ok(pid) = pid.trim().parse::<i32>() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGTERM,
                );
                let deadline = Instant::now() + Duration::from_secs(20);
                while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .status();
        // dockerd leaves its exec-root mounts (netns, shm) on a hard stop.
        let mounts = mount_leftovers(self.path().to_str().unwrap());
        for m in mounts.iter().rev() {
            if let Some(p) = m.split(' ').nth(4) {
                let _ = nix::mount::umount2(p, nix::mount::MntFlags::MNT_DETACH);
            }
        }
    }
}

fn assert_consecutive_from_zero(v: &[u64]) {
    for (i, n) in v.iter().enumerate() {
        assert_eq!(*n, i as u64, "log line {i} is {n}");
    }
}

#[test]
fn docker_runs_execs_stops_and_removes_containers_with_ferry() {
    let d = Dockerd::start("r", false);
    let out = d.ok(&[
        "run",
        "--rm",
        "--runtime",
        "ferry",
        "busybox:ferry",
        "sh",
        "-c",
        "echo hello from ferry",
    ]);
    assert_eq!(out, "hello from ferry");
    let id = d.run_counter();
    d.wait_logs(&id, 3);
    let state: serde_json::Value =
        serde_json::from_str(&Root::ferry_at(&d.runtime_root(), &["state", &id])).unwrap();
    assert_eq!(
        state["status"], "running",
        "ferry runs the container: {state}"
    );
    // Under docker's default seccomp profile.
    let pid = state["pid"].as_u64().unwrap() as u32;
    assert_eq!(
        seccomp_mode(pid),
        "2",
        "docker's seccomp profile is not loaded"
    );
    assert_eq!(
        d.ok(&["exec", &id, "sh", "-c", "echo exec works"]),
        "exec works"
    );
    d.ok(&["stop", "-t", "1", &id]);
    d.ok(&["rm", &id]);
    assert!(
        cgroup_leftovers(&format!("docker/{id}")).is_empty(),
        "cgroups left"
    );
    let left: Vec<_> = std::fs::read_dir(d.runtime_root())
        .map(|r| r.flatten().collect())
        .unwrap_or_default();
    assert!(
        left.is_empty(),
        "state left under the runtime root: {left:?}"
    );
}

#[test]
fn experimental_docker_checkpoint_and_start_from_it() {
    let d = Dockerd::start("x", true);
    let id = d.run_counter();
    d.wait_logs(&id, 5);
    d.ok(&["checkpoint", "create", &id, "cp1"]);
    let before = d.log_numbers(&id);
    d.ok(&["start", "--checkpoint", "cp1", &id]);
    let after = d.wait_logs(&id, before.len() + 10);
    assert_consecutive_from_zero(&after);
    d.ok(&["rm", "-f", &id]);
}

#[test]
fn checkpoint_and_restore_across_dockerds_without_experimental() {
    let a = Dockerd::start("a", false);
    let b = Dockerd::start("b", false);
    let err = a.docker(&["checkpoint", "create", "x", "y"]);
    assert!(
        !err.status.success(),
        "this dockerd refuses docker checkpoint"
    );

    let src = a.run_counter();
    a.wait_logs(&src, 5);
    let images = a.path().join("moved");
    Root::ferry_at(
        &a.runtime_root(),
        &["checkpoint", "--image-path", images.to_str().unwrap(), &src],
    );
    let before = a.log_numbers(&src);
    assert_consecutive_from_zero(&before);
    let dst = b.ok(&[
        "create",
        "--runtime",
        "ferry",
        "-e",
        &format!("FERRY_RESTORE={}", images.display()),
        "busybox:ferry",
        "sh",
        "-c",
        LOOP,
    ]);
    b.ok(&["start", &dst]);
    let after = b.wait_logs(&dst, 10);
    let k = before.last().copied().unwrap();
    let expected: Vec<u64> = (k + 1..k + 1 + after.len() as u64).collect();
    assert_eq!(after, expected, "the restored container continues from {k}");
    b.ok(&["stop", "-t", "1", &dst]);
    b.ok(&["rm", &dst]);
    assert!(
        std::fs::read_dir(b.runtime_root())
            .map(|r| r.count())
            .unwrap_or(0)
            == 0
    );
}
