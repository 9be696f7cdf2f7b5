//! The crate's one error type. Every CRIU failure carries what CRIU said
//! (`cr_errno`, `cr_errmsg`) and the error lines of its log file, as runc's
//! `logCriuErrors` quotes them, so that the user sees why without digging.

use std::fmt;
use std::path::PathBuf;

use nix::errno::Errno;

use crate::log::LogExcerpt;
use crate::notify::HandlerError;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Which request was running when something failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    Version,
    Check,
    FeatureCheck,
    Dump,
    PreDump,
    SinglePreDump,
    Restore,
    PageServer,
    PageServerChild,
    WaitPid,
    CpuinfoDump,
    CpuinfoCheck,
}

impl fmt::Display for RequestKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RequestKind::Version => "version",
            RequestKind::Check => "check",
            RequestKind::FeatureCheck => "feature check",
            RequestKind::Dump => "dump",
            RequestKind::PreDump => "pre-dump",
            RequestKind::SinglePreDump => "pre-dump",
            RequestKind::Restore => "restore",
            RequestKind::PageServer => "page-server",
            RequestKind::PageServerChild => "page-server",
            RequestKind::WaitPid => "wait-pid",
            RequestKind::CpuinfoDump => "cpuinfo dump",
            RequestKind::CpuinfoCheck => "cpuinfo check",
        })
    }
}

/// What CRIU answered in a failed response, or `None` parts it left out.
#[derive(Debug, Clone, Default)]
pub struct CriuMessage {
    pub errno: Option<Errno>,
    pub message: Option<String>,
}

impl fmt::Display for CriuMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.message, self.errno) {
            (Some(m), Some(e)) => write!(f, "{} (errno {}: {})", m.trim_end(), e as i32, e.desc()),
            (Some(m), None) => write!(f, "{}", m.trim_end()),
            (None, Some(e)) => write!(f, "errno {}: {}", e as i32, e.desc()),
            (None, None) => f.write_str("CRIU gave no reason"),
        }
    }
}

fn opt_log(log: &Option<LogExcerpt>) -> String {
    log.as_ref().map(|l| l.to_string()).unwrap_or_default()
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("criu binary `{}` not found (Ferry needs CRIU >= 4.2)", path.display())]
    CriuNotFound { path: PathBuf },

    #[error("criu binary {} is not executable", path.display())]
    CriuNotExecutable { path: PathBuf },

    #[error("starting `{} swrk`", path.display())]
    Spawn {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A system call on our side of the conversation failed.
    #[error("{op} for criu (pid {pid})")]
    Sys {
        op: &'static str,
        pid: i32,
        #[source]
        source: Errno,
    },

    #[error(
        "criu (pid {pid}) {status} before answering the {request} request{}{}",
        fmt_output(output),
        opt_log(log)
    )]
    CriuExited {
        request: RequestKind,
        pid: i32,
        status: String,
        /// The tail of criu's stdout/stderr.
        output: String,
        log: Option<LogExcerpt>,
    },

    #[error("criu answered the {request} request with a malformed message ({len} bytes)")]
    Malformed {
        request: RequestKind,
        len: usize,
        #[source]
        source: protobuf::Error,
    },

    #[error("criu answered the {request} request with an unexpected `{got}` message")]
    UnexpectedResponse { request: RequestKind, got: String },

    #[error("criu sent an unexpected notify `{script}` during {request}; it was refused and the {request} aborted")]
    UnexpectedNotify {
        request: RequestKind,
        script: String,
    },

    #[error("criu {request} failed: {}{}", summary(criu, log), opt_log(log))]
    Failed {
        request: RequestKind,
        criu: CriuMessage,
        log: Option<LogExcerpt>,
    },

    #[error(
        "the notify handler failed on `{script}`, so criu aborted the {request}{}",
        opt_log(log)
    )]
    Notify {
        request: RequestKind,
        script: &'static str,
        #[source]
        source: HandlerError,
        log: Option<LogExcerpt>,
    },

    #[error(
        "criu (pid {pid}) {status} after a successful {request}{}",
        fmt_output(output)
    )]
    ExitStatus {
        request: RequestKind,
        pid: i32,
        status: String,
        output: String,
    },

    #[error("pre-dump needs soft-dirty memory tracking, which this kernel lacks (no CONFIG_MEM_SOFT_DIRTY; `criu check --feature mem_dirty_track` fails): dump without pre-dump or track_mem")]
    SoftDirtyUnsupported,

    #[error("invalid {option}: {reason}")]
    InvalidOption {
        option: &'static str,
        reason: &'static str,
    },

    #[error("{request} options pass {expected} fds to criu, but this criu was spawned with {got}: spawn it with Criu::spawn_for(&options)")]
    FdMismatch {
        request: RequestKind,
        expected: usize,
        got: usize,
    },

    #[error("{} at offset {offset}: {what}", path.display())]
    BadImage {
        path: PathBuf,
        offset: u64,
        what: &'static str,
    },

    /// The lazy-pages daemon lost a connection (the restore's or the
    /// source's page server).
    #[error("lazy pages: {op}")]
    Lazy {
        op: &'static str,
        #[source]
        source: std::io::Error,
    },

    /// The lazy-pages daemon lost its connection to the source's page
    /// server (cut, silent, tampered with): the cause of whatever the
    /// restore then saw.
    #[error("lazy pages: {op}")]
    LazySource {
        op: &'static str,
        #[source]
        source: std::io::Error,
    },

    #[error("lazy pages: {what}")]
    LazyProtocol { what: String },

    #[error("lazy pages: the restore failed before it finished, so the lazy-pages daemon stopped")]
    LazyCancelled,

    /// The post-copy guardian (`lazy::Guardian`) could not be started.
    #[error("lazy pages: starting the post-copy guardian: {op}")]
    GuardianSpawn {
        op: &'static str,
        #[source]
        source: Errno,
    },

    /// The post-copy guardian failed or was lost: the restored tasks would
    /// be unprotected if the daemon's process died, so the post-copy fails.
    #[error("lazy pages: the post-copy guardian (pid {pid}): {op}")]
    Guardian {
        op: &'static str,
        pid: i32,
        #[source]
        source: std::io::Error,
    },

    #[error("lazy pages: {op} of pid {pid} (pid in the images)")]
    Uffd {
        op: &'static str,
        pid: i32,
        #[source]
        source: Errno,
    },

    #[error("{} at offset {offset}: wrong magic {magic:#010x}: not a CRIU image Ferry knows (a damaged file, or an image type of a newer CRIU)", path.display())]
    UnknownImage {
        path: PathBuf,
        offset: u64,
        magic: u32,
    },

    #[error("{} at offset {offset}: expected a {expected} image, found {found}", path.display())]
    WrongImage {
        path: PathBuf,
        offset: u64,
        expected: &'static str,
        found: &'static str,
    },

    #[error("{} at offset {offset}: the entry is not valid protobuf", path.display())]
    BadEntry {
        path: PathBuf,
        offset: u64,
        #[source]
        source: protobuf::Error,
    },

    #[error("{}: a {kind} image, which Ferry knows but does not decode (crit can)", path.display())]
    UndecodedImage { path: PathBuf, kind: &'static str },

    #[error("{} is not a checkpoint: it has no inventory.img", path.display())]
    NotAnImageDir { path: PathBuf },

    #[error("{op} {}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The log's last real error when there is one (more telling than CRIU's
/// cr_errmsg, its first error), with CRIU's errno.
fn summary(criu: &CriuMessage, log: &Option<LogExcerpt>) -> String {
    match log.as_ref().and_then(|l| l.cause()) {
        Some(cause) => CriuMessage {
            errno: criu.errno,
            message: Some(cause.to_string()),
        }
        .to_string(),
        None => criu.to_string(),
    }
}

fn fmt_output(output: &str) -> String {
    let t = output.trim();
    if t.is_empty() {
        String::new()
    } else {
        format!("; criu's output:\n  {}", t.replace('\n', "\n  "))
    }
}

impl Error {
    /// CRIU's errno, when CRIU reported one.
    pub fn criu_errno(&self) -> Option<Errno> {
        match self {
            Error::Failed { criu, .. } => criu.errno,
            _ => None,
        }
    }

    /// The quoted CRIU log, when there is one.
    pub fn log(&self) -> Option<&LogExcerpt> {
        match self {
            Error::Failed { log, .. }
            | Error::Notify { log, .. }
            | Error::CriuExited { log, .. } => log.as_ref(),
            _ => None,
        }
    }
}
