//! The one error type of `ferry-oci`. Every variant carries what a user needs
//! to act: the container id, the path, the operation that failed.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A CRIU request failed; the criu-rpc error quotes CRIU's log.
    #[error(transparent)]
    Criu(#[from] criu_rpc::Error),

    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}
