//! The one error type of steer-vector. Each variant says which gRPC code it maps to
//! (the services map it in one place, `steer_common::error`).

use std::path::PathBuf;

pub type Result<T, E = VectorError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum VectorError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    /// Not a vector file, or one that contradicts itself (INVALID_ARGUMENT).
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    /// Made for another model (FAILED_PRECONDITION).
    #[error("{field}: {message}")]
    WrongModel { field: String, message: String },
    /// No such vector in the library (NOT_FOUND).
    #[error("no vector `{0}` in the library")]
    NotFound(String),
    /// The library is full (RESOURCE_EXHAUSTED).
    #[error("vector library full: {0}")]
    Full(String),
}

impl VectorError {
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid { field: field.into(), message: message.into() }
    }

    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io { path: path.into(), source }
    }

    /// The same error with `prefix.` before its field (`vector.` + `tensors[0]`).
    pub fn within(self, prefix: &str) -> Self {
        match self {
            Self::Invalid { field, message } => Self::Invalid { field: format!("{prefix}.{field}"), message },
            Self::WrongModel { field, message } => Self::WrongModel { field: format!("{prefix}.{field}"), message },
            other => other,
        }
    }
}
