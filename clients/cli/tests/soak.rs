//! The soak: real `steer` processes (1 activation worker, 3 generation workers) under 32
//! concurrent clients that mix valid requests with slow readers, cancellations, oversized
//! headers and dead connections, while a generation worker is killed and restarted and the
//! activation worker is restarted. STEER_SOAK_SECS sets its length (default 180 s).
//!
//! Asserts: every valid request completes or fails with a status, none past its deadline;
//! completed outputs equal a quiet run's for the same seeds; every worker's peak RSS stays under
//! its configured budget; no worker log holds a panic. Prints the figures.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use steer_client::v1::generation_service_client::GenerationServiceClient;
use steer_client::v1::{generate_request, GenerateRequest, GenerateSetup};
use steer_client::{AdditionSpec, ConnectOptions, RunOptions, SteerClient};
use tokio::io::AsyncWriteExt;
use tokio_stream::StreamExt;
use tonic::Code;

const CLIENTS: usize = 32;
const DEADLINE: Duration = Duration::from_secs(30);
const CACHE_MIB: u64 = 16;
const INFLIGHT_BYTES: u64 = 8 << 20;
const MAX_BATCH_TOKENS: u64 = 4096;

fn tiny() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/tiny-gpt2")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// What one worker may hold: a base for the process, the model and the tokenizer, plus every
/// configured budget (activation cache, tensor bytes in flight, KV positions of the tiny model:
/// 4 layers x K and V x 64 floats).
fn rss_budget() -> u64 {
    let base = 160 << 20;
    base + (CACHE_MIB << 20) + INFLIGHT_BYTES + MAX_BATCH_TOKENS * 4 * 2 * 64 * 4
}

/// A worker process on a fixed port, restartable; its log goes to a file.
struct Worker {
    role: &'static str,
    port: u16,
    log: PathBuf,
    child: Mutex<Option<Child>>,
}

impl Worker {
    fn new(role: &'static str, dir: &Path, i: usize) -> Arc<Self> {
        let port = free_port();
        let w = Arc::new(Self { role, port, log: dir.join(format!("{role}-{i}.log")), child: Mutex::new(None) });
        w.start();
        w
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn start(&self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_steer"))
            .args([self.role, "--model"])
            .arg(tiny())
            .args(["--addr", &format!("127.0.0.1:{}", self.port), "--grace-secs", "2"])
            .args(["--cache-mib", &CACHE_MIB.to_string(), "--max-inflight-bytes", &INFLIGHT_BYTES.to_string()])
            .args(["--max-batch-tokens", &MAX_BATCH_TOKENS.to_string(), "--stall-timeout-secs", "2", "--read-timeout-secs", "2"])
            .env("STEER_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn steer");
        *self.child.lock().unwrap() = Some(child);
    }

    fn pid(&self) -> Option<u32> {
        self.child.lock().unwrap().as_ref().map(Child::id)
    }

    /// SIGKILL (a crash) or SIGTERM (a drain), then wait for the process to end.
    fn stop(&self, kill: bool) {
        if let Some(mut c) = self.child.lock().unwrap().take() {
            if kill {
                let _ = c.kill();
            } else {
                let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
            }
            let _ = c.wait();
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stop(true);
    }
}

fn rss_bytes(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 = s.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb << 10)
}

async fn wait_serving(url: &str) {
    use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(ch) = tonic::transport::Endpoint::from_shared(url.to_string()).unwrap().connect().await {
            if let Ok(r) = HealthClient::new(ch).check(HealthCheckRequest { service: String::new() }).await {
                if r.into_inner().status == 1 {
                    return;
                }
            }
        }
        assert!(Instant::now() < deadline, "{url} never became SERVING");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The valid requests: (prompt, seed), each with the same love/hate steering.
fn valid_requests() -> Vec<(&'static str, u64)> {
    let prompts = ["I hate you because", "The weather today is", "My favourite food is a", "Yesterday I went to the"];
    prompts.iter().flat_map(|&p| [1u64, 2].map(move |s| (p, s))).collect()
}

fn adds() -> Vec<AdditionSpec> {
    vec![AdditionSpec::new(1, 4.0, "Love "), AdditionSpec::new(1, -4.0, "Hate")]
}

fn opts(seed: u64) -> RunOptions {
    RunOptions { n_tokens: 12, n_comparisons: 2, seed, ..RunOptions::default() }
}

type Outputs = Vec<Vec<u32>>;

async fn run_valid(client: &SteerClient, prompt: &str, seed: u64) -> Result<Outputs, Code> {
    match client.calculate_and_apply_steering_vector(prompt, &adds(), &opts(seed)).await {
        Ok(c) => {
            let mut rows: Vec<_> = c.unsteered.iter().chain(&c.steered).map(|r| ((r.steered, r.row), r.token_ids.clone())).collect();
            rows.sort();
            Ok(rows.into_iter().map(|(_, t)| t).collect())
        }
        Err(e) => Err(e.code()),
    }
}

#[derive(Default)]
struct Tally {
    valid_ok: usize,
    mismatched: Vec<String>,
    late: Vec<String>,
    codes: BTreeMap<String, usize>,
    latencies: Vec<Duration>,
    hostile: BTreeMap<&'static str, usize>,
}

fn setup(prompt: &str, max_new: u32) -> GenerateRequest {
    let s = GenerateSetup {
        prompt: prompt.into(),
        use_bos: true,
        n_comparisons: 2,
        max_new_tokens: max_new,
        sampling: Some(steer_client::v1::SamplingParameters::post()),
        ..Default::default()
    };
    GenerateRequest { msg: Some(generate_request::Msg::Setup(s)) }
}

/// One hostile act against generation worker `url`; what it was.
async fn hostile(kind: usize, url: &str) -> &'static str {
    let connect = || async { GenerationServiceClient::connect(url.to_string()).await.ok() };
    match kind {
        0 => {
            // A slow reader: one message, then nothing for longer than the stall timeout.
            if let Some(mut g) = connect().await {
                if let Ok(r) = g.generate(tokio_stream::iter(vec![setup("I hate you because", 200)])).await {
                    let mut s = r.into_inner();
                    let _ = s.next().await;
                    tokio::time::sleep(Duration::from_secs(3)).await;
                    while let Ok(Some(_)) = tokio::time::timeout(DEADLINE, s.next()).await {}
                }
            }
            "slow reader"
        }
        1 => {
            // A cancellation: one token, then gone.
            if let Some(mut g) = connect().await {
                if let Ok(r) = g.generate(tokio_stream::iter(vec![setup("The weather today is", 100)])).await {
                    let _ = r.into_inner().next().await;
                }
            }
            "cancelled"
        }
        2 => {
            // A header claiming 16 GiB.
            if let Some(mut g) = connect().await {
                let h = steer_client::v1::TensorHeader {
                    dtype: steer_client::v1::Dtype::F32 as i32,
                    shape: vec![67_108_864, 64],
                    total_bytes: 67_108_864 * 64 * 4,
                    ..Default::default()
                };
                let mut first = setup("I hate you because", 4);
                if let Some(generate_request::Msg::Setup(s)) = &mut first.msg {
                    s.n_tensors = 1;
                }
                let msgs = vec![first, GenerateRequest { msg: Some(generate_request::Msg::Tensor(h)) }];
                let _ = g.generate(tokio_stream::iter(msgs)).await;
            }
            "oversized header"
        }
        _ => {
            // A dead connection: half an HTTP/2 preface, then the socket is dropped.
            if let Ok(mut s) = tokio::net::TcpStream::connect(url.trim_start_matches("http://")).await {
                let _ = s.write_all(b"PRI * HTTP/2.0\r\n").await;
            }
            "dead connection"
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn soak_with_faults() {
    let secs: u64 = std::env::var("STEER_SOAK_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(180);
    let dir = tempfile::tempdir().unwrap();
    let act = Worker::new("activation-worker", dir.path(), 0);
    let gens: Vec<Arc<Worker>> = (0..3).map(|i| Worker::new("generation-worker", dir.path(), i)).collect();
    wait_serving(&act.url()).await;
    for g in &gens {
        wait_serving(&g.url()).await;
    }
    let urls: Vec<String> = gens.iter().map(|g| g.url()).collect();
    let copts = ConnectOptions { deadline: DEADLINE, retry_for: Duration::from_secs(20), ..ConnectOptions::default() };
    let client = Arc::new(SteerClient::connect_with(&act.url(), &urls, copts).await.unwrap());

    // The quiet run: what each valid request must produce.
    let mut quiet: HashMap<(&str, u64), Outputs> = HashMap::new();
    for (p, s) in valid_requests() {
        quiet.insert((p, s), run_valid(&client, p, s).await.expect("quiet run"));
    }
    let quiet = Arc::new(quiet);

    // RSS of every worker, sampled while the soak runs.
    let workers: Vec<Arc<Worker>> = std::iter::once(act.clone()).chain(gens.iter().cloned()).collect();
    let peak = Arc::new(Mutex::new(vec![0u64; workers.len()]));
    let end = Instant::now() + Duration::from_secs(secs);
    let sampler = {
        let (workers, peak) = (workers.clone(), peak.clone());
        tokio::spawn(async move {
            while Instant::now() < end {
                for (i, w) in workers.iter().enumerate() {
                    if let Some(rss) = w.pid().and_then(rss_bytes) {
                        let mut p = peak.lock().unwrap();
                        p[i] = p[i].max(rss);
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };

    // Faults: every 15 s a generation worker is killed (SIGKILL) and restarted; halfway, the
    // activation worker is drained (SIGTERM) and restarted.
    let chaos = {
        let (gens, act) = (gens.clone(), act.clone());
        tokio::spawn(async move {
            let mut faults = vec![];
            let (mut i, mut act_done, started) = (0, false, Instant::now());
            while Instant::now() + Duration::from_secs(15) < end {
                tokio::time::sleep(Duration::from_secs(15)).await;
                let g = &gens[i % gens.len()];
                g.stop(true);
                g.start();
                faults.push(format!("killed and restarted generation worker {}", i % gens.len()));
                i += 1;
                if !act_done && started.elapsed() > Duration::from_secs(secs / 2) {
                    act.stop(false);
                    act.start();
                    faults.push("drained and restarted the activation worker".into());
                    act_done = true;
                }
            }
            faults
        })
    };

    let tally = Arc::new(Mutex::new(Tally::default()));
    let mut tasks = vec![];
    for c in 0..CLIENTS {
        let (client, quiet, tally, urls) = (client.clone(), quiet.clone(), tally.clone(), urls.clone());
        tasks.push(tokio::spawn(async move {
            let reqs = valid_requests();
            let mut n = c;
            while Instant::now() < end {
                n += CLIENTS;
                // Three in four acts are valid requests; the rest hostile, in turn.
                if n % 4 != 0 {
                    let (p, s) = reqs[n % reqs.len()];
                    let t = Instant::now();
                    let r = tokio::time::timeout(DEADLINE + Duration::from_secs(30), run_valid(&client, p, s)).await;
                    let took = t.elapsed();
                    let mut tl = tally.lock().unwrap();
                    tl.latencies.push(took);
                    match r {
                        Err(_) => tl.late.push(format!("{p:?} seed {s}: no answer after {took:?}")),
                        Ok(Ok(out)) => {
                            tl.valid_ok += 1;
                            if out != quiet[&(p, s)] {
                                tl.mismatched.push(format!("{p:?} seed {s}"));
                            }
                        }
                        Ok(Err(code)) => *tl.codes.entry(format!("{code:?}")).or_default() += 1,
                    }
                    // The client's deadline bounds every call (retries included, with slack for
                    // the activation retries' backoff).
                    if took > DEADLINE * 2 + Duration::from_secs(20) {
                        tl.late.push(format!("{p:?} seed {s}: took {took:?}"));
                    }
                } else {
                    let kind = (n / 4) % 4;
                    let what = hostile(kind, &urls[n % urls.len()]).await;
                    *tally.lock().unwrap().hostile.entry(what).or_default() += 1;
                    // Paced, as real clients are: a refused act returns at once, and a tight
                    // loop of them would only measure how fast the refusal is.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let faults = chaos.await.unwrap();
    sampler.await.unwrap();

    let tl = tally.lock().unwrap();
    let mut lat = tl.latencies.clone();
    lat.sort();
    let p99 = lat.get(lat.len().saturating_sub(1).min(lat.len() * 99 / 100)).copied().unwrap_or_default();
    let peak = peak.lock().unwrap().clone();
    let budget = rss_budget();
    let mut report = vec![format!("soak: {secs} s, {CLIENTS} clients; faults: {faults:?}")];
    report.push(format!(
        "soak: valid requests {} completed, {} failed with a status {:?}; hostile acts {:?}",
        tl.valid_ok,
        tl.codes.values().sum::<usize>(),
        tl.codes,
        tl.hostile
    ));
    report.push(format!("soak: p99 latency of valid requests {:.2} s over {} requests", p99.as_secs_f64(), lat.len()));
    for (w, rss) in workers.iter().zip(&peak) {
        report.push(format!(
            "soak: {} on {}: peak RSS {:.0} MiB (budget {:.0} MiB)",
            w.role,
            w.port,
            *rss as f64 / 1048576.0,
            budget as f64 / 1048576.0
        ));
    }
    // Printed, and kept in artifacts/soak.txt (the test command shows it; cargo captures output).
    let text = report.join("\n") + "\n";
    print!("{text}");
    let artifacts = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../artifacts");
    let _ = std::fs::create_dir_all(&artifacts).and_then(|_| std::fs::write(artifacts.join("soak.txt"), &text));
    let panics: Vec<String> = workers
        .iter()
        .filter_map(|w| std::fs::read_to_string(&w.log).ok().filter(|l| l.contains("panicked")).map(|_| w.log.display().to_string()))
        .collect();
    assert!(tl.late.is_empty(), "requests past their deadline: {:?}", tl.late);
    assert!(tl.mismatched.is_empty(), "outputs differ from the quiet run: {:?}", tl.mismatched);
    assert!(tl.valid_ok > 0, "no valid request completed");
    assert!(peak.iter().all(|&r| r > 0 && r < budget), "peak RSS {peak:?} over the budget {budget}");
    assert!(panics.is_empty(), "panics in {panics:?}");
}
