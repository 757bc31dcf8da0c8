//! The HTTP/JSON errors: OpenAI error objects with the HTTP status of the gRPC code, for both
//! the completions route and the RPC mirrors (each names the offending field its own way).

use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use tonic::{Code, Status};

/// The same, with `param` the field as `name` spells it.
pub(super) fn error_naming(status: &Status, name: fn(&str) -> String) -> Response {
    let (http, kind) = match status.code() {
        Code::InvalidArgument | Code::OutOfRange | Code::FailedPrecondition => (StatusCode::BAD_REQUEST, "invalid_request_error"),
        Code::Unauthenticated => (StatusCode::UNAUTHORIZED, "authentication_error"),
        Code::PermissionDenied => (StatusCode::FORBIDDEN, "permission_error"),
        Code::NotFound => (StatusCode::NOT_FOUND, "not_found_error"),
        Code::ResourceExhausted => (StatusCode::TOO_MANY_REQUESTS, "rate_limit_error"),
        Code::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "service_unavailable"),
        Code::DeadlineExceeded => (StatusCode::GATEWAY_TIMEOUT, "timeout"),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "server_error"),
    };
    let param = (status.code() == Code::InvalidArgument).then(|| name(status.message().split(':').next().unwrap_or_default()));
    let body = json!({"error": {"message": status.message(), "type": kind, "param": param, "code": format!("{:?}", status.code())}});
    (http, Json(body)).into_response()
}

/// A JSON body that does not parse: INVALID_ARGUMENT naming `body`.
pub(super) fn body_error(e: JsonRejection) -> Status {
    Status::invalid_argument(format!("body: {}", e.body_text()))
}

/// An error that ends a stream already under way (its status line is sent): the last message.
pub(super) fn stream_error(s: &Status) -> Value {
    json!({"error": {"message": s.message(), "code": format!("{:?}", s.code())}})
}
