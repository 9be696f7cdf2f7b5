//! Typed options for CRIU requests and their pure conversion to `criu_opts`.
//!
//! The fields follow CRIU's `rpc.proto` and cover what runc passes
//! (libcontainer/criu_linux.go) plus what live migration needs (page server,
//! lazy pages, status fd). Conversions do no I/O: fds are already open when an
//! option struct exists, and fds that must live in criu's own fd table
//! (`inherit_fd`, a connected page-server socket) get deterministic numbers
//! there, assigned by [`ChildFds`], so the conversion stays a function of the
//! options alone and is unit-tested without CRIU.

use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::fcntl::{open, OFlag};
use nix::sched::CloneFlags;
use nix::sys::stat::Mode;
use nix::unistd::Pid;
use protobuf::{EnumOrUnknown, MessageField};

use crate::error::{Error, Result};
use crate::proto;

/// criu swrk's socket is fd 3 in criu; fds passed along follow it.
pub(crate) const SWRK_FD: i32 = 3;
pub(crate) const FIRST_PASSED_FD: i32 = SWRK_FD + 1;

/// CRIU's log verbosity (`-v1` .. `-v4`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Error = 1,
    Warn = 2,
    Info = 3,
    Debug = 4,
}

/// How CRIU treats the cgroups of the tree (`--manage-cgroups=MODE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupMode {
    Ignore,
    None,
    Props,
    Soft,
    Full,
    Strict,
    Default,
}

/// How CRIU locks the network while tasks are frozen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetworkLock {
    Iptables,
    Nftables,
    Skip,
}

/// How pre-dump reads memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreDumpMode {
    Splice,
    VmRead,
}

/// Maps a cgroup controller's root on dump or restore (`--cgroup-root`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupRoot {
    /// `None` applies to all controllers.
    pub controller: Option<String>,
    pub path: PathBuf,
}

/// `--ext-mount-map KEY:VAL`: on dump, KEY is the mountpoint inside the tree
/// and VAL the name recorded in the image; on restore, KEY is that name and
/// VAL the host path to bind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtMount {
    pub key: String,
    pub value: String,
}

/// A veth pair to recreate on restore (`--veth-pair IN=OUT`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VethPair {
    pub inside: String,
    pub outside: String,
}

/// Join an existing namespace on restore (`--join-ns NS:FILE[,EXTRA]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinNamespace {
    /// "net", "ipc", "uts", "user", "pid", "mnt", "time" or "cgroup".
    pub ns: String,
    pub file: PathBuf,
    pub extra: Option<String>,
}

/// An fd the restored tree gets in place of an external file
/// (`--inherit-fd fd[N]:KEY`), e.g. a pipe standing for the container's stdio.
#[derive(Debug)]
pub struct InheritFd {
    pub key: String,
    pub fd: OwnedFd,
}

/// An fd criu got when it was started ahead of its request ([`Criu::spawn`]:
/// the `index`-th of the fds given there), handed to the restored tree in
/// place of the external file `key`, as [`InheritFd`] does for an fd the
/// request brings. A caller that starts criu before it knows the keys (a
/// migration's destination starts criu before the images arrive) names
/// them so.
///
/// [`Criu::spawn`]: crate::Criu::spawn
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InheritPassed {
    pub key: String,
    pub index: usize,
}

/// Where a page server is, or the socket to one.
#[derive(Debug)]
pub enum PageServerAddr {
    /// TCP: on dump, connect to it; for a page server, listen on it
    /// (port 0 lets CRIU pick one and report it).
    Tcp(SocketAddr),
    /// An already connected (dump) or listening (page server) socket, passed
    /// into criu's fd table.
    Socket(OwnedFd),
}

/// The directories CRIU works in and how it logs.
#[derive(Debug)]
pub struct ImageDirs {
    pub images: OwnedFd,
    /// Where the log and temporary files go; CRIU uses the images dir when unset.
    pub work: Option<OwnedFd>,
    /// A file name inside the work dir (CRIU refuses sub-directories);
    /// CRIU's default is `criu.log`.
    pub log_file: Option<PathBuf>,
    pub log_level: LogLevel,
}

/// The log file name CRIU uses when none is given.
pub(crate) const DEFAULT_LOG_FILE: &str = "criu.log";

fn open_dir(path: &Path) -> Result<OwnedFd> {
    open(
        path,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map(|fd| {
        // SAFETY: open returned a fresh fd that nothing else owns.
        unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) }
    })
    .map_err(|e| Error::Io {
        op: "opening directory",
        path: path.to_path_buf(),
        source: e.into(),
    })
}

impl ImageDirs {
    /// Opens `images` (which must exist) as the images and work dir, with
    /// CRIU's log at `Info` in `criu.log` there.
    pub fn open(images: &Path) -> Result<Self> {
        Ok(ImageDirs {
            images: open_dir(images)?,
            work: None,
            log_file: None,
            log_level: LogLevel::Info,
        })
    }

    /// Uses `work` (which must exist) for the log and temporary files.
    pub fn work_dir(mut self, work: &Path) -> Result<Self> {
        self.work = Some(open_dir(work)?);
        Ok(self)
    }

    pub fn log_file(mut self, name: impl Into<PathBuf>) -> Self {
        self.log_file = Some(name.into());
        self
    }

    pub fn log_level(mut self, level: LogLevel) -> Self {
        self.log_level = level;
        self
    }

    /// The directory that holds CRIU's log.
    pub(crate) fn log_dir(&self) -> BorrowedFd<'_> {
        self.work.as_ref().unwrap_or(&self.images).as_fd()
    }

    pub(crate) fn log_name(&self) -> &Path {
        self.log_file
            .as_deref()
            .unwrap_or(Path::new(DEFAULT_LOG_FILE))
    }

    fn apply(&self, m: &mut proto::Criu_opts) -> Result<()> {
        m.images_dir_fd = Some(self.images.as_raw_fd());
        m.work_dir_fd = self.work.as_ref().map(|w| w.as_raw_fd());
        if let Some(name) = &self.log_file {
            if name.components().count() != 1 || name.to_str().is_none_or(|s| s.contains('/')) {
                return Err(Error::InvalidOption {
                    option: "log_file",
                    reason: "must be a plain file name: CRIU writes it inside the work dir",
                });
            }
            m.log_file = Some(path_str("log_file", name)?);
        }
        m.log_level = Some(self.log_level as i32);
        Ok(())
    }
}

fn path_str(option: &'static str, p: &Path) -> Result<String> {
    p.to_str().map(str::to_owned).ok_or(Error::InvalidOption {
        option,
        reason: "path is not valid UTF-8, which CRIU's protocol requires",
    })
}

fn cg_mode(m: CgroupMode) -> proto::Criu_cg_mode {
    match m {
        CgroupMode::Ignore => proto::Criu_cg_mode::IGNORE,
        CgroupMode::None => proto::Criu_cg_mode::CG_NONE,
        CgroupMode::Props => proto::Criu_cg_mode::PROPS,
        CgroupMode::Soft => proto::Criu_cg_mode::SOFT,
        CgroupMode::Full => proto::Criu_cg_mode::FULL,
        CgroupMode::Strict => proto::Criu_cg_mode::STRICT,
        CgroupMode::Default => proto::Criu_cg_mode::DEFAULT,
    }
}

fn net_lock(l: NetworkLock) -> proto::Criu_network_lock_method {
    match l {
        NetworkLock::Iptables => proto::Criu_network_lock_method::IPTABLES,
        NetworkLock::Nftables => proto::Criu_network_lock_method::NFTABLES,
        NetworkLock::Skip => proto::Criu_network_lock_method::SKIP,
    }
}

/// The options dump and restore share: how the tree relates to the world
/// outside it (mounts, cgroups, sockets, terminal) and how CRIU reports.
#[derive(Debug, Clone, Default)]
pub struct TreeOptions {
    /// The root of the tree's filesystem (`--root`), for restore; on dump
    /// CRIU finds it itself.
    pub root: Option<PathBuf>,
    pub tcp_established: bool,
    /// Close established TCP connections instead of restoring them.
    pub tcp_close: bool,
    pub ext_unix_sk: bool,
    pub shell_job: bool,
    /// The tree's terminal is a pts slave whose master lives outside it (a
    /// container's console, held by whoever got it over the console socket).
    /// On dump CRIU then accepts that one unpaired slave (tty.c refuses it
    /// otherwise: "slave peer ... without correspond master peer"); on
    /// restore it makes a new pair and hands the master to the handler
    /// ([`crate::Notify::OrphanPtsMaster`]). runc sets it on both.
    pub orphan_pts_master: bool,
    pub file_locks: bool,
    pub manage_cgroups: Option<CgroupMode>,
    pub cg_root: Vec<CgroupRoot>,
    pub ext_mounts: Vec<ExtMount>,
    /// `--external` keys: `mnt[KEY]:VAL`, `net[INODE]:NAME`, `veth[IF]:OUT`, ...
    pub external: Vec<String>,
    /// Send notifies to the handler (the `notify_scripts` option).
    pub notify_scripts: bool,
    pub network_lock: Option<NetworkLock>,
    pub auto_ext_mnt: bool,
    pub ext_sharing: bool,
    pub ext_masters: bool,
    pub lsm_profile: Option<String>,
    /// Write statistics (stats-dump / stats-restore) and print them in the log.
    pub display_stats: bool,
    /// Ask CRIU to fail when an operation takes longer (seconds).
    pub timeout_secs: Option<u32>,
    /// A CRIU configuration file (`config_file`) whose settings override
    /// these options, the log file and work dir included (cr-service.c
    /// parses it last); a missing file is ignored by CRIU. runc passes the
    /// container's `org.criu.config` annotation, or /etc/criu/runc.conf.
    pub config_file: Option<PathBuf>,
    /// A directory holding each cgroup hierarchy's root under CRIU's name
    /// for it (`unified` for cgroup2, `systemd` for `name=systemd`, the
    /// controllers as /proc/self/cgroup lists them, `cpu,cpuacct`), as a
    /// mount or a symlink to one (`--cgroup-yard`). CRIU then opens those
    /// instead of mounting every hierarchy itself on each dump and restore
    /// (cgroup.c: collect_cgroups, prepare_cgroup_sfd). On restore it
    /// mounts a hierarchy the yard lacks inside it and leaves it there.
    pub cgroup_yard: Option<PathBuf>,
}

impl TreeOptions {
    /// The log file [`Self::config_file`] sets, if it sets one: CRIU then
    /// logs there instead of the RPC's log file (cr-service.c), relative to
    /// the work dir unless absolute. The last `log-file` line wins, as in
    /// CRIU's getopt over the file's lines (`log-file=X` or `log-file X`,
    /// `--` optional).
    pub(crate) fn config_log_file(&self) -> Option<PathBuf> {
        let text = std::fs::read_to_string(self.config_file.as_ref()?).ok()?;
        text.lines().rev().find_map(|l| {
            let l = l.trim().trim_start_matches("--");
            let rest = l.strip_prefix("log-file")?;
            let v = rest
                .strip_prefix('=')
                .or_else(|| rest.strip_prefix(char::is_whitespace))?;
            let v = v.trim().trim_matches('"');
            (!v.is_empty()).then(|| PathBuf::from(v))
        })
    }

    fn apply(&self, m: &mut proto::Criu_opts) -> Result<()> {
        if let Some(root) = &self.root {
            m.root = Some(path_str("root", root)?);
        }
        let flag = |b: bool| b.then_some(true);
        m.tcp_established = flag(self.tcp_established);
        m.tcp_close = flag(self.tcp_close);
        m.ext_unix_sk = flag(self.ext_unix_sk);
        m.shell_job = flag(self.shell_job);
        m.orphan_pts_master = flag(self.orphan_pts_master);
        m.file_locks = flag(self.file_locks);
        m.notify_scripts = flag(self.notify_scripts);
        m.auto_ext_mnt = flag(self.auto_ext_mnt);
        m.ext_sharing = flag(self.ext_sharing);
        m.ext_masters = flag(self.ext_masters);
        m.display_stats = flag(self.display_stats);
        if let Some(mode) = self.manage_cgroups {
            // runc sets both: manage_cgroups for old CRIUs, the mode for new.
            m.manage_cgroups = Some(true);
            m.manage_cgroups_mode = Some(EnumOrUnknown::new(cg_mode(mode)));
        }
        for cg in &self.cg_root {
            let mut r = proto::Cgroup_root::new();
            r.ctrl = cg.controller.clone();
            r.path = Some(path_str("cg_root", &cg.path)?);
            m.cg_root.push(r);
        }
        for em in &self.ext_mounts {
            let mut e = proto::Ext_mount_map::new();
            e.key = Some(em.key.clone());
            e.val = Some(em.value.clone());
            m.ext_mnt.push(e);
        }
        m.external = self.external.clone();
        m.network_lock = self.network_lock.map(|l| EnumOrUnknown::new(net_lock(l)));
        m.lsm_profile = self.lsm_profile.clone();
        m.timeout = self.timeout_secs;
        if let Some(c) = &self.config_file {
            m.config_file = Some(path_str("config_file", c)?);
        }
        if let Some(y) = &self.cgroup_yard {
            m.cgroup_yard = Some(path_str("cgroup_yard", y)?);
        }
        Ok(())
    }
}

/// Fds criu must find in its own fd table, in the order they are placed
/// from [`FIRST_PASSED_FD`] on.
pub trait ChildFds {
    fn child_fds(&self) -> Vec<BorrowedFd<'_>>;
    /// Fds the request names among those criu was started with
    /// ([`InheritPassed`]), by position.
    fn passed_indexes(&self) -> Vec<usize> {
        Vec::new()
    }
}

fn page_server_info(
    ps: &PageServerAddr,
    child_fd: i32,
) -> MessageField<proto::Criu_page_server_info> {
    let mut info = proto::Criu_page_server_info::new();
    match ps {
        PageServerAddr::Tcp(addr) => {
            info.address = Some(addr.ip().to_string());
            info.port = Some(addr.port() as i32);
        }
        PageServerAddr::Socket(_) => info.fd = Some(child_fd),
    }
    MessageField::some(info)
}

/// Options of a DUMP (and PRE_DUMP) request.
#[derive(Debug)]
pub struct DumpOptions {
    pub dirs: ImageDirs,
    /// The root of the tree to dump.
    pub pid: Pid,
    pub tree: TreeOptions,
    /// Resume the tasks after the dump (a clone runs beside the original).
    pub leave_running: bool,
    /// Leave the tasks frozen after the dump: live migration kills the
    /// source only once the destination runs.
    pub leave_stopped: bool,
    /// Track memory changes for a later incremental dump (soft-dirty).
    pub track_mem: bool,
    /// Previous pre-dump's images, relative to the images dir.
    pub parent_img: Option<PathBuf>,
    pub auto_dedup: bool,
    /// Send pages to a page server instead of writing them.
    pub page_server: Option<PageServerAddr>,
    /// Post-copy: serve pages lazily from this process.
    pub lazy_pages: bool,
    /// CRIU writes one byte here when ready (lazy pages, page server).
    pub status_fd: Option<OwnedFd>,
    /// Freeze through this freezer cgroup rather than with ptrace (runc
    /// passes the container's freezer).
    pub freeze_cgroup: Option<PathBuf>,
    /// Namespaces to restore empty (only the network namespace is supported
    /// by CRIU), e.g. for a netns the runtime recreates.
    pub empty_ns: CloneFlags,
    pub cgroup_dump_controllers: Vec<String>,
    pub link_remap: bool,
    pub evasive_devices: bool,
    pub tcp_skip_in_flight: bool,
    pub ghost_limit: Option<u32>,
    pub skip_mounts: Vec<PathBuf>,
    pub enable_fs: Vec<String>,
    pub irmap_scan_paths: Vec<PathBuf>,
    pub force_irmap: bool,
    pub pre_dump_mode: Option<PreDumpMode>,
}

impl DumpOptions {
    pub fn new(dirs: ImageDirs, pid: Pid) -> Self {
        DumpOptions {
            dirs,
            pid,
            tree: TreeOptions::default(),
            leave_running: false,
            leave_stopped: false,
            track_mem: false,
            parent_img: None,
            auto_dedup: false,
            page_server: None,
            lazy_pages: false,
            status_fd: None,
            freeze_cgroup: None,
            empty_ns: CloneFlags::empty(),
            cgroup_dump_controllers: Vec::new(),
            link_remap: false,
            evasive_devices: false,
            tcp_skip_in_flight: false,
            ghost_limit: None,
            skip_mounts: Vec::new(),
            enable_fs: Vec::new(),
            irmap_scan_paths: Vec::new(),
            force_irmap: false,
            pre_dump_mode: None,
        }
    }

    /// The RPC configuration file these options need, if any.
    ///
    /// A lazy dump serves its pages itself, but cr-service.c ignores
    /// `ps.fd` when `lazy_pages` is set (only `ps.port` is read) and would
    /// listen on every address, unauthenticated. Its `--ps-socket` option
    /// has no RPC field, but an RPC config file may set it, so a lazy dump
    /// on a handed-in socket carries `ps-socket N` in one. CRIU takes one
    /// config file only: the caller's [`TreeOptions::config_file`] is
    /// copied in first (one it cannot read counts as absent, as for CRIU).
    pub(crate) fn rpc_config(&self) -> Option<String> {
        match (&self.page_server, self.lazy_pages) {
            (Some(PageServerAddr::Socket(_)), true) => {
                let mut text = self
                    .tree
                    .config_file
                    .as_ref()
                    .and_then(|c| std::fs::read_to_string(c).ok())
                    .unwrap_or_default();
                if !text.is_empty() && !text.ends_with('\n') {
                    text.push('\n');
                }
                text.push_str(&format!("ps-socket {FIRST_PASSED_FD}\n"));
                Some(text)
            }
            _ => None,
        }
    }

    /// The `criu_opts` message for these options.
    pub(crate) fn to_rpc(&self) -> Result<proto::Criu_opts> {
        if self.leave_running && self.leave_stopped {
            return Err(Error::InvalidOption {
                option: "leave_running",
                reason: "leave_running and leave_stopped exclude each other",
            });
        }
        if !(self.empty_ns - CloneFlags::CLONE_NEWNET).is_empty() {
            return Err(Error::InvalidOption {
                option: "empty_ns",
                reason: "CRIU can only leave the network namespace empty",
            });
        }
        if self.pid.as_raw() <= 0 {
            return Err(Error::InvalidOption {
                option: "pid",
                reason: "must be the positive pid of the tree's root (criu would dump the caller itself)",
            });
        }
        let mut m = proto::Criu_opts::new();
        self.dirs.apply(&mut m)?;
        self.tree.apply(&mut m)?;
        let flag = |b: bool| b.then_some(true);
        m.pid = Some(self.pid.as_raw());
        m.leave_running = flag(self.leave_running);
        m.leave_stopped = flag(self.leave_stopped);
        m.track_mem = flag(self.track_mem);
        m.auto_dedup = flag(self.auto_dedup);
        m.lazy_pages = flag(self.lazy_pages);
        m.link_remap = flag(self.link_remap);
        m.evasive_devices = flag(self.evasive_devices);
        m.tcp_skip_in_flight = flag(self.tcp_skip_in_flight);
        m.force_irmap = flag(self.force_irmap);
        if let Some(p) = &self.parent_img {
            m.parent_img = Some(path_str("parent_img", p)?);
        }
        if let Some(ps) = &self.page_server {
            m.ps = page_server_info(ps, FIRST_PASSED_FD);
        }
        m.status_fd = self.status_fd.as_ref().map(|f| f.as_raw_fd());
        if let Some(f) = &self.freeze_cgroup {
            m.freeze_cgroup = Some(path_str("freeze_cgroup", f)?);
        }
        if !self.empty_ns.is_empty() {
            m.empty_ns = Some(self.empty_ns.bits() as u32);
        }
        m.cgroup_dump_controller = self.cgroup_dump_controllers.clone();
        m.ghost_limit = self.ghost_limit;
        m.skip_mnt = paths("skip_mounts", &self.skip_mounts)?;
        m.enable_fs = self.enable_fs.clone();
        m.irmap_scan_paths = paths("irmap_scan_paths", &self.irmap_scan_paths)?;
        m.pre_dump_mode = self.pre_dump_mode.map(|p| {
            EnumOrUnknown::new(match p {
                PreDumpMode::Splice => proto::Criu_pre_dump_mode::SPLICE,
                PreDumpMode::VmRead => proto::Criu_pre_dump_mode::VM_READ,
            })
        });
        Ok(m)
    }
}

fn paths(option: &'static str, ps: &[PathBuf]) -> Result<Vec<String>> {
    ps.iter().map(|p| path_str(option, p)).collect()
}

impl ChildFds for DumpOptions {
    fn child_fds(&self) -> Vec<BorrowedFd<'_>> {
        match &self.page_server {
            Some(PageServerAddr::Socket(fd)) => vec![fd.as_fd()],
            _ => Vec::new(),
        }
    }
}

/// Options of a RESTORE request.
#[derive(Debug)]
pub struct RestoreOptions {
    pub dirs: ImageDirs,
    pub tree: TreeOptions,
    /// Restore the tree as a sibling of criu, i.e. as the caller's child, so
    /// the caller can wait for it (runc always sets it). Default: true.
    pub rst_sibling: bool,
    pub inherit_fds: Vec<InheritFd>,
    /// For a criu started with fds ahead of the request; not with
    /// `inherit_fds`, whose fds take the same numbers.
    pub inherit_passed: Vec<InheritPassed>,
    pub join_ns: Vec<JoinNamespace>,
    pub veths: Vec<VethPair>,
    /// Post-copy: register memory with userfaultfd and fetch it lazily
    /// through a lazy-pages daemon.
    pub lazy_pages: bool,
    /// Leave the restored tasks stopped (SIGSTOP once restored, CRIU's
    /// `--leave-stopped` on restore, cr-restore.c finalize_restore): they
    /// run no instruction until someone sends SIGCONT.
    pub leave_stopped: bool,
    /// Punch each chunk of page data out of the images as it is restored
    /// (CRIU's restorer reads 128 MiB at a time, then FALLOC_FL_PUNCH_HOLE):
    /// images on a tmpfs give their memory back while the restored tasks
    /// take theirs, instead of both being held at once. The images lose
    /// their pages: for images nobody restores twice.
    pub auto_dedup: bool,
    pub status_fd: Option<OwnedFd>,
    pub lsm_mount_context: Option<String>,
    pub weak_sysctls: bool,
    pub evasive_devices: bool,
    pub mntns_compat_mode: bool,
}

impl RestoreOptions {
    pub fn new(dirs: ImageDirs) -> Self {
        RestoreOptions {
            dirs,
            tree: TreeOptions::default(),
            rst_sibling: true,
            inherit_fds: Vec::new(),
            inherit_passed: Vec::new(),
            join_ns: Vec::new(),
            veths: Vec::new(),
            lazy_pages: false,
            leave_stopped: false,
            auto_dedup: false,
            status_fd: None,
            lsm_mount_context: None,
            weak_sysctls: false,
            evasive_devices: false,
            mntns_compat_mode: false,
        }
    }

    pub(crate) fn to_rpc(&self) -> Result<proto::Criu_opts> {
        let mut m = proto::Criu_opts::new();
        self.dirs.apply(&mut m)?;
        self.tree.apply(&mut m)?;
        let flag = |b: bool| b.then_some(true);
        m.rst_sibling = flag(self.rst_sibling);
        if !self.inherit_fds.is_empty() && !self.inherit_passed.is_empty() {
            return Err(Error::InvalidOption {
                option: "inherit_passed",
                reason: "fds passed at spawn and fds of the request would take the same numbers",
            });
        }
        let by_index = self
            .inherit_fds
            .iter()
            .enumerate()
            .map(|(i, inh)| (&inh.key, i))
            .chain(self.inherit_passed.iter().map(|p| (&p.key, p.index)));
        for (key, i) in by_index {
            let mut f = proto::Inherit_fd::new();
            f.key = Some(key.clone());
            f.fd = Some(FIRST_PASSED_FD + i as i32);
            m.inherit_fd.push(f);
        }
        for j in &self.join_ns {
            let mut n = proto::Join_namespace::new();
            n.ns = Some(j.ns.clone());
            n.ns_file = Some(path_str("join_ns", &j.file)?);
            n.extra_opt = j.extra.clone();
            m.join_ns.push(n);
        }
        for v in &self.veths {
            let mut p = proto::Criu_veth_pair::new();
            p.if_in = Some(v.inside.clone());
            p.if_out = Some(v.outside.clone());
            m.veths.push(p);
        }
        m.lazy_pages = flag(self.lazy_pages);
        m.leave_stopped = flag(self.leave_stopped);
        m.auto_dedup = flag(self.auto_dedup);
        m.status_fd = self.status_fd.as_ref().map(|f| f.as_raw_fd());
        m.lsm_mount_context = self.lsm_mount_context.clone();
        m.weak_sysctls = flag(self.weak_sysctls);
        m.evasive_devices = flag(self.evasive_devices);
        m.mntns_compat_mode = flag(self.mntns_compat_mode);
        Ok(m)
    }
}

impl ChildFds for RestoreOptions {
    fn child_fds(&self) -> Vec<BorrowedFd<'_>> {
        self.inherit_fds.iter().map(|i| i.fd.as_fd()).collect()
    }

    fn passed_indexes(&self) -> Vec<usize> {
        self.inherit_passed.iter().map(|p| p.index).collect()
    }
}

/// Options of a PAGE_SERVER / PAGE_SERVER_CHLD request: a server that
/// receives a dump's pages into `dirs.images` (the destination side of a
/// pre-copy migration) or, with `lazy_pages`, serves them.
#[derive(Debug)]
pub struct PageServerOptions {
    pub dirs: ImageDirs,
    pub listen: PageServerAddr,
    pub lazy_pages: bool,
    pub parent_img: Option<PathBuf>,
    pub auto_dedup: bool,
    pub display_stats: bool,
}

impl PageServerOptions {
    pub fn new(dirs: ImageDirs, listen: PageServerAddr) -> Self {
        PageServerOptions {
            dirs,
            listen,
            lazy_pages: false,
            parent_img: None,
            auto_dedup: false,
            display_stats: false,
        }
    }

    pub(crate) fn to_rpc(&self) -> Result<proto::Criu_opts> {
        let mut m = proto::Criu_opts::new();
        self.dirs.apply(&mut m)?;
        m.ps = page_server_info(&self.listen, FIRST_PASSED_FD);
        let flag = |b: bool| b.then_some(true);
        m.lazy_pages = flag(self.lazy_pages);
        m.auto_dedup = flag(self.auto_dedup);
        m.display_stats = flag(self.display_stats);
        if let Some(p) = &self.parent_img {
            m.parent_img = Some(path_str("parent_img", p)?);
        }
        Ok(m)
    }
}

impl ChildFds for PageServerOptions {
    fn child_fds(&self) -> Vec<BorrowedFd<'_>> {
        match &self.listen {
            PageServerAddr::Socket(fd) => vec![fd.as_fd()],
            PageServerAddr::Tcp(_) => Vec::new(),
        }
    }
}

/// Options of a CHECK request: only where CRIU logs.
#[derive(Debug, Default)]
pub struct CheckOptions {
    pub work_dir: Option<OwnedFd>,
    pub log_file: Option<PathBuf>,
    pub log_level: Option<LogLevel>,
}

impl CheckOptions {
    pub(crate) fn to_rpc(&self) -> Result<proto::Criu_opts> {
        let mut m = proto::Criu_opts::new();
        m.images_dir_fd = Some(-1);
        m.work_dir_fd = self.work_dir.as_ref().map(|w| w.as_raw_fd());
        if let Some(name) = &self.log_file {
            m.log_file = Some(path_str("log_file", name)?);
        }
        m.log_level = self.log_level.map(|l| l as i32);
        Ok(m)
    }
}

impl ChildFds for CheckOptions {
    fn child_fds(&self) -> Vec<BorrowedFd<'_>> {
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    //! One test per option: the typed field lands in the right `criu_opts`
    //! field, and nothing is set that the caller did not ask for.

    use super::*;

    fn dirs() -> ImageDirs {
        ImageDirs::open(Path::new("/")).unwrap()
    }

    fn dump() -> DumpOptions {
        DumpOptions::new(dirs(), Pid::from_raw(1234))
    }

    fn restore() -> RestoreOptions {
        RestoreOptions::new(dirs())
    }

    fn pipe_fd() -> OwnedFd {
        nix::unistd::pipe().unwrap().0
    }

    /// A dump-side bool option: off by default, on when set.
    macro_rules! dump_flag {
        ($test:ident, $($field:ident).+ => $rpc:ident) => {
            #[test]
            fn $test() {
                assert_eq!(dump().to_rpc().unwrap().$rpc, None);
                let mut o = dump();
                o.$($field).+ = true;
                assert_eq!(o.to_rpc().unwrap().$rpc, Some(true));
            }
        };
    }

    macro_rules! restore_flag {
        ($test:ident, $($field:ident).+ => $rpc:ident) => {
            #[test]
            fn $test() {
                assert_eq!(restore().to_rpc().unwrap().$rpc, None);
                let mut o = restore();
                o.$($field).+ = true;
                assert_eq!(o.to_rpc().unwrap().$rpc, Some(true));
            }
        };
    }

    dump_flag!(leave_running, leave_running => leave_running);
    dump_flag!(leave_stopped, leave_stopped => leave_stopped);
    dump_flag!(track_mem, track_mem => track_mem);
    dump_flag!(auto_dedup, auto_dedup => auto_dedup);
    dump_flag!(dump_lazy_pages, lazy_pages => lazy_pages);
    dump_flag!(link_remap, link_remap => link_remap);
    dump_flag!(evasive_devices, evasive_devices => evasive_devices);
    dump_flag!(tcp_skip_in_flight, tcp_skip_in_flight => tcp_skip_in_flight);
    dump_flag!(force_irmap, force_irmap => force_irmap);
    dump_flag!(tcp_established, tree.tcp_established => tcp_established);
    dump_flag!(tcp_close, tree.tcp_close => tcp_close);
    dump_flag!(ext_unix_sk, tree.ext_unix_sk => ext_unix_sk);
    dump_flag!(shell_job, tree.shell_job => shell_job);
    dump_flag!(file_locks, tree.file_locks => file_locks);
    dump_flag!(notify_scripts, tree.notify_scripts => notify_scripts);
    dump_flag!(auto_ext_mnt, tree.auto_ext_mnt => auto_ext_mnt);
    dump_flag!(ext_sharing, tree.ext_sharing => ext_sharing);
    dump_flag!(ext_masters, tree.ext_masters => ext_masters);
    dump_flag!(display_stats, tree.display_stats => display_stats);
    restore_flag!(restore_tcp_established, tree.tcp_established => tcp_established);
    restore_flag!(restore_shell_job, tree.shell_job => shell_job);
    restore_flag!(restore_lazy_pages, lazy_pages => lazy_pages);
    restore_flag!(orphan_pts_master, tree.orphan_pts_master => orphan_pts_master);
    dump_flag!(dump_orphan_pts_master, tree.orphan_pts_master => orphan_pts_master);
    restore_flag!(weak_sysctls, weak_sysctls => weak_sysctls);
    restore_flag!(mntns_compat_mode, mntns_compat_mode => mntns_compat_mode);

    #[test]
    fn images_and_work_dir_fds() {
        let o = dump();
        let m = o.to_rpc().unwrap();
        assert_eq!(m.images_dir_fd, Some(o.dirs.images.as_raw_fd()));
        assert_eq!(m.work_dir_fd, None);
        let o = DumpOptions::new(
            dirs().work_dir(Path::new("/tmp")).unwrap(),
            Pid::from_raw(1),
        );
        let m = o.to_rpc().unwrap();
        assert_eq!(
            m.work_dir_fd,
            Some(o.dirs.work.as_ref().unwrap().as_raw_fd())
        );
    }

    #[test]
    fn log_file_and_level() {
        let m = dump().to_rpc().unwrap();
        assert_eq!(m.log_file, None);
        assert_eq!(m.log_level, Some(LogLevel::Info as i32));
        let o = DumpOptions::new(
            dirs().log_file("dump.log").log_level(LogLevel::Debug),
            Pid::from_raw(1),
        );
        let m = o.to_rpc().unwrap();
        assert_eq!(m.log_file.as_deref(), Some("dump.log"));
        assert_eq!(m.log_level, Some(4));
    }

    #[test]
    fn log_file_with_a_directory_is_refused() {
        let o = DumpOptions::new(dirs().log_file("logs/dump.log"), Pid::from_raw(1));
        assert!(matches!(
            o.to_rpc(),
            Err(Error::InvalidOption {
                option: "log_file",
                ..
            })
        ));
    }

    #[test]
    fn pid() {
        assert_eq!(dump().to_rpc().unwrap().pid, Some(1234));
        let o = DumpOptions::new(dirs(), Pid::from_raw(0));
        assert!(matches!(
            o.to_rpc(),
            Err(Error::InvalidOption { option: "pid", .. })
        ));
    }

    #[test]
    fn leave_running_and_stopped_exclude_each_other() {
        let mut o = dump();
        o.leave_running = true;
        o.leave_stopped = true;
        assert!(o.to_rpc().is_err());
    }

    #[test]
    fn restore_auto_dedup() {
        assert_eq!(restore().to_rpc().unwrap().auto_dedup, None);
        let mut o = restore();
        o.auto_dedup = true;
        assert_eq!(o.to_rpc().unwrap().auto_dedup, Some(true));
    }

    #[test]
    fn cgroup_yard() {
        assert_eq!(dump().to_rpc().unwrap().cgroup_yard, None);
        let mut o = restore();
        o.tree.cgroup_yard = Some(PathBuf::from("/run/ferry/c1/yard"));
        assert_eq!(
            o.to_rpc().unwrap().cgroup_yard.as_deref(),
            Some("/run/ferry/c1/yard")
        );
    }

    #[test]
    fn manage_cgroups_mode() {
        let m = dump().to_rpc().unwrap();
        assert_eq!((m.manage_cgroups, m.manage_cgroups_mode), (None, None));
        for (mode, rpc) in [
            (CgroupMode::Ignore, proto::Criu_cg_mode::IGNORE),
            (CgroupMode::None, proto::Criu_cg_mode::CG_NONE),
            (CgroupMode::Props, proto::Criu_cg_mode::PROPS),
            (CgroupMode::Soft, proto::Criu_cg_mode::SOFT),
            (CgroupMode::Full, proto::Criu_cg_mode::FULL),
            (CgroupMode::Strict, proto::Criu_cg_mode::STRICT),
            (CgroupMode::Default, proto::Criu_cg_mode::DEFAULT),
        ] {
            let mut o = restore();
            o.tree.manage_cgroups = Some(mode);
            let m = o.to_rpc().unwrap();
            assert_eq!(m.manage_cgroups, Some(true));
            assert_eq!(m.manage_cgroups_mode.unwrap().enum_value(), Ok(rpc));
        }
    }

    #[test]
    fn cg_root() {
        let mut o = restore();
        o.tree.cg_root = vec![
            CgroupRoot {
                controller: None,
                path: "/ferry/a".into(),
            },
            CgroupRoot {
                controller: Some("memory".into()),
                path: "/m".into(),
            },
        ];
        let m = o.to_rpc().unwrap();
        assert_eq!(m.cg_root.len(), 2);
        assert_eq!(
            (m.cg_root[0].ctrl.as_deref(), m.cg_root[0].path()),
            (None, "/ferry/a")
        );
        assert_eq!(
            (m.cg_root[1].ctrl.as_deref(), m.cg_root[1].path()),
            (Some("memory"), "/m")
        );
    }

    #[test]
    fn ext_mnt() {
        let mut o = dump();
        o.tree.ext_mounts.push(ExtMount {
            key: "/etc/hosts".into(),
            value: "/etc/hosts".into(),
        });
        let m = o.to_rpc().unwrap();
        assert_eq!(m.ext_mnt.len(), 1);
        assert_eq!(
            (m.ext_mnt[0].key(), m.ext_mnt[0].val()),
            ("/etc/hosts", "/etc/hosts")
        );
    }

    #[test]
    fn external() {
        let mut o = restore();
        o.tree.external = vec!["net[4026531840]:extRootNetNS".into()];
        assert_eq!(
            o.to_rpc().unwrap().external,
            ["net[4026531840]:extRootNetNS"]
        );
    }

    #[test]
    fn root() {
        assert_eq!(restore().to_rpc().unwrap().root, None);
        let mut o = restore();
        o.tree.root = Some("/run/ferry/c/rootfs".into());
        assert_eq!(
            o.to_rpc().unwrap().root.as_deref(),
            Some("/run/ferry/c/rootfs")
        );
    }

    #[test]
    fn config_file_on_dump_and_restore() {
        assert_eq!(dump().to_rpc().unwrap().config_file, None);
        let mut d = dump();
        d.tree.config_file = Some("/etc/criu/runc.conf".into());
        assert_eq!(
            d.to_rpc().unwrap().config_file.as_deref(),
            Some("/etc/criu/runc.conf")
        );
        let mut r = restore();
        r.tree.config_file = Some("/tmp/c.conf".into());
        assert_eq!(
            r.to_rpc().unwrap().config_file.as_deref(),
            Some("/tmp/c.conf")
        );
    }

    #[test]
    fn the_log_file_a_config_file_sets() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("c.conf");
        let mut t = TreeOptions::default();
        assert_eq!(t.config_log_file(), None);
        t.config_file = Some(conf.clone());
        assert_eq!(t.config_log_file(), None, "a missing file sets nothing");
        std::fs::write(
            &conf,
            "tcp-established\nlog-file=a.log\n--log-file /var/log/b.log\n",
        )
        .unwrap();
        assert_eq!(t.config_log_file(), Some(PathBuf::from("/var/log/b.log")));
        std::fs::write(&conf, "log-file-x=1\nlog-level 4\n").unwrap();
        assert_eq!(t.config_log_file(), None);
    }

    #[test]
    fn lazy_dump_on_a_socket_keeps_the_callers_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("c.conf");
        std::fs::write(&conf, "log-file=mine.log").unwrap();
        let mut o = dump();
        o.page_server = Some(PageServerAddr::Socket(pipe_fd()));
        o.lazy_pages = true;
        o.tree.config_file = Some(conf);
        assert_eq!(
            o.rpc_config().as_deref(),
            Some("log-file=mine.log\nps-socket 4\n")
        );
        // One that does not exist is ignored, as CRIU ignores it.
        o.tree.config_file = Some(dir.path().join("absent.conf"));
        assert_eq!(o.rpc_config().as_deref(), Some("ps-socket 4\n"));
    }

    #[test]
    fn lazy_dump_on_a_socket_gets_ps_socket_from_a_config_file() {
        let mut o = dump();
        o.page_server = Some(PageServerAddr::Socket(pipe_fd()));
        assert_eq!(o.rpc_config(), None);
        o.lazy_pages = true;
        assert_eq!(o.rpc_config().as_deref(), Some("ps-socket 4\n"));
        o.page_server = Some(PageServerAddr::Tcp("10.0.0.2:27000".parse().unwrap()));
        assert_eq!(o.rpc_config(), None);
    }

    #[test]
    fn parent_img() {
        let mut o = dump();
        o.parent_img = Some("../pre1".into());
        assert_eq!(o.to_rpc().unwrap().parent_img.as_deref(), Some("../pre1"));
    }

    #[test]
    fn page_server_address_and_port() {
        let mut o = dump();
        o.page_server = Some(PageServerAddr::Tcp("10.0.0.2:27000".parse().unwrap()));
        let m = o.to_rpc().unwrap();
        assert_eq!(m.ps.address(), "10.0.0.2");
        assert_eq!(m.ps.port(), 27000);
        assert_eq!(m.ps.fd, None);
        assert!(o.child_fds().is_empty());
    }

    #[test]
    fn page_server_socket_is_passed_to_criu() {
        let mut o = dump();
        o.page_server = Some(PageServerAddr::Socket(pipe_fd()));
        let m = o.to_rpc().unwrap();
        assert_eq!(m.ps.fd, Some(FIRST_PASSED_FD));
        assert_eq!(m.ps.address, None);
        assert_eq!(o.child_fds().len(), 1);
    }

    #[test]
    fn status_fd() {
        let mut o = dump();
        let fd = pipe_fd();
        let raw = fd.as_raw_fd();
        o.status_fd = Some(fd);
        assert_eq!(o.to_rpc().unwrap().status_fd, Some(raw));
    }

    #[test]
    fn network_lock() {
        assert_eq!(dump().to_rpc().unwrap().network_lock, None);
        let mut o = dump();
        o.tree.network_lock = Some(NetworkLock::Nftables);
        assert_eq!(
            o.to_rpc().unwrap().network_lock.unwrap().enum_value(),
            Ok(proto::Criu_network_lock_method::NFTABLES)
        );
    }

    #[test]
    fn freeze_cgroup() {
        let mut o = dump();
        o.freeze_cgroup = Some("/sys/fs/cgroup/freezer/ferry/c".into());
        assert_eq!(
            o.to_rpc().unwrap().freeze_cgroup.as_deref(),
            Some("/sys/fs/cgroup/freezer/ferry/c")
        );
    }

    #[test]
    fn empty_ns_only_network() {
        assert_eq!(dump().to_rpc().unwrap().empty_ns, None);
        let mut o = dump();
        o.empty_ns = CloneFlags::CLONE_NEWNET;
        assert_eq!(
            o.to_rpc().unwrap().empty_ns,
            Some(libc::CLONE_NEWNET as u32)
        );
        o.empty_ns |= CloneFlags::CLONE_NEWPID;
        assert!(matches!(
            o.to_rpc(),
            Err(Error::InvalidOption {
                option: "empty_ns",
                ..
            })
        ));
    }

    #[test]
    fn cgroup_dump_controllers_skip_mounts_enable_fs() {
        let mut o = dump();
        o.cgroup_dump_controllers = vec!["memory".into()];
        o.skip_mounts = vec!["/proc/sys".into()];
        o.enable_fs = vec!["fuse".into()];
        o.irmap_scan_paths = vec!["/".into()];
        o.ghost_limit = Some(1 << 20);
        let m = o.to_rpc().unwrap();
        assert_eq!(m.cgroup_dump_controller, ["memory"]);
        assert_eq!(m.skip_mnt, ["/proc/sys"]);
        assert_eq!(m.enable_fs, ["fuse"]);
        assert_eq!(m.irmap_scan_paths, ["/"]);
        assert_eq!(m.ghost_limit, Some(1 << 20));
    }

    #[test]
    fn pre_dump_mode() {
        let mut o = dump();
        o.pre_dump_mode = Some(PreDumpMode::VmRead);
        assert_eq!(
            o.to_rpc().unwrap().pre_dump_mode.unwrap().enum_value(),
            Ok(proto::Criu_pre_dump_mode::VM_READ)
        );
    }

    #[test]
    fn lsm_profile_and_timeout() {
        let mut o = dump();
        o.tree.lsm_profile = Some("apparmor:ferry".into());
        o.tree.timeout_secs = Some(30);
        let m = o.to_rpc().unwrap();
        assert_eq!(m.lsm_profile.as_deref(), Some("apparmor:ferry"));
        assert_eq!(m.timeout, Some(30));
    }

    #[test]
    fn rst_sibling_defaults_on() {
        assert_eq!(restore().to_rpc().unwrap().rst_sibling, Some(true));
        let mut o = restore();
        o.rst_sibling = false;
        assert_eq!(o.to_rpc().unwrap().rst_sibling, None);
    }

    #[test]
    fn inherit_fd_numbers_follow_the_swrk_socket() {
        let mut o = restore();
        for key in ["fd[0]", "fd[1]"] {
            o.inherit_fds.push(InheritFd {
                key: key.into(),
                fd: pipe_fd(),
            });
        }
        let m = o.to_rpc().unwrap();
        let got: Vec<(&str, i32)> = m.inherit_fd.iter().map(|i| (i.key(), i.fd())).collect();
        assert_eq!(got, [("fd[0]", 4), ("fd[1]", 5)]);
        assert_eq!(o.child_fds().len(), 2);
    }

    #[test]
    fn fds_passed_at_spawn_are_named_by_position_alone() {
        let mut o = restore();
        o.inherit_passed = vec![
            InheritPassed {
                key: "pipe:[7]".into(),
                index: 2,
            },
            InheritPassed {
                key: "extRootNetNS".into(),
                index: 0,
            },
        ];
        let m = o.to_rpc().unwrap();
        let got: Vec<(&str, i32)> = m.inherit_fd.iter().map(|i| (i.key(), i.fd())).collect();
        assert_eq!(got, [("pipe:[7]", 6), ("extRootNetNS", 4)]);
        assert!(o.child_fds().is_empty(), "nothing more to pass");
        o.inherit_fds.push(InheritFd {
            key: "fd[0]".into(),
            fd: pipe_fd(),
        });
        assert!(
            matches!(
                o.to_rpc(),
                Err(Error::InvalidOption {
                    option: "inherit_passed",
                    ..
                })
            ),
            "both kinds would collide"
        );
    }

    #[test]
    fn join_ns() {
        let mut o = restore();
        o.join_ns.push(JoinNamespace {
            ns: "net".into(),
            file: "/var/run/netns/b".into(),
            extra: None,
        });
        let m = o.to_rpc().unwrap();
        assert_eq!(
            (m.join_ns[0].ns(), m.join_ns[0].ns_file()),
            ("net", "/var/run/netns/b")
        );
        assert_eq!(m.join_ns[0].extra_opt, None);
    }

    #[test]
    fn veths() {
        let mut o = restore();
        o.veths.push(VethPair {
            inside: "eth0".into(),
            outside: "veth1234".into(),
        });
        let m = o.to_rpc().unwrap();
        assert_eq!(
            (m.veths[0].if_in(), m.veths[0].if_out()),
            ("eth0", "veth1234")
        );
    }

    #[test]
    fn lsm_mount_context() {
        let mut o = restore();
        o.lsm_mount_context = Some("system_u:object_r:container_file_t:s0".into());
        assert!(o.to_rpc().unwrap().lsm_mount_context.is_some());
    }

    #[test]
    fn page_server_listen() {
        let mut o =
            PageServerOptions::new(dirs(), PageServerAddr::Tcp("0.0.0.0:0".parse().unwrap()));
        o.lazy_pages = true;
        let m = o.to_rpc().unwrap();
        assert_eq!((m.ps.address(), m.ps.port()), ("0.0.0.0", 0));
        assert_eq!(m.lazy_pages, Some(true));
    }

    #[test]
    fn non_utf8_paths_are_refused() {
        use std::os::unix::ffi::OsStrExt;
        let mut o = restore();
        o.tree.root = Some(PathBuf::from(std::ffi::OsStr::from_bytes(b"/\xff")));
        assert!(matches!(
            o.to_rpc(),
            Err(Error::InvalidOption { option: "root", .. })
        ));
    }

    #[test]
    fn check_options() {
        let m = CheckOptions::default().to_rpc().unwrap();
        assert_eq!(m.images_dir_fd, Some(-1));
        assert_eq!(m.log_file, None);
    }
}
