//! Checkpoint and restore of containers this runtime manages: the glue
//! between the container state ([`super::state`]) and the CRIU logic of
//! [`crate::checkpoint`] and [`crate::restore`].

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use criu_rpc::{Criu, Notify};
use nix::sched::CloneFlags;
use nix::unistd::Pid;
use oci_spec::runtime::Spec;

use super::container::{write_pid_file, Container, Status};
use super::freeze;
use super::hooks::{self, OciState};
use super::setup::Setup;
use super::state::{self, State};
use crate::checkpoint::{self, CheckpointOptions, Checkpointed, Target};
use crate::error::{Error, Result};
use crate::restore::{self, Destination, FreshNetns, RestoreHooks, RestoreOptions, Restored};

impl Container {
    /// `ferry checkpoint`. Unless the tasks are left running (or stopped,
    /// or this is a pre-dump), the container is gone afterwards and its
    /// state is deleted, as runc does. On failure it runs on untouched.
    pub fn checkpoint(
        self,
        criu: &Criu,
        opts: CheckpointOptions,
        on_notify: &mut dyn FnMut(&Notify),
    ) -> Result<Checkpointed> {
        self.checkpoint_then(criu, opts, on_notify, |_| ())
            .map(|(done, ())| done)
    }

    /// [`Container::checkpoint`], with `then` run once the dump succeeded
    /// and before the container is deleted: its rootfs is still there as
    /// its tasks saw it. An export reads it there, since `delete` takes
    /// down what the container owns (a migrated-in container's rootfs is an
    /// overlay Ferry mounted, and its writable layer goes with it). The
    /// container is deleted whatever `then` returns (its tasks are gone).
    pub fn checkpoint_then<T>(
        self,
        criu: &Criu,
        opts: CheckpointOptions,
        on_notify: &mut dyn FnMut(&Notify),
        then: impl FnOnce(&Checkpointed) -> T,
    ) -> Result<(Checkpointed, T)> {
        self.prepare_checkpoint(criu, opts)?.run(on_notify, then)
    }

    /// Everything of a checkpoint that needs no frozen tasks: the spec's
    /// plan, whether the network namespace looks new, CRIU's request and
    /// side files, criu swrk started and waiting. Nothing is frozen until
    /// [`PreparedCheckpoint::run`]; dropped unrun, nothing happened.
    pub fn prepare_checkpoint(
        self,
        criu: &Criu,
        opts: CheckpointOptions,
    ) -> Result<PreparedCheckpoint> {
        self.require(&[Status::Running, Status::Paused], "running")?;
        let mut spec = self.spec()?;
        // A user namespace's container binds the host's device nodes (it
        // cannot mknod) and has id-mapped ownership: CRIU's plan here
        // does not describe either yet. Refused before anything freezes.
        let userns = spec
            .linux()
            .as_ref()
            .and_then(|l| l.namespaces().as_ref())
            .is_some_and(|ns| {
                ns.iter().any(|n| {
                    n.typ() == oci_spec::runtime::LinuxNamespaceType::User && n.path().is_none()
                })
            });
        if userns {
            return Err(Error::Unsupported {
                what: "checkpoint of a container in a user namespace",
                hint: "run the container without a user namespace to checkpoint or migrate it",
            });
        }
        let mut fresh_netns = None;
        if let Some(n) = &self.state.net {
            // Ferry's own netns is external to CRIU, as a path in the spec.
            super::net::use_netns(&mut spec, &n.netns)?;
        } else if !opts.pre_dump
            && !opts
                .empty_ns
                .is_some_and(|f| f.contains(CloneFlags::CLONE_NEWNET))
            && crate::criu_plan::own_netns(&spec)
        {
            // A namespace of its own that holds only what a new one does
            // is not worth CRIU's dozen save and restore commands while
            // frozen: external too, and made anew on restore. Looked at
            // before the freeze; a failed look keeps CRIU's full dump.
            let ns = PathBuf::from(format!("/proc/{}/ns/net", self.state.pid));
            fresh_netns = match crate::network::fresh::looks_new(&ns) {
                Ok(f) => f,
                Err(e) => {
                    tracing::debug!(error = %crate::error::chain(&e), "the container's network namespace is dumped whole");
                    None
                }
            };
            if fresh_netns.is_some() {
                super::net::use_netns(&mut spec, &ns)?;
            }
        }
        let leave_stopped = opts.leave_stopped;
        // Ferry's own netns is external to CRIU, which would lock it (its
        // root task's netns is not criu's) but restores nothing in it:
        // Ferry locks it itself as CRIU does (network::criu_lock), and
        // CRIU's lock is skipped (Target::network_locked_by_caller).
        // So is a namespace the container joined (dockerd's sandbox) when
        // asked: a move kills the container here, and the peers' packets
        // must meet a locked namespace, not a closed socket's RST.
        let to_lock = match (&self.state.net, opts.tcp_established) {
            (Some(n), true) => Some(n.netns.clone()),
            (None, true) if opts.lock_joined_netns => joined_netns(&spec),
            _ => None,
        };
        let freezer = self.state.cgroup.freezer_path();
        let has_freezer = freezer.exists();
        let keeps = opts.leave_running || opts.leave_stopped || opts.pre_dump;
        let target = Target {
            id: &self.state.id,
            init: Pid::from_raw(self.state.pid),
            spec: &spec,
            rootfs: &self.state.rootfs,
            freezer: has_freezer.then_some(freezer.as_path()),
            fresh_netns,
            // PreparedCheckpoint::run freezes a container with a freezer.
            frozen_by_caller: has_freezer,
            network_locked_by_caller: to_lock.is_some(),
        };
        let prepared = checkpoint::prepare(criu, &target, opts)?;
        Ok(PreparedCheckpoint {
            container: self,
            prepared,
            keeps,
            leave_stopped,
            has_freezer,
            to_lock,
        })
    }
}

/// A checkpoint ready to freeze and dump ([`Container::prepare_checkpoint`]).
pub struct PreparedCheckpoint {
    container: Container,
    prepared: checkpoint::Prepared,
    keeps: bool,
    leave_stopped: bool,
    has_freezer: bool,
    to_lock: Option<PathBuf>,
}

impl PreparedCheckpoint {
    /// Freezes and dumps; `then` runs once the dump succeeded, before the
    /// container is deleted (see [`Container::checkpoint_then`]).
    pub fn run<T>(
        self,
        on_notify: &mut dyn FnMut(&Notify),
        then: impl FnOnce(&Checkpointed) -> T,
    ) -> Result<(Checkpointed, T)> {
        let PreparedCheckpoint {
            container,
            prepared,
            keeps,
            leave_stopped,
            has_freezer,
            to_lock,
        } = self;
        let this = &container;
        // Freeze first: CRIU then finds the cgroup frozen and goes on at
        // once, where freezing it itself costs a 100 ms poll (seize.c:
        // "100 x 100ms attempts"); it leaves a cgroup it found frozen
        // frozen, so the container is thawed here if it is to run on.
        // Frozen where CRIU can seize every task: no process inside a
        // vfork (freeze.rs says why).
        let was_paused = this.state.cgroup.is_frozen();
        let init = Pid::from_raw(this.state.pid);
        if has_freezer && !was_paused {
            freeze::freeze_dumpable(&this.state.cgroup, init, freeze::VFORK_PATIENCE)?;
        } else if let Some(v) = freeze::find_vforks(init).first().filter(|_| was_paused) {
            return Err(Error::InVfork {
                parent: v.parent,
                child: v.child,
                waited: None,
            });
        }
        let locked = match to_lock {
            Some(ns) => {
                if let Err(e) = crate::network::criu_lock::add(&ns) {
                    // Nothing was dumped: the container runs on as it was.
                    if !was_paused {
                        let _ = this.state.cgroup.thaw();
                    }
                    return Err(e);
                }
                Some(ns)
            }
            None => None,
        };
        let result = prepared.run(on_notify);
        // A leave-stopped dump keeps its lock until the tasks die or resume
        // (migrate::source::resume takes it off); otherwise it goes now.
        // (A dump that kills the tasks takes the namespace with them.)
        let unlocked = match &locked {
            Some(ns) if result.is_err() || (keeps && !leave_stopped) => {
                crate::network::criu_lock::remove_own(ns)
            }
            _ => Ok(()),
        };
        // Only a successful --leave-stopped dump stays frozen (a move keeps
        // its source that way until the destination runs).
        let stays_frozen = was_paused || (result.is_ok() && leave_stopped);
        if !stays_frozen {
            let _ = this.state.cgroup.thaw();
        }
        let done = result?;
        unlocked?;
        let then = then(&done);
        if !keeps {
            container.delete(true)?;
        }
        Ok((done, then))
    }
}

/// `ferry restore`'s runtime-side options.
#[derive(Debug, Default)]
pub struct RestoreRuntimeOptions {
    /// The restore stands in for `create` (a [`super::pending`] request):
    /// a later `start` finds the container running and succeeds.
    pub at_create: bool,
    /// Lock the network namespace the spec joins (dockerd's sandbox) until
    /// the tasks are restored, as CRIU locks one it restores itself: a
    /// peer's packet must not meet a socket not yet there (and get a RST).
    pub lock_joined_netns: bool,
    pub pid_file: Option<PathBuf>,
    pub console_socket: Option<PathBuf>,
    pub systemd_cgroup: bool,
    /// What stands in for the checkpointed stdio pipes; by default the
    /// caller's own stdio (runc passes its own).
    pub stdio: Option<super::process::Stdio>,
}

/// The runtime's part of a restore ([`RestoreHooks`]), on the set-up that
/// owns what the restore made so far.
struct Hooks<'a> {
    setup: &'a mut Setup,
    oci: OciState,
    state: State,
}

impl<'a> Hooks<'a> {
    /// Before the restored init exists (its records say pid 0, creating).
    fn new(setup: &'a mut Setup, at_create: bool) -> Hooks<'a> {
        Hooks {
            oci: setup.oci_state("creating", Pid::from_raw(0)),
            state: setup.state(Pid::from_raw(0), true, at_create),
            setup,
        }
    }
}

impl RestoreHooks for Hooks<'_> {
    fn criu_started(&mut self, criu: Pid) -> Result<()> {
        // runc's criuApplyCgroups: the restored tasks go where criu is.
        self.setup.cgroup_made();
        self.setup.cgroup.create_and_add(criu)?;
        if let Some(r) = self
            .setup
            .bundle
            .spec
            .linux()
            .as_ref()
            .and_then(|l| l.resources().as_ref())
        {
            self.setup.cgroup.apply(r)?;
        }
        Ok(())
    }

    fn setup_namespaces(&mut self, pid: Pid) -> Result<()> {
        self.oci.pid = pid.as_raw();
        hooks::run(
            "createRuntime",
            &hooks::create_runtime(&self.setup.bundle.spec),
            &self.oci,
        )
    }

    fn restored(&mut self, pid: Pid) -> Result<()> {
        // Ferry's lock comes off once the tasks are restored, before CRIU
        // takes their sockets out of repair mode and resumes them (the
        // order of CRIU's own network_unlock).
        self.setup.unlock()?;
        self.state.pid = pid.as_raw();
        self.state.start_time = state::start_time(pid.as_raw()).unwrap_or(0);
        self.setup.save(&self.state)
    }

    fn console(&mut self, master: OwnedFd) -> Result<()> {
        let Some(sock) = &self.setup.console else {
            return Err(Error::Unsupported {
                what: "restoring a container with a terminal without --console-socket",
                hint: "pass --console-socket, as for create",
            });
        };
        super::console::send_master(sock, &master, "/dev/pts/0").map_err(|e| Error::Io {
            op: "sending the pty master to the console socket",
            path: PathBuf::new(),
            source: e.into(),
        })
    }
}

/// The network namespace the spec joins (a path), if any.
pub fn joined_netns(spec: &Spec) -> Option<PathBuf> {
    spec.linux()
        .as_ref()?
        .namespaces()
        .as_ref()?
        .iter()
        .find(|n| n.typ() == oci_spec::runtime::LinuxNamespaceType::Network)?
        .path()
        .clone()
}

/// `ferry restore`: a new container `id` from the bundle at `bundle_dir`
/// and the checkpoint in `opts.image_path`. The image directory and the id
/// are checked before anything is created; on failure nothing is left.
pub fn restore_container(
    root: &Path,
    id: &str,
    bundle_dir: &Path,
    criu: &Criu,
    opts: &RestoreOptions,
    rt: &RestoreRuntimeOptions,
) -> Result<(Container, Restored)> {
    state::validate_id(id)?;
    restore::check_image_dir(&opts.image_path)?;
    let fresh = FreshNetns::of_images(&opts.image_path)?;
    prepare(root, id, bundle_dir, criu, opts, rt, fresh)?.run_checked(opts)
}

/// [`restore_container`] in two steps, for a caller whose images are on
/// their way (a move's destination): everything that needs no image is
/// done here (the container's state dir, network, console and cgroups,
/// criu started and placed in them: [`restore::EarlyCriu`]), so that none
/// of it is in the downtime; [`PreparedRestore::run`] restores once the
/// images are in. Dropped unrun, nothing is left.
pub fn prepare_restore(
    root: &Path,
    id: &str,
    bundle_dir: &Path,
    criu: &Criu,
    opts: &RestoreOptions,
    rt: &RestoreRuntimeOptions,
) -> Result<PreparedRestore> {
    state::validate_id(id)?;
    prepare(root, id, bundle_dir, criu, opts, rt, FreshNetns::Unknown)
}

/// A restore waiting for its images ([`prepare_restore`]).
#[derive(Debug)]
pub struct PreparedRestore {
    // Dropped first: criu leaves the cgroup before the setup removes it.
    criu: restore::EarlyCriu,
    setup: Setup,
    at_create: bool,
    pid_file: Option<PathBuf>,
}

fn prepare(
    root: &Path,
    id: &str,
    bundle_dir: &Path,
    criu: &Criu,
    opts: &RestoreOptions,
    rt: &RestoreRuntimeOptions,
    fresh: FreshNetns,
) -> Result<PreparedRestore> {
    // What stands in for the checkpointed stdio, before anything is made.
    let stdio = match &rt.stdio {
        Some(s) => {
            let s = s.try_clone().map_err(|source| Error::Io {
                op: "duplicating the stdio handed in for the restore",
                path: PathBuf::new(),
                source,
            })?;
            [Some(s.stdin), Some(s.stdout), Some(s.stderr)]
        }
        None => restore::own_stdio()?,
    };
    // The same address as before the checkpoint, in a namespace of this
    // host, handed to CRIU as the external netns.
    let mut setup = Setup::begin(root, id, bundle_dir, rt.systemd_cgroup)?;
    if let Some(p) = &rt.console_socket {
        setup.connect_console(p)?;
    }
    // The restored sockets' packets are dropped until the tasks run (CRIU
    // locks only namespaces it restores itself).
    let to_lock = match (&setup.net, opts.tcp_established) {
        (Some(n), true) => Some(n.netns.clone()),
        (None, true) if rt.lock_joined_netns => joined_netns(&setup.bundle.spec),
        _ => None,
    };
    if let Some(ns) = to_lock {
        setup.lock(ns)?;
    }
    let spec = setup.bundle.spec.clone();
    let mut hooks = Hooks::new(&mut setup, rt.at_create);
    let criu = restore::EarlyCriu::start(criu, &spec, stdio, fresh, &mut hooks)?;
    Ok(PreparedRestore {
        setup,
        criu,
        at_create: rt.at_create,
        pid_file: rt.pid_file.clone(),
    })
}

impl PreparedRestore {
    /// Restores the checkpoint in `opts.image_path` (the options
    /// [`prepare_restore`] had), refusing first what is not a sound image
    /// directory; on failure nothing is left.
    pub fn run(self, opts: &RestoreOptions) -> Result<(Container, Restored)> {
        restore::check_image_dir(&opts.image_path)?;
        self.run_checked(opts)
    }

    fn run_checked(self, opts: &RestoreOptions) -> Result<(Container, Restored)> {
        let PreparedRestore {
            mut setup,
            criu,
            at_create,
            pid_file,
        } = self;
        let spec = setup.bundle.spec.clone();
        let rootfs = setup.bundle.rootfs.clone();
        let state_dir = setup.dir().to_path_buf();
        let id = setup.id.clone();
        let mut hooks = Hooks::new(&mut setup, at_create);
        let restored = criu.restore(
            Destination {
                id: &id,
                spec: &spec,
                rootfs: &rootfs,
                state_dir: &state_dir,
                stdio: [None, None, None],
            },
            opts,
            &mut hooks,
        )?;
        let Hooks { oci, state, .. } = hooks;
        // From here a failure kills the restored tasks (runc's restore
        // destroys the container when its pid file cannot be written).
        setup.set_pid(restored.pid);
        if setup.is_locked() {
            // No post-restore notify came: unlock now that the tasks run.
            if let Err(e) = setup.unlock() {
                tracing::warn!(error = %crate::error::chain(&e), "unlocking the restored container's network");
            }
        }
        if let Some(n) = &setup.net {
            super::net::announce(n.address);
        }
        if let Some(p) = &pid_file {
            write_pid_file(p, restored.pid)?;
        }
        let oci = OciState {
            status: "running".into(),
            pid: restored.pid.as_raw(),
            ..oci
        };
        hooks::run(
            "poststart",
            &hooks::of(&spec, |h| h.poststart().clone()),
            &oci,
        )?;
        Ok((setup.commit(state), restored))
    }
}
