//! The services' one error type, and the one place where it (and every `ModelError`) becomes a
//! `tonic::Status`. Both workers return it, so a code means the same on either, and the client
//! keeps the `Status` it receives: codes survive every hop.

use steer_model::ModelError;
use steer_vector::VectorError;
use tonic::Status;

/// Everything a steer RPC can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// A request field is wrong: the field's path and why. INVALID_ARGUMENT, with a
    /// `google.rpc.BadRequest` field violation.
    #[error("{field}: {reason}")]
    InvalidArgument { field: String, reason: String },
    /// A limit of the worker (queue, concurrency) is reached: RESOURCE_EXHAUSTED; try later.
    #[error("{0}")]
    ResourceExhausted(String),
    /// The worker cannot serve now (loading, shutting down): UNAVAILABLE; try another.
    #[error("{0}")]
    Unavailable(String),
    /// The worker gave up on a request (its client stopped reading): ABORTED.
    #[error("{0}")]
    Aborted(String),
    /// The request needs what this worker does not have (a vector library): FAILED_PRECONDITION.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The client's deadline passed: DEADLINE_EXCEEDED.
    #[error("{0}")]
    DeadlineExceeded(String),
    /// The client's request stream failed: its own status, unchanged.
    #[error("request stream: {}", .0.message())]
    Stream(Status),
    #[error(transparent)]
    Model(#[from] ModelError),
    /// Vector files and the library: a bad file is INVALID_ARGUMENT naming the field, one for
    /// another model FAILED_PRECONDITION, an unknown name NOT_FOUND, a full library
    /// RESOURCE_EXHAUSTED.
    #[error(transparent)]
    Vector(#[from] VectorError),
    /// A bug or a lost task: INTERNAL.
    #[error("internal: {0}")]
    Internal(String),
}

impl ServiceError {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ServiceError::InvalidArgument { field: field.into(), reason: reason.into() }
    }
}

impl From<ServiceError> for Status {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::InvalidArgument { field, reason } | ServiceError::Model(ModelError::InvalidArgument { field, reason }) => {
                steer_proto::status::invalid_argument(&field, &reason)
            }
            ServiceError::ResourceExhausted(m) => Status::resource_exhausted(m),
            ServiceError::Unavailable(m) => Status::unavailable(m),
            ServiceError::DeadlineExceeded(m) => Status::deadline_exceeded(m),
            ServiceError::Aborted(m) => Status::aborted(m),
            ServiceError::FailedPrecondition(m) => Status::failed_precondition(m),
            ServiceError::Stream(s) => s,
            ServiceError::Model(ModelError::NotFound(m)) => Status::not_found(m),
            ServiceError::Model(e @ ModelError::Hub { .. }) => Status::unavailable(e.to_string()),
            ServiceError::Model(ModelError::Cancelled) => Status::cancelled("generation cancelled"),
            ServiceError::Model(
                e @ (ModelError::Candle(_)
                | ModelError::Io { .. }
                | ModelError::Config { .. }
                | ModelError::Weights { .. }
                | ModelError::Tokenizer(_)),
            ) => Status::internal(e.to_string()),
            ServiceError::Internal(m) => Status::internal(m),
            ServiceError::Vector(VectorError::Invalid { field, message }) => steer_proto::status::invalid_argument(&field, &message),
            ServiceError::Vector(e @ VectorError::WrongModel { .. }) => Status::failed_precondition(e.to_string()),
            ServiceError::Vector(e @ VectorError::NotFound(_)) => Status::not_found(e.to_string()),
            ServiceError::Vector(e @ VectorError::Full(_)) => Status::resource_exhausted(e.to_string()),
            ServiceError::Vector(e @ VectorError::Io { .. }) => Status::internal(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;
    use tonic_types::StatusExt;

    fn code(e: impl Into<ServiceError>) -> Code {
        Status::from(e.into()).code()
    }

    #[test]
    fn every_error_has_one_code() {
        let cases: Vec<(ServiceError, Code)> = vec![
            (ServiceError::invalid("setup.prompt", "empty"), Code::InvalidArgument),
            (ServiceError::ResourceExhausted("queue full".into()), Code::ResourceExhausted),
            (ServiceError::Unavailable("loading".into()), Code::Unavailable),
            (ServiceError::DeadlineExceeded("late".into()), Code::DeadlineExceeded),
            (ServiceError::Aborted("stalled".into()), Code::Aborted),
            (ServiceError::Stream(Status::aborted("client")), Code::Aborted),
            (ServiceError::Internal("lost".into()), Code::Internal),
            (ModelError::invalid("layer", "9").into(), Code::InvalidArgument),
            (ModelError::NotFound("gpt2@main".into()).into(), Code::NotFound),
            (ModelError::Hub { repo: "r".into(), revision: "main".into(), file: "f".into(), message: "offline".into() }.into(), Code::Unavailable),
            (ModelError::Cancelled.into(), Code::Cancelled),
            (ModelError::Tokenizer("bad".into()).into(), Code::Internal),
            (ModelError::Candle(candle_error()).into(), Code::Internal),
            (VectorError::invalid("data.digest", "altered").into(), Code::InvalidArgument),
            (VectorError::WrongModel { field: "setup.vectors[0].model.d_model".into(), message: "1600".into() }.into(), Code::FailedPrecondition),
            (VectorError::NotFound("love".into()).into(), Code::NotFound),
            (VectorError::Full("1024 vectors".into()).into(), Code::ResourceExhausted),
        ];
        for (e, want) in cases {
            let shown = e.to_string();
            assert_eq!(code(e), want, "{shown}");
        }
    }

    fn candle_error() -> steer_model::candle_core::Error {
        steer_model::candle_core::Error::Msg("boom".into())
    }

    #[test]
    fn invalid_arguments_name_the_field_in_message_and_details() {
        for e in [ServiceError::invalid("tensors[0].shape", "[1, 65]"), ModelError::invalid("tensors[0].shape", "[1, 65]").into()] {
            let s = Status::from(e);
            assert_eq!(s.message(), "tensors[0].shape: [1, 65]");
            let bad = s.get_details_bad_request().expect("BadRequest details");
            assert_eq!(bad.field_violations[0].field, "tensors[0].shape");
        }
    }
}
