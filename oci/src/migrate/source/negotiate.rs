//! A move's first state, while the container still runs: the offer and
//! the destination's pre-flight verdict, the page channel to its page
//! server, the root filesystem's bulk sent ahead of the freeze, and CRIU's
//! dump prepared (request, side files, criu swrk started). All of it is
//! outside the downtime.
//!
//! A failure here leaves the container as it was, running. The destination
//! drops its side of the move when the connections close; a failure of
//! CRIU's preparation, on a sound channel, tells it why first.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::Instant;

use criu_rpc::PageServerAddr;

use super::offer::Offer;
use super::{connect, expect, ms, offer, tell_abort, Move};
use crate::checkpoint::CheckpointOptions;
use crate::error::{Error, Result};
use crate::migrate::channel::{Channel, Cut, Relay};
use crate::migrate::protocol::{Hello, Reply, Step};
use crate::migrate::record::{MoveRecord, Phase};
use crate::migrate::wire::{self, StreamWriter};
use crate::migrate::{Mode, Progress};
use crate::overlay::{self, Overlay};
use crate::runtime::cr::PreparedCheckpoint;
use crate::runtime::Container;

/// The move agreed on and ready to freeze.
pub(super) struct Negotiated<'a> {
    pub mv: Move<'a>,
    /// Says how far the move got, for `ferry resume` after this process
    /// died.
    pub record: MoveRecord,
    /// The control connection.
    pub ctl: Channel,
    /// The destination's token for this move (asked about when the
    /// commit's answer is lost).
    pub migration: String,
    pub mode: Mode,
    pub mode_reason: String,
    /// What the offer said the container uses: the page meter's whole.
    pub memory: u64,
    pub postcopy: bool,
    /// CRIU dumps lazily and serves the pages until the destination has
    /// them all: post-copy, or a pre-copy through userfaultfd.
    pub lazy: bool,
    /// Seals what CRIU writes to its page-server socket onto the page
    /// channel.
    pub relay: Relay,
    /// Cuts the page connection under a post-copy dump that must end
    /// early (CRIU's page server then returns and leaves the tasks
    /// stopped).
    pub pages_cut: Cut,
    /// The page connection, for the page meter (TCP_INFO).
    pub pages_tcp: TcpStream,
    pub ahead: Ahead,
    pub overlay: Option<Overlay>,
    /// Where CRIU writes the images.
    pub images: PathBuf,
    pub prepared: PreparedCheckpoint,
    pub preflight_ms: f64,
}

/// Offers container `c` to the destination and gets everything ready for
/// the freeze; `work` is the move's scratch dir.
pub(super) fn negotiate<'a>(mv: Move<'a>, c: Container, work: &Path) -> Result<Negotiated<'a>> {
    let Move {
        id, plan, docker, ..
    } = mv;
    let (to, sec, progress, interrupt) = (plan.to, plan.security, plan.progress, plan.interrupt);
    let record = MoveRecord::write(work, id, to, Phase::Preflight)?;
    progress(Progress::Phase("pre-flight"));
    let Offer {
        needs,
        config,
        cpuinfo,
        mode,
        mode_reason,
        overlay,
    } = offer(&c, work, &plan, docker)?;
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
    let (migration, uffd) = match wire::recv::<_, Reply>(&mut ctl)? {
        Reply::Accepted { migration, uffd } => (migration, uffd),
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
    let pages_cut = relay.cutter()?;
    let pages_tcp = relay.tcp().try_clone().map_err(Error::Wire)?;
    // Post-copy, or a pre-copy whose pages go into the restored tasks'
    // memory: CRIU keeps the pages back and serves them.
    let lazy = postcopy || uffd;
    let empty_ns = match docker {
        Some(_) => crate::migrate::docker::empty_ns(&c.spec()?),
        None => None,
    };
    let opts = CheckpointOptions {
        leave_stopped: true,
        lazy_pages: lazy,
        page_server: Some(PageServerAddr::Socket(pages)),
        lock_joined_netns: docker.is_some(),
        empty_ns,
        ..crate::migrate::CRIU_FLAGS.dump(images.clone())
    };
    // CRIU's request, its side files, the look at the network namespace
    // and criu swrk started: all before the freeze, outside the downtime.
    let prepared = c.prepare_checkpoint(plan.criu, opts).inspect_err(|e| {
        tell_abort(&mut ctl, e);
    })?;
    Ok(Negotiated {
        mv,
        record,
        ctl,
        migration,
        mode,
        mode_reason,
        memory,
        postcopy,
        lazy,
        relay,
        pages_cut,
        pages_tcp,
        ahead,
        overlay,
        images,
        prepared,
        preflight_ms: ms(mv.t0.elapsed()),
    })
}

/// The root filesystem as sent before the freeze.
pub(super) struct Ahead {
    /// The tree sent: the whole rootfs, or an overlay's upper directory.
    pub tree: PathBuf,
    pub sent: overlay::Sent,
    pub bytes: u64,
    pub ms: f64,
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
