//! A process of a container as the shim tracks it, the init or an exec'd
//! one (runc-shim's `process/`: init.go and exec.go): its stdio, its state
//! (created, running, stopped), its exit and who waits for it, and the
//! calls on one process (start an exec'd one, signal it).
//!
//! Exits arrive from the [`super::reaper::Reaper`] through the task service,
//! which records them here ([`Proc::record_exit`]); Wait and Delete read them.

use std::path::Path;
use std::time::Duration;

use containerd_shim_protos::api::Status;
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use ferry_oci::runtime::console::ConsoleSocket;
use ferry_oci::runtime::{self as oci, ExecOptions, Stdio};
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use oci_spec::runtime::Process;
use tokio::sync::watch;

use super::container::blocking;
use super::error::{Error, Result};
use super::stdio::ProcessIo;

/// How long a delete lets the outputs drain.
pub const DRAIN: Duration = Duration::from_secs(2);

/// How a process ended.
#[derive(Debug, Clone)]
pub struct Exit {
    pub status: u32,
    pub at: Timestamp,
}

impl Exit {
    /// An exit at this moment.
    pub fn now(status: u32) -> Exit {
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Exit {
            status,
            at: Timestamp {
                seconds: d.as_secs() as i64,
                nanos: d.subsec_nanos() as i32,
                ..Default::default()
            },
        }
    }
}

/// The init or an exec'd process, as the shim tracks it.
#[derive(Debug)]
pub struct Proc {
    pub pid: u32,
    pub started: bool,
    pub terminal: bool,
    pub io: ProcessIo,
    /// The container's side of the stdio until the process runs.
    pub stdio: Option<Stdio>,
    exit: watch::Sender<Option<Exit>>,
}

impl Proc {
    /// A process with containerd's stdio: pipes, or for a terminal the
    /// fifo paths only (the pty master arrives when the process runs).
    pub fn new(stdin: &str, stdout: &str, stderr: &str, terminal: bool) -> Result<Proc> {
        let (io, stdio) = if terminal {
            (ProcessIo::for_terminal(stdin, stdout), None)
        } else {
            let (io, s) = ProcessIo::pipes(stdin, stdout, stderr)?;
            (io, Some(s))
        };
        Ok(Proc {
            pid: 0,
            started: false,
            terminal,
            io,
            stdio,
            exit: watch::channel(None).0,
        })
    }

    /// The console socket for this process, if it has a terminal.
    pub fn console_socket(&self) -> Result<Option<ConsoleSocket>> {
        self.terminal
            .then(ConsoleSocket::new)
            .transpose()
            .map_err(|e| Error::Oci {
                op: "making a console socket for",
                id: self.pid.to_string(),
                source: Box::new(e),
            })
    }

    pub fn exited(&self) -> Option<Exit> {
        self.exit.borrow().clone()
    }

    /// Whether this is the live process `pid` (an exited one keeps its pid
    /// until deleted, and the kernel may give it to another).
    pub fn is_running_as(&self, pid: i32) -> bool {
        self.pid as i32 == pid && self.exited().is_none()
    }

    /// Records the exit the reaper saw and wakes whoever waits for it.
    pub fn record_exit(&self, status: i32) -> Exit {
        let exit = Exit::now(status as u32);
        self.exit.send_replace(Some(exit.clone()));
        exit
    }

    /// The exit to wait for ([`wait`]), taken while the containers are
    /// locked, waited for once they are not.
    pub fn exit_watch(&self) -> watch::Receiver<Option<Exit>> {
        self.exit.subscribe()
    }

    /// containerd's status of this process; `paused` is the container's.
    pub fn status(&self, paused: bool) -> Status {
        if self.exited().is_some() {
            Status::STOPPED
        } else if !self.started {
            Status::CREATED
        } else if paused {
            Status::PAUSED
        } else {
            Status::RUNNING
        }
    }

    /// Sends `sig` to this (exec'd) process, as runc-shim's execProcess.Kill
    /// signals its pid.
    pub fn signal(&self, exec_id: &str, sig: Signal) -> Result<()> {
        if self.pid == 0 {
            return Err(Error::FailedPrecondition(format!(
                "process {exec_id} is not started"
            )));
        }
        nix::sys::signal::kill(Pid::from_raw(self.pid as i32), sig).map_err(|e| Error::Io {
            op: "signalling process",
            path: format!("/proc/{}", self.pid).into(),
            source: e.into(),
        })
    }
}

/// Waits for the exit `rx` watches; `what` names the process if it goes
/// away (deleted while waited for).
pub async fn wait(mut rx: watch::Receiver<Option<Exit>>, what: String) -> Result<Exit> {
    rx.wait_for(|e| e.is_some())
        .await
        .map(|e| e.clone())
        .ok()
        .flatten()
        .ok_or(Error::NotFound { what })
}

/// A process exec'd in a container: recorded by Exec, run by Start.
#[derive(Debug)]
pub struct Exec {
    pub proc_: Proc,
    pub spec: Process,
}

impl Exec {
    /// Runs the process in container `cid` of state root `root` (runc-shim's
    /// execProcess.Start: `runc exec --detach`, the pty master over the
    /// console socket) and returns its pid.
    pub async fn start(&mut self, root: &Path, cid: &str, exec_id: &str) -> Result<u32> {
        if self.proc_.started {
            return Err(Error::FailedPrecondition(format!(
                "process {exec_id} is already started"
            )));
        }
        let stdio = self.proc_.stdio.take();
        let console = self.proc_.console_socket()?;
        let spec = self.spec.clone();
        let (root, cid) = (root.to_path_buf(), cid.to_string());
        let (pid, master) = blocking(move || {
            let c = oci::Container::load(&root, &cid).map_err(Error::oci("exec in", &cid))?;
            let opts = ExecOptions {
                detach: true,
                stdio,
                console_socket: console.as_ref().map(|c| c.path().to_path_buf()),
                ..Default::default()
            };
            let pid = c.exec(&spec, &opts).map_err(Error::oci("exec in", &cid))?;
            match console
                .as_ref()
                .map(ConsoleSocket::receive)
                .transpose()
                .map_err(Error::oci("receiving the console of", &cid))
            {
                Ok(master) => Ok((pid.as_raw() as u32, master)),
                Err(e) => {
                    let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
                    Err(e)
                }
            }
        })
        .await?;
        if let Some(m) = master {
            self.proc_.io.attach_console(m)?;
        }
        self.proc_.pid = pid;
        self.proc_.started = true;
        Ok(pid)
    }
}
