//! dockerd's Engine API, typed and blocking: what moving a container from
//! one dockerd to another asks of each of them.
//!
//! [`Engine`] talks to one dockerd over its unix socket with bollard, on a
//! current-thread tokio runtime of its own (every call `block_on`s), at the
//! API version the daemon speaks (1.41 for dockerd 20.10). It inspects
//! containers, images and networks into the few facts a migration needs
//! ([`DockerContainer`], [`ImageFacts`], [`NetworkFacts`]), recreates a
//! container from a [`CreateSpec`] (built purely from an inspect by
//! [`create_spec`]), and finds where dockerd's runtimes keep their state
//! ([`Engine::runtime_root`]), which the Engine API does not tell.

mod daemon;
mod spec;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bollard::errors::Error as ApiError;
use bollard::models::{ContainerInspectResponse, ContainerUpdateBody, NetworkConnectRequest};
use bollard::query_parameters::{
    CreateContainerOptions, InspectContainerOptions, ListContainersOptions, RemoveContainerOptions,
    RenameContainerOptions, StartContainerOptions,
};
use bollard::{ClientVersion, Docker};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

pub use daemon::{DEFAULT_CONFIG_FILE, DEFAULT_EXEC_ROOT};
pub use spec::{create_spec, CreateSpec, BUILTIN_NETWORKS};

/// Where docker looks when neither `--docker-host` nor `DOCKER_HOST` says.
pub const DEFAULT_HOST: &str = "unix:///var/run/docker.sock";

/// Per-request timeout, in seconds (bollard's unit). Generous: a create or
/// a remove with volumes can take dockerd a while on a loaded host.
const TIMEOUT_SECS: u64 = 120;

/// How often `wait_not_running` asks.
const POLL: Duration = Duration::from_millis(50);

/// The first API version whose create takes several networks and a MAC
/// per endpoint (docker 25); before it, one network and `Config.MacAddress`.
const MULTI_NETWORK_API: ClientVersion = ClientVersion {
    major_version: 1,
    minor_version: 44,
};

/// A connection to one dockerd.
#[derive(Debug)]
pub struct Engine {
    docker: Docker,
    rt: tokio::runtime::Runtime,
    host: String,
    socket: PathBuf,
}

/// What a migration needs to know of a container.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DockerContainer {
    pub id: String,
    /// Without docker's leading '/'.
    pub name: String,
    pub running: bool,
    pub paused: bool,
    /// Its init's pid on the host; 0 when it is not running.
    pub pid: i32,
    /// `HostConfig.Runtime`: the OCI runtime dockerd runs it with.
    pub runtime: String,
    /// `.Image`: the image's id (sha256:...).
    pub image_id: String,
    /// `.Config.Image`: the image as the user named it.
    pub image_name: String,
    /// `.Driver`: the storage driver (overlay2...).
    pub storage_driver: String,
    /// `GraphDriver.Data.UpperDir`: its writable layer (overlay2).
    pub upper_dir: Option<PathBuf>,
    /// `NetworkSettings.SandboxKey`: its network namespace's path.
    pub sandbox_key: Option<PathBuf>,
    /// The network of `HostConfig.NetworkMode` first, then by name.
    pub networks: Vec<Attachment>,
    /// Named volumes it mounts: they stay behind with their dockerd (a
    /// move takes the writable layer, not volumes).
    pub volumes: Vec<String>,
    /// What recreates it on another dockerd.
    pub create: CreateSpec,
}

/// A container's endpoint on one network.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Attachment {
    pub network: String,
    pub ip: Option<Ipv4Addr>,
    pub prefix: Option<u8>,
    pub mac: Option<String>,
    /// The address was asked for (`docker run --ip`, `IPAMConfig`), not
    /// picked by dockerd's IPAM.
    pub fixed: bool,
    /// One of the networks every dockerd has: bridge, host, none.
    pub builtin: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ImageFacts {
    pub id: String,
    /// `RootFS.Layers`: the diff ids, bottom first.
    pub layers: Vec<String>,
    pub tags: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NetworkFacts {
    pub name: String,
    pub id: String,
    pub driver: String,
    /// Its IPv4 subnets (IPAM.Config[].Subnet).
    pub subnets: Vec<(Ipv4Addr, u8)>,
}

/// `HostConfig.RestartPolicy`; dockerd's empty name is spelled "no".
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RestartPolicy {
    /// no, always, unless-stopped or on-failure.
    pub name: String,
    pub maximum_retry_count: i64,
}

impl DockerContainer {
    /// The facts of a container as dockerd inspected it.
    pub fn from_inspect(i: &ContainerInspectResponse) -> DockerContainer {
        let state = i.state.clone().unwrap_or_default();
        let host = i.host_config.as_ref();
        let create = create_spec(i);
        let primary = create.primary_network().map(str::to_string);
        let mut networks: Vec<Attachment> = i
            .network_settings
            .as_ref()
            .and_then(|n| n.networks.as_ref())
            .into_iter()
            .flatten()
            .map(|(net, ep)| Attachment {
                network: net.clone(),
                ip: ep.ip_address.as_deref().and_then(|a| a.parse().ok()),
                prefix: ep
                    .ip_prefix_len
                    .filter(|p| (1..=32).contains(p))
                    .map(|p| p as u8),
                mac: ep.mac_address.clone().filter(|m| !m.is_empty()),
                fixed: ep
                    .ipam_config
                    .as_ref()
                    .and_then(|c| c.ipv4_address.as_deref())
                    .is_some_and(|a| !a.is_empty()),
                builtin: BUILTIN_NETWORKS.contains(&net.as_str()),
            })
            .collect();
        networks.sort_by(|a, b| {
            let pa = Some(&a.network) != primary.as_ref();
            let pb = Some(&b.network) != primary.as_ref();
            (pa, &a.network).cmp(&(pb, &b.network))
        });
        // A volume is named when the user named it: as a bind's source or a
        // mount's; anonymous ones (`-v /data`, image VOLUMEs) are neither.
        let named: Vec<&str> = host
            .and_then(|h| h.binds.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|b| b.split(':').next())
            .chain(
                host.and_then(|h| h.mounts.as_ref())
                    .into_iter()
                    .flatten()
                    .filter_map(|m| m.source.as_deref()),
            )
            .collect();
        let volumes = i
            .mounts
            .iter()
            .flatten()
            .filter(|m| m.typ.as_deref() == Some("volume"))
            .filter_map(|m| m.name.clone())
            .filter(|n| named.contains(&n.as_str()))
            .collect();
        DockerContainer {
            id: i.id.clone().unwrap_or_default(),
            name: create.name.clone(),
            running: state.running.unwrap_or(false),
            paused: state.paused.unwrap_or(false),
            pid: state.pid.and_then(|p| i32::try_from(p).ok()).unwrap_or(0),
            runtime: host.and_then(|h| h.runtime.clone()).unwrap_or_default(),
            image_id: i.image.clone().unwrap_or_default(),
            image_name: i
                .config
                .as_ref()
                .and_then(|c| c.image.clone())
                .unwrap_or_default(),
            storage_driver: i.driver.clone().unwrap_or_default(),
            upper_dir: i
                .graph_driver
                .as_ref()
                .and_then(|g| g.data.get("UpperDir"))
                .filter(|d| !d.is_empty())
                .map(PathBuf::from),
            sandbox_key: i
                .network_settings
                .as_ref()
                .and_then(|n| n.sandbox_key.as_deref())
                .filter(|k| !k.is_empty())
                .map(PathBuf::from),
            networks,
            volumes,
            create,
        }
    }
}

/// The unix socket of a docker host (`--docker-host`, else DOCKER_HOST,
/// else docker's default).
fn socket_of(flag: Option<&str>, env: Option<&str>) -> Result<(String, PathBuf)> {
    let host = flag
        .or(env.filter(|h| !h.is_empty()))
        .unwrap_or(DEFAULT_HOST);
    let refuse = |reason| {
        Err(Error::DockerHost {
            host: host.to_string(),
            reason,
        })
    };
    match host.split_once("://") {
        Some(("unix", "")) => Ok((DEFAULT_HOST.to_string(), PathBuf::from(&DEFAULT_HOST[7..]))),
        Some(("unix", path)) if path.starts_with('/') => {
            Ok((host.to_string(), PathBuf::from(path)))
        }
        Some(("unix", _)) => refuse("the socket path must be absolute (unix:///path/docker.sock)"),
        // Ferry reads dockerd's state directories and its /proc entry: it
        // must run on dockerd's host, where its socket is.
        Some(("tcp" | "ssh" | "http" | "https", _)) => {
            refuse("only a local unix:// socket is supported: Ferry must run on dockerd's host")
        }
        Some(_) => refuse("only unix:// sockets are supported"),
        // docker itself reads a bare address as tcp.
        None => refuse("not a unix:// address (write unix:///path/docker.sock)"),
    }
}

fn is_404(e: &ApiError) -> bool {
    matches!(
        e,
        ApiError::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

/// The restart policy as bollard's model spells it.
fn policy_model(p: &RestartPolicy) -> Result<bollard::models::RestartPolicy> {
    let name = serde_json::from_value(serde_json::Value::String(p.name.clone())).map_err(|_| {
        Error::InvalidArgument {
            what: "restart policy".into(),
            reason: format!(
                "`{}` is not one of no, always, unless-stopped, on-failure",
                p.name
            ),
        }
    })?;
    Ok(bollard::models::RestartPolicy {
        name: Some(name),
        maximum_retry_count: Some(p.maximum_retry_count),
    })
}

fn policy_of(p: Option<&bollard::models::RestartPolicy>) -> RestartPolicy {
    let name = p
        .and_then(|p| p.name.as_ref())
        .and_then(|n| serde_json::to_value(n).ok())
        .and_then(|v| v.as_str().map(str::to_string))
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "no".into());
    RestartPolicy {
        name,
        maximum_retry_count: p.and_then(|p| p.maximum_retry_count).unwrap_or(0),
    }
}

/// A regex matching exactly `s` (dockerd's `name` filter is a regex).
fn regex_literal(s: &str) -> String {
    let mut r = String::with_capacity(s.len() + 4);
    for c in s.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            r.push('\\');
        }
        r.push(c);
    }
    r
}

impl Engine {
    /// Connects to dockerd at `host` (the `--docker-host` value if given,
    /// else $DOCKER_HOST, else unix:///var/run/docker.sock, as docker finds
    /// it) and settles on the API version it speaks. Only unix:// hosts.
    pub fn connect(host: Option<&str>) -> Result<Engine> {
        let env = std::env::var("DOCKER_HOST").ok();
        let (host, socket) = socket_of(host, env.as_deref())?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(crate::error::io(
                "starting a tokio runtime to talk to dockerd at",
                &socket,
            ))?;
        // Start at bollard's version and let dockerd lower it: 20.10 refuses
        // anything above 1.41.
        let docker = rt
            .block_on(async {
                Docker::connect_with_unix(&host, TIMEOUT_SECS, bollard::API_DEFAULT_VERSION)?
                    .negotiate_version()
                    .await
            })
            .map_err(|source| Error::DockerConnect {
                host: host.clone(),
                source,
            })?;
        Ok(Engine {
            docker,
            rt,
            host,
            socket,
        })
    }

    /// The unix:// address this engine talks to.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The socket's path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The API version agreed with dockerd ("1.41" for dockerd 20.10).
    pub fn api_version(&self) -> String {
        self.docker.client_version().to_string()
    }

    fn err(&self, op: &'static str, what: &str, source: ApiError) -> Error {
        Error::Docker {
            op,
            what: what.to_string(),
            host: self.host.clone(),
            source,
        }
    }

    fn call<T>(
        &self,
        op: &'static str,
        what: &str,
        f: impl std::future::Future<Output = Result<T, ApiError>>,
    ) -> Result<T> {
        self.rt.block_on(f).map_err(|e| self.err(op, what, e))
    }

    /// `call`, with dockerd's 404 as `None`.
    fn call_found<T>(
        &self,
        op: &'static str,
        what: &str,
        f: impl std::future::Future<Output = Result<T, ApiError>>,
    ) -> Result<Option<T>> {
        match self.rt.block_on(f) {
            Ok(v) => Ok(Some(v)),
            Err(e) if is_404(&e) => Ok(None),
            Err(e) => Err(self.err(op, what, e)),
        }
    }

    /// Where dockerd's runtimes keep container state: the `--root` dockerd
    /// 20.10 passes to runc-compatible runtimes (`--add-runtime` ones
    /// too), `<exec-root>/runtime-runc/moby`. The exec-root is read from
    /// the dockerd behind the socket: its command line, else its
    /// daemon.json, else /var/run/docker.
    pub fn runtime_root(&self) -> Result<PathBuf> {
        daemon::runtime_root(&self.socket, &self.host)
    }

    /// dockerd's inspect of a container, by name (with or without the
    /// leading '/') or id (full or short), as docker resolves them.
    pub fn inspect(&self, name_or_id: &str) -> Result<ContainerInspectResponse> {
        // "/web" would make the path /containers//web/json, which dockerd's
        // router redirects instead of serving; dockerd adds the '/' back.
        let key = name_or_id.trim_start_matches('/');
        if key.is_empty() {
            return Err(Error::InvalidArgument {
                what: "container".into(),
                reason: "empty name or id".into(),
            });
        }
        self.call_found(
            "inspecting container",
            key,
            self.docker
                .inspect_container(key, None::<InspectContainerOptions>),
        )?
        .ok_or_else(|| Error::DockerNotFound {
            name: name_or_id.to_string(),
            host: self.host.clone(),
        })
    }

    /// A container's facts, by name or id (see [`Engine::inspect`]).
    pub fn container(&self, name_or_id: &str) -> Result<DockerContainer> {
        Ok(DockerContainer::from_inspect(&self.inspect(name_or_id)?))
    }

    /// An image's facts; `None` when dockerd does not have it.
    pub fn image(&self, name_or_id: &str) -> Result<Option<ImageFacts>> {
        let i = self.call_found(
            "inspecting image",
            name_or_id,
            self.docker.inspect_image(name_or_id),
        )?;
        Ok(i.map(|i| ImageFacts {
            id: i.id.unwrap_or_default(),
            layers: i.root_fs.and_then(|r| r.layers).unwrap_or_default(),
            tags: i.repo_tags.unwrap_or_default(),
        }))
    }

    /// A network's facts; `None` when dockerd has no such network.
    pub fn network(&self, name: &str) -> Result<Option<NetworkFacts>> {
        let n = self.call_found(
            "inspecting network",
            name,
            self.docker.inspect_network(
                name,
                None::<bollard::query_parameters::InspectNetworkOptions>,
            ),
        )?;
        Ok(n.map(|n| NetworkFacts {
            name: n.name.unwrap_or_default(),
            id: n.id.unwrap_or_default(),
            driver: n.driver.unwrap_or_default(),
            subnets: n
                .ipam
                .and_then(|i| i.config)
                .into_iter()
                .flatten()
                .filter_map(|c| {
                    let (a, p) = c
                        .subnet?
                        .split_once('/')
                        .map(|(a, p)| (a.to_string(), p.to_string()))?;
                    Some((a.parse().ok()?, p.parse().ok().filter(|p| *p <= 32)?))
                })
                .collect(),
        }))
    }

    /// The id of the container holding `name`, if any.
    pub fn name_taken(&self, name: &str) -> Result<Option<String>> {
        let name = name.trim_start_matches('/');
        let opts = ListContainersOptions {
            all: true,
            filters: Some(
                [(
                    "name".to_string(),
                    vec![format!("^/{}$", regex_literal(name))],
                )]
                .into(),
            ),
            ..Default::default()
        };
        let list = self.call(
            "listing containers named",
            name,
            self.docker.list_containers(Some(opts)),
        )?;
        let want = format!("/{name}");
        Ok(list
            .into_iter()
            .find(|c| c.names.iter().flatten().any(|n| *n == want))
            .and_then(|c| c.id))
    }

    /// Creates `spec`'s container (not started); returns its id.
    ///
    /// Before API 1.44 (dockerd 20.10 speaks 1.41) create takes one network
    /// (the primary one, `HostConfig.NetworkMode`) and the MAC in
    /// `Config.MacAddress`: the other networks are connected right after,
    /// and a failure there removes the half-made container.
    pub fn create(&self, spec: &CreateSpec) -> Result<String> {
        let old_api = self.docker.client_version() < MULTI_NETWORK_API;
        let mut body = spec.body.clone();
        let mut later = Vec::new();
        if let Some(eps) = body
            .networking_config
            .as_mut()
            .and_then(|n| n.endpoints_config.as_mut())
        {
            if old_api {
                let others: Vec<String> = eps
                    .keys()
                    .filter(|k| Some(k.as_str()) != spec.primary_network())
                    .cloned()
                    .collect();
                for net in others {
                    let ep = eps.remove(&net).unwrap_or_default();
                    later.push((net, ep));
                }
            } else if let (Some(mac), Some(ep)) = (
                &spec.mac_address,
                spec.primary_network().and_then(|p| eps.get_mut(p)),
            ) {
                ep.mac_address = Some(mac.clone());
            }
            if eps.is_empty() {
                body.networking_config = None;
            }
        }
        later.sort_by(|a, b| a.0.cmp(&b.0));

        let opts = CreateContainerOptions {
            name: Some(spec.name.clone()),
            ..Default::default()
        };
        let docker = match (&spec.mac_address, old_api) {
            (Some(mac), true) => {
                // bollard's body type has no MacAddress (see CreateSpec):
                // send the same body with it added, swapped in for this one
                // request.
                let encode = |e: serde_json::Error| {
                    self.err("encoding the create body of", &spec.name, e.into())
                };
                let mut v = serde_json::to_value(&body).map_err(encode)?;
                v["MacAddress"] = serde_json::Value::String(mac.clone());
                let bytes = bytes::Bytes::from(serde_json::to_vec(&v).map_err(encode)?);
                self.docker.clone().with_request_modifier(move |req| {
                    let (parts, _) = req.into_parts();
                    let once = futures_util::stream::once(std::future::ready(bytes.clone()));
                    bollard::BollardRequest::from_parts(parts, bollard::body_stream(once))
                })
            }
            _ => self.docker.clone(),
        };
        let id = self
            .call(
                "creating container",
                &spec.name,
                docker.create_container(Some(opts), body),
            )?
            .id;
        for (net, ep) in later {
            let req = NetworkConnectRequest {
                container: id.clone(),
                endpoint_config: Some(ep),
            };
            if let Err(e) = self.call(
                "connecting the new container to network",
                &net,
                self.docker.connect_network(&net, req),
            ) {
                // Best effort: the connect's error is the one to report.
                let _ = self.remove(&id, true);
                return Err(e);
            }
        }
        Ok(id)
    }

    pub fn start(&self, id: &str) -> Result<()> {
        self.call(
            "starting container",
            id,
            self.docker
                .start_container(id, None::<StartContainerOptions>),
        )
    }

    /// Removes a container with its anonymous volumes; one that is already
    /// gone is fine.
    pub fn remove(&self, id: &str, force: bool) -> Result<()> {
        let opts = RemoveContainerOptions {
            v: true,
            force,
            link: false,
        };
        self.call_found(
            "removing container",
            id,
            self.docker.remove_container(id, Some(opts)),
        )
        .map(drop)
    }

    pub fn rename(&self, id: &str, new_name: &str) -> Result<()> {
        let opts = RenameContainerOptions {
            name: new_name.trim_start_matches('/').to_string(),
        };
        self.call(
            "renaming container",
            &format!("{id} to {new_name}"),
            self.docker.rename_container(id, opts),
        )
    }

    /// Sets the restart policy to "no" and returns the one it had, so that
    /// it can be put back: dockerd must not restart a container whose
    /// process has moved away.
    pub fn disable_restart(&self, id: &str) -> Result<RestartPolicy> {
        let i = self.inspect(id)?;
        let old = policy_of(
            i.host_config
                .as_ref()
                .and_then(|h| h.restart_policy.as_ref()),
        );
        self.set_restart(
            id,
            &RestartPolicy {
                name: "no".into(),
                maximum_retry_count: 0,
            },
        )?;
        Ok(old)
    }

    pub fn set_restart(&self, id: &str, p: &RestartPolicy) -> Result<()> {
        let body = ContainerUpdateBody {
            restart_policy: Some(policy_model(p)?),
            ..Default::default()
        };
        self.call(
            "setting the restart policy of container",
            id,
            self.docker.update_container(id, body),
        )
    }

    /// Waits until the container is no longer running (or is gone),
    /// asking every 50 ms, up to `timeout`.
    pub fn wait_not_running(&self, id: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let i = self.call_found(
                "inspecting container",
                id,
                self.docker
                    .inspect_container(id, None::<InspectContainerOptions>),
            )?;
            let running = i
                .and_then(|i| i.state)
                .and_then(|s| s.running)
                .unwrap_or(false);
            if !running {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::DockerTimeout {
                    id: id.to_string(),
                    host: self.host.clone(),
                    waited: timeout,
                });
            }
            std::thread::sleep(POLL);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WEB: &str = include_str!("../../tests/fixtures/docker-20.10-inspect.json");

    #[test]
    fn facts_of_a_dockerd_20_10_inspect() {
        let i: ContainerInspectResponse = serde_json::from_str(WEB).unwrap();
        let c = DockerContainer::from_inspect(&i);
        assert_eq!(c.name, "web");
        assert!(c.id.starts_with("91eb9b007949"));
        assert!(c.running && !c.paused && c.pid > 0);
        assert_eq!(c.runtime, "runc");
        assert!(c.image_id.starts_with("sha256:"));
        assert_eq!(c.image_name, "busybox:ferry");
        assert_eq!(c.storage_driver, "overlay2");
        assert!(c.upper_dir.unwrap().ends_with("diff"));
        assert!(c.sandbox_key.unwrap().starts_with("/tmp/dk/exec/netns/"));
        assert_eq!(
            c.networks,
            vec![Attachment {
                network: "fnet".into(),
                ip: Some(Ipv4Addr::new(172, 29, 0, 10)),
                prefix: Some(24),
                mac: Some("02:42:ac:1d:00:0a".into()),
                fixed: true,
                builtin: false,
            }]
        );
        // fvol is named; the bind of /tmp/dk is no volume.
        assert_eq!(c.volumes, vec!["fvol".to_string()]);
    }

    #[test]
    fn only_unix_hosts() {
        assert_eq!(
            socket_of(None, None).unwrap(),
            (DEFAULT_HOST.into(), PathBuf::from("/var/run/docker.sock"))
        );
        assert_eq!(
            socket_of(None, Some("unix:///run/d.sock")).unwrap().1,
            Path::new("/run/d.sock")
        );
        // The flag wins over the environment; an empty DOCKER_HOST is unset.
        assert_eq!(
            socket_of(Some("unix:///a.sock"), Some("unix:///b.sock"))
                .unwrap()
                .1,
            Path::new("/a.sock")
        );
        assert_eq!(socket_of(None, Some("")).unwrap().0, DEFAULT_HOST);
        assert_eq!(socket_of(Some("unix://"), None).unwrap().0, DEFAULT_HOST);
        for bad in [
            "tcp://1.2.3.4:2375",
            "ssh://me@host",
            "fd://",
            "/run/d.sock",
        ] {
            let e = socket_of(Some(bad), None).unwrap_err();
            assert!(
                matches!(e, Error::DockerHost { .. }) && e.to_string().contains(bad),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn restart_policies_both_ways() {
        let p = RestartPolicy {
            name: "on-failure".into(),
            maximum_retry_count: 3,
        };
        assert_eq!(policy_of(Some(&policy_model(&p).unwrap())), p);
        assert_eq!(policy_of(None).name, "no");
        let empty: bollard::models::RestartPolicy =
            serde_json::from_str(r#"{"Name": "", "MaximumRetryCount": 0}"#).unwrap();
        assert_eq!(policy_of(Some(&empty)).name, "no");
        let bad = RestartPolicy {
            name: "sometimes".into(),
            maximum_retry_count: 0,
        };
        assert!(policy_model(&bad)
            .unwrap_err()
            .to_string()
            .contains("sometimes"));
    }

    #[test]
    fn name_filters_match_the_name_only() {
        assert_eq!(regex_literal("web.1"), r"web\.1");
        assert_eq!(regex_literal("a_b-c"), "a_b-c");
    }
}
