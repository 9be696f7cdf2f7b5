//! Container state under the runtime root: `<root>/<id>/state.json`, and the
//! lock that serializes commands on one container.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use super::cgroup::ContainerCgroup;
use crate::error::{io, Error, Result};

pub const STATE_FILE: &str = "state.json";
pub const EXEC_FIFO: &str = "exec.fifo";
const LOCK_FILE: &str = "lock";

/// What Ferry records about a container; enough for every later command.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    pub id: String,
    /// The init's pid in the host's pid namespace.
    pub pid: i32,
    /// The init's start time (field 22 of /proc/PID/stat): a pid is only
    /// this container's while the start time matches (pid reuse).
    pub start_time: u64,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    /// RFC 3339.
    pub created: String,
    pub annotations: std::collections::BTreeMap<String, String>,
    pub cgroup: ContainerCgroup,
    /// Set once the init exec'd the user's process.
    pub started: bool,
    /// The config the container was created with (hooks for delete).
    pub config: PathBuf,
    /// Restored from a checkpoint when it was created (a pending restore):
    /// it already runs, and `start` has nothing left to do.
    #[serde(default)]
    pub restored: bool,
    /// The network Ferry made for it (org.ferry.network.address).
    #[serde(default)]
    pub net: Option<crate::network::ContainerNet>,
    /// The rootfs is a mount Ferry made (the overlay a migration rebuilt
    /// from its writable layer): `delete` unmounts it, as dockerd unmounts
    /// the overlays it mounted for runc.
    #[serde(default)]
    pub owns_rootfs_mount: bool,
    /// A directory Ferry made for the container, which goes with it on
    /// `delete`: where a migration received it (its bundle, images and
    /// writable layer, ROOT/incoming/ID). Kept while the container exists,
    /// whatever reads it (an export of its checkpoint reads the layer).
    #[serde(default)]
    pub owned_dir: Option<PathBuf>,
    /// The runtime-spec version of the config it was created with: the
    /// state's `ociVersion` ("the OCI specification version used when
    /// creating the container", runtime-spec's runtime.md; runc's `state`
    /// prints its config's Version). States written before this was kept
    /// read as 1.0.2, what Ferry printed for every container then.
    #[serde(default = "legacy_oci_version")]
    pub oci_version: String,
}

fn legacy_oci_version() -> String {
    "1.0.2".into()
}

/// One container's directory, locked for the lifetime of this value.
#[derive(Debug)]
pub struct StateDir {
    pub dir: PathBuf,
    _lock: Flock<File>,
}

/// Container ids: what runc accepts (no path tricks).
pub fn validate_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 1024
        && id != "."
        && id != ".."
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '+'));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidId { id: id.to_string() })
    }
}

fn lock(dir: &Path) -> Result<Flock<File>> {
    let p = dir.join(LOCK_FILE);
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&p)
        .map_err(io("opening lock", &p))?;
    Flock::lock(f, FlockArg::LockExclusive).map_err(|(_, e)| Error::Io {
        op: "locking",
        path: p.clone(),
        source: e.into(),
    })
}

/// The state dir's lock if nobody holds it (`None`: someone does).
pub fn try_lock(dir: &Path) -> Result<Option<Flock<File>>> {
    let p = dir.join(LOCK_FILE);
    let f = match OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&p)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io("opening lock", &p)(e)),
    };
    match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
        Ok(l) => Ok(Some(l)),
        Err((_, nix::Error::EWOULDBLOCK)) => Ok(None),
        Err((_, e)) => Err(Error::Io {
            op: "locking",
            path: p,
            source: e.into(),
        }),
    }
}

impl StateDir {
    /// Creates the directory of a new container; fails if it exists.
    pub fn create(root: &Path, id: &str) -> Result<StateDir> {
        validate_id(id)?;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o711)
            .create(root)
            .map_err(io("creating the state root", root))?;
        let dir = root.join(id);
        match fs::DirBuilder::new().mode(0o711).create(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(Error::ContainerExists { id: id.to_string() })
            }
            Err(e) => return Err(io("creating the container's state dir", &dir)(e)),
        }
        let l = lock(&dir)?;
        Ok(StateDir { dir, _lock: l })
    }

    /// Opens and locks an existing container's directory.
    pub fn open(root: &Path, id: &str) -> Result<StateDir> {
        validate_id(id)?;
        let dir = root.join(id);
        if !dir.join(STATE_FILE).exists() {
            return Err(Error::NoSuchContainer {
                id: id.to_string(),
                root: root.to_path_buf(),
            });
        }
        let l = lock(&dir)?;
        // Deleted while we waited for the lock?
        if !dir.join(STATE_FILE).exists() {
            return Err(Error::NoSuchContainer {
                id: id.to_string(),
                root: root.to_path_buf(),
            });
        }
        Ok(StateDir { dir, _lock: l })
    }

    pub fn load(&self) -> Result<State> {
        let p = self.dir.join(STATE_FILE);
        let text = fs::read(&p).map_err(io("reading", &p))?;
        serde_json::from_slice(&text).map_err(|source| Error::Json { path: p, source })
    }

    /// Writes state.json atomically (write then rename).
    pub fn save(&self, state: &State) -> Result<()> {
        let p = self.dir.join(STATE_FILE);
        let tmp = self.dir.join(".state.json.tmp");
        let json = serde_json::to_vec_pretty(state).map_err(|source| Error::Json {
            path: p.clone(),
            source,
        })?;
        let mut f = File::create(&tmp).map_err(io("writing", &tmp))?;
        f.write_all(&json).map_err(io("writing", &tmp))?;
        f.sync_all().map_err(io("syncing", &tmp))?;
        fs::rename(&tmp, &p).map_err(io("renaming into", &p))
    }

    pub fn fifo(&self) -> PathBuf {
        self.dir.join(EXEC_FIFO)
    }

    /// Removes the directory and everything in it.
    pub fn remove(self) -> Result<()> {
        fs::remove_dir_all(&self.dir).map_err(io("removing", &self.dir))
    }
}

/// The ids of every container under `root`.
pub fn list(root: &Path) -> Result<Vec<String>> {
    let rd = match fs::read_dir(root) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io("listing", root)(e)),
    };
    let mut ids: Vec<String> = rd
        .flatten()
        .filter(|e| e.path().join(STATE_FILE).exists())
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .collect();
    ids.sort();
    Ok(ids)
}

/// Field 22 (starttime) of /proc/PID/stat; `None` if the process is gone.
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    // rest starts at field 3 (state); starttime is field 22.
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Whether the process of `state` is still that process (and not a zombie).
pub fn alive(state: &State) -> bool {
    process_alive(state.pid, state.start_time)
}

/// Whether `pid` is still the process that started at `start_time` (field
/// 22 of /proc/PID/stat: a reused pid has another) and not a zombie.
pub fn process_alive(pid: i32, start_time: u64) -> bool {
    if pid <= 0 || self::start_time(pid) != Some(start_time) {
        return false;
    }
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let st = stat
        .rfind(')')
        .and_then(|i| stat[i + 2..].chars().next())
        .unwrap_or('X');
    !matches!(st, 'Z' | 'X')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        for ok in ["c1", "a.b-c_d+e", "0123"] {
            validate_id(ok).unwrap();
        }
        for bad in ["", ".", "..", "a/b", "../x", "a b"] {
            assert!(validate_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_state_written_before_oci_version_was_kept_reads_as_1_0_2() {
        let old = r#"{"id": "c1", "pid": 7, "start_time": 1, "bundle": "/b",
            "rootfs": "/b/rootfs", "created": "2026-11-01T00:00:00Z",
            "annotations": {}, "cgroup": {"path": "/ferry/c1"}, "started": true,
            "config": "/run/ferry/c1/config.json"}"#;
        let s: State = serde_json::from_str(old).unwrap();
        assert_eq!(s.oci_version, "1.0.2");
    }

    #[test]
    fn start_time_of_self() {
        let me = std::process::id() as i32;
        assert!(start_time(me).is_some());
        assert_eq!(start_time(-5), None);
    }
}
