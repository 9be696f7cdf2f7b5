//! Waiting for the containers' processes.
//!
//! runc-shim reaps every child with a wait for any pid on SIGCHLD and hands
//! the statuses to whoever waits for that pid (runc's own children
//! included, through its `Monitor`). This shim cannot: criu-rpc waits for
//! its criu with `std::process::Child::wait`, and ferry-oci for the
//! intermediate child of its double fork; a wait for any pid would steal
//! their statuses. So, like runc-shim, the shim is a subreaper (the
//! serving shim sets PR_SET_CHILD_SUBREAPER, `service::serve`), and the processes
//! of a container come back to it once ferry-oci's intermediate child
//! exits (and a restored init is its child through CRIU's `rst_sibling`),
//! but it waits only for the pids it was told to watch.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, Notify};

/// A process that ended: its pid and its exit status as runc-shim reports
/// it (the exit code, or 128 + the signal that killed it).
#[derive(Debug, Clone, Copy)]
pub struct Exited {
    pub pid: i32,
    pub status: i32,
}

#[derive(Clone)]
pub struct Reaper {
    watched: Arc<Mutex<HashSet<i32>>>,
    kick: Arc<Notify>,
}

impl Reaper {
    /// Starts waiting, on every SIGCHLD (and every second, in case a signal
    /// came before a pid was watched), for the watched pids; their exits go
    /// to `exits`.
    pub fn start(exits: mpsc::UnboundedSender<Exited>) -> std::io::Result<Reaper> {
        let mut sigchld = signal(SignalKind::child())?;
        let reaper = Reaper {
            watched: Arc::default(),
            kick: Arc::default(),
        };
        let r = reaper.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = sigchld.recv() => {}
                    _ = r.kick.notified() => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                for e in r.reap() {
                    if exits.send(e).is_err() {
                        return;
                    }
                }
            }
        });
        Ok(reaper)
    }

    /// Watches `pid` from now on; a pid that already ended is reported at
    /// once (it stays a zombie until then).
    pub fn watch(&self, pid: i32) {
        self.watched
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(pid);
        self.kick.notify_one();
    }

    fn reap(&self) -> Vec<Exited> {
        let mut watched = self.watched.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        watched.retain(|&pid| {
            let status = match waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(_, code)) => code,
                Ok(WaitStatus::Signaled(_, sig, _)) => 128 + sig as i32,
                // Not our child: a process whose status someone else
                // collects; it counts as ended once it is gone, with the
                // status runc-shim gives an unknown exit.
                Err(Errno::ECHILD) if !std::path::Path::new(&format!("/proc/{pid}")).exists() => {
                    255
                }
                _ => return true,
            };
            out.push(Exited { pid, status });
            false
        });
        out
    }
}
