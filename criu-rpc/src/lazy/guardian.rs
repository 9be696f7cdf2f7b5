//! The guardian of a post-copy restore: a small process that keeps the
//! restored tasks' userfaultfds alive while the lazy-pages daemon serves
//! them, and kills the tasks if the daemon's process dies first.
//!
//! Why: a userfaultfd context lives as long as its `struct file`. When the
//! last reference goes (the daemon's process died: SIGKILL, OOM, a crash),
//! the kernel runs `userfaultfd_release`, which unregisters every range
//! and wakes the waiters; from then on a fault on a page that has not
//! arrived is an ordinary anonymous fault and maps a zero page
//! (`handle_userfault` returns `VM_FAULT_NOPAGE` once `ctx->released` is
//! set). The restored tasks would run on with zeros where their memory
//! was: a corrupt copy that does not crash.
//!
//! So the daemon hands the guardian a duplicate of every task's
//! userfaultfd as it gets it (`SCM_RIGHTS` on a `SOCK_SEQPACKET`
//! socketpair). While the guardian lives the contexts stay armed, and a
//! task that touches a missing page sleeps in `handle_userfault` (the
//! sleep is killable; fork, mremap, munmap and MADV_DONTNEED events wait
//! killably for a reader in `userfaultfd_event_wait_completion` too).
//! When the daemon's end of the socket hangs up without a "release", the
//! daemon died: the guardian SIGKILLs every process listed in the
//! container's `cgroup.procs` files (its sub-cgroups included, and through
//! `cgroup.kill` where cgroup v2 has it), again until the cgroups are
//! empty, and only then closes the userfaultfds. A task that got SIGKILL
//! never returns to user space, so none of them reads a page that did not
//! arrive.
//!
//! The guardian is forked from the daemon's process, which is
//! multi-threaded (the agent): between `fork` and `_exit` the child runs
//! only async-signal-safe code (raw system calls on buffers prepared
//! before the fork; no allocation, no locks, no std I/O, no tracing, no
//! panics).
//!
//! Limits:
//! - If the guardian dies first, the daemon sees its socket hang up and
//!   fails the post-copy while it still holds the userfaultfds (its
//!   `on_failure` kills the tasks). If both die at once (SIGKILL to the
//!   agent's whole cgroup: `systemctl kill`, the end of a stop timeout, a
//!   group OOM kill), nobody is left to keep the contexts armed. The
//!   guardian stays in the agent's cgroups.
//! - It kills what the listed files list: a restored task outside the
//!   container's cgroups is not found. On cgroup v1 a pid read from
//!   `cgroup.procs` could be reused before the kill (cgroup v2's
//!   `cgroup.kill` has no such window).
//! - Forked, it shares the agent's memory copy-on-write until it exits.

use std::ffi::{CStr, CString};
use std::io::IoSlice;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{
    recv, send, sendmsg, setsockopt, socketpair, sockopt, AddressFamily, ControlMessage, MsgFlags,
    SockFlag, SockType,
};
use nix::sys::time::TimeVal;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::error::{Error, Result};

/// The guardian's name (`comm`, at most 15 bytes), so that `ps` and `pgrep`
/// find it.
pub const GUARDIAN_NAME: &str = "ferry-uffdguard";
const NAME: &CStr = c"ferry-uffdguard";

/// Messages from the daemon: a userfaultfd to hold (with `SCM_RIGHTS`;
/// answered with `OK` and the slot, or `FULL`), a slot to let go (the
/// task's pages are all in, or the task is gone), and the end of the
/// post-copy (the guardian exits without killing anything).
const MSG_ADD: u8 = b'A';
const MSG_DROP: u8 = b'D';
const MSG_RELEASE: u8 = b'R';
const REPLY_OK: u8 = b'k';
const REPLY_FULL: u8 = b'f';

/// Userfaultfds held at once (one per restored process, forked children
/// included).
const MAX_UFFDS: usize = 4096;
/// How long the daemon waits for the guardian's answer before it gives the
/// guardian up for lost (then the post-copy fails and the tasks are
/// killed): a stopped or wedged guardian protects nothing.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// Kill rounds: every `ROUND_PAUSE_NS` (10 ms), until two rounds in a row find nobody
/// (after at least `MIN_ROUNDS`, so that a restore still forking into the
/// cgroup is seen), at most `MAX_ROUNDS` (5 s).
const MIN_ROUNDS: u32 = 10;
const MAX_ROUNDS: u32 = 500;
const ROUND_PAUSE_NS: libc::c_long = 10_000_000;
/// Sub-cgroup depth walked when killing.
const MAX_DEPTH: u32 = 16;

/// The guardian's exit statuses.
const EXIT_RELEASED: i32 = 0;
const EXIT_KILLED: i32 = 3;
const EXIT_SETUP: i32 = 4;

/// The guardian's fd for its end of the socketpair.
const SOCK_FD: libc::c_int = 3;

/// A slot in the guardian's table of userfaultfds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Slot(u32);

/// One file whose pids the guardian kills, prepared before the fork.
struct Target {
    /// A file of pids (whitespace-separated, as cgroup.procs).
    file: CString,
    /// When `file` is a `cgroup.procs`: its cgroup directory, whose
    /// sub-cgroups are walked and whose `cgroup.kill` (v2) and
    /// `freezer.state` (v1) are written too.
    dir: Option<CString>,
}

impl Target {
    fn new(path: &Path) -> Result<Target> {
        let c = |p: &Path| {
            CString::new(p.as_os_str().as_bytes()).map_err(|_| Error::Io {
                op: "guarding (the path has a NUL byte)",
                path: path.to_path_buf(),
                source: std::io::ErrorKind::InvalidInput.into(),
            })
        };
        let dir = match (path.file_name(), path.parent()) {
            (Some(n), Some(d)) if n == "cgroup.procs" => Some(c(d)?),
            _ => None,
        };
        Ok(Target {
            file: c(path)?,
            dir,
        })
    }
}

/// A running guardian (see the module's doc), connected to this process.
///
/// Hand it to [`super::LazyPages::with_guardian`]: the daemon then gives it
/// every task's userfaultfd and releases it when the post-copy ends.
/// Dropped without [`Guardian::release`], it takes this as the daemon's
/// death: it kills the processes it guards, and the drop reaps it.
#[derive(Debug)]
pub struct Guardian {
    /// `None` once closed (released or dropped).
    sock: Option<OwnedFd>,
    pid: Pid,
    reaped: bool,
}

impl Guardian {
    /// Forks the guardian. `kill` are the files of pids it kills if this
    /// process dies before releasing it: the container's `cgroup.procs` in
    /// each hierarchy (a directory that does not exist yet at that time is
    /// skipped). Call it before the restore starts, so that it exists
    /// before the first userfaultfd does.
    ///
    /// A guardian with nothing to kill would protect nothing: an empty
    /// `kill` is refused.
    pub fn spawn(kill: &[PathBuf]) -> Result<Guardian> {
        if kill.is_empty() {
            return Err(Error::InvalidOption {
                option: "guardian kill list",
                reason: "empty: a guardian with nothing to kill protects nothing",
            });
        }
        let targets = kill
            .iter()
            .map(|p| Target::new(p))
            .collect::<Result<Vec<_>>>()?;
        let spawn_err = |op| move |source| Error::GuardianSpawn { op, source };
        // Allocated here: the child must not allocate.
        let mut slots: Vec<libc::c_int> = vec![-1; MAX_UFFDS];
        // CLOEXEC: a criu (or any program) this process starts later must
        // not hold the daemon's end, or the daemon's death would not hang
        // the socket up.
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(spawn_err("creating its socketpair"))?;
        // SAFETY: the child runs only async-signal-safe code on memory
        // prepared above (child::run's contract) and never returns.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: we are the freshly forked child.
            unsafe {
                child::run(child::Plan {
                    sock: theirs.as_raw_fd(),
                    targets: &targets,
                    slots: &mut slots,
                })
            }
        }
        if pid < 0 {
            return Err(spawn_err("forking")(Errno::last()));
        }
        drop(theirs);
        let pid = Pid::from_raw(pid);
        let g = Guardian {
            sock: Some(ours),
            pid,
            reaped: false,
        };
        let timeout = TimeVal::new(ANSWER_TIMEOUT.as_secs() as _, 0);
        let sock = g.sock.as_ref().expect("just set").as_fd();
        setsockopt(&sock, sockopt::ReceiveTimeout, &timeout)
            .and_then(|_| setsockopt(&sock, sockopt::SendTimeout, &timeout))
            .map_err(spawn_err("setting its socket's timeouts"))?;
        tracing::debug!(pid = pid.as_raw(), ?kill, "post-copy guardian started");
        Ok(g)
    }

    /// The guardian's pid.
    pub fn pid(&self) -> Pid {
        self.pid
    }

    fn sock(&self) -> Result<BorrowedFd<'_>> {
        self.sock
            .as_ref()
            .map(|s| s.as_fd())
            .ok_or_else(|| self.error("using a closed guardian", Errno::EBADF.into()))
    }

    fn error(&self, op: &'static str, source: std::io::Error) -> Error {
        Error::Guardian {
            op,
            pid: self.pid.as_raw(),
            source,
        }
    }

    /// Hands the guardian a duplicate of `uffd` and waits until it holds it.
    pub(crate) fn guard(&mut self, uffd: BorrowedFd<'_>) -> Result<Slot> {
        let sock = self.sock()?.as_raw_fd();
        let fds = [uffd.as_raw_fd()];
        let msg = [MSG_ADD];
        sendmsg::<()>(
            sock,
            &[IoSlice::new(&msg)],
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::MSG_NOSIGNAL,
            None,
        )
        .map_err(|e| self.error("handing it a userfaultfd", e.into()))?;
        let mut reply = [0u8; 8];
        let n = loop {
            match recv(sock, &mut reply, MsgFlags::empty()) {
                Err(Errno::EINTR) => continue,
                Err(Errno::EAGAIN) => {
                    return Err(self.error(
                        "waiting for it to hold a userfaultfd",
                        std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            format!("no answer in {} s", ANSWER_TIMEOUT.as_secs()),
                        ),
                    ))
                }
                r => break r.map_err(|e| self.error("reading its answer", e.into()))?,
            }
        };
        match (n, reply[0]) {
            (5, REPLY_OK) => Ok(Slot(u32::from_le_bytes([
                reply[1], reply[2], reply[3], reply[4],
            ]))),
            (1, REPLY_FULL) => Err(self.error(
                "handing it a userfaultfd",
                std::io::Error::other(format!(
                    "it cannot hold more (at most {MAX_UFFDS}, and its RLIMIT_NOFILE)"
                )),
            )),
            (0, _) => Err(self.error(
                "waiting for it to hold a userfaultfd",
                std::io::Error::other("it is gone"),
            )),
            _ => Err(self.error(
                "reading its answer",
                std::io::Error::other(format!("a {n}-byte answer {:#04x}", reply[0])),
            )),
        }
    }

    /// Lets the guardian close its duplicate in `slot`: the task's pages
    /// are all in, or it is gone. Holding it longer would keep the context
    /// armed after the daemon closed its own copy: the task's next
    /// fork, munmap or MADV_DONTNEED would wait for a reader that never
    /// comes.
    pub(crate) fn forget(&mut self, slot: Slot) -> Result<()> {
        let sock = self.sock()?.as_raw_fd();
        let mut msg = [MSG_DROP, 0, 0, 0, 0];
        msg[1..].copy_from_slice(&slot.0.to_le_bytes());
        send(sock, &msg, MsgFlags::MSG_NOSIGNAL)
            .map(drop)
            .map_err(|e| self.error("telling it to let a userfaultfd go", e.into()))
    }

    /// The daemon's end of the socket, to poll for the guardian's death
    /// (`POLLHUP`).
    pub(crate) fn socket(&self) -> Option<BorrowedFd<'_>> {
        self.sock.as_ref().map(|s| s.as_fd())
    }

    /// Ends the guard: the guardian closes its userfaultfds and exits
    /// without killing anything; it is reaped here. Call it once every page
    /// is in, or once the tasks are killed.
    pub fn release(mut self) -> Result<()> {
        let sent = match self.sock() {
            Ok(s) => send(s.as_raw_fd(), &[MSG_RELEASE], MsgFlags::MSG_NOSIGNAL),
            Err(_) => Err(Errno::EBADF),
        };
        // Messages arrive in order: the guardian reads the release before
        // the end of the socket.
        self.sock = None;
        let status = self.reap(ANSWER_TIMEOUT);
        let reaped_elsewhere = status.is_none() && self.reaped;
        // Whatever happened, the drop does not wait again.
        self.reaped = true;
        let why = match (status, sent) {
            (Some(WaitStatus::Exited(_, EXIT_RELEASED)), Ok(_)) => return Ok(()),
            (None, Ok(_)) if reaped_elsewhere => return Ok(()),
            (Some(WaitStatus::Exited(_, EXIT_KILLED)), _) => {
                "it had already taken the daemon for dead and killed the tasks".to_string()
            }
            (Some(WaitStatus::Exited(_, EXIT_SETUP)), _) => {
                "it had failed to set itself up".to_string()
            }
            (Some(s), _) => format!("it ended with {s:?}"),
            (None, Err(e)) => format!("{e}, and it could not be reaped"),
            (None, Ok(_)) => format!(
                "it did not exit within {} s of the release; it stays unreaped",
                ANSWER_TIMEOUT.as_secs()
            ),
        };
        Err(self.error("releasing it", std::io::Error::other(why)))
    }

    /// Waits up to `timeout` for the guardian to exit; `None` if it did
    /// not, or if someone else reaped it.
    fn reap(&mut self, timeout: Duration) -> Option<WaitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            match waitpid(self.pid, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                Ok(WaitStatus::StillAlive) => return None,
                Ok(s @ (WaitStatus::Exited(..) | WaitStatus::Signaled(..))) => {
                    self.reaped = true;
                    return Some(s);
                }
                Ok(_) | Err(Errno::EINTR) => {}
                // A reaper of all children (PR_SET_CHILD_SUBREAPER and
                // waitpid(-1)) got it first.
                Err(_) => {
                    self.reaped = true;
                    return None;
                }
            }
        }
    }
}

impl Drop for Guardian {
    fn drop(&mut self) {
        if self.reaped {
            return;
        }
        // Not released: to the guardian, the end of the socket is the
        // daemon's death. It kills what it guards (at most MAX_ROUNDS
        // rounds) and exits.
        self.sock = None;
        let wait = Duration::from_nanos(ROUND_PAUSE_NS as u64) * MAX_ROUNDS + ANSWER_TIMEOUT;
        if self.reap(wait).is_none() && !self.reaped {
            tracing::warn!(
                pid = self.pid.as_raw(),
                "the post-copy guardian did not exit; it stays unreaped"
            );
        }
    }
}

/// The guardian's side. Everything here runs in the child of a fork of a
/// multi-threaded process: only async-signal-safe system calls, on memory
/// prepared before the fork; no allocation, no panic (no indexing that
/// could fail, no overflowing arithmetic).
mod child {
    use super::*;
    use libc::{c_int, c_void};

    pub(super) struct Plan<'a> {
        pub sock: c_int,
        pub targets: &'a [Target],
        /// `MAX_UFFDS` entries, all -1.
        pub slots: &'a mut [c_int],
    }

    fn errno() -> c_int {
        Errno::last_raw()
    }

    /// Detaches from the daemon's session, signals and fds, serves the
    /// daemon's messages, and kills the targets if the daemon hangs up
    /// without a release.
    ///
    /// # Safety
    /// Call only in the child of a fork, which it ends.
    pub(super) unsafe fn run(p: Plan<'_>) -> ! {
        // Its own session: Ctrl-C on the agent's terminal (SIGINT to the
        // foreground process group) and the terminal's hang-up miss it.
        libc::setsid();
        settle_signals();
        libc::prctl(libc::PR_SET_NAME, NAME.as_ptr(), 0, 0, 0);
        // Holds no directory of the agent's (say a mount to be unmounted).
        libc::chdir(c"/".as_ptr());
        // fd 3 is the socket, 0-2 /dev/null, nothing else: the agent's
        // listening socket and connections must close when the agent dies
        // (its port reusable, its peers seeing the hang-up).
        if p.sock != SOCK_FD && libc::dup2(p.sock, SOCK_FD) != SOCK_FD {
            libc::_exit(EXIT_SETUP);
        }
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if null >= 0 {
            for fd in 0..3 {
                if fd != null {
                    libc::dup2(null, fd);
                }
            }
        }
        close_from(SOCK_FD + 1);
        // As many fds as the hard limit allows (one per restored process).
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
        // It must outlive the agent under memory pressure. Lowering needs
        // CAP_SYS_RESOURCE; without it the write fails and nothing changes.
        write_file(libc::AT_FDCWD, c"/proc/self/oom_score_adj", b"-1000");
        serve(p.slots);
        kill_targets(p.targets);
        // Every task listed got SIGKILL and will not run user code again:
        // the userfaultfds may go (they close with our fd table).
        libc::_exit(EXIT_KILLED)
    }

    /// SIGINT, SIGHUP, SIGTERM, SIGQUIT, SIGPIPE, SIGUSR1/2 ignored (only
    /// SIGKILL ends the guardian from outside); every other signal back to
    /// its default (the agent's handlers are not ours); none blocked.
    unsafe fn settle_signals() {
        let mut ign: libc::sigaction = std::mem::zeroed();
        ign.sa_sigaction = libc::SIG_IGN;
        libc::sigemptyset(&mut ign.sa_mask);
        let mut dfl: libc::sigaction = std::mem::zeroed();
        dfl.sa_sigaction = libc::SIG_DFL;
        libc::sigemptyset(&mut dfl.sa_mask);
        // 32 and 33 are glibc's own (its sigaction refuses them).
        for sig in 1..32 {
            let ignored = matches!(
                sig,
                libc::SIGINT
                    | libc::SIGHUP
                    | libc::SIGTERM
                    | libc::SIGQUIT
                    | libc::SIGPIPE
                    | libc::SIGUSR1
                    | libc::SIGUSR2
            );
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::sigaction(sig, if ignored { &ign } else { &dfl }, std::ptr::null_mut());
            }
        }
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
    }

    unsafe fn close_from(first: c_int) {
        if libc::syscall(libc::SYS_close_range, first as u32, u32::MAX, 0u32) == 0 {
            return;
        }
        // Kernels before 5.9.
        let mut lim: libc::rlimit = std::mem::zeroed();
        let max = if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur.min(1 << 20) as c_int
        } else {
            1024
        };
        for fd in first..max {
            libc::close(fd);
        }
    }

    unsafe fn write_file(dirfd: c_int, name: &CStr, data: &[u8]) {
        let fd = libc::openat(dirfd, name.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd >= 0 {
            libc::write(fd, data.as_ptr().cast::<c_void>(), data.len());
            libc::close(fd);
        }
    }

    unsafe fn reply(msg: &[u8]) {
        libc::send(
            SOCK_FD,
            msg.as_ptr().cast::<c_void>(),
            msg.len(),
            libc::MSG_NOSIGNAL,
        );
    }

    /// Serves the daemon's messages; returns when the daemon hung up
    /// without a release (exits on a release).
    unsafe fn serve(slots: &mut [c_int]) {
        let mut buf = [0u8; 8];
        // Room for a few fds: a misbehaving sender's extra fds are closed.
        let mut cbuf = [0u64; 8];
        loop {
            let mut iov = libc::iovec {
                iov_base: buf.as_mut_ptr().cast::<c_void>(),
                iov_len: buf.len(),
            };
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = cbuf.as_mut_ptr().cast::<c_void>();
            msg.msg_controllen = std::mem::size_of_val(&cbuf) as _;
            let n = libc::recvmsg(SOCK_FD, &mut msg, libc::MSG_CMSG_CLOEXEC);
            if n < 0 && errno() == libc::EINTR {
                continue;
            }
            // The end of the socket (or a broken one, which cannot be told
            // from the daemon's death): kill.
            if n <= 0 {
                return;
            }
            let mut fds = [-1 as c_int; 8];
            let nfds = take_fds(&msg, &mut fds);
            let truncated = msg.msg_flags & libc::MSG_CTRUNC != 0;
            match buf[0] {
                MSG_ADD => {
                    let free = slots.iter().position(|s| *s < 0);
                    match (nfds, truncated, free) {
                        (1, false, Some(i)) => {
                            if let Some(s) = slots.get_mut(i) {
                                *s = fds[0];
                                fds[0] = -1;
                                let b = (i as u32).to_le_bytes();
                                reply(&[REPLY_OK, b[0], b[1], b[2], b[3]]);
                            }
                        }
                        _ => reply(&[REPLY_FULL]),
                    }
                }
                MSG_DROP if n >= 5 => {
                    let i = u32::from_le_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
                    if let Some(s) = slots.get_mut(i) {
                        if *s >= 0 {
                            libc::close(*s);
                            *s = -1;
                        }
                    }
                }
                MSG_RELEASE => libc::_exit(EXIT_RELEASED),
                _ => {}
            }
            for fd in fds {
                if fd >= 0 {
                    libc::close(fd);
                }
            }
        }
    }

    /// Moves the fds of `msg`'s `SCM_RIGHTS` into `out` (those that do not
    /// fit are closed); returns how many it found.
    unsafe fn take_fds(msg: &libc::msghdr, out: &mut [c_int; 8]) -> usize {
        let mut n = 0usize;
        let mut c = libc::CMSG_FIRSTHDR(msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(c).cast::<c_int>();
                let len = ((*c).cmsg_len as usize).saturating_sub(libc::CMSG_LEN(0) as usize);
                for k in 0..len / std::mem::size_of::<c_int>() {
                    let fd = std::ptr::read_unaligned(data.add(k));
                    match out.get_mut(n) {
                        Some(slot) => *slot = fd,
                        None => {
                            libc::close(fd);
                        }
                    }
                    n = n.saturating_add(1);
                }
            }
            c = libc::CMSG_NXTHDR(msg, c);
        }
        n
    }

    /// Kills every pid of the targets, round after round, until two rounds
    /// in a row find nobody (new forks, tasks still being restored into
    /// the cgroup) or `MAX_ROUNDS` passed.
    unsafe fn kill_targets(targets: &[Target]) {
        let me = libc::getpid();
        let mut quiet = 0;
        for round in 0..MAX_ROUNDS {
            let mut found = 0u32;
            for t in targets {
                found = found.saturating_add(kill_target(t, me));
            }
            quiet = if found == 0 { quiet + 1 } else { 0 };
            if quiet >= 2 && round >= MIN_ROUNDS {
                return;
            }
            let pause = libc::timespec {
                tv_sec: 0,
                tv_nsec: ROUND_PAUSE_NS,
            };
            libc::nanosleep(&pause, std::ptr::null_mut());
        }
    }

    unsafe fn kill_target(t: &Target, me: libc::pid_t) -> u32 {
        let Some(dir) = &t.dir else {
            let fd = libc::open(t.file.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return 0;
            }
            let n = kill_listed(fd, me);
            libc::close(fd);
            return n;
        };
        let fd = libc::open(
            dir.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        );
        if fd < 0 {
            return 0;
        }
        // cgroup v2 (5.14+): the kernel kills the whole subtree, and a
        // fork racing with it too. A v1 directory has no such file.
        write_file(fd, c"cgroup.kill", b"1");
        let n = kill_tree(fd, me, 0);
        libc::close(fd);
        n
    }

    /// Kills the pids in `dirfd`'s cgroup.procs and in its sub-cgroups'.
    unsafe fn kill_tree(dirfd: c_int, me: libc::pid_t, depth: u32) -> u32 {
        let mut found = 0u32;
        let procs = libc::openat(
            dirfd,
            c"cgroup.procs".as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        );
        if procs >= 0 {
            found = kill_listed(procs, me);
            libc::close(procs);
        }
        if found > 0 {
            // A v1 freezer holds a frozen task (SIGKILL included) until it
            // is thawed; runc thaws after signalling for the same reason.
            write_file(dirfd, c"freezer.state", b"THAWED");
        }
        if depth >= MAX_DEPTH {
            return found;
        }
        // struct linux_dirent64 { u64 ino; i64 off; u16 reclen; u8 type;
        // char name[]; }
        let mut buf = [0u64; 256];
        let bytes = std::mem::size_of_val(&buf);
        loop {
            let n = libc::syscall(libc::SYS_getdents64, dirfd, buf.as_mut_ptr(), bytes);
            if n <= 0 {
                return found;
            }
            let base = buf.as_ptr().cast::<u8>();
            let n = (n as usize).min(bytes);
            let mut off = 0usize;
            while off.saturating_add(19) < n {
                let reclen = std::ptr::read_unaligned(base.add(off + 16).cast::<u16>()) as usize;
                let dtype = *base.add(off + 18);
                let name = base.add(off + 19).cast::<libc::c_char>();
                if reclen == 0 {
                    break;
                }
                let dots = *name == b'.' as libc::c_char
                    && (*name.add(1) == 0
                        || (*name.add(1) == b'.' as libc::c_char && *name.add(2) == 0));
                if dtype == libc::DT_DIR && !dots {
                    let sub = libc::openat(
                        dirfd,
                        name,
                        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                    );
                    if sub >= 0 {
                        found = found.saturating_add(kill_tree(sub, me, depth + 1));
                        libc::close(sub);
                    }
                }
                off = off.saturating_add(reclen);
            }
        }
    }

    /// SIGKILLs every pid listed in `fd` (decimal, whitespace-separated),
    /// never pid 1 or itself; returns how many it listed.
    unsafe fn kill_listed(fd: c_int, me: libc::pid_t) -> u32 {
        let mut found = 0u32;
        let mut hit = |pid: i64| {
            if pid > 1 && pid <= libc::pid_t::MAX as i64 && pid as libc::pid_t != me {
                libc::kill(pid as libc::pid_t, libc::SIGKILL);
                found = found.saturating_add(1);
            }
        };
        let mut buf = [0u8; 512];
        let mut cur: i64 = -1;
        loop {
            let n = libc::read(fd, buf.as_mut_ptr().cast::<c_void>(), buf.len());
            if n < 0 && errno() == libc::EINTR {
                continue;
            }
            if n <= 0 {
                break;
            }
            for &b in buf.iter().take(n as usize) {
                if b.is_ascii_digit() {
                    cur = cur
                        .max(0)
                        .saturating_mul(10)
                        .saturating_add((b - b'0') as i64);
                } else if cur >= 0 {
                    hit(cur);
                    cur = -1;
                }
            }
        }
        if cur >= 0 {
            hit(cur);
        }
        found
    }
}
