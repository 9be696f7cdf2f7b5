//! `ferry checkpoint`: runc's flags, through Ferry's own CRIU client.

use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use criu_rpc::{CgroupMode, Criu, PageServerAddr};
use ferry_oci::checkpoint::CheckpointOptions;
use ferry_oci::export::{self, Compression, ExportSource};
use ferry_oci::runtime::Container;
use nix::sched::CloneFlags;

use crate::Cli;

/// The flags checkpoint and restore share, as runc spells them.
#[derive(Debug, clap::Args)]
pub struct CriuFlags {
    /// The images: written (created 0700) or read [default: checkpoint;
    /// with --export/--import, a directory of Ferry's own].
    #[arg(long = "image-path")]
    pub image_path: Option<PathBuf>,
    /// Where CRIU writes its log and scratch files (default: the image path).
    #[arg(long = "work-path")]
    pub work_path: Option<PathBuf>,
    /// Allow open TCP connections (restored in repair mode, the network
    /// locked meanwhile).
    #[arg(long = "tcp-established")]
    pub tcp_established: bool,
    /// Allow external unix sockets (connected to a peer outside the
    /// container).
    #[arg(long = "ext-unix-sk")]
    pub ext_unix_sk: bool,
    /// Allow shell jobs (a session or terminal shared with the caller).
    #[arg(long = "shell-job")]
    pub shell_job: bool,
    /// Handle file locks.
    #[arg(long = "file-locks")]
    pub file_locks: bool,
    /// Post-copy: memory is served (or fetched) later, through a page
    /// server and userfaultfd.
    #[arg(long = "lazy-pages")]
    pub lazy_pages: bool,
    /// soft, full, strict or ignore.
    #[arg(long = "manage-cgroups-mode")]
    pub manage_cgroups_mode: Option<String>,
    /// Namespaces left empty in the image (only `network`).
    #[arg(long = "empty-ns")]
    pub empty_ns: Vec<String>,
    /// Punch holes in parent images for pages written again.
    #[arg(long = "auto-dedup")]
    pub auto_dedup: bool,
    /// Print CRIU's statistics (also saved as JSON next to the images).
    #[arg(long = "print-stats")]
    pub print_stats: bool,
}

#[derive(Debug, clap::Args)]
pub struct CheckpointArgs {
    pub id: String,
    #[command(flatten)]
    pub criu: CriuFlags,
    /// A previous pre-dump, relative to the image path.
    #[arg(long = "parent-path")]
    pub parent_path: Option<PathBuf>,
    /// Leave the container running after the checkpoint.
    #[arg(long = "leave-running")]
    pub leave_running: bool,
    /// Leave the tasks stopped after the dump (for a move: the source
    /// stays until the destination runs).
    #[arg(long = "leave-stopped")]
    pub leave_stopped: bool,
    /// Skip TCP connections still being set up (SYN_SENT, SYN_RECV).
    #[arg(long = "tcp-skip-in-flight")]
    pub tcp_skip_in_flight: bool,
    /// Allow open files that were unlinked (kept as hard links).
    #[arg(long = "link-remap")]
    pub link_remap: bool,
    /// An fd CRIU writes to when lazy pages are ready to be served.
    #[arg(long = "status-fd")]
    pub status_fd: Option<i32>,
    /// IP:PORT of a CRIU page server to send memory to.
    #[arg(long = "page-server")]
    pub page_server: Option<String>,
    /// Dump memory only, leaving the container running (needs memory
    /// tracking, which this kernel may lack: see `ferry check`).
    #[arg(long = "pre-dump")]
    pub pre_dump: bool,
    /// Also write the checkpoint as one archive: the images, config.json and
    /// the rootfs (`ferry restore --import` reads it, so does `ferry
    /// inspect`). Without --image-path, the images live only in the archive.
    #[arg(long)]
    pub export: Option<PathBuf>,
    /// Compress the archive with zstd (the default for a FILE ending in .zst).
    #[arg(long, requires = "export")]
    pub zstd: bool,
    /// The container is a dockerd's, named as docker names it (name or
    /// id); with --export FILE (its writable layer as a diff, restored on
    /// any dockerd by `ferry restore --docker --import FILE`). No
    /// --experimental needed on either dockerd.
    #[arg(long, requires = "export")]
    pub docker: bool,
    /// On failure, print one JSON object on stdout (the error's kind,
    /// message and CRIU's errno, message and log lines).
    #[arg(long)]
    pub json: bool,
    /// The dockerd to use (unix:///path/docker.sock); default: $DOCKER_HOST,
    /// else unix:///var/run/docker.sock, as docker finds it.
    #[arg(long = "docker-host", requires = "docker")]
    pub docker_host: Option<String>,
}

/// `ferry checkpoint --docker NAME --export FILE`.
fn checkpoint_docker(cli: &Cli, a: &CheckpointArgs, file: &Path) -> anyhow::Result<ExitCode> {
    let f = &a.criu;
    anyhow::ensure!(
        f.image_path.is_none() && !a.pre_dump && !a.leave_stopped && !f.lazy_pages && a.page_server.is_none(),
        "--docker checkpoints into the --export archive only: not with --image-path, --pre-dump, --leave-stopped, --lazy-pages or --page-server"
    );
    let engine = ferry_oci::docker::Engine::connect(a.docker_host.as_deref())?;
    let file = absolute(file)?;
    let compression = if a.zstd {
        Compression::Zstd
    } else {
        Compression::for_path(&file)
    };
    let done = ferry_oci::migrate::docker_archive::checkpoint(
        &engine,
        &a.id,
        &file,
        compression,
        a.leave_running,
        &criu(cli),
    )
    .with_context(|| format!("checkpointing docker container {}", a.id))?;
    for n in &done.notes {
        eprintln!("note: {n}");
    }
    if f.print_stats {
        println!("{}", serde_json::to_string_pretty(&done)?);
    }
    Ok(ExitCode::SUCCESS)
}

pub fn cgroup_mode(s: &Option<String>) -> anyhow::Result<Option<CgroupMode>> {
    Ok(match s.as_deref() {
        None => None,
        Some("soft") => Some(CgroupMode::Soft),
        Some("full") => Some(CgroupMode::Full),
        Some("strict") => Some(CgroupMode::Strict),
        Some("ignore") => Some(CgroupMode::Ignore),
        Some(m) => {
            anyhow::bail!("invalid --manage-cgroups-mode `{m}`: use soft, full, strict or ignore")
        }
    })
}

pub fn empty_ns(v: &[String]) -> anyhow::Result<Option<CloneFlags>> {
    let mut f = CloneFlags::empty();
    for ns in v {
        match ns.as_str() {
            "network" | "net" => f |= CloneFlags::CLONE_NEWNET,
            other => {
                anyhow::bail!("--empty-ns {other}: CRIU can only leave the network namespace empty")
            }
        }
    }
    Ok((!f.is_empty()).then_some(f))
}

pub fn absolute(p: &Path) -> anyhow::Result<PathBuf> {
    Ok(if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()?.join(p)
    })
}

/// runc's prepareImagePaths: --parent-path is relative to the image path
/// (CRIU opens it from the images dir) and must name a directory there;
/// refused before anything is frozen, with runc's words.
fn check_parent_path(image_path: &Path, parent: Option<&Path>) -> anyhow::Result<()> {
    let Some(parent) = parent else {
        return Ok(());
    };
    anyhow::ensure!(parent.is_relative(), "--parent-path must be relative");
    let real = image_path.join(parent);
    let why = match std::fs::metadata(&real) {
        Ok(m) if m.is_dir() => return Ok(()),
        Ok(_) => std::io::Error::from_raw_os_error(libc::ENOTDIR),
        Err(e) => e,
    };
    Err(anyhow::Error::new(why).context(format!("invalid --parent-path: stat {}", real.display())))
}

pub fn criu(cli: &Cli) -> Criu {
    cli.criu.as_ref().map(Criu::with_binary).unwrap_or_default()
}

pub fn checkpoint(cli: &Cli, a: &CheckpointArgs) -> anyhow::Result<ExitCode> {
    if let (true, Some(file)) = (a.docker, &a.export) {
        return checkpoint_docker(cli, a, file);
    }
    let criu = criu(cli);
    let page_server = a
        .page_server
        .as_ref()
        .map(|s| {
            s.parse()
                .map(PageServerAddr::Tcp)
                .with_context(|| format!("--page-server {s}: expected IP:PORT"))
        })
        .transpose()?;
    let status_fd = match a.status_fd {
        Some(fd) => {
            // runc checks that the fd is open and writable.
            let fl = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFL)
                .with_context(|| format!("--status-fd {fd} is not an open fd"))?;
            anyhow::ensure!(
                fl & libc::O_ACCMODE != libc::O_RDONLY,
                "--status-fd {fd} is not writable"
            );
            // SAFETY: the caller handed us this fd to write to.
            Some(unsafe { OwnedFd::from_raw_fd(fd) })
        }
        None => None,
    };
    let f = &a.criu;
    anyhow::ensure!(
        a.export.is_none() || !(a.pre_dump || a.leave_stopped || f.lazy_pages || a.page_server.is_some()),
        "--export needs a complete dump in the image directory: not with --pre-dump, --lazy-pages, --page-server or --leave-stopped"
    );
    // With --export and no --image-path, the images go to a directory
    // beside the archive that is removed once the archive is written.
    let scratch = match (&f.image_path, &a.export) {
        (None, Some(file)) => {
            let file = absolute(file)?;
            let parent = file.parent().unwrap_or(Path::new("/"));
            Some(
                tempfile::Builder::new()
                    .prefix(".ferry-export-")
                    .tempdir_in(parent)
                    .with_context(|| {
                        format!("creating a scratch directory in {}", parent.display())
                    })?,
            )
        }
        _ => None,
    };
    let image_path = match (&scratch, &f.image_path) {
        (Some(t), _) => t.path().join("images"),
        (None, Some(p)) => absolute(p)?,
        (None, None) => absolute(Path::new("checkpoint"))?,
    };
    check_parent_path(&image_path, a.parent_path.as_deref())?;
    let opts = CheckpointOptions {
        image_path: image_path.clone(),
        work_path: f.work_path.as_deref().map(absolute).transpose()?,
        leave_running: a.leave_running,
        leave_stopped: a.leave_stopped,
        tcp_established: f.tcp_established,
        // runc's checkpoint leaves a joined netns unlocked; --docker's
        // export (the container dies here, its peers must not see RSTs)
        // sets it below.
        lock_joined_netns: false,
        tcp_skip_in_flight: a.tcp_skip_in_flight,
        ext_unix_sk: f.ext_unix_sk,
        shell_job: f.shell_job,
        file_locks: f.file_locks,
        link_remap: a.link_remap,
        auto_dedup: f.auto_dedup,
        lazy_pages: f.lazy_pages,
        page_server,
        status_fd,
        manage_cgroups_mode: cgroup_mode(&f.manage_cgroups_mode)?,
        empty_ns: empty_ns(&f.empty_ns)?,
        pre_dump: a.pre_dump,
        parent_path: a.parent_path.clone(),
    };
    let c = Container::load(&cli.root, &a.id)?;
    let (config, rootfs) = (c.state.config.clone(), c.state.rootfs.clone());
    // The report and the archive are made before the container is deleted:
    // a migrated-in container's rootfs is an overlay Ferry mounted, which
    // goes with it.
    let (_, after) = c
        .checkpoint_then(
            &criu,
            opts,
            &mut |n| tracing::debug!(notify = n.script(), "criu"),
            |done| after_dump(a, done, &image_path, &config, &rootfs),
        )
        .with_context(|| format!("checkpointing container {}", a.id))?;
    if after.is_err() {
        // Keep the images the export could not pack.
        if let Some(t) = scratch {
            let _ = t.keep();
        }
    }
    after.map(|()| ExitCode::SUCCESS)
}

/// What follows a successful dump in `image_path`: stats-dump.json (and
/// the stats printed, if asked), then the archive, if asked.
fn after_dump(
    a: &CheckpointArgs,
    done: &ferry_oci::checkpoint::Checkpointed,
    image_path: &Path,
    config: &Path,
    rootfs: &Path,
) -> anyhow::Result<()> {
    let stats = criu_rpc::stats::read_dump_stats(image_path)?;
    let report = serde_json::json!({
        "id": a.id,
        "image_path": image_path,
        "checkpoint_ms": done.duration.as_secs_f64() * 1000.0,
        "frozen_ms": done.frozen.map(|f| f.as_secs_f64() * 1000.0),
        "criu": stats,
    });
    std::fs::write(
        image_path.join("stats-dump.json"),
        serde_json::to_vec_pretty(&report)?,
    )
    .with_context(|| format!("writing stats-dump.json in {}", image_path.display()))?;
    if a.criu.print_stats {
        print_dump_stats(&report);
    }
    let Some(file) = &a.export else {
        return Ok(());
    };
    let file = absolute(file)?;
    let compression = if a.zstd {
        Compression::Zstd
    } else {
        Compression::for_path(&file)
    };
    let src = ExportSource {
        id: &a.id,
        images: image_path,
        config,
        rootfs,
    };
    // The dump is done (the container's tasks gone, unless
    // --leave-running): a failed export keeps the images.
    let bytes = export::export(&src, &file, compression).with_context(|| {
        format!(
            "exporting the checkpoint of {} to {} (the images are in {})",
            a.id,
            file.display(),
            image_path.display()
        )
    })?;
    tracing::info!(file = %file.display(), bytes, "checkpoint exported");
    Ok(())
}

fn print_dump_stats(r: &serde_json::Value) {
    let c = &r["criu"];
    let ms = |v: &serde_json::Value| v.as_f64().map(|us| us / 1000.0).unwrap_or(0.0);
    println!(
        "checkpoint of {}: {:.1} ms",
        r["id"].as_str().unwrap_or(""),
        r["checkpoint_ms"].as_f64().unwrap_or(0.0)
    );
    println!("  freezing time   {:>10.1} ms", ms(&c["freezing_time"]));
    println!("  frozen time     {:>10.1} ms", ms(&c["frozen_time"]));
    println!("  memdump time    {:>10.1} ms", ms(&c["memdump_time"]));
    println!("  memwrite time   {:>10.1} ms", ms(&c["memwrite_time"]));
    println!("  pages scanned   {:>10}", c["pages_scanned"]);
    println!("  pages written   {:>10}", c["pages_written"]);
}
