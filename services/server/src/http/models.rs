//! `GET /v1/models`: the served model (unsteered), each steering profile and each library
//! vector by name, as OpenAI lists models (`root`/`parent` as vLLM adds them, and `steering`);
//! and the selection of a profile by a request's `model` ([`select`]).

use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use steer_proto::v1::GetVectorRequest;
use tonic::{Code, Status};

use crate::profiles::Profile;
use crate::services::Services;
use crate::steering::{Steering, SteeringVectorRef};

fn created() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// OpenAI's answer to a model it does not serve.
pub(super) fn model_not_found(name: &str) -> Response {
    let body = json!({"error": {"message": format!("The model `{name}` does not exist: GET /v1/models lists the served model and its steering profiles"),
                                "type": "invalid_request_error", "param": "model", "code": "model_not_found"}});
    (StatusCode::NOT_FOUND, Json(body)).into_response()
}

/// What `model` selects: `None` for the served model (or no model given), else a profile
/// (flags first, then library vectors by name).
#[allow(clippy::result_large_err)] // the error is the response itself
pub(super) async fn select(services: &Services, model: Option<&str>) -> Result<Option<Profile>, Response> {
    let Some(name) = model else { return Ok(None) };
    if services.served_model_name().as_deref() == Some(name) {
        return Ok(None);
    }
    if let Some(p) = services.cfg.profiles.iter().find(|p| p.name == name) {
        return Ok(Some(p.clone()));
    }
    if let Some(api) = services.activation_api() {
        match api.get_vector(GetVectorRequest { r#ref: name.to_string() }).await {
            Ok(_) => {
                let v = SteeringVectorRef {
                    name: name.to_string(),
                    scale: None,
                    first_layer: None,
                    last_layer: None,
                    force_model: false,
                    op: None,
                    window: None,
                };
                return Ok(Some(Profile { name: name.to_string(), steering: Steering { vectors: vec![v], ..Default::default() }, file: None }));
            }
            // Not a vector, or no library to look in.
            Err(s) if matches!(s.code(), Code::NotFound | Code::InvalidArgument | Code::FailedPrecondition) => {}
            Err(s) => return Err(super::errors::openai_error(&s)),
        }
    }
    Err(model_not_found(name))
}

/// `GET /v1/models`.
pub(super) async fn list(services: Arc<Services>) -> Response {
    let Some(base) = services.served_model_name() else {
        return super::errors::openai_error(&Status::unavailable("the model is still loading"));
    };
    let now = created();
    let entry = |id: &str, parent: Option<&str>, steering: Value| json!({"id": id, "object": "model", "created": now, "owned_by": "steer", "root": base, "parent": parent, "steering": steering});
    let mut data = vec![entry(&base, None, Value::Null)];
    for p in &services.cfg.profiles {
        data.push(entry(&p.name, Some(&base), p.describe()));
    }
    if let Some(api) = services.activation_api() {
        // Library vectors by name (a profile of the same name shadows one).
        if let Ok(list) = api.list_vectors().await {
            for v in list.vectors {
                if v.name.is_empty() || v.name == base || services.cfg.profiles.iter().any(|p| p.name == v.name) {
                    continue;
                }
                data.push(entry(&v.name, Some(&base), json!({"vectors": [{"name": v.name, "digest": v.digest}]})));
            }
        }
    }
    Json(json!({"object": "list", "data": data})).into_response()
}
