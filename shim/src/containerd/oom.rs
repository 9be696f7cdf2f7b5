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

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use super::error::{Error, Result};

/// Calls `on_oom` (from a thread of its own) each time a task of the v1
/// memory cgroup `memory` is killed for lack of memory, until the cgroup is
/// removed.
pub fn watch(memory: &Path, mut on_oom: impl FnMut() + Send + 'static) -> Result<()> {
    let control_path = memory.join("memory.oom_control");
    let control = File::open(&control_path).map_err(Error::io("opening", &control_path))?;
    // SAFETY: eventfd returns a new fd or -1; nothing else owns it.
    let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    if raw < 0 {
        return Err(Error::io("creating an eventfd for", &control_path)(
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: `raw` is the fresh eventfd checked above.
    let event = unsafe { OwnedFd::from_raw_fd(raw) };
    let register = memory.join("cgroup.event_control");
    std::fs::write(
        &register,
        format!("{} {}", event.as_raw_fd(), control.as_raw_fd()),
    )
    .map_err(Error::io("registering an OOM eventfd in", &register))?;
    let dir: PathBuf = memory.to_path_buf();
    std::thread::Builder::new()
        .name("oom".into())
        .spawn(move || {
            // The registration lasts as long as both fds are open.
            let _control = control;
            let mut count = [0u8; 8];
            loop {
                match nix::unistd::read(event.as_raw_fd(), &mut count) {
                    Ok(8) => {}
                    Err(nix::errno::Errno::EINTR) => continue,
                    _ => return,
                }
                if !dir.exists() {
                    return;
                }
                on_oom();
            }
        })
        .map_err(Error::io("starting the OOM watch of", memory))?;
    Ok(())
}
