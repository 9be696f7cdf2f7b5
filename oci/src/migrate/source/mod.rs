//! The sending side of a migration (`ferry migrate`).
//!
//! Order of events, and why: everything that can be checked is checked
//! before the container is frozen (the destination's pre-flight verdict);
//! the container is dumped with leave_stopped, its memory going straight to
//! the destination's page server; its images and root filesystem follow on
//! the control connection; the source container dies only once the
//! destination reports it running. Any failure before that resumes it.
//!
//! A move is a row of states, each in one place with what its failure
//! does to the container (`send_inner` runs them):
//!
//! | state | where | on failure |
//! |---|---|---|
//! | negotiate: offer and pre-flight, page channel, rootfs ahead, CRIU's dump prepared | `negotiate.rs` | nothing was touched: the container runs on |
//! | dump: freeze, CRIU's dump until its images are written | `Negotiated::freeze` | CRIU resumed the container; the destination is told |
//! | transfer: images, what changed in the rootfs | `Frozen::transfer` | the source resumes |
//! | await the destination: restore, commit, post-copy pages | `Frozen::await_restore`, `commit`, `memory_follows` | the source resumes, or stays frozen ([`Error::OutcomeUnknown`]) when the commit's outcome is unknown |
//! | report: the source's copy goes, the figures | `Frozen::report` | reported as is: the destination runs the container |
//!
//! The wire exchange is protocol 3 ([`super::protocol`]).

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use criu_rpc::lazy::LazyStats;
use criu_rpc::stats::{DumpStats, RestoreStats};
use criu_rpc::Criu;
use nix::sys::signal::{kill, Signal};
use serde::Serialize;

use super::channel::{Channel, Security};
use super::interrupt::Interrupt;
use super::protocol::{Hello, Reply, Step};
use super::wire;
use super::{Mode, PrecopyPages, Progress};
use crate::checkpoint::private_dir;
use crate::docker::Engine;
use crate::error::{Error, Result};
use crate::runtime::{Container, Status};

mod commit;
mod docker;
mod frozen;
mod negotiate;
mod offer;
mod transfer;

pub use docker::DockerSource;
use offer::{connect, offer};

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
    /// Pre-copy: where the pages went on the destination (into the
    /// restored tasks through userfaultfd, or into images).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub precopy_pages: Option<PrecopyPages>,
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
    /// Post-copy: from the restore until the last page was in (a pre-copy
    /// through userfaultfd: from the commit until the destination said
    /// so, the pages being in before the restore was reported).
    pub lazy_ms: Option<f64>,
    /// Post-copy, or pre-copy through userfaultfd: what the destination's
    /// lazy-pages daemon did.
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

/// A reply, unless it reports the destination's failure.
fn expect(r: Reply) -> Result<Reply> {
    match r {
        Reply::Failed { failure } => Err(Error::DestinationFailed {
            failure: Box::new(failure),
        }),
        r => Ok(r),
    }
}

/// Tells the destination that the source gives up, and why (it drops
/// what it has of the move at once, instead of at the connection's end or
/// its silence bound). Best effort: the channel may be what failed.
fn tell_abort(ctl: &mut Channel, why: &Error) {
    let _ = wire::send(
        ctl,
        &Step::Abort {
            reason: crate::error::chain(why),
        },
    );
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

/// Where and how a container moves: what `ferry migrate` was told.
#[derive(Clone, Copy)]
pub struct Plan<'a> {
    /// The destination agent.
    pub to: SocketAddr,
    pub security: &'a Security,
    pub mode: Mode,
    /// Where a pre-copy's pages go on the destination.
    pub precopy_pages: PrecopyPages,
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
        progress,
        ..
    } = *plan;
    progress(Progress::Phase("pre-flight"));
    let o = offer(&c, work, plan, docker)?;
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

/// The move, state by state (see the module's table). The dump and the
/// page meter run on threads of their own from the freeze on; they end
/// with this scope, whatever the outcome.
fn send_inner(
    root: &Path,
    c: Container,
    work: &Path,
    plan: &Plan<'_>,
    docker: Option<&DockerSource<'_>>,
    t0: Instant,
) -> Result<Report> {
    let id = c.state.id.clone();
    let mv = Move {
        root,
        id: &id,
        plan: *plan,
        docker,
        t0,
    };
    let negotiated = negotiate::negotiate(mv, c, work)?;
    std::thread::scope(|scope| {
        let mut frozen = negotiated.freeze(scope)?;
        let sent = frozen.transfer()?;
        let restored = frozen.await_restore()?;
        let commit_ms = frozen.commit()?;
        // The destination runs the container: the downtime is over.
        let downtime_ms = frozen.downtime_ms();
        let memory = frozen.memory_follows()?;
        frozen.report(frozen::Steps {
            sent,
            restored,
            commit_ms,
            downtime_ms,
            memory,
        })
    })
}

/// One move under way: what stays the same from its start to its end.
#[derive(Clone, Copy)]
struct Move<'a> {
    /// The state root of the container (Ferry's, or dockerd's runtime
    /// root).
    root: &'a Path,
    id: &'a str,
    plan: Plan<'a>,
    docker: Option<&'a DockerSource<'a>>,
    /// When `ferry migrate` started: the report's total.
    t0: Instant,
}
