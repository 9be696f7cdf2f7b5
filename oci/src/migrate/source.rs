//! The sending side of a migration (`ferry migrate`).
//!
//! Order of events, and why: everything that can be checked is checked
//! before the container is frozen (the destination's pre-flight verdict);
//! the container is dumped with leave_stopped, its memory going straight to
//! the destination's page server; its images and root filesystem follow on
//! the control connection; the source container dies only once the
//! destination reports it running. Any failure before that resumes it.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

use criu_rpc::lazy::LazyStats;
use criu_rpc::stats::{DumpStats, RestoreStats};
use criu_rpc::{Criu, Notify, PageServerAddr};
use nix::sys::signal::{kill, Signal};
use serde::Serialize;

use super::channel::{Channel, Security};
use super::docker::DockerNeeds;
use super::interrupt::Interrupt;
use super::preflight::{self, LowerLayer, Needs};
use super::protocol::Decision;
use super::protocol::{Hello, Reply, Step};
use super::record::{MoveRecord, Phase};
use super::tarball;
use super::wire::{self, StreamWriter};
use super::{Mode, Progress};
use crate::checkpoint::Checkpointed;
use crate::checkpoint::{private_dir, CheckpointOptions};
use crate::docker::Engine;
use crate::error::{Error, Result};
use crate::overlay::{self, layer_digest, Overlay};
use crate::runtime::{Container, Status};

/// What a migration cost.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub id: String,
    pub to: String,
    /// How the channel was secured ("encrypted (Noise ...)" or "PLAINTEXT
    /// ...").
    pub channel: String,
    pub mode: Mode,
    /// Why this mode (asked for, or what `auto` saw).
    pub mode_reason: String,
    /// From freezing the source to the destination reporting it running.
    pub downtime_ms: f64,
    pub total_ms: f64,
    pub preflight_ms: f64,
    pub dump_ms: f64,
    pub transfer_ms: f64,
    pub restore_ms: f64,
    pub images_bytes: u64,
    /// The root filesystem's bytes: sent before the freeze plus what
    /// changed, sent while frozen (`rootfs_frozen_bytes`).
    pub rootfs_bytes: u64,
    pub rootfs_frozen_bytes: u64,
    /// Sending the root filesystem ahead, before the freeze (in
    /// `preflight_ms`).
    pub rootfs_ahead_ms: f64,
    /// Memory pages CRIU sent to the destination's page server.
    pub pages_bytes: u64,
    pub destination_pid: i32,
    /// Post-copy: from the restore until the last page was in.
    pub lazy_ms: Option<f64>,
    /// Post-copy: what the destination's lazy-pages daemon did.
    pub lazy: Option<LazyStats>,
    /// CRIU's stats-dump (source) and stats-restore (destination).
    pub criu_dump: Option<DumpStats>,
    pub criu_restore: Option<RestoreStats>,
    /// Inside `dump_ms`: from the freeze's start until CRIU's pre-dump
    /// notify (Ferry's look-ups and CRIU's start, before CRIU froze
    /// anything), so that a breakdown can tell it from CRIU's own work.
    pub dump_prep_ms: Option<f64>,
    /// From the restore request until the destination's answer: its
    /// `restore_ms` plus what surrounds that there (the page server's end,
    /// a post-copy daemon's set-up) and the round trip.
    pub restore_wait_ms: Option<f64>,
    /// The commit's round trip, inside the downtime: the destination
    /// resumes its copy before it answers.
    pub commit_ms: Option<f64>,
    /// A container of a dockerd: what it became on both sides.
    pub docker: Option<DockerMoved>,
}

/// What a move of a dockerd's container did with it.
#[derive(Debug, Clone, Serialize)]
pub struct DockerMoved {
    pub name: String,
    pub source_id: String,
    /// The id the destination's dockerd gave it.
    pub destination_id: String,
    /// What the source's copy became: `renamed to NAME` or `removed`.
    pub source: String,
    /// What did not survive the move (pre-flight said so first).
    pub notes: Vec<String>,
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

/// A reply, unless it reports the destination's failure.
fn expect(r: Reply) -> Result<Reply> {
    match r {
        Reply::Failed { failure } => Err(Error::DestinationFailed {
            failure: Box::new(failure),
        }),
        r => Ok(r),
    }
}

/// `failed`, once the source resumed (or with why it could not).
fn resumed(root: &Path, id: &str, failed: Error) -> Error {
    match resume(root, id) {
        Ok(()) => failed,
        Err(r) => Error::ResumeFailed {
            failed: Box::new(failed),
            resume: Box::new(r),
        },
    }
}

/// Thaws a container left frozen and stopped by a leave_stopped dump, its
/// network unlocked first (CRIU keeps the lock after such a dump).
pub fn resume(root: &Path, id: &str) -> Result<()> {
    let c = Container::load(root, id)?;
    let pid = nix::unistd::Pid::from_raw(c.state.pid);
    // CRIU's lock on a netns it dumped, or Ferry's on its own (external) one.
    let netns = match &c.state.net {
        Some(n) => Some(n.netns.clone()),
        None => crate::network::criu_lock::netns_of(pid),
    };
    let pids = c.pids()?;
    let unlock = netns
        .map_or(Ok(false), |ns| crate::network::criu_lock::remove(&ns))
        .and_then(|_| crate::network::criu_lock::repair_off(&pids));
    c.state.cgroup.thaw()?;
    for p in pids {
        let _ = kill(p, Signal::SIGCONT);
    }
    unlock.map(drop)
}

/// What the destination is asked to take, and how it will move.
struct Offer {
    needs: Needs,
    /// The container's config.json.
    config: String,
    cpuinfo: Vec<u8>,
    mode: Mode,
    mode_reason: String,
    overlay: Option<Overlay>,
}

/// Describes container `c` for the destination's pre-flight.
fn offer(
    c: &Container,
    work: &Path,
    mode: Mode,
    criu: &Criu,
    docker: Option<&DockerSource<'_>>,
    progress: &(dyn Fn(Progress<'_>) + Sync),
) -> Result<Offer> {
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
fn connect(to: SocketAddr, sec: &Security) -> Result<Channel> {
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

/// Where and how a container moves: what `ferry migrate` was told.
#[derive(Clone, Copy)]
pub struct Plan<'a> {
    /// The destination agent.
    pub to: SocketAddr,
    pub security: &'a Security,
    pub mode: Mode,
    pub criu: &'a Criu,
    pub progress: &'a (dyn Fn(Progress<'_>) + Sync),
    /// Stops the move from outside (a signal), resuming the source.
    pub interrupt: &'a Interrupt,
}

/// What `ferry migrate --check` learnt: the destination would take the
/// container, in this mode.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    pub id: String,
    pub to: String,
    pub channel: String,
    pub mode: Mode,
    pub mode_reason: String,
    /// What would not survive the move.
    pub notes: Vec<String>,
}

/// Asks the agent at `to` whether it would take container `id` of `root`
/// (its whole pre-flight check), and moves nothing: the container runs on,
/// never frozen. A refusal is [`Error::Refused`], with every problem.
pub fn check(root: &Path, id: &str, plan: &Plan<'_>) -> Result<CheckReport> {
    with_outgoing(root, &root.join(OUTGOING), id, |c, work| {
        ask(c, work, plan, None)
    })
}

/// [`check`] for a container of the dockerd `engine` talks to, named as
/// docker names it.
pub fn check_docker(engine: &Engine, name: &str, plan: &Plan<'_>) -> Result<CheckReport> {
    let d = DockerSource::find(engine, name)?;
    d.say_notes(plan.progress);
    d.with_outgoing(|c, work| ask(c, work, plan, Some(&d)))
}

fn ask(
    c: Container,
    work: &Path,
    plan: &Plan<'_>,
    docker: Option<&DockerSource<'_>>,
) -> Result<CheckReport> {
    let Plan {
        to,
        security: sec,
        mode,
        criu,
        progress,
        ..
    } = *plan;
    progress(Progress::Phase("pre-flight"));
    let o = offer(&c, work, mode, criu, docker, progress)?;
    let mut ctl = connect(to, sec)?;
    wire::send(
        &mut ctl,
        &Hello::Check {
            needs: o.needs,
            cpuinfo: o.cpuinfo,
        },
    )?;
    match wire::recv::<_, Reply>(&mut ctl)? {
        Reply::Fits => Ok(CheckReport {
            id: c.state.id.clone(),
            to: to.to_string(),
            channel: sec.describe(),
            mode: o.mode,
            mode_reason: o.mode_reason,
            notes: docker.map(DockerSource::notes).unwrap_or_default(),
        }),
        Reply::Refused { problems } => Err(Error::Refused { problems }),
        Reply::Failed { failure } => Err(Error::DestinationFailed {
            failure: Box::new(failure),
        }),
        _ => Err(Error::Protocol {
            what: "an unexpected answer to the check",
        }),
    }
}

/// Where a Ferry state root keeps the scratch dirs of its moves.
const OUTGOING: &str = super::record::OUTGOING;
/// The same under dockerd's runtime root, out of the container id space.
const DOCKER_OUTGOING: &str = super::record::DOCKER_OUTGOING;

/// Runs `f` on running container `id` of `root` with a fresh scratch dir
/// of its own (`scratch/ID`), removed afterwards whatever happened (with
/// `scratch` once empty).
fn with_outgoing<T>(
    root: &Path,
    scratch: &Path,
    id: &str,
    f: impl FnOnce(Container, &Path) -> Result<T>,
) -> Result<T> {
    let c = Container::load(root, id)?;
    c.require(&[Status::Running], "running")?;
    let work = scratch.join(id);
    let _ = std::fs::remove_dir_all(&work);
    private_dir(&work)?;
    let result = f(c, &work);
    // A move whose outcome is unknown keeps its record (committed) for
    // `ferry resume --force`.
    if !matches!(result, Err(Error::OutcomeUnknown { .. })) {
        let _ = std::fs::remove_dir_all(&work);
        let _ = std::fs::remove_dir(scratch);
    }
    result
}

/// Moves container `id` of `root` to the agent at `to`.
pub fn migrate(root: &Path, id: &str, plan: &Plan<'_>) -> Result<Report> {
    let t0 = Instant::now();
    with_outgoing(root, &root.join(OUTGOING), id, |c, work| {
        send(root, c, work, plan, None, t0)
    })
}

/// A container of a dockerd, about to move.
pub struct DockerSource<'a> {
    engine: &'a Engine,
    /// dockerd's runtime root, where Ferry keeps the container's state.
    root: std::path::PathBuf,
    needs: DockerNeeds,
    /// Remove the source's exited copy (else it is renamed).
    pub rm_source: bool,
}

impl<'a> DockerSource<'a> {
    /// Container `name` (or id) of `engine`'s dockerd, which must be
    /// running with Ferry, on overlay2.
    pub fn find(engine: &'a Engine, name: &str) -> Result<DockerSource<'a>> {
        let container = engine.container(name)?;
        if !container.running || container.paused {
            return Err(Error::DockerNotMovable {
                name: name.to_string(),
                why: format!(
                    "it is {}: only a running container moves (docker start / docker unpause it)",
                    if container.paused {
                        "paused"
                    } else {
                        "not running"
                    }
                ),
            });
        }
        let root = engine.runtime_root()?;
        if Container::load(&root, &container.id).is_err() {
            return Err(Error::DockerNotMovable {
                name: name.to_string(),
                why: format!(
                    "dockerd runs it with runtime {:?}, not Ferry (no state in {}): run it with `docker run --runtime ferry`",
                    container.runtime,
                    root.display()
                ),
            });
        }
        if container.upper_dir.is_none() {
            return Err(Error::DockerNotMovable {
                name: name.to_string(),
                why: format!(
                    "its storage driver is {}: Ferry moves the writable layer of overlay2 containers only",
                    container.storage_driver
                ),
            });
        }
        let image = engine
            .image(&container.image_id)?
            .ok_or_else(|| Error::DockerNotMovable {
                name: name.to_string(),
                why: format!("its image {} is gone from dockerd", container.image_id),
            })?;

        let needs = DockerNeeds::new(container, image);
        Ok(DockerSource {
            engine,
            root,
            needs,
            rm_source: false,
        })
    }

    /// What will not survive the move (migrate::docker::notes).
    pub fn notes(&self) -> Vec<String> {
        super::docker::notes(&self.needs)
    }

    /// Says [`DockerSource::notes`] as progress, before anything freezes.
    fn say_notes(&self, progress: &(dyn Fn(Progress<'_>) + Sync)) {
        for n in self.notes() {
            progress(Progress::Phase(&format!("note: {n}")));
        }
    }

    /// [`with_outgoing`] for this container: its scratch dir under
    /// dockerd's runtime root, out of the container id space.
    pub(super) fn with_outgoing<T>(
        &self,
        f: impl FnOnce(Container, &Path) -> Result<T>,
    ) -> Result<T> {
        with_outgoing(
            &self.root,
            &self.root.join(DOCKER_OUTGOING),
            &self.needs.container.id,
            f,
        )
    }

    /// The container as the offer describes it.
    pub fn needs(&self) -> &DockerNeeds {
        &self.needs
    }

    /// dockerd's runtime root, where Ferry keeps the container's state.
    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn engine(&self) -> &Engine {
        self.engine
    }

    /// Kills the container (frozen and stopped since a leave-stopped
    /// dump) and waits until dockerd has seen it exit.
    pub fn kill(&self) -> Result<()> {
        {
            // Dropped (its lock with it) before waiting: dockerd's shim
            // runs `ferry delete` on the exit, which takes that lock.
            let c = Container::load(&self.root, &self.needs.container.id)?;
            for p in c.pids()? {
                let _ = kill(p, Signal::SIGKILL);
            }
            c.state.cgroup.thaw()?;
        }
        self.engine
            .wait_not_running(&self.needs.container.id, Duration::from_secs(20))
    }

    /// Ends the source's copy once the destination runs it: killed (it is
    /// frozen and stopped since the dump), so that dockerd sees it exit,
    /// then renamed out of the way of a move back, or removed.
    fn end(&self, to: &str) -> Result<String> {
        self.kill()?;
        // The move is done: a failed rename or removal is reported, not
        // turned into a failed move.
        let id = &self.needs.container.id;
        if self.rm_source {
            return Ok(match self.engine.remove(id, true) {
                Ok(()) => "removed".into(),
                Err(e) => format!("exited; removing it failed: {}", crate::error::chain(&e)),
            });
        }
        let mut last = String::new();
        for n in 0..10 {
            let name = super::docker::moved_name(&self.needs.container.name, to, n);
            match self.engine.rename(id, &name) {
                Ok(()) => return Ok(format!("exited, renamed to {name}")),
                Err(e) => last = crate::error::chain(&e),
            }
        }
        Ok(format!(
            "exited, still named {} (renaming it failed: {last})",
            self.needs.container.name
        ))
    }
}

/// Moves the container of `d` to the agent at `to`: the destination's
/// dockerd runs it under the same name, the source's dockerd shows it
/// exited (renamed `NAME.moved-to-...`) or removed. Its restart policy is
/// off while it moves, so that dockerd never starts the source's copy
/// again behind the destination's; a failed move puts it back.
pub fn migrate_docker(d: &DockerSource<'_>, plan: &Plan<'_>) -> Result<Report> {
    let t0 = Instant::now();
    d.say_notes(plan.progress);
    let id = d.needs.container.id.clone();
    let policy = d.engine.disable_restart(&id)?;
    let moved = d.with_outgoing(|c, work| send(&d.root, c, work, plan, Some(d), t0));
    if moved.is_err() {
        if let Err(e) = d.engine.set_restart(&id, &policy) {
            tracing::warn!(id, error = %crate::error::chain(&e), "putting the source's restart policy back");
        }
    }
    moved
}

/// The move itself; an interrupted one says so around its failure.
fn send(
    root: &Path,
    c: Container,
    work: &Path,
    plan: &Plan<'_>,
    docker: Option<&DockerSource<'_>>,
    t0: Instant,
) -> Result<Report> {
    let id = c.state.id.clone();
    send_inner(root, c, work, plan, docker, t0).map_err(|e| match plan.interrupt.fired() {
        Some(why) => Error::Interrupted {
            id,
            why,
            source: Box::new(e),
        },
        None => e,
    })
}

fn send_inner(
    root: &Path,
    c: Container,
    work: &Path,
    plan: &Plan<'_>,
    docker: Option<&DockerSource<'_>>,
    t0: Instant,
) -> Result<Report> {
    let Plan {
        to,
        security: sec,
        mode,
        criu,
        progress,
        interrupt,
    } = *plan;
    let id = c.state.id.clone();
    let mut record = MoveRecord::write(work, &id, to, Phase::Preflight)?;
    progress(Progress::Phase("pre-flight"));
    let Offer {
        needs,
        config,
        cpuinfo,
        mode,
        mode_reason,
        overlay,
    } = offer(&c, work, mode, criu, docker, progress)?;
    let (memory, postcopy) = (needs.memory, needs.postcopy);
    let mut ctl = connect(to, sec)?;
    interrupt.watch(ctl.tcp()?);
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
        Reply::Failed { failure } => {
            return Err(Error::DestinationFailed {
                failure: Box::new(failure),
            })
        }
        _ => {
            return Err(Error::Protocol {
                what: "an unexpected answer to the offer",
            })
        }
    };
    let mut pages = connect(to, sec)?;
    interrupt.watch(pages.tcp()?);
    wire::send(
        &mut pages,
        &Hello::Pages {
            migration: migration.clone(),
        },
    )?;
    // CRIU writes the pages to a socket of its own, which the relay seals
    // onto the page channel.
    let (pages, relay) = pages.relay()?;
    match expect(wire::recv(&mut ctl)?)? {
        Reply::PagesReady => {}
        _ => {
            return Err(Error::Protocol {
                what: "no page server on the destination",
            })
        }
    }
    // The root filesystem's bulk goes while the container still runs;
    // only what it changes meanwhile goes while it is frozen.
    let ahead = rootfs_ahead(&mut ctl, &c.state.rootfs, overlay.as_ref(), progress)?;
    let images = work.join("images");
    // Kept to cut the page connection under a post-copy dump that must end
    // early (CRIU's page server then returns and leaves the tasks stopped).
    let pages_cut = relay.cutter()?;
    let empty_ns = match docker {
        Some(_) => super::docker::empty_ns(&c.spec()?),
        None => None,
    };
    let opts = CheckpointOptions {
        leave_stopped: true,
        lazy_pages: postcopy,
        page_server: Some(PageServerAddr::Socket(pages)),
        lock_joined_netns: docker.is_some(),
        empty_ns,
        ..super::CRIU_FLAGS.dump(images.clone())
    };
    // CRIU's request, its side files, the look at the network namespace
    // and criu swrk started: all before the freeze, outside the downtime.
    let prepared = match c.prepare_checkpoint(criu, opts) {
        Ok(p) => p,
        Err(e) => {
            let _ = wire::send(
                &mut ctl,
                &Step::Abort {
                    reason: crate::error::chain(&e),
                },
            );
            return Err(e);
        }
    };
    let preflight_ms = ms(t0.elapsed());

    record.set_phase(Phase::Frozen)?;
    progress(Progress::Phase("freeze and dump"));
    let frozen_at = Instant::now();
    // When CRIU said it starts the dump (its pre-dump notify).
    let pre_dump_at = std::sync::OnceLock::<Instant>::new();
    std::thread::scope(|scope| {
        // Pages go from CRIU straight into the socket: what the destination
        // has acknowledged (TCP_INFO) is how far they got. Polled until this
        // closure returns, which drops `_stop_meter`.
        let (_stop_meter, stopped) = std::sync::mpsc::channel::<()>();
        let pages_seen = relay.tcp();
        scope.spawn(move || {
            // What the authentication exchanged before CRIU got the socket.
            let base = wire::bytes_acked(pages_seen).unwrap_or(0);
            let mut last = 0;
            while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(METER_EVERY) {
                match wire::bytes_acked(pages_seen).map(|b| b.saturating_sub(base)) {
                    Some(sent) if sent != last => {
                        last = sent;
                        progress(Progress::Pages { sent, of: memory });
                    }
                    _ => {}
                }
            }
        });
        let (tx, rx) = std::sync::mpsc::channel::<DumpEvent>();
        let done = tx.clone();
        // The dump runs beside: with lazy pages it only returns once the
        // destination has every page, long after the restore.
        let pre_dump_at = &pre_dump_at;
        let dump = scope.spawn(move || {
            let r = prepared
                .run(
                    &mut |n| match n {
                        Notify::PreDump => {
                            let _ = pre_dump_at.set(Instant::now());
                        }
                        Notify::StatusReady => {
                            let _ = tx.send(DumpEvent::Ready);
                        }
                        _ => {}
                    },
                    |_| (),
                )
                .map(|(done, ())| done);
            let _ = done.send(DumpEvent::Done(r.is_ok()));
            r
        });
        let abort = |ctl: &mut Channel, e: Error| -> Result<Report> {
            // The page channel broke under CRIU (tampered with, silent):
            // that is why the dump failed.
            let e = relay.cause().unwrap_or(e);
            let _ = wire::send(
                ctl,
                &Step::Abort {
                    reason: crate::error::chain(&e),
                },
            );
            Err(destination_said(ctl).unwrap_or(e))
        };
        // A failed dump leaves the container running (CRIU resumes it).
        match rx.recv() {
            Ok(DumpEvent::Ready) | Ok(DumpEvent::Done(true)) => {}
            _ => {
                let e = match dump.join() {
                    Ok(Err(e)) => e,
                    _ => Error::Protocol {
                        what: "the dump thread ended without a result",
                    },
                };
                return abort(&mut ctl, e);
            }
        }
        let dump_ms = ms(frozen_at.elapsed());
        let dump_prep_ms = pre_dump_at.get().map(|t| ms(t.duration_since(frozen_at)));
        let moved = move_state(&mut ctl, &images, &ahead, overlay.as_ref(), to, progress);
        let finish = |dump: std::thread::ScopedJoinHandle<'_, Result<Checkpointed>>| {
            dump.join().unwrap_or(Err(Error::Protocol {
                what: "the dump thread panicked",
            }))
        };
        let moved = match moved {
            Ok(m) => m,
            Err(e) => {
                // A stream cut short by the destination: its reply says why.
                let e = match e {
                    Error::DestinationFailed { .. } => e,
                    e => destination_said(&mut ctl).unwrap_or(e),
                };
                progress(Progress::Phase("resume the source"));
                pages_cut.cut();
                let _ = finish(dump);
                return Err(resumed(root, &id, e));
            }
        };
        // The point of no return. Until the commit, the destination's copy
        // is stopped and dies without it, so the source may resume; after
        // it, only the destination's answer (or its decision, asked for)
        // says whether the source may.
        let committing = match interrupt.commit() {
            // Recorded first: a `ferry resume` after this process was
            // killed must know the destination may run it.
            true => record.set_phase(Phase::Committed),
            false => Err(Error::Wire(std::io::Error::new(
                std::io::ErrorKind::Interrupted,
                "asked to stop before the commit",
            ))),
        };
        let mut commit_ms = None;
        let lost = match committing {
            Ok(()) => {
                progress(Progress::Phase("commit"));
                let t = Instant::now();
                let committed = commit(&mut ctl, &migration, plan);
                commit_ms = Some(ms(t.elapsed()));
                match committed {
                    Committed::Running => None,
                    Committed::Killed(e) => Some(e),
                    Committed::Unknown(e) => {
                        // Frozen for good here, unless someone who can see
                        // the destination says otherwise. A post-copy source
                        // keeps serving pages until the destination stops
                        // asking.
                        let _ = finish(dump);
                        return Err(Error::OutcomeUnknown {
                            id: id.clone(),
                            to: to.to_string(),
                            lost: Box::new(e),
                        });
                    }
                }
            }
            Err(e) => {
                // Never committed: the destination kills its stopped copy
                // (at once on the abort, or when its wait runs out).
                let _ = wire::send(
                    &mut ctl,
                    &Step::Abort {
                        reason: crate::error::chain(&e),
                    },
                );
                Some(e)
            }
        };
        if let Some(e) = lost {
            progress(Progress::Phase("resume the source"));
            pages_cut.cut();
            let _ = finish(dump);
            return Err(resumed(root, &id, e));
        }
        let downtime_ms = ms(frozen_at.elapsed());
        let mut lazy = None;
        let mut lazy_ms = None;
        if postcopy {
            progress(Progress::Phase(
                "running on the destination; memory follows",
            ));
            let t = Instant::now();
            let pages_done = wire::recv::<_, Reply>(&mut ctl);
            let dumped = finish(dump);
            match (pages_done, dumped) {
                (Ok(Reply::PagesDone { lazy: l }), Ok(_)) => {
                    lazy_ms = Some(ms(t.elapsed()));
                    lazy = Some(l);
                }
                (reply, dumped) => {
                    // The destination could not get every page: it killed
                    // its copy, and this one, whose memory is whole, runs on.
                    pages_cut.cut();
                    progress(Progress::Phase("resume the source"));
                    let failed = match (reply, dumped) {
                        (Ok(Reply::Failed { failure }), _) => Error::DestinationFailed {
                            failure: Box::new(failure),
                        },
                        (_, Err(e)) => e,
                        (Err(e), _) => e,
                        _ => Error::Protocol {
                            what: "an unexpected answer after the restore",
                        },
                    };
                    return Err(resumed(root, &id, failed));
                }
            }
        } else {
            finish(dump)?;
        }
        let criu_dump = criu_rpc::stats::read_dump_stats(&images).ok().flatten();
        let pages_bytes = match (&lazy, &criu_dump) {
            (Some(l), _) => l.received_bytes,
            (None, Some(s)) => s.pages_written * 4096,
            (None, None) => 0,
        };
        progress(Progress::Phase("stop the source"));
        let docker = match docker {
            Some(d) => {
                let source = d.end(&to.to_string())?;
                Some(DockerMoved {
                    name: d.needs.container.name.clone(),
                    source_id: id.clone(),
                    destination_id: moved.docker_id.clone().unwrap_or_default(),
                    source,
                    notes: d.notes(),
                })
            }
            None => {
                Container::load(root, &id)?.delete(true)?;
                None
            }
        };
        Ok(Report {
            id: id.clone(),
            to: to.to_string(),
            channel: sec.describe(),
            mode,
            mode_reason,
            downtime_ms,
            total_ms: ms(t0.elapsed()),
            preflight_ms,
            dump_ms,
            transfer_ms: moved.transfer_ms,
            restore_ms: moved.restore_ms,
            images_bytes: moved.images_bytes,
            rootfs_bytes: ahead.bytes + moved.rootfs_bytes,
            rootfs_frozen_bytes: moved.rootfs_bytes,
            rootfs_ahead_ms: ahead.ms,
            pages_bytes,
            destination_pid: moved.pid,
            lazy_ms,
            lazy,
            criu_dump,
            criu_restore: moved.criu_restore,
            dump_prep_ms,
            restore_wait_ms: Some(moved.restore_wait_ms),
            commit_ms,
            docker,
        })
    })
}

/// The destination's `Failed` reply, if it sent one not read yet (within
/// 2 s): why a stream it stopped reading was cut short.
fn destination_said(ctl: &mut Channel) -> Option<Error> {
    ctl.deadline(Some(Instant::now() + Duration::from_secs(2)));
    let said = match wire::recv::<_, Reply>(ctl) {
        Ok(Reply::Failed { failure }) => Some(Error::DestinationFailed {
            failure: Box::new(failure),
        }),
        _ => None,
    };
    ctl.deadline(None);
    said
}

/// What the commit came to.
enum Committed {
    /// The destination runs the container.
    Running,
    /// The destination killed its copy (it never ran): the source resumes.
    Killed(Error),
    /// Nobody can tell: the source stays frozen.
    Unknown(Error),
}

/// Tells the destination to run its copy. An answer lost on the way is
/// asked for on new connections until the destination has decided: it
/// decides within its own silence bound (it kills a copy whose commit did
/// not come), so asking for twice that, plus a margin, outlasts it.
fn commit(ctl: &mut Channel, token: &str, plan: &Plan<'_>) -> Committed {
    let answer = wire::send(ctl, &Step::Commit).and_then(|_| wire::recv::<_, Reply>(ctl));
    let lost = match answer {
        Ok(Reply::Running) => return Committed::Running,
        Ok(Reply::Failed { failure }) => {
            return Committed::Killed(Error::DestinationFailed {
                failure: Box::new(failure),
            })
        }
        Ok(_) => Error::Protocol {
            what: "an unexpected answer to the commit",
        },
        Err(e) => e,
    };
    (plan.progress)(Progress::Phase(
        "the commit's answer was lost: asking the destination what it did",
    ));
    let until = Instant::now() + 2 * plan.security.silence + Duration::from_secs(5);
    loop {
        match outcome(plan, token) {
            Ok(Decision::Running) => return Committed::Running,
            Ok(Decision::Killed) => return Committed::Killed(lost),
            Ok(Decision::Unknown) => return Committed::Unknown(lost),
            Ok(Decision::Deciding) | Err(_) if Instant::now() < until => {
                std::thread::sleep(Duration::from_millis(500))
            }
            Ok(Decision::Deciding) | Err(_) => return Committed::Unknown(lost),
        }
    }
}

/// The destination's decision about move `token`.
fn outcome(plan: &Plan<'_>, token: &str) -> Result<Decision> {
    let mut c = connect(plan.to, plan.security)?;
    wire::send(
        &mut c,
        &Hello::Outcome {
            migration: token.to_string(),
        },
    )?;
    match wire::recv::<_, Reply>(&mut c)? {
        Reply::Outcome { decision } => Ok(decision),
        _ => Err(Error::Protocol {
            what: "an unexpected answer to the outcome question",
        }),
    }
}

/// How often the page meter looks at the page connection.
const METER_EVERY: Duration = Duration::from_millis(200);

/// What the destination got and did, seen from here.
struct Moved {
    images_bytes: u64,
    rootfs_bytes: u64,
    transfer_ms: f64,
    /// The destination's pid of the container.
    pid: i32,
    restore_ms: f64,
    /// The restore request's round trip, seen from here.
    restore_wait_ms: f64,
    criu_restore: Option<RestoreStats>,
    /// The destination dockerd's id of the container.
    docker_id: Option<String>,
}

enum DumpEvent {
    /// Post-copy: images written, the page server waits for the destination.
    Ready,
    /// The dump returned (ok or not).
    Done(bool),
}

/// The root filesystem as sent before the freeze.
struct Ahead {
    /// The tree sent: the whole rootfs, or an overlay's upper directory.
    tree: PathBuf,
    sent: overlay::Sent,
    bytes: u64,
    ms: f64,
}

/// Sends the root filesystem (an overlay's writable layer only) while the
/// container runs.
fn rootfs_ahead(
    ctl: &mut Channel,
    rootfs: &Path,
    overlay: Option<&Overlay>,
    progress: &(dyn Fn(Progress<'_>) + Sync),
) -> Result<Ahead> {
    progress(Progress::Phase("root filesystem, ahead of the freeze"));
    let t = Instant::now();
    let tree = overlay.map_or(rootfs, |o| &o.upper).to_path_buf();
    wire::send(
        ctl,
        &Step::RootfsAhead {
            overlay: overlay.is_some(),
        },
    )?;
    let mut w = StreamWriter::new(ctl);
    let (_, sent) = overlay::pack_ahead(&tree, &mut w)?;
    let bytes = w.finish()?;
    expect(wire::recv(ctl)?)?;
    Ok(Ahead {
        tree,
        sent,
        bytes,
        ms: ms(t.elapsed()),
    })
}

/// Sends the images and what changed in the rootfs since it went ahead,
/// asks for the restore.
fn move_state(
    ctl: &mut Channel,
    images: &Path,
    ahead: &Ahead,
    overlay: Option<&Overlay>,
    to: SocketAddr,
    progress: &(dyn Fn(Progress<'_>) + Sync),
) -> Result<Moved> {
    progress(Progress::Phase("transfer"));
    let t = Instant::now();
    wire::send(ctl, &Step::Images)?;
    let mut w = StreamWriter::new(ctl);
    tarball::pack(images, &mut w, |_| false)?;
    let images_bytes = w.finish()?;
    expect(wire::recv(ctl)?)?;
    let changes = ahead.sent.changes(&ahead.tree)?;
    wire::send(
        ctl,
        &Step::RootfsChanges {
            removed: changes.removed.clone(),
            lowers: overlay.map(|o| o.lowers.clone()),
        },
    )?;
    let mut w = StreamWriter::new(ctl);
    changes.pack(&mut w)?;
    let rootfs_bytes = w.finish()?;
    expect(wire::recv(ctl)?)?;
    let transfer_ms = ms(t.elapsed());
    progress(Progress::Phase("restore"));
    let t = Instant::now();
    wire::send(ctl, &Step::Restore)?;
    match wire::recv::<_, Reply>(ctl).map_err(|e| match e {
        Error::Wire(source) => Error::Peer {
            peer: to.to_string(),
            op: "waiting for the restore on",
            source,
        },
        e => e,
    })? {
        Reply::Restored {
            pid,
            restore_ms,
            criu,
            docker_id,
        } => Ok(Moved {
            docker_id,
            images_bytes,
            rootfs_bytes,
            transfer_ms,
            pid,
            restore_ms,
            restore_wait_ms: ms(t.elapsed()),
            criu_restore: criu,
        }),
        Reply::Failed { failure } => Err(Error::DestinationFailed {
            failure: Box::new(failure),
        }),
        _ => Err(Error::Protocol {
            what: "an unexpected answer to the restore",
        }),
    }
}
