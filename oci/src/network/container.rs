//! A container's own network: a pinned namespace holding `eth0` with the
//! container's address, wired to the host by a veth pair and routed by the
//! host. Because the address is a /32 routed by whichever host runs the
//! container (proxy ARP on the host side), it can move with the container:
//! the destination recreates the same namespace and address, takes the
//! route, and announces it ([`super::announce`]).

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{
    add_route, connect, delete_link, set_sysctl, Cidr, DefaultRoute, Endpoint, Netns, VethPair,
};
use crate::error::Result;

/// A container's network as set up on this host.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ContainerNet {
    /// Where the namespace is pinned (the spec's network namespace path).
    pub netns: std::path::PathBuf,
    /// The host end of the veth pair.
    pub host_if: String,
    pub address: Cidr,
}

impl ContainerNet {
    /// Creates the namespace at `netns` and wires it to the caller's
    /// namespace (the host). `host_if` is at most 15 bytes.
    pub fn attach(netns: &Path, host_if: &str, address: Cidr) -> Result<ContainerNet> {
        let ns = Netns::create(netns)?;
        let net = ContainerNet {
            netns: netns.to_path_buf(),
            host_if: host_if.to_string(),
            address: address.host(),
        };
        if let Err(e) = net.wire(&ns) {
            let _ = delete_link(None, host_if);
            let _ = ns.remove();
            return Err(e);
        }
        Ok(net)
    }

    fn wire(&self, ns: &Netns) -> Result<()> {
        connect(&VethPair {
            outer: Endpoint {
                netns: None,
                name: self.host_if.clone(),
                address: None,
            },
            inner: Endpoint {
                netns: Some(ns),
                name: "eth0".into(),
                address: Some(self.address),
            },
            inner_route: DefaultRoute::Device,
        })?;
        // The host answers ARP for everything on the container's side
        // (the container's default route is the bare link) and forwards.
        set_sysctl(
            None,
            &format!("net.ipv4.conf.{}.proxy_arp", self.host_if),
            "1",
        )?;
        set_sysctl(None, "net.ipv4.ip_forward", "1")?;
        self.route()
    }

    /// Routes the container's address to it from the host.
    pub fn route(&self) -> Result<()> {
        add_route(None, self.address, &self.host_if)
    }

    /// Removes the veth pair (and with it the host route) and unpins the
    /// namespace. Idempotent.
    pub fn detach(&self) -> Result<()> {
        delete_link(None, &self.host_if)?;
        if self.netns.exists() {
            Netns::at(&self.netns).and_then(Netns::remove)?;
        }
        Ok(())
    }
}
