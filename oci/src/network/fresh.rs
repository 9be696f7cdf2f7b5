//! A container's network namespace that holds nothing a new one would not:
//! dumped as external to CRIU and made anew on restore.
//!
//! A container started without a netns path gets a namespace of its own,
//! which CRIU dumps and restores in full: it runs `ip addr/route/rule save`,
//! `iptables-save`, `ip6tables-save` and their legacy twins, lists nftables
//! and reads the namespace's sysctls on dump, and runs the matching restore
//! commands and locks and unlocks the namespace on restore (criu/net.c,
//! dump_net_ns and prepare_net_namespaces): a dozen processes started while
//! the container is frozen, tens of milliseconds of a migration's
//! downtime. For a namespace whose links, addresses, routes, rules,
//! netfilter tables and the sysctls CRIU would keep are those of a new
//! namespace (only `lo`, as a counter or a batch job has it), nothing of
//! that is worth keeping: it is dumped as external, as runc dumps a
//! namespace given by path (`net[INODE]:extRootNetNS`), and the restore
//! is handed a new namespace with `lo` as it was ([`create`]). Sockets,
//! which belong to the tasks, are dumped and restored by CRIU either way
//! (loopback TCP connections included). The comparison is made with a new
//! namespace made on the same host at the same moment, so that nothing of
//! the kernel's defaults is written here.

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use futures_util::TryStreamExt;
use nix::sched::{unshare, CloneFlags};
use rtnetlink::{Handle, IpVersion, RouteMessageBuilder};
use serde::{Deserialize, Serialize};

use super::{configure, link_index, netlink_err, with_netlink, Netns};
use crate::error::{io, Error, Result};

/// What a namespace found to look new needs on restore.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fresh {
    /// Whether `lo` was up (a namespace starts with it down; runc and
    /// Ferry bring it up).
    pub loopback_up: bool,
}

/// What CRIU would dump of a namespace, in comparable form.
#[derive(Debug, PartialEq, Eq)]
struct Shape {
    links: Vec<String>,
    addresses: Vec<String>,
    routes: Vec<String>,
    rules: Vec<String>,
    nft_tables: usize,
    legacy_tables: Vec<String>,
    sysctls: BTreeMap<PathBuf, String>,
}

/// Whether the namespace at `netns` (a /proc/PID/ns/net) looks like a new
/// one: `Some` with what [`create`] needs, `None` if it holds anything
/// more (then CRIU dumps it whole, as before).
pub fn looks_new(netns: &Path) -> Result<Option<Fresh>> {
    let theirs = with_netlink(Some(&Netns::at(netns)?), |h, p| async move {
        shape(h, p.as_deref()).await
    })?;
    let Some(loopback_up) = loopback_up(&theirs) else {
        return Ok(None);
    };
    let fresh = Fresh { loopback_up };
    let new = in_new_netns(move || {
        if fresh.loopback_up {
            bring_loopback_up(None)?;
        }
        with_netlink(None, |h, _| async move { shape(h, None).await })
    })?;
    if theirs != new {
        tracing::debug!(netns = %netns.display(), ?theirs, ?new, "the namespace holds more than a new one");
        return Ok(None);
    }
    Ok(Some(fresh))
}

/// A new network namespace as `fresh` describes it, held by the returned
/// fd only (CRIU's restore moves the tasks into it; it goes with them).
pub fn create(fresh: Fresh) -> Result<OwnedFd> {
    in_new_netns(move || {
        if fresh.loopback_up {
            bring_loopback_up(None)?;
        }
        let p = Path::new("/proc/thread-self/ns/net");
        std::fs::File::open(p)
            .map(OwnedFd::from)
            .map_err(io("opening the new network namespace", p))
    })
}

/// Makes a namespace [`create`] made without knowing (lo down) what
/// `fresh` says: a move's destination makes it before the images that say
/// it arrive, for the criu it starts ahead ([`crate::restore::EarlyCriu`]).
pub fn complete(ns: BorrowedFd<'_>, fresh: Fresh) -> Result<()> {
    if !fresh.loopback_up {
        return Ok(());
    }
    let p = PathBuf::from(format!("/proc/self/fd/{}", ns.as_raw_fd()));
    bring_loopback_up(Some(&Netns::at(&p)?))
}

/// `lo`'s state, if `lo` is the namespace's only link.
fn loopback_up(s: &Shape) -> Option<bool> {
    match s.links.as_slice() {
        [lo] if lo.starts_with("lo ") => Some(lo.contains("Up")),
        _ => None,
    }
}

/// Runs `f` on a thread of its own in a new network namespace (threads it
/// starts are in it too).
fn in_new_netns<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    std::thread::spawn(move || {
        unshare(CloneFlags::CLONE_NEWNET).map_err(|e| Error::Io {
            op: "creating a network namespace (unshare)",
            path: PathBuf::new(),
            source: e.into(),
        })?;
        f()
    })
    .join()
    .unwrap_or(Err(Error::InvalidNetwork {
        reason: "a thread making a network namespace panicked",
    }))
}

/// Brings `lo` up in `netns`, or in the calling thread's namespace.
fn bring_loopback_up(netns: Option<&Netns>) -> Result<()> {
    with_netlink(netns, |h, _| async move {
        let lo = link_index(&h, "lo", None).await?;
        configure(&h, lo, None, None).await
    })
}

/// A message's attributes as text, less those that count or time rather
/// than configure.
fn configured<A: std::fmt::Debug>(attributes: &[A]) -> Vec<String> {
    attributes
        .iter()
        .map(|x| format!("{x:?}"))
        .filter(|x| {
            !["CacheInfo", "Expires", "Stats", "Stats64", "Carrier"]
                .iter()
                .any(|v| x.starts_with(v))
        })
        .collect()
}

async fn shape(h: Handle, p: Option<&Path>) -> Result<Shape> {
    use rtnetlink::packet_route::link::LinkAttribute;
    let mut links = Vec::new();
    let mut names = BTreeMap::new();
    let mut l = h.link().get().execute();
    while let Some(m) = l
        .try_next()
        .await
        .map_err(netlink_err("listing links", p))?
    {
        let mut name = String::new();
        let mut mtu = 0;
        for a in &m.attributes {
            match a {
                LinkAttribute::IfName(n) => name = n.clone(),
                LinkAttribute::Mtu(v) => mtu = *v,
                _ => {}
            }
        }
        names.insert(m.header.index, name.clone());
        links.push(format!(
            "{name} {:?} mtu {mtu} {:?}",
            m.header.flags, m.header.link_layer_type
        ));
    }
    let mut addresses = Vec::new();
    let mut a = h.address().get().execute();
    while let Some(m) = a
        .try_next()
        .await
        .map_err(netlink_err("listing addresses", p))?
    {
        let attrs = configured(&m.attributes);
        addresses.push(format!(
            "{} {:?} /{} {:?} {:?} {attrs:?}",
            names.get(&m.header.index).cloned().unwrap_or_default(),
            m.header.family,
            m.header.prefix_len,
            m.header.scope,
            m.header.flags
        ));
    }
    let mut routes = Vec::new();
    for msg in [
        RouteMessageBuilder::<std::net::Ipv4Addr>::new().build(),
        RouteMessageBuilder::<std::net::Ipv6Addr>::new().build(),
    ] {
        let mut r = h.route().get(msg).execute();
        while let Some(m) = r
            .try_next()
            .await
            .map_err(netlink_err("listing routes", p))?
        {
            let attrs = configured(&m.attributes);
            routes.push(format!("{:?} {attrs:?}", m.header));
        }
    }
    let mut rules = Vec::new();
    for v in [IpVersion::V4, IpVersion::V6] {
        let mut r = h.rule().get(v).execute();
        while let Some(m) = r
            .try_next()
            .await
            .map_err(netlink_err("listing rules", p))?
        {
            rules.push(format!("{m:?}"));
        }
    }
    for v in [&mut links, &mut addresses, &mut routes, &mut rules] {
        v.sort();
    }
    Ok(Shape {
        links,
        addresses,
        routes,
        rules,
        nft_tables: nft_tables()?,
        legacy_tables: legacy_tables(),
        sysctls: sysctls(),
    })
}

/// The legacy (x_tables) tables instantiated in the calling thread's
/// namespace: what iptables-legacy-save would list.
fn legacy_tables() -> Vec<String> {
    let mut out = Vec::new();
    for f in ["ip_tables_names", "ip6_tables_names", "arp_tables_names"] {
        let p = Path::new("/proc/thread-self/net").join(f);
        if let Ok(text) = std::fs::read_to_string(&p) {
            out.extend(text.lines().map(|l| format!("{f}: {l}")));
        }
    }
    out.sort();
    out
}

/// The sysctls CRIU keeps of a namespace (criu/net.c: the devconfs of
/// ipv4 and ipv6 for `all`, `default` and each link, the unix ones, the
/// ping group range and the local port range), as the calling thread's
/// namespace has them (/proc/sys/net resolves per thread). Unreadable ones
/// (stable_secret says EIO until set) are left out on both sides alike.
fn sysctls() -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let net = Path::new("/proc/sys/net");
    let mut dirs = vec![
        net.join("ipv4/conf"),
        net.join("ipv6/conf"),
        net.join("unix"),
    ];
    for f in ["ipv4/ping_group_range", "ipv4/ip_local_port_range"] {
        if let Ok(v) = std::fs::read_to_string(net.join(f)) {
            out.insert(PathBuf::from(f), v);
        }
    }
    while let Some(d) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() => dirs.push(p),
                Ok(_) => {
                    if let Ok(v) = std::fs::read_to_string(&p) {
                        let rel = p.strip_prefix(net).unwrap_or(&p).to_path_buf();
                        out.insert(rel, v);
                    }
                }
                Err(_) => {}
            }
        }
    }
    out
}

/// How many nftables tables the calling thread's namespace holds: a
/// NFT_MSG_GETTABLE dump over nfnetlink (what `nft list tables` asks;
/// libnftables is not linked for one question).
fn nft_tables() -> Result<usize> {
    const NETLINK_NETFILTER: i32 = 12;
    const NFNL_SUBSYS_NFTABLES: u16 = 10;
    const NFT_MSG_GETTABLE: u16 = 1;
    const NLMSG_ERROR: u16 = 2;
    const NLMSG_DONE: u16 = 3;
    let fail = |op: &'static str| {
        move |source: std::io::Error| Error::Io {
            op,
            path: PathBuf::from("nfnetlink"),
            source,
        }
    };
    // SAFETY: socket(2) with constant arguments; the fd is owned at once.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            NETLINK_NETFILTER,
        )
    };
    if fd < 0 {
        return Err(fail("opening a netfilter netlink socket")(
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: fd is a new socket nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut req = Vec::with_capacity(20);
    req.extend_from_slice(&20u32.to_ne_bytes());
    req.extend_from_slice(&((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETTABLE).to_ne_bytes());
    req.extend_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16).to_ne_bytes());
    req.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    req.extend_from_slice(&0u32.to_ne_bytes()); // port: the kernel's
    req.extend_from_slice(&[libc::AF_UNSPEC as u8, 0, 0, 0]); // nfgenmsg
    let file = std::fs::File::from(sock);
    use std::io::{Read, Write};
    (&file)
        .write_all(&req)
        .map_err(fail("asking netfilter for its tables"))?;
    let mut tables = 0;
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = (&file)
            .read(&mut buf)
            .map_err(fail("reading netfilter's tables"))?;
        let mut at = 0;
        while at + 16 <= n {
            let len = u32::from_ne_bytes(buf[at..at + 4].try_into().unwrap()) as usize;
            let ty = u16::from_ne_bytes(buf[at + 4..at + 6].try_into().unwrap());
            match ty {
                NLMSG_DONE => return Ok(tables),
                NLMSG_ERROR => {
                    let errno = i32::from_ne_bytes(buf[at + 16..at + 20].try_into().unwrap());
                    return Err(fail("listing netfilter's tables")(
                        std::io::Error::from_raw_os_error(-errno),
                    ));
                }
                _ => tables += 1,
            }
            if len < 16 {
                return Err(Error::InvalidNetwork {
                    reason: "a malformed netfilter netlink answer",
                });
            }
            at += (len + 3) & !3;
        }
        if n == 0 {
            return Ok(tables);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A namespace made new looks new; once it holds a rule, an address,
    /// a route or a table more, it does not. (Needs root: unit tests run
    /// as root in CI, as the e2e tests do.)
    #[test]
    fn only_what_a_new_namespace_holds_looks_new() {
        let check = |change: &'static str| {
            in_new_netns(move || {
                bring_loopback_up(None)?;
                let ns = PathBuf::from(format!(
                    "/proc/{}/task/{}/ns/net",
                    std::process::id(),
                    nix::unistd::gettid()
                ));
                if !change.is_empty() {
                    let ok = std::process::Command::new("sh")
                        .args(["-c", change])
                        .status()
                        .unwrap()
                        .success();
                    assert!(ok, "{change}");
                }
                looks_new(&ns)
            })
            .unwrap()
        };
        assert_eq!(check(""), Some(Fresh { loopback_up: true }));
        for change in [
            "ip addr add 127.0.0.2/8 dev lo",
            "ip route add blackhole 10.0.0.0/8",
            "ip rule add from 10.1.0.0/16 table 7",
            "ip link add fv0 type veth peer name fv1",
            // iptables on its nf_tables backend makes nftables tables.
            "iptables -A INPUT -s 10.9.9.9 -j DROP",
            "iptables-legacy -A INPUT -s 10.9.9.9 -j DROP",
            // The other value than a new namespace's, which follows the
            // host's (IPv4 devconf is inherited from init_net).
            "sysctl -qw net.ipv4.conf.lo.forwarding=$((1 - $(sysctl -n net.ipv4.conf.lo.forwarding)))",
        ] {
            assert_eq!(check(change), None, "{change}");
        }
        let fd = create(Fresh { loopback_up: true }).unwrap();
        let ino = |p: &Path| std::fs::metadata(p).map(|m| std::os::unix::fs::MetadataExt::ino(&m));
        assert_ne!(
            ino(&PathBuf::from(format!(
                "/proc/self/fd/{}",
                std::os::fd::AsRawFd::as_raw_fd(&fd)
            )))
            .unwrap(),
            ino(Path::new("/proc/self/ns/net")).unwrap()
        );
    }
}
