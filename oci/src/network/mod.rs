//! Network namespaces and the veth links between them.
//!
//! Ferry gives a container a network namespace of its own, bind-mounted at a
//! path so that it outlives any process (like `ip netns add`), and dumps it
//! the way runc does: as an *external* namespace (`net[INODE]:extRootNetNS`)
//! that CRIU leaves alone and that the restore is handed (`inherit_fd`). The
//! runtime, not CRIU, recreates the namespace and its address on another
//! host, which is how a migrated container keeps its IP.
//!
//! Links are configured over rtnetlink. A netlink socket talks to the
//! namespace it was created in, so every operation runs on a short-lived
//! thread that first `setns`es into the target namespace (a per-thread
//! change) and drives rtnetlink on a current-thread tokio runtime.

mod arp;
mod cidr;
mod container;
pub mod criu_lock;
pub mod fresh;
mod netns;

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use futures_util::TryStreamExt;
use rtnetlink::{Handle, LinkUnspec, LinkVeth, RouteMessageBuilder};

pub use arp::announce;
pub use cidr::Cidr;
pub use container::ContainerNet;
pub use netns::Netns;

use crate::error::{Error, Result};

/// One end of a veth pair.
#[derive(Debug, Clone)]
pub struct Endpoint<'a> {
    /// The namespace this end lives in; `None` is the caller's.
    pub netns: Option<&'a Netns>,
    pub name: String,
    pub address: Option<Cidr>,
}

/// A veth pair to create between two namespaces.
#[derive(Debug, Clone)]
pub struct VethPair<'a> {
    pub outer: Endpoint<'a>,
    pub inner: Endpoint<'a>,
    /// The inner namespace's default route.
    pub inner_route: DefaultRoute,
}

/// How the inner namespace reaches the world.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DefaultRoute {
    None,
    /// Through a gateway on the link's subnet.
    Gateway(IpAddr),
    /// Straight out of the link: the outer side answers ARP for every
    /// address (proxy ARP), so a /32 address needs no subnet or gateway.
    Device,
}

fn netlink_err(op: &'static str, netns: Option<&Path>) -> impl FnOnce(rtnetlink::Error) -> Error {
    let netns = netns.map(Path::to_path_buf);
    move |source| Error::Netlink { op, netns, source }
}

/// Runs `f` with an rtnetlink handle inside `netns` (or the caller's).
fn with_netlink<T, F, Fut>(netns: Option<&Netns>, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce(Handle, Option<PathBuf>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<T>>,
{
    let path = netns.map(|n| n.path().to_path_buf());
    netns::run_in(netns, move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .map_err(|source| Error::Io {
                op: "starting a netlink runtime",
                path: path.clone().unwrap_or_default(),
                source,
            })?;
        rt.block_on(async move {
            let (conn, handle, _) = rtnetlink::new_connection().map_err(|source| Error::Io {
                op: "opening a netlink socket in",
                path: path.clone().unwrap_or_default(),
                source,
            })?;
            let task = tokio::spawn(conn);
            let out = f(handle, path).await;
            task.abort();
            out
        })
    })?
}

async fn link_index(handle: &Handle, name: &str, netns: Option<&Path>) -> Result<u32> {
    let mut links = handle.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(Some(link)) => Ok(link.header.index),
        Ok(None) => Err(Error::NoSuchLink {
            name: name.to_string(),
            netns: netns.map(Path::to_path_buf),
        }),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => {
            Err(Error::NoSuchLink {
                name: name.to_string(),
                netns: netns.map(Path::to_path_buf),
            })
        }
        Err(e) => Err(netlink_err("looking up link", netns)(e)),
    }
}

async fn configure(
    handle: &Handle,
    index: u32,
    address: Option<Cidr>,
    netns: Option<&Path>,
) -> Result<()> {
    if let Some(a) = address {
        handle
            .address()
            .add(index, a.addr, a.prefix)
            .replace()
            .execute()
            .await
            .map_err(netlink_err("adding an address", netns))?;
    }
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(netlink_err("bringing a link up", netns))
}

/// Brings `lo` up in `netns` (a new namespace starts with it down).
pub fn loopback_up(netns: &Netns) -> Result<()> {
    with_netlink(Some(netns), |h, path| async move {
        let lo = link_index(&h, "lo", path.as_deref()).await?;
        configure(&h, lo, None, path.as_deref()).await
    })
}

/// Creates the veth pair, moves the inner end into its namespace, names and
/// addresses both ends, brings them up and sets the inner default route.
pub fn connect(pair: &VethPair<'_>) -> Result<()> {
    let inner_ns = pair.inner.netns.ok_or(Error::InvalidNetwork {
        reason: "the inner end of a veth pair needs a network namespace",
    })?;
    // Created under a temporary name, so that "eth0" can be chosen inside
    // even when the outer namespace has an eth0 of its own.
    let tmp = format!("fy{}", std::process::id() % 1_000_000);
    let tmp = format!("{tmp}{}", pair.outer.name.len());
    let inner_fd = inner_ns.open()?;
    let (outer_name, outer_addr, inner_raw) = (
        pair.outer.name.clone(),
        pair.outer.address,
        std::os::fd::AsRawFd::as_raw_fd(&inner_fd),
    );
    let tmp2 = tmp.clone();
    with_netlink(pair.outer.netns, move |h, path| async move {
        let p = path.as_deref();
        h.link()
            .add(LinkVeth::new(&outer_name, &tmp2).build())
            .execute()
            .await
            .map_err(netlink_err("creating a veth pair", p))?;
        let peer = link_index(&h, &tmp2, p).await?;
        h.link()
            .set(
                LinkUnspec::new_with_index(peer)
                    .setns_by_fd(inner_raw)
                    .build(),
            )
            .execute()
            .await
            .map_err(netlink_err("moving a veth end into a namespace", p))?;
        let outer = link_index(&h, &outer_name, p).await?;
        configure(&h, outer, outer_addr, p).await
    })?;
    drop(inner_fd);
    let (inner_name, inner_addr, route) = (
        pair.inner.name.clone(),
        pair.inner.address,
        pair.inner_route,
    );
    with_netlink(Some(inner_ns), move |h, path| async move {
        let p = path.as_deref();
        let idx = link_index(&h, &tmp, p).await?;
        h.link()
            .set(LinkUnspec::new_with_index(idx).name(inner_name).build())
            .execute()
            .await
            .map_err(netlink_err("renaming a link", p))?;
        configure(&h, idx, inner_addr, p).await?;
        let lo = link_index(&h, "lo", p).await?;
        configure(&h, lo, None, p).await?;
        let v6 = inner_addr.is_some_and(|a| a.addr.is_ipv6());
        let route = match route {
            DefaultRoute::None => None,
            DefaultRoute::Gateway(IpAddr::V4(g)) => Some(
                RouteMessageBuilder::<std::net::Ipv4Addr>::new()
                    .gateway(g)
                    .build(),
            ),
            DefaultRoute::Gateway(IpAddr::V6(g)) => Some(
                RouteMessageBuilder::<std::net::Ipv6Addr>::new()
                    .gateway(g)
                    .build(),
            ),
            DefaultRoute::Device if v6 => Some(
                RouteMessageBuilder::<std::net::Ipv6Addr>::new()
                    .output_interface(idx)
                    .build(),
            ),
            DefaultRoute::Device => Some(
                RouteMessageBuilder::<std::net::Ipv4Addr>::new()
                    .output_interface(idx)
                    .scope(rtnetlink::packet_route::route::RouteScope::Link)
                    .build(),
            ),
        };
        if let Some(route) = route {
            h.route()
                .add(route)
                .execute()
                .await
                .map_err(netlink_err("adding the default route", p))?;
        }
        Ok(())
    })
}

/// Routes `dest` through the link `dev` in `netns` (e.g. a host's /32 route
/// to a container it hosts).
pub fn add_route(netns: Option<&Netns>, dest: Cidr, dev: &str) -> Result<()> {
    let dev = dev.to_string();
    with_netlink(netns, move |h, path| async move {
        let p = path.as_deref();
        let idx = link_index(&h, &dev, p).await?;
        let route = match dest.addr {
            IpAddr::V4(a) => RouteMessageBuilder::<std::net::Ipv4Addr>::new()
                .destination_prefix(a, dest.prefix)
                .output_interface(idx)
                .build(),
            IpAddr::V6(a) => RouteMessageBuilder::<std::net::Ipv6Addr>::new()
                .destination_prefix(a, dest.prefix)
                .output_interface(idx)
                .build(),
        };
        h.route()
            .add(route)
            .replace()
            .execute()
            .await
            .map_err(netlink_err("adding a route", p))
    })
}

/// Deletes a link (and so both ends of a veth pair); absent is fine.
pub fn delete_link(netns: Option<&Netns>, name: &str) -> Result<()> {
    let name = name.to_string();
    with_netlink(netns, move |h, path| async move {
        let p = path.as_deref();
        match link_index(&h, &name, p).await {
            Ok(idx) => h
                .link()
                .del(idx)
                .execute()
                .await
                .map_err(netlink_err("deleting a link", p)),
            Err(Error::NoSuchLink { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    })
}

/// The addresses configured in `netns`, as (link name, address).
pub fn addresses(netns: Option<&Netns>) -> Result<Vec<(String, Cidr)>> {
    use rtnetlink::packet_route::address::AddressAttribute;
    use rtnetlink::packet_route::link::LinkAttribute;
    with_netlink(netns, move |h, path| async move {
        let p = path.as_deref();
        let mut names = std::collections::HashMap::new();
        let mut links = h.link().get().execute();
        while let Some(l) = links
            .try_next()
            .await
            .map_err(netlink_err("listing links", p))?
        {
            for a in &l.attributes {
                if let LinkAttribute::IfName(n) = a {
                    names.insert(l.header.index, n.clone());
                }
            }
        }
        let mut out = Vec::new();
        let mut addrs = h.address().get().execute();
        while let Some(a) = addrs
            .try_next()
            .await
            .map_err(netlink_err("listing addresses", p))?
        {
            for attr in &a.attributes {
                if let AddressAttribute::Address(ip) = attr {
                    let name = names.get(&a.header.index).cloned().unwrap_or_default();
                    out.push((
                        name,
                        Cidr {
                            addr: *ip,
                            prefix: a.header.prefix_len,
                        },
                    ));
                }
            }
        }
        Ok(out)
    })
}

/// Writes a sysctl under /proc/sys/net as seen from `netns` (net sysctls are
/// per namespace, resolved by the namespace of the thread that opens them).
pub fn set_sysctl(netns: Option<&Netns>, key: &str, value: &str) -> Result<()> {
    let path = PathBuf::from("/proc/sys").join(key.replace('.', "/"));
    let value = value.to_string();
    netns::run_in(netns, move || {
        std::fs::write(&path, &value).map_err(|source| Error::Io {
            op: "writing sysctl",
            path,
            source,
        })
    })?
}
