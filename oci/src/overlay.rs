//! A container's writable layer, when its rootfs is an overlayfs mount (as
//! dockerd and containerd's snapshotter make it): the mount's layers, the
//! digest that proves a destination holds the same lower layers, and the
//! upper directory as a tar stream that keeps what overlayfs keeps there.
//!
//! The diff is the upper directory as it is: regular files, directories,
//! symlinks, hard links (one copy, then links), fifos, device nodes,
//! whiteouts (0:0 character devices, overlayfs(5)), opaque directories and
//! every other extended attribute (`trusted.overlay.*` included, as PAX
//! `SCHILY.xattr.*` records, GNU tar's spelling), modes, owners and
//! modification times. The `tar` crate frames it; entries are written and
//! extracted here because the crate neither writes xattrs nor creates
//! device nodes (it would turn a whiteout into an empty file).

use std::collections::HashMap;
use std::ffi::{CString, OsString};
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Component, Path, PathBuf};

use nix::mount::{mount, MsFlags};
use nix::sys::stat::{mknod, Mode, SFlag};
use sha2::{Digest, Sha256};

use crate::criu_plan::parse_mountinfo;
use crate::error::{io, Error, Result};

/// The layers of an overlayfs mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overlay {
    /// Top first, as in `lowerdir=`.
    pub lowers: Vec<PathBuf>,
    pub upper: PathBuf,
    pub work: PathBuf,
}

impl Overlay {
    /// The overlay mounted at `mountpoint`, if that is what is there.
    pub fn of(mountpoint: &Path) -> Result<Option<Overlay>> {
        let text = std::fs::read_to_string("/proc/self/mountinfo")
            .map_err(io("reading", Path::new("/proc/self/mountinfo")))?;
        let want = mountpoint.to_string_lossy();
        Ok(parse_mountinfo(&text)
            .into_iter()
            .rev()
            .find(|m| m.mountpoint == want)
            .filter(|m| m.fstype == "overlay")
            .and_then(|m| Overlay::from_options(&m.super_options)))
    }

    /// Reads `lowerdir=`, `upperdir=` and `workdir=` of a mount's options.
    fn from_options(options: &str) -> Option<Overlay> {
        let mut lowers = Vec::new();
        let (mut upper, mut work) = (None, None);
        // Commas inside paths are escaped as "\," by the kernel.
        let mut opts = Vec::new();
        let mut cur = String::new();
        let mut chars = options.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '\\' if chars.peek() == Some(&',') => cur.push(chars.next()?),
                ',' => opts.push(std::mem::take(&mut cur)),
                c => cur.push(c),
            }
        }
        opts.push(cur);
        for o in opts {
            if let Some(v) = o.strip_prefix("lowerdir=") {
                lowers.extend(v.split(':').map(PathBuf::from));
            } else if let Some(v) = o.strip_prefix("lowerdir+=") {
                lowers.push(PathBuf::from(v));
            } else if let Some(v) = o.strip_prefix("upperdir=") {
                upper = Some(PathBuf::from(v));
            } else if let Some(v) = o.strip_prefix("workdir=") {
                work = Some(PathBuf::from(v));
            }
        }
        Some(Overlay {
            lowers,
            upper: upper?,
            work: work?,
        })
        .filter(|o| !o.lowers.is_empty())
    }

    /// Mounts this overlay at `at` (which must exist).
    pub fn mount(&self, at: &Path) -> Result<()> {
        let lowers: Vec<String> = self
            .lowers
            .iter()
            .map(|l| l.to_string_lossy().into_owned())
            .collect();
        let data = format!(
            "lowerdir={},upperdir={},workdir={}",
            lowers.join(":"),
            self.upper.display(),
            self.work.display()
        );
        mount(
            Some("overlay"),
            at,
            Some("overlay"),
            MsFlags::empty(),
            Some(data.as_str()),
        )
        .map_err(|e| Error::Io {
            op: "mounting the overlay rootfs on",
            path: at.to_path_buf(),
            source: e.into(),
        })
    }
}

/// A directory's entry names, sorted (the same walk on every host).
fn sorted_names(dir: &Path) -> Result<Vec<OsString>> {
    let mut names: Vec<OsString> = std::fs::read_dir(dir)
        .map_err(io("reading", dir))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<std::io::Result<_>>()
        .map_err(io("reading", dir))?;
    names.sort();
    Ok(names)
}

/// Visits every entry below `root` (not `root` itself) with its path
/// relative to `root`, its full path and its metadata (symlinks not
/// followed): a directory's entries in name order, then those of each of
/// its subdirectories in name order, so that the walk is the same on every
/// host whatever the directory order on disk.
fn walk(
    root: &Path,
    mut visit: impl FnMut(&Path, &Path, &std::fs::Metadata) -> Result<()>,
) -> Result<()> {
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let mut dirs = Vec::new();
        for n in sorted_names(&root.join(&rel))? {
            let r = rel.join(&n);
            let p = root.join(&r);
            let m = std::fs::symlink_metadata(&p).map_err(io("reading", &p))?;
            visit(&r, &p, &m)?;
            if m.file_type().is_dir() {
                dirs.push(r);
            }
        }
        // Pushed in reverse so that they pop in order.
        stack.extend(dirs.into_iter().rev());
    }
    Ok(())
}

/// A content digest of a lower layer: SHA-256 over every entry's relative
/// path, type, mode, owner, size, link target and file content, in path
/// order (so the same tree on two hosts gives the same digest, whatever its
/// directory order, inode numbers or timestamps).
pub fn layer_digest(dir: &Path) -> Result<String> {
    let mut h = Sha256::new();
    walk(dir, |r, p, m| {
        h.update(r.as_os_str().as_bytes());
        h.update([0]);
        h.update(
            format!(
                "{:o} {} {} {} {}\n",
                m.mode(),
                m.uid(),
                m.gid(),
                m.len(),
                m.rdev()
            )
            .as_bytes(),
        );
        let t = m.file_type();
        if t.is_symlink() {
            let target = std::fs::read_link(p).map_err(io("reading", p))?;
            h.update(target.as_os_str().as_bytes());
        } else if t.is_file() {
            let mut f = File::open(p).map_err(io("reading", p))?;
            std::io::copy(&mut f, &mut h).map_err(io("reading", p))?;
        }
        Ok(())
    })?;
    Ok(format!("sha256:{}", hex::encode(h.finalize())))
}

/// What a diff held.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiffCount {
    pub entries: u64,
    pub whiteouts: u64,
    pub hardlinks: u64,
}

/// Writes the upper directory `upper` as a tar stream.
pub fn pack_diff(upper: &Path, w: impl Write) -> Result<DiffCount> {
    let err = || io("archiving the writable layer", upper);
    let mut b = tar::Builder::new(w);
    let mut count = DiffCount::default();
    let mut seen: HashMap<(u64, u64), PathBuf> = HashMap::new();
    walk(upper, |r, p, m| {
        let t = m.file_type();
        xattr_records(p, &mut b).map_err(io("reading the xattrs of", p))?;
        let mut h = tar::Header::new_gnu();
        h.set_metadata_in_mode(m, tar::HeaderMode::Complete);
        h.set_size(0);
        count.entries += 1;
        if t.is_file() && m.nlink() > 1 {
            // The walk's order puts a hard link's first name first.
            if let Some(first) = seen.get(&(m.dev(), m.ino())) {
                h.set_entry_type(tar::EntryType::Link);
                b.append_link(&mut h, r, first)
                    .map_err(io("archiving", p))?;
                count.hardlinks += 1;
                return Ok(());
            }
            seen.insert((m.dev(), m.ino()), r.to_path_buf());
        }
        if t.is_file() {
            h.set_size(m.len());
            let f = File::open(p).map_err(io("reading", p))?;
            b.append_data(&mut h, r, f).map_err(io("archiving", p))?;
        } else if t.is_symlink() {
            let target = std::fs::read_link(p).map_err(io("reading", p))?;
            b.append_link(&mut h, r, &target)
                .map_err(io("archiving", p))?;
        } else {
            // Directories, fifos and devices (whiteouts are 0:0 character
            // devices): set_metadata_in_mode set the type and numbers.
            if t.is_char_device() && m.rdev() == 0 {
                count.whiteouts += 1;
            }
            b.append_data(&mut h, r, std::io::empty())
                .map_err(io("archiving", p))?;
        }
        Ok(())
    })?;
    b.into_inner().map_err(err())?.flush().map_err(err())?;
    Ok(count)
}

/// A PAX header carrying `path`'s extended attributes, before its entry.
fn xattr_records<W: Write>(path: &Path, b: &mut tar::Builder<W>) -> std::io::Result<()> {
    let names = match xattr::list(path) {
        Ok(n) => n,
        // Filesystems without xattrs (tmpfs without user xattrs) have none.
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Ok(()),
        Err(e) => return Err(e),
    };
    let mut data = Vec::new();
    for n in names {
        let Some(v) = xattr::get(path, &n)? else {
            continue;
        };
        let mut rec = b"SCHILY.xattr.".to_vec();
        rec.extend_from_slice(n.as_bytes());
        rec.push(b'=');
        rec.extend_from_slice(&v);
        rec.push(b'\n');
        // "%d key=value\n", the length counting itself.
        let mut len = rec.len() + 2;
        while len != rec.len() + 1 + len.to_string().len() {
            len = rec.len() + 1 + len.to_string().len();
        }
        data.extend_from_slice(format!("{len} ").as_bytes());
        data.extend_from_slice(&rec);
    }
    if data.is_empty() {
        return Ok(());
    }
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::XHeader);
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_path("././@PaxHeader")?;
    h.set_cksum();
    b.append(&h, &data[..])
}

/// Only plain relative paths: a hostile stream cannot write outside `dir`.
fn inside(dir: &Path, rel: &Path) -> Option<PathBuf> {
    rel.components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
        .then(|| dir.join(rel))
}

/// Extracts a stream made by [`pack_diff`] into the empty directory
/// `upper`, as a new overlay's upper layer.
pub fn unpack_diff(r: impl Read, upper: &Path) -> Result<DiffCount> {
    let err = |p: &Path| io("extracting the writable layer into", p);
    let mut a = tar::Archive::new(r);
    let mut count = DiffCount::default();
    // Directory modes and times are set last: writing into a directory
    // changes its mtime, and a read-only mode would stop the writes.
    let mut dirs = Vec::new();
    for e in a.entries().map_err(err(upper))? {
        let mut e = e.map_err(err(upper))?;
        let rel = e.path().map_err(err(upper))?.into_owned();
        let dst = inside(upper, &rel).ok_or_else(|| Error::Protocol {
            what: "a writable-layer entry outside the layer",
        })?;
        let h = e.header().clone();
        let xattrs: Vec<(OsString, Vec<u8>)> = match e.pax_extensions().map_err(err(&dst))? {
            Some(exts) => exts
                .filter_map(|x| x.ok())
                .filter_map(|x| {
                    let k = x.key_bytes().strip_prefix(b"SCHILY.xattr.")?.to_vec();
                    Some((OsString::from_vec(k), x.value_bytes().to_vec()))
                })
                .collect(),
            None => Vec::new(),
        };
        let mode = h.mode().map_err(err(&dst))?;
        let kind = h.entry_type();
        count.entries += 1;
        match kind {
            tar::EntryType::Directory => {
                std::fs::create_dir_all(&dst).map_err(err(&dst))?;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let mut f = File::create(&dst).map_err(err(&dst))?;
                std::io::copy(&mut e, &mut f).map_err(err(&dst))?;
            }
            tar::EntryType::Symlink => {
                let target = e.link_name().map_err(err(&dst))?.ok_or(Error::Protocol {
                    what: "a symlink without a target in the writable layer",
                })?;
                std::os::unix::fs::symlink(&*target, &dst).map_err(err(&dst))?;
            }
            tar::EntryType::Link => {
                let first = e
                    .link_name()
                    .map_err(err(&dst))?
                    .and_then(|t| inside(upper, &t))
                    .ok_or(Error::Protocol {
                        what: "a hard link outside the writable layer",
                    })?;
                std::fs::hard_link(&first, &dst).map_err(err(&dst))?;
                count.hardlinks += 1;
                // A link shares its first name's inode: nothing more to set.
                continue;
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                let (major, minor) = (
                    h.device_major().map_err(err(&dst))?.unwrap_or(0),
                    h.device_minor().map_err(err(&dst))?.unwrap_or(0),
                );
                let ty = match kind {
                    tar::EntryType::Char => SFlag::S_IFCHR,
                    tar::EntryType::Block => SFlag::S_IFBLK,
                    _ => SFlag::S_IFIFO,
                };
                if kind == tar::EntryType::Char && major == 0 && minor == 0 {
                    count.whiteouts += 1;
                }
                mknod(
                    &dst,
                    ty,
                    Mode::from_bits_truncate(mode),
                    nix::sys::stat::makedev(major as u64, minor as u64),
                )
                .map_err(|e| err(&dst)(e.into()))?;
            }
            _ => {
                return Err(Error::Protocol {
                    what: "an entry type a writable layer cannot hold",
                })
            }
        }
        let uid = h.uid().map_err(err(&dst))? as u32;
        let gid = h.gid().map_err(err(&dst))? as u32;
        std::os::unix::fs::lchown(&dst, Some(uid), Some(gid)).map_err(err(&dst))?;
        for (k, v) in &xattrs {
            xattr::set(&dst, k, v).map_err(err(&dst))?;
        }
        let mtime = h.mtime().map_err(err(&dst))? as i64;
        if kind == tar::EntryType::Directory {
            dirs.push((dst, mode, mtime));
            continue;
        }
        if kind != tar::EntryType::Symlink {
            std::fs::set_permissions(&dst, std::os::unix::fs::PermissionsExt::from_mode(mode))
                .map_err(err(&dst))?;
        }
        set_mtime(&dst, mtime).map_err(err(&dst))?;
    }
    for (dst, mode, mtime) in dirs.into_iter().rev() {
        std::fs::set_permissions(&dst, std::os::unix::fs::PermissionsExt::from_mode(mode))
            .map_err(err(&dst))?;
        set_mtime(&dst, mtime).map_err(err(&dst))?;
    }
    Ok(count)
}

/// Sets `path`'s modification time without following a symlink.
fn set_mtime(path: &Path, secs: i64) -> std::io::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes())?;
    let t = nix::sys::time::TimeSpec::new(secs, 0);
    nix::sys::stat::utimensat(
        None,
        c.as_c_str(),
        &nix::sys::time::TimeSpec::UTIME_OMIT,
        &t,
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .map_err(Into::into)
}

/// The name a destination gives a received layer's parts.
pub fn layer_dirs(dir: &Path) -> (PathBuf, PathBuf) {
    (dir.join("upper"), dir.join("work"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_with_several_lowers_and_escaped_commas() {
        let o = Overlay::from_options("rw,lowerdir=/l/a:/l/b,upperdir=/u\\,1,workdir=/w,uuid=on")
            .unwrap();
        assert_eq!(o.lowers, vec![PathBuf::from("/l/a"), PathBuf::from("/l/b")]);
        assert_eq!(o.upper, PathBuf::from("/u,1"));
        assert_eq!(o.work, PathBuf::from("/w"));
        assert!(Overlay::from_options("rw,lowerdir=/a").is_none());
    }

    #[test]
    fn a_diff_round_trips_links_devices_modes_and_xattrs() {
        let t = tempfile::tempdir().unwrap();
        let (src, dst) = (t.path().join("src"), t.path().join("dst"));
        std::fs::create_dir_all(src.join("d/e")).unwrap();
        std::fs::write(src.join("d/f"), b"hello").unwrap();
        std::fs::hard_link(src.join("d/f"), src.join("g")).unwrap();
        std::os::unix::fs::symlink("d/f", src.join("s")).unwrap();
        mknod(
            &src.join("gone"),
            SFlag::S_IFCHR,
            Mode::empty(),
            nix::sys::stat::makedev(0, 0),
        )
        .unwrap();
        xattr::set(src.join("d"), "trusted.overlay.opaque", b"y").unwrap();
        std::fs::set_permissions(
            src.join("d/f"),
            std::os::unix::fs::PermissionsExt::from_mode(0o640),
        )
        .unwrap();
        std::os::unix::fs::lchown(src.join("d/f"), Some(1000), Some(1001)).unwrap();
        let mut buf = Vec::new();
        let packed = pack_diff(&src, &mut buf).unwrap();
        std::fs::create_dir(&dst).unwrap();
        let got = unpack_diff(&buf[..], &dst).unwrap();
        assert_eq!(packed, got);
        assert_eq!(got.whiteouts, 1);
        assert_eq!(got.hardlinks, 1);
        assert_eq!(std::fs::read(dst.join("g")).unwrap(), b"hello");
        let (f, g) = (
            std::fs::metadata(dst.join("d/f")).unwrap(),
            std::fs::metadata(dst.join("g")).unwrap(),
        );
        assert_eq!(f.ino(), g.ino());
        assert_eq!(f.mode() & 0o7777, 0o640);
        assert_eq!((f.uid(), f.gid()), (1000, 1001));
        assert_eq!(std::fs::read_link(dst.join("s")).unwrap(), Path::new("d/f"));
        let w = std::fs::symlink_metadata(dst.join("gone")).unwrap();
        assert!(w.file_type().is_char_device() && w.rdev() == 0);
        assert_eq!(
            xattr::get(dst.join("d"), "trusted.overlay.opaque").unwrap(),
            Some(b"y".to_vec())
        );
        assert!(dst.join("d/e").is_dir());
        assert_eq!(layer_digest(&src).unwrap(), layer_digest(&dst).unwrap());
    }

    #[test]
    fn digests_see_content() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("a"), b"1").unwrap();
        let d1 = layer_digest(t.path()).unwrap();
        std::fs::write(t.path().join("a"), b"2").unwrap();
        assert_ne!(d1, layer_digest(t.path()).unwrap());
    }

    #[test]
    fn hostile_paths_are_refused() {
        assert!(inside(Path::new("/u"), Path::new("../etc")).is_none());
        assert!(inside(Path::new("/u"), Path::new("/etc")).is_none());
        assert!(inside(Path::new("/u"), Path::new("a/b")).is_some());
    }
}
