//! The one error type of `ferry-oci`. Every variant carries what a user needs
//! to act: the container id, the path, the operation that failed.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A CRIU request failed; the criu-rpc error quotes CRIU's log.
    #[error(transparent)]
    Criu(#[from] criu_rpc::Error),

    #[error("netlink: {op}{}", netns.as_ref().map(|n| format!(" in netns {}", n.display())).unwrap_or_default())]
    Netlink {
        op: &'static str,
        netns: Option<PathBuf>,
        #[source]
        source: rtnetlink::Error,
    },

    #[error("no link named {name}{}", netns.as_ref().map(|n| format!(" in netns {}", n.display())).unwrap_or_default())]
    NoSuchLink {
        name: String,
        netns: Option<PathBuf>,
    },

    #[error("network namespace {path} already exists: pick another name or remove it")]
    NetnsExists { path: PathBuf },

    /// A network namespace that looked new before the freeze (and so was
    /// to be made anew on restore) did not once the tasks were frozen: the
    /// dump was rolled back, the container runs on.
    #[error("the network namespace of container `{id}` ({}) changed while it was checkpointed: it held only what a new namespace holds before the freeze, and no longer; the checkpoint was abandoned and the container runs on (checkpoint again: it is then dumped whole)", netns.display())]
    NetnsChanged {
        id: String,
        netns: PathBuf,
        /// The second look failed (rather than finding a change).
        #[source]
        source: Option<Box<Error>>,
    },

    #[error("JSON in {}", path.display())]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    #[error("{} is not a checkpoint: it has no inventory.img", path.display())]
    NotAnImageDir { path: PathBuf },

    #[error(
        "the checkpoint bind-mounts cgroup hierarchy `{hierarchy}`, which this host does not mount"
    )]
    CgroupHierarchyMissing { hierarchy: String },

    #[error("invalid container id `{id}`: use letters, digits and _ - . +")]
    InvalidId { id: String },

    #[error("container `{id}` already exists")]
    ContainerExists { id: String },

    #[error("container `{id}` does not exist (under {})", root.display())]
    NoSuchContainer { id: String, root: PathBuf },

    #[error("bundle {} does not exist", path.display())]
    NoBundle { path: PathBuf },

    #[error("{} is missing: a bundle needs a config.json", path.display())]
    NoConfig { path: PathBuf },

    #[error("invalid {}: {reason}", path.display())]
    InvalidConfig { path: PathBuf, reason: String },

    #[error("rootfs {} does not exist: create it or fix root.path in config.json", path.display())]
    NoRootfs { path: PathBuf },

    /// The container's process failed before exec; it reports the step,
    /// the message and the errno over the sync socket.
    #[error("container init failed at {step}: {message}")]
    Init {
        step: String,
        message: String,
        errno: Option<nix::errno::Errno>,
    },

    #[error("talking to the container's init")]
    Sync {
        #[source]
        source: std::io::Error,
    },

    #[error("container `{id}` is {status}; it must be {wanted}")]
    WrongStatus {
        id: String,
        status: String,
        wanted: &'static str,
    },

    /// runc's words; its exec would otherwise block until the container
    /// is resumed.
    #[error(
        "cannot exec in a paused container `{id}`: resume it first, or exec with ignore-paused"
    )]
    ExecPaused { id: String },

    #[error("{sub} is not a sub cgroup path")]
    NotSubCgroup { sub: String },

    #[error("unknown controller `{controller}` in a sub-cgroup")]
    UnknownController { controller: String },

    /// runc's words (exec --cgroup into a sub-cgroup that does not exist
    /// names the cgroup.procs it could not open, errno as Go spells it).
    #[error("adding pid {pid} to cgroups: {}: {}", path.display(), errno_text(source))]
    CgroupJoin {
        pid: i32,
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("invalid {what}: {reason}")]
    InvalidArgument { what: String, reason: String },

    #[error("unknown signal `{signal}`")]
    InvalidSignal { signal: String },

    /// runc's words ("error running hook"), which clients match.
    #[error("error running hook {} ({which}): {status}: {stderr}", path.display())]
    Hook {
        which: &'static str,
        path: PathBuf,
        /// Its exit status as Go's os/exec prints it (`exit status 1`).
        status: String,
        /// What it wrote to stderr.
        stderr: String,
    },

    #[error("error running hook {} ({which}): {op} it", path.display())]
    HookIo {
        which: &'static str,
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("error running hook {} ({which}): timed out after {after:?}", path.display())]
    HookTimedOut {
        which: &'static str,
        path: PathBuf,
        after: std::time::Duration,
    },

    /// A cgroup operation failed; the source is the io or libcgroups error,
    /// or the rule the request broke.
    #[error("cgroup: {op} {}", path.display())]
    Cgroup {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// runc's factory refuses a cgroup frozen before the container exists
    /// (its init would block there forever); same words as runc.
    #[error("container's cgroup unexpectedly frozen: {} (thaw it, or give another linux.cgroupsPath)", path.display())]
    CgroupFrozen { path: PathBuf },

    /// A process of the container was inside a vfork when it was to be
    /// dumped, which CRIU cannot do ([`crate::runtime::freeze`]); nothing
    /// was dumped. `waited` is None when the container was paused (Ferry
    /// does not thaw a container its user paused).
    #[error("process {parent} of the container waits on its vfork child {child}, {}", in_vfork_fix(.waited))]
    InVfork {
        parent: nix::unistd::Pid,
        child: nix::unistd::Pid,
        waited: Option<std::time::Duration>,
    },

    #[error("{} is not a checkpoint export: {why}", path.display())]
    NotAnExport { path: PathBuf, why: &'static str },

    #[error("{} is not empty: an import extracts the checkpoint into an empty or new directory", path.display())]
    ImportDestNotEmpty { path: PathBuf },

    #[error("corrupt checkpoint, nothing was restored")]
    CorruptImage(#[source] criu_rpc::Error),

    #[error("the destination refused the container: {}", problems.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("; "))]
    Refused {
        problems: Vec<crate::migrate::outcome::Problem>,
    },

    /// What the destination reported, typed (CRIU's errno, message and
    /// log lines when CRIU failed there).
    #[error("the destination failed: {failure}")]
    DestinationFailed {
        failure: Box<crate::migrate::outcome::Failure>,
    },

    /// A dockerd's container that `ferry migrate --docker` cannot move.
    #[error("docker container {name} cannot move: {why}")]
    DockerNotMovable { name: String, why: String },

    /// The runtime's restore of a pending request failed (its failure as
    /// the runtime reported it, CRIU's part included).
    #[error("restoring container {id} at its create failed: {failure}")]
    PendingRestoreFailed {
        id: String,
        failure: Box<crate::migrate::outcome::Failure>,
    },

    #[error("the source gave up: {reason}")]
    SourceAborted { reason: String },

    /// `ferry migrate` was asked to stop (a signal) and stopped the move.
    #[error("the move of {id} was interrupted by {why}")]
    Interrupted {
        id: String,
        why: String,
        #[source]
        source: Box<Error>,
    },

    /// The source committed and the destination's answer was lost; asking
    /// it did not tell whether it runs the container.
    #[error("{to} restored {id} and was told to run it, but whether it does is unknown: the source is left frozen so that two copies never run")]
    OutcomeUnknown {
        id: String,
        to: String,
        #[source]
        lost: Box<Error>,
    },

    /// `ferry resume` of a container a live `ferry migrate` is moving.
    #[error("container `{id}` is being moved to {to} by ferry migrate (pid {pid}): wait for it to end (a move that fails resumes the container)")]
    MoveInProgress {
        id: String,
        pid: i32,
        to: std::net::SocketAddr,
    },

    /// `ferry resume` of a container whose dead `ferry migrate` had told
    /// the destination to run its copy.
    #[error("container `{id}` was left frozen by a ferry migrate (pid {pid}, gone) that had told {to} to run it: it may be running there now")]
    MoveCommitted {
        id: String,
        pid: i32,
        to: std::net::SocketAddr,
    },

    /// `ferry resume` of a container whose tasks a dead move's CRIU still
    /// holds.
    #[error("container `{id}` is still held by CRIU (pid {tracer}) of an interrupted move: wait until that criu exits, then resume")]
    MoveStillDumping { id: String, tracer: i32 },

    /// A move failed, and so did resuming its source afterwards.
    #[error("{failed}; then resuming the source failed too: {}", crate::error::chain(resume.as_ref()))]
    ResumeFailed {
        failed: Box<Error>,
        resume: Box<Error>,
    },

    #[error("{what}: {source}")]
    Seccomp {
        what: String,
        #[source]
        source: libseccomp::error::SeccompError,
    },

    #[error("{what}")]
    SeccompPatch {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },

    #[error("invalid seccomp profile: {reason}")]
    SeccompNotify { reason: String },

    #[error("{what} is not supported: {hint}")]
    Unsupported {
        what: &'static str,
        hint: &'static str,
    },

    #[error("key file {}: {reason}", path.display())]
    KeyFile { path: PathBuf, reason: &'static str },

    #[error("the system's random source failed")]
    Random,

    #[error("peer {peer} failed authentication: {reason}")]
    AuthFailed { peer: String, reason: &'static str },

    #[error("the channel to {peer} cannot open: {why}")]
    ChannelMismatch { peer: String, why: String },

    #[error("peer {peer} presented identity {key}, which is not in the peers file: add its FILE.pub line there if it is yours")]
    UnknownPeer { peer: String, key: String },

    #[error("the Noise handshake with {peer}")]
    Noise {
        peer: String,
        #[source]
        source: snow::Error,
    },

    #[error("no word from {peer} for {secs:.0} s (not even a heartbeat): a silent partition, or a stalled peer")]
    PeerSilent { peer: String, secs: f64 },

    #[error("{peer} cut the connection in the middle of a stream (no close record)")]
    ChannelCut { peer: String },

    #[error("a record from {peer} failed its authentication tag: the stream was tampered with or damaged in transit")]
    Tampered { peer: String },

    #[error("{op} with peer {peer}")]
    Peer {
        op: &'static str,
        peer: String,
        #[source]
        source: std::io::Error,
    },

    #[error("migration connection")]
    Wire(#[source] std::io::Error),

    #[error("migration protocol violated: {what}")]
    Protocol { what: &'static str },

    /// An entry of a writable-layer diff that would be written outside
    /// the layer or through something in it: the stream is corrupt or
    /// hostile ([`crate::overlay::pack_diff`] never writes one).
    #[error("writable-layer entry `{}` refused{}: {why} (the diff is corrupt or hostile; the source's pack never writes this)", entry.display(), target.as_ref().map(|t| format!(" (hard link to `{}`)", t.display())).unwrap_or_default())]
    LayerEntryRefused {
        entry: PathBuf,
        target: Option<PathBuf>,
        why: &'static str,
    },

    #[error("malformed migration message")]
    BadMessage {
        #[source]
        source: serde_json::Error,
    },

    #[error("invalid network set-up: {reason}")]
    InvalidNetwork { reason: &'static str },

    #[error("unsupported docker host `{host}`: {reason}")]
    DockerHost { host: String, reason: &'static str },

    #[error("cannot reach dockerd at {host}")]
    DockerConnect {
        host: String,
        #[source]
        source: bollard::errors::Error,
    },

    /// A request dockerd refused or failed; the source has its status
    /// code and message.
    #[error("dockerd at {host}: {op} {what}")]
    Docker {
        op: &'static str,
        what: String,
        host: String,
        #[source]
        source: bollard::errors::Error,
    },

    #[error("no container `{name}` on dockerd at {host} (`docker ps -a` lists them)")]
    DockerNotFound { name: String, host: String },

    #[error("container `{id}` is still running after {waited:?} (dockerd at {host})")]
    DockerTimeout {
        id: String,
        host: String,
        waited: std::time::Duration,
    },

    #[error("cannot find the exec-root of dockerd at {host}: {reason} (run Ferry in dockerd's pid namespace)")]
    DockerDaemon { host: String, reason: String },

    #[error("{op} {}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn in_vfork_fix(waited: &Option<std::time::Duration>) -> String {
    let why = "CRIU cannot stop a process inside vfork: nothing was dumped";
    match waited {
        Some(w) => format!(
            "which neither exec'd nor exited in {} ms: {why}, and the container runs on (try again once the child is done)",
            w.as_millis()
        ),
        None => format!("{why}; the container stays paused (resume it, and checkpoint it running: Ferry then freezes it between vforks)"),
    }
}

impl Error {
    /// This error's kind, for scripts (`--json` output): its variant's
    /// name in snake_case, stable across releases (a new kind may be
    /// added; an existing one keeps its name).
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Criu { .. } => "criu",
            Error::Netlink { .. } => "netlink",
            Error::NoSuchLink { .. } => "no_such_link",
            Error::NetnsExists { .. } => "netns_exists",
            Error::NetnsChanged { .. } => "netns_changed",
            Error::Json { .. } => "json",
            Error::NotAnImageDir { .. } => "not_an_image_dir",
            Error::CgroupHierarchyMissing { .. } => "cgroup_hierarchy_missing",
            Error::InvalidId { .. } => "invalid_id",
            Error::ContainerExists { .. } => "container_exists",
            Error::NoSuchContainer { .. } => "no_such_container",
            Error::NoBundle { .. } => "no_bundle",
            Error::NoConfig { .. } => "no_config",
            Error::InvalidConfig { .. } => "invalid_config",
            Error::NoRootfs { .. } => "no_rootfs",
            Error::Init { .. } => "init",
            Error::Sync { .. } => "sync",
            Error::WrongStatus { .. } => "wrong_status",
            Error::ExecPaused { .. } => "exec_paused",
            Error::NotSubCgroup { .. } => "not_sub_cgroup",
            Error::UnknownController { .. } => "unknown_controller",
            Error::CgroupJoin { .. } => "cgroup_join",
            Error::InvalidArgument { .. } => "invalid_argument",
            Error::InvalidSignal { .. } => "invalid_signal",
            Error::Hook { .. } | Error::HookIo { .. } | Error::HookTimedOut { .. } => "hook",
            Error::Cgroup { .. } => "cgroup",
            Error::CgroupFrozen { .. } => "cgroup_frozen",
            Error::InVfork { .. } => "in_vfork",
            Error::NotAnExport { .. } => "not_an_export",
            Error::ImportDestNotEmpty { .. } => "import_dest_not_empty",
            Error::CorruptImage { .. } => "corrupt_image",
            Error::Refused { .. } => "refused",
            Error::DestinationFailed { .. } => "destination_failed",
            Error::DockerNotMovable { .. } => "docker_not_movable",
            Error::PendingRestoreFailed { .. } => "pending_restore_failed",
            Error::SourceAborted { .. } => "source_aborted",
            Error::Interrupted { .. } => "interrupted",
            Error::OutcomeUnknown { .. } => "outcome_unknown",
            Error::MoveInProgress { .. } => "move_in_progress",
            Error::MoveCommitted { .. } => "move_committed",
            Error::MoveStillDumping { .. } => "move_still_dumping",
            Error::ResumeFailed { .. } => "resume_failed",
            Error::Seccomp { .. } => "seccomp",
            Error::SeccompPatch { .. } => "seccomp_patch",
            Error::SeccompNotify { .. } => "seccomp_notify",
            Error::Unsupported { .. } => "unsupported",
            Error::KeyFile { .. } => "key_file",
            Error::Random => "random",
            Error::AuthFailed { .. } => "auth_failed",
            Error::ChannelMismatch { .. } => "channel_mismatch",
            Error::UnknownPeer { .. } => "unknown_peer",
            Error::Noise { .. } => "noise",
            Error::PeerSilent { .. } => "peer_silent",
            Error::ChannelCut { .. } => "channel_cut",
            Error::Tampered { .. } => "tampered",
            Error::Peer { .. } => "peer",
            Error::Wire { .. } => "wire",
            Error::Protocol { .. } => "protocol",
            Error::LayerEntryRefused { .. } => "layer_entry_refused",
            Error::BadMessage { .. } => "bad_message",
            Error::InvalidNetwork { .. } => "invalid_network",
            Error::DockerHost { .. } => "docker_host",
            Error::DockerConnect { .. } => "docker_connect",
            Error::Docker { .. } => "docker",
            Error::DockerNotFound { .. } => "docker_not_found",
            Error::DockerTimeout { .. } => "docker_timeout",
            Error::DockerDaemon { .. } => "docker_daemon",
            Error::Io { .. } => "io",
        }
    }

    /// The destination's failure behind a failed move, if that is why it
    /// failed (also when resuming the source failed afterwards).
    pub fn destination_failure(&self) -> Option<&crate::migrate::outcome::Failure> {
        match self {
            Error::DestinationFailed { failure } => Some(failure.as_ref()),
            Error::ResumeFailed { failed, .. } => failed.destination_failure(),
            _ => None,
        }
    }
}

/// Wraps an io::Error with what was being done to which path
/// (`.map_err(io("reading", &path))`).
pub(crate) fn io(op: &'static str, path: &std::path::Path) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_path_buf();
    move |source| Error::Io { op, path, source }
}

/// An error and its causes on one line, for a peer or a log.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// `text` with its first letter in lower case: libc's strerror and
/// strsignal texts as Go spells them ("no such file or directory", "bad
/// system call"), which is how runc's messages read and what scripts match.
pub(crate) fn go_spelling(text: &str) -> String {
    let mut c = text.chars();
    match c.next() {
        Some(f) => f.to_lowercase().chain(c).collect(),
        None => String::new(),
    }
}

/// An errno as Go's syscall.Errno prints it.
pub fn errno_text(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(n) => go_spelling(nix::errno::Errno::from_raw(n).desc()),
        None => e.to_string(),
    }
}
