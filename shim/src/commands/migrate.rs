//! `ferry serve` (the destination's agent) and `ferry migrate` (moving a
//! running container to it). Peers authenticate with a shared key file or
//! per-host identities, and every byte between them is sealed
//! (ferry_oci::migrate::channel) unless both sides ask for plaintext: the
//! agent never listens unauthenticated.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use ferry_oci::migrate::auth::{Credentials, Identity, Key, Peers};
use ferry_oci::migrate::channel::Security;
use ferry_oci::migrate::interrupt::Interrupt;
use ferry_oci::migrate::{source, Mode, PrecopyPages, Progress};

use super::checkpoint::criu;
use crate::Cli;

/// How a side of a move authenticates and secures its channel; the same
/// flags for `ferry serve` and `ferry migrate`.
#[derive(Debug, clap::Args)]
pub struct ChannelArgs {
    /// The shared key (hex, mode 0600), the same file on both hosts
    /// (`ferry keygen --key-file`).
    #[arg(
        long = "key-file",
        required_unless_present = "identity",
        conflicts_with = "identity"
    )]
    pub key_file: Option<PathBuf>,
    /// This host's own private key (`ferry keygen --identity FILE`), instead
    /// of a shared key: one leaked file then opens no other host.
    #[arg(long, requires = "peers")]
    pub identity: Option<PathBuf>,
    /// The public keys this host accepts as peers, one per line (the
    /// FILE.pub lines of `ferry keygen --identity`), with --identity.
    #[arg(long, requires = "identity")]
    pub peers: Option<PathBuf>,
    /// Send records unencrypted (peers are still authenticated): for a
    /// trusted link only, and refused unless both sides give it.
    #[arg(long)]
    pub plaintext: bool,
    /// Seconds a peer may stay silent (no data, no heartbeat) before the
    /// move fails and the source resumes.
    #[arg(long = "peer-timeout", default_value_t = 20.0)]
    pub peer_timeout: f64,
}

impl ChannelArgs {
    pub fn security(&self) -> anyhow::Result<Security> {
        let credentials = match (&self.key_file, &self.identity, &self.peers) {
            (Some(k), _, _) => Credentials::Shared(Key::load(k)?),
            (None, Some(me), Some(peers)) => Credentials::Identity {
                me: Identity::load(me)?,
                peers: Peers::load(peers)?,
            },
            _ => anyhow::bail!("give --key-file, or --identity with --peers"),
        };
        anyhow::ensure!(
            self.peer_timeout >= 1.0 && self.peer_timeout.is_finite(),
            "--peer-timeout must be at least 1 second"
        );
        Ok(Security {
            plaintext: self.plaintext,
            silence: std::time::Duration::from_secs_f64(self.peer_timeout),
            ..Security::new(credentials)
        })
    }
}

#[derive(Debug, clap::Args)]
pub struct KeygenArgs {
    /// A shared key: a file that must not exist yet, the same on every host.
    #[arg(
        long = "key-file",
        required_unless_present = "identity",
        conflicts_with = "identity"
    )]
    pub key_file: Option<PathBuf>,
    /// A per-host identity: the private key goes to FILE (0600), the
    /// public key to FILE.pub (the line other hosts add to their --peers).
    #[arg(long)]
    pub identity: Option<PathBuf>,
}

/// `ferry keygen --key-file F` or `--identity F`.
pub fn keygen(a: &KeygenArgs) -> anyhow::Result<ExitCode> {
    match (&a.key_file, &a.identity) {
        (Some(k), _) => {
            Key::generate()?.save(k)?;
            println!("{}", k.display());
        }
        (None, Some(i)) => {
            let public = Identity::generate()?.save(i)?;
            println!("{}", i.display());
            println!("{}", public.display());
        }
        (None, None) => anyhow::bail!("give --key-file or --identity"),
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, clap::Args)]
pub struct MigrateArgs {
    pub id: String,
    /// The destination agent (`ferry serve --listen`): an address or a
    /// host name with its port (host-b:7878).
    #[arg(long)]
    pub to: String,
    #[command(flatten)]
    pub channel: ChannelArgs,
    /// precopy (freeze, send all memory, restore), postcopy (restore first,
    /// memory follows through userfaultfd) or auto (the lower-downtime one
    /// for this container; the report says which and why).
    #[arg(long, default_value = "auto")]
    pub mode: Mode,
    /// Where a pre-copy's pages go on the destination: uffd (straight into
    /// the restored, still stopped tasks through userfaultfd, the restore
    /// overlapping the transfer; images when either host lacks lazy pages),
    /// images (CRIU's page server writes them, the restore reads them back:
    /// runc's --page-server path) or auto (uffd from 16 MiB of memory).
    /// Either way the copy runs only with every page in.
    #[arg(long, default_value = "auto")]
    pub precopy_pages: PrecopyPages,
    /// Print the report as JSON; on failure, one JSON object naming the
    /// error's kind, CRIU's part and the destination's problems.
    #[arg(long)]
    pub json: bool,
    /// Only ask the destination whether it would take the container (its
    /// whole pre-flight check) and say why not; nothing is frozen or moved.
    #[arg(long)]
    pub check: bool,
    /// The container is a dockerd's, named as docker names it (name or
    /// id); the destination agent runs `ferry serve --docker`.
    #[arg(long)]
    pub docker: bool,
    /// The dockerd to use (unix:///path/docker.sock); default: $DOCKER_HOST,
    /// else unix:///var/run/docker.sock, as docker finds it.
    #[arg(long = "docker-host", requires = "docker")]
    pub docker_host: Option<String>,
    /// With --docker: remove the source's exited copy once the destination
    /// runs the container (by default it stays, exited, renamed
    /// NAME.moved-to-ADDR).
    #[arg(long = "rm-source", requires = "docker")]
    pub rm_source: bool,
}

pub fn migrate(cli: &Cli, a: &MigrateArgs) -> anyhow::Result<ExitCode> {
    let sec = a.channel.security()?;
    let start = std::time::Instant::now();
    // On a terminal, a spinner with the phase that becomes a bar while the
    // memory pages move; plain timestamped lines otherwise (logs, CI), the
    // pages at their first byte and every quarter; nothing with --json,
    // whose output is the report.
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let style = |template: &str| {
        indicatif::ProgressStyle::with_template(template)
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner())
    };
    let bar = (tty && !a.json).then(|| {
        let b = indicatif::ProgressBar::new_spinner();
        b.set_style(style("{spinner} [{elapsed_precise}] {msg}"));
        b.enable_steady_tick(std::time::Duration::from_millis(100));
        b
    });
    let line = |what: &str| eprintln!("[{:>7.3}s] {what}", start.elapsed().as_secs_f64());
    // The last quarter of the pages printed as a line (0: none yet).
    let quarter = std::sync::atomic::AtomicU64::new(0);
    let progress = |p: Progress<'_>| match (p, &bar) {
        (Progress::Phase(phase), Some(b)) => {
            b.println(format!("[{:>7.3}s] {phase}", start.elapsed().as_secs_f64()));
            b.set_message(phase.to_string());
        }
        (Progress::Pages { sent, of }, Some(b)) => {
            if b.length().is_none() {
                b.set_style(style(
                    "{spinner} [{elapsed_precise}] {msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
                ));
            }
            b.set_length(of.max(sent));
            b.set_position(sent);
        }
        (Progress::Phase(phase), None) if !a.json => line(phase),
        (Progress::Pages { sent, of }, None) if !a.json => {
            let q = 1 + 4 * sent / of.max(1);
            if q > quarter.fetch_max(q, std::sync::atomic::Ordering::Relaxed) {
                line(&format!(
                    "pages: {:.1} of about {:.1} MiB",
                    sent as f64 / 1048576.0,
                    of as f64 / 1048576.0
                ));
            }
        }
        _ => {}
    };
    let engine = match a.docker {
        true => Some(ferry_oci::docker::Engine::connect(
            a.docker_host.as_deref(),
        )?),
        false => None,
    };
    let criu = criu(cli);
    let interrupt = Arc::new(Interrupt::new());
    let plan = source::Plan {
        to: resolve(&a.to)?,
        security: &sec,
        mode: a.mode,
        precopy_pages: a.precopy_pages,
        criu: &criu,
        progress: &progress,
        interrupt: &interrupt,
    };
    if a.check {
        let checked = match &engine {
            Some(e) => source::check_docker(e, &a.id, &plan),
            None => source::check(&cli.root, &a.id, &plan),
        };
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        let report = checked.with_context(|| {
            format!(
                "checking whether {} can move {} (nothing was frozen)",
                a.to, a.id
            )
        })?;
        if a.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            println!(
                "{} can take {} ({}: {})",
                report.to, report.id, report.mode, report.mode_reason
            );
            for n in &report.notes {
                println!("note: {n}");
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    // Ctrl-C, a `kill`, a lost terminal: the move stops and the source
    // resumes before we exit (after its commit, the move finishes).
    let signals = on_signals(&interrupt)?;
    let result = match &engine {
        Some(e) => source::DockerSource::find(e, &a.id).and_then(|mut d| {
            d.rm_source = a.rm_source;
            source::migrate_docker(&d, &plan)
        }),
        None => source::migrate(&cli.root, &a.id, &plan),
    };
    signals.close();
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let unknown = matches!(&result, Err(ferry_oci::Error::OutcomeUnknown { .. }));
    let report = result.with_context(|| match unknown {
        // The error says where the container is.
        true => format!("migrating {} to {}", a.id, a.to),
        false => format!(
            "migrating {} to {} (the source container keeps running)",
            a.id, a.to
        ),
    })?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{} moved to {} ({}): downtime {:.0} ms, total {:.0} ms (pre-flight {:.0}, dump {:.0}, transfer {:.0}, restore {:.0}); pages {:.1} MiB, images {:.1} MiB, rootfs {:.1} MiB ({:.2} MiB of it while frozen)",
            report.id,
            report.to,
            report.mode,
            report.downtime_ms,
            report.total_ms,
            report.preflight_ms,
            report.dump_ms,
            report.transfer_ms,
            report.restore_ms,
            report.pages_bytes as f64 / 1048576.0,
            report.images_bytes as f64 / 1048576.0,
            report.rootfs_bytes as f64 / 1048576.0,
            report.rootfs_frozen_bytes as f64 / 1048576.0,
        );
        println!("channel: {}", report.channel);
        if let Some(d) = &report.docker {
            println!(
                "docker: {} runs on {} as {}; on this host it is {}",
                d.name, report.to, d.destination_id, d.source
            );
            for n in &d.notes {
                println!("note: {n}");
            }
        }
        if let (Some(ms), Some(l)) = (report.lazy_ms, &report.lazy) {
            println!(
                "post-copy: every page in {:.0} ms after the restore ({} faults, {:.1} MiB on faults, {:.1} MiB in the background)",
                ms,
                l.faults,
                l.fault_bytes as f64 / 1048576.0,
                l.background_bytes as f64 / 1048576.0,
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Fires `interrupt` on SIGINT, SIGTERM or SIGHUP, from a thread of its
/// own, until the returned handle is closed.
fn on_signals(interrupt: &Arc<Interrupt>) -> anyhow::Result<SignalThread> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])
        .context("catching SIGINT, SIGTERM and SIGHUP")?;
    let handle = signals.handle();
    let interrupt = interrupt.clone();
    let thread = std::thread::Builder::new()
        .name("ferry-signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                let name = match sig {
                    SIGHUP => "SIGHUP",
                    SIGTERM => "SIGTERM",
                    _ => "SIGINT",
                };
                eprintln!(
                    "ferry migrate: {name}: stopping the move (the source resumes, unless the destination already runs it)"
                );
                interrupt.fire(name);
            }
        })
        .context("starting the signal thread")?;
    Ok(SignalThread {
        handle,
        thread: Some(thread),
    })
}

/// The thread of [`on_signals`].
struct SignalThread {
    handle: signal_hook::iterator::Handle,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SignalThread {
    /// Stops catching the signals (their default action is back).
    fn close(mut self) {
        self.handle.close();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `--to`: a socket address as it is, or a host name and port resolved.
/// A name with several addresses (localhost: ::1 and 127.0.0.1) goes to
/// the first that accepts a connection, in the resolver's order.
fn resolve(to: &str) -> anyhow::Result<SocketAddr> {
    use std::net::{TcpStream, ToSocketAddrs};
    let addrs: Vec<SocketAddr> = to
        .to_socket_addrs()
        .with_context(|| {
            format!("--to {to}: not an address, nor a host name with a port (host-b:7878)")
        })?
        .collect();
    match addrs.as_slice() {
        [] => anyhow::bail!("--to {to}: the name resolves to no address"),
        [one] => Ok(*one),
        many => Ok(many
            .iter()
            .find(|a| TcpStream::connect_timeout(a, std::time::Duration::from_secs(3)).is_ok())
            .copied()
            .unwrap_or(many[0])),
    }
}
