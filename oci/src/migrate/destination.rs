//! The receiving side of a migration (`ferry serve`): authenticates the
//! source (its sealed channel), judges its offer (pre-flight), receives the
//! memory pages through CRIU's page server (relayed from the page channel),
//! the images and the root filesystem through the control connection,
//! restores the container stopped, and runs it once the source committed.
//! Anything that fails before that is cleaned up here (a restored copy
//! killed before it ran) and reported to the source as a typed [`Failure`]
//! (CRIU's errno, message and log lines when CRIU failed), and the source
//! then resumes its container.
//!
//! The restore runs in this process, through the runtime's restore in two
//! steps ([`prepare_restore`], then [`PreparedRestore::run`]), on the
//! connection's thread: what needs no image (the container's state dir,
//! network, console, cgroups, criu started and placed in them) is done as
//! the offer is accepted, before the source freezes, and only CRIU's
//! restore itself is in the downtime.
//! The agent is long-lived and never waits for its containers, so the
//! restored init is made criu's child rather than ours (no `rst_sibling`,
//! [`RestoreOptions::criu_parent`]): CRIU reaps the root task of a failed
//! restore itself, and a restored one is reparented to init when criu
//! exits (the agent is no subreaper), as it was when a short-lived
//! `ferry restore --detach` ran it. criu is spawned with only
//! async-signal-safe calls between fork and exec (criu-rpc's swrk), and
//! namespace switches happen on scratch threads (crate::network), so the
//! agent's other threads are safe.

use std::cell::Cell;
use std::collections::HashMap;
use std::net::{TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use criu_rpc::lazy::LazyPages;
use criu_rpc::{Criu, ImageDirs, LogLevel, PageServerAddr, PageServerOptions};

use super::channel::{Channel, Security};
use super::docker::{DockerFacts, DockerLanding, DockerNeeds};
use super::preflight::{self, HostFacts, Needs};
use super::protocol::{Decision, Failure, Hello, Reply, Stage, Step};
use super::tarball;
use super::wire::{self, StreamReader};
use crate::checkpoint::private_dir;
use crate::docker::Engine;
use crate::error::{Error, Result};
use crate::restore::RestoreOptions;
use crate::runtime::cr::{prepare_restore, PreparedRestore, RestoreRuntimeOptions};
use crate::runtime::pending::{Creating, Outcome, Pending};
use crate::runtime::Stdio;

/// What `ferry serve` needs.
pub struct Agent {
    /// This host's ferry state root.
    pub root: PathBuf,
    /// How peers authenticate and whether the channel is sealed.
    pub security: Security,
    pub criu: Criu,
    /// Prefixed to the containers' cgroup paths here (two "hosts" on one
    /// machine must not share a cgroup).
    pub cgroup_parent: Option<PathBuf>,
    /// Where restored containers with a terminal send their console's
    /// master (`ferry restore --console-socket`); without it they are
    /// refused in pre-flight.
    pub console_socket: Option<PathBuf>,
    /// `ferry serve --docker`: docker containers land on this dockerd
    /// (`Some(None)`: found as docker finds it).
    pub docker: Option<Option<String>>,
    /// Connections served at once; more are closed at accept.
    pub max_connections: usize,
    /// Time a connection has to authenticate and say what it wants, and a
    /// move's page connection to come after its offer was accepted.
    pub handshake: Duration,
    /// Page connections awaited, by the secret token of their move.
    pages: Mutex<HashMap<String, Sender<Channel>>>,
    /// The ids being received now: a second offer of one is refused, not
    /// let trample the first's incoming dir and page connection.
    receiving: Mutex<std::collections::HashSet<String>>,
    /// What became of recent moves' restored copies, by page token: a
    /// source whose commit went unanswered asks (`Hello::Outcome`).
    decisions: Mutex<HashMap<String, (Decision, Instant)>>,
}

/// Where a received move is, for the report of its failure and the log
/// line of its outcome.
struct Progress {
    stage: Cell<Stage>,
    /// When the answer to the root filesystem sent ahead went out: the
    /// source freezes its container on it.
    ready: Cell<Option<Instant>>,
    /// When the copy here was let run, after the commit.
    running: Cell<Option<Instant>>,
}

impl Default for Progress {
    fn default() -> Progress {
        Progress {
            stage: Cell::new(Stage::Receive),
            ready: Cell::new(None),
            running: Cell::new(None),
        }
    }
}

impl Progress {
    /// The downtime as seen from here: from the source's freeze to the
    /// copy running here. The freeze is dated by the source's own count
    /// of its frozen time, sent with the root filesystem's changes, less
    /// the network delay it took; a source that does not send it: the
    /// answer to `RootfsAhead`, after which the source still starts its
    /// CRIU (tens of ms, which this then counts too). The source's report
    /// measures it from its own clock.
    fn downtime(&self) -> Option<Duration> {
        Some(self.running.get()?.duration_since(self.ready.get()?))
    }
}

/// When the source froze, from a message that arrived `now` saying the
/// container had been frozen `frozen_ms` when it left; `None` for a count
/// no freeze could give (negative, not a number, before this host booted).
fn freeze_time(now: Instant, frozen_ms: f64) -> Option<Instant> {
    now.checked_sub(Duration::try_from_secs_f64(frozen_ms / 1000.0).ok()?)
}

/// How a move's pages arrive here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pages {
    /// Pre-copy into images: CRIU's page server writes them as the dump
    /// sends them, CRIU's restore reads them back.
    Images,
    /// Pre-copy into the restored tasks: restored stopped with lazy pages,
    /// filled by the lazy-pages daemon, reported restored once every page
    /// is in (the restore overlaps the transfer; nothing is written twice).
    Uffd,
    /// Post-copy: the copy runs once committed, its memory follows.
    Postcopy,
}

impl Pages {
    /// The path for an offer: pre-copy pages go into the tasks when the
    /// source offered it (its CRIU dumps lazily) and this host restores
    /// lazily, else into images.
    fn of(needs: &Needs, lazy_pages_here: bool) -> Pages {
        match (needs.postcopy, needs.precopy_uffd && lazy_pages_here) {
            (true, _) => Pages::Postcopy,
            (false, true) => Pages::Uffd,
            (false, false) => Pages::Images,
        }
    }
}

/// What an offer came to, when it did not fail.
enum Received {
    /// The container runs here, as `pid`.
    Running { pid: i32 },
    /// Pre-flight refused it, for these problems.
    Refused(Vec<preflight::Problem>),
}

/// One line per offer received, at info when the container runs here and
/// at warn otherwise: who sent it, which container, which mode, what came
/// of it, and the downtime (the operator's view of a move, which `ferry
/// serve` logs at its default level).
fn log_move(peer: &str, id: &str, mode: &str, outcome: &Result<Received>, at: &Progress) {
    match outcome {
        Ok(Received::Running { pid }) => tracing::info!(
            peer,
            id,
            mode,
            result = "running",
            pid,
            downtime_ms = at.downtime().map_or(0, |d| d.as_millis() as u64),
            "move received"
        ),
        Ok(Received::Refused(problems)) => tracing::warn!(
            peer,
            id,
            mode,
            result = "refused",
            problems = %problems.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("; "),
            "move refused in pre-flight"
        ),
        Err(e) => tracing::warn!(
            peer,
            id,
            mode,
            result = "failed",
            stage = ?at.stage.get(),
            error = %crate::error::chain(e),
            "move failed (the source resumes its container)"
        ),
    }
}

/// How long a decision is kept for a source to ask about.
const DECISIONS_KEPT: Duration = Duration::from_secs(3600);

/// The file in a landing's directory that says its restored copy was not
/// committed yet (it holds the move's token): an agent killed then finds
/// it at its next start, and kills that copy, which never ran.
const UNCOMMITTED: &str = "uncommitted";

/// An id being received, released on drop.
struct Receiving<'a>(&'a Agent, String);

impl Drop for Receiving<'_> {
    fn drop(&mut self) {
        self.0.receiving.lock().unwrap().remove(&self.1);
    }
}

impl Agent {
    pub fn new(
        root: PathBuf,
        security: Security,
        criu: Criu,
        cgroup_parent: Option<PathBuf>,
    ) -> Agent {
        Agent {
            root,
            security,
            criu,
            cgroup_parent,
            console_socket: None,
            docker: None,
            max_connections: MAX_CONNECTIONS,
            handshake: wire::HANDSHAKE_DEADLINE,
            pages: Mutex::new(HashMap::new()),
            receiving: Mutex::new(std::collections::HashSet::new()),
            decisions: Mutex::new(HashMap::new()),
        }
    }

    fn decide(&self, token: &str, d: Decision) {
        let mut all = self.decisions.lock().unwrap_or_else(|e| e.into_inner());
        all.retain(|_, (_, at)| at.elapsed() < DECISIONS_KEPT);
        all.insert(token.to_string(), (d, Instant::now()));
    }

    fn decision(&self, token: &str) -> Decision {
        let all = self.decisions.lock().unwrap_or_else(|e| e.into_inner());
        all.get(token).map_or(Decision::Unknown, |(d, _)| *d)
    }

    /// Receives docker containers onto the dockerd at `host` (`None`: as
    /// docker finds it).
    pub fn with_docker(mut self, host: Option<String>) -> Agent {
        self.docker = Some(host);
        self
    }

    fn engine(&self) -> Result<Engine> {
        match &self.docker {
            Some(host) => Engine::connect(host.as_deref()),
            None => Err(Error::Protocol {
                what: "a docker container offered to an agent without --docker",
            }),
        }
    }

    /// Serves at most `max_connections` at once, and gives each
    /// `handshake` to authenticate and say what it wants.
    pub fn with_limits(mut self, max_connections: usize, handshake: Duration) -> Agent {
        self.max_connections = max_connections;
        self.handshake = handshake;
        self
    }

    /// Hands the consoles of restored containers to `path`.
    pub fn with_console_socket(mut self, path: Option<PathBuf>) -> Agent {
        self.console_socket = path;
        self
    }

    /// Serves connections for ever: a failed accept (out of fds under a
    /// flood, say) is waited out, never the end of the agent; at most
    /// [`Agent::max_connections`] are served at once, and one that has not
    /// authenticated and said what it wants within [`Agent::handshake`] is
    /// dropped.
    pub fn serve(self: Arc<Self>, listener: TcpListener) -> Result<()> {
        let active = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        for conn in listener.incoming() {
            let conn = match conn {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a connection");
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            };
            if active.fetch_add(1, Ordering::SeqCst) >= self.max_connections {
                active.fetch_sub(1, Ordering::SeqCst);
                tracing::warn!(peer = ?conn.peer_addr().ok(), "too many connections: dropped");
                continue;
            }
            let me = self.clone();
            let slot = Slot(active.clone());
            let spawned = std::thread::Builder::new()
                .name("ferry-serve-conn".into())
                .spawn(move || {
                    let _slot = slot;
                    let peer = conn.peer_addr().map(|a| a.to_string()).unwrap_or_default();
                    match me.handle(conn, &peer) {
                        // Closed before a word: a port probe (`ferry
                        // migrate --to NAME` trying a name's addresses).
                        Err(Error::Peer { op: "greeting", source, .. })
                            if source.kind() == std::io::ErrorKind::UnexpectedEof =>
                        {
                            tracing::debug!(peer, "closed before its greeting");
                        }
                        Err(e) => {
                            tracing::warn!(peer, error = %crate::error::chain(&e), "migration failed")
                        }
                        Ok(()) => {}
                    }
                });
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "no thread for a connection: dropped");
            }
        }
        Ok(())
    }

    fn handle(&self, s: TcpStream, peer: &str) -> Result<()> {
        // Request/answer messages: never wait for a delayed ACK.
        let _ = s.set_nodelay(true);
        wire::keepalive(&s)?;
        let started = Instant::now();
        wire::deadline(&s, Some(self.handshake))?;
        let mut s = Channel::server(s, &self.security, peer)?;
        // Heartbeats keep an authenticated channel up: its first message
        // is still due within the handshake's deadline.
        s.deadline(Some(started + self.handshake));
        let hello = match wire::recv::<_, Hello>(&mut s) {
            Ok(h) => h,
            Err(e) => {
                // An authenticated source hears why (a tampered offer).
                tell_failure(&mut s, Failure::new(Stage::Receive, &e));
                return Err(e);
            }
        };
        // Said: the phases of a move have their own pace (a dump of many
        // GiB keeps the control connection quiet but for heartbeats).
        s.deadline(None);
        match hello {
            Hello::Pages { migration } => {
                let tx = self.pages.lock().unwrap().remove(&migration);
                match tx {
                    Some(tx) => {
                        let _ = tx.send(s);
                        Ok(())
                    }
                    None => Err(Error::Protocol {
                        what: "a page connection for an unknown migration",
                    }),
                }
            }
            Hello::Offer {
                needs,
                config,
                cpuinfo,
            } => {
                let id = needs.container_id.clone();
                let mode = if needs.postcopy {
                    "postcopy"
                } else {
                    "precopy"
                };
                let at = Progress::default();
                let outcome = self.receive(s, needs, config, cpuinfo, &at);
                log_move(peer, &id, mode, &outcome, &at);
                // Logged as a move, not again as a failed connection.
                Ok(())
            }
            Hello::Outcome { migration } => {
                let decision = self.decision(&migration);
                wire::send(&mut s, &Reply::Outcome { decision })
            }
            Hello::Check { needs, cpuinfo } => {
                crate::runtime::state::validate_id(&needs.container_id)?;
                let (problems, _) = self.judge(&needs, &cpuinfo)?;
                let reply = if problems.is_empty() {
                    Reply::Fits
                } else {
                    Reply::Refused { problems }
                };
                wire::send(&mut s, &reply)
            }
        }
    }

    /// The pre-flight verdict on `needs` here (and the facts it rests on).
    fn judge(&self, needs: &Needs, cpuinfo: &[u8]) -> Result<(Vec<preflight::Problem>, HostFacts)> {
        let facts = HostFacts {
            console: self.console_socket.is_some(),
            ..HostFacts::gather(&self.criu, &self.root)?
        };
        let taken = needs.docker.is_none() && self.root.join(&needs.container_id).exists();
        let mut problems = preflight::judge(&facts, needs, taken, |p| {
            crate::overlay::layer_digest(p).ok()
        });
        if let Some(d) = &needs.docker {
            problems.extend(self.judge_docker(d));
        }
        let scratch = tempfile_dir(&self.root, "cpu")?;
        let cpu = preflight::check_cpuinfo(&self.criu, cpuinfo, &scratch);
        let _ = std::fs::remove_dir_all(&scratch);
        problems.extend(cpu?);
        Ok((problems, facts))
    }

    /// The destination dockerd's verdict on a docker offer.
    fn judge_docker(&self, d: &DockerNeeds) -> Vec<preflight::Problem> {
        let Some(host) = &self.docker else {
            return vec![preflight::Problem::NotDocker];
        };
        match Engine::connect(host.as_deref()).and_then(|e| DockerFacts::gather(&e, d)) {
            Ok(facts) => super::docker::judge(d, &facts),
            Err(e) => vec![preflight::Problem::DockerUnreachable {
                host: host.clone().unwrap_or_else(|| "the default socket".into()),
                error: crate::error::chain(&e),
            }],
        }
    }

    fn receive(
        &self,
        mut s: Channel,
        needs: Needs,
        config: String,
        cpuinfo: Vec<u8>,
        at: &Progress,
    ) -> Result<Received> {
        let id = needs.container_id.clone();
        // Whatever fails before the landing exists, the source hears it:
        // it waits for an answer to its offer.
        let told = |s: &mut Channel, e: Error| {
            tell_failure(s, Failure::new(Stage::Receive, &e));
            Err(e)
        };
        if let Err(e) = crate::runtime::state::validate_id(&id) {
            return told(&mut s, e);
        }
        if !self.receiving.lock().unwrap().insert(id.clone()) {
            let problems = vec![preflight::Problem::IdInUse { id: id.clone() }];
            wire::send(
                &mut s,
                &Reply::Refused {
                    problems: problems.clone(),
                },
            )?;
            return Ok(Received::Refused(problems));
        }
        let _receiving = Receiving(self, id.clone());
        let dir = self.root.join("incoming").join(&id);
        if needs.docker.is_none() && !self.root.join(&id).exists() && dir.exists() {
            // What an earlier move of this id left (its container is gone).
            if let Err(e) = remove_incoming(&dir) {
                return told(&mut s, e);
            }
        }
        let (problems, facts) = match self.judge(&needs, &cpuinfo) {
            Ok(j) => j,
            Err(e) => return told(&mut s, e),
        };
        if !problems.is_empty() {
            wire::send(
                &mut s,
                &Reply::Refused {
                    problems: problems.clone(),
                },
            )?;
            return Ok(Received::Refused(problems));
        }
        // Where it lands: this agent's state root, or a container created
        // on the dockerd (its writable layer, a pending restore).
        let landing = match &needs.docker {
            None => Ok(Landing::Native {
                dir: dir.clone(),
                overlay_mounted: false,
            }),
            Some(d) => self.engine().and_then(|e| Landing::docker(e, d)),
        };
        let mut landing = match landing {
            Ok(l) => l,
            Err(e) => {
                let failure = Failure::new(Stage::Receive, &e);
                let _ = wire::send(&mut s, &Reply::Failed { failure });
                return Err(e);
            }
        };
        // Pre-copy pages land in memory when there is room for them twice
        // (the images and the restored container), as P.Haul keeps CRIU's
        // images on a tmpfs: no disk writeback while the source is frozen,
        // and the restore reads them back at memory speed.
        let pages = Pages::of(&needs, facts.lazy_pages);
        let in_memory = (pages == Pages::Images
            && facts.mem_available > 2 * needs.memory + IN_MEMORY_MARGIN)
            .then_some(needs.memory + IN_MEMORY_MARGIN);
        // Unmounted when the restore is done (or failed, once its CRIU log
        // is kept): the restored tasks hold their pages by then.
        let mut tmpfs = None;
        let result = self.take(
            &mut s,
            &id,
            &mut landing,
            &config,
            pages,
            (in_memory, &mut tmpfs),
            at,
        );
        match &result {
            Ok(_) => {
                landing.keep_restore_log();
                drop(tmpfs.take());
                landing.done();
            }
            Err(e) => {
                let mut failure = Failure::new(at.stage.get(), e);
                if let Some(c) = &mut failure.criu {
                    c.log_file = c
                        .log_file
                        .take()
                        .and_then(|log| self.keep_log(&id, landing.dir(), log));
                }
                drop(tmpfs.take());
                // Nothing of the move stays by the time the source hears.
                landing.discard();
                // The source knows why it gave up; anything else it hears.
                if !matches!(e, Error::SourceAborted { .. }) {
                    tell_failure(&mut s, failure);
                }
            }
        }
        result.map(|pid| Received::Running { pid })
    }

    /// The page connection of the move whose offer was accepted with
    /// `token`, within the handshake's deadline. A source gone meanwhile
    /// (its control connection closed) is noticed at once: its prepared
    /// restore is not kept for the rest of the deadline.
    fn await_pages(&self, s: &Channel, token: &str, rx: Receiver<Channel>) -> Result<Channel> {
        const LOOK_EVERY: Duration = Duration::from_millis(100);
        let until = Instant::now() + self.handshake;
        let what = loop {
            match rx.recv_timeout(LOOK_EVERY) {
                Ok(pages) => return Ok(pages),
                Err(RecvTimeoutError::Disconnected) => break "the page connection did not come",
                Err(RecvTimeoutError::Timeout) if s.peer_hung_up() => {
                    break "the source closed its connection before its page connection came"
                }
                Err(RecvTimeoutError::Timeout) if Instant::now() >= until => {
                    break "the page connection did not come"
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
        };
        self.pages.lock().unwrap().remove(token);
        Err(Error::Protocol { what })
    }

    /// Receives and restores, the images on a tmpfs of the size given
    /// (mounted into `tmpfs`); `at` follows where it is, for the report
    /// of a failure.
    #[allow(clippy::too_many_arguments)]
    fn take(
        &self,
        s: &mut Channel,
        id: &str,
        landing: &mut Landing,
        config: &str,
        pages: Pages,
        (in_memory, tmpfs): (Option<u64>, &mut Option<ImagesTmpfs>),
        at: &Progress,
    ) -> Result<i32> {
        let images = landing.images();
        private_dir(&images)?;
        if let Some(size) = in_memory {
            *tmpfs = Some(ImagesTmpfs::mount(&images, size)?);
        }
        // Everything of a native restore that needs no image, before the
        // source freezes: none of it is in the downtime.
        let mut prepared = None;
        if let Landing::Native { dir, .. } = landing {
            let bundle = dir.join("bundle");
            self.write_bundle(id, &bundle, config)?;
            let lazy_work = (pages != Pages::Images).then(|| landing.lazy_work());
            prepared = Some(self.prepare_restore(id, &images, &bundle, lazy_work.as_deref())?);
        }

        // The page connection names its move by a secret only the
        // authenticated source read (on the sealed control channel), not
        // by the container id anyone could guess.
        let token = page_token()?;
        let (tx, rx) = channel();
        self.pages.lock().unwrap().insert(token.clone(), tx);
        wire::send(
            s,
            &Reply::Accepted {
                migration: token.clone(),
                uffd: pages == Pages::Uffd,
            },
        )?;
        let page_channel = self.await_pages(s, &token, rx)?;
        // Pre-copy into images: CRIU's page server writes the pages as the
        // dump sends them. Otherwise the connection waits for the
        // lazy-pages daemon.
        let (server, lazy_source) = if pages != Pages::Images {
            (None, Some(page_channel))
        } else {
            let dirs = ImageDirs::open(&images)?
                .log_file("page-server.log")
                .log_level(LogLevel::Debug);
            // CRIU reads the pages from a socket of its own, which the
            // relay fills from the sealed page channel.
            let (fd, relay) = page_channel.relay()?;
            let cut = relay.cutter()?;
            let server = self
                .criu
                .page_server_child(&PageServerOptions::new(dirs, PageServerAddr::Socket(fd)))?;
            // criu's swrk process keeps its copy of the socket open after
            // its page-server child died (say of ENOSPC): the source's dump
            // would block writing to it. So the channel is cut as soon as
            // the page server ends badly, which fails the source's dump
            // (and resumes its container) at once.
            let stop = relay.cutter()?;
            let waiter = std::thread::spawn(move || match server.wait() {
                // Ended well, the page server acknowledged the dump's last
                // flush: every page it wrote came through the relay, which
                // forwards only records that opened. Its ack still has to
                // reach the source (Relay::finish sends it before the
                // close record); what the source sends after that no
                // longer matters.
                Ok(()) => {
                    drop(cut);
                    (Ok(()), relay.finish().err())
                }
                // Ended badly, what broke the relay first (a tampered
                // record, a silent source) is the cause, not CRIU's view
                // of the socket's end.
                Err(e) => {
                    let cause = relay.cause();
                    cut.cut();
                    let _ = relay.wait();
                    (Err(Error::from(e)), cause)
                }
            });
            (Some((waiter, stop)), None)
        };
        wire::send(s, &Reply::PagesReady)?;
        // Where the root filesystem sent ahead went, and whether it is an
        // overlay's writable layer.
        let mut ahead: Option<(PathBuf, bool)> = None;
        loop {
            match wire::recv::<_, Step>(s)? {
                Step::Images => {
                    let mut r = StreamReader::new(&mut *s);
                    tarball::unpack(&mut r, &images)?;
                    let bytes = r.drain()?;
                    wire::send(s, &Reply::Received { bytes })?;
                }
                Step::RootfsAhead { overlay } => {
                    if ahead.is_some() {
                        return Err(Error::Protocol {
                            what: "the root filesystem sent ahead twice",
                        });
                    }
                    let tree = match overlay {
                        true => landing.upper()?,
                        false => landing.whole_rootfs()?,
                    };
                    let mut r = StreamReader::new(&mut *s);
                    crate::overlay::unpack_diff(&mut r, &tree)?;
                    let bytes = r.drain()?;
                    ahead = Some((tree, overlay));
                    wire::send(s, &Reply::Received { bytes })?;
                    // The source freezes its container soon after this
                    // arrives (once its CRIU is started); a source that
                    // sends its frozen time with the changes corrects it.
                    at.ready.set(Some(Instant::now()));
                }
                Step::RootfsChanges {
                    removed,
                    lowers,
                    frozen_ms,
                } => {
                    if let Some(t) = frozen_ms.and_then(|ms| freeze_time(Instant::now(), ms)) {
                        at.ready.set(Some(t));
                    }
                    let tree = match (&ahead, &lowers) {
                        (Some((tree, true)), Some(_)) | (Some((tree, false)), None) => tree,
                        _ => {
                            return Err(Error::Protocol {
                                what: "root filesystem changes without the same tree sent ahead",
                            })
                        }
                    };
                    crate::overlay::remove_entries(tree, &removed)?;
                    let mut r = StreamReader::new(&mut *s);
                    crate::overlay::unpack_diff(&mut r, tree)?;
                    let bytes = r.drain()?;
                    // Mounted only once the stream's checksum held.
                    if let Some(lowers) = lowers {
                        landing.layer_received(lowers)?;
                    }
                    wire::send(s, &Reply::Received { bytes })?;
                }
                Step::Restore => break,
                Step::Commit => {
                    return Err(Error::Protocol {
                        what: "a commit before the restore",
                    })
                }
                Step::Abort { reason } => {
                    if let Some((waiter, stop)) = server {
                        // The page server ends at the socket's end. If the
                        // page channel broke before (tampered with), that
                        // is why the source's dump failed.
                        stop.cut();
                        if let Ok((_, Some(cause))) = waiter.join() {
                            return Err(cause);
                        }
                    }
                    return Err(Error::SourceAborted { reason });
                }
            }
        }
        // The dump ended with a FLUSH the page server acknowledged: every
        // page is written.
        if let Some((waiter, _)) = server {
            let (served, cause) = waiter.join().map_err(|_| Error::Protocol {
                what: "the page server's waiter panicked",
            })?;
            served.map_err(|e| cause.unwrap_or(e))?;
        }
        // Restores, leaving the copy stopped, tells the source (with
        // CRIU's stats, which a lazy restore writes in its work dir), and
        // runs the copy only once the source committed: a copy that was
        // never committed is killed before it ran an instruction, so the
        // source may resume whenever it has not committed (Step::Commit).
        // A pre-copy through userfaultfd: the restored copy stays stopped
        // until the daemon says every page is in (`all_in`), and only then
        // is it reported restored.
        let pages_missing = Cell::new(false);
        let restore = |s: &mut Channel, lazy_work: Option<&Path>, all_in: Option<&Receiver<()>>| {
            at.stage.set(Stage::Restore);
            let marker = landing.dir().join(UNCOMMITTED);
            std::fs::write(&marker, &token).map_err(crate::error::io("writing", &marker))?;
            let r = landing.restore(self, id, prepared, lazy_work)?;
            if let Some(all_in) = all_in {
                at.stage.set(Stage::LazyPages);
                if all_in.recv().is_err() {
                    // The daemon failed (its error is the move's): the
                    // copy's memory is incomplete, it never runs.
                    pages_missing.set(true);
                    landing.killer(self, id).kill();
                    self.decide(&token, Decision::Killed);
                    return Err(Error::Protocol {
                        what: "the pages stopped before the last one",
                    });
                }
            }
            self.decide(&token, Decision::Deciding);
            let restored = Reply::Restored {
                pid: r.pid,
                restore_ms: r.restore_ms,
                criu: r.criu,
                docker_id: r.docker_id,
            };
            let ran = wire::send(s, &restored)
                .and_then(|_| match wire::recv::<_, Step>(s)? {
                    Step::Commit => Ok(()),
                    Step::Abort { reason } => Err(Error::SourceAborted { reason }),
                    _ => Err(Error::Protocol {
                        what: "something other than the commit after the restore",
                    }),
                })
                .and_then(|_| landing.run(self, id));
            if let Err(e) = ran {
                landing.killer(self, id).kill();
                self.decide(&token, Decision::Killed);
                return Err(e);
            }
            self.decide(&token, Decision::Running);
            at.running.set(Some(Instant::now()));
            let _ = std::fs::remove_file(&marker);
            // An answer lost here is asked for (Hello::Outcome).
            let _ = wire::send(s, &Reply::Running);
            Ok::<_, Error>(r.pid)
        };
        let Some(mut source) = lazy_source else {
            return restore(s, None, None);
        };
        // Post-copy, or pre-copy into the tasks: the daemon listens before
        // the restore starts, and serves the restored tasks until their
        // last page is in.
        let work = landing.lazy_work();
        private_dir(&work)?;
        let daemon = LazyPages::bind(&images, &work)?;
        let daemon = match pages {
            Pages::Uffd => daemon.tasks_stopped(),
            _ => daemon,
        };
        // If this agent dies before the last page is in, the guardian (a
        // process of its own holding the userfaultfds too) kills the
        // restored container before it can read a page that never came.
        let daemon = match &landing {
            Landing::Native { dir, .. } => {
                let procs =
                    crate::runtime::cgroup_procs::bundle_procs_files(&dir.join("bundle"), id)?;
                daemon.with_guardian(criu_rpc::lazy::Guardian::spawn(&procs)?)
            }
            Landing::Docker(d) => {
                daemon.with_guardian(criu_rpc::lazy::Guardian::spawn(&d.cgroup_procs()?)?)
            }
        };
        let cancel = AtomicBool::new(false);
        let kill = landing.killer(self, id);
        let (all_in, pages_in) = channel::<()>();
        std::thread::scope(|scope| {
            let served = scope.spawn(|| {
                let served = daemon.serve(&mut source, &cancel, || kill.kill());
                // Every page in: the source's page server may end.
                let _ = source.close();
                if served.is_ok() {
                    let _ = all_in.send(());
                }
                drop(all_in);
                served
            });
            let wait = (pages == Pages::Uffd).then_some(&pages_in);
            let pid = match restore(s, Some(&work), wait) {
                Ok(pid) => pid,
                Err(e) => {
                    cancel.store(true, Ordering::Relaxed);
                    // What broke the page connection (a cut, a tampered
                    // record) is the cause of what the restore then saw.
                    let served = served.join();
                    return match served {
                        Ok(Err(daemon))
                            if pages_missing.get()
                                || matches!(daemon, criu_rpc::Error::LazySource { .. }) =>
                        {
                            Err(Error::from(daemon))
                        }
                        _ => Err(e),
                    };
                }
            };
            at.stage.set(Stage::LazyPages);
            match served.join() {
                Ok(Ok(lazy)) => {
                    tracing::info!(id, ?lazy, "every page arrived");
                    wire::send(s, &Reply::PagesDone { lazy })?;
                    Ok(pid)
                }
                Ok(Err(e)) => {
                    // Its memory is incomplete: it must not run on (the
                    // daemon killed it before letting its faults go).
                    kill.kill();
                    Err(Error::from(e))
                }
                Err(_) => {
                    kill.kill();
                    Err(Error::Protocol {
                        what: "the lazy-pages daemon panicked",
                    })
                }
            }
        })
    }

    /// Removes what an agent killed in the middle of a move left: the
    /// incoming dirs of containers that do not exist here, with their
    /// mounts. Call it before listening.
    pub fn clean_leftovers(&self) {
        if self.docker.is_some() {
            self.clean_docker_leftovers();
        }
        let Ok(rd) = std::fs::read_dir(self.root.join("incoming")) else {
            return;
        };
        for e in rd.flatten() {
            let id = e.file_name().to_string_lossy().into_owned();
            // A restore prepared as the offer came and never run (killed
            // while the images came): what it set up for the container.
            let bundle = e.path().join("bundle");
            if let Err(err) = crate::runtime::setup::remove_unfinished(&self.root, &id, &bundle) {
                tracing::warn!(id, error = %crate::error::chain(&err), "cleaning an unfinished restore up");
            }
            if self.root.join(&id).exists() {
                if !e.path().join(UNCOMMITTED).exists() {
                    continue;
                }
                // Restored, stopped, never committed: the source resumed
                // (or will, once it asked). It never ran; it goes.
                self.forget_uncommitted(&e.path().join(UNCOMMITTED));
                tracing::info!(id, "removing a restored copy that was never committed");
                self.kill_restored(&id);
            }
            if let Err(e) = remove_incoming(&e.path()) {
                tracing::warn!(error = %crate::error::chain(&e), "cleaning an earlier move up");
            }
        }
    }

    /// What a killed agent left on its dockerd: containers it created for
    /// moves that never ran there (a request never claimed, or a restore
    /// that failed) are removed with their pending restores. A container
    /// the runtime restored runs on: only its spent request goes (after a
    /// post-copy whose pages stopped coming, it is killed: its memory is
    /// incomplete).
    fn clean_docker_leftovers(&self) {
        let cleaned = self.engine().and_then(|engine| {
            let root = engine.runtime_root()?;
            // Killed between dockerd's create and the pending request: the
            // container never started, and nothing else knows it.
            for name in Creating::list(&root) {
                match engine.container(&name) {
                    Ok(c) if !c.running && !Pending::of(&root, &c.id)?.dir.exists() => {
                        tracing::info!(name, "removing the docker container of an unfinished move");
                        engine.remove(&c.id, true)?;
                    }
                    _ => {}
                }
                Creating::of(&root, &name)?.done();
            }
            for id in Pending::list(&root) {
                let p = Pending::of(&root, &id)?;
                let uncommitted = p.dir.join(UNCOMMITTED);
                let restored = matches!(p.outcome(), Ok(Some(Outcome::Restored { .. })))
                    && !uncommitted.exists();
                self.forget_uncommitted(&uncommitted);
                let lazy = p.recorded().and_then(|r| r.lazy_work);
                if !restored || lazy.is_some() {
                    tracing::info!(id, "removing the docker container of an unfinished move");
                    engine.remove(&id, true)?;
                }
                p.remove()?;
                if let Some(w) = lazy {
                    super::docker::remove_lazy_work(&w)?;
                }
            }
            Pending::remove_if_empty(&root);
            Ok(())
        });
        if let Err(e) = cleaned {
            tracing::warn!(error = %crate::error::chain(&e), "cleaning earlier docker moves up");
        }
    }

    /// Records that the move of an uncommitted marker found at start was
    /// killed here, for its source's question.
    fn forget_uncommitted(&self, marker: &Path) {
        if let Ok(token) = std::fs::read_to_string(marker) {
            self.decide(token.trim(), Decision::Killed);
        }
    }

    /// A CRIU log of a failed move, which is inside the received state
    /// about to be removed, moved to `ROOT/failed-moves/ID.NAME`, where the
    /// report says it is; `None` when it could not be kept.
    fn keep_log(&self, id: &str, dir: &Path, log: PathBuf) -> Option<PathBuf> {
        if !log.starts_with(dir) {
            return Some(log);
        }
        let kept_dir = self.root.join(FAILED_MOVES);
        let name = log.file_name()?.to_string_lossy().into_owned();
        let kept = kept_dir.join(format!("{id}.{name}"));
        let copied = std::fs::create_dir_all(&kept_dir).and_then(|_| std::fs::copy(&log, &kept));
        match copied {
            Ok(_) => Some(kept),
            Err(e) => {
                tracing::warn!(id, error = %e, log = %log.display(), "keeping CRIU's log of a failed move");
                None
            }
        }
    }

    /// The bundle of a container received into this agent's state root:
    /// the source's config, its root at `rootfs`, its cgroups under the
    /// agent's `--cgroup-parent`.
    fn write_bundle(&self, id: &str, bundle: &Path, config: &str) -> Result<()> {
        let rootfs = bundle.join("rootfs");
        std::fs::create_dir_all(&rootfs).map_err(crate::error::io("creating", &rootfs))?;
        // Untyped on purpose (not oci-spec's Spec, as every other read of a
        // config is): the rewrite keeps the fields oci-spec does not know
        // (a newer runtime-spec's, vendors') as the source had them.
        let mut spec: serde_json::Value =
            serde_json::from_str(config).map_err(|source| Error::BadMessage { source })?;
        spec["root"]["path"] = "rootfs".into();
        if let Some(parent) = &self.cgroup_parent {
            // The agent's parent plus the container's own name, whatever
            // path it had on the source: a container moved back and forth
            // between agents must not nest one parent in the other's at
            // every move. A systemd path (slice:prefix:name) is kept.
            let own = spec["linux"]["cgroupsPath"].as_str().unwrap_or("");
            if !own.contains(':') {
                spec["linux"]["cgroupsPath"] = format!(
                    "{}/{id}",
                    parent.display().to_string().trim_end_matches('/')
                )
                .into();
            }
        }
        let cfg = bundle.join("config.json");
        std::fs::write(&cfg, spec.to_string()).map_err(crate::error::io("writing", &cfg))
    }

    fn kill_restored(&self, id: &str) {
        if let Ok(c) = crate::runtime::Container::load(&self.root, id) {
            if let Err(e) = c.delete(true) {
                tracing::warn!(id, error = %crate::error::chain(&e), "removing the half-restored container");
            }
        }
    }

    /// The options of the received container's restore (what `ferry
    /// restore --detach --tcp-established --file-locks` does, called
    /// rather than run).
    fn restore_options(&self, images: &Path, lazy_work: Option<&Path>) -> RestoreOptions {
        RestoreOptions {
            work_path: lazy_work.map(Path::to_path_buf),
            lazy_pages: lazy_work.is_some(),
            // Not this agent's child: see the module's doc.
            criu_parent: true,
            // Run only once the source commits.
            leave_stopped: true,
            // The received images are this move's alone: their pages give
            // their memory (an images tmpfs) back as the tasks take theirs.
            auto_dedup: true,
            ..super::CRIU_FLAGS.restore(images.to_path_buf())
        }
    }

    /// Everything of the received container's restore that needs no image
    /// ([`prepare_restore`]: its state dir, network, console and cgroups,
    /// criu started in them), done before the source freezes.
    fn prepare_restore(
        &self,
        id: &str,
        images: &Path,
        bundle: &Path,
        lazy_work: Option<&Path>,
    ) -> Result<PreparedRestore> {
        let console = self
            .console_socket
            .clone()
            .filter(|_| crate::runtime::spec::bundle_has_terminal(bundle));
        let rt = RestoreRuntimeOptions {
            console_socket: console,
            // The checkpointed stdio pipes become /dev/null: never the
            // agent's own stdio, and never a pipe (nobody would read it).
            stdio: Some(dev_null_stdio()?),
            ..Default::default()
        };
        let opts = self.restore_options(images, lazy_work);
        prepare_restore(&self.root, id, bundle, &self.criu, &opts, &rt)
    }

    /// Restores the received container once its images are in; returns
    /// its pid and how long the restore took.
    fn restore(
        &self,
        prepared: PreparedRestore,
        images: &Path,
        lazy_work: Option<&Path>,
    ) -> Result<(i32, f64)> {
        let start = Instant::now();
        let (_, restored) = prepared.run(&self.restore_options(images, lazy_work))?;
        let restore_ms = start.elapsed().as_secs_f64() * 1000.0;
        Ok((restored.pid.as_raw(), restore_ms))
    }
}

/// Where a received container lands.
enum Landing {
    /// This agent's state root: `incoming/ID/` holds the images and the
    /// bundle, whose rootfs is an overlay of the received writable layer
    /// or the whole received tree.
    Native { dir: PathBuf, overlay_mounted: bool },
    /// A container created on the agent's dockerd, under the source's
    /// name: the writable layer goes into its own upper dir (dockerd
    /// mounts it at start), the images into a pending restore that the
    /// runtime's `create` claims when the container is started.
    Docker(Box<DockerLanding>),
}

/// What a restore on the destination reports.
struct RestoredHere {
    pid: i32,
    restore_ms: f64,
    criu: Option<criu_rpc::stats::RestoreStats>,
    docker_id: Option<String>,
}

/// Kills a restored copy whose memory cannot be completed.
enum Killer<'a> {
    Native(&'a Agent, &'a str),
    Docker(&'a Engine, &'a str),
}

impl Killer<'_> {
    fn kill(&self) {
        match self {
            Killer::Native(agent, id) => agent.kill_restored(id),
            Killer::Docker(engine, id) => {
                if let Err(e) = engine.remove(id, true) {
                    tracing::warn!(id, error = %crate::error::chain(&e), "removing the half-restored docker container");
                }
            }
        }
    }
}

impl Landing {
    /// Creates the container on `engine`'s dockerd (refused before if
    /// its name is taken: pre-flight) and its pending restore.
    fn docker(engine: Engine, d: &DockerNeeds) -> Result<Landing> {
        DockerLanding::create(engine, d, None).map(|l| Landing::Docker(Box::new(l)))
    }

    /// A directory that holds what was received (for CRIU logs).
    fn dir(&self) -> &Path {
        match self {
            Landing::Native { dir, .. } => dir,
            Landing::Docker(d) => d.dir(),
        }
    }

    fn images(&self) -> PathBuf {
        match self {
            Landing::Native { dir, .. } => dir.join("images"),
            Landing::Docker(d) => d.images(),
        }
    }

    fn lazy_work(&self) -> PathBuf {
        match self {
            Landing::Native { dir, .. } => dir.join("lazy-work"),
            Landing::Docker(d) => d.lazy_work().to_path_buf(),
        }
    }

    /// Where a whole root filesystem goes (no overlay on the source).
    fn whole_rootfs(&self) -> Result<PathBuf> {
        match self {
            Landing::Native { dir, .. } => {
                let rootfs = dir.join("bundle/rootfs");
                std::fs::create_dir_all(&rootfs).map_err(crate::error::io("creating", &rootfs))?;
                Ok(rootfs)
            }
            Landing::Docker(_) => Err(Error::Protocol {
                what: "a docker container's root filesystem sent whole (its writable layer moves as a diff)",
            }),
        }
    }

    /// Where the writable layer's diff is unpacked.
    fn upper(&self) -> Result<PathBuf> {
        match self {
            Landing::Native { dir, .. } => {
                let (upper, work) = crate::overlay::layer_dirs(&dir.join("layer"));
                for d in [&upper, &work] {
                    std::fs::create_dir_all(d).map_err(crate::error::io("creating", d))?;
                }
                Ok(upper)
            }
            Landing::Docker(d) => Ok(d.upper().to_path_buf()),
        }
    }

    /// The writable layer is in: a native landing mounts it over `lowers`
    /// (dockerd mounts its own at start).
    fn layer_received(&mut self, lowers: Vec<PathBuf>) -> Result<()> {
        if let Landing::Native {
            dir,
            overlay_mounted,
        } = self
        {
            let (upper, work) = crate::overlay::layer_dirs(&dir.join("layer"));
            crate::overlay::Overlay {
                lowers,
                upper,
                work,
            }
            .mount(&dir.join("bundle/rootfs"))?;
            *overlay_mounted = true;
        }
        Ok(())
    }

    fn restore(
        &self,
        agent: &Agent,
        id: &str,
        prepared: Option<PreparedRestore>,
        lazy_work: Option<&Path>,
    ) -> Result<RestoredHere> {
        match self {
            Landing::Native {
                dir,
                overlay_mounted,
            } => {
                let images = dir.join("images");
                let Some(prepared) = prepared else {
                    return Err(Error::Protocol {
                        what: "a restore here that was not prepared",
                    });
                };
                let (pid, restore_ms) = agent.restore(prepared, &images, lazy_work)?;
                // Its own now: delete takes the overlay and the dir down.
                crate::runtime::Container::load(&agent.root, id)?
                    .own_received(dir, *overlay_mounted)?;
                Ok(RestoredHere {
                    pid,
                    restore_ms,
                    criu: criu_rpc::stats::read_restore_stats(lazy_work.unwrap_or(&images))
                        .ok()
                        .flatten(),
                    docker_id: None,
                })
            }
            Landing::Docker(d) => {
                let (pid, restore_ms, criu) = d.start(lazy_work, true)?;
                if lazy_work.is_some() {
                    warn_unguarded(d);
                }
                Ok(RestoredHere {
                    pid,
                    restore_ms,
                    criu,
                    docker_id: Some(d.id().to_string()),
                })
            }
        }
    }

    /// Continues the restored copy's tasks (restored stopped).
    fn run(&self, agent: &Agent, id: &str) -> Result<()> {
        let c = match self {
            Landing::Native { .. } => crate::runtime::Container::load(&agent.root, id)?,
            Landing::Docker(d) => {
                crate::runtime::Container::load(&d.engine().runtime_root()?, d.id())?
            }
        };
        c.kill(libc::SIGCONT, true)
    }

    fn killer<'a>(&'a self, agent: &'a Agent, id: &'a str) -> Killer<'a> {
        match self {
            Landing::Native { .. } => Killer::Native(agent, id),
            Landing::Docker(d) => Killer::Docker(d.engine(), d.id()),
        }
    }

    /// After a failure: nothing of the move stays (the created docker
    /// container goes with its layer and pending restore).
    fn discard(self) {
        let r = match self {
            Landing::Native { dir, .. } => remove_incoming(&dir),
            Landing::Docker(d) => d.discard(),
        };
        if let Err(e) = r {
            tracing::warn!(error = %crate::error::chain(&e), "removing a failed move's leftovers");
        }
    }

    /// After a success, before the images' tmpfs goes: CRIU's restore log
    /// is kept beside the bundle (a post-copy restore logs into its work
    /// dir, a pre-copy one among the images, on their own tmpfs).
    fn keep_restore_log(&self) {
        let Landing::Native { dir, .. } = self else {
            return;
        };
        let kept = dir.join(crate::restore::RESTORE_LOG);
        for from in [self.lazy_work(), dir.join("images")] {
            let log = from.join(crate::restore::RESTORE_LOG);
            if std::fs::rename(&log, &kept).is_ok() || std::fs::copy(&log, &kept).is_ok() {
                return;
            }
        }
    }

    /// After a success: what only the restore needed goes (the images,
    /// pages included, and a post-copy's work dir: as much disk as the
    /// container's memory, for its whole life otherwise); CRIU's restore
    /// log was kept beside the bundle before ([`Landing::keep_restore_log`]).
    /// A docker container's pending restore is spent.
    fn done(self) {
        let r = match self {
            Landing::Native { dir, .. } => {
                let images = dir.join("images");
                crate::mount::detach(&images, "unmounting")
                    .and_then(|_| {
                        std::fs::remove_dir_all(&images)
                            .map_err(crate::error::io("removing", &images))
                    })
                    .and_then(|_| {
                        let work = dir.join("lazy-work");
                        match work.exists() {
                            true => std::fs::remove_dir_all(&work)
                                .map_err(crate::error::io("removing", &work)),
                            false => Ok(()),
                        }
                    })
            }
            Landing::Docker(d) => d.done(),
        };
        if let Err(e) = r {
            tracing::warn!(error = %crate::error::chain(&e), "removing what a received container's restore needed");
        }
    }
}

/// Says so when a docker container restored with lazy pages is not in the
/// cgroup its guardian watches (a dockerd with a `--cgroup-parent` of its
/// own): the guardian would find nobody to kill there.
fn warn_unguarded(d: &DockerLanding) {
    let here = d
        .engine()
        .runtime_root()
        .and_then(|root| crate::runtime::Container::load(&root, d.id()))
        .and_then(|c| crate::runtime::cgroup_procs::procs_files(&c.state.cgroup));
    match (here, d.cgroup_procs()) {
        (Ok(here), Ok(watched)) if here == watched => {}
        (here, watched) => tracing::warn!(
            id = d.id(),
            ?here,
            ?watched,
            "the post-copy guardian may not watch this container's cgroup: if this agent dies before the last page, nothing kills it"
        ),
    }
}

/// /dev/null as stdin, stdout and stderr.
fn dev_null_stdio() -> Result<Stdio> {
    let null = Path::new("/dev/null");
    let open = || {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(null)
            .map(OwnedFd::from)
            .map_err(crate::error::io("opening", null))
    };
    Ok(Stdio {
        stdin: open()?,
        stdout: open()?,
        stderr: open()?,
    })
}

/// Removes a received container's directory, its mounts first: the
/// images tmpfs and an overlay rebuilt from the writable layer (removing
/// through the overlay would whiteout its lower layers).
fn remove_incoming(dir: &Path) -> Result<()> {
    // Gone already: a received container's delete takes its dir along.
    if !dir.exists() {
        return Ok(());
    }
    for m in ["images", "bundle/rootfs"] {
        crate::mount::detach(&dir.join(m), "unmounting")?;
    }
    std::fs::remove_dir_all(dir).map_err(|source| Error::Io {
        op: "removing the leftovers of an earlier move in",
        path: dir.to_path_buf(),
        source,
    })
}

/// Sends the source a failure and ends the channel; then reads away what
/// the source still sends for a moment (a stream it was writing), so that
/// closing with unread data does not reset the connection under the reply.
fn tell_failure(s: &mut Channel, failure: Failure) {
    use std::io::Read;
    let _ = wire::send(s, &Reply::Failed { failure });
    let _ = s.close();
    // Raw bytes: after a tampered record, no later record opens.
    let Ok(mut tcp) = s.tcp() else { return };
    let until = Instant::now() + Duration::from_secs(1);
    let mut buf = vec![0u8; 64 << 10];
    while let Some(left) = until.checked_duration_since(Instant::now()) {
        if left.is_zero() || tcp.set_read_timeout(Some(left)).is_err() {
            break;
        }
        match tcp.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
}

/// A fresh secret naming a move's page connection.
fn page_token() -> Result<String> {
    let mut t = [0u8; 32];
    getrandom::fill(&mut t).map_err(|_| Error::Random)?;
    Ok(hex::encode(t))
}

/// Connections served at once; more are dropped at accept.
pub const MAX_CONNECTIONS: usize = 64;

/// A served connection's place among [`MAX_CONNECTIONS`], given back on
/// drop.
struct Slot(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Where the CRIU logs of failed moves are kept, under the state root.
const FAILED_MOVES: &str = "failed-moves";

/// Room kept beside pre-copy pages received in memory.
const IN_MEMORY_MARGIN: u64 = 256 << 20;

/// A tmpfs over a migration's images directory, unmounted on drop.
struct ImagesTmpfs(PathBuf);

impl ImagesTmpfs {
    fn mount(at: &Path, size: u64) -> Result<ImagesTmpfs> {
        nix::mount::mount(
            Some("tmpfs"),
            at,
            Some("tmpfs"),
            nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
            Some(format!("size={size},mode=0700").as_str()),
        )
        .map_err(|e| Error::Io {
            op: "mounting a tmpfs for the images on",
            path: at.to_path_buf(),
            source: e.into(),
        })?;
        Ok(ImagesTmpfs(at.to_path_buf()))
    }
}

impl Drop for ImagesTmpfs {
    fn drop(&mut self) {
        if let Err(e) = crate::mount::detach(&self.0, "unmounting the images tmpfs") {
            tracing::warn!(error = %crate::error::chain(&e), "after a move");
        }
    }
}

/// A scratch directory under `root`, unique among this agent's threads.
fn tempfile_dir(root: &Path, tag: &str) -> Result<PathBuf> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let d = root.join(format!(".{tag}-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&d).map_err(crate::error::io("creating", &d))?;
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_freeze_is_dated_from_the_sources_count_only_when_it_can_be_one() {
        let now = Instant::now();
        assert_eq!(
            freeze_time(now, 250.0),
            now.checked_sub(Duration::from_millis(250))
        );
        assert_eq!(freeze_time(now, 0.0), Some(now));
        for bad in [-1.0, f64::NAN, f64::INFINITY, f64::MAX, 1e300] {
            assert_eq!(freeze_time(now, bad), None, "{bad}");
        }
    }

    fn needs(postcopy: bool, precopy_uffd: Option<bool>) -> Needs {
        let mut v = serde_json::json!({
            "container_id": "c1", "memory": 1 << 20, "disk": 1 << 20,
            "lower_layers": [], "arch": "x86_64", "postcopy": postcopy,
        });
        if let Some(u) = precopy_uffd {
            v["precopy_uffd"] = u.into();
        }
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn pre_copy_pages_go_into_the_tasks_only_when_both_hosts_can() {
        assert_eq!(Pages::of(&needs(false, Some(true)), true), Pages::Uffd);
        // This host cannot restore lazily.
        assert_eq!(Pages::of(&needs(false, Some(true)), false), Pages::Images);
        // The source did not offer it (--precopy-pages images, or a source
        // from before it: the field absent).
        assert_eq!(Pages::of(&needs(false, Some(false)), true), Pages::Images);
        assert_eq!(Pages::of(&needs(false, None), true), Pages::Images);
        assert_eq!(Pages::of(&needs(true, Some(false)), true), Pages::Postcopy);
    }
}
