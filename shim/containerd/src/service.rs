//! The shim's lifecycle, as containerd drives every runtime v2 shim
//! (containerd's runtime/v2/README.md and runtime/v2/shim):
//! - `start`: run in the bundle by containerd, it derives the shim's socket
//!   from containerd's address, the namespace and the group (one shim per
//!   container, or per Kubernetes sandbox, as runc-shim groups them),
//!   listens there, runs the serving shim with the listening socket as fd 3
//!   (in a process group of its own, in the runtime options' shim cgroup,
//!   with containerd's OOM score + 1), writes the bundle's `address` file
//!   and prints the address. When a shim of the group already serves that
//!   socket, its address is the answer.
//! - serving (no action): the Task service over ttrpc on fd 3, the events
//!   to containerd ([`super::publisher`]), the log to the bundle's fifo
//!   ([`super::logger`]), until Shutdown.
//! - `delete`: cleans up after a shim that died, with what is left on
//!   disk (runc-shim's `Cleanup`: the container deleted by force, the
//!   rootfs unmounted), and prints a DeleteResponse.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use containerd_shim_protos::api::DeleteResponse;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::Message;
use containerd_shim_protos::shim::oci::Options as RuncOptions;
use containerd_shim_protos::shim_sync::create_task;
use containerd_shim_protos::ttrpc::Server;
use sha2::{Digest, Sha256};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, watch};

use super::args::Flags;
use super::mount::unmount_all;
use super::options::{self, SavedOptions, SAVED_OPTIONS};
use super::publisher::{self, TTRPC_ADDRESS};
use super::task::{Rpc, TaskService};

/// The annotations runc-shim groups containers by (one shim per sandbox).
const GROUP_LABELS: [&str; 2] = [
    "io.containerd.runc.v2.group",
    "io.kubernetes.cri.sandbox-id",
];

/// Where containerd's shims put their sockets (containerd's
/// `defaults.DefaultStateDir` + "/s").
const SOCKET_DIR: &str = "/run/containerd/s";

/// The fd the serving shim finds its listening socket on (the first of
/// Go's `ExtraFiles`, as containerd's shims pass it).
const LISTENER_FD: i32 = 3;

/// Why a shim action failed; main prints it for containerd (which shows a
/// failed `start`'s or `delete`'s stderr) and exits 1.
#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    #[error("{op} {}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("reading config.json in the bundle {}", bundle.display())]
    Spec {
        bundle: PathBuf,
        #[source]
        source: oci_spec::OciSpecError,
    },
    #[error("decoding the runtime options containerd wrote on stdin")]
    Options(#[source] containerd_shim_protos::protobuf::Error),
    #[error("encoding the delete response")]
    Encode(#[source] containerd_shim_protos::protobuf::Error),
    #[error("serving the task service on {socket}")]
    Ttrpc {
        socket: String,
        #[source]
        source: containerd_shim_protos::ttrpc::Error,
    },
    #[error("shutting down the task service on {socket}")]
    Shutdown {
        socket: String,
        #[source]
        source: tokio::task::JoinError,
    },
    #[error("cleaning up after the shim of {id}")]
    Cleanup {
        id: String,
        #[source]
        source: tokio::task::JoinError,
    },
}

fn io_err(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> ShimError {
    let path = path.into();
    move |source| ShimError::Io { op, path, source }
}

/// Set once the shim may exit (Shutdown with no container left).
pub struct ExitSignal(watch::Sender<bool>);

impl Default for ExitSignal {
    fn default() -> Self {
        ExitSignal(watch::channel(false).0)
    }
}

impl ExitSignal {
    pub fn signal(&self) {
        self.0.send_replace(true);
    }

    pub async fn wait(&self) {
        let mut rx = self.0.subscribe();
        let _ = rx.wait_for(|exited| *exited).await;
    }
}

/// The shim's socket address for the shim group `group`: a sha256 of
/// containerd's address, namespace and group, under /run/containerd/s
/// (containerd's `shim.SocketAddress`, so that a containerd finds the
/// socket again after a restart, and a path short enough for sun_path).
pub fn socket_address(containerd_address: &str, namespace: &str, group: &str) -> String {
    let joined = Path::new(containerd_address).join(namespace).join(group);
    let digest = Sha256::digest(joined.as_os_str().as_encoded_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("unix://{SOCKET_DIR}/{hex}")
}

fn socket_path(address: &str) -> &Path {
    Path::new(address.strip_prefix("unix://").unwrap_or(address))
}

/// `start`: see the module docs. Returns the address to print.
pub fn start(flags: &Flags) -> Result<String, ShimError> {
    let bundle = std::env::current_dir().map_err(io_err("finding the bundle (cwd)", "."))?;
    // A task's bundle has its config.json; containerd 2.x starts a shim
    // without one for a pod sandbox when CRI's runtime has `sandboxer =
    // "shim"`, and then speaks the sandbox API (and task API v3), which
    // this shim has not.
    let config = bundle.join("config.json");
    if !config.exists() {
        return Err(ShimError::Invalid(format!(
            "{}: no config.json in the bundle {}: containerd asks for a sandbox \
             (CRI's `sandboxer = \"shim\"`), and containerd-shim-ferry-v2 has no \
             sandbox API; set `sandboxer = \"podsandbox\"` (containerd's default) \
             for the ferry runtime handler",
            flags.id,
            bundle.display()
        )));
    }
    let spec = oci_spec::runtime::Spec::load(&config).map_err(|source| ShimError::Spec {
        bundle: bundle.clone(),
        source,
    })?;
    let group = spec
        .annotations()
        .as_ref()
        .and_then(|a| GROUP_LABELS.iter().find_map(|l| a.get(*l)))
        .cloned()
        .unwrap_or_else(|| flags.id.clone());
    // containerd writes the task's runtime options (an Any holding
    // containerd.runc.v1.Options) on start's stdin, for the shim cgroup.
    let mut stdin = Vec::new();
    std::io::stdin()
        .read_to_end(&mut stdin)
        .map_err(io_err("reading the runtime options from", "stdin"))?;
    let opts = if stdin.is_empty() {
        RuncOptions::default()
    } else {
        Any::parse_from_bytes(&stdin)
            .and_then(|any| RuncOptions::parse_from_bytes(&any.value))
            .map_err(ShimError::Options)?
    };

    let address = socket_address(&flags.address, &flags.namespace, &group);
    let listener = match listen(&address)? {
        Some(l) => l,
        // A shim of this group serves there already.
        None => {
            write_address(&bundle, &address)?;
            return Ok(address);
        }
    };

    let exe =
        std::env::current_exe().map_err(io_err("finding the shim binary", "/proc/self/exe"))?;
    let mut cmd = Command::new(&exe);
    cmd.current_dir(&bundle)
        .args(["-namespace", &flags.namespace, "-id", &flags.id])
        .args(["-address", &flags.address, "-socket", &address])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        // containerd's shims start in a process group of their own, so a
        // signal to containerd's group does not reach them.
        .process_group(0);
    if !flags.publish_binary.is_empty() {
        cmd.args(["-publish-binary", &flags.publish_binary]);
    }
    if flags.debug {
        cmd.arg("-debug");
    }
    let fd = listener.as_raw_fd();
    // SAFETY: between fork and exec the closure only makes the
    // async-signal-safe calls dup2 and fcntl on an fd this process owns.
    unsafe {
        cmd.pre_exec(move || {
            if fd == LISTENER_FD {
                // dup2 onto itself keeps FD_CLOEXEC: clear it.
                if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(fd, LISTENER_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .map_err(io_err("running the serving shim", &exe))?;
    drop(listener);
    let pid = child.id();
    if !opts.shim_cgroup.is_empty() {
        join_cgroup(&opts.shim_cgroup, pid)?;
    }
    adjust_oom_score(pid)?;
    write_address(&bundle, &address)?;
    Ok(address)
}

/// Listens on `address`; `None` if a live shim already does. A socket
/// left by a dead shim is removed first (containerd's start does the same
/// on EADDRINUSE when nothing answers).
fn listen(address: &str) -> Result<Option<UnixListener>, ShimError> {
    let path = socket_path(address);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io_err("creating the shim socket directory", dir))?;
    }
    match UnixListener::bind(path) {
        Ok(l) => Ok(Some(l)),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            if UnixStream::connect(path).is_ok() {
                return Ok(None);
            }
            std::fs::remove_file(path).map_err(io_err("removing the stale shim socket", path))?;
            UnixListener::bind(path)
                .map(Some)
                .map_err(io_err("listening on", path))
        }
        Err(e) => Err(io_err("listening on", path)(e)),
    }
}

/// The bundle's `address` file, which containerd reads to reconnect after
/// a restart (written whole: a temporary file renamed into place).
fn write_address(bundle: &Path, address: &str) -> Result<(), ShimError> {
    let tmp = bundle.join(".address");
    std::fs::write(&tmp, address).map_err(io_err("writing", &tmp))?;
    let path = bundle.join("address");
    std::fs::rename(&tmp, &path).map_err(io_err("writing", &path))
}

/// Moves `pid` into the runtime options' ShimCgroup (a path relative to
/// the cgroup root, as runc-shim's `cgroups.Load(opts.ShimCgroup)`): the
/// unified hierarchy's, or each v1 hierarchy that has it.
fn join_cgroup(cgroup: &str, pid: u32) -> Result<(), ShimError> {
    let root = Path::new("/sys/fs/cgroup");
    let rel = cgroup.trim_start_matches('/');
    let dirs: Vec<PathBuf> = if root.join("cgroup.controllers").exists() {
        vec![root.join(rel)]
    } else {
        std::fs::read_dir(root)
            .map_err(io_err("listing the cgroup hierarchies in", root))?
            .filter_map(|e| e.ok())
            .map(|e| e.path().join(rel))
            .filter(|p| p.join("cgroup.procs").exists())
            .collect()
    };
    if dirs.is_empty() {
        return Err(ShimError::Invalid(format!(
            "the runtime options' ShimCgroup {cgroup} exists in no cgroup hierarchy under {}",
            root.display()
        )));
    }
    for d in dirs {
        let procs = d.join("cgroup.procs");
        std::fs::write(&procs, pid.to_string()).map_err(io_err("moving the shim into", procs))?;
    }
    Ok(())
}

/// The serving shim's OOM score: containerd's + 1, so that the kernel
/// kills a shim before containerd (containerd's `shim.AdjustOOMScore`).
fn adjust_oom_score(pid: u32) -> Result<(), ShimError> {
    const OOM_SCORE_ADJ_MAX: i32 = 1000;
    let parent = format!(
        "/proc/{}/oom_score_adj",
        std::os::unix::process::parent_id()
    );
    let score: i32 = std::fs::read_to_string(&parent)
        .map_err(io_err("reading", &parent))?
        .trim()
        .parse()
        .map_err(|_| ShimError::Invalid(format!("{parent} does not hold a number")))?;
    let ours = format!("/proc/{pid}/oom_score_adj");
    std::fs::write(&ours, (score + 1).min(OOM_SCORE_ADJ_MAX).to_string())
        .map_err(io_err("writing", ours))
}

/// `delete`: see the module docs. Returns the response to print.
pub async fn delete(flags: &Flags) -> Result<DeleteResponse, ShimError> {
    let bundle = if flags.bundle.is_empty() {
        std::env::current_dir().map_err(io_err("finding the bundle (cwd)", "."))?
    } else {
        PathBuf::from(&flags.bundle)
    };
    // The root the task was created with (its runtime options' Root),
    // as runc-shim's cleanup reads the bundle's options.json.
    let root = std::fs::read(bundle.join(SAVED_OPTIONS))
        .ok()
        .and_then(|b| serde_json::from_slice::<SavedOptions>(&b).ok())
        .map_or_else(|| options::state_root(&flags.namespace), |o| o.root);
    let id = flags.id.clone();
    let cleanup = bundle.clone();
    tokio::task::spawn_blocking(move || {
        // Best effort, as runc-shim's cleanup: whatever is left goes.
        if let Ok(c) = ferry_oci::runtime::Container::load(&root, &id) {
            if let Err(e) = c.delete(true) {
                log::warn!("deleting container {id} after its shim died: {e}");
            }
        }
        if let Err(e) = unmount_all(&cleanup.join("rootfs")) {
            log::warn!("{}", e.chain());
        }
        // The dead shim's socket, as runc-shim's Stop removes it.
        if let Ok(address) = std::fs::read_to_string(cleanup.join("address")) {
            remove_socket(address.trim());
        }
    })
    .await
    .map_err(|source| ShimError::Cleanup {
        id: flags.id.clone(),
        source,
    })?;
    // runc-shim reports the container as killed.
    Ok(DeleteResponse {
        exit_status: 137,
        exited_at: Some(publisher::now()).into(),
        ..Default::default()
    })
}

/// Removes the socket at `address` if it is one.
fn remove_socket(address: &str) {
    let path = socket_path(address);
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
        let _ = std::fs::remove_file(path);
    }
}

/// Prints a `delete`'s response for containerd.
pub fn print_delete(resp: &DeleteResponse) -> Result<(), ShimError> {
    let bytes = resp.write_to_bytes().map_err(ShimError::Encode)?;
    let mut out = std::io::stdout();
    out.write_all(&bytes)
        .and_then(|()| out.flush())
        .map_err(io_err("writing the delete response to", "stdout"))
}

/// The serving shim: see the module docs.
pub async fn serve(flags: &Flags) -> Result<(), ShimError> {
    if flags.socket.is_empty() {
        return Err(ShimError::Invalid(
            "the serving shim needs -socket (containerd runs `start`, which runs it)".into(),
        ));
    }
    // containerd created the fifo and reads it; without it (the shim run
    // by hand) the log goes nowhere.
    if let Err(e) = super::logger::init(Path::new("log"), flags.debug) {
        eprintln!("containerd-shim-ferry-v2: no log fifo in the bundle: {e}");
    }
    // The containers' processes come back to the shim once ferry-oci's
    // intermediate child exits (see [`super::reaper`]), as runc's do to
    // runc-shim.
    nix::sys::prctl::set_child_subreaper(true).map_err(|e| ShimError::Io {
        op: "becoming a child subreaper (PR_SET_CHILD_SUBREAPER) for",
        path: PathBuf::from(&flags.socket),
        source: e.into(),
    })?;
    let listener = inherited_listener(&flags.socket)?;

    let (tx, rx) = mpsc::unbounded_channel();
    let ttrpc_address = std::env::var(TTRPC_ADDRESS).map_err(|_| {
        ShimError::Invalid(format!(
            "{TTRPC_ADDRESS} is not set: containerd gives its shims the address of its ttrpc socket there"
        ))
    })?;
    let namespace = flags.namespace.clone();
    std::thread::Builder::new()
        .name("publisher".into())
        .spawn(move || publisher::forward(&ttrpc_address, &namespace, rx))
        .map_err(io_err("starting the event publisher for", &flags.socket))?;
    let exit = Arc::new(ExitSignal::default());
    // Without SIGCHLD handling the shim cannot report exits: no point
    // serving.
    let task = TaskService::new(&flags.namespace, tx, exit.clone())
        .map_err(io_err("installing the SIGCHLD handler for", &flags.socket))?;
    let ttrpc_err = |source| ShimError::Ttrpc {
        socket: flags.socket.clone(),
        source,
    };
    let rpc = Rpc::new(task, tokio::runtime::Handle::current());
    // ttrpc's server owns the listener from here (it closes it at shutdown).
    let mut server = Server::new()
        .add_listener(listener.into_raw_fd())
        .map_err(ttrpc_err)?
        .register_service(create_task(Arc::new(rpc)));
    server.start().map_err(ttrpc_err)?;
    log::info!("serving the task service on {}", flags.socket);

    // containerd stops a shim with Shutdown, not a signal: SIGTERM and
    // SIGINT are logged and otherwise ignored, as by the shims built on
    // the containerd-shim crate (a kill of the shim must not take the
    // containers' bookkeeping with it while they run).
    for kind in [SignalKind::terminate(), SignalKind::interrupt()] {
        let mut s = signal(kind).map_err(io_err("handling signals for", &flags.socket))?;
        tokio::spawn(async move {
            while s.recv().await.is_some() {
                log::info!(
                    "signal {} ignored: containerd stops the shim with Shutdown",
                    kind.as_raw_value()
                );
            }
        });
    }
    exit.wait().await;
    log::info!("shutting down");
    // Closes the listener and the connections, and waits for ttrpc's
    // threads: blocking, off the runtime's workers.
    tokio::task::spawn_blocking(move || server.shutdown())
        .await
        .map_err(|source| ShimError::Shutdown {
            socket: flags.socket.clone(),
            source,
        })?;
    remove_socket(&flags.socket);
    Ok(())
}

/// The listening socket `start` passed as fd 3, or, when the shim was run
/// otherwise, a new one on `socket`. Close-on-exec from here: the
/// containers and CRIU must not inherit it.
fn inherited_listener(socket: &str) -> Result<std::os::unix::net::UnixListener, ShimError> {
    let is_socket = nix::sys::stat::fstat(LISTENER_FD)
        .is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFSOCK);
    let listener = if is_socket {
        // SAFETY: fd 3 is open, a socket, and owned by nothing else in
        // this process: `start` put it there for us.
        let fd = unsafe { OwnedFd::from_raw_fd(LISTENER_FD) };
        let rc = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
        if rc < 0 {
            return Err(io_err("marking close-on-exec the listener for", socket)(
                std::io::Error::last_os_error(),
            ));
        }
        UnixListener::from(fd)
    } else {
        match listen(socket)? {
            Some(l) => l,
            None => {
                return Err(ShimError::Invalid(format!(
                    "another shim already serves {socket}"
                )))
            }
        }
    };
    listener
        .set_nonblocking(true)
        .map_err(io_err("serving on", socket))?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_address_is_containerds() {
        // containerd's shim.SocketAddress for containerd.sock, namespace
        // "default", id "c1": sha256("/run/containerd/containerd.sock/default/c1")
        // (`printf %s /run/containerd/containerd.sock/default/c1 | sha256sum`).
        let a = socket_address("/run/containerd/containerd.sock", "default", "c1");
        assert_eq!(
            a,
            format!(
                "unix:///run/containerd/s/{}",
                sha256_hex("/run/containerd/containerd.sock/default/c1")
            )
        );
        assert_eq!(a.len(), "unix:///run/containerd/s/".len() + 64);
    }

    fn sha256_hex(s: &str) -> String {
        let out = Command::new("sha256sum")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                c.stdin.take().unwrap().write_all(s.as_bytes())?;
                c.wait_with_output()
            })
            .expect("sha256sum (coreutils)");
        String::from_utf8(out.stdout).unwrap()[..64].to_string()
    }
}
