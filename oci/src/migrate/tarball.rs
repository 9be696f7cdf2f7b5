//! Directories as tar streams: what moves a checkpoint's images and a
//! container's root filesystem (modes, ownership, symlinks, hard links and
//! device nodes kept) through a [`super::wire`] stream.

use std::io::{Read, Write};
use std::path::Path;

use crate::error::{Error, Result};

/// Writes `dir`'s content (not following symlinks) to `w`; `skip` leaves
/// out top-level entries by name.
pub fn pack(dir: &Path, w: impl Write, skip: impl Fn(&str) -> bool) -> Result<()> {
    let io = |source| Error::Io {
        op: "archiving",
        path: dir.to_path_buf(),
        source,
    };
    let mut b = tar::Builder::new(w);
    b.follow_symlinks(false);
    for e in std::fs::read_dir(dir).map_err(io)? {
        let e = e.map_err(io)?;
        let name = e.file_name();
        if skip(&name.to_string_lossy()) {
            continue;
        }
        let p = e.path();
        if e.file_type().map_err(io)?.is_dir() {
            b.append_dir_all(&name, &p).map_err(io)?;
        } else {
            b.append_path_with_name(&p, &name).map_err(io)?;
        }
    }
    b.into_inner().map_err(io)?.flush().map_err(io)
}

/// Extracts a stream made by [`pack`] into `dir` (which must exist),
/// keeping modes and ownership; entries may not escape `dir` (the tar
/// crate refuses `..` and absolute paths).
pub fn unpack(r: impl Read, dir: &Path) -> Result<()> {
    let mut a = tar::Archive::new(r);
    a.set_preserve_permissions(true);
    a.set_preserve_ownerships(true);
    a.set_unpack_xattrs(true);
    a.set_overwrite(true);
    a.unpack(dir).map_err(|source| Error::Io {
        op: "extracting into",
        path: dir.to_path_buf(),
        source,
    })
}
