//! A TCP relay between `ferry migrate` and `ferry serve` that plays the
//! network's broken and hostile parts: it throttles, flips a byte, puts an
//! earlier record in place of a later one, records every byte (what an
//! eavesdropper gets), cuts every connection, or stops forwarding without
//! closing anything (a silent partition).
//!
//! It follows the channel's framing (oci/src/migrate/channel.rs), so that a
//! test aims at a phase of the move rather than at a guessed byte offset:
//! each direction of a connection opens with an 8-byte greeting (its last
//! byte says whether the side uses identities and whether it asked for
//! plaintext), then the Noise handshake's messages (the source sends one
//! with a shared key, two with identities; the agent one), each a 2-byte
//! big-endian length and a body, then records framed the same way. A
//! record whose body is only its kind byte (and the AEAD tag when sealed)
//! is a ping, the agent's accept or the close; every other one carries data
//! and is shown to the relay's [`Rule`], which says what happens to it.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Which way bytes go through the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dir {
    /// From the source (`ferry migrate`) to the agent.
    Up,
    /// From the agent to the source.
    Down,
}

/// What the old, simple relay did to every connection's source-to-agent
/// bytes (kept for the tests of tests/migrate.rs).
#[derive(Debug, Clone, Copy)]
pub enum Tamper {
    /// Flips the byte `at` bytes into the first connection (the control
    /// connection).
    FlipByte { at: usize },
    /// Forwards at most this many bytes a second on each connection.
    Throttle { bytes_per_sec: usize },
}

/// A data record on its way, as a [`Rule`] sees it.
#[derive(Debug, Clone, Copy)]
pub struct Record {
    /// The connection, in the order the source opened them: 0 is the
    /// control connection, 1 the page connection.
    pub conn: usize,
    pub dir: Dir,
    /// Its place among the data records of this connection and direction.
    pub index: usize,
    /// The application bytes it carries (its body less the kind byte and
    /// the tag).
    pub len: usize,
    /// The bytes of this connection and direction before it.
    pub offset: u64,
}

/// What happens to a data record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    /// Flip one bit pattern of its body's byte `at` (clamped to the body).
    Flip {
        at: usize,
    },
    /// Send, in its place, the data record `index` of the same connection
    /// and direction, as it went before (only the first [`KEPT`] are kept).
    Replay {
        index: usize,
    },
    /// Stop forwarding, both ways, on every connection, closing nothing:
    /// this record and all that follow stay in the relay.
    Stall,
    /// Break every connection at once, as [`Relay::cut`] does: this record
    /// goes nowhere.
    Cut,
}

/// Data records kept per connection and direction, for [`Verdict::Replay`].
pub const KEPT: usize = 64;

/// Decides the fate of each data record (of every connection, both ways).
pub type Rule = Box<dyn FnMut(&Record) -> Verdict + Send>;

/// How a relay is set up: see [`Relay::builder`].
pub struct Builder {
    to: String,
    rule: Option<Rule>,
    raw_flip: Option<(usize, u64)>,
    throttle: Option<u64>,
    capture: bool,
}

impl Builder {
    /// Each data record goes by `rule` first.
    pub fn rule(mut self, rule: impl FnMut(&Record) -> Verdict + Send + 'static) -> Builder {
        self.rule = Some(Box::new(rule));
        self
    }

    /// Flips the byte `at` bytes into connection `conn`, source to agent,
    /// whatever part of the framing it is.
    pub fn flip_raw(mut self, conn: usize, at: u64) -> Builder {
        self.raw_flip = Some((conn, at));
        self
    }

    /// Forwards at most `bytes_per_sec` a second of each connection's
    /// source-to-agent bytes.
    pub fn throttle(mut self, bytes_per_sec: u64) -> Builder {
        self.throttle = Some(bytes_per_sec);
        self
    }

    /// Keeps every byte of every connection, both ways, as it arrived
    /// ([`Relay::captured`]).
    pub fn capture(mut self) -> Builder {
        self.capture = true;
        self
    }

    /// Listens on a free port of 127.0.0.1 and relays to `to`.
    pub fn start(self) -> Relay {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let shared = Arc::new(Shared {
            to: self.to,
            rule: Mutex::new(self.rule),
            raw_flip: self.raw_flip,
            throttle: self.throttle,
            capture: self.capture,
            socks: Mutex::new(Vec::new()),
            stalled: Mutex::new(None),
            closed: AtomicBool::new(false),
            events: Mutex::new(Vec::new()),
            streams: Mutex::new(HashMap::new()),
        });
        let s = shared.clone();
        std::thread::spawn(move || accept(l, s));
        Relay { addr, shared }
    }
}

/// A relay between the source and the agent; ends (every connection cut)
/// when dropped.
pub struct Relay {
    /// Where the source connects (`--to`).
    pub addr: String,
    shared: Arc<Shared>,
}

impl Relay {
    /// A relay to `to` that does nothing until told (see [`Builder`]).
    pub fn builder(to: &str) -> Builder {
        Builder {
            to: to.to_string(),
            rule: None,
            raw_flip: None,
            throttle: None,
            capture: false,
        }
    }

    /// The relay of tests/migrate.rs: `tamper` applied to the source's
    /// bytes.
    pub fn start(to: String, tamper: Tamper) -> Relay {
        let b = Relay::builder(&to);
        match tamper {
            Tamper::FlipByte { at } => b.flip_raw(0, at as u64),
            Tamper::Throttle { bytes_per_sec } => b.throttle(bytes_per_sec as u64),
        }
        .start()
    }

    /// Breaks every connection at once, as a link going down would (both
    /// ends see the connection reset or closed).
    pub fn cut(&self) {
        self.shared.cut();
    }

    /// A silent partition from now on: nothing more is forwarded either
    /// way on any connection, and nothing is closed.
    pub fn stall(&self) {
        self.shared.stall("stalled on demand".into());
    }

    /// When the partition began, if it did.
    pub fn stalled_at(&self) -> Option<Instant> {
        *lock(&self.shared.stalled)
    }

    /// What the relay did to the traffic (flips, replays, the stall), in
    /// words, for a test to check that its attack happened at all.
    pub fn events(&self) -> Vec<String> {
        lock(&self.shared.events).clone()
    }

    /// Bytes that arrived on connection `conn` going `dir`.
    pub fn bytes(&self, conn: usize, dir: Dir) -> u64 {
        lock(&self.shared.streams)
            .get(&(conn, dir))
            .map_or(0, |s| s.seen)
    }

    /// How many connections the source opened.
    pub fn connections(&self) -> usize {
        lock(&self.shared.streams)
            .keys()
            .map(|(c, _)| c + 1)
            .max()
            .unwrap_or(0)
    }

    /// With [`Builder::capture`]: every byte of connection `conn` going
    /// `dir`, as it arrived.
    pub fn captured(&self, conn: usize, dir: Dir) -> Vec<u8> {
        lock(&self.shared.streams)
            .get(&(conn, dir))
            .map(|s| s.captured.clone())
            .unwrap_or_default()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::SeqCst);
        self.cut();
        // Wakes the accepting thread, which then sees `closed`.
        let _ = TcpStream::connect(&self.addr);
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

struct Shared {
    to: String,
    rule: Mutex<Option<Rule>>,
    raw_flip: Option<(usize, u64)>,
    throttle: Option<u64>,
    capture: bool,
    /// Both sockets of every connection (to cut them).
    socks: Mutex<Vec<TcpStream>>,
    stalled: Mutex<Option<Instant>>,
    closed: AtomicBool,
    events: Mutex<Vec<String>>,
    streams: Mutex<HashMap<(usize, Dir), Stream>>,
}

/// What went by on one connection in one direction.
#[derive(Default)]
struct Stream {
    seen: u64,
    captured: Vec<u8>,
    /// The first [`KEPT`] data records, framed as they went.
    kept: Vec<Vec<u8>>,
}

impl Shared {
    fn stall(&self, why: String) {
        let mut s = lock(&self.stalled);
        if s.is_none() {
            *s = Some(Instant::now());
            lock(&self.events).push(why);
        }
    }

    fn cut(&self) {
        for c in lock(&self.socks).iter() {
            let _ = c.shutdown(Shutdown::Both);
        }
    }

    fn is_stalled(&self) -> bool {
        lock(&self.stalled).is_some()
    }

    /// Holds a thread that must forward nothing more (its sockets stay
    /// open) until the relay is dropped.
    fn park(&self) {
        while !self.closed.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn event(&self, what: String) {
        lock(&self.events).push(what);
    }
}

fn accept(l: TcpListener, shared: Arc<Shared>) {
    for (conn, c) in l.incoming().enumerate() {
        if shared.closed.load(Ordering::SeqCst) {
            return;
        }
        let Ok(down) = c else { return };
        let Ok(up) = TcpStream::connect(&shared.to) else {
            continue;
        };
        let _ = (down.set_nodelay(true), up.set_nodelay(true));
        lock(&shared.socks).extend([down.try_clone().unwrap(), up.try_clone().unwrap()]);
        for (dir, from, to) in [
            (Dir::Up, down.try_clone().unwrap(), up.try_clone().unwrap()),
            (
                Dir::Down,
                up.try_clone().unwrap(),
                down.try_clone().unwrap(),
            ),
        ] {
            let s = shared.clone();
            std::thread::spawn(move || forward(&s, conn, dir, from, to));
        }
    }
}

/// Relays `from` into `to` (connection `conn`, direction `dir`) until
/// either ends, the relay ends, or a partition parks it.
fn forward(s: &Shared, conn: usize, dir: Dir, mut from: TcpStream, mut to: TcpStream) {
    let mut framer = Framer::new(dir);
    let mut buf = vec![0u8; 64 << 10];
    let mut seen = 0u64;
    let mut sent = 0u64;
    let t0 = Instant::now();
    loop {
        if s.is_stalled() {
            return s.park();
        }
        let k = match from.read(&mut buf) {
            Ok(0) => {
                // A half-close passes on: the other direction may still
                // have something to say.
                let _ = to.shutdown(Shutdown::Write);
                return;
            }
            Ok(k) => k,
            Err(_) => {
                let _ = (from.shutdown(Shutdown::Both), to.shutdown(Shutdown::Both));
                return;
            }
        };
        if s.is_stalled() {
            return s.park();
        }
        {
            let mut streams = lock(&s.streams);
            let st = streams.entry((conn, dir)).or_default();
            st.seen += k as u64;
            if s.capture {
                st.captured.extend_from_slice(&buf[..k]);
            }
        }
        if let Some((c, at)) = s.raw_flip {
            if c == conn && dir == Dir::Up && seen <= at && at < seen + k as u64 {
                buf[(at - seen) as usize] ^= 0x5a;
                s.event(format!("flipped byte {at} of connection {conn}"));
            }
        }
        seen += k as u64;
        for mut unit in framer.feed(&buf[..k]) {
            if let Some(r) = unit.record(conn, dir) {
                let verdict = {
                    let mut streams = lock(&s.streams);
                    let st = streams.entry((conn, dir)).or_default();
                    if st.kept.len() < KEPT {
                        st.kept.push(unit.bytes.clone());
                    }
                    let v = lock(&s.rule)
                        .as_mut()
                        .map_or(Verdict::Pass, |rule| rule(&r));
                    if let Verdict::Replay { index } = v {
                        let earlier = st.kept.get(index).cloned().unwrap_or_else(|| {
                            panic!("replay of record {index}, which was not kept: {r:?}")
                        });
                        unit.bytes = earlier;
                    }
                    v
                };
                match verdict {
                    Verdict::Pass => {}
                    Verdict::Flip { at } => {
                        let i = 2 + at.min(unit.bytes.len() - 3);
                        unit.bytes[i] ^= 0x5a;
                        s.event(format!("flipped a byte of {r:?}"));
                    }
                    Verdict::Replay { index } => {
                        s.event(format!("replayed record {index} in place of {r:?}"))
                    }
                    Verdict::Stall => s.stall(format!("stalled at {r:?}")),
                    Verdict::Cut => {
                        s.event(format!("cut every connection at {r:?}"));
                        s.cut();
                        return;
                    }
                }
            }
            if let (Some(bps), Dir::Up) = (s.throttle, dir) {
                let due =
                    Duration::from_secs_f64((sent + unit.bytes.len() as u64) as f64 / bps as f64);
                if let Some(wait) = due.checked_sub(t0.elapsed()) {
                    std::thread::sleep(wait);
                }
            }
            if s.is_stalled() {
                return s.park();
            }
            if to.write_all(&unit.bytes).is_err() {
                let _ = (from.shutdown(Shutdown::Both), to.shutdown(Shutdown::Both));
                return;
            }
            sent += unit.bytes.len() as u64;
        }
    }
}

/// A whole piece of the framing: the greeting, a handshake message or a
/// record, with its 2-byte length.
struct Unit {
    kind: UnitKind,
    bytes: Vec<u8>,
    offset: u64,
}

enum UnitKind {
    Greeting,
    Handshake,
    /// A record of its kind byte only: ping, accept or close.
    Bare,
    Data {
        index: usize,
        len: usize,
    },
}

impl Unit {
    fn record(&self, conn: usize, dir: Dir) -> Option<Record> {
        match self.kind {
            UnitKind::Data { index, len } => Some(Record {
                conn,
                dir,
                index,
                len,
                offset: self.offset,
            }),
            _ => None,
        }
    }
}

/// Cuts one direction of a connection into [`Unit`]s.
struct Framer {
    dir: Dir,
    got: Vec<u8>,
    /// The size of the unit being read (greeting: 8; else 2, then 2 plus
    /// its length once that is known).
    need: usize,
    greeted: bool,
    handshakes: usize,
    tag: usize,
    index: usize,
    offset: u64,
}

impl Framer {
    fn new(dir: Dir) -> Framer {
        Framer {
            dir,
            got: Vec::new(),
            need: 8,
            greeted: false,
            handshakes: 0,
            tag: 16,
            index: 0,
            offset: 0,
        }
    }

    /// The units `data` completes (a unit's start stays until its end
    /// comes).
    fn feed(&mut self, mut data: &[u8]) -> Vec<Unit> {
        let mut out = Vec::new();
        while !data.is_empty() {
            let take = (self.need - self.got.len()).min(data.len());
            self.got.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.got.len() < self.need {
                break;
            }
            if !self.greeted {
                self.greeted = true;
                let (identity, plaintext) = (self.got[7] & 1 != 0, self.got[7] & 2 != 0);
                // The source's handshake is one message (NNpsk0) or two
                // (XX's first and third); the agent's is one either way.
                self.handshakes = match self.dir {
                    Dir::Up => 1 + identity as usize,
                    Dir::Down => 1,
                };
                self.tag = if plaintext { 0 } else { 16 };
                self.emit(UnitKind::Greeting, &mut out);
                continue;
            }
            if self.need == 2 {
                let len = u16::from_be_bytes([self.got[0], self.got[1]]) as usize;
                if len > 0 {
                    self.need = 2 + len;
                    continue;
                }
            }
            let body = self.need - 2;
            let kind = if self.handshakes > 0 {
                self.handshakes -= 1;
                UnitKind::Handshake
            } else if body <= 1 + self.tag {
                UnitKind::Bare
            } else {
                self.index += 1;
                UnitKind::Data {
                    index: self.index - 1,
                    len: body - 1 - self.tag,
                }
            };
            self.emit(kind, &mut out);
        }
        out
    }

    fn emit(&mut self, kind: UnitKind, out: &mut Vec<Unit>) {
        let bytes = std::mem::take(&mut self.got);
        let offset = self.offset;
        self.offset += bytes.len() as u64;
        self.need = 2;
        out.push(Unit {
            kind,
            bytes,
            offset,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_framer_tells_handshakes_bare_and_data_records_apart() {
        let mut f = Framer::new(Dir::Up);
        let mut wire = b"FERRY\0\x02\x00".to_vec();
        let msg = |n: usize| [(n as u16).to_be_bytes().to_vec(), vec![7u8; n]].concat();
        wire.extend(msg(48)); // the NNpsk0 handshake's first message
        wire.extend(msg(17)); // a ping
        wire.extend(msg(30)); // data: 13 bytes
        wire.extend(msg(65535)); // data: 65518 bytes
                                 // Fed in awkward pieces.
        let mut units = Vec::new();
        for piece in wire.chunks(5000).flat_map(|c| c.chunks(3000)) {
            units.extend(f.feed(piece));
        }
        let got: Vec<_> = units
            .iter()
            .map(|u| match u.kind {
                UnitKind::Greeting => "greeting".to_string(),
                UnitKind::Handshake => "handshake".into(),
                UnitKind::Bare => "bare".into(),
                UnitKind::Data { index, len } => format!("data {index} {len}"),
            })
            .collect();
        assert_eq!(
            got,
            ["greeting", "handshake", "bare", "data 0 13", "data 1 65518"]
        );
        assert_eq!(
            units.iter().map(|u| u.bytes.len()).sum::<usize>(),
            wire.len()
        );
        assert_eq!(units[3].offset, 8 + 50 + 19);
    }
}
