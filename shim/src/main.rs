//! `ferry`: the command line. runc's commands, global flags and output formats
//! (so dockerd and containerd can drive it), plus Ferry's own commands
//! (`check`, `migrate`, `serve`, `inspect`).
//!
//! This file only parses arguments, sets up logging and dispatches; each
//! command lives in its own file under `commands/`.

mod commands;
mod errors;
mod logging;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Global flags, as runc spells them.
/// Help laid out as runc's (urfave/cli): a NAME line `<bin> [<command>] -
/// <about>` first, which scripts and runc's own help.bats read. `bin` is
/// the name Ferry was invoked by (`runc` when installed as a drop-in runc).
fn help_template(bin: &str, command: Option<&str>) -> String {
    let name = match command {
        Some(c) => format!("{bin} {c}"),
        None => bin.to_string(),
    };
    format!("NAME:\n   {name} - {{about}}\n\nUSAGE:\n   {{usage}}\n\n{{all-args}}{{after-help}}")
}

/// The name Ferry was invoked by (the file name of argv[0]).
fn invoked_as() -> String {
    std::env::args_os()
        .next()
        .and_then(|a| {
            std::path::Path::new(&a)
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "ferry".into())
}

#[derive(Debug, Parser)]
#[command(
    name = "ferry",
    about = "Open Container Initiative runtime built for checkpoint/restore and live migration with CRIU",
    disable_version_flag = true
)]
pub struct Cli {
    /// Print the version (Ferry's, its commit, the runtime-spec version,
    /// libseccomp's, the CRIU it finds).
    #[arg(short = 'v', long = "version")]
    pub version: bool,
    /// With --version: the same as one JSON object.
    #[arg(long, requires = "version")]
    pub json: bool,
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
    /// runc's rootless mode (ignore cgroup permission errors): `auto` and
    /// `false` are accepted; `true` is refused, Ferry runs as root.
    #[arg(long, value_parser = ["auto", "true", "false"], default_value = "auto")]
    pub rootless: String,
    /// The criu binary to use (default: `criu` in PATH).
    #[arg(long, global = true, env = "FERRY_CRIU")]
    pub criu: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check CRIU's version and the kernel features Ferry relies on.
    Check(commands::check::CheckArgs),
    /// Create a container (its init waits for `start`).
    Create(commands::lifecycle::CreateArgs),
    /// Start a created container.
    Start(commands::lifecycle::IdArgs),
    /// Create and start a container.
    Run(commands::lifecycle::RunArgs),
    /// Output the state of a container as JSON.
    State(commands::lifecycle::IdArgs),
    /// List containers.
    List(commands::lifecycle::ListArgs),
    /// Send a signal to a container's init (or all its processes).
    Kill(commands::lifecycle::KillArgs),
    /// Delete a container and its cgroups.
    Delete(commands::lifecycle::DeleteArgs),
    /// Freeze every process of a container.
    Pause(commands::lifecycle::IdArgs),
    /// Thaw a paused container, or bring back one a killed `ferry migrate`
    /// left frozen.
    Resume(commands::lifecycle::ResumeArgs),
    /// Run a new process in a container.
    Exec(commands::exec::ExecArgs),
    /// List the processes of a container.
    Ps(commands::inspect_cmds::PsArgs),
    /// Change a container's resource limits.
    Update(commands::inspect_cmds::UpdateArgs),
    /// Show a container's resource usage.
    Events(commands::inspect_cmds::EventsArgs),
    /// Show what this runtime supports, as JSON.
    Features,
    /// Write a default config.json.
    Spec(commands::inspect_cmds::SpecArgs),
    /// Checkpoint a running container with CRIU.
    Checkpoint(commands::checkpoint::CheckpointArgs),
    /// Restore a container from a checkpoint.
    Restore(commands::restore::RestoreArgs),
    /// Receive migrating containers (the destination's agent).
    Serve(commands::serve::ServeArgs),
    /// Make the shared key of `ferry serve` and `ferry migrate` (a new
    /// file, mode 0600; copy it to both hosts).
    Keygen(commands::migrate::KeygenArgs),
    /// Move a running container to another host's `ferry serve`.
    Migrate(commands::migrate::MigrateArgs),
    /// Read and debug a checkpoint: summary, ps, fds, mem, sockets, mounts,
    /// stats; `decode FILE`; `diff A B`.
    Inspect(commands::inspect::InspectArgs),
    /// Write the completion script of SHELL to stdout (what `hack/install`
    /// installs).
    #[command(hide = true)]
    Completions { shell: clap_complete::Shell },
    /// Write the man pages of ferry and its commands into DIR (what
    /// `hack/install` installs).
    #[command(hide = true)]
    Man { dir: PathBuf },
}

/// go-runc (containerd, dockerd) spells long flags with one dash
/// (`-pid-file`, `-no-subreaper`); clap wants two.
fn normalize_args(args: impl Iterator<Item = std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    const LONG: &[&str] = &[
        "root",
        "log",
        "log-format",
        "debug",
        "systemd-cgroup",
        "criu",
        "bundle",
        "pid-file",
        "console-socket",
        "no-pivot",
        "no-new-keyring",
        "preserve-fds",
        "detach",
        "no-subreaper",
        "keep",
        "force",
        "all",
        "format",
        "process",
        "tty",
        "env",
        "cwd",
        "user",
        "resources",
        "memory",
        "memory-swap",
        "cpu-quota",
        "cpu-period",
        "cpu-share",
        "cpuset-cpus",
        "pids-limit",
        "stats",
        "interval",
        "image-path",
        "work-path",
        "leave-running",
        "tcp-established",
        "ext-unix-sk",
        "shell-job",
        "file-locks",
        "page-server",
        "lazy-pages",
        "status-fd",
        "manage-cgroups-mode",
        "empty-ns",
        "auto-dedup",
        "pre-dump",
        "parent-path",
        "print-stats",
        "quiet",
        "rootless",
        "json",
        "export",
        "import",
        "zstd",
    ];
    args.map(|a| {
        if let Some(s) = a.to_str() {
            if let Some(rest) = s.strip_prefix('-') {
                if !rest.starts_with('-') {
                    let name = rest.split('=').next().unwrap_or(rest);
                    if name.len() > 1 && LONG.contains(&name) {
                        return format!("-{s}").into();
                    }
                }
            }
        }
        a
    })
    .collect()
}

/// What `--version` prints.
#[derive(serde::Serialize)]
struct Version {
    /// The name Ferry was invoked by (`runc` as a drop-in).
    name: String,
    version: &'static str,
    /// The git commit built, `unknown` outside a git checkout (shim/build.rs).
    commit: &'static str,
    /// The runtime-spec version of the configs Ferry writes.
    spec: &'static str,
    /// libseccomp's, as linked at run time.
    libseccomp: Option<String>,
    /// The CRIU Ferry would use (`--criu`, `$FERRY_CRIU`, else PATH's),
    /// as it answers CRIU's version request; none if it does not run.
    criu: Option<String>,
}

/// `--version`, as runc prints it: name and version, then `commit:`,
/// `spec:` (the runtime-spec version of the configs Ferry writes) and
/// `libseccomp:` lines; Ferry adds the CRIU it would use. `--json`: the
/// same as one object.
fn print_version(cli: &Cli) {
    let v = Version {
        name: invoked_as(),
        version: env!("CARGO_PKG_VERSION"),
        commit: env!("FERRY_COMMIT"),
        spec: ferry_oci::runtime::spec::SPEC_VERSION,
        libseccomp: ferry_oci::runtime::seccomp::library_version().map(|v| v.to_string()),
        criu: commands::checkpoint::criu(cli)
            .version()
            .ok()
            .map(|v| v.to_string()),
    };
    let out = if cli.json {
        serde_json::to_string_pretty(&v).unwrap_or_default() + "\n"
    } else {
        let mut out = format!(
            "{} version {}\ncommit: {}\nspec: {}\n",
            v.name, v.version, v.commit, v.spec
        );
        if let Some(l) = &v.libseccomp {
            out += &format!("libseccomp: {l}\n");
        }
        out += &format!("criu: {}\n", v.criu.as_deref().unwrap_or("not found"));
        out
    };
    // A closed stdout (`| head -1`) is not an error worth a panic.
    let _ = std::io::Write::write_all(&mut std::io::stdout(), out.as_bytes());
}

fn main() -> ExitCode {
    use clap::{CommandFactory, FromArgMatches};
    let bin = invoked_as();
    let matches = Cli::command()
        .help_template(help_template(&bin, None))
        .mut_subcommands(|c| {
            let t = help_template(&bin, Some(c.get_name()));
            c.help_template(t)
        })
        .try_get_matches_from(normalize_args(std::env::args_os()))
        .unwrap_or_else(|e| {
            // runc (urfave/cli) answers an unknown command with its help
            // system's words, which scripts and help.bats read.
            if e.kind() == clap::error::ErrorKind::InvalidSubcommand {
                if let Some(clap::error::ContextValue::String(name)) =
                    e.get(clap::error::ContextKind::InvalidSubcommand)
                {
                    eprintln!("No help topic for '{name}'");
                    std::process::exit(3);
                }
            }
            e.exit()
        });
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    if cli.version {
        print_version(&cli);
        return ExitCode::SUCCESS;
    }
    // Generated from the clap definition itself, so they never drift from
    // the parser; no root, no logging needed.
    match &cli.command {
        Some(Command::Completions { shell }) => {
            clap_complete::generate(*shell, &mut Cli::command(), "ferry", &mut std::io::stdout());
            return ExitCode::SUCCESS;
        }
        Some(Command::Man { dir }) => {
            return match clap_mangen::generate_to(Cli::command(), dir) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("ferry man: writing man pages into {}: {e}", dir.display());
                    ExitCode::FAILURE
                }
            };
        }
        _ => {}
    }
    let Some(command) = &cli.command else {
        // runc without a command prints its help.
        let _ = Cli::command()
            .help_template(help_template(&invoked_as(), None))
            .print_help();
        return ExitCode::SUCCESS;
    };
    if cli.rootless == "true" {
        eprintln!(
            "ferry: rootless mode is not supported: run ferry as root, with --rootless false or auto"
        );
        return ExitCode::FAILURE;
    }
    // `ferry serve` reads its configuration first: it may set the log
    // format, and the agent logs each move at info.
    let given = |id: &str| {
        matches!(
            matches.value_source(id),
            Some(clap::parser::ValueSource::CommandLine)
        )
    };
    let mut log_format = cli.log_format;
    let mut default_level = "warn,libcgroups=error";
    let serve_config = match command {
        Command::Serve(a) => match commands::serve::Config::load(a.config.as_deref()) {
            Ok(c) => {
                if let (false, Some(f)) = (given("log_format"), c.log_format) {
                    log_format = f;
                }
                default_level = "info,libcgroups=error";
                Some(c)
            }
            Err(e) => {
                eprintln!("ferry serve: {e:#}");
                return ExitCode::FAILURE;
            }
        },
        _ => None,
    };
    if let Err(e) = logging::init(cli.log.as_deref(), log_format, cli.debug, default_level) {
        eprintln!("ferry: cannot set up logging: {e:#}");
        return ExitCode::FAILURE;
    }
    let result = match command {
        Command::Check(args) => commands::check::run(&cli, args),
        Command::Create(a) => commands::lifecycle::create(&cli, a),
        Command::Start(a) => commands::lifecycle::start(&cli, a),
        Command::Run(a) => commands::lifecycle::run(&cli, a),
        Command::State(a) => commands::lifecycle::state(&cli, a),
        Command::List(a) => commands::lifecycle::list(&cli, a),
        Command::Kill(a) => commands::lifecycle::kill(&cli, a),
        Command::Delete(a) => commands::lifecycle::delete(&cli, a),
        Command::Pause(a) => commands::lifecycle::pause(&cli, a),
        Command::Resume(a) => commands::lifecycle::resume(&cli, a),
        Command::Exec(a) => commands::exec::exec(&cli, a),
        Command::Ps(a) => commands::inspect_cmds::ps(&cli, a),
        Command::Update(a) => commands::inspect_cmds::update(&cli, a),
        Command::Events(a) => commands::inspect_cmds::events(&cli, a),
        Command::Features => commands::inspect_cmds::features(&cli),
        Command::Spec(a) => commands::inspect_cmds::spec(&cli, a),
        Command::Checkpoint(a) => commands::checkpoint::checkpoint(&cli, a),
        Command::Restore(a) => commands::restore::restore(&cli, a),
        Command::Serve(a) => commands::serve::serve(
            &cli,
            a,
            serve_config.unwrap_or_default(),
            &commands::serve::Given {
                root: given("root"),
            },
        ),
        Command::Keygen(a) => commands::migrate::keygen(a),
        Command::Migrate(a) => commands::migrate::migrate(&cli, a),
        Command::Inspect(a) => commands::inspect::inspect(&cli, a),
        Command::Completions { .. } | Command::Man { .. } => unreachable!("handled above"),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            logging::report_error(&e, log_format);
            let json = match command {
                Command::Migrate(a) => a.json,
                Command::Checkpoint(a) => a.json,
                Command::Restore(a) => a.json,
                _ => false,
            };
            if json {
                let mut out = errors::json(&e);
                if let Command::Migrate(a) = command {
                    out["id"] = a.id.clone().into();
                    out["to"] = a.to.clone().into();
                }
                println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
            }
            // runc's exec fails with 255, so that its own failures differ
            // from the exit codes of the process it runs (exec.go).
            if matches!(command, Command::Exec(_)) {
                ExitCode::from(255)
            } else {
                ExitCode::from(errors::exit_code(&e))
            }
        }
    }
}
