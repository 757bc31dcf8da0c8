//! `/metrics`, `/healthz` (liveness) and `/readyz` (readiness) over HTTP/1.1 (hyper), guarded like any port facing a network: a connection must
//! send its request head within `HEAD_TIMEOUT` and finish within `CONN_TIMEOUT`, at most
//! `MAX_CONNS` are served at once (more are closed at once), and accept errors (out of file
//! descriptors) back off instead of spinning.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::Semaphore;

use crate::Metrics;

const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
const CONN_TIMEOUT: Duration = Duration::from_secs(15);
const MAX_CONNS: usize = 64;

type Refresh = Arc<dyn Fn() + Send + Sync>;
type Ready = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// What the endpoint answers besides the metrics: `refresh` runs before each scrape (to copy
/// gauges such as cache counters); `ready` says whether the process takes work (`/readyz`),
/// and if not, why.
#[derive(Clone)]
pub struct Probes {
    pub refresh: Refresh,
    pub ready: Ready,
}

impl Probes {
    pub fn new(refresh: impl Fn() + Send + Sync + 'static, ready: impl Fn() -> Result<(), String> + Send + Sync + 'static) -> Self {
        Self { refresh: Arc::new(refresh), ready: Arc::new(ready) }
    }
}

impl Default for Probes {
    fn default() -> Self {
        Self::new(|| {}, || Ok(()))
    }
}

fn respond(req: &Request<hyper::body::Incoming>, metrics: &Metrics, probes: &Probes) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, ctype: &str, body: String| {
        Response::builder().status(status).header("content-type", ctype).body(Full::new(Bytes::from(body))).expect("static response")
    };
    match (req.method(), req.uri().path()) {
        // Liveness: this loop answers. Nothing else is asked, so a busy engine (or one draining
        // its streams) is never taken for a dead one; the watchdog acts through readiness.
        (&Method::GET | &Method::HEAD, "/healthz") => reply(StatusCode::OK, "text/plain", "ok\n".into()),
        (&Method::GET | &Method::HEAD, "/readyz") => match (probes.ready)() {
            Ok(()) => reply(StatusCode::OK, "text/plain", "ready\n".into()),
            Err(why) => reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", format!("not ready: {why}\n")),
        },
        (&Method::GET | &Method::HEAD, "/metrics") => {
            (probes.refresh)();
            // hyper sends no body for HEAD, but the same headers (content-length included).
            reply(StatusCode::OK, "text/plain; version=0.0.4", metrics.render())
        }
        (_, "/metrics") => {
            let mut r = reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "GET or HEAD\n".into());
            r.headers_mut().insert("allow", "GET, HEAD".parse().expect("header"));
            r
        }
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "see /metrics, /healthz, /readyz\n".into()),
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `addr` until the runtime ends.
pub async fn serve_metrics(addr: SocketAddr, metrics: Arc<Metrics>, probes: Probes) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let slots = Arc::new(Semaphore::new(MAX_CONNS));
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(10);
        loop {
            let sock = match listener.accept().await {
                Ok((sock, _)) => {
                    backoff = Duration::from_millis(10);
                    sock
                }
                Err(e) => {
                    tracing::warn!(error = %e, ?backoff, "metrics: accept failed; backing off");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                continue; // too many open: close this one at once
            };
            let (metrics, probes) = (metrics.clone(), probes.clone());
            tokio::spawn(async move {
                let _slot = slot;
                let service = hyper::service::service_fn(move |req| {
                    let resp = respond(&req, &metrics, &probes);
                    async move { Ok::<_, Infallible>(resp) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEAD_TIMEOUT)
                    .keep_alive(false)
                    .serve_connection(TokioIo::new(sock), service);
                let _ = tokio::time::timeout(CONN_TIMEOUT, conn).await;
            });
        }
    });
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn ask(addr: SocketAddr, request: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn get_and_head_answer_and_idle_sockets_block_nobody() {
        let m = Metrics::new();
        m.tokens_generated.inc_by(7);
        let addr = serve_metrics("127.0.0.1:0".parse().unwrap(), m, Probes::default()).await.unwrap();
        // Idle connections that never send a byte hold a slot each, not the server.
        let mut idle = vec![];
        for _ in 0..32 {
            idle.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        }
        let get = ask(addr, "GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n").await;
        assert!(get.starts_with("HTTP/1.1 200") && get.contains("steer_tokens_generated_total 7"), "{get}");
        let head = ask(addr, "HEAD /metrics HTTP/1.1\r\nhost: x\r\n\r\n").await;
        assert!(head.starts_with("HTTP/1.1 200") && !head.contains("steer_tokens_generated_total"), "{head}");
        assert!(ask(addr, "POST /metrics HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n").await.starts_with("HTTP/1.1 405"));
        assert!(ask(addr, "GET /other HTTP/1.1\r\nhost: x\r\n\r\n").await.starts_with("HTTP/1.1 404"));
    }

    #[tokio::test]
    async fn liveness_answers_while_readiness_says_why_not() {
        let ready = Arc::new(std::sync::Mutex::new(Err("loading the model".to_string())));
        let r = ready.clone();
        let probes = Probes::new(|| {}, move || r.lock().unwrap().clone());
        let addr = serve_metrics("127.0.0.1:0".parse().unwrap(), Metrics::new(), probes).await.unwrap();
        assert!(ask(addr, "GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n").await.starts_with("HTTP/1.1 200"));
        let not = ask(addr, "GET /readyz HTTP/1.1\r\nhost: x\r\n\r\n").await;
        assert!(not.starts_with("HTTP/1.1 503") && not.contains("not ready: loading the model"), "{not}");
        *ready.lock().unwrap() = Ok(());
        assert!(ask(addr, "GET /readyz HTTP/1.1\r\nhost: x\r\n\r\n").await.starts_with("HTTP/1.1 200"));
        assert!(ask(addr, "GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n").await.starts_with("HTTP/1.1 200"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_is_closed() {
        let addr = serve_metrics("127.0.0.1:0".parse().unwrap(), Metrics::new(), Probes::default()).await.unwrap();
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut buf = vec![];
        // With time paused, the server's head timeout fires as soon as everything is idle.
        let n = tokio::time::timeout(Duration::from_secs(60), s.read_to_end(&mut buf)).await.expect("closed by the server").unwrap_or(0);
        assert!(n == 0 || String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 408"), "{}", String::from_utf8_lossy(&buf));
    }
}
