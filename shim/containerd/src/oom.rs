//! Out-of-memory events: containerd's `/tasks/oom`.
//!
//! As runc-shim's `oom_v1.go` does on cgroup v1: an eventfd registered on
//! the container's `memory.oom_control` through `cgroup.event_control`. The
//! kernel signals it on every OOM in the cgroup, and once more when the
//! cgroup is removed, which ends the watch (runc-shim checks that the
//! cgroup still exists after each wake-up for the same reason).
//!
//! Only the v1 memory controller is watched: Ferry runs on hybrid hosts,
//! where memory is v1 (cgroup v2's `memory.events` is runc-shim's
//! `oom_v2.go`, not done here).

use std::path::Path;
use std::time::Duration;

use ferry_oci::runtime::events::{OomWait, OomWatch};

use super::error::{Error, Result};

/// Calls `on_oom` (from a thread of its own) each time a task of the v1
/// memory cgroup `memory` is killed for lack of memory, until the cgroup is
/// removed. The registration is ferry-oci's, shared with `ferry events`.
pub fn watch(memory: &Path, mut on_oom: impl FnMut() + Send + 'static) -> Result<()> {
    let w = OomWatch::new(memory).map_err(Error::oci(
        "watching OOM events of",
        &memory.display().to_string(),
    ))?;
    std::thread::Builder::new()
        .name("oom".into())
        .spawn(move || loop {
            match w.wait(Duration::from_secs(3600)) {
                Ok(OomWait::Oom) => on_oom(),
                Ok(OomWait::Timeout) => continue,
                Ok(OomWait::Gone) | Err(_) => return,
            }
        })
        .map_err(Error::io("starting the OOM watch of", memory))?;
    Ok(())
}
