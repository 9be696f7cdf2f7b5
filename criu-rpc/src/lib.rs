//! `criu-rpc`: a client of CRIU's swrk RPC protocol.

mod error;
pub use error::Error;
