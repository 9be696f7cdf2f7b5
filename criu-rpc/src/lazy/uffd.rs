//! A userfaultfd that CRIU's restore handed over: its events and the three
//! ioctls the daemon resolves faults with (linux/userfaultfd.h).
//!
//! Written here rather than taken from the `userfaultfd` crate: that crate
//! generates its bindings with bindgen (libclang at build time) and pulls a
//! second `nix`; the ABI used here is five fixed-layout structs.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use nix::errno::Errno;

const UFFD_EVENT_PAGEFAULT: u8 = 0x12;
const UFFD_EVENT_FORK: u8 = 0x13;
const UFFD_EVENT_REMAP: u8 = 0x14;
const UFFD_EVENT_REMOVE: u8 = 0x15;
const UFFD_EVENT_UNMAP: u8 = 0x16;
const MSG_SIZE: usize = 32;

#[repr(C)]
pub struct UffdioRange {
    start: u64,
    len: u64,
}

#[repr(C)]
pub struct UffdioCopy {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    copy: i64,
}

#[repr(C)]
pub struct UffdioZeropage {
    range: UffdioRange,
    mode: u64,
    zeropage: i64,
}

// The kernel declares UNREGISTER and WAKE with _IOR although it reads the
// range: the request numbers must match, whatever the direction means.
nix::ioctl_read!(uffdio_unregister, 0xAA, 0x01, UffdioRange);
nix::ioctl_read!(uffdio_wake, 0xAA, 0x02, UffdioRange);
nix::ioctl_readwrite!(uffdio_copy, 0xAA, 0x03, UffdioCopy);
nix::ioctl_readwrite!(uffdio_zeropage, 0xAA, 0x04, UffdioZeropage);

/// One message read from a userfaultfd.
#[derive(Debug)]
pub enum Event {
    PageFault {
        addr: u64,
    },
    /// The process forked; the child's memory is served through `uffd`.
    Fork {
        uffd: OwnedFd,
    },
    Remap {
        from: u64,
        to: u64,
        len: u64,
    },
    /// MADV_DONTNEED / MADV_REMOVE: the range stays mapped but is now empty.
    Remove {
        start: u64,
        end: u64,
    },
    Unmap {
        start: u64,
        end: u64,
    },
    Unknown {
        event: u8,
    },
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

fn parse(msg: &[u8]) -> Event {
    match msg[0] {
        UFFD_EVENT_PAGEFAULT => Event::PageFault {
            addr: u64_at(msg, 16),
        },
        UFFD_EVENT_FORK => {
            let fd = u32::from_le_bytes([msg[8], msg[9], msg[10], msg[11]]) as i32;
            // SAFETY: the kernel installed this fd in our table for us alone
            // when we read the FORK message.
            Event::Fork {
                uffd: unsafe { OwnedFd::from_raw_fd(fd) },
            }
        }
        UFFD_EVENT_REMAP => Event::Remap {
            from: u64_at(msg, 8),
            to: u64_at(msg, 16),
            len: u64_at(msg, 24),
        },
        UFFD_EVENT_REMOVE => Event::Remove {
            start: u64_at(msg, 8),
            end: u64_at(msg, 16),
        },
        UFFD_EVENT_UNMAP => Event::Unmap {
            start: u64_at(msg, 8),
            end: u64_at(msg, 16),
        },
        event => Event::Unknown { event },
    }
}

/// What a copy or zero-fill achieved.
#[derive(Debug, PartialEq, Eq)]
pub enum Fill {
    /// All of it.
    Done,
    /// `bytes` were filled, then the kernel said `errno` (EEXIST: a page is
    /// already there; EAGAIN: the mm is changing, retry after the events).
    Partial { bytes: u64, errno: Errno },
    /// The process (its mm) is gone.
    Gone,
}

fn fill_result(ret: nix::Result<i32>, done: i64) -> Result<Fill, Errno> {
    match ret {
        Ok(_) => Ok(Fill::Done),
        Err(Errno::ESRCH) | Err(Errno::ENOSPC) => Ok(Fill::Gone),
        Err(e @ (Errno::EEXIST | Errno::EAGAIN | Errno::ENOENT)) => Ok(Fill::Partial {
            bytes: done.max(0) as u64,
            errno: e,
        }),
        Err(e) => Err(e),
    }
}

/// A userfaultfd (opened O_NONBLOCK by CRIU's restore).
#[derive(Debug)]
pub struct Uffd {
    fd: OwnedFd,
}

impl AsFd for Uffd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Uffd {
    pub fn new(fd: OwnedFd) -> Uffd {
        Uffd { fd }
    }

    /// Every queued event; `Ok(None)` when the fd says the process is gone
    /// (end of file).
    pub fn read_events(&self) -> Result<Option<Vec<Event>>, Errno> {
        let mut buf = [0u8; MSG_SIZE * 64];
        let mut out = Vec::new();
        loop {
            match nix::unistd::read(self.fd.as_raw_fd(), &mut buf) {
                Ok(0) if out.is_empty() => return Ok(None),
                Ok(0) => return Ok(Some(out)),
                Ok(n) => {
                    out.extend(buf[..n - n % MSG_SIZE].chunks(MSG_SIZE).map(parse));
                    if n < buf.len() {
                        return Ok(Some(out));
                    }
                }
                Err(Errno::EAGAIN) => return Ok(Some(out)),
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Copies `src` (page-aligned, whole pages) to `dst` and wakes the
    /// threads waiting there.
    pub fn copy(&self, dst: u64, src: &[u8]) -> Result<Fill, Errno> {
        let mut c = UffdioCopy {
            dst,
            src: src.as_ptr() as u64,
            len: src.len() as u64,
            mode: 0,
            copy: 0,
        };
        // SAFETY: `c` is a valid uffdio_copy; `src` outlives the call and
        // the kernel only reads from it.
        let r = unsafe { uffdio_copy(self.fd.as_raw_fd(), &mut c) };
        fill_result(r, c.copy)
    }

    /// Maps the zero page at `dst..dst+len` and wakes the waiters.
    pub fn zero(&self, dst: u64, len: u64) -> Result<Fill, Errno> {
        let mut z = UffdioZeropage {
            range: UffdioRange { start: dst, len },
            mode: 0,
            zeropage: 0,
        };
        // SAFETY: a valid uffdio_zeropage on our own fd.
        let r = unsafe { uffdio_zeropage(self.fd.as_raw_fd(), &mut z) };
        fill_result(r, z.zeropage)
    }

    /// Wakes threads waiting on a range another thread's fault filled.
    pub fn wake(&self, start: u64, len: u64) -> Result<(), Errno> {
        let mut r = UffdioRange { start, len };
        // SAFETY: a valid uffdio_range on our own fd.
        unsafe { uffdio_wake(self.fd.as_raw_fd(), &mut r) }.map(drop)
    }

    /// Stops handling faults in a range (after MADV_DONTNEED the kernel
    /// zero-fills it itself).
    pub fn unregister(&self, start: u64, len: u64) -> Result<(), Errno> {
        let mut r = UffdioRange { start, len };
        // SAFETY: a valid uffdio_range on our own fd.
        unsafe { uffdio_unregister(self.fd.as_raw_fd(), &mut r) }.map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_decode_as_linux_lays_them_out() {
        let mut m = [0u8; 32];
        m[0] = UFFD_EVENT_PAGEFAULT;
        m[16..24].copy_from_slice(&0x7f00_1234_5000u64.to_le_bytes());
        assert!(matches!(
            parse(&m),
            Event::PageFault {
                addr: 0x7f00_1234_5000
            }
        ));
        let mut m = [0u8; 32];
        m[0] = UFFD_EVENT_REMAP;
        m[8..16].copy_from_slice(&1u64.to_le_bytes());
        m[16..24].copy_from_slice(&2u64.to_le_bytes());
        m[24..32].copy_from_slice(&3u64.to_le_bytes());
        assert!(matches!(
            parse(&m),
            Event::Remap {
                from: 1,
                to: 2,
                len: 3
            }
        ));
        m[0] = UFFD_EVENT_UNMAP;
        assert!(matches!(parse(&m), Event::Unmap { start: 1, end: 2 }));
        m[0] = 0x99;
        assert!(matches!(parse(&m), Event::Unknown { event: 0x99 }));
    }

    #[test]
    fn struct_layouts_match_the_kernel_abi() {
        assert_eq!(std::mem::size_of::<UffdioRange>(), 16);
        assert_eq!(std::mem::size_of::<UffdioCopy>(), 40);
        assert_eq!(std::mem::size_of::<UffdioZeropage>(), 32);
    }

    #[test]
    fn fill_errors_map_to_outcomes() {
        assert_eq!(fill_result(Ok(0), 0), Ok(Fill::Done));
        assert_eq!(fill_result(Err(Errno::ESRCH), 0), Ok(Fill::Gone));
        assert_eq!(
            fill_result(Err(Errno::EEXIST), 8192),
            Ok(Fill::Partial {
                bytes: 8192,
                errno: Errno::EEXIST
            })
        );
        assert_eq!(
            fill_result(Err(Errno::EAGAIN), -11),
            Ok(Fill::Partial {
                bytes: 0,
                errno: Errno::EAGAIN
            })
        );
        assert_eq!(fill_result(Err(Errno::EFAULT), 0), Err(Errno::EFAULT));
    }
}
