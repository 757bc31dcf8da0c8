//! The engine's one error type.

use std::path::PathBuf;

/// Everything that can go wrong inside `steer-model`.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("tensor error: {0}")]
    Candle(#[from] candle_core::Error),

    #[error("i/o error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("invalid config {path}: {message}")]
    Config { path: PathBuf, message: String },

    #[error("invalid weights {path}: {message}")]
    Weights { path: PathBuf, message: String },

    #[error("tokenizer: {0}")]
    Tokenizer(String),

    /// The model could not be found; the message names what was looked for, and where.
    #[error("model not found: {0}")]
    NotFound(String),

    #[error("hub download of {repo}@{revision}/{file} failed: {message}")]
    Hub { repo: String, revision: String, file: String, message: String },

    /// A caller passed an argument the engine cannot honour (field, reason).
    #[error("invalid argument `{field}`: {reason}")]
    InvalidArgument { field: String, reason: String },

    /// The caller asked generation to stop (client gone, deadline).
    #[error("generation cancelled")]
    Cancelled,
}

impl ModelError {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ModelError::InvalidArgument { field: field.into(), reason: reason.into() }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ModelError::Io { path: path.into(), source }
    }
}

impl From<steer_hooks::ParseError> for ModelError {
    fn from(e: steer_hooks::ParseError) -> Self {
        ModelError::invalid("hook", e.to_string())
    }
}

impl From<steer_hooks::LayerError> for ModelError {
    fn from(e: steer_hooks::LayerError) -> Self {
        ModelError::invalid("layer", e.to_string())
    }
}

pub type Result<T, E = ModelError> = std::result::Result<T, E>;
