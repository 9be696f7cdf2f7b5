//! `containerd-shim-ferry-v2`: containerd's runtime v2 shim for Ferry.
//!
//! containerd runs this binary for `--runtime io.containerd.ferry.v2` (and
//! Kubernetes or dockerd through a runtime class / `runtimeType`). It
//! serves containerd's Task service over ttrpc, built on the
//! `containerd-shim` crate, and drives containers through `ferry-oci`
//! and CRIU through `criu-rpc` in this process: no runc, no `ferry` CLI.
//!
//! The structure is containerd's runc v2 shim (runtime/v2/runc), whose
//! behaviour each module cites:
//! - [`service`]: the shim's lifecycle (`start`, `delete`, serve, wait);
//! - [`task`]: the Task service's RPCs (create ... checkpoint), the exits
//!   fanned out to their processes, and the events containerd receives;
//! - [`container`]: one container: its bundle, rootfs mount, processes and
//!   the ferry-oci calls that drive it (create, start or restore, kill,
//!   checkpoint, delete);
//! - [`process`]: one process's state, stdio, exit and start;
//! - [`options`]: the runtime options (state root, criu binary);
//! - [`checkpoint`]: containerd's checkpoint and restore options;
//! - [`stdio`]: the pipes between containerd's fifos and the container;
//! - [`reaper`]: waiting for the containers' processes;
//! - [`oom`]: out-of-memory events;
//! - [`error`]: errors, and the ttrpc statuses containerd receives.

mod checkpoint;
mod container;
mod error;
mod oom;
mod options;
mod process;
mod reaper;
mod service;
mod stdio;
mod task;

/// The runtime name containerd knows this shim by.
const RUNTIME_ID: &str = "io.containerd.ferry.v2";

#[tokio::main]
async fn main() {
    let config = containerd_shim::Config {
        // The shim reaps only the pids it watches ([`reaper`]): a wait for
        // any child would steal criu's and ferry-oci's own children.
        no_reaper: true,
        ..Default::default()
    };
    containerd_shim::asynchronous::run::<service::Service>(RUNTIME_ID, Some(config)).await;
}
