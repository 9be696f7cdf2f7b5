//! Which image is which: CRIU's magic numbers (criu/include/magic.h), the
//! names crit gives them, and how each one's entries are laid out. The
//! `schema` tests check all three against CRIU's source (magic.h and crit's
//! handler table), both ways for the magics.

use protobuf::reflect::MessageDescriptor;
use protobuf::{Message, MessageFull};

use super::pb;

/// The first word of an image since CRIU 1.1 (images v1.1), before the
/// image's own magic; inventory.img has none.
pub const IMG_COMMON_MAGIC: u32 = 0x5456_4319;
/// The first word of service files (stats, irmap cache).
pub const IMG_SERVICE_MAGIC: u32 = 0x5510_5940;

/// The size of the payload that follows an entry, read from the entry;
/// `None` when the entry does not decode.
pub type ExtraLen = fn(&[u8]) -> Option<u64>;

/// How the entries of an image follow its header.
#[derive(Clone, Copy)]
pub enum Layout {
    /// `u32 length, protobuf` entries to the end of the file, each message
    /// of the given type, each followed by `extra(entry)` bytes of payload
    /// when `extra` is set (pipe data, socket queues, TCP queues).
    Entries {
        message: fn() -> MessageDescriptor,
        extra: Option<ExtraLen>,
    },
    /// pagemap: one `PagemapHead`, then `PagemapEntry`s.
    Pagemap,
    /// ghost-file: a `GhostFileEntry`, then either the file's bytes to the
    /// end, or (`chunks`) `GhostChunkEntry`s each followed by `len` bytes.
    GhostFile,
    /// A known image whose entries Ferry does not decode.
    Opaque,
}

/// One kind of image.
#[derive(Clone, Copy)]
pub struct Kind {
    /// crit's name for it (`PSTREE`, `CORE`, ...).
    pub name: &'static str,
    /// The image's magic; 0 (RAW_IMAGE_MAGIC) for raw images.
    pub magic: u32,
    pub layout: Layout,
}

impl std::fmt::Debug for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({:#010x})", self.name, self.magic)
    }
}

fn d<M: MessageFull>() -> MessageDescriptor {
    M::descriptor()
}

const fn entries(message: fn() -> MessageDescriptor) -> Layout {
    Layout::Entries {
        message,
        extra: None,
    }
}

fn pipe_data_len(b: &[u8]) -> Option<u64> {
    pb::Pipe_data_entry::parse_from_bytes(b)
        .ok()
        .map(|e| e.bytes() as u64)
}

fn sk_queue_len(b: &[u8]) -> Option<u64> {
    pb::Sk_packet_entry::parse_from_bytes(b)
        .ok()
        .map(|e| e.length() as u64)
}

fn tcp_queues_len(b: &[u8]) -> Option<u64> {
    pb::Tcp_stream_entry::parse_from_bytes(b)
        .ok()
        .map(|e| e.inq_len() as u64 + e.outq_len() as u64)
}

fn bpfmap_data_len(b: &[u8]) -> Option<u64> {
    pb::Bpfmap_data_entry::parse_from_bytes(b)
        .ok()
        .map(|e| e.keys_bytes() as u64 + e.values_bytes() as u64)
}

macro_rules! kinds {
    ($($name:literal $magic:literal => $layout:expr,)*) => {
        /// Every image kind of magic.h that carries a magic of its own.
        pub static KINDS: &[Kind] = &[$(Kind { name: $name, magic: $magic, layout: $layout },)*];
    };
}

kinds! {
    "INVENTORY" 0x5831_3116 => entries(d::<pb::Inventory_entry>),
    "PSTREE" 0x5027_3030 => entries(d::<pb::Pstree_entry>),
    "FDINFO" 0x5621_3732 => entries(d::<pb::Fdinfo_entry>),
    "PAGEMAP" 0x5608_4025 => Layout::Pagemap,
    "CORE" 0x5505_3847 => entries(d::<pb::Core_entry>),
    "IDS" 0x5443_2030 => entries(d::<pb::Task_kobj_ids_entry>),
    "VMAS" 0x5412_3737 => entries(d::<pb::Vma_entry>),
    "PIPES" 0x5651_3555 => entries(d::<pb::Pipe_entry>),
    "PIPES_DATA" 0x5645_3709 => Layout::Entries { message: d::<pb::Pipe_data_entry>, extra: Some(pipe_data_len) },
    "FIFO" 0x5836_4939 => entries(d::<pb::Fifo_entry>),
    "FIFO_DATA" 0x5933_3054 => Layout::Entries { message: d::<pb::Pipe_data_entry>, extra: Some(pipe_data_len) },
    "SIGACT" 0x5534_4201 => entries(d::<pb::Sa_entry>),
    "UNIXSK" 0x5437_3943 => entries(d::<pb::Unix_sk_entry>),
    "INETSK" 0x5644_3851 => entries(d::<pb::Inet_sk_entry>),
    "PACKETSK" 0x6045_4618 => entries(d::<pb::Packet_sock_entry>),
    "ITIMERS" 0x5746_4056 => entries(d::<pb::Itimer_entry>),
    "POSIX_TIMERS" 0x5260_3957 => entries(d::<pb::Posix_timer_entry>),
    "SK_QUEUES" 0x5626_4026 => Layout::Entries { message: d::<pb::Sk_packet_entry>, extra: Some(sk_queue_len) },
    "UTSNS" 0x5447_3203 => entries(d::<pb::Utsns_entry>),
    "CREDS" 0x5402_3547 => entries(d::<pb::Creds_entry>),
    "IPC_VAR" 0x5311_5007 => entries(d::<pb::Ipc_var_entry>),
    "IPCNS_SHM" 0x4628_3044 => Layout::Opaque,
    "IPCNS_MSG" 0x5545_3737 => Layout::Opaque,
    "IPCNS_SEM" 0x5957_3019 => Layout::Opaque,
    "REG_FILES" 0x5036_3636 => entries(d::<pb::Reg_file_entry>),
    "EXT_FILES" 0x5925_5641 => entries(d::<pb::Ext_file_entry>),
    "FS" 0x5140_3912 => entries(d::<pb::Fs_entry>),
    "MM" 0x5749_2820 => entries(d::<pb::Mm_entry>),
    "REMAP_FPATH" 0x5913_3954 => entries(d::<pb::Remap_file_path_entry>),
    "GHOST_FILE" 0x5258_3605 => Layout::GhostFile,
    "TCP_STREAM" 0x5146_5506 => Layout::Entries { message: d::<pb::Tcp_stream_entry>, extra: Some(tcp_queues_len) },
    "EVENTFD_FILE" 0x4452_3722 => entries(d::<pb::Eventfd_file_entry>),
    "EVENTPOLL_FILE" 0x4502_3858 => entries(d::<pb::Eventpoll_file_entry>),
    "EVENTPOLL_TFD" 0x4443_3746 => entries(d::<pb::Eventpoll_tfd_entry>),
    "SIGNALFD" 0x5732_3820 => entries(d::<pb::Signalfd_entry>),
    "INOTIFY_FILE" 0x4842_4431 => entries(d::<pb::Inotify_file_entry>),
    "INOTIFY_WD" 0x5456_2009 => entries(d::<pb::Inotify_wd_entry>),
    "MNTS" 0x5556_3928 => entries(d::<pb::Mnt_entry>),
    "NETDEV" 0x5737_3951 => entries(d::<pb::Net_device_entry>),
    "NETNS" 0x5593_3752 => entries(d::<pb::Netns_entry>),
    "TTY_FILES" 0x5943_3025 => entries(d::<pb::Tty_file_entry>),
    "TTY_INFO" 0x5945_3036 => entries(d::<pb::Tty_info_entry>),
    "TTY_DATA" 0x5941_3026 => entries(d::<pb::Tty_data_entry>),
    "FILE_LOCKS" 0x5432_3616 => entries(d::<pb::File_lock_entry>),
    "RLIMIT" 0x5711_3925 => entries(d::<pb::Rlimit_entry>),
    "FANOTIFY_FILE" 0x5509_6122 => entries(d::<pb::Fanotify_file_entry>),
    "FANOTIFY_MARK" 0x5650_6035 => entries(d::<pb::Fanotify_mark_entry>),
    "SIGNAL" 0x5925_5647 => entries(d::<pb::Siginfo_entry>),
    "NETLINK_SK" 0x5800_5614 => entries(d::<pb::Netlink_sk_entry>),
    "NS_FILES" 0x6139_4011 => entries(d::<pb::Ns_file_entry>),
    "TUNFILE" 0x5714_3751 => entries(d::<pb::Tunfile_entry>),
    "CGROUP" 0x5938_3330 => entries(d::<pb::Cgroup_entry>),
    "TIMERFD" 0x5049_3712 => entries(d::<pb::Timerfd_entry>),
    "CPUINFO" 0x6140_4013 => entries(d::<pb::Cpuinfo_entry>),
    "USERNS" 0x5547_4906 => entries(d::<pb::Userns_entry>),
    "SECCOMP" 0x6441_3049 => entries(d::<pb::Seccomp_entry>),
    "BINFMT_MISC" 0x6734_3323 => entries(d::<pb::Binfmt_misc_entry>),
    "AUTOFS" 0x4935_3943 => entries(d::<pb::Autofs_entry>),
    "FILES" 0x5630_3138 => entries(d::<pb::File_entry>),
    "MEMFD_INODE" 0x4845_3499 => entries(d::<pb::Memfd_inode_entry>),
    "TIMENS" 0x4311_4433 => entries(d::<pb::Timens_entry>),
    "PIDNS" 0x6115_7326 => entries(d::<pb::Pidns_entry>),
    "BPFMAP_FILE" 0x5750_6142 => entries(d::<pb::Bpfmap_file_entry>),
    "BPFMAP_DATA" 0x6432_4033 => Layout::Entries { message: d::<pb::Bpfmap_data_entry>, extra: Some(bpfmap_data_len) },
    "APPARMOR" 0x5942_3047 => entries(d::<pb::Apparmor_entry>),
    "PIDFD" 0x5443_5556 => entries(d::<pb::Pidfd_entry>),
    "STATS" 0x5709_3306 => entries(d::<pb::Stats_entry>),
    "IRMAP_CACHE" 0x5700_4059 => entries(d::<pb::Irmap_cache_entry>),
}

/// The kind whose magic is `magic`.
pub fn by_magic(magic: u32) -> Option<&'static Kind> {
    KINDS.iter().find(|k| k.magic == magic)
}

/// The kind named `name` (crit's spelling).
pub fn by_name(name: &str) -> Option<&'static Kind> {
    KINDS.iter().find(|k| k.name == name)
}

/// Raw images (RAW_IMAGE_MAGIC: no header at all), by the file name CRIU
/// gives them (criu/image-desc.c).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Raw {
    /// pages-N.img: the dumped pages, as pagemap-N.img lists them.
    Pages,
    /// ifaddr-N.img: `ip addr save` output (netlink messages).
    IfAddr,
    /// route-N.img, route6-N.img: `ip route save` output.
    Route,
    /// Anything else raw: rules, iptables/nftables dumps, tmpfs tarballs,
    /// conntrack dumps.
    Other,
}

/// Whether a file named `name` is one of CRIU's raw images.
pub fn raw_by_name(name: &str) -> Option<Raw> {
    let stem = |p: &str| name.starts_with(p);
    if stem("pages-") {
        Some(Raw::Pages)
    } else if stem("ifaddr-") {
        Some(Raw::IfAddr)
    } else if stem("route-") || stem("route6-") {
        Some(Raw::Route)
    } else if [
        "rule-",
        "iptables-",
        "ip6tables-",
        "nftables-",
        "tmpfs-",
        "netns-ct-",
        "netns-exp-",
        "autofs-",
    ]
    .iter()
    .any(|p| stem(p))
    {
        Some(Raw::Other)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magics_are_unique() {
        for (i, a) in KINDS.iter().enumerate() {
            for b in &KINDS[i + 1..] {
                assert_ne!(a.magic, b.magic, "{} and {}", a.name, b.name);
                assert_ne!(a.name, b.name);
            }
        }
    }
}
