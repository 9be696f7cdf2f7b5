//! The messages of a migration, in the order they flow. Bulk data (the
//! images, the rootfs) follows its announcing message as a
//! [`super::wire`] stream.

use serde::{Deserialize, Serialize};

use super::preflight::{Needs, Problem};

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
    /// The connection that will carry the memory pages of `migration`,
    /// handed to CRIU's page server once authenticated.
    Pages { migration: String },
    /// An offer to judge only (`ferry migrate --check`): the answer is
    /// `Fits` or `Refused`, and nothing is received.
    Check { needs: Needs, cpuinfo: Vec<u8> },
}

/// Source to destination, after the offer was accepted.
#[derive(Debug, Serialize, Deserialize)]
pub enum Step {
    /// A tar stream of CRIU's images (all but the pages) follows.
    Images,
    /// A tar stream of the container's root filesystem follows.
    Rootfs,
    /// The rootfs is an overlay: a tar stream of its writable layer follows
    /// (crate::overlay), to mount over `lowers`, which the pre-flight check
    /// found on the destination with the same digests.
    RootfsDiff { lowers: Vec<std::path::PathBuf> },
    /// Everything is there: restore.
    Restore,
    /// The source gives up (it resumed its container).
    Abort { reason: String },
}

/// Destination to source.
#[derive(Debug, Serialize, Deserialize)]
pub enum Reply {
    Accepted {
        migration: String,
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
    },
    /// Post-copy: every page arrived (after `Restored`).
    PagesDone {
        lazy: criu_rpc::lazy::LazyStats,
    },
    Failed {
        error: String,
    },
}
