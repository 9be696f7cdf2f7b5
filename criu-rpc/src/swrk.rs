//! Spawning `criu swrk` and speaking its protocol.
//!
//! As runc does (libcontainer/criu_linux.go: criuSwrk), we create a
//! `SOCK_SEQPACKET` socketpair, start `criu swrk 3` with one end as its fd 3,
//! send one request and read responses until the answer of that request type
//! arrives, answering every `NOTIFY` on the way. Unlike a plain blocking read,
//! every wait polls the socket together with a pidfd of criu: if criu dies,
//! the wait ends with an error that quotes criu's output and log, instead of
//! hanging on a socket that a criu grandchild may still hold open.
//!
//! Fds: everything we open is `O_CLOEXEC`; in the child only fd 3 (the
//! socket) and the fds an option passes (4, 5, ...) survive exec, all others
//! are marked close-on-exec with `close_range(CLOSE_RANGE_CLOEXEC)`, so
//! neither criu nor the tasks it restores inherit our fds.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{
    recv, recvmsg, send, socketpair, AddressFamily, ControlMessageOwned, MsgFlags, SockFlag,
    SockType,
};
use nix::unistd::Pid;
use protobuf::{EnumOrUnknown, Message, MessageField};

use crate::error::{CriuMessage, Error, RequestKind, Result};
use crate::log::LogExcerpt;
use crate::notify::{Notify, NotifyHandler};
use crate::options::{
    CheckOptions, ChildFds, DumpOptions, ImageDirs, PageServerAddr, PageServerOptions,
    RestoreOptions, FIRST_PASSED_FD, SWRK_FD,
};
use crate::proto;
use crate::version::{Features, Version};

/// The criu binary Ferry runs. Cheap: nothing is spawned until a request.
#[derive(Debug, Clone)]
pub struct Criu {
    binary: PathBuf,
}

impl Default for Criu {
    fn default() -> Self {
        Criu::new()
    }
}

/// The tree CRIU restored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Restored {
    /// The root task, in the caller's pid namespace; with `rst_sibling` it is
    /// the caller's child and the caller must reap it.
    pub pid: Pid,
}

/// A page server started with PAGE_SERVER: a daemon of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageServer {
    /// `None` for a daemon: CRIU (4.2) answers pid 0 for it, because
    /// cr_page_server() returns 0 to the parent once the daemon started.
    /// Use PAGE_SERVER_CHLD ([`Criu::page_server_child`]) to know and wait
    /// for the server.
    pub pid: Option<Pid>,
    /// The TCP port it listens on; 0 for a server on a handed-in socket.
    pub port: u16,
}

impl Criu {
    /// `criu` from PATH.
    pub fn new() -> Self {
        Criu {
            binary: PathBuf::from("criu"),
        }
    }

    /// A given binary (a path, or a name looked up in PATH).
    pub fn with_binary(binary: impl Into<PathBuf>) -> Self {
        Criu {
            binary: binary.into(),
        }
    }

    /// The binary, resolved against PATH; an error names what is missing.
    pub fn resolve(&self) -> Result<PathBuf> {
        let candidates: Vec<PathBuf> = if self.binary.components().count() > 1 {
            vec![self.binary.clone()]
        } else {
            std::env::var_os("PATH")
                .map(|p| {
                    std::env::split_paths(&p)
                        .map(|d| d.join(&self.binary))
                        .collect()
                })
                .unwrap_or_default()
        };
        let mut not_exec = None;
        for c in candidates {
            match std::fs::metadata(&c) {
                Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => return Ok(c),
                Ok(_) => not_exec = not_exec.or(Some(c)),
                Err(_) => {}
            }
        }
        match not_exec {
            Some(path) => Err(Error::CriuNotExecutable { path }),
            None => Err(Error::CriuNotFound {
                path: self.binary.clone(),
            }),
        }
    }

    /// Starts `criu swrk` with `fds` placed at fd 4, 5, ... in criu.
    pub fn spawn(&self, fds: &[BorrowedFd<'_>]) -> Result<Swrk> {
        Swrk::spawn(&self.resolve()?, fds)
    }

    /// Starts `criu swrk` with the fds `options` pass to criu. Use it to get
    /// criu's pid before sending the request (runc moves criu into the
    /// container's cgroups before a restore).
    pub fn spawn_for(&self, options: &impl ChildFds) -> Result<Swrk> {
        self.spawn(&options.child_fds())
    }

    pub fn version(&self) -> Result<Version> {
        self.spawn(&[])?.version()
    }

    /// CRIU's own check of the kernel (`criu check`).
    pub fn check(&self, options: &CheckOptions) -> Result<()> {
        self.spawn(&[])?.check(options)
    }

    pub fn features(&self) -> Result<Features> {
        self.spawn(&[])?.features()
    }

    pub fn dump(&self, options: &DumpOptions, handler: &mut dyn NotifyHandler) -> Result<()> {
        self.spawn_dump(options, false)?.dump(options, handler)
    }

    /// One pre-dump (SINGLE_PRE_DUMP); refused up front on kernels without
    /// soft-dirty tracking, where CRIU would abort with a BUG.
    pub fn pre_dump(&self, options: &DumpOptions, handler: &mut dyn NotifyHandler) -> Result<()> {
        self.spawn_dump(options, true)?
            .single_pre_dump(options, handler)
    }

    /// A `criu swrk` ready for the dump (or, with `pre_dump`, the
    /// pre-dump) of `options`, started ahead of time: a caller that
    /// freezes the tasks itself starts criu first, and keeps criu's
    /// start-up out of the time they are frozen. Memory tracking is
    /// checked here (soft-dirty), before anything is frozen.
    pub fn spawn_dump(&self, options: &DumpOptions, pre_dump: bool) -> Result<Swrk> {
        let mut swrk = self.spawn_for(options)?;
        if pre_dump || options.track_mem {
            swrk.require_soft_dirty()?;
        }
        Ok(swrk)
    }

    pub fn restore(
        &self,
        options: &RestoreOptions,
        handler: &mut dyn NotifyHandler,
    ) -> Result<Restored> {
        self.spawn_for(options)?.restore(options, handler)
    }

    pub fn page_server(&self, options: &PageServerOptions) -> Result<PageServer> {
        self.spawn_for(options)?.page_server(options)
    }

    /// Writes this host's CPU description (cpuinfo.img) into `dirs.images`,
    /// for another host to check before a migration (CPUINFO_DUMP).
    pub fn cpuinfo_dump(&self, dirs: &ImageDirs) -> Result<()> {
        self.spawn(&[])?.cpuinfo(RequestKind::CpuinfoDump, dirs)
    }

    /// Checks that tasks dumped on the host that wrote `dirs.images`'s
    /// cpuinfo.img can run on this CPU (CPUINFO_CHECK).
    pub fn cpuinfo_check(&self, dirs: &ImageDirs) -> Result<()> {
        self.spawn(&[])?.cpuinfo(RequestKind::CpuinfoCheck, dirs)
    }

    pub fn page_server_child(&self, options: &PageServerOptions) -> Result<ChildPageServer> {
        self.spawn_for(options)?.page_server_child(options)
    }
}

/// One running `criu swrk`.
#[derive(Debug)]
pub struct Swrk {
    binary: PathBuf,
    child: Option<Child>,
    pid: Pid,
    sock: OwnedFd,
    pidfd: OwnedFd,
    /// criu's stdout and stderr (a memfd: never blocks criu, read on failure).
    output: File,
    passed: usize,
    /// Where the current request's log is: (dir, file name).
    log: Option<(OwnedFd, PathBuf)>,
    /// The request set keep_open, so criu waits for another one.
    kept_open: bool,
}

fn sys(op: &'static str, pid: i32) -> impl FnOnce(Errno) -> Error {
    move |source| Error::Sys { op, pid, source }
}

impl Swrk {
    fn spawn(binary: &Path, fds: &[BorrowedFd<'_>]) -> Result<Swrk> {
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(sys("socketpair", 0))?;
        // Copies of every fd criu gets, at numbers above the ones they will
        // take in criu, so the dup2s below never overwrite each other.
        let first_free = FIRST_PASSED_FD + fds.len() as i32;
        let mut staged: Vec<OwnedFd> = Vec::with_capacity(fds.len() + 1);
        for fd in std::iter::once(theirs.as_fd()).chain(fds.iter().copied()) {
            let raw = fcntl(fd.as_raw_fd(), FcntlArg::F_DUPFD_CLOEXEC(first_free))
                .map_err(sys("duplicating an fd", 0))?;
            // SAFETY: fcntl returned a fresh fd.
            staged.push(unsafe { OwnedFd::from_raw_fd(raw) });
        }
        drop(theirs);
        let raw: Vec<RawFd> = staged.iter().map(|f| f.as_raw_fd()).collect();
        let output = memfd()?;
        let mut cmd = Command::new(binary);
        cmd.arg("swrk")
            .arg(SWRK_FD.to_string())
            .stdin(Stdio::null())
            .stdout(output.try_clone().map_err(|e| Error::Spawn {
                path: binary.to_path_buf(),
                source: e,
            })?)
            .stderr(output.try_clone().map_err(|e| Error::Spawn {
                path: binary.to_path_buf(),
                source: e,
            })?);
        // SAFETY: only async-signal-safe system calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                for (i, fd) in raw.iter().enumerate() {
                    // dup2 clears FD_CLOEXEC on the target.
                    if libc::dup2(*fd, SWRK_FD + i as i32) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                // Everything above the passed fds, inherited or not, closes
                // on exec; std's own exec-error pipe keeps working.
                let first = (SWRK_FD + raw.len() as i32) as libc::c_uint;
                if libc::syscall(
                    libc::SYS_close_range,
                    first,
                    libc::c_uint::MAX,
                    libc::CLOSE_RANGE_CLOEXEC,
                ) < 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::CriuNotFound {
                path: binary.to_path_buf(),
            },
            std::io::ErrorKind::PermissionDenied => Error::CriuNotExecutable {
                path: binary.to_path_buf(),
            },
            _ => Error::Spawn {
                path: binary.to_path_buf(),
                source: e,
            },
        })?;
        drop(staged);
        let pid = Pid::from_raw(child.id() as i32);
        // The pidfd may be opened after criu exited: it is a zombie until
        // we reap it, so the pid cannot be reused in between.
        let pidfd = pidfd_open(pid).map_err(sys("pidfd_open", pid.as_raw()))?;
        tracing::debug!(pid = pid.as_raw(), binary = %binary.display(), "spawned criu swrk");
        Ok(Swrk {
            binary: binary.to_path_buf(),
            child: Some(child),
            pid,
            sock: ours,
            pidfd,
            output,
            passed: fds.len(),
            log: None,
            kept_open: false,
        })
    }

    /// criu's pid, e.g. to move it into the container's cgroups.
    pub fn pid(&self) -> Pid {
        self.pid
    }

    pub fn binary(&self) -> &Path {
        &self.binary
    }

    fn check_fds(&self, kind: RequestKind, options: &impl ChildFds) -> Result<()> {
        let own = options.child_fds().len();
        // Fds named by position among those criu was started with: each
        // must be there (some may go unnamed: a restore needs not all).
        if let Some(last) = options.passed_indexes().into_iter().max() {
            if own != 0 || last >= self.passed {
                return Err(Error::FdMismatch {
                    request: kind,
                    expected: own + last + 1,
                    got: self.passed,
                });
            }
            return Ok(());
        }
        let expected = own;
        if expected != self.passed {
            return Err(Error::FdMismatch {
                request: kind,
                expected,
                got: self.passed,
            });
        }
        Ok(())
    }

    fn remember_log(&mut self, dirs: &ImageDirs) {
        self.log = dirs
            .log_dir()
            .try_clone_to_owned()
            .ok()
            .map(|d| (d, dirs.log_name().to_path_buf()));
    }

    /// As [`Self::remember_log`], but a log file the request's config file
    /// sets is where CRIU logs instead (runc's org.criu.config may set one).
    fn remember_tree_log(&mut self, dirs: &ImageDirs, tree: &crate::options::TreeOptions) {
        self.remember_log(dirs);
        if let (Some(name), Some((_, n))) = (tree.config_log_file(), self.log.as_mut()) {
            *n = name;
        }
    }

    pub fn version(mut self) -> Result<Version> {
        let resp = self.request(
            RequestKind::Version,
            new_req(proto::Criu_req_type::VERSION, None),
            &mut crate::IgnoreNotify,
        )?;
        let v = resp
            .version
            .as_ref()
            .ok_or_else(|| Error::UnexpectedResponse {
                request: RequestKind::Version,
                got: "VERSION without a version".into(),
            })?;
        let v = Version::from_rpc(v);
        self.finish(RequestKind::Version)?;
        Ok(v)
    }

    pub fn check(mut self, options: &CheckOptions) -> Result<()> {
        let opts = options.to_rpc()?;
        self.request(
            RequestKind::Check,
            new_req(proto::Criu_req_type::CHECK, Some(opts)),
            &mut crate::IgnoreNotify,
        )?;
        self.finish(RequestKind::Check)
    }

    fn cpuinfo(mut self, kind: RequestKind, dirs: &ImageDirs) -> Result<()> {
        let ty = match kind {
            RequestKind::CpuinfoDump => proto::Criu_req_type::CPUINFO_DUMP,
            _ => proto::Criu_req_type::CPUINFO_CHECK,
        };
        let mut opts = proto::Criu_opts::new();
        opts.images_dir_fd = Some(dirs.images.as_raw_fd());
        opts.work_dir_fd = dirs.work.as_ref().map(|w| w.as_raw_fd());
        opts.log_file = dirs
            .log_file
            .as_ref()
            .map(|l| l.to_string_lossy().into_owned());
        opts.log_level = Some(dirs.log_level as i32);
        self.remember_log(dirs);
        self.request(kind, new_req(ty, Some(opts)), &mut crate::IgnoreNotify)?;
        self.finish(kind)
    }

    pub fn features(mut self) -> Result<Features> {
        let f = self.feature_check(false)?;
        self.finish(RequestKind::FeatureCheck)?;
        Ok(f)
    }

    fn feature_check(&mut self, keep_open: bool) -> Result<Features> {
        let mut req = new_req(proto::Criu_req_type::FEATURE_CHECK, None);
        let mut want = proto::Criu_features::new();
        want.mem_track = Some(true);
        want.lazy_pages = Some(true);
        want.pidfd_store = Some(true);
        req.features = MessageField::some(want);
        req.keep_open = keep_open.then_some(true);
        let resp = self.request(RequestKind::FeatureCheck, req, &mut crate::IgnoreNotify)?;
        let f = resp
            .features
            .as_ref()
            .ok_or_else(|| Error::UnexpectedResponse {
                request: RequestKind::FeatureCheck,
                got: "FEATURE_CHECK without features".into(),
            })?;
        Ok(Features {
            mem_track: f.mem_track(),
            lazy_pages: f.lazy_pages(),
            pidfd_store: f.pidfd_store(),
        })
    }

    /// Asks CRIU (keeping the session open) whether soft-dirty tracking works.
    fn require_soft_dirty(&mut self) -> Result<()> {
        if self.feature_check(true)?.mem_track {
            Ok(())
        } else {
            Err(Error::SoftDirtyUnsupported)
        }
    }

    pub fn dump(mut self, options: &DumpOptions, handler: &mut dyn NotifyHandler) -> Result<()> {
        self.check_fds(RequestKind::Dump, options)?;
        let mut opts = options.to_rpc()?;
        // Kept open until criu answered: criu reads it by its /proc path.
        let _config = match options.rpc_config() {
            Some(text) => {
                let mut f = memfd()?;
                f.write_all(text.as_bytes()).map_err(|e| Error::Sys {
                    op: "writing criu's RPC config",
                    pid: self.pid.as_raw(),
                    source: Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
                })?;
                opts.config_file =
                    Some(format!("/proc/{}/fd/{}", std::process::id(), f.as_raw_fd()));
                Some(f)
            }
            None => None,
        };
        self.remember_tree_log(&options.dirs, &options.tree);
        self.request(
            RequestKind::Dump,
            new_req(proto::Criu_req_type::DUMP, Some(opts)),
            handler,
        )?;
        self.finish(RequestKind::Dump)
    }

    /// An iterative pre-dump: CRIU then waits for another PRE_DUMP or the
    /// final DUMP on this same session.
    pub fn pre_dump(
        &mut self,
        options: &DumpOptions,
        handler: &mut dyn NotifyHandler,
    ) -> Result<()> {
        self.check_fds(RequestKind::PreDump, options)?;
        let opts = options.to_rpc()?;
        self.remember_tree_log(&options.dirs, &options.tree);
        self.request(
            RequestKind::PreDump,
            new_req(proto::Criu_req_type::PRE_DUMP, Some(opts)),
            handler,
        )?;
        self.kept_open = true;
        Ok(())
    }

    pub fn single_pre_dump(
        mut self,
        options: &DumpOptions,
        handler: &mut dyn NotifyHandler,
    ) -> Result<()> {
        self.check_fds(RequestKind::SinglePreDump, options)?;
        let opts = options.to_rpc()?;
        self.remember_tree_log(&options.dirs, &options.tree);
        self.request(
            RequestKind::SinglePreDump,
            new_req(proto::Criu_req_type::SINGLE_PRE_DUMP, Some(opts)),
            handler,
        )?;
        self.finish(RequestKind::SinglePreDump)
    }

    pub fn restore(
        mut self,
        options: &RestoreOptions,
        handler: &mut dyn NotifyHandler,
    ) -> Result<Restored> {
        self.check_fds(RequestKind::Restore, options)?;
        let opts = options.to_rpc()?;
        self.remember_tree_log(&options.dirs, &options.tree);
        let resp = self.request(
            RequestKind::Restore,
            new_req(proto::Criu_req_type::RESTORE, Some(opts)),
            handler,
        )?;
        let pid = resp
            .restore
            .as_ref()
            .map(|r| r.pid())
            .filter(|p| *p > 0)
            .ok_or_else(|| Error::UnexpectedResponse {
                request: RequestKind::Restore,
                got: "RESTORE without the restored pid".into(),
            })?;
        self.finish(RequestKind::Restore)?;
        Ok(Restored {
            pid: Pid::from_raw(pid),
        })
    }

    fn start_page_server(
        &mut self,
        kind: RequestKind,
        options: &PageServerOptions,
    ) -> Result<PageServer> {
        self.check_fds(kind, options)?;
        let opts = options.to_rpc()?;
        self.remember_log(&options.dirs);
        let ty = match kind {
            RequestKind::PageServer => proto::Criu_req_type::PAGE_SERVER,
            _ => proto::Criu_req_type::PAGE_SERVER_CHLD,
        };
        let mut req = new_req(ty, Some(opts));
        req.keep_open = (kind == RequestKind::PageServerChild).then_some(true);
        let resp = self.request(kind, req, &mut crate::IgnoreNotify)?;
        let ps = resp.ps.as_ref();
        match (ps.and_then(|p| p.pid), ps.and_then(|p| p.port)) {
            // A server on a socket we handed in listens on no port.
            (Some(pid), Some(port))
                if pid >= 0
                    && (0..=65535).contains(&port)
                    && (port != 0 || matches!(options.listen, PageServerAddr::Socket(_))) =>
            {
                Ok(PageServer {
                    pid: (pid > 0).then(|| Pid::from_raw(pid)),
                    port: port as u16,
                })
            }
            _ => Err(Error::UnexpectedResponse {
                request: kind,
                got: format!("PAGE_SERVER without pid and port ({:?})", resp.ps),
            }),
        }
    }

    pub fn page_server(mut self, options: &PageServerOptions) -> Result<PageServer> {
        let ps = self.start_page_server(RequestKind::PageServer, options)?;
        self.finish(RequestKind::PageServer)?;
        Ok(ps)
    }

    /// A page server that runs as criu's child; criu stays to report its
    /// exit ([`ChildPageServer::wait`]).
    pub fn page_server_child(mut self, options: &PageServerOptions) -> Result<ChildPageServer> {
        let server = self.start_page_server(RequestKind::PageServerChild, options)?;
        self.kept_open = true;
        let pid = server.pid.ok_or_else(|| Error::UnexpectedResponse {
            request: RequestKind::PageServerChild,
            got: "PAGE_SERVER_CHLD without the server's pid".into(),
        })?;
        Ok(ChildPageServer {
            swrk: self,
            pid,
            port: server.port,
        })
    }

    /// Sends `req`, answers notifies, returns the successful response.
    fn request(
        &mut self,
        kind: RequestKind,
        req: proto::Criu_req,
        handler: &mut dyn NotifyHandler,
    ) -> Result<proto::Criu_resp> {
        // CRIU answers PAGE_SERVER_CHLD with a PAGE_SERVER response
        // (cr-service.c: start_page_server_req).
        let expected = match req.type_() {
            proto::Criu_req_type::PAGE_SERVER_CHLD => proto::Criu_req_type::PAGE_SERVER,
            t => t,
        };
        tracing::debug!(pid = self.pid.as_raw(), request = %kind, "criu request");
        self.send(kind, &req)?;
        // An error of ours (handler, unexpected notify) is reported in
        // preference to CRIU's consequent failure.
        let mut ours: Option<Error> = None;
        loop {
            let (resp, fd) = match self.recv(kind) {
                Ok(r) => r,
                Err(e) => return Err(ours.unwrap_or(e)),
            };
            let ty = resp
                .type_
                .map(|t| t.enum_value_or(proto::Criu_req_type::EMPTY));
            if ty == Some(proto::Criu_req_type::NOTIFY) {
                let script = resp.notify.script().to_string();
                let mut reply = new_req(proto::Criu_req_type::NOTIFY, None);
                let verdict = if script == "query-ext-files" {
                    // CRIU asks for extra `external` keys; they go back in
                    // the reply's options (cr-service.c:
                    // exec_rpc_query_external_files).
                    handler
                        .external_files()
                        .map(|ext| {
                            let mut o = proto::Criu_opts::new();
                            o.images_dir_fd = Some(-1);
                            o.external = ext;
                            reply.opts = MessageField::some(o);
                        })
                        .map_err(|source| Error::Notify {
                            request: kind,
                            script: "query-ext-files",
                            source,
                            log: None,
                        })
                } else {
                    match Notify::parse(&script, resp.notify.pid, fd) {
                        None => Err(Error::UnexpectedNotify {
                            request: kind,
                            script: script.clone(),
                        }),
                        Some(n) => {
                            let name = n.script();
                            handler.notify(n).map_err(|source| Error::Notify {
                                request: kind,
                                script: name,
                                source,
                                log: None,
                            })
                        }
                    }
                };
                reply.notify_success = Some(verdict.is_ok());
                if let Err(e) = verdict {
                    tracing::debug!(script = %script, "refusing criu notify");
                    ours.get_or_insert(e);
                }
                self.send(kind, &reply)?;
                continue;
            }
            if ty != Some(expected) && ty != Some(proto::Criu_req_type::EMPTY) {
                return Err(ours.unwrap_or(Error::UnexpectedResponse {
                    request: kind,
                    got: format!("{ty:?}"),
                }));
            }
            if let Some(e) = ours {
                return Err(self.with_log(e));
            }
            if !resp.success() || ty == Some(proto::Criu_req_type::EMPTY) {
                let criu = CriuMessage {
                    errno: resp.cr_errno.filter(|e| *e != 0).map(Errno::from_raw),
                    message: resp.cr_errmsg.clone().filter(|m| !m.trim().is_empty()),
                };
                return Err(Error::Failed {
                    request: kind,
                    criu,
                    log: self.log_excerpt(),
                });
            }
            return Ok(resp);
        }
    }

    fn with_log(&self, e: Error) -> Error {
        match e {
            Error::Notify {
                request,
                script,
                source,
                log: None,
            } => Error::Notify {
                request,
                script,
                source,
                log: self.log_excerpt(),
            },
            e => e,
        }
    }

    fn log_excerpt(&self) -> Option<LogExcerpt> {
        let (dir, name) = self.log.as_ref()?;
        let dir_path = std::fs::read_link(format!("/proc/self/fd/{}", dir.as_raw_fd())).ok()?;
        let path = dir_path.join(name);
        let mut f = File::open(&path).ok()?;
        LogExcerpt::read(path, &mut f)
    }

    fn send(&mut self, kind: RequestKind, req: &proto::Criu_req) -> Result<()> {
        let buf = req.write_to_bytes().map_err(|source| Error::Malformed {
            request: kind,
            len: 0,
            source,
        })?;
        match send(self.sock.as_raw_fd(), &buf, MsgFlags::MSG_NOSIGNAL) {
            Ok(_) => Ok(()),
            Err(Errno::EPIPE) | Err(Errno::ECONNRESET) => Err(self.died(kind)),
            Err(e) => Err(sys("sending to the swrk socket", self.pid.as_raw())(e)),
        }
    }

    /// Waits for one message, or for criu's death.
    fn recv(&mut self, kind: RequestKind) -> Result<(proto::Criu_resp, Option<OwnedFd>)> {
        let pid = self.pid.as_raw();
        loop {
            let mut fds = [
                PollFd::new(self.sock.as_fd(), PollFlags::POLLIN),
                PollFd::new(self.pidfd.as_fd(), PollFlags::POLLIN),
            ];
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => {}
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(sys("polling the swrk socket", pid)(e)),
            }
            let sock = fds[0].revents().unwrap_or(PollFlags::empty());
            let exited = fds[1].revents().is_some_and(|r| !r.is_empty());
            if sock.contains(PollFlags::POLLIN) {
                break;
            }
            if exited || sock.intersects(PollFlags::POLLHUP | PollFlags::POLLERR) {
                return Err(self.died(kind));
            }
        }
        // SOCK_SEQPACKET: peek at the datagram's full length first.
        let len = match recv(
            self.sock.as_raw_fd(),
            &mut [],
            MsgFlags::MSG_PEEK | MsgFlags::MSG_TRUNC,
        ) {
            Ok(0) => return Err(self.died(kind)),
            Ok(n) => n,
            Err(e) => return Err(sys("reading the swrk socket", pid)(e)),
        };
        let mut buf = vec![0u8; len];
        let mut cmsg = nix::cmsg_space!([RawFd; 1]);
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        let msg = recvmsg::<()>(
            self.sock.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .map_err(sys("reading the swrk socket", pid))?;
        let got = msg.bytes;
        let mut fd = None;
        for c in msg.cmsgs().map_err(sys("reading control messages", pid))? {
            if let ControlMessageOwned::ScmRights(rights) = c {
                for r in rights {
                    // SAFETY: SCM_RIGHTS gave us a fresh fd.
                    let owned = unsafe { OwnedFd::from_raw_fd(r) };
                    fd.get_or_insert(owned);
                }
            }
        }
        if got == 0 {
            return Err(self.died(kind));
        }
        let resp =
            proto::Criu_resp::parse_from_bytes(&buf[..got]).map_err(|source| Error::Malformed {
                request: kind,
                len: got,
                source,
            })?;
        Ok((resp, fd))
    }

    /// The error for a criu that went away: reaps it and quotes it.
    fn died(&mut self, kind: RequestKind) -> Error {
        let status = self
            .child
            .take()
            .map(|mut c| describe(c.wait()))
            .unwrap_or_else(|| "exited".into());
        Error::CriuExited {
            request: kind,
            pid: self.pid.as_raw(),
            status,
            output: self.output_tail(),
            log: self.log_excerpt(),
        }
    }

    fn output_tail(&mut self) -> String {
        let mut s = String::new();
        let len = self.output.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = self.output.seek(SeekFrom::Start(len.saturating_sub(4096)));
        let _ = self.output.read_to_string(&mut s);
        s
    }

    /// After the last response: reap criu and check its exit status.
    fn finish(mut self, kind: RequestKind) -> Result<()> {
        self.close_and_reap(kind)
    }

    fn close_and_reap(&mut self, kind: RequestKind) -> Result<()> {
        // Closing our end tells a criu waiting for a further request to stop.
        let _ = nix::sys::socket::shutdown(self.sock.as_raw_fd(), nix::sys::socket::Shutdown::Both);
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let kept_open = self.kept_open;
        match child.wait() {
            Ok(st) if st.success() => Ok(()),
            // A criu left waiting for another request exits 1 on EOF.
            Ok(_) if kept_open => Ok(()),
            st => Err(Error::ExitStatus {
                request: kind,
                pid: self.pid.as_raw(),
                status: describe(st),
                output: self.output_tail(),
            }),
        }
    }
}

impl Drop for Swrk {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.kept_open = true;
            let _ = self.close_and_reap(RequestKind::Version);
        }
    }
}

/// A page server running as criu's child (PAGE_SERVER_CHLD): it receives
/// one dump's pages, then exits.
#[derive(Debug)]
pub struct ChildPageServer {
    swrk: Swrk,
    pid: Pid,
    port: u16,
}

impl ChildPageServer {
    pub fn pid(&self) -> Pid {
        self.pid
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Waits for the page server to finish (WAIT_PID) and checks that it
    /// received a complete dump.
    pub fn wait(mut self) -> Result<()> {
        let mut req = new_req(proto::Criu_req_type::WAIT_PID, None);
        req.pid = Some(self.pid.as_raw() as u32);
        let resp = self
            .swrk
            .request(RequestKind::WaitPid, req, &mut crate::IgnoreNotify)?;
        let status = std::process::ExitStatus::from_raw(resp.status());
        self.swrk.kept_open = true;
        let swrk = self.swrk.child.take();
        let _ = swrk.map(|mut c| c.wait());
        if status.success() {
            Ok(())
        } else {
            Err(Error::Failed {
                request: RequestKind::PageServerChild,
                criu: CriuMessage {
                    errno: None,
                    message: Some(format!("page server {}", describe(Ok(status)))),
                },
                log: self.swrk.log_excerpt(),
            })
        }
    }

    /// Stops a page server whose dump will not come (a cancelled migration).
    pub fn terminate(self) -> Result<()> {
        match nix::sys::signal::kill(self.pid, nix::sys::signal::Signal::SIGTERM) {
            Ok(()) | Err(Errno::ESRCH) => {}
            Err(e) => return Err(sys("stopping the page server", self.pid.as_raw())(e)),
        }
        self.wait().or(Ok(()))
    }
}

fn new_req(ty: proto::Criu_req_type, opts: Option<proto::Criu_opts>) -> proto::Criu_req {
    let mut req = proto::Criu_req::new();
    req.type_ = Some(EnumOrUnknown::new(ty));
    if let Some(o) = opts {
        req.opts = MessageField::some(o);
    }
    req
}

fn describe(st: std::io::Result<std::process::ExitStatus>) -> String {
    match st {
        Ok(st) => match (st.code(), st.signal()) {
            (Some(c), _) => format!("exited with status {c}"),
            (None, Some(s)) => format!(
                "was killed by signal {}",
                nix::sys::signal::Signal::try_from(s)
                    .map(|s| s.as_str().to_string())
                    .unwrap_or_else(|_| s.to_string())
            ),
            _ => format!("ended ({st})"),
        },
        Err(e) => format!("could not be waited for ({e})"),
    }
}

fn memfd() -> Result<File> {
    let fd = nix::sys::memfd::memfd_create(
        c"criu-output",
        nix::sys::memfd::MemFdCreateFlag::MFD_CLOEXEC,
    )
    .map_err(sys("memfd_create", 0))?;
    Ok(File::from(fd))
}

fn pidfd_open(pid: Pid) -> nix::Result<OwnedFd> {
    // SAFETY: plain system call; the returned fd is new and ours.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
    if r < 0 {
        Err(Errno::last())
    } else {
        Ok(unsafe { OwnedFd::from_raw_fd(r as RawFd) })
    }
}
