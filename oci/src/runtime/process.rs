//! The last steps before the container's process runs, in the order runc
//! takes them (libcontainer/init_linux.go finalizeNamespace): rlimits and
//! oom_score_adj, no fd but stdio survives exec, the bounding set dropped
//! while still root, groups and ids switched keeping capabilities, the
//! process's capability sets applied, cwd, no_new_privs, then exec.
//!
//! Runs in the child between fork and exec: plain system calls, errors
//! returned as values for the caller to report to `ferry create`.

use std::collections::HashSet;
use std::ffi::CString;
use std::path::{Path, PathBuf};

use caps::{CapSet, Capability as Cap, CapsHashSet};
use nix::unistd::{Gid, Uid};
use oci_spec::runtime::{Capabilities, Process};

/// A failure before exec: the step, the reason, and the errno when a
/// system call failed. It crosses from the container's process to the
/// runtime as a message (sync::Msg::Failed), so it is text and a number,
/// not the error value itself.
#[derive(Debug)]
pub struct StepError {
    pub step: String,
    pub message: String,
    pub errno: Option<i32>,
}

/// What a step failed with: its text, and its errno if it has one.
pub trait Cause: std::fmt::Display {
    fn errno(&self) -> Option<i32> {
        None
    }
}

impl Cause for nix::errno::Errno {
    fn errno(&self) -> Option<i32> {
        Some(*self as i32)
    }
}

impl Cause for std::io::Error {
    fn errno(&self) -> Option<i32> {
        self.raw_os_error()
    }
}

impl Cause for crate::Error {
    fn errno(&self) -> Option<i32> {
        let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(self);
        while let Some(e) = cur {
            if let Some(io) = e.downcast_ref::<std::io::Error>() {
                return io.raw_os_error();
            }
            cur = e.source();
        }
        None
    }
}

impl Cause for caps::errors::CapsError {}
impl Cause for String {}
impl Cause for &str {}
impl<T: Cause + ?Sized> Cause for &T {
    fn errno(&self) -> Option<i32> {
        (**self).errno()
    }
}

impl StepError {
    pub fn new(step: impl Into<String>, e: &dyn Cause) -> StepError {
        StepError {
            step: step.into(),
            message: e.to_string(),
            errno: e.errno(),
        }
    }
}

fn fail(step: impl Into<String>, e: impl Cause) -> StepError {
    StepError::new(step, &e)
}

/// The three fds a container's process gets as 0, 1 and 2 instead of the
/// caller's own: a containerd shim hands in pipes it copies to
/// containerd's fifos (runc-shim gives runc its pipes the same way), and
/// CRIU can dump pipes where it cannot dump a host file.
#[derive(Debug)]
pub struct Stdio {
    pub stdin: std::os::fd::OwnedFd,
    pub stdout: std::os::fd::OwnedFd,
    pub stderr: std::os::fd::OwnedFd,
}

impl Stdio {
    /// Duplicates the three fds (a restore borrows its options).
    pub fn try_clone(&self) -> std::io::Result<Stdio> {
        Ok(Stdio {
            stdin: self.stdin.try_clone()?,
            stdout: self.stdout.try_clone()?,
            stderr: self.stderr.try_clone()?,
        })
    }

    /// Installs the fds as 0, 1 and 2 of this (forked) process. They are
    /// first moved above 2, so that one already numbered 0-2 is not
    /// overwritten before it is copied.
    pub fn install(&self) -> Result<(), StepError> {
        use std::os::fd::AsRawFd;
        let mut high = [0; 3];
        for (i, fd) in [&self.stdin, &self.stdout, &self.stderr]
            .into_iter()
            .enumerate()
        {
            high[i] = nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(3))
                .map_err(|e| fail("duplicating the stdio handed in", e))?;
        }
        for (target, fd) in high.into_iter().enumerate() {
            nix::unistd::dup2(fd, target as i32)
                .map_err(|e| fail("dup2 of the stdio handed in", e))?;
            let _ = nix::unistd::close(fd);
        }
        Ok(())
    }
}

fn caps_of(set: &Option<Capabilities>) -> CapsHashSet {
    let mut out = HashSet::new();
    for c in set.iter().flatten() {
        let name = serde_json::to_string(c).unwrap_or_default();
        if let Ok(cap) = name.trim_matches('"').parse::<Cap>() {
            out.insert(cap);
        }
    }
    out
}

fn rlimit_resource(name: &str) -> Option<libc::__rlimit_resource_t> {
    Some(match name {
        "RLIMIT_CPU" => libc::RLIMIT_CPU,
        "RLIMIT_FSIZE" => libc::RLIMIT_FSIZE,
        "RLIMIT_DATA" => libc::RLIMIT_DATA,
        "RLIMIT_STACK" => libc::RLIMIT_STACK,
        "RLIMIT_CORE" => libc::RLIMIT_CORE,
        "RLIMIT_RSS" => libc::RLIMIT_RSS,
        "RLIMIT_NPROC" => libc::RLIMIT_NPROC,
        "RLIMIT_NOFILE" => libc::RLIMIT_NOFILE,
        "RLIMIT_MEMLOCK" => libc::RLIMIT_MEMLOCK,
        "RLIMIT_AS" => libc::RLIMIT_AS,
        "RLIMIT_LOCKS" => libc::RLIMIT_LOCKS,
        "RLIMIT_SIGPENDING" => libc::RLIMIT_SIGPENDING,
        "RLIMIT_MSGQUEUE" => libc::RLIMIT_MSGQUEUE,
        "RLIMIT_NICE" => libc::RLIMIT_NICE,
        "RLIMIT_RTPRIO" => libc::RLIMIT_RTPRIO,
        "RLIMIT_RTTIME" => libc::RLIMIT_RTTIME,
        _ => return None,
    })
}

/// rlimits and oom_score_adj: while still privileged.
pub fn limits(p: &Process) -> Result<(), StepError> {
    for r in p.rlimits().iter().flatten() {
        let name = serde_json::to_string(&r.typ()).unwrap_or_default();
        let name = name.trim_matches('"');
        let res = rlimit_resource(name)
            .ok_or_else(|| fail("rlimits", format!("unknown rlimit {name}")))?;
        let lim = libc::rlimit {
            rlim_cur: r.soft(),
            rlim_max: r.hard(),
        };
        // SAFETY: plain setrlimit on our own process.
        if unsafe { libc::setrlimit(res, &lim) } != 0 {
            return Err(fail(
                format!("setrlimit {name}"),
                std::io::Error::last_os_error(),
            ));
        }
    }
    if let Some(adj) = p.oom_score_adj() {
        std::fs::write("/proc/self/oom_score_adj", adj.to_string())
            .map_err(|e| fail("oom_score_adj", e))?;
    }
    Ok(())
}

/// Marks every fd above `keep` close-on-exec: the container inherits only
/// its stdio (CRIU cannot dump host fds, and they would leak).
pub fn close_fds_on_exec(keep: i32) -> Result<(), StepError> {
    // SAFETY: close_range only flips flags on our own fds.
    let r = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            (keep + 1) as libc::c_uint,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if r < 0 {
        return Err(fail("close_range", std::io::Error::last_os_error()));
    }
    Ok(())
}

/// runc's fixStdioPermissions: before the switch to the process's user,
/// its stdio (a pty slave, pipes) is given to that user so that it can
/// reopen them (`$(tty)`, /proc/self/fd/N); /dev/null is left alone, and a
/// chown the kernel refuses (an id unmapped in a user namespace) is
/// skipped, as runc skips it.
fn fix_stdio_owner(uid: u32) {
    let null = nix::sys::stat::stat("/dev/null").ok().map(|s| s.st_rdev);
    for fd in 0..3 {
        let Ok(st) = nix::sys::stat::fstat(fd) else {
            continue;
        };
        let is_char = st.st_mode & libc::S_IFMT == libc::S_IFCHR;
        if (is_char && Some(st.st_rdev) == null) || st.st_uid == uid {
            continue;
        }
        // The group stays: a pty slave keeps devpts' tty group (gid=5 in
        // runc's default mounts), as with runc.
        // SAFETY: fchown of one of our own fds; -1 leaves the group.
        unsafe { libc::fchown(fd, uid, u32::MAX) };
    }
}

/// Switches to the process's user keeping only its capabilities, goes to
/// its cwd, applies no_new_privs.
pub fn credentials(p: &Process) -> Result<(), StepError> {
    let c = p.capabilities().as_ref();
    let bounding = caps_of(&c.and_then(|c| c.bounding().clone()));
    let effective = caps_of(&c.and_then(|c| c.effective().clone()));
    let permitted = caps_of(&c.and_then(|c| c.permitted().clone()));
    let inheritable = caps_of(&c.and_then(|c| c.inheritable().clone()));
    let ambient = caps_of(&c.and_then(|c| c.ambient().clone()));

    // The bounding set can only shrink, and only with CAP_SETPCAP: now.
    for cap in caps::all() {
        if !bounding.contains(&cap) {
            caps::drop(None, CapSet::Bounding, cap)
                .map_err(|e| fail("dropping bounding capabilities", e))?;
        }
    }
    let user = p.user();
    // runc's finalizeNamespace: chdir first, while still root, so that a
    // cwd the process's user cannot reach still works; only a permission
    // error is retried after the switch (user namespaces, root squash).
    let cwd = p.cwd();
    let mut chdir_later = false;
    if !cwd.as_os_str().is_empty() {
        match nix::unistd::chdir(cwd) {
            Ok(()) => {}
            Err(nix::errno::Errno::EACCES) | Err(nix::errno::Errno::EPERM) => chdir_later = true,
            Err(e) => return Err(fail(format!("chdir {}", cwd.display()), e)),
        }
    }
    fix_stdio_owner(user.uid());
    // SAFETY: prctl on our own process.
    unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) };
    let groups: Vec<Gid> = user
        .additional_gids()
        .iter()
        .flatten()
        .map(|g| Gid::from_raw(*g))
        .collect();
    nix::unistd::setgroups(&groups).map_err(|e| fail("setgroups", e))?;
    nix::unistd::setresgid(
        Gid::from_raw(user.gid()),
        Gid::from_raw(user.gid()),
        Gid::from_raw(user.gid()),
    )
    .map_err(|e| fail(format!("setgid {}", user.gid()), e))?;
    nix::unistd::setresuid(
        Uid::from_raw(user.uid()),
        Uid::from_raw(user.uid()),
        Uid::from_raw(user.uid()),
    )
    .map_err(|e| fail(format!("setuid {}", user.uid()), e))?;
    // SAFETY: as above.
    unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0) };
    if let Some(mask) = user.umask() {
        nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(mask));
    }

    // capset checks each change against the others: inheritable while the
    // permitted set is still full, effective before permitted shrinks
    // under it, permitted last.
    caps::set(None, CapSet::Inheritable, &inheritable)
        .map_err(|e| fail("setting inheritable capabilities", e))?;
    caps::set(None, CapSet::Effective, &effective)
        .map_err(|e| fail("setting effective capabilities", e))?;
    caps::set(None, CapSet::Permitted, &permitted)
        .map_err(|e| fail("setting permitted capabilities", e))?;
    caps::clear(None, CapSet::Ambient).ok();
    // The kernel raises an ambient capability only if it is both permitted
    // and inheritable; runc's default spec lists ambient capabilities that
    // are not inheritable, and runc (gocapability's apply) goes on when a
    // raise fails, so a config runc runs runs here too.
    for cap in ambient {
        let _ = caps::raise(None, CapSet::Ambient, cap);
    }

    if chdir_later {
        nix::unistd::chdir(cwd).map_err(|e| fail(format!("chdir {}", cwd.display()), e))?;
    }
    if p.no_new_privileges().unwrap_or(false) {
        // SAFETY: prctl on our own process.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            return Err(fail("no_new_privs", std::io::Error::last_os_error()));
        }
    }
    Ok(())
}

/// The process's credentials ([`credentials`]) and its seccomp filter,
/// loaded where runc loads it (standard_init_linux.go): with
/// no_new_privileges, last, just before exec; without it, before the
/// capabilities go, since loading a filter without no_new_privs takes
/// CAP_SYS_ADMIN (the profile must then allow what [`credentials`] calls,
/// as docker's default profile does).
pub fn confine(p: &Process, filter: Option<&super::seccomp::Filter>) -> Result<(), StepError> {
    let load =
        |f: &super::seccomp::Filter| f.load().map_err(|e| fail("loading the seccomp filter", e));
    let nnp = p.no_new_privileges().unwrap_or(false);
    if let (Some(f), false) = (filter, nnp) {
        load(f)?;
    }
    credentials(p)?;
    if let (Some(f), true) = (filter, nnp) {
        load(f)?;
    }
    Ok(())
}

/// Finds `prog` in the process's PATH (from its env), as execvp would.
pub fn resolve(prog: &str, env: &[String]) -> PathBuf {
    if prog.contains('/') {
        return PathBuf::from(prog);
    }
    let path = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    path.split(':')
        .map(|d| Path::new(d).join(prog))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from(prog))
}

/// Fails unless the process's program can be found and executed: checked
/// before the runtime reports the process ready, so that `create` and
/// `exec` fail (runc's init does the same LookPath) instead of a process
/// that dies at once.
pub fn check_executable(p: &Process) -> Result<(), StepError> {
    let args = p.args().clone().unwrap_or_default();
    let Some(prog) = args.first() else {
        return Err(fail("exec", "process.args is empty"));
    };
    let env = p.env().clone().unwrap_or_default();
    let path = resolve(prog, &env);
    let ok = nix::unistd::access(&path, nix::unistd::AccessFlags::X_OK).is_ok()
        && path.metadata().is_ok_and(|m| m.is_file());
    if ok {
        Ok(())
    } else if prog.contains('/') {
        Err(fail(
            "exec",
            format!("{prog}: no such file or directory, or not executable"),
        ))
    } else {
        Err(fail(
            "exec",
            format!("\"{prog}\": executable file not found in $PATH"),
        ))
    }
}

/// Replaces this process with the container's. Returns only on failure.
pub fn exec(p: &Process) -> StepError {
    let args = p.args().clone().unwrap_or_default();
    let Some(prog) = args.first() else {
        return fail("exec", "process.args is empty");
    };
    let env = p.env().clone().unwrap_or_default();
    let path = resolve(prog, &env);
    let cstr = |s: &str| CString::new(s).unwrap_or_default();
    let argv: Vec<CString> = args.iter().map(|a| cstr(a)).collect();
    let envp: Vec<CString> = env.iter().map(|e| cstr(e)).collect();
    let Ok(cpath) = CString::new(path.as_os_str().as_encoded_bytes()) else {
        return fail("exec", "the program path has a NUL byte");
    };
    match nix::unistd::execve(&cpath, &argv, &envp) {
        Err(e) => fail(format!("exec {}", path.display()), e),
        Ok(never) => match never {},
    }
}
