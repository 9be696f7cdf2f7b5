//! Live migration between two Ferry hosts: the credentials (`auth`), the
//! sealed channel every connection is (`channel`), the framing of messages
//! and streams on it (`wire`, `protocol`), the pre-flight verdict, and the
//! source and destination sides.
//!
//! One control connection carries typed messages and bulk streams (CRIU's
//! small images, the rootfs diff); memory pages travel on a second
//! connection, relayed between the channel and the page-server socket CRIU
//! is given on each side (`ps.fd`), so pages go from the source's CRIU into
//! the destination's page server, sealed, with no file in between and no
//! unauthenticated port ever open. The destination runs its copy only once
//! the source committed (`protocol::Step::Commit`): exactly one copy runs.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub mod auth;
pub mod channel;
pub mod destination;
pub mod docker;
pub mod docker_archive;
pub mod interrupt;
pub mod outcome;
pub mod preflight;
pub mod protocol;
pub mod record;
pub mod source;
mod tarball;
pub mod wire;

/// The CRIU options a migration dumps and restores with, the one place
/// they are spelled: the source's dump, the destination's restore, and
/// containerd's restore of a checkpoint (which cannot know what the dump
/// asked, so assumes what a move does).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CriuFlags {
    /// Established TCP connections move (in repair mode, behind the
    /// network lock), as `runc checkpoint --tcp-established`.
    pub tcp_established: bool,
    /// Held file locks move (`--file-locks`).
    pub file_locks: bool,
}

/// What every move uses.
pub const CRIU_FLAGS: CriuFlags = CriuFlags {
    tcp_established: true,
    file_locks: true,
};

impl CriuFlags {
    /// The dump options of a move into `image_path` (the caller adds the
    /// page server, lazy pages, leave_stopped...).
    pub fn dump(self, image_path: PathBuf) -> crate::checkpoint::CheckpointOptions {
        crate::checkpoint::CheckpointOptions {
            image_path,
            tcp_established: self.tcp_established,
            file_locks: self.file_locks,
            ..Default::default()
        }
    }

    /// The restore options of a move from `image_path`.
    pub fn restore(self, image_path: PathBuf) -> crate::restore::RestoreOptions {
        crate::restore::RestoreOptions {
            image_path,
            tcp_established: self.tcp_established,
            file_locks: self.file_locks,
            ..Default::default()
        }
    }
}

/// What `ferry migrate` reports while it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress<'a> {
    /// A new phase began.
    Phase(&'a str),
    /// Memory pages acknowledged by the destination so far, of about `of`
    /// (the container's memory use: an estimate, which the count can pass).
    Pages { sent: u64, of: u64 },
}

/// How memory moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Freeze, send every page, restore: downtime grows with memory.
    Precopy,
    /// Freeze, send everything but the pages, restore with lazy pages: the
    /// container runs on the destination while its memory follows.
    Postcopy,
    /// Whichever gives the lower downtime for this container.
    Auto,
}

/// Where a pre-copy's pages go on the destination.
///
/// Either way the copy runs only once it holds every page and the source
/// committed, and the source resumes if anything fails before that.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PrecopyPages {
    /// Straight into the restored tasks' memory, through userfaultfd, as
    /// they arrive: the source's CRIU dumps lazily and serves every page,
    /// the destination restores the tasks (stopped) while the pages come,
    /// and fills them in with UFFDIO_COPY. No image of the pages is written
    /// or read back, and the restore overlaps the transfer. Falls back to
    /// `Images` when either host lacks lazy pages.
    Uffd,
    /// Into image files on the destination (CRIU's page server), which
    /// CRIU's restore reads back once the dump ended: runc's
    /// `--page-server` path.
    Images,
    /// `Uffd` from [`PRECOPY_UFFD_FROM`] of memory, `Images` below.
    #[default]
    Auto,
}

/// From this much memory a pre-copy's pages go into the restored tasks
/// (`PrecopyPages::Auto`). A lazy dump, the daemon and its guardian cost
/// a pre-copy ~10-20 ms more than CRIU's page server (hack/bench-migrate:
/// a busybox counter's downtime 0.10 s through images, 0.14 s through
/// userfaultfd), while writing pages into images and reading them back
/// costs ~2 ms per MiB here (64 MiB: 0.30 s against 0.27 s; 1 GiB: 2.5 s
/// against 1.7 s).
pub const PRECOPY_UFFD_FROM: u64 = 16 << 20;

impl PrecopyPages {
    /// Whether a pre-copy of `memory` bytes offers its pages into the
    /// tasks, this host's CRIU dumping lazily or not (`lazy_pages_here`).
    pub fn offers_uffd(self, memory: u64, lazy_pages_here: bool) -> bool {
        lazy_pages_here
            && match self {
                PrecopyPages::Uffd => true,
                PrecopyPages::Images => false,
                PrecopyPages::Auto => memory >= PRECOPY_UFFD_FROM,
            }
    }
}

impl fmt::Display for PrecopyPages {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PrecopyPages::Uffd => "uffd",
            PrecopyPages::Images => "images",
            PrecopyPages::Auto => "auto",
        })
    }
}

impl FromStr for PrecopyPages {
    type Err = String;
    fn from_str(s: &str) -> Result<PrecopyPages, String> {
        match s {
            "uffd" | "userfaultfd" => Ok(PrecopyPages::Uffd),
            "images" => Ok(PrecopyPages::Images),
            "auto" => Ok(PrecopyPages::Auto),
            _ => Err(format!(
                "unknown pre-copy page path {s:?}: use auto, uffd or images"
            )),
        }
    }
}

/// Below this much memory a pre-copy's downtime is no longer than a
/// post-copy's (measured with hack/bench-migrate on this project's VMs:
/// both are ~0.3 s at 64 MiB, where pages take ~30 ms), and pre-copy does
/// not leave the container depending on the source after it resumed.
pub const AUTO_POSTCOPY_FROM: u64 = 128 << 20;

impl Mode {
    /// The mode `Auto` picks for a container using `memory` bytes, and why.
    pub fn resolve(self, memory: u64, lazy_pages_here: bool) -> (Mode, String) {
        match self {
            Mode::Auto if !lazy_pages_here => (
                Mode::Precopy,
                "auto: this kernel or CRIU lacks lazy pages (userfaultfd)".into(),
            ),
            Mode::Auto if memory >= AUTO_POSTCOPY_FROM => (
                Mode::Postcopy,
                format!(
                    "auto: {:.1} MiB of memory, post-copy keeps the downtime independent of it",
                    memory as f64 / 1048576.0
                ),
            ),
            Mode::Auto => (
                Mode::Precopy,
                format!(
                    "auto: {:.1} MiB of memory, sent within a pre-copy downtime as short as a post-copy's",
                    memory as f64 / 1048576.0
                ),
            ),
            m => (m, "asked for".into()),
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Precopy => "precopy",
            Mode::Postcopy => "postcopy",
            Mode::Auto => "auto",
        })
    }
}

impl FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Mode, String> {
        match s {
            "precopy" | "pre-copy" => Ok(Mode::Precopy),
            "postcopy" | "post-copy" | "lazy" => Ok(Mode::Postcopy),
            "auto" => Ok(Mode::Auto),
            _ => Err(format!("unknown mode {s:?}: use precopy, postcopy or auto")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dump_and_restore_agree_on_the_flags() {
        let d = CRIU_FLAGS.dump("i".into());
        let r = CRIU_FLAGS.restore("i".into());
        assert!(d.tcp_established && d.file_locks);
        assert_eq!(
            (d.tcp_established, d.file_locks),
            (r.tcp_established, r.file_locks)
        );
    }

    #[test]
    fn auto_picks_postcopy_for_big_containers_only() {
        assert_eq!(Mode::Auto.resolve(64 << 20, true).0, Mode::Precopy);
        assert_eq!(Mode::Auto.resolve(1 << 30, true).0, Mode::Postcopy);
        assert_eq!(Mode::Auto.resolve(1 << 30, false).0, Mode::Precopy);
        assert_eq!(Mode::Precopy.resolve(1 << 30, true).0, Mode::Precopy);
        assert_eq!(Mode::Postcopy.resolve(1, true).0, Mode::Postcopy);
        assert_eq!("post-copy".parse::<Mode>(), Ok(Mode::Postcopy));
        assert!("fast".parse::<Mode>().is_err());
    }

    #[test]
    fn precopy_pages_parse_and_print_as_the_flag_says() {
        for p in [PrecopyPages::Uffd, PrecopyPages::Images, PrecopyPages::Auto] {
            assert_eq!(p.to_string().parse::<PrecopyPages>(), Ok(p));
        }
        assert_eq!(PrecopyPages::default(), PrecopyPages::Auto);
        assert!("disk".parse::<PrecopyPages>().is_err());
    }

    #[test]
    fn auto_sends_pages_into_the_tasks_from_16_mib_where_both_can() {
        let auto = PrecopyPages::Auto;
        assert!(!auto.offers_uffd(2 << 20, true));
        assert!(auto.offers_uffd(64 << 20, true));
        assert!(!auto.offers_uffd(64 << 20, false));
        assert!(PrecopyPages::Uffd.offers_uffd(1, true));
        assert!(!PrecopyPages::Uffd.offers_uffd(1 << 30, false));
        assert!(!PrecopyPages::Images.offers_uffd(1 << 30, true));
    }
}
