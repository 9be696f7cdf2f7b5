//! `ferry`: the command line. runc's commands, global flags and output formats
//! (so dockerd and containerd can drive it), plus Ferry's own commands
//! (`check`, and later `migrate`, `serve`, `inspect`).
//!
//! This file only parses arguments, sets up logging and dispatches; each
//! command lives in its own file under `commands/`.

mod commands;
mod logging;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Global flags, as runc spells them.
#[derive(Debug, Parser)]
#[command(
    name = "ferry",
    version,
    about = "An OCI container runtime built for checkpoint/restore and live migration with CRIU"
)]
pub struct Cli {
    /// Root directory for the state of containers.
    #[arg(long, global = true, default_value = "/run/ferry")]
    pub root: PathBuf,
    /// Write ferry's log to this file instead of stderr.
    #[arg(long, global = true)]
    pub log: Option<PathBuf>,
    /// Log format: text or json (json is what dockerd and containerd parse).
    #[arg(long = "log-format", global = true, default_value = "text")]
    pub log_format: logging::LogFormat,
    /// Debug logging.
    #[arg(long, global = true)]
    pub debug: bool,
    /// Use systemd to manage cgroups.
    #[arg(long = "systemd-cgroup", global = true)]
    pub systemd_cgroup: bool,
    /// The criu binary to use (default: `criu` in PATH).
    #[arg(long, global = true, env = "FERRY_CRIU")]
    pub criu: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check CRIU's version and the kernel features Ferry relies on.
    Check(commands::check::CheckArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = logging::init(cli.log.as_deref(), cli.log_format, cli.debug) {
        eprintln!("ferry: cannot set up logging: {e:#}");
        return ExitCode::FAILURE;
    }
    let result = match &cli.command {
        Command::Check(args) => commands::check::run(&cli, args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            logging::report_error(&e, cli.log_format);
            ExitCode::FAILURE
        }
    }
}
