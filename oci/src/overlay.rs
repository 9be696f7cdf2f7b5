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
//!
//! The destination unpacks a diff that came over the network, as root, so
//! [`unpack_diff`] takes it as hostile: every entry is created through a
//! directory fd that openat2 resolved beneath the upper directory without
//! following a symlink, and nothing is written, linked or changed outside
//! it (runc's securejoin / openat2 discipline).

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::errno::Errno;
use nix::fcntl::{openat, AtFlags, OFlag, OpenHow, ResolveFlag};
use nix::mount::{mount, MsFlags};
use nix::sys::stat::{
    fchmodat, fstat, fstatat, mkdirat, mknodat, utimensat, FchmodatFlags, Mode, SFlag,
    UtimensatFlags,
};
use nix::unistd::{fchownat, linkat, symlinkat, Gid, Uid};
use sha2::{Digest, Sha256};

use crate::criu_plan::parse_mountinfo;
use crate::error::{io, Error, Result};
use crate::runtime::securejoin::proc_fd_path;

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
/// A directory gone since its parent was read has none.
fn sorted_names(dir: &Path) -> Result<Vec<OsString>> {
    let entries = match std::fs::read_dir(dir) {
        Err(e) if vanished(&e) => return Ok(Vec::new()),
        r => r.map_err(io("reading", dir))?,
    };
    let mut names: Vec<OsString> = entries
        .map(|e| e.map(|e| e.file_name()))
        .collect::<std::io::Result<_>>()
        .map_err(io("reading", dir))?;
    names.sort();
    Ok(names)
}

/// Whether `e` says an entry is gone: a running container removed it (or
/// replaced a directory above it) after its name was read. The first pass
/// of a move ([`pack_ahead`]) walks the tree while the container runs;
/// what went is not sent, and if it came back the frozen pass finds it new.
fn vanished(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTDIR))
}

/// Whether resolving or opening an entry without following symlinks
/// failed because the tree is no longer as walked: gone ([`vanished`]), a
/// symlink where a directory or the file was (ELOOP), or a path leaving
/// the tree (EXDEV).
fn changed(e: Errno) -> bool {
    matches!(
        e,
        Errno::ENOENT | Errno::ENOTDIR | Errno::ELOOP | Errno::EXDEV
    )
}

/// Visits every entry below `root` (not `root` itself) with its path
/// relative to `root`, its full path and its metadata (symlinks not
/// followed): a directory's entries in name order, then those of each of
/// its subdirectories in name order, so that the walk is the same on every
/// host whatever the directory order on disk. An entry gone between its
/// directory's read and its own is skipped ([`vanished`]).
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
            let m = match std::fs::symlink_metadata(&p) {
                Err(e) if vanished(&e) => continue,
                m => m.map_err(io("reading", &p))?,
            };
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
    pack_ahead(upper, w).map(|(count, _)| count)
}

/// How far back of a first pass's start a change counts as made after it:
/// a file's ctime comes from the kernel's coarse clock, which may lag the
/// clock read here by a tick. Anything changed within it is sent twice,
/// which is only bytes.
const CTIME_SLACK: Duration = Duration::from_secs(1);

/// What a first pass over a tree sent ([`pack_ahead`]): every entry's type
/// and inode, and when the pass started, so that a second pass, once the
/// container is frozen, sends only what changed since ([`Sent::changes`]).
/// This takes the tree's bulk out of a migration's downtime: only the
/// files the container wrote while the first pass went (its log, say)
/// travel while it is frozen.
#[derive(Debug)]
pub struct Sent {
    since: SystemTime,
    entries: HashMap<PathBuf, (u32, u64, u64)>,
}

/// The type bits of a mode (S_IFMT).
fn kind_of(m: &std::fs::Metadata) -> u32 {
    m.mode() & libc::S_IFMT
}

fn ctime_of(m: &std::fs::Metadata) -> SystemTime {
    let (s, ns) = (m.ctime(), m.ctime_nsec());
    match u64::try_from(s) {
        Ok(s) => UNIX_EPOCH + Duration::new(s, ns.clamp(0, 999_999_999) as u32),
        Err(_) => UNIX_EPOCH,
    }
}

/// Writes the tree at `dir` (a whole root filesystem or an upper
/// directory) as [`pack_diff`] does, and remembers what it sent.
pub fn pack_ahead(dir: &Path, w: impl Write) -> Result<(DiffCount, Sent)> {
    let since = SystemTime::now()
        .checked_sub(CTIME_SLACK)
        .unwrap_or(UNIX_EPOCH);
    let mut sent = Sent {
        since,
        entries: HashMap::new(),
    };
    let mut out = Packer::new(dir, w)?;
    walk(dir, |r, p, m| {
        if out.append(r, p, m)? {
            sent.entries
                .insert(r.to_path_buf(), (kind_of(m), m.dev(), m.ino()));
        }
        Ok(())
    })?;
    Ok((out.finish()?, sent))
}

/// What changed in a tree since a first pass: what the destination removes
/// first, then the entries to write again.
#[derive(Debug)]
pub struct Changes {
    root: PathBuf,
    /// Paths the first pass sent that are gone or are sent again (a file
    /// rewritten, a name now of another type or inode), deepest first:
    /// the destination removes them, then unpacks the stream.
    pub removed: Vec<PathBuf>,
    /// Entries to send (changed ones and the directories above them, for
    /// their times and modes), in walk order.
    entries: Vec<(PathBuf, std::fs::Metadata)>,
}

impl Sent {
    /// Walks `dir` again (the container frozen) and finds what changed
    /// since the first pass: an entry whose ctime is after its start
    /// (ctime moves on any write, chmod, chown, link or rename of it, and
    /// a directory's on any entry added or removed in it), or whose name
    /// now holds another inode or type, or which is new; and every name
    /// the first pass sent that is gone.
    pub fn changes(&self, dir: &Path) -> Result<Changes> {
        let mut now: Vec<(PathBuf, std::fs::Metadata)> = Vec::new();
        walk(dir, |r, _, m| {
            if !m.file_type().is_socket() {
                now.push((r.to_path_buf(), m.clone()));
            }
            Ok(())
        })?;
        let mut present: HashSet<&Path> = HashSet::new();
        let mut send: HashSet<PathBuf> = HashSet::new();
        let mut removed = Vec::new();
        for (r, m) in &now {
            present.insert(r);
            let before = self.entries.get(r);
            let same = before == Some(&(kind_of(m), m.dev(), m.ino()));
            if same && ctime_of(m) < self.since {
                continue;
            }
            // A directory that stays one is updated in place (its
            // entries are its own business); anything else is written
            // anew over nothing, as unpack_diff creates.
            let kept_dir = m.is_dir() && before.is_some_and(|b| b.0 == libc::S_IFDIR);
            if before.is_some() && !kept_dir {
                removed.push(r.clone());
            }
            // With the directories above it, whose times the write
            // changed on the destination.
            let mut a = Some(r.as_path());
            while let Some(p) = a.filter(|p| !p.as_os_str().is_empty()) {
                if !send.insert(p.to_path_buf()) {
                    break;
                }
                a = p.parent();
            }
        }
        for r in self.entries.keys() {
            if !present.contains(r.as_path()) {
                removed.push(r.clone());
                if let Some(p) = r.parent().filter(|p| !p.as_os_str().is_empty()) {
                    send.insert(p.to_path_buf());
                }
            }
        }
        // Children before their directory.
        removed.sort_by_key(|r| std::cmp::Reverse(r.components().count()));
        let entries = now.into_iter().filter(|(r, _)| send.contains(r)).collect();
        Ok(Changes {
            root: dir.to_path_buf(),
            removed,
            entries,
        })
    }
}

impl Changes {
    /// How many entries the stream will hold.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty() && self.removed.is_empty()
    }

    /// Writes the changed entries as a [`pack_diff`] stream.
    pub fn pack(&self, w: impl Write) -> Result<DiffCount> {
        let mut out = Packer::new(&self.root, w)?;
        for (r, m) in &self.entries {
            out.append(r, &self.root.join(r), m)?;
        }
        out.finish()
    }
}

/// Writes entries of a tree as tar records (see the module's docs).
///
/// The tree is the container's: while a first pass reads it, the
/// container may swap a directory on an entry's path for a symlink to
/// anything on the host. So nothing is read by the entry's host path:
/// its directory is resolved beneath the tree's root without following a
/// symlink ([`Packer::parent`]), and the entry is read from there
/// without following its own name (openat O_NOFOLLOW, readlinkat,
/// llistxattr through /proc/self/fd/DIR/NAME): a path that no longer
/// resolves so is an entry gone, as [`vanished`] ones are.
struct Packer<'a, W: Write> {
    root: &'a Path,
    /// `root`, opened O_PATH once.
    root_fd: OwnedFd,
    b: tar::Builder<W>,
    count: DiffCount,
    /// The first name written of each multiply-linked file.
    seen: HashMap<(u64, u64), PathBuf>,
    /// The directories above the last entry written, as resolved
    /// (shallowest first; "" is the root): the walk goes depth first, so
    /// each directory is resolved once rather than once per entry in it,
    /// and no more fds stay open than the tree is deep. One packer serves
    /// one pass: the frozen pass resolves everything anew.
    dirs: Vec<(PathBuf, Rc<OwnedFd>)>,
}

impl<'a, W: Write> Packer<'a, W> {
    fn new(root: &'a Path, w: W) -> Result<Self> {
        Ok(Packer {
            root,
            root_fd: open_tree(root, "opening the tree to archive")?,
            b: tar::Builder::new(w),
            count: DiffCount::default(),
            seen: HashMap::new(),
            dirs: Vec::new(),
        })
    }

    /// The directory holding entry `r`, as an O_PATH fd resolved beneath
    /// the root with no symlink on the way, and `r`'s name in it; `None`
    /// when the path no longer resolves so (the tree changed under a first
    /// pass: the frozen pass sees what it became).
    fn parent(&mut self, r: &Path) -> Result<Option<(Rc<OwnedFd>, OsString)>> {
        let (Some(dir), Some(name)) = (r.parent(), r.file_name()) else {
            return Ok(None);
        };
        while self.dirs.last().is_some_and(|(d, _)| !dir.starts_with(d)) {
            self.dirs.pop();
        }
        if let Some((_, fd)) = self.dirs.last().filter(|(d, _)| d == dir) {
            return Ok(Some((fd.clone(), name.to_os_string())));
        }
        let rel = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        // Mounts in the tree are crossed: the walk crosses them too.
        match dir_beneath(&self.root_fd, rel, ResolveFlag::empty()) {
            Ok(fd) => {
                let fd = Rc::new(fd);
                self.dirs.push((dir.to_path_buf(), fd.clone()));
                Ok(Some((fd, name.to_os_string())))
            }
            Err(e) if changed(e) => Ok(None),
            Err(e) => Err(io("resolving in the tree to archive", &self.root.join(r))(
                e.into(),
            )),
        }
    }

    fn finish(self) -> Result<DiffCount> {
        let err = || io("archiving the writable layer", self.root);
        self.b.into_inner().map_err(err())?.flush().map_err(err())?;
        Ok(self.count)
    }

    /// Writes entry `r` (at `p`, as `m` says it was when walked); false
    /// for what is not written: a socket, which its process re-creates
    /// (CRIU binds a restored unix socket again) and tar cannot hold, and
    /// an entry gone since it was walked ([`vanished`]).
    ///
    /// The tree may change under a first pass (the container runs), and a
    /// tar stream is only whole if every entry holds the bytes its header
    /// says: everything of an entry is read (its xattrs, its file opened,
    /// its link target) before any of it is written, and a file's data is
    /// exactly the size it was walked with, cut or zero-padded if the file
    /// has grown or shrunk since (tar's own append copies to the end of the
    /// file, whatever the header said: a file written meanwhile shifted
    /// every header after it). Such a file changed after the pass began,
    /// so the frozen pass sends it again ([`Sent::changes`]).
    fn append(&mut self, r: &Path, p: &Path, m: &std::fs::Metadata) -> Result<bool> {
        if m.file_type().is_socket() {
            return Ok(false);
        }
        let Some((dir, name)) = self.parent(r)? else {
            return Ok(false);
        };
        let (b, count, seen) = (&mut self.b, &mut self.count, &mut self.seen);
        let t = m.file_type();
        // llistxattr does not follow NAME; /proc/self/fd/DIR is the pinned
        // directory (the procfd way unpack_diff sets them).
        let xattrs = match xattr_records(&proc_fd_path(&dir).join(&name)) {
            Err(e) if vanished(&e) => return Ok(false),
            x => x.map_err(io("reading the xattrs of", p))?,
        };
        let first = (t.is_file() && m.nlink() > 1)
            .then(|| seen.get(&(m.dev(), m.ino())).cloned())
            .flatten();
        let body = if let Some(first) = first {
            Body::HardLink(first)
        } else if t.is_file() {
            // O_NONBLOCK: a fifo put in the file's place must not hang the
            // move; only a regular file is read.
            let f = openat(
                Some(dir.as_raw_fd()),
                name.as_os_str(),
                OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
                Mode::empty(),
            );
            match f {
                Err(e) if changed(e) => return Ok(false),
                // SAFETY: openat returned a new fd that nothing else owns.
                Ok(fd) => {
                    let f = unsafe { File::from_raw_fd(fd) };
                    match f.metadata().map_err(io("reading", p))?.is_file() {
                        true => Body::File(f),
                        false => return Ok(false),
                    }
                }
                Err(e) => return Err(io("reading", p)(e.into())),
            }
        } else if t.is_symlink() {
            match nix::fcntl::readlinkat(Some(dir.as_raw_fd()), name.as_os_str()) {
                Err(e) if changed(e) || e == Errno::EINVAL => return Ok(false),
                l => Body::Symlink(PathBuf::from(l.map_err(|e| io("reading", p)(e.into()))?)),
            }
        } else {
            Body::Empty
        };
        if let Some(x) = xattrs {
            b.append(&x.0, &x.1[..]).map_err(io("archiving", p))?;
        }
        let mut h = tar::Header::new_gnu();
        h.set_metadata_in_mode(m, tar::HeaderMode::Complete);
        h.set_size(0);
        count.entries += 1;
        match body {
            Body::HardLink(first) => {
                // The walk's order puts a hard link's first name first.
                h.set_entry_type(tar::EntryType::Link);
                b.append_link(&mut h, r, first)
                    .map_err(io("archiving", p))?;
                count.hardlinks += 1;
            }
            Body::File(f) => {
                if m.nlink() > 1 {
                    seen.insert((m.dev(), m.ino()), r.to_path_buf());
                }
                let len = m.len();
                h.set_size(len);
                let data = f.take(len).chain(std::io::repeat(0)).take(len);
                b.append_data(&mut h, r, data).map_err(io("archiving", p))?;
            }
            Body::Symlink(target) => {
                b.append_link(&mut h, r, &target)
                    .map_err(io("archiving", p))?;
            }
            Body::Empty => {
                // Directories, fifos and devices (whiteouts are 0:0
                // character devices): set_metadata_in_mode set the type,
                // but zeroes the device numbers, which would turn every
                // device into a whiteout on the destination (hiding the
                // lower file).
                if t.is_char_device() || t.is_block_device() {
                    let (major, minor) = (
                        nix::sys::stat::major(m.rdev()),
                        nix::sys::stat::minor(m.rdev()),
                    );
                    let too_big = |_| {
                        io("archiving", p)(std::io::Error::new(
                            std::io::ErrorKind::InvalidInput,
                            "device number too large for a tar header",
                        ))
                    };
                    h.set_device_major(u32::try_from(major).map_err(too_big)?)
                        .map_err(io("archiving", p))?;
                    h.set_device_minor(u32::try_from(minor).map_err(too_big)?)
                        .map_err(io("archiving", p))?;
                }
                if t.is_char_device() && m.rdev() == 0 {
                    count.whiteouts += 1;
                }
                b.append_data(&mut h, r, std::io::empty())
                    .map_err(io("archiving", p))?;
            }
        }
        Ok(true)
    }
}

/// What an entry's tar record carries after its header, read before any
/// of the record is written ([`Packer::append`]).
enum Body {
    /// A further name of a file already written: its first name.
    HardLink(PathBuf),
    File(File),
    Symlink(PathBuf),
    /// Directories, fifos, devices.
    Empty,
}

/// A PAX header carrying `path`'s extended attributes, to write before its
/// entry, and its data; `None` when it has none.
fn xattr_records(path: &Path) -> std::io::Result<Option<(tar::Header, Vec<u8>)>> {
    let names = match xattr::list(path) {
        Ok(n) => n,
        // Filesystems without xattrs (tmpfs without user xattrs) have none.
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Ok(None),
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
        return Ok(None);
    }
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::XHeader);
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_path("././@PaxHeader")?;
    h.set_cksum();
    Ok(Some((h, data)))
}

/// Why a name in a diff cannot be a path inside the layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BadName {
    Absolute,
    DotDot,
    Root,
}

impl BadName {
    /// Said of an entry's own name.
    fn of_entry(self) -> &'static str {
        match self {
            BadName::Absolute => "its path is absolute",
            BadName::DotDot => "its path has a `..` component",
            BadName::Root => "its path names the layer's root itself",
        }
    }

    /// Said of a hard link's target.
    fn of_target(self) -> &'static str {
        match self {
            BadName::Absolute => "its target is absolute",
            BadName::DotDot => "its target has a `..` component",
            BadName::Root => "its target is the layer's root itself",
        }
    }
}

/// Where an entry goes: the directory that holds it, relative to the
/// layer's root (`.` for the root itself), and its own name. Only plain
/// names make it: an absolute name or a `..` is refused outright, as GNU
/// tar (without -P) and the tar crate's own `unpack` refuse them, and so is
/// a name that is the root itself.
fn entry_place(rel: &Path) -> std::result::Result<(PathBuf, OsString), BadName> {
    let mut parts = Vec::new();
    for c in rel.components() {
        match c {
            Component::Normal(n) => parts.push(n),
            Component::CurDir => {}
            Component::ParentDir => return Err(BadName::DotDot),
            Component::RootDir | Component::Prefix(_) => return Err(BadName::Absolute),
        }
    }
    let name = parts.pop().ok_or(BadName::Root)?;
    let parent = if parts.is_empty() {
        PathBuf::from(".")
    } else {
        parts.iter().collect()
    };
    Ok((parent, name.to_os_string()))
}

/// The tree at `path` (a writable layer being unpacked, a tree being
/// archived) as an O_PATH directory fd, which its entries are resolved
/// beneath ([`dir_beneath`]).
fn open_tree(path: &Path, op: &'static str) -> Result<OwnedFd> {
    let fd = nix::fcntl::open(
        path,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io(op, path)(e.into()))?;
    // SAFETY: open returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The directory `rel` beneath `root`, as an O_PATH fd: RESOLVE_BENEATH
/// keeps it under the root and RESOLVE_NO_SYMLINKS refuses a symlink
/// anywhere on the way (ELOOP), the last component included, with the
/// `extra` resolve flags of the caller.
fn dir_beneath(root: &OwnedFd, rel: &Path, extra: ResolveFlag) -> nix::Result<OwnedFd> {
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
        .resolve(
            ResolveFlag::RESOLVE_BENEATH
                | ResolveFlag::RESOLVE_NO_SYMLINKS
                | ResolveFlag::RESOLVE_NO_MAGICLINKS
                | extra,
        );
    let fd = nix::fcntl::openat2(root.as_raw_fd(), rel, how)?;
    // SAFETY: openat2 returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The upper directory being filled, held open. Every entry is created
/// relative to a directory fd resolved beneath it and named by one plain
/// component, never through a path string joined onto `upper`: what an
/// earlier entry made (a symlink to /etc, say) cannot redirect a later one.
struct Upper<'a> {
    path: &'a Path,
    root: OwnedFd,
}

impl<'a> Upper<'a> {
    fn open(path: &'a Path) -> Result<Self> {
        let root = open_tree(path, "opening the writable layer")?;
        Ok(Upper { path, root })
    }

    /// The directory `rel` (a parent [`entry_place`] gave), as an `O_PATH`
    /// fd. RESOLVE_BENEATH keeps the walk under the root, and
    /// RESOLVE_NO_SYMLINKS refuses a symlink anywhere on the way, the last
    /// component included: [`pack_diff`]'s walk never descends into a
    /// symlink, so no real diff has an entry below one. RESOLVE_IN_ROOT
    /// (securejoin's `open_in_root`, right for a container's mount
    /// destinations) would follow `d -> /etc` to `<upper>/etc`: inside, but
    /// somewhere the source had nothing, so it is refused instead.
    /// RESOLVE_NO_XDEV: nor is a mount inside the upper directory crossed.
    fn dir(&self, rel: &Path) -> nix::Result<OwnedFd> {
        dir_beneath(&self.root, rel, ResolveFlag::RESOLVE_NO_XDEV)
    }

    /// What a failed resolution of `entry`'s directory (or of its hard
    /// link's `target`) means: the stream's fault, said so, or the host's.
    fn resolve_error(&self, e: Errno, entry: &Path, target: Option<&Path>) -> Error {
        let why = match e {
            Errno::ELOOP => {
                "a directory on its path is a symlink, and none is followed while unpacking"
            }
            Errno::ENOTDIR => "a component of its path is not a directory",
            Errno::ENOENT => "its directory is not in the layer before it",
            Errno::EXDEV => "its path leaves the layer or crosses a mount in it",
            e => return io("resolving in the writable layer", &self.path.join(entry))(e.into()),
        };
        refused(entry, target, why)
    }
}

fn refused(entry: &Path, target: Option<&Path>, why: &'static str) -> Error {
    Error::LayerEntryRefused {
        entry: entry.to_path_buf(),
        target: target.map(Path::to_path_buf),
        why,
    }
}

/// Why creating an entry found its name taken: a diff names each path once,
/// and what is there is neither replaced nor followed (a file entry over
/// a symlink to the host's /etc/passwd would otherwise write there).
const TAKEN: &str = "its name is taken already (a diff names each path once)";

/// Extracts a stream made by [`pack_diff`] into `upper`, as a new overlay's
/// upper layer: empty, or holding only directories (dockerd makes a new
/// container's working directory there), which the stream's own are merged
/// with.
///
/// The stream comes from the network (`ferry serve`, as root), so it is
/// unpacked as if hostile, as runc's securejoin and openat2 would: nothing
/// is created, changed or linked outside `upper` nor through a symlink in
/// it. Names that are absolute or hold `..`, a directory on a path that is
/// a symlink or missing, a name taken already, and a hard link to anything
/// but a regular file this unpack wrote are refused with
/// [`Error::LayerEntryRefused`]. A symlink's target is stored as it is (it
/// is the container's, resolved in the container) and never followed here.
/// Modes, set-id bits, devices, owners and xattrs are what the stream says.
pub fn unpack_diff(r: impl Read, upper: &Path) -> Result<DiffCount> {
    let err = |p: &Path| io("extracting the writable layer into", p);
    let layer = Upper::open(upper)?;
    let mut a = tar::Archive::new(r);
    let mut count = DiffCount::default();
    // Directory modes and times are set last: writing into a directory
    // changes its mtime, and a read-only mode would stop the writes.
    let mut dirs = Vec::new();
    // The regular files this unpack wrote, the only ones a hard link may
    // name ([`pack_diff`] writes a file's first name before its links).
    let mut files: HashSet<(libc::dev_t, libc::ino_t)> = HashSet::new();
    for e in a.entries().map_err(err(upper))? {
        let mut e = e.map_err(err(upper))?;
        // The effective name (a PAX `path` or GNU long name included).
        let rel = e.path().map_err(err(upper))?.into_owned();
        let (parent_rel, name) =
            entry_place(&rel).map_err(|b| refused(&rel, None, b.of_entry()))?;
        // For messages only: nothing is ever opened by this path.
        let dst = upper.join(&rel);
        let parent = layer
            .dir(&parent_rel)
            .map_err(|e| layer.resolve_error(e, &rel, None))?;
        let pfd = Some(parent.as_raw_fd());
        let name = name.as_os_str();
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
        let taken = |e: Errno| match e {
            Errno::EEXIST => refused(&rel, None, TAKEN),
            e => err(&dst)(e.into()),
        };
        count.entries += 1;
        // Everything is created owner-only (0700, 0600) and gets its owner,
        // then its mode: nobody else can use a set-id file or a device
        // before it is what the stream says, and chown(2) would clear the
        // set-id bits if the mode came first.
        match kind {
            tar::EntryType::Directory => match mkdirat(pfd, name, Mode::S_IRWXU) {
                Ok(()) => {}
                Err(Errno::EEXIST) => {
                    let st = fstatat(pfd, name, AtFlags::AT_SYMLINK_NOFOLLOW)
                        .map_err(|e| err(&dst)(e.into()))?;
                    if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
                        return Err(refused(&rel, None, TAKEN));
                    }
                }
                Err(e) => return Err(err(&dst)(e.into())),
            },
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let fd = openat(
                    pfd,
                    name,
                    OFlag::O_WRONLY
                        | OFlag::O_CREAT
                        | OFlag::O_EXCL
                        | OFlag::O_NOFOLLOW
                        | OFlag::O_CLOEXEC,
                    Mode::S_IRUSR | Mode::S_IWUSR,
                )
                .map_err(taken)?;
                // SAFETY: openat returned a new fd that nothing else owns.
                let mut f = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
                std::io::copy(&mut e, &mut f).map_err(err(&dst))?;
                let st = fstat(f.as_raw_fd()).map_err(|e| err(&dst)(e.into()))?;
                files.insert((st.st_dev, st.st_ino));
            }
            tar::EntryType::Symlink => {
                let target = e
                    .link_name()
                    .map_err(err(&dst))?
                    .filter(|t| !t.as_os_str().is_empty())
                    .ok_or(Error::Protocol {
                        what: "a symlink without a target in the writable layer",
                    })?;
                symlinkat(target.as_os_str(), pfd, name).map_err(taken)?;
            }
            tar::EntryType::Link => {
                let target = e
                    .link_name()
                    .map_err(err(&dst))?
                    .ok_or(Error::Protocol {
                        what: "a hard link without a target in the writable layer",
                    })?
                    .into_owned();
                let (tparent, tname) = entry_place(&target)
                    .map_err(|b| refused(&rel, Some(&target), b.of_target()))?;
                let tdir = layer
                    .dir(&tparent)
                    .map_err(|e| layer.resolve_error(e, &rel, Some(&target)))?;
                let tfd = Some(tdir.as_raw_fd());
                let st =
                    fstatat(tfd, tname.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW).map_err(|e| {
                        match e {
                            Errno::ENOENT => {
                                refused(&rel, Some(&target), "its target is not in the layer")
                            }
                            e => err(&dst)(e.into()),
                        }
                    })?;
                if st.st_mode & libc::S_IFMT != libc::S_IFREG
                    || !files.contains(&(st.st_dev, st.st_ino))
                {
                    return Err(refused(
                        &rel,
                        Some(&target),
                        "its target is not a regular file of this diff written before it",
                    ));
                }
                // No AT_SYMLINK_FOLLOW: linkat links the name itself, both
                // names one component in a directory resolved inside.
                linkat(tfd, tname.as_os_str(), pfd, name, AtFlags::empty()).map_err(taken)?;
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
                mknodat(
                    pfd,
                    name,
                    ty,
                    Mode::S_IRUSR | Mode::S_IWUSR,
                    nix::sys::stat::makedev(major as u64, minor as u64),
                )
                .map_err(taken)?;
            }
            _ => {
                return Err(Error::Protocol {
                    what: "an entry type a writable layer cannot hold",
                })
            }
        }
        // From here on every call names the entry by its directory's fd and
        // its one-component name, and none follows it if it is a symlink.
        let owner = |id: u64| {
            u32::try_from(id).map_err(|_| refused(&rel, None, "its owner is out of range"))
        };
        let uid = Uid::from_raw(owner(h.uid().map_err(err(&dst))?)?);
        let gid = Gid::from_raw(owner(h.gid().map_err(err(&dst))?)?);
        fchownat(
            pfd,
            name,
            Some(uid),
            Some(gid),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(|e| err(&dst)(e.into()))?;
        // There is no fsetxattr on an O_PATH fd (nor on a device node or a
        // symlink opened otherwise): lsetxattr on /proc/self/fd/DIR/NAME
        // goes to the pinned directory, then does not follow NAME (runc's
        // procfd way).
        let handle = proc_fd_path(&parent).join(name);
        for (k, v) in &xattrs {
            xattr::set(&handle, k, v).map_err(err(&dst))?;
        }
        let mtime = h.mtime().map_err(err(&dst))? as i64;
        if kind == tar::EntryType::Directory {
            dirs.push((parent_rel, name.to_os_string(), rel, mode, mtime));
            continue;
        }
        if kind != tar::EntryType::Symlink {
            set_mode(pfd, name, mode).map_err(|e| err(&dst)(e.into()))?;
        }
        set_mtime(pfd, name, mtime).map_err(|e| err(&dst)(e.into()))?;
    }
    for (parent_rel, name, rel, mode, mtime) in dirs.into_iter().rev() {
        let dst = upper.join(&rel);
        let parent = layer
            .dir(&parent_rel)
            .map_err(|e| layer.resolve_error(e, &rel, None))?;
        let pfd = Some(parent.as_raw_fd());
        set_mode(pfd, &name, mode).map_err(|e| err(&dst)(e.into()))?;
        set_mtime(pfd, &name, mtime).map_err(|e| err(&dst)(e.into()))?;
    }
    Ok(count)
}

/// Removes what a [`Changes`] names from a tree a first pass filled
/// (before the changed entries are unpacked over it), children first. As
/// hostile as [`unpack_diff`]: each name is removed through its directory
/// resolved beneath `upper` without following a symlink; a directory that
/// still holds something the list does not name is refused.
pub fn remove_entries(upper: &Path, removed: &[PathBuf]) -> Result<()> {
    let layer = Upper::open(upper)?;
    for rel in removed {
        let (parent_rel, name) = entry_place(rel).map_err(|b| refused(rel, None, b.of_entry()))?;
        let parent = match layer.dir(&parent_rel) {
            Ok(fd) => fd,
            // Gone with its directory already.
            Err(Errno::ENOENT) => continue,
            Err(e) => return Err(layer.resolve_error(e, rel, None)),
        };
        let dst = upper.join(rel);
        let unlink = |flag| nix::unistd::unlinkat(Some(parent.as_raw_fd()), name.as_os_str(), flag);
        match unlink(nix::unistd::UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => {}
            Err(Errno::EISDIR) => match unlink(nix::unistd::UnlinkatFlags::RemoveDir) {
                Ok(()) | Err(Errno::ENOENT) => {}
                Err(Errno::ENOTEMPTY) => {
                    return Err(refused(
                        rel,
                        None,
                        "it is a directory holding entries the removal does not name",
                    ))
                }
                Err(e) => return Err(io("removing", &dst)(e.into())),
            },
            Err(e) => return Err(io("removing", &dst)(e.into())),
        }
    }
    Ok(())
}

/// Sets the permission bits (set-id and sticky bits included) of `name` in
/// `dir`. AT_SYMLINK_NOFOLLOW: glibc refuses a symlink rather than change
/// what it points at.
fn set_mode(dir: Option<RawFd>, name: &OsStr, mode: u32) -> nix::Result<()> {
    fchmodat(
        dir,
        name,
        Mode::from_bits_truncate(mode & 0o7777),
        FchmodatFlags::NoFollowSymlink,
    )
}

/// Sets the modification time of `name` in `dir` (not of what a symlink
/// points at).
fn set_mtime(dir: Option<RawFd>, name: &OsStr, secs: i64) -> nix::Result<()> {
    let t = nix::sys::time::TimeSpec::new(secs, 0);
    utimensat(
        dir,
        name,
        &nix::sys::time::TimeSpec::UTIME_OMIT,
        &t,
        UtimensatFlags::NoFollowSymlink,
    )
}

/// The name a destination gives a received layer's parts.
pub fn layer_dirs(dir: &Path) -> (PathBuf, PathBuf) {
    (dir.join("upper"), dir.join("work"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::stat::mknod;

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

    /// A first pass while the container runs, then only what changed:
    /// appends, removals, renames over, type changes, new links, modes
    /// and new trees arrive; the untouched bulk does not travel again;
    /// the trees end equal.
    #[test]
    fn a_second_pass_sends_only_what_changed_and_the_trees_end_equal() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let (src, dst) = (t.path().join("src"), t.path().join("dst"));
        for d in ["a/b", "old/x/y", "d2f/in"] {
            std::fs::create_dir_all(src.join(d)).unwrap();
        }
        std::fs::write(src.join("a/keep"), vec![7u8; 1 << 20]).unwrap();
        for f in ["a/b/c", "log", "old/x/y/z", "f2d", "d2f/in/f", "mv", "hl"] {
            std::fs::write(src.join(f), f.as_bytes()).unwrap();
        }
        // Older than the first pass by more than the ctime slack.
        std::thread::sleep(CTIME_SLACK + Duration::from_millis(100));
        let mut first = Vec::new();
        let (_, sent) = pack_ahead(&src, &mut first).unwrap();
        std::fs::create_dir(&dst).unwrap();
        unpack_diff(&first[..], &dst).unwrap();

        let mut log = std::fs::OpenOptions::new()
            .append(true)
            .open(src.join("log"))
            .unwrap();
        log.write_all(b" and more").unwrap();
        std::fs::remove_dir_all(src.join("old")).unwrap();
        std::fs::remove_file(src.join("f2d")).unwrap();
        std::fs::create_dir(src.join("f2d")).unwrap();
        std::fs::write(src.join("f2d/now"), b"a dir").unwrap();
        std::fs::remove_dir_all(src.join("d2f")).unwrap();
        std::fs::write(src.join("d2f"), b"a file").unwrap();
        std::fs::write(src.join("mv.tmp"), b"renamed over").unwrap();
        std::fs::rename(src.join("mv.tmp"), src.join("mv")).unwrap();
        std::fs::hard_link(src.join("hl"), src.join("hl2")).unwrap();
        std::fs::set_permissions(src.join("a/b"), PermissionsExt::from_mode(0o750)).unwrap();
        std::fs::create_dir_all(src.join("n/m")).unwrap();
        std::fs::write(src.join("n/m/f"), b"new").unwrap();
        let sock = std::os::unix::net::UnixListener::bind(src.join("sock")).unwrap();

        let changes = sent.changes(&src).unwrap();
        let mut second = Vec::new();
        let count = changes.pack(&mut second).unwrap();
        assert!(second.len() < 64 << 10, "the untouched file went again");
        assert_eq!(count.hardlinks, 1);
        remove_entries(&dst, &changes.removed).unwrap();
        unpack_diff(&second[..], &dst).unwrap();
        drop(sock);
        assert!(
            !dst.join("sock").exists(),
            "a socket is its process's to bind"
        );
        std::fs::remove_file(src.join("sock")).unwrap();
        assert_eq!(layer_digest(&src).unwrap(), layer_digest(&dst).unwrap());
        assert_eq!(
            std::fs::metadata(dst.join("hl")).unwrap().ino(),
            std::fs::metadata(dst.join("hl2")).unwrap().ino()
        );
        let mtime = |p: &Path| std::fs::metadata(p).unwrap().mtime();
        for d in ["a", "a/b", "f2d", "n/m"] {
            assert_eq!(mtime(&src.join(d)), mtime(&dst.join(d)), "{d}'s mtime");
        }
        // Nothing changed: nothing to send, nothing to remove.
        let (_, sent) = {
            let mut again = Vec::new();
            std::thread::sleep(CTIME_SLACK + Duration::from_millis(100));
            pack_ahead(&src, &mut again).unwrap()
        };
        assert!(sent.changes(&src).unwrap().is_empty());
    }

    /// The entries `names` of `src` as a walk sees them now.
    fn walk_of(src: &Path, names: &[&str]) -> Vec<(PathBuf, std::fs::Metadata)> {
        names
            .iter()
            .map(|r| {
                (
                    PathBuf::from(r),
                    std::fs::symlink_metadata(src.join(r)).unwrap(),
                )
            })
            .collect()
    }

    /// A first pass over `src` as walked in `walked` (the tree may have
    /// changed since): its stream, and which entries it wrote.
    fn pack_walked(src: &Path, walked: &[(PathBuf, std::fs::Metadata)]) -> (Vec<u8>, Vec<bool>) {
        let mut stream = Vec::new();
        let mut out = Packer::new(src, &mut stream).unwrap();
        let written = walked
            .iter()
            .map(|(r, m)| out.append(r, &src.join(r), m).unwrap())
            .collect();
        out.finish().unwrap();
        (stream, written)
    }

    /// The first pass reads a running container's tree: files grow, shrink
    /// and go between the walk and their read. The stream stays whole
    /// (every entry as long as its header says), what went is not sent,
    /// and the frozen pass sends the changed files right.
    #[test]
    fn a_tree_changing_under_the_first_pass_gives_a_whole_stream() {
        let t = tempfile::tempdir().unwrap();
        let (src, dst) = (t.path().join("src"), t.path().join("dst"));
        std::fs::create_dir_all(src.join("gone-dir")).unwrap();
        std::fs::create_dir(&dst).unwrap();
        std::fs::write(src.join("grows"), vec![1u8; 100 << 10]).unwrap();
        std::fs::write(src.join("shrinks"), vec![2u8; 10 << 10]).unwrap();
        std::fs::write(src.join("goes"), b"here").unwrap();
        std::fs::write(src.join("gone-dir/f"), b"here").unwrap();
        std::fs::write(src.join("stays"), b"as it was").unwrap();
        let walked = walk_of(
            &src,
            &[
                "gone-dir",
                "gone-dir/f",
                "goes",
                "grows",
                "shrinks",
                "stays",
            ],
        );
        // What the container does between the walk and the reads.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(src.join("grows"))
            .unwrap();
        f.write_all(&vec![3u8; 300 << 10]).unwrap();
        std::fs::write(src.join("shrinks"), b"short").unwrap();
        std::fs::remove_file(src.join("goes")).unwrap();
        std::fs::remove_dir_all(src.join("gone-dir")).unwrap();

        let (first, written) = pack_walked(&src, &walked);
        // What went is not sent, the directory and its file included.
        assert_eq!(written, [false, false, false, true, true, true]);
        unpack_diff(&first[..], &dst).unwrap();
        let read = |p: &str| std::fs::read(dst.join(p)).unwrap();
        assert_eq!(
            read("grows"),
            vec![1u8; 100 << 10],
            "cut to its walked size"
        );
        let mut short = b"short".to_vec();
        short.resize(10 << 10, 0);
        assert_eq!(read("shrinks"), short, "zero-padded to its walked size");
        assert_eq!(read("stays"), b"as it was", "the entry after them");
        assert!(!dst.join("goes").exists());

        // Frozen, the second pass mends both (they changed after the first
        // began) and removes what went.
        let sent = Sent {
            since: SystemTime::now() - Duration::from_secs(60),
            entries: walked
                .iter()
                .zip(&written)
                .filter(|(_, w)| **w)
                .map(|((r, m), _)| (r.clone(), (kind_of(m), m.dev(), m.ino())))
                .collect(),
        };
        let changes = sent.changes(&src).unwrap();
        let mut second = Vec::new();
        changes.pack(&mut second).unwrap();
        remove_entries(&dst, &changes.removed).unwrap();
        unpack_diff(&second[..], &dst).unwrap();
        assert_eq!(layer_digest(&src).unwrap(), layer_digest(&dst).unwrap());
    }

    /// A container racing the first pass swaps a directory on an entry's
    /// path for a symlink to the host's files, and a file for a symlink or
    /// a fifo: nothing outside the tree is read, nothing hangs, and the
    /// stream stays whole.
    #[test]
    fn a_symlink_swapped_in_under_the_first_pass_reads_nothing_outside() {
        let t = tempfile::tempdir().unwrap();
        let (src, dst, host) = (
            t.path().join("src"),
            t.path().join("dst"),
            t.path().join("host"),
        );
        for d in [src.join("d"), dst.clone(), host.clone()] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(src.join("d/secret"), b"container's").unwrap();
        std::fs::write(src.join("f"), b"container's").unwrap();
        std::fs::write(src.join("fifo"), b"container's").unwrap();
        std::fs::write(src.join("stays"), b"as it was").unwrap();
        std::fs::write(host.join("secret"), b"the host's!").unwrap();
        let walked = walk_of(&src, &["d", "d/secret", "f", "fifo", "stays"]);
        std::fs::rename(src.join("d"), src.join("d.old")).unwrap();
        std::os::unix::fs::symlink(&host, src.join("d")).unwrap();
        std::fs::remove_file(src.join("f")).unwrap();
        std::os::unix::fs::symlink(host.join("secret"), src.join("f")).unwrap();
        std::fs::remove_file(src.join("fifo")).unwrap();
        nix::unistd::mkfifo(&src.join("fifo"), Mode::from_bits_truncate(0o644)).unwrap();

        let (first, written) = pack_walked(&src, &walked);
        // "d" is written as the directory it was walked as (its xattrs and
        // times come from the symlink's own name, not followed); what lies
        // behind a symlink is not read.
        assert_eq!(written, [true, false, false, false, true]);
        assert!(
            !first.windows(11).any(|w| w == b"the host's!"),
            "the host's file went into the stream"
        );
        unpack_diff(&first[..], &dst).unwrap();
        assert_eq!(std::fs::read(dst.join("stays")).unwrap(), b"as it was");
        assert!(!dst.join("d/secret").exists() && !dst.join("f").exists());
    }

    /// A removal list is as hostile as a stream: nothing outside the tree,
    /// nothing through a symlink, no directory emptied behind its back.
    #[test]
    fn removals_stay_beneath_the_tree() {
        let t = tempfile::tempdir().unwrap();
        let (tree, outside) = (t.path().join("tree"), t.path().join("outside"));
        std::fs::create_dir_all(tree.join("d")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("victim"), b"x").unwrap();
        std::fs::write(tree.join("d/kept"), b"x").unwrap();
        std::os::unix::fs::symlink(&outside, tree.join("link")).unwrap();
        for bad in ["../outside/victim", "/etc/hostname", "link/victim", "d"] {
            let e = remove_entries(&tree, &[PathBuf::from(bad)]).unwrap_err();
            assert!(matches!(e, Error::LayerEntryRefused { .. }), "{bad}: {e:?}");
        }
        assert!(outside.join("victim").exists() && tree.join("d/kept").exists());
        remove_entries(&tree, &[PathBuf::from("d/kept"), PathBuf::from("d")]).unwrap();
        assert!(!tree.join("d").exists());
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
        assert_eq!(entry_place(Path::new("../etc")), Err(BadName::DotDot));
        assert_eq!(entry_place(Path::new("a/../../etc")), Err(BadName::DotDot));
        assert_eq!(entry_place(Path::new("/etc")), Err(BadName::Absolute));
        assert_eq!(entry_place(Path::new(".")), Err(BadName::Root));
        assert_eq!(
            entry_place(Path::new("a/b")).unwrap(),
            (PathBuf::from("a"), OsString::from("b"))
        );
        assert_eq!(
            entry_place(Path::new("./b/")).unwrap(),
            (PathBuf::from("."), OsString::from("b"))
        );
    }
}
