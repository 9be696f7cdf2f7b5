//! The decoder on synthetic images: good ones, truncated ones, wrong
//! magics, unknown fields, and a small whole checkpoint.

use std::fs;
use std::path::Path;

use protobuf::MessageField;

use super::kinds::{by_name, IMG_COMMON_MAGIC, IMG_SERVICE_MAGIC};
use super::testing::bytes;
use super::*;
use crate::Error;

fn magic(name: &str) -> u32 {
    by_name(name).unwrap().magic
}

/// An image: the common word (but for inventory), the magic, entries.
fn image(name: &str, entries: &[Vec<u8>]) -> Vec<u8> {
    let mut v = Vec::new();
    if name != "INVENTORY" {
        v.extend_from_slice(&IMG_COMMON_MAGIC.to_le_bytes());
    }
    v.extend_from_slice(&magic(name).to_le_bytes());
    for e in entries {
        v.extend_from_slice(&(e.len() as u32).to_le_bytes());
        v.extend_from_slice(e);
    }
    v
}

fn pstree(pid: u32, ppid: u32, threads: &[u32]) -> Vec<u8> {
    let mut p = pb::Pstree_entry::new();
    p.set_pid(pid);
    p.set_ppid(ppid);
    p.set_pgid(pid);
    p.set_sid(1);
    p.threads = threads.to_vec();
    bytes(&p)
}

#[test]
fn a_good_image_decodes_to_json() {
    let img = image("PSTREE", &[pstree(1, 0, &[1]), pstree(7, 1, &[7, 8])]);
    let v = decode_bytes(Path::new("pstree.img"), &img).unwrap();
    assert_eq!(v["magic"], "PSTREE");
    assert_eq!(v["entries"][0]["pid"], 1);
    assert_eq!(v["entries"][1]["ppid"], 1);
    assert_eq!(v["entries"][1]["threads"], serde_json::json!([7, 8]));
}

#[test]
fn a_truncated_image_names_the_file_and_the_entry_offset() {
    let mut img = image("PSTREE", &[pstree(1, 0, &[1]), pstree(7, 1, &[7, 8])]);
    let second = 8 + 4 + pstree(1, 0, &[1]).len();
    img.truncate(img.len() - 2);
    let err = decode_bytes(Path::new("/x/pstree.img"), &img).unwrap_err();
    match &err {
        Error::BadImage { path, offset, .. } => {
            assert_eq!(path, Path::new("/x/pstree.img"));
            assert_eq!(*offset, second as u64);
        }
        e => panic!("{e}"),
    }
    assert!(err.to_string().contains("truncated"), "{err}");
    // Cut inside a length word.
    let img = image("PSTREE", &[pstree(1, 0, &[1])]);
    let mut cut = img.clone();
    cut.extend_from_slice(&[5, 0]);
    let err = decode_bytes(Path::new("pstree.img"), &cut)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!("offset {}", img.len())) && err.contains("length"),
        "{err}"
    );
    // Cut inside the header.
    let err = decode_bytes(Path::new("core-1.img"), &img[..6])
        .unwrap_err()
        .to_string();
    assert!(err.contains("offset 4") && err.contains("header"), "{err}");
    let err = decode_bytes(Path::new("core-1.img"), &[])
        .unwrap_err()
        .to_string();
    assert!(err.contains("offset 0"), "{err}");
}

#[test]
fn a_wrong_magic_is_refused_with_its_offset() {
    let mut img = image("PSTREE", &[pstree(1, 0, &[1])]);
    img[4..8].copy_from_slice(&0xdead_beefu32.to_le_bytes());
    let err = decode_bytes(Path::new("pstree.img"), &img).unwrap_err();
    assert!(
        matches!(
            err,
            Error::UnknownImage {
                offset: 4,
                magic: 0xdead_beef,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("wrong magic 0xdeadbeef"), "{err}");
    let err = decode_bytes(Path::new("core-1.img"), b"garbage!garbage!").unwrap_err();
    assert!(
        matches!(err, Error::UnknownImage { offset: 0, .. }),
        "{err}"
    );
    // A typed read of the wrong kind.
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("core-1.img");
    fs::write(&p, image("PSTREE", &[pstree(1, 0, &[1])])).unwrap();
    let err = entries_of::<pb::Core_entry>(&p, "CORE")
        .unwrap_err()
        .to_string();
    assert!(err.contains("expected a CORE image, found PSTREE"), "{err}");
}

#[test]
fn malformed_protobuf_is_an_error_not_a_panic() {
    let img = image("PSTREE", &[vec![0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f]]);
    let err = decode_bytes(Path::new("pstree.img"), &img).unwrap_err();
    assert!(matches!(err, Error::BadEntry { offset: 8, .. }), "{err}");
}

#[test]
fn unknown_fields_do_not_break_decoding() {
    let mut e = pstree(42, 1, &[42]);
    // field 99, varint 5; field 100, bytes "hi"
    e.extend_from_slice(&[0x98, 0x06, 0x05, 0xa2, 0x06, 0x02, b'h', b'i']);
    let v = decode_bytes(Path::new("pstree.img"), &image("PSTREE", &[e])).unwrap();
    assert_eq!(v["entries"][0]["pid"], 42);
}

#[test]
fn payloads_after_entries_are_framed() {
    let mut pd = pb::Pipe_data_entry::new();
    pd.set_pipe_id(3);
    pd.set_bytes(5);
    let mut img = image("PIPES_DATA", &[bytes(&pd)]);
    img.extend_from_slice(b"hello");
    img.extend_from_slice(&image("PIPES_DATA", &[bytes(&pd)])[8..]);
    img.extend_from_slice(b"world");
    let v = decode_bytes(Path::new("pipes-data.img"), &img).unwrap();
    assert_eq!(v["entries"].as_array().unwrap().len(), 2);
    assert_eq!(v["entries"][1]["extra"]["size"], 5);
    img.truncate(img.len() - 1);
    let err = decode_bytes(Path::new("pipes-data.img"), &img)
        .unwrap_err()
        .to_string();
    assert!(err.contains("data following an entry"), "{err}");
}

#[test]
fn service_images_and_raw_images() {
    let mut st = pb::Stats_entry::new();
    let mut d = pb::Dump_stats_entry::new();
    d.set_pages_written(12);
    st.dump = MessageField::some(d);
    let mut img = IMG_SERVICE_MAGIC.to_le_bytes().to_vec();
    img.extend_from_slice(&image("STATS", &[bytes(&st)])[4..]);
    let v = decode_bytes(Path::new("stats-dump"), &img).unwrap();
    assert_eq!(v["magic"], "STATS");
    assert_eq!(v["entries"][0]["dump"]["pages_written"], 12);
    let v = decode_bytes(Path::new("pages-1.img"), &[0u8; 8192]).unwrap();
    assert_eq!(v["pages"], 2);
}

fn nlmsg(kind: u16, body: &[u8]) -> Vec<u8> {
    let mut v = ((16 + body.len()) as u32).to_ne_bytes().to_vec();
    v.extend_from_slice(&kind.to_ne_bytes());
    v.extend_from_slice(&[0; 10]);
    v.extend_from_slice(body);
    v
}

fn rtattr(kind: u16, data: &[u8]) -> Vec<u8> {
    let mut v = ((4 + data.len()) as u16).to_ne_bytes().to_vec();
    v.extend_from_slice(&kind.to_ne_bytes());
    v.extend_from_slice(data);
    while v.len() % 4 != 0 {
        v.push(0);
    }
    v
}

#[test]
fn ip_tool_dumps_decode() {
    // RTM_NEWADDR: inet 10.1.2.3/24 on ifindex 2, label eth0
    let mut body = vec![2, 24, 0, 0];
    body.extend_from_slice(&2u32.to_ne_bytes());
    body.extend(rtattr(1, &[10, 1, 2, 3]));
    body.extend(rtattr(3, b"eth0\0"));
    let mut img = 0x4736_1222u32.to_ne_bytes().to_vec();
    img.extend(nlmsg(20, &body));
    let v = decode_bytes(Path::new("ifaddr-9.img"), &img).unwrap();
    assert_eq!(v["entries"][0]["address"], "10.1.2.3");
    assert_eq!(v["entries"][0]["prefix_len"], 24);
    assert_eq!(v["entries"][0]["label"], "eth0");
    // RTM_NEWROUTE: default via 10.1.2.1 dev 2, table main
    let mut body = vec![2, 0, 0, 0, 254, 4, 0, 1, 0, 0, 0, 0];
    body.extend(rtattr(5, &[10, 1, 2, 1]));
    body.extend(rtattr(4, &2u32.to_ne_bytes()));
    let mut img = 0x4531_1224u32.to_ne_bytes().to_vec();
    img.extend(nlmsg(24, &body));
    let v = decode_bytes(Path::new("route-9.img"), &img).unwrap();
    assert_eq!(v["entries"][0]["destination"], "default");
    assert_eq!(v["entries"][0]["gateway"], "10.1.2.1");
    img.truncate(img.len() - 3);
    let err = decode_bytes(Path::new("route-9.img"), &img)
        .unwrap_err()
        .to_string();
    assert!(err.contains("route-9.img at offset 4"), "{err}");
}

/// A one-process checkpoint: `sh -c loop` with a file, a pipe, a unix
/// and a TCP socket open, and its command line in the dumped pages.
fn write_checkpoint(dir: &Path, extra_fd: bool) {
    let w = |name: &str, data: Vec<u8>| fs::write(dir.join(name), data).unwrap();
    let mut inv = pb::Inventory_entry::new();
    inv.set_img_version(2);
    w("inventory.img", image("INVENTORY", &[bytes(&inv)]));
    w("pstree.img", image("PSTREE", &[pstree(1, 0, &[1])]));

    let mut core = pb::Core_entry::new();
    let mut tc = pb::Task_core_entry::new();
    tc.set_comm("sh".into());
    tc.set_task_state(1);
    core.tc = MessageField::some(tc);
    let mut th = pb::Thread_core_entry::new();
    th.set_sched_nice(5);
    core.thread_core = MessageField::some(th);
    w("core-1.img", image("CORE", &[bytes(&core)]));

    let mut ids = pb::Task_kobj_ids_entry::new();
    ids.set_files_id(1);
    w("ids-1.img", image("IDS", &[bytes(&ids)]));

    let fdinfo = |fd: u32, id: u32, t: pb::Fd_types| {
        let mut e = pb::Fdinfo_entry::new();
        e.set_fd(fd);
        e.set_id(id);
        e.set_type(t);
        bytes(&e)
    };
    let mut fds = vec![
        fdinfo(0, 10, pb::Fd_types::REG),
        fdinfo(1, 11, pb::Fd_types::PIPE),
        fdinfo(2, 15, pb::Fd_types::TTY),
        fdinfo(3, 12, pb::Fd_types::UNIXSK),
        fdinfo(4, 13, pb::Fd_types::INETSK),
    ];
    if extra_fd {
        fds.push(fdinfo(5, 14, pb::Fd_types::REG));
    }
    w("fdinfo-1.img", image("FDINFO", &fds));

    let reg = |id: u32, name: &str| {
        let mut f = pb::File_entry::new();
        f.set_type(pb::Fd_types::REG);
        f.set_id(id);
        let mut r = pb::Reg_file_entry::new();
        r.set_id(id);
        r.set_name(name.into());
        f.reg = MessageField::some(r);
        bytes(&f)
    };
    let mut pipe = pb::File_entry::new();
    pipe.set_type(pb::Fd_types::PIPE);
    pipe.set_id(11);
    let mut p = pb::Pipe_entry::new();
    p.set_id(11);
    p.set_pipe_id(4242);
    pipe.pipe = MessageField::some(p);
    let mut usk = pb::File_entry::new();
    usk.set_type(pb::Fd_types::UNIXSK);
    usk.set_id(12);
    let mut u = pb::Unix_sk_entry::new();
    u.set_id(12);
    u.set_ino(777);
    u.set_peer(778);
    u.set_type(1);
    u.set_state(1);
    u.set_name(b"\0abstract".to_vec());
    usk.usk = MessageField::some(u);
    let mut isk = pb::File_entry::new();
    isk.set_type(pb::Fd_types::INETSK);
    isk.set_id(13);
    let mut i = pb::Inet_sk_entry::new();
    i.set_id(13);
    i.set_ino(900);
    i.set_family(2);
    i.set_type(1);
    i.set_proto(6);
    i.set_state(10);
    i.set_src_port(8080);
    i.src_addr = vec![u32::from_ne_bytes([127, 0, 0, 1])];
    isk.isk = MessageField::some(i);
    w(
        "files.img",
        image(
            "FILES",
            &[
                reg(10, "/dev/null"),
                bytes(&pipe),
                bytes(&usk),
                bytes(&isk),
                reg(14, "/data/log"),
                reg(20, "/"),
                reg(21, "/bin/busybox"),
            ],
        ),
    );
    let mut tty = pb::File_entry::new();
    tty.set_type(pb::Fd_types::TTY);
    tty.set_id(15);
    let mut t = pb::Tty_file_entry::new();
    t.set_id(15);
    t.set_tty_info_id(30);
    tty.tty = MessageField::some(t);
    let files = fs::read(dir.join("files.img")).unwrap();
    let mut more = files;
    let tb = bytes(&tty);
    more.extend_from_slice(&(tb.len() as u32).to_le_bytes());
    more.extend_from_slice(&tb);
    w("files.img", more);
    let mut info = pb::Tty_info_entry::new();
    info.set_id(30);
    info.set_type(pb::TtyType::PTY);
    let mut pty = pb::Tty_pty_entry::new();
    pty.set_index(3);
    info.pty = MessageField::some(pty);
    w("tty-info.img", image("TTY_INFO", &[bytes(&info)]));

    let mut fsent = pb::Fs_entry::new();
    fsent.set_cwd_id(20);
    fsent.set_root_id(20);
    w("fs-1.img", image("FS", &[bytes(&fsent)]));

    let base = 0x10000u64;
    let mut mm = pb::Mm_entry::new();
    mm.set_exe_file_id(21);
    mm.set_mm_arg_start(base + 4090);
    mm.set_mm_arg_end(base + 4090 + 14);
    let vma = |start: u64, pages: u64, status: u32, shmid: u64| {
        let mut v = pb::Vma_entry::new();
        v.set_start(start);
        v.set_end(start + pages * 4096);
        v.set_status(status);
        v.set_prot(3);
        v.set_flags(2);
        v.set_shmid(shmid);
        v
    };
    mm.vmas.push(vma(base, 2, 1 | (1 << 1) | (1 << 9), 0)); // stack
    mm.vmas.push(vma(0x40000, 1, 1 | (1 << 6), 21)); // the executable
    w("mm-1.img", image("MM", &[bytes(&mm)]));

    let mut head = pb::Pagemap_head::new();
    head.set_pages_id(1);
    let mut pe = pb::Pagemap_entry::new();
    pe.set_vaddr(base);
    pe.set_nr_pages(2);
    pe.set_flags(4);
    w(
        "pagemap-1.img",
        image("PAGEMAP", &[bytes(&head), bytes(&pe)]),
    );
    // "sh\0-c\0loop 1\0\0" straddling the first page boundary.
    let mut pages = vec![0u8; 8192];
    pages[4090..4090 + 14].copy_from_slice(b"sh\0-c\0loop 1\0\0");
    w("pages-1.img", pages);
}

#[test]
fn a_whole_checkpoint_is_modelled() {
    let d = tempfile::tempdir().unwrap();
    write_checkpoint(d.path(), false);
    check_dir(d.path()).unwrap();
    let c = Checkpoint::read(d.path()).unwrap();
    assert_eq!(c.criu.image_version, 2);
    assert_eq!(c.processes.len(), 1);
    let p = &c.processes[0];
    assert_eq!(
        (p.pid, p.comm.as_str(), p.state.as_str()),
        (1, "sh", "alive")
    );
    assert_eq!(p.threads[0].nice, 5);
    assert_eq!(p.exe.as_deref(), Some("/bin/busybox"));
    assert_eq!(p.cwd.as_deref(), Some("/"));
    assert_eq!(
        p.cmdline.as_deref(),
        Some(&["sh".to_string(), "-c".into(), "loop 1".into(), "".into()][..])
    );
    let descs: Vec<(u32, &str)> = p
        .fds
        .iter()
        .map(|f| (f.fd, f.description.as_str()))
        .collect();
    assert_eq!(
        descs,
        [
            (0, "/dev/null"),
            (1, "pipe:[4242]"),
            (2, "tty pty 3"),
            (3, "unix:[777] stream ESTABLISHED @abstract -> unix:[778]"),
            (4, "tcp 127.0.0.1:8080 LISTEN"),
        ]
    );
    assert_eq!(p.memory.by_kind["stack"], 8192);
    assert_eq!(p.memory.by_kind["file_private"], 4096);
    assert_eq!(p.memory.pages_dumped, 2);
    assert_eq!(p.memory.vmas[1].file.as_deref(), Some("/bin/busybox"));
    assert_eq!(c.sockets.len(), 2);
    assert_eq!(c.images.pages_bytes, 8192);
    assert_eq!(c.ttys.len(), 1);
    assert_eq!((c.ttys[0].kind.as_str(), c.ttys[0].index), ("pty", Some(3)));
}

#[test]
fn check_dir_refuses_a_damaged_checkpoint() {
    let d = tempfile::tempdir().unwrap();
    let err = check_dir(d.path()).unwrap_err();
    assert!(matches!(err, Error::NotAnImageDir { .. }), "{err}");
    write_checkpoint(d.path(), false);
    let p = d.path().join("files.img");
    let mut f = fs::read(&p).unwrap();
    f.truncate(f.len() - 1);
    fs::write(&p, f).unwrap();
    let err = check_dir(d.path()).unwrap_err().to_string();
    assert!(
        err.contains("files.img at offset") && err.contains("truncated"),
        "{err}"
    );
}

#[test]
fn diff_shows_a_new_fd() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    write_checkpoint(a.path(), false);
    write_checkpoint(b.path(), true);
    let (ca, cb) = (
        Checkpoint::read(a.path()).unwrap(),
        Checkpoint::read(b.path()).unwrap(),
    );
    assert!(diff::diff(&ca, &ca).is_empty());
    let ch = diff::diff(&ca, &cb);
    let paths: Vec<&str> = ch.iter().map(|c| c.path.as_str()).collect();
    // files.img grew by the new file's entry.
    assert_eq!(paths, ["images.bytes", "processes.1.fds.5"], "{ch:?}");
    assert!(ch[1].old.is_none());
    assert_eq!(ch[1].new.as_ref().unwrap()["path"], "/data/log");
    assert!(ch[1].to_string().starts_with("+ processes.1.fds.5: "));
}

/// Every prefix and many mutations of a real-shaped checkpoint's images
/// decode or fail with an error; none panics.
#[test]
fn damaged_bytes_never_panic() {
    let d = tempfile::tempdir().unwrap();
    write_checkpoint(d.path(), true);
    let mut seed = 0x2545_f491_u64;
    for e in fs::read_dir(d.path()).unwrap() {
        let p = e.unwrap().path();
        let data = fs::read(&p).unwrap();
        for cut in 0..data.len().min(300) {
            let _ = decode_bytes(&p, &data[..cut]);
        }
        for _ in 0..300 {
            let mut m = data.clone();
            for _ in 0..3 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                if !m.is_empty() {
                    let i = (seed as usize) % m.len();
                    m[i] = (seed >> 32) as u8;
                }
            }
            let _ = decode_bytes(&p, &m);
        }
    }
}

#[test]
fn unix_names_print_as_text() {
    assert_eq!(json::bytes(b"/tmp/s.sock\0"), "/tmp/s.sock");
    assert_eq!(json::bytes(b"\0abstract"), "@abstract");
    assert_eq!(json::bytes(b"\x01\x02"), "0102");
}

#[test]
fn images_ferry_does_not_decode_are_named_and_left_alone() {
    // ipcns-shm: an entry, then the segment's bytes, which only look like
    // entries by chance.
    let mut img = image("IPCNS_SHM", &[vec![0x08, 0x01]]);
    img.extend_from_slice(&[0xff; 5]);
    let err = decode_bytes(Path::new("ipcns-shm-9.img"), &img).unwrap_err();
    assert!(
        matches!(
            err,
            Error::UndecodedImage {
                kind: "IPCNS_SHM",
                ..
            }
        ),
        "{err}"
    );
    let d = tempfile::tempdir().unwrap();
    write_checkpoint(d.path(), false);
    fs::write(d.path().join("ipcns-shm-9.img"), img).unwrap();
    check_dir(d.path()).unwrap();
}
