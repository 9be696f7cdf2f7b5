//! Restoring a container from a checkpoint: what `ferry restore` does once
//! it has the bundle, the images and a fresh container id.
//!
//! Follows runc's `Container.Restore` (libcontainer/criu_linux.go):
//! - the image directory is checked before anything is touched;
//! - missing mountpoints are created in the rootfs (CRIU does not), except
//!   under tmpfs mounts whose content is restored with them (by CRIU, or
//!   by Ferry for those it copied: [`crate::tmpfs_copy`]), resolved inside
//!   the rootfs, with bind mounts mounted meanwhile so that nested
//!   mountpoints land in their sources;
//! - the rootfs is bind-mounted on a private mountpoint, because CRIU wants
//!   a root that is a mountpoint with a parent it may pivot from;
//! - bind mounts, /dev/null for masked files and devices are mapped to
//!   their sources on this host; namespaces given by path are handed in
//!   (net, pid: `inherit_fd` under runc's keys) or joined; the container's
//!   CRIU configuration file is passed on, as for the dump;
//! - the stdio pipes recorded in descriptors.json are replaced by the
//!   caller's (so `docker start` gets the restored container's output);
//! - CRIU is moved into the container's cgroups before the request, and the
//!   runtime's hooks run at CRIU's notifies ([`RestoreHooks`]).

use std::fs;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use criu_rpc::{
    CgroupMode, CgroupRoot, Criu, HandlerError, ImageDirs, InheritPassed, Notify,
    RestoreOptions as CriuRestoreOptions, Swrk,
};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::unistd::Pid;
use oci_spec::runtime::Spec;

use crate::cgroup_yard::CgroupYard;
use crate::checkpoint::{CGROUP_BINDS, DESCRIPTORS};
use crate::criu_plan;
use crate::error::{io, Error, Result};
use crate::mount::StateTmpfs;
use crate::runtime::securejoin;

pub const RESTORE_LOG: &str = "restore.log";

/// `ferry restore`'s options, as runc names them.
#[derive(Debug, Default)]
pub struct RestoreOptions {
    pub image_path: PathBuf,
    pub work_path: Option<PathBuf>,
    pub tcp_established: bool,
    /// Restore established TCP connections closed (CRIU's `tcp_close`):
    /// a container whose address changed (docker's default bridge on
    /// another host) cannot have them back.
    pub tcp_close: bool,
    pub ext_unix_sk: bool,
    pub shell_job: bool,
    pub file_locks: bool,
    pub auto_dedup: bool,
    /// Post-copy: pages come from a lazy-pages daemon listening in the work
    /// directory.
    pub lazy_pages: bool,
    /// Default: soft, as runc.
    pub manage_cgroups_mode: Option<CgroupMode>,
    pub lsm_profile: Option<String>,
    pub lsm_mount_context: Option<String>,
    /// The restored init becomes criu's child, not the caller's (CRIU's
    /// `rst_sibling` off): for a long-lived caller that never waits for its
    /// containers (the migration agent). CRIU then reaps the root task of
    /// a failed restore itself (cr-restore.c kills and waits for it; as a
    /// sibling it would stay the caller's zombie), and a restored one is
    /// reparented to the nearest subreaper or init when criu exits. By
    /// default it is the caller's child, as runc restores (RstSibling), so
    /// that a foreground restore and containerd's shim can wait for it.
    pub criu_parent: bool,
    /// The restored tasks stay stopped until SIGCONT: a migration's
    /// destination runs its copy only once the source said it will never
    /// resume its own (migrate::destination).
    pub leave_stopped: bool,
}

/// Where the container is restored.
#[derive(Debug)]
pub struct Destination<'a> {
    pub id: &'a str,
    pub spec: &'a Spec,
    /// The rootfs as the host sees it.
    pub rootfs: &'a Path,
    /// A directory of the container's own (its state dir), for CRIU's root
    /// mountpoint.
    pub state_dir: &'a Path,
    /// What stands in for the checkpointed stdio pipes: the restored
    /// container's fds 0-2 (runc passes its own stdio).
    pub stdio: [Option<OwnedFd>; 3],
}

/// The runtime's part of a restore, called at the right moments.
pub trait RestoreHooks {
    /// criu runs but has not started restoring: move it into the
    /// container's cgroups and apply their limits (runc's criuApplyCgroups).
    fn criu_started(&mut self, criu: Pid) -> Result<()>;
    /// The root task exists in its namespaces: run the createRuntime and
    /// prestart hooks (runc does it at this notify).
    fn setup_namespaces(&mut self, pid: Pid) -> Result<()>;
    /// The tree is restored, not yet resumed: record the new init pid.
    fn restored(&mut self, pid: Pid) -> Result<()>;
    /// The container had a console: hand its pty master to the console
    /// socket.
    fn console(&mut self, master: OwnedFd) -> Result<()>;
}

/// What a restore produced.
#[derive(Debug, Clone)]
pub struct Restored {
    pub pid: Pid,
    pub log: PathBuf,
    pub duration: Duration,
}

/// Refuses what is not a sound image directory before anything else
/// happens: inventory.img must be there, every image must carry a magic
/// CRIU writes and frame into whole entries up to its end, and the images
/// CRIU reads first (inventory, pstree, core, ids, mm, pagemap, fdinfo,
/// files) must decode ([`criu_rpc::image::check_dir`]). A truncated or
/// overwritten image is named with the offset where it breaks.
pub fn check_image_dir(dir: &Path) -> Result<()> {
    criu_rpc::image::check_dir(dir).map_err(|e| match e {
        criu_rpc::Error::NotAnImageDir { path } => Error::NotAnImageDir { path },
        e => Error::CorruptImage(e),
    })
}

/// A mountpoint to create before the restore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mountpoint {
    /// The destination, as config.json writes it.
    pub dest: PathBuf,
    /// A bind of a file needs a file to mount on.
    pub file: bool,
    /// A bind mount's source: mounted there for a moment, so that the
    /// mountpoints of mounts nested in it are created in it.
    pub bind: Option<PathBuf>,
}

/// Mount destinations to create before the restore: everything but what
/// lies under a tmpfs (CRIU restores tmpfs content) and cgroup mounts
/// (they appear with /sys/fs/cgroup). runc: prepareCriuRestoreMounts.
pub fn mountpoints_to_create(spec: &Spec) -> Vec<Mountpoint> {
    let mounts = spec.mounts().as_deref().unwrap_or_default();
    let tmpfs: Vec<&Path> = mounts
        .iter()
        .filter(|m| m.typ().as_deref() == Some("tmpfs"))
        .map(|m| m.destination().as_path())
        .collect();
    mounts
        .iter()
        .filter(|m| m.typ().as_deref() != Some("cgroup"))
        .filter(|m| {
            !tmpfs
                .iter()
                .any(|t| m.destination() != *t && m.destination().starts_with(t))
        })
        .map(|m| {
            let bind = criu_plan::is_bind(m).then(|| m.source().clone()).flatten();
            Mountpoint {
                dest: m.destination().clone(),
                file: bind.as_ref().is_some_and(|s| s.is_file()),
                bind,
            }
        })
        .collect()
}

/// Bind mounts made on the host while the mountpoints are created, taken
/// down (last first, detached) when dropped: CRIU must find the rootfs as
/// the container's mounts left it, not with these on it.
struct TransientBinds<'a> {
    rootfs: &'a Path,
    /// Container paths, resolved.
    mounted: Vec<PathBuf>,
}

impl Drop for TransientBinds<'_> {
    fn drop(&mut self) {
        for dest in self.mounted.iter().rev() {
            // runc: WithProcfd + MNT_DETACH; EINVAL (not a mount point any
            // more) is not worth a word.
            match securejoin::open_in_root(self.rootfs, dest) {
                Ok(fd) => match umount2(&securejoin::proc_fd_path(&fd), MntFlags::MNT_DETACH) {
                    Ok(()) | Err(nix::errno::Errno::EINVAL) => {}
                    Err(e) => tracing::warn!(
                        path = %dest.display(),
                        error = %e,
                        "unmounting a bind mounted to create nested mountpoints"
                    ),
                },
                Err(e) => tracing::warn!(
                    path = %dest.display(),
                    error = %e,
                    "reopening a bind mounted to create nested mountpoints"
                ),
            }
        }
    }
}

/// Creates the missing mountpoints in the rootfs (CRIU does not), each
/// resolved inside the rootfs as the container's init resolved it. A bind
/// mount is mounted on its mountpoint until all are created, so that a
/// mount nested in it (`/test` then `/test/for/nested`) gets its mountpoint
/// in the bind's source, where the container had it (runc does the same,
/// runc#2748).
fn create_mountpoints(spec: &Spec, rootfs: &Path) -> Result<()> {
    let mut binds = TransientBinds {
        rootfs,
        mounted: Vec::new(),
    };
    for mp in mountpoints_to_create(spec) {
        let p = securejoin::secure_join(rootfs, &mp.dest)
            .map_err(io("resolving mountpoint in the rootfs", &mp.dest))?;
        if fs::symlink_metadata(&p).is_err() {
            if mp.file {
                if let Some(parent) = p.parent() {
                    fs::create_dir_all(parent).map_err(io("creating mountpoint", parent))?;
                }
                fs::File::create(&p).map_err(io("creating mountpoint", &p))?;
            } else {
                fs::create_dir_all(&p).map_err(io("creating mountpoint", &p))?;
            }
        }
        if let Some(src) = &mp.bind {
            let dest = securejoin::container_path(rootfs, &p);
            let fd = securejoin::open_in_root(rootfs, &dest)
                .map_err(io("opening mountpoint in the rootfs", &p))?;
            mount(
                Some(src.as_path()),
                &securejoin::proc_fd_path(&fd),
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(|e| Error::Io {
                op: "bind-mounting (to create the mountpoints nested in it) on",
                path: p.clone(),
                source: e.into(),
            })?;
            binds.mounted.push(dest);
        }
    }
    Ok(())
}

/// The empty directory, in the container's state dir, that its masked
/// directories are bound from (criu_plan::MASKED_DIR_KEY); read-only to
/// all but root, and never written.
const MASKED_EMPTY_DIR: &str = "masked-empty";

fn masked_empty_dir(state_dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    let p = state_dir.join(MASKED_EMPTY_DIR);
    match fs::DirBuilder::new().mode(0o555).create(&p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(io("creating", &p)(e)),
    }
}

/// The tmpfs mounts a restore binds at the container's `cgroup` mounts
/// that were dumped as external ([`criu_plan::cgroup_tmpfs_mounts`]): as
/// the init makes them (mode 755, nosuid, nodev, noexec), with the same
/// directories for CRIU to mount the cgroup binds on.
fn cgroup_tmpfs_mounts(
    image_path: &Path,
    state_dir: &Path,
    made: &mut StateTmpfs,
) -> Result<Vec<criu_rpc::ExtMount>> {
    let file = image_path.join(crate::checkpoint::CGROUP_TMPFS);
    if !file.exists() {
        return Ok(Vec::new());
    }
    let tmpfs: Vec<criu_plan::CgroupTmpfs> = read_json(&file)?;
    // Names, never paths: the file came with the images.
    if let Some(bad) = tmpfs
        .iter()
        .flat_map(|t| &t.dirs)
        .find(|d| d.contains('/') || *d == ".." || *d == "." || d.is_empty())
    {
        return Err(Error::InvalidArgument {
            what: file.display().to_string(),
            reason: format!("{bad:?} is not a directory name"),
        });
    }
    let mut ext = Vec::new();
    for (i, t) in tmpfs.iter().enumerate() {
        let at = state_dir.join(format!("cgroup-tmpfs-{i}"));
        made.mount(
            "tmpfs",
            &at,
            criu_plan::CgroupTmpfs::FLAGS,
            criu_plan::CgroupTmpfs::DATA,
        )?;
        for d in &t.dirs {
            let p = at.join(d);
            fs::create_dir(&p).map_err(io("creating", &p))?;
        }
        ext.push(criu_rpc::ExtMount {
            key: t.key(),
            value: at.to_string_lossy().into_owned(),
        });
    }
    Ok(ext)
}

/// The rootfs bind-mounted where CRIU wants its root; unmounted on drop.
struct CriuRoot(PathBuf);

impl CriuRoot {
    fn mount(rootfs: &Path, state_dir: &Path) -> Result<CriuRoot> {
        let root = state_dir.join("criu-root");
        fs::create_dir_all(&root).map_err(io("creating", &root))?;
        mount(
            Some(rootfs),
            &root,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(|e| Error::Io {
            op: "bind-mounting the rootfs for CRIU on",
            path: root.clone(),
            source: e.into(),
        })?;
        Ok(CriuRoot(root))
    }
}

impl Drop for CriuRoot {
    fn drop(&mut self) {
        let _ = umount2(&self.0, MntFlags::MNT_DETACH);
        let _ = fs::remove_dir(&self.0);
    }
}

/// The checkpointed stdio: pipes get the caller's new fds (runc hands
/// `pipe:[...]` descriptors back with inherit_fd), and so do the host files
/// the checkpoint declared external (`file[..]`). `passed[i]` is where
/// criu got the caller's fd `i` among the fds it was started with.
fn stdio_inherits(image_dir: &Path, passed: &[Option<usize>; 3]) -> Result<Vec<InheritPassed>> {
    let p = image_dir.join(DESCRIPTORS);
    let text = match fs::read(&p) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io("reading", &p)(e)),
    };
    let fds: Vec<String> = serde_json::from_slice(&text).map_err(|source| Error::Json {
        path: p.clone(),
        source,
    })?;
    let mut out = Vec::new();
    for (i, key) in fds.into_iter().enumerate().take(3) {
        if key.contains("pipe:") || key.starts_with("file[") {
            if let Some(index) = passed[i] {
                out.push(InheritPassed { key, index });
            }
        }
    }
    Ok(out)
}

/// The RESTORE options for `dest` (no system calls); the fds criu gets
/// come from [`EarlyCriu`].
pub fn restore_options(
    dest: &Destination<'_>,
    opts: &RestoreOptions,
    dirs: ImageDirs,
    root: &Path,
) -> Result<CriuRestoreOptions> {
    let mut r = CriuRestoreOptions::new(dirs);
    let t = &mut r.tree;
    t.root = Some(root.to_path_buf());
    t.manage_cgroups = Some(opts.manage_cgroups_mode.unwrap_or(CgroupMode::Soft));
    t.notify_scripts = true;
    t.shell_job = opts.shell_job;
    t.orphan_pts_master = true;
    t.tcp_established = opts.tcp_established;
    t.tcp_close = opts.tcp_close;
    t.ext_unix_sk = opts.ext_unix_sk;
    t.file_locks = opts.file_locks;
    t.display_stats = true;
    t.lsm_profile = opts.lsm_profile.clone();
    t.config_file = criu_plan::criu_config_file(dest.spec);
    t.ext_mounts = criu_plan::restore_ext_mounts(
        dest.spec,
        &crate::checkpoint::mount_key(dest.rootfs),
        &dest.state_dir.join(MASKED_EMPTY_DIR),
    );
    r.rst_sibling = !opts.criu_parent;
    r.evasive_devices = true;
    r.lazy_pages = opts.lazy_pages;
    r.leave_stopped = opts.leave_stopped;
    r.auto_dedup = opts.auto_dedup;
    r.lsm_mount_context = opts.lsm_mount_context.clone();
    r.join_ns = criu_plan::restore_namespaces(dest.spec)?.join;
    Ok(r)
}

/// Restores the checkpoint in `opts.image_path` as `dest`; a directory
/// that is not a sound checkpoint is refused first ([`check_image_dir`]).
pub fn restore(
    criu: &Criu,
    dest: Destination<'_>,
    opts: &RestoreOptions,
    hooks: &mut dyn RestoreHooks,
) -> Result<Restored> {
    check_image_dir(&opts.image_path)?;
    restore_checked(criu, dest, opts, hooks)
}

/// [`restore`] of an image dir its caller has just checked
/// (`restore_container` checks before it makes anything): the images are
/// decoded once, inside the downtime of a move.
pub(crate) fn restore_checked(
    criu: &Criu,
    mut dest: Destination<'_>,
    opts: &RestoreOptions,
    hooks: &mut dyn RestoreHooks,
) -> Result<Restored> {
    let fresh = FreshNetns::of_images(&opts.image_path)?;
    let stdio = std::mem::take(&mut dest.stdio);
    EarlyCriu::start(criu, dest.spec, stdio, fresh, hooks)?.restore(dest, opts, hooks)
}

/// Whether a restore hands CRIU a new network namespace for the one the
/// checkpoint dumped as external because it looked new
/// ([`crate::checkpoint::FRESH_NETNS`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FreshNetns {
    /// The images are there and say (`None`: it was dumped whole).
    Known(Option<crate::network::fresh::Fresh>),
    /// Not yet known (the images are on their way): one is made in case,
    /// when the spec gives the container a network namespace of its own.
    Unknown,
}

impl FreshNetns {
    pub fn of_images(images: &Path) -> Result<FreshNetns> {
        let file = images.join(crate::checkpoint::FRESH_NETNS);
        Ok(FreshNetns::Known(match file.exists() {
            true => Some(read_json(&file)?),
            false => None,
        }))
    }
}

/// criu started for a restore ahead of its request (a move's destination
/// starts it before the source freezes, so that none of this is in the
/// downtime): running, moved into the container's cgroups with their
/// limits applied (runc's criuApplyCgroups; the first cgroup attach may
/// wait an RCU grace period), holding every fd the restored tree may be
/// handed: the caller's stdio, the namespaces the spec gives by path, a
/// new network namespace. Which of them the tree gets, and under which
/// keys, the images say when they are there ([`EarlyCriu::restore`]).
/// Dropped unused, criu is killed.
#[derive(Debug)]
pub struct EarlyCriu {
    swrk: Swrk,
    /// criu's /proc/PID/cgroup once placed: the container's cgroups.
    placed: String,
    /// Where each stdio fd is among criu's fds.
    stdio: [Option<usize>; 3],
    /// The namespaces by path: CRIU's key, where among criu's fds.
    namespaces: Vec<(&'static str, usize)>,
    /// A new network namespace: where among criu's fds, Ferry's handle on
    /// it (to bring `lo` up once the images say it was), what it was made
    /// as.
    fresh_netns: Option<(usize, OwnedFd, crate::network::fresh::Fresh)>,
    /// What the images said of it when criu started, if they were there.
    fresh: FreshNetns,
}

impl EarlyCriu {
    /// Starts criu for a restore of a container with `spec` and places it.
    pub fn start(
        criu: &Criu,
        spec: &Spec,
        stdio: [Option<OwnedFd>; 3],
        fresh: FreshNetns,
        hooks: &mut dyn RestoreHooks,
    ) -> Result<EarlyCriu> {
        let mut fds: Vec<OwnedFd> = Vec::new();
        let mut place = |fd: OwnedFd| {
            fds.push(fd);
            fds.len() - 1
        };
        let stdio = stdio.map(|fd| fd.map(&mut place));
        let mut namespaces = Vec::new();
        for (key, path) in criu_plan::restore_namespaces(spec)?.inherit {
            let fd = fs::File::open(&path).map_err(|source| Error::Io {
                op: "opening the namespace to restore into (it must exist)",
                path: path.clone(),
                source,
            })?;
            namespaces.push((key, place(fd.into())));
        }
        // The spec names a namespace to restore into: that one, always.
        let given = namespaces.iter().any(|(k, _)| *k == criu_plan::NET_NS_KEY);
        let wanted = match fresh {
            _ if given => None,
            FreshNetns::Known(f) => f,
            FreshNetns::Unknown => criu_plan::own_netns(spec)
                .then_some(crate::network::fresh::Fresh { loopback_up: false }),
        };
        let fresh_netns = match wanted {
            Some(f) => {
                let ns = crate::network::fresh::create(f)?;
                let ours = ns.try_clone().map_err(|source| Error::Io {
                    op: "duplicating the new network namespace's fd",
                    path: PathBuf::new(),
                    source,
                })?;
                Some((place(ns), ours, f))
            }
            None => None,
        };
        let passed: Vec<std::os::fd::BorrowedFd<'_>> = fds.iter().map(|f| f.as_fd()).collect();
        let swrk = criu.spawn(&passed)?;
        hooks.criu_started(swrk.pid())?;
        // runc (criuApplyCgroups): the cgroups criu now runs in are the
        // container's; they become CRIU's roots and the targets of the
        // cgroup bind mounts.
        let cg = PathBuf::from(format!("/proc/{}/cgroup", swrk.pid()));
        let placed = fs::read_to_string(&cg).map_err(io("reading", &cg))?;
        Ok(EarlyCriu {
            swrk,
            placed,
            stdio,
            namespaces,
            fresh_netns,
            fresh,
        })
    }

    /// Restores the checkpoint in `opts.image_path` (checked by the
    /// caller) as `dest` (whose stdio was given to [`EarlyCriu::start`]).
    pub fn restore(
        self,
        dest: Destination<'_>,
        opts: &RestoreOptions,
        hooks: &mut dyn RestoreHooks,
    ) -> Result<Restored> {
        let EarlyCriu {
            swrk,
            placed,
            stdio,
            namespaces,
            fresh_netns,
            fresh,
        } = self;
        let (dirs, log_dir) =
            crate::checkpoint::open_dirs(&opts.image_path, opts.work_path.as_deref(), RESTORE_LOG)?;
        // Where CRIU would put its own yard (its work dir).
        let yard = CgroupYard::make(&log_dir)?;
        create_mountpoints(dest.spec, dest.rootfs)?;
        masked_empty_dir(dest.state_dir)?;
        let root = CriuRoot::mount(dest.rootfs, dest.state_dir)?;
        let mut ropts = restore_options(&dest, opts, dirs, &root.0)?;
        // Unless the caller chose a mode: tasks that all sat in the
        // container's own cgroup are left where criu is (see
        // criu_plan::cgroups_flat), which keeps CRIU's own cgroup attach,
        // and the RCU grace period it waits, out of the restore.
        let cgroup_img = opts.image_path.join("cgroup.img");
        if opts.manage_cgroups_mode.is_none() && cgroup_img.exists() {
            let decoded = criu_rpc::image::decode_file(&cgroup_img).map_err(Error::CorruptImage)?;
            if criu_plan::cgroups_flat(&decoded) {
                ropts.tree.manage_cgroups = Some(CgroupMode::Ignore);
            }
        }
        ropts.inherit_passed = stdio_inherits(&opts.image_path, &stdio)?;
        ropts
            .inherit_passed
            .extend(namespaces.iter().map(|(key, index)| InheritPassed {
                key: key.to_string(),
                index: *index,
            }));
        // Dumped as external because it looked new: a new one, as it was.
        let fresh = match fresh {
            FreshNetns::Unknown => FreshNetns::of_images(&opts.image_path)?,
            known => known,
        };
        if let FreshNetns::Known(Some(fresh)) = fresh {
            // Dumped unlocked (checkpoint::prepare): nothing to unlock.
            ropts.tree.network_lock = Some(criu_rpc::NetworkLock::Skip);
            let given = namespaces.iter().any(|(k, _)| *k == criu_plan::NET_NS_KEY);
            match &fresh_netns {
                // The spec names a namespace to restore into: that one.
                _ if given => {}
                Some((index, ns, made)) => {
                    if *made != fresh {
                        crate::network::fresh::complete(ns.as_fd(), fresh)?;
                    }
                    ropts.inherit_passed.push(InheritPassed {
                        key: criu_plan::NET_NS_KEY.to_string(),
                        index: *index,
                    });
                }
                None => {
                    return Err(Error::InvalidArgument {
                        what: opts.image_path.display().to_string(),
                        reason: "the checkpoint's network namespace was new, but the spec gives \
                                 the container none of its own to make anew"
                            .into(),
                    })
                }
            }
        }
        ropts.tree.cgroup_yard = yard.as_ref().map(|y| y.path().to_path_buf());
        // Detached once the restore is done: the container's binds keep them.
        let mut state_tmpfs = StateTmpfs::default();
        let ext = cgroup_tmpfs_mounts(&opts.image_path, dest.state_dir, &mut state_tmpfs)?;
        ropts.tree.ext_mounts.extend(ext);
        let ext = crate::tmpfs_copy::restore(&opts.image_path, dest.state_dir, &mut state_tmpfs)?;
        ropts.tree.ext_mounts.extend(ext);
        ropts.tree.cg_root = cgroup_roots(&placed);
        let binds_file = opts.image_path.join(CGROUP_BINDS);
        if binds_file.exists() {
            let binds: Vec<criu_plan::CgroupBind> = read_json(&binds_file)?;
            let mi = Path::new("/proc/self/mountinfo");
            let host = fs::read_to_string(mi).map_err(io("reading", mi))?;
            ropts
                .tree
                .ext_mounts
                .extend(criu_plan::restore_cgroup_binds(&binds, &host, &placed)?);
        }
        let mut handler = |n: Notify| -> Result<(), HandlerError> {
            match n {
                Notify::SetupNamespaces { pid } => hooks.setup_namespaces(pid)?,
                Notify::PostRestore { pid } => hooks.restored(pid)?,
                Notify::OrphanPtsMaster { master } => hooks.console(master)?,
                _ => {}
            }
            Ok(())
        };
        let start = Instant::now();
        let restored = swrk.restore(&ropts, &mut handler)?;
        let duration = start.elapsed();
        drop(yard);
        drop(state_tmpfs);
        drop(root);
        Ok(Restored {
            pid: restored.pid,
            log: log_dir.join(RESTORE_LOG),
            duration,
        })
    }
}

fn read_json<T: serde::de::DeserializeOwned>(p: &Path) -> Result<T> {
    let text = fs::read(p).map_err(io("reading", p))?;
    serde_json::from_slice(&text).map_err(|source| Error::Json {
        path: p.to_path_buf(),
        source,
    })
}

/// CRIU's cgroup roots from a placed process's /proc/PID/cgroup: one per
/// v1 controller, and the cgroup2 path as the default for the rest.
pub fn cgroup_roots(proc_cgroup: &str) -> Vec<CgroupRoot> {
    let mut out = Vec::new();
    for (hierarchy, path) in criu_plan::parse_proc_cgroup(proc_cgroup) {
        if hierarchy.is_empty() {
            out.push(CgroupRoot {
                controller: None,
                path: path.into(),
            });
        } else {
            out.extend(hierarchy.split(',').map(|c| CgroupRoot {
                controller: Some(c.to_string()),
                path: PathBuf::from(&path),
            }));
        }
    }
    out
}

/// The caller's stdio, duplicated, for [`Destination::stdio`].
pub fn own_stdio() -> Result<[Option<OwnedFd>; 3]> {
    let dup = |fd: std::os::fd::BorrowedFd<'_>| fd.try_clone_to_owned().ok();
    Ok([
        dup(std::io::stdin().as_fd()),
        dup(std::io::stdout().as_fd()),
        dup(std::io::stderr().as_fd()),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: &str = r#"{
        "ociVersion": "1.0.2",
        "root": {"path": "rootfs"},
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/run", "type": "tmpfs", "source": "tmpfs"},
            {"destination": "/run/secrets", "type": "bind", "source": "/srv/secrets", "options": ["rbind"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup"},
            {"destination": "/data", "type": "bind", "source": "/srv/data", "options": ["rbind"]}
        ],
        "linux": {"namespaces": [{"type": "network", "path": "/run/netns/c1"}], "maskedPaths": ["/proc/kcore"]}
    }"#;

    #[test]
    fn mountpoints_skip_tmpfs_content_and_cgroup() {
        let spec: Spec = serde_json::from_str(SPEC).unwrap();
        let got: Vec<PathBuf> = mountpoints_to_create(&spec)
            .into_iter()
            .map(|m| m.dest)
            .collect();
        assert_eq!(got, [PathBuf::from("/proc"), "/run".into(), "/data".into()]);
    }

    #[test]
    fn a_criu_parent_restore_is_no_sibling() {
        let spec: Spec = serde_json::from_str(SPEC).unwrap();
        let images = tempfile::tempdir().unwrap();
        fs::write(images.path().join(DESCRIPTORS), "[]").unwrap();
        let dest = Destination {
            id: "c2",
            spec: &spec,
            rootfs: Path::new("/x/rootfs"),
            state_dir: Path::new("/run/ferry/c2"),
            stdio: [None, None, None],
        };
        let opts = RestoreOptions {
            image_path: images.path().to_path_buf(),
            criu_parent: true,
            ..Default::default()
        };
        let dirs = ImageDirs::open(images.path()).unwrap();
        let ro = restore_options(&dest, &opts, dirs, Path::new("/r")).unwrap();
        assert!(!ro.rst_sibling);
    }

    #[test]
    fn options_map_mounts_namespaces_and_stdio() {
        let spec: Spec = serde_json::from_str(SPEC).unwrap();
        let images = tempfile::tempdir().unwrap();
        fs::write(
            images.path().join(DESCRIPTORS),
            r#"["/dev/null", "pipe:[1234]", "pipe:[1235]"]"#,
        )
        .unwrap();
        let dest = Destination {
            id: "c2",
            spec: &spec,
            rootfs: Path::new("/x/rootfs"),
            state_dir: Path::new("/run/ferry/c2"),
            stdio: [None, None, None],
        };
        let opts = RestoreOptions {
            image_path: images.path().to_path_buf(),
            tcp_established: true,
            ..Default::default()
        };
        let dirs = ImageDirs::open(images.path()).unwrap();
        let ro = restore_options(&dest, &opts, dirs, Path::new("/run/ferry/c2/criu-root")).unwrap();
        assert!(ro.rst_sibling && ro.tree.orphan_pts_master && ro.tree.tcp_established);
        let pairs: Vec<(&str, &str)> = ro
            .tree
            .ext_mounts
            .iter()
            .map(|m| (m.key.as_str(), m.value.as_str()))
            .collect();
        assert_eq!(
            pairs,
            [
                ("/run/secrets", "/srv/secrets"),
                ("/data", "/srv/data"),
                ("/dev/null", "/dev/null"),
                (criu_plan::MASKED_DIR_KEY, "/run/ferry/c2/masked-empty")
            ]
        );
        let ns = criu_plan::restore_namespaces(&spec).unwrap().inherit;
        assert_eq!(ns, [("extRootNetNS", PathBuf::from("/run/netns/c1"))]);
        // stdin was /dev/null: nothing to hand in; stdout was a pipe and
        // gets the new fd (criu got it second); stderr was a pipe but no
        // fd was given.
        let got = stdio_inherits(images.path(), &[Some(0), Some(1), None]).unwrap();
        assert_eq!(
            got,
            [InheritPassed {
                key: "pipe:[1234]".into(),
                index: 1
            }]
        );
    }

    #[test]
    fn cgroup_roots_per_controller() {
        let roots = cgroup_roots("4:memory:/n/c2\n2:cpu,cpuacct:/c2\n0::/c2\n");
        let got: Vec<(Option<&str>, &Path)> = roots
            .iter()
            .map(|r| (r.controller.as_deref(), r.path.as_path()))
            .collect();
        assert_eq!(
            got,
            [
                (Some("memory"), Path::new("/n/c2")),
                (Some("cpu"), Path::new("/c2")),
                (Some("cpuacct"), Path::new("/c2")),
                (None, Path::new("/c2")),
            ]
        );
    }

    #[test]
    fn a_directory_without_inventory_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let err = check_image_dir(d.path()).unwrap_err();
        assert!(err.to_string().contains("inventory.img"), "{err}");
    }

    /// The error and its sources, as `ferry` prints them.
    fn chain(e: Error) -> String {
        crate::error::chain(&e)
    }

    /// A CRIU image: the common word (but for inventory), the magic,
    /// entries.
    fn image(magic: u32, entries: &[&[u8]]) -> Vec<u8> {
        const INVENTORY_MAGIC: u32 = 0x5831_3116;
        let mut v = Vec::new();
        if magic != INVENTORY_MAGIC {
            v.extend_from_slice(&0x5456_4319u32.to_le_bytes());
        }
        v.extend_from_slice(&magic.to_le_bytes());
        for e in entries {
            v.extend_from_slice(&(e.len() as u32).to_le_bytes());
            v.extend_from_slice(e);
        }
        v
    }

    #[test]
    fn broken_images_are_named_with_their_offset() {
        const INVENTORY_MAGIC: u32 = 0x5831_3116;
        const CORE_MAGIC: u32 = 0x5505_3847;
        let d = tempfile::tempdir().unwrap();
        // inventory_entry { img_version: 2 }; core_entry { mtype: X86_64 }
        fs::write(
            d.path().join("inventory.img"),
            image(INVENTORY_MAGIC, &[&[0x08, 0x02]]),
        )
        .unwrap();
        fs::write(
            d.path().join("core-1.img"),
            image(CORE_MAGIC, &[&[0x08, 0x01]]),
        )
        .unwrap();
        check_image_dir(d.path()).unwrap();

        let mut cut = image(CORE_MAGIC, &[&[0x08, 0x01]]);
        cut.truncate(cut.len() - 1);
        fs::write(d.path().join("core-1.img"), &cut).unwrap();
        let err = chain(check_image_dir(d.path()).unwrap_err());
        assert!(
            err.contains("core-1.img") && err.contains("offset 8") && err.contains("truncated"),
            "{err}"
        );

        fs::write(d.path().join("core-1.img"), b"garbage!garbage!").unwrap();
        let err = chain(check_image_dir(d.path()).unwrap_err());
        assert!(
            err.contains("wrong magic") && err.contains("offset 0"),
            "{err}"
        );
    }
}
