//! `ferry check`: CRIU's version and the kernel features Ferry relies on.

use std::process::ExitCode;

use crate::Cli;

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(_cli: &Cli, _args: &CheckArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not yet")
}
