//! HTTP/JSON mirrors of the RPCs, for curl: `POST /v1/rpc/steer.v1.SERVICE/METHOD` with the
//! request message in the proto3 JSON mapping (lowerCamelCase or proto names, enums by name,
//! bytes as base64; pbjson), answered through the same gates as gRPC. Unary methods answer one
//! JSON object; server-streaming ones a line of JSON per message (`application/x-ndjson`), or
//! Server-Sent Events when the request accepts `text/event-stream`. (`Generate`, whose request
//! is itself a stream, has `GenerateFromTensors` as its mirror.)

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::rejection::JsonRejection;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Json;
use serde::de::DeserializeOwned;
use serde::Serialize;
use steer_proto::v1::activation_service_server::ActivationService;
use steer_proto::v1::generation_service_server::GenerationService;
use steer_proto::v1::{
    ActivationServiceGetModelInfoRequest, ComputeVectorRequest, DeleteVectorRequest, GenerateFromTensorsRequest,
    GenerationServiceGetModelInfoRequest, GetActivationsRequest, GetSteeringTensorsRequest, GetVectorRequest, ListVectorsRequest, PutVectorRequest,
    ScoreRequest,
};
use tokio_stream::{Stream, StreamExt};
use tonic::Status;

use super::errors::{body_error, error_naming, stream_error};
use crate::services::Services;
use crate::sweeps::SweepService;

type Body_<T> = Result<Json<T>, JsonRejection>;

/// An error object whose `param` is the request field as the proto names it.
fn error(status: &Status) -> Response {
    error_naming(status, str::to_string)
}

#[allow(clippy::result_large_err)] // the error is the response itself, returned at once
fn parse<T>(body: Body_<T>) -> Result<T, Response> {
    body.map(|Json(t)| t).map_err(|e| error(&body_error(e)))
}

fn unary<T: Serialize>(r: Result<tonic::Response<T>, Status>) -> Response {
    match r {
        Ok(m) => Json(serde_json::to_value(m.into_inner()).unwrap_or_default()).into_response(),
        Err(s) => error(&s),
    }
}

/// A server stream as NDJSON, or SSE when asked for; an error mid-stream is its last line.
fn streamed<T, S>(r: Result<tonic::Response<S>, Status>, headers: &HeaderMap) -> Response
where
    T: Serialize,
    S: Stream<Item = Result<T, Status>> + Send + 'static,
{
    let stream = match r {
        Ok(s) => s.into_inner(),
        Err(s) => return error(&s),
    };
    let sse = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|a| a.contains("text/event-stream"));
    let lines = stream.map(move |m| {
        let line = match m {
            Ok(m) => serde_json::to_string(&m).unwrap_or_default(),
            Err(s) => stream_error(&s).to_string(),
        };
        Ok::<_, Infallible>(if sse { format!("data: {line}\n\n") } else { format!("{line}\n") })
    });
    let ctype = if sse { "text/event-stream" } else { "application/x-ndjson" };
    ([(header::CONTENT_TYPE, ctype)], Body::from_stream(lines)).into_response()
}

/// Registers `path` for a request type, handled by `f(service, request, headers)`.
fn route<S, T, F, Fut>(router: axum::Router, service: &S, path: &str, f: F) -> axum::Router
where
    S: Clone + Send + Sync + 'static,
    T: DeserializeOwned + Send + 'static,
    F: Fn(S, T, HeaderMap) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response> + Send,
{
    let service = service.clone();
    router.route(
        path,
        post(move |headers: HeaderMap, body: Body_<T>| {
            let (service, f) = (service.clone(), f.clone());
            async move {
                match parse(body) {
                    Ok(req) => f(service, req, headers).await,
                    Err(resp) => resp,
                }
            }
        }),
    )
}

/// The mirrors of the services this process serves.
pub(super) fn router(services: &Arc<Services>, sweeps: Option<SweepService>) -> axum::Router {
    let mut r = axum::Router::new();
    if services.cfg.role.activation() {
        r = route(r, services, "/v1/rpc/steer.v1.ActivationService/GetSteeringTensors", |s, req: GetSteeringTensorsRequest, h| async move {
            streamed(s.activation.get_steering_tensors(tonic::Request::new(req)).await, &h)
        });
        r = route(r, services, "/v1/rpc/steer.v1.ActivationService/GetActivations", |s, req: GetActivationsRequest, h| async move {
            streamed(s.activation.get_activations(tonic::Request::new(req)).await, &h)
        });
        r = route(r, services, "/v1/rpc/steer.v1.ActivationService/GetModelInfo", |s, req: ActivationServiceGetModelInfoRequest, _| async move {
            unary(ActivationService::get_model_info(&s.activation, tonic::Request::new(req)).await)
        });
        r = route(r, services, "/v1/rpc/steer.v1.ActivationService/ComputeVector", |s, req: ComputeVectorRequest, h| async move {
            streamed(s.activation.compute_vector(tonic::Request::new(req)).await, &h)
        });
        r = route(r, services, "/v1/rpc/steer.v1.ActivationService/PutVector", |s, req: PutVectorRequest, _| async move {
            unary(s.activation.put_vector(tonic::Request::new(req)).await)
        });
        r = route(r, services, "/v1/rpc/steer.v1.ActivationService/GetVector", |s, req: GetVectorRequest, _| async move {
            unary(s.activation.get_vector(tonic::Request::new(req)).await)
        });
        r = route(r, services, "/v1/rpc/steer.v1.ActivationService/ListVectors", |s, req: ListVectorsRequest, _| async move {
            unary(s.activation.list_vectors(tonic::Request::new(req)).await)
        });
        r = route(r, services, "/v1/rpc/steer.v1.ActivationService/DeleteVector", |s, req: DeleteVectorRequest, _| async move {
            unary(s.activation.delete_vector(tonic::Request::new(req)).await)
        });
    }
    if let Some(sweeps) = &sweeps {
        use steer_proto::v1::eval_service_server::EvalService;
        use steer_proto::v1::{CancelSweepRequest, ListSweepsRequest, StartSweepRequest, WatchSweepRequest};
        r = route(r, sweeps, "/v1/rpc/steer.v1.EvalService/StartSweep", |sw, req: StartSweepRequest, _| async move {
            unary(sw.start_sweep(tonic::Request::new(req)).await)
        });
        r = route(r, sweeps, "/v1/rpc/steer.v1.EvalService/WatchSweep", |sw, req: WatchSweepRequest, h| async move {
            streamed(sw.watch_sweep(tonic::Request::new(req)).await, &h)
        });
        r = route(r, sweeps, "/v1/rpc/steer.v1.EvalService/CancelSweep", |sw, req: CancelSweepRequest, _| async move {
            unary(sw.cancel_sweep(tonic::Request::new(req)).await)
        });
        r = route(r, sweeps, "/v1/rpc/steer.v1.EvalService/ListSweeps", |sw, req: ListSweepsRequest, _| async move {
            unary(sw.list_sweeps(tonic::Request::new(req)).await)
        });
    }
    if services.cfg.role.generation() {
        r = route(r, services, "/v1/rpc/steer.v1.GenerationService/GenerateFromTensors", |s, req: GenerateFromTensorsRequest, h| async move {
            streamed(s.generation.generate_from_tensors(tonic::Request::new(req)).await, &h)
        });
        r = route(r, services, "/v1/rpc/steer.v1.GenerationService/Score", |s, req: ScoreRequest, h| async move {
            streamed(s.generation.score(tonic::Request::new(req)).await, &h)
        });
        r = route(r, services, "/v1/rpc/steer.v1.GenerationService/GetModelInfo", |s, req: GenerationServiceGetModelInfoRequest, _| async move {
            unary(GenerationService::get_model_info(&s.generation, tonic::Request::new(req)).await)
        });
    }
    r
}
