//! `unpack_diff` against hostile writable-layer streams: the destination
//! agent unpacks what the network sends, as root, so no entry may create,
//! change or link anything outside the upper directory, nor write through
//! a symlink an earlier entry made. Each stream is framed as `pack_diff`
//! frames it (GNU tar headers, PAX `SCHILY.xattr.*` records), but written
//! by hand here, since the tar crate's own builder refuses `..` and
//! absolute names. Every test unpacks into `<host>/upper` beside sentinel
//! files and directories, and compares a snapshot of everything outside
//! `upper` (contents, owners, modes, link counts, times, ctimes, xattrs)
//! before and after.

use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ferry_oci::overlay::{layer_digest, pack_diff, unpack_diff};
use ferry_oci::Error;
use nix::sys::stat::{makedev, mknod, utimensat, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use tar::EntryType;

/// A diff stream written entry by entry, with raw names.
struct Stream(tar::Builder<Vec<u8>>);

impl Stream {
    fn new() -> Self {
        Stream(tar::Builder::new(Vec::new()))
    }

    fn header(kind: EntryType, name: &[u8], mode: u32) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_000_000);
        h.set_size(0);
        // Straight into the name field: Header::set_path refuses what a
        // hostile source would send.
        let slot = &mut h.as_old_mut().name;
        assert!(name.len() < slot.len(), "test name too long");
        slot[..name.len()].copy_from_slice(name);
        h
    }

    fn link_name(h: &mut tar::Header, target: &[u8]) {
        let slot = &mut h.as_old_mut().linkname;
        assert!(target.len() < slot.len(), "test link name too long");
        slot[..target.len()].copy_from_slice(target);
    }

    fn push(&mut self, mut h: tar::Header, data: &[u8]) -> &mut Self {
        h.set_size(data.len() as u64);
        h.set_cksum();
        self.0.append(&h, data).unwrap();
        self
    }

    fn dir(&mut self, name: impl AsRef<[u8]>) -> &mut Self {
        let h = Self::header(EntryType::Directory, name.as_ref(), 0o755);
        self.push(h, b"")
    }

    fn file(&mut self, name: impl AsRef<[u8]>, data: &[u8]) -> &mut Self {
        let h = Self::header(EntryType::Regular, name.as_ref(), 0o644);
        self.push(h, data)
    }

    fn symlink(&mut self, name: impl AsRef<[u8]>, target: impl AsRef<[u8]>) -> &mut Self {
        let mut h = Self::header(EntryType::Symlink, name.as_ref(), 0o777);
        Self::link_name(&mut h, target.as_ref());
        self.push(h, b"")
    }

    fn hard_link(&mut self, name: impl AsRef<[u8]>, target: impl AsRef<[u8]>) -> &mut Self {
        let mut h = Self::header(EntryType::Link, name.as_ref(), 0o644);
        Self::link_name(&mut h, target.as_ref());
        self.push(h, b"")
    }

    fn device(
        &mut self,
        name: impl AsRef<[u8]>,
        kind: EntryType,
        major: u32,
        minor: u32,
    ) -> &mut Self {
        let mut h = Self::header(kind, name.as_ref(), 0o666);
        h.set_device_major(major).unwrap();
        h.set_device_minor(minor).unwrap();
        self.push(h, b"")
    }

    /// A PAX header for the next entry, as `pack_diff` writes for xattrs.
    fn pax(&mut self, records: &[(&str, &[u8])]) -> &mut Self {
        let mut data = Vec::new();
        for (k, v) in records {
            let mut rec = k.as_bytes().to_vec();
            rec.push(b'=');
            rec.extend_from_slice(v);
            rec.push(b'\n');
            let mut len = rec.len() + 2;
            while len != rec.len() + 1 + len.to_string().len() {
                len = rec.len() + 1 + len.to_string().len();
            }
            data.extend_from_slice(format!("{len} ").as_bytes());
            data.extend_from_slice(&rec);
        }
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(EntryType::XHeader);
        h.set_mode(0o644);
        h.set_path("././@PaxHeader").unwrap();
        self.push(h, &data)
    }

    fn bytes(&mut self) -> Vec<u8> {
        let b = std::mem::replace(&mut self.0, tar::Builder::new(Vec::new()));
        b.into_inner().unwrap()
    }
}

/// A temporary "host": `upper` (where the diff goes), and beside it a
/// directory `outside` holding `keep`, and a file `sentinel`.
struct Host {
    dir: tempfile::TempDir,
}

impl Host {
    fn new() -> Host {
        let dir = tempfile::tempdir().unwrap();
        let h = Host { dir };
        std::fs::create_dir(h.upper()).unwrap();
        std::fs::create_dir(h.outside()).unwrap();
        std::fs::write(h.outside().join("keep"), b"keep").unwrap();
        std::fs::write(h.sentinel(), b"host").unwrap();
        h
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn upper(&self) -> PathBuf {
        self.root().join("upper")
    }

    fn outside(&self) -> PathBuf {
        self.root().join("outside")
    }

    fn sentinel(&self) -> PathBuf {
        self.root().join("sentinel")
    }

    /// Everything under the host but `upper`'s insides, `upper`'s own
    /// inode included (an entry must not chmod or chown the root).
    fn snapshot(&self) -> BTreeMap<PathBuf, String> {
        let mut out = BTreeMap::new();
        let upper = self.upper();
        let mut todo = vec![self.root().to_path_buf()];
        while let Some(p) = todo.pop() {
            let d = if p == upper {
                // Its times and link count change as entries are made in
                // it; its mode, owner and xattrs must not.
                let m = std::fs::metadata(&p).unwrap();
                let x: Vec<_> = xattr::list(&p).unwrap().collect();
                format!(
                    "mode {:o} owner {}:{} xattrs {x:?}",
                    m.mode(),
                    m.uid(),
                    m.gid()
                )
            } else {
                describe_one(&p, true)
            };
            out.insert(p.clone(), d);
            let m = std::fs::symlink_metadata(&p).unwrap();
            if m.is_dir() && p != upper {
                for e in std::fs::read_dir(&p).unwrap() {
                    todo.push(e.unwrap().path());
                }
            }
        }
        out
    }
}

/// What a test compares of one inode: type, mode, owner, numbers, times,
/// content or target, xattrs (and, for the host snapshot, link count and
/// ctime: a chown, chmod, link or xattr through a symlink shows there).
fn describe_one(p: &Path, host: bool) -> String {
    let m = std::fs::symlink_metadata(p).unwrap();
    let t = m.file_type();
    let body = if t.is_symlink() {
        format!(
            "-> {}",
            std::fs::read_link(p).unwrap().as_os_str().to_string_lossy()
        )
    } else if t.is_file() {
        format!("{:?}", std::fs::read(p).unwrap())
    } else {
        String::new()
    };
    let mut xattrs: Vec<String> = xattr::list(p)
        .unwrap()
        .map(|n| {
            let v = xattr::get(p, &n).unwrap().unwrap_or_default();
            format!("{}={:?}", n.to_string_lossy(), v)
        })
        .collect();
    xattrs.sort();
    let mut s = format!(
        "mode {:o} owner {}:{} rdev {} mtime {} {body} xattrs {xattrs:?}",
        m.mode(),
        m.uid(),
        m.gid(),
        m.rdev(),
        m.mtime()
    );
    if host {
        s += &format!(
            " nlink {} mtime_ns {} ctime {}.{}",
            m.nlink(),
            m.mtime_nsec(),
            m.ctime(),
            m.ctime_nsec()
        );
    }
    s
}

/// An upper directory as a comparable map: each entry's description, and
/// for a hard link the first name that shares its inode.
fn describe_tree(root: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut inodes: BTreeMap<u64, PathBuf> = BTreeMap::new();
    let mut todo = vec![PathBuf::new()];
    while let Some(rel) = todo.pop() {
        let mut names: Vec<_> = std::fs::read_dir(root.join(&rel))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        for n in names {
            let r = rel.join(&n);
            let p = root.join(&r);
            let m = std::fs::symlink_metadata(&p).unwrap();
            let mut d = describe_one(&p, false);
            if m.is_file() {
                let first = inodes.entry(m.ino()).or_insert_with(|| r.clone());
                d += &format!(" inode-of {}", first.display());
            }
            if m.is_dir() {
                todo.push(r.clone());
            }
            out.insert(r, d);
        }
    }
    out
}

/// Unpacks the stream `make` builds for a fresh host, which must fail with
/// a refusal naming `entry`, and leave everything outside `upper` as it was.
fn assert_refused(entry: &str, make: impl FnOnce(&Host) -> Vec<u8>) -> Host {
    let host = Host::new();
    let stream = make(&host);
    let before = host.snapshot();
    let passwd = std::fs::metadata("/etc/passwd").unwrap();
    let got = unpack_diff(&stream[..], &host.upper());
    assert_eq!(
        before,
        host.snapshot(),
        "the stream for `{entry}` changed something outside the upper dir"
    );
    let after = std::fs::metadata("/etc/passwd").unwrap();
    assert_eq!(
        (passwd.nlink(), passwd.ctime(), passwd.ctime_nsec()),
        (after.nlink(), after.ctime(), after.ctime_nsec()),
        "the stream for `{entry}` touched /etc/passwd"
    );
    match &got {
        Err(Error::LayerEntryRefused { entry: e, .. }) => {
            assert_eq!(e, Path::new(entry));
        }
        Err(other) => panic!("`{entry}`: wrong error: {other}"),
        Ok(c) => panic!("`{entry}`: a hostile stream was unpacked: {c:?}"),
    }
    let msg = got.unwrap_err().to_string();
    assert!(
        msg.contains(entry),
        "the error does not name `{entry}`: {msg}"
    );
    host
}

fn abs(p: &Path) -> Vec<u8> {
    p.as_os_str().as_bytes().to_vec()
}

#[test]
fn a_symlink_is_never_written_through_relative() {
    assert_refused("d/x", |_| {
        Stream::new()
            .symlink("d", "../outside")
            .file("d/x", b"pwned")
            .bytes()
    });
    // Deeper: the symlink is a middle component.
    assert_refused("a/d/x/y", |_| {
        Stream::new()
            .dir("a")
            .symlink("a/d", "../../outside")
            .dir("a/d/x/y")
            .bytes()
    });
}

#[test]
fn a_symlink_is_never_written_through_absolute() {
    assert_refused("d/x", |h| {
        Stream::new()
            .symlink("d", abs(&h.outside()))
            .file("d/x", b"pwned")
            .bytes()
    });
    // Through to an existing host file: File::create would truncate it.
    assert_refused("e/sentinel", |h| {
        Stream::new()
            .symlink("e", abs(h.root()))
            .file("e/sentinel", b"pwned")
            .bytes()
    });
}

#[test]
fn nothing_else_is_made_under_a_symlink_either() {
    assert_refused("d/sub", |_| {
        Stream::new()
            .symlink("d", "../outside")
            .dir("d/sub")
            .bytes()
    });
    assert_refused("d/l", |_| {
        Stream::new()
            .file("f", b"mine")
            .symlink("d", "../outside")
            .hard_link("d/l", "f")
            .bytes()
    });
    assert_refused("d/null", |_| {
        Stream::new()
            .symlink("d", "../outside")
            .device("d/null", EntryType::Char, 1, 3)
            .bytes()
    });
    assert_refused("d/wh", |_| {
        Stream::new()
            .symlink("d", "../outside")
            .device("d/wh", EntryType::Char, 0, 0)
            .bytes()
    });
    assert_refused("d/fifo", |_| {
        Stream::new()
            .symlink("d", "../outside")
            .device("d/fifo", EntryType::Fifo, 0, 0)
            .bytes()
    });
    assert_refused("d/s", |_| {
        Stream::new()
            .symlink("d", "../outside")
            .symlink("d/s", "/etc/shadow")
            .bytes()
    });
}

#[test]
fn a_symlink_inside_the_layer_is_not_followed_either() {
    let h = assert_refused("d/x", |_| {
        Stream::new()
            .dir("real")
            .symlink("d", "real")
            .file("d/x", b"x")
            .bytes()
    });
    assert!(!h.upper().join("real/x").exists());
}

#[test]
fn hard_links_only_to_files_of_the_diff() {
    assert_refused("l", |h| {
        Stream::new().hard_link("l", abs(&h.sentinel())).bytes()
    });
    assert_refused("l", |_| Stream::new().hard_link("l", "/etc/passwd").bytes());
    assert_refused("l", |_| Stream::new().hard_link("l", "../sentinel").bytes());
    assert_refused("l", |_| {
        Stream::new()
            .dir("a")
            .hard_link("l", "a/../../sentinel")
            .bytes()
    });
    // The target's directory is a symlink out of the layer.
    assert_refused("l", |_| {
        Stream::new()
            .symlink("d", "..")
            .hard_link("l", "d/sentinel")
            .bytes()
    });
    // A symlink of the diff to a host file: linkat would link the symlink
    // itself, but a diff only links regular files.
    assert_refused("l", |_| {
        Stream::new()
            .symlink("s", "../sentinel")
            .hard_link("l", "s")
            .bytes()
    });
    // A target that is not in the layer, or that the diff did not write.
    assert_refused("l", |_| Stream::new().hard_link("l", "nothing").bytes());
    assert_refused("l", |h| {
        std::fs::write(h.upper().join("pre"), b"not from the diff").unwrap();
        Stream::new().hard_link("l", "pre").bytes()
    });
    // A directory cannot be a target.
    assert_refused("l", |_| Stream::new().dir("d").hard_link("l", "d").bytes());
}

#[test]
fn dotdot_names_are_refused() {
    assert_refused("../escape", |_| {
        Stream::new().file("../escape", b"pwned").bytes()
    });
    assert_refused("a/../../escape", |_| {
        Stream::new()
            .dir("a")
            .file("a/../../escape", b"pwned")
            .bytes()
    });
    assert_refused("./../outside/x", |_| {
        Stream::new().dir("./../outside/x").bytes()
    });
    assert_refused("../s", |_| Stream::new().symlink("../s", "x").bytes());
    // A PAX `path` record overrides the header's name, as tar reads it.
    assert_refused("../pax-escape", |_| {
        Stream::new()
            .pax(&[("path", b"../pax-escape")])
            .file("innocent", b"pwned")
            .bytes()
    });
}

/// Absolute names, into a host directory the snapshot watches (the entry
/// the error names is the absolute path itself).
#[test]
fn absolute_names_are_refused() {
    for kind in ["file", "dir", "dev"] {
        let host = Host::new();
        let name = host.outside().join(format!("new-{kind}"));
        let mut s = Stream::new();
        match kind {
            "file" => s.file(abs(&name), b"pwned"),
            "dir" => s.dir(abs(&name)),
            _ => s.device(abs(&name), EntryType::Char, 1, 3),
        };
        let stream = s.bytes();
        let before = host.snapshot();
        let e = unpack_diff(&stream[..], &host.upper()).unwrap_err();
        assert_eq!(before, host.snapshot());
        assert!(!name.exists());
        match &e {
            Error::LayerEntryRefused { entry, why, .. } => {
                assert_eq!(entry, &name);
                assert!(why.contains("absolute"), "{why}");
            }
            other => panic!("{other}"),
        }
    }
}

#[test]
fn an_existing_name_is_neither_replaced_nor_followed() {
    assert_refused("s", |_| {
        Stream::new()
            .symlink("s", "../sentinel")
            .file("s", b"pwned")
            .bytes()
    });
    assert_refused("s", |h| {
        Stream::new()
            .symlink("s", abs(&h.sentinel()))
            .file("s", b"pwned")
            .bytes()
    });
    assert_refused("s", |_| {
        Stream::new().symlink("s", "../outside").dir("s").bytes()
    });
    assert_refused("s", |_| {
        Stream::new()
            .symlink("s", "../sentinel")
            .device("s", EntryType::Char, 1, 3)
            .bytes()
    });
    assert_refused("s", |_| {
        Stream::new()
            .file("f", b"mine")
            .symlink("s", "../sentinel")
            .hard_link("s", "f")
            .bytes()
    });
    // A second file over the first, and a file over a directory.
    let h = assert_refused("f", |_| {
        Stream::new()
            .file("f", b"first")
            .file("f", b"second")
            .bytes()
    });
    assert_eq!(std::fs::read(h.upper().join("f")).unwrap(), b"first");
    assert_refused("d", |_| Stream::new().dir("d").file("d", b"x").bytes());
}

#[test]
fn a_symlink_is_stored_as_is_and_its_metadata_set_on_itself() {
    let host = Host::new();
    let target = abs(&host.sentinel());
    let mut s = Stream::new();
    s.pax(&[("SCHILY.xattr.trusted.ferry", b"link")]);
    let mut h = Stream::header(EntryType::Symlink, b"s", 0o777);
    Stream::link_name(&mut h, &target);
    h.set_uid(4321);
    h.set_gid(4322);
    h.set_mtime(42);
    s.push(h, b"");
    s.symlink("up", "../outside").symlink("etc", "/etc");
    let stream = s.bytes();
    let before = host.snapshot();
    let c = unpack_diff(&stream[..], &host.upper()).unwrap();
    assert_eq!(c.entries, 3);
    assert_eq!(before, host.snapshot());
    let link = host.upper().join("s");
    assert_eq!(std::fs::read_link(&link).unwrap(), host.sentinel());
    let m = std::fs::symlink_metadata(&link).unwrap();
    assert_eq!((m.uid(), m.gid(), m.mtime()), (4321, 4322, 42));
    assert_eq!(
        xattr::get(&link, "trusted.ferry").unwrap(),
        Some(b"link".to_vec())
    );
    assert_eq!(xattr::get(host.sentinel(), "trusted.ferry").unwrap(), None);
    assert_eq!(
        std::fs::read_link(host.upper().join("up")).unwrap(),
        Path::new("../outside")
    );
}

fn set_time(p: &Path, secs: i64) {
    utimensat(
        None,
        p,
        &TimeSpec::UTIME_OMIT,
        &TimeSpec::new(secs, 0),
        UtimensatFlags::NoFollowSymlink,
    )
    .unwrap();
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// An upper directory with every kind of entry a diff carries.
fn every_kind(src: &Path) {
    let d = |r: &str| {
        std::fs::create_dir_all(src.join(r)).unwrap();
    };
    for r in ["bin", "etc/sub/empty", "dev", "run", "opq", "ro", "tmp"] {
        d(r);
    }
    std::fs::write(src.join("etc/app.conf"), b"conf").unwrap();
    std::os::unix::fs::lchown(src.join("etc/app.conf"), Some(1000), Some(1000)).unwrap();
    xattr::set(src.join("etc/app.conf"), "user.ferry", b"hello").unwrap();
    xattr::set(src.join("etc/app.conf"), "trusted.ferry.file", b"1").unwrap();
    std::fs::write(src.join("bin/su"), b"\x7fELF su").unwrap();
    std::fs::write(src.join("bin/wall"), b"\x7fELF wall").unwrap();
    std::os::unix::fs::lchown(src.join("bin/wall"), Some(0), Some(5)).unwrap();
    std::fs::write(src.join("secret"), b"0000").unwrap();
    // Three names of one inode, across directories.
    std::fs::hard_link(src.join("bin/su"), src.join("bin/su2")).unwrap();
    std::fs::hard_link(src.join("bin/su"), src.join("etc/su3")).unwrap();
    symlink("etc/app.conf", src.join("lnk-rel")).unwrap();
    symlink("/etc/passwd", src.join("lnk-abs")).unwrap();
    symlink("../../nowhere", src.join("lnk-dangling")).unwrap();
    symlink("etc", src.join("lnk-dir")).unwrap();
    std::os::unix::fs::lchown(src.join("lnk-abs"), Some(7), Some(8)).unwrap();
    xattr::set(src.join("lnk-rel"), "trusted.ferry.link", b"1").unwrap();
    let node = |r: &str, kind: SFlag, mode: u32, major: u64, minor: u64| {
        mknod(
            &src.join(r),
            kind,
            Mode::from_bits_truncate(mode),
            makedev(major, minor),
        )
        .unwrap();
        chmod(&src.join(r), mode);
    };
    node("run/fifo", SFlag::S_IFIFO, 0o640, 0, 0);
    node("dev/null", SFlag::S_IFCHR, 0o666, 1, 3);
    node("dev/loop9", SFlag::S_IFBLK, 0o660, 7, 9);
    node("gone", SFlag::S_IFCHR, 0, 0, 0);
    xattr::set(src.join("dev/null"), "trusted.ferry.dev", b"1").unwrap();
    xattr::set(src.join("opq"), "trusted.overlay.opaque", b"y").unwrap();
    std::fs::write(src.join("opq/inside"), b"in").unwrap();
    std::fs::write(src.join("ro/file"), b"ro").unwrap();
    chmod(&src.join("bin/su"), 0o4755);
    chmod(&src.join("bin/wall"), 0o2755);
    chmod(&src.join("secret"), 0);
    chmod(&src.join("tmp"), 0o1777);
    chmod(&src.join("etc/sub/empty"), 0o700);
    // Times last, directories deepest first, so nothing moves them again.
    let mut t = 1_600_000_000;
    for r in [
        "etc/app.conf",
        "bin/su",
        "bin/wall",
        "secret",
        "lnk-rel",
        "lnk-abs",
        "lnk-dangling",
        "lnk-dir",
        "run/fifo",
        "dev/null",
        "dev/loop9",
        "gone",
        "opq/inside",
        "ro/file",
        "etc/sub/empty",
        "etc/sub",
        "etc",
        "bin",
        "dev",
        "run",
        "opq",
        "ro",
        "tmp",
    ] {
        t += 1000;
        set_time(&src.join(r), t);
    }
    // A read-only directory with something in it: the unpack must write
    // into it before its mode is set.
    chmod(&src.join("ro"), 0o555);
    set_time(&src.join("ro"), 1_500_000_000);
}

#[test]
fn a_real_upper_dir_round_trips_identically() {
    let host = Host::new();
    let src = host.root().join("src");
    std::fs::create_dir(&src).unwrap();
    every_kind(&src);
    let mut buf = Vec::new();
    let packed = pack_diff(&src, &mut buf).unwrap();
    assert_eq!(packed.hardlinks, 2);
    assert_eq!(packed.whiteouts, 1);

    let before = host.snapshot();
    let got = unpack_diff(&buf[..], &host.upper()).unwrap();
    assert_eq!(packed, got);
    let want = describe_tree(&src);
    assert_eq!(want.len(), 25, "{want:#?}");
    assert_eq!(want, describe_tree(&host.upper()));
    assert_eq!(
        layer_digest(&src).unwrap(),
        layer_digest(&host.upper()).unwrap()
    );
    assert_eq!(before, host.snapshot());

    // Into an upper that already holds some of the diff's directories, as
    // dockerd makes a new container's working directory: they are merged
    // and end up as the stream says.
    let pre = host.root().join("pre");
    std::fs::create_dir_all(pre.join("etc/sub")).unwrap();
    chmod(&pre.join("etc"), 0o700);
    let got = unpack_diff(&buf[..], &pre).unwrap();
    assert_eq!(packed, got);
    assert_eq!(want, describe_tree(&pre));
}

#[test]
fn set_id_bits_and_devices_are_what_the_stream_says() {
    let host = Host::new();
    let mut s = Stream::new();
    let mut h = Stream::header(EntryType::Regular, b"suid", 0o6755);
    h.set_uid(1000);
    h.set_gid(1000);
    s.push(h, b"x");
    s.device("blk", EntryType::Block, 8, 1);
    let stream = s.bytes();
    unpack_diff(&stream[..], &host.upper()).unwrap();
    let m = std::fs::metadata(host.upper().join("suid")).unwrap();
    // chown(2) clears set-id bits: the mode must come after the owner.
    assert_eq!((m.mode() & 0o7777, m.uid(), m.gid()), (0o6755, 1000, 1000));
    let b = std::fs::symlink_metadata(host.upper().join("blk")).unwrap();
    assert!(b.file_type().is_block_device());
    assert_eq!((b.rdev(), b.mode() & 0o7777), (makedev(8, 1), 0o666));
}
