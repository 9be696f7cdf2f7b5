//! A dockerd's container as the source of a move: finding it (running,
//! with Ferry, on overlay2), what its offer says about it, and what
//! becomes of the source's copy once the destination runs it.

use std::path::Path;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};

use super::{with_outgoing, DOCKER_OUTGOING};
use crate::docker::Engine;
use crate::error::{Error, Result};
use crate::migrate::docker::DockerNeeds;
use crate::migrate::Progress;
use crate::runtime::Container;

/// A container of a dockerd, about to move.
pub struct DockerSource<'a> {
    pub(super) engine: &'a Engine,
    /// dockerd's runtime root, where Ferry keeps the container's state.
    pub(super) root: std::path::PathBuf,
    pub(super) needs: DockerNeeds,
    /// Remove the source's exited copy (else it is renamed).
    pub rm_source: bool,
}

impl<'a> DockerSource<'a> {
    /// Container `name` (or id) of `engine`'s dockerd, which must be
    /// running with Ferry, on overlay2.
    pub fn find(engine: &'a Engine, name: &str) -> Result<DockerSource<'a>> {
        let container = engine.container(name)?;
        if !container.running || container.paused {
            return Err(Error::DockerNotMovable {
                name: name.to_string(),
                why: format!(
                    "it is {}: only a running container moves (docker start / docker unpause it)",
                    if container.paused {
                        "paused"
                    } else {
                        "not running"
                    }
                ),
            });
        }
        let root = engine.runtime_root()?;
        if Container::load(&root, &container.id).is_err() {
            return Err(Error::DockerNotMovable {
                name: name.to_string(),
                why: format!(
                    "dockerd runs it with runtime {:?}, not Ferry (no state in {}): run it with `docker run --runtime ferry`",
                    container.runtime,
                    root.display()
                ),
            });
        }
        if container.upper_dir.is_none() {
            return Err(Error::DockerNotMovable {
                name: name.to_string(),
                why: format!(
                    "its storage driver is {}: Ferry moves the writable layer of overlay2 containers only",
                    container.storage_driver
                ),
            });
        }
        let image = engine
            .image(&container.image_id)?
            .ok_or_else(|| Error::DockerNotMovable {
                name: name.to_string(),
                why: format!("its image {} is gone from dockerd", container.image_id),
            })?;

        let needs = DockerNeeds::new(container, image);
        Ok(DockerSource {
            engine,
            root,
            needs,
            rm_source: false,
        })
    }

    /// What will not survive the move (migrate::docker::notes).
    pub fn notes(&self) -> Vec<String> {
        crate::migrate::docker::notes(&self.needs)
    }

    /// Says [`DockerSource::notes`] as progress, before anything freezes.
    pub(super) fn say_notes(&self, progress: &(dyn Fn(Progress<'_>) + Sync)) {
        for n in self.notes() {
            progress(Progress::Phase(&format!("note: {n}")));
        }
    }

    /// [`with_outgoing`] for this container: its scratch dir under
    /// dockerd's runtime root, out of the container id space.
    pub(in crate::migrate) fn with_outgoing<T>(
        &self,
        f: impl FnOnce(Container, &Path) -> Result<T>,
    ) -> Result<T> {
        with_outgoing(
            &self.root,
            &self.root.join(DOCKER_OUTGOING),
            &self.needs.container.id,
            f,
        )
    }

    /// The container as the offer describes it.
    pub fn needs(&self) -> &DockerNeeds {
        &self.needs
    }

    /// dockerd's runtime root, where Ferry keeps the container's state.
    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn engine(&self) -> &Engine {
        self.engine
    }

    /// Kills the container (frozen and stopped since a leave-stopped
    /// dump) and waits until dockerd has seen it exit.
    pub fn kill(&self) -> Result<()> {
        {
            // Dropped (its lock with it) before waiting: dockerd's shim
            // runs `ferry delete` on the exit, which takes that lock.
            let c = Container::load(&self.root, &self.needs.container.id)?;
            for p in c.pids()? {
                let _ = kill(p, Signal::SIGKILL);
            }
            c.state.cgroup.thaw()?;
        }
        self.engine
            .wait_not_running(&self.needs.container.id, Duration::from_secs(20))
    }

    /// Ends the source's copy once the destination runs it: killed (it is
    /// frozen and stopped since the dump), so that dockerd sees it exit,
    /// then renamed out of the way of a move back, or removed.
    pub(super) fn end(&self, to: &str) -> Result<String> {
        self.kill()?;
        // The move is done: a failed rename or removal is reported, not
        // turned into a failed move.
        let id = &self.needs.container.id;
        if self.rm_source {
            return Ok(match self.engine.remove(id, true) {
                Ok(()) => "removed".into(),
                Err(e) => format!("exited; removing it failed: {}", crate::error::chain(&e)),
            });
        }
        let mut last = String::new();
        for n in 0..10 {
            let name = crate::migrate::docker::moved_name(&self.needs.container.name, to, n);
            match self.engine.rename(id, &name) {
                Ok(()) => return Ok(format!("exited, renamed to {name}")),
                Err(e) => last = crate::error::chain(&e),
            }
        }
        Ok(format!(
            "exited, still named {} (renaming it failed: {last})",
            self.needs.container.name
        ))
    }
}
