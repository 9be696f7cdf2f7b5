//! The shim's errors, and how they reach containerd: a ttrpc status with
//! the code containerd's errdefs maps back (NOT_FOUND, ALREADY_EXISTS,
//! FAILED_PRECONDITION, ...), as runc-shim's `errdefs.ToGRPC` does, and a
//! message that carries every cause (CRIU's log excerpt included).

use std::path::PathBuf;

use containerd_shim_protos::ttrpc;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{op} container {id}")]
    Oci {
        op: &'static str,
        id: String,
        // Boxed: ferry-oci's error is large and every result carries it.
        #[source]
        source: Box<ferry_oci::Error>,
    },
    #[error("{what} not found")]
    NotFound { what: String },
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0} is not supported by the ferry shim yet")]
    Unsupported(&'static str),
    #[error("{op} {}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("decoding {what}")]
    Protobuf {
        what: &'static str,
        #[source]
        source: containerd_shim_protos::protobuf::Error,
    },
    #[error("decoding {what}")]
    Json {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("a blocking operation of the shim panicked or was cancelled")]
    Join(#[from] tokio::task::JoinError),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn oci(op: &'static str, id: &str) -> impl FnOnce(ferry_oci::Error) -> Error {
        let id = id.to_string();
        move |source| Error::Oci {
            op,
            id,
            source: Box::new(source),
        }
    }

    pub fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { op, path, source }
    }

    fn code(&self) -> ttrpc::Code {
        use ferry_oci::Error as O;
        match self {
            Error::NotFound { .. } => ttrpc::Code::NOT_FOUND,
            Error::FailedPrecondition(_) => ttrpc::Code::FAILED_PRECONDITION,
            Error::InvalidArgument(_) | Error::Protobuf { .. } | Error::Json { .. } => {
                ttrpc::Code::INVALID_ARGUMENT
            }
            Error::Unsupported(_) => ttrpc::Code::UNIMPLEMENTED,
            Error::Oci { source, .. } => match **source {
                O::NoSuchContainer { .. } => ttrpc::Code::NOT_FOUND,
                O::ContainerExists { .. } => ttrpc::Code::ALREADY_EXISTS,
                O::WrongStatus { .. } => ttrpc::Code::FAILED_PRECONDITION,
                O::InvalidId { .. } | O::InvalidConfig { .. } => ttrpc::Code::INVALID_ARGUMENT,
                _ => ttrpc::Code::UNKNOWN,
            },
            _ => ttrpc::Code::UNKNOWN,
        }
    }

    /// The message and every cause, as anyhow's `{:#}` prints them.
    pub fn chain(&self) -> String {
        ferry_oci::error::chain(self)
    }
}

impl From<Error> for ttrpc::Error {
    fn from(e: Error) -> Self {
        ttrpc::Error::RpcStatus(ttrpc::get_status(e.code(), e.chain()))
    }
}
