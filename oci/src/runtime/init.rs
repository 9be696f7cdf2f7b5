//! The container's root filesystem, built by its init inside the new mount
//! namespace: the spec's mounts, device nodes, pivot_root, masked and
//! read-only paths, hostname and sysctls (runc: rootfs_linux.go).
//!
//! pivot_root, never chroot: CRIU restores mount namespaces and needs a
//! real root mount (`mnt: No parent found for mountpoint` otherwise).

use std::fs;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{symlink, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::{makedev, mknod, Mode, SFlag};
use oci_spec::runtime::{LinuxDeviceType, LinuxNamespaceType, Mount, Spec};

use super::process::{Cause, StepError};
use super::securejoin;

fn fail(step: impl Into<String>, e: impl Cause) -> StepError {
    StepError::new(step, &e)
}

/// Where the container's cgroup is, for binding it at /sys/fs/cgroup.
pub struct CgroupView {
    /// (hierarchy dir name under /sys/fs/cgroup, host dir of the container)
    pub hierarchies: Vec<(String, PathBuf)>,
}

// The kernel's mount_setattr(2) ABI (linux/mount.h).
const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOSUID: u64 = 0x2;
const MOUNT_ATTR_NODEV: u64 = 0x4;
const MOUNT_ATTR_NOEXEC: u64 = 0x8;
const MOUNT_ATTR__ATIME: u64 = 0x70;
const MOUNT_ATTR_RELATIME: u64 = 0x0;
const MOUNT_ATTR_NOATIME: u64 = 0x10;
const MOUNT_ATTR_STRICTATIME: u64 = 0x20;
const MOUNT_ATTR_NODIRATIME: u64 = 0x80;
const MOUNT_ATTR_NOSYMFOLLOW: u64 = 0x0020_0000;
const AT_RECURSIVE: libc::c_uint = 0x8000;

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// Recursive mount attributes (runc's `rro`, `rnosuid`, ... options, set
/// on a mount and every mount under it with mount_setattr(2)
/// AT_RECURSIVE, which runc 1.1 applies after the mount).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RecAttr {
    pub set: u64,
    pub clr: u64,
}

impl RecAttr {
    fn is_empty(&self) -> bool {
        self.set == 0 && self.clr == 0
    }
}

/// The recursive attribute options among `opts` (runc's
/// recAttrFlags table).
pub fn parse_rec_attrs(opts: &[String]) -> RecAttr {
    let mut a = RecAttr::default();
    for o in opts {
        let (set, clr) = match o.as_str() {
            "rro" => (MOUNT_ATTR_RDONLY, 0),
            "rrw" => (0, MOUNT_ATTR_RDONLY),
            "rnosuid" => (MOUNT_ATTR_NOSUID, 0),
            "rsuid" => (0, MOUNT_ATTR_NOSUID),
            "rnodev" => (MOUNT_ATTR_NODEV, 0),
            "rdev" => (0, MOUNT_ATTR_NODEV),
            "rnoexec" => (MOUNT_ATTR_NOEXEC, 0),
            "rexec" => (0, MOUNT_ATTR_NOEXEC),
            "rnodiratime" => (MOUNT_ATTR_NODIRATIME, 0),
            "rdiratime" => (0, MOUNT_ATTR_NODIRATIME),
            "rrelatime" => (MOUNT_ATTR_RELATIME, MOUNT_ATTR__ATIME),
            "rnorelatime" => (0, MOUNT_ATTR__ATIME),
            "rnoatime" => (MOUNT_ATTR_NOATIME, MOUNT_ATTR__ATIME),
            "ratime" => (0, MOUNT_ATTR__ATIME),
            "rstrictatime" => (MOUNT_ATTR_STRICTATIME, MOUNT_ATTR__ATIME),
            "rnostrictatime" => (0, MOUNT_ATTR__ATIME),
            "rnosymfollow" => (MOUNT_ATTR_NOSYMFOLLOW, 0),
            "rsymfollow" => (0, MOUNT_ATTR_NOSYMFOLLOW),
            _ => continue,
        };
        a.set = (a.set & !clr) | set;
        a.clr = (a.clr & !set) | clr;
    }
    a
}

/// Whether `o` is one of the recursive attribute options.
fn is_rec_attr(o: &str) -> bool {
    !parse_rec_attrs(&[o.to_string()]).is_empty()
}

/// Mount flags and the leftover data string, from fstab-style options.
pub fn parse_options(opts: &[String]) -> (MsFlags, MsFlags, String) {
    let mut flags = MsFlags::empty();
    let mut propagation = MsFlags::empty();
    let mut data = Vec::new();
    for o in opts {
        let (set, clear) = match o.as_str() {
            "ro" => (MsFlags::MS_RDONLY, MsFlags::empty()),
            "rw" => (MsFlags::empty(), MsFlags::MS_RDONLY),
            "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty()),
            "suid" => (MsFlags::empty(), MsFlags::MS_NOSUID),
            "nodev" => (MsFlags::MS_NODEV, MsFlags::empty()),
            "dev" => (MsFlags::empty(), MsFlags::MS_NODEV),
            "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty()),
            "exec" => (MsFlags::empty(), MsFlags::MS_NOEXEC),
            "sync" => (MsFlags::MS_SYNCHRONOUS, MsFlags::empty()),
            "async" => (MsFlags::empty(), MsFlags::MS_SYNCHRONOUS),
            "dirsync" => (MsFlags::MS_DIRSYNC, MsFlags::empty()),
            "remount" => (MsFlags::MS_REMOUNT, MsFlags::empty()),
            "mand" => (MsFlags::MS_MANDLOCK, MsFlags::empty()),
            "nomand" => (MsFlags::empty(), MsFlags::MS_MANDLOCK),
            "atime" => (MsFlags::empty(), MsFlags::MS_NOATIME),
            "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty()),
            "diratime" => (MsFlags::empty(), MsFlags::MS_NODIRATIME),
            "nodiratime" => (MsFlags::MS_NODIRATIME, MsFlags::empty()),
            "relatime" => (MsFlags::MS_RELATIME, MsFlags::empty()),
            "norelatime" => (MsFlags::empty(), MsFlags::MS_RELATIME),
            "strictatime" => (MsFlags::MS_STRICTATIME, MsFlags::empty()),
            "bind" => (MsFlags::MS_BIND, MsFlags::empty()),
            "rbind" => (MsFlags::MS_BIND | MsFlags::MS_REC, MsFlags::empty()),
            "private" | "rprivate" | "shared" | "rshared" | "slave" | "rslave" | "unbindable"
            | "runbindable" => {
                let rec = if o.starts_with('r') {
                    MsFlags::MS_REC
                } else {
                    MsFlags::empty()
                };
                propagation |= rec
                    | match o.trim_start_matches('r') {
                        "private" => MsFlags::MS_PRIVATE,
                        "shared" => MsFlags::MS_SHARED,
                        "slave" => MsFlags::MS_SLAVE,
                        _ => MsFlags::MS_UNBINDABLE,
                    };
                continue;
            }
            other if is_rec_attr(other) => continue,
            other => {
                data.push(other.to_string());
                continue;
            }
        };
        flags |= set;
        flags &= !clear;
    }
    (flags, propagation, data.join(","))
}

/// The host path of the mount destination `dest`, resolved inside `rootfs`
/// as the container sees it: a symlink on the way is followed within the
/// rootfs, never out of it (runc: `securejoin.SecureJoin(rootfs, dest)` in
/// mountToRootfs).
pub fn inside(rootfs: &Path, dest: &Path) -> Result<PathBuf, StepError> {
    securejoin::secure_join(rootfs, dest).map_err(|e| {
        fail(
            format!(
                "resolving mount destination {} in the rootfs",
                dest.display()
            ),
            e,
        )
    })
}

/// A mount destination: its host path (created there, named in errors),
/// reopened inside the rootfs with `RESOLVE_IN_ROOT` for every mount(2) on
/// it, so that what is mounted on is what the kernel finds inside the
/// rootfs at that moment (runc's `utils.WithProcfd`). Reopened each time:
/// once something is mounted there, the next remount must reach the new
/// mount, not the directory under it.
struct Dest<'a> {
    rootfs: &'a Path,
    host: PathBuf,
}

impl Dest<'_> {
    /// The destination opened inside the rootfs, now (`what` names the
    /// operation in an error).
    fn open(&self, what: impl Fn() -> String) -> Result<std::os::fd::OwnedFd, StepError> {
        securejoin::open_in_root(
            self.rootfs,
            &securejoin::container_path(self.rootfs, &self.host),
        )
        .map_err(|e| fail(what(), e))
    }

    fn join(&self, name: &str) -> Dest<'_> {
        Dest {
            rootfs: self.rootfs,
            host: self.host.join(name),
        }
    }

    fn mount(
        &self,
        src: Option<&Path>,
        fstype: Option<&str>,
        flags: MsFlags,
        data: &str,
    ) -> Result<(), StepError> {
        let name = || {
            format!(
                "mounting {} on {}",
                src.map(|s| s.display().to_string())
                    .unwrap_or_else(|| fstype.unwrap_or("?").to_string()),
                self.host.display()
            )
        };
        let fd = self.open(name)?;
        let procfd = securejoin::proc_fd_path(&fd);
        mount(
            src,
            &procfd,
            fstype,
            flags,
            (!data.is_empty()).then_some(data),
        )
        .map_err(|e| fail(name(), e))
    }
}

impl Dest<'_> {
    /// mount_setattr(2) with AT_RECURSIVE on this destination.
    fn set_rec_attrs(&self, a: RecAttr) -> Result<(), StepError> {
        let name = || {
            format!(
                "setting recursive mount attributes on {}",
                self.host.display()
            )
        };
        let fd = self.open(name)?;
        let attr = MountAttr {
            attr_set: a.set,
            attr_clr: a.clr,
            propagation: 0,
            userns_fd: 0,
        };
        let empty = c"";
        // SAFETY: mount_setattr on an fd we hold, with an attr struct of
        // the size we pass.
        let r = unsafe {
            libc::syscall(
                libc::SYS_mount_setattr,
                fd.as_raw_fd(),
                empty.as_ptr(),
                (libc::AT_EMPTY_PATH as libc::c_uint) | AT_RECURSIVE,
                &attr as *const MountAttr,
                std::mem::size_of::<MountAttr>(),
            )
        };
        if r < 0 {
            return Err(fail(name(), std::io::Error::last_os_error()));
        }
        Ok(())
    }
}

fn ensure_target(p: &Path, file: bool) -> Result<(), StepError> {
    if fs::symlink_metadata(p).is_ok() {
        return Ok(());
    }
    if file {
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent)
                .map_err(|e| fail(format!("mkdir {}", parent.display()), e))?;
        }
        fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o644)
            .open(p)
            .map(drop)
            .map_err(|e| fail(format!("creating {}", p.display()), e))
    } else {
        fs::create_dir_all(p).map_err(|e| fail(format!("mkdir {}", p.display()), e))
    }
}

fn do_mount(
    src: Option<&Path>,
    dst: &Path,
    fstype: Option<&str>,
    flags: MsFlags,
    data: &str,
) -> Result<(), StepError> {
    mount(src, dst, fstype, flags, (!data.is_empty()).then_some(data)).map_err(|e| {
        fail(
            format!(
                "mounting {} on {}",
                src.map(|s| s.display().to_string())
                    .unwrap_or_else(|| fstype.unwrap_or("?").to_string()),
                dst.display()
            ),
            e,
        )
    })
}

/// Bind mount sources cloned by the runtime, as host root, before the
/// init enters a user namespace: from inside it the mapped root may not
/// reach a source (a directory only the host's root may enter), and a
/// plain fd of a host mount cannot be bound into the container's mount
/// namespace. open_tree(2) OPEN_TREE_CLONE makes a detached copy that the
/// init attaches with move_mount(2) (runc passes its init such "mount
/// fds" for the same reason). By mount index.
#[derive(Debug, Default)]
pub struct MountSources(Vec<Option<std::os::fd::OwnedFd>>);

const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
const MOVE_MOUNT_T_EMPTY_PATH: libc::c_uint = 0x40;

impl MountSources {
    /// Clones the source of every bind mount of `spec` (recursively for
    /// rbind; relative sources are relative to the bundle).
    pub fn open(spec: &Spec, bundle: &Path) -> crate::error::Result<MountSources> {
        let mut out = Vec::new();
        for m in spec.mounts().iter().flatten() {
            let (flags, _, _) = parse_options(&m.options().clone().unwrap_or_default());
            let bind = m.typ().as_deref() == Some("bind") || flags.contains(MsFlags::MS_BIND);
            let fd = match (bind, m.source()) {
                (true, Some(src)) => {
                    let src = bundle.join(src);
                    let fd = crate::mount::clone_tree(&src, flags.contains(MsFlags::MS_REC))
                        .map_err(|source| crate::error::Error::Io {
                            op: "cloning the bind mount source",
                            path: src,
                            source,
                        })?;
                    Some(fd)
                }
                _ => None,
            };
            out.push(fd);
        }
        Ok(MountSources(out))
    }

    fn get(&self, i: usize) -> Option<&std::os::fd::OwnedFd> {
        self.0.get(i).and_then(|f| f.as_ref())
    }
}

impl Dest<'_> {
    /// Attaches a detached mount tree here (move_mount(2)).
    fn attach(&self, tree: &std::os::fd::OwnedFd) -> Result<(), StepError> {
        let name = || format!("attaching the bind mount source on {}", self.host.display());
        let fd = self.open(name)?;
        let empty = c"";
        // SAFETY: move_mount between two fds we hold.
        let r = unsafe {
            libc::syscall(
                libc::SYS_move_mount,
                tree.as_raw_fd(),
                empty.as_ptr(),
                fd.as_raw_fd(),
                empty.as_ptr(),
                MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH,
            )
        };
        if r < 0 {
            return Err(fail(name(), std::io::Error::last_os_error()));
        }
        Ok(())
    }
}

fn mount_one(
    rootfs: &Path,
    m: &Mount,
    cg: &CgroupView,
    opened: Option<&std::os::fd::OwnedFd>,
) -> Result<(), StepError> {
    let opts = m.options().clone().unwrap_or_default();
    let (flags, propagation, data) = parse_options(&opts);
    let typ = m.typ().as_deref().unwrap_or("");
    if matches!(typ, "proc" | "sysfs") {
        // runc mounts proc and sysfs only on an ordinary directory, never
        // through a symlink ("fun" attacks, rootfs_linux.go).
        let lexical = rootfs.join(m.destination().strip_prefix("/").unwrap_or(m.destination()));
        if fs::symlink_metadata(&lexical).is_ok_and(|md| !md.is_dir()) {
            return Err(fail(
                "mount",
                format!("filesystem {typ:?} must be mounted on ordinary directory"),
            ));
        }
    }
    let dest = Dest {
        rootfs,
        host: inside(rootfs, m.destination())?,
    };
    let is_bind = typ == "bind" || flags.contains(MsFlags::MS_BIND);
    if typ == "cgroup" || typ == "cgroup2" {
        // A tmpfs with the container's cgroup dir of each hierarchy bound
        // in (runc without cgroup namespace; CRIU treats them as external).
        ensure_target(&dest.host, false)?;
        dest.mount(
            Some(Path::new("tmpfs")),
            Some("tmpfs"),
            crate::criu_plan::CgroupTmpfs::FLAGS,
            crate::criu_plan::CgroupTmpfs::DATA,
        )?;
        for (name, host) in &cg.hierarchies {
            let t = dest.join(name);
            ensure_target(&t.host, false)?;
            t.mount(Some(host), None, MsFlags::MS_BIND | MsFlags::MS_REC, "")?;
            let ro = flags & MsFlags::MS_RDONLY;
            t.mount(
                None,
                None,
                MsFlags::MS_BIND
                    | MsFlags::MS_REMOUNT
                    | MsFlags::MS_NOSUID
                    | MsFlags::MS_NODEV
                    | MsFlags::MS_NOEXEC
                    | ro,
                "",
            )?;
        }
        return Ok(());
    }
    if let (true, Some(tree)) = (is_bind, opened) {
        let file = nix::sys::stat::fstat(tree.as_raw_fd())
            .map_err(|e| fail("bind mount source", e))?
            .st_mode
            & libc::S_IFMT
            == libc::S_IFREG;
        ensure_target(&dest.host, file)?;
        dest.attach(tree)?;
        let rest = flags & !(MsFlags::MS_BIND | MsFlags::MS_REC);
        if !rest.is_empty() {
            dest.mount(
                None,
                None,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | rest,
                "",
            )?;
        }
    } else if is_bind {
        let src = m.source().as_ref().ok_or_else(|| {
            fail(
                "mount",
                format!("bind mount on {} has no source", m.destination().display()),
            )
        })?;
        let file = fs::metadata(src)
            .map_err(|e| fail(format!("bind mount source {}", src.display()), e))?
            .is_file();
        ensure_target(&dest.host, file)?;
        dest.mount(
            Some(src),
            None,
            MsFlags::MS_BIND | (flags & MsFlags::MS_REC),
            "",
        )?;
        // Flags other than bind/rec need a remount.
        let rest = flags & !(MsFlags::MS_BIND | MsFlags::MS_REC);
        if !rest.is_empty() {
            dest.mount(
                None,
                None,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | rest,
                "",
            )?;
        }
    } else {
        ensure_target(&dest.host, false)?;
        let src = m.source().clone().unwrap_or_else(|| PathBuf::from(typ));
        let flags = if ro_later(m) {
            flags & !MsFlags::MS_RDONLY
        } else {
            flags
        };
        let r = dest.mount(Some(&src), Some(typ), flags, &data);
        if let Err(e) = r {
            // sysfs cannot be mounted in a joined (not owned) netns: bind
            // the host's, read-only, as runc does.
            if typ == "sysfs" {
                dest.mount(
                    Some(Path::new("/sys")),
                    None,
                    MsFlags::MS_BIND | MsFlags::MS_REC,
                    "",
                )?;
                dest.mount(
                    None,
                    None,
                    MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                    "",
                )?;
            } else {
                return Err(e);
            }
        }
    }
    if !propagation.is_empty() {
        dest.mount(None, None, propagation, "")?;
    }
    let rec = parse_rec_attrs(&opts);
    if !rec.is_empty() {
        dest.set_rec_attrs(rec)?;
    }
    Ok(())
}

/// Whether a mount is made read-write first and made read-only only in
/// [`finish_rootfs`]: /dev (its devices and submounts are made under it)
/// and every tmpfs (runc's mountPropagate and finalizeRootfs).
fn ro_later(m: &Mount) -> bool {
    let (flags, _, _) = parse_options(&m.options().clone().unwrap_or_default());
    let is_bind = m.typ().as_deref() == Some("bind") || flags.contains(MsFlags::MS_BIND);
    flags.contains(MsFlags::MS_RDONLY)
        && !is_bind
        && (m.typ().as_deref() == Some("tmpfs") || m.destination() == Path::new("/dev"))
}

/// The device nodes every container gets (runc's defaults) plus the spec's.
fn devices(rootfs: &Path, spec: &Spec) -> Result<(), StepError> {
    let dev = rootfs.join("dev");
    ensure_target(&dev, false)?;
    let mut nodes: Vec<(PathBuf, SFlag, u64, u64, u32)> = vec![
        ("/dev/null".into(), SFlag::S_IFCHR, 1, 3, 0o666),
        ("/dev/zero".into(), SFlag::S_IFCHR, 1, 5, 0o666),
        ("/dev/full".into(), SFlag::S_IFCHR, 1, 7, 0o666),
        ("/dev/random".into(), SFlag::S_IFCHR, 1, 8, 0o666),
        ("/dev/urandom".into(), SFlag::S_IFCHR, 1, 9, 0o666),
        ("/dev/tty".into(), SFlag::S_IFCHR, 5, 0, 0o666),
    ];
    for d in spec
        .linux()
        .as_ref()
        .and_then(|l| l.devices().clone())
        .unwrap_or_default()
    {
        let kind = match d.typ() {
            LinuxDeviceType::B => SFlag::S_IFBLK,
            LinuxDeviceType::P => SFlag::S_IFIFO,
            _ => SFlag::S_IFCHR,
        };
        nodes.push((
            d.path().clone(),
            kind,
            d.major() as u64,
            d.minor() as u64,
            d.file_mode().unwrap_or(0o666),
        ));
    }
    for (path, kind, major, minor, mode) in nodes {
        let p = inside(rootfs, &path)?;
        if fs::symlink_metadata(&p).is_ok() {
            continue;
        }
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent).map_err(|e| fail("mkdir for device", e))?;
        }
        let made = mknod(
            &p,
            kind,
            Mode::from_bits_truncate(mode),
            makedev(major, minor),
        );
        if made.is_err() {
            // Without the right to mknod: bind the host's node.
            ensure_target(&p, true)?;
            Dest { rootfs, host: p }.mount(Some(&path), None, MsFlags::MS_BIND, "")?;
        } else {
            // mknod honours the umask; the spec's mode is exact.
            let _ = nix::sys::stat::fchmodat(
                None,
                &p,
                Mode::from_bits_truncate(mode),
                nix::sys::stat::FchmodatFlags::FollowSymlink,
            );
        }
    }
    // The links workloads (and CRIU-restored shells) expect.
    for (name, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("core", "/proc/kcore"),
    ] {
        let p = dev.join(name);
        if fs::symlink_metadata(&p).is_err() {
            let _ = symlink(target, &p);
        }
    }
    let ptmx = dev.join("ptmx");
    if dev.join("pts").is_dir()
        && fs::symlink_metadata(&ptmx)
            .map(|m| !m.file_type().is_symlink())
            .unwrap_or(true)
    {
        let _ = fs::remove_file(&ptmx);
        let _ = symlink("pts/ptmx", &ptmx);
    }
    Ok(())
}

/// Everything before pivot_root: mounts and devices under `rootfs`.
pub fn prepare_rootfs(
    spec: &Spec,
    rootfs: &Path,
    cg: &CgroupView,
    sources: &MountSources,
) -> Result<(), StepError> {
    let prop = spec
        .linux()
        .as_ref()
        .and_then(|l| l.rootfs_propagation().clone());
    let root_prop = match prop.as_deref() {
        Some("shared") | Some("rshared") => MsFlags::MS_SHARED | MsFlags::MS_REC,
        Some("private") | Some("rprivate") => MsFlags::MS_PRIVATE | MsFlags::MS_REC,
        _ => MsFlags::MS_SLAVE | MsFlags::MS_REC,
    };
    // Nothing we mount may propagate back to the host.
    do_mount(None, Path::new("/"), None, root_prop, "")?;
    // pivot_root needs the new root to be a mount point.
    do_mount(
        Some(rootfs),
        rootfs,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        "",
    )?;
    for (i, m) in spec.mounts().iter().flatten().enumerate() {
        mount_one(rootfs, m, cg, sources.get(i))?;
    }
    devices(rootfs, spec)
}

/// pivot_root into `rootfs` and drop the old root (runc's `pivot_root(".", ".")`).
pub fn pivot(rootfs: &Path) -> Result<(), StepError> {
    nix::unistd::chdir(rootfs).map_err(|e| fail("chdir to the rootfs", e))?;
    nix::unistd::pivot_root(".", ".").map_err(|e| fail("pivot_root", e))?;
    // The old root sits on top of the new one; make it private and go.
    do_mount(
        None,
        Path::new("."),
        None,
        MsFlags::MS_SLAVE | MsFlags::MS_REC,
        "",
    )?;
    umount2(".", MntFlags::MNT_DETACH).map_err(|e| fail("detaching the old root", e))?;
    nix::unistd::chdir("/").map_err(|e| fail("chdir /", e))
}

/// After pivot_root: masked and read-only paths, read-only root, hostname,
/// sysctls.
pub fn finish_rootfs(spec: &Spec) -> Result<(), StepError> {
    let linux = spec.linux().clone().unwrap_or_default();
    // /dev and tmpfs mounts asked read-only were mounted read-write so that
    // devices and submounts could be made in them: now they are made
    // read-only, keeping their other flags (runc's remountReadonly).
    for m in spec.mounts().iter().flatten().filter(|m| ro_later(m)) {
        let (flags, _, _) = parse_options(&m.options().clone().unwrap_or_default());
        do_mount(
            None,
            m.destination(),
            None,
            flags | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            "",
        )?;
    }
    // Sysctls first: /proc/sys becomes read-only below (runc's order).
    for (k, v) in linux.sysctl().clone().unwrap_or_default() {
        let p = PathBuf::from("/proc/sys").join(k.replace('.', "/"));
        fs::write(&p, v).map_err(|e| fail(format!("sysctl {k}"), e))?;
    }
    for p in linux.readonly_paths().clone().unwrap_or_default() {
        let path = Path::new(&p);
        if !path.exists() {
            continue;
        }
        do_mount(
            Some(path),
            path,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            "",
        )?;
        do_mount(
            None,
            path,
            None,
            MsFlags::MS_BIND
                | MsFlags::MS_REMOUNT
                | MsFlags::MS_RDONLY
                | MsFlags::MS_NOSUID
                | MsFlags::MS_NODEV
                | MsFlags::MS_NOEXEC,
            "",
        )?;
    }
    for p in linux.masked_paths().clone().unwrap_or_default() {
        let path = Path::new(&p);
        match fs::metadata(path) {
            Ok(m) if m.is_dir() => do_mount(
                Some(Path::new("tmpfs")),
                path,
                Some("tmpfs"),
                MsFlags::MS_RDONLY,
                "",
            )?,
            Ok(_) => do_mount(
                Some(Path::new("/dev/null")),
                path,
                None,
                MsFlags::MS_BIND,
                "",
            )?,
            Err(_) => {}
        }
    }
    if let Some(h) = spec.hostname() {
        nix::unistd::sethostname(h).map_err(|e| fail("sethostname", e))?;
    }
    // A network namespace made for the container gets its loopback up, as
    // runc does (specconv adds a "loopback" network for a new netns); one
    // joined by path is the caller's to configure.
    let new_netns = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .is_some_and(|ns| {
            ns.iter()
                .any(|n| n.typ() == LinuxNamespaceType::Network && n.path().is_none())
        });
    if new_netns {
        loopback_up().map_err(|e| fail("bringing up lo", e))?;
    }
    if spec
        .root()
        .as_ref()
        .and_then(|r| r.readonly())
        .unwrap_or(false)
    {
        do_mount(
            None,
            Path::new("/"),
            None,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_REC,
            "",
        )?;
    }
    Ok(())
}

/// `ip link set lo up`, with the SIOCGIFFLAGS/SIOCSIFFLAGS ioctls (the init
/// has no netlink runtime, and this is one flag).
fn loopback_up() -> nix::Result<()> {
    use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
    let sock = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    // SAFETY: an all-zero ifreq is valid; the name is NUL-terminated.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *d = *s as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write an ifreq we own.
    unsafe {
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) < 0 {
            return Err(nix::errno::Errno::last());
        }
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) < 0 {
            return Err(nix::errno::Errno::last());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options() {
        let o = |v: &[&str]| parse_options(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        let (f, p, d) = o(&[
            "rbind",
            "ro",
            "nosuid",
            "rprivate",
            "mode=755",
            "size=65536k",
        ]);
        assert!(f.contains(
            MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID
        ));
        assert_eq!(p, MsFlags::MS_PRIVATE | MsFlags::MS_REC);
        assert_eq!(d, "mode=755,size=65536k");
        let (f, _, _) = o(&["ro", "rw"]);
        assert!(!f.contains(MsFlags::MS_RDONLY));
    }

    #[test]
    fn recursive_attributes_parse_as_runcs() {
        let o = |v: &[&str]| parse_rec_attrs(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(o(&["rbind", "rro"]).set, MOUNT_ATTR_RDONLY);
        let a = o(&["rro", "rrw"]);
        assert_eq!((a.set, a.clr), (0, MOUNT_ATTR_RDONLY));
        let a = o(&["rnoatime"]);
        assert_eq!((a.set, a.clr), (MOUNT_ATTR_NOATIME, MOUNT_ATTR__ATIME));
        assert_eq!(o(&["ro", "nosuid"]), RecAttr::default());
        // rro is not mount data.
        let (_, _, data) = parse_options(&["rro".to_string(), "mode=755".to_string()]);
        assert_eq!(data, "mode=755");
    }

    #[test]
    fn destinations_stay_inside() {
        let t = tempfile::tempdir().unwrap();
        assert_eq!(
            inside(t.path(), Path::new("/etc/hosts")).unwrap(),
            t.path().join("etc/hosts")
        );
        assert_eq!(
            inside(t.path(), Path::new("/../../etc")).unwrap(),
            t.path().join("etc")
        );
        // A symlink to the host's /etc resolves to the rootfs's /etc.
        std::os::unix::fs::symlink("/etc", t.path().join("evil")).unwrap();
        assert_eq!(
            inside(t.path(), Path::new("/evil/hosts")).unwrap(),
            t.path().join("etc/hosts")
        );
    }
}
