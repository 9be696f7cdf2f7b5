//! runc's `--console-socket` protocol: a unix socket on which the
//! container's init (or an exec'd process, or CRIU's restore) sends its pty
//! master with SCM_RIGHTS ([`send_master`], the one sending end), and its
//! receiving end ([`ConsoleSocket`]).
//!
//! Two users: the containerd shim makes one per process with a terminal
//! (runc-shim's `NewTempConsoleSocket`), and `ferry run`/`exec` in the
//! foreground with a terminal but no `--console-socket` make one for
//! themselves and copy between the pty and their own stdio, as runc's
//! tty.go does.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};

/// Connects to the console socket at `path` (the sending end).
pub fn connect(path: &Path) -> Result<UnixStream> {
    UnixStream::connect(path).map_err(|source| Error::Io {
        op: "connecting to the console socket",
        path: path.to_path_buf(),
        source,
    })
}

/// Sends the pty master `master` over the console socket `console`, with
/// the slave's name as the message's bytes (runc's `utils.SendFile`: the
/// name travels with the fd; receivers use the fd).
pub fn send_master(console: &UnixStream, master: &impl AsRawFd, name: &str) -> nix::Result<()> {
    let fds = [master.as_raw_fd()];
    let cmsg = [nix::sys::socket::ControlMessage::ScmRights(&fds)];
    let iov = [std::io::IoSlice::new(name.as_bytes())];
    nix::sys::socket::sendmsg::<()>(
        console.as_raw_fd(),
        &iov,
        &cmsg,
        nix::sys::socket::MsgFlags::empty(),
        None,
    )
    .map(drop)
}

/// A console socket in the temp dir, removed when dropped.
pub struct ConsoleSocket {
    path: PathBuf,
    listener: UnixListener,
}

impl std::fmt::Debug for ConsoleSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleSocket")
            .field("path", &self.path)
            .finish()
    }
}

impl ConsoleSocket {
    pub fn new() -> Result<ConsoleSocket> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "ferry-console-{}-{}.sock",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let listener = UnixListener::bind(&path).map_err(|source| Error::Io {
            op: "creating the console socket",
            path: path.clone(),
            source,
        })?;
        Ok(ConsoleSocket { path, listener })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The pty master sent on the socket. Called once the process is
    /// created: the connection and the message are queued by then, so
    /// nothing waits; a process that sent none is an error.
    pub fn receive(&self) -> Result<OwnedFd> {
        let no_master = |source| Error::Io {
            op: "receiving the pty master on the console socket",
            path: self.path.clone(),
            source,
        };
        self.listener.set_nonblocking(true).map_err(no_master)?;
        let (conn, _) = self.listener.accept().map_err(no_master)?;
        let mut buf = [0u8; 4096];
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
        let msg = nix::sys::socket::recvmsg::<()>(
            conn.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            nix::sys::socket::MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .map_err(|e| no_master(e.into()))?;
        for c in msg.cmsgs().map_err(|e| no_master(e.into()))? {
            if let nix::sys::socket::ControlMessageOwned::ScmRights(fds) = c {
                if let Some(&fd) = fds.first() {
                    // SAFETY: the kernel just installed this fd for us.
                    return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
                }
            }
        }
        Err(no_master(std::io::Error::other("no fd in the message")))
    }
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A foreground process's terminal, proxied to this process's stdio as
/// runc does for `run`/`exec` with `process.terminal` and no console
/// socket: the pty's output goes to our stdout, our stdin to the pty; when
/// our stdin is a terminal it is put in raw mode (the container's pty does
/// the line discipline) and given back as it was when this is dropped.
pub struct ForegroundTty {
    out: Option<std::thread::JoinHandle<()>>,
    saved: Option<nix::sys::termios::Termios>,
}

impl std::fmt::Debug for ForegroundTty {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ForegroundTty").finish_non_exhaustive()
    }
}

fn copy(from: std::os::fd::RawFd, to: std::os::fd::RawFd) {
    let mut buf = [0u8; 32 * 1024];
    loop {
        // SAFETY: reading into our own buffer from an fd we keep open.
        let n = unsafe { libc::read(from, buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        // EOF, or EIO from a master whose slave is closed everywhere.
        if n <= 0 {
            return;
        }
        let mut off = 0usize;
        while off < n as usize {
            // SAFETY: writing from our own buffer.
            let w = unsafe { libc::write(to, buf[off..].as_ptr().cast(), n as usize - off) };
            if w < 0 {
                if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return;
            }
            off += w as usize;
        }
    }
}

impl ForegroundTty {
    /// Starts copying between `master` and this process's stdio.
    pub fn attach(master: OwnedFd) -> ForegroundTty {
        use nix::sys::termios;
        let stdin = std::io::stdin();
        let saved = termios::tcgetattr(&stdin).ok();
        if let Some(t) = &saved {
            let mut raw = t.clone();
            termios::cfmakeraw(&mut raw);
            let _ = termios::tcsetattr(&stdin, termios::SetArg::TCSANOW, &raw);
            // The pty gets our window's size (runc's tty.resize).
            let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
            // SAFETY: TIOCGWINSZ/TIOCSWINSZ with a winsize we own.
            unsafe {
                if libc::ioctl(0, libc::TIOCGWINSZ, &mut ws) == 0 {
                    libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws);
                }
            }
        }
        let master = std::sync::Arc::new(master);
        let m = master.clone();
        let out = std::thread::spawn(move || copy(m.as_raw_fd(), 1));
        let m = master.clone();
        // Our stdin may never close (a terminal); this thread ends with the
        // process.
        std::thread::spawn(move || copy(0, m.as_raw_fd()));
        ForegroundTty {
            out: Some(out),
            saved,
        }
    }

    /// Waits until the pty has no writer left (every process holding its
    /// slave is gone) and all its output is copied.
    /// Bounded: a background process that keeps the slave open (an exec'd
    /// `sh -c 'sleep 99 &'`) does not keep us waiting past `grace`.
    pub fn finish(mut self, grace: std::time::Duration) {
        let deadline = std::time::Instant::now() + grace;
        if let Some(h) = self.out.take() {
            while !h.is_finished() && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            if h.is_finished() {
                let _ = h.join();
            }
        }
    }
}

impl Drop for ForegroundTty {
    fn drop(&mut self) {
        if let Some(t) = &self.saved {
            let _ = nix::sys::termios::tcsetattr(
                std::io::stdin(),
                nix::sys::termios::SetArg::TCSANOW,
                t,
            );
        }
    }
}
