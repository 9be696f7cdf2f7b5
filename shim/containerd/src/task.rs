//! containerd's Task service (runc-shim's `task/service.go`): the RPCs,
//! the containers this shim holds, and the events containerd receives.
//!
//! Each RPC finds the container or process and calls it ([`Container`] for
//! what a container does through ferry-oci, [`Proc`] for one process's
//! state, stdio and exit), then publishes the event runc-shim publishes.
//! The exits the [`Reaper`] reports are fanned out here: recorded on their
//! process (answering Wait) and sent as TaskExit (runc-shim's
//! `processExits`).
//!
//! ferry-oci forks the containers' processes from this multi-threaded
//! process, where runc-shim execs runc: the children make system calls
//! until they exec, and take no lock another thread may hold at the fork
//! but malloc's (fork-safe in glibc) and, to report a failure, stderr's
//! (the serving shim never writes to stderr: its log goes to containerd's
//! log fifo).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use containerd_shim_protos::api::{
    CheckpointTaskRequest, CloseIORequest, ConnectRequest, ConnectResponse, CreateTaskRequest,
    CreateTaskResponse, DeleteRequest, DeleteResponse, Empty, ExecProcessRequest, KillRequest,
    PauseRequest, PidsRequest, PidsResponse, ResizePtyRequest, ResumeRequest, ShutdownRequest,
    StartRequest, StartResponse, StateRequest, StateResponse, StatsRequest, StatsResponse,
    UpdateTaskRequest, WaitRequest, WaitResponse,
};
use containerd_shim_protos::cgroups::metrics::{
    CPUStat, CPUUsage, MemoryEntry, MemoryStat, Metrics, PidsStat,
};
use containerd_shim_protos::events::task::{
    TaskCheckpointed, TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO,
    TaskOOM, TaskPaused, TaskResumed, TaskStart,
};
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::{Message, MessageDyn};
use containerd_shim_protos::shim::oci::ProcessDetails;
use containerd_shim_protos::topics;
use containerd_shim_protos::ttrpc::Result as TtrpcResult;
use containerd_shim_protos::ttrpc::TtrpcContext;
use containerd_shim_protos::types::task::ProcessInfo;
use ferry_oci::runtime::Container as OciContainer;
use nix::sys::signal::Signal;
use oci_spec::runtime::{LinuxResources, Process};
use tokio::sync::{mpsc, Mutex};

use super::container::{blocking, Container, Running};
use super::error::{Error, Result};
use super::options::state_root;
use super::process::{self, Exec, Proc};
use super::publisher::Event;
use super::reaper::{Exited, Reaper};
use super::service::ExitSignal;

/// The Task service of one shim (one container, or a group of them).
#[derive(Clone)]
pub struct TaskService {
    /// Ferry's default state root for this containerd namespace (a task's
    /// runtime options may name another).
    root: PathBuf,
    namespace: String,
    containers: Arc<Mutex<HashMap<String, Container>>>,
    events: mpsc::UnboundedSender<Event>,
    reaper: Reaper,
    exit: Arc<ExitSignal>,
}

fn no_container(id: &str) -> Error {
    Error::NotFound {
        what: format!("container {id}"),
    }
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
            containers: Arc::default(),
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

    /// Watches a process that now runs: its exit (the reaper) and, when it
    /// is an init with a v1 memory cgroup, its OOM kills.
    fn watch(&self, id: &str, running: Running) {
        self.reaper.watch(running.pid as i32);
        self.watch_oom(id, running.memory);
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
            let containers = self.containers.lock().await;
            let found = containers
                .iter()
                .find_map(|(id, c)| c.running_proc(id, e.pid).map(|(p, pid_id)| (id, p, pid_id)));
            if let Some((id, p, pid_id)) = found {
                let exit = p.record_exit(e.status);
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
            }
        }
    }

    /// Runs `f` on the loaded container of a started, running task.
    async fn on_container<T: Send + 'static>(
        &self,
        id: &str,
        op: &'static str,
        f: impl FnOnce(OciContainer) -> ferry_oci::Result<T> + Send + 'static,
    ) -> Result<T> {
        let root = {
            let containers = self.containers.lock().await;
            let c = containers.get(id).ok_or_else(|| no_container(id))?;
            if c.restore.is_some() {
                return Err(Error::FailedPrecondition(format!(
                    "container {id} is not restored yet: start it first"
                )));
            }
            c.root.clone()
        };
        let cid = id.to_string();
        blocking(move || {
            let c = OciContainer::load(&root, &cid).map_err(Error::oci(op, &cid))?;
            f(c).map_err(Error::oci(op, &cid))
        })
        .await
    }

    async fn create_task(&self, req: CreateTaskRequest) -> Result<CreateTaskResponse> {
        let mut containers = self.containers.lock().await;
        if containers.contains_key(&req.id) {
            return Err(Error::FailedPrecondition(format!(
                "container {} already exists in this shim",
                req.id
            )));
        }
        let (c, running) = Container::create(&self.namespace, &req).await?;
        let pid = running.pid;
        if c.restore.is_none() {
            self.watch(&req.id, running);
        }
        containers.insert(req.id.clone(), c);
        self.publish(
            topics::TASK_CREATE_EVENT_TOPIC,
            Box::new(TaskCreate {
                container_id: req.id,
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

    async fn delete_task(&self, id: &str, exec_id: &str) -> Result<DeleteResponse> {
        let mut containers = self.containers.lock().await;
        let c = containers.get_mut(id).ok_or_else(|| no_container(id))?;
        if !exec_id.is_empty() {
            let (pid, exit) = c.delete_exec(id, exec_id).await?;
            return Ok(DeleteResponse {
                pid,
                exit_status: exit.status,
                exited_at: Some(exit.at).into(),
                ..Default::default()
            });
        }
        c.delete(id).await?;
        let c = containers.remove(id).expect("looked up above");
        drop(containers);
        let (pid, exit) = c.finish().await;
        self.publish(
            topics::TASK_DELETE_EVENT_TOPIC,
            Box::new(TaskDelete {
                container_id: id.to_string(),
                id: id.to_string(),
                pid,
                exit_status: exit.status,
                exited_at: Some(exit.at.clone()).into(),
                ..Default::default()
            }),
        );
        Ok(DeleteResponse {
            pid,
            exit_status: exit.status,
            exited_at: Some(exit.at).into(),
            ..Default::default()
        })
    }

    async fn kill_task(&self, req: KillRequest) -> Result<()> {
        let sig = Signal::try_from(req.signal as i32)
            .map_err(|_| Error::InvalidArgument(format!("signal {} is not one", req.signal)))?;
        let kill = {
            let containers = self.containers.lock().await;
            let c = containers
                .get(&req.id)
                .ok_or_else(|| no_container(&req.id))?;
            c.kill(&req.id, &req.exec_id, sig, req.all)?
        };
        match kill {
            Some(k) => k.run().await,
            None => Ok(()),
        }
    }

    async fn checkpoint_task(&self, req: CheckpointTaskRequest) -> Result<()> {
        {
            let containers = self.containers.lock().await;
            let c = containers
                .get(&req.id)
                .ok_or_else(|| no_container(&req.id))?;
            c.checkpoint(&req.id, &req.path, req.options.as_ref())
                .await?;
        }
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
}

/// The RPCs, as containerd's Task service names them.
impl TaskService {
    pub async fn state(&self, req: StateRequest) -> TtrpcResult<StateResponse> {
        let paused = if req.exec_id.is_empty() {
            let root = (self.containers.lock().await.get(&req.id))
                .map_or_else(|| self.root.clone(), |c| c.root.clone());
            let id = req.id.clone();
            tokio::task::spawn_blocking(move || {
                OciContainer::load(&root, &id)
                    .map(|c| c.status() == ferry_oci::runtime::Status::Paused)
                    .unwrap_or(false)
            })
            .await
            .unwrap_or(false)
        } else {
            false
        };
        let containers = self.containers.lock().await;
        let c = containers
            .get(&req.id)
            .ok_or_else(|| no_container(&req.id))?;
        let p = c.proc_(&req.id, &req.exec_id)?;
        let exit = p.exited();
        Ok(StateResponse {
            id: req.id.clone(),
            bundle: c.bundle.to_string_lossy().into_owned(),
            pid: p.pid,
            status: p.status(paused).into(),
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

    pub async fn create(&self, req: CreateTaskRequest) -> TtrpcResult<CreateTaskResponse> {
        Ok(self.create_task(req).await?)
    }

    pub async fn start(&self, req: StartRequest) -> TtrpcResult<StartResponse> {
        let mut containers = self.containers.lock().await;
        let c = containers
            .get_mut(&req.id)
            .ok_or_else(|| no_container(&req.id))?;
        let pid = if req.exec_id.is_empty() {
            let running = c.start_init(&req.id).await?;
            let pid = running.pid;
            self.watch(&req.id, running);
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
            let pid = c.start_exec(&req.id, &req.exec_id).await?;
            self.reaper.watch(pid as i32);
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

    pub async fn delete(&self, req: DeleteRequest) -> TtrpcResult<DeleteResponse> {
        Ok(self.delete_task(&req.id, &req.exec_id).await?)
    }

    pub async fn pids(&self, req: PidsRequest) -> TtrpcResult<PidsResponse> {
        let pids = self
            .on_container(&req.id, "listing the processes of", |c| c.pids())
            .await?;
        // runc-shim tells which pids are exec'd processes.
        let execs = (self.containers.lock().await.get(&req.id))
            .map(Container::exec_pids)
            .unwrap_or_default();
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

    pub async fn pause(&self, req: PauseRequest) -> TtrpcResult<Empty> {
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

    pub async fn resume(&self, req: ResumeRequest) -> TtrpcResult<Empty> {
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

    pub async fn checkpoint(&self, req: CheckpointTaskRequest) -> TtrpcResult<Empty> {
        self.checkpoint_task(req).await?;
        Ok(Empty::new())
    }

    pub async fn kill(&self, req: KillRequest) -> TtrpcResult<Empty> {
        self.kill_task(req).await?;
        Ok(Empty::new())
    }

    pub async fn exec(&self, req: ExecProcessRequest) -> TtrpcResult<Empty> {
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
        let mut containers = self.containers.lock().await;
        let c = containers
            .get_mut(&req.id)
            .ok_or_else(|| no_container(&req.id))?;
        if c.execs.contains_key(&req.exec_id) {
            return Err(Error::FailedPrecondition(format!(
                "process {} already exists in container {}",
                req.exec_id, req.id
            ))
            .into());
        }
        let proc_ = Proc::new(&req.stdin, &req.stdout, &req.stderr, req.terminal)?;
        c.execs.insert(req.exec_id.clone(), Exec { proc_, spec });
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

    pub async fn resize_pty(&self, req: ResizePtyRequest) -> TtrpcResult<Empty> {
        let containers = self.containers.lock().await;
        let c = containers
            .get(&req.id)
            .ok_or_else(|| no_container(&req.id))?;
        c.proc_(&req.id, &req.exec_id)?
            .io
            .resize(req.width, req.height)?;
        Ok(Empty::new())
    }

    pub async fn close_io(&self, req: CloseIORequest) -> TtrpcResult<Empty> {
        let mut containers = self.containers.lock().await;
        let c = containers
            .get_mut(&req.id)
            .ok_or_else(|| no_container(&req.id))?;
        let p = c.proc_mut(&req.id, &req.exec_id)?;
        if req.stdin {
            p.io.close_stdin();
        }
        Ok(Empty::new())
    }

    pub async fn update(&self, req: UpdateTaskRequest) -> TtrpcResult<Empty> {
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

    pub async fn wait(&self, req: WaitRequest) -> TtrpcResult<WaitResponse> {
        let rx = {
            let containers = self.containers.lock().await;
            let c = containers
                .get(&req.id)
                .ok_or_else(|| no_container(&req.id))?;
            c.proc_(&req.id, &req.exec_id)?.exit_watch()
        };
        let what = format!("container {} (deleted while waited for)", req.id);
        let exit = process::wait(rx, what).await?;
        Ok(WaitResponse {
            exit_status: exit.status,
            exited_at: Some(exit.at).into(),
            ..Default::default()
        })
    }

    pub async fn stats(&self, req: StatsRequest) -> TtrpcResult<StatsResponse> {
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

    pub async fn connect(&self, req: ConnectRequest) -> TtrpcResult<ConnectResponse> {
        let containers = self.containers.lock().await;
        let pid = containers.get(&req.id).map(|c| c.init.pid).unwrap_or(0);
        Ok(ConnectResponse {
            shim_pid: std::process::id(),
            task_pid: pid,
            version: env!("CARGO_PKG_VERSION").to_string(),
            ..Default::default()
        })
    }

    pub async fn shutdown(&self, _req: ShutdownRequest) -> TtrpcResult<Empty> {
        // runc-shim: a shim that still has containers stays.
        if self.containers.lock().await.is_empty() {
            self.exit.signal();
        }
        Ok(Empty::new())
    }
}

/// containerd's Task service on ttrpc's thread-per-request server (the
/// containerd-shim crate's sync mode): each RPC runs [`TaskService`]'s on
/// the shim's tokio runtime, from the ttrpc thread that read the request,
/// as many at once as containerd sends (a Wait blocks its thread until the
/// process exits; ttrpc starts another for the next request).
pub struct Rpc {
    service: TaskService,
    runtime: tokio::runtime::Handle,
}

impl Rpc {
    pub fn new(service: TaskService, runtime: tokio::runtime::Handle) -> Rpc {
        Rpc { service, runtime }
    }
}

macro_rules! rpcs {
    ($($name:ident($req:ty) -> $resp:ty;)*) => {
        impl containerd_shim_protos::shim_sync::Task for Rpc {
            $(fn $name(&self, _ctx: &TtrpcContext, req: $req) -> TtrpcResult<$resp> {
                self.runtime.block_on(self.service.$name(req))
            })*
        }
    };
}

rpcs! {
    state(StateRequest) -> StateResponse;
    create(CreateTaskRequest) -> CreateTaskResponse;
    start(StartRequest) -> StartResponse;
    delete(DeleteRequest) -> DeleteResponse;
    pids(PidsRequest) -> PidsResponse;
    pause(PauseRequest) -> Empty;
    resume(ResumeRequest) -> Empty;
    checkpoint(CheckpointTaskRequest) -> Empty;
    kill(KillRequest) -> Empty;
    exec(ExecProcessRequest) -> Empty;
    resize_pty(ResizePtyRequest) -> Empty;
    close_io(CloseIORequest) -> Empty;
    update(UpdateTaskRequest) -> Empty;
    wait(WaitRequest) -> WaitResponse;
    stats(StatsRequest) -> StatsResponse;
    connect(ConnectRequest) -> ConnectResponse;
    shutdown(ShutdownRequest) -> Empty;
}
