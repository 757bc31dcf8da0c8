//! HTTP/JSON on the service port, for curl and OpenAI SDK users: OpenAI-compatible completions
//! ([`openai`]), JSON mirrors of the RPCs ([`rpc`]), their errors ([`errors`]), and the layer
//! that sends `/v1/...` here before gRPC-Web sees it, behind the same bearer tokens as gRPC.

mod errors;
mod models;
pub mod openai;
pub mod rpc;
mod tokenizer;

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::Json;

use crate::auth::Tokens;
use crate::services::Services;
use crate::sweeps::SweepService;

/// The HTTP/JSON routes: completions ([`openai`]), models ([`models`]), the tokenizer
/// ([`tokenizer`]) and the RPC mirrors ([`rpc`]).
fn router(services: Arc<Services>, sweeps: Option<SweepService>) -> axum::Router {
    use axum::routing::{get, post};
    let mirrors = rpc::router(&services, sweeps);
    let (s1, s2, s3, s4, s5) = (services.clone(), services.clone(), services.clone(), services.clone(), services);
    axum::Router::new()
        .route("/v1/completions", post(move |body: Result<Json<serde_json::Value>, JsonRejection>| openai::completions(s1.clone(), body)))
        .route("/v1/models", get(move || models::list(s2.clone())))
        .route("/tokenizer_info", get(move || tokenizer::info(s3.clone())))
        .route("/tokenize", post(move |body| tokenizer::tokenize(s4.clone(), body)))
        .route("/detokenize", post(move |body| tokenizer::detokenize(s5.clone(), body)))
        .merge(mirrors)
}

/// Paths the HTTP/JSON routes answer (the rest is gRPC, gRPC-Web and the dashboard).
fn is_http_json(path: &str) -> bool {
    path.starts_with("/v1/") || matches!(path, "/tokenize" | "/detokenize" | "/tokenizer_info")
}

/// Sends `/v1/...` (completions and the RPC mirrors) to the HTTP/JSON routes before the gRPC-Web translation (which refuses plain
/// HTTP/1.1 requests) sees it; everything else goes on to the gRPC services.
/// The routes are behind the same bearer tokens as gRPC (the OpenAI SDK's `api_key`).
#[derive(Clone)]
pub struct HttpJsonLayer {
    router: axum::Router,
    tokens: Tokens,
}

pub fn layer(services: Arc<Services>, sweeps: Option<SweepService>) -> HttpJsonLayer {
    let tokens = Tokens::new(&services.cfg.security.tokens);
    HttpJsonLayer { router: router(services, sweeps), tokens }
}

impl<S> tower_layer::Layer<S> for HttpJsonLayer {
    type Service = HttpJson<S>;
    fn layer(&self, inner: S) -> Self::Service {
        HttpJson { inner, router: self.router.clone(), tokens: self.tokens.clone() }
    }
}

#[derive(Clone)]
pub struct HttpJson<S> {
    inner: S,
    router: axum::Router,
    tokens: Tokens,
}

impl<S, B> tower_service::Service<axum::http::Request<B>> for HttpJson<S>
where
    S: tower_service::Service<axum::http::Request<B>, Response = axum::http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = axum::http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = tonic::codegen::BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: axum::http::Request<B>) -> Self::Future {
        if is_http_json(req.uri().path()) {
            let (parts, body) = req.into_parts();
            if let Err(status) = self.tokens.check(&parts) {
                let resp = errors::openai_error(&status).map(tonic::body::Body::new);
                return Box::pin(async move { Ok(resp) });
            }
            let req = axum::http::Request::from_parts(parts, body);
            let mut router = self.router.clone();
            return Box::pin(async move {
                let resp = match tower_service::Service::call(&mut router, req).await {
                    Ok(r) => r,
                    Err(never) => match never {},
                };
                Ok(resp.map(tonic::body::Body::new))
            });
        }
        Box::pin(self.inner.call(req))
    }
}
