//! The web dashboard (`clients/web`), compiled into the binary and served by `steer serve` at
//! `/dashboard/index.html` on the gRPC port: the page calls the services over gRPC-Web from the
//! same origin, so no CORS is involved. A layer answers `/dashboard/*` before the gRPC-Web
//! translation (which refuses plain HTTP/1.1 requests) sees them.

use std::task::{Context, Poll};

use tonic::body::Body;
use tonic::codegen::{http, BoxFuture, Service};

const INDEX: &str = include_str!("../../../clients/web/index.html");
const APP: &str = include_str!("../../../clients/web/app.js");

fn page(path: &str) -> Option<http::Response<Body>> {
    let (ctype, body) = match path {
        "/dashboard" | "/dashboard/" | "/dashboard/index.html" => ("text/html; charset=utf-8", INDEX),
        "/dashboard/app.js" => ("text/javascript; charset=utf-8", APP),
        p if p.starts_with("/dashboard/") => ("text/plain", "not found: see /dashboard/index.html\n"),
        _ => return None,
    };
    let status = if ctype == "text/plain" { 404 } else { 200 };
    let resp = http::Response::builder()
        .status(status)
        .header("content-type", ctype)
        .header("cache-control", "no-cache")
        .body(Body::new(body.to_string()))
        .expect("static response");
    Some(resp)
}

/// Serves the dashboard's files; passes everything else to the inner service.
#[derive(Debug, Clone, Copy, Default)]
pub struct DashboardLayer;

impl<S> tower_layer::Layer<S> for DashboardLayer {
    type Service = DashboardService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        DashboardService { inner }
    }
}

#[derive(Debug, Clone)]
pub struct DashboardService<S> {
    inner: S,
}

impl<S, B> Service<http::Request<B>> for DashboardService<S>
where
    S: Service<http::Request<B>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.method() == http::Method::GET {
            if let Some(resp) = page(req.uri().path()) {
                return Box::pin(async move { Ok(resp) });
            }
        }
        let fut = self.inner.call(req);
        Box::pin(fut)
    }
}
