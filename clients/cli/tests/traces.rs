//! `--otlp-endpoint`: a client run over split workers (real processes on loopback) exports one
//! trace: the client's `steer.run` span, and the `rpc` spans of the activation and generation
//! workers as its descendants (W3C trace context carried in the calls' metadata), received by
//! an OTLP/gRPC collector (a minimal one, here in the test).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};

/// (service.name, span name, trace id, parent span id, span id) of every span received.
type Spans = Arc<Mutex<Vec<(String, String, Vec<u8>, Vec<u8>, Vec<u8>)>>>;

#[derive(Clone, Default)]
struct Collector(Spans);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(&self, req: tonic::Request<ExportTraceServiceRequest>) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.0.lock().unwrap();
        for rs in req.into_inner().resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|a| a.key == "service.name")
                .and_then(|a| a.value.as_ref())
                .map(|v| format!("{:?}", v.value))
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for s in ss.spans {
                    spans.push((service.clone(), s.name, s.trace_id, s.parent_span_id, s.span_id));
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

fn tiny() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/tiny-gpt2")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn worker(role: &str, port: u16, otlp: &str, extra: &[&str]) -> Proc {
    Proc(
        Command::new(env!("CARGO_BIN_EXE_steer"))
            .args([role, "--model"])
            .arg(tiny())
            .args(["--addr", &format!("127.0.0.1:{port}"), "--otlp-endpoint", otlp, "--log", "warn"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn steer"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_is_one_trace_across_the_client_and_both_workers() {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let otlp = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let (act_port, gen_port) = (free_port(), free_port());
    let act = worker("activation-worker", act_port, &otlp, &[]);
    let gen = worker("generation-worker", gen_port, &otlp, &["--vector-source", &format!("http://127.0.0.1:{act_port}")]);
    let (act_url, gen_url) = (format!("http://127.0.0.1:{act_port}"), format!("http://127.0.0.1:{gen_port}"));

    // `steer run` against the two workers (it waits for them: retried until they serve).
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (a, g, o) = (act_url.clone(), gen_url.clone(), otlp.clone());
        let out = tokio::task::spawn_blocking(move || {
            Command::new(env!("CARGO_BIN_EXE_steer"))
                .args(["run", "--activation-url", &a, "--generation-url", &g, "--otlp-endpoint", &o])
                .args(["--prompt", "I hate you because", "--add", "1:4:Love", "--add", "1:-4:Hate", "--tokens", "3", "--comparisons", "1"])
                .output()
        })
        .await
        .unwrap()
        .unwrap();
        if out.status.success() {
            break;
        }
        assert!(Instant::now() < deadline, "steer run never succeeded: {}", String::from_utf8_lossy(&out.stderr));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // SIGTERM: the workers drain, exit, and flush their spans.
    for p in [&act, &gen] {
        let _ = Command::new("kill").args(["-TERM", &p.0.id().to_string()]).status();
    }
    for mut p in [act, gen] {
        tokio::task::spawn_blocking(move || p.0.wait()).await.unwrap().unwrap();
    }

    let spans = collector.0.lock().unwrap().clone();
    server.abort();
    let runs: Vec<_> = spans.iter().filter(|s| s.1 == "steer.run").collect();
    let run = runs.last().unwrap_or_else(|| panic!("no steer.run span among {:?}", spans.iter().map(|s| (&s.0, &s.1)).collect::<Vec<_>>()));
    assert!(run.0.contains("steer-client"), "{run:?}");
    let in_trace: Vec<_> = spans.iter().filter(|s| s.2 == run.2 && s.1 == "rpc").collect();
    for service in ["steer-activation", "steer-generation"] {
        let rpc: Vec<_> = in_trace.iter().filter(|s| s.0.contains(service)).collect();
        assert!(!rpc.is_empty(), "no rpc span of {service} in the run's trace: {:?}", spans.iter().map(|s| (&s.0, &s.1)).collect::<Vec<_>>());
        assert!(rpc.iter().all(|s| !s.3.is_empty()), "{service}'s rpc spans have a parent");
    }
    // The calls the client made are children of its span.
    assert!(in_trace.iter().any(|s| s.3 == run.4), "an rpc span is a child of steer.run");
}
