//! The OCI runtime: containers created from a bundle, started, signalled,
//! paused, inspected and deleted with runc's semantics.
//!
//! The design is runc's: `create` forks the container's init into its new
//! namespaces (pid 1 of its own pid namespace, a session leader, as CRIU
//! requires); the init prepares the rootfs and its mounts, pivots into it,
//! and blocks opening `exec.fifo` for writing until `start` opens it for
//! reading; then it execs the user's process. `create` and `restore` (the
//! migration agent's too) make a container through one path,
//! [`setup::Setup`], which undoes whatever it made when they fail. State
//! lives in `<root>/<id>/state.json`, survives every ferry process, and a
//! flock on the container's directory serializes concurrent commands.

pub mod cgroup;
pub mod cgroup_procs;
pub mod console;
pub mod container;
pub mod cr;
pub mod events;
pub mod freeze;
pub mod hooks;
pub mod init;
pub mod net;
pub mod pending;
pub mod process;
pub mod resources;
pub mod seccomp;
mod seccomp_enosys;
pub mod securejoin;
pub mod setup;
pub mod signal;
pub mod spec;
pub mod state;
pub mod subcgroup;
mod sync;
pub mod update;

pub use container::{Container, CreateOptions, ExecOptions, Status};
pub use process::Stdio;
pub use state::{State, StateDir};
