//! Notify callbacks: what CRIU tells its RPC client while a request runs.
//!
//! With `notify_scripts` set, CRIU stops at each "action script" point
//! (criu/action-scripts.c), sends a `NOTIFY` response naming it and waits for
//! the client's `NOTIFY` request with `notify_success`. A handler error is
//! answered with `notify_success = false`, which makes CRIU abort the
//! operation and roll back (a dump resumes the tasks); the client then reports
//! the handler's error.

use std::os::fd::OwnedFd;

use nix::unistd::Pid;

/// The boxed error a handler returns; kept as the `source` of
/// [`crate::Error::Notify`].
pub type HandlerError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// One notification from CRIU.
#[derive(Debug)]
#[non_exhaustive]
pub enum Notify {
    /// Dump: before the tasks are frozen.
    PreDump,
    /// Dump: images written, tasks still frozen (killed or resumed next).
    PostDump,
    /// Dump and restore: the network must be locked now (runc locks the
    /// container's netns with CRIU's own rules, so it just acknowledges).
    NetworkLock,
    /// Restore (and a dump that leaves the tasks running): unlock the network.
    NetworkUnlock,
    /// Restore: the root task exists in its new namespaces; runc runs the
    /// prestart/createRuntime hooks and configures the network here.
    SetupNamespaces {
        pid: Pid,
    },
    PostSetupNamespaces,
    /// Restore: before anything is restored.
    PreRestore,
    /// Restore: the tree is restored but not yet resumed; `pid` is the root
    /// task's pid in the caller's pid namespace (runc records it here).
    PostRestore {
        pid: Pid,
    },
    PreResume,
    PostResume,
    /// Restore with `orphan_pts_master`: the master side of the container's
    /// console, which runc hands to the console socket.
    OrphanPtsMaster {
        master: OwnedFd,
    },
    /// Lazy pages / page server: ready to serve (what `status_fd` signals).
    StatusReady,
    /// Image streaming: before images are streamed.
    PreStream,
}

impl Notify {
    /// The script name CRIU sends, as in criu/action-scripts.c.
    pub fn script(&self) -> &'static str {
        match self {
            Notify::PreDump => "pre-dump",
            Notify::PostDump => "post-dump",
            Notify::NetworkLock => "network-lock",
            Notify::NetworkUnlock => "network-unlock",
            Notify::SetupNamespaces { .. } => "setup-namespaces",
            Notify::PostSetupNamespaces => "post-setup-namespaces",
            Notify::PreRestore => "pre-restore",
            Notify::PostRestore { .. } => "post-restore",
            Notify::PreResume => "pre-resume",
            Notify::PostResume => "post-resume",
            Notify::OrphanPtsMaster { .. } => "orphan-pts-master",
            Notify::StatusReady => "status-ready",
            Notify::PreStream => "pre-stream",
        }
    }

    /// Builds a notify from CRIU's message. `Err(Some(fd))` hands back an
    /// unexpected fd; `None` means the script name is not one CRIU defines
    /// or a required field is missing.
    pub(crate) fn parse(script: &str, pid: Option<i32>, fd: Option<OwnedFd>) -> Option<Notify> {
        let pid = pid.map(Pid::from_raw);
        Some(match script {
            "pre-dump" => Notify::PreDump,
            "post-dump" => Notify::PostDump,
            "network-lock" => Notify::NetworkLock,
            "network-unlock" => Notify::NetworkUnlock,
            "setup-namespaces" => Notify::SetupNamespaces { pid: pid? },
            "post-setup-namespaces" => Notify::PostSetupNamespaces,
            "pre-restore" => Notify::PreRestore,
            "post-restore" => Notify::PostRestore { pid: pid? },
            "pre-resume" => Notify::PreResume,
            "post-resume" => Notify::PostResume,
            "orphan-pts-master" => Notify::OrphanPtsMaster { master: fd? },
            "status-ready" => Notify::StatusReady,
            "pre-stream" => Notify::PreStream,
            _ => return None,
        })
    }
}

/// Receives CRIU's notifies. Implemented for any
/// `FnMut(Notify) -> Result<(), HandlerError>`, so a closure capturing state
/// works as well as a struct.
pub trait NotifyHandler {
    /// Called for each notify, in CRIU's order. An error aborts the request.
    fn notify(&mut self, notify: Notify) -> Result<(), HandlerError>;

    /// Answers CRIU's "query-ext-files" (dump): extra `external` keys
    /// (e.g. `file[mnt_id:inode]`) to declare. None by default.
    fn external_files(&mut self) -> Result<Vec<String>, HandlerError> {
        Ok(Vec::new())
    }
}

impl<F> NotifyHandler for F
where
    F: FnMut(Notify) -> Result<(), HandlerError>,
{
    fn notify(&mut self, notify: Notify) -> Result<(), HandlerError> {
        self(notify)
    }
}

/// Acknowledges every notify (an orphan pts master fd is closed).
#[derive(Debug, Default, Clone, Copy)]
pub struct IgnoreNotify;

impl NotifyHandler for IgnoreNotify {
    fn notify(&mut self, _notify: Notify) -> Result<(), HandlerError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_script_round_trips() {
        for s in [
            "pre-dump",
            "post-dump",
            "network-lock",
            "network-unlock",
            "post-setup-namespaces",
            "pre-restore",
            "pre-resume",
            "post-resume",
            "status-ready",
            "pre-stream",
        ] {
            assert_eq!(Notify::parse(s, None, None).unwrap().script(), s);
        }
        assert_eq!(
            Notify::parse("post-restore", Some(42), None)
                .unwrap()
                .script(),
            "post-restore"
        );
        assert!(Notify::parse("post-restore", None, None).is_none());
        assert!(Notify::parse("orphan-pts-master", None, None).is_none());
        assert!(Notify::parse("no-such-script", None, None).is_none());
    }

    #[test]
    fn closure_handler_keeps_state() {
        let mut seen = Vec::new();
        {
            let mut h = |n: Notify| -> Result<(), HandlerError> {
                seen.push(n.script());
                Ok(())
            };
            h.notify(Notify::PreDump).unwrap();
            h.notify(Notify::PostDump).unwrap();
        }
        assert_eq!(seen, ["pre-dump", "post-dump"]);
    }
}
