//! What the source tells the destination about a container before
//! anything freezes (the offer its pre-flight judges), and the
//! connection it says it on.

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use super::docker::DockerSource;
use super::Plan;
use crate::checkpoint::private_dir;
use crate::error::{Error, Result};
use crate::migrate::channel::{Channel, Security};
use crate::migrate::preflight::{self, LowerLayer, Needs};
use crate::migrate::wire;
use crate::migrate::{Mode, Progress};
use crate::overlay::{layer_digest, Overlay};
use crate::runtime::Container;

fn du(p: &Path) -> u64 {
    let mut total = 0;
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => total += du(&e.path()),
                Ok(_) => total += e.metadata().map(|m| m.len()).unwrap_or(0),
                Err(_) => {}
            }
        }
    }
    total
}

/// A task's resident set (VmRSS), 0 when it is gone.
fn rss(pid: nix::unistd::Pid) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// What the destination is asked to take, and how it will move.
pub(super) struct Offer {
    pub needs: Needs,
    /// The container's config.json.
    pub config: String,
    pub cpuinfo: Vec<u8>,
    pub mode: Mode,
    pub mode_reason: String,
    pub overlay: Option<Overlay>,
}

/// Describes container `c` for the destination's pre-flight.
pub(super) fn offer(
    c: &Container,
    work: &Path,
    plan: &Plan<'_>,
    docker: Option<&DockerSource<'_>>,
) -> Result<Offer> {
    let (mode, criu, progress) = (plan.mode, plan.criu, plan.progress);
    let id = c.state.id.clone();
    let cpu_dir = work.join("cpu");
    private_dir(&cpu_dir)?;
    let cpuinfo = preflight::cpuinfo(criu, &cpu_dir)?;
    // The memory cgroup's usage; where it cannot be read (no memory
    // controller here), the tasks' resident sets.
    let memory = c
        .state
        .cgroup
        .stats()
        .ok()
        .map(|s| s.memory.memory.usage)
        .filter(|u| *u > 0)
        .unwrap_or_else(|| c.pids().unwrap_or_default().into_iter().map(rss).sum());
    let overlay = Overlay::of(&c.state.rootfs)?;
    // Only the writable layer moves; the lower layers must be there already.
    let rootfs_size = du(overlay.as_ref().map_or(&c.state.rootfs, |o| &o.upper));
    let lower_layers = match &overlay {
        // dockerd's layers are content-addressed: the image id and its
        // layers' digests are compared instead (migrate::docker::judge).
        Some(_) if docker.is_some() => Vec::new(),
        Some(o) => o
            .lowers
            .iter()
            .map(|l| {
                Ok(LowerLayer {
                    path: l.clone(),
                    digest: layer_digest(l)?,
                })
            })
            .collect::<Result<Vec<_>>>()?,
        None => Vec::new(),
    };
    let lazy_here = criu.features()?.lazy_pages;
    let (mode, mode_reason) = mode.resolve(memory, lazy_here);
    let postcopy = mode == Mode::Postcopy;
    progress(Progress::Phase(&format!("mode {mode} ({mode_reason})")));
    let needs = Needs {
        container_id: id.clone(),
        memory,
        disk: memory + rootfs_size,
        lower_layers,
        arch: std::env::consts::ARCH.to_string(),
        kernel: nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default(),
        postcopy,
        precopy_uffd: !postcopy && plan.precopy_pages.offers_uffd(memory, lazy_here),
        terminal: false,
        address: c.state.net.as_ref().map(|n| n.address.addr),
        docker: docker.map(|d| Box::new(d.needs.clone())),
    };
    let config = std::fs::read_to_string(&c.state.config).map_err(|source| Error::Io {
        op: "reading",
        path: c.state.config.clone(),
        source,
    })?;
    let needs = Needs {
        terminal: crate::runtime::spec::config_has_terminal(&config),
        ..needs
    };
    Ok(Offer {
        needs,
        config,
        cpuinfo,
        mode,
        mode_reason,
        overlay,
    })
}

/// A channel to the agent at `to` (authenticated, sealed unless both
/// sides asked for plaintext).
pub(super) fn connect(to: SocketAddr, sec: &Security) -> Result<Channel> {
    let peer = to.to_string();
    let s =
        TcpStream::connect_timeout(&to, Duration::from_secs(10)).map_err(|source| Error::Peer {
            peer: peer.clone(),
            op: "connecting",
            source,
        })?;
    // Request/answer messages: never wait for a delayed ACK.
    let _ = s.set_nodelay(true);
    wire::keepalive(&s)?;
    wire::deadline(&s, Some(wire::HANDSHAKE_DEADLINE))?;
    Channel::client(s, sec, &peer)
}
