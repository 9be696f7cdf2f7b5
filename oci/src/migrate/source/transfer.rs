//! What crosses the control connection while the container is frozen: its
//! images and what changed in its root filesystem since that went ahead,
//! then the restore request and the destination's answer.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Instant;

use criu_rpc::stats::RestoreStats;

use super::negotiate::Ahead;
use super::{expect, ms};
use crate::error::{Error, Result};
use crate::migrate::channel::Channel;
use crate::migrate::protocol::{Reply, Step};
use crate::migrate::tarball;
use crate::migrate::wire::{self, StreamWriter};
use crate::migrate::Progress;
use crate::overlay::Overlay;

/// What the destination got.
pub(super) struct Sent {
    pub images_bytes: u64,
    pub rootfs_bytes: u64,
    pub transfer_ms: f64,
}

/// What the destination did with it, seen from here.
pub(super) struct Restored {
    /// The destination's pid of the container.
    pub pid: i32,
    pub restore_ms: f64,
    /// The restore request's round trip, seen from here.
    pub restore_wait_ms: f64,
    pub criu_restore: Option<RestoreStats>,
    /// The destination dockerd's id of the container.
    pub docker_id: Option<String>,
}

/// Sends the images and what changed in the rootfs since it went ahead
/// (the container frozen since `frozen_at`).
pub(super) fn send_state(
    ctl: &mut Channel,
    images: &Path,
    frozen_at: Instant,
    ahead: &Ahead,
    overlay: Option<&Overlay>,
    progress: &(dyn Fn(Progress<'_>) + Sync),
) -> Result<Sent> {
    progress(Progress::Phase("transfer"));
    let t = Instant::now();
    wire::send(ctl, &Step::Images)?;
    let mut w = StreamWriter::new(ctl);
    // Not CRIU's dump log: it stays with the source (its failures are
    // quoted here), and a post-copy dump still writes it while the images
    // go (tar found it growing: "lseek(SEEK_DATA) went beyond the end").
    // Nor the cgroup yard CRIU's work dir (the images dir) holds while it
    // still dumps: links to this host's hierarchies.
    tarball::pack(images, &mut w, |name| {
        name == crate::checkpoint::DUMP_LOG || name == crate::cgroup_yard::YARD_DIR
    })?;
    let images_bytes = w.finish()?;
    expect(wire::recv(ctl)?)?;
    let changes = ahead.sent.changes(&ahead.tree)?;
    wire::send(
        ctl,
        &Step::RootfsChanges {
            removed: changes.removed.clone(),
            lowers: overlay.map(|o| o.lowers.clone()),
            frozen_ms: Some(ms(frozen_at.elapsed())),
        },
    )?;
    let mut w = StreamWriter::new(ctl);
    changes.pack(&mut w)?;
    let rootfs_bytes = w.finish()?;
    expect(wire::recv(ctl)?)?;
    Ok(Sent {
        images_bytes,
        rootfs_bytes,
        transfer_ms: ms(t.elapsed()),
    })
}

/// Asks the destination at `to` to restore what it got, leaving its copy
/// stopped until the commit.
pub(super) fn restore(
    ctl: &mut Channel,
    to: SocketAddr,
    progress: &(dyn Fn(Progress<'_>) + Sync),
) -> Result<Restored> {
    progress(Progress::Phase("restore"));
    let t = Instant::now();
    wire::send(ctl, &Step::Restore)?;
    match wire::recv::<_, Reply>(ctl).map_err(|e| match e {
        Error::Wire(source) => Error::Peer {
            peer: to.to_string(),
            op: "waiting for the restore on",
            source,
        },
        e => e,
    })? {
        Reply::Restored {
            pid,
            restore_ms,
            criu,
            docker_id,
        } => Ok(Restored {
            docker_id,
            pid,
            restore_ms,
            restore_wait_ms: ms(t.elapsed()),
            criu_restore: criu,
        }),
        Reply::Failed { failure } => Err(Error::DestinationFailed {
            failure: Box::new(failure),
        }),
        _ => Err(Error::Protocol {
            what: "an unexpected answer to the restore",
        }),
    }
}
