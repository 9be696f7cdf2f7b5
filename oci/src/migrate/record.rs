//! The record of a move on its source: which `ferry migrate` process moves
//! the container (its pid and start time), to where, and how far it got.
//!
//! It lives in the move's scratch dir (`ROOT/outgoing/ID/move.json`, or
//! `@outgoing` under a dockerd's runtime root) and goes with it. A `ferry
//! migrate` killed with no chance to clean up (SIGKILL, the OOM killer)
//! leaves it behind, with the container frozen, its tasks stopped, its
//! network locked and its TCP sockets in repair mode. `ferry resume ID`
//! reads it ([`recover`]) to tell whether bringing the container back is
//! safe: not while the move runs, and not once the destination was told to
//! run its copy (two copies would run).

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{io, Error, Result};
use crate::runtime::{state, Container, Status};

/// Where a Ferry state root keeps the scratch dirs of its moves.
pub(super) const OUTGOING: &str = "outgoing";
/// The same under dockerd's runtime root, out of the container id space.
pub(super) const DOCKER_OUTGOING: &str = "@outgoing";
/// The record's file in a move's scratch dir.
const FILE: &str = "move.json";

/// How far a move got, as far as its source is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Pre-flight: nothing is frozen yet.
    Preflight,
    /// Frozen and dumped leave-stopped (or about to be): the destination
    /// has not been told to run its copy, so the source may resume.
    Frozen,
    /// The destination was told to run its copy: resuming the source could
    /// make two copies run.
    Committed,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Preflight => "pre-flight",
            Phase::Frozen => "frozen",
            Phase::Committed => "committed",
        })
    }
}

/// A move of container `id` by process `pid` to `to`, at `phase`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoveRecord {
    pub id: String,
    /// The `ferry migrate` process, in the host's pid namespace (as the
    /// container's state has its init).
    pub pid: i32,
    /// Its start time (field 22 of /proc/PID/stat): the pid is only that
    /// process's while this matches (pid reuse).
    pub start_time: u64,
    pub to: SocketAddr,
    pub phase: Phase,
    /// The move's scratch dir, which holds the record.
    #[serde(skip)]
    dir: PathBuf,
}

impl MoveRecord {
    /// Records that this process moves container `id` to `to`, at `phase`,
    /// in the move's scratch dir `dir` (which must exist).
    pub fn write(dir: &Path, id: &str, to: SocketAddr, phase: Phase) -> Result<MoveRecord> {
        let pid = std::process::id() as i32;
        let start_time = state::start_time(pid).ok_or_else(|| Error::Io {
            op: "reading this process's start time from",
            path: PathBuf::from("/proc/self/stat"),
            source: std::io::ErrorKind::NotFound.into(),
        })?;
        let r = MoveRecord {
            id: id.to_string(),
            pid,
            start_time,
            to,
            phase,
            dir: dir.to_path_buf(),
        };
        r.save()?;
        Ok(r)
    }

    /// The move got to `phase`; recorded before the step it names is taken.
    pub fn set_phase(&mut self, phase: Phase) -> Result<()> {
        self.phase = phase;
        self.save()
    }

    /// Written to a temporary file renamed over the record: a reader sees
    /// the old phase or the new one, never half a file. Not synced: the
    /// record matters only while the machine stays up (a reboot ends the
    /// frozen tasks with it), and the Committed write is inside the move's
    /// downtime.
    fn save(&self) -> Result<()> {
        let path = self.dir.join(FILE);
        let tmp = self.dir.join(format!(".{FILE}.tmp"));
        let json = serde_json::to_vec_pretty(self).map_err(|source| Error::Json {
            path: path.clone(),
            source,
        })?;
        std::fs::write(&tmp, json).map_err(io("writing", &tmp))?;
        std::fs::rename(&tmp, &path).map_err(io("renaming into place", &path))
    }

    /// The record of a move of container `id` of `root` (a Ferry state
    /// root or a dockerd's runtime root), if there is one.
    pub fn load(root: &Path, id: &str) -> Result<Option<MoveRecord>> {
        state::validate_id(id)?;
        for scratch in [OUTGOING, DOCKER_OUTGOING] {
            let dir = root.join(scratch).join(id);
            let path = dir.join(FILE);
            let text = match std::fs::read(&path) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io("reading", &path)(e)),
            };
            let r: MoveRecord =
                serde_json::from_slice(&text).map_err(|source| Error::Json { path, source })?;
            return Ok(Some(MoveRecord { dir, ..r }));
        }
        Ok(None)
    }

    /// Whether the `ferry migrate` that wrote this still runs.
    pub fn is_alive(&self) -> bool {
        state::process_alive(self.pid, self.start_time)
    }

    /// The move's scratch dir.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Removes the move's scratch dir (the record, CRIU's images), and the
    /// dir of scratch dirs once empty, as the move itself does at its end.
    pub fn remove(&self) -> Result<()> {
        std::fs::remove_dir_all(&self.dir).map_err(io("removing", &self.dir))?;
        if let Some(scratch) = self.dir.parent() {
            let _ = std::fs::remove_dir(scratch);
        }
        Ok(())
    }
}

/// What [`recover`] did about a move whose `ferry migrate` died.
#[derive(Debug, Clone)]
pub enum Recovery {
    /// It died before anything froze: its record is gone, the container
    /// was not touched.
    Forgotten(MoveRecord),
    /// It died with the container frozen: network lock off, TCP repair
    /// off, cgroup thawed, tasks continued; its scratch dir is gone.
    Resumed(MoveRecord),
}

/// `ferry resume ID` of a container a `ferry migrate` may have left
/// frozen: `None` when no move of it is recorded (a plain unpause is the
/// caller's). A live move, one that told the destination to run its copy
/// (unless `force`), and tasks still held by a CRIU of the dead move are
/// refused, the container untouched.
pub fn recover(root: &Path, id: &str, force: bool) -> Result<Option<Recovery>> {
    let Some(record) = MoveRecord::load(root, id)? else {
        return Ok(None);
    };
    if record.is_alive() {
        return Err(Error::MoveInProgress {
            id: id.to_string(),
            pid: record.pid,
            to: record.to,
        });
    }
    match record.phase {
        Phase::Preflight => {
            record.remove()?;
            return Ok(Some(Recovery::Forgotten(record)));
        }
        Phase::Committed if !force => {
            return Err(Error::MoveCommitted {
                id: id.to_string(),
                pid: record.pid,
                to: record.to,
            })
        }
        Phase::Frozen | Phase::Committed => {}
    }
    {
        // Locked while looked at: a dump and a resume take the same lock.
        let c = match Container::load(root, id) {
            Ok(c) => c,
            Err(e @ Error::NoSuchContainer { .. }) => {
                // Deleted since: only the dead move's scratch dir is left.
                record.remove()?;
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        // The dead migrate's criu is not its child's child any more, but
        // it may still be dumping (it runs on after its client died, and
        // resumes the tasks itself if the dump fails): its tasks are not
        // to be touched under it.
        if let Some(tracer) = c.pids()?.into_iter().find_map(tracer_of) {
            return Err(Error::MoveStillDumping {
                id: id.to_string(),
                tracer,
            });
        }
        // Not frozen: the move died before its freeze (the dump freezes
        // the cgroup first, and a failed dump leaves it frozen), so there
        // is nothing to undo.
        if c.status() == Status::Running {
            record.remove()?;
            return Ok(Some(Recovery::Forgotten(record)));
        }
    }
    super::source::resume(root, id)?;
    record.remove()?;
    Ok(Some(Recovery::Resumed(record)))
}

/// The pid of the process that ptraces `pid` (CRIU seizes the tasks it
/// dumps), if any.
fn tracer_of(pid: nix::unistd::Pid) -> Option<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("TracerPid:"))?
        .trim()
        .parse()
        .ok()
        .filter(|t| *t != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn to() -> SocketAddr {
        "10.66.0.2:7878".parse().unwrap()
    }

    #[test]
    fn a_record_is_written_found_and_moved_on() {
        let root = tempfile::tempdir().unwrap();
        assert_eq!(MoveRecord::load(root.path(), "c1").unwrap(), None);
        let dir = root.path().join(OUTGOING).join("c1");
        std::fs::create_dir_all(&dir).unwrap();
        let mut r = MoveRecord::write(&dir, "c1", to(), Phase::Preflight).unwrap();
        assert!(r.is_alive(), "this process writes it and runs");
        r.set_phase(Phase::Frozen).unwrap();
        let found = MoveRecord::load(root.path(), "c1").unwrap().unwrap();
        assert_eq!(found, r);
        assert_eq!(found.phase, Phase::Frozen);
        assert_eq!(found.dir(), dir);
        let text = std::fs::read_to_string(dir.join(FILE)).unwrap();
        assert!(text.contains("\"frozen\""), "{text}");
        assert!(!dir.join(format!(".{FILE}.tmp")).exists());
        r.remove().unwrap();
        assert!(!root.path().join(OUTGOING).exists());
        assert_eq!(MoveRecord::load(root.path(), "c1").unwrap(), None);
    }

    #[test]
    fn a_docker_move_is_found_under_its_own_scratch_dir() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join(DOCKER_OUTGOING).join("abc");
        std::fs::create_dir_all(&dir).unwrap();
        MoveRecord::write(&dir, "abc", to(), Phase::Committed).unwrap();
        let found = MoveRecord::load(root.path(), "abc").unwrap().unwrap();
        assert_eq!(found.phase, Phase::Committed);
        assert_eq!(found.to, to());
    }

    #[test]
    fn a_dead_or_reused_pid_is_not_alive() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        let start_time = state::start_time(pid).unwrap();
        child.wait().unwrap();
        let r = MoveRecord {
            id: "c1".into(),
            pid,
            start_time,
            to: to(),
            phase: Phase::Frozen,
            dir: PathBuf::new(),
        };
        assert!(!r.is_alive(), "a reaped process");
        let me = std::process::id() as i32;
        let reused = MoveRecord {
            pid: me,
            start_time: state::start_time(me).unwrap() + 1,
            ..r
        };
        assert!(!reused.is_alive(), "a pid now another process's");
    }

    #[test]
    fn a_bad_id_is_refused_before_any_path_is_made() {
        let root = tempfile::tempdir().unwrap();
        assert!(matches!(
            MoveRecord::load(root.path(), "../x"),
            Err(Error::InvalidId { .. })
        ));
    }
}
