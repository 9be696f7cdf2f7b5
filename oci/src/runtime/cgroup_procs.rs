//! What the guardian of a post-copy restore (`criu_rpc::lazy::Guardian`)
//! kills if the agent dies: the container's `cgroup.procs` in every
//! mounted hierarchy.
//!
//! The restored tasks are in the container's cgroup from their fork: criu
//! is moved there before the restore (runc's criuApplyCgroups, see
//! `cr.rs`), and whatever CRIU's cgroup mode places below it is a
//! sub-cgroup, which the guardian walks too. Every hierarchy is listed, not
//! one: a task is in all of them, so one listing that still works (a v1
//! controller unmounted meanwhile, say) is enough, and cgroup2's
//! `cgroup.kill` beside its `cgroup.procs` kills the whole subtree at once.

use std::path::{Component, Path, PathBuf};

use super::cgroup::ContainerCgroup;
use super::spec::Bundle;
use crate::error::{Error, Result};

/// The `cgroup.procs` file of `cgroup` in each mounted hierarchy (the
/// directories need not exist yet). The host's root cgroup is refused: a
/// guardian would kill every process of the machine.
pub fn procs_files(cgroup: &ContainerCgroup) -> Result<Vec<PathBuf>> {
    if !cgroup
        .path
        .components()
        .any(|c| matches!(c, Component::Normal(_)))
    {
        return Err(Error::Cgroup {
            op: "guarding a post-copy restore in",
            path: cgroup.path.clone(),
            source: "it is the root cgroup, which holds every process of the host".into(),
        });
    }
    let files: Vec<PathBuf> = cgroup
        .paths()
        .into_values()
        .map(|dir| dir.join("cgroup.procs"))
        .collect();
    if files.is_empty() {
        return Err(Error::Cgroup {
            op: "guarding a post-copy restore in",
            path: cgroup.path.clone(),
            source: "no cgroup hierarchy is mounted (/proc/self/mountinfo)".into(),
        });
    }
    Ok(files)
}

/// [`procs_files`] of the cgroup that a container restored from `bundle`
/// as `id` gets (the spec's `linux.cgroupsPath`, as `ferry restore`
/// resolves it).
pub fn bundle_procs_files(bundle: &Path, id: &str) -> Result<Vec<PathBuf>> {
    let b = Bundle::load(bundle)?;
    procs_files(&ContainerCgroup::of_spec(&b.spec, id, false)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_hierarchy_and_never_the_root() {
        let c = ContainerCgroup::new(Some(Path::new("/ferry/c1")), "c1", false).unwrap();
        let files = procs_files(&c).unwrap();
        assert_eq!(files.len(), c.paths().len());
        for f in &files {
            assert!(f.ends_with("ferry/c1/cgroup.procs"), "{f:?}");
        }
        let root = ContainerCgroup::new(Some(Path::new("/")), "c1", false).unwrap();
        let e = procs_files(&root).unwrap_err();
        assert!(crate::error::chain(&e).contains("root cgroup"), "{e}");
    }

    #[test]
    fn from_a_bundle_as_restore_resolves_it() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("rootfs")).unwrap();
        let mut spec: serde_json::Value =
            serde_json::from_str(&super::super::spec::default_spec_text(None)).unwrap();
        spec["linux"]["cgroupsPath"] = "/agent-a/c7".into();
        std::fs::write(tmp.path().join("config.json"), spec.to_string()).unwrap();
        let files = bundle_procs_files(tmp.path(), "c7").unwrap();
        assert!(!files.is_empty());
        assert!(files.iter().all(|f| f.ends_with("agent-a/c7/cgroup.procs")));
        spec["linux"].as_object_mut().unwrap().remove("cgroupsPath");
        std::fs::write(tmp.path().join("config.json"), spec.to_string()).unwrap();
        let files = bundle_procs_files(tmp.path(), "c7").unwrap();
        assert!(files.iter().all(|f| f.ends_with("c7/cgroup.procs")));
    }
}
