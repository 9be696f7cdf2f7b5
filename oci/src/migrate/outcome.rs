//! What a move's far end reports when it cannot take or restore a
//! container: the destination's pre-flight [`Problem`]s and its
//! [`Failure`] (with CRIU's part, [`CriuFailure`]), plain data that crosses
//! the wire and ends up in [`crate::Error`]'s `Refused` and
//! `DestinationFailed`. A leaf module (nothing of this crate below it), so
//! that the crate's error type can carry these without depending on the
//! modules that use the error type; what builds a `Failure` from an
//! [`crate::Error`] lives with the protocol (`protocol::Failure::new`).

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// One reason the destination cannot take the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Problem {
    CriuTooOld {
        found: String,
        need: String,
    },
    ArchMismatch {
        source: String,
        destination: String,
    },
    NotEnoughDisk {
        need: u64,
        free: u64,
    },
    NotEnoughMemory {
        need: u64,
        available: u64,
    },
    NoLazyPages,
    KernelOlder {
        source: String,
        destination: String,
    },
    IdInUse {
        id: String,
    },
    LowerLayerMissing {
        path: PathBuf,
    },
    LowerLayerDiffers {
        path: PathBuf,
        expected: String,
        found: String,
    },
    CpuIncompatible {
        detail: String,
    },
    /// A container with a terminal, an agent with nowhere to put it.
    NoConsole,
    /// The container's address is another container's on the destination.
    AddressInUse {
        address: IpAddr,
        id: String,
    },
    /// A container of a dockerd offered to an agent without `--docker`.
    NotDocker,
    /// The destination agent cannot reach its dockerd.
    DockerUnreachable {
        host: String,
        error: String,
    },
    /// The container's image is not on the destination's dockerd.
    ImageMissing {
        image: String,
        id: String,
        /// The image the same name means there, if any.
        found: Option<String>,
        /// The source image's layers (diff ids) that image lacks.
        missing_layers: Vec<String>,
    },
    /// The container's name is another container's there.
    NameTaken {
        name: String,
        id: String,
    },
    /// A user-defined network the container is on does not exist there.
    NetworkMissing {
        network: String,
    },
    /// The network exists there, but its subnets exclude the address.
    AddressOutsideNetwork {
        network: String,
        address: std::net::Ipv4Addr,
    },
}

impl Problem {
    /// The problem's kind, for scripts (`ferry migrate --json`): its
    /// variant's name in snake_case.
    pub fn kind(&self) -> &'static str {
        match self {
            Problem::CriuTooOld { .. } => "criu_too_old",
            Problem::ArchMismatch { .. } => "arch_mismatch",
            Problem::NotEnoughDisk { .. } => "not_enough_disk",
            Problem::NotEnoughMemory { .. } => "not_enough_memory",
            Problem::NoLazyPages => "no_lazy_pages",
            Problem::KernelOlder { .. } => "kernel_older",
            Problem::IdInUse { .. } => "id_in_use",
            Problem::LowerLayerMissing { .. } => "lower_layer_missing",
            Problem::LowerLayerDiffers { .. } => "lower_layer_differs",
            Problem::CpuIncompatible { .. } => "cpu_incompatible",
            Problem::NoConsole => "no_console",
            Problem::AddressInUse { .. } => "address_in_use",
            Problem::NotDocker => "not_docker",
            Problem::DockerUnreachable { .. } => "docker_unreachable",
            Problem::ImageMissing { .. } => "image_missing",
            Problem::NameTaken { .. } => "name_taken",
            Problem::NetworkMissing { .. } => "network_missing",
            Problem::AddressOutsideNetwork { .. } => "address_outside_network",
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mib = |b: &u64| b / (1 << 20);
        match self {
            Problem::CriuTooOld { found, need } => {
                write!(f, "destination CRIU {found} is older than {need}: run hack/setup there")
            }
            Problem::ArchMismatch { source, destination } => write!(
                f,
                "source is {source} and destination {destination}: CRIU cannot move tasks across architectures"
            ),
            Problem::NotEnoughDisk { need, free } => write!(
                f,
                "destination has {} MiB free for images and rootfs, the move needs about {} MiB",
                mib(free),
                mib(need)
            ),
            Problem::NotEnoughMemory { need, available } => write!(
                f,
                "destination has {} MiB of memory available, the container uses {} MiB",
                mib(available),
                mib(need)
            ),
            Problem::NoLazyPages => write!(
                f,
                "destination kernel or CRIU lacks userfaultfd lazy pages: use --mode precopy"
            ),
            Problem::KernelOlder {
                source,
                destination,
            } => write!(
                f,
                "destination kernel {destination} is older than the source's {source}: the tasks may use what it lacks (CRIU restores onto the same or a newer kernel)"
            ),
            Problem::NoConsole => write!(
                f,
                "the container has a terminal and the destination agent has no console socket to hand it to: start `ferry serve` there with --console-socket PATH"
            ),
            Problem::AddressInUse { address, id } => write!(
                f,
                "address {address} is container {id}'s on the destination: move or delete that one first"
            ),
            Problem::NotDocker => write!(
                f,
                "the destination agent does not serve a dockerd: start it with `ferry serve --docker`"
            ),
            Problem::DockerUnreachable { host, error } => write!(
                f,
                "the destination's dockerd at {host} cannot be reached ({error}): start dockerd there, or point `ferry serve --docker-host` at it"
            ),
            Problem::ImageMissing {
                image,
                id,
                found,
                missing_layers,
            } => {
                write!(f, "image {image} ({id}) is not on the destination's dockerd")?;
                if let Some(other) = found {
                    write!(
                        f,
                        " ({image} is {other} there, lacking {} of the source image's layers: {})",
                        missing_layers.len(),
                        missing_layers.join(", ")
                    )?;
                }
                write!(f, ": `docker save {image}` here and `docker load` there first")
            }
            Problem::NameTaken { name, id } => write!(
                f,
                "the name {name} is container {id}'s on the destination's dockerd: remove or rename that one first"
            ),
            Problem::NetworkMissing { network } => write!(
                f,
                "network {network} does not exist on the destination's dockerd: create it there with the same driver and subnet first"
            ),
            Problem::AddressOutsideNetwork { network, address } => write!(
                f,
                "network {network} on the destination has no subnet holding {address}: give it the source network's subnet"
            ),
            Problem::IdInUse { id } => write!(
                f,
                "a container named {id} already exists on the destination, or is arriving there from another move right now: delete it, wait, or pick another id"
            ),
            Problem::LowerLayerMissing { path } => write!(
                f,
                "lower layer {} is missing on the destination: copy it there first",
                path.display()
            ),
            Problem::LowerLayerDiffers { path, expected, found } => write!(
                f,
                "lower layer {} differs on the destination (digest {found}, source has {expected})",
                path.display()
            ),
            Problem::CpuIncompatible { detail } => {
                write!(f, "the destination CPU cannot run the source's tasks: {detail}")
            }
        }
    }
}

/// Why the destination failed, in fields the source reports as they are
/// (`ferry migrate --json`), not one sentence to parse.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// Where in the move.
    pub stage: Stage,
    /// The error and its causes on one line, as a person reads it.
    pub message: String,
    /// A CRIU request failed: what CRIU said, and its log.
    pub criu: Option<CriuFailure>,
}

/// Where a destination's failure happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Judging the offer, receiving the pages, the images, the rootfs.
    Receive,
    /// Restoring the received container.
    Restore,
    /// Post-copy, after the restore: the lazy-pages daemon could not get
    /// every page (the restored copy was killed).
    LazyPages,
}

/// A failed CRIU request on the destination, as the criu-rpc error has it
/// (runc's `logCriuErrors` quotes the same log lines).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CriuFailure {
    /// The request: "restore", "page-server"...
    pub request: Option<String>,
    /// CRIU's `cr_errno`, when it set one.
    pub errno: Option<i32>,
    /// Its symbolic name (`EEXIST`).
    pub errno_name: Option<String>,
    /// CRIU's `cr_errmsg` (its first error, often a harmless one).
    pub message: Option<String>,
    /// The most telling error line of the log (`LogExcerpt::cause`).
    pub cause: Option<String>,
    /// CRIU's log file on the destination.
    pub log_file: Option<PathBuf>,
    /// The error lines of that log, with their context.
    pub log_lines: Vec<String>,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<&criu_rpc::Error> for CriuFailure {
    fn from(e: &criu_rpc::Error) -> CriuFailure {
        use criu_rpc::Error as C;
        let (request, message) = match e {
            C::Failed { request, criu, .. } => (Some(*request), criu.message.clone()),
            C::CriuExited { request, .. }
            | C::Malformed { request, .. }
            | C::UnexpectedResponse { request, .. }
            | C::UnexpectedNotify { request, .. }
            | C::Notify { request, .. }
            | C::ExitStatus { request, .. }
            | C::FdMismatch { request, .. } => (Some(*request), None),
            _ => (None, None),
        };
        let errno = e.criu_errno();
        let log = e.log();
        CriuFailure {
            request: request.map(|r| r.to_string()),
            errno: errno.map(|n| n as i32),
            errno_name: errno.map(|n| format!("{n:?}")),
            message: message.map(|m| m.trim_end().to_string()),
            cause: log.and_then(|l| l.cause()).map(str::to_string),
            log_file: log.map(|l| l.path.clone()),
            log_lines: log.map(|l| l.lines.clone()).unwrap_or_default(),
        }
    }
}
