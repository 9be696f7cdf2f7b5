//! Messages between `ferry create` (the parent) and the container's init
//! over a socketpair: the init reports its pid and readiness, or the error
//! that stopped it, which the parent returns as its own.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;

use serde::{Deserialize, Serialize};

use super::process::StepError;
use crate::error::{Error, Result};

#[derive(Debug, Serialize, Deserialize)]
pub enum Msg {
    /// The init exists: its pid in the host's pid namespace.
    Pid(i32),
    /// Parent to init: cgroups are set, go on.
    Go,
    /// The init's namespaces are ready (run createRuntime/prestart hooks).
    NamespacesReady,
    /// Parent to init: hooks done.
    HooksDone,
    /// The init is ready and waits on exec.fifo.
    Ready,
    /// Child to parent: a new user namespace exists, write its id maps.
    UserNs,
    /// Parent to child: the maps are written.
    Mapped,
    /// The init failed: the message, the step, the errno if a system
    /// call failed.
    Failed {
        step: String,
        message: String,
        #[serde(default)]
        errno: Option<i32>,
    },
}

pub fn send(s: &mut UnixStream, m: &Msg) -> Result<()> {
    let body = serde_json::to_vec(m).unwrap_or_default();
    let len = (body.len() as u32).to_be_bytes();
    s.write_all(&len)
        .and_then(|_| s.write_all(&body))
        .map_err(|source| Error::Sync { source })
}

pub fn recv(s: &mut UnixStream) -> Result<Msg> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len)
        .map_err(|source| Error::Sync { source })?;
    let mut body = vec![0u8; u32::from_be_bytes(len).min(1 << 20) as usize];
    s.read_exact(&mut body)
        .map_err(|source| Error::Sync { source })?;
    serde_json::from_slice(&body).map_err(|e| Error::Sync {
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
    })
}

/// The parent's side of a handshake: `got` (what [`recv`] returned) must
/// be the message `want` accepts. The init's `Failed` becomes its error;
/// anything else is unexpected at `step`.
pub fn expect(got: Result<Msg>, step: &str, want: impl FnOnce(&Msg) -> bool) -> Result<Msg> {
    match got? {
        m if want(&m) => Ok(m),
        m => Err(unexpected(m, step)),
    }
}

/// The error a message other than the awaited one at `step` makes: the
/// init's own failure, or an unexpected message.
pub fn unexpected(m: Msg, step: &str) -> Error {
    match m {
        Msg::Failed {
            step,
            message,
            errno,
        } => Error::Init {
            step,
            message,
            errno: errno.map(nix::errno::Errno::from_raw),
        },
        m => Error::Init {
            step: step.into(),
            message: format!("unexpected {m:?}"),
            errno: None,
        },
    }
}

/// The child's side: waits for the parent's message `want` accepts; a
/// failed read or another message stops the child at `step`.
pub fn wait_for(
    s: &mut UnixStream,
    step: &str,
    want: impl FnOnce(&Msg) -> bool,
) -> std::result::Result<(), StepError> {
    match recv(s) {
        Ok(m) if want(&m) => Ok(()),
        other => Err(StepError {
            step: step.into(),
            message: format!("{other:?}"),
            errno: None,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::process::StepError;

    /// A system call's errno crosses from the container's process to the
    /// runtime's error as a number, not only in the message's text.
    #[test]
    fn an_init_failure_keeps_its_errno_across_the_socket() {
        let (mut child, mut parent) = UnixStream::pair().unwrap();
        let e = StepError::new("exec", &nix::errno::Errno::ENOENT);
        send(
            &mut child,
            &Msg::Failed {
                step: e.step,
                message: e.message,
                errno: e.errno,
            },
        )
        .unwrap();
        let err = unexpected(recv(&mut parent).unwrap(), "ready");
        match err {
            Error::Init {
                step,
                message,
                errno,
            } => {
                assert_eq!(step, "exec");
                assert_eq!(errno, Some(nix::errno::Errno::ENOENT));
                assert!(message.contains("No such file"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        let text = StepError::new("mount", &"not a mount point");
        assert_eq!(text.errno, None);
    }
}
