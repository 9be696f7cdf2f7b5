//! Mounts Ferry makes for itself: detached copies of a mount
//! ([`clone_tree`]), tmpfs mounts in a state dir that a restore hands CRIU
//! ([`StateTmpfs`]), and taking such mounts down (a pinned netns, an
//! overlay rootfs rebuilt by a migration, a tmpfs for received images):
//! detached, so a busy mount goes once its last user leaves, and a path
//! that is not a mount point (never mounted, or already unmounted) is not
//! an error.

use std::fs;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::error::{io, Error, Result};

const OPEN_TREE_CLONE: libc::c_uint = 1;
const AT_RECURSIVE: libc::c_uint = 0x8000;

/// A detached copy of the mount at `path` (open_tree(2) OPEN_TREE_CLONE),
/// with its submounts if `recursive`: a mount of this mount namespace only
/// (the kernel refuses others). Its fd reaches the mount's own tree, not
/// what is mounted over its entries.
pub fn clone_tree(path: &Path, recursive: bool) -> std::io::Result<OwnedFd> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    let rec = if recursive { AT_RECURSIVE } else { 0 };
    // SAFETY: open_tree(2) on a NUL-terminated path.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            c.as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint | rec,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh fd open_tree gave us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// tmpfs mounts a restore makes in the container's state dir for CRIU to
/// bind as external mounts, private (a shared state dir must not make the
/// container's copy a peer of the host's); each detached and its directory
/// removed on drop: the container's bind keeps the tmpfs.
#[derive(Debug, Default)]
pub struct StateTmpfs(Vec<PathBuf>);

impl StateTmpfs {
    /// Creates `at` and mounts a tmpfs there, named `source` (what
    /// mountinfo shows), with `flags` and `data`.
    pub fn mount(&mut self, source: &str, at: &Path, flags: MsFlags, data: &str) -> Result<()> {
        fs::create_dir(at).map_err(io("creating", at))?;
        let failed = |e: nix::Error| io("mounting a tmpfs on", at)(e.into());
        let made = mount(Some(source), at, Some("tmpfs"), flags, Some(data));
        if let Err(e) = made {
            let _ = fs::remove_dir(at);
            return Err(failed(e));
        }
        self.0.push(at.to_path_buf());
        mount(
            None::<&str>,
            at,
            None::<&str>,
            MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .map_err(failed)
    }
}

impl Drop for StateTmpfs {
    fn drop(&mut self) {
        for at in &self.0 {
            let _ = umount2(at, MntFlags::MNT_DETACH);
            let _ = fs::remove_dir(at);
        }
    }
}

/// Unmounts `path` (MNT_DETACH); `op` names the mount in the error.
pub fn detach(path: &Path, op: &'static str) -> Result<()> {
    match umount2(path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => Ok(()),
        Err(e) => Err(Error::Io {
            op,
            path: path.to_path_buf(),
            source: e.into(),
        }),
    }
}
