//! A process's stdio, between containerd's fifos and the container.
//!
//! As in runc-shim (runtime/v2/runc, process/io.go `copyPipes`), the
//! container never gets containerd's fifos: it gets pipes, and the shim
//! copies its stdout and stderr pipes into the fifos and the stdin fifo
//! into its stdin pipe; CloseIO closes the stdin pipe. Pipes are also what
//! CRIU can checkpoint and hand back on restore (`inherit_fd`), where a
//! host file as stdio makes the dump fail.
//!
//! A `file://` log URI (containerd's `cio.LogFile`, `ctr run --log-uri`) is
//! a file the shim appends both outputs to, as runc-shim does.
//!
//! The fifos are opened read-write, as runc-shim keeps a reader open on
//! each output fifo: the open never blocks on containerd's side, and a
//! client that detaches does not turn the container's writes into EPIPE.

use std::fs::OpenOptions;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use ferry_oci::runtime::Stdio;
use tokio::net::unix::pipe;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::error::{Error, Result};

/// The shim's side of a process's stdio.
#[derive(Debug, Default)]
pub struct ProcessIo {
    /// containerd's fifo paths (empty: none), reported back in State.
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    close_stdin: Option<oneshot::Sender<()>>,
    copies: Vec<JoinHandle<()>>,
    /// The pty master of a process with a terminal (for ResizePty).
    console: Option<OwnedFd>,
}

fn pipe_pair(what: &'static str) -> Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| Error::Io {
        op: what,
        path: "pipe".into(),
        source: e.into(),
    })
}

/// What a process gets for a stream containerd does not give: a pipe
/// still, never the host's /dev/null, which CRIU records as a host file
/// it then cannot reopen on restore. An input pipe whose write end is
/// closed reads EOF at once, as /dev/null does; an output pipe is drained
/// and discarded.
fn null_input() -> Result<OwnedFd> {
    let (r, _closed) = pipe_pair("creating the stdin pipe")?;
    Ok(r)
}

fn null_output(what: &'static str) -> Result<(OwnedFd, JoinHandle<()>)> {
    let (r, w) = pipe_pair(what)?;
    let mut from = pipe::Receiver::from_owned_fd(r).map_err(Error::io(what, "pipe"))?;
    let drain = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut from, &mut tokio::io::sink()).await;
    });
    Ok((w, drain))
}

/// Where containerd wants an output: a fifo, or a file for a `file://`
/// log URI (`ctr run --log-uri file:///PATH`), which runc-shim opens for
/// appending itself, stdout and stderr into the same file.
fn open_output(target: &str) -> Result<Box<dyn tokio::io::AsyncWrite + Send + Unpin>> {
    if let Some(path) = target.strip_prefix("file://") {
        if let Some(dir) = Path::new(path).parent() {
            std::fs::create_dir_all(dir).map_err(Error::io("creating", dir))?;
        }
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(Error::io("opening the log file", path))?;
        return Ok(Box::new(tokio::fs::File::from_std(f)));
    }
    if target.contains("://") {
        return Err(Error::Unsupported(
            "a log URI other than file:// (binary:// loggers)",
        ));
    }
    let fifo = pipe::OpenOptions::new()
        .read_write(true)
        .open_sender(target)
        .map_err(Error::io("opening containerd's fifo", target))?;
    Ok(Box::new(fifo))
}

/// One output: the container writes the pipe, the shim copies it to the
/// fifo (or log file) until every writer of the pipe is gone.
fn output(target: &str, what: &'static str) -> Result<(OwnedFd, JoinHandle<()>)> {
    let mut to = open_output(target)?;
    let (r, w) = pipe_pair(what)?;
    let mut from = pipe::Receiver::from_owned_fd(r).map_err(Error::io(what, "pipe"))?;
    let copy = tokio::spawn(async move {
        // A copy error means containerd's side is gone: nothing to report
        // to, as runc-shim's copy goroutines log and end.
        let _ = tokio::io::copy(&mut from, &mut to).await;
        let _ = tokio::io::AsyncWriteExt::flush(&mut to).await;
    });
    Ok((w, copy))
}

/// Copies the stdin fifo into the process's stdin until CloseIO (or the
/// process's delete): what the fifo already holds then still goes in, and
/// dropping `to` closes the process's stdin, which reads EOF.
async fn copy_stdin(
    mut from: pipe::Receiver,
    mut to: impl tokio::io::AsyncWrite + Unpin,
    mut close: oneshot::Receiver<()>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        tokio::select! {
            // Reading first: data that is there goes in before a close.
            biased;
            r = from.read(&mut buf) => match r {
                Ok(n) if n > 0 => {
                    // Flushed: a pty master is a tokio::fs::File, which
                    // writes in the background otherwise.
                    if to.write_all(&buf[..n]).await.is_err() || to.flush().await.is_err() {
                        return;
                    }
                }
                _ => return,
            },
            _ = &mut close => {
                while let Ok(n) = from.try_read(&mut buf) {
                    if n == 0 || to.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                let _ = to.flush().await;
                return;
            }
        }
    }
}

impl ProcessIo {
    /// Pipes for a process whose stdio containerd gives as fifo paths
    /// (empty: none). Returns the shim's side and the process's side.
    pub fn pipes(stdin: &str, stdout: &str, stderr: &str) -> Result<(ProcessIo, Stdio)> {
        let mut io = ProcessIo {
            stdin: stdin.to_string(),
            stdout: stdout.to_string(),
            stderr: stderr.to_string(),
            close_stdin: None,
            copies: Vec::new(),
            console: None,
        };
        let c_stdin = if stdin.is_empty() {
            null_input()?
        } else {
            let (r, w) = pipe_pair("creating the stdin pipe")?;
            let from = pipe::OpenOptions::new()
                .read_write(true)
                .open_receiver(stdin)
                .map_err(Error::io("opening containerd's fifo", stdin))?;
            let to = pipe::Sender::from_owned_fd(w).map_err(Error::io("stdin", "pipe"))?;
            let (tx, rx) = oneshot::channel();
            io.close_stdin = Some(tx);
            io.copies.push(tokio::spawn(copy_stdin(from, to, rx)));
            r
        };
        let mut out = |fifo: &str, what| -> Result<OwnedFd> {
            let (w, copy) = if fifo.is_empty() {
                null_output(what)?
            } else {
                output(fifo, what)?
            };
            io.copies.push(copy);
            Ok(w)
        };
        let c_stdout = out(stdout, "creating the stdout pipe")?;
        let c_stderr = out(stderr, "creating the stderr pipe")?;
        Ok((
            io,
            Stdio {
                stdin: c_stdin,
                stdout: c_stdout,
                stderr: c_stderr,
            },
        ))
    }

    /// The fifo paths of a process with a terminal: the copies start when
    /// its pty master arrives ([`ProcessIo::attach_console`]).
    pub fn for_terminal(stdin: &str, stdout: &str) -> ProcessIo {
        let mut io = ProcessIo::default();
        io.stdin = stdin.to_string();
        io.stdout = stdout.to_string();
        io
    }

    /// Copies between the pty master and containerd's fifos, as runc-shim
    /// does with the console it receives: the master's output to stdout
    /// (stderr shares the terminal), stdin into the master. The output
    /// copy ends when the last process holding the slave is gone (EIO).
    pub fn attach_console(&mut self, master: OwnedFd) -> Result<()> {
        let dup = |fd: &OwnedFd| {
            fd.try_clone()
                .map(|f| tokio::fs::File::from_std(std::fs::File::from(f)))
                .map_err(Error::io("duplicating the pty master", "/dev/ptmx"))
        };
        if !self.stdout.is_empty() {
            let mut to = open_output(&self.stdout)?;
            let mut from = dup(&master)?;
            self.copies.push(tokio::spawn(async move {
                let _ = tokio::io::copy(&mut from, &mut to).await;
                let _ = tokio::io::AsyncWriteExt::flush(&mut to).await;
            }));
        }
        if !self.stdin.is_empty() {
            let from = pipe::OpenOptions::new()
                .read_write(true)
                .open_receiver(&self.stdin)
                .map_err(Error::io("opening containerd's fifo", self.stdin.clone()))?;
            let to = dup(&master)?;
            let (tx, rx) = oneshot::channel();
            self.close_stdin = Some(tx);
            self.copies.push(tokio::spawn(copy_stdin(from, to, rx)));
        }
        self.console = Some(master);
        Ok(())
    }

    /// ResizePty: the terminal's new size (TIOCSWINSZ on the master).
    pub fn resize(&self, width: u32, height: u32) -> Result<()> {
        let Some(m) = &self.console else {
            // runc-shim ignores a resize of a process without a console.
            return Ok(());
        };
        let ws = libc::winsize {
            ws_row: height as u16,
            ws_col: width as u16,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads a winsize we own, on a pty master we own.
        if unsafe { libc::ioctl(m.as_raw_fd(), libc::TIOCSWINSZ, &ws) } < 0 {
            return Err(Error::io("resizing the terminal", "/dev/ptmx")(
                std::io::Error::last_os_error(),
            ));
        }
        Ok(())
    }

    /// CloseIO: the process reads EOF on stdin.
    pub fn close_stdin(&mut self) {
        if let Some(tx) = self.close_stdin.take() {
            let _ = tx.send(());
        }
    }

    /// Lets the outputs drain (at most `limit`: a process of the container
    /// may still hold the pipes), then stops every copy. runc-shim waits
    /// for its copy goroutines before a delete returns, so that containerd
    /// sees all the output before the task is gone.
    pub async fn finish(&mut self, limit: Duration) {
        self.close_stdin();
        let copies = std::mem::take(&mut self.copies);
        let deadline = tokio::time::Instant::now() + limit;
        for mut c in copies {
            if tokio::time::timeout_at(deadline, &mut c).await.is_err() {
                c.abort();
            }
        }
    }
}

impl Drop for ProcessIo {
    fn drop(&mut self) {
        for c in &self.copies {
            c.abort();
        }
    }
}
