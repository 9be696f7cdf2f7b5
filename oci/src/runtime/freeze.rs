//! Freezing a container at a point where CRIU can dump it: no process of
//! its tree inside a vfork.
//!
//! CRIU seizes every task of a frozen cgroup, thaws it and waits for each
//! task to stop in its ptrace trap (criu/seize.c freeze_processes, then
//! compel_wait_task). A process waiting for its vfork child to exec or exit
//! (the kernel's wait_for_vfork_done) cannot stop there, and once CRIU has
//! stopped the child it never will: CRIU waits out its whole timeout (10 s,
//! frozen) and fails "Unseizable non-zombie ... state D". runc, which lets
//! CRIU freeze, fails the same way. Programs vfork more than one thinks:
//! glibc's posix_spawn is a clone(CLONE_VM | CLONE_VFORK), and the JVM
//! starts every child process through it (Hadoop's local job runner runs a
//! `chmod` per file it writes).
//!
//! Ferry freezes the cgroup itself before CRIU runs; when the freeze
//! caught a process inside a vfork, it thaws the container, waits for that
//! child to exec or exit (usually a millisecond or two) and freezes again,
//! for at most [`VFORK_PATIENCE`]. A child still sharing its parent's
//! memory (kcmp KCMP_VM) has not exec'd yet: that is how a vfork in flight
//! shows from outside.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::unistd::Pid;

use super::cgroup::ContainerCgroup;
use crate::error::{Error, Result};

/// How long a checkpoint waits for the container's vforks to finish
/// before it gives up (the container runs on).
pub const VFORK_PATIENCE: Duration = Duration::from_secs(2);

/// How often a vfork child is looked at while the container runs.
const POLL: Duration = Duration::from_millis(1);

/// What freezes and thaws the container: its cgroup (a seam for tests).
pub trait Freezer {
    fn freeze(&self) -> Result<()>;
    fn thaw(&self) -> Result<()>;
}

impl Freezer for ContainerCgroup {
    fn freeze(&self) -> Result<()> {
        ContainerCgroup::freeze(self)
    }

    fn thaw(&self) -> Result<()> {
        ContainerCgroup::thaw(self)
    }
}

/// A process of the tree waiting on its vfork child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vfork {
    pub parent: Pid,
    pub child: Pid,
}

impl Vfork {
    /// Whether the child still shares its parent's memory (has neither
    /// exec'd nor exited).
    fn pending(&self) -> bool {
        same_vm(self.parent, self.child)
    }
}

/// Freezes the container so that no process of the tree rooted at `init`
/// is inside a vfork, waiting at most `patience` for vforks to end. On
/// failure the container is left thawed, as it was.
pub fn freeze_dumpable(freezer: &dyn Freezer, init: Pid, patience: Duration) -> Result<()> {
    let start = Instant::now();
    loop {
        freezer.freeze()?;
        let vforks = find_vforks(init);
        if vforks.is_empty() {
            return Ok(());
        }
        freezer.thaw()?;
        for v in vforks {
            while v.pending() {
                if start.elapsed() >= patience {
                    return Err(Error::InVfork {
                        parent: v.parent,
                        child: v.child,
                        waited: Some(start.elapsed()),
                    });
                }
                std::thread::sleep(POLL);
            }
        }
    }
}

/// The processes of the tree rooted at `init` waiting on a vfork child,
/// looked at while the tree is frozen (or paused). A task gone meanwhile
/// is skipped: what cannot be read here CRIU reports.
pub fn find_vforks(init: Pid) -> Vec<Vfork> {
    let mut found = Vec::new();
    let mut todo = vec![init];
    while let Some(pid) = todo.pop() {
        for child in children(pid) {
            if same_vm(pid, child) {
                found.push(Vfork { parent: pid, child });
            }
            todo.push(child);
        }
    }
    found
}

/// The children of every thread of `pid` (/proc/PID/task/TID/children,
/// which CRIU needs too: CONFIG_PROC_CHILDREN).
fn children(pid: Pid) -> Vec<Pid> {
    let tasks = Path::new("/proc").join(pid.to_string()).join("task");
    let Ok(threads) = fs::read_dir(&tasks) else {
        return Vec::new();
    };
    threads
        .filter_map(|t| fs::read_to_string(t.ok()?.path().join("children")).ok())
        .flat_map(|list| {
            list.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .map(Pid::from_raw)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// kcmp(2) KCMP_VM: whether two tasks share one memory map. Not in libc.
const KCMP_VM: libc::c_int = 1;

fn same_vm(a: Pid, b: Pid) -> bool {
    // SAFETY: kcmp takes two pids, a type and two unused integers; it
    // reads nothing from this process's memory.
    let r = unsafe {
        libc::syscall(
            libc::SYS_kcmp,
            a.as_raw(),
            b.as_raw(),
            KCMP_VM,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    r == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::sync::mpsc;

    /// Records what was asked of the freezer.
    #[derive(Default)]
    struct Calls(RefCell<Vec<&'static str>>);

    impl Freezer for Calls {
        fn freeze(&self) -> Result<()> {
            self.0.borrow_mut().push("freeze");
            Ok(())
        }
        fn thaw(&self) -> Result<()> {
            self.0.borrow_mut().push("thaw");
            Ok(())
        }
    }

    /// A child of this test process, made by clone(CLONE_VM | CLONE_VFORK)
    /// on a thread of its own (suspended until the child exits, as a vfork
    /// parent is), which sleeps `sleep` before exiting. Returns the thread
    /// that made it and the child's pid.
    fn vfork_child(sleep: Duration) -> (std::thread::JoinHandle<()>, Pid) {
        let (tx, rx) = mpsc::channel();
        let parent = std::thread::spawn(move || {
            let mut stack = vec![0u8; 64 * 1024];
            let tid = nix::unistd::gettid();
            tx.send(tid).unwrap();
            // SAFETY: the child runs on its own stack and only sleeps
            // (nanosleep) and returns; this thread waits for it to exit.
            let child = unsafe {
                nix::sched::clone(
                    Box::new(move || {
                        std::thread::sleep(sleep);
                        0
                    }),
                    &mut stack,
                    nix::sched::CloneFlags::CLONE_VM | nix::sched::CloneFlags::CLONE_VFORK,
                    Some(libc::SIGCHLD),
                )
            }
            .unwrap();
            nix::sys::wait::waitpid(child, None).unwrap();
        });
        let tid = rx.recv().unwrap();
        // The child shows in its parent thread's children once cloned.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let list =
                fs::read_to_string(format!("/proc/{}/task/{tid}/children", std::process::id()))
                    .unwrap_or_default();
            if let Some(c) = list.split_whitespace().next() {
                return (parent, Pid::from_raw(c.parse().unwrap()));
            }
            assert!(Instant::now() < deadline, "the vfork child never showed");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn a_vfork_in_flight_is_waited_for_within_the_patience() {
        let me = Pid::this();
        let (parent, child) = vfork_child(Duration::from_millis(300));
        // (Other tests' posix_spawn children may show too, briefly.)
        let found = find_vforks(me);
        assert!(
            found.contains(&Vfork { parent: me, child }),
            "{found:?} lacks {child}"
        );

        let calls = Calls::default();
        let t = Instant::now();
        freeze_dumpable(&calls, me, Duration::from_secs(10)).unwrap();
        // Only once the child exited: it slept 300 ms from its clone.
        assert!(
            t.elapsed() >= Duration::from_millis(150),
            "{:?}",
            t.elapsed()
        );
        assert!(!same_vm(me, child));
        let calls = calls.0.into_inner();
        assert_eq!(calls.first(), Some(&"freeze"));
        assert_eq!(calls.last(), Some(&"freeze"));
        assert!(calls.contains(&"thaw"), "{calls:?}");
        parent.join().unwrap();

        // One longer than the patience: given up on, thawed. (One test:
        // vforks of this process would show in another test's look.)
        let (parent, child) = vfork_child(Duration::from_millis(1500));
        let calls = Calls::default();
        let err = freeze_dumpable(&calls, me, Duration::from_millis(200)).unwrap_err();
        match &err {
            Error::InVfork {
                child: c, waited, ..
            } => {
                assert_eq!(*c, child);
                assert!(waited.unwrap() >= Duration::from_millis(200));
            }
            e => panic!("{e:?}"),
        }
        assert!(err.to_string().contains(&child.to_string()), "{err}");
        assert_eq!(calls.0.into_inner().last(), Some(&"thaw"));
        parent.join().unwrap();
    }

    #[test]
    fn a_tree_without_vfork_freezes_once() {
        let mut sleeper = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let pid = Pid::from_raw(sleeper.id() as i32);
        let calls = Calls::default();
        freeze_dumpable(&calls, pid, Duration::from_secs(1)).unwrap();
        assert_eq!(calls.0.into_inner(), vec!["freeze"]);
        sleeper.kill().unwrap();
        sleeper.wait().unwrap();
    }
}
