//! Live migration between two Ferry hosts: the wire protocol, its
//! authentication, and (in later files) the source and destination sides.
//!
//! One control connection carries typed messages and bulk streams (CRIU's
//! small images, the rootfs diff); memory pages travel on a second
//! connection that, once authenticated, is handed to CRIU itself (the
//! page-server socket `ps.fd` on both sides), so pages go from the source's
//! CRIU straight into the destination's page server, with no file in
//! between and no unauthenticated port ever open.

pub mod auth;
pub mod destination;
pub mod preflight;
pub mod protocol;
pub mod source;
mod tarball;
pub mod wire;
