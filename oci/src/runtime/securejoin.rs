//! Paths inside a container's rootfs, resolved as the container would see
//! them: a symlink in the rootfs is followed within the rootfs, never out of
//! it (an absolute target starts again at the rootfs, `..` stops there).
//!
//! Two halves, as runc has them (rootfs_linux.go):
//! - [`secure_join`] computes the host path of a container path, the way
//!   runc's `securejoin.SecureJoin` (github.com/cyphar/filepath-securejoin)
//!   does: for creating mountpoints, and for naming mounts to CRIU (runc's
//!   `addCriuDumpMount` / `addCriuRestoreMount` key an external mount by its
//!   resolved destination, which is where CRIU finds it in mountinfo);
//! - [`open_in_root`] opens such a path with `openat2(RESOLVE_IN_ROOT)`, so
//!   that mount(2) goes to `/proc/self/fd/N` of what the kernel resolved
//!   inside the root at that instant (runc's `utils.WithProcfd`): a symlink
//!   swapped in after [`secure_join`] cannot send a mount out of the rootfs.

use std::ffi::OsString;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;

/// How many symlinks one resolution may follow (filepath-securejoin's and
/// the kernel's limit is in the same range: 255 vs 40).
const MAX_LINKS: usize = 255;

/// `unsafe_path` (a container path, absolute or not) resolved inside `root`
/// as if `root` were `/`. Components that do not exist are taken as they
/// are (they will be created, or fail later); every symlink on the way is
/// read and expanded within `root`. The result always lies under `root`.
pub fn secure_join(root: &Path, unsafe_path: &Path) -> io::Result<PathBuf> {
    // What is left to resolve, first component last (so pop() is next).
    let mut todo: Vec<OsString> = components(unsafe_path);
    // What is resolved so far: real directories (or missing names) below
    // root, without symlinks.
    let mut done: Vec<OsString> = Vec::new();
    let mut links = 0;
    while let Some(name) = todo.pop() {
        if name == ".." {
            // Lexical, and never above root (`/..` is `/`).
            done.pop();
            continue;
        }
        let mut candidate = root.to_path_buf();
        candidate.extend(&done);
        candidate.push(&name);
        match std::fs::symlink_metadata(&candidate) {
            Ok(m) if m.file_type().is_symlink() => {
                links += 1;
                if links > MAX_LINKS {
                    return Err(io::Error::from_raw_os_error(libc::ELOOP));
                }
                let target = std::fs::read_link(&candidate)?;
                if target.is_absolute() {
                    done.clear();
                }
                todo.extend(components(&target));
            }
            Ok(_) => done.push(name),
            // A missing component (or one under a non-directory) is taken
            // as it is, as filepath-securejoin does.
            Err(e)
                if e.kind() == io::ErrorKind::NotFound
                    || e.raw_os_error() == Some(libc::ENOTDIR) =>
            {
                done.push(name)
            }
            Err(e) => return Err(e),
        }
    }
    let mut out = root.to_path_buf();
    out.extend(&done);
    Ok(out)
}

/// The components of `p` that name something ("..", names), last first.
fn components(p: &Path) -> Vec<OsString> {
    let mut v: Vec<OsString> = p
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect();
    v.reverse();
    v
}

/// The container path of `host`, a path [`secure_join`] returned for
/// `root`: `/` and what follows root. This is the name CRIU sees in the
/// container's mountinfo.
pub fn container_path(root: &Path, host: &Path) -> PathBuf {
    let rel = host.strip_prefix(root).unwrap_or(host);
    Path::new("/").join(rel)
}

/// Opens the container path `path` with `O_PATH`, resolved by the kernel
/// with `root` as `/` (`RESOLVE_IN_ROOT`; magic links such as
/// /proc/PID/root refused). Mount on `/proc/self/fd/N` of the result to
/// mount exactly there.
pub fn open_in_root(root: &Path, path: &Path) -> io::Result<OwnedFd> {
    let dir = nix::fcntl::open(
        root,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    // SAFETY: open returned a new fd that nothing else owns.
    let dir = unsafe { OwnedFd::from_raw_fd(dir) };
    let rel = path.strip_prefix("/").unwrap_or(path);
    let rel = if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel
    };
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let fd = nix::fcntl::openat2(std::os::fd::AsRawFd::as_raw_fd(&dir), rel, how)?;
    // SAFETY: openat2 returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `/proc/self/fd/N` for `fd`: a path that names exactly what `fd` is.
pub fn proc_fd_path(fd: &OwnedFd) -> PathBuf {
    PathBuf::from(format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(fd)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn plain_paths_are_joined() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        assert_eq!(
            secure_join(r, Path::new("/etc/hosts")).unwrap(),
            r.join("etc/hosts")
        );
        assert_eq!(
            secure_join(r, Path::new("etc//./x/")).unwrap(),
            r.join("etc/x")
        );
        assert_eq!(secure_join(r, Path::new("/")).unwrap(), r);
    }

    #[test]
    fn dotdot_stops_at_the_root() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        assert_eq!(
            secure_join(r, Path::new("/../../etc")).unwrap(),
            r.join("etc")
        );
        assert_eq!(secure_join(r, Path::new("a/../../b")).unwrap(), r.join("b"));
    }

    #[test]
    fn absolute_symlinks_start_again_at_the_root() {
        // runc's checkpoint.bats: rootfs/conf -> /real/conf.
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        std::fs::create_dir_all(r.join("real/conf")).unwrap();
        symlink("/real/conf", r.join("conf")).unwrap();
        assert_eq!(
            secure_join(r, Path::new("/conf")).unwrap(),
            r.join("real/conf")
        );
        // One that points at the host's /etc stays in the rootfs.
        symlink("/etc", r.join("evil")).unwrap();
        assert_eq!(
            secure_join(r, Path::new("/evil/passwd")).unwrap(),
            r.join("etc/passwd")
        );
        assert_eq!(
            container_path(r, &r.join("real/conf")),
            Path::new("/real/conf")
        );
    }

    #[test]
    fn relative_symlinks_cannot_climb_out() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        std::fs::create_dir_all(r.join("a/b")).unwrap();
        symlink("../../../../../../tmp", r.join("a/b/up")).unwrap();
        assert_eq!(
            secure_join(r, Path::new("/a/b/up/x")).unwrap(),
            r.join("tmp/x")
        );
        symlink("../b", r.join("a/b/sib")).unwrap();
        assert_eq!(
            secure_join(r, Path::new("/a/b/sib")).unwrap(),
            r.join("a/b")
        );
    }

    #[test]
    fn symlink_loops_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        symlink("/loop", r.join("loop")).unwrap();
        let e = secure_join(r, Path::new("/loop/x")).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ELOOP));
    }

    #[test]
    fn the_kernel_resolves_in_the_root_too() {
        use std::os::unix::fs::MetadataExt;
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        std::fs::create_dir_all(r.join("etc")).unwrap();
        std::fs::write(r.join("etc/marker"), "inside").unwrap();
        symlink("/etc", r.join("evil")).unwrap();
        let fd = open_in_root(r, Path::new("/evil/marker")).unwrap();
        let via_fd = std::fs::metadata(proc_fd_path(&fd)).unwrap();
        let inside = std::fs::metadata(r.join("etc/marker")).unwrap();
        assert_eq!((via_fd.dev(), via_fd.ino()), (inside.dev(), inside.ino()));
    }
}
