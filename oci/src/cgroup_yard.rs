//! The cgroup yard Ferry hands CRIU on every dump and restore: a directory
//! of symlinks, one per cgroup hierarchy, to where the host mounts that
//! hierarchy's root.
//!
//! Without one, CRIU mounts each hierarchy itself, once per dump (a
//! detached mount per controller, collect_cgroups) and once per restore (a
//! tmpfs yard in its work dir with every hierarchy mounted in it,
//! prepare_cgroup_sfd), and unmounts them after: on a hybrid host with ten
//! hierarchies that is ~10-20 ms of a dump, all of it while the container
//! is frozen. With `cgroup_yard` set CRIU opens what the yard names and
//! mounts nothing; what it reads and writes is the same hierarchies.
//!
//! A restore of images from a host with a hierarchy this one lacks makes
//! CRIU mount that one inside the yard and leave it (cgroup.c fini_cgroup
//! unmounts only a yard of its own): [`CgroupYard`]'s drop detaches it.
//! The yard is never removed recursively: an entry is a symlink or a
//! mountpoint, and a recursive walk into a cgroup mount would remove the
//! host's empty cgroups.

use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use nix::mount::{umount2, MntFlags};

use crate::criu_plan::cgroup_yard_entries;
use crate::error::{io, Result};

/// The yard's name in CRIU's work dir (where CRIU puts its own yard).
pub const YARD_DIR: &str = ".ferry-cgroup-yard";

/// A yard of symlinks in a work dir; removed (entries first) on drop.
#[derive(Debug)]
pub struct CgroupYard {
    dir: PathBuf,
}

impl CgroupYard {
    /// Makes the yard in `work_dir` from this process's hierarchies (CRIU's
    /// swrk child has the same) and the host's mounts. `Ok(None)` when a
    /// hierarchy has no root mount here ([`cgroup_yard_entries`]): CRIU
    /// then mounts its own, as it always did.
    pub fn make(work_dir: &Path) -> Result<Option<CgroupYard>> {
        let read = |p: &str| fs::read_to_string(p).map_err(io("reading", Path::new(p)));
        let Some(entries) =
            cgroup_yard_entries(&read("/proc/self/mountinfo")?, &read("/proc/self/cgroup")?)
        else {
            return Ok(None);
        };
        let dir = work_dir.join(YARD_DIR);
        // One left by a killed run: taken down the same careful way.
        drop(CgroupYard { dir: dir.clone() });
        fs::create_dir(&dir).map_err(io("creating", &dir))?;
        let yard = CgroupYard { dir };
        for (name, target) in entries {
            let link = yard.dir.join(name);
            symlink(&target, &link).map_err(io("linking", &link))?;
        }
        Ok(Some(yard))
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for CgroupYard {
    fn drop(&mut self) {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            match e.file_type() {
                Ok(t) if t.is_symlink() => {
                    let _ = fs::remove_file(&p);
                }
                // A hierarchy CRIU mounted here itself.
                Ok(t) if t.is_dir() => {
                    let _ = umount2(&p, MntFlags::MNT_DETACH);
                    let _ = fs::remove_dir(&p);
                }
                _ => {}
            }
        }
        if let Err(e) = fs::remove_dir(&self.dir) {
            if e.kind() != ErrorKind::NotFound {
                tracing::warn!(yard = %self.dir.display(), error = %e, "cgroup yard left behind");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_yard_links_every_hierarchy_and_leaves_nothing() {
        let work = tempfile::tempdir().unwrap();
        let Some(yard) = CgroupYard::make(work.path()).unwrap() else {
            panic!("this host's hierarchies have root mounts; a yard was expected");
        };
        let own = fs::read_to_string("/proc/self/cgroup").unwrap();
        let links: Vec<_> = fs::read_dir(yard.path()).unwrap().flatten().collect();
        assert_eq!(links.len(), own.lines().count());
        for l in &links {
            // Each opens as a directory holding cgroup.procs: a hierarchy.
            assert!(l.path().join("cgroup.procs").exists(), "{:?}", l.path());
        }
        drop(yard);
        assert!(!work.path().join(YARD_DIR).exists());
    }

    #[test]
    fn a_hierarchy_criu_mounted_in_the_yard_is_detached_not_emptied() {
        // As CRIU's restore does for a hierarchy the yard lacks; a tmpfs
        // with a file stands in for the cgroup mount.
        let work = tempfile::tempdir().unwrap();
        let yard = CgroupYard::make(work.path()).unwrap().unwrap();
        let extra = yard.path().join("net_cls,net_prio");
        fs::create_dir(&extra).unwrap();
        nix::mount::mount(
            Some("none"),
            &extra,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .unwrap();
        let keep = fs::File::create(extra.join("cgroup.procs")).unwrap();
        drop(yard);
        assert!(!work.path().join(YARD_DIR).exists());
        // The mount was detached, not walked: its file was not unlinked.
        use std::os::unix::fs::MetadataExt;
        assert_eq!(keep.metadata().unwrap().nlink(), 1);
    }

    #[test]
    fn a_yard_left_by_a_killed_run_is_replaced() {
        let work = tempfile::tempdir().unwrap();
        let stale = work.path().join(YARD_DIR);
        fs::create_dir(&stale).unwrap();
        symlink("/nonexistent", stale.join("pids")).unwrap();
        let yard = CgroupYard::make(work.path()).unwrap().unwrap();
        assert_ne!(
            fs::read_link(yard.path().join("pids")).ok(),
            Some(PathBuf::from("/nonexistent"))
        );
        drop(yard);
        assert!(!stale.exists());
    }
}
