//! Gratuitous ARP: telling a LAN that an address moved.
//!
//! A migrated container keeps its IP, but its neighbours' ARP caches still
//! point at the source host's MAC. The destination host, which now answers
//! for the address (proxy ARP), broadcasts an ARP request for the address
//! from itself (what `arping -U` sends); Linux neighbours update an
//! existing cache entry from it, so traffic follows at once instead of when
//! the stale entry times out.

use std::net::Ipv4Addr;

use futures_util::TryStreamExt;
use rtnetlink::packet_route::link::LinkAttribute;

use super::{link_index, netlink_err, with_netlink, Netns};
use crate::error::{Error, Result};

/// Broadcasts `count` gratuitous ARP requests for `ip` out of `iface`
/// (in `netns`, or the caller's).
pub fn announce(netns: Option<&Netns>, iface: &str, ip: Ipv4Addr, count: u32) -> Result<()> {
    let name = iface.to_string();
    let (index, mac) = with_netlink(netns, move |h, path| async move {
        let p = path.as_deref();
        let idx = link_index(&h, &name, p).await?;
        let mut links = h.link().get().match_index(idx).execute();
        let mut mac = None;
        if let Some(l) = links
            .try_next()
            .await
            .map_err(netlink_err("reading link", p))?
        {
            for a in l.attributes {
                if let LinkAttribute::Address(m) = a {
                    mac = <[u8; 6]>::try_from(m.as_slice()).ok();
                }
            }
        }
        let mac = mac.ok_or(Error::InvalidNetwork {
            reason: "the link to announce on has no Ethernet address",
        })?;
        Ok((idx, mac))
    })?;
    let frame = frame(mac, ip);
    super::netns::run_in(netns, move || send(index, &frame, count))?
}

/// An Ethernet broadcast frame carrying an ARP request for `ip` from `ip`.
fn frame(mac: [u8; 6], ip: Ipv4Addr) -> Vec<u8> {
    let mut f = Vec::with_capacity(42);
    f.extend_from_slice(&[0xff; 6]); // destination: broadcast
    f.extend_from_slice(&mac); // source
    f.extend_from_slice(&0x0806u16.to_be_bytes()); // ethertype ARP
    f.extend_from_slice(&1u16.to_be_bytes()); // hardware: Ethernet
    f.extend_from_slice(&0x0800u16.to_be_bytes()); // protocol: IPv4
    f.extend_from_slice(&[6, 4]); // address lengths
    f.extend_from_slice(&1u16.to_be_bytes()); // operation: request
    f.extend_from_slice(&mac); // sender hardware address
    f.extend_from_slice(&ip.octets()); // sender protocol address
    f.extend_from_slice(&[0; 6]); // target hardware address: unknown
    f.extend_from_slice(&ip.octets()); // target protocol address: itself
    f
}

fn send(ifindex: u32, frame: &[u8], count: u32) -> Result<()> {
    let err = |source: std::io::Error| Error::Io {
        op: "sending gratuitous ARP on interface",
        path: format!("#{ifindex}").into(),
        source,
    };
    let proto = (libc::ETH_P_ARP as u16).to_be();
    // SAFETY: plain socket(2); the fd is owned right below.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            proto as i32,
        )
    };
    if fd < 0 {
        return Err(err(std::io::Error::last_os_error()));
    }
    // SAFETY: fd is a fresh socket we own.
    let sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // SAFETY: sockaddr_ll is plain old data; zero is a valid start.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = proto;
    addr.sll_ifindex = ifindex as i32;
    addr.sll_halen = 6;
    addr.sll_addr[..6].copy_from_slice(&[0xff; 6]);
    for i in 0..count {
        // SAFETY: frame and addr outlive the call; sizes are theirs.
        let n = unsafe {
            libc::sendto(
                std::os::fd::AsRawFd::as_raw_fd(&sock),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if n < 0 {
            return Err(err(std::io::Error::last_os_error()));
        }
        if i + 1 < count {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_layout() {
        let f = frame([2, 0, 0, 0, 0, 1], Ipv4Addr::new(10, 66, 0, 50));
        assert_eq!(f.len(), 42);
        assert_eq!(&f[12..14], &[0x08, 0x06]);
        assert_eq!(&f[20..22], &[0, 1], "a request, as arping -U sends");
        assert_eq!(&f[28..32], &[10, 66, 0, 50]);
        assert_eq!(&f[38..42], &[10, 66, 0, 50]);
    }
}
