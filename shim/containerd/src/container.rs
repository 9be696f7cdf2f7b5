//! One container of the shim (runc-shim's `runc/container.go`): its
//! bundle and rootfs mount, its init and exec'd processes, the runtime
//! options it was created with, and the calls that drive it through
//! ferry-oci (create, start or restore, kill, checkpoint, delete).
//!
//! Every ferry-oci call blocks (fork, CRIU), so it runs on tokio's blocking
//! pool ([`blocking`]), never on the ttrpc threads. What the task service
//! wires around a call (the reaper's watch, OOM events, containerd's
//! events) is returned to it, not done here.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use containerd_shim_protos::api::CreateTaskRequest;
use containerd_shim_protos::types::mount::Mount;
use ferry_oci::restore::RestoreOptions;
use ferry_oci::runtime::console::ConsoleSocket;
use ferry_oci::runtime::cr::{restore_container, RestoreRuntimeOptions};
use ferry_oci::runtime::spec::bundle_has_terminal;
use ferry_oci::runtime::{self as oci, CreateOptions};
use nix::sys::signal::Signal;

use super::checkpoint::{checkpoint_options, pending_restore, runtime_options, PendingRestore};
use super::error::{Error, Result};
use super::mount;
use super::options::{criu, criu_path, task_root, SavedOptions, SAVED_OPTIONS};
use super::process::{Exec, Exit, Proc, DRAIN};

/// A container as the shim tracks it.
#[derive(Debug)]
pub struct Container {
    pub bundle: PathBuf,
    rootfs_mounted: bool,
    pub init: Proc,
    /// Set by a create with a checkpoint: Start restores from it.
    pub restore: Option<PendingRestore>,
    /// The runtime options' SystemdCgroup (cgroupsPath is slice:prefix:name).
    systemd_cgroup: bool,
    /// Ferry's state root for this container: the runtime options' Root
    /// (plus the namespace, as runc-shim does), else the shim's default.
    pub root: PathBuf,
    /// The runtime options' CriuPath: the criu binary of this container's
    /// checkpoints and restores (else `$FERRY_CRIU`, else PATH's).
    criu_path: Option<PathBuf>,
    pub execs: HashMap<String, Exec>,
}

/// A process that now runs: what the task service watches.
pub struct Running {
    pub pid: u32,
    /// The container's v1 memory cgroup, for OOM events (set when the init
    /// was created or restored).
    pub memory: Option<PathBuf>,
}

/// A signal for a container's init (and with `all` every process of it),
/// sent through the runtime (`runc kill [--all]`).
pub struct InitKill {
    root: PathBuf,
    cid: String,
    sig: Signal,
    all: bool,
}

impl InitKill {
    pub async fn run(self) -> Result<()> {
        let InitKill {
            root,
            cid,
            sig,
            all,
        } = self;
        blocking(move || {
            let c = oci::Container::load(&root, &cid).map_err(Error::oci("killing", &cid))?;
            c.kill(sig as i32, all).map_err(Error::oci("killing", &cid))
        })
        .await
    }
}

/// Runs blocking ferry-oci work off the ttrpc threads.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f).await?
}

impl Container {
    /// runc-shim's Create: mounts containerd's rootfs mounts on
    /// `<bundle>/rootfs`, makes the init's stdio and creates the container
    /// (its init waits on exec.fifo); with `checkpoint` set it only records
    /// where the images are, and [`Container::start_init`] restores from
    /// them (runc-shim's `createdCheckpointState`). On failure the rootfs
    /// mount is undone.
    pub async fn create(ns: &str, req: &CreateTaskRequest) -> Result<(Container, Running)> {
        let id = req.id.as_str();
        let bundle = PathBuf::from(&req.bundle);
        let options = runtime_options(req)?;
        let restore = pending_restore(req, &options);
        let root = task_root(ns, &options);
        let saved = serde_json::to_vec(&SavedOptions { root: root.clone() }).unwrap_or_default();
        let saved_at = bundle.join(SAVED_OPTIONS);
        tokio::fs::write(&saved_at, saved)
            .await
            .map_err(Error::io("writing", &saved_at))?;
        let rootfs_mounted = mount_rootfs(&bundle, &req.rootfs).await?;
        let mut c = Container {
            rootfs_mounted,
            // A checkpoint of a task with a terminal is restored onto a
            // terminal whatever the request says: CRIU makes a new pty and
            // hands its master over (orphan_pts_master), which must go
            // somewhere. ctr 1.6's `container restore` asks for none; the
            // output then reaches the stdout fifo as for any task with a
            // terminal.
            init: Proc::new(
                &req.stdin,
                &req.stdout,
                &req.stderr,
                req.terminal || (restore.is_some() && bundle_has_terminal(&bundle)),
            )
            .inspect_err(|_| undo_mount(&bundle, rootfs_mounted))?,
            bundle,
            restore,
            systemd_cgroup: options.systemd_cgroup,
            root,
            criu_path: criu_path(&options),
            execs: HashMap::new(),
        };
        let mut running = Running {
            pid: 0,
            memory: None,
        };
        if c.restore.is_none() {
            running = c
                .create_init(id)
                .await
                .inspect_err(|_| undo_mount(&c.bundle, c.rootfs_mounted))?;
        }
        Ok((c, running))
    }

    /// `runc create` of runc-shim's Init.Create: the init waits on
    /// exec.fifo; its pty master, if any, comes over the console socket.
    async fn create_init(&mut self, id: &str) -> Result<Running> {
        let stdio = self.init.stdio.take();
        let console = self.init.console_socket()?;
        let systemd_cgroup = self.systemd_cgroup;
        let (root, cid, b) = (self.root.clone(), id.to_string(), self.bundle.clone());
        let (pid, master, memory) = blocking(move || {
            let opts = CreateOptions {
                stdio,
                console_socket: console.as_ref().map(|c| c.path().to_path_buf()),
                systemd_cgroup,
                ..Default::default()
            };
            let c = oci::Container::create(&root, &cid, &b, &opts)
                .map_err(Error::oci("creating", &cid))?;
            let pid = c.state.pid;
            let memory = c.state.cgroup.memory_v1_path();
            receive_console(c, console.as_ref(), &cid).map(|master| (pid, master, memory))
        })
        .await?;
        self.init.pid = pid as u32;
        if let Some(m) = master {
            self.init.io.attach_console(m)?;
        }
        Ok(Running {
            pid: self.init.pid,
            memory,
        })
    }

    /// runc-shim's Init.Start: releases the created init, or restores the
    /// pending checkpoint (`runc restore --detach` of
    /// createdCheckpointState.Start).
    pub async fn start_init(&mut self, id: &str) -> Result<Running> {
        if self.init.started {
            return Err(Error::FailedPrecondition(format!(
                "container {id} is already started"
            )));
        }
        if self.init.exited().is_some() {
            return Err(Error::FailedPrecondition(format!(
                "container {id}'s init has exited"
            )));
        }
        let root = self.root.clone();
        let cid = id.to_string();
        let running = match self.restore.take() {
            Some(r) => {
                let stdio = self.init.stdio.take();
                let console = self.init.console_socket()?;
                let bundle = self.bundle.clone();
                let systemd_cgroup = self.systemd_cgroup;
                let criu_path = self.criu_path.clone();
                let (pid, master, memory) = blocking(move || {
                    // Whatever the dump asked, what a move uses.
                    let opts = RestoreOptions {
                        work_path: r.work_path,
                        ..ferry_oci::migrate::CRIU_FLAGS.restore(r.image_path)
                    };
                    let rt = RestoreRuntimeOptions {
                        stdio,
                        // CRIU's orphan pts master goes over it.
                        console_socket: console.as_ref().map(|c| c.path().to_path_buf()),
                        systemd_cgroup,
                        ..Default::default()
                    };
                    let (c, restored) = restore_container(
                        &root,
                        &cid,
                        &bundle,
                        &criu(criu_path.as_deref()),
                        &opts,
                        &rt,
                    )
                    .map_err(Error::oci("restoring", &cid))?;
                    let memory = c.state.cgroup.memory_v1_path();
                    receive_console(c, console.as_ref(), &cid)
                        .map(|master| (restored.pid.as_raw() as u32, master, memory))
                })
                .await?;
                if let Some(m) = master {
                    self.init.io.attach_console(m)?;
                }
                Running { pid, memory }
            }
            None => {
                let pid = blocking(move || {
                    let mut c =
                        oci::Container::load(&root, &cid).map_err(Error::oci("starting", &cid))?;
                    c.start().map_err(Error::oci("starting", &cid))?;
                    Ok(c.state.pid as u32)
                })
                .await?;
                // The OOM watch started at create.
                Running { pid, memory: None }
            }
        };
        self.init.pid = running.pid;
        self.init.started = true;
        Ok(running)
    }

    /// Starts exec'd process `exec_id` (runc-shim's execProcess.Start).
    pub async fn start_exec(&mut self, id: &str, exec_id: &str) -> Result<u32> {
        if self.init.exited().is_some() {
            return Err(Error::FailedPrecondition(format!(
                "container {id}'s init has exited"
            )));
        }
        let root = self.root.clone();
        let x = self.execs.get_mut(exec_id).ok_or_else(|| Error::NotFound {
            what: format!("process {exec_id} of container {id}"),
        })?;
        x.start(&root, id, exec_id).await
    }

    /// The init (`exec_id` empty) or an exec'd process.
    pub fn proc_(&self, id: &str, exec_id: &str) -> Result<&Proc> {
        if exec_id.is_empty() {
            return Ok(&self.init);
        }
        self.execs
            .get(exec_id)
            .map(|e| &e.proc_)
            .ok_or_else(|| Error::NotFound {
                what: format!("process {exec_id} of container {id}"),
            })
    }

    pub fn proc_mut(&mut self, id: &str, exec_id: &str) -> Result<&mut Proc> {
        if exec_id.is_empty() {
            return Ok(&mut self.init);
        }
        self.execs
            .get_mut(exec_id)
            .map(|e| &mut e.proc_)
            .ok_or_else(|| Error::NotFound {
                what: format!("process {exec_id} of container {id}"),
            })
    }

    /// The live process `pid` of this container, and its exec id (empty
    /// for the init, as containerd's TaskExit names it by the container).
    pub fn running_proc(&self, id: &str, pid: i32) -> Option<(&Proc, String)> {
        if self.init.is_running_as(pid) {
            return Some((&self.init, id.to_string()));
        }
        self.execs
            .iter()
            .find(|(_, x)| x.proc_.is_running_as(pid))
            .map(|(xid, x)| (&x.proc_, xid.clone()))
    }

    /// The exec'd processes' pids, for Pids' ProcessDetails.
    pub fn exec_pids(&self) -> HashMap<u32, String> {
        self.execs
            .iter()
            .map(|(id, x)| (x.proc_.pid, id.clone()))
            .collect()
    }

    /// Removes exec'd process `exec_id` once it has exited or never ran
    /// (runc-shim's execProcess.Delete), its outputs drained; its exit.
    pub async fn delete_exec(&mut self, id: &str, exec_id: &str) -> Result<(u32, Exit)> {
        let x = self.execs.get(exec_id).ok_or_else(|| Error::NotFound {
            what: format!("process {exec_id} of container {id}"),
        })?;
        let exit = x.proc_.exited();
        if x.proc_.started && exit.is_none() {
            return Err(Error::FailedPrecondition(format!(
                "process {exec_id} of container {id} is still running"
            )));
        }
        let mut x = self.execs.remove(exec_id).expect("looked up above");
        x.proc_.io.finish(DRAIN).await;
        Ok((x.proc_.pid, exit.unwrap_or_else(|| Exit::now(0))))
    }

    /// runc-shim's Init.Delete: the container's state and cgroups go (runc
    /// refuses a running container; a created or stopped one goes), then
    /// its rootfs mount. The outputs drain in [`Container::finish`], after
    /// the container has left the task map.
    pub async fn delete(&mut self, id: &str) -> Result<()> {
        if self.init.started && self.init.exited().is_none() {
            return Err(Error::FailedPrecondition(format!(
                "container {id} is running: kill it before deleting it"
            )));
        }
        let (root, cid) = (self.root.clone(), id.to_string());
        blocking(move || match oci::Container::load(&root, &cid) {
            Ok(c) => c.delete(true).map_err(Error::oci("deleting", &cid)),
            // runc-shim ignores a runtime that no longer knows the
            // container: after a checkpoint with `exit`, runc (and
            // Ferry) has deleted it already.
            Err(ferry_oci::Error::NoSuchContainer { .. }) => Ok(()),
            Err(e) => Err(Error::oci("deleting", &cid)(e)),
        })
        .await?;
        if self.rootfs_mounted {
            mount::unmount_all(&self.bundle.join("rootfs"))?;
            self.rootfs_mounted = false;
        }
        Ok(())
    }

    /// Lets the outputs of a deleted container drain (the init's for
    /// [`DRAIN`], the exec'd processes' not at all); the init's exit.
    pub async fn finish(mut self) -> (u32, Exit) {
        self.init.io.finish(DRAIN).await;
        for x in self.execs.values_mut() {
            x.proc_.io.finish(std::time::Duration::ZERO).await;
        }
        // A created init killed by the delete: its exit may not be reaped
        // yet, so answer as runc-shim does for a killed process.
        let exit = self
            .init
            .exited()
            .unwrap_or_else(|| Exit::now(128 + Signal::SIGKILL as u32));
        (self.init.pid, exit)
    }

    /// runc-shim's Kill: an exec'd process is signalled by pid here; the
    /// init (and with `all` every process) through the runtime, by the
    /// [`InitKill`] returned for the caller to run once it has let go of
    /// the task map. `None` when nothing is left to do.
    pub fn kill(
        &self,
        id: &str,
        exec_id: &str,
        sig: Signal,
        all: bool,
    ) -> Result<Option<InitKill>> {
        let p = self.proc_(id, exec_id)?;
        // runc-shim: a process that has exited is "not found".
        if p.exited().is_some() && !all {
            return Err(Error::NotFound {
                what: format!("process of container {id} (it has exited)"),
            });
        }
        if !exec_id.is_empty() {
            p.signal(exec_id, sig)?;
            return Ok(None);
        }
        if self.restore.is_some() {
            // Nothing runs before the restore.
            return Ok(None);
        }
        Ok(Some(InitKill {
            root: self.root.clone(),
            cid: id.to_string(),
            sig,
            all,
        }))
    }

    /// runc-shim's Init.Checkpoint: containerd's
    /// `containerd.runc.v1.CheckpointOptions` as Ferry's; the container runs
    /// on unless `exit` is set. CRIU's log goes next to the bundle when the
    /// dump fails.
    pub async fn checkpoint(
        &self,
        id: &str,
        path: &str,
        options: Option<&containerd_shim_protos::protobuf::well_known_types::any::Any>,
    ) -> Result<()> {
        if !self.init.started || self.init.exited().is_some() {
            return Err(Error::FailedPrecondition(format!(
                "container {id} is not running"
            )));
        }
        let (opts, keep_work) = checkpoint_options(path, options, &self.bundle)?;
        let work = opts.work_path.clone().expect("always set");
        let (root, cid, criu_path) = (self.root.clone(), id.to_string(), self.criu_path.clone());
        let result = blocking(move || {
            let c = oci::Container::load(&root, &cid).map_err(Error::oci("checkpointing", &cid))?;
            c.checkpoint(&criu(criu_path.as_deref()), opts, &mut |n| {
                log::debug!("criu: {}", n.script())
            })
            .map_err(Error::oci("checkpointing", &cid))?;
            Ok(())
        })
        .await;
        // runc-shim copies CRIU's log next to the bundle when a dump fails.
        if result.is_err() {
            let _ = std::fs::copy(work.join("dump.log"), self.bundle.join("criu-dump.log"));
        }
        if !keep_work {
            let _ = std::fs::remove_dir_all(&work);
        }
        result
    }
}

/// Mounts containerd's rootfs mounts on `<bundle>/rootfs`, as runc-shim's
/// Create does; on failure whatever was mounted is undone.
async fn mount_rootfs(bundle: &Path, mounts: &[Mount]) -> Result<bool> {
    if mounts.is_empty() {
        return Ok(false);
    }
    let rootfs = bundle.join("rootfs");
    tokio::fs::create_dir_all(&rootfs)
        .await
        .map_err(Error::io("creating", &rootfs))?;
    let mounts = mounts.to_vec();
    blocking(move || {
        for m in &mounts {
            if let Err(e) = mount::mount(m, &rootfs) {
                let _ = mount::unmount_all(&rootfs);
                return Err(e);
            }
        }
        Ok(())
    })
    .await?;
    Ok(true)
}

/// Undoes [`mount_rootfs`] after a create failed past it.
fn undo_mount(bundle: &Path, mounted: bool) {
    if mounted {
        let _ = mount::unmount_all(&bundle.join("rootfs"));
    }
}

/// The console master of container `c`, just created or restored, from
/// the socket it was sent to; `c` is deleted if it never comes (containerd
/// would otherwise hold a task nobody can attach to).
fn receive_console(
    c: oci::Container,
    console: Option<&ConsoleSocket>,
    cid: &str,
) -> Result<Option<std::os::fd::OwnedFd>> {
    let master = console
        .map(ConsoleSocket::receive)
        .transpose()
        .map_err(Error::oci("receiving the console of", cid));
    if master.is_err() {
        let _ = c.delete(true);
    }
    master
}
