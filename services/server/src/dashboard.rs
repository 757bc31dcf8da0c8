//! The web dashboard (`clients/web`), compiled into the binary and served by `steer serve` at
//! `/dashboard/index.html` on the gRPC port: the page calls the services over gRPC-Web from the
//! same origin, so no CORS is involved. A layer answers `/dashboard/*` before the gRPC-Web
//! translation (which refuses plain HTTP/1.1 requests) sees them.

use tonic::body::Body;
use tonic::codegen::http;

use crate::answer_early::AnswerEarlyLayer;

const INDEX: &str = include_str!("../../../clients/web/index.html");
const APP: &str = include_str!("../../../clients/web/app.js");
/// Field numbers generated from proto/ (scripts/gen_web_fields.py).
const FIELDS: &str = include_str!("../../../clients/web/fields.js");

fn page(path: &str) -> Option<http::Response<Body>> {
    let (ctype, body) = match path {
        "/dashboard" | "/dashboard/" | "/dashboard/index.html" => ("text/html; charset=utf-8", INDEX),
        "/dashboard/app.js" => ("text/javascript; charset=utf-8", APP),
        "/dashboard/fields.js" => ("text/javascript; charset=utf-8", FIELDS),
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

/// Serves the dashboard's files; passes everything else on.
pub fn layer() -> AnswerEarlyLayer {
    AnswerEarlyLayer::new(|req| if req.method == http::Method::GET { page(req.uri.path()) } else { None })
}
