//! Migration agents for the tests that move containers between two state
//! roots of this machine: `ferry serve` started and killed by a guard, the
//! shared key, where a received container lands, and checks that a move
//! left no CRIU and no child of the agent behind.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{ferry_bin, run_ferry, Root};

/// `ferry serve` on 127.0.0.1, killed on drop (also when the test fails).
pub struct Serve {
    pub child: Child,
    pub addr: String,
}

impl Serve {
    pub fn start(root: &Root, key: &Path, cgroup_parent: &str) -> Serve {
        Serve::start_with(root, key, cgroup_parent, &[])
    }

    pub fn start_with(root: &Root, key: &Path, cgroup_parent: &str, extra: &[&str]) -> Serve {
        Serve::start_under(&[], root, key, cgroup_parent, extra)
    }

    /// The same, run by `wrapper` (a command that execs the rest, such as
    /// `prlimit --nofile=N --`).
    pub fn start_under(
        wrapper: &[&str],
        root: &Root,
        key: &Path,
        cgroup_parent: &str,
        extra: &[&str],
    ) -> Serve {
        // A free port: bind, read it back, release it for ferry serve.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let mut cmd = match wrapper.split_first() {
            Some((w, rest)) => {
                let mut c = Command::new(w);
                c.args(rest).arg(ferry_bin());
                c
            }
            None => Command::new(ferry_bin()),
        };
        let child = cmd
            .arg("--root")
            .arg(root.path())
            .args(["serve", "--listen", &addr, "--key-file"])
            .arg(key)
            .args(["--cgroup-parent", cgroup_parent])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(&addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "ferry serve did not listen on {addr}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Serve { child, addr }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `ferry keygen --key-file PATH`: a new shared key.
pub fn keygen(path: &Path) -> PathBuf {
    let out = run_ferry(
        Command::new(ferry_bin())
            .args(["keygen", "--key-file"])
            .arg(path),
    );
    assert!(
        out.status.success(),
        "ferry keygen: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    path.to_path_buf()
}

/// Where a container received on `root` has its rootfs.
pub fn moved_rootfs(root: &Root, id: &str) -> PathBuf {
    root.path().join("incoming").join(id).join("bundle/rootfs")
}

/// The children of process `pid` (of all its threads).
pub fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        let list = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
        out.extend(
            list.split_whitespace()
                .filter_map(|c| c.parse::<u32>().ok()),
        );
    }
    out
}

/// Leaves no criu process behind (waits a little: criu exits after its
/// client hung up).
pub fn assert_no_criu() {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let criu = Command::new("pgrep").args(["-x", "criu"]).output().unwrap();
        let left = String::from_utf8_lossy(&criu.stdout).trim().to_string();
        if left.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "criu processes left: {left}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
