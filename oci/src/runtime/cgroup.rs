//! A container's cgroups, through libcgroups.
//!
//! libcgroups manages the v1 controllers (legacy and hybrid hosts) or the
//! unified hierarchy (v2 hosts). On a hybrid host runc also places the
//! container in the cgroup2 hierarchy mounted beside the v1 controllers and
//! in the named `name=systemd` hierarchy; libcgroups does not, so this file
//! does, finding those mounts in /proc/self/mountinfo.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use libcgroups::common::{
    create_cgroup_manager, AnyCgroupManager, CgroupConfig, CgroupManager, ControllerOpt,
    FreezerState,
};
use nix::unistd::Pid;
use oci_spec::runtime::LinuxResources;
use serde::{Deserialize, Serialize};

use super::resources;
use crate::criu_plan::{hierarchy_of, hierarchy_root_mounts, parse_mountinfo};
use crate::error::{Error, Result};

/// A container's place in the cgroup hierarchies.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ContainerCgroup {
    /// The path inside each hierarchy, e.g. `/ferry/c1`.
    pub path: PathBuf,
    /// The directories above the container's own that did not exist when
    /// it was made (`/ferry` of `/ferry/c1` in each hierarchy, when no
    /// container had used that parent yet): made for it, so removed with
    /// it once empty. runc leaves them; an agent's `--cgroup-parent` would
    /// otherwise stay on the host after its last container left.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub made: Vec<PathBuf>,
}

fn cg_err<E: Into<Box<dyn std::error::Error + Send + Sync>>>(
    op: &'static str,
    path: &Path,
) -> impl FnOnce(E) -> Error {
    let path = path.to_path_buf();
    move |e| Error::Cgroup {
        op,
        path,
        source: e.into(),
    }
}

/// The extra hierarchies of a hybrid host: (name, mountpoint) of cgroup2
/// ("unified") and of named v1 hierarchies ("name=systemd"), when libcgroups'
/// v1 manager is the one in charge.
fn extra_hierarchies() -> Vec<(String, PathBuf)> {
    let Ok(text) = fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mounts = parse_mountinfo(&text);
    let has_v1 = mounts.iter().any(|m| m.fstype == "cgroup");
    if !has_v1 {
        return Vec::new();
    }
    mounts
        .into_iter()
        .filter(|m| m.root == "/")
        .filter_map(|m| {
            let h = hierarchy_of(&m)?;
            if h.is_empty() {
                Some(("unified".to_string(), PathBuf::from(m.mountpoint)))
            } else if h.starts_with("name=") {
                Some((h, PathBuf::from(m.mountpoint)))
            } else {
                None
            }
        })
        // The first mount of each (see `paths`).
        .fold(Vec::new(), |mut out: Vec<(String, PathBuf)>, (h, p)| {
            if !out.iter().any(|(seen, _)| *seen == h) {
                out.push((h, p));
            }
            out
        })
}

/// Whether libcgroups manages v1 controllers here (legacy and hybrid
/// hosts), where runc's fs driver is the model.
fn is_v1() -> bool {
    !matches!(
        libcgroups::common::get_cgroup_setup(),
        Ok(libcgroups::common::CgroupSetup::Unified)
    )
}

/// rmdir `dir` after its sub-directories, depth first, retrying while the
/// kernel still counts exiting tasks (EBUSY), as runc's RemovePath does.
fn remove_tree(dir: &Path) -> Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(cg_err("listing", dir)(e)),
    };
    for e in entries.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            remove_tree(&e.path())?;
        }
    }
    let mut delay = std::time::Duration::from_millis(10);
    for attempt in 0.. {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && attempt < 8 => {
                std::thread::sleep(delay);
                delay *= 2;
            }
            Err(e) => return Err(cg_err("removing", dir)(e)),
        }
    }
    unreachable!("the loop returns")
}

/// Every cgroup hierarchy's mountpoint, by hierarchy (`unified` for
/// cgroup2).
fn hierarchy_roots() -> BTreeMap<String, PathBuf> {
    let mut out = BTreeMap::new();
    if let Ok(text) = fs::read_to_string("/proc/self/mountinfo") {
        for (h, mountpoint) in hierarchy_root_mounts(&text) {
            let name = if h.is_empty() {
                "unified".to_string()
            } else {
                h
            };
            // The first mount of a hierarchy is the system's; later ones
            // (a CRIU cgroup yard left mounted, a bind mount) show the
            // same cgroups elsewhere.
            out.entry(name).or_insert_with(|| PathBuf::from(mountpoint));
        }
    }
    out
}

fn join_rel(base: &Path, rel: &Path) -> PathBuf {
    base.join(rel.strip_prefix("/").unwrap_or(rel))
}

/// The ancestors of cgroup `path` (not the path itself, nor the root) that
/// do not exist under any of `roots` (the hierarchies' mountpoints),
/// nearest first in each hierarchy: what creating `path` will make.
fn missing_ancestors(path: &Path, roots: &[PathBuf]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for root in roots {
        for a in path.ancestors().skip(1) {
            if !a
                .components()
                .any(|c| matches!(c, std::path::Component::Normal(_)))
            {
                break;
            }
            let dir = join_rel(root, a);
            if !dir.exists() {
                out.push(dir);
            }
        }
    }
    out
}

/// rmdir of each of `made` that holds `leaf` (nearest first), once the
/// leaf is gone; one that another container uses (or is being created
/// in) stays, as does everything above it.
fn remove_made(leaf: &Path, made: &[PathBuf]) -> Result<()> {
    for dir in made.iter().filter(|d| leaf.starts_with(d) && leaf != *d) {
        match fs::remove_dir(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) if matches!(e.raw_os_error(), Some(libc::EBUSY | libc::ENOTEMPTY)) => {
                return Ok(())
            }
            Err(e) => return Err(cg_err("removing", dir)(e)),
        }
    }
    Ok(())
}

impl ContainerCgroup {
    /// [`ContainerCgroup::new`] of the cgroupsPath `spec` gives.
    pub fn of_spec(spec: &oci_spec::runtime::Spec, id: &str, systemd: bool) -> Result<Self> {
        let path = spec
            .linux()
            .as_ref()
            .and_then(|l| l.cgroups_path().as_deref());
        ContainerCgroup::new(path, id, systemd)
    }

    /// Resolves the spec's `linux.cgroupsPath`, as runc does with cgroupfs:
    /// a path is taken from each hierarchy's root (a relative one too), and
    /// none means `/<id>`. Nothing is created yet; the parents that do not
    /// exist yet are noted (see `made`).
    pub fn new(cgroups_path: Option<&Path>, id: &str, systemd: bool) -> Result<Self> {
        if systemd {
            return Err(Error::Unsupported {
                what: "--systemd-cgroup",
                hint: "Ferry manages cgroupfs directly; drop --systemd-cgroup (dockerd: native.cgroupdriver=cgroupfs)",
            });
        }
        let path = match cgroups_path {
            Some(p) if p.is_absolute() => p.to_path_buf(),
            Some(p) if !p.as_os_str().is_empty() => Path::new("/").join(p),
            _ => PathBuf::from(format!("/{id}")),
        };
        if path
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Err(Error::Cgroup {
                op: "resolving cgroupsPath",
                path,
                source: "it contains `..`".into(),
            });
        }
        let roots: Vec<PathBuf> = hierarchy_roots().into_values().collect();
        let made = missing_ancestors(&path, &roots);
        Ok(ContainerCgroup { path, made })
    }

    fn manager(&self) -> Result<AnyCgroupManager> {
        create_cgroup_manager(CgroupConfig {
            cgroup_path: self.path.clone(),
            systemd_cgroup: false,
            container_name: String::new(),
        })
        .map_err(|e| cg_err("setting up the cgroup manager for", &self.path)(e))
    }

    /// What runc's factory checks before it creates a container in a
    /// cgroup that may already exist: a frozen one is refused (the init
    /// would hang in it), a non-empty one is used with runc's warning.
    pub fn check_unused(&self) -> Result<()> {
        if self.is_frozen() {
            return Err(Error::CgroupFrozen {
                path: self.freezer_path(),
            });
        }
        if self.freezer_path().exists() {
            let n = self.pids().map(|p| p.len()).unwrap_or(0);
            if n > 0 {
                tracing::warn!(
                    "container's cgroup is not empty: {n} process(es) found in {}",
                    self.path.display()
                );
            }
        }
        Ok(())
    }

    /// Creates the cgroups and moves `pid` in.
    pub fn create_and_add(&self, pid: Pid) -> Result<()> {
        self.add(pid)
    }

    /// Moves `pid` into every hierarchy (creating the cgroups as needed).
    pub fn add(&self, pid: Pid) -> Result<()> {
        self.manager()?
            .add_task(pid)
            .map_err(|e| cg_err("adding a task to", &self.path)(e))?;
        for (_, mnt) in extra_hierarchies() {
            let dir = join_rel(&mnt, &self.path);
            fs::create_dir_all(&dir).map_err(|e| cg_err("creating", &dir)(e))?;
            let procs = dir.join("cgroup.procs");
            fs::write(&procs, pid.as_raw().to_string())
                .map_err(|e| cg_err("writing", &procs)(e))?;
        }
        Ok(())
    }

    /// Applies a spec's linux section at create, as runc's specconv and fs
    /// driver do: the devices cgroup is set up even without
    /// linux.resources (deny all but runc's default devices), and a
    /// default device that linux.devices names by path is left to the spec.
    pub fn apply_linux(&self, linux: Option<&oci_spec::runtime::Linux>) -> Result<()> {
        let none = LinuxResources::default();
        let resources = linux.and_then(|l| l.resources().as_ref()).unwrap_or(&none);
        let paths: Vec<PathBuf> = linux
            .and_then(|l| l.devices().as_ref())
            .map(|d| d.iter().map(|d| d.path().clone()).collect())
            .unwrap_or_default();
        self.apply_with_device_paths(resources, &paths)
    }

    /// Applies the spec's resources (restore): everything, devices
    /// included.
    pub fn apply(&self, resources: &LinuxResources) -> Result<()> {
        self.apply_with_device_paths(resources, &[])
    }

    fn apply_with_device_paths(
        &self,
        resources: &LinuxResources,
        device_paths: &[PathBuf],
    ) -> Result<()> {
        if !is_v1() {
            return self.apply_libcgroups(resources);
        }
        self.refuse_unified(resources)?;
        // libcgroups does the controllers it does as runc does (memory,
        // pids, cpuset, hugetlb, net_cls/net_prio, blkio throttling); the
        // rest is runtime::resources, see there why.
        let mut rest = resources.clone();
        rest.set_devices(None);
        if let Some(cpu) = resources.cpu() {
            let mut only_cpuset = oci_spec::runtime::LinuxCpu::default();
            only_cpuset.set_cpus(cpu.cpus().clone());
            only_cpuset.set_mems(cpu.mems().clone());
            rest.set_cpu(Some(only_cpuset));
        }
        if let Some(b) = resources.block_io() {
            let mut b = b.clone();
            b.set_weight(None);
            b.set_leaf_weight(None);
            b.set_weight_device(None);
            rest.set_block_io(Some(b));
        }
        self.apply_libcgroups(&rest)?;
        if let Some(dir) = self.v1_dir("cpu") {
            resources::set_cpu(&dir, resources)?;
        }
        if let Some(dir) = self.v1_dir("blkio") {
            resources::set_blkio_weights(&dir, resources)?;
        }
        // Last: libcgroups allows its own default devices on every apply.
        let rules = resources::device_rules(
            resources.devices().as_deref().unwrap_or_default(),
            device_paths,
        )
        .map_err(|reason| Error::Cgroup {
            op: "converting linux.resources.devices for",
            path: self.path.clone(),
            source: reason.into(),
        })?;
        let dir = self.v1_dir("devices").ok_or_else(|| {
            cg_err("finding the devices hierarchy of", &self.path)(
                "the host has no v1 devices controller, which containers require",
            )
        })?;
        resources::set_devices(&dir, &rules)
    }

    /// `ferry update`: what runc's update writes (memory, cpu, cpuset,
    /// pids, blkio weight), never the devices (runc sets SkipDevices: an
    /// update must not reset rules the container relies on).
    pub fn update(&self, resources: &LinuxResources) -> Result<()> {
        if !is_v1() {
            let mut r = resources.clone();
            r.set_devices(None);
            return self.apply_libcgroups(&r);
        }
        self.refuse_unified(resources)?;
        // runc's fs driver order: cpuset, memory, cpu, pids, blkio.
        if let Some(dir) = self.v1_dir("cpuset") {
            resources::set_cpuset(&dir, resources)?;
        }
        if let Some(dir) = self.v1_dir("memory") {
            resources::set_memory(&dir, resources)?;
        }
        if let Some(dir) = self.v1_dir("cpu") {
            resources::set_cpu(&dir, resources)?;
        }
        if let Some(dir) = self.v1_dir("pids") {
            resources::set_pids(&dir, resources)?;
        }
        if let Some(dir) = self.v1_dir("blkio") {
            resources::set_blkio_weights(&dir, resources)?;
        }
        Ok(())
    }

    /// runc's validator: cgroup v2 keys cannot be honoured on v1.
    fn refuse_unified(&self, r: &LinuxResources) -> Result<()> {
        if r.unified().as_ref().is_some_and(|u| !u.is_empty()) {
            return Err(Error::Cgroup {
                op: "applying linux.resources.unified to",
                path: self.path.clone(),
                source: "invalid configuration: cannot use unified on cgroup v1".into(),
            });
        }
        Ok(())
    }

    fn apply_libcgroups(&self, resources: &LinuxResources) -> Result<()> {
        self.manager()?
            .apply(&ControllerOpt {
                resources,
                disable_oom_killer: resources
                    .memory()
                    .as_ref()
                    .and_then(|m| m.disable_oom_killer())
                    .unwrap_or(false),
                oom_score_adj: None,
                freezer_state: None,
            })
            .map_err(|e| cg_err("applying resources to", &self.path)(e))
    }

    /// The container's directory in the v1 hierarchy of controller `ctrl`.
    fn v1_dir(&self, ctrl: &str) -> Option<PathBuf> {
        self.paths()
            .into_iter()
            .find(|(h, _)| h.split(',').any(|c| c == ctrl))
            .map(|(_, p)| p)
    }

    pub fn freeze(&self) -> Result<()> {
        self.manager()?
            .freeze(FreezerState::Frozen)
            .map_err(|e| cg_err("freezing", &self.path)(e))
    }

    pub fn thaw(&self) -> Result<()> {
        self.manager()?
            .freeze(FreezerState::Thawed)
            .map_err(|e| cg_err("thawing", &self.path)(e))
    }

    /// Whether the freezer says frozen.
    pub fn is_frozen(&self) -> bool {
        let p = self.freezer_path();
        fs::read_to_string(p.join("freezer.state"))
            .map(|s| s.trim() == "FROZEN")
            .or_else(|_| fs::read_to_string(p.join("cgroup.freeze")).map(|s| s.trim() == "1"))
            .unwrap_or(false)
    }

    pub fn pids(&self) -> Result<Vec<Pid>> {
        match self.manager()?.get_all_pids() {
            Ok(p) => Ok(p),
            Err(e) => {
                if !self.freezer_path().exists() {
                    return Ok(Vec::new());
                }
                Err(cg_err("listing the processes of", &self.path)(e))
            }
        }
    }

    pub fn stats(&self) -> Result<libcgroups::stats::Stats> {
        self.manager()?
            .stats()
            .map_err(|e| cg_err("reading the statistics of", &self.path)(e))
    }

    /// Removes the cgroups from every hierarchy, sub-cgroups the container
    /// made included (runc's RemovePaths); fine if already gone. The
    /// processes must be dead: a cgroup dir is removed with rmdir once
    /// empty. libcgroups' remove would rmdir the top directory only.
    pub fn destroy(&self) -> Result<()> {
        if self
            .path
            .components()
            .all(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            // The root cgroup is the host's, never removed.
            return Ok(());
        }
        for (_, dir) in self.paths() {
            remove_tree(&dir)?;
            remove_made(&dir, &self.made)?;
        }
        Ok(())
    }

    /// Every hierarchy's directory for this container.
    pub fn paths(&self) -> BTreeMap<String, PathBuf> {
        hierarchy_roots()
            .into_iter()
            .map(|(h, root)| (h, join_rel(&root, &self.path)))
            .collect()
    }

    /// The container's directory in the v1 memory hierarchy, if the host
    /// has one (hybrid and legacy hosts).
    pub fn memory_v1_path(&self) -> Option<PathBuf> {
        self.paths()
            .into_iter()
            .find(|(h, _)| h.split(',').any(|c| c == "memory"))
            .map(|(_, p)| p)
    }

    /// The freezer cgroup dir (v1) or the cgroup dir (v2): what CRIU's
    /// freeze_cgroup takes.
    pub fn freezer_path(&self) -> PathBuf {
        let paths = self.paths();
        paths
            .iter()
            .find(|(h, _)| h.split(',').any(|c| c == "freezer"))
            .map(|(_, p)| p.clone())
            .or_else(|| paths.get("unified").cloned())
            .unwrap_or_else(|| join_rel(Path::new("/sys/fs/cgroup"), &self.path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_resolve_like_runc() {
        let c =
            |p: Option<&str>| ContainerCgroup::new(p.map(Path::new), "c1", false).map(|c| c.path);
        assert_eq!(c(None).unwrap(), PathBuf::from("/c1"));
        assert_eq!(
            c(Some("/docker/abc")).unwrap(),
            PathBuf::from("/docker/abc")
        );
        assert_eq!(c(Some("ferry/c1")).unwrap(), PathBuf::from("/ferry/c1"));
        assert!(c(Some("/a/../../etc")).is_err());
        let err = ContainerCgroup::new(None, "c1", true).unwrap_err();
        assert!(err.to_string().contains("--systemd-cgroup"), "{err}");
    }

    /// Only the parents missing in a hierarchy are noted as made there,
    /// and only those are removed with the container, nearest first, the
    /// removal stopping at one another container still uses.
    #[test]
    fn parents_made_for_a_container_go_with_it() {
        let t = tempfile::tempdir().unwrap();
        let (h1, h2) = (t.path().join("h1"), t.path().join("h2"));
        fs::create_dir_all(h1.join("agent")).unwrap();
        fs::create_dir_all(&h2).unwrap();
        let path = Path::new("/agent/pod/c1");
        let made = missing_ancestors(path, &[h1.clone(), h2.clone()]);
        assert_eq!(
            made,
            [h1.join("agent/pod"), h2.join("agent/pod"), h2.join("agent")]
        );

        for h in [&h1, &h2] {
            fs::create_dir_all(h.join("agent/pod/c1")).unwrap();
        }
        // A sibling under h2's pod: it and everything above stay there.
        fs::create_dir(h2.join("agent/pod/c2")).unwrap();
        for h in [&h1, &h2] {
            let leaf = h.join("agent/pod/c1");
            fs::remove_dir(&leaf).unwrap();
            remove_made(&leaf, &made).unwrap();
        }
        assert!(!h1.join("agent/pod").exists());
        assert!(h1.join("agent").exists(), "a parent that was there went");
        assert!(h2.join("agent/pod/c2").exists());
    }
}
