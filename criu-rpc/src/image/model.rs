//! A whole checkpoint as one model: what `ferry inspect` shows, read from
//! the image directory the way CRIU's restore reads it. The process tree
//! (pstree.img) with each task's core, ids, fs, mm and pagemap images;
//! open files through fdinfo-N.img and files.img (or the per-type images
//! of older CRIUs); sockets; mounts; the network namespace's devices,
//! addresses and routes; cgroups; ttys; and CRIU's statistics.
//!
//! Command lines are read back from the dumped memory (the pages holding
//! `mm_arg_start..mm_arg_end`), since CRIU records them nowhere else.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::netlink::{self, IfAddr, Route};
use super::{entries_of, pagemap, pb, read};
use crate::error::{Error, Result};
use crate::stats::{self, DumpStats, RestoreStats};

const PAGE_SIZE: u64 = 4096;

/// Everything `ferry inspect` knows about a checkpoint.
#[derive(Debug, Clone, Serialize)]
pub struct Checkpoint {
    pub dir: PathBuf,
    pub criu: CriuInfo,
    pub processes: Vec<Process>,
    pub sockets: Vec<Socket>,
    pub mounts: Vec<Mount>,
    pub network: Vec<NetNs>,
    pub cgroups: Vec<CgroupSet>,
    pub ttys: Vec<Tty>,
    pub stats: Stats,
    pub images: ImageTotals,
}

/// What the inventory and the dump log say about the dump itself.
#[derive(Debug, Clone, Serialize)]
pub struct CriuInfo {
    /// CRIU's version, from the dump log (`Version: ...`), when it is kept
    /// beside the images.
    pub version: Option<String>,
    /// The image format version (2: images v1.1).
    pub image_version: u32,
    pub run_id: Option<String>,
    pub root_pid: Option<u32>,
    pub lsm: Option<String>,
    pub tcp_close: bool,
    pub network_lock_method: Option<u32>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Process {
    pub pid: u32,
    pub ppid: u32,
    pub pgid: u32,
    pub sid: u32,
    pub comm: String,
    /// alive, stopped, zombie, dead or helper.
    pub state: String,
    pub exe: Option<String>,
    /// Read back from the dumped memory; `None` when those pages were not
    /// in the image (lazy, or in a parent dump).
    pub cmdline: Option<Vec<String>>,
    pub cwd: Option<String>,
    pub root: Option<String>,
    pub threads: Vec<Thread>,
    pub memory: Memory,
    pub fds: Vec<Fd>,
}

/// One thread, from its core-TID.img.
#[derive(Debug, Clone, Serialize)]
pub struct Thread {
    pub tid: u32,
    pub comm: String,
    pub sched_policy: String,
    pub nice: i32,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub seccomp: Option<String>,
    pub blocked_signals: u64,
    /// Instruction and stack pointers (x86-64).
    pub ip: Option<u64>,
    pub sp: Option<u64>,
}

/// A task's address space, from mm-PID.img and pagemap-PID.img.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Memory {
    /// Mapped bytes by kind of mapping (anon_private, file_private, stack,
    /// heap, anon_shared, file_shared, vdso, vvar, ...).
    pub by_kind: BTreeMap<String, u64>,
    pub mapped: u64,
    /// Pages whose content is in the image's pages-N.img.
    pub pages_dumped: u64,
    /// Pages left in a parent (pre-)dump.
    pub pages_in_parent: u64,
    /// Pages left for a lazy-pages daemon.
    pub pages_lazy: u64,
    pub vmas: Vec<Vma>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Vma {
    pub start: u64,
    pub end: u64,
    /// `r-xp` as /proc/PID/maps.
    pub prot: String,
    pub kind: String,
    pub file: Option<String>,
    pub pgoff: u64,
}

/// One open file descriptor.
#[derive(Debug, Clone, Serialize)]
pub struct Fd {
    pub fd: u32,
    /// The file's id in files.img, shared by every fd on the same open file.
    pub id: u32,
    /// CRIU's file type (REG, PIPE, UNIXSK, INETSK, EVENTFD, ...).
    #[serde(rename = "type")]
    pub kind: String,
    /// What a person reads: the path, `pipe:[N]`, a socket's addresses...
    pub description: String,
    pub path: Option<String>,
    pub pipe_id: Option<u32>,
    pub socket: Option<Socket>,
    pub flags: u32,
}

/// A socket (unix, inet, netlink, packet), open by some task.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Socket {
    pub id: u32,
    pub ino: Option<u32>,
    /// unix, inet, inet6, netlink or packet.
    pub family: String,
    /// stream, dgram, seqpacket, raw.
    #[serde(rename = "type")]
    pub kind: String,
    pub protocol: String,
    pub state: String,
    pub local: Option<String>,
    pub remote: Option<String>,
    /// A unix socket's peer (its inode).
    pub peer: Option<u32>,
    /// A unix socket's name: a path, `@abstract`, or empty.
    pub name: Option<String>,
    pub backlog: Option<u32>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Mount {
    pub ns: u32,
    pub mnt_id: u32,
    pub parent: u32,
    pub mountpoint: String,
    pub fstype: String,
    pub source: String,
    pub root: String,
    pub options: String,
    /// The key of an external (bind) mount, resolved on restore.
    pub external: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct NetNs {
    pub id: u32,
    pub devices: Vec<NetDevice>,
    pub addresses: Vec<IfAddr>,
    pub routes: Vec<Route>,
}

#[derive(Debug, Clone, Serialize)]
pub struct NetDevice {
    pub ifindex: u32,
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub mtu: u32,
    pub up: bool,
    pub address: Option<String>,
    pub peer_ifindex: Option<u32>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CgroupSet {
    pub id: u32,
    /// controller(s) -> path.
    pub paths: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Tty {
    pub id: u32,
    #[serde(rename = "type")]
    pub kind: String,
    pub index: Option<u32>,
    pub sid: u32,
    pub pgrp: u32,
    pub rows: Option<u32>,
    pub cols: Option<u32>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Stats {
    pub dump: Option<DumpStats>,
    pub restore: Option<RestoreStats>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ImageTotals {
    pub files: usize,
    pub bytes: u64,
    /// Bytes in pages-N.img files.
    pub pages_bytes: u64,
}

fn opt(path: PathBuf) -> Option<PathBuf> {
    path.exists().then_some(path)
}

/// The image files of `dir` whose names start with `prefix` and end in
/// `.img`, with the number between: (number, path), sorted.
fn numbered(dir: &Path, prefix: &str) -> Result<Vec<(u32, PathBuf)>> {
    let mut out = Vec::new();
    let rd = std::fs::read_dir(dir).map_err(|source| Error::Io {
        op: "listing",
        path: dir.to_path_buf(),
        source,
    })?;
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(n) = name
            .strip_prefix(prefix)
            .and_then(|r| r.strip_suffix(".img"))
            .and_then(|n| n.parse().ok())
        {
            out.push((n, e.path()));
        }
    }
    out.sort();
    Ok(out)
}

fn first<M: Default>(v: Vec<M>) -> M {
    v.into_iter().next().unwrap_or_default()
}

/// The files of the checkpoint by id (files.img, and the per-type images
/// older CRIUs wrote).
struct Files {
    by_id: HashMap<u32, pb::File_entry>,
    ttys: HashMap<u32, pb::Tty_info_entry>,
    memfd: HashMap<u64, String>,
}

impl Files {
    fn read(dir: &Path) -> Result<Files> {
        let mut by_id = HashMap::new();
        if let Some(p) = opt(dir.join("files.img")) {
            for f in entries_of::<pb::File_entry>(&p, "FILES")? {
                by_id.insert(f.id(), f);
            }
        }
        macro_rules! legacy {
            ($file:literal, $kind:literal, $t:ty, $ty:expr, $field:ident) => {
                if let Some(p) = opt(dir.join($file)) {
                    for e in entries_of::<$t>(&p, $kind)? {
                        let id = e.id();
                        by_id.entry(id).or_insert_with(|| {
                            let mut f = pb::File_entry::new();
                            f.set_type($ty);
                            f.set_id(id);
                            f.$field = protobuf::MessageField::some(e);
                            f
                        });
                    }
                }
            };
        }
        use pb::Fd_types as T;
        legacy!(
            "reg-files.img",
            "REG_FILES",
            pb::Reg_file_entry,
            T::REG,
            reg
        );
        legacy!("pipes.img", "PIPES", pb::Pipe_entry, T::PIPE, pipe);
        legacy!("unixsk.img", "UNIXSK", pb::Unix_sk_entry, T::UNIXSK, usk);
        legacy!("inetsk.img", "INETSK", pb::Inet_sk_entry, T::INETSK, isk);
        legacy!(
            "eventfd.img",
            "EVENTFD_FILE",
            pb::Eventfd_file_entry,
            T::EVENTFD,
            efd
        );
        legacy!(
            "eventpoll.img",
            "EVENTPOLL_FILE",
            pb::Eventpoll_file_entry,
            T::EVENTPOLL,
            epfd
        );
        legacy!("tty.img", "TTY_FILES", pb::Tty_file_entry, T::TTY, tty);
        legacy!("fifo.img", "FIFO", pb::Fifo_entry, T::FIFO, fifo);
        legacy!(
            "signalfd.img",
            "SIGNALFD",
            pb::Signalfd_entry,
            T::SIGNALFD,
            sgfd
        );
        legacy!("timerfd.img", "TIMERFD", pb::Timerfd_entry, T::TIMERFD, tfd);
        legacy!("ns-files.img", "NS_FILES", pb::Ns_file_entry, T::NS, nsf);
        legacy!(
            "netlinksk.img",
            "NETLINK_SK",
            pb::Netlink_sk_entry,
            T::NETLINKSK,
            nlsk
        );
        legacy!(
            "packetsk.img",
            "PACKETSK",
            pb::Packet_sock_entry,
            T::PACKETSK,
            psk
        );
        let mut ttys = HashMap::new();
        if let Some(p) = opt(dir.join("tty-info.img")) {
            for t in entries_of::<pb::Tty_info_entry>(&p, "TTY_INFO")? {
                ttys.insert(t.id(), t);
            }
        }
        let mut memfd = HashMap::new();
        if let Some(p) = opt(dir.join("memfd.img")) {
            for m in entries_of::<pb::Memfd_inode_entry>(&p, "MEMFD_INODE")? {
                memfd.insert(m.inode_id(), m.name().to_string());
            }
        }
        Ok(Files { by_id, ttys, memfd })
    }

    fn reg_name(&self, id: u32) -> Option<String> {
        self.by_id
            .get(&id)
            .and_then(|f| f.reg.as_ref())
            .map(|r| r.name().to_string())
    }
}

/// An enum field's name as CRIU's schema spells it; its number when the
/// schema does not know it.
fn enum_name<E: protobuf::Enum + std::fmt::Debug>(v: Option<protobuf::EnumOrUnknown<E>>) -> String {
    match v.map(|e| e.enum_value()) {
        Some(Ok(v)) => format!("{v:?}"),
        Some(Err(n)) => format!("{n}"),
        None => "0".into(),
    }
}

fn sock_type(t: u32) -> &'static str {
    match t {
        1 => "stream",
        2 => "dgram",
        3 => "raw",
        5 => "seqpacket",
        _ => "other",
    }
}

/// The kernel's TCP states, which unix sockets use too.
fn sock_state(s: u32) -> String {
    match s {
        1 => "ESTABLISHED",
        2 => "SYN_SENT",
        3 => "SYN_RECV",
        4 => "FIN_WAIT1",
        5 => "FIN_WAIT2",
        6 => "TIME_WAIT",
        7 => "CLOSE",
        8 => "CLOSE_WAIT",
        9 => "LAST_ACK",
        10 => "LISTEN",
        11 => "CLOSING",
        n => return format!("STATE{n}"),
    }
    .to_string()
}

fn inet_addr(family: u32, words: &[u32]) -> Option<IpAddr> {
    let mut b = Vec::with_capacity(16);
    for w in words {
        // CRIU copies the kernel's network-order words as they are.
        b.extend_from_slice(&w.to_ne_bytes());
    }
    match family {
        2 => Some(Ipv4Addr::from(<[u8; 4]>::try_from(b.get(..4)?).ok()?).into()),
        10 => Some(Ipv6Addr::from(<[u8; 16]>::try_from(b.get(..16)?).ok()?).into()),
        _ => None,
    }
}

fn endpoint(addr: Option<IpAddr>, port: u32) -> Option<String> {
    addr.map(|a| match a {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    })
}

fn inet_socket(s: &pb::Inet_sk_entry) -> Socket {
    let fam = s.family();
    let protocol = match s.proto() {
        6 => "tcp".to_string(),
        17 => "udp".to_string(),
        136 => "udplite".to_string(),
        0 if s.type_() == 3 => "raw".to_string(),
        p => format!("proto{p}"),
    };
    let local = endpoint(inet_addr(fam, &s.src_addr), s.src_port());
    let remote = if s.dst_port() == 0 && s.dst_addr.iter().all(|w| *w == 0) {
        None
    } else {
        endpoint(inet_addr(fam, &s.dst_addr), s.dst_port())
    };
    Socket {
        id: s.id(),
        ino: Some(s.ino()),
        family: if fam == 10 { "inet6" } else { "inet" }.into(),
        kind: sock_type(s.type_()).into(),
        protocol,
        state: sock_state(s.state()),
        local,
        remote,
        peer: None,
        name: None,
        backlog: s.has_backlog().then(|| s.backlog()),
    }
}

fn unix_name(u: &pb::Unix_sk_entry) -> String {
    let n = u.name();
    // An abstract name starts with a NUL; a path's ends with one (the
    // kernel's sun_path), which is not part of the name.
    let text = match n.strip_prefix(b"\0") {
        Some(rest) => format!("@{}", String::from_utf8_lossy(rest)),
        None => String::from_utf8_lossy(n)
            .trim_end_matches('\0')
            .to_string(),
    };
    if u.has_name_dir() && !text.starts_with('/') && !text.starts_with('@') && !text.is_empty() {
        format!("{}/{}", u.name_dir(), text)
    } else {
        text
    }
}

fn unix_socket(u: &pb::Unix_sk_entry) -> Socket {
    let name = unix_name(u);
    Socket {
        id: u.id(),
        ino: Some(u.ino()),
        family: "unix".into(),
        kind: sock_type(u.type_()).into(),
        protocol: "unix".into(),
        state: sock_state(u.state()),
        local: (!name.is_empty()).then(|| name.clone()),
        remote: None,
        peer: (u.peer() != 0).then(|| u.peer()),
        name: Some(name),
        backlog: u.has_backlog().then(|| u.backlog()),
    }
}

fn other_socket(id: u32, family: &str, protocol: u32, kind: u32, state: u32) -> Socket {
    Socket {
        id,
        ino: None,
        family: family.into(),
        kind: sock_type(kind).into(),
        protocol: format!("{protocol}"),
        state: sock_state(state),
        local: None,
        remote: None,
        peer: None,
        name: None,
        backlog: None,
    }
}

fn socket_of(f: &pb::File_entry) -> Option<Socket> {
    if let Some(s) = f.isk.as_ref() {
        return Some(inet_socket(s));
    }
    if let Some(u) = f.usk.as_ref() {
        return Some(unix_socket(u));
    }
    if let Some(n) = f.nlsk.as_ref() {
        let mut s = other_socket(n.id(), "netlink", n.protocol(), 3, n.state());
        s.ino = Some(n.ino());
        s.local = Some(format!("portid {}", n.portid()));
        return Some(s);
    }
    if let Some(p) = f.psk.as_ref() {
        return Some(other_socket(p.id(), "packet", p.protocol(), p.type_(), 0));
    }
    None
}

fn describe_socket(s: &Socket) -> String {
    match s.family.as_str() {
        "unix" => {
            let mut d = format!("unix:[{}] {} {}", s.ino.unwrap_or(0), s.kind, s.state);
            if let Some(n) = s.name.as_deref().filter(|n| !n.is_empty()) {
                d.push_str(&format!(" {n}"));
            }
            if let Some(p) = s.peer {
                d.push_str(&format!(" -> unix:[{p}]"));
            }
            d
        }
        "inet" | "inet6" => {
            let mut d = format!("{} {}", s.protocol, s.local.as_deref().unwrap_or("?"));
            if let Some(r) = &s.remote {
                d.push_str(&format!(" -> {r}"));
            }
            format!("{d} {}", s.state)
        }
        f => format!(
            "{f} socket {} {}",
            s.protocol,
            s.local.as_deref().unwrap_or("")
        ),
    }
}

fn tty_kind(t: &pb::Tty_info_entry) -> String {
    match enum_name(t.type_).as_str() {
        "TTY_UNKNOWN" => "unknown".into(),
        n => n.to_lowercase(),
    }
}

fn fd_of(e: &pb::Fdinfo_entry, files: &Files) -> Fd {
    let kind = enum_name(e.type_);
    let f = files.by_id.get(&e.id());
    let mut fd = Fd {
        fd: e.fd(),
        id: e.id(),
        description: format!("{kind}.{}", e.id()),
        kind,
        path: None,
        pipe_id: None,
        socket: None,
        flags: e.flags(),
    };
    let Some(f) = f else {
        fd.description = format!("{} (not in files.img)", fd.description);
        return fd;
    };
    if let Some(r) = f.reg.as_ref() {
        fd.path = Some(r.name().to_string());
        fd.description = r.name().to_string();
    } else if let Some(p) = f.pipe.as_ref() {
        fd.pipe_id = Some(p.pipe_id());
        fd.description = format!("pipe:[{}]", p.pipe_id());
    } else if let Some(p) = f.fifo.as_ref() {
        fd.pipe_id = Some(p.pipe_id());
        fd.path = files.reg_name(p.regf_id());
        fd.description = format!(
            "fifo:[{}] {}",
            p.pipe_id(),
            fd.path.as_deref().unwrap_or("")
        );
    } else if let Some(s) = socket_of(f) {
        fd.description = describe_socket(&s);
        fd.socket = Some(s);
    } else if let Some(e) = f.efd.as_ref() {
        fd.description = format!("eventfd counter={}", e.counter());
    } else if let Some(e) = f.epfd.as_ref() {
        let t: Vec<String> = e.tfd.iter().map(|t| t.tfd().to_string()).collect();
        fd.description = format!("eventpoll watching fds [{}]", t.join(", "));
    } else if let Some(s) = f.sgfd.as_ref() {
        fd.description = format!("signalfd mask={:#x}", s.sigmask());
    } else if let Some(t) = f.tfd.as_ref() {
        fd.description = format!("timerfd clock={} ticks={}", t.clockid(), t.ticks());
    } else if let Some(t) = f.tty.as_ref() {
        fd.path = files.reg_name(t.regf_id());
        let info = files.ttys.get(&t.tty_info_id());
        fd.description = match info {
            Some(i) if i.pty.is_some() => format!(
                "tty {} {}",
                tty_kind(i),
                i.pty.as_ref().map(|p| p.index()).unwrap_or(0)
            ),
            Some(i) => format!("tty {}", tty_kind(i)),
            None => "tty".into(),
        };
        if let Some(p) = &fd.path {
            fd.description = format!("{} ({p})", fd.description);
        }
    } else if let Some(n) = f.nsf.as_ref() {
        fd.description = format!("ns id={} cflag={:#x}", n.ns_id(), n.ns_cflag());
    } else if let Some(m) = f.memfd.as_ref() {
        let name = files
            .memfd
            .get(&(m.inode_id() as u64))
            .cloned()
            .unwrap_or_default();
        fd.description = format!("memfd:{name}");
    } else if let Some(t) = f.tunf.as_ref() {
        fd.description = format!("tun {}", t.netdev());
    } else if f.ify.is_some() {
        fd.description = "inotify".into();
    } else if f.ffy.is_some() {
        fd.description = "fanotify".into();
    } else if let Some(p) = f.pidfd.as_ref() {
        fd.description = format!("pidfd pid={}", p.nspid());
    } else if let Some(b) = f.bpf.as_ref() {
        fd.description = format!("bpf-map {}", b.map_name());
    }
    fd
}

fn task_state(s: u32) -> String {
    match s {
        1 => "alive",
        2 => "dead",
        3 => "stopped",
        6 => "zombie",
        0x80 => "helper",
        n => return format!("state{n}"),
    }
    .into()
}

fn sched_policy(p: u32) -> String {
    match p {
        0 => "other",
        1 => "fifo",
        2 => "rr",
        3 => "batch",
        5 => "idle",
        6 => "deadline",
        n => return format!("policy{n}"),
    }
    .into()
}

fn thread_of(tid: u32, core: &pb::Core_entry) -> Thread {
    let tc = core.thread_core.as_ref();
    let comm = tc
        .filter(|t| t.has_comm())
        .map(|t| t.comm().to_string())
        .or_else(|| core.tc.as_ref().map(|t| t.comm().to_string()))
        .unwrap_or_default();
    let regs = core.thread_info.as_ref().and_then(|t| t.gpregs.as_ref());
    Thread {
        tid,
        comm,
        sched_policy: sched_policy(tc.map(|t| t.sched_policy()).unwrap_or(0)),
        nice: tc.map(|t| t.sched_nice()).unwrap_or(0),
        uid: tc.and_then(|t| t.creds.as_ref()).map(|c| c.uid()),
        gid: tc.and_then(|t| t.creds.as_ref()).map(|c| c.gid()),
        seccomp: tc
            .filter(|t| t.has_seccomp_mode())
            .map(|t| format!("{:?}", t.seccomp_mode())),
        blocked_signals: tc
            .filter(|t| t.has_blk_sigset())
            .map(|t| t.blk_sigset())
            .or_else(|| core.tc.as_ref().map(|t| t.blk_sigset()))
            .unwrap_or(0),
        ip: regs.map(|r| r.ip()),
        sp: regs.map(|r| r.sp()),
    }
}

// criu/include/image.h: a VMA's status bits.
const VMA_AREA_STACK: u32 = 1 << 1;
const VMA_AREA_VSYSCALL: u32 = 1 << 2;
const VMA_AREA_VDSO: u32 = 1 << 3;
const VMA_AREA_HEAP: u32 = 1 << 5;
const VMA_FILE_PRIVATE: u32 = 1 << 6;
const VMA_FILE_SHARED: u32 = 1 << 7;
const VMA_ANON_SHARED: u32 = 1 << 8;
const VMA_ANON_PRIVATE: u32 = 1 << 9;
const VMA_AREA_SYSVIPC: u32 = 1 << 10;
const VMA_AREA_SOCKET: u32 = 1 << 11;
const VMA_AREA_VVAR: u32 = 1 << 12;
const VMA_AREA_AIORING: u32 = 1 << 13;
const VMA_AREA_MEMFD: u32 = 1 << 14;

fn vma_kind(status: u32) -> &'static str {
    let has = |b: u32| status & b != 0;
    if has(VMA_AREA_VDSO) {
        "vdso"
    } else if has(VMA_AREA_VVAR) {
        "vvar"
    } else if has(VMA_AREA_VSYSCALL) {
        "vsyscall"
    } else if has(VMA_AREA_STACK) {
        "stack"
    } else if has(VMA_AREA_HEAP) {
        "heap"
    } else if has(VMA_AREA_AIORING) {
        "aio_ring"
    } else if has(VMA_AREA_SYSVIPC) {
        "sysv_shm"
    } else if has(VMA_AREA_SOCKET) {
        "socket"
    } else if has(VMA_AREA_MEMFD) {
        "memfd"
    } else if has(VMA_FILE_SHARED) {
        "file_shared"
    } else if has(VMA_FILE_PRIVATE) {
        "file_private"
    } else if has(VMA_ANON_SHARED) {
        "anon_shared"
    } else if has(VMA_ANON_PRIVATE) {
        "anon_private"
    } else {
        "other"
    }
}

fn prot_string(prot: u32, flags: u32) -> String {
    let b = |bit: u32, c: char| if prot & bit != 0 { c } else { '-' };
    // MAP_SHARED is 1.
    let shared = if flags & 1 != 0 { 's' } else { 'p' };
    format!("{}{}{}{shared}", b(1, 'r'), b(2, 'w'), b(4, 'x'))
}

// criu/include/pagemap.h
const PE_PARENT: u32 = 1 << 0;
const PE_LAZY: u32 = 1 << 1;
const PE_PRESENT: u32 = 1 << 2;

/// A task's dumped memory: which pages of pages-N.img hold which
/// addresses.
struct DumpedMemory {
    pages: Option<PathBuf>,
    /// (vaddr, nr_pages, offset in pages-N.img) of present runs.
    runs: Vec<(u64, u64, u64)>,
}

impl DumpedMemory {
    fn read(dir: &Path, pid: u32, mem: &mut Memory) -> Result<DumpedMemory> {
        let mut out = DumpedMemory {
            pages: None,
            runs: Vec::new(),
        };
        let Some(p) = opt(dir.join(format!("pagemap-{pid}.img"))) else {
            return Ok(out);
        };
        let (head, entries) = pagemap(&p)?;
        out.pages = opt(dir.join(format!("pages-{}.img", head.pages_id())));
        let mut offset = 0u64;
        for e in entries {
            let nr = if e.has_nr_pages() {
                e.nr_pages()
            } else {
                e.compat_nr_pages() as u64
            };
            let flags = if e.has_flags() {
                e.flags()
            } else if e.in_parent() {
                PE_PARENT
            } else {
                PE_PRESENT
            };
            if flags & PE_PARENT != 0 {
                mem.pages_in_parent = mem.pages_in_parent.saturating_add(nr);
            } else if flags & PE_PRESENT != 0 {
                mem.pages_dumped = mem.pages_dumped.saturating_add(nr);
                out.runs.push((e.vaddr(), nr, offset));
                offset = offset.saturating_add(nr.saturating_mul(PAGE_SIZE));
            } else if flags & PE_LAZY != 0 {
                mem.pages_lazy = mem.pages_lazy.saturating_add(nr);
            }
        }
        Ok(out)
    }

    /// The bytes at `start..end` of the task's memory, if all dumped here.
    fn bytes(&self, start: u64, end: u64) -> Option<Vec<u8>> {
        let pages = self.pages.as_ref()?;
        if end <= start || end - start > 1 << 20 {
            return None;
        }
        let mut f = File::open(pages).ok()?;
        let mut out = Vec::with_capacity((end - start) as usize);
        let mut at = start;
        while at < end {
            let &(vaddr, nr, off) = self
                .runs
                .iter()
                .find(|(v, n, _)| *v <= at && at < v.saturating_add(n.saturating_mul(PAGE_SIZE)))?;
            let run_end = vaddr.saturating_add(nr.saturating_mul(PAGE_SIZE)).min(end);
            f.seek(SeekFrom::Start(off.checked_add(at - vaddr)?)).ok()?;
            let mut buf = vec![0; (run_end - at) as usize];
            f.read_exact(&mut buf).ok()?;
            out.extend_from_slice(&buf);
            at = run_end;
        }
        Some(out)
    }
}

fn cmdline(mem: &DumpedMemory, mm: &pb::Mm_entry) -> Option<Vec<String>> {
    let raw = mem.bytes(mm.mm_arg_start(), mm.mm_arg_end())?;
    let raw = raw.strip_suffix(b"\0").unwrap_or(&raw);
    Some(
        raw.split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect(),
    )
}

fn process(dir: &Path, p: &pb::Pstree_entry, files: &Files) -> Result<Process> {
    let pid = p.pid();
    let core_of = |tid: u32| -> Result<pb::Core_entry> {
        Ok(first(entries_of::<pb::Core_entry>(
            &dir.join(format!("core-{tid}.img")),
            "CORE",
        )?))
    };
    let core = core_of(pid)?;
    let tc = core.tc.as_ref();
    let ids = match opt(dir.join(format!("ids-{pid}.img"))) {
        Some(p) => first(entries_of::<pb::Task_kobj_ids_entry>(&p, "IDS")?),
        None => core.ids.as_ref().cloned().unwrap_or_default(),
    };
    let mut threads = Vec::new();
    let tids: Vec<u32> = if p.threads.is_empty() {
        vec![pid]
    } else {
        p.threads.clone()
    };
    for tid in tids {
        let c = if tid == pid {
            core.clone()
        } else {
            core_of(tid)?
        };
        threads.push(thread_of(tid, &c));
    }
    let state = task_state(tc.map(|t| t.task_state()).unwrap_or(0));

    let mut fds = Vec::new();
    if let Some(fi) = opt(dir.join(format!("fdinfo-{}.img", ids.files_id()))) {
        for e in entries_of::<pb::Fdinfo_entry>(&fi, "FDINFO")? {
            fds.push(fd_of(&e, files));
        }
    }
    let (mut cwd, mut root) = (None, None);
    if let Some(fs) = opt(dir.join(format!("fs-{pid}.img"))) {
        let fs = first(entries_of::<pb::Fs_entry>(&fs, "FS")?);
        cwd = files.reg_name(fs.cwd_id());
        root = files.reg_name(fs.root_id());
    }

    let mut memory = Memory::default();
    let (mut exe, mut args) = (None, None);
    if let Some(mm) = opt(dir.join(format!("mm-{pid}.img"))) {
        let mm = first(entries_of::<pb::Mm_entry>(&mm, "MM")?);
        exe = files.reg_name(mm.exe_file_id());
        for v in &mm.vmas {
            let len = v.end().saturating_sub(v.start());
            // CRIU flags [stack] only in some versions; the mapping that
            // holds the initial stack pointer is the stack either way.
            let kind = match vma_kind(v.status()) {
                "anon_private" if (v.start()..v.end()).contains(&mm.mm_start_stack()) => "stack",
                k => k,
            };
            // Sums of what the image claims: saturating, never a panic.
            let k = memory.by_kind.entry(kind.to_string()).or_default();
            *k = k.saturating_add(len);
            memory.mapped = memory.mapped.saturating_add(len);
            let file = if v.status() & (VMA_FILE_PRIVATE | VMA_FILE_SHARED) != 0 {
                files.reg_name(v.shmid() as u32)
            } else {
                None
            };
            memory.vmas.push(Vma {
                start: v.start(),
                end: v.end(),
                prot: prot_string(v.prot(), v.flags()),
                kind: kind.to_string(),
                file,
                pgoff: v.pgoff(),
            });
        }
        let dumped = DumpedMemory::read(dir, pid, &mut memory)?;
        args = cmdline(&dumped, &mm);
    }

    Ok(Process {
        pid,
        ppid: p.ppid(),
        pgid: p.pgid(),
        sid: p.sid(),
        comm: tc.map(|t| t.comm().to_string()).unwrap_or_default(),
        state,
        exe,
        cmdline: args,
        cwd,
        root,
        threads,
        memory,
        fds,
    })
}

fn fstype_name(t: u32, fsname: &str) -> String {
    let n = match t {
        1 => "proc",
        2 => "sysfs",
        3 => "devtmpfs",
        4 => "binfmt_misc",
        5 => "tmpfs",
        6 => "devpts",
        7 => "simfs",
        8 => "pstore",
        9 => "securityfs",
        10 => "fusectl",
        11 => "debugfs",
        12 => "cgroup",
        13 => "aufs",
        14 => "mqueue",
        15 => "fuse",
        17 => "overlay",
        18 => "autofs",
        19 => "tracefs",
        23 => "cgroup2",
        _ if !fsname.is_empty() => return fsname.to_string(),
        16 => "auto",
        _ => "other",
    };
    n.into()
}

fn mounts(dir: &Path) -> Result<Vec<Mount>> {
    let mut out = Vec::new();
    for (ns, p) in numbered(dir, "mountpoints-")? {
        for m in entries_of::<pb::Mnt_entry>(&p, "MNTS")? {
            out.push(Mount {
                ns,
                mnt_id: m.mnt_id(),
                parent: m.parent_mnt_id(),
                mountpoint: m.mountpoint().to_string(),
                fstype: fstype_name(m.fstype(), m.fsname()),
                source: m.source().to_string(),
                root: m.root().to_string(),
                options: m.options().to_string(),
                external: m
                    .has_ext_key()
                    .then(|| m.ext_key().to_string())
                    .or_else(|| m.ext_mount().then(|| m.root().to_string())),
            });
        }
    }
    Ok(out)
}

fn network(dir: &Path) -> Result<Vec<NetNs>> {
    let mut by_ns: BTreeMap<u32, NetNs> = BTreeMap::new();
    for (id, p) in numbered(dir, "netdev-")? {
        let n = by_ns.entry(id).or_insert_with(|| empty_ns(id));
        for d in entries_of::<pb::Net_device_entry>(&p, "NETDEV")? {
            n.devices.push(NetDevice {
                ifindex: d.ifindex(),
                name: d.name().to_string(),
                kind: enum_name(d.type_).to_lowercase(),
                mtu: d.mtu(),
                // IFF_UP
                up: d.flags() & 1 != 0,
                address: d.has_address().then(|| {
                    d.address()
                        .iter()
                        .map(|b| format!("{b:02x}"))
                        .collect::<Vec<_>>()
                        .join(":")
                }),
                peer_ifindex: d.has_peer_ifindex().then(|| d.peer_ifindex()),
            });
        }
    }
    for (id, p) in numbered(dir, "ifaddr-")? {
        let data = read(&p)?;
        let n = by_ns.entry(id).or_insert_with(|| empty_ns(id));
        n.addresses.extend(netlink::ifaddrs(&p, &data)?);
    }
    for prefix in ["route-", "route6-"] {
        for (id, p) in numbered(dir, prefix)? {
            let data = read(&p)?;
            let n = by_ns.entry(id).or_insert_with(|| empty_ns(id));
            n.routes.extend(netlink::routes(&p, &data)?);
        }
    }
    Ok(by_ns.into_values().collect())
}

fn empty_ns(id: u32) -> NetNs {
    NetNs {
        id,
        devices: Vec::new(),
        addresses: Vec::new(),
        routes: Vec::new(),
    }
}

fn cgroups(dir: &Path) -> Result<Vec<CgroupSet>> {
    let Some(p) = opt(dir.join("cgroup.img")) else {
        return Ok(Vec::new());
    };
    let cg = first(entries_of::<pb::Cgroup_entry>(&p, "CGROUP")?);
    Ok(cg
        .sets
        .iter()
        .map(|s| CgroupSet {
            id: s.id(),
            paths: s
                .ctls
                .iter()
                .map(|c| {
                    // The unified (v2) hierarchy has no controller name.
                    let name = match c.name() {
                        "" => "cgroup2",
                        n => n,
                    };
                    (name.to_string(), c.path().to_string())
                })
                .collect(),
        })
        .collect())
}

fn criu_version(dir: &Path) -> Option<String> {
    let log = std::fs::read(dir.join("dump.log")).ok()?;
    let text = String::from_utf8_lossy(&log[..log.len().min(64 << 10)]).into_owned();
    text.lines()
        .find_map(|l| l.split_once("Version: ").map(|(_, v)| v.trim().to_string()))
}

fn totals(dir: &Path) -> Result<ImageTotals> {
    let mut t = ImageTotals::default();
    let rd = std::fs::read_dir(dir).map_err(|source| Error::Io {
        op: "listing",
        path: dir.to_path_buf(),
        source,
    })?;
    for e in rd.flatten() {
        let Ok(m) = e.metadata() else { continue };
        if !m.is_file() {
            continue;
        }
        t.files += 1;
        t.bytes += m.len();
        if e.file_name().to_string_lossy().starts_with("pages-") {
            t.pages_bytes += m.len();
        }
    }
    Ok(t)
}

impl Checkpoint {
    /// Reads the checkpoint in `dir`.
    pub fn read(dir: &Path) -> Result<Checkpoint> {
        let inv_path = dir.join("inventory.img");
        if !inv_path.is_file() {
            return Err(Error::NotAnImageDir {
                path: dir.to_path_buf(),
            });
        }
        let inv = first(entries_of::<pb::Inventory_entry>(&inv_path, "INVENTORY")?);
        let files = Files::read(dir)?;
        let tree = entries_of::<pb::Pstree_entry>(&dir.join("pstree.img"), "PSTREE")?;
        let processes = tree
            .iter()
            .map(|p| process(dir, p, &files))
            .collect::<Result<Vec<_>>>()?;

        let mut sockets: Vec<Socket> = files.by_id.values().filter_map(socket_of).collect();
        sockets.sort_by_key(|s| (s.family.clone(), s.ino, s.id));
        let mut ttys: Vec<Tty> = files
            .ttys
            .values()
            .map(|t| Tty {
                id: t.id(),
                kind: tty_kind(t),
                index: t.pty.as_ref().map(|p| p.index()),
                sid: t.sid(),
                pgrp: t.pgrp(),
                rows: t.winsize.as_ref().map(|w| w.ws_row()),
                cols: t.winsize.as_ref().map(|w| w.ws_col()),
            })
            .collect();
        ttys.sort_by_key(|t| t.id);

        Ok(Checkpoint {
            dir: dir.to_path_buf(),
            criu: CriuInfo {
                version: criu_version(dir),
                image_version: inv.img_version(),
                run_id: inv
                    .has_dump_criu_run_id()
                    .then(|| inv.dump_criu_run_id().to_string()),
                root_pid: tree.first().map(|p| p.pid()),
                lsm: inv.has_lsmtype().then(|| format!("{:?}", inv.lsmtype())),
                tcp_close: inv.tcp_close(),
                network_lock_method: inv
                    .has_network_lock_method()
                    .then(|| inv.network_lock_method()),
            },
            processes,
            sockets,
            mounts: mounts(dir)?,
            network: network(dir)?,
            cgroups: cgroups(dir)?,
            ttys,
            stats: Stats {
                dump: stats::read_dump_stats(dir)?,
                restore: stats::read_restore_stats(dir)?,
            },
            images: totals(dir)?,
        })
    }
}
