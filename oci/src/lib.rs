//! `ferry-oci`: Ferry's OCI side.
//!
//! Owns everything that knows about OCI bundles and containers: config.json
//! (through `oci-spec`), the rootfs and its mounts, namespaces, capabilities,
//! cgroups (through `libcgroups`), network namespaces, overlay diffs and the
//! container state kept under the runtime root. It turns a spec into typed
//! `criu-rpc` requests; it knows nothing of command lines.

pub mod cgroup_yard;
pub mod checkpoint;
pub mod criu_plan;
pub mod docker;
pub mod error;
pub mod export;
pub mod migrate;
mod mount;
pub mod network;
pub mod overlay;
pub mod restore;
pub mod runtime;
pub mod tmpfs_copy;

pub use error::{Error, Result};
