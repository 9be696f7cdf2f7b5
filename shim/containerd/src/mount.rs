//! The container's rootfs from containerd's mounts, and taking it down.
//!
//! containerd hands a task its root filesystem as mounts (the snapshotter's
//! overlay, or a bind mount) in CreateTaskRequest.rootfs; the shim mounts
//! them on `<bundle>/rootfs` before the runtime runs (runc-shim's Create,
//! containerd's mount/mount_linux.go), and unmounts everything there when
//! the task goes (containerd's `mount.UnmountAll`). This module follows
//! mount_linux.go:
//! - the options split into mount flags, propagation and data with the
//!   same table as config.json's mounts (ferry-oci's `parse_options`);
//! - the mount with all but the propagation flags, then the propagation
//!   on its own, then, for a read-only bind, a remount (a bind mount
//!   ignores MS_RDONLY on its first call);
//! - an overlay whose options reach the page size (the kernel's limit on
//!   mount data) with its lower directories relative to their common
//!   parent, mounted from that directory: `chdir` in a thread of its own
//!   after `unshare(CLONE_FS)`, so the shim's other threads keep their
//!   working directory (containerd does the same in a locked OS thread).
//!
//! Not done: the `loop` option (containerd sets up a loop device for
//! image-backed snapshotters); such a mount is refused with a clear error.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use containerd_shim_protos::types::mount::Mount;
use ferry_oci::runtime::init::parse_options;
use nix::errno::Errno;
use nix::mount::{mount as mount2, umount2, MntFlags, MsFlags};

use super::error::{Error, Result};

/// The kernel copies at most one page of mount data; containerd compacts an
/// overlay's options once they come within 512 bytes of it.
const PAGE_SIZE: usize = 4096;

fn mount_error(path: &Path) -> impl FnOnce(Errno) -> Error + '_ {
    move |e| Error::Io {
        op: "mounting the container's rootfs on",
        path: path.to_path_buf(),
        source: e.into(),
    }
}

/// Mounts one of containerd's rootfs mounts on `target`.
pub fn mount(m: &Mount, target: &Path) -> Result<()> {
    if m.options.iter().any(|o| o == "loop") {
        return Err(Error::InvalidArgument(format!(
            "rootfs mount of type {:?} from {:?} needs a loop device, which the ferry shim \
             does not set up; use a snapshotter whose mounts are overlay or bind (overlayfs, \
             native)",
            m.type_, m.source
        )));
    }
    let (mut options, mut chdir) = (m.options.clone(), None);
    if m.type_ == "overlay" && options.iter().map(|o| o.len() + 1).sum::<usize>() >= PAGE_SIZE - 512
    {
        if let Some((dir, compacted)) = compact_lowerdir(&options) {
            chdir = Some(dir);
            options = compacted;
        }
    }
    let (flags, propagation, data) = parse_options(&options);
    let source = (!m.source.is_empty()).then_some(m.source.as_str());
    let fstype = (!m.type_.is_empty()).then_some(m.type_.as_str());
    let data = (!data.is_empty()).then_some(data);
    // A remount without new data only changes flags, below.
    if !flags.contains(MsFlags::MS_REMOUNT) || data.is_some() {
        match chdir {
            None => mount2(source, target, fstype, flags, data.as_deref())
                .map_err(mount_error(target))?,
            Some(dir) => mount_from(&dir, source, target, fstype, flags, data.as_deref())?,
        }
    }
    if !propagation.is_empty() {
        mount2(
            None::<&str>,
            target,
            None::<&str>,
            propagation | MsFlags::MS_SILENT,
            None::<&str>,
        )
        .map_err(mount_error(target))?;
    }
    if flags.contains(MsFlags::MS_BIND | MsFlags::MS_RDONLY) {
        mount2(
            None::<&str>,
            target,
            None::<&str>,
            flags | MsFlags::MS_REMOUNT,
            None::<&str>,
        )
        .map_err(mount_error(target))?;
    }
    Ok(())
}

/// mount(2) with the relative paths in `data` resolved from `dir`.
fn mount_from(
    dir: &Path,
    source: Option<&str>,
    target: &Path,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<()> {
    let (dir, target) = (dir.to_path_buf(), target.to_path_buf());
    let source = source.map(str::to_string);
    let fstype = fstype.map(str::to_string);
    let data = data.map(str::to_string);
    std::thread::scope(|s| {
        s.spawn(|| {
            // This thread's working directory only: it ends with the thread.
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_FS).map_err(|e| Error::Io {
                op: "unsharing the working directory of the mounting thread for",
                path: target.clone(),
                source: e.into(),
            })?;
            nix::unistd::chdir(&dir).map_err(|e| Error::Io {
                op: "changing into the overlay's common lower directory",
                path: dir.clone(),
                source: e.into(),
            })?;
            mount2(
                source.as_deref(),
                &target,
                fstype.as_deref(),
                flags,
                data.as_deref(),
            )
            .map_err(mount_error(&target))
        })
        .join()
        .unwrap_or_else(|_| {
            Err(Error::FailedPrecondition(
                "the rootfs mounting thread panicked".into(),
            ))
        })
    })
}

/// An overlay's options with its `lowerdir=` paths relative to their
/// common parent directory, and that directory; `None` when there is
/// nothing to shorten (one lower directory, or nothing in common below /).
fn compact_lowerdir(options: &[String]) -> Option<(PathBuf, Vec<String>)> {
    let idx = options.iter().position(|o| o.starts_with("lowerdir="))?;
    let dirs: Vec<&str> = options[idx]["lowerdir=".len()..].split(':').collect();
    if dirs.len() < 2 {
        return None;
    }
    let mut common = dirs[0];
    for d in &dirs[1..] {
        let n = common
            .bytes()
            .zip(d.bytes())
            .take_while(|(a, b)| a == b)
            .count();
        common = &common[..n];
    }
    // Back to a whole directory: snapshots are numbered, so "…/snapshots/1"
    // may be the common prefix of ".../snapshots/12" and ".../snapshots/13".
    let parent = &common[..common.rfind('/')?];
    if parent.is_empty() {
        return None;
    }
    let relative: Vec<&str> = dirs
        .iter()
        .map(|d| d.get(parent.len() + 1..).filter(|r| !r.is_empty()))
        .collect::<Option<_>>()?;
    let mut out: Vec<String> = options.to_vec();
    out.remove(idx);
    out.push(format!("lowerdir={}", relative.join(":")));
    Some((PathBuf::from(parent), out))
}

/// Unmounts everything at or under `target`, the deepest first, detached
/// (containerd's `mount.UnmountAll(target, MNT_DETACH)`). A path that is
/// not mounted is no error.
pub fn unmount_all(target: &Path) -> Result<()> {
    let target = std::fs::canonicalize(target).unwrap_or_else(|_| target.to_path_buf());
    let info = std::fs::read("/proc/self/mountinfo")
        .map_err(Error::io("reading", "/proc/self/mountinfo"))?;
    let mut points = mount_points_under(&info, &target);
    // Deeper mount points are longer paths.
    points.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    points.dedup();
    for p in points {
        match umount2(&p, MntFlags::MNT_DETACH) {
            Ok(()) | Err(Errno::EINVAL | Errno::ENOENT) => {}
            Err(e) => {
                return Err(Error::Io {
                    op: "unmounting the container's rootfs at",
                    path: p,
                    source: e.into(),
                })
            }
        }
    }
    Ok(())
}

/// The mount points in `mountinfo` (proc(5)'s format: the fifth field,
/// with space, tab, newline and backslash as octal escapes) at or under
/// `target`.
fn mount_points_under(mountinfo: &[u8], target: &Path) -> Vec<PathBuf> {
    let target = target.as_os_str().as_bytes();
    mountinfo
        .split(|&b| b == b'\n')
        .filter_map(|line| line.split(|&b| b == b' ').nth(4))
        .map(unescape)
        .filter(|p| {
            p == target
                || (p.starts_with(target) && (target.ends_with(b"/") || p[target.len()] == b'/'))
        })
        .map(|p| {
            PathBuf::from(<std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(p))
        })
        .collect()
}

fn unescape(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        let octal = field
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (field[i], octal) {
            (b'\\', Some(d)) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowerdirs_relative_to_their_parent() {
        let opts: Vec<String> = [
            "index=off",
            "workdir=/var/lib/c/snapshots/20/work",
            "upperdir=/var/lib/c/snapshots/20/fs",
            "lowerdir=/var/lib/c/snapshots/12/fs:/var/lib/c/snapshots/13/fs:/var/lib/c/snapshots/1/fs",
        ]
        .map(String::from)
        .to_vec();
        let (dir, out) = compact_lowerdir(&opts).unwrap();
        assert_eq!(dir, Path::new("/var/lib/c/snapshots"));
        assert_eq!(out[..3], opts[..3]);
        assert_eq!(out[3], "lowerdir=12/fs:13/fs:1/fs");
        // One lower directory, or nothing in common but /: unchanged.
        assert!(compact_lowerdir(&["lowerdir=/a/b".to_string()]).is_none());
        assert!(compact_lowerdir(&["lowerdir=/a/b:/c/d".to_string()]).is_none());
    }

    #[test]
    fn mountinfo_under_target() {
        let info = b"22 1 0:21 / /run rw - tmpfs tmpfs rw\n\
            30 22 0:40 / /run/b/rootfs rw - overlay overlay rw\n\
            31 30 0:41 / /run/b/rootfs/proc rw - proc proc rw\n\
            32 22 0:42 / /run/b/rootfs2 rw - tmpfs tmpfs rw\n\
            33 22 0:43 / /run/b/rootfs/with\\040space rw - tmpfs tmpfs rw\n";
        let got = mount_points_under(info, Path::new("/run/b/rootfs"));
        assert_eq!(
            got,
            [
                PathBuf::from("/run/b/rootfs"),
                PathBuf::from("/run/b/rootfs/proc"),
                PathBuf::from("/run/b/rootfs/with space"),
            ]
        );
    }

    fn root() {
        assert!(
            nix::unistd::geteuid().is_root(),
            "the rootfs mount tests mount overlays and binds: run them as root (hack/test)"
        );
    }

    fn mounted_under(target: &Path) -> Vec<PathBuf> {
        mount_points_under(&std::fs::read("/proc/self/mountinfo").unwrap(), target)
    }

    /// An overlay with lower directories whose options pass the page size
    /// (the kernel refuses such data): mounted with them relative to their
    /// parent, every layer seen, and all of it gone after unmount_all.
    #[test]
    fn overlay_with_options_past_a_page_mounts() {
        root();
        let dir = tempfile::tempdir().unwrap();
        // Long paths with a long common parent, as a snapshotter's
        // `<root>/snapshots/<n>/fs`.
        let snapshots = dir
            .path()
            .join("p".repeat(200))
            .join("q".repeat(200))
            .join("snapshots");
        let lowers: Vec<PathBuf> = (0..20)
            .map(|i| {
                let d = snapshots.join(i.to_string()).join("fs");
                std::fs::create_dir_all(&d).unwrap();
                std::fs::write(d.join(format!("layer{i}")), "x").unwrap();
                d
            })
            .collect();
        let (upper, work, target) = (
            dir.path().join("upper"),
            dir.path().join("work"),
            dir.path().join("rootfs"),
        );
        for d in [&upper, &work, &target] {
            std::fs::create_dir_all(d).unwrap();
        }
        let lowerdir: Vec<String> = lowers.iter().map(|d| d.display().to_string()).collect();
        let m = Mount {
            type_: "overlay".into(),
            source: "overlay".into(),
            options: vec![
                format!("workdir={}", work.display()),
                format!("upperdir={}", upper.display()),
                format!("lowerdir={}", lowerdir.join(":")),
            ],
            ..Default::default()
        };
        assert!(m.options.iter().map(String::len).sum::<usize>() > PAGE_SIZE);
        let cwd = std::env::current_dir().unwrap();
        mount(&m, &target).unwrap();
        // The chdir stayed in its thread.
        assert_eq!(std::env::current_dir().unwrap(), cwd);
        for i in [0, 19] {
            assert!(target.join(format!("layer{i}")).exists(), "layer {i}");
        }
        std::fs::write(target.join("new"), "y").unwrap();
        assert!(upper.join("new").exists());
        unmount_all(&target).unwrap();
        assert_eq!(mounted_under(&target), Vec::<PathBuf>::new());
        assert!(!target.join("layer0").exists());
    }

    /// A read-only bind is read-only (the remount a bind needs), and
    /// unmount_all takes down what is mounted under it too.
    #[test]
    fn read_only_bind_and_nested_unmount() {
        root();
        let dir = tempfile::tempdir().unwrap();
        let (src, target) = (dir.path().join("src"), dir.path().join("rootfs"));
        std::fs::create_dir_all(src.join("proc")).unwrap();
        std::fs::create_dir_all(&target).unwrap();
        let m = Mount {
            type_: "bind".into(),
            source: src.display().to_string(),
            options: vec!["rbind".into(), "ro".into()],
            ..Default::default()
        };
        mount(&m, &target).unwrap();
        let err = std::fs::write(target.join("f"), "x").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EROFS));
        let tmpfs = Mount {
            type_: "tmpfs".into(),
            source: "tmpfs".into(),
            options: vec!["size=1m".into()],
            ..Default::default()
        };
        mount(&tmpfs, &target.join("proc")).unwrap();
        assert_eq!(mounted_under(&target).len(), 2);
        unmount_all(&target).unwrap();
        assert_eq!(mounted_under(&target), Vec::<PathBuf>::new());
        // Nothing mounted: no error.
        unmount_all(&target).unwrap();
    }

    #[test]
    fn loop_mounts_are_refused_with_the_fix() {
        let m = Mount {
            type_: "ext4".into(),
            source: "/img".into(),
            options: vec!["loop".into()],
            ..Default::default()
        };
        let e = mount(&m, Path::new("/nonexistent"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("loop device") && e.contains("snapshotter"),
            "{e}"
        );
    }
}
