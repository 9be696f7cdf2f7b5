//! The client side of CRIU's page server protocol for lazy pages
//! (criu/page-xfer.c): the dump that ran with `lazy_pages` serves the pages
//! it kept; we ask for them with `PS_IOV_GET` and say goodbye with
//! `PS_IOV_CLOSE`.
//!
//! Every message is a `struct page_server_iov` as the C compiler lays it out
//! on x86_64 and arm64: `u32 cmd`, 4 bytes of padding, `u64 nr_pages`,
//! `u64 vaddr`, `u64 dst_id`. The answer to a GET is the same header
//! (command `PS_IOV_ADD_F`, possibly fewer pages than asked for) followed by
//! the pages. Asking for pages the source does not hold makes it hang up,
//! so the caller only asks for ranges the pagemap marked lazy.

use std::io::{Read, Write};

use crate::error::{Error, Result};

const PS_IOV_ADD_F: u32 = 6;
const PS_IOV_GET: u32 = 7;
const PS_IOV_CLOSE: u32 = 0x1023;
const PS_CMD_MASK: u32 = 0xffff;
const HEADER: usize = 32;
pub const PAGE_SIZE: u64 = 4096;

fn header(cmd: u32, nr_pages: u64, vaddr: u64, dst_id: u64) -> [u8; HEADER] {
    let mut h = [0u8; HEADER];
    h[0..4].copy_from_slice(&cmd.to_le_bytes());
    h[8..16].copy_from_slice(&nr_pages.to_le_bytes());
    h[16..24].copy_from_slice(&vaddr.to_le_bytes());
    h[24..32].copy_from_slice(&dst_id.to_le_bytes());
    h
}

fn io(op: &'static str) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::LazySource { op, source }
}

/// A connection to the source's lazy page server.
pub struct Remote<S> {
    s: S,
    /// Page bytes received so far.
    pub received: u64,
}

impl<S: Read + Write> Remote<S> {
    pub fn new(s: S) -> Remote<S> {
        Remote { s, received: 0 }
    }

    /// Asks for `nr_pages` pages of process `pid` from dump-time address
    /// `vaddr`, reads them into `buf` and returns how many came (at least
    /// one, at most `nr_pages`).
    pub fn get(&mut self, pid: i32, vaddr: u64, nr_pages: u64, buf: &mut [u8]) -> Result<u64> {
        self.request(pid, vaddr, nr_pages)?;
        self.receive(pid, vaddr, nr_pages, buf)
    }

    /// Asks for `nr_pages` pages of process `pid` from dump-time address
    /// `vaddr`; [`Remote::receive`] reads the answer. CRIU's page server
    /// answers requests in the order they came (page_server_serve reads
    /// one, answers it, reads the next), so several may be in flight.
    pub fn request(&mut self, pid: i32, vaddr: u64, nr_pages: u64) -> Result<()> {
        // CRIU looks the process up by the pid in the images
        // (page_server_get_pages: pstree_item_by_virt(pi->dst_id)).
        self.s
            .write_all(&header(PS_IOV_GET, nr_pages, vaddr, pid as u64))
            .map_err(io("asking the source's page server for pages"))
    }

    /// Reads the answer to the oldest request in flight, which asked for
    /// `nr_pages` of `pid` at `vaddr`, into `buf`; returns how many came
    /// (at least one, at most `nr_pages`).
    pub fn receive(&mut self, pid: i32, vaddr: u64, nr_pages: u64, buf: &mut [u8]) -> Result<u64> {
        debug_assert!(buf.len() as u64 >= nr_pages * PAGE_SIZE);
        let mut h = [0u8; HEADER];
        self.s
            .read_exact(&mut h)
            .map_err(io("reading the source's page server's answer"))?;
        let word = |at: usize| u64::from_le_bytes(h[at..at + 8].try_into().unwrap_or_default());
        let cmd = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
        let (got, at) = (word(8), word(16));
        if cmd & PS_CMD_MASK != PS_IOV_ADD_F || at != vaddr || got == 0 || got > nr_pages {
            return Err(Error::LazyProtocol {
                what: format!(
                    "asked for {nr_pages} pages of pid {pid} at {vaddr:#x}, the page server answered command {cmd:#x} with {got} pages at {at:#x}"
                ),
            });
        }
        let len = (got * PAGE_SIZE) as usize;
        self.s
            .read_exact(&mut buf[..len])
            .map_err(io("reading pages from the source's page server"))?;
        self.received += len as u64;
        Ok(got)
    }

    /// Tells the source every page arrived; its dump then finishes.
    pub fn close(&mut self) -> Result<()> {
        self.s
            .write_all(&header(PS_IOV_CLOSE, 0, 0, 0))
            .map_err(io("closing the source's page server"))?;
        let mut status = [0u8; 4];
        self.s
            .read_exact(&mut status)
            .map_err(io("reading the source's page server's last answer"))?;
        match i32::from_le_bytes(status) {
            0 => Ok(()),
            s => Err(Error::LazyProtocol {
                what: format!("the page server ended with status {s}"),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    /// A stream that answers from `input` and records what was written.
    struct Fake {
        input: Cursor<Vec<u8>>,
        output: Vec<u8>,
    }

    impl Read for Fake {
        fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
            self.input.read(b)
        }
    }

    impl Write for Fake {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.output.extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A connection whose peer says `input`.
    fn remote(input: Vec<u8>) -> Remote<Fake> {
        Remote::new(Fake {
            input: Cursor::new(input),
            output: Vec::new(),
        })
    }

    #[test]
    fn get_sends_criu_layout_and_reads_fewer_pages_than_asked() {
        let mut input = header(PS_IOV_ADD_F | (4 << 16), 1, 0x7000, 42).to_vec();
        input.extend(vec![0xab; 4096]);
        let mut r = remote(input);
        let mut buf = vec![0u8; 2 * 4096];
        assert_eq!(r.get(42, 0x7000, 2, &mut buf).unwrap(), 1);
        assert_eq!(buf[..4096], [0xab; 4096]);
        assert_eq!(r.received, 4096);
        let sent = &r.s.output;
        assert_eq!(sent.len(), 32);
        assert_eq!(u32::from_le_bytes(sent[0..4].try_into().unwrap()), 7);
        assert_eq!(u64::from_le_bytes(sent[8..16].try_into().unwrap()), 2);
        assert_eq!(u64::from_le_bytes(sent[16..24].try_into().unwrap()), 0x7000);
        assert_eq!(u64::from_le_bytes(sent[24..32].try_into().unwrap()), 42);
    }

    #[test]
    fn requests_in_flight_are_answered_in_order() {
        let mut input = header(PS_IOV_ADD_F, 1, 0x7000, 42).to_vec();
        input.extend(vec![1; 4096]);
        input.extend(header(PS_IOV_ADD_F, 2, 0x9000, 43));
        input.extend(vec![2; 2 * 4096]);
        let mut r = remote(input);
        r.request(42, 0x7000, 1).unwrap();
        r.request(43, 0x9000, 2).unwrap();
        // Both asked before either answer is read.
        assert_eq!(r.s.output.len(), 64);
        let mut buf = vec![0u8; 2 * 4096];
        assert_eq!(r.receive(42, 0x7000, 1, &mut buf).unwrap(), 1);
        assert_eq!(buf[..4096], [1; 4096]);
        assert_eq!(r.receive(43, 0x9000, 2, &mut buf).unwrap(), 2);
        assert_eq!(buf, vec![2; 2 * 4096]);
        assert_eq!(r.received, 3 * 4096);
        // An answer out of order (the second asked for first) is refused.
        let mut input = header(PS_IOV_ADD_F, 2, 0x9000, 43).to_vec();
        input.extend(vec![2; 2 * 4096]);
        let mut r = remote(input);
        r.request(42, 0x7000, 1).unwrap();
        r.request(43, 0x9000, 2).unwrap();
        let e = r.receive(42, 0x7000, 1, &mut buf).unwrap_err();
        assert!(matches!(e, Error::LazyProtocol { .. }), "{e}");
    }

    #[test]
    fn a_wrong_answer_or_a_hang_up_is_an_error() {
        let input = header(PS_IOV_ADD_F, 1, 0x8000, 42).to_vec();
        let mut r = remote(input);
        let mut buf = vec![0u8; 4096];
        let e = r.get(42, 0x7000, 1, &mut buf).unwrap_err();
        assert!(matches!(e, Error::LazyProtocol { .. }), "{e}");
        let mut r = remote(Vec::new());
        let e = r.get(42, 0x7000, 1, &mut buf).unwrap_err();
        assert!(matches!(e, Error::LazySource { .. }), "{e}");
    }

    #[test]
    fn close_expects_status_zero() {
        let mut r = remote(0i32.to_le_bytes().to_vec());
        r.close().unwrap();
        assert_eq!(
            u32::from_le_bytes(r.s.output[0..4].try_into().unwrap()),
            0x1023
        );
    }
}
