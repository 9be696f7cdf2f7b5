//! Framing on the control connection.
//!
//! A frame is a 4-byte big-endian length, a 1-byte kind, and the payload:
//! a JSON control message, a chunk of a bulk stream, or the end of a bulk
//! stream. Bulk streams (a tar of the rootfs diff, an image file) are
//! written through [`StreamWriter`], which chunks them without knowing
//! their size up front, and read back through [`StreamReader`] as a plain
//! `Read`. A stream's end frame carries the SHA-256 of its bytes: a stream
//! damaged in transit is an error at its end, before anything received is
//! used (the receiver restores only after every stream checked out). Frame sizes are bounded so a corrupt or hostile length cannot
//! make the receiver allocate without limit.

use std::io::{self, Read, Write};

use serde::de::DeserializeOwned;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

const CONTROL: u8 = 1;
const CHUNK: u8 = 2;
const END: u8 = 3;
/// How long a peer has to authenticate and say what it wants: an idle or
/// garbage connection without the key holds a slot no longer than this.
pub const HANDSHAKE_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

/// Makes a migration connection notice a dead peer: TCP keepalive probes
/// after 10 s of silence, every 5 s, 3 unanswered ones and reads and writes
/// fail (ETIMEDOUT) instead of blocking forever on a peer whose host died
/// or whose link was cut without a FIN or RST. It also holds for the page
/// connection once CRIU has it (the options stay on the socket).
pub fn keepalive(s: &std::net::TcpStream) -> Result<()> {
    use nix::sys::socket::{setsockopt, sockopt};
    let set =
        |r: nix::Result<()>| r.map_err(|e| Error::Wire(io::Error::from_raw_os_error(e as i32)));
    set(setsockopt(s, sockopt::KeepAlive, &true))?;
    set(setsockopt(s, sockopt::TcpKeepIdle, &10))?;
    set(setsockopt(s, sockopt::TcpKeepInterval, &5))?;
    set(setsockopt(s, sockopt::TcpKeepCount, &3))
}

/// Sets (or with `None`, clears) `s`'s read and write timeouts: the
/// handshake's deadline, taken off once the peer is authenticated.
pub fn deadline(s: &std::net::TcpStream, d: Option<std::time::Duration>) -> Result<()> {
    s.set_read_timeout(d)
        .and_then(|_| s.set_write_timeout(d))
        .map_err(Error::Wire)
}

/// The largest frame either side accepts.
pub const MAX_FRAME: usize = 4 << 20;
const CHUNK_SIZE: usize = 1 << 20;

fn corrupt(what: &'static str) -> Error {
    Error::Protocol { what }
}

/// One write per frame: a header sent apart from its payload would wait for
/// the peer's delayed ACK under Nagle's algorithm (~40 ms per message on
/// Linux), which is most of a small container's downtime.
fn write_frame<W: Write>(w: &mut W, kind: u8, payload: &[u8]) -> io::Result<()> {
    let len = u32::try_from(payload.len() + 1).map_err(|_| io::ErrorKind::InvalidInput)?;
    let mut frame = Vec::with_capacity(payload.len() + 5);
    frame.extend_from_slice(&len.to_be_bytes());
    frame.push(kind);
    frame.extend_from_slice(payload);
    w.write_all(&frame)
}

/// Reads one frame: (kind, payload).
fn read_frame<R: Read>(r: &mut R) -> Result<(u8, Vec<u8>)> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).map_err(Error::Wire)?;
    let len = u32::from_be_bytes(len) as usize;
    if len == 0 || len > MAX_FRAME + 1 {
        return Err(corrupt("a frame length out of bounds"));
    }
    let mut kind = [0u8; 1];
    r.read_exact(&mut kind).map_err(Error::Wire)?;
    let mut payload = vec![0u8; len - 1];
    r.read_exact(&mut payload).map_err(Error::Wire)?;
    Ok((kind[0], payload))
}

/// Sends one control message.
pub fn send<W: Write, T: Serialize>(w: &mut W, msg: &T) -> Result<()> {
    let body = serde_json::to_vec(msg).map_err(|_| corrupt("an unserializable message"))?;
    if body.len() > MAX_FRAME {
        return Err(corrupt("a control message larger than a frame"));
    }
    write_frame(w, CONTROL, &body).map_err(Error::Wire)?;
    w.flush().map_err(Error::Wire)
}

/// Receives one control message.
pub fn recv<R: Read, T: DeserializeOwned>(r: &mut R) -> Result<T> {
    let (kind, payload) = read_frame(r)?;
    if kind != CONTROL {
        return Err(corrupt("stream data where a control message was expected"));
    }
    serde_json::from_slice(&payload).map_err(|source| Error::BadMessage { source })
}

/// Writes a bulk stream as chunk frames; `finish` ends it. Dropping it
/// without `finish` leaves the stream unterminated, which the reader
/// reports as a cut stream.
pub struct StreamWriter<'a, W: Write> {
    w: &'a mut W,
    buf: Vec<u8>,
    digest: Sha256,
    pub bytes: u64,
}

impl<'a, W: Write> StreamWriter<'a, W> {
    pub fn new(w: &'a mut W) -> Self {
        StreamWriter {
            w,
            buf: Vec::with_capacity(CHUNK_SIZE),
            digest: Sha256::new(),
            bytes: 0,
        }
    }

    fn flush_chunk(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            self.digest.update(&self.buf);
            write_frame(self.w, CHUNK, &self.buf)?;
            self.buf.clear();
        }
        Ok(())
    }

    /// Ends the stream; returns its length.
    pub fn finish(mut self) -> Result<u64> {
        self.flush_chunk().map_err(Error::Wire)?;
        let digest = std::mem::take(&mut self.digest).finalize();
        write_frame(self.w, END, &digest).map_err(Error::Wire)?;
        self.w.flush().map_err(Error::Wire)?;
        Ok(self.bytes)
    }
}

impl<W: Write> Write for StreamWriter<'_, W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(CHUNK_SIZE - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        self.bytes += n as u64;
        if self.buf.len() == CHUNK_SIZE {
            self.flush_chunk()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.flush_chunk()?;
        self.w.flush()
    }
}

/// Reads a bulk stream until its end frame. A connection cut before the
/// end frame is an `UnexpectedEof` error, never a silently short stream.
pub struct StreamReader<'a, R: Read> {
    r: &'a mut R,
    digest: Sha256,
    chunk: Vec<u8>,
    pos: usize,
    done: bool,
    pub bytes: u64,
}

impl<'a, R: Read> StreamReader<'a, R> {
    pub fn new(r: &'a mut R) -> Self {
        StreamReader {
            r,
            digest: Sha256::new(),
            chunk: Vec::new(),
            pos: 0,
            done: false,
            bytes: 0,
        }
    }

    /// Whether the end frame was read.
    pub fn finished(&self) -> bool {
        self.done
    }

    /// Reads and discards the rest of the stream.
    pub fn drain(mut self) -> Result<u64> {
        io::copy(&mut self, &mut io::sink()).map_err(Error::Wire)?;
        Ok(self.bytes)
    }
}

impl<R: Read> Read for StreamReader<'_, R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.chunk.len() {
            if self.done {
                return Ok(0);
            }
            let (kind, payload) = read_frame(self.r).map_err(|e| match e {
                Error::Wire(e) if e.kind() == io::ErrorKind::UnexpectedEof => io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the connection was cut in the middle of a stream",
                ),
                Error::Wire(e) => e,
                other => io::Error::new(io::ErrorKind::InvalidData, other.to_string()),
            })?;
            match kind {
                CHUNK => {
                    self.digest.update(&payload);
                    self.chunk = payload;
                    self.pos = 0;
                }
                END => {
                    self.done = true;
                    let ours = std::mem::take(&mut self.digest).finalize();
                    if payload[..] != ours[..] {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "a stream whose SHA-256 does not match the sender's: it was damaged in transit",
                        ));
                    }
                }
                _ => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "a control message inside a stream",
                    ))
                }
            }
        }
        let n = out.len().min(self.chunk.len() - self.pos);
        out[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
        self.pos += n;
        self.bytes += n as u64;
        Ok(n)
    }
}

/// Bytes the peer has acknowledged on `s` (TCP_INFO's tcpi_bytes_acked):
/// how far a stream written by someone else (CRIU, on the page
/// connection) has got.
pub fn bytes_acked(s: &std::net::TcpStream) -> Option<u64> {
    use std::os::fd::AsRawFd;
    // SAFETY: tcp_info is plain data, all zeroes is a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: `info` and `len` describe a buffer of the right size, which
    // getsockopt fills (possibly less of it, on older kernels).
    let r = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    // The count starts at 1: the SYN takes a sequence number too.
    (r == 0).then_some(info.tcpi_bytes_acked.saturating_sub(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    enum Msg {
        Hello { id: String },
        Done,
    }

    #[test]
    fn messages_and_streams_interleave() {
        let mut buf = Vec::new();
        send(&mut buf, &Msg::Hello { id: "c1".into() }).unwrap();
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let mut w = StreamWriter::new(&mut buf);
        w.write_all(&data).unwrap();
        assert_eq!(w.finish().unwrap(), data.len() as u64);
        send(&mut buf, &Msg::Done).unwrap();

        let mut r = &buf[..];
        assert_eq!(
            recv::<_, Msg>(&mut r).unwrap(),
            Msg::Hello { id: "c1".into() }
        );
        let mut got = Vec::new();
        let mut s = StreamReader::new(&mut r);
        s.read_to_end(&mut got).unwrap();
        assert!(s.finished());
        assert_eq!(got, data);
        assert_eq!(recv::<_, Msg>(&mut r).unwrap(), Msg::Done);
    }

    #[test]
    fn a_cut_stream_is_an_error_not_a_short_read() {
        let mut buf = Vec::new();
        let mut w = StreamWriter::new(&mut buf);
        w.write_all(&[7u8; 5000]).unwrap();
        w.flush().unwrap();
        drop(w); // no end frame: the sender died
        let mut r = &buf[..];
        let mut got = Vec::new();
        let err = StreamReader::new(&mut r).read_to_end(&mut got).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn a_damaged_stream_fails_its_checksum() {
        let mut buf = Vec::new();
        let mut w = StreamWriter::new(&mut buf);
        w.write_all(&[7u8; 5000]).unwrap();
        w.finish().unwrap();
        buf[100] ^= 0x20;
        let mut r = &buf[..];
        let err = StreamReader::new(&mut r).drain().unwrap_err();
        let text = crate::error::chain(&err);
        assert!(text.contains("damaged in transit"), "{text}");
    }

    #[test]
    fn hostile_lengths_are_refused_without_allocating() {
        let mut r: &[u8] = &[0xff, 0xff, 0xff, 0xff, CONTROL];
        let err = recv::<_, Msg>(&mut r).unwrap_err();
        assert!(err.to_string().contains("out of bounds"), "{err}");
    }

    #[test]
    fn garbage_json_is_a_bad_message() {
        let mut buf = Vec::new();
        write_frame(&mut buf, CONTROL, b"{not json").unwrap();
        let err = recv::<_, Msg>(&mut &buf[..]).unwrap_err();
        assert!(matches!(err, Error::BadMessage { .. }), "{err:?}");
    }

    #[test]
    fn bytes_acked_follows_what_the_peer_read() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut w = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (mut r, _) = l.accept().unwrap();
        assert_eq!(bytes_acked(&w), Some(0));
        w.write_all(&[7u8; 100_000]).unwrap();
        let mut got = vec![0u8; 100_000];
        r.read_exact(&mut got).unwrap();
        // ACKs come back asynchronously, within a few round trips.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while bytes_acked(&w) < Some(100_000) {
            assert!(
                std::time::Instant::now() < deadline,
                "{:?}",
                bytes_acked(&w)
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(bytes_acked(&w), Some(100_000));
    }
}
