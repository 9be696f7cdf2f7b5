//! The channel between two Ferry hosts: every connection of a move (the
//! control connection and the page connection) is one [`Channel`].
//!
//! A connection opens with two cleartext greetings (magic, protocol
//! version, how the side authenticates, whether it asked for plaintext),
//! so that a mismatch is named on both sides; then a Noise handshake
//! (snow), bound to both greetings as its prologue:
//! `Noise_NNpsk0_25519_AESGCM_SHA256` with a shared key (fresh ephemeral
//! keys each session, the key file as the PSK), or
//! `Noise_XX_25519_AESGCM_SHA256` with per-host identities, each side
//! checking the other's static key against its peers list. After it,
//! every byte travels in records: a 2-byte length, then the AEAD-sealed
//! record (a kind byte and up to [`MAX_DATA`] bytes), each under its
//! direction's next nonce, so that a flipped, replaced, replayed, dropped
//! or reordered record fails to open and ends the move. A connection ends
//! with a sealed `CLOSE` record: a cut before it is an error, never a
//! short stream. With `--plaintext` on both sides, the handshake still
//! authenticates the peer and records carry the same framing unsealed.
//!
//! Silence is an error too: each side sends a sealed `PING` when it has
//! written nothing for a quarter of [`Security::silence`], and a read that
//! sees nothing, not even a ping, for `silence` fails. A peer that stops
//! forwarding without closing (a silent partition, a stalled host) fails
//! the move within that bound, which TCP keepalive alone cannot do when a
//! middlebox answers the probes.
//!
//! CRIU writes memory pages to a file descriptor it is given (`ps.fd`):
//! [`Channel::relay`] gives it one end of a socketpair and pumps between
//! the other end and the channel on two threads, so pages are sealed too.

use std::io::{self, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use snow::{HandshakeState, StatelessTransportState};

use super::auth::Credentials;
use crate::error::{Error, Result};

/// The migration protocol this Ferry speaks. 1 was the HMAC handshake
/// with cleartext frames; 2 is this channel; 3 sent the root filesystem
/// ahead of the freeze; 4 added the pre-copy page
/// path to the offer and its acceptance (`Needs::precopy_uffd`,
/// `Reply::Accepted::uffd`).
pub const PROTOCOL_VERSION: u16 = 4;
const MAGIC: &[u8; 5] = b"FERRY";
const GREETING_LEN: usize = 8;
/// The greeting of protocol 1 (`FERRY\0\0\x01`) reads as version 0 here.
const V1_AS_READ: u16 = 0;

const SHARED: &str = "Noise_NNpsk0_25519_AESGCM_SHA256";
const IDENTITY: &str = "Noise_XX_25519_AESGCM_SHA256";
/// Noise's bound on a message, and the AEAD tag inside it.
const MAX_MESSAGE: usize = 65535;
const TAG: usize = 16;
/// The most application bytes one record carries.
pub const MAX_DATA: usize = MAX_MESSAGE - TAG - 1;

const DATA: u8 = 0;
const PING: u8 = 1;
const CLOSE: u8 = 2;
/// The agent's first record: the handshake checked out on its side too
/// (with XX, the client's identity is judged only after the last message).
const ACCEPT: u8 = 3;

/// How long a peer may be silent by default: well under a minute, well
/// above any pause of a healthy move (pings come every quarter of it).
pub const DEFAULT_SILENCE: Duration = Duration::from_secs(20);
/// The shortest silence allowed (pings every quarter of it).
pub const MIN_SILENCE: Duration = Duration::from_secs(1);

/// How a side secures its connections.
#[derive(Debug, Clone)]
pub struct Security {
    pub credentials: Credentials,
    /// Records go unsealed (a trusted link, asked for on both sides).
    pub plaintext: bool,
    /// A peer silent this long (no data, no ping) fails the move.
    pub silence: Duration,
    /// The migration protocol this side greets with: [`PROTOCOL_VERSION`]
    /// (another only to check how two Ferry versions meet).
    pub protocol: u16,
}

impl Security {
    /// Sealed records, the default silence.
    pub fn new(credentials: Credentials) -> Security {
        Security {
            credentials,
            plaintext: false,
            silence: DEFAULT_SILENCE,
            protocol: PROTOCOL_VERSION,
        }
    }

    /// What the report and `ferry serve` say of the channel.
    pub fn describe(&self) -> String {
        match self.plaintext {
            false => format!(
                "encrypted ({}, {})",
                self.pattern(),
                self.credentials.describe()
            ),
            true => format!(
                "PLAINTEXT (asked for; peers authenticated with {})",
                self.credentials.describe()
            ),
        }
    }

    fn pattern(&self) -> &'static str {
        match self.credentials {
            Credentials::Shared(_) => SHARED,
            Credentials::Identity { .. } => IDENTITY,
        }
    }
}

/// The cleartext opening of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Greeting {
    version: u16,
    identity: bool,
    plaintext: bool,
}

impl Greeting {
    fn ours(s: &Security) -> Greeting {
        Greeting {
            version: s.protocol,
            identity: matches!(s.credentials, Credentials::Identity { .. }),
            plaintext: s.plaintext,
        }
    }

    fn bytes(self) -> [u8; GREETING_LEN] {
        let mut b = [0u8; GREETING_LEN];
        b[..5].copy_from_slice(MAGIC);
        b[5..7].copy_from_slice(&self.version.to_be_bytes());
        b[7] = self.identity as u8 | (self.plaintext as u8) << 1;
        b
    }

    fn parse(b: &[u8; GREETING_LEN], peer: &str) -> Result<Greeting> {
        if &b[..5] != MAGIC {
            return Err(Error::AuthFailed {
                peer: peer.to_string(),
                reason: "it does not speak Ferry's migration protocol",
            });
        }
        Ok(Greeting {
            version: u16::from_be_bytes([b[5], b[6]]),
            identity: b[7] & 1 != 0,
            plaintext: b[7] & 2 != 0,
        })
    }

    /// Why `self` and `theirs` cannot talk, in words that name the fix.
    fn mismatch(self, theirs: Greeting) -> Option<String> {
        let kind = |identity| match identity {
            true => "per-host identities (--identity, --peers)",
            false => "a shared key (--key-file)",
        };
        if theirs.version != self.version {
            let v = match theirs.version {
                V1_AS_READ => 1,
                v => v,
            };
            return Some(format!(
                "it speaks migration protocol {v} and this Ferry speaks {}: run the same Ferry version on both hosts",
                self.version
            ));
        }
        if theirs.identity != self.identity {
            return Some(format!(
                "it authenticates with {} and this side with {}: use the same on both hosts",
                kind(theirs.identity),
                kind(self.identity)
            ));
        }
        if theirs.plaintext != self.plaintext {
            let who = if theirs.plaintext { "it" } else { "this side" };
            return Some(format!(
                "{who} asked for a plaintext channel and the other did not: --plaintext (for a trusted link only) must be given on both hosts"
            ));
        }
        None
    }
}

fn peer_io<'a>(peer: &'a str, op: &'static str) -> impl Fn(io::Error) -> Error + 'a {
    move |source| Error::Peer {
        peer: peer.to_string(),
        op,
        source,
    }
}

fn noise(peer: &str) -> impl Fn(snow::Error) -> Error + '_ {
    move |source| Error::Noise {
        peer: peer.to_string(),
        source,
    }
}

fn write_message(s: &mut TcpStream, msg: &[u8], peer: &str) -> Result<()> {
    let mut frame = Vec::with_capacity(msg.len() + 2);
    frame.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    frame.extend_from_slice(msg);
    s.write_all(&frame).map_err(peer_io(peer, "authenticating"))
}

fn read_message(s: &mut TcpStream, peer: &str) -> Result<Vec<u8>> {
    let mut len = [0u8; 2];
    s.read_exact(&mut len)
        .map_err(peer_io(peer, "authenticating"))?;
    let mut msg = vec![0u8; u16::from_be_bytes(len) as usize];
    s.read_exact(&mut msg)
        .map_err(peer_io(peer, "authenticating"))?;
    Ok(msg)
}

/// The handshake's state machine for `sec`, bound to both greetings.
fn builder(sec: &Security, prologue: &[u8], initiator: bool) -> Result<HandshakeState> {
    let params = sec.pattern().parse().expect("a valid Noise pattern name");
    let b = snow::Builder::new(params);
    let psk;
    let b = match &sec.credentials {
        Credentials::Shared(key) => {
            psk = key.psk();
            b.psk(0, &psk)
        }
        Credentials::Identity { me, .. } => b.local_private_key(me.private()),
    }
    .and_then(|b| b.prologue(prologue));
    let b = b.map_err(noise("this host"))?;
    if initiator {
        b.build_initiator()
    } else {
        b.build_responder()
    }
    .map_err(noise("this host"))
}

/// With identities: the name the peer's static key is listed under.
fn judge_peer(sec: &Security, hs: &HandshakeState, peer: &str) -> Result<Option<String>> {
    let Credentials::Identity { peers, .. } = &sec.credentials else {
        return Ok(None);
    };
    let key = hs.get_remote_static().unwrap_or_default();
    match peers.find(key) {
        Some(name) => Ok(Some(name)),
        None => Err(Error::UnknownPeer {
            peer: peer.to_string(),
            key: hex::encode(key),
        }),
    }
}

/// The records' cipher, shared by both halves (each keeps its nonce).
enum Cipher {
    Sealed(StatelessTransportState),
    Plain,
}

/// A connection after its handshake: read and write it as a byte stream
/// (`Read`, `Write`), or [`split`](Channel::split) it.
pub struct Channel {
    reader: ReadHalf,
    writer: WriteHalf,
    /// The peer's name in our peers list (per-host identities).
    pub peer_name: Option<String>,
}

impl Channel {
    /// Opens the channel on `s` as the connecting side. `s` should have
    /// the handshake's deadline as its timeouts; the channel sets its own.
    pub fn client(mut s: TcpStream, sec: &Security, peer: &str) -> Result<Channel> {
        let ours = Greeting::ours(sec);
        s.write_all(&ours.bytes())
            .map_err(peer_io(peer, "greeting"))?;
        let mut b = [0u8; GREETING_LEN];
        s.read_exact(&mut b).map_err(peer_io(peer, "greeting"))?;
        let theirs = Greeting::parse(&b, peer)?;
        if let Some(why) = ours.mismatch(theirs) {
            return Err(Error::ChannelMismatch {
                peer: peer.to_string(),
                why,
            });
        }
        let prologue = [ours.bytes(), theirs.bytes()].concat();
        let mut hs = builder(sec, &prologue, true)?;
        let mut buf = vec![0u8; MAX_MESSAGE];
        let mut payload = vec![0u8; MAX_MESSAGE];
        let n = hs.write_message(&[], &mut buf).map_err(noise(peer))?;
        write_message(&mut s, &buf[..n], peer)?;
        let refused = |_| Error::AuthFailed {
            peer: peer.to_string(),
            reason:
                "it hung up in the handshake: it holds another key, or does not accept our identity",
        };
        let msg = read_message(&mut s, peer).map_err(refused)?;
        hs.read_message(&msg, &mut payload)
            .map_err(|_| Error::AuthFailed {
                peer: peer.to_string(),
                reason: "it does not hold our key (its handshake does not open with it)",
            })?;
        let peer_name = judge_peer(sec, &hs, peer)?;
        if !hs.is_handshake_finished() {
            let n = hs.write_message(&[], &mut buf).map_err(noise(peer))?;
            write_message(&mut s, &buf[..n], peer)?;
        }
        let transport = hs.into_stateless_transport_mode().map_err(noise(peer))?;
        let mut ch = Channel::new(s, transport, sec, peer, peer_name)?;
        match ch.reader.record() {
            Ok(Some((ACCEPT, _))) => Ok(ch),
            Ok(_) => Err(Error::Protocol {
                what: "a record other than the agent's accept after the handshake",
            }),
            Err(_) => Err(Error::AuthFailed {
                peer: peer.to_string(),
                reason:
                    "it refused us after the handshake: our public key is not in its peers file",
            }),
        }
    }

    /// Opens the channel on `s` as the accepting side.
    pub fn server(mut s: TcpStream, sec: &Security, peer: &str) -> Result<Channel> {
        let mut b = [0u8; GREETING_LEN];
        s.read_exact(&mut b).map_err(peer_io(peer, "greeting"))?;
        let theirs = Greeting::parse(&b, peer)?;
        let ours = Greeting::ours(sec);
        // Our greeting goes out even on a mismatch: the client then names
        // it as precisely as we do.
        s.write_all(&ours.bytes())
            .map_err(peer_io(peer, "greeting"))?;
        if let Some(why) = ours.mismatch(theirs) {
            return Err(Error::ChannelMismatch {
                peer: peer.to_string(),
                why,
            });
        }
        let prologue = [theirs.bytes(), ours.bytes()].concat();
        let mut hs = builder(sec, &prologue, false)?;
        let mut buf = vec![0u8; MAX_MESSAGE];
        let mut payload = vec![0u8; MAX_MESSAGE];
        let msg = read_message(&mut s, peer)?;
        hs.read_message(&msg, &mut payload)
            .map_err(|_| Error::AuthFailed {
                peer: peer.to_string(),
                reason: "it does not hold our key (its handshake does not open with it)",
            })?;
        let n = hs.write_message(&[], &mut buf).map_err(noise(peer))?;
        write_message(&mut s, &buf[..n], peer)?;
        if !hs.is_handshake_finished() {
            let msg = read_message(&mut s, peer)?;
            hs.read_message(&msg, &mut payload).map_err(noise(peer))?;
        }
        let peer_name = judge_peer(sec, &hs, peer)?;
        let transport = hs.into_stateless_transport_mode().map_err(noise(peer))?;
        let ch = Channel::new(s, transport, sec, peer, peer_name)?;
        ch.writer
            .send(ACCEPT, &[])
            .map_err(peer_io(peer, "accepting"))?;
        Ok(ch)
    }

    fn new(
        s: TcpStream,
        transport: StatelessTransportState,
        sec: &Security,
        peer: &str,
        peer_name: Option<String>,
    ) -> Result<Channel> {
        let silence = sec.silence.max(MIN_SILENCE);
        // Every read and write has a deadline: nothing (not even a ping)
        // for `silence` is a dead peer.
        s.set_read_timeout(Some(silence))
            .and_then(|_| s.set_write_timeout(Some(silence)))
            .map_err(Error::Wire)?;
        let cipher = Arc::new(match sec.plaintext {
            false => Cipher::Sealed(transport),
            true => Cipher::Plain,
        });
        let w = s.try_clone().map_err(Error::Wire)?;
        let writer = Arc::new(Mutex::new(Writer {
            tcp: w,
            cipher: cipher.clone(),
            nonce: 0,
            plain: Vec::with_capacity(MAX_MESSAGE),
            out: vec![0u8; MAX_MESSAGE + 2],
            last: Instant::now(),
            closed: false,
            peer: peer.to_string(),
            silence,
        }));
        let beat = Heartbeat::start(Arc::downgrade(&writer), silence / 4)?;
        Ok(Channel {
            reader: ReadHalf {
                r: BufReader::with_capacity(4 * MAX_MESSAGE, s),
                cipher,
                nonce: 0,
                sealed: vec![0u8; MAX_MESSAGE],
                buf: vec![0u8; MAX_MESSAGE],
                pos: 0,
                len: 0,
                closed: false,
                peer: peer.to_string(),
                silence,
                deadline: None,
            },
            writer: WriteHalf {
                w: writer,
                _beat: beat,
            },
            peer_name,
        })
    }

    /// The TCP connection under the channel (to shut it down from another
    /// thread, or read TCP_INFO).
    pub fn tcp(&self) -> Result<TcpStream> {
        self.reader.r.get_ref().try_clone().map_err(Error::Wire)
    }

    /// Whether the peer closed or reset the connection, looked at without
    /// reading (POLLRDHUP: seen even behind unread pings). For a side
    /// waiting on something else than this channel.
    pub fn peer_hung_up(&self) -> bool {
        use std::os::fd::AsRawFd;
        // libc's poll: nix 0.29's PollFlags knows no POLLRDHUP (and reads
        // revents holding it as nothing at all).
        let gone = libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR;
        let mut fd = libc::pollfd {
            fd: self.reader.r.get_ref().as_raw_fd(),
            events: gone,
            revents: 0,
        };
        // SAFETY: one pollfd, valid for the call; a zero timeout.
        let n = unsafe { libc::poll(&mut fd, 1, 0) };
        n > 0 && fd.revents & gone != 0
    }

    /// Bounds the reads that follow to end by `at` (pings or not), or with
    /// `None` lifts the bound: a peer must say what it wants within the
    /// handshake's deadline even while its heartbeat runs.
    pub fn deadline(&mut self, at: Option<Instant>) {
        self.reader.deadline = at;
    }

    /// Ends the channel cleanly: a sealed close record, then no more
    /// writes. The peer reads the end of the stream.
    pub fn close(&mut self) -> io::Result<()> {
        self.writer.close()
    }

    pub fn split(self) -> (ReadHalf, WriteHalf) {
        (self.reader, self.writer)
    }

    /// Hands the channel to a program that wants a file descriptor (CRIU's
    /// `ps.fd`): the returned fd is one end of a socketpair; two threads
    /// pump bytes between the other end and the channel until both
    /// directions ended. An error in either shuts down both the channel
    /// and the socketpair, so the program sees the failure at once.
    pub fn relay(self) -> Result<(OwnedFd, Relay)> {
        let (theirs, ours) = UnixStream::pair().map_err(Error::Wire)?;
        let tcp = self.tcp()?;
        let cut = Cut {
            tcp: tcp.try_clone().map_err(Error::Wire)?,
            local: ours.try_clone().map_err(Error::Wire)?,
            done: Arc::new(AtomicBool::new(false)),
            cause: Arc::new(Mutex::new(None)),
        };
        let (mut reader, mut writer) = self.split();
        let up_local = ours.try_clone().map_err(Error::Wire)?;
        let up_cut = cut.clone()?;
        let up = std::thread::Builder::new()
            .name("ferry-relay-up".into())
            .spawn(move || {
                let r = pump_up(&up_local, &writer).and_then(|n| {
                    writer.close().map_err(Error::Wire)?;
                    Ok(n)
                });
                r.map_err(|e| up_cut.broke(e))
            })
            .map_err(Error::Wire)?;
        let down_cut = cut.clone()?;
        let down = std::thread::Builder::new()
            .name("ferry-relay-down".into())
            .spawn(move || {
                let mut local = &ours;
                match pump_down(&mut reader, &mut local) {
                    Ok(n) => {
                        let _ = ours.shutdown(Shutdown::Write);
                        Ok(n)
                    }
                    Err(e) => Err(down_cut.broke(e)),
                }
            })
            .map_err(Error::Wire)?;
        Ok((
            OwnedFd::from(theirs),
            Relay {
                up: Some(up),
                down: Some(down),
                cut,
                tcp,
            },
        ))
    }
}

/// Seals what `r` gives into records of `w` until `r` ends, reading
/// straight into the record's place; returns the byte count.
///
/// A record is filled with what the socket already holds before it is
/// sealed: CRIU splices pages in a few at a time, and a record per read
/// would cost a seal and a send for every few pages. The first read of a
/// record waits; those after it do not (a program that waits for an answer
/// after a short message must see it sent at once).
fn pump_up(r: &UnixStream, w: &WriteHalf) -> Result<u64> {
    use nix::errno::Errno;
    use nix::sys::socket::{recv, MsgFlags};
    let mut record = vec![0u8; MAX_DATA + 1];
    let mut total = 0;
    loop {
        let (mut n, mut ended) = (0, false);
        while n < MAX_DATA {
            let flags = match n {
                0 => MsgFlags::empty(),
                _ => MsgFlags::MSG_DONTWAIT,
            };
            match recv(r.as_raw_fd(), &mut record[1 + n..], flags) {
                Ok(0) => {
                    ended = true;
                    break;
                }
                Ok(more) => n += more,
                Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) if n > 0 => break,
                Err(e) => return Err(Error::Wire(e.into())),
            }
        }
        if n > 0 {
            w.send_data(&mut record[..n + 1]).map_err(Error::Wire)?;
            total += n as u64;
        }
        if ended {
            return Ok(total);
        }
    }
}

/// Writes what the records of `r` carry into `w`, from where they were
/// opened, until the channel's end; returns the byte count.
fn pump_down(r: &mut ReadHalf, w: &mut impl Write) -> Result<u64> {
    let mut total = 0;
    while let Some(data) = r.data().map_err(Error::Wire)? {
        w.write_all(data).map_err(Error::Wire)?;
        total += data.len() as u64;
    }
    Ok(total)
}

impl Read for Channel {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        self.reader.read(out)
    }
}

impl Write for Channel {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.writer.write(data)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Reading side of a channel: opens records, answers pings by ignoring
/// them, and ends at the sealed close record.
pub struct ReadHalf {
    r: BufReader<TcpStream>,
    cipher: Arc<Cipher>,
    nonce: u64,
    /// The record as read, and opened.
    sealed: Vec<u8>,
    buf: Vec<u8>,
    pos: usize,
    len: usize,
    closed: bool,
    peer: String,
    silence: Duration,
    /// A bound on the whole of the next reads, pings or not.
    deadline: Option<Instant>,
}

impl ReadHalf {
    fn fault(&self, e: Error) -> io::Error {
        let kind = match e {
            Error::PeerSilent { .. } => io::ErrorKind::TimedOut,
            Error::ChannelCut { .. } => io::ErrorKind::UnexpectedEof,
            _ => io::ErrorKind::InvalidData,
        };
        io::Error::new(kind, e)
    }

    /// A failed read, as the channel names it: a timeout is a silent
    /// peer, an end of file a cut.
    fn read_fault(&self, e: io::Error) -> io::Error {
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => self.fault(Error::PeerSilent {
                peer: self.peer.clone(),
                secs: self.silence.as_secs_f64(),
            }),
            io::ErrorKind::UnexpectedEof => self.fault(Error::ChannelCut {
                peer: self.peer.clone(),
            }),
            _ => e,
        }
    }

    /// The next record, opened: (kind, its data at buf[pos..len]). `None`
    /// once the close record was read.
    fn record(&mut self) -> io::Result<Option<(u8, ())>> {
        if self.closed {
            return Ok(None);
        }
        // A whole record within the silence bound (and the channel's
        // deadline, which pings do not extend): a socket timeout alone
        // applies to each read, so a peer trickling a byte at a time
        // would hold the reader for ever.
        let now = Instant::now();
        let until = self
            .deadline
            .map_or(now + self.silence, |d| d.min(now + self.silence));
        let mut len = [0u8; 2];
        if let Err(e) = read_exact_by(&mut self.r, &mut len, until) {
            return Err(self.read_fault(e));
        }
        let len = u16::from_be_bytes(len) as usize;
        let cipher = self.cipher.clone();
        let opened = match &*cipher {
            // The tag is checked before a byte of the record is used.
            Cipher::Sealed(t) => match read_exact_by(&mut self.r, &mut self.sealed[..len], until) {
                Err(e) => Err(self.read_fault(e)),
                Ok(()) => t
                    .read_message(self.nonce, &self.sealed[..len], &mut self.buf)
                    .map_err(|_| {
                        self.fault(Error::Tampered {
                            peer: self.peer.clone(),
                        })
                    }),
            },
            Cipher::Plain => match read_exact_by(&mut self.r, &mut self.buf[..len], until) {
                Err(e) => Err(self.read_fault(e)),
                Ok(()) => Ok(len),
            },
        };
        let n = opened?;
        self.nonce += 1;
        if n == 0 {
            return Err(self.fault(Error::Protocol {
                what: "an empty record",
            }));
        }
        let kind = self.buf[0];
        self.pos = 1;
        self.len = n;
        if kind == CLOSE {
            self.closed = true;
            return Ok(None);
        }
        Ok(Some((kind, ())))
    }
}

impl ReadHalf {
    /// The next bytes of the stream, in place in the opened record (no
    /// copy: the relay writes them on as they are); `None` at its end.
    fn data(&mut self) -> io::Result<Option<&[u8]>> {
        while self.pos == self.len {
            match self.record()? {
                None => return Ok(None),
                Some((DATA, ())) => {}
                Some((PING, ())) => self.pos = self.len,
                Some(_) => {
                    return Err(self.fault(Error::Protocol {
                        what: "a record of an unknown kind",
                    }))
                }
            }
        }
        let data = &self.buf[self.pos..self.len];
        self.pos = self.len;
        Ok(Some(data))
    }
}

impl Read for ReadHalf {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.len {
            if self.data()?.is_none() {
                return Ok(0);
            }
            // Not consumed yet: give it back.
            self.pos = 1;
        }
        let n = out.len().min(self.len - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Fills `buf` from `r` by `deadline` (a timeout past it, an end of file
/// before `buf` is full).
fn read_exact_by(
    r: &mut BufReader<TcpStream>,
    buf: &mut [u8],
    deadline: Instant,
) -> io::Result<()> {
    let mut got = 0;
    while got < buf.len() {
        if r.buffer().is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::ErrorKind::TimedOut.into());
            }
            r.get_ref().set_read_timeout(Some(left))?;
        }
        match r.read(&mut buf[got..]) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

struct Writer {
    tcp: TcpStream,
    cipher: Arc<Cipher>,
    nonce: u64,
    plain: Vec<u8>,
    out: Vec<u8>,
    last: Instant,
    closed: bool,
    peer: String,
    silence: Duration,
}

impl Writer {
    /// Seals and sends one record (one write: its length and body
    /// together, see wire's note on Nagle).
    fn send(&mut self, kind: u8, data: &[u8]) -> io::Result<()> {
        let mut plain = std::mem::take(&mut self.plain);
        plain.clear();
        plain.push(kind);
        plain.extend_from_slice(data);
        let sent = self.send_record(&plain);
        self.plain = plain;
        sent
    }

    /// [`Writer::send`] of a record already laid out: its kind byte, then
    /// its data (the relay reads into such a buffer: no copy).
    fn send_record(&mut self, plain: &[u8]) -> io::Result<()> {
        if self.closed {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "writing to a closed migration channel",
            ));
        }
        let n = match &*self.cipher {
            Cipher::Sealed(t) => t
                .write_message(self.nonce, plain, &mut self.out[2..])
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?,
            Cipher::Plain => {
                self.out[2..2 + plain.len()].copy_from_slice(plain);
                plain.len()
            }
        };
        self.out[..2].copy_from_slice(&(n as u16).to_be_bytes());
        self.nonce += 1;
        self.write_by(n + 2, Instant::now() + self.silence)?;
        self.last = Instant::now();
        Ok(())
    }

    /// Writes `out[..len]` by `deadline`. The socket's send timeout would
    /// not do: Linux applies it to each send call, and a call that sent
    /// anything before it expired returns that much, so a peer that
    /// drains a few bytes per timeout would hold the writer for ever. The
    /// socket stays blocking for the reader: each send here is
    /// non-blocking by its flag, and waits in poll for what is left.
    fn write_by(&mut self, len: usize, deadline: Instant) -> io::Result<()> {
        use nix::errno::Errno;
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        use nix::sys::socket::{send, MsgFlags};
        use std::os::fd::{AsFd, AsRawFd};
        let mut sent = 0;
        while sent < len {
            let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL;
            match send(self.tcp.as_raw_fd(), &self.out[sent..len], flags) {
                Ok(n) => sent += n,
                Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            Error::PeerSilent {
                                peer: self.peer.clone(),
                                secs: self.silence.as_secs_f64(),
                            },
                        ));
                    }
                    let ms = u16::try_from(left.as_millis().max(1)).unwrap_or(u16::MAX);
                    let mut fds = [PollFd::new(self.tcp.as_fd(), PollFlags::POLLOUT)];
                    match poll(&mut fds, PollTimeout::from(ms)) {
                        Ok(_) | Err(Errno::EINTR) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}

/// Writing side of a channel. Each `write` is one record (no buffering: a
/// request is on the wire when `write` returns).
pub struct WriteHalf {
    w: Arc<Mutex<Writer>>,
    _beat: Heartbeat,
}

impl WriteHalf {
    /// Sends data read by the caller into `record[1..]` (`record[0]` is
    /// for the kind byte): one copy less than `write` on the relay's path.
    fn send_data(&self, record: &mut [u8]) -> io::Result<()> {
        record[0] = DATA;
        self.w
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send_record(record)
    }

    fn send(&self, kind: u8, data: &[u8]) -> io::Result<()> {
        self.w
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(kind, data)
    }

    /// Sends the close record and shuts the connection's sending side.
    pub fn close(&mut self) -> io::Result<()> {
        let mut w = self.w.lock().unwrap_or_else(|e| e.into_inner());
        if w.closed {
            return Ok(());
        }
        w.send(CLOSE, &[])?;
        w.closed = true;
        let _ = w.tcp.shutdown(Shutdown::Write);
        Ok(())
    }
}

impl Write for WriteHalf {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(MAX_DATA);
        self.send(DATA, &data[..n])?;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Sends a ping on a writer idle for `every`; stops when the writer is
/// gone (it holds only a weak reference, so it never keeps a connection
/// open) or this is dropped.
struct Heartbeat(#[allow(dead_code)] mpsc::Sender<()>);

impl Heartbeat {
    fn start(w: Weak<Mutex<Writer>>, every: Duration) -> Result<Heartbeat> {
        let (stop, stopped) = mpsc::channel::<()>();
        std::thread::Builder::new()
            .name("ferry-heartbeat".into())
            .spawn(move || {
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(every) {
                    let Some(w) = w.upgrade() else { return };
                    let mut w = w.lock().unwrap_or_else(|e| e.into_inner());
                    if w.closed {
                        return;
                    }
                    if w.last.elapsed() >= every && w.send(PING, &[]).is_err() {
                        return;
                    }
                }
            })
            .map_err(Error::Wire)?;
        Ok(Heartbeat(stop))
    }
}

/// Shuts a relay's two sides down, from any thread.
pub struct Cut {
    tcp: TcpStream,
    local: UnixStream,
    /// Set by the first cut: errors after it are its echo, not a cause.
    done: Arc<AtomicBool>,
    /// What broke the relay first (a tampered record, a silent peer).
    cause: Arc<Mutex<Option<Error>>>,
}

impl Cut {
    fn clone(&self) -> Result<Cut> {
        Ok(Cut {
            tcp: self.tcp.try_clone().map_err(Error::Wire)?,
            local: self.local.try_clone().map_err(Error::Wire)?,
            done: self.done.clone(),
            cause: self.cause.clone(),
        })
    }

    /// Both the network connection and the program's socket: reads and
    /// writes on either fail at once.
    pub fn cut(&self) {
        self.done.store(true, Ordering::SeqCst);
        let _ = self.tcp.shutdown(Shutdown::Both);
        let _ = self.local.shutdown(Shutdown::Both);
    }

    fn take_cause(&self) -> Option<Error> {
        self.cause.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// A relay thread failed with `e`: kept as the relay's cause unless it
    /// only echoes an earlier cut, then the relay is cut. Returns what the
    /// thread reports.
    fn broke(&self, e: Error) -> Error {
        if !self.done.load(Ordering::SeqCst) {
            let mut cause = self.cause.lock().unwrap_or_else(|e| e.into_inner());
            if cause.is_none() {
                *cause = Some(e);
            }
        }
        self.cut();
        Error::Protocol {
            what: "the relay broke (its cause is kept by Relay::cause)",
        }
    }
}

/// The threads of [`Channel::relay`].
pub struct Relay {
    up: Option<JoinHandle<Result<u64>>>,
    down: Option<JoinHandle<Result<u64>>>,
    cut: Cut,
    tcp: TcpStream,
}

impl Relay {
    /// The network connection (TCP_INFO for the page meter).
    pub fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    /// A handle that ends the relay from another thread.
    pub fn cutter(&self) -> Result<Cut> {
        self.cut.clone()
    }

    /// What broke the relay's network side first (a tampered record, a
    /// silent or vanished peer), once: the cause of what the program on
    /// the socket saw fail.
    pub fn cause(&self) -> Option<Error> {
        self.cut.take_cause()
    }

    /// The program on the socket ended well (its process exited): what it
    /// wrote before is still sent, then the close record, and the relay
    /// ends. Cutting instead could drop its last words: CRIU's page
    /// server writes the ack of the dump's final flush and exits, and a
    /// cut before the up thread read that ack leaves the source's dump
    /// waiting for it in vain. Its socket may stay open in another
    /// process (criu swrk keeps its copy after its page-server child
    /// exited), so the socket's end is made here: a read after
    /// `shutdown(SHUT_RD)` still returns what is queued, then 0.
    pub fn finish(mut self) -> Result<()> {
        let _ = self.cut.local.shutdown(Shutdown::Read);
        self.join(true)
    }

    /// Waits for both directions to end; what broke it, if anything.
    pub fn wait(mut self) -> Result<()> {
        self.join(false)
    }

    /// Joins the up thread, then the down thread, after cutting the relay
    /// if `hang_up` (nothing the peer still sends matters then, and the
    /// down thread's failure only echoes that cut). The first failure,
    /// replaced by the relay's cause when there is one: the failure then
    /// only echoes it.
    fn join(&mut self, hang_up: bool) -> Result<()> {
        fn joined(t: Option<JoinHandle<Result<u64>>>) -> Result<()> {
            match t {
                Some(t) => t
                    .join()
                    .unwrap_or(Err(Error::Protocol {
                        what: "a relay thread panicked",
                    }))
                    .map(drop),
                None => Ok(()),
            }
        }
        let up = joined(self.up.take());
        if hang_up {
            self.cut.cut();
        }
        let down = joined(self.down.take());
        let first = if hang_up { up } else { up.and(down) };
        match (first, self.cut.take_cause()) {
            (Err(_), Some(cause)) => Err(cause),
            (r, _) => r,
        }
    }
}

impl Drop for Relay {
    /// A relay dropped unwaited for is cut: its threads end.
    fn drop(&mut self) {
        if self.up.is_some() || self.down.is_some() {
            self.cut.cut();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::migrate::auth::{Identity, Key, Peers};
    use std::net::TcpListener;

    fn shared(k: &Key) -> Security {
        Security::new(Credentials::Shared(k.clone()))
    }

    /// A connected pair of channels, or both sides' results.
    fn open(client: Security, server: Security) -> (Result<Channel>, Result<Channel>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let t = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            Channel::server(s, &server, "client")
        });
        let c = TcpStream::connect(addr).unwrap();
        let c = Channel::client(c, &client, "server");
        (c, t.join().unwrap())
    }

    #[test]
    fn a_shared_key_opens_a_sealed_two_way_stream() {
        let k = Key::generate().unwrap();
        let (c, s) = open(shared(&k), shared(&k));
        let (mut c, mut s) = (c.unwrap(), s.unwrap());
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
        let d2 = data.clone();
        let t = std::thread::spawn(move || {
            let mut got = Vec::new();
            s.read_to_end(&mut got).unwrap();
            s.write_all(b"ok").unwrap();
            s.close().unwrap();
            got
        });
        c.write_all(&d2).unwrap();
        c.close().unwrap();
        assert_eq!(t.join().unwrap(), data);
        let mut reply = Vec::new();
        c.read_to_end(&mut reply).unwrap();
        assert_eq!(reply, b"ok");
    }

    #[test]
    fn different_keys_are_refused_on_both_sides() {
        let (c, s) = open(
            shared(&Key::generate().unwrap()),
            shared(&Key::generate().unwrap()),
        );
        assert!(matches!(c, Err(Error::AuthFailed { .. })), "{:?}", c.err());
        assert!(matches!(s, Err(Error::AuthFailed { .. })), "{:?}", s.err());
    }

    #[test]
    fn a_plaintext_request_meets_a_refusal_naming_the_flag() {
        let k = Key::generate().unwrap();
        let mut plain = shared(&k);
        plain.plaintext = true;
        let (c, s) = open(plain, shared(&k));
        let c = crate::error::chain(&c.err().unwrap());
        assert!(c.contains("--plaintext"), "{c}");
        assert!(s.is_err());
    }

    /// Two Ferry versions of different migration protocols refuse each
    /// other at the greeting (before any offer, so before anything is
    /// frozen), each side naming both versions and the fix; the same for
    /// a Ferry of protocol 1, whose greeting read as 0.
    #[test]
    fn different_protocol_versions_are_refused_naming_both() {
        let k = Key::generate().unwrap();
        let newer = Security {
            protocol: PROTOCOL_VERSION + 1,
            ..shared(&k)
        };
        for (client, server) in [(newer.clone(), shared(&k)), (shared(&k), newer)] {
            let (theirs_c, theirs_s) = (server.protocol, client.protocol);
            let (c, s) = open(client, server);
            for (side, r, theirs, ours) in [
                ("client", c, theirs_c, theirs_s),
                ("server", s, theirs_s, theirs_c),
            ] {
                let e = r.err().unwrap_or_else(|| panic!("the {side} accepted"));
                assert!(matches!(e, Error::ChannelMismatch { .. }), "{e:?}");
                let m = crate::error::chain(&e);
                assert!(
                    m.contains(&format!("it speaks migration protocol {theirs}"))
                        && m.contains(&format!("this Ferry speaks {ours}"))
                        && m.contains("same Ferry version"),
                    "{side}: {m}"
                );
            }
        }
        // Protocol 1's greeting (FERRY, 0, 0, 1).
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let old = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            s.write_all(b"FERRY\0\0\x01").unwrap();
            let mut b = [0u8; GREETING_LEN];
            let _ = s.read_exact(&mut b);
        });
        let e = Channel::client(TcpStream::connect(addr).unwrap(), &shared(&k), "old")
            .err()
            .unwrap();
        old.join().unwrap();
        let m = crate::error::chain(&e);
        assert!(
            m.contains("it speaks migration protocol 1")
                && m.contains(&format!("this Ferry speaks {PROTOCOL_VERSION}")),
            "{m}"
        );
    }

    #[test]
    fn identities_are_judged_against_each_sides_peers() {
        let (a, b, stranger) = (
            Identity::generate().unwrap(),
            Identity::generate().unwrap(),
            Identity::generate().unwrap(),
        );
        let d = tempfile::tempdir().unwrap();
        let peers = |keys: &[&Identity]| {
            let p = d.path().join(format!("peers{}", keys.len()));
            let text: String = keys
                .iter()
                .map(|k| format!("{} host\n", k.public))
                .collect();
            std::fs::write(&p, text).unwrap();
            Peers::load(&p).unwrap()
        };
        let sec = |me: &Identity, peers: Peers| {
            Security::new(Credentials::Identity {
                me: me.clone(),
                peers,
            })
        };
        let (c, s) = open(sec(&a, peers(&[&b])), sec(&b, peers(&[&a, &stranger])));
        assert_eq!(c.unwrap().peer_name.as_deref(), Some("host"));
        assert_eq!(s.unwrap().peer_name.as_deref(), Some("host"));
        // A client the agent does not list: both sides fail.
        let (c, s) = open(sec(&stranger, peers(&[&b])), sec(&b, peers(&[&a])));
        assert!(matches!(s, Err(Error::UnknownPeer { .. })), "{:?}", s.err());
        assert!(c.is_err());
        // An agent the client does not list.
        let (c, _) = open(sec(&a, peers(&[&stranger])), sec(&b, peers(&[&a])));
        assert!(matches!(c, Err(Error::UnknownPeer { .. })), "{:?}", c.err());
    }

    /// CRIU's page server writes its last ack and exits while criu swrk
    /// still holds its socket: finishing the relay then delivers the ack
    /// and a clean close, never a cut.
    #[test]
    fn a_finished_relay_delivers_the_programs_last_words_then_closes() {
        let k = Key::generate().unwrap();
        for _ in 0..50 {
            let (c, s) = open(shared(&k), shared(&k));
            let (mut c, s) = (c.unwrap(), s.unwrap());
            let (program, relay) = s.relay().unwrap();
            // swrk's copy of the socket stays open through the finish.
            let swrk = program.try_clone().unwrap();
            let mut program = UnixStream::from(program);
            program.write_all(b"ack!").unwrap();
            drop(program);
            relay.finish().unwrap();
            let mut got = Vec::new();
            c.read_to_end(&mut got).unwrap();
            assert_eq!(got, b"ack!");
            drop(swrk);
        }
    }

    /// A peer that vanishes without the close record: waiting for the
    /// relay gives that cut (its cause), not the echo of it from the
    /// other direction, which the cut stopped.
    #[test]
    fn a_relay_whose_peer_vanished_reports_the_cut() {
        let k = Key::generate().unwrap();
        let (c, s) = open(shared(&k), shared(&k));
        let (c, s) = (c.unwrap(), s.unwrap());
        let (program, relay) = s.relay().unwrap();
        drop(c);
        let e = relay.wait().unwrap_err();
        assert!(
            matches!(&e, Error::Wire(io) if io.kind() == io::ErrorKind::UnexpectedEof),
            "{e:?}"
        );
        // The program saw its socket end.
        let mut program = UnixStream::from(program);
        assert_eq!(program.read(&mut [0u8; 1]).unwrap(), 0);
    }

    #[test]
    fn a_silent_peer_fails_the_read_within_the_bound() {
        let k = Key::generate().unwrap();
        let mut quick = shared(&k);
        quick.silence = Duration::from_secs(1);
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        // A server that completes the handshake, then goes quiet: its
        // heartbeat is stopped by leaking nothing but never writing (the
        // raw socket is kept, the channel's writer is gone).
        let server = quick.clone();
        let t = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let raw = s.try_clone().unwrap();
            let ch = Channel::server(s, &server, "client").unwrap();
            drop(ch.split());
            std::thread::sleep(Duration::from_secs(3));
            drop(raw);
        });
        let mut c = Channel::client(TcpStream::connect(addr).unwrap(), &quick, "agent").unwrap();
        let start = Instant::now();
        let e = c.read(&mut [0u8; 10]).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );
        t.join().unwrap();
    }

    #[test]
    fn an_idle_channel_stays_up_on_pings() {
        let k = Key::generate().unwrap();
        let mut quick = shared(&k);
        quick.silence = Duration::from_secs(1);
        let (c, s) = open(quick.clone(), quick);
        let (mut c, mut s) = (c.unwrap(), s.unwrap());
        std::thread::sleep(Duration::from_millis(2500));
        s.write_all(b"still here").unwrap();
        let mut got = [0u8; 10];
        c.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"still here");
    }

    /// A server that sends 1000 bytes of 42 and closes, reached through
    /// a proxy that applies `damage` to the server's records after the
    /// handshake (record 0 is the accept, 1 the data, 2 the close): what
    /// the client reads.
    fn through(damage: fn(usize, &mut Vec<u8>) -> bool) -> io::Result<Vec<u8>> {
        let k = Key::generate().unwrap();
        let sec = shared(&k);
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let server = sec.clone();
        std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let mut ch = Channel::server(s, &server, "client").unwrap();
            ch.write_all(&[42u8; 1000]).unwrap();
            ch.close().unwrap();
            std::thread::sleep(Duration::from_secs(1));
        });
        let p = TcpListener::bind("127.0.0.1:0").unwrap();
        let paddr = p.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut client, _) = p.accept().unwrap();
            let mut server = TcpStream::connect(addr).unwrap();
            let (mut c2, mut s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            std::thread::spawn(move || io::copy(&mut c2, &mut s2));
            let mut greeting = [0u8; GREETING_LEN];
            server.read_exact(&mut greeting).unwrap();
            client.write_all(&greeting).unwrap();
            for n in 0.. {
                let mut len = [0u8; 2];
                if server.read_exact(&mut len).is_err() {
                    break;
                }
                let mut body = vec![0u8; u16::from_be_bytes(len) as usize];
                server.read_exact(&mut body).unwrap();
                let mut frame = [len.to_vec(), body].concat();
                // Message 0 is the handshake's second message.
                if n == 0 || damage(n - 1, &mut frame) {
                    client.write_all(&frame).unwrap();
                }
            }
        });
        let c = Channel::client(TcpStream::connect(paddr).unwrap(), &sec, "agent").unwrap();
        let (mut r, _w) = c.split();
        let mut all = Vec::new();
        r.read_to_end(&mut all).map(|_| all)
    }

    #[test]
    fn a_flipped_dropped_or_replayed_record_or_a_cut_is_an_error_never_data() {
        assert_eq!(through(|_, _| true).unwrap(), vec![42u8; 1000]);
        let flipped = through(|n, f| {
            if n == 1 {
                f[500] ^= 1;
            }
            true
        })
        .unwrap_err();
        assert_eq!(flipped.kind(), io::ErrorKind::InvalidData, "{flipped}");
        assert!(flipped.to_string().contains("tampered"), "{flipped}");
        // Without the data record, the close record is under the wrong
        // nonce; without the close record, the stream was cut.
        let dropped = through(|n, _| n != 1).unwrap_err();
        assert_eq!(dropped.kind(), io::ErrorKind::InvalidData, "{dropped}");
        let cut = through(|n, _| n != 2).unwrap_err();
        assert_eq!(cut.kind(), io::ErrorKind::UnexpectedEof, "{cut}");
    }
}
