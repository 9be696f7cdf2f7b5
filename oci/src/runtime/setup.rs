//! The one way a container comes to exist on this host, for `create`,
//! `restore` and the migration agent's restore alike: the id checked, the
//! bundle loaded, the state dir made, Ferry's network attached when the
//! spec asks for an address, the cgroup, the console socket connected, and
//! the records written once ([`Setup::state`], [`Setup::oci_state`]).
//!
//! A [`Setup`] owns what it has made so far (state dir, network namespace
//! and veth, cgroup, the network lock, the container's init) and undoes all
//! of it when dropped, unless [`Setup::commit`] turned it into a
//! [`Container`]: a failure at any step, an early `?` included, leaves
//! nothing behind. That is runc's rule for `create` and `restore`
//! (libcontainer's `destroy` on every failed start or restore: the state
//! dir, the cgroups and the processes go).

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag};
use nix::unistd::Pid;

use super::cgroup::ContainerCgroup;
use super::container::{now_rfc3339, Container};
use super::hooks::OciState;
use super::spec::Bundle;
use super::state::{self, State, StateDir};
use crate::error::Result;
use crate::network::ContainerNet;

/// A container being set up; undone on drop unless committed.
#[derive(Debug)]
pub struct Setup {
    pub id: String,
    /// The bundle, its spec's network namespace pointed at Ferry's own
    /// when it made one.
    pub bundle: Bundle,
    /// The container's config.json.
    pub config: PathBuf,
    /// `None` only once committed (or while dropping).
    dir: Option<StateDir>,
    pub cgroup: ContainerCgroup,
    /// Ferry's network for the container (`org.ferry.network.address`).
    pub net: Option<ContainerNet>,
    /// The console socket, connected (runc's `--console-socket`).
    pub console: Option<UnixStream>,
    /// The cgroup was made (a task was put in it): destroyed on failure.
    /// Not before: a `cgroupsPath` may name a cgroup that someone else
    /// made.
    cgroup_made: bool,
    /// The container's init, killed on failure.
    pid: Option<Pid>,
    /// The network namespace Ferry locked (`criu_lock`), unlocked on
    /// failure.
    locked: Option<PathBuf>,
}

impl Setup {
    /// Checks the id, loads the bundle, makes the state dir (which fails if
    /// the id is taken), and attaches Ferry's network if the spec asks for
    /// an address (the spec then joins that namespace, which CRIU treats
    /// as external, as runc's `extRootNetNS`).
    pub fn begin(root: &Path, id: &str, bundle_dir: &Path, systemd_cgroup: bool) -> Result<Setup> {
        state::validate_id(id)?;
        let bundle = Bundle::load(bundle_dir)?;
        let config = bundle.dir.join(super::spec::CONFIG);
        let address = super::net::requested(&bundle.spec, &config)?;
        // Computed before anything is made: it makes nothing itself.
        let cgroup = ContainerCgroup::of_spec(&bundle.spec, id, systemd_cgroup)?;
        let dir = StateDir::create(root, id)?;
        let mut setup = Setup {
            id: id.to_string(),
            bundle,
            config,
            dir: Some(dir),
            cgroup,
            net: None,
            console: None,
            cgroup_made: false,
            pid: None,
            locked: None,
        };
        if let Some(a) = address {
            let n = super::net::attach(setup.dir(), id, a)?;
            let netns = n.netns.clone();
            setup.net = Some(n);
            super::net::use_netns(&mut setup.bundle.spec, &netns)?;
        }
        Ok(setup)
    }

    /// The container's state dir.
    pub fn dir(&self) -> &Path {
        &self.state_dir().dir
    }

    pub fn state_dir(&self) -> &StateDir {
        self.dir
            .as_ref()
            .expect("a setup has its state dir until committed")
    }

    /// Connects to the console socket at `path` (runc's --console-socket:
    /// the pty master goes over it, [`super::console::send_master`]).
    pub fn connect_console(&mut self, path: &Path) -> Result<()> {
        self.console = Some(super::console::connect(path)?);
        Ok(())
    }

    /// Records that the cgroup exists now (a task was put in it).
    pub fn cgroup_made(&mut self) {
        self.cgroup_made = true;
    }

    /// Records the container's init: killed if the set-up fails.
    pub fn set_pid(&mut self, pid: Pid) {
        self.pid = Some(pid);
    }

    /// Locks the network namespace `netns` as CRIU locks one it restores
    /// (`criu_lock::add`) until [`Setup::unlock`]; unlocked on failure.
    pub fn lock(&mut self, netns: PathBuf) -> Result<()> {
        crate::network::criu_lock::add(&netns)?;
        self.locked = Some(netns);
        Ok(())
    }

    /// Takes the lock of [`Setup::lock`] off, if it is on.
    pub fn unlock(&mut self) -> Result<()> {
        match self.locked.take() {
            Some(ns) => crate::network::criu_lock::remove_own(&ns),
            None => Ok(()),
        }
    }

    /// Whether the lock of [`Setup::lock`] is still on.
    pub fn is_locked(&self) -> bool {
        self.locked.is_some()
    }

    /// The spec's annotations, as state.json and the OCI state carry them.
    fn annotations(&self) -> std::collections::BTreeMap<String, String> {
        self.bundle
            .spec
            .annotations()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect()
    }

    /// The runtime-spec state the hooks of a container being made get.
    pub fn oci_state(&self, status: &str, pid: Pid) -> OciState {
        OciState {
            oci_version: self.bundle.spec.version().clone(),
            id: self.id.clone(),
            status: status.into(),
            pid: pid.as_raw(),
            bundle: self.bundle.dir.to_string_lossy().into_owned(),
            annotations: self.annotations(),
        }
    }

    /// Ferry's record of the container: `pid` its init (0 until known),
    /// `started` once the user's process runs (a restored one does),
    /// `restored` when a restore stands in for `create`.
    pub fn state(&self, pid: Pid, started: bool, restored: bool) -> State {
        State {
            id: self.id.clone(),
            pid: pid.as_raw(),
            start_time: if pid.as_raw() > 0 {
                state::start_time(pid.as_raw()).unwrap_or(0)
            } else {
                0
            },
            bundle: self.bundle.dir.clone(),
            rootfs: self.bundle.rootfs.clone(),
            created: now_rfc3339(),
            annotations: self.annotations(),
            cgroup: self.cgroup.clone(),
            started,
            config: self.config.clone(),
            restored,
            net: self.net.clone(),
            owns_rootfs_mount: false,
            owned_dir: None,
            oci_version: self.bundle.spec.version().clone(),
        }
    }

    /// Writes state.json (still undone on failure: the dir goes).
    pub fn save(&self, state: &State) -> Result<()> {
        self.state_dir().save(state)
    }

    /// The container exists, as `state` (saved before, [`Setup::save`]):
    /// nothing is undone any more.
    pub fn commit(mut self, state: State) -> Container {
        let dir = self.dir.take().expect("not committed twice");
        // Everything made now belongs to the container (its `delete`).
        self.cgroup_made = false;
        self.pid = None;
        self.locked = None;
        self.net = None;
        Container { dir, state }
    }
}

/// What a killed process left of a container it was setting up from the
/// bundle at `bundle_dir`: a state dir with no state file (never
/// committed), the cgroup and Ferry's network made for it (what [`Setup`]'s
/// drop would have undone). A committed container is `delete`'s and left
/// alone; so is a state dir another process still sets up (its lock).
pub fn remove_unfinished(root: &Path, id: &str, bundle_dir: &Path) -> Result<()> {
    state::validate_id(id)?;
    let dir = root.join(id);
    if !dir.exists() || dir.join(state::STATE_FILE).exists() {
        return Ok(());
    }
    let Some(_lock) = state::try_lock(&dir)? else {
        return Ok(());
    };
    let bundle = Bundle::load(bundle_dir)?;
    ContainerCgroup::of_spec(&bundle.spec, id, false)?.destroy()?;
    let config = bundle.dir.join(super::spec::CONFIG);
    if let Some(address) = super::net::requested(&bundle.spec, &config)? {
        let net = ContainerNet {
            netns: dir.join("netns"),
            host_if: super::net::host_if(id),
            address,
        };
        if let Err(e) = net.detach() {
            tracing::warn!(id, error = %crate::error::chain(&e), "removing the network of a container whose setup was cut");
        }
    }
    std::fs::remove_dir_all(&dir).map_err(crate::error::io("removing", &dir))
}

impl Drop for Setup {
    fn drop(&mut self) {
        let Some(dir) = self.dir.take() else {
            return;
        };
        // The init only: the cgroup may be shared (a `cgroupsPath` naming
        // someone's), and the init of a new pid namespace takes the rest.
        if let Some(pid) = self.pid {
            let _ = kill(pid, Signal::SIGKILL);
            // Reaped here when it is our child (or, as subreaper, our
            // grandchild); otherwise by its reaper: either way gone from
            // /proc before its cgroup can be removed.
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                let _ = waitpid(pid, Some(WaitPidFlag::WNOHANG));
                if !Path::new(&format!("/proc/{pid}")).exists() || Instant::now() >= deadline {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        if let Err(e) = self.unlock() {
            tracing::warn!(id = self.id, error = %crate::error::chain(&e), "unlocking the network of a container that failed to come up");
        }
        if self.cgroup_made {
            if let Err(e) = self.cgroup.destroy() {
                tracing::warn!(id = self.id, error = %crate::error::chain(&e), "removing the cgroup of a container that failed to come up");
            }
        }
        if let Some(n) = &self.net {
            if let Err(e) = n.detach() {
                tracing::warn!(id = self.id, error = %crate::error::chain(&e), "removing the network of a container that failed to come up");
            }
        }
        let path = dir.dir.clone();
        if let Err(e) = dir.remove() {
            tracing::warn!(id = self.id, error = %crate::error::chain(&e), dir = %path.display(), "removing the state dir of a container that failed to come up");
        }
    }
}
