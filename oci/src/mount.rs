//! Taking down mounts Ferry made (a pinned netns, an overlay rootfs rebuilt
//! by a migration, a tmpfs for received images): detached, so a busy mount
//! goes once its last user leaves, and a path that is not a mount point
//! (never mounted, or already unmounted) is not an error.

use std::path::Path;

use nix::mount::{umount2, MntFlags};

use crate::error::{Error, Result};

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
