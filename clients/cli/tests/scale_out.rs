//! Scale-out over real processes on loopback: one activation worker and three generation
//! workers (`steer` binaries), health checks, 30 concurrent requests, a worker killed during the
//! run, and graceful SIGTERM.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use steer_client::{AdditionSpec, ClientError, RunOptions, SteerClient};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

fn tiny() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/tiny-gpt2")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

struct Worker {
    child: Child,
    url: String,
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(role: &str, id: &str) -> Worker {
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_steer"))
        .args([role, "--model"])
        .arg(tiny())
        .args(["--addr", &format!("127.0.0.1:{port}"), "--worker-id", id, "--grace-secs", "5"])
        .env("STEER_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn steer");
    Worker { child, url: format!("http://127.0.0.1:{port}") }
}

/// Polls grpc.health.v1 until the process reports SERVING (bounded).
async fn wait_serving(url: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(ch) = tonic::transport::Endpoint::from_shared(url.to_string()).unwrap().connect().await {
            let mut h = HealthClient::new(ch);
            if let Ok(r) = h.check(HealthCheckRequest { service: String::new() }).await {
                if r.into_inner().status == ServingStatus::Serving as i32 {
                    return;
                }
            }
        }
        assert!(Instant::now() < deadline, "{url} never became SERVING");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thirty_requests_over_three_generation_workers_survive_a_kill() {
    let act = spawn("activation-worker", "act");
    let mut gens: Vec<Worker> = (0..3).map(|i| spawn("generation-worker", &format!("gen-{i}"))).collect();
    wait_serving(&act.url).await;
    for g in &gens {
        wait_serving(&g.url).await;
    }
    let urls: Vec<String> = gens.iter().map(|g| g.url.clone()).collect();
    let client = std::sync::Arc::new(SteerClient::connect(&act.url, &urls).await.unwrap());
    let adds = vec![AdditionSpec::new(1, 4.0, "Love "), AdditionSpec::new(1, -4.0, "Hate")];
    let opts = RunOptions { n_tokens: 40, n_comparisons: 1, ..RunOptions::default() };

    let mut tasks = vec![];
    for i in 0..30u64 {
        let (client, adds) = (client.clone(), adds.clone());
        let opts = RunOptions { seed: i, ..opts.clone() };
        tasks.push(tokio::spawn(async move {
            tokio::time::timeout(Duration::from_secs(300), client.calculate_and_apply_steering_vector("I hate you because", &adds, &opts)).await
        }));
    }
    // Kill one generation worker while the requests are in flight.
    let victim = gens.remove(1);
    let mut h = HealthClient::new(tonic::transport::Endpoint::from_shared(victim.url.clone()).unwrap().connect().await.unwrap());
    let _ = h.check(HealthCheckRequest { service: String::new() }).await;
    drop(victim); // SIGKILL

    let mut workers = std::collections::BTreeSet::new();
    let (mut ok, mut failed) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            Err(_) => panic!("a request hung"),
            Ok(Ok(cmp)) => {
                ok += 1;
                assert_eq!(cmp.steered.len(), 1);
                assert_eq!(cmp.steered[0].token_ids.len(), 40);
                workers.insert(cmp.steered[0].worker.clone());
            }
            Ok(Err(ClientError::Status(s))) => {
                failed += 1;
                assert!(!s.message().is_empty(), "a failure must say why: {s:?}");
            }
            Ok(Err(e)) => panic!("unclear failure: {e}"),
        }
    }
    assert_eq!(ok + failed, 30);
    assert!(ok >= 20, "{ok} of 30 completed");
    assert!(workers.len() > 1, "served by {workers:?}");

    // Graceful shutdown: SIGTERM, exit 0.
    for w in gens.iter_mut().chain(std::iter::once(&mut { act })) {
        let pid = w.child.id().to_string();
        assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(s) = w.child.try_wait().unwrap() {
                break s;
            }
            assert!(Instant::now() < deadline, "worker did not exit after SIGTERM");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(status.success(), "{status:?}");
    }
}

fn scrape(port: u16) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

fn metric(text: &str, prefix: &str) -> f64 {
    text.lines().find(|l| l.starts_with(prefix)).and_then(|l| l.rsplit(' ').next()?.parse().ok()).unwrap_or_else(|| panic!("no {prefix} in\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_tokens_and_cache() {
    let (port, mport) = (free_port(), free_port());
    let child = Command::new(env!("CARGO_BIN_EXE_steer"))
        .args(["serve", "--model"])
        .arg(tiny())
        .args(["--addr", &format!("127.0.0.1:{port}"), "--metrics-addr", &format!("127.0.0.1:{mport}")])
        .env("STEER_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let w = Worker { child, url: format!("http://127.0.0.1:{port}") };
    wait_serving(&w.url).await;
    let client = SteerClient::connect(&w.url, std::slice::from_ref(&w.url)).await.unwrap();
    let adds = [AdditionSpec::new(1, 4.0, "Love "), AdditionSpec::new(1, -4.0, "Hate")];
    let opts = RunOptions { n_tokens: 7, n_comparisons: 2, ..RunOptions::default() };
    client.calculate_and_apply_steering_vector("I hate you because", &adds, &opts).await.unwrap();
    client.calculate_and_apply_steering_vector("I hate you because", &adds, &opts).await.unwrap();
    let bad = [AdditionSpec::new(9, 1.0, "x")];
    assert!(client.steering_tensors(&bad, &opts).await.is_err());
    let text = scrape(mport);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let ok = r#"steer_requests_total{code="Ok",method="GetSteeringTensors",service="steer.v1.ActivationService"}"#;
    assert_eq!(metric(&text, ok), 2.0);
    let bad = r#"steer_requests_total{code="InvalidArgument",method="GetSteeringTensors",service="steer.v1.ActivationService"}"#;
    assert_eq!(metric(&text, bad), 1.0);
    assert_eq!(metric(&text, "steer_tokens_generated_total"), 2.0 * 2.0 * 2.0 * 7.0);
    assert_eq!(metric(&text, "steer_activation_cache_misses"), 2.0);
    assert_eq!(metric(&text, "steer_activation_cache_hits"), 2.0);
    assert_eq!(metric(&text, "steer_time_to_first_token_seconds_count"), 2.0);
    assert_eq!(metric(&text, "steer_queue_depth"), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_the_services_without_proto_files() {
    use futures::StreamExt;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    let w = spawn("serve", "refl");
    wait_serving(&w.url).await;
    let ch = tonic::transport::Endpoint::from_shared(w.url.clone()).unwrap().connect().await.unwrap();
    let mut c = ServerReflectionClient::new(ch);
    let req = ServerReflectionRequest { host: String::new(), message_request: Some(MessageRequest::ListServices(String::new())) };
    let mut stream = c.server_reflection_info(tokio_stream::iter(vec![req])).await.unwrap().into_inner();
    let resp = stream.next().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else { panic!("{resp:?}") };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for want in ["steer.v1.ActivationService", "steer.v1.GenerationService", "grpc.health.v1.Health"] {
        assert!(names.iter().any(|n| n == want), "{want} not in {names:?}");
    }
}
