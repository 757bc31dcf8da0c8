//! The generation service's errors, mapped to `tonic::Status` in one place.

use steer_model::ModelError;
use tonic::Status;

#[derive(Debug, thiserror::Error)]
pub enum GenerationError {
    /// A request field is wrong: the field's path and why.
    #[error("{field}: {reason}")]
    InvalidArgument { field: String, reason: String },
    #[error("queue full ({0} requests waiting)")]
    QueueFull(usize),
    #[error("request stream: {0}")]
    Stream(Status),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("generation workers are shut down")]
    Unavailable,
}

impl GenerationError {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        GenerationError::InvalidArgument { field: field.into(), reason: reason.into() }
    }
}

impl From<steer_activation::ActivationError> for GenerationError {
    fn from(e: steer_activation::ActivationError) -> Self {
        match e {
            steer_activation::ActivationError::InvalidArgument { field, reason } => GenerationError::InvalidArgument { field, reason },
            steer_activation::ActivationError::Model(m) => GenerationError::Model(m),
            other => GenerationError::Model(ModelError::invalid("request", other.to_string())),
        }
    }
}

impl From<GenerationError> for Status {
    fn from(e: GenerationError) -> Self {
        match e {
            GenerationError::InvalidArgument { field, reason } => steer_proto::status::invalid_argument(&field, &reason),
            GenerationError::Model(ModelError::InvalidArgument { field, reason }) => {
                steer_proto::status::invalid_argument(&field, &reason)
            }
            GenerationError::Model(ModelError::Cancelled) => Status::cancelled("generation cancelled"),
            GenerationError::QueueFull(_) => Status::resource_exhausted(e.to_string()),
            GenerationError::Stream(s) => s,
            GenerationError::Unavailable => Status::unavailable(e.to_string()),
            other => Status::internal(other.to_string()),
        }
    }
}
