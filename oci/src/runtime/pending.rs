//! Restores waiting for their container's `create`: how a container
//! comes back under a dockerd that never runs `--experimental` (which
//! alone lets `docker start --checkpoint` ask a runtime to restore).
//!
//! Whoever brings the checkpoint (the migration agent, `ferry restore
//! --docker --import`) creates the container through dockerd's Engine API,
//! which gives it its id, then records a request here under the runtime
//! root dockerd passes to the runtime, keyed by that id, and starts the
//! container. dockerd's shim then runs `ferry create ID`, which claims the
//! request (once: a later `docker restart` creates the container afresh),
//! restores instead of starting a new init, and leaves its outcome for the
//! waiting side to read. Nothing of the request is in the container's
//! config or environment.
//!
//! Layout: `ROOT/@pending/ID/` (the `@` keeps it out of the container id
//! space, see [`super::state::validate_id`]) holds `request.json`
//! (`claimed.json` once `create` took it), `outcome.json`, and usually the
//! images themselves (`images/`) and the lazy-pages work dir.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{io, Error, Result};
use crate::migrate::protocol::Failure;

const DIR: &str = "@pending";
const REQUEST: &str = "request.json";
const CLAIMED: &str = "claimed.json";
const OUTCOME: &str = "outcome.json";

/// What `create` restores from, and how.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Request {
    /// CRIU's images.
    pub images: PathBuf,
    /// Post-copy: the work dir whose `lazy-pages.socket` the waiting side
    /// serves (CRIU's restore connects there); `None` for pre-copy.
    pub lazy_work: Option<PathBuf>,
    /// The container's address changed: its established TCP connections
    /// are restored closed.
    #[serde(default)]
    pub tcp_close: bool,
    /// The restored tasks stay stopped until the migration agent continues
    /// them (once the source committed to the move).
    #[serde(default)]
    pub leave_stopped: bool,
}

/// What `create` did with the request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Outcome {
    Restored {
        pid: i32,
        restore_ms: f64,
        criu: Option<criu_rpc::stats::RestoreStats>,
    },
    Failed {
        failure: Failure,
    },
}

/// The pending restore of container `id` under runtime root `root`.
#[derive(Debug, Clone)]
pub struct Pending {
    pub dir: PathBuf,
}

impl Pending {
    /// The directory of `id`'s request (not created).
    pub fn of(root: &Path, id: &str) -> Result<Pending> {
        super::state::validate_id(id)?;
        Ok(Pending {
            dir: root.join(DIR).join(id),
        })
    }

    /// Creates the directory (0700), emptied of an earlier request.
    pub fn prepare(root: &Path, id: &str) -> Result<Pending> {
        let p = Pending::of(root, id)?;
        if p.dir.exists() {
            p.remove()?;
        }
        crate::checkpoint::private_dir(&p.dir)?;
        Ok(p)
    }

    pub fn images(&self) -> PathBuf {
        self.dir.join("images")
    }

    /// Records the request (atomically: `create` sees all of it or none).
    pub fn request(&self, r: &Request) -> Result<()> {
        write_atomic(&self.dir, REQUEST, r)
    }

    /// Takes the request, if there is one: a second `create` of the same
    /// id finds none.
    pub fn claim(root: &Path, id: &str) -> Result<Option<(Pending, Request)>> {
        let Ok(p) = Pending::of(root, id) else {
            return Ok(None);
        };
        let (from, to) = (p.dir.join(REQUEST), p.dir.join(CLAIMED));
        match fs::rename(&from, &to) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io("claiming the pending restore", &from)(e)),
        }
        let text = fs::read(&to).map_err(io("reading", &to))?;
        let r = serde_json::from_slice(&text).map_err(|source| Error::Json {
            path: to.clone(),
            source,
        })?;
        Ok(Some((p, r)))
    }

    /// `create`'s outcome, for the waiting side.
    pub fn report(&self, o: &Outcome) -> Result<()> {
        write_atomic(&self.dir, OUTCOME, o)
    }

    /// The outcome, once `create` reported one.
    pub fn outcome(&self) -> Result<Option<Outcome>> {
        let p = self.dir.join(OUTCOME);
        match fs::read(&p) {
            Ok(t) => serde_json::from_slice(&t)
                .map(Some)
                .map_err(|source| Error::Json { path: p, source }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io("reading", &p)(e)),
        }
    }

    /// The request recorded, claimed or not.
    pub fn recorded(&self) -> Option<Request> {
        [CLAIMED, REQUEST].iter().find_map(|f| {
            let t = fs::read(self.dir.join(f)).ok()?;
            serde_json::from_slice(&t).ok()
        })
    }

    /// Whether `create` took the request (restored or failed).
    pub fn claimed(&self) -> bool {
        self.dir.join(CLAIMED).exists()
    }

    /// Removes the request and everything in its directory (a tmpfs on
    /// its images first), and the `@pending` dir once empty, so that a
    /// runtime root dockerd watches holds nothing of Ferry's.
    pub fn remove(&self) -> Result<()> {
        crate::mount::detach(&self.images(), "unmounting")?;
        match fs::remove_dir_all(&self.dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("removing", &self.dir)(e)),
        }
        if let Some(parent) = self.dir.parent() {
            let _ = fs::remove_dir(parent);
        }
        Ok(())
    }

    /// The ids with a directory here (requests never claimed, or whose
    /// waiting side died).
    pub fn list(root: &Path) -> Vec<String> {
        names_in(&root.join(DIR))
    }

    /// Removes the `@pending` dir if it holds nothing (left by a process
    /// killed between making it and its request's dir, or by a removal
    /// that raced another move's).
    pub fn remove_if_empty(root: &Path) {
        let _ = fs::remove_dir(root.join(DIR));
    }
}

/// Restores container `id` from a claimed request, as `create` under
/// dockerd (`rt.at_create`), and reports the outcome for the waiting side
/// (CRIU's errno, message and log lines when it fails).
pub fn restore_claimed(
    pending: &Pending,
    req: &Request,
    root: &Path,
    id: &str,
    bundle: &Path,
    criu: &criu_rpc::Criu,
    rt: &super::cr::RestoreRuntimeOptions,
) -> Result<super::Container> {
    let start = std::time::Instant::now();
    let opts = crate::restore::RestoreOptions {
        work_path: req.lazy_work.clone(),
        lazy_pages: req.lazy_work.is_some(),
        tcp_close: req.tcp_close,
        leave_stopped: req.leave_stopped,
        // A move's received images, restored once (as the agent's own
        // restore does: see migrate::destination).
        auto_dedup: true,
        ..crate::migrate::CRIU_FLAGS.restore(req.images.clone())
    };
    let result = super::cr::restore_container(root, id, bundle, criu, &opts, rt);
    let outcome = match &result {
        Ok((_, restored)) => Outcome::Restored {
            pid: restored.pid.as_raw(),
            restore_ms: start.elapsed().as_secs_f64() * 1000.0,
            criu: criu_rpc::stats::read_restore_stats(
                req.lazy_work.as_deref().unwrap_or(&req.images),
            )
            .ok()
            .flatten(),
        },
        Err(e) => Outcome::Failed {
            failure: Failure::new(crate::migrate::protocol::Stage::Restore, e),
        },
    };
    // The restore's own result matters more than a failed report of it.
    let reported = pending.report(&outcome);
    let (c, _) = result?;
    reported?;
    Ok(c)
}

/// A container about to be created for a pending restore, by name:
/// recorded before dockerd is asked, so that whoever cleans up after an
/// agent killed between dockerd's create and the request still finds the
/// container (`ROOT/@creating/NAME`).
#[derive(Debug)]
pub struct Creating {
    path: PathBuf,
}

const CREATING: &str = "@creating";

impl Creating {
    /// Records that container `name` is being created.
    pub fn mark(root: &Path, name: &str) -> Result<Creating> {
        // docker's names: [a-zA-Z0-9][a-zA-Z0-9_.-]*, never a path.
        super::state::validate_id(name)?;
        let dir = root.join(CREATING);
        crate::checkpoint::private_dir(&dir)?;
        let path = dir.join(name);
        fs::write(&path, b"").map_err(io("writing", &path))?;
        Ok(Creating { path })
    }

    /// The container has its pending request (or is gone again): the
    /// mark goes.
    pub fn done(self) {
        let _ = fs::remove_file(&self.path);
        if let Some(dir) = self.path.parent() {
            let _ = fs::remove_dir(dir);
        }
    }

    /// The names marked under `root`.
    pub fn list(root: &Path) -> Vec<String> {
        names_in(&root.join(CREATING))
    }

    /// The mark of `name`, to clear after cleaning up.
    pub fn of(root: &Path, name: &str) -> Result<Creating> {
        super::state::validate_id(name)?;
        Ok(Creating {
            path: root.join(CREATING).join(name),
        })
    }
}

/// The names in `dir` (none when it is absent).
fn names_in(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn write_atomic(dir: &Path, name: &str, v: &impl Serialize) -> Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let path = dir.join(name);
    let json = serde_json::to_vec(v).map_err(|source| Error::Json {
        path: path.clone(),
        source,
    })?;
    fs::write(&tmp, json).map_err(io("writing", &tmp))?;
    fs::rename(&tmp, &path).map_err(io("renaming into place", &path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_claimed_once_and_its_outcome_read_back() {
        let root = tempfile::tempdir().unwrap();
        assert!(Pending::claim(root.path(), "c1").unwrap().is_none());
        let p = Pending::prepare(root.path(), "c1").unwrap();
        let r = Request {
            images: p.images(),
            lazy_work: None,
            tcp_close: false,
            leave_stopped: true,
        };
        p.request(&r).unwrap();
        let (q, got) = Pending::claim(root.path(), "c1").unwrap().unwrap();
        assert_eq!(got, r);
        assert!(q.claimed());
        assert!(Pending::claim(root.path(), "c1").unwrap().is_none());
        assert!(p.outcome().unwrap().is_none());
        p.report(&Outcome::Restored {
            pid: 42,
            restore_ms: 1.5,
            criu: None,
        })
        .unwrap();
        assert!(matches!(
            p.outcome().unwrap(),
            Some(Outcome::Restored { pid: 42, .. })
        ));
        assert_eq!(Pending::list(root.path()), vec!["c1".to_string()]);
        p.remove().unwrap();
        assert!(
            !root.path().join(DIR).exists(),
            "the @pending dir goes with its last request"
        );
    }

    #[test]
    fn ids_cannot_escape_the_pending_dir() {
        let root = tempfile::tempdir().unwrap();
        assert!(Pending::of(root.path(), "../x").is_err());
        assert!(Pending::claim(root.path(), "..").unwrap().is_none());
    }
}
