//! runc's lifecycle commands: create, start, run, state, list, kill,
//! delete, pause, resume. Output formats and exit codes follow runc, which
//! dockerd and containerd parse.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use ferry_oci::migrate::record::{self, MoveRecord, Recovery};
use ferry_oci::runtime::console::{ConsoleSocket, ForegroundTty};
use ferry_oci::runtime::container::{self, wait_exit};
use ferry_oci::runtime::{signal, Container, CreateOptions, Status};

use crate::Cli;

#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    pub id: String,
    /// Path to the bundle (default: the current directory).
    #[arg(short, long, default_value = ".")]
    pub bundle: PathBuf,
    #[arg(long = "pid-file")]
    pub pid_file: Option<PathBuf>,
    #[arg(long = "console-socket")]
    pub console_socket: Option<PathBuf>,
    /// Accepted for runc compatibility; Ferry always uses pivot_root.
    #[arg(long = "no-pivot")]
    pub no_pivot: bool,
    #[arg(long = "no-new-keyring")]
    pub no_new_keyring: bool,
    #[arg(long = "preserve-fds", default_value_t = 0)]
    pub preserve_fds: u32,
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub create: CreateArgs,
    /// Detach: exit once the container started.
    #[arg(short, long)]
    pub detach: bool,
    #[arg(long = "no-subreaper")]
    pub no_subreaper: bool,
    /// Keep the container's state after it exits.
    #[arg(long)]
    pub keep: bool,
}

#[derive(Debug, clap::Args)]
pub struct IdArgs {
    pub id: String,
}

#[derive(Debug, clap::Args)]
pub struct ResumeArgs {
    pub id: String,
    /// Resume a container a dead `ferry migrate` left frozen even though it
    /// had told the destination to run its copy (which may run there).
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, clap::Args)]
pub struct KillArgs {
    pub id: String,
    #[arg(default_value = "SIGTERM")]
    pub signal: String,
    /// Signal every process of the container.
    #[arg(short, long)]
    pub all: bool,
}

#[derive(Debug, clap::Args)]
pub struct DeleteArgs {
    pub id: String,
    /// Kill the container first if it runs.
    #[arg(short, long)]
    pub force: bool,
}

#[derive(Debug, clap::Args)]
pub struct ListArgs {
    #[arg(short, long, default_value = "table")]
    pub format: String,
    /// Only the ids.
    #[arg(short, long)]
    pub quiet: bool,
}

fn create_opts(cli: &Cli, a: &CreateArgs, subreaper: bool) -> CreateOptions {
    CreateOptions {
        pid_file: a.pid_file.clone(),
        console_socket: a.console_socket.clone(),
        subreaper,
        systemd_cgroup: cli.systemd_cgroup,
        stdio: None,
        preserve_fds: a.preserve_fds,
    }
}

pub fn create(cli: &Cli, a: &CreateArgs) -> anyhow::Result<ExitCode> {
    if let Some((pending, req)) = ferry_oci::runtime::pending::Pending::claim(&cli.root, &a.id)? {
        return restore_at_create(cli, a, pending, req);
    }
    Container::create(&cli.root, &a.id, &a.bundle, &create_opts(cli, a, false))
        .with_context(|| format!("creating container {}", a.id))?;
    Ok(ExitCode::SUCCESS)
}

pub fn start(cli: &Cli, a: &IdArgs) -> anyhow::Result<ExitCode> {
    let mut c = Container::load(&cli.root, &a.id)?;
    c.start()
        .with_context(|| format!("starting container {}", a.id))?;
    Ok(ExitCode::SUCCESS)
}

/// A console socket of our own when the process wants a terminal, runs in
/// the foreground and the caller gave none: runc then proxies the pty to
/// its own stdio (tty.go's setupProcessPipes/recvtty path). Shared by
/// `run` and `exec`.
pub(crate) fn own_console(
    terminal: bool,
    detach: bool,
    given: &Option<PathBuf>,
) -> anyhow::Result<Option<ConsoleSocket>> {
    if !terminal || detach || given.is_some() {
        return Ok(None);
    }
    Ok(Some(ConsoleSocket::new()?))
}

/// Waits for a foreground process, its pty (if [`own_console`] made one)
/// proxied to our stdio until the process is gone and its output drained.
pub(crate) fn wait_foreground(pid: nix::unistd::Pid, tty: Option<ForegroundTty>) -> ExitCode {
    let code = wait_exit(pid);
    if let Some(t) = tty {
        t.finish(std::time::Duration::from_secs(1));
    }
    ExitCode::from(code as u8)
}

pub fn run(cli: &Cli, a: &RunArgs) -> anyhow::Result<ExitCode> {
    let subreaper = !a.detach && !a.no_subreaper;
    let console = own_console(
        ferry_oci::runtime::spec::bundle_has_terminal(&a.create.bundle),
        a.detach,
        &a.create.console_socket,
    )?;
    let mut opts = create_opts(cli, &a.create, subreaper || !a.detach);
    if let Some(s) = &console {
        opts.console_socket = Some(s.path().to_path_buf());
    }
    let mut c = Container::create(&cli.root, &a.create.id, &a.create.bundle, &opts)
        .with_context(|| format!("creating container {}", a.create.id))?;
    let tty = match console.as_ref().map(ConsoleSocket::receive).transpose() {
        Ok(m) => m.map(ForegroundTty::attach),
        Err(e) => {
            let _ = c.delete(true);
            return Err(e).context(format!("creating container {}", a.create.id));
        }
    };
    if let Err(e) = c.start() {
        let _ = c.delete(true);
        return Err(e).context(format!("starting container {}", a.create.id));
    }
    if a.detach {
        return Ok(ExitCode::SUCCESS);
    }
    let pid = nix::unistd::Pid::from_raw(c.state.pid);
    drop(c);
    let code = wait_foreground(pid, tty);
    if !a.keep {
        if let Ok(c) = Container::load(&cli.root, &a.create.id) {
            let _ = c.delete(true);
        }
    }
    Ok(code)
}

/// runc's containerState (state.go, list.go): its field order is what
/// `runc state` and `runc list --format json` print, and what scripts and
/// runc's list.bats match.
#[derive(serde::Serialize)]
struct ContainerState<'a> {
    #[serde(rename = "ociVersion")]
    oci_version: String,
    id: &'a str,
    pid: i32,
    status: String,
    bundle: &'a std::path::Path,
    rootfs: &'a std::path::Path,
    created: &'a str,
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    annotations: &'a std::collections::BTreeMap<String, String>,
    owner: &'a str,
}

impl<'a> ContainerState<'a> {
    fn of(s: &'a ferry_oci::runtime::State, status: Status, owner: &'a str) -> Self {
        // The version of the container's config, as runc reports it (the
        // config the state points at; a bundle removed since says ours).
        let oci_version = ferry_oci::runtime::spec::read_config(&s.config)
            .map(|spec| spec.version().clone())
            .unwrap_or_else(|_| ferry_oci::runtime::spec::SPEC_VERSION.to_string());
        ContainerState {
            oci_version,
            id: &s.id,
            pid: if status == Status::Stopped { 0 } else { s.pid },
            status: status.to_string(),
            bundle: &s.bundle,
            rootfs: &s.rootfs,
            created: &s.created,
            annotations: &s.annotations,
            owner,
        }
    }
}

pub fn state(cli: &Cli, a: &IdArgs) -> anyhow::Result<ExitCode> {
    let c = Container::load(&cli.root, &a.id)?;
    let st = ContainerState::of(&c.state, c.status(), "");
    println!("{}", serde_json::to_string_pretty(&st)?);
    Ok(ExitCode::SUCCESS)
}

pub fn list(cli: &Cli, a: &ListArgs) -> anyhow::Result<ExitCode> {
    let all = container::list(&cli.root)?;
    if a.quiet {
        for (s, _) in &all {
            println!("{}", s.id);
        }
        return Ok(ExitCode::SUCCESS);
    }
    match a.format.as_str() {
        "json" => {
            let v: Vec<ContainerState> = all
                .iter()
                .map(|(s, st)| ContainerState::of(s, *st, "root"))
                .collect();
            println!("{}", serde_json::to_string(&v)?);
        }
        "table" => {
            // runc's tabwriter: columns as wide as their widest cell.
            let mut rows =
                vec![["ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER"].map(String::from)];
            for (s, st) in &all {
                let pid = if *st == Status::Stopped { 0 } else { s.pid };
                rows.push([
                    s.id.clone(),
                    pid.to_string(),
                    st.to_string(),
                    s.bundle.display().to_string(),
                    s.created.clone(),
                    "root".into(),
                ]);
            }
            let widths: Vec<usize> = (0..6)
                .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
                .collect();
            for r in &rows {
                let line: Vec<String> = r
                    .iter()
                    .zip(&widths)
                    .map(|(c, w)| format!("{c:<w$}"))
                    .collect();
                println!("{}", line.join("   ").trim_end());
            }
        }
        f => anyhow::bail!("invalid format `{f}`: use table or json"),
    }
    Ok(ExitCode::SUCCESS)
}

pub fn kill(cli: &Cli, a: &KillArgs) -> anyhow::Result<ExitCode> {
    let c = Container::load(&cli.root, &a.id)?;
    let sig = signal::parse(&a.signal)?;
    c.kill(sig, a.all)?;
    Ok(ExitCode::SUCCESS)
}

pub fn delete(cli: &Cli, a: &DeleteArgs) -> anyhow::Result<ExitCode> {
    match Container::load(&cli.root, &a.id) {
        Ok(c) => c.delete(a.force)?,
        // runc: deleting what is not there with --force is fine.
        Err(ferry_oci::Error::NoSuchContainer { .. }) if a.force => {}
        Err(e) => return Err(e.into()),
    }
    // What a dead `ferry migrate` of it left (its images) goes with it:
    // the way out `ferry resume` names for a move that had committed.
    if let Some(r) = MoveRecord::load(&cli.root, &a.id)? {
        if !r.is_alive() {
            r.remove()?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn pause(cli: &Cli, a: &IdArgs) -> anyhow::Result<ExitCode> {
    Container::load(&cli.root, &a.id)?.pause()?;
    Ok(ExitCode::SUCCESS)
}

/// `ferry resume`: runc's unpause (dockerd's `docker unpause` runs it),
/// unless a `ferry migrate` of the container died and left a record of
/// its move: then what that move did is undone, when that is safe
/// (ferry_oci::migrate::record::recover), and said on stderr.
pub fn resume(cli: &Cli, a: &ResumeArgs) -> anyhow::Result<ExitCode> {
    match record::recover(&cli.root, &a.id, a.force)? {
        None => Container::load(&cli.root, &a.id)?.resume()?,
        Some(Recovery::Resumed(r)) => {
            let forced = match r.phase {
                record::Phase::Committed => ", after it had told the destination to run it",
                _ => "",
            };
            eprintln!(
                "ferry resume: {} was left frozen by a ferry migrate to {} that died (pid {}){forced}: network lock off, TCP repair off, thawed and continued",
                a.id, r.to, r.pid
            );
        }
        Some(Recovery::Forgotten(r)) => {
            eprintln!(
                "ferry resume: a ferry migrate of {} to {} died (pid {}) before it froze anything: its record is removed",
                a.id, r.to, r.pid
            );
            // Paused by someone else meanwhile: unpaused as asked.
            let c = Container::load(&cli.root, &a.id)?;
            if c.status() == Status::Paused {
                c.resume()?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `create` of a container whose restore is pending (see
/// ferry_oci::runtime::pending: a migration agent or `ferry restore
/// --docker` created it through dockerd and asked for it): the container is
/// restored, detached, with this process's stdio (dockerd's pipes) standing
/// in for the checkpointed ones.
fn restore_at_create(
    cli: &Cli,
    a: &CreateArgs,
    pending: ferry_oci::runtime::pending::Pending,
    req: ferry_oci::runtime::pending::Request,
) -> anyhow::Result<ExitCode> {
    use ferry_oci::runtime::cr::RestoreRuntimeOptions;
    let rt = RestoreRuntimeOptions {
        at_create: true,
        lock_joined_netns: true,
        pid_file: a.pid_file.clone(),
        console_socket: a.console_socket.clone(),
        systemd_cgroup: cli.systemd_cgroup,
        stdio: None,
    };
    ferry_oci::runtime::pending::restore_claimed(
        &pending,
        &req,
        &cli.root,
        &a.id,
        &a.bundle,
        &super::checkpoint::criu(cli),
        &rt,
    )
    .with_context(|| {
        format!(
            "restoring container {} from {} (a pending restore)",
            a.id,
            req.images.display()
        )
    })?;
    Ok(ExitCode::SUCCESS)
}
