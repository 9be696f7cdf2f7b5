//! containerd's Task service, on ferry-oci and criu-rpc.
//!
//! Follows runc-shim (containerd's runtime/v2/runc `service.go` and
//! `process/`), call by call:
//! - Create mounts the rootfs containerd gives into `<bundle>/rootfs`, makes
//!   the stdio pipes and creates the container (its init waits on
//!   exec.fifo); with `checkpoint` set it only records where the images
//!   are, and Start restores from them (runc-shim's
//!   `createdCheckpointState`);
//! - Start releases the init (or restores), Exec records a process that
//!   Start(exec_id) runs in the container;
//! - a process with a terminal sends its pty master over a console socket
//!   (runc's `--console-socket`), which the shim then copies to and from
//!   the fifos, and ResizePty resizes;
//! - the exits the [`Reaper`] reports become TaskExit events and answer
//!   Wait; Delete removes the container's state, cgroups and rootfs mount
//!   and lets the outputs drain first;
//! - Checkpoint takes containerd's `containerd.runc.v1.CheckpointOptions`
//!   and leaves the container running unless `exit` is set.
//!
//! Every ferry-oci call blocks (fork, CRIU), so it runs on tokio's blocking
//! pool, never on the ttrpc threads. ferry-oci forks the containers'
//! processes from this multi-threaded process, where runc-shim execs runc:
//! the children make system calls until they exec, and take no lock another
//! thread may hold at the fork but malloc's (fork-safe in glibc) and, to
//! report a failure, stderr's (the serving shim never writes to stderr: its
//! log goes to containerd's log fifo).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use containerd_shim::api::{
    CheckpointTaskRequest, CloseIORequest, ConnectRequest, ConnectResponse, CreateTaskRequest,
    CreateTaskResponse, DeleteRequest, DeleteResponse, Empty, ExecProcessRequest, KillRequest,
    PauseRequest, PidsRequest, PidsResponse, ResizePtyRequest, ResumeRequest, ShutdownRequest,
    StartRequest, StartResponse, StateRequest, StateResponse, StatsRequest, StatsResponse, Status,
    UpdateTaskRequest, WaitRequest, WaitResponse,
};
use containerd_shim::protos::cgroups::metrics::{
    CPUStat, CPUUsage, MemoryEntry, MemoryStat, Metrics, PidsStat,
};
use containerd_shim::protos::events::task::{
    TaskCheckpointed, TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO,
    TaskOOM, TaskPaused, TaskResumed, TaskStart,
};
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::{Message, MessageDyn};
use containerd_shim::protos::shim::oci::ProcessDetails;
use containerd_shim::protos::topics;
use containerd_shim::protos::types::task::ProcessInfo;
use containerd_shim::{ExitSignal, TtrpcContext, TtrpcResult};
use criu_rpc::Criu;
use ferry_oci::restore::RestoreOptions;
use ferry_oci::runtime::cr::{restore_container, RestoreRuntimeOptions};
use ferry_oci::runtime::spec::bundle_has_terminal;
use ferry_oci::runtime::{Container, CreateOptions, ExecOptions, Stdio};
use nix::sys::signal::Signal;
use oci_spec::runtime::{LinuxResources, Process};
use tokio::sync::{mpsc, watch, Mutex};

use super::checkpoint::{checkpoint_options, pending_restore, runtime_options, PendingRestore};
use super::error::{Error, Result};
use super::reaper::{Exited, Reaper};
use super::stdio::ProcessIo;
use containerd_shim::protos::shim::oci::Options as RuncOptions;
use ferry_oci::runtime::console::ConsoleSocket;

/// An event for containerd: its topic and message.
pub type Event = (&'static str, Box<dyn MessageDyn>);

/// How long a delete lets the outputs drain.
const DRAIN: Duration = Duration::from_secs(2);

/// How a process ended.
#[derive(Debug, Clone)]
struct Exit {
    status: u32,
    at: Timestamp,
}

/// The init or an exec'd process, as the shim tracks it.
#[derive(Debug)]
struct Proc {
    pid: u32,
    started: bool,
    terminal: bool,
    io: ProcessIo,
    /// The container's side of the stdio until the process runs.
    stdio: Option<Stdio>,
    exit: watch::Sender<Option<Exit>>,
}

impl Proc {
    /// A process with containerd's stdio: pipes, or for a terminal the
    /// fifo paths only (the pty master arrives when the process runs).
    fn new(stdin: &str, stdout: &str, stderr: &str, terminal: bool) -> Result<Proc> {
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
    fn console_socket(&self) -> Result<Option<ConsoleSocket>> {
        self.terminal
            .then(ConsoleSocket::new)
            .transpose()
            .map_err(|e| Error::Oci {
                op: "making a console socket for",
                id: self.pid.to_string(),
                source: Box::new(e),
            })
    }

    fn exited(&self) -> Option<Exit> {
        self.exit.borrow().clone()
    }
}

#[derive(Debug)]
struct Exec {
    proc_: Proc,
    spec: Process,
}

#[derive(Debug)]
struct Task {
    bundle: PathBuf,
    rootfs_mounted: bool,
    init: Proc,
    restore: Option<PendingRestore>,
    /// The runtime options' SystemdCgroup (cgroupsPath is slice:prefix:name).
    systemd_cgroup: bool,
    /// Ferry's state root for this task: the runtime options' Root (plus
    /// the namespace, as runc-shim does), else the shim's default.
    root: PathBuf,
    /// The runtime options' CriuPath: the criu binary of this task's
    /// checkpoints and restores (else `$FERRY_CRIU`, else PATH's).
    criu_path: Option<PathBuf>,
    execs: HashMap<String, Exec>,
}

impl Task {
    fn proc_(&self, id: &str, exec_id: &str) -> Result<&Proc> {
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

    fn proc_mut(&mut self, id: &str, exec_id: &str) -> Result<&mut Proc> {
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
}

/// The Task service of one shim (one container, or a group of them).
#[derive(Clone)]
pub struct TaskService {
    /// Ferry's default state root for this containerd namespace (a task's
    /// runtime options may name another).
    root: PathBuf,
    namespace: String,
    tasks: Arc<Mutex<HashMap<String, Task>>>,
    events: mpsc::UnboundedSender<Event>,
    reaper: Reaper,
    exit: Arc<ExitSignal>,
}

/// Ferry's state root for the containers of containerd namespace `ns`:
/// `$FERRY_SHIM_ROOT` or /run/containerd/ferry, then the namespace, as
/// runc-shim uses /run/containerd/runc/<namespace>.
pub fn state_root(ns: &str) -> PathBuf {
    std::env::var_os("FERRY_SHIM_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/run/containerd/ferry"))
        .join(ns)
}

/// The state root of a task created with runtime options `o`: their
/// `Root` joined with the namespace (runc-shim runs `runc --root
/// <Root>/<namespace>`), else [`state_root`].
pub fn task_root(ns: &str, o: &RuncOptions) -> PathBuf {
    match o.root.as_str() {
        "" => state_root(ns),
        root => Path::new(root).join(ns),
    }
}

/// The CRIU binary: the task's runtime options' `CriuPath` (runc-shim
/// passes it as `runc --criu`), else `$FERRY_CRIU`, else `criu` in PATH
/// (as the ferry CLI).
fn criu(criu_path: Option<&Path>) -> Criu {
    criu_binary(criu_path)
        .map(Criu::with_binary)
        .unwrap_or_default()
}

/// The runtime options' `CriuPath` (field 8 of `containerd.runc.v1.Options`),
/// which containerd 1.6 and 1.7 send from the runtime's `CriuPath` setting.
/// containerd 2.0 removed the field (`reserved 8` in its oci.proto), so the
/// generated type has none: it is read from the message's unknown fields.
fn criu_path_option(o: &RuncOptions) -> Option<PathBuf> {
    use containerd_shim::protos::protobuf::UnknownValueRef;
    use std::os::unix::ffi::OsStrExt;
    const CRIU_PATH: u32 = 8;
    match o.special_fields.unknown_fields().get(CRIU_PATH)? {
        UnknownValueRef::LengthDelimited(b) if !b.is_empty() => {
            Some(PathBuf::from(std::ffi::OsStr::from_bytes(b)))
        }
        _ => None,
    }
}

/// The criu binary [`criu`] names, if not PATH's.
fn criu_binary(criu_path: Option<&Path>) -> Option<PathBuf> {
    criu_path
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os("FERRY_CRIU").map(PathBuf::from))
}

/// What a dead shim's cleanup (`delete` of the shim binary) needs of the
/// runtime options its task was created with, kept in the bundle as
/// runc-shim keeps its options.json.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct SavedOptions {
    pub root: PathBuf,
}

/// The file in a bundle that holds [`SavedOptions`].
pub const SAVED_OPTIONS: &str = "ferry-options.json";

fn now() -> Timestamp {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
        ..Default::default()
    }
}

/// Runs blocking ferry-oci work off the ttrpc threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await?
}

/// Mounts containerd's rootfs mounts on `<bundle>/rootfs`, as runc-shim's
/// Create does; on failure whatever was mounted is undone.
async fn mount_rootfs(
    bundle: &Path,
    mounts: &[containerd_shim::protos::types::mount::Mount],
) -> Result<bool> {
    if mounts.is_empty() {
        return Ok(false);
    }
    let rootfs = bundle.join("rootfs");
    tokio::fs::create_dir_all(&rootfs)
        .await
        .map_err(Error::io("creating", &rootfs))?;
    for m in mounts {
        if let Err(source) = containerd_shim::util::mount_rootfs(m, &rootfs).await {
            let _ = unmount_rootfs(&rootfs);
            return Err(Error::Shim {
                op: "mounting the container's rootfs",
                source,
            });
        }
    }
    Ok(true)
}

/// Unmounts everything at or under `rootfs` (runc-shim: mount.UnmountAll).
pub fn unmount_rootfs(rootfs: &Path) -> Result<()> {
    let target = rootfs.to_string_lossy().into_owned();
    containerd_shim::mount::umount_recursive(Some(&target), libc::MNT_DETACH).map_err(|source| {
        Error::Shim {
            op: "unmounting the container's rootfs",
            source,
        }
    })
}

impl TaskService {
    pub fn new(
        namespace: &str,
        events: mpsc::UnboundedSender<Event>,
        exit: Arc<ExitSignal>,
    ) -> std::io::Result<TaskService> {
        let (tx, rx) = mpsc::unbounded_channel();
        let service = TaskService {
            root: state_root(namespace),
            namespace: namespace.to_string(),
            tasks: Arc::default(),
            events,
            reaper: Reaper::start(tx)?,
            exit,
        };
        tokio::spawn(service.clone().handle_exits(rx));
        Ok(service)
    }

    fn publish(&self, topic: &'static str, event: Box<dyn MessageDyn>) {
        // The forwarder lives as long as the shim.
        let _ = self.events.send((topic, event));
    }

    /// Publishes `/tasks/oom` for `id` whenever its memory cgroup runs out
    /// of memory (runc-shim starts this watch once the init runs). A host
    /// without a v1 memory hierarchy has nothing watched; a watch that
    /// cannot start is logged and the task runs on, as with runc-shim.
    fn watch_oom(&self, id: &str, memory: Option<PathBuf>) {
        let Some(memory) = memory else {
            return;
        };
        let (events, cid) = (self.events.clone(), id.to_string());
        let watched = super::oom::watch(&memory, move || {
            let oom = TaskOOM {
                container_id: cid.clone(),
                ..Default::default()
            };
            let _ = events.send((topics::TASK_OOM_EVENT_TOPIC, Box::new(oom)));
        });
        if let Err(e) = watched {
            log::warn!("no OOM events for {id}: {}", e.chain());
        }
    }

    /// Records each exit the reaper reports and tells containerd
    /// (runc-shim's `processExits` / `handleProcessExit`).
    async fn handle_exits(self, mut rx: mpsc::UnboundedReceiver<Exited>) {
        while let Some(e) = rx.recv().await {
            let mut tasks = self.tasks.lock().await;
            for (id, t) in tasks.iter_mut() {
                let found = if t.init.pid as i32 == e.pid && t.init.exited().is_none() {
                    Some((&t.init, id.clone()))
                } else {
                    t.execs
                        .iter()
                        .find(|(_, x)| x.proc_.pid as i32 == e.pid && x.proc_.exited().is_none())
                        .map(|(xid, x)| (&x.proc_, xid.clone()))
                };
                if let Some((p, pid_id)) = found {
                    let exit = Exit {
                        status: e.status as u32,
                        at: now(),
                    };
                    p.exit.send_replace(Some(exit.clone()));
                    self.publish(
                        topics::TASK_EXIT_EVENT_TOPIC,
                        Box::new(TaskExit {
                            container_id: id.clone(),
                            id: pid_id,
                            pid: e.pid as u32,
                            exit_status: exit.status,
                            exited_at: Some(exit.at).into(),
                            ..Default::default()
                        }),
                    );
                    break;
                }
            }
        }
    }

    async fn create_task(&self, req: CreateTaskRequest) -> Result<CreateTaskResponse> {
        let id = req.id.clone();
        let mut tasks = self.tasks.lock().await;
        if tasks.contains_key(&id) {
            return Err(Error::FailedPrecondition(format!(
                "container {id} already exists in this shim"
            )));
        }
        let bundle = PathBuf::from(&req.bundle);
        let options = runtime_options(&req)?;
        let restore = pending_restore(&req, &options);
        let root = task_root(&self.namespace, &options);
        let criu_path = criu_path_option(&options);
        let saved = serde_json::to_vec(&SavedOptions { root: root.clone() }).unwrap_or_default();
        let saved_at = bundle.join(SAVED_OPTIONS);
        tokio::fs::write(&saved_at, saved)
            .await
            .map_err(Error::io("writing", &saved_at))?;
        let rootfs_mounted = mount_rootfs(&bundle, &req.rootfs).await?;
        let undo_mount = |bundle: &Path| {
            if rootfs_mounted {
                let _ = unmount_rootfs(&bundle.join("rootfs"));
            }
        };
        // A checkpoint of a task with a terminal is restored onto a terminal
        // whatever the request says: CRIU makes a new pty and hands its
        // master over (orphan_pts_master), which must go somewhere. ctr 1.6's
        // `container restore` asks for none; the output then reaches the
        // stdout fifo as for any task with a terminal.
        let terminal = req.terminal || (restore.is_some() && bundle_has_terminal(&bundle));
        let mut init = match Proc::new(&req.stdin, &req.stdout, &req.stderr, terminal) {
            Ok(p) => p,
            Err(e) => {
                undo_mount(&bundle);
                return Err(e);
            }
        };
        if restore.is_none() {
            let systemd = options.systemd_cgroup;
            if let Err(e) = self
                .create_init(&root, &id, &bundle, &mut init, systemd)
                .await
            {
                undo_mount(&bundle);
                return Err(e);
            }
        }
        let pid = init.pid;
        tasks.insert(
            id.clone(),
            Task {
                bundle,
                rootfs_mounted,
                init,
                restore,
                systemd_cgroup: options.systemd_cgroup,
                root,
                criu_path,
                execs: HashMap::new(),
            },
        );
        self.publish(
            topics::TASK_CREATE_EVENT_TOPIC,
            Box::new(TaskCreate {
                container_id: id,
                bundle: req.bundle,
                rootfs: req.rootfs,
                io: Some(TaskIO {
                    stdin: req.stdin,
                    stdout: req.stdout,
                    stderr: req.stderr,
                    terminal: req.terminal,
                    ..Default::default()
                })
                .into(),
                checkpoint: req.checkpoint,
                pid,
                ..Default::default()
            }),
        );
        Ok(CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    /// `runc create` of runc-shim's Init.Create: the init waits on
    /// exec.fifo; its pty master, if any, comes over the console socket.
    async fn create_init(
        &self,
        root: &Path,
        id: &str,
        bundle: &Path,
        init: &mut Proc,
        systemd_cgroup: bool,
    ) -> Result<()> {
        let stdio = init.stdio.take();
        let console = init.console_socket()?;
        let (root, cid, b) = (root.to_path_buf(), id.to_string(), bundle.to_path_buf());
        let (pid, master, memory) = blocking(move || {
            let opts = CreateOptions {
                stdio,
                console_socket: console.as_ref().map(|c| c.path().to_path_buf()),
                systemd_cgroup,
                ..Default::default()
            };
            let c =
                Container::create(&root, &cid, &b, &opts).map_err(Error::oci("creating", &cid))?;
            let pid = c.state.pid;
            let memory = c.state.cgroup.memory_v1_path();
            match console
                .as_ref()
                .map(ConsoleSocket::receive)
                .transpose()
                .map_err(Error::oci("receiving the console of", &cid))
            {
                Ok(master) => Ok((pid, master, memory)),
                Err(e) => {
                    let _ = c.delete(true);
                    Err(e)
                }
            }
        })
        .await?;
        init.pid = pid as u32;
        self.reaper.watch(pid);
        self.watch_oom(id, memory);
        if let Some(m) = master {
            init.io.attach_console(m)?;
        }
        Ok(())
    }

    async fn start_init(&self, id: &str, t: &mut Task) -> Result<u32> {
        if t.init.started {
            return Err(Error::FailedPrecondition(format!(
                "container {id} is already started"
            )));
        }
        if t.init.exited().is_some() {
            return Err(Error::FailedPrecondition(format!(
                "container {id}'s init has exited"
            )));
        }
        let root = t.root.clone();
        let criu_path = t.criu_path.clone();
        let cid = id.to_string();
        let pid = match t.restore.take() {
            Some(r) => {
                let stdio = t.init.stdio.take();
                let console = t.init.console_socket()?;
                let bundle = t.bundle.clone();
                let systemd_cgroup = t.systemd_cgroup;
                let (pid, master, memory) = blocking(move || {
                    // The restore stands in for runc's `restore --detach`
                    // of runc-shim's createdCheckpointState.Start.
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
                    match console
                        .as_ref()
                        .map(ConsoleSocket::receive)
                        .transpose()
                        .map_err(Error::oci("receiving the console of", &cid))
                    {
                        Ok(master) => Ok((restored.pid.as_raw() as u32, master, memory)),
                        Err(e) => {
                            let _ = c.delete(true);
                            Err(e)
                        }
                    }
                })
                .await?;
                if let Some(m) = master {
                    t.init.io.attach_console(m)?;
                }
                self.watch_oom(id, memory);
                pid
            }
            None => {
                blocking(move || {
                    let mut c =
                        Container::load(&root, &cid).map_err(Error::oci("starting", &cid))?;
                    c.start().map_err(Error::oci("starting", &cid))?;
                    Ok(c.state.pid as u32)
                })
                .await?
            }
        };
        t.init.pid = pid;
        t.init.started = true;
        self.reaper.watch(pid as i32);
        Ok(pid)
    }

    async fn start_exec(&self, id: &str, exec_id: &str, t: &mut Task) -> Result<u32> {
        if t.init.exited().is_some() {
            return Err(Error::FailedPrecondition(format!(
                "container {id}'s init has exited"
            )));
        }
        let (root, cid) = (t.root.clone(), id.to_string());
        let x = t.execs.get_mut(exec_id).ok_or_else(|| Error::NotFound {
            what: format!("process {exec_id} of container {id}"),
        })?;
        if x.proc_.started {
            return Err(Error::FailedPrecondition(format!(
                "process {exec_id} is already started"
            )));
        }
        let stdio = x.proc_.stdio.take();
        let console = x.proc_.console_socket()?;
        let spec = x.spec.clone();
        let (pid, master) = blocking(move || {
            let c = Container::load(&root, &cid).map_err(Error::oci("exec in", &cid))?;
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
            x.proc_.io.attach_console(m)?;
        }
        x.proc_.pid = pid;
        x.proc_.started = true;
        self.reaper.watch(pid as i32);
        Ok(pid)
    }

    async fn delete_task(&self, id: &str, exec_id: &str) -> Result<DeleteResponse> {
        let mut tasks = self.tasks.lock().await;
        let t = tasks.get_mut(id).ok_or_else(|| Error::NotFound {
            what: format!("container {id}"),
        })?;
        if !exec_id.is_empty() {
            let x = t.execs.get(exec_id).ok_or_else(|| Error::NotFound {
                what: format!("process {exec_id} of container {id}"),
            })?;
            let exit = x.proc_.exited();
            if x.proc_.started && exit.is_none() {
                return Err(Error::FailedPrecondition(format!(
                    "process {exec_id} of container {id} is still running"
                )));
            }
            let mut x = t.execs.remove(exec_id).expect("looked up above");
            x.proc_.io.finish(DRAIN).await;
            let exit = exit.unwrap_or(Exit {
                status: 0,
                at: now(),
            });
            return Ok(DeleteResponse {
                pid: x.proc_.pid,
                exit_status: exit.status,
                exited_at: Some(exit.at).into(),
                ..Default::default()
            });
        }
        // runc refuses to delete a running container; a created one (or a
        // stopped one) goes, as runc-shim's Init.Delete does.
        if t.init.started && t.init.exited().is_none() {
            return Err(Error::FailedPrecondition(format!(
                "container {id} is running: kill it before deleting it"
            )));
        }
        let (root, cid) = (t.root.clone(), id.to_string());
        blocking(move || match Container::load(&root, &cid) {
            Ok(c) => c.delete(true).map_err(Error::oci("deleting", &cid)),
            // runc-shim ignores a runtime that no longer knows the
            // container: after a checkpoint with `exit`, runc (and
            // Ferry) has deleted it already.
            Err(ferry_oci::Error::NoSuchContainer { .. }) => Ok(()),
            Err(e) => Err(Error::oci("deleting", &cid)(e)),
        })
        .await?;
        if t.rootfs_mounted {
            unmount_rootfs(&t.bundle.join("rootfs"))?;
            t.rootfs_mounted = false;
        }
        let mut t = tasks.remove(id).expect("looked up above");
        drop(tasks);
        t.init.io.finish(DRAIN).await;
        for x in t.execs.values_mut() {
            x.proc_.io.finish(Duration::ZERO).await;
        }
        // A created init killed by the delete: its exit may not be reaped
        // yet, so answer as runc-shim does for a killed process.
        let exit = t.init.exited().unwrap_or(Exit {
            status: 128 + Signal::SIGKILL as u32,
            at: now(),
        });
        self.publish(
            topics::TASK_DELETE_EVENT_TOPIC,
            Box::new(TaskDelete {
                container_id: id.to_string(),
                id: id.to_string(),
                pid: t.init.pid,
                exit_status: exit.status,
                exited_at: Some(exit.at.clone()).into(),
                ..Default::default()
            }),
        );
        Ok(DeleteResponse {
            pid: t.init.pid,
            exit_status: exit.status,
            exited_at: Some(exit.at).into(),
            ..Default::default()
        })
    }

    async fn kill_task(&self, req: KillRequest) -> Result<()> {
        let sig = Signal::try_from(req.signal as i32)
            .map_err(|_| Error::InvalidArgument(format!("signal {} is not one", req.signal)))?;
        let tasks = self.tasks.lock().await;
        let t = tasks.get(&req.id).ok_or_else(|| Error::NotFound {
            what: format!("container {}", req.id),
        })?;
        let p = t.proc_(&req.id, &req.exec_id)?;
        // runc-shim: a process that has exited is "not found".
        if p.exited().is_some() && !req.all {
            return Err(Error::NotFound {
                what: format!("process of container {} (it has exited)", req.id),
            });
        }
        if !req.exec_id.is_empty() {
            if p.pid == 0 {
                return Err(Error::FailedPrecondition(format!(
                    "process {} is not started",
                    req.exec_id
                )));
            }
            return nix::sys::signal::kill(nix::unistd::Pid::from_raw(p.pid as i32), sig).map_err(
                |e| Error::Io {
                    op: "signalling process",
                    path: format!("/proc/{}", p.pid).into(),
                    source: e.into(),
                },
            );
        }
        if t.restore.is_some() {
            // Nothing runs before the restore.
            return Ok(());
        }
        let (root, cid, all) = (t.root.clone(), req.id.clone(), req.all);
        drop(tasks);
        blocking(move || {
            let c = Container::load(&root, &cid).map_err(Error::oci("killing", &cid))?;
            c.kill(sig as i32, all).map_err(Error::oci("killing", &cid))
        })
        .await
    }

    async fn checkpoint_task(&self, req: CheckpointTaskRequest) -> Result<()> {
        let tasks = self.tasks.lock().await;
        let t = tasks.get(&req.id).ok_or_else(|| Error::NotFound {
            what: format!("container {}", req.id),
        })?;
        if !t.init.started || t.init.exited().is_some() {
            return Err(Error::FailedPrecondition(format!(
                "container {} is not running",
                req.id
            )));
        }
        let (opts, keep_work) = checkpoint_options(&req.path, req.options.as_ref(), &t.bundle)?;
        let work = opts.work_path.clone().expect("always set");
        let bundle = t.bundle.clone();
        let (root, cid, criu_path) = (t.root.clone(), req.id.clone(), t.criu_path.clone());
        let result = blocking(move || {
            let c = Container::load(&root, &cid).map_err(Error::oci("checkpointing", &cid))?;
            c.checkpoint(&criu(criu_path.as_deref()), opts, &mut |n| {
                log::debug!("criu: {}", n.script())
            })
            .map_err(Error::oci("checkpointing", &cid))?;
            Ok(())
        })
        .await;
        drop(tasks);
        // runc-shim copies CRIU's log next to the bundle when a dump fails.
        if result.is_err() {
            let _ = std::fs::copy(work.join("dump.log"), bundle.join("criu-dump.log"));
        }
        if !keep_work {
            let _ = std::fs::remove_dir_all(&work);
        }
        result?;
        self.publish(
            topics::TASK_CHECKPOINTED_EVENT_TOPIC,
            Box::new(TaskCheckpointed {
                container_id: req.id,
                checkpoint: req.path,
                ..Default::default()
            }),
        );
        Ok(())
    }

    /// Runs `f` on the loaded container of a started, running task.
    async fn on_container<T: Send + 'static>(
        &self,
        id: &str,
        op: &'static str,
        f: impl FnOnce(Container) -> ferry_oci::Result<T> + Send + 'static,
    ) -> Result<T> {
        let root = {
            let tasks = self.tasks.lock().await;
            let t = tasks.get(id).ok_or_else(|| Error::NotFound {
                what: format!("container {id}"),
            })?;
            if t.restore.is_some() {
                return Err(Error::FailedPrecondition(format!(
                    "container {id} is not restored yet: start it first"
                )));
            }
            t.root.clone()
        };
        let cid = id.to_string();
        blocking(move || {
            let c = Container::load(&root, &cid).map_err(Error::oci(op, &cid))?;
            f(c).map_err(Error::oci(op, &cid))
        })
        .await
    }
}

fn status_of(p: &Proc, paused: bool) -> Status {
    if p.exited().is_some() {
        Status::STOPPED
    } else if !p.started {
        Status::CREATED
    } else if paused {
        Status::PAUSED
    } else {
        Status::RUNNING
    }
}

#[async_trait]
impl containerd_shim::Task for TaskService {
    async fn state(&self, _ctx: &TtrpcContext, req: StateRequest) -> TtrpcResult<StateResponse> {
        let paused = if req.exec_id.is_empty() {
            let root = (self.tasks.lock().await.get(&req.id))
                .map_or_else(|| self.root.clone(), |t| t.root.clone());
            let id = req.id.clone();
            tokio::task::spawn_blocking(move || {
                Container::load(&root, &id)
                    .map(|c| c.status() == ferry_oci::runtime::Status::Paused)
                    .unwrap_or(false)
            })
            .await
            .unwrap_or(false)
        } else {
            false
        };
        let tasks = self.tasks.lock().await;
        let t = tasks.get(&req.id).ok_or_else(|| Error::NotFound {
            what: format!("container {}", req.id),
        })?;
        let p = t.proc_(&req.id, &req.exec_id)?;
        let exit = p.exited();
        Ok(StateResponse {
            id: req.id.clone(),
            bundle: t.bundle.to_string_lossy().into_owned(),
            pid: p.pid,
            status: status_of(p, paused).into(),
            stdin: p.io.stdin.clone(),
            stdout: p.io.stdout.clone(),
            stderr: p.io.stderr.clone(),
            terminal: p.terminal,
            exit_status: exit.as_ref().map(|e| e.status).unwrap_or(0),
            exited_at: exit.map(|e| e.at).into(),
            exec_id: req.exec_id,
            ..Default::default()
        })
    }

    async fn create(
        &self,
        _ctx: &TtrpcContext,
        req: CreateTaskRequest,
    ) -> TtrpcResult<CreateTaskResponse> {
        Ok(self.create_task(req).await?)
    }

    async fn start(&self, _ctx: &TtrpcContext, req: StartRequest) -> TtrpcResult<StartResponse> {
        let mut tasks = self.tasks.lock().await;
        let t = tasks.get_mut(&req.id).ok_or_else(|| Error::NotFound {
            what: format!("container {}", req.id),
        })?;
        let pid = if req.exec_id.is_empty() {
            let pid = self.start_init(&req.id, t).await?;
            self.publish(
                topics::TASK_START_EVENT_TOPIC,
                Box::new(TaskStart {
                    container_id: req.id.clone(),
                    pid,
                    ..Default::default()
                }),
            );
            pid
        } else {
            let pid = self.start_exec(&req.id, &req.exec_id, t).await?;
            self.publish(
                topics::TASK_EXEC_STARTED_EVENT_TOPIC,
                Box::new(TaskExecStarted {
                    container_id: req.id.clone(),
                    exec_id: req.exec_id.clone(),
                    pid,
                    ..Default::default()
                }),
            );
            pid
        };
        Ok(StartResponse {
            pid,
            ..Default::default()
        })
    }

    async fn delete(&self, _ctx: &TtrpcContext, req: DeleteRequest) -> TtrpcResult<DeleteResponse> {
        Ok(self.delete_task(&req.id, &req.exec_id).await?)
    }

    async fn pids(&self, _ctx: &TtrpcContext, req: PidsRequest) -> TtrpcResult<PidsResponse> {
        let pids = self
            .on_container(&req.id, "listing the processes of", |c| c.pids())
            .await?;
        // runc-shim tells which pids are exec'd processes.
        let execs: HashMap<u32, String> = {
            let tasks = self.tasks.lock().await;
            tasks
                .get(&req.id)
                .map(|t| {
                    t.execs
                        .iter()
                        .map(|(id, x)| (x.proc_.pid, id.clone()))
                        .collect()
                })
                .unwrap_or_default()
        };
        let mut processes = Vec::new();
        for p in pids {
            let pid = p.as_raw() as u32;
            let info = match execs.get(&pid) {
                Some(exec_id) => {
                    let d = ProcessDetails {
                        exec_id: exec_id.clone(),
                        ..Default::default()
                    };
                    Some(Any {
                        type_url: "containerd.runc.v1.ProcessDetails".into(),
                        value: d.write_to_bytes().map_err(|source| Error::Protobuf {
                            what: "containerd.runc.v1.ProcessDetails",
                            source,
                        })?,
                        ..Default::default()
                    })
                }
                None => None,
            };
            processes.push(ProcessInfo {
                pid,
                info: info.into(),
                ..Default::default()
            });
        }
        Ok(PidsResponse {
            processes,
            ..Default::default()
        })
    }

    async fn pause(&self, _ctx: &TtrpcContext, req: PauseRequest) -> TtrpcResult<Empty> {
        self.on_container(&req.id, "pausing", |c| c.pause()).await?;
        self.publish(
            topics::TASK_PAUSED_EVENT_TOPIC,
            Box::new(TaskPaused {
                container_id: req.id,
                ..Default::default()
            }),
        );
        Ok(Empty::new())
    }

    async fn resume(&self, _ctx: &TtrpcContext, req: ResumeRequest) -> TtrpcResult<Empty> {
        self.on_container(&req.id, "resuming", |c| c.resume())
            .await?;
        self.publish(
            topics::TASK_RESUMED_EVENT_TOPIC,
            Box::new(TaskResumed {
                container_id: req.id,
                ..Default::default()
            }),
        );
        Ok(Empty::new())
    }

    async fn checkpoint(
        &self,
        _ctx: &TtrpcContext,
        req: CheckpointTaskRequest,
    ) -> TtrpcResult<Empty> {
        self.checkpoint_task(req).await?;
        Ok(Empty::new())
    }

    async fn kill(&self, _ctx: &TtrpcContext, req: KillRequest) -> TtrpcResult<Empty> {
        self.kill_task(req).await?;
        Ok(Empty::new())
    }

    async fn exec(&self, _ctx: &TtrpcContext, req: ExecProcessRequest) -> TtrpcResult<Empty> {
        // The process arrives as the runtime-spec's Process in JSON.
        let spec: Process = serde_json::from_slice(
            &req.spec
                .as_ref()
                .map(|a| a.value.clone())
                .unwrap_or_default(),
        )
        .map_err(|source| Error::Json {
            what: "the exec'd process spec",
            source,
        })?;
        let mut tasks = self.tasks.lock().await;
        let t = tasks.get_mut(&req.id).ok_or_else(|| Error::NotFound {
            what: format!("container {}", req.id),
        })?;
        if t.execs.contains_key(&req.exec_id) {
            return Err(Error::FailedPrecondition(format!(
                "process {} already exists in container {}",
                req.exec_id, req.id
            ))
            .into());
        }
        let proc_ = Proc::new(&req.stdin, &req.stdout, &req.stderr, req.terminal)?;
        t.execs.insert(req.exec_id.clone(), Exec { proc_, spec });
        self.publish(
            topics::TASK_EXEC_ADDED_EVENT_TOPIC,
            Box::new(TaskExecAdded {
                container_id: req.id,
                exec_id: req.exec_id,
                ..Default::default()
            }),
        );
        Ok(Empty::new())
    }

    async fn resize_pty(&self, _ctx: &TtrpcContext, req: ResizePtyRequest) -> TtrpcResult<Empty> {
        let tasks = self.tasks.lock().await;
        let t = tasks.get(&req.id).ok_or_else(|| Error::NotFound {
            what: format!("container {}", req.id),
        })?;
        t.proc_(&req.id, &req.exec_id)?
            .io
            .resize(req.width, req.height)?;
        Ok(Empty::new())
    }

    async fn close_io(&self, _ctx: &TtrpcContext, req: CloseIORequest) -> TtrpcResult<Empty> {
        let mut tasks = self.tasks.lock().await;
        let t = tasks.get_mut(&req.id).ok_or_else(|| Error::NotFound {
            what: format!("container {}", req.id),
        })?;
        let p = t.proc_mut(&req.id, &req.exec_id)?;
        if req.stdin {
            p.io.close_stdin();
        }
        Ok(Empty::new())
    }

    async fn update(&self, _ctx: &TtrpcContext, req: UpdateTaskRequest) -> TtrpcResult<Empty> {
        // The resources arrive as the runtime-spec's LinuxResources in JSON.
        let resources: LinuxResources = serde_json::from_slice(
            &req.resources
                .as_ref()
                .map(|a| a.value.clone())
                .unwrap_or_default(),
        )
        .map_err(|source| Error::Json {
            what: "the resources to update",
            source,
        })?;
        self.on_container(&req.id, "updating", move |c| c.update(&resources))
            .await?;
        Ok(Empty::new())
    }

    async fn wait(&self, _ctx: &TtrpcContext, req: WaitRequest) -> TtrpcResult<WaitResponse> {
        let mut rx = {
            let tasks = self.tasks.lock().await;
            let t = tasks.get(&req.id).ok_or_else(|| Error::NotFound {
                what: format!("container {}", req.id),
            })?;
            t.proc_(&req.id, &req.exec_id)?.exit.subscribe()
        };
        let exit = rx
            .wait_for(|e| e.is_some())
            .await
            .map(|e| e.clone())
            .ok()
            .flatten()
            .ok_or_else(|| Error::NotFound {
                what: format!("container {} (deleted while waited for)", req.id),
            })?;
        Ok(WaitResponse {
            exit_status: exit.status,
            exited_at: Some(exit.at).into(),
            ..Default::default()
        })
    }

    async fn stats(&self, _ctx: &TtrpcContext, req: StatsRequest) -> TtrpcResult<StatsResponse> {
        let s = self
            .on_container(&req.id, "reading the cgroup stats of", |c| {
                c.state.cgroup.stats()
            })
            .await?;
        // containerd reads cgroup v1 metrics on a hybrid host, as runc-shim
        // reports them.
        let m = Metrics {
            pids: Some(PidsStat {
                current: s.pids.current,
                limit: s.pids.limit,
                ..Default::default()
            })
            .into(),
            cpu: Some(CPUStat {
                usage: Some(CPUUsage {
                    total: s.cpu.usage.usage_total,
                    kernel: s.cpu.usage.usage_kernel,
                    user: s.cpu.usage.usage_user,
                    per_cpu: s.cpu.usage.per_core_usage_total.clone(),
                    ..Default::default()
                })
                .into(),
                ..Default::default()
            })
            .into(),
            memory: Some(MemoryStat {
                cache: s.memory.cache,
                usage: Some(MemoryEntry {
                    usage: s.memory.memory.usage,
                    max: s.memory.memory.max_usage,
                    limit: s.memory.memory.limit,
                    failcnt: s.memory.memory.fail_count,
                    ..Default::default()
                })
                .into(),
                ..Default::default()
            })
            .into(),
            ..Default::default()
        };
        // containerd's typeurl registry knows the bare message name, as
        // runc-shim's typeurl.MarshalAny writes it.
        let any = Any {
            type_url: "io.containerd.cgroups.v1.Metrics".into(),
            value: m.write_to_bytes().map_err(|source| Error::Protobuf {
                what: "the cgroup metrics",
                source,
            })?,
            ..Default::default()
        };
        Ok(StatsResponse {
            stats: Some(any).into(),
            ..Default::default()
        })
    }

    async fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: ConnectRequest,
    ) -> TtrpcResult<ConnectResponse> {
        let tasks = self.tasks.lock().await;
        let pid = tasks.get(&req.id).map(|t| t.init.pid).unwrap_or(0);
        Ok(ConnectResponse {
            shim_pid: std::process::id(),
            task_pid: pid,
            version: env!("CARGO_PKG_VERSION").to_string(),
            ..Default::default()
        })
    }

    async fn shutdown(&self, _ctx: &TtrpcContext, _req: ShutdownRequest) -> TtrpcResult<Empty> {
        // runc-shim: a shim that still has containers stays.
        if self.tasks.lock().await.is_empty() {
            self.exit.signal();
        }
        Ok(Empty::new())
    }
}

#[cfg(test)]
mod options_tests {
    use super::*;

    #[test]
    fn the_runtime_options_root_holds_the_namespace_s_state() {
        let o = RuncOptions {
            root: "/var/lib/alt".into(),
            ..Default::default()
        };
        assert_eq!(
            task_root("k8s.io", &o),
            PathBuf::from("/var/lib/alt/k8s.io")
        );
        assert_eq!(
            task_root("k8s.io", &RuncOptions::default()),
            state_root("k8s.io")
        );
    }

    #[test]
    fn criu_path_is_read_from_the_options_containerd_1_sends() {
        // containerd 1.6's Options with CriuPath: field 8, a string.
        let mut sent = RuncOptions {
            root: "/var/lib/alt".into(),
            ..Default::default()
        };
        sent.special_fields
            .mut_unknown_fields()
            .add_length_delimited(8, b"/opt/criu/sbin/criu".to_vec());
        let wire = sent.write_to_bytes().unwrap();
        let got = RuncOptions::parse_from_bytes(&wire).unwrap();
        assert_eq!(
            criu_path_option(&got),
            Some(PathBuf::from("/opt/criu/sbin/criu"))
        );
        assert_eq!(got.root, "/var/lib/alt");
        assert_eq!(criu_path_option(&RuncOptions::default()), None);
    }

    #[test]
    fn the_runtime_options_criu_path_comes_before_the_environment() {
        // FERRY_CRIU is whatever the test runner has; CriuPath wins over it.
        assert_eq!(
            criu_binary(Some(Path::new("/opt/criu/sbin/criu"))),
            Some(PathBuf::from("/opt/criu/sbin/criu"))
        );
        assert_eq!(
            criu_binary(None),
            std::env::var_os("FERRY_CRIU").map(PathBuf::from)
        );
    }
}
