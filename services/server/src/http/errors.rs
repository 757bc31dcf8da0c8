//! The HTTP/JSON errors: OpenAI error objects with the HTTP status of the gRPC code, for the
//! OpenAI routes (fields by their OpenAI names) and the RPC mirrors (by the proto's).

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

/// An OpenAI error object with the HTTP status of the gRPC code; `param` names the field.
pub(super) fn openai_error(status: &Status) -> Response {
    error_naming(status, openai_param)
}

/// A field of the requests a completion became (GenerateSetup, ScoreRequest), by its name in the
/// OpenAI request.
fn openai_param(field: &str) -> String {
    let f = field.strip_prefix("setup.").unwrap_or(field);
    let f = f.strip_prefix("sampling.").unwrap_or(f);
    match f {
        "max_new_tokens" => "max_tokens".into(),
        "n_comparisons" => "n".into(),
        "top_logprobs" => "logprobs".into(),
        _ if f.starts_with("prompt") || f.starts_with("texts") => "prompt".into(),
        _ if f.starts_with("stop") => "stop".into(),
        _ if f.starts_with("tensors") => "steering".into(),
        _ if f.starts_with("vectors") => format!("steering.{f}"),
        _ => f.into(),
    }
}

/// A JSON body that does not parse: INVALID_ARGUMENT naming `body`.
pub(super) fn body_error(e: JsonRejection) -> Status {
    Status::invalid_argument(format!("body: {}", e.body_text()))
}

/// An error that ends a stream already under way (its status line is sent): the last message.
pub(super) fn stream_error(s: &Status) -> Value {
    json!({"error": {"message": s.message(), "code": format!("{:?}", s.code())}})
}
