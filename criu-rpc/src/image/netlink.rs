//! ifaddr-N.img and route-N.img: what `ip addr save` and `ip route save`
//! wrote when CRIU dumped a network namespace (criu/net.c runs them): a
//! 32-bit magic of iproute2's, then rtnetlink messages (RTM_NEWADDR,
//! RTM_NEWROUTE), each a `nlmsghdr`, a fixed header and `rtattr`s.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use serde::Serialize;

use super::frame::bad;
use crate::error::Result;

/// iproute2's ipaddress.c `ipadd_dump_magic`.
const IPADDR_DUMP_MAGIC: u32 = 0x4736_1222;
/// iproute2's iproute.c `route_dump_magic`.
const ROUTE_DUMP_MAGIC: u32 = 0x4531_1224;

const RTM_NEWADDR: u16 = 20;
const RTM_NEWROUTE: u16 = 24;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// One address (an RTM_NEWADDR message).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IfAddr {
    pub ifindex: u32,
    pub family: &'static str,
    pub address: Option<IpAddr>,
    pub local: Option<IpAddr>,
    pub prefix_len: u8,
    pub scope: u8,
    pub label: Option<String>,
}

/// One route (an RTM_NEWROUTE message).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Route {
    pub family: &'static str,
    /// `default` or ADDR/LEN.
    pub destination: String,
    pub gateway: Option<IpAddr>,
    pub oif: Option<u32>,
    pub prefsrc: Option<IpAddr>,
    pub table: u32,
    pub protocol: u8,
    pub scope: u8,
    #[serde(rename = "type")]
    pub kind: u8,
}

struct Msg<'a> {
    offset: usize,
    kind: u16,
    body: &'a [u8],
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn align4(n: usize) -> usize {
    n.saturating_add(3) & !3
}

fn messages<'a>(path: &Path, data: &'a [u8], magic: u32) -> Result<Vec<Msg<'a>>> {
    let mut at = 0;
    if u32_at(data, 0) == Some(magic) {
        at = 4;
    }
    let mut out = Vec::new();
    while at < data.len() {
        let len = u32_at(data, at)
            .ok_or_else(|| bad(path, at, "the file ends inside a netlink header"))?
            as usize;
        let kind = u16_at(data, at + 4)
            .ok_or_else(|| bad(path, at, "the file ends inside a netlink header"))?;
        if len < 16 {
            return Err(bad(path, at, "a netlink message shorter than its header"));
        }
        let body = data
            .get(at + 16..at + len)
            .ok_or_else(|| bad(path, at, "a netlink message runs past the end of the file"))?;
        out.push(Msg {
            offset: at,
            kind,
            body,
        });
        at += align4(len);
    }
    Ok(out)
}

/// The attributes after a fixed header of `skip` bytes: (type, payload).
fn attrs(body: &[u8], skip: usize) -> Option<Vec<(u16, &[u8])>> {
    let mut out = Vec::new();
    let mut at = skip;
    while at + 4 <= body.len() {
        let len = u16_at(body, at)? as usize;
        let kind = u16_at(body, at + 2)? & 0x3fff;
        if len < 4 {
            return None;
        }
        out.push((kind, body.get(at + 4..at + len)?));
        at += align4(len);
    }
    Some(out)
}

fn ip(family: u8, b: &[u8]) -> Option<IpAddr> {
    match family {
        AF_INET => Some(Ipv4Addr::from(<[u8; 4]>::try_from(b).ok()?).into()),
        AF_INET6 => Some(Ipv6Addr::from(<[u8; 16]>::try_from(b).ok()?).into()),
        _ => None,
    }
}

fn family(f: u8) -> &'static str {
    match f {
        AF_INET => "inet",
        AF_INET6 => "inet6",
        _ => "other",
    }
}

pub fn ifaddrs(path: &Path, data: &[u8]) -> Result<Vec<IfAddr>> {
    let mut out = Vec::new();
    for m in messages(path, data, IPADDR_DUMP_MAGIC)? {
        if m.kind != RTM_NEWADDR {
            continue;
        }
        let malformed = || bad(path, m.offset, "a malformed RTM_NEWADDR message");
        let (fam, prefix_len, scope) = match m.body.get(..8) {
            Some(h) => (h[0], h[1], h[3]),
            None => return Err(malformed()),
        };
        let ifindex = u32_at(m.body, 4).ok_or_else(malformed)?;
        let mut a = IfAddr {
            ifindex,
            family: family(fam),
            address: None,
            local: None,
            prefix_len,
            scope,
            label: None,
        };
        for (t, v) in attrs(m.body, 8).ok_or_else(malformed)? {
            match t {
                1 => a.address = ip(fam, v),
                2 => a.local = ip(fam, v),
                3 => {
                    a.label = Some(
                        String::from_utf8_lossy(v)
                            .trim_end_matches('\0')
                            .to_string(),
                    )
                }
                _ => {}
            }
        }
        out.push(a);
    }
    Ok(out)
}

pub fn routes(path: &Path, data: &[u8]) -> Result<Vec<Route>> {
    let mut out = Vec::new();
    for m in messages(path, data, ROUTE_DUMP_MAGIC)? {
        if m.kind != RTM_NEWROUTE {
            continue;
        }
        let malformed = || bad(path, m.offset, "a malformed RTM_NEWROUTE message");
        let h = m.body.get(..12).ok_or_else(malformed)?;
        let (fam, dst_len) = (h[0], h[1]);
        let mut r = Route {
            family: family(fam),
            destination: "default".into(),
            gateway: None,
            oif: None,
            prefsrc: None,
            table: h[4] as u32,
            protocol: h[5],
            scope: h[6],
            kind: h[7],
        };
        for (t, v) in attrs(m.body, 12).ok_or_else(malformed)? {
            match t {
                1 => {
                    if let Some(a) = ip(fam, v) {
                        r.destination = format!("{a}/{dst_len}");
                    }
                }
                4 => r.oif = u32_at(v, 0),
                5 => r.gateway = ip(fam, v),
                7 => r.prefsrc = ip(fam, v),
                15 => r.table = u32_at(v, 0).unwrap_or(r.table),
                _ => {}
            }
        }
        out.push(r);
    }
    Ok(out)
}
