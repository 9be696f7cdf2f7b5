//! Interrupting a move from outside (`ferry migrate` got SIGINT, SIGTERM
//! or SIGHUP): the move's connections are cut, so every blocking step
//! fails at once and the source's ordinary failure path resumes the
//! container, as for a link that went down. Once the source committed
//! (told the destination to run its copy), nothing is cut: the move is
//! finished instead, because resuming the source then could make two
//! copies.

use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// Shared between the move and whoever may stop it (a signal thread).
#[derive(Debug, Default)]
pub struct Interrupt {
    /// Why it was asked to stop (the signal's name), once asked.
    why: Mutex<Option<String>>,
    committed: AtomicBool,
    /// The move's connections, cut when asked.
    conns: Mutex<Vec<TcpStream>>,
}

impl Interrupt {
    pub fn new() -> Interrupt {
        Interrupt::default()
    }

    /// Asks the move to stop, for `why`: its connections are cut unless it
    /// already committed.
    pub fn fire(&self, why: &str) {
        let mut w = self.why.lock().unwrap_or_else(|e| e.into_inner());
        if w.is_none() {
            *w = Some(why.to_string());
        }
        drop(w);
        if !self.committed.load(Ordering::SeqCst) {
            for c in self.conns.lock().unwrap_or_else(|e| e.into_inner()).iter() {
                let _ = c.shutdown(Shutdown::Both);
            }
        }
    }

    /// Why the move was asked to stop, if it was.
    pub fn fired(&self) -> Option<String> {
        self.why.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Cuts `c` when the move is interrupted (at once if it already was).
    pub fn watch(&self, c: TcpStream) {
        let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        if self.fired().is_some() && !self.committed.load(Ordering::SeqCst) {
            let _ = c.shutdown(Shutdown::Both);
        }
        conns.push(c);
    }

    /// The point of no return: `false` if the move was interrupted before
    /// (it must resume, not commit); from `true` on, interruptions no
    /// longer cut anything.
    pub fn commit(&self) -> bool {
        // The order matters against a concurrent `fire`: either it sees
        // `committed` and cuts nothing, or we see its reason and abort.
        self.committed.store(true, Ordering::SeqCst);
        if self.fired().is_some() {
            self.committed.store(false, Ordering::SeqCst);
            return false;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::TcpListener;

    fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        (a, l.accept().unwrap().0)
    }

    #[test]
    fn firing_cuts_the_watched_connections_before_the_commit_only() {
        let i = Interrupt::new();
        let (a, mut b) = pair();
        i.watch(a.try_clone().unwrap());
        i.fire("SIGINT");
        assert_eq!(b.read(&mut [0u8; 1]).unwrap(), 0, "cut");
        assert_eq!(i.fired().as_deref(), Some("SIGINT"));
        assert!(!i.commit(), "an interrupted move must not commit");

        let i = Interrupt::new();
        let (a, b) = pair();
        i.watch(a.try_clone().unwrap());
        assert!(i.commit());
        i.fire("SIGTERM");
        b.set_nonblocking(true).unwrap();
        let e = (&b).read(&mut [0u8; 1]).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock, "not cut");
        drop(a);
    }

    #[test]
    fn a_connection_watched_after_the_interrupt_is_cut_at_once() {
        let i = Interrupt::new();
        i.fire("SIGHUP");
        let (a, mut b) = pair();
        i.watch(a);
        assert_eq!(b.read(&mut [0u8; 1]).unwrap(), 0);
    }
}
