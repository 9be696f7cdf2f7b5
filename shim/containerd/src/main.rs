//! `containerd-shim-ferry-v2`: containerd's runtime v2 shim for Ferry.
//!
//! containerd runs this binary for `--runtime io.containerd.ferry.v2` (and
//! Kubernetes or dockerd through a runtime class / `runtimeType`). It
//! serves containerd's Task service (task API v2) over ttrpc, on the
//! generated `containerd-shim-protos` and the `ttrpc` crate, and drives containers through `ferry-oci`
//! and CRIU through `criu-rpc` in this process: no runc, no `ferry` CLI.
//!
//! The structure is containerd's runc v2 shim (runtime/v2/runc), whose
//! behaviour each module cites:
//! - [`args`]: the command line containerd gives a shim;
//! - [`service`]: the shim's lifecycle (`start`, `delete`, serve, wait);
//! - [`publisher`]: the events sent to containerd;
//! - [`logger`]: the log, on containerd's fifo;
//! - [`mount`]: the rootfs from containerd's mounts;
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

mod args;
mod checkpoint;
mod container;
mod error;
mod logger;
mod mount;
mod oom;
mod options;
mod process;
mod publisher;
mod reaper;
mod service;
mod stdio;
mod task;

use std::io::Write;

#[tokio::main]
async fn main() {
    let name = "containerd-shim-ferry-v2";
    let flags = match args::Flags::parse(std::env::args_os().skip(1)) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("{name}: {e}");
            std::process::exit(2);
        }
    };
    if flags.version {
        // The lines containerd's own shims print for -v.
        println!("{name}:\n  Version:  {}", env!("CARGO_PKG_VERSION"));
        return;
    }
    let result = if flags.info {
        Err(service::ShimError::Invalid(
            "-info (runtime introspection) is not supported by the ferry shim".into(),
        ))
    } else {
        match flags.action.as_str() {
            "start" => service::start(&flags).and_then(|address| {
                // containerd reads the address from stdout, without a newline.
                let mut out = std::io::stdout();
                out.write_all(address.as_bytes())
                    .and_then(|()| out.flush())
                    .map_err(|source| service::ShimError::Io {
                        op: "printing the shim address on",
                        path: "stdout".into(),
                        source,
                    })
            }),
            "delete" => match service::delete(&flags).await {
                Ok(resp) => service::print_delete(&resp),
                Err(e) => Err(e),
            },
            "" => service::serve(&flags).await,
            other => Err(service::ShimError::Invalid(format!(
                "unknown action {other:?}: containerd runs a shim with `start` or `delete`"
            ))),
        }
    };
    if let Err(e) = result {
        let msg = ferry_oci::error::chain(&e);
        log::error!("{msg}");
        eprintln!("{name}: {msg}");
        std::process::exit(1);
    }
}
