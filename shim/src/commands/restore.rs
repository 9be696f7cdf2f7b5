//! `ferry restore`: runc's flags, through Ferry's own CRIU client.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use ferry_oci::restore::RestoreOptions;
use ferry_oci::runtime::container::wait_exit;
use ferry_oci::runtime::cr::{restore_container, RestoreRuntimeOptions};
use ferry_oci::runtime::Container;

use super::checkpoint::{absolute, cgroup_mode, criu, empty_ns, CriuFlags};
use crate::Cli;

#[derive(Debug, clap::Args)]
pub struct RestoreArgs {
    /// The container's id (not with --docker: dockerd gives it one).
    #[arg(required_unless_present = "docker")]
    pub id: Option<String>,
    #[command(flatten)]
    pub criu: CriuFlags,
    /// The bundle (config.json and rootfs) to restore into.
    #[arg(short, long, default_value = ".")]
    pub bundle: PathBuf,
    /// Return once the container runs, instead of waiting for it.
    #[arg(short, long)]
    pub detach: bool,
    /// Write the restored init's pid to this file.
    #[arg(long = "pid-file")]
    pub pid_file: Option<PathBuf>,
    /// Where the new pty master of a container with a terminal goes (as
    /// for create).
    #[arg(long = "console-socket")]
    pub console_socket: Option<PathBuf>,
    /// Accepted for runc compatibility.
    #[arg(long = "no-pivot")]
    pub no_pivot: bool,
    /// Accepted for runc compatibility.
    #[arg(long = "no-subreaper")]
    pub no_subreaper: bool,
    /// The LSM profile the restored tasks get (CRIU's lsm_profile).
    #[arg(long = "lsm-profile")]
    pub lsm_profile: Option<String>,
    /// The LSM mount context of the restored mounts.
    #[arg(long = "lsm-mount-context")]
    pub lsm_mount_context: Option<String>,
    /// Restore from an archive of `ferry checkpoint --export`: it is
    /// extracted into --bundle DIR (which must be empty or absent; the
    /// bundle is DIR/bundle, the images DIR/images), then restored.
    #[arg(long)]
    pub import: Option<PathBuf>,
    /// Restore an archive of `ferry checkpoint --docker --export` on a
    /// dockerd: the container is created there (same name, image, command,
    /// env, labels, mounts, networks...) and starts restored. Prints its id.
    #[arg(long, requires = "import", conflicts_with = "id")]
    pub docker: bool,
    /// On failure, print one JSON object on stdout (the error's kind,
    /// message and CRIU's errno, message and log lines).
    #[arg(long)]
    pub json: bool,
    /// The dockerd to use (unix:///path/docker.sock); default: $DOCKER_HOST,
    /// else unix:///var/run/docker.sock, as docker finds it.
    #[arg(long = "docker-host", requires = "docker")]
    pub docker_host: Option<String>,
    /// With --docker: the name the container gets (default: its own).
    #[arg(long, requires = "docker")]
    pub name: Option<String>,
}

/// `ferry restore --docker --import FILE`.
fn restore_docker(a: &RestoreArgs, file: &Path) -> anyhow::Result<ExitCode> {
    let engine = ferry_oci::docker::Engine::connect(a.docker_host.as_deref())?;
    let file = absolute(file)?;
    let host = engine.host().to_string();
    let id = ferry_oci::migrate::docker_archive::restore(engine, &file, a.name.as_deref())
        .with_context(|| {
            format!(
                "restoring {} on dockerd at {host} (nothing was left there)",
                file.display()
            )
        })?;
    println!("{id}");
    Ok(ExitCode::SUCCESS)
}

pub fn restore(cli: &Cli, a: &RestoreArgs) -> anyhow::Result<ExitCode> {
    if let (true, Some(file)) = (a.docker, &a.import) {
        return restore_docker(a, file);
    }
    let id = a.id.as_deref().unwrap_or_default();
    // A restored container that leaves its network empty is not something
    // Ferry recreates yet: refuse rather than restore it cut off.
    let f = &a.criu;
    anyhow::ensure!(
        empty_ns(&f.empty_ns)?.is_none(),
        "--empty-ns on restore is not supported: the network namespace is handed in from config.json"
    );
    let (bundle, image_path) = match &a.import {
        Some(file) => {
            let dest = absolute(&a.bundle)?;
            let imp = ferry_oci::export::import(&absolute(file)?, &dest)
                .with_context(|| format!("importing {}", file.display()))?;
            anyhow::ensure!(
                f.image_path.is_none(),
                "--image-path and --import: the images come from the archive (they are extracted into {})",
                imp.images.display()
            );
            (imp.bundle, imp.images)
        }
        None => (
            a.bundle.clone(),
            absolute(f.image_path.as_deref().unwrap_or(Path::new("checkpoint")))?,
        ),
    };
    let opts = RestoreOptions {
        image_path,
        work_path: f.work_path.as_deref().map(absolute).transpose()?,
        tcp_established: f.tcp_established,
        tcp_close: false,
        ext_unix_sk: f.ext_unix_sk,
        shell_job: f.shell_job,
        file_locks: f.file_locks,
        auto_dedup: f.auto_dedup,
        lazy_pages: f.lazy_pages,
        manage_cgroups_mode: cgroup_mode(&f.manage_cgroups_mode)?,
        lsm_profile: a.lsm_profile.clone(),
        lsm_mount_context: a.lsm_mount_context.clone(),
        // The restored init is ours: a foreground restore waits for it.
        criu_parent: false,
        leave_stopped: false,
    };
    let rt = RestoreRuntimeOptions {
        at_create: false,
        lock_joined_netns: false,
        pid_file: a.pid_file.clone(),
        console_socket: a.console_socket.clone(),
        systemd_cgroup: cli.systemd_cgroup,
        stdio: None,
    };
    let (c, restored) = restore_container(&cli.root, id, &bundle, &criu(cli), &opts, &rt)
        .with_context(|| format!("restoring container {}", id))?;
    let log_dir = opts
        .work_path
        .clone()
        .unwrap_or_else(|| opts.image_path.clone());
    let stats = criu_rpc::stats::read_restore_stats(&log_dir)?
        .or(criu_rpc::stats::read_restore_stats(&opts.image_path)?);
    let report = serde_json::json!({
        "id": id,
        "restore_ms": restored.duration.as_secs_f64() * 1000.0,
        "pid": restored.pid.as_raw(),
        "criu": stats,
    });
    let _ = std::fs::write(
        log_dir.join("stats-restore.json"),
        serde_json::to_vec_pretty(&report)?,
    );
    if f.print_stats {
        let c = &report["criu"];
        println!(
            "restore of {}: {:.1} ms",
            id,
            report["restore_ms"].as_f64().unwrap_or(0.0)
        );
        println!(
            "  restore time    {:>10.1} ms",
            c["restore_time"].as_f64().unwrap_or(0.0) / 1000.0
        );
        println!(
            "  forking time    {:>10.1} ms",
            c["forking_time"].as_f64().unwrap_or(0.0) / 1000.0
        );
        println!("  pages restored  {:>10}", c["pages_restored"]);
    }
    if a.detach {
        return Ok(ExitCode::SUCCESS);
    }
    // The restored init is our child (CRIU's rst_sibling): wait for it,
    // then clean up, as a foreground runc restore does.
    drop(c);
    let code = wait_exit(restored.pid);
    if let Ok(c) = Container::load(&cli.root, id) {
        let _ = c.delete(true);
    }
    Ok(ExitCode::from(code as u8))
}
