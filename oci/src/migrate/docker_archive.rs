//! The manual, non-live path for a dockerd's containers, with no
//! `--experimental` on either dockerd: `ferry checkpoint --docker NAME
//! --export FILE` writes one file (the container's description, CRIU's
//! images and its writable layer's diff, [`crate::export::DockerExport`]);
//! `ferry restore --docker --import FILE` on another host recreates the
//! container on its dockerd and starts it with a pending restore
//! ([`super::docker::DockerLanding`]), as the migration agent does.

use std::path::{Path, PathBuf};
use std::time::Instant;

use criu_rpc::Criu;

use super::docker::{self, DockerFacts, DockerLanding};
use super::source::{self, DockerSource};
use crate::checkpoint::CheckpointOptions;
use crate::docker::Engine;
use crate::error::{Error, Result};
use crate::export::{self, Compression, Contents, DockerExport};

/// What `ferry checkpoint --docker` did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DockerCheckpoint {
    pub name: String,
    pub id: String,
    pub file: PathBuf,
    pub bytes: u64,
    pub checkpoint_ms: f64,
    /// What will not survive the restore elsewhere.
    pub notes: Vec<String>,
}

/// Checkpoints container `name` of `engine`'s dockerd into `file`. The
/// container is dumped stopped, and only killed once the archive is
/// written (or resumed, with `leave_running`, and on any failure: a failed
/// checkpoint leaves it running). Its restart policy is off meanwhile, so
/// that dockerd does not start the checkpointed container again.
pub fn checkpoint(
    engine: &Engine,
    name: &str,
    file: &Path,
    compression: Compression,
    leave_running: bool,
    criu: &Criu,
) -> Result<DockerCheckpoint> {
    let d = DockerSource::find(engine, name)?;
    let id = d.needs().container.id.clone();
    let policy = engine.disable_restart(&id)?;
    let root = d.root().to_path_buf();
    let started = Instant::now();
    let result = d.with_outgoing(|c, work| {
        let images = work.join("images");
        let opts = CheckpointOptions {
            leave_stopped: true,
            lock_joined_netns: true,
            empty_ns: docker::empty_ns(&c.spec()?),
            ..super::CRIU_FLAGS.dump(images.clone())
        };
        c.checkpoint(criu, opts, &mut |_| {})?;
        let upper = d.needs().container.upper_dir.clone().unwrap_or_default();
        let packed = export::export_contents(
            &Contents::Docker(&DockerExport {
                needs: d.needs(),
                images: &images,
                upper: &upper,
            }),
            file,
            compression,
        );
        let bytes = match packed {
            Ok(b) if !leave_running => {
                d.kill()?;
                b
            }
            Ok(b) => {
                source::resume(&root, &id)?;
                b
            }
            Err(e) => {
                return Err(match source::resume(&root, &id) {
                    Ok(()) => e,
                    Err(r) => Error::ResumeFailed {
                        failed: Box::new(e),
                        resume: Box::new(r),
                    },
                })
            }
        };
        Ok(bytes)
    });
    // A killed container keeps its policy "no" (dockerd would otherwise
    // restart it at once); one that runs on gets its own back.
    if result.is_err() || leave_running {
        if let Err(e) = engine.set_restart(&id, &policy) {
            tracing::warn!(id, error = %crate::error::chain(&e), "putting the restart policy back");
        }
    }
    Ok(DockerCheckpoint {
        name: d.needs().container.name.clone(),
        id,
        file: file.to_path_buf(),
        bytes: result?,
        checkpoint_ms: started.elapsed().as_secs_f64() * 1000.0,
        notes: d.notes(),
    })
}

/// Restores the container of archive `file` on `engine`'s dockerd, under
/// its own name or `name`; returns the id dockerd gave it. Checked before
/// anything is created (image, name, networks: every problem at once), and
/// nothing stays on the dockerd if the restore fails.
pub fn restore(engine: Engine, file: &Path, name: Option<&str>) -> Result<String> {
    let needs = export::docker_needs(file)?;
    let name = name.unwrap_or(&needs.container.name).to_string();
    let facts = DockerFacts::gather_as(&engine, &needs, &name)?;
    let problems = docker::judge(&needs, &facts);
    if !problems.is_empty() {
        return Err(Error::Refused { problems });
    }
    let landing = DockerLanding::create(engine, &needs, Some(&name))?;
    let placed = (|| {
        export::import_docker(file, landing.dir())?;
        let layer = landing.dir().join(export::LAYER);
        let f = std::fs::File::open(&layer).map_err(crate::error::io("opening", &layer))?;
        crate::overlay::unpack_diff(std::io::BufReader::new(f), landing.upper())?;
        std::fs::remove_file(&layer).map_err(crate::error::io("removing", &layer))?;
        landing.start(None, false)
    })();
    match placed {
        Ok(_) => {
            let id = landing.id().to_string();
            landing.done()?;
            Ok(id)
        }
        Err(e) => {
            if let Err(d) = landing.discard() {
                tracing::warn!(error = %crate::error::chain(&d), "removing the failed restore's container");
            }
            Err(e)
        }
    }
}
