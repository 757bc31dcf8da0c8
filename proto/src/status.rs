//! Statuses every steer service returns the same way.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// `INVALID_ARGUMENT` naming the offending field in the message and as a
/// `google.rpc.BadRequest` field violation in the status details.
pub fn invalid_argument(field: &str, reason: &str) -> Status {
    Status::with_error_details(Code::InvalidArgument, format!("{field}: {reason}"), ErrorDetails::with_bad_request_violation(field, reason))
}
