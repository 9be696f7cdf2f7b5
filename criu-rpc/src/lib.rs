//! `criu-rpc`: a client of CRIU's RPC protocol in swrk mode.
//!
//! runc, crun and Podman talk to CRIU the same way: they create a
//! `SOCK_SEQPACKET` socketpair, start `criu swrk <fd>` with one end, and
//! exchange `criu_req`/`criu_resp` protobuf messages (CRIU's `images/rpc.proto`)
//! over the other. While a request runs, CRIU calls back with `NOTIFY`
//! messages ("network-lock", "setup-namespaces", ...), each answered before
//! CRIU goes on. This crate owns that conversation:
//!
//! - [`Criu`] finds and spawns the criu binary ([`Swrk`] is one running
//!   `criu swrk`, whose pid the runtime may move into the container's cgroups
//!   before a restore, as runc does);
//! - typed options ([`DumpOptions`], [`RestoreOptions`], [`PageServerOptions`])
//!   convert to the RPC message by pure functions; the generated protobuf types
//!   (from `rust-criu`) never leave this crate;
//! - notify callbacks go to a [`NotifyHandler`], which may hold state;
//! - every failure is an [`Error`] that carries CRIU's errno and message and
//!   quotes the error lines of CRIU's log file;
//! - [`image`] decodes CRIU's image files (what `ferry inspect` shows);
//! - [`lazy::LazyPages`] is the lazy-pages daemon of post-copy restores
//!   (CRIU's RPC cannot start CRIU's own).
//!
//! It knows nothing of OCI: the runtime (`ferry-oci`) turns a container into
//! these options.

mod error;
pub mod image;
pub mod lazy;
mod log;
mod notify;
mod options;
mod proto;
pub mod stats;
mod swrk;
mod version;

pub use error::{CriuMessage, Error, RequestKind, Result};
pub use log::LogExcerpt;
pub use notify::{HandlerError, IgnoreNotify, Notify, NotifyHandler};
pub use options::{
    CgroupMode, CgroupRoot, CheckOptions, ChildFds, DumpOptions, ExtMount, ImageDirs, InheritFd,
    InheritPassed, JoinNamespace, LogLevel, NetworkLock, PageServerAddr, PageServerOptions,
    PreDumpMode, RestoreOptions, TreeOptions, VethPair,
};
pub use swrk::{ChildPageServer, Criu, PageServer, Restored, Swrk};
pub use version::{Features, Version, MIN_VERSION};
