//! A network of Ferry's own for containers that ask for one with the
//! `org.ferry.network.address` annotation (an address such as
//! `10.66.0.50/32`): a namespace pinned in the container's state dir, wired
//! to the host and routed by it ([`crate::network::ContainerNet`]). The
//! spec's network namespace becomes that path, so CRIU treats it as
//! external (runc's `extRootNetNS`) and a restore, here or on another host,
//! hands in a namespace recreated with the same address.

use std::path::Path;

use oci_spec::runtime::{LinuxNamespaceBuilder, LinuxNamespaceType, Spec};

use crate::error::{Error, Result};
use crate::network::{self, Cidr, ContainerNet};

pub const ADDRESS_ANNOTATION: &str = "org.ferry.network.address";

/// The address the spec asks for, if any.
pub fn requested(spec: &Spec, config: &Path) -> Result<Option<Cidr>> {
    let Some(a) = spec
        .annotations()
        .as_ref()
        .and_then(|a| a.get(ADDRESS_ANNOTATION))
    else {
        return Ok(None);
    };
    a.parse().map(Some).map_err(|e| Error::InvalidConfig {
        path: config.to_path_buf(),
        reason: format!("annotation {ADDRESS_ANNOTATION}: {e}"),
    })
}

/// The host end's name: short (15 bytes at most) and stable per id.
pub fn host_if(id: &str) -> String {
    // FNV-1a: a stable, dependency-free hash is all that is needed here.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in id.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("fy{:010x}", h & 0xff_ffff_ffff)
}

/// Creates the container's namespace under `dir` and wires it to the host.
pub fn attach(dir: &Path, id: &str, address: Cidr) -> Result<ContainerNet> {
    ContainerNet::attach(&dir.join("netns"), &host_if(id), address)
}

/// Points the spec's network namespace at `path`.
pub fn use_netns(spec: &mut Spec, path: &Path) -> Result<()> {
    let mut linux = spec.linux().clone().unwrap_or_default();
    let mut nss = linux.namespaces().clone().unwrap_or_default();
    nss.retain(|n| n.typ() != LinuxNamespaceType::Network);
    nss.push(
        LinuxNamespaceBuilder::default()
            .typ(LinuxNamespaceType::Network)
            .path(path.to_path_buf())
            .build()
            .map_err(|e| Error::InvalidConfig {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?,
    );
    linux.set_namespaces(Some(nss));
    spec.set_linux(Some(linux));
    Ok(())
}

/// Tells the neighbours that the container's address is here now
/// (gratuitous ARP on every uplink: links with an IPv4 address that are
/// neither loopback nor a container's veth). Best effort.
pub fn announce(address: Cidr) {
    let std::net::IpAddr::V4(ip) = address.addr else {
        return;
    };
    let Ok(addrs) = network::addresses(None) else {
        return;
    };
    let mut seen = Vec::new();
    for (name, a) in addrs {
        if name == "lo" || name.starts_with("fy") || !a.addr.is_ipv4() || seen.contains(&name) {
            continue;
        }
        if let Err(e) = network::announce(None, &name, ip, 3) {
            tracing::warn!(link = name, error = %e, "gratuitous ARP failed");
        }
        seen.push(name);
    }
}
