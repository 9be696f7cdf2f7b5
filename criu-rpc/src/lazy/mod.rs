//! A lazy-pages daemon: the destination half of post-copy migration.
//!
//! CRIU's RPC has no request for `criu lazy-pages`, so this module plays its
//! part, speaking the same two protocols CRIU's own daemon does
//! (criu/uffd.c):
//!
//! - with the restore: a restore run with `lazy_pages` connects to
//!   `lazy-pages.socket` in its work directory and, for each task it creates,
//!   sends the task's pid (an `i32`; negative for a zombie) and then, with
//!   one dummy byte, its userfaultfd as `SCM_RIGHTS`; when the restore is
//!   complete it sends `LAZY_PAGES_RESTORE_FINISHED`;
//! - with the source: the dump run with `lazy_pages` serves the pages it
//!   kept back ([`remote`]).
//!
//! Page faults are served first, one read-ahead chunk at a time; once the
//! restore is finished the rest is pulled in the background, in chunks that
//! grow while no fault comes (CRIU's heuristic: 64 KiB, up to 4 MiB, back to
//! 64 KiB on a fault). `fork`, `mremap`, `munmap` and `MADV_DONTNEED` in the
//! restored tasks arrive as userfaultfd events and keep each process's
//! [`iovs::Iovs`] true. When every range of every process is in, the daemon
//! closes the page server (the source's dump then finishes) and returns.
//!
//! With a [`Guardian`] ([`LazyPages::with_guardian`]), a second process
//! holds a copy of every userfaultfd the daemon holds, so that the death
//! of the daemon's process cannot let the tasks run on zero pages: see
//! [`guardian`].

pub mod guardian;
mod images;
mod iovs;
mod remote;
mod uffd;

use std::collections::VecDeque;
use std::io::{IoSliceMut, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{recv, recvmsg, ControlMessageOwned, MsgFlags};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
pub use guardian::Guardian;
use guardian::Slot;
use iovs::Iovs;
pub use remote::PAGE_SIZE;
use uffd::{Event, Fill, Uffd};

/// The socket name CRIU's restore connects to, in its work directory.
pub const SOCKET_NAME: &str = "lazy-pages.socket";
const RESTORE_FINISHED: u32 = 0x5253_5446;
const FAULT_CHUNK: u64 = 64 << 10;
const MAX_CHUNK: u64 = 4 << 20;

/// How the background pulls pages in: requests in flight at once, their
/// bytes at most, and the largest chunk one asks for (chunks grow from
/// [`FAULT_CHUNK`] while no fault comes, as CRIU's daemon grows them).
#[derive(Debug, Clone, Copy)]
struct Window {
    requests: usize,
    bytes: u64,
    max_chunk: u64,
}

/// Tasks running (post-copy): up to four requests of 2 MiB in flight, so
/// that the source serves the next while this side copies the last in. A
/// fault waits behind what is in flight, 8 MiB at most (~8 ms here). One
/// 4 MiB request at a time (each chunk waiting for the whole way there and
/// back), the background of a 1 GiB post-copy took 1.7-2.1 s in one run of
/// hack/bench-migrate, 1.5-1.6 s with four 1 MiB requests (4 MiB), and
/// 1.35-1.47 s so (a 4 GiB one came at ~270 MiB/s one at a time).
const RUNNING: Window = Window {
    requests: 4,
    bytes: 8 << 20,
    max_chunk: 2 << 20,
};

/// Tasks stopped (see [`LazyPages::tasks_stopped`]): no fault waits.
const STOPPED: Window = Window {
    requests: 64,
    bytes: 32 << 20,
    max_chunk: MAX_CHUNK,
};

/// What the daemon did.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LazyStats {
    /// Processes whose memory was served (forked children included).
    pub processes: u64,
    pub faults: u64,
    /// Pages copied in because a task touched them.
    pub fault_bytes: u64,
    /// Pages copied in by the background transfer.
    pub background_bytes: u64,
    /// Faults on never-dumped pages, answered with the zero page.
    pub zero_pages: u64,
    /// Page bytes received from the source (a page copied into a process
    /// that then left is received but not copied).
    pub received_bytes: u64,
    /// From accepting the restore's connection to its "finished".
    pub restore_ms: f64,
    /// From accepting the restore's connection to the last page.
    pub total_ms: f64,
}

/// One restored process (or a child it forked) with pages still to come.
struct Proc {
    /// Names this process among the daemon's for the requests in flight
    /// (a forked child shares its parent's `image_pid`).
    key: u64,
    /// The pid in the images, by which the source knows the pages (a
    /// forked child asks for its parent's).
    image_pid: i32,
    uffd: Uffd,
    iovs: Iovs,
    gone: bool,
    /// Where the guardian holds its copy of `uffd`, when there is one.
    guarded: Option<Slot>,
}

#[repr(C, align(4096))]
struct Page([u8; PAGE_SIZE as usize]);

/// A page-aligned buffer for UFFDIO_COPY (the kernel wants `src` aligned).
struct Buffer(Vec<Page>);

impl Buffer {
    fn new(bytes: u64) -> Buffer {
        Buffer(
            (0..bytes / PAGE_SIZE)
                .map(|_| Page([0; PAGE_SIZE as usize]))
                .collect(),
        )
    }

    fn bytes(&mut self) -> &mut [u8] {
        let len = self.0.len() * PAGE_SIZE as usize;
        // SAFETY: Page is repr(C) around a byte array with no padding, so
        // the Vec's storage is `len` initialised bytes.
        unsafe { std::slice::from_raw_parts_mut(self.0.as_mut_ptr().cast::<u8>(), len) }
    }
}

/// A bound lazy-pages socket, waiting for a restore.
pub struct LazyPages {
    listener: UnixListener,
    images: PathBuf,
    path: PathBuf,
    guardian: Option<Guardian>,
    window: Window,
}

impl LazyPages {
    /// Listens on `work_dir/lazy-pages.socket`. Call it before starting the
    /// restore with `lazy_pages` and the same work dir; `images_dir` is the
    /// restore's images (the daemon reads pagemap and mm images there).
    pub fn bind(images_dir: &Path, work_dir: &Path) -> Result<LazyPages> {
        let path = work_dir.join(SOCKET_NAME);
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).map_err(|source| Error::Io {
            op: "listening for the lazy-pages restore on",
            path: path.clone(),
            source,
        })?;
        listener.set_nonblocking(true).map_err(|source| Error::Io {
            op: "configuring",
            path: path.clone(),
            source,
        })?;
        Ok(LazyPages {
            listener,
            images: images_dir.to_path_buf(),
            path,
            guardian: None,
            window: RUNNING,
        })
    }

    /// The restored tasks stay stopped until every page is in (a pre-copy
    /// whose pages go into the tasks): no fault waits behind the
    /// background, so it keeps a window of up to 64 requests (32 MiB) in
    /// flight, topped up as each answer is read: the
    /// source's page server always has the next request while this side
    /// copies the last answer in. (One at a time, each answer waits a round
    /// trip through both relays: a JVM's thousands of small ranges came at
    /// ~270 MiB/s. Batches of 8 MiB sent at once and read to the end before
    /// the next: 920-980 MiB/s at 1 GiB (1,090 with 32 MiB batches), the
    /// relays idle for a round trip per batch; this window: 1,160-1,200
    /// MiB/s, both cores busy, hack/bench-migrate.) Without it, a window
    /// of 8 MiB, so that a fault waits behind little ([`RUNNING`]).
    pub fn tasks_stopped(mut self) -> LazyPages {
        self.window = STOPPED;
        self
    }

    /// Serves under `guardian`'s watch: every task's userfaultfd goes to
    /// it as it arrives (the post-copy fails if it cannot take one, or if
    /// it dies), and it is released when [`LazyPages::serve`] returns,
    /// after `on_failure` on a failure. If this process dies before, the
    /// guardian kills the tasks. Dropped without serving, the guardian
    /// kills them too (see [`Guardian`]).
    pub fn with_guardian(mut self, guardian: Guardian) -> LazyPages {
        self.guardian = Some(guardian);
        self
    }

    /// Serves the restore's tasks with pages from `source` (a connection to
    /// the lazy dump's page server) until every page is in. `cancel` stops a
    /// daemon whose restore failed before connecting or finishing.
    ///
    /// `on_failure` runs when the pages cannot all be delivered, while the
    /// daemon still holds the tasks' userfaultfds: closing them would let a
    /// faulting task go on with a zero page where its memory was, so the
    /// caller kills the tasks there, before that can happen.
    pub fn serve<S: Read + Write>(
        mut self,
        source: S,
        cancel: &AtomicBool,
        on_failure: impl FnOnce(),
    ) -> Result<LazyStats> {
        let guardian = self.guardian.take();
        let client = match self.accept(cancel, guardian.as_ref()) {
            Ok(c) => c,
            Err(e) => {
                // No task exists yet: nothing to kill, nothing to guard.
                release(guardian);
                return Err(e);
            }
        };
        let t0 = Instant::now();
        let mut d = Daemon {
            images: self.images.clone(),
            remote: remote::Remote::new(source),
            procs: Vec::new(),
            buf: Buffer::new(MAX_CHUNK),
            chunk: FAULT_CHUNK,
            window: self.window,
            in_flight: VecDeque::new(),
            in_flight_bytes: 0,
            cursor: None,
            next_key: 0,
            stats: LazyStats::default(),
            guardian,
        };
        let result = d.run(client, cancel, t0);
        let _ = std::fs::remove_file(&self.path);
        if let Err(e) = result {
            on_failure();
            // The tasks are dead: the guardian has nothing left to guard.
            d.release_guardian();
            return Err(e);
        }
        d.release_guardian();
        d.remote.close()?;
        d.stats.received_bytes = d.remote.received;
        d.stats.total_ms = t0.elapsed().as_secs_f64() * 1000.0;
        Ok(d.stats)
    }

    fn accept(&self, cancel: &AtomicBool, guardian: Option<&Guardian>) -> Result<UnixStream> {
        loop {
            match self.listener.accept() {
                Ok((s, _)) => {
                    s.set_nonblocking(false).map_err(|source| Error::Lazy {
                        op: "configuring the restore's connection",
                        source,
                    })?;
                    return Ok(s);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if cancel.load(Ordering::Relaxed) {
                        return Err(Error::LazyCancelled);
                    }
                    let watched = guardian.and_then(watch);
                    let guard_pid = watched.as_ref().map(|(pid, _)| *pid);
                    let mut fds = vec![PollFd::new(self.listener.as_fd(), PollFlags::POLLIN)];
                    fds.extend(watched.map(|(_, poll)| poll));
                    let _ = poll(&mut fds, PollTimeout::from(100u8));
                    if let (Some(pid), Some(f)) = (guard_pid, fds.get(1)) {
                        check_guardian(pid, f)?;
                    }
                }
                Err(source) => {
                    return Err(Error::Io {
                        op: "accepting the restore's connection on",
                        path: self.path.clone(),
                        source,
                    })
                }
            }
        }
    }
}

/// One message of the restore on the lazy-pages socket.
enum FromRestore {
    Task { pid: i32, uffd: OwnedFd },
    Zombie,
    Finished,
    Closed,
}

fn read_restore(client: &UnixStream) -> Result<FromRestore> {
    let sys = |op: &'static str| {
        move |e: Errno| Error::Lazy {
            op,
            source: e.into(),
        }
    };
    let mut word = [0u8; 4];
    let n = recv(client.as_raw_fd(), &mut word, MsgFlags::MSG_WAITALL)
        .map_err(sys("reading the restore's message"))?;
    if n == 0 {
        return Ok(FromRestore::Closed);
    }
    if n != 4 {
        return Err(Error::LazyProtocol {
            what: format!("the restore sent a {n}-byte message"),
        });
    }
    let v = u32::from_le_bytes(word);
    if v == RESTORE_FINISHED {
        return Ok(FromRestore::Finished);
    }
    let pid = v as i32;
    if pid < 0 {
        return Ok(FromRestore::Zombie);
    }
    let mut dummy = [0u8; 1];
    let mut iov = [IoSliceMut::new(&mut dummy)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let msg = recvmsg::<()>(
        client.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(sys("receiving a task's userfaultfd"))?;
    for c in msg.cmsgs().map_err(sys("reading the control message"))? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            if let Some(fd) = fds.first() {
                // SAFETY: SCM_RIGHTS installed this fd in our table.
                let uffd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(*fd) };
                return Ok(FromRestore::Task { pid, uffd });
            }
        }
    }
    Err(Error::LazyProtocol {
        what: format!("the restore sent pid {pid} without its userfaultfd"),
    })
}

/// Releases a guardian whose watch is over. A failure is only logged:
/// every page is in or the tasks are dead, so nothing depends on it.
fn release(guardian: Option<Guardian>) {
    if let Some(g) = guardian {
        let pid = g.pid().as_raw();
        if let Err(e) = g.release() {
            tracing::warn!(pid, error = %e, "releasing the post-copy guardian");
        }
    }
}

/// The guardian's pid, and its socket in a poll set: no event asked for,
/// so that only its hang-up (`POLLHUP`, `POLLERR`) shows.
fn watch(g: &Guardian) -> Option<(i32, PollFd<'_>)> {
    let sock = g.socket()?;
    Some((g.pid().as_raw(), PollFd::new(sock, PollFlags::empty())))
}

/// Fails when the poll saw the guardian hang up: without it, the death of
/// this process would let the tasks run on zero pages, so the post-copy
/// fails now, while the daemon can still kill them (`on_failure`).
fn check_guardian(pid: i32, polled: &PollFd<'_>) -> Result<()> {
    match polled.revents() {
        Some(ev) if !ev.is_empty() => Err(Error::Guardian {
            op: "watching it",
            pid,
            source: std::io::Error::other("it died before the last page arrived"),
        }),
        _ => Ok(()),
    }
}

/// A background request sent to the source and not answered yet.
struct InFlight {
    /// The [`Proc::key`] of the process the pages go to.
    key: u64,
    image_pid: i32,
    /// Run-time and dump-time address of the first page.
    at: u64,
    img_addr: u64,
    pages: u64,
}

struct Daemon<S> {
    images: PathBuf,
    remote: remote::Remote<S>,
    procs: Vec<Proc>,
    buf: Buffer,
    /// The next background chunk's size.
    chunk: u64,
    window: Window,
    /// The background requests sent, oldest first: the source's page
    /// server answers in that order (page_server_serve reads a request,
    /// answers it, reads the next).
    in_flight: VecDeque<InFlight>,
    in_flight_bytes: u64,
    /// Where the last request in flight ended (a process's key and a
    /// run-time address): the window is topped up from there, so that no
    /// range is asked for twice. `None` while nothing is in flight: the
    /// next pass starts from the first process, and picks up what an
    /// earlier one left (a short answer, a copy the kernel put off).
    cursor: Option<(u64, u64)>,
    next_key: u64,
    stats: LazyStats,
    guardian: Option<Guardian>,
}

impl<S> Daemon<S> {
    fn new_key(&mut self) -> u64 {
        self.next_key += 1;
        self.next_key
    }

    /// Hands the guardian a copy of a new process's userfaultfd.
    fn guard(&mut self, uffd: &Uffd) -> Result<Option<Slot>> {
        self.guardian
            .as_mut()
            .map(|g| g.guard(uffd.as_fd()))
            .transpose()
    }

    /// Drops the processes `keep` refuses (their userfaultfds close, which
    /// unregisters their ranges), and the guardian's copies with them.
    fn drop_procs(&mut self, keep: impl Fn(&Proc) -> bool) -> Result<()> {
        let mut freed = Vec::new();
        self.procs.retain(|p| {
            let k = keep(p);
            if !k {
                freed.extend(p.guarded);
            }
            k
        });
        if let Some(g) = &mut self.guardian {
            for slot in freed {
                g.forget(slot)?;
            }
        }
        Ok(())
    }

    /// Ends the guardian's watch (every page is in, or the tasks were
    /// killed).
    fn release_guardian(&mut self) {
        release(self.guardian.take());
    }
}

impl<S: Read + Write> Daemon<S> {
    fn run(&mut self, client: UnixStream, cancel: &AtomicBool, t0: Instant) -> Result<()> {
        let mut client = Some(client);
        let mut finished = false;
        loop {
            let work_left = self.procs.iter().any(|p| !p.gone && !p.iovs.is_empty());
            if finished && !work_left {
                // Answers still on their way (for a process that left) are
                // read before the page server hears goodbye.
                return self.drain();
            }
            let timeout = if finished && work_left {
                PollTimeout::ZERO
            } else {
                PollTimeout::from(200u8)
            };
            let (client_ev, proc_ev) = {
                let mut fds: Vec<PollFd> = Vec::with_capacity(self.procs.len() + 2);
                if let Some(c) = &client {
                    fds.push(PollFd::new(c.as_fd(), PollFlags::POLLIN));
                }
                let watched = self.guardian.as_ref().and_then(watch);
                let guard_pid = watched.as_ref().map(|(pid, _)| *pid);
                fds.extend(watched.map(|(_, poll)| poll));
                for p in &self.procs {
                    fds.push(PollFd::new(p.uffd.as_fd(), PollFlags::POLLIN));
                }
                match poll(&mut fds, timeout) {
                    Ok(_) | Err(Errno::EINTR) => {}
                    Err(e) => {
                        return Err(Error::Lazy {
                            op: "polling the userfaultfds",
                            source: e.into(),
                        })
                    }
                }
                let off = usize::from(client.is_some());
                if let Some(pid) = guard_pid {
                    check_guardian(pid, &fds[off])?;
                }
                let ev: Vec<PollFlags> = fds
                    .iter()
                    .map(|f| f.revents().unwrap_or(PollFlags::empty()))
                    .collect();
                let off = off + usize::from(guard_pid.is_some());
                (client.as_ref().map(|_| ev[0]), ev[off..].to_vec())
            };
            if !finished && cancel.load(Ordering::Relaxed) {
                return Err(Error::LazyCancelled);
            }
            let mut busy = false;
            for (i, ev) in proc_ev.iter().enumerate() {
                if !ev.is_empty() && !self.procs[i].gone {
                    busy = true;
                    self.events(i)?;
                }
            }
            if let Some(ev) = client_ev.filter(|e| !e.is_empty()) {
                busy = true;
                let c = client.as_ref().expect("polled the client");
                let msg = if ev.contains(PollFlags::POLLIN) {
                    read_restore(c)?
                } else {
                    FromRestore::Closed
                };
                match msg {
                    FromRestore::Task { pid, uffd } => {
                        let uffd = Uffd::new(uffd);
                        // Before anything can fail: once the restorer
                        // closes the task's own copy, ours and the
                        // guardian's are all that keep its ranges armed,
                        // and if this process dies, the guardian's alone.
                        let guarded = self.guard(&uffd)?;
                        let iovs = images::collect(&self.images, pid)?;
                        tracing::debug!(pid, bytes = iovs.bytes(), "lazy task");
                        self.stats.processes += 1;
                        let key = self.new_key();
                        self.procs.push(Proc {
                            key,
                            image_pid: pid,
                            uffd,
                            iovs,
                            gone: false,
                            guarded,
                        });
                    }
                    FromRestore::Zombie => {}
                    FromRestore::Finished => {
                        finished = true;
                        self.stats.restore_ms = t0.elapsed().as_secs_f64() * 1000.0;
                    }
                    FromRestore::Closed if finished => client = None,
                    FromRestore::Closed => {
                        return Err(Error::LazyProtocol {
                            what: "the restore hung up before it finished (it failed; see its log)"
                                .into(),
                        })
                    }
                }
            }
            // A process whose pages are all in needs us no more: closing its
            // userfaultfd unregisters its ranges (userfaultfd_release).
            if finished {
                self.drop_procs(|p| !p.gone && !p.iovs.is_empty())?;
            } else {
                self.drop_procs(|p| !p.gone)?;
            }
            if finished && !busy {
                self.background()?;
            }
        }
    }

    fn events(&mut self, i: usize) -> Result<()> {
        // What is in flight goes in first: before an event can move or drop
        // its range, and before a fault's request, whose answer must not
        // wait behind the window's nor be taken for one of them (with the
        // tasks stopped, neither comes).
        self.drain()?;
        let events = match self.procs[i].uffd.read_events() {
            Ok(Some(e)) => e,
            Ok(None) => {
                self.procs[i].gone = true;
                return Ok(());
            }
            Err(e) => {
                return Err(self.uffd_error("reading the userfaultfd", i, e));
            }
        };
        for ev in events {
            if self.procs[i].gone {
                break;
            }
            match ev {
                Event::PageFault { addr } => self.fault(i, addr & !(PAGE_SIZE - 1))?,
                Event::Fork { uffd } => {
                    let uffd = Uffd::new(uffd);
                    let guarded = self.guard(&uffd)?;
                    let child = Proc {
                        key: self.new_key(),
                        image_pid: self.procs[i].image_pid,
                        uffd,
                        iovs: self.procs[i].iovs.clone(),
                        gone: false,
                        guarded,
                    };
                    self.stats.processes += 1;
                    self.procs.push(child);
                }
                Event::Remap { from, to, len } => self.procs[i].iovs.remap(from, to, len),
                Event::Remove { start, end } => {
                    // The range stays mapped: stop catching its faults so
                    // the kernel zero-fills it, as MADV_DONTNEED means.
                    match self.procs[i].uffd.unregister(start, end - start) {
                        Ok(()) => {}
                        Err(Errno::ENOMEM) => self.procs[i].gone = true,
                        Err(e) => {
                            return Err(self.uffd_error("unregistering a removed range", i, e))
                        }
                    }
                    self.procs[i].iovs.drop_range(start, end - start);
                }
                Event::Unmap { start, end } => self.procs[i].iovs.drop_range(start, end - start),
                Event::Unknown { event } => {
                    return Err(Error::LazyProtocol {
                        what: format!("unknown userfaultfd event {event:#x}"),
                    })
                }
            }
        }
        Ok(())
    }

    fn uffd_error(&self, op: &'static str, i: usize, e: Errno) -> Error {
        Error::Uffd {
            op,
            pid: self.procs[i].image_pid,
            source: e,
        }
    }

    fn fault(&mut self, i: usize, page: u64) -> Result<()> {
        self.stats.faults += 1;
        self.chunk = FAULT_CHUNK;
        match self.procs[i].iovs.find(page).copied() {
            Some(iov) => {
                let len = (iov.end - page).min(FAULT_CHUNK);
                let copied = self.fetch(i, page, iov.img_addr(page), len)?;
                self.stats.fault_bytes += copied;
            }
            None => {
                // Never dumped (or already copied by an earlier fault of
                // another thread): the zero page, or just a wake-up.
                let p = &mut self.procs[i];
                match p.uffd.zero(page, PAGE_SIZE) {
                    Ok(Fill::Done) => self.stats.zero_pages += 1,
                    Ok(Fill::Partial { .. }) => {
                        let _ = p.uffd.wake(page, PAGE_SIZE);
                    }
                    Ok(Fill::Gone) => p.gone = true,
                    Err(e) => return Err(self.uffd_error("mapping the zero page", i, e)),
                }
            }
        }
        Ok(())
    }

    /// Pulls the next ranges in: tops the window of requests in flight
    /// up (see [`LazyPages::tasks_stopped`]), then reads the oldest answer
    /// and copies it in.
    fn background(&mut self) -> Result<()> {
        self.top_up()?;
        self.chunk = (self.chunk + FAULT_CHUNK).min(self.window.max_chunk);
        self.receive_oldest()
    }

    /// Asks for the ranges after the cursor, one chunk each, until the
    /// window is full or nothing is left after it.
    fn top_up(&mut self) -> Result<()> {
        let Window {
            requests: max_requests,
            bytes: max_bytes,
            ..
        } = self.window;
        let first = match self.cursor {
            None => 0,
            Some((key, _)) => match self.procs.iter().position(|p| p.key == key) {
                Some(i) => i,
                // Its process left: this pass ends with what is in flight.
                None => return Ok(()),
            },
        };
        let after = self.cursor;
        for p in self.procs[first..].iter().filter(|p| !p.gone) {
            let from = match after {
                Some((key, addr)) if key == p.key => addr,
                _ => 0,
            };
            for iov in p.iovs.from(from) {
                let mut at = iov.start;
                while at < iov.end {
                    if self.in_flight.len() >= max_requests || self.in_flight_bytes >= max_bytes {
                        return Ok(());
                    }
                    let len = (iov.end - at).min(self.chunk);
                    let pages = len / PAGE_SIZE;
                    let img_addr = iov.img_addr(at);
                    self.remote.request(p.image_pid, img_addr, pages)?;
                    self.in_flight.push_back(InFlight {
                        key: p.key,
                        image_pid: p.image_pid,
                        at,
                        img_addr,
                        pages,
                    });
                    self.in_flight_bytes += len;
                    at += len;
                    self.cursor = Some((p.key, at));
                }
            }
        }
        Ok(())
    }

    /// Reads the answer to the oldest request in flight, if any, and
    /// copies it into its process (a process that left meanwhile: the
    /// answer is read and dropped).
    fn receive_oldest(&mut self) -> Result<()> {
        let Some(r) = self.in_flight.pop_front() else {
            return Ok(());
        };
        self.in_flight_bytes -= r.pages * PAGE_SIZE;
        if self.in_flight.is_empty() {
            self.cursor = None;
        }
        let got = self
            .remote
            .receive(r.image_pid, r.img_addr, r.pages, self.buf.bytes())?;
        if let Some(i) = self.procs.iter().position(|p| p.key == r.key && !p.gone) {
            let copied = self.fill(i, r.at, got)?;
            self.stats.background_bytes += copied;
        }
        Ok(())
    }

    /// Reads every answer still in flight, copying each in.
    fn drain(&mut self) -> Result<()> {
        while !self.in_flight.is_empty() {
            self.receive_oldest()?;
        }
        Ok(())
    }

    /// Brings `len` bytes at run-time `addr` (dump-time `img_addr`) from the
    /// source into process `i`; returns the bytes copied in.
    fn fetch(&mut self, i: usize, addr: u64, img_addr: u64, len: u64) -> Result<u64> {
        let pid = self.procs[i].image_pid;
        let got = self
            .remote
            .get(pid, img_addr, len / PAGE_SIZE, self.buf.bytes())?;
        self.fill(i, addr, got)
    }

    /// Copies the `got` pages the buffer holds into process `i` at
    /// run-time `addr`; returns the bytes copied in.
    fn fill(&mut self, i: usize, addr: u64, got: u64) -> Result<u64> {
        let bytes = got * PAGE_SIZE;
        let mut off = 0;
        let mut copied = 0;
        while off < bytes {
            let p = &self.procs[i];
            match p
                .uffd
                .copy(addr + off, &self.buf.bytes()[off as usize..bytes as usize])
            {
                Ok(Fill::Done) => {
                    copied += bytes - off;
                    off = bytes;
                }
                // A page is there already (another thread's fault raced
                // us): skip it.
                Ok(Fill::Partial {
                    bytes: b,
                    errno: Errno::EEXIST,
                }) => {
                    copied += b;
                    off += b + PAGE_SIZE;
                }
                // The mm is changing (a fork or mremap event is queued):
                // the rest stays in the set and comes again.
                Ok(Fill::Partial { bytes: b, .. }) => {
                    copied += b;
                    off += b;
                    break;
                }
                Ok(Fill::Gone) => {
                    self.procs[i].gone = true;
                    return Ok(copied);
                }
                Err(e) => return Err(self.uffd_error("copying pages in", i, e)),
            }
        }
        self.procs[i].iovs.drop_range(addr, off.min(bytes));
        Ok(copied)
    }
}
