//! The activation service's errors, mapped to `tonic::Status` in one place.

use steer_model::ModelError;
use tonic::Status;

#[derive(Debug, thiserror::Error)]
pub enum ActivationError {
    /// A request field is wrong: the field's path and why.
    #[error("{field}: {reason}")]
    InvalidArgument { field: String, reason: String },
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("worker task failed: {0}")]
    Internal(String),
}

impl ActivationError {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ActivationError::InvalidArgument { field: field.into(), reason: reason.into() }
    }
}

impl From<ActivationError> for Status {
    fn from(e: ActivationError) -> Self {
        match e {
            ActivationError::InvalidArgument { field, reason } => steer_proto::status::invalid_argument(&field, &reason),
            ActivationError::Model(ModelError::InvalidArgument { field, reason }) => {
                steer_proto::status::invalid_argument(&field, &reason)
            }
            ActivationError::Model(ModelError::NotFound(m)) => Status::not_found(m),
            ActivationError::Model(ModelError::Cancelled) => Status::cancelled("cancelled"),
            other => Status::internal(other.to_string()),
        }
    }
}
