//! A move from the freeze on: the dump, the transfer, awaiting the
//! destination (restore, commit, post-copy pages) and the report, each a
//! method of [`Frozen`] that handles its own failure (see the parent
//! module's table). Until the commit, the destination's copy is stopped
//! and dies without it, so a failure resumes the source; once committed,
//! only the destination's answer (or its decision, asked for) says whether
//! the source may resume.

use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::{Arc, OnceLock};
use std::thread::{Scope, ScopedJoinHandle};
use std::time::{Duration, Instant};

use criu_rpc::lazy::LazyStats;
use criu_rpc::Notify;

use super::commit::{self, Committed};
use super::negotiate::{Ahead, Negotiated};
use super::transfer::{self, Restored, Sent};
use super::{destination_said, ms, resumed, tell_abort, DockerMoved, Move, Report};
use crate::checkpoint::Checkpointed;
use crate::error::{Error, Result};
use crate::migrate::channel::{Channel, Cut, Relay};
use crate::migrate::protocol::Reply;
use crate::migrate::record::{MoveRecord, Phase};
use crate::migrate::wire;
use crate::migrate::{Mode, PrecopyPages, Progress};
use crate::overlay::Overlay;
use crate::runtime::Container;

/// How often the page meter looks at the page connection.
const METER_EVERY: Duration = Duration::from_millis(200);

/// The move with its container frozen and dumped (leave_stopped), its
/// pages on their way or gone.
pub(super) struct Frozen<'s, 'a> {
    mv: Move<'a>,
    record: MoveRecord,
    ctl: Channel,
    migration: String,
    mode: Mode,
    mode_reason: String,
    postcopy: bool,
    /// CRIU serves the pages until the destination has every one.
    lazy: bool,
    /// Held for the move's length: dropped, it cuts the page channel.
    _relay: Relay,
    pages_cut: Cut,
    /// The dump's thread: with lazy pages, CRIU's dump only returns once
    /// the destination has every page, long after the restore.
    dump: Option<ScopedJoinHandle<'s, Result<Checkpointed>>>,
    /// The page meter polls until this is dropped, with the move.
    _meter: Sender<()>,
    ahead: Ahead,
    overlay: Option<Overlay>,
    images: PathBuf,
    preflight_ms: f64,
    frozen_at: Instant,
    dump_ms: f64,
    dump_prep_ms: Option<f64>,
}

/// What the dump's thread says, in order.
enum DumpEvent {
    /// Post-copy: images written, the page server waits for the destination.
    Ready,
    /// The dump returned (ok or not).
    Done(bool),
}

impl<'a> Negotiated<'a> {
    /// Freezes and dumps the container, its pages going to the
    /// destination's page server as CRIU writes them; returns once its
    /// images are written. The dump runs on in `scope` (post-copy: until
    /// the destination has every page).
    ///
    /// On failure the container runs on (CRIU resumes the tasks of a dump
    /// that failed); the destination is told, and the error says why: the
    /// destination's own failure, else a break of the page channel under
    /// CRIU (tampered with, silent), else CRIU's view of it.
    pub fn freeze<'s>(self, scope: &'s Scope<'s, '_>) -> Result<Frozen<'s, 'a>>
    where
        'a: 's,
    {
        let Negotiated {
            mv,
            mut record,
            mut ctl,
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
            preflight_ms,
        } = self;
        let progress = mv.plan.progress;
        // When CRIU said it starts the dump (its pre-dump notify): made
        // here, so that nothing is allocated after the freeze began.
        let pre_dump_at = Arc::new(OnceLock::<Instant>::new());
        let pre_dump_seen = Arc::clone(&pre_dump_at);
        record.set_phase(Phase::Frozen)?;
        progress(Progress::Phase("freeze and dump"));
        let frozen_at = Instant::now();
        let meter = page_meter(scope, pages_tcp, memory, progress);
        let (tx, rx) = mpsc::channel::<DumpEvent>();
        let done = tx.clone();
        let dump = scope.spawn(move || {
            let r = prepared
                .run(
                    &mut |n| match n {
                        Notify::PreDump => {
                            let _ = pre_dump_seen.set(Instant::now());
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
        match rx.recv() {
            Ok(DumpEvent::Ready) | Ok(DumpEvent::Done(true)) => {}
            _ => {
                let e = match dump.join() {
                    Ok(Err(e)) => e,
                    _ => Error::Protocol {
                        what: "the dump thread ended without a result",
                    },
                };
                let e = relay.cause().unwrap_or(e);
                tell_abort(&mut ctl, &e);
                return Err(destination_said(&mut ctl).unwrap_or(e));
            }
        }
        let dump_ms = ms(frozen_at.elapsed());
        let dump_prep_ms = pre_dump_at.get().map(|t| ms(t.duration_since(frozen_at)));
        Ok(Frozen {
            mv,
            record,
            ctl,
            migration,
            mode,
            mode_reason,
            postcopy,
            lazy,
            _relay: relay,
            pages_cut,
            dump: Some(dump),
            _meter: meter,
            ahead,
            overlay,
            images,
            preflight_ms,
            frozen_at,
            dump_ms,
            dump_prep_ms,
        })
    }
}

/// Says how far the pages got, every [`METER_EVERY`], until the returned
/// sender is dropped. CRIU writes them straight into the page connection:
/// what the destination acknowledged (TCP_INFO) is how far they got.
fn page_meter<'s>(
    scope: &'s Scope<'s, '_>,
    pages: TcpStream,
    of: u64,
    progress: &'s (dyn Fn(Progress<'_>) + Sync),
) -> Sender<()> {
    let (stop, stopped) = mpsc::channel::<()>();
    scope.spawn(move || {
        // What the authentication exchanged before CRIU got the socket.
        let base = wire::bytes_acked(&pages).unwrap_or(0);
        let mut last = 0;
        while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(METER_EVERY) {
            match wire::bytes_acked(&pages).map(|b| b.saturating_sub(base)) {
                Some(sent) if sent != last => {
                    last = sent;
                    progress(Progress::Pages { sent, of });
                }
                _ => {}
            }
        }
    });
    stop
}

/// Post-copy: how the memory followed the running container.
pub(super) struct Lazy {
    /// From the restore until the last page was in.
    ms: f64,
    stats: LazyStats,
}

/// What the steps after the freeze measured, for the report.
pub(super) struct Steps {
    pub sent: Sent,
    pub restored: Restored,
    pub commit_ms: f64,
    pub downtime_ms: f64,
    /// Post-copy only.
    pub memory: Option<Lazy>,
}

impl Frozen<'_, '_> {
    /// Sends the images and what changed in the root filesystem since it
    /// went ahead. On failure the source resumes.
    pub fn transfer(&mut self) -> Result<Sent> {
        let progress = self.mv.plan.progress;
        let sent = transfer::send_state(
            &mut self.ctl,
            &self.images,
            self.frozen_at,
            &self.ahead,
            self.overlay.as_ref(),
            progress,
        );
        sent.map_err(|e| self.stream_failed(e))
    }

    /// Asks for the restore and waits for it (the destination's copy stays
    /// stopped). On failure the source resumes.
    pub fn await_restore(&mut self) -> Result<Restored> {
        let restored = transfer::restore(&mut self.ctl, self.mv.plan.to, self.mv.plan.progress);
        restored.map_err(|e| self.stream_failed(e))
    }

    /// The transfer or the restore failed with `e`: the source resumes,
    /// with the destination's reason when it cut a stream short.
    fn stream_failed(&mut self, e: Error) -> Error {
        let e = match e {
            Error::DestinationFailed { .. } => e,
            e => destination_said(&mut self.ctl).unwrap_or(e),
        };
        self.resume(e)
    }

    /// The point of no return: the destination is told to run its copy;
    /// returns the commit's round trip. Recorded as committed first, so
    /// that a `ferry resume` after this process was killed knows the
    /// destination may run it.
    ///
    /// On failure the source resumes when the destination's copy never
    /// ran: the move was interrupted or the record could not be written
    /// (never committed: the destination, told, kills its stopped copy, at
    /// once or when its wait runs out), or the destination killed its
    /// copy. When nobody can tell, the source stays frozen for good here
    /// ([`Error::OutcomeUnknown`]), unless someone who can see the
    /// destination says otherwise (`ferry resume --force`).
    pub fn commit(&mut self) -> Result<f64> {
        let committing = match self.mv.plan.interrupt.commit() {
            true => self.record.set_phase(Phase::Committed),
            false => Err(Error::Wire(std::io::Error::new(
                std::io::ErrorKind::Interrupted,
                "asked to stop before the commit",
            ))),
        };
        if let Err(e) = committing {
            tell_abort(&mut self.ctl, &e);
            return Err(self.resume(e));
        }
        (self.mv.plan.progress)(Progress::Phase("commit"));
        let t = Instant::now();
        let committed = commit::commit(&mut self.ctl, &self.migration, &self.mv.plan);
        let commit_ms = ms(t.elapsed());
        match committed {
            Committed::Running => Ok(commit_ms),
            Committed::Killed(e) => Err(self.resume(e)),
            Committed::Unknown(e) => Err(self.outcome_unknown(e)),
        }
    }

    /// From the freeze until now: once the destination runs the container,
    /// the move's downtime.
    pub fn downtime_ms(&self) -> f64 {
        ms(self.frozen_at.elapsed())
    }

    /// Post-copy: waits until the destination has every page, which this
    /// side's CRIU serves until then. If it could not get them all, it
    /// killed its copy and this one, whose memory is whole, resumes.
    ///
    /// Pre-copy through userfaultfd: the destination had every page before
    /// it reported the restore; its count of them follows the commit.
    ///
    /// Pre-copy into images: the dump's end. Its failure is reported as it
    /// is: the destination runs the container.
    pub fn memory_follows(&mut self) -> Result<Option<Lazy>> {
        if !self.lazy {
            self.dump_ended()?;
            return Ok(None);
        }
        if self.postcopy {
            (self.mv.plan.progress)(Progress::Phase(
                "running on the destination; memory follows",
            ));
        }
        let t = Instant::now();
        let pages_done = wire::recv::<_, Reply>(&mut self.ctl);
        let dumped = self.dump_ended();
        let failed = match (pages_done, dumped) {
            (Ok(Reply::PagesDone { lazy }), Ok(())) => {
                return Ok(Some(Lazy {
                    ms: ms(t.elapsed()),
                    stats: lazy,
                }))
            }
            (Ok(Reply::Failed { failure }), _) => Error::DestinationFailed {
                failure: Box::new(failure),
            },
            (_, Err(e)) => e,
            (Err(e), _) => e,
            _ => Error::Protocol {
                what: "an unexpected answer after the restore",
            },
        };
        Err(self.resume(failed))
    }

    /// The destination runs the container: the source's copy goes (killed
    /// and renamed or removed in its dockerd, or deleted), and the move's
    /// figures are reported. A failure here is reported as it is: nothing
    /// resumes.
    pub fn report(self, steps: Steps) -> Result<Report> {
        let Steps {
            sent,
            restored,
            commit_ms,
            downtime_ms,
            memory,
        } = steps;
        let Move {
            root,
            id,
            plan,
            docker,
            t0,
        } = self.mv;
        let criu_dump = criu_rpc::stats::read_dump_stats(&self.images)
            .ok()
            .flatten();
        let pages_bytes = match (&memory, &criu_dump) {
            (Some(l), _) => l.stats.received_bytes,
            (None, Some(s)) => s.pages_written * 4096,
            (None, None) => 0,
        };
        (plan.progress)(Progress::Phase("stop the source"));
        let docker = match docker {
            Some(d) => {
                let source = d.end(&plan.to.to_string())?;
                Some(DockerMoved {
                    name: d.needs.container.name.clone(),
                    source_id: id.to_string(),
                    destination_id: restored.docker_id.clone().unwrap_or_default(),
                    source,
                    notes: d.notes(),
                })
            }
            None => {
                Container::load(root, id)?.delete(true)?;
                None
            }
        };
        let (lazy_ms, lazy) = match memory {
            Some(l) => (Some(l.ms), Some(l.stats)),
            None => (None, None),
        };
        Ok(Report {
            id: id.to_string(),
            to: plan.to.to_string(),
            channel: plan.security.describe(),
            mode: self.mode,
            mode_reason: self.mode_reason,
            precopy_pages: (!self.postcopy).then_some(match self.lazy {
                true => PrecopyPages::Uffd,
                false => PrecopyPages::Images,
            }),
            downtime_ms,
            total_ms: ms(t0.elapsed()),
            preflight_ms: self.preflight_ms,
            dump_ms: self.dump_ms,
            transfer_ms: sent.transfer_ms,
            restore_ms: restored.restore_ms,
            images_bytes: sent.images_bytes,
            rootfs_bytes: self.ahead.bytes + sent.rootfs_bytes,
            rootfs_frozen_bytes: sent.rootfs_bytes,
            rootfs_ahead_ms: self.ahead.ms,
            pages_bytes,
            destination_pid: restored.pid,
            lazy_ms,
            lazy,
            criu_dump,
            criu_restore: restored.criu_restore,
            dump_prep_ms: self.dump_prep_ms,
            restore_wait_ms: Some(restored.restore_wait_ms),
            commit_ms: Some(commit_ms),
            docker,
        })
    }

    /// The source resumes after `e` (the destination runs no copy): the
    /// page channel is cut (a post-copy dump serving pages returns, its
    /// tasks left stopped), the dump's thread ends, the container thaws.
    fn resume(&mut self, e: Error) -> Error {
        (self.mv.plan.progress)(Progress::Phase("resume the source"));
        self.pages_cut.cut();
        let _ = self.dump_ended();
        resumed(self.mv.root, self.mv.id, e)
    }

    /// Nobody can tell whether the destination runs the container: the
    /// source stays frozen. A post-copy source keeps serving pages until
    /// the destination stops asking.
    fn outcome_unknown(&mut self, lost: Error) -> Error {
        let _ = self.dump_ended();
        Error::OutcomeUnknown {
            id: self.mv.id.to_string(),
            to: self.mv.plan.to.to_string(),
            lost: Box::new(lost),
        }
    }

    /// Waits for the dump's thread to end (once: later calls find it
    /// ended); its failure, if it failed.
    fn dump_ended(&mut self) -> Result<()> {
        match self.dump.take() {
            Some(t) => t
                .join()
                .unwrap_or(Err(Error::Protocol {
                    what: "the dump thread panicked",
                }))
                .map(drop),
            None => Ok(()),
        }
    }
}
