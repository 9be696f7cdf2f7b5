//! Checkpointing a running container: what `ferry checkpoint` does once it
//! has found the container.
//!
//! Follows runc's `Container.Checkpoint` (libcontainer/criu_linux.go): the
//! image directory is created 0700 (it holds the container's memory), the
//! container's rootfs is CRIU's root, bind mounts, masked files and devices
//! are external mounts (bind and device destinations named as they resolve
//! inside the rootfs, [`mount_key`]) and a namespace given by path is
//! external ([`crate::criu_plan`]), the container's CRIU configuration file
//! is passed on, CRIU freezes through the container's freezer
//! cgroup, and the container's stdio targets are recorded in
//! `descriptors.json` so that a restore can hand in new pipes for them.
//! A failed dump leaves the container running: CRIU resumes what it froze.

use std::fs;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use criu_rpc::{
    CgroupMode, Criu, DumpOptions, HandlerError, ImageDirs, LogLevel, Notify, PageServerAddr,
};
use nix::sched::CloneFlags;
use nix::unistd::Pid;
use oci_spec::runtime::Spec;

use crate::cgroup_yard::CgroupYard;
use crate::criu_plan;
use crate::error::{io, Error, Result};
use crate::runtime::securejoin;

/// runc's name for the stdio record in the image directory.
pub const DESCRIPTORS: &str = "descriptors.json";
pub const DUMP_LOG: &str = "dump.log";
/// Ferry's record of the cgroup hierarchies bind-mounted into the
/// container, for the restore to bind the new container's dirs.
pub const CGROUP_BINDS: &str = "ferry-cgroup-binds.json";
/// Ferry's record that the container's network namespace was dumped as
/// external because it looked new: the restore hands CRIU a new one.
pub const FRESH_NETNS: &str = "ferry-fresh-netns.json";
/// The `cgroup` mounts' tmpfs dumped as external mounts
/// ([`criu_plan::cgroup_tmpfs_mounts`]), for the restore to make anew.
pub const CGROUP_TMPFS: &str = "ferry-cgroup-tmpfs.json";

/// `ferry checkpoint`'s options, as runc names them.
#[derive(Debug, Default)]
pub struct CheckpointOptions {
    pub image_path: PathBuf,
    /// Where CRIU's log and scratch files go (default: the image path).
    pub work_path: Option<PathBuf>,
    pub leave_running: bool,
    /// Leave the tasks stopped (SIGSTOP) after the dump: a live migration
    /// keeps the source until the destination runs.
    pub leave_stopped: bool,
    pub tcp_established: bool,
    /// With `tcp_established`: lock the network namespace the container
    /// joined (dockerd's sandbox), which CRIU treats as external and does
    /// not lock (runc neither); a move, whose source dies here, needs it.
    pub lock_joined_netns: bool,
    pub tcp_skip_in_flight: bool,
    pub ext_unix_sk: bool,
    pub shell_job: bool,
    pub file_locks: bool,
    pub link_remap: bool,
    pub auto_dedup: bool,
    pub lazy_pages: bool,
    pub page_server: Option<PageServerAddr>,
    pub status_fd: Option<OwnedFd>,
    /// Default: soft, as runc.
    pub manage_cgroups_mode: Option<CgroupMode>,
    pub empty_ns: Option<CloneFlags>,
    pub pre_dump: bool,
    /// A previous pre-dump, relative to the image path.
    pub parent_path: Option<PathBuf>,
}

/// The running container, as checkpoint needs to know it.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub id: &'a str,
    pub init: Pid,
    pub spec: &'a Spec,
    /// The rootfs as the host sees it.
    pub rootfs: &'a Path,
    /// The container's freezer cgroup dir (v1) or cgroup dir (v2).
    pub freezer: Option<&'a Path>,
    /// Its own network namespace looks new, and is given in `spec` by its
    /// /proc path so that it is dumped as external: the restore makes a
    /// new one ([`crate::network::fresh`]), told by [`FRESH_NETNS`].
    pub fresh_netns: Option<crate::network::fresh::Fresh>,
    /// The caller freezes the container before [`Prepared::run`] and keeps
    /// it frozen until run returns: Ferry then copies the runtime's tmpfs
    /// mounts itself while CRIU dumps ([`crate::tmpfs_copy`]).
    pub frozen_by_caller: bool,
    /// The caller locks the container's network namespace itself around
    /// the dump (network::criu_lock: an external namespace, which CRIU
    /// would lock too, a second time): CRIU's lock is skipped, which also
    /// skips its unlock on restore (the restore takes the method from the
    /// inventory, criu/image.c), two iptables-restore runs on each side.
    pub network_locked_by_caller: bool,
}

/// What a checkpoint produced.
#[derive(Debug, Clone)]
pub struct Checkpointed {
    pub image_path: PathBuf,
    pub log: PathBuf,
    /// From sending the request to CRIU's answer.
    pub duration: Duration,
    /// From the network lock (tasks frozen) to the end of the dump.
    pub frozen: Option<Duration>,
}

fn write_json(p: &Path, v: &impl serde::Serialize) -> Result<()> {
    let json = serde_json::to_vec(v).map_err(|source| Error::Json {
        path: p.to_path_buf(),
        source,
    })?;
    fs::write(p, json).map_err(io("writing", p))
}

/// CRIU's directories for a checkpoint or restore: the images, and the
/// work dir (created 0700) when one is given, CRIU's log there at debug
/// level, as runc asks. Returns them with the directory that holds the log.
pub fn open_dirs(images: &Path, work: Option<&Path>, log: &str) -> Result<(ImageDirs, PathBuf)> {
    let dirs = ImageDirs::open(images)?
        .log_file(log)
        .log_level(LogLevel::Debug);
    match work {
        Some(w) => {
            private_dir(w)?;
            Ok((dirs.work_dir(w)?, w.to_path_buf()))
        }
        None => Ok((dirs, images.to_path_buf())),
    }
}

/// Creates `dir` (and parents) with mode 0700, or tightens an existing one.
pub fn private_dir(dir: &Path) -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io("creating", dir))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io("chmod 0700", dir))
}

/// The init's fds 0-2 as descriptors.json records them: runc writes the
/// link targets (`pipe:[123]`, `/dev/null`...). A file from a mount the
/// container does not have (a host `/dev/null` as stdin, say) is something
/// CRIU cannot dump ("Can't lookup mount"); Ferry declares it external as
/// `file[MNT_ID:INODE]` (CRIU's key) and records that key, so the restore
/// hands its own stdio in its place.
pub fn descriptors(init: Pid) -> Result<Vec<String>> {
    let mi = PathBuf::from(format!("/proc/{init}/mountinfo"));
    let mounts = fs::read_to_string(&mi).map_err(io("reading", &mi))?;
    let ids: Vec<&str> = mounts.lines().filter_map(|l| l.split(' ').next()).collect();
    (0..3)
        .map(|fd| {
            let p = PathBuf::from(format!("/proc/{init}/fd/{fd}"));
            let target = fs::read_link(&p)
                .map(|t| t.to_string_lossy().into_owned())
                .map_err(io("reading", &p))?;
            if !target.starts_with('/') {
                return Ok(target); // pipe:[..], socket:[..], anon_inode:..
            }
            let info = PathBuf::from(format!("/proc/{init}/fdinfo/{fd}"));
            let text = fs::read_to_string(&info).map_err(io("reading", &info))?;
            let mnt = text
                .lines()
                .find_map(|l| l.strip_prefix("mnt_id:"))
                .map(str::trim)
                .unwrap_or("");
            if ids.contains(&mnt) {
                return Ok(target);
            }
            use std::os::unix::fs::MetadataExt;
            let ino = fs::metadata(&p).map_err(io("stat of", &p))?.ino();
            let mnt: u64 = mnt.parse().unwrap_or(0);
            Ok(format!("file[{mnt:x}:{ino:x}]"))
        })
        .collect()
}

/// How a mount destination of the container rooted at `rootfs` is named to
/// CRIU: the container path it resolves to, symlinks in the rootfs followed
/// inside it (runc's addCriuDumpMount / addCriuRestoreMount use securejoin;
/// as there, a destination that cannot be resolved is named as written).
/// The init mounted it there ([`crate::runtime::init`]), so that is where
/// CRIU finds it in the container's mountinfo.
pub fn mount_key(rootfs: &Path) -> impl Fn(&Path) -> String + '_ {
    move |dest: &Path| match securejoin::secure_join(rootfs, dest) {
        Ok(host) => securejoin::container_path(rootfs, &host)
            .to_string_lossy()
            .into_owned(),
        Err(_) => criu_plan::plain_key(dest),
    }
}

/// The DUMP (or PRE_DUMP) options for `target`; pure but for the masked
/// path, mount destination and namespace look-ups it is given.
pub fn dump_options(
    target: &Target<'_>,
    opts: &mut CheckpointOptions,
    dirs: ImageDirs,
    is_file: impl Fn(&str) -> bool,
    key: criu_plan::MountKey<'_>,
    ns_inode: impl Fn(&Path) -> Result<u64>,
) -> Result<DumpOptions> {
    let mut d = DumpOptions::new(dirs, target.init);
    let t = &mut d.tree;
    t.root = Some(target.rootfs.to_path_buf());
    t.manage_cgroups = Some(opts.manage_cgroups_mode.unwrap_or(CgroupMode::Soft));
    t.notify_scripts = true;
    t.shell_job = opts.shell_job;
    // A console's master is held outside the container (runc does the same).
    t.orphan_pts_master = true;
    t.tcp_established = opts.tcp_established;
    t.ext_unix_sk = opts.ext_unix_sk;
    t.file_locks = opts.file_locks;
    t.display_stats = true;
    t.config_file = criu_plan::criu_config_file(target.spec);
    if target.network_locked_by_caller {
        t.network_lock = Some(criu_rpc::NetworkLock::Skip);
    }
    d.leave_running = opts.leave_running;
    d.leave_stopped = opts.leave_stopped;
    d.tcp_skip_in_flight = opts.tcp_skip_in_flight;
    d.link_remap = opts.link_remap;
    d.auto_dedup = opts.auto_dedup;
    d.lazy_pages = opts.lazy_pages;
    d.page_server = opts.page_server.take();
    d.status_fd = opts.status_fd.take();
    d.empty_ns = opts.empty_ns.unwrap_or(CloneFlags::empty());
    d.freeze_cgroup = target.freezer.map(Path::to_path_buf);
    if let Some(parent) = &opts.parent_path {
        // runc: a parent image implies memory tracking.
        d.parent_img = Some(parent.clone());
        d.track_mem = true;
    }
    d.tree.external = criu_plan::dump_external_namespaces(target.spec, ns_inode)?;
    if !opts.pre_dump {
        // runc: no need to describe mounts for a pre-dump.
        d.tree.ext_mounts = criu_plan::dump_ext_mounts(target.spec, is_file, key);
    }
    Ok(d)
}

/// Checkpoints `target` into `opts.image_path`.
///
/// `on_notify` sees CRIU's notifies as they come (e.g. to show progress).
/// On error the container keeps running (CRIU resumes the tasks it froze).
pub fn checkpoint(
    criu: &Criu,
    target: &Target<'_>,
    opts: CheckpointOptions,
    on_notify: &mut dyn FnMut(&Notify),
) -> Result<Checkpointed> {
    prepare(criu, target, opts)?.run(on_notify)
}

/// A checkpoint made ready: its CRIU request built from the spec and the
/// tasks' mounts and descriptors (what runc reads before it runs criu
/// too), its side files written, and `criu swrk` started and waiting.
/// Nothing is frozen or dumped yet: a caller that freezes the container
/// itself prepares first, so that none of this is frozen time. Dropped
/// unused, its criu is told to go.
pub struct Prepared {
    dump: criu_rpc::DumpOptions,
    swrk: criu_rpc::Swrk,
    pre_dump: bool,
    image_path: PathBuf,
    log: PathBuf,
    recheck: Option<NetnsRecheck>,
    /// Kept until CRIU is done with it.
    yard: Option<CgroupYard>,
    /// The tmpfs mounts Ferry copies (named external to CRIU).
    own_tmpfs: Vec<criu_plan::OwnTmpfs>,
    init: Pid,
}

/// A network namespace dumped as new ([`Target::fresh_netns`]) must still
/// look new once its tasks are frozen. It was looked at before the freeze,
/// to keep the look out of the downtime, and a process outside the
/// container with CAP_NET_ADMIN may have changed it since: it is looked at
/// again on a thread from the network-lock notify (the tasks are frozen
/// then) and the answer is waited for at post-dump, where refusing makes
/// CRIU roll back (cr-dump.c: a failed post-dump script leaves the tasks
/// alive and fails the dump) so that nothing is lost.
struct NetnsRecheck {
    id: String,
    netns: PathBuf,
    expected: crate::network::fresh::Fresh,
    look: Option<std::thread::JoinHandle<Result<Option<crate::network::fresh::Fresh>>>>,
}

impl NetnsRecheck {
    fn start(&mut self) {
        if self.look.is_none() {
            let netns = self.netns.clone();
            self.look = Some(std::thread::spawn(move || {
                crate::network::fresh::looks_new(&netns)
            }));
        }
    }

    fn verdict(&mut self) -> Result<()> {
        self.start();
        let look = self.look.take().expect("started");
        let changed = |source: Option<Box<Error>>| Error::NetnsChanged {
            id: self.id.clone(),
            netns: self.netns.clone(),
            source,
        };
        match look.join() {
            Ok(Ok(Some(f))) if f == self.expected => Ok(()),
            Ok(Ok(_)) => Err(changed(None)),
            Ok(Err(e)) => Err(changed(Some(Box::new(e)))),
            Err(_) => Err(changed(None)),
        }
    }
}

/// Prepares the checkpoint of `target` into `opts.image_path`.
pub fn prepare(criu: &Criu, target: &Target<'_>, mut opts: CheckpointOptions) -> Result<Prepared> {
    private_dir(&opts.image_path)?;
    let (dirs, log_dir) = open_dirs(&opts.image_path, opts.work_path.as_deref(), DUMP_LOG)?;
    let root = PathBuf::from(format!("/proc/{}/root", target.init));
    let is_file = |p: &str| {
        fs::metadata(root.join(p.trim_start_matches('/')))
            .map(|m| !m.is_dir())
            .unwrap_or(false)
    };
    let ns_inode = |p: &Path| -> Result<u64> {
        use std::os::unix::fs::MetadataExt;
        fs::metadata(p)
            .map(|m| m.ino())
            .map_err(io("stat of namespace", p))
    };
    let pre_dump = opts.pre_dump;
    let key = mount_key(target.rootfs);
    let mut dump = dump_options(target, &mut opts, dirs, is_file, &key, ns_inode)?;
    let mut own_tmpfs = Vec::new();
    if !pre_dump {
        let mi = PathBuf::from(format!("/proc/{}/mountinfo", target.init));
        let text = fs::read_to_string(&mi).map_err(io("reading", &mi))?;
        dump.tree
            .ext_mounts
            .extend(criu_plan::masked_dir_mounts(target.spec, &text, is_file));
        let binds = criu_plan::cgroup_binds(&text);
        dump.tree
            .ext_mounts
            .extend(binds.iter().map(|b| criu_rpc::ExtMount {
                key: b.mountpoint.clone(),
                value: b.mountpoint.clone(),
            }));
        write_json(&opts.image_path.join(CGROUP_BINDS), &binds)?;
        // The tmpfs's own entries, through the init's root: there it is
        // the top mount at `mp` (the binds are mounted on its entries).
        let tmpfs = criu_plan::cgroup_tmpfs_mounts(target.spec, &text, |mp| {
            let dir = root.join(mp.trim_start_matches('/'));
            fs::read_dir(dir)
                .ok()?
                .map(|e| {
                    let e = e.ok()?;
                    let name = e.file_name().to_str()?.to_string();
                    Some((name, e.file_type().ok()?.is_dir()))
                })
                .collect()
        });
        dump.tree
            .ext_mounts
            .extend(tmpfs.iter().map(|t| criu_rpc::ExtMount {
                key: t.mountpoint.clone(),
                value: t.key(),
            }));
        write_json(&opts.image_path.join(CGROUP_TMPFS), &tmpfs)?;
        if target.frozen_by_caller {
            own_tmpfs = criu_plan::own_tmpfs_mounts(target.spec, &text, &dump.tree.ext_mounts);
            dump.tree
                .ext_mounts
                .extend(own_tmpfs.iter().map(|t| criu_rpc::ExtMount {
                    key: t.mountpoint.clone(),
                    value: t.key(),
                }));
        }
        let fds = descriptors(target.init)?;
        dump.tree
            .external
            .extend(fds.iter().filter(|k| k.starts_with("file[")).cloned());
        write_json(&opts.image_path.join(DESCRIPTORS), &fds)?;
        if let Some(f) = &target.fresh_netns {
            write_json(&opts.image_path.join(FRESH_NETNS), f)?;
            // Nothing outside the frozen tasks can reach a namespace with
            // only `lo`: CRIU's lock (iptables-restore, run while frozen,
            // and its unlock on restore) guards nothing there.
            dump.tree.network_lock = Some(criu_rpc::NetworkLock::Skip);
        }
    }

    let recheck = match (&target.fresh_netns, pre_dump) {
        (Some(f), false) => Some(NetnsRecheck {
            id: target.id.to_string(),
            netns: PathBuf::from(format!("/proc/{}/ns/net", target.init)),
            expected: *f,
            look: None,
        }),
        _ => None,
    };
    // In CRIU's work dir, where it would mount its own hierarchies.
    let yard = CgroupYard::make(&log_dir)?;
    dump.tree.cgroup_yard = yard.as_ref().map(|y| y.path().to_path_buf());
    let swrk = criu.spawn_dump(&dump, pre_dump)?;
    Ok(Prepared {
        dump,
        swrk,
        pre_dump,
        image_path: opts.image_path.clone(),
        log: log_dir.join(DUMP_LOG),
        recheck,
        yard,
        own_tmpfs,
        init: target.init,
    })
}

impl Prepared {
    /// Dumps (CRIU freezes what is not frozen yet).
    pub fn run(self, on_notify: &mut dyn FnMut(&Notify)) -> Result<Checkpointed> {
        let Prepared {
            dump,
            swrk,
            pre_dump,
            image_path,
            log,
            mut recheck,
            yard,
            own_tmpfs,
            init,
        } = self;
        // The caller froze the container: the copies go beside CRIU's dump,
        // done by its post-dump notify (before the images are complete; an
        // error there fails the dump, which resumes the container).
        let mut copies = crate::tmpfs_copy::Capture::start(init, own_tmpfs, &image_path)?;
        let mut frozen_at: Option<Instant> = None;
        let mut handler = |n: Notify| -> Result<(), HandlerError> {
            if matches!(n, Notify::NetworkLock | Notify::PreDump) && frozen_at.is_none() {
                frozen_at = Some(Instant::now());
            }
            if matches!(n, Notify::PostDump) {
                copies.finish()?;
            }
            if let Some(r) = &mut recheck {
                match n {
                    Notify::NetworkLock => r.start(),
                    Notify::PostDump => r.verdict()?,
                    _ => {}
                }
            }
            on_notify(&n);
            Ok(())
        };
        let start = Instant::now();
        let dumped = if pre_dump {
            swrk.single_pre_dump(&dump, &mut handler)
        } else {
            swrk.dump(&dump, &mut handler)
        };
        // Joined whatever CRIU did: the container stays frozen until then.
        let copied = copies.finish();
        dumped?;
        copied?;
        let end = Instant::now();
        drop(yard);
        Ok(Checkpointed {
            image_path,
            log,
            duration: end - start,
            frozen: frozen_at.map(|t| end - t),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: &str = r#"{
        "ociVersion": "1.0.2",
        "root": {"path": "rootfs"},
        "mounts": [{"destination": "/data", "type": "bind", "source": "/srv/data", "options": ["rbind"]}],
        "linux": {
            "namespaces": [{"type": "pid"}, {"type": "network", "path": "/run/netns/c1"}],
            "maskedPaths": ["/proc/kcore"]
        }
    }"#;

    fn target(spec: &Spec) -> Target<'_> {
        Target {
            id: "c1",
            init: Pid::from_raw(4321),
            spec,
            rootfs: Path::new("/var/lib/ferry/c1/rootfs"),
            freezer: Some(Path::new("/sys/fs/cgroup/freezer/c1")),
            fresh_netns: None,
            frozen_by_caller: false,
            network_locked_by_caller: false,
        }
    }

    /// `dump_options` of `target` with every path a file, the plain
    /// mount keys and every namespace of inode `ns_inode`.
    fn plain_dump(target: &Target<'_>, opts: &mut CheckpointOptions, ns_inode: u64) -> DumpOptions {
        let dirs = ImageDirs::open(Path::new("/")).unwrap();
        dump_options(
            target,
            opts,
            dirs,
            |_| true,
            &criu_plan::plain_key,
            |_| Ok(ns_inode),
        )
        .unwrap()
    }

    #[test]
    fn dump_options_follow_runc() {
        let spec: Spec = serde_json::from_str(SPEC).unwrap();
        let mut opts = CheckpointOptions {
            tcp_established: true,
            leave_stopped: true,
            ..Default::default()
        };
        let d = plain_dump(&target(&spec), &mut opts, 77);
        assert_eq!(d.pid, Pid::from_raw(4321));
        assert_eq!(
            d.tree.root.as_deref(),
            Some(Path::new("/var/lib/ferry/c1/rootfs"))
        );
        assert_eq!(d.tree.manage_cgroups, Some(CgroupMode::Soft));
        assert!(d.tree.notify_scripts && d.tree.tcp_established && d.leave_stopped);
        assert_eq!(d.tree.external, ["net[77]:extRootNetNS"]);
        let keys: Vec<&str> = d.tree.ext_mounts.iter().map(|m| m.key.as_str()).collect();
        assert_eq!(keys, ["/data", "/proc/kcore"]);
        assert_eq!(
            d.freeze_cgroup.as_deref(),
            Some(Path::new("/sys/fs/cgroup/freezer/c1"))
        );
        // CRIU's default lock, unless the caller locks the namespace.
        assert_eq!(d.tree.network_lock, None);
        let locked = Target {
            network_locked_by_caller: true,
            ..target(&spec)
        };
        let d = plain_dump(&locked, &mut opts, 77);
        assert_eq!(d.tree.network_lock, Some(criu_rpc::NetworkLock::Skip));
    }

    #[test]
    fn pre_dump_skips_mounts_and_parent_implies_tracking() {
        let spec: Spec = serde_json::from_str(SPEC).unwrap();
        let mut opts = CheckpointOptions {
            pre_dump: true,
            parent_path: Some("../pre0".into()),
            ..Default::default()
        };
        let d = plain_dump(&target(&spec), &mut opts, 1);
        assert!(d.tree.ext_mounts.is_empty());
        assert!(d.track_mem);
        assert_eq!(d.parent_img.as_deref(), Some(Path::new("../pre0")));
    }

    #[test]
    fn the_containers_criu_config_is_passed_on() {
        let mut spec: Spec = serde_json::from_str(SPEC).unwrap();
        let dirs = || ImageDirs::open(Path::new("/")).unwrap();
        let key = &criu_plan::plain_key;
        let mut opts = CheckpointOptions::default();
        let d = dump_options(&target(&spec), &mut opts, dirs(), |_| true, key, |_| Ok(1)).unwrap();
        assert_eq!(
            d.tree.config_file.as_deref(),
            Some(Path::new("/etc/criu/runc.conf"))
        );
        spec.set_annotations(Some(
            [("org.criu.config".to_string(), "/srv/c1.conf".to_string())].into(),
        ));
        let d = dump_options(&target(&spec), &mut opts, dirs(), |_| true, key, |_| Ok(1)).unwrap();
        assert_eq!(
            d.tree.config_file.as_deref(),
            Some(Path::new("/srv/c1.conf"))
        );
    }

    #[test]
    fn mount_keys_resolve_symlinks_inside_the_rootfs() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        fs::create_dir_all(r.join("real/conf")).unwrap();
        std::os::unix::fs::symlink("/real/conf", r.join("conf")).unwrap();
        // Pointing at the host's /etc: named as the rootfs's /etc.
        std::os::unix::fs::symlink("/etc", r.join("hostetc")).unwrap();
        let key = mount_key(r);
        assert_eq!(key(Path::new("/conf")), "/real/conf");
        assert_eq!(key(Path::new("/hostetc/x")), "/etc/x");
        assert_eq!(key(Path::new("/test/for/nested")), "/test/for/nested");
    }

    #[test]
    fn image_dirs_are_private() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("a/b");
        private_dir(&d).unwrap();
        assert_eq!(
            fs::metadata(&d).unwrap().permissions().mode() & 0o777,
            0o700
        );
        fs::set_permissions(&d, fs::Permissions::from_mode(0o755)).unwrap();
        private_dir(&d).unwrap();
        assert_eq!(
            fs::metadata(&d).unwrap().permissions().mode() & 0o777,
            0o700
        );
    }
}
