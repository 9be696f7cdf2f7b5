//! CRIU's network lock, taken off by hand.
//!
//! A dump locks the network of the namespace it dumps with iptables rules
//! (criu/net.c: a `CRIU` chain jumped to from INPUT and OUTPUT, dropping all
//! but CRIU's own marked packets) and takes them off when the dump fails or
//! the tasks run on. A leave-stopped dump (live migration) keeps them: the
//! tasks are to die. When the migration fails after such a dump and the
//! source resumes instead, the rules must go, or every packet of the
//! container's sockets fails with EPERM (a Spark job's loopback py4j
//! connection does). This does what CRIU's `iptables_network_unlock_internal`
//! does, with iptables-restore run inside the container's namespace.
//!
//! The same dump leaves the container's TCP connections in repair mode
//! (`tcp_established`: CRIU's `cpt_unlock_tcp_connections` runs only when the
//! tasks go on), where every recv fails with EPERM; [`repair_off`] takes each
//! of them out, through a copy of the task's fd (pidfd_getfd).
//!
//! Ferry's own network namespace is external to CRIU, which restores
//! nothing in it and so locks nothing there on restore: a restore that
//! sends a socket's unsent data (soccr restores it with repair off) gets a
//! reset from a loopback peer not yet restored, and fails with EPIPE (a
//! Spark job's py4j connection did). So Ferry puts the same lock on that
//! namespace itself ([`add`]) around the dump and the restore, and takes it
//! off ([`remove_own`]) once the tasks run; the dump then skips CRIU's own
//! lock of it (checkpoint::Target::network_locked_by_caller). Every tool
//! run costs ~5-12 ms inside the downtime: each family's rules change in
//! one transaction, both families at once.

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use nix::sched::CloneFlags;
use nix::unistd::Pid;

use crate::error::{Error, Result};

/// criu/net.c iptables_network_lock_internal: everything but CRIU's own
/// marked packets (SOCCR_MARK 0xC114) is dropped.
const LOCK: &str = "*filter\n:CRIU - [0:0]\n-I INPUT -j CRIU\n-I OUTPUT -j CRIU\n\
-A CRIU -m mark --mark 0xC114 -j ACCEPT\n-A CRIU -j DROP\nCOMMIT\n";

/// The two families' tools: (save, restore).
const FAMILIES: [(&str, &str); 2] = [
    ("iptables-save", "iptables-restore"),
    ("ip6tables-save", "ip6tables-restore"),
];

/// One transaction taking the lock off: `jumps` jumps from each of INPUT
/// and OUTPUT, the chain emptied (naming it in iptables-restore's input
/// flushes it) and deleted: criu/net.c iptables_network_unlock_internal,
/// for a namespace locked `jumps` times.
fn unlock_transaction(jumps: (usize, usize)) -> String {
    let mut t = String::from("*filter\n:CRIU - [0:0]\n");
    t.push_str(&"-D INPUT -j CRIU\n".repeat(jumps.0));
    t.push_str(&"-D OUTPUT -j CRIU\n".repeat(jumps.1));
    t.push_str("-X CRIU\nCOMMIT\n");
    t
}

/// How often iptables-save's `rules` jump from INPUT and from OUTPUT to
/// CRIU's chain, if the chain is there.
fn jumps(rules: &str) -> Option<(usize, usize)> {
    if !rules.lines().any(|l| l.starts_with(":CRIU ")) {
        return None;
    }
    let count = |chain: &str| {
        let jump = format!("-A {chain} -j CRIU");
        rules.lines().filter(|l| l.trim_end() == jump).count()
    };
    Some((count("INPUT"), count("OUTPUT")))
}

/// Starts `tool` (iptables-save / iptables-restore and their ip6 twins) in
/// the network namespace `netns` with `input` on stdin.
fn spawn_in_netns(netns: &Path, tool: &str, args: &[&str], input: &str) -> Result<Child> {
    let ns = std::fs::File::open(netns).map_err(|source| Error::Io {
        op: "opening the network namespace",
        path: netns.to_path_buf(),
        source,
    })?;
    let mut cmd = Command::new(tool);
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    // SAFETY: setns is async-signal-safe; the child only calls it and exec.
    unsafe {
        cmd.pre_exec(move || {
            nix::sched::setns(&ns, CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)
        });
    }
    let mut child = cmd.spawn().map_err(|source| Error::Io {
        op: "running (hack/setup installs iptables)",
        path: tool.into(),
        source,
    })?;
    // Rule sets are a few hundred bytes: the pipe takes them whole.
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(input.as_bytes());
    }
    Ok(child)
}

/// Waits for `child` (`tool`): its stdout, or `None` when it failed (a
/// rule that is not there).
fn finish(child: Child, tool: &str) -> Result<Option<String>> {
    let out = child.wait_with_output().map_err(|source| Error::Io {
        op: "running",
        path: tool.into(),
        source,
    })?;
    Ok(out
        .status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned()))
}

/// Runs one tool per family at once (each run costs ~5-12 ms of process
/// start-up and xtables set-up, inside the downtime): `job` gives each
/// family's tool, arguments and input, or None to skip it. The families'
/// results, in [`FAMILIES`]' order.
fn both_families(
    netns: &Path,
    job: impl Fn(usize) -> Option<(&'static str, &'static [&'static str], String)>,
) -> Result<[Option<String>; 2]> {
    let mut running = Vec::new();
    for f in 0..FAMILIES.len() {
        running.push(match job(f) {
            Some((tool, args, input)) => match spawn_in_netns(netns, tool, args, &input) {
                Ok(child) => Some((tool, child)),
                Err(e) => {
                    // The family already started is waited for, not left
                    // behind as a zombie.
                    for (tool, child) in running.into_iter().flatten() {
                        let _ = finish(child, tool);
                    }
                    return Err(e);
                }
            },
            None => None,
        });
    }
    let mut out = [None, None];
    for (f, r) in running.into_iter().enumerate() {
        if let Some((tool, child)) = r {
            out[f] = finish(child, tool)?;
        }
    }
    Ok(out)
}

/// The network namespace of `pid`, unless it is this process's own (CRIU
/// locks only a namespace it dumps, and the host's must never be locked).
pub fn netns_of(pid: Pid) -> Option<std::path::PathBuf> {
    let p = std::path::PathBuf::from(format!("/proc/{pid}/ns/net"));
    let ino = |p: &Path| std::fs::metadata(p).map(|m| m.ino()).ok();
    ino(&p)
        .is_some_and(|n| Some(n) != ino(Path::new("/proc/self/ns/net")))
        .then_some(p)
}

/// Locks `netns` as CRIU does: only CRIU's marked packets pass.
pub fn add(netns: &Path) -> Result<()> {
    let done = both_families(netns, |f| {
        Some((FAMILIES[f].1, &["--noflush"][..], LOCK.to_string()))
    })?;
    if done.iter().any(Option::is_none) {
        // What did go on comes off: nothing is left half locked.
        let _ = remove(netns);
        return Err(Error::Unsupported {
            what: "locking the container's network for CRIU (iptables-restore failed)",
            hint: "install iptables (hack/setup does) with the xt_mark match",
        });
    }
    Ok(())
}

/// Takes CRIU's lock rules off `netns`, if they are there; returns whether
/// there were any. A namespace locked twice (CRIU and Ferry, or two dumps)
/// has two of each jump, which all go (criu/net.c loops too): the rules
/// are read first, and each family's come off in one transaction.
pub fn remove(netns: &Path) -> Result<bool> {
    let rules = both_families(netns, |f| {
        Some((FAMILIES[f].0, &["-t", "filter"][..], String::new()))
    })?;
    let found = rules.map(|r| r.as_deref().and_then(jumps));
    let done = both_families(netns, |f| {
        found[f].map(|j| (FAMILIES[f].1, &["--noflush"][..], unlock_transaction(j)))
    })?;
    if (0..FAMILIES.len()).any(|f| found[f].is_some() && done[f].is_none()) {
        return Err(Error::Unsupported {
            what: "removing CRIU's network lock (the CRIU chain stays)",
            hint: "delete it by hand: iptables -F CRIU; iptables -X CRIU in the container's netns",
        });
    }
    Ok(found.iter().any(Option::is_some))
}

/// Takes off the lock [`add`] put on `netns`, which holds no other: CRIU's
/// unlock transaction at once, without reading the rules first (half the
/// tool runs of [`remove`], in the downtime of every restore into a
/// namespace Ferry locked). If it does not apply (other rules than
/// expected), [`remove`] does it the careful way.
pub fn remove_own(netns: &Path) -> Result<()> {
    let done = both_families(netns, |f| {
        Some((
            FAMILIES[f].1,
            &["--noflush"][..],
            unlock_transaction((1, 1)),
        ))
    })?;
    if done.iter().any(Option::is_none) {
        remove(netns)?;
    }
    Ok(())
}

fn sys(op: &'static str, pid: Pid) -> impl Fn(nix::errno::Errno) -> Error {
    move |e| Error::Io {
        op,
        path: format!("/proc/{pid}").into(),
        source: e.into(),
    }
}

/// Takes every TCP socket of `pids` out of repair mode; returns how many.
pub fn repair_off(pids: &[Pid]) -> Result<usize> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let mut seen = std::collections::HashSet::new();
    let mut done = 0;
    for &pid in pids {
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        // SAFETY: pidfd_open returns a new fd or -1.
        let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) } as i32;
        if raw < 0 {
            continue;
        }
        // SAFETY: a new fd we own.
        let pidfd = unsafe { OwnedFd::from_raw_fd(raw) };
        for e in fds.flatten() {
            let Ok(link) = std::fs::read_link(e.path()) else {
                continue;
            };
            let link = link.to_string_lossy().into_owned();
            if !link.starts_with("socket:") || !seen.insert(link) {
                continue;
            }
            let Some(n) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
                continue;
            };
            // SAFETY: pidfd_getfd returns a new fd (a copy of the task's) or -1.
            let got =
                unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), n, 0) } as i32;
            if got < 0 {
                return Err(sys("copying a socket fd of", pid)(nix::errno::Errno::last()));
            }
            // SAFETY: a new fd we own.
            let sock = unsafe { OwnedFd::from_raw_fd(got) };
            let int_opt = |opt: libc::c_int| -> Option<libc::c_int> {
                let mut v: libc::c_int = 0;
                let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
                // SAFETY: getsockopt with an int option on our own fd.
                let r = unsafe {
                    libc::getsockopt(
                        sock.as_raw_fd(),
                        libc::SOL_SOCKET,
                        opt,
                        (&mut v as *mut libc::c_int).cast(),
                        &mut len,
                    )
                };
                (r == 0).then_some(v)
            };
            // Listening sockets are never in repair mode (the kernel refuses
            // it: tcp_can_repair_sock).
            if int_opt(libc::SO_PROTOCOL) != Some(libc::IPPROTO_TCP)
                || int_opt(libc::SO_ACCEPTCONN) == Some(1)
            {
                continue;
            }
            let off: libc::c_int = 0; // TCP_REPAIR_OFF
                                      // SAFETY: setsockopt with an int option on our own fd.
            let r = unsafe {
                libc::setsockopt(
                    sock.as_raw_fd(),
                    libc::SOL_TCP,
                    libc::TCP_REPAIR,
                    (&off as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            if r < 0 {
                return Err(sys("taking a TCP socket out of repair mode in", pid)(
                    nix::errno::Errno::last(),
                ));
            }
            done += 1;
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_unlock_takes_every_jump_the_rules_hold() {
        assert_eq!(
            unlock_transaction((1, 1)),
            "*filter\n:CRIU - [0:0]\n-D INPUT -j CRIU\n-D OUTPUT -j CRIU\n-X CRIU\nCOMMIT\n"
        );
        let twice = "*filter\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:CRIU - [0:0]\n\
-A INPUT -j CRIU\n-A INPUT -j CRIU\n-A INPUT -s 10.0.0.1/32 -j CRIU\n-A OUTPUT -j CRIU\n\
-A OUTPUT -j CRIU\n-A CRIU -m mark --mark 0xc114 -j ACCEPT\n-A CRIU -j DROP\nCOMMIT\n";
        assert_eq!(jumps(twice), Some((2, 2)));
        assert_eq!(
            unlock_transaction((2, 0)),
            "*filter\n:CRIU - [0:0]\n-D INPUT -j CRIU\n-D INPUT -j CRIU\n-X CRIU\nCOMMIT\n"
        );
        assert_eq!(jumps("*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n"), None);
    }
}
