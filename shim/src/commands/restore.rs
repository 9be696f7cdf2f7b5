//! `ferry restore`: runc's flags, through Ferry's own CRIU client.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use ferry_oci::restore::RestoreOptions;
use ferry_oci::runtime::container::wait_exit;
use ferry_oci::runtime::cr::{restore_container, RestoreRuntimeOptions};
use ferry_oci::runtime::Container;

use super::checkpoint::{cgroup_mode, criu, empty_ns};
use crate::Cli;

#[derive(Debug, clap::Args)]
pub struct RestoreArgs {
    pub id: String,
    #[arg(long = "image-path", default_value = "checkpoint")]
    pub image_path: PathBuf,
    #[arg(long = "work-path")]
    pub work_path: Option<PathBuf>,
    #[arg(short, long, default_value = ".")]
    pub bundle: PathBuf,
    #[arg(short, long)]
    pub detach: bool,
    #[arg(long = "pid-file")]
    pub pid_file: Option<PathBuf>,
    #[arg(long = "console-socket")]
    pub console_socket: Option<PathBuf>,
    /// Accepted for runc compatibility.
    #[arg(long = "no-pivot")]
    pub no_pivot: bool,
    #[arg(long = "no-subreaper")]
    pub no_subreaper: bool,
    #[arg(long = "tcp-established")]
    pub tcp_established: bool,
    #[arg(long = "ext-unix-sk")]
    pub ext_unix_sk: bool,
    #[arg(long = "shell-job")]
    pub shell_job: bool,
    #[arg(long = "file-locks")]
    pub file_locks: bool,
    #[arg(long = "manage-cgroups-mode")]
    pub manage_cgroups_mode: Option<String>,
    #[arg(long = "empty-ns")]
    pub empty_ns: Vec<String>,
    #[arg(long = "auto-dedup")]
    pub auto_dedup: bool,
    #[arg(long = "lazy-pages")]
    pub lazy_pages: bool,
    #[arg(long = "lsm-profile")]
    pub lsm_profile: Option<String>,
    #[arg(long = "lsm-mount-context")]
    pub lsm_mount_context: Option<String>,
    #[arg(long = "print-stats")]
    pub print_stats: bool,
}

pub fn restore(cli: &Cli, a: &RestoreArgs) -> anyhow::Result<ExitCode> {
    // A restored container that leaves its network empty is not something
    // Ferry recreates yet: refuse rather than restore it cut off.
    anyhow::ensure!(
        empty_ns(&a.empty_ns)?.is_none(),
        "--empty-ns on restore is not supported: the network namespace is handed in from config.json"
    );
    let cwd = std::env::current_dir()?;
    let abs = |p: &PathBuf| {
        if p.is_absolute() {
            p.clone()
        } else {
            cwd.join(p)
        }
    };
    let opts = RestoreOptions {
        image_path: abs(&a.image_path),
        work_path: a.work_path.as_ref().map(abs),
        tcp_established: a.tcp_established,
        ext_unix_sk: a.ext_unix_sk,
        shell_job: a.shell_job,
        file_locks: a.file_locks,
        auto_dedup: a.auto_dedup,
        lazy_pages: a.lazy_pages,
        manage_cgroups_mode: cgroup_mode(&a.manage_cgroups_mode)?,
        lsm_profile: a.lsm_profile.clone(),
        lsm_mount_context: a.lsm_mount_context.clone(),
    };
    let rt = RestoreRuntimeOptions {
        at_create: false,
        pid_file: a.pid_file.clone(),
        console_socket: a.console_socket.clone(),
        systemd_cgroup: cli.systemd_cgroup,
    };
    let (c, restored) = restore_container(&cli.root, &a.id, &a.bundle, &criu(cli), &opts, &rt)
        .with_context(|| format!("restoring container {}", a.id))?;
    let log_dir = opts
        .work_path
        .clone()
        .unwrap_or_else(|| opts.image_path.clone());
    let stats = criu_rpc::stats::read_restore_stats(&log_dir)?
        .or(criu_rpc::stats::read_restore_stats(&opts.image_path)?);
    let report = serde_json::json!({
        "id": a.id,
        "restore_ms": restored.duration.as_secs_f64() * 1000.0,
        "pid": restored.pid.as_raw(),
        "criu": stats,
    });
    let _ = std::fs::write(
        log_dir.join("stats-restore.json"),
        serde_json::to_vec_pretty(&report)?,
    );
    if a.print_stats {
        let c = &report["criu"];
        println!(
            "restore of {}: {:.1} ms",
            a.id,
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
    if let Ok(c) = Container::load(&cli.root, &a.id) {
        let _ = c.delete(true);
    }
    Ok(ExitCode::from(code as u8))
}
