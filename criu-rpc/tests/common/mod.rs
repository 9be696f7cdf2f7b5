//! What the criu-rpc test binaries share: a python workload in a pid
//! namespace of its own (its restore, in a new one, does not clash with a
//! lazily dumped original, which stays until its last page is sent).

use std::fs;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// The `unshare` process above the workload, and the workload's first
/// process (pid 1 of its namespace) once known; both killed on drop, the
/// init first: killing `unshare` alone leaves its child running, and a test
/// that failed before a lazy dump killed the workload would leave it behind.
pub struct Unshare {
    pub child: Child,
    pub init: Option<Pid>,
    /// A piece of the script: the init is killed only while its command
    /// line holds it (a dump that succeeded killed it, and its pid may be
    /// someone else's since).
    marker: &'static str,
}

impl Unshare {
    /// Runs `python -c script` in a new pid namespace, in `dir`.
    pub fn python(python: &str, script: &str, dir: &Path, marker: &'static str) -> Unshare {
        let child = Command::new("unshare")
            .args(["--pid", "--fork", python, "-c", script])
            // CRIU's parasite mounts the task's own /proc on
            // `proc.crtools` in the task's cwd when the task's /proc is
            // not its pid namespace's (parasite.c get_proc_fd): two
            // workloads dumped at once in one cwd collide on it (EEXIST).
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("unshare and python3 (hack/setup installs them)");
        Unshare {
            child,
            init: None,
            marker,
        }
    }
}

impl Drop for Unshare {
    fn drop(&mut self) {
        let marker = self.marker;
        let ours = |p: Pid| {
            fs::read(format!("/proc/{p}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(marker))
        };
        if let Some(p) = self.init.filter(|p| ours(*p)) {
            let _ = kill(p, Signal::SIGKILL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
