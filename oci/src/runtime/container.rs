//! Container lifecycle: create, start, state, kill, delete, pause, resume,
//! exec, update, with runc's semantics.

use std::fs;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sched::CloneFlags;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};
use oci_spec::runtime::{LinuxNamespaceType, LinuxResources, Process, Spec};
use serde::Serialize;

use super::hooks::{self, OciState};
use super::init::{self, CgroupView};
use super::process::{self, Stdio, StepError};
use super::seccomp;
use super::setup::Setup;
use super::spec::Bundle;
use super::state::{self, State, StateDir};
use super::sync::{self, Msg};
use crate::error::{Error, Result};

/// runc's container statuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Creating,
    Created,
    Running,
    Paused,
    Stopped,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Status::Creating => "creating",
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
        })
    }
}

/// `ferry create`'s options.
#[derive(Debug, Default)]
pub struct CreateOptions {
    pub pid_file: Option<PathBuf>,
    pub console_socket: Option<PathBuf>,
    /// Make this process a subreaper (runc does, unless --no-subreaper):
    /// needed to wait for the container in `run`.
    pub subreaper: bool,
    pub systemd_cgroup: bool,
    /// The container's stdio; by default it inherits the caller's.
    pub stdio: Option<Stdio>,
    /// How many of the caller's fds beyond stdio (3, 4, ...) the
    /// container's process inherits (runc's --preserve-fds).
    pub preserve_fds: u32,
}

/// `ferry exec`'s options.
#[derive(Debug, Default)]
pub struct ExecOptions {
    pub detach: bool,
    pub pid_file: Option<PathBuf>,
    pub console_socket: Option<PathBuf>,
    /// The process's stdio; by default it inherits the caller's.
    pub stdio: Option<Stdio>,
    /// How many fds beyond stdio (3, 4, ...) the process inherits.
    pub preserve_fds: u32,
    /// Exec into a paused container too (the process runs once it is
    /// resumed); refused otherwise, as runc refuses it.
    pub ignore_paused: bool,
    /// runc's `exec --cgroup`: `[controllers:]path` entries placing the
    /// process in sub-cgroups of the container's.
    pub sub_cgroups: Vec<String>,
}

/// A container found under the root.
#[derive(Debug)]
pub struct Container {
    pub dir: StateDir,
    pub state: State,
}

/// The current time in RFC 3339 (UTC), as runc writes `created`.
pub fn now_rfc3339() -> String {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = if month <= 2 { y + 1 } else { y };
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60,
        d.subsec_nanos()
    )
}

fn ns_flag(t: LinuxNamespaceType) -> CloneFlags {
    match t {
        LinuxNamespaceType::Mount => CloneFlags::CLONE_NEWNS,
        LinuxNamespaceType::Cgroup => CloneFlags::CLONE_NEWCGROUP,
        LinuxNamespaceType::Uts => CloneFlags::CLONE_NEWUTS,
        LinuxNamespaceType::Ipc => CloneFlags::CLONE_NEWIPC,
        LinuxNamespaceType::User => CloneFlags::CLONE_NEWUSER,
        LinuxNamespaceType::Pid => CloneFlags::CLONE_NEWPID,
        LinuxNamespaceType::Network => CloneFlags::CLONE_NEWNET,
        LinuxNamespaceType::Time => CloneFlags::from_bits_retain(libc::CLONE_NEWTIME),
    }
}

/// Opens a pty in the container's /dev/pts, sends the master to the console
/// socket and makes the slave the controlling terminal and stdio.
fn setup_console(
    console: &UnixStream,
    size: Option<&oci_spec::runtime::Box>,
) -> std::result::Result<(), StepError> {
    let fail = |step: &str, e: &dyn process::Cause| StepError::new(step, e);
    let master = nix::pty::posix_openpt(
        nix::fcntl::OFlag::O_RDWR | nix::fcntl::OFlag::O_NOCTTY | nix::fcntl::OFlag::O_CLOEXEC,
    )
    .map_err(|e| fail("opening /dev/ptmx", &e))?;
    nix::pty::grantpt(&master).map_err(|e| fail("grantpt", &e))?;
    nix::pty::unlockpt(&master).map_err(|e| fail("unlockpt", &e))?;
    let name = nix::pty::ptsname_r(&master).map_err(|e| fail("ptsname", &e))?;
    // process.consoleSize, set before anyone reads the size (runc's
    // setupConsole resizes the pty it just made).
    if let Some(b) = size.filter(|b| b.height() > 0 && b.width() > 0) {
        let ws = libc::winsize {
            ws_row: b.height() as u16,
            ws_col: b.width() as u16,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ with a winsize we own, on our pty master.
        unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    }
    let slave = nix::fcntl::open(
        name.as_str(),
        nix::fcntl::OFlag::O_RDWR | nix::fcntl::OFlag::O_NOCTTY,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| fail("opening the pty slave", &e))?;
    super::console::send_master(console, &master, &name)
        .map_err(|e| fail("sending the pty master to the console socket", &e))?;
    for fd in 0..3 {
        nix::unistd::dup2(slave, fd).map_err(|e| fail("dup2 of the pty slave", &e))?;
    }
    let _ = nix::unistd::close(slave);
    // SAFETY: ioctl on our stdin, now the pty slave.
    if unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) } < 0 {
        return Err(fail("TIOCSCTTY", &std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Runs in the container's init (pid 1 of its pid namespace).
#[allow(clippy::too_many_arguments)]
fn init_main(
    mut sock: UnixStream,
    bundle: &Bundle,
    state: &OciState,
    fifo: &OwnedFd,
    console: Option<&UnixStream>,
    cgroup_ns: bool,
    cg: &CgroupView,
    sources: &init::MountSources,
    seccomp: Option<&seccomp::Filter>,
    preserve_fds: u32,
) -> std::result::Result<(), StepError> {
    let fail = |step: &str, e: &dyn process::Cause| StepError::new(step, e);
    // CRIU needs the container's init to lead its own session.
    nix::unistd::setsid().map_err(|e| fail("setsid", &e))?;
    sync::wait_for(&mut sock, "waiting for cgroups", |m| matches!(m, Msg::Go))?;
    if cgroup_ns {
        nix::sched::unshare(CloneFlags::CLONE_NEWCGROUP)
            .map_err(|e| fail("unshare(CLONE_NEWCGROUP)", &e))?;
    }
    sync::send(&mut sock, &Msg::NamespacesReady).map_err(|e| fail("sync", &e))?;
    sync::wait_for(&mut sock, "waiting for hooks", |m| {
        matches!(m, Msg::HooksDone)
    })?;
    let spec = &bundle.spec;
    init::prepare_rootfs(spec, &bundle.rootfs, cg, sources)?;
    // runc's init gets the container's state from its parent and puts its
    // own pid in (rootfs_linux.go: `s.Pid = unix.Getpid()`).
    let state = OciState {
        pid: nix::unistd::getpid().as_raw(),
        ..state.clone()
    };
    // runc runs createContainer hooks from the rootfs (rootfs_linux.go
    // chdirs there first): hooks written for runc use relative paths.
    nix::unistd::chdir(&bundle.rootfs).map_err(|e| fail("chdir to the rootfs", &e))?;
    hooks::run(
        "createContainer",
        &hooks::of(spec, |h| h.create_container().clone()),
        &state,
    )
    .map_err(|e| fail("createContainer hooks", &e))?;
    init::pivot(&bundle.rootfs)?;
    init::finish_rootfs(spec)?;
    let proc_ = spec.process().clone().unwrap_or_default();
    if let Some(c) = console {
        if proc_.terminal().unwrap_or(false) {
            setup_console(c, proc_.console_size().as_ref())?;
        }
    }
    process::limits(&proc_)?;
    process::check_executable(&proc_)?;
    tracing::debug!("init: closing the pipe to signal completion");
    sync::send(&mut sock, &Msg::Ready).map_err(|e| fail("sync", &e))?;
    drop(sock);
    // Block until `ferry start` opens the fifo for reading (runc's
    // exec.fifo; opened through /proc because the host path is gone).
    let path = format!("/proc/self/fd/{}", fifo.as_raw_fd());
    let w = fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .map_err(|e| fail("opening exec.fifo", &e))?;
    use std::io::Write;
    (&w).write_all(b"0")
        .map_err(|e| fail("writing exec.fifo", &e))?;
    drop(w);
    process::close_fds_on_exec(2 + preserve_fds as i32)?;
    process::confine(&proc_, seccomp)?;
    // As in runc's standard_init: startContainer hooks run last, as the
    // container's user and under its seccomp filter.
    hooks::run(
        "startContainer",
        &hooks::of(spec, |h| h.start_container().clone()),
        &state,
    )
    .map_err(|e| fail("startContainer hooks", &e))?;
    Err(process::exec(&proc_))
}

fn report_and_exit(mut sock: UnixStream, r: std::result::Result<(), StepError>) -> ! {
    if let Err(e) = r {
        // After `create` returned nobody reads the socket: the container's
        // stderr is where the user will look (runc does the same).
        eprintln!("ferry: container init failed at {}: {}", e.step, e.message);
        let _ = sync::send(
            &mut sock,
            &Msg::Failed {
                step: e.step,
                message: e.message,
                errno: e.errno,
            },
        );
    }
    // SAFETY: leaving the forked child without running the parent's
    // destructors or atexit handlers.
    unsafe { libc::_exit(1) }
}

/// The double fork runc's nsexec does: a child enters the namespaces
/// (`enter`; a new pid namespace only applies to its children), forks the
/// process that lives there (`body`, which reports its own failure and
/// never returns on success: it execs), tells us that process's pid and
/// exits. Returns the pid (as the host sees it) and our end of the sync
/// socket.
fn fork_into(
    enter: impl FnOnce(&mut UnixStream) -> std::result::Result<(), StepError>,
    body: impl FnOnce(UnixStream) -> std::result::Result<(), StepError>,
    maps: Option<&IdMaps>,
) -> Result<(Pid, UnixStream)> {
    let (mut parent, child) = UnixStream::pair().map_err(|source| Error::Sync { source })?;
    // SAFETY: ferry is single-threaded when it forks; the children make
    // system calls and leave with _exit.
    match unsafe { fork() }.map_err(|e| Error::Io {
        op: "fork",
        path: PathBuf::new(),
        source: e.into(),
    })? {
        ForkResult::Child => {
            drop(parent);
            let mut sock = child;
            // runc's debug log names the same steps (nsexec.c, init.go),
            // and scripts and runc's debug.bats look for them.
            tracing::debug!("nsexec container setup: entering the container's namespaces");
            if let Err(e) = enter(&mut sock) {
                report_and_exit(sock, Err(e));
            }
            // SAFETY: as above.
            match unsafe { fork() } {
                Ok(ForkResult::Child) => {
                    tracing::debug!("child process in init(): setting up the process");
                    let r = body(sock.try_clone().expect("dup of the sync socket"));
                    report_and_exit(sock, r);
                }
                Ok(ForkResult::Parent { child }) => {
                    let _ = sync::send(&mut sock, &Msg::Pid(child.as_raw()));
                    // SAFETY: leaving the intermediate child.
                    unsafe { libc::_exit(0) }
                }
                Err(e) => report_and_exit(sock, Err(StepError::new("fork", &e))),
            }
        }
        ForkResult::Parent { child: c1 } => {
            drop(child);
            let pid = wait_pid_msg(&mut parent, c1, maps);
            let _ = waitpid(c1, None);
            Ok((Pid::from_raw(pid?), parent))
        }
    }
}

/// The pid of the init once it runs; on the way, the id maps of the user
/// namespace the intermediate child `c1` made, written from here (runc's
/// nsexec asks its parent the same way: only a process outside the new
/// namespace, with the rights over the host ids, may write them).
fn wait_pid_msg(sock: &mut UnixStream, c1: Pid, maps: Option<&IdMaps>) -> Result<i32> {
    let mut msg = sync::recv(sock)?;
    if let (Msg::UserNs, Some(m)) = (&msg, maps) {
        m.write(c1)?;
        sync::send(sock, &Msg::Mapped)?;
        msg = sync::recv(sock)?;
    }
    match msg {
        Msg::Pid(p) => Ok(p),
        m => Err(sync::unexpected(m, "starting the init")),
    }
}

/// Opens the namespaces the spec gives by path, in an order setns accepts
/// (user first, mount last).
fn ns_paths(spec: &Spec) -> Result<(Vec<(CloneFlags, OwnedFd)>, CloneFlags)> {
    let mut join = Vec::new();
    let mut new = CloneFlags::empty();
    let mut nss = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().clone())
        .unwrap_or_default();
    nss.sort_by_key(|n| match n.typ() {
        LinuxNamespaceType::User => 0,
        LinuxNamespaceType::Mount => 2,
        _ => 1,
    });
    for n in nss {
        let flag = ns_flag(n.typ());
        match n.path() {
            Some(p) => {
                let f = fs::File::open(p).map_err(|source| Error::Io {
                    op: "opening the namespace to join",
                    path: p.clone(),
                    source,
                })?;
                join.push((flag, OwnedFd::from(f)));
            }
            None => new |= flag,
        }
    }
    Ok((join, new))
}

/// The uid and gid maps of a new user namespace (`linux.uidMappings`,
/// `linux.gidMappings`), as /proc/PID/{uid,gid}_map take them.
#[derive(Debug, Clone)]
pub struct IdMaps {
    uid: String,
    gid: String,
    /// The host uid and gid of the namespace's root (container id 0);
    /// the host's root when 0 is not mapped.
    host_root: (u32, u32),
}

impl IdMaps {
    /// The maps of `spec`; a user namespace without both is refused, as by
    /// runc ("user namespaces enabled, but no uid/gid mappings").
    fn of(spec: &Spec, config: &Path) -> Result<IdMaps> {
        let linux = spec.linux().as_ref();
        let root = |m: Option<&Vec<oci_spec::runtime::LinuxIdMapping>>| {
            m.into_iter()
                .flatten()
                .find(|e| e.container_id() == 0)
                .map_or(0, |e| e.host_id())
        };
        let host_root = (
            root(linux.and_then(|l| l.uid_mappings().as_ref())),
            root(linux.and_then(|l| l.gid_mappings().as_ref())),
        );
        let text = |m: Option<&Vec<oci_spec::runtime::LinuxIdMapping>>| {
            m.map(|v| {
                v.iter()
                    .map(|e| format!("{} {} {}\n", e.container_id(), e.host_id(), e.size()))
                    .collect::<String>()
            })
            .filter(|t| !t.is_empty())
        };
        let uid = text(linux.and_then(|l| l.uid_mappings().as_ref()));
        let gid = text(linux.and_then(|l| l.gid_mappings().as_ref()));
        match (uid, gid) {
            (Some(uid), Some(gid)) => Ok(IdMaps {
                uid,
                gid,
                host_root,
            }),
            _ => Err(Error::InvalidConfig {
                path: config.to_path_buf(),
                reason: "a user namespace is requested but linux.uidMappings or linux.gidMappings is missing".into(),
            }),
        }
    }

    fn write(&self, pid: Pid) -> Result<()> {
        for (file, text) in [("uid_map", &self.uid), ("gid_map", &self.gid)] {
            let path = PathBuf::from(format!("/proc/{pid}/{file}"));
            fs::write(&path, text).map_err(|source| Error::Io {
                op: "writing the user namespace's id map",
                path,
                source,
            })?;
        }
        Ok(())
    }
}

/// In the intermediate child: a new user namespace, its maps written by
/// the parent, then root inside it (the uid the host sees is the mapped
/// one), with every capability there to make the other namespaces.
fn enter_new_userns(sock: &mut UnixStream) -> std::result::Result<(), StepError> {
    let step = |step: &str, e: &dyn process::Cause| StepError::new(step, e);
    nix::sched::unshare(CloneFlags::CLONE_NEWUSER)
        .map_err(|e| step("unshare(CLONE_NEWUSER)", &e))?;
    sync::send(sock, &Msg::UserNs).map_err(|e| step("sync", &e))?;
    sync::wait_for(sock, "waiting for the id maps", |m| {
        matches!(m, Msg::Mapped)
    })?;
    let root = nix::unistd::Uid::from_raw(0);
    let root_g = nix::unistd::Gid::from_raw(0);
    nix::unistd::setresgid(root_g, root_g, root_g).map_err(|e| step("setresgid 0", &e))?;
    nix::unistd::setresuid(root, root, root).map_err(|e| step("setresuid 0", &e))
}

impl Container {
    /// `ferry create`: everything up to the init waiting on exec.fifo. On
    /// failure nothing is left: no state dir, no cgroup, no process.
    pub fn create(
        root: &Path,
        id: &str,
        bundle_dir: &Path,
        opts: &CreateOptions,
    ) -> Result<Container> {
        let mut setup = Setup::begin(root, id, bundle_dir, opts.systemd_cgroup)?;
        setup.cgroup.check_unused()?;
        let spec = &setup.bundle.spec;
        let (join, new) = ns_paths(spec)?;
        // Built here, so that a profile libseccomp refuses fails create.
        let filter = seccomp::of_spec(spec)?;
        match (&opts.console_socket, super::spec::has_terminal(spec)) {
            (Some(p), true) => setup.connect_console(p)?,
            (None, true) => {
                return Err(Error::InvalidConfig {
                    path: setup.config.clone(),
                    reason: "process.terminal is true but no --console-socket was given".into(),
                })
            }
            _ => {}
        }
        let spec = &setup.bundle.spec;
        let fifo_path = setup.state_dir().fifo();
        nix::unistd::mkfifo(&fifo_path, nix::sys::stat::Mode::from_bits_truncate(0o622)).map_err(
            |e| Error::Io {
                op: "creating",
                path: fifo_path.clone(),
                source: e.into(),
            },
        )?;
        // 0622 whatever the umask: the init opens it for writing after it
        // left the host's root behind (runc clears the umask around mkfifo).
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&fifo_path, fs::Permissions::from_mode(0o622)).map_err(
                |source| Error::Io {
                    op: "setting the mode of",
                    path: fifo_path.clone(),
                    source,
                },
            )?;
        }
        let fifo = OwnedFd::from(
            fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_PATH | libc::O_CLOEXEC)
                .open(&fifo_path)
                .map_err(|source| Error::Io {
                    op: "opening",
                    path: fifo_path.clone(),
                    source,
                })?,
        );
        if opts.subreaper {
            // SAFETY: prctl on our own process.
            unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        }
        let cg_view = CgroupView {
            hierarchies: setup
                .cgroup
                .paths()
                .into_iter()
                .map(|(h, p)| {
                    let name = if h == "unified" {
                        "unified".to_string()
                    } else if let Some(n) = h.strip_prefix("name=") {
                        n.to_string()
                    } else {
                        h
                    };
                    (name, p)
                })
                .collect(),
        };
        let cgroup_ns = new.contains(CloneFlags::CLONE_NEWCGROUP);
        let userns = new.contains(CloneFlags::CLONE_NEWUSER);
        let maps = if userns {
            Some(IdMaps::of(spec, &setup.config)?)
        } else {
            None
        };
        // The init, root of its user namespace, owns its exec.fifo (runc
        // chowns it to the container's root).
        if let Some(m) = &maps {
            let (uid, gid) = m.host_root;
            nix::unistd::chown(
                &fifo_path,
                Some(nix::unistd::Uid::from_raw(uid)),
                Some(nix::unistd::Gid::from_raw(gid)),
            )
            .map_err(|e| Error::Io {
                op: "giving the container's root",
                path: fifo_path.clone(),
                source: e.into(),
            })?;
        }
        // Bind sources opened now, by the host's root: from inside a user
        // namespace the init may not reach them (runc's mount fds).
        let sources = if userns {
            init::MountSources::open(spec, &setup.bundle.dir)?
        } else {
            init::MountSources::default()
        };
        let enter = |sock: &mut UnixStream| -> std::result::Result<(), StepError> {
            if let Some(s) = &opts.stdio {
                s.install()?;
            }
            for (flag, fd) in &join {
                nix::sched::setns(fd, *flag).map_err(|e| StepError::new("setns", &e))?;
            }
            if userns {
                enter_new_userns(sock)?;
            }
            // The cgroup namespace is unshared by the init once it is in
            // the container's cgroups.
            nix::sched::unshare(new - CloneFlags::CLONE_NEWCGROUP - CloneFlags::CLONE_NEWUSER)
                .map_err(|e| StepError::new("unshare", &e))
        };
        let console = setup.console.take();
        let init_state = setup.oci_state("creating", Pid::from_raw(0));
        let body = |sock: UnixStream| {
            init_main(
                sock,
                &setup.bundle,
                &init_state,
                &fifo,
                console.as_ref(),
                cgroup_ns,
                &cg_view,
                &sources,
                filter.as_ref(),
                opts.preserve_fds,
            )
        };
        let (pid, mut parent) = fork_into(enter, body, maps.as_ref())?;
        drop(console);
        setup.set_pid(pid);
        setup.cgroup_made();
        setup.cgroup.create_and_add(pid)?;
        setup
            .cgroup
            .apply_linux(setup.bundle.spec.linux().as_ref())?;
        sync::send(&mut parent, &Msg::Go)?;
        sync::expect(sync::recv(&mut parent), "namespaces", |m| {
            matches!(m, Msg::NamespacesReady)
        })?;
        let oci = setup.oci_state("creating", pid);
        hooks::run(
            "createRuntime",
            &hooks::create_runtime(&setup.bundle.spec),
            &oci,
        )?;
        sync::send(&mut parent, &Msg::HooksDone)?;
        sync::expect(sync::recv(&mut parent), "rootfs", |m| {
            matches!(m, Msg::Ready)
        })?;
        // As runc: the container exists (its state saved) before its pid
        // file does, so that whoever waits for the file finds it.
        let state = setup.state(pid, false, false);
        setup.save(&state)?;
        if let Some(p) = &opts.pid_file {
            write_pid_file(p, pid)?;
        }
        Ok(setup.commit(state))
    }

    /// Finds and locks the container `id`.
    pub fn load(root: &Path, id: &str) -> Result<Container> {
        let dir = StateDir::open(root, id)?;
        let state = dir.load()?;
        Ok(Container { dir, state })
    }

    /// The current status, if it is one of `allowed`; otherwise an error
    /// that says what it is and what it must be.
    pub fn require(&self, allowed: &[Status], wanted: &'static str) -> Result<Status> {
        let s = self.status();
        if allowed.contains(&s) {
            Ok(s)
        } else {
            Err(Error::WrongStatus {
                id: self.state.id.clone(),
                status: s.to_string(),
                wanted,
            })
        }
    }

    pub fn status(&self) -> Status {
        if !state::alive(&self.state) {
            return Status::Stopped;
        }
        if self.dir.fifo().exists() {
            return Status::Created;
        }
        if self.state.cgroup.is_frozen() {
            return Status::Paused;
        }
        Status::Running
    }

    /// The runtime-spec state document (`ferry state`).
    pub fn oci_state(&self) -> OciState {
        let status = self.status();
        OciState {
            oci_version: self.state.oci_version.clone(),
            id: self.state.id.clone(),
            status: status.to_string(),
            pid: if status == Status::Stopped {
                0
            } else {
                self.state.pid
            },
            bundle: self.state.bundle.to_string_lossy().into_owned(),
            annotations: self.state.annotations.clone(),
        }
    }

    /// The config the container was created with.
    pub fn spec(&self) -> Result<Spec> {
        super::spec::read_config(&self.state.config)
    }

    /// `ferry start`: releases the init waiting on exec.fifo.
    pub fn start(&mut self) -> Result<()> {
        if self.state.restored && self.status() == Status::Running {
            return Ok(());
        }
        self.require(&[Status::Created], "created")?;
        let fifo = self.dir.fifo();
        let mut f = fs::File::open(&fifo).map_err(|source| Error::Io {
            op: "opening",
            path: fifo.clone(),
            source,
        })?;
        let mut b = [0u8; 1];
        use std::io::Read;
        let n = f.read(&mut b).map_err(|source| Error::Io {
            op: "reading",
            path: fifo.clone(),
            source,
        })?;
        let _ = fs::remove_file(&fifo);
        if n != 1 {
            return Err(Error::Init {
                step: "start".into(),
                message: "the container's init exited before it could start".into(),
                errno: None,
            });
        }
        self.state.started = true;
        self.dir.save(&self.state)?;
        let spec = self.spec()?;
        let mut oci = self.oci_state();
        oci.status = "running".into();
        hooks::run(
            "poststart",
            &hooks::of(&spec, |h| h.poststart().clone()),
            &oci,
        )?;
        Ok(())
    }

    /// `ferry kill`.
    /// `ferry kill`: a raw signal number (0 and real-time signals too, see
    /// [`super::signal::parse`]) to the init, or with `all` to every
    /// process in the container's cgroup (which may be none: runc's
    /// `kill -a` of a stopped container succeeds).
    pub fn kill(&self, sig: i32, all: bool) -> Result<()> {
        let status = self.status();
        if status == Status::Stopped && !all {
            return Err(Error::WrongStatus {
                id: self.state.id.clone(),
                status: status.to_string(),
                wanted: "running, created or paused",
            });
        }
        let send = |pid: i32| {
            // SAFETY: kill(2) with a pid and a signal number.
            if unsafe { libc::kill(pid, sig) } == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        };
        if all {
            for p in self.state.cgroup.pids().unwrap_or_default() {
                let _ = send(p.as_raw());
            }
            if self.status() == Status::Paused && sig == libc::SIGKILL {
                let _ = self.state.cgroup.thaw();
            }
            return Ok(());
        }
        send(self.state.pid).map_err(|source| Error::Io {
            op: "signalling the container's init",
            path: PathBuf::new(),
            source,
        })
    }

    /// `ferry delete`: a running container only with `force`.
    pub fn delete(self, force: bool) -> Result<()> {
        let status = self.status();
        if status != Status::Stopped && status != Status::Created && !force {
            return Err(Error::WrongStatus {
                id: self.state.id.clone(),
                status: status.to_string(),
                wanted: "stopped (or use --force)",
            });
        }
        if status != Status::Stopped {
            for p in self.state.cgroup.pids().unwrap_or_default() {
                let _ = kill(p, Signal::SIGKILL);
            }
            let _ = kill(Pid::from_raw(self.state.pid), Signal::SIGKILL);
            if status == Status::Paused {
                let _ = self.state.cgroup.thaw();
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while state::alive(&self.state) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        // Orphans of a dead init still count until they are reaped.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.state.cgroup.pids().unwrap_or_default().is_empty() && Instant::now() < deadline
        {
            for p in self.state.cgroup.pids().unwrap_or_default() {
                let _ = kill(p, Signal::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.state.cgroup.destroy()?;
        if let Some(n) = &self.state.net {
            n.detach()?;
        }
        if self.state.owns_rootfs_mount {
            crate::mount::detach(&self.state.rootfs, "unmounting the rootfs Ferry mounted at")?;
        }
        let spec = self.spec().ok();
        let mut oci = self.oci_state();
        oci.status = "stopped".into();
        let owned = self.state.owned_dir.clone();
        let dir = self.dir;
        dir.remove()?;
        if let Some(spec) = spec {
            // Poststop hook failures are logged by runc, not fatal.
            if let Err(e) = hooks::run(
                "poststop",
                &hooks::of(&spec, |h| h.poststop().clone()),
                &oci,
            ) {
                tracing::warn!(error = %e, "poststop hook failed");
            }
        }
        // Last: the hooks may look at the bundle, which is in there.
        if let Some(d) = owned {
            match fs::remove_dir_all(&d) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(Error::Io {
                        op: "removing the directory the container was received into",
                        path: d,
                        source: e,
                    })
                }
                _ => {}
            }
        }
        Ok(())
    }

    pub fn pause(&self) -> Result<()> {
        self.require(&[Status::Running, Status::Created], "running")?;
        self.state.cgroup.freeze()
    }

    pub fn resume(&self) -> Result<()> {
        self.require(&[Status::Paused], "paused")?;
        self.state.cgroup.thaw()
    }

    pub fn update(&self, resources: &LinuxResources) -> Result<()> {
        // runc's Set refuses a stopped container (ErrNotRunning).
        self.require(
            &[Status::Created, Status::Running, Status::Paused],
            "running, created or paused",
        )?;
        self.state.cgroup.update(resources)
    }

    /// Hands the container what a migration received it into, for
    /// `delete` to take down: the directory `dir`, and its rootfs when that
    /// is a mount Ferry made (the overlay rebuilt from its writable layer).
    pub fn own_received(mut self, dir: &Path, rootfs_mount: bool) -> Result<()> {
        self.state.owns_rootfs_mount = rootfs_mount;
        self.state.owned_dir = Some(dir.to_path_buf());
        self.dir.save(&self.state)
    }

    pub fn pids(&self) -> Result<Vec<Pid>> {
        self.state.cgroup.pids()
    }

    /// `ferry exec`: runs `p` in the container. Returns the new process's
    /// pid; the caller waits for it unless detached (it is our grandchild:
    /// the caller must be a subreaper to reap it).
    /// `ferry exec`. Consumes the container: its lock is released once
    /// the process is in the container's cgroups, before waiting for it
    /// to be ready. In a paused container (`ignore_paused`) it is ready
    /// only after a `resume`, which takes the lock (runc holds no lock
    /// across commands at all).
    pub fn exec(self, p: &Process, opts: &ExecOptions) -> Result<Pid> {
        if self.status() == Status::Paused && !opts.ignore_paused {
            return Err(Error::ExecPaused {
                id: self.state.id.clone(),
            });
        }
        self.require(
            &[Status::Running, Status::Created, Status::Paused],
            "running",
        )?;
        let placement = super::subcgroup::placement(&self.state.cgroup, &opts.sub_cgroups)?;
        let init = self.state.pid;
        let mut nss = Vec::new();
        // The user namespace first: the others belong to it.
        for (name, flag) in [
            ("user", CloneFlags::CLONE_NEWUSER),
            ("cgroup", CloneFlags::CLONE_NEWCGROUP),
            ("ipc", CloneFlags::CLONE_NEWIPC),
            ("uts", CloneFlags::CLONE_NEWUTS),
            ("net", CloneFlags::CLONE_NEWNET),
            ("pid", CloneFlags::CLONE_NEWPID),
            ("mnt", CloneFlags::CLONE_NEWNS),
        ] {
            let mine = fs::read_link(format!("/proc/self/ns/{name}")).ok();
            let theirs_path = PathBuf::from(format!("/proc/{init}/ns/{name}"));
            let theirs = fs::read_link(&theirs_path).ok();
            if mine == theirs {
                continue;
            }
            let f = fs::File::open(&theirs_path).map_err(|source| Error::Io {
                op: "opening the container's namespace",
                path: theirs_path.clone(),
                source,
            })?;
            nss.push((flag, OwnedFd::from(f)));
        }
        let console = match (&opts.console_socket, p.terminal()) {
            (Some(s), Some(true)) => Some(super::console::connect(s)?),
            _ => None,
        };
        // The container's filter confines what is exec'd in it too (runc).
        let filter = seccomp::of_spec(&self.spec()?)?;
        // A subreaper, so that the exec'd process (our grandchild) comes
        // back to us when it exits.
        // SAFETY: prctl on our own process.
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        let enter = |_: &mut UnixStream| -> std::result::Result<(), StepError> {
            if let Some(s) = &opts.stdio {
                s.install()?;
            }
            for (flag, fd) in &nss {
                nix::sched::setns(fd, *flag).map_err(|e| StepError::new("setns", &e))?;
            }
            Ok(())
        };
        let body = |mut sock: UnixStream| -> std::result::Result<(), StepError> {
            sync::wait_for(&mut sock, "waiting for cgroups", |m| matches!(m, Msg::Go))?;
            if let Some(c) = &console {
                nix::unistd::setsid().map_err(|e| StepError::new("setsid", &e))?;
                setup_console(c, p.console_size().as_ref())?;
            }
            process::limits(p)?;
            process::check_executable(p)?;
            sync::send(&mut sock, &Msg::Ready).map_err(|e| StepError::new("sync", &e))?;
            process::close_fds_on_exec(2 + opts.preserve_fds as i32)?;
            process::confine(p, filter.as_ref())?;
            tracing::debug!("setns_init: about to exec");
            Err(process::exec(p))
        };
        let (pid, mut parent) = fork_into(enter, body, None)?;
        drop(console);
        let placed = placement.add(pid);
        if let Err(e) = placed {
            let _ = kill(pid, Signal::SIGKILL);
            let _ = waitpid(pid, None);
            return Err(e);
        }
        drop(self);
        sync::send(&mut parent, &Msg::Go)?;
        if let Err(e) = sync::expect(sync::recv(&mut parent), "exec", |m| matches!(m, Msg::Ready)) {
            let _ = waitpid(pid, None);
            return Err(e);
        }
        // The exec succeeded when the socket closes without a
        // failure message.
        if let Ok(m @ Msg::Failed { .. }) = sync::recv(&mut parent) {
            let _ = waitpid(pid, None);
            return Err(sync::unexpected(m, "exec"));
        }
        if let Some(f) = &opts.pid_file {
            write_pid_file(f, pid)?;
        }
        Ok(pid)
    }
}

/// Waits for `pid` (our child or, as subreaper, grandchild) and returns its
/// exit code as a shell would (128 + signal).
pub fn wait_exit(pid: Pid) -> i32 {
    loop {
        match waitpid(pid, None) {
            Ok(WaitStatus::Exited(_, c)) => return c,
            Ok(WaitStatus::Signaled(_, s, _)) => return 128 + s as i32,
            Ok(_) => continue,
            Err(nix::Error::EINTR) => continue,
            Err(_) => return 255,
        }
    }
}

pub fn write_pid_file(path: &Path, pid: Pid) -> Result<()> {
    // runc writes it atomically: a temp file renamed into place.
    let tmp = path.with_extension("ferry-tmp");
    fs::write(&tmp, pid.as_raw().to_string()).map_err(|source| Error::Io {
        op: "writing pid file",
        path: tmp.clone(),
        source,
    })?;
    fs::rename(&tmp, path).map_err(|source| Error::Io {
        op: "writing pid file",
        path: path.to_path_buf(),
        source,
    })
}

/// Ids and statuses of all containers (`ferry list`).
pub fn list(root: &Path) -> Result<Vec<(State, Status)>> {
    let mut out = Vec::new();
    for id in state::list(root)? {
        if let Ok(c) = Container::load(root, &id) {
            let s = c.status();
            out.push((c.state, s));
        }
    }
    Ok(out)
}
