//! The messages of a migration, in the order they flow. Bulk data (the
//! images, the rootfs) follows its announcing message as a
//! [`super::wire`] stream.

use serde::{Deserialize, Serialize};

use super::preflight::{Needs, Problem};
use crate::error::Error;

/// The first message on a connection to `ferry serve`.
#[derive(Debug, Serialize, Deserialize)]
pub enum Hello {
    /// A container wants to move here.
    Offer {
        needs: Needs,
        /// The container's config.json.
        config: String,
        /// The source CPU, as CRIU describes it (cpuinfo.img).
        cpuinfo: Vec<u8>,
    },
    /// The connection that will carry the memory pages of `migration` (the
    /// secret token of `Reply::Accepted`), relayed to CRIU's page server.
    Pages { migration: String },
    /// An offer to judge only (`ferry migrate --check`): the answer is
    /// `Fits` or `Refused`, and nothing is received.
    Check { needs: Needs, cpuinfo: Vec<u8> },
    /// What became of move `migration` (its page token) after a commit
    /// whose answer was lost: the answer is `Outcome`.
    Outcome { migration: String },
}

/// What a destination decided about a restored copy (see
/// [`Step::Commit`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// Restored and stopped, waiting for the commit.
    Deciding,
    /// The commit came: the copy runs here.
    Running,
    /// The commit did not come (or the move failed): the copy was killed
    /// before it ran an instruction.
    Killed,
    /// This agent knows nothing of that move (it restarted, or never had it).
    Unknown,
}

/// Source to destination, after the offer was accepted.
#[derive(Debug, Serialize, Deserialize)]
pub enum Step {
    /// A tar stream of CRIU's images (all but the pages) follows.
    Images,
    /// Before the freeze: the container's root filesystem as it is now, a
    /// stream of [`crate::overlay::pack_ahead`] (the whole tree, or with
    /// `overlay` the writable layer only).
    RootfsAhead { overlay: bool },
    /// While frozen: what changed in the root filesystem since
    /// `RootfsAhead`. The destination removes `removed` (deepest first),
    /// then unpacks the stream of changed entries that follows
    /// ([`crate::overlay::Changes`]); an overlay's layer is then mounted
    /// over `lowers`, which the pre-flight check found on the destination
    /// with the same digests.
    RootfsChanges {
        removed: Vec<std::path::PathBuf>,
        lowers: Option<Vec<std::path::PathBuf>>,
        /// How long the container had been frozen when this left: the
        /// destination dates the freeze from it (its log's downtime).
        /// Absent from sources before it.
        #[serde(default)]
        frozen_ms: Option<f64>,
    },
    /// Everything is there: restore, leaving the copy stopped.
    Restore,
    /// After `Restored`: the source will never resume its copy; run yours.
    /// The destination's copy runs no instruction before this arrives, and
    /// is killed if it does not: until the commit, the source may resume;
    /// after it, only the destination runs the container.
    Commit,
    /// The source gives up (it resumed its container).
    Abort { reason: String },
}

/// Destination to source.
#[derive(Debug, Serialize, Deserialize)]
pub enum Reply {
    Accepted {
        migration: String,
        /// A pre-copy's pages go into the restored tasks' memory through
        /// userfaultfd (the source offered it and this host can): the
        /// source dumps lazily, and the copy is restored, filled with every
        /// page and only then reported `Restored`. Absent: images.
        #[serde(default)]
        uffd: bool,
    },
    Refused {
        problems: Vec<Problem>,
    },
    /// The answer to a `Check` that found no problem.
    Fits,
    PagesReady,
    Received {
        bytes: u64,
    },
    Restored {
        pid: i32,
        restore_ms: f64,
        /// CRIU's stats-restore.
        criu: Option<criu_rpc::stats::RestoreStats>,
        /// The id the destination's dockerd gave a docker container.
        #[serde(default)]
        docker_id: Option<String>,
    },
    /// The answer to `Commit`: the copy runs.
    Running,
    /// The answer to `Hello::Outcome`.
    Outcome {
        decision: Decision,
    },
    /// Post-copy: every page arrived (after `Running`).
    PagesDone {
        lazy: criu_rpc::lazy::LazyStats,
    },
    /// The move failed here (and what was received is gone): the source
    /// resumes its container.
    Failed {
        failure: Failure,
    },
}

pub use super::outcome::{CriuFailure, Failure, Stage};

impl Failure {
    /// `e`, which happened at `stage`, for the source.
    pub fn new(stage: Stage, e: &Error) -> Failure {
        // The runtime's own report of its restore, as it made it.
        if let Error::PendingRestoreFailed { failure, .. } = e {
            return Failure {
                stage,
                ..(**failure).clone()
            };
        }
        Failure {
            stage,
            message: crate::error::chain(e),
            criu: criu_error(e).map(CriuFailure::from),
        }
    }
}

/// The CRIU failure at the root of `e`, if any. ferry-oci's `Criu`
/// variant is transparent (its `source()` is the criu-rpc error's own), so
/// it is matched, not only found in the chain.
pub fn criu_error<'e>(e: &'e (dyn std::error::Error + 'static)) -> Option<&'e criu_rpc::Error> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(c) = err.downcast_ref::<criu_rpc::Error>() {
            return Some(c);
        }
        match err.downcast_ref::<Error>() {
            Some(Error::Criu(c)) | Some(Error::CorruptImage(c)) => return Some(c),
            Some(Error::ResumeFailed { failed, .. }) => return criu_error(failed.as_ref()),
            _ => {}
        }
        cur = err.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use criu_rpc::{CriuMessage, LogExcerpt, RequestKind};

    #[test]
    fn an_acceptance_without_the_page_path_means_pages_into_images() {
        // As agents before the userfaultfd pre-copy sent it (protocol 3,
        // refused at the greeting now, but the field stays optional).
        let r: Reply = serde_json::from_str(r#"{"Accepted":{"migration":"t0k3n"}}"#).unwrap();
        assert!(matches!(r, Reply::Accepted { uffd: false, .. }), "{r:?}");
        let r: Reply =
            serde_json::from_str(r#"{"Accepted":{"migration":"t","uffd":true}}"#).unwrap();
        assert!(matches!(r, Reply::Accepted { uffd: true, .. }), "{r:?}");
    }

    #[test]
    fn a_criu_failure_crosses_the_wire_as_fields() {
        let e = Error::Criu(criu_rpc::Error::Failed {
            request: RequestKind::Restore,
            criu: CriuMessage {
                errno: Some(nix::errno::Errno::EEXIST),
                message: Some("rlimit: Can't setup RLIMIT_NOFILE\n".into()),
            },
            log: Some(LogExcerpt {
                path: "/r/restore.log".into(),
                lines: vec![
                    "(00.1) Error (criu/cr-restore.c:1237): Can't fork for 42: File exists".into(),
                    "(00.2) Error (criu/cr-restore.c:2605): Restoring FAILED.".into(),
                ],
            }),
        });
        let f = Failure::new(Stage::Restore, &e);
        let back: Reply =
            serde_json::from_str(&serde_json::to_string(&Reply::Failed { failure: f }).unwrap())
                .unwrap();
        let Reply::Failed { failure } = back else {
            panic!("{back:?}")
        };
        assert_eq!(failure.stage, Stage::Restore);
        let c = failure.criu.unwrap();
        assert_eq!(c.request.as_deref(), Some("restore"));
        assert_eq!(c.errno, Some(libc::EEXIST));
        assert_eq!(c.errno_name.as_deref(), Some("EEXIST"));
        assert_eq!(
            c.message.as_deref(),
            Some("rlimit: Can't setup RLIMIT_NOFILE")
        );
        assert_eq!(c.cause.as_deref(), Some("Can't fork for 42: File exists"));
        assert_eq!(c.log_lines.len(), 2);
        assert!(
            failure.message.contains("Can't fork for 42"),
            "{}",
            failure.message
        );
    }

    #[test]
    fn other_failures_have_no_criu_part() {
        let e = Error::Protocol { what: "test" };
        let f = Failure::new(Stage::Receive, &e);
        assert!(f.criu.is_none());
        assert_eq!(f.message, "migration protocol violated: test");
    }
}
