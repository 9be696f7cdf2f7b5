//! `ferry exec`: a new process in a running container.

use std::path::PathBuf;
use std::process::ExitCode;

use super::lifecycle::{own_console, wait_foreground};
use anyhow::Context;
use ferry_oci::runtime::console::{ConsoleSocket, ForegroundTty};
use ferry_oci::runtime::{Container, ExecOptions};
use oci_spec::runtime::Process;

use crate::Cli;

#[derive(Debug, clap::Args)]
pub struct ExecArgs {
    pub id: String,
    /// The command and its arguments (unless --process).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
    /// A JSON file with the process to run (runtime-spec `process`).
    #[arg(short, long)]
    pub process: Option<PathBuf>,
    #[arg(short, long)]
    pub detach: bool,
    #[arg(long = "pid-file")]
    pub pid_file: Option<PathBuf>,
    #[arg(short, long)]
    pub tty: bool,
    #[arg(long = "console-socket")]
    pub console_socket: Option<PathBuf>,
    /// Extra environment variables (KEY=VALUE).
    #[arg(short, long)]
    pub env: Vec<String>,
    #[arg(long)]
    pub cwd: Option<PathBuf>,
    /// uid[:gid]
    #[arg(short, long)]
    pub user: Option<String>,
    /// Additional gids for the process (repeatable).
    #[arg(short = 'g', long = "additional-gids")]
    pub additional_gids: Vec<u32>,
    /// Pass this many file descriptors beyond stdio (3, 4, ...) to the
    /// process.
    #[arg(long = "preserve-fds", default_value_t = 0)]
    pub preserve_fds: u32,
    /// Exec even if the container is paused (the process runs once it is
    /// resumed).
    #[arg(long = "ignore-paused")]
    pub ignore_paused: bool,
    /// Run the process in a sub-cgroup of the container:
    /// `[controller[,controller]:]path` (repeatable), as runc's.
    #[arg(long = "cgroup")]
    pub cgroup: Vec<String>,
}

pub fn exec(cli: &Cli, a: &ExecArgs) -> anyhow::Result<ExitCode> {
    let c = Container::load(&cli.root, &a.id)?;
    let mut p: Process = match &a.process {
        Some(f) => {
            let text = std::fs::read(f).with_context(|| format!("reading {}", f.display()))?;
            let mut v: serde_json::Value = serde_json::from_slice(&text)
                .with_context(|| format!("parsing {}", f.display()))?;
            // runc decodes into Go's zero values: a process without `user`
            // runs as 0:0 (oci-spec requires the field).
            if let Some(o) = v.as_object_mut() {
                o.entry("user")
                    .or_insert_with(|| serde_json::json!({"uid": 0, "gid": 0}));
            }
            serde_json::from_value(v).with_context(|| format!("parsing {}", f.display()))?
        }
        None => {
            anyhow::ensure!(
                !a.command.is_empty(),
                "ferry exec needs a command or --process"
            );
            // The container's own process is the template (env, user,
            // capabilities), as runc does.
            let mut p = c.spec()?.process().clone().unwrap_or_default();
            p.set_args(Some(a.command.clone()));
            p.set_terminal(Some(a.tty));
            p
        }
    };
    if !a.env.is_empty() {
        let mut env = p.env().clone().unwrap_or_default();
        env.extend(a.env.iter().cloned());
        p.set_env(Some(env));
    }
    if let Some(cwd) = &a.cwd {
        p.set_cwd(cwd.clone());
    }
    if let Some(u) = &a.user {
        let (uid, gid) = u.split_once(':').unwrap_or((u, "0"));
        let mut user = p.user().clone();
        user.set_uid(uid.parse().context("--user uid")?);
        user.set_gid(gid.parse().context("--user gid")?);
        p.set_user(user);
    }
    if !a.additional_gids.is_empty() {
        let mut user = p.user().clone();
        user.set_additional_gids(Some(a.additional_gids.clone()));
        p.set_user(user);
    }
    // A foreground exec with a terminal and no console socket gets a pty
    // proxied to our stdio, as with runc.
    let console = own_console(p.terminal().unwrap_or(false), a.detach, &a.console_socket)?;
    let pid = c.exec(
        &p,
        &ExecOptions {
            detach: a.detach,
            pid_file: a.pid_file.clone(),
            console_socket: a
                .console_socket
                .clone()
                .or_else(|| console.as_ref().map(|s| s.path().to_path_buf())),
            stdio: None,
            preserve_fds: a.preserve_fds,
            ignore_paused: a.ignore_paused,
            sub_cgroups: a.cgroup.clone(),
        },
    )?;
    if a.detach {
        return Ok(ExitCode::SUCCESS);
    }
    let tty = console
        .as_ref()
        .map(ConsoleSocket::receive)
        .transpose()?
        .map(ForegroundTty::attach);
    Ok(wait_foreground(pid, tty))
}
