//! What is particular to moving a container of a dockerd to another
//! dockerd: what the offer carries (the container as dockerd describes it,
//! and its image), the destination's pre-flight against its own dockerd,
//! what will not survive the move, and how the source's copy ends.
//!
//! The container is recreated on the destination through the Engine API
//! ([`crate::docker::Engine::create`]) with the source's name, image,
//! command, env, labels, mounts, restart policy, resources and networks,
//! and started there with a [`crate::runtime::pending`] request, so that
//! the runtime's `create` restores it. Only containers dockerd runs with
//! Ferry (`--runtime ferry`) move: their state is in dockerd's runtime
//! root, where Ferry's checkpoint finds it.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use std::path::{Path, PathBuf};

use super::preflight::Problem;
use crate::docker::{DockerContainer, Engine, ImageFacts, NetworkFacts};
use crate::error::{Error, Result};
use crate::runtime::pending::{Creating, Outcome, Pending, Request};

/// The docker part of an offer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DockerNeeds {
    pub container: DockerContainer,
    /// Its image on the source, by id, with its layers' digests.
    pub image: ImageFacts,
    /// Established TCP connections to peers outside the container on an
    /// address that does not survive the move: restored closed (CRIU's
    /// `tcp_close`; they could not be bound to the old address there).
    #[serde(default)]
    pub tcp_close: bool,
    /// How many such connections the container had when offered.
    #[serde(default)]
    pub outside_connections: usize,
}

impl DockerNeeds {
    /// The offer for `container` running as `pid`, with `image`.
    pub fn new(container: DockerContainer, image: ImageFacts) -> DockerNeeds {
        let lost: Vec<Ipv4Addr> = container
            .networks
            .iter()
            .filter(|a| a.builtin || !a.fixed)
            .filter_map(|a| a.ip)
            .collect();
        let outside = if lost.is_empty() {
            0
        } else {
            // tcp6 too: a server listening on :: (busybox nc does) holds
            // its IPv4 peers as v4-mapped addresses there.
            ["tcp", "tcp6"]
                .iter()
                .filter_map(|f| {
                    std::fs::read_to_string(format!("/proc/{}/net/{f}", container.pid)).ok()
                })
                .map(|t| outside_connections(&t, &lost))
                .sum()
        };
        DockerNeeds {
            container,
            image,
            tcp_close: outside > 0,
            outside_connections: outside,
        }
    }
}

/// How many established connections of a /proc/net/tcp text run from one
/// of `ips` to a peer with another address (peers inside the container
/// talk to the container's own address, and follow it).
fn outside_connections(proc_net_tcp: &str, ips: &[Ipv4Addr]) -> usize {
    // "  sl  local_address rem_address   st ..." with addresses as
    // little-endian hex u32 and ports: "0200A8C0:1F90".
    let addr = |f: &str| {
        let hex = f.split(':').next()?;
        // tcp6: a v4-mapped address (::ffff:a.b.c.d) ends with the IPv4
        // word; other IPv6 addresses are not docker's bridge addresses.
        let hex = match hex.len() {
            8 => hex,
            32 if hex.starts_with("0000000000000000FFFF0000") => &hex[24..],
            _ => return None,
        };
        u32::from_str_radix(hex, 16)
            .ok()
            .map(|n| Ipv4Addr::from(u32::from_be(n)))
    };
    proc_net_tcp
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Some((addr(f.get(1)?)?, addr(f.get(2)?)?, *f.get(3)?))
        })
        .filter(|(local, remote, st)| *st == "01" && ips.contains(local) && local != remote)
        .count()
}

/// What the destination's dockerd has of what the container needs.
#[derive(Debug, Clone, Default)]
pub struct DockerFacts {
    /// The image of the same id, if there.
    pub image: Option<ImageFacts>,
    /// The image the source's image name means there, if any (when it is
    /// not the same image, its layers say what is missing).
    pub image_by_name: Option<ImageFacts>,
    /// The container holding the name there, if any.
    pub name_holder: Option<String>,
    /// Each user-defined network the container is on, as found there.
    pub networks: BTreeMap<String, Option<NetworkFacts>>,
}

impl DockerFacts {
    /// Asks `engine` (the destination's dockerd) about `needs`.
    pub fn gather(engine: &Engine, needs: &DockerNeeds) -> Result<DockerFacts> {
        DockerFacts::gather_as(engine, needs, &needs.container.name)
    }

    /// [`DockerFacts::gather`] for the container under another `name`.
    pub fn gather_as(engine: &Engine, needs: &DockerNeeds, name: &str) -> Result<DockerFacts> {
        let c = &needs.container;
        let mut networks = BTreeMap::new();
        for a in c.networks.iter().filter(|a| !a.builtin) {
            networks.insert(a.network.clone(), engine.network(&a.network)?);
        }
        Ok(DockerFacts {
            image: engine.image(&needs.image.id)?,
            image_by_name: engine.image(&c.image_name)?,
            name_holder: engine.name_taken(name)?,
            networks,
        })
    }
}

/// The destination's verdict on a docker offer, every problem at once.
pub fn judge(needs: &DockerNeeds, facts: &DockerFacts) -> Vec<Problem> {
    let c = &needs.container;
    let mut out = Vec::new();
    // The same image, or one of the same name with the same layers (the
    // same root filesystem; `docker import` of one tarball on two hosts
    // makes two ids): the container's own config carries its command and
    // environment.
    let same_id = facts.image.as_ref().map(|i| &i.id) == Some(&needs.image.id);
    let same_layers = facts.image_by_name.as_ref().map(|i| &i.layers) == Some(&needs.image.layers);
    if !same_id && !same_layers {
        let have = facts
            .image_by_name
            .as_ref()
            .map(|i| i.layers.clone())
            .unwrap_or_default();
        out.push(Problem::ImageMissing {
            image: c.image_name.clone(),
            id: needs.image.id.clone(),
            found: facts.image_by_name.as_ref().map(|i| i.id.clone()),
            missing_layers: needs
                .image
                .layers
                .iter()
                .filter(|l| !have.contains(l))
                .cloned()
                .collect(),
        });
    }
    if let Some(id) = &facts.name_holder {
        out.push(Problem::NameTaken {
            name: c.name.clone(),
            id: id.clone(),
        });
    }
    for a in c.networks.iter().filter(|a| !a.builtin) {
        match facts.networks.get(&a.network) {
            Some(Some(n)) => {
                if let (true, Some(ip)) = (a.fixed, a.ip) {
                    if !n.subnets.iter().any(|(net, p)| in_subnet(ip, *net, *p)) {
                        out.push(Problem::AddressOutsideNetwork {
                            network: a.network.clone(),
                            address: ip,
                        });
                    }
                }
            }
            _ => out.push(Problem::NetworkMissing {
                network: a.network.clone(),
            }),
        }
    }
    out
}

fn in_subnet(ip: Ipv4Addr, net: Ipv4Addr, prefix: u8) -> bool {
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix.min(32)))
    };
    u32::from(ip) & mask == u32::from(net) & mask
}

/// What will not survive the move as it is on the source: said before
/// anything is frozen, and carried by the report (never lost silently).
pub fn notes(needs: &DockerNeeds) -> Vec<String> {
    let c = &needs.container;
    let mut out = Vec::new();
    if needs.tcp_close {
        out.push(format!(
            "{} established TCP connection(s) to peers outside the container, on an address that does not move, will be closed",
            needs.outside_connections
        ));
    }
    for a in &c.networks {
        let Some(ip) = a.ip else {
            continue;
        };
        match (a.builtin, a.fixed) {
            (true, _) if a.network == "bridge" => out.push(format!(
                "address {ip} on docker's default bridge becomes the destination's: established TCP connections to peers outside the container are closed (run it on a user-defined network with --ip to keep them)"
            )),
            (true, _) => {}
            (false, false) => out.push(format!(
                "address {ip} on network {} was not fixed with --ip: the destination's dockerd picks one, and established TCP connections to peers outside the container are closed",
                a.network
            )),
            (false, true) => {}
        }
    }
    for v in &c.volumes {
        out.push(format!(
            "volume {v}: its content stays on the source; the destination mounts its own volume of that name"
        ));
    }
    out
}

/// The namespaces a dockerd's container is dumped without their content:
/// its network namespace, unless it joined one by path. dockerd 20.10
/// (libnetwork) gives a container a new netns and wires it from the
/// `libnetwork-setkey` prestart hook; on the destination the restore
/// must get an empty namespace (CRIU's `empty_ns`, runc's `--empty-ns
/// network`) for that hook, run again at CRIU's setup-namespaces notify,
/// to wire with the destination dockerd's links: the source's veth or
/// macvlan cannot be recreated there.
pub fn empty_ns(spec: &oci_spec::runtime::Spec) -> Option<nix::sched::CloneFlags> {
    let new_netns = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .is_some_and(|ns| {
            ns.iter().any(|n| {
                n.typ() == oci_spec::runtime::LinuxNamespaceType::Network && n.path().is_none()
            })
        });
    new_netns.then_some(nix::sched::CloneFlags::CLONE_NEWNET)
}

/// The create request for the destination: by image name when the name
/// means the same root filesystem there, else by the image's id.
pub fn create_spec(needs: &DockerNeeds, by_name: Option<&ImageFacts>) -> crate::docker::CreateSpec {
    let mut spec = needs.container.create.clone();
    if by_name.map(|i| &i.layers) != Some(&needs.image.layers) {
        spec.body.image = Some(needs.image.id.clone());
    }
    spec
}

/// A container created on a dockerd to restore a checkpoint into: the
/// writable layer goes into its own overlay2 upper dir (dockerd mounts it
/// at start), the images into a [`Pending`] restore that the runtime's
/// `create` claims when the container is started. Used by the migration
/// agent and by `ferry restore --docker --import`.
pub struct DockerLanding {
    engine: Engine,
    /// The id dockerd gave the container.
    id: String,
    /// Its overlay2 upper dir.
    upper: PathBuf,
    pending: Pending,
    /// Its address changed (default bridge, no --ip): TCP restored closed.
    tcp_close: bool,
    /// The addresses it keeps, announced (gratuitous ARP) once it runs.
    keeps: Vec<Ipv4Addr>,
    /// Post-copy's work dir, with the lazy-pages socket: short, since a
    /// socket path has 108 bytes and dockerd's runtime root is deep.
    lazy_work: PathBuf,
}

/// Where docker landings keep their lazy-pages work dirs.
const LAZY_WORK: &str = "/run/ferry/lazy";

/// Removes a lazy-pages work dir, if there.
pub fn remove_lazy_work(dir: &Path) -> Result<()> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(crate::error::io("removing", dir)(e)),
    }
}

impl DockerLanding {
    /// Creates the container of `d` on `engine`'s dockerd, under its name
    /// or `name`, and its pending restore; nothing is left on failure.
    pub fn create(engine: Engine, d: &DockerNeeds, name: Option<&str>) -> Result<DockerLanding> {
        let root = engine.runtime_root()?;
        let by_name = engine.image(&d.container.image_name)?;
        let mut spec = create_spec(d, by_name.as_ref());
        if let Some(n) = name {
            spec.name = n.to_string();
        }
        let creating = Creating::mark(&root, &spec.name)?;
        let id = match engine.create(&spec) {
            Ok(id) => id,
            Err(e) => {
                creating.done();
                return Err(e);
            }
        };
        let made = (|| {
            let c = engine.container(&id)?;
            let upper = c.upper_dir.clone().ok_or_else(|| Error::DockerNotMovable {
                name: d.container.name.clone(),
                why: format!(
                    "the destination's dockerd stores it with {}, not overlay2",
                    c.storage_driver
                ),
            })?;
            Ok((upper, Pending::prepare(&root, &id)?))
        })();
        // Either way the mark has done its work: the container has its
        // pending request, or is removed below.
        let made = made.inspect_err(|_| {
            let _ = engine.remove(&id, true);
        });
        creating.done();
        match made {
            Ok((upper, pending)) => Ok(DockerLanding {
                engine,
                upper,
                pending,
                tcp_close: d.tcp_close,
                keeps: d
                    .container
                    .networks
                    .iter()
                    .filter(|a| a.fixed && !a.builtin)
                    .filter_map(|a| a.ip)
                    .collect(),
                lazy_work: PathBuf::from(LAZY_WORK).join(&id[..id.len().min(16)]),
                id,
            }),
            Err(e) => Err(e),
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The `cgroup.procs` files the container will be in once restored
    /// (what a post-copy guardian kills): dockerd, whose cgroupfs driver
    /// Ferry requires, asks for `HostConfig.CgroupParent/ID`, `/docker`
    /// by default (a dockerd started with its own `--cgroup-parent` is
    /// not seen here: the agent warns when the restore landed elsewhere).
    pub fn cgroup_procs(&self) -> Result<Vec<PathBuf>> {
        let parent = self
            .engine
            .inspect(&self.id)?
            .host_config
            .and_then(|h| h.cgroup_parent)
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| "/docker".into());
        let cgroup = crate::runtime::cgroup::ContainerCgroup::new(
            Some(&Path::new(&parent).join(&self.id)),
            &self.id,
            false,
        )?;
        crate::runtime::cgroup_procs::procs_files(&cgroup)
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The pending restore's directory.
    pub fn dir(&self) -> &Path {
        &self.pending.dir
    }

    /// Where CRIU's images go.
    pub fn images(&self) -> PathBuf {
        self.pending.images()
    }

    /// Where the writable layer's diff goes.
    pub fn upper(&self) -> &Path {
        &self.upper
    }

    pub fn lazy_work(&self) -> &Path {
        &self.lazy_work
    }

    /// Starts the container: dockerd's shim runs `ferry create`, which
    /// claims the pending restore; its outcome says how it went. Returns
    /// the restored pid, how long the restore took and CRIU's stats.
    pub fn start(
        &self,
        lazy_work: Option<&Path>,
        leave_stopped: bool,
    ) -> Result<(i32, f64, Option<criu_rpc::stats::RestoreStats>)> {
        self.pending.request(&Request {
            images: self.pending.images(),
            lazy_work: lazy_work.map(Path::to_path_buf),
            tcp_close: self.tcp_close,
            leave_stopped,
        })?;
        let started = self.engine.start(&self.id);
        match (started, self.pending.outcome()?) {
            (_, Some(Outcome::Failed { failure })) => Err(Error::PendingRestoreFailed {
                id: self.id.clone(),
                failure: Box::new(failure),
            }),
            (
                Ok(()),
                Some(Outcome::Restored {
                    pid,
                    restore_ms,
                    criu,
                }),
            ) => {
                if let Some(ns) = self.engine.container(&self.id)?.sandbox_key {
                    announce(&ns, &self.keeps);
                }
                Ok((pid, restore_ms, criu))
            }
            (Err(e), _) => Err(e),
            (Ok(()), None) => Err(Error::Protocol {
                what: "dockerd started the container without the runtime restoring it (is its runtime ferry?)",
            }),
        }
    }

    /// After a failure: the container goes, with its layer and request.
    pub fn discard(self) -> Result<()> {
        self.engine.remove(&self.id, true)?;
        self.done()
    }

    /// After a success: the pending restore is spent.
    pub fn done(self) -> Result<()> {
        self.pending.remove()?;
        remove_lazy_work(&self.lazy_work)
    }
}

/// Tells the LAN that the container's kept addresses now live here: a
/// gratuitous ARP out of each of its links that carries one (in its netns,
/// `sandbox`), so that switches and neighbours follow the same MAC at once.
pub fn announce(sandbox: &std::path::Path, ips: &[Ipv4Addr]) {
    if ips.is_empty() {
        return;
    }
    let ns = match crate::network::Netns::at(sandbox) {
        Ok(ns) => ns,
        Err(e) => {
            tracing::warn!(error = %crate::error::chain(&e), "gratuitous ARP: no netns");
            return;
        }
    };
    let links = crate::network::addresses(Some(&ns)).unwrap_or_default();
    for (link, a) in links {
        let std::net::IpAddr::V4(ip) = a.addr else {
            continue;
        };
        if ips.contains(&ip) {
            if let Err(e) = crate::network::announce(Some(&ns), &link, ip, 3) {
                tracing::warn!(link, error = %crate::error::chain(&e), "gratuitous ARP failed");
            }
        }
    }
}

/// The name the source's exited copy takes once the container runs at
/// `to`, so that the name is free for a move back: `web.moved-to-10.0.0.2-7878`.
pub fn moved_name(name: &str, to: &str, n: u32) -> String {
    let to: String = to
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    match n {
        0 | 1 => format!("{name}.moved-to-{to}"),
        n => format!("{name}.moved-to-{to}.{n}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::docker::Attachment;

    fn attachment(network: &str, ip: &str, fixed: bool, builtin: bool) -> Attachment {
        Attachment {
            network: network.into(),
            ip: Some(ip.parse().unwrap()),
            prefix: Some(24),
            mac: None,
            fixed,
            builtin,
        }
    }

    #[test]
    fn connections_to_the_outside_are_counted() {
        // 172.17.0.2:5000 <- 10.66.0.100:40000 established; 172.17.0.2 to
        // itself established; a listener; 127.0.0.1 to itself.
        let t = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 020011AC:1388 6400420A:9C40 01 00000000:00000000 00:00000000 00000000     0        0 1 1 0 20 4 30 10 -1
   1: 020011AC:1389 020011AC:9C41 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0 20 4 30 10 -1
   2: 00000000:1388 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 3 1 0 20 4 30 10 -1
   3: 0100007F:1770 0100007F:9C42 01 00000000:00000000 00:00000000 00000000     0        0 4 1 0 20 4 30 10 -1";
        let ip: Ipv4Addr = "172.17.0.2".parse().unwrap();
        assert_eq!(outside_connections(t, &[ip]), 1);
        let t6 =
            "  sl  local_address                         remote_address                        st
   0: 0000000000000000FFFF0000020011AC:1388 0000000000000000FFFF00006400420A:A7C8 01 0
   1: 00000000000000000000000000000000:1388 00000000000000000000000000000000:0000 0A 0";
        assert_eq!(outside_connections(t6, &[ip]), 1);
        assert_eq!(outside_connections(t, &["10.0.0.1".parse().unwrap()]), 0);
    }

    #[test]
    fn subnets() {
        let net: Ipv4Addr = "10.66.0.0".parse().unwrap();
        assert!(in_subnet("10.66.0.50".parse().unwrap(), net, 24));
        assert!(!in_subnet("10.66.1.50".parse().unwrap(), net, 24));
        assert!(in_subnet("1.2.3.4".parse().unwrap(), net, 0));
    }

    #[test]
    fn moved_names_are_docker_names() {
        assert_eq!(
            moved_name("web", "10.66.0.2:7878", 0),
            "web.moved-to-10.66.0.2-7878"
        );
        assert_eq!(
            moved_name("web", "[::1]:7878", 2),
            "web.moved-to----1--7878.2"
        );
    }

    #[test]
    fn notes_name_what_will_not_survive() {
        let bridge = attachment("bridge", "172.17.0.2", false, true);
        let fixed = attachment("n", "10.66.0.50", true, false);
        let floating = attachment("m", "10.67.0.3", false, false);
        let mut c: DockerContainer = serde_json::from_value(serde_json::json!({
            "id": "abc", "name": "web", "running": true, "paused": false, "pid": 1,
            "runtime": "ferry", "image_id": "sha256:1", "image_name": "busybox",
            "storage_driver": "overlay2", "upper_dir": null, "sandbox_key": null,
            "networks": [], "volumes": ["data"],
            "create": {"name": "web", "body": {}}
        }))
        .unwrap();
        let needs = |c: &DockerContainer, tcp_close| DockerNeeds {
            container: c.clone(),
            image: ImageFacts {
                id: "sha256:1".into(),
                layers: vec![],
                tags: vec![],
            },
            tcp_close,
            outside_connections: 2,
        };
        c.networks = vec![fixed.clone()];
        let n = notes(&needs(&c, false));
        assert_eq!(n.len(), 1, "{n:?}");
        c.networks = vec![bridge, fixed, floating];
        let n = notes(&needs(&c, false));
        assert_eq!(n.len(), 3, "{n:?}");
        assert!(n[0].contains("default bridge"), "{n:?}");
        assert!(n[1].contains("network m"), "{n:?}");
        let with_tcp = notes(&needs(&c, true));
        assert!(with_tcp[0].starts_with("2 established TCP"), "{with_tcp:?}");
        assert!(n[2].contains("volume data"), "{n:?}");
    }
}
