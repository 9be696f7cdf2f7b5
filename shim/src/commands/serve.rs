//! `ferry serve`, the destination's agent, and its configuration file
//! (`--config FILE`, by default /etc/ferry/serve.toml when it exists).
//!
//! The file's keys are the long flags' names (`key-file`, `peer-timeout`);
//! a flag given on the command line overrides the file's key, and an
//! unknown key is refused, named, rather than ignored (a misspelt
//! `peer-timout` would otherwise silently keep the default). A switch
//! (`--plaintext`, `--docker`) can only turn its key on. The agent logs
//! each move it receives at info, its default level here.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use ferry_oci::migrate::auth::Key;
use ferry_oci::migrate::destination::Agent;

use super::checkpoint::criu;
use super::migrate::ChannelArgs;
use crate::logging::LogFormat;
use crate::Cli;

/// Where `ferry serve` looks for its configuration without `--config`.
pub const DEFAULT_CONFIG: &str = "/etc/ferry/serve.toml";

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// The configuration file (TOML; its keys are these flags' long names,
    /// which override them). Default: /etc/ferry/serve.toml, if it exists.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Address to listen on, e.g. 10.66.0.2:7878 (repeat it for several).
    #[arg(long)]
    pub listen: Vec<SocketAddr>,
    /// The shared key (hex, mode 0600), the same file on both hosts
    /// (`ferry keygen --key-file`).
    #[arg(long = "key-file", conflicts_with = "identity")]
    pub key_file: Option<PathBuf>,
    /// This host's own private key (`ferry keygen --identity FILE`), instead
    /// of a shared key.
    #[arg(long)]
    pub identity: Option<PathBuf>,
    /// The public keys this host accepts as peers, one per line, with
    /// --identity.
    #[arg(long)]
    pub peers: Option<PathBuf>,
    /// Send records unencrypted (peers are still authenticated): for a
    /// trusted link only, and refused unless both sides give it.
    #[arg(long)]
    pub plaintext: bool,
    /// Seconds a peer may stay silent (no data, no heartbeat) before the
    /// move fails and the source resumes [default: 20].
    #[arg(long = "peer-timeout")]
    pub peer_timeout: Option<f64>,
    /// Seconds a connection has to authenticate and say what it wants
    /// [default: 10].
    #[arg(long = "handshake-timeout")]
    pub handshake_timeout: Option<f64>,
    /// Connections served at once on each address; more are closed at
    /// accept [default: 64].
    #[arg(long = "max-connections")]
    pub max_connections: Option<usize>,
    /// Create the --key-file (it must not exist) and exit (as `ferry
    /// keygen --key-file`).
    #[arg(long = "new-key", requires = "key_file")]
    pub new_key: bool,
    /// Prefix for the cgroup paths of containers received here.
    #[arg(long = "cgroup-parent")]
    pub cgroup_parent: Option<PathBuf>,
    /// A socket that receives the pty master of every container with a
    /// terminal restored here (as runc's --console-socket); containers with
    /// a terminal are refused without it.
    #[arg(long = "console-socket")]
    pub console_socket: Option<PathBuf>,
    /// Receive containers of a dockerd (`ferry migrate --docker`): each is
    /// recreated on this host's dockerd under its name and restored there.
    #[arg(long)]
    pub docker: bool,
    /// The dockerd to use (unix:///path/docker.sock), with --docker;
    /// default: $DOCKER_HOST, else unix:///var/run/docker.sock.
    #[arg(long = "docker-host")]
    pub docker_host: Option<String>,
}

/// The configuration file: every key optional, none unknown.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Config {
    /// One address or a list of them.
    listen: Option<OneOrMany<SocketAddr>>,
    key_file: Option<PathBuf>,
    identity: Option<PathBuf>,
    peers: Option<PathBuf>,
    plaintext: Option<bool>,
    peer_timeout: Option<f64>,
    handshake_timeout: Option<f64>,
    max_connections: Option<usize>,
    /// The state root (`ferry --root`).
    root: Option<PathBuf>,
    /// The criu binary (`ferry --criu`, `$FERRY_CRIU`).
    criu: Option<PathBuf>,
    cgroup_parent: Option<PathBuf>,
    console_socket: Option<PathBuf>,
    docker: Option<bool>,
    docker_host: Option<String>,
    /// `ferry --log-format`: text or json.
    pub log_format: Option<LogFormat>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(untagged)]
enum OneOrMany<T> {
    One(T),
    Many(Vec<T>),
}

impl Config {
    /// The file `--config` names (which must exist), else
    /// [`DEFAULT_CONFIG`] if it exists, else no settings.
    pub fn load(given: Option<&Path>) -> anyhow::Result<Config> {
        let path = match given {
            Some(p) => p,
            None if Path::new(DEFAULT_CONFIG).exists() => Path::new(DEFAULT_CONFIG),
            None => return Ok(Config::default()),
        };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the configuration {}", path.display()))?;
        // toml names an unknown key (and lists the known ones) and where
        // it is in the file.
        toml::from_str(&text).map_err(|e| {
            anyhow::anyhow!(
                "{}: {}",
                path.display(),
                e.to_string().trim_end().replace('\n', "\n  ")
            )
        })
    }
}

/// Which global flags were given on the command line (or, for `--criu`,
/// by `$FERRY_CRIU`): those override the file.
pub struct Given {
    pub root: bool,
}

/// `ferry serve`: the command line over the file over the defaults.
pub fn serve(cli: &Cli, a: &ServeArgs, file: Config, given: &Given) -> anyhow::Result<ExitCode> {
    if let (true, Some(k)) = (a.new_key, &a.key_file) {
        Key::generate()?.save(k)?;
        println!("{}", k.display());
        return Ok(ExitCode::SUCCESS);
    }
    // Credentials go together: any of them on the command line replaces
    // the file's (a --identity flag with the file's key-file is no mix).
    let flags_have_credentials = a.key_file.is_some() || a.identity.is_some() || a.peers.is_some();
    let (key_file, identity, peers) = match flags_have_credentials {
        true => (a.key_file.clone(), a.identity.clone(), a.peers.clone()),
        false => (file.key_file, file.identity, file.peers),
    };
    anyhow::ensure!(
        !(key_file.is_some() && identity.is_some()),
        "give key-file or identity (with peers), not both"
    );
    anyhow::ensure!(
        identity.is_some() == peers.is_some(),
        "identity and peers go together (this host's key, and the peers it accepts)"
    );
    anyhow::ensure!(
        key_file.is_some() || identity.is_some(),
        "ferry serve needs credentials: --key-file FILE, or --identity FILE with --peers FILE (or key-file, identity and peers in {})",
        a.config.as_deref().unwrap_or(Path::new(DEFAULT_CONFIG)).display()
    );
    let channel = ChannelArgs {
        key_file,
        identity,
        peers,
        plaintext: a.plaintext || file.plaintext.unwrap_or(false),
        peer_timeout: a.peer_timeout.or(file.peer_timeout).unwrap_or(20.0),
    };
    let security = channel.security()?;
    let listen: Vec<SocketAddr> = match (a.listen.is_empty(), file.listen) {
        (false, _) => a.listen.clone(),
        (true, Some(OneOrMany::One(l))) => vec![l],
        (true, Some(OneOrMany::Many(l))) => l,
        (true, None) => Vec::new(),
    };
    anyhow::ensure!(
        !listen.is_empty(),
        "ferry serve needs an address to listen on: --listen ADDR:PORT, or listen in the configuration"
    );
    let handshake = a
        .handshake_timeout
        .or(file.handshake_timeout)
        .unwrap_or(ferry_oci::migrate::wire::HANDSHAKE_DEADLINE.as_secs_f64());
    anyhow::ensure!(
        handshake >= 1.0 && handshake.is_finite(),
        "handshake-timeout must be at least 1 second"
    );
    let max_connections = a
        .max_connections
        .or(file.max_connections)
        .unwrap_or(ferry_oci::migrate::destination::MAX_CONNECTIONS);
    anyhow::ensure!(max_connections >= 1, "max-connections must be at least 1");
    let docker = a.docker || file.docker.unwrap_or(false);
    let docker_host = a.docker_host.clone().or(file.docker_host);
    anyhow::ensure!(
        docker || docker_host.is_none(),
        "docker-host is for a --docker agent: add --docker (or docker = true)"
    );
    let root = match (given.root, file.root) {
        (false, Some(r)) => r,
        _ => cli.root.clone(),
    };
    let criu = match (&cli.criu, file.criu) {
        (None, Some(c)) => criu_rpc::Criu::with_binary(c),
        _ => criu(cli),
    };
    std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    let described = security.describe();
    let mut agent = Agent::new(
        root.clone(),
        security,
        criu,
        a.cgroup_parent.clone().or(file.cgroup_parent),
    )
    .with_console_socket(a.console_socket.clone().or(file.console_socket))
    .with_limits(max_connections, Duration::from_secs_f64(handshake));
    if docker {
        let engine = ferry_oci::docker::Engine::connect(docker_host.as_deref())
            .context("ferry serve --docker")?;
        eprintln!(
            "ferry serve: docker containers land on dockerd at {}",
            engine.host()
        );
        agent = agent.with_docker(docker_host);
    }
    let agent = Arc::new(agent);
    agent.clean_leftovers();
    let mut listeners = Vec::new();
    for addr in &listen {
        let l = TcpListener::bind(addr).with_context(|| format!("listening on {addr}"))?;
        listeners.push(l);
    }
    let addrs: Vec<String> = listeners
        .iter()
        .filter_map(|l| l.local_addr().ok())
        .map(|a| a.to_string())
        .collect();
    eprintln!(
        "ferry serve: receiving containers on {} into {}; channel {described}",
        addrs.join(", "),
        root.display()
    );
    // One thread per further address; the first is served here.
    let first = listeners.remove(0);
    for l in listeners {
        let agent = agent.clone();
        std::thread::Builder::new()
            .name("ferry-serve-listen".into())
            .spawn(move || {
                if let Err(e) = agent.serve(l) {
                    tracing::error!(error = %ferry_oci::error::chain(&e), "serving an address");
                }
            })
            .context("starting a listener thread")?;
    }
    agent.serve(first)?;
    Ok(ExitCode::SUCCESS)
}
