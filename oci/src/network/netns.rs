//! Named network namespaces: a namespace bind-mounted on a file, so it
//! lives without a process in it (what `ip netns add` does under
//! /run/netns).

use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::mount::{mount, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};

use crate::error::{io, Error, Result};

/// A network namespace pinned at a path.
#[derive(Debug)]
pub struct Netns {
    path: PathBuf,
}

fn sys(op: &'static str, path: &Path) -> impl FnOnce(nix::Error) -> Error {
    let path = path.to_path_buf();
    move |e| Error::Io {
        op,
        path,
        source: e.into(),
    }
}

impl Netns {
    /// Creates a new, empty namespace pinned at `path` (whose parent must
    /// exist; `path` must not).
    pub fn create(path: &Path) -> Result<Netns> {
        if path.exists() {
            return Err(Error::NetnsExists {
                path: path.to_path_buf(),
            });
        }
        File::options()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(io("creating the netns mount point", path))?;
        let target = path.to_path_buf();
        // unshare() moves only the calling thread; a scratch thread keeps
        // the caller where it was.
        let result = std::thread::spawn(move || -> Result<()> {
            unshare(CloneFlags::CLONE_NEWNET).map_err(sys("unshare(CLONE_NEWNET) for", &target))?;
            mount(
                Some("/proc/thread-self/ns/net"),
                &target,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(sys("bind-mounting the new netns on", &target))
        })
        .join()
        .unwrap_or(Err(Error::InvalidNetwork {
            reason: "the netns creation thread panicked",
        }));
        if let Err(e) = result {
            let _ = std::fs::remove_file(path);
            return Err(e);
        }
        Ok(Netns {
            path: path.to_path_buf(),
        })
    }

    /// An existing namespace at `path` (a pinned one, or /proc/PID/ns/net).
    pub fn at(path: &Path) -> Result<Netns> {
        let ns = Netns {
            path: path.to_path_buf(),
        };
        ns.open()?;
        Ok(ns)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn open(&self) -> Result<OwnedFd> {
        File::open(&self.path)
            .map(OwnedFd::from)
            .map_err(io("opening the netns", &self.path))
    }

    /// The namespace's inode: CRIU names an external netns `net[INODE]`.
    pub fn inode(&self) -> Result<u64> {
        std::fs::metadata(&self.path)
            .map(|m| m.ino())
            .map_err(io("stat of the netns", &self.path))
    }

    /// Unpins and removes the namespace's file; the namespace itself goes
    /// when its last process leaves.
    pub fn remove(self) -> Result<()> {
        crate::mount::detach(&self.path, "unmounting the netns")?;
        match std::fs::remove_file(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io("removing the netns file", &self.path)(e)),
        }
    }
}

/// Runs `f` on a thread inside `netns` (the caller's when `None`).
pub fn run_in<T: Send + 'static>(
    netns: Option<&Netns>,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T> {
    let fd = netns.map(Netns::open).transpose()?;
    let path = netns.map(|n| n.path.clone()).unwrap_or_default();
    std::thread::spawn(move || -> Result<T> {
        if let Some(fd) = fd {
            setns(fd.as_fd(), CloneFlags::CLONE_NEWNET).map_err(sys("setns into", &path))?;
        }
        Ok(f())
    })
    .join()
    .unwrap_or(Err(Error::InvalidNetwork {
        reason: "a thread working in a network namespace panicked",
    }))
}

impl Netns {
    /// Runs `f` on a thread inside this namespace, e.g. to listen or
    /// connect from there.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
        run_in(Some(self), f)
    }
}
