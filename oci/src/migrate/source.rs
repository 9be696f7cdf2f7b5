//! The sending side of a migration (`ferry migrate`).
//!
//! Order of events, and why: everything that can be checked is checked
//! before the container is frozen (the destination's pre-flight verdict);
//! the container is dumped with leave_stopped, its memory going straight to
//! the destination's page server; its images and root filesystem follow on
//! the control connection; the source container dies only once the
//! destination reports it running. Any failure before that resumes it.

use std::net::{SocketAddr, TcpStream};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::time::{Duration, Instant};

use criu_rpc::{Criu, PageServerAddr};
use nix::sys::signal::{kill, Signal};
use serde::Serialize;

use super::auth::{self, Key};
use super::preflight::{self, Needs};
use super::protocol::{Hello, Reply, Step};
use super::tarball;
use super::wire::{self, StreamWriter};
use crate::checkpoint::{private_dir, CheckpointOptions};
use crate::error::{Error, Result};
use crate::runtime::{Container, Status};

/// What a migration cost.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub id: String,
    pub to: String,
    pub mode: &'static str,
    /// From freezing the source to the destination reporting it running.
    pub downtime_ms: f64,
    pub total_ms: f64,
    pub preflight_ms: f64,
    pub dump_ms: f64,
    pub transfer_ms: f64,
    pub restore_ms: f64,
    pub images_bytes: u64,
    pub rootfs_bytes: u64,
    /// Memory pages CRIU sent to the destination's page server.
    pub pages_bytes: u64,
    pub destination_pid: i32,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

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

/// A reply, unless it reports the destination's failure.
fn expect(r: Reply) -> Result<Reply> {
    match r {
        Reply::Failed { error } => Err(Error::DestinationFailed { error }),
        r => Ok(r),
    }
}

/// Thaws a container left frozen and stopped by a leave_stopped dump.
pub fn resume(root: &Path, id: &str) -> Result<()> {
    let c = Container::load(root, id)?;
    c.state.cgroup.thaw()?;
    for p in c.pids()? {
        let _ = kill(p, Signal::SIGCONT);
    }
    Ok(())
}

/// Moves container `id` of `root` to the agent at `to`.
pub fn migrate(
    root: &Path,
    id: &str,
    to: SocketAddr,
    key: &Key,
    criu: &Criu,
    progress: &mut dyn FnMut(&str),
) -> Result<Report> {
    let t0 = Instant::now();
    let c = Container::load(root, id)?;
    c.require(&[Status::Running], "running")?;
    let work = root.join("outgoing").join(id);
    let _ = std::fs::remove_dir_all(&work);
    private_dir(&work)?;
    let result = send(root, c, &work, to, key, criu, progress, t0);
    let _ = std::fs::remove_dir_all(&work);
    result
}

#[allow(clippy::too_many_arguments)]
fn send(
    root: &Path,
    c: Container,
    work: &Path,
    to: SocketAddr,
    key: &Key,
    criu: &Criu,
    progress: &mut dyn FnMut(&str),
    t0: Instant,
) -> Result<Report> {
    let id = c.state.id.clone();
    progress("pre-flight");
    let cpu_dir = work.join("cpu");
    private_dir(&cpu_dir)?;
    let cpuinfo = preflight::cpuinfo(criu, &cpu_dir)?;
    let memory = c
        .state
        .cgroup
        .stats()
        .ok()
        .map(|s| s.memory.memory.usage)
        .unwrap_or(0);
    let rootfs_size = du(&c.state.rootfs);
    let needs = Needs {
        container_id: id.clone(),
        memory,
        disk: memory + rootfs_size,
        lower_layers: Vec::new(),
        arch: std::env::consts::ARCH.to_string(),
        postcopy: false,
    };
    let config = std::fs::read_to_string(&c.state.config).map_err(|source| Error::Io {
        op: "reading",
        path: c.state.config.clone(),
        source,
    })?;
    let peer = to.to_string();
    let connect = || -> Result<TcpStream> {
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(10)).map_err(|source| {
            Error::Peer {
                peer: peer.clone(),
                op: "connecting",
                source,
            }
        })?;
        auth::client(&mut s, key, &peer)?;
        Ok(s)
    };
    let mut ctl = connect()?;
    wire::send(
        &mut ctl,
        &Hello::Offer {
            needs,
            config,
            cpuinfo,
        },
    )?;
    let migration = match wire::recv::<_, Reply>(&mut ctl)? {
        Reply::Accepted { migration } => migration,
        Reply::Refused { problems } => return Err(Error::Refused { problems }),
        _ => {
            return Err(Error::Protocol {
                what: "an unexpected answer to the offer",
            })
        }
    };
    let mut pages = connect()?;
    wire::send(&mut pages, &Hello::Pages { migration })?;
    match expect(wire::recv(&mut ctl)?)? {
        Reply::PagesReady => {}
        _ => {
            return Err(Error::Protocol {
                what: "no page server on the destination",
            })
        }
    }
    let preflight_ms = ms(t0.elapsed());

    progress("freeze and dump");
    let images = work.join("images");
    let frozen_at = Instant::now();
    let rootfs = c.state.rootfs.clone();
    let opts = CheckpointOptions {
        image_path: images.clone(),
        leave_stopped: true,
        tcp_established: true,
        file_locks: true,
        page_server: Some(PageServerAddr::Socket(OwnedFd::from(pages))),
        ..Default::default()
    };
    // A failed dump leaves the container running (CRIU resumes it).
    if let Err(e) = c.checkpoint(criu, opts, &mut |_| {}) {
        let _ = wire::send(
            &mut ctl,
            &Step::Abort {
                reason: crate::error::chain(&e),
            },
        );
        return Err(e);
    }
    let dump_ms = ms(frozen_at.elapsed());
    let pages_bytes = criu_rpc::stats::read_dump_stats(&images)
        .ok()
        .flatten()
        .map(|s| s.pages_written * 4096)
        .unwrap_or(0);

    // From here the source is frozen: it runs again unless the destination
    // does.
    let moved = (|| -> Result<(u64, u64, i32, f64, f64)> {
        progress("transfer");
        let t = Instant::now();
        wire::send(&mut ctl, &Step::Images)?;
        let mut w = StreamWriter::new(&mut ctl);
        tarball::pack(&images, &mut w, |_| false)?;
        let images_bytes = w.finish()?;
        expect(wire::recv(&mut ctl)?)?;
        wire::send(&mut ctl, &Step::Rootfs)?;
        let mut w = StreamWriter::new(&mut ctl);
        tarball::pack(&rootfs, &mut w, |_| false)?;
        let rootfs_bytes = w.finish()?;
        expect(wire::recv(&mut ctl)?)?;
        let transfer_ms = ms(t.elapsed());
        progress("restore");
        wire::send(&mut ctl, &Step::Restore)?;
        match wire::recv::<_, Reply>(&mut ctl).map_err(|e| match e {
            Error::Wire(source) => Error::Peer {
                peer: to.to_string(),
                op: "waiting for the restore on",
                source,
            },
            e => e,
        })? {
            Reply::Restored { pid, restore_ms } => {
                Ok((images_bytes, rootfs_bytes, pid, restore_ms, transfer_ms))
            }
            Reply::Failed { error } => Err(Error::DestinationFailed { error }),
            _ => Err(Error::Protocol {
                what: "an unexpected answer to the restore",
            }),
        }
    })();
    match moved {
        Ok((images_bytes, rootfs_bytes, pid, restore_ms, transfer_ms)) => {
            let downtime_ms = ms(frozen_at.elapsed());
            progress("stop the source");
            Container::load(root, &id)?.delete(true)?;
            Ok(Report {
                id: id.clone(),
                to: to.to_string(),
                mode: "precopy",
                downtime_ms,
                total_ms: ms(t0.elapsed()),
                preflight_ms,
                dump_ms,
                transfer_ms,
                restore_ms,
                images_bytes,
                rootfs_bytes,
                pages_bytes,
                destination_pid: pid,
            })
        }
        Err(e) => {
            progress("resume the source");
            resume(root, &id)?;
            Err(e)
        }
    }
}
