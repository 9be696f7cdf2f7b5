//! What recreates a container on another dockerd: `create_spec` turns
//! dockerd's inspect of a container into the body of a `POST
//! /containers/create` that makes the same container again, as `docker run`
//! made it.
//!
//! The inspect is not a create body: dockerd mixes into it what it filled in
//! itself (endpoint ids, addresses it allocated, the short-id alias) and what
//! the runtime reported. This module keeps what the user asked for and drops
//! the rest. It is pure, so it is tested on a real dockerd 20.10 inspect.

use std::collections::HashMap;

use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, EndpointIpamConfig, EndpointSettings,
    NetworkingConfig,
};
use serde::{Deserialize, Serialize};

/// The networks every dockerd has, which a container joins by
/// `HostConfig.NetworkMode` alone (no endpoint configuration to carry).
pub const BUILTIN_NETWORKS: [&str; 3] = ["bridge", "host", "none"];

/// A `POST /containers/create?name=NAME` request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateSpec {
    pub name: String,
    pub body: ContainerCreateBody,
    /// `Config.MacAddress`: API 1.41 (dockerd 20.10) takes a container's
    /// MAC there, for the network of `HostConfig.NetworkMode` only, and
    /// ignores `EndpointSettings.MacAddress` on create. bollard 0.21's
    /// models follow API 1.53, whose `ContainerCreateBody` has no such
    /// field, so it travels beside the body (`Engine::create` puts it where
    /// the dockerd it talks to reads it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac_address: Option<String>,
}

impl CreateSpec {
    /// The network `HostConfig.NetworkMode` names: the one dockerd connects
    /// on create, and the only one API < 1.44 accepts in `EndpointsConfig`.
    pub fn primary_network(&self) -> Option<&str> {
        let mode = self.body.host_config.as_ref()?.network_mode.as_deref()?;
        Some(match mode {
            "" | "default" => "bridge",
            m => m,
        })
    }
}

fn nonempty(s: &Option<String>) -> Option<String> {
    s.as_ref().filter(|s| !s.is_empty()).cloned()
}

/// The create request that recreates `inspect`'s container under its name.
///
/// Kept: the user's `Config` (with `Hostname`, so /etc/hostname matches a
/// restored UTS namespace), the whole `HostConfig`, and for each
/// user-defined network its fixed address (`IPAMConfig`), aliases and links;
/// with a fixed address on the primary network, the MAC too, so a restored
/// container keeps both (its neighbours' ARP caches stay right).
///
/// Dropped: what dockerd fills in on create or connect and would duplicate
/// (the short-id alias) or reject (`Hostname`, `MacAddress`, DNS and ports
/// with `--network container:X`), and image-only fields (`OnBuild`,
/// `Shell`, Windows' `ArgsEscaped`).
pub fn create_spec(inspect: &ContainerInspectResponse) -> CreateSpec {
    let name = inspect
        .name
        .as_deref()
        .unwrap_or_default()
        .trim_start_matches('/')
        .to_string();
    let id = inspect.id.as_deref().unwrap_or_default();
    let c = inspect.config.clone().unwrap_or_default();
    let mut host = inspect.host_config.clone().unwrap_or_default();
    let container_net = host
        .network_mode
        .as_deref()
        .is_some_and(|m| m.starts_with("container:"));

    let mut body = ContainerCreateBody {
        hostname: c.hostname,
        domainname: c.domainname,
        user: c.user,
        attach_stdin: c.attach_stdin,
        attach_stdout: c.attach_stdout,
        attach_stderr: c.attach_stderr,
        exposed_ports: c.exposed_ports,
        tty: c.tty,
        open_stdin: c.open_stdin,
        stdin_once: c.stdin_once,
        // Env, Cmd, Entrypoint and Labels are the image's merged with the
        // user's: sending them back pins what the process saw, even if the
        // destination's copy of the tag has changed.
        env: c.env,
        cmd: c.cmd,
        healthcheck: c.healthcheck,
        args_escaped: None,
        image: c.image,
        volumes: c.volumes,
        working_dir: c.working_dir,
        entrypoint: c.entrypoint,
        // dockerd sets it itself (20.10 does when its default bridge is
        // off, `--bridge=none`) and still gives such a container a sandbox
        // with /etc/hosts; sent back, it means no sandbox at all, and the
        // restore misses the mounts the dump saw.
        network_disabled: None,
        on_build: None,
        labels: c.labels,
        stop_signal: c.stop_signal,
        stop_timeout: c.stop_timeout,
        shell: None,
        host_config: None,
        networking_config: None,
    };

    host.links = host
        .links
        .map(|l| l.iter().map(|l| unqualify_link(l)).collect());
    if container_net {
        // runconfig's validateNetMode refuses these with a network
        // borrowed from another container (ErrConflictNetworkHostname,
        // ...ExposePorts, ...AndDNS, ...Hosts, ...PublishPorts).
        body.hostname = None;
        body.domainname = None;
        body.exposed_ports = None;
        host.dns = None;
        host.dns_search = None;
        host.dns_options = None;
        host.extra_hosts = None;
        host.port_bindings = None;
        host.publish_all_ports = None;
    }

    let mut spec = CreateSpec {
        name,
        body,
        mac_address: None,
    };
    spec.body.host_config = Some(host);
    let primary = spec.primary_network().map(str::to_string);

    let short_id: String = id.chars().take(12).collect();
    let mut endpoints = HashMap::new();
    let networks = inspect
        .network_settings
        .as_ref()
        .and_then(|n| n.networks.as_ref());
    for (net, ep) in networks.into_iter().flatten() {
        if BUILTIN_NETWORKS.contains(&net.as_str()) {
            continue;
        }
        let ipam = ep.ipam_config.as_ref().filter(|i| {
            nonempty(&i.ipv4_address).is_some()
                || nonempty(&i.ipv6_address).is_some()
                || i.link_local_ips.as_ref().is_some_and(|l| !l.is_empty())
        });
        let aliases: Vec<String> = ep
            .aliases
            .iter()
            .flatten()
            .filter(|a| !short_id.is_empty() && **a != short_id)
            .cloned()
            .collect();
        let fixed = ipam.is_some_and(|i| nonempty(&i.ipv4_address).is_some());
        if fixed && primary.as_deref() == Some(net.as_str()) && !container_net {
            spec.mac_address = nonempty(&ep.mac_address);
        }
        endpoints.insert(
            net.clone(),
            EndpointSettings {
                ipam_config: ipam.map(|i| EndpointIpamConfig {
                    ipv4_address: nonempty(&i.ipv4_address),
                    ipv6_address: nonempty(&i.ipv6_address),
                    link_local_ips: i.link_local_ips.clone().filter(|l| !l.is_empty()),
                }),
                links: ep
                    .links
                    .clone()
                    .filter(|l| !l.is_empty())
                    .map(|l| l.iter().map(|l| unqualify_link(l)).collect()),
                aliases: (!aliases.is_empty()).then_some(aliases),
                driver_opts: ep.driver_opts.clone().filter(|o| !o.is_empty()),
                ..Default::default()
            },
        );
    }
    if !endpoints.is_empty() {
        spec.body.networking_config = Some(NetworkingConfig {
            endpoints_config: Some(endpoints),
        });
    }
    spec
}

/// A link as inspect shows it (`/target:/this/alias`) as create takes it
/// (`target:alias`); passed back as is, dockerd would make the alias a path
/// under the old container's name.
fn unqualify_link(link: &str) -> String {
    match link.split_once(':') {
        Some((target, alias)) => format!(
            "{}:{}",
            target.trim_start_matches('/'),
            alias.rsplit('/').next().unwrap_or(alias)
        ),
        None => link.trim_start_matches('/').to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `docker inspect` of a container that dockerd 20.10.24 (Debian's
    /// docker.io) ran with: `docker run -d --name web --runtime runc
    /// --network fnet --ip 172.29.0.10 --network-alias webalias --restart
    /// always -l k=v -e A=B -v fvol:/data -v /tmp/dk:/host:ro --tmpfs
    /// /run/x -p 8080:80 --memory 64m --cap-add NET_ADMIN --hostname
    /// webhost busybox:ferry sh -c '...'`.
    const WEB: &str = include_str!("../../tests/fixtures/docker-20.10-inspect.json");

    fn web() -> ContainerInspectResponse {
        serde_json::from_str(WEB).expect("dockerd 20.10's inspect deserializes")
    }

    #[test]
    fn recreates_config_hostconfig_and_the_fixed_address() {
        let s = create_spec(&web());
        assert_eq!(s.name, "web");
        let b = &s.body;
        assert_eq!(b.hostname.as_deref(), Some("webhost"));
        assert_eq!(b.image.as_deref(), Some("busybox:ferry"));
        assert_eq!(b.env, Some(vec!["A=B".to_string()]));
        assert_eq!(
            b.cmd.as_deref(),
            Some(&["sh", "-c", "while :; do sleep 1; done"].map(String::from)[..])
        );
        assert_eq!(b.labels.as_ref().unwrap()["k"], "v");
        assert_eq!(b.exposed_ports, Some(vec!["80/tcp".to_string()]));
        let h = b.host_config.as_ref().unwrap();
        assert_eq!(h.network_mode.as_deref(), Some("fnet"));
        assert_eq!(h.runtime.as_deref(), Some("runc"));
        assert_eq!(h.memory, Some(64 << 20));
        assert_eq!(h.cap_add, Some(vec!["NET_ADMIN".to_string()]));
        assert_eq!(
            h.binds,
            Some(vec![
                "fvol:/data".to_string(),
                "/tmp/dk:/host:ro".to_string()
            ])
        );
        assert_eq!(h.tmpfs.as_ref().unwrap()["/run/x"], "");
        let rp = h.restart_policy.as_ref().unwrap();
        assert_eq!(
            serde_json::to_value(rp).unwrap(),
            serde_json::json!({"Name": "always", "MaximumRetryCount": 0})
        );
        assert!(h.port_bindings.as_ref().unwrap().contains_key("80/tcp"));
        // The masked paths dockerd chose at creation stay: a CRIU restore
        // needs the mounts the dump saw.
        assert!(h.masked_paths.as_ref().unwrap().len() > 5);

        assert_eq!(s.primary_network(), Some("fnet"));
        let eps = b
            .networking_config
            .as_ref()
            .unwrap()
            .endpoints_config
            .as_ref()
            .unwrap();
        assert_eq!(eps.len(), 1);
        let ep = &eps["fnet"];
        assert_eq!(
            ep.ipam_config.as_ref().unwrap().ipv4_address.as_deref(),
            Some("172.29.0.10")
        );
        // The short id alias goes (dockerd adds the new one); the user's
        // alias and the hostname dockerd 20.10 added stay (it won't add
        // a duplicate).
        assert_eq!(
            ep.aliases,
            Some(vec!["webalias".to_string(), "webhost".to_string()])
        );
        assert_eq!(ep.endpoint_id, None);
        assert_eq!(ep.ip_address, None);
        assert_eq!(ep.network_id, None);
        assert_eq!(s.mac_address.as_deref(), Some("02:42:ac:1d:00:0a"));
    }

    #[test]
    fn the_body_serializes_without_what_dockerd_fills_in() {
        let s = create_spec(&web());
        let v = serde_json::to_value(&s.body).unwrap();
        for k in [
            "Id",
            "State",
            "Created",
            "GraphDriver",
            "NetworkSettings",
            "Mounts",
        ] {
            assert!(v.get(k).is_none(), "{k} in the create body");
        }
        let ep = &v["NetworkingConfig"]["EndpointsConfig"]["fnet"];
        for k in [
            "EndpointID",
            "NetworkID",
            "IPAddress",
            "Gateway",
            "MacAddress",
        ] {
            assert!(ep.get(k).is_none(), "{k} in the endpoint: {ep}");
        }
        // A spec survives its own JSON (the migration flow ships it).
        let back: CreateSpec = serde_json::from_value(serde_json::to_value(&s).unwrap()).unwrap();
        assert_eq!(back.body, s.body);
        assert_eq!(back.mac_address, s.mac_address);
    }

    #[test]
    fn no_fixed_address_no_mac_and_no_ipam() {
        let mut i = web();
        let ep = i
            .network_settings
            .as_mut()
            .unwrap()
            .networks
            .as_mut()
            .unwrap()
            .get_mut("fnet")
            .unwrap();
        ep.ipam_config = None;
        let s = create_spec(&i);
        assert_eq!(s.mac_address, None);
        let eps = s.body.networking_config.unwrap().endpoints_config.unwrap();
        assert_eq!(eps["fnet"].ipam_config, None);
    }

    #[test]
    fn builtin_networks_carry_no_endpoint() {
        let mut i = web();
        let nets = i
            .network_settings
            .as_mut()
            .unwrap()
            .networks
            .as_mut()
            .unwrap();
        let ep = nets.remove("fnet").unwrap();
        nets.insert("bridge".into(), ep);
        i.host_config.as_mut().unwrap().network_mode = Some("default".into());
        let s = create_spec(&i);
        assert_eq!(s.primary_network(), Some("bridge"));
        assert!(s.body.networking_config.is_none());
        assert_eq!(s.mac_address, None);
    }

    #[test]
    fn a_borrowed_network_drops_what_dockerd_would_refuse() {
        let mut i = web();
        i.host_config.as_mut().unwrap().network_mode = Some("container:abc".into());
        i.network_settings.as_mut().unwrap().networks = Some(HashMap::new());
        let s = create_spec(&i);
        assert_eq!(s.body.hostname, None);
        assert_eq!(s.body.exposed_ports, None);
        assert_eq!(s.body.host_config.as_ref().unwrap().port_bindings, None);
        assert_eq!(s.mac_address, None);
    }

    #[test]
    fn links_lose_the_old_names_path() {
        assert_eq!(unqualify_link("/db:/web/database"), "db:database");
        assert_eq!(unqualify_link("db:database"), "db:database");
        assert_eq!(unqualify_link("/db"), "db");
    }
}
