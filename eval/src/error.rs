//! The one error of a call to the steer services, over gRPC (`steer-client`) or in process
//! (the server's sweep jobs): the server's status with its code kept, or what went wrong on
//! this side. `steer-client` re-exports it as `ClientError`.

use tonic::Status;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server's status, code kept. Shown as one line, `invalid argument: FIELD: WHY` (not
    /// a source: the status's own text would print it again).
    #[error("{}: {}", code_name(.0.code()), .0.message())]
    Status(Status),
    /// Nothing answered at the address (refused, no such host, connect timeout).
    #[error("cannot reach {endpoint}: {message}")]
    Connect { endpoint: String, message: String },
    #[error("protocol: {0}")]
    Protocol(String),
    /// A value given to the client (e.g. an addition spec) does not parse.
    #[error("{0}")]
    Parse(String),
    /// A vector file that does not read, or is for another model.
    #[error("{0}")]
    Vector(String),
}

impl From<Status> for Error {
    fn from(s: Status) -> Self {
        Error::Status(s)
    }
}

/// A code as words: `InvalidArgument` -> `invalid argument`.
pub fn code_name(code: tonic::Code) -> String {
    let mut out = String::new();
    for (i, c) in format!("{code:?}").chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push(' ');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

impl Error {
    /// The gRPC code: the server's own for a status, UNAVAILABLE for a failed connection.
    pub fn code(&self) -> tonic::Code {
        match self {
            Error::Status(s) => s.code(),
            Error::Connect { .. } => tonic::Code::Unavailable,
            Error::Protocol(_) => tonic::Code::Internal,
            Error::Parse(_) => tonic::Code::InvalidArgument,
            Error::Vector(_) => tonic::Code::FailedPrecondition,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
