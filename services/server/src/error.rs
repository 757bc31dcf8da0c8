//! What can end a serving process.

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("binding {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("reading {path}: {source}")]
    File {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("configuration: {0}")]
    Config(String),
    #[error("serving: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("loading the model: {0}")]
    Load(#[from] steer_model::ModelError),
    #[error("the model loader failed: {0}")]
    Loader(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}
