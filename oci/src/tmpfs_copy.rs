//! The tmpfs mounts the runtime made for a container (/dev, /dev/shm, a
//! docker `--tmpfs`), copied by Ferry on dump and made anew on restore,
//! where CRIU would run `tar --create --gzip` for each on dump and
//! `tar --extract --gzip` on restore (filesystems.c, `tmpfs_dump`), each a
//! process of its own inside the downtime: ~5-7 ms apiece for a busybox's
//! /dev and /dev/shm here, and gzip's CPU for whatever /dev/shm holds.
//!
//! Which mounts: [`crate::criu_plan::own_tmpfs_mounts`] (a whole private tmpfs no
//! other mount shows). The dump names them external
//! ([`OwnTmpfs::key`]) and [`Capture`] copies each while CRIU
//! dumps the rest, on a thread of its own: the caller froze the container
//! before, and the copy is joined at CRIU's `post-dump` notify, before the
//! images are complete (a failed copy fails the dump, which resumes the
//! container). The copy reads a detached clone of the mount made in the
//! container's mount namespace (open_tree(2)), so it sees the tmpfs's own
//! entries, not what /dev/pts or /dev/shm mount over them, as CRIU sees
//! them in a mount namespace of its own; the tree goes as
//! [`crate::overlay::pack_diff`] writes it (device nodes, hard links,
//! xattrs, owners, modes, times; not sockets, which tar skips too).
//!
//! The restore ([`restore`]) mounts a tmpfs with the superblock options
//! mountinfo showed (size, mode, uid, ...) in the state dir, unpacks the
//! copy there as a hostile stream ([`crate::overlay::unpack_diff`]: the
//! images may have come over the network) and hands it to CRIU under the
//! same name; CRIU binds it and sets the mount's own flags as dumped
//! (nosuid, nodev, ...: mount-v2.c `do_bind_mount_v2`).

use std::fs::{self, File};
use std::io::BufWriter;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use nix::mount::MsFlags;
use nix::sched::CloneFlags;
use nix::unistd::Pid;

use crate::criu_plan::OwnTmpfs;
use crate::error::{io, Error, Result};
use crate::mount::StateTmpfs;

/// The record of what was copied, in the image directory.
pub const RECORD: &str = "ferry-tmpfs.json";

/// One copied tmpfs, as the restore makes it again.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Copied {
    /// Its container path.
    pub mountpoint: String,
    /// mountinfo's source ("tmpfs", "shm").
    pub source: String,
    /// The superblock's options (tmpfs(5): size=, nr_inodes=, mode=, ...).
    pub options: Vec<String>,
    /// The superblock is read-only.
    pub read_only: bool,
    /// Its root directory's mode, owner, group and modification time (as
    /// CRIU's tar keeps them).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: (i64, i64),
}

/// The archive of the `i`th copied tmpfs.
fn archive_name(i: usize) -> String {
    format!("ferry-tmpfs-{i}.tar")
}

/// tmpfs(5) options a restore passes on; anything else in a record is
/// refused (the images may have come from another host).
const OPTIONS: &[&str] = &[
    "size",
    "nr_blocks",
    "nr_inodes",
    "mode",
    "uid",
    "gid",
    "huge",
    "mpol",
    "inode32",
    "inode64",
    "noswap",
    "quota",
    "usrquota",
    "grpquota",
];

/// The superblock options of `super_options` a new tmpfs takes ("rw"/"ro"
/// are the mount's, set apart).
fn tmpfs_options(super_options: &str) -> (bool, Vec<String>) {
    let mut read_only = false;
    let mut out = Vec::new();
    for o in super_options.split(',').filter(|o| !o.is_empty()) {
        match o {
            "rw" => {}
            "ro" => read_only = true,
            o => out.push(o.to_string()),
        }
    }
    (read_only, out)
}

/// The copies being made while CRIU dumps; [`Capture::finish`] waits for
/// them.
#[derive(Debug)]
pub struct Capture {
    thread: Option<JoinHandle<Result<()>>>,
    images: PathBuf,
}

impl Capture {
    /// Starts copying `mounts` of the container whose init is `init` into
    /// `images`. The container must be frozen until [`Capture::finish`].
    pub fn start(init: Pid, mounts: Vec<OwnTmpfs>, images: &Path) -> Result<Capture> {
        if mounts.is_empty() {
            // A record left by an earlier dump into this directory would
            // make the restore bind tmpfs mounts CRIU restores itself.
            let stale = images.join(RECORD);
            match fs::remove_file(&stale) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io("removing", &stale)(e)),
            }
            return Ok(Capture {
                thread: None,
                images: images.to_path_buf(),
            });
        }
        // Opened here: the thread leaves this mount namespace for a while,
        // and a relative image path means nothing there.
        let create = |p: PathBuf| {
            fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&p)
                .map_err(io("creating", &p))
        };
        let record = create(images.join(RECORD))?;
        let archives = (0..mounts.len())
            .map(|i| create(images.join(archive_name(i))))
            .collect::<Result<Vec<File>>>()?;
        let ns = PathBuf::from(format!("/proc/{init}/ns/mnt"));
        let theirs = File::open(&ns).map_err(io("opening", &ns))?;
        let self_ns = Path::new("/proc/self/ns/mnt");
        let ours = File::open(self_ns).map_err(io("opening", self_ns))?;
        let thread = std::thread::Builder::new()
            .name("ferry-tmpfs-copy".into())
            .spawn(move || copy(theirs, ours, &mounts, archives, record))
            .map_err(io("starting a thread to copy tmpfs mounts into", images))?;
        Ok(Capture {
            thread: Some(thread),
            images: images.to_path_buf(),
        })
    }

    /// Waits for the copies (once; later calls return Ok).
    pub fn finish(&mut self) -> Result<()> {
        match self.thread.take() {
            None => Ok(()),
            Some(t) => t.join().unwrap_or_else(|_| {
                Err(Error::Io {
                    op: "copying the container's tmpfs mounts into",
                    path: self.images.clone(),
                    source: std::io::Error::other("the copying thread panicked"),
                })
            }),
        }
    }
}

/// Clones each mount in the container's mount namespace (`theirs`), comes
/// back to `ours`, and writes each clone's tree into its archive.
fn copy(
    theirs: File,
    ours: File,
    mounts: &[OwnTmpfs],
    archives: Vec<File>,
    record: File,
) -> Result<()> {
    // setns(2) of a mount namespace wants a thread that shares no
    // filesystem context (root, cwd) with the others.
    let ns = Path::new("the container's mount namespace");
    let ns_err = |e: nix::Error| io("entering", ns)(e.into());
    nix::sched::unshare(CloneFlags::CLONE_FS).map_err(ns_err)?;
    nix::sched::setns(theirs.as_fd(), CloneFlags::CLONE_NEWNS).map_err(ns_err)?;
    let trees: Vec<std::io::Result<OwnedFd>> = mounts
        .iter()
        .map(|m| crate::mount::clone_tree(Path::new(&m.mountpoint), false))
        .collect();
    nix::sched::setns(ours.as_fd(), CloneFlags::CLONE_NEWNS)
        .map_err(|e| io("leaving", ns)(e.into()))?;
    let mut copied = Vec::new();
    for ((m, tree), archive) in mounts.iter().zip(trees).zip(archives) {
        let at = PathBuf::from(&m.mountpoint);
        let tree = tree.map_err(io("cloning the container's tmpfs at", &at))?;
        let root = PathBuf::from(format!("/proc/thread-self/fd/{}", tree.as_raw_fd()));
        let meta = fs::metadata(&root).map_err(io("reading the container's tmpfs at", &at))?;
        // What mountinfo showed there, looked at before the freeze.
        let dev = format!(
            "{}:{}",
            nix::sys::stat::major(meta.dev()),
            nix::sys::stat::minor(meta.dev())
        );
        if dev != m.dev {
            return Err(Error::InvalidArgument {
                what: format!("the container's tmpfs at {}", m.mountpoint),
                reason: format!(
                    "its mount changed since it was looked at ({} then, {dev} now)",
                    m.dev
                ),
            });
        }
        crate::overlay::pack_diff(&root, BufWriter::new(archive))?;
        let (read_only, options) = tmpfs_options(&m.super_options);
        copied.push(Copied {
            mountpoint: m.mountpoint.clone(),
            source: m.source.clone(),
            read_only,
            options,
            mode: meta.mode() & 0o7777,
            uid: meta.uid(),
            gid: meta.gid(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
        });
    }
    serde_json::to_writer(BufWriter::new(record), &copied).map_err(|source| Error::Json {
        path: PathBuf::from(RECORD),
        source,
    })
}

/// Checks a record that came with the images.
fn check(file: &Path, c: &Copied) -> Result<()> {
    let bad = |reason: String| Error::InvalidArgument {
        what: file.display().to_string(),
        reason,
    };
    let mp = Path::new(&c.mountpoint);
    if !mp.is_absolute()
        || mp.components().any(|c| {
            !matches!(
                c,
                std::path::Component::RootDir | std::path::Component::Normal(_)
            )
        })
    {
        return Err(bad(format!(
            "{:?} is not a plain container path",
            c.mountpoint
        )));
    }
    if let Some(o) = c.options.iter().find(|o| {
        let name = o.split_once('=').map_or(o.as_str(), |(n, _)| n);
        !OPTIONS.contains(&name) || o.contains(',')
    }) {
        return Err(bad(format!("{o:?} is not a tmpfs option Ferry passes on")));
    }
    if c.source.contains(',') || c.source.is_empty() {
        return Err(bad(format!("{:?} is not a mount source", c.source)));
    }
    Ok(())
}

/// Makes each tmpfs copied at dump time in `state_dir` (mounted into
/// `made`, detached when it drops) with its content, and returns the
/// external mounts that hand them to CRIU. Nothing when the images have no
/// copies (CRIU dumped the tmpfs mounts itself).
pub fn restore(
    images: &Path,
    state_dir: &Path,
    made: &mut StateTmpfs,
) -> Result<Vec<criu_rpc::ExtMount>> {
    let file = images.join(RECORD);
    if !file.exists() {
        return Ok(Vec::new());
    }
    let text = fs::read(&file).map_err(io("reading", &file))?;
    let copied: Vec<Copied> = serde_json::from_slice(&text).map_err(|source| Error::Json {
        path: file.clone(),
        source,
    })?;
    for c in &copied {
        check(&file, c)?;
    }
    let mut ext = Vec::new();
    for (i, c) in copied.iter().enumerate() {
        let at = state_dir.join(format!("tmpfs-{i}"));
        // nosuid, nodev, noexec while it sits in the state dir; CRIU's bind
        // gets the flags the container's mount had.
        let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
        let data = c.options.join(",");
        made.mount(&c.source, &at, flags, &data)?;
        let archive = images.join(archive_name(i));
        let r = File::open(&archive).map_err(io("opening", &archive))?;
        crate::overlay::unpack_diff(std::io::BufReader::new(r), &at)?;
        nix::unistd::chown(
            &at,
            Some(nix::unistd::Uid::from_raw(c.uid)),
            Some(nix::unistd::Gid::from_raw(c.gid)),
        )
        .map_err(|e| io("setting the owner of", &at)(e.into()))?;
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&at, fs::Permissions::from_mode(c.mode & 0o7777))
            .map_err(io("setting the mode of", &at))?;
        let mtime = nix::sys::time::TimeSpec::new(c.mtime.0, c.mtime.1.clamp(0, 999_999_999));
        nix::sys::stat::utimensat(
            None,
            &at,
            &mtime,
            &mtime,
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        )
        .map_err(|e| io("setting the times of", &at)(e.into()))?;
        if c.read_only {
            let ro = flags | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
            nix::mount::mount(None::<&str>, &at, None::<&str>, ro, Some(data.as_str()))
                .map_err(|e| io("making read-only the tmpfs on", &at)(e.into()))?;
        }
        ext.push(criu_rpc::ExtMount {
            key: crate::criu_plan::own_tmpfs_key(&c.mountpoint),
            value: at.to_string_lossy().into_owned(),
        });
    }
    Ok(ext)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_superblocks_options_pass_on_without_rw_or_ro() {
        assert_eq!(
            tmpfs_options("rw,size=65536k,mode=755"),
            (
                false,
                vec!["size=65536k".to_string(), "mode=755".to_string()]
            )
        );
        assert_eq!(tmpfs_options("ro"), (true, vec![]));
    }

    /// A tmpfs copied from this process's own mount namespace and made
    /// again: its entries, not what a mount covers them with; its options.
    #[test]
    fn a_tmpfs_is_copied_and_made_again_without_what_covers_it() {
        use std::os::unix::fs::{FileTypeExt, PermissionsExt};
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        fs::create_dir(&src).unwrap();
        let mut mounted = StateTmpfs::default();
        let src_dir = src.join("t");
        mounted
            .mount("ferry-test", &src_dir, MsFlags::empty(), "size=1m,mode=750")
            .unwrap();
        fs::write(src_dir.join("file"), b"content").unwrap();
        std::os::unix::fs::symlink("file", src_dir.join("link")).unwrap();
        nix::sys::stat::mknod(
            &src_dir.join("null"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o666),
            nix::sys::stat::makedev(1, 3),
        )
        .unwrap();
        fs::create_dir(src_dir.join("pts")).unwrap();
        fs::write(src_dir.join("pts/under"), b"").unwrap();
        let over = src_dir.join("pts");
        nix::mount::mount(
            Some("tmpfs"),
            &over,
            Some("tmpfs"),
            MsFlags::empty(),
            None::<&str>,
        )
        .unwrap();
        fs::write(over.join("over"), b"").unwrap();

        let mi = fs::read_to_string("/proc/self/mountinfo").unwrap();
        let me = crate::criu_plan::parse_mountinfo(&mi)
            .into_iter()
            .find(|m| Path::new(&m.mountpoint) == src_dir)
            .unwrap();
        let own = OwnTmpfs {
            mountpoint: me.mountpoint.clone(),
            dev: me.dev.clone(),
            source: me.source.clone(),
            super_options: me.super_options.clone(),
        };
        let images = tmp.path().join("images");
        fs::create_dir(&images).unwrap();
        let mut c = Capture::start(nix::unistd::getpid(), vec![own.clone()], &images).unwrap();
        c.finish().unwrap();
        nix::mount::umount2(&over, nix::mount::MntFlags::MNT_DETACH).unwrap();

        let state = tmp.path().join("state");
        fs::create_dir(&state).unwrap();
        let mut made = StateTmpfs::default();
        let ext = restore(&images, &state, &mut made).unwrap();
        let at = state.join("tmpfs-0");
        assert_eq!(ext.len(), 1);
        assert_eq!(ext[0].key, own.key());
        assert_eq!(Path::new(&ext[0].value), at);
        assert_eq!(fs::read(at.join("file")).unwrap(), b"content");
        assert_eq!(fs::read_link(at.join("link")).unwrap(), Path::new("file"));
        let null = fs::symlink_metadata(at.join("null")).unwrap();
        assert!(null.file_type().is_char_device());
        assert_eq!(null.rdev(), nix::sys::stat::makedev(1, 3));
        assert!(at.join("pts/under").exists(), "the covered entry is lost");
        assert!(
            !at.join("pts/over").exists(),
            "the covering mount was copied"
        );
        let root = fs::metadata(&at).unwrap();
        assert_eq!(root.permissions().mode() & 0o7777, 0o750);
        let mi = fs::read_to_string("/proc/self/mountinfo").unwrap();
        let again = crate::criu_plan::parse_mountinfo(&mi)
            .into_iter()
            .find(|m| Path::new(&m.mountpoint) == at)
            .unwrap();
        assert_eq!(
            (again.source.as_str(), again.fstype.as_str()),
            ("ferry-test", "tmpfs")
        );
        assert!(
            again.super_options.contains("size=1024k"),
            "{}",
            again.super_options
        );
        drop(made);
        assert!(!at.exists(), "the state dir's tmpfs stayed");
        drop(mounted);
    }

    #[test]
    fn a_record_from_elsewhere_is_checked() {
        let ok = Copied {
            mountpoint: "/dev/shm".into(),
            source: "shm".into(),
            options: vec!["size=65536k".into(), "inode64".into()],
            read_only: false,
            mode: 0o1777,
            uid: 0,
            gid: 0,
            mtime: (1, 2),
        };
        let f = Path::new("/images/ferry-tmpfs.json");
        check(f, &ok).unwrap();
        for bad in [
            Copied {
                mountpoint: "/dev/../etc".into(),
                ..ok.clone()
            },
            Copied {
                mountpoint: "dev".into(),
                ..ok.clone()
            },
            Copied {
                options: vec!["size=1k,exec".into()],
                ..ok.clone()
            },
            Copied {
                options: vec!["context=system_u:object_r:x".into()],
                ..ok.clone()
            },
            Copied {
                source: "a,b".into(),
                ..ok.clone()
            },
        ] {
            let e = check(f, &bad).unwrap_err().to_string();
            assert!(e.contains("ferry-tmpfs.json"), "{e}");
        }
    }
}
