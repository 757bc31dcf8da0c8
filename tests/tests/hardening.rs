//! What a hostile or careless client tried, as regression tests: TLS and bearer tokens,
//! bounded memory and concurrency, silent streams, what callers may see, and a client that
//! survives dead workers.

use std::time::Duration;

use futures::StreamExt;
use steer_client::v1::activation_service_client::ActivationServiceClient;
use steer_client::v1::generation_service_client::GenerationServiceClient;
use steer_client::v1::{
    generate_request, GenerateRequest, GenerateSetup, GenerationServiceGetModelInfoRequest, GetActivationsRequest, Hook, HookPoint, TensorChunk,
};
use steer_client::{AdditionSpec, ConnectOptions, RunOptions, SteerClient};
use steer_e2e::{engine, start_with, tiny_dir};
use steer_server::{LocalServer, ServeConfig, TlsFiles};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

fn adds() -> Vec<AdditionSpec> {
    vec![AdditionSpec::new(1, 4.0, "Love "), AdditionSpec::new(1, -4.0, "Hate")]
}

fn quick() -> RunOptions {
    RunOptions { n_tokens: 4, n_comparisons: 1, ..RunOptions::default() }
}

/// A CA, a server certificate for `localhost` and a client certificate, all signed by the CA (PEM).
struct Pki {
    ca: String,
    server: (String, String),
    client: (String, String),
}

fn pki() -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(vec![]).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf = |names: Vec<String>| {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(names).unwrap().signed_by(&key, &ca, &ca_key).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    Pki { server: leaf(vec!["localhost".into()]), client: leaf(vec!["steer-client".into()]), ca: ca.pem() }
}

async fn health(url: &str, opts: &ConnectOptions) -> Result<i32, tonic::Status> {
    let ch = opts.channel(url).unwrap();
    let mut h = tonic_health::pb::health_client::HealthClient::new(ch);
    Ok(h.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await?.into_inner().status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_bearer_tokens_guard_every_service_but_health() {
    let p = pki();
    let token = "s3cret-token-0123456789".to_string();
    let mut cfg = ServeConfig::default();
    cfg.security.tls = Some(TlsFiles { cert_pem: p.server.0.clone().into(), key_pem: p.server.1.clone().into(), client_ca_pem: None });
    cfg.security.tokens = vec![token.clone(), "another-token-abcdefgh".into()];
    let server = LocalServer::start(engine(), cfg).await.unwrap();
    let url = server.url();
    assert!(url.starts_with("https://localhost:"));
    let tls = ConnectOptions { tls_ca_pem: Some(p.ca.clone().into()), ..ConnectOptions::default() };

    // Health answers probes without a token; the services do not.
    assert_eq!(health(&url, &tls).await.unwrap(), 1, "SERVING");
    let anon = SteerClient::connect_with(&url, std::slice::from_ref(&url), tls.clone()).await.unwrap();
    let err = anon.calculate_and_apply_steering_vector("I hate you because", &adds(), &quick()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err}");
    let err = anon.generate("I hate you because", &[], &quick(), |_| {}).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "not retried as a worker failure: {err}");
    let wrong = ConnectOptions { token: Some("s3cret-token-0123456788".into()), ..tls.clone() };
    let err = SteerClient::connect_with(&url, std::slice::from_ref(&url), wrong).await.unwrap().activation_info().await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);

    // The right token over TLS runs the experiment; a plaintext client gets nowhere.
    let ok = SteerClient::connect_with(&url, std::slice::from_ref(&url), ConnectOptions { token: Some(token.clone()), ..tls.clone() }).await.unwrap();
    let cmp = ok.calculate_and_apply_steering_vector("I hate you because", &adds(), &quick()).await.unwrap();
    assert_eq!(cmp.steered.len(), 1);
    let plain_url = format!("http://{}", server.addr);
    let plain_opts = ConnectOptions { token: Some(token), ..Default::default() };
    let plain = SteerClient::connect_with(&plain_url, std::slice::from_ref(&plain_url), plain_opts).await.unwrap();
    assert!(plain.activation_info().await.is_err());
    // A client that does not trust the CA refuses the server.
    assert!(health(&url, &ConnectOptions::default()).await.is_err());
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_requires_a_client_certificate_signed_by_the_ca() {
    let p = pki();
    let mut cfg = ServeConfig::default();
    cfg.security.tls =
        Some(TlsFiles { cert_pem: p.server.0.clone().into(), key_pem: p.server.1.clone().into(), client_ca_pem: Some(p.ca.clone().into()) });
    let server = LocalServer::start(engine(), cfg).await.unwrap();
    let url = server.url();
    let tls = ConnectOptions { tls_ca_pem: Some(p.ca.clone().into()), ..ConnectOptions::default() };
    assert!(health(&url, &tls).await.is_err(), "no client certificate");
    let mtls = ConnectOptions { tls_identity: Some((p.client.0.into(), p.client.1.into())), ..tls };
    assert_eq!(health(&url, &mtls).await.unwrap(), 1);
    let client = SteerClient::connect_with(&url, std::slice::from_ref(&url), mtls).await.unwrap();
    assert_eq!(client.calculate_and_apply_steering_vector("I hate you because", &adds(), &quick()).await.unwrap().steered.len(), 1);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activation_calls_past_the_limit_get_resource_exhausted_and_the_slot_comes_back() {
    let mut cfg = ServeConfig::default();
    cfg.activation.max_concurrent = 1;
    let (server, _) = start_with(engine(), cfg).await;
    let brief = ConnectOptions { retry_for: Duration::from_millis(300), ..ConnectOptions::default() };
    let client = SteerClient::connect_with(&server.url(), &[server.url()], brief).await.unwrap();
    let mut raw = ActivationServiceClient::connect(server.url()).await.unwrap();
    // A call whose answer (64 prompts of ~150 tokens x 8 points, ~20 MB) is far larger than
    // the transport buffers, never read: it holds the one slot.
    let prompts: Vec<String> = (0..64).map(|i| format!("{i} {}", "word ".repeat(150))).collect();
    let points: Vec<HookPoint> =
        (0..8).map(|i| HookPoint { hook: if i % 2 == 0 { Hook::ResidPre } else { Hook::BlockOutput } as i32, layer: i / 2 }).collect();
    let big = GetActivationsRequest { prompts, points, use_bos: true, ..Default::default() };
    let held = raw.get_activations(big.clone()).await.unwrap();
    let err = client.steering_tensors(&adds(), &RunOptions::default()).await;
    // (The client retries RESOURCE_EXHAUSTED for `retry_for`, then reports it.)
    let err = err.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err}");
    assert!(err.to_string().contains("--max-activation-calls"), "{err}");
    drop(held);
    // Once the client has gone, the slot is free again.
    let mut ok = false;
    for _ in 0..200 {
        if client.steering_tensors(&adds(), &RunOptions::default()).await.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(ok, "the slot was never given back");
    server.shutdown().await;
}

fn setup(prompt: &str, n_tensors: u32) -> GenerateRequest {
    let s = GenerateSetup {
        prompt: prompt.into(),
        use_bos: true,
        n_comparisons: 1,
        max_new_tokens: 4,
        n_tensors,
        sampling: Some(steer_client::v1::SamplingParameters::post()),
        ..Default::default()
    };
    GenerateRequest { msg: Some(generate_request::Msg::Setup(s)) }
}

/// Setup and the header (and, if `complete`, the chunks) of one `[256, 64]` f32 tensor (the
/// tiny model's largest: 64 KiB on the wire, 128 KiB held while read) for a short prompt.
fn big_tensor(complete: bool) -> Vec<GenerateRequest> {
    let values = vec![0.25f32; 256 * 64];
    let (h, chunks) = steer_proto::wire::encode_f32(&values, &[256, 64], None, 0);
    let mut m = vec![setup("I hate you because", 1), GenerateRequest { msg: Some(generate_request::Msg::Tensor(h)) }];
    if complete {
        m.extend(chunks.into_iter().map(|c: TensorChunk| GenerateRequest { msg: Some(generate_request::Msg::Chunk(c)) }));
    }
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tensor_bytes_in_flight_are_bounded_over_all_requests() {
    let mut cfg = ServeConfig::default();
    cfg.generation.max_inflight_bytes = 192 << 10;
    let (server, _client) = start_with(engine(), cfg).await;
    let mut g = GenerationServiceClient::connect(server.url()).await.unwrap();
    // A: a header that reserves 128 KiB, then nothing (its bytes are "on the way"). B asks for
    // as much again: refused at once (RESOURCE_EXHAUSTED, naming the flag) while A holds its
    // share. Until A is read, B is read whole and refused by validation (the tensor is longer
    // than the prompt), giving its bytes back; if A arrived while B held its bytes, A itself was
    // refused and is sent again.
    let mut refused = None;
    let mut held_by_a = None;
    'outer: for _ in 0..100 {
        let (a_tx, a_rx) = mpsc::channel(8);
        for m in big_tensor(false) {
            a_tx.send(m).await.unwrap();
        }
        let a = tokio::spawn({
            let mut g = g.clone();
            async move { g.generate(ReceiverStream::new(a_rx)).await.map(|_| ()) }
        });
        for _ in 0..50 {
            let codes = steer_e2e::error_codes(g.generate(tokio_stream::iter(big_tensor(true))).await).await;
            if codes == [Code::ResourceExhausted] {
                refused = Some(codes);
                held_by_a = Some((a_tx, a));
                break 'outer;
            }
            assert_eq!(codes, [Code::InvalidArgument]);
            if a.is_finished() {
                continue 'outer;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    assert_eq!(refused, Some(vec![Code::ResourceExhausted]));
    let err = g.generate(tokio_stream::iter(big_tensor(true))).await;
    let msg = match err {
        Err(s) => s.message().to_string(),
        Ok(r) => r.into_inner().next().await.unwrap().unwrap_err().message().to_string(),
    };
    assert!(msg.contains("--max-inflight-bytes"), "{msg}");
    let (a_tx, a) = held_by_a.unwrap();
    drop(a_tx);
    let _ = a.await;
    // A's stream ended: its bytes are back, and B gets as far as validation again.
    let mut back = false;
    for _ in 0..200 {
        if steer_e2e::error_codes(g.generate(tokio_stream::iter(big_tensor(true))).await).await == [Code::InvalidArgument] {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(back, "A's bytes were not given back");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_stream_that_goes_silent_times_out() {
    let mut cfg = ServeConfig::default();
    cfg.generation.read_timeout = Duration::from_millis(300);
    let (server, _client) = start_with(engine(), cfg).await;
    let mut g = GenerationServiceClient::connect(server.url()).await.unwrap();
    let (tx, rx) = mpsc::channel(4);
    tx.send(setup("I hate you because", 1)).await.unwrap();
    let err = g.generate(ReceiverStream::new(rx)).await.unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert!(err.message().contains("--read-timeout-secs"), "{}", err.message());
    drop(tx);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_and_model_paths_can_be_hidden() {
    let mut cfg = ServeConfig::default();
    cfg.security.no_reflection = true;
    let (server, client) = start_with(engine(), cfg).await;
    let info = client.generation_info().await.unwrap();
    assert_eq!(info.name, "tiny-gpt2", "only the directory's name by default");
    let ch = tonic::transport::Endpoint::from_shared(server.url()).unwrap().connect().await.unwrap();
    let mut refl = tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient::new(ch);
    use tonic_reflection::pb::v1::{server_reflection_request::MessageRequest, ServerReflectionRequest};
    let req = ServerReflectionRequest { host: String::new(), message_request: Some(MessageRequest::ListServices(String::new())) };
    let err = match refl.server_reflection_info(tokio_stream::iter(vec![req])).await {
        Err(s) => s,
        Ok(r) => r.into_inner().next().await.unwrap().unwrap_err(),
    };
    assert_eq!(err.code(), Code::Unimplemented);
    server.shutdown().await;

    let mut cfg = ServeConfig::default();
    cfg.security.expose_model_path = true;
    let (server, client) = start_with(engine(), cfg).await;
    let mut g = GenerationServiceClient::connect(server.url()).await.unwrap();
    let full = g.get_model_info(GenerationServiceGetModelInfoRequest {}).await.unwrap().into_inner().info.unwrap().name;
    assert!(full.ends_with("tiny-gpt2") && full.len() > "tiny-gpt2".len(), "{full}");
    assert!(std::path::Path::new(&full).exists() || tiny_dir().exists());
    drop(client);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_connects_lazily_skips_dead_workers_and_keeps_its_deadline() {
    let (server, _) = start_with(engine(), ServeConfig::default()).await;
    // A port nobody listens on, and one that accepts and then never answers.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let mute = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mute_url = format!("http://{}", mute.local_addr().unwrap());
    let hold = tokio::spawn(async move {
        let mut held = vec![];
        while let Ok((s, _)) = mute.accept().await {
            held.push(s);
        }
    });
    let urls = vec![dead.clone(), server.url(), dead.clone()];
    let client = SteerClient::connect(&server.url(), &urls).await.expect("dead workers do not fail connect");
    let tensors = client.steering_tensors(&adds(), &quick()).await.unwrap();
    for _ in 0..3 {
        let cmp = client.generate("I hate you because", &tensors, &quick(), |_| {}).await.unwrap();
        assert_eq!(cmp.steered.len(), 1, "each run reaches the live worker");
    }
    // Only dead workers: a prompt UNAVAILABLE, no hang.
    let gone = SteerClient::connect(&server.url(), &[dead]).await.unwrap();
    assert_eq!(gone.generate("I hate you because", &tensors, &quick(), |_| {}).await.unwrap_err().code(), Code::Unavailable);
    // A worker that accepts and never answers: the client's deadline ends the call.
    let opts = ConnectOptions { deadline: Duration::from_millis(500), connect_timeout: Duration::from_millis(300), ..Default::default() };
    let mute_client = SteerClient::connect_with(&server.url(), &[mute_url], opts).await.unwrap();
    let t = std::time::Instant::now();
    let err = mute_client.generate("I hate you because", &tensors, &quick(), |_| {}).await.unwrap_err();
    assert!(matches!(err.code(), Code::DeadlineExceeded | Code::Unavailable | Code::Cancelled), "{err}");
    assert!(t.elapsed() < Duration::from_secs(5), "took {:?}", t.elapsed());
    hold.abort();
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_that_would_overflow_are_refused_naming_the_field() {
    let (server, client) = start_with(engine(), ServeConfig::default()).await;
    let mut g = GenerationServiceClient::connect(server.url()).await.unwrap();
    let with = |values: Vec<f32>, temperature: f32| {
        let (h, chunks) = steer_proto::wire::encode_f32(&values, &[1, 64], Some(HookPoint { hook: Hook::ResidPre as i32, layer: 1 }), 0);
        let mut first = setup("I hate you because", 1);
        if let Some(generate_request::Msg::Setup(s)) = &mut first.msg {
            s.sampling.as_mut().unwrap().temperature = temperature;
        }
        let mut m = vec![first, GenerateRequest { msg: Some(generate_request::Msg::Tensor(h)) }];
        m.extend(chunks.into_iter().map(|c| GenerateRequest { msg: Some(generate_request::Msg::Chunk(c)) }));
        m
    };
    let field = |r: Result<tonic::Response<tonic::Streaming<_>>, tonic::Status>| {
        let s = r.unwrap_err();
        assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
        s.message().split(':').next().unwrap().to_string()
    };
    assert_eq!(field(g.generate(tokio_stream::iter(with(vec![3e38; 64], 1.0))).await), "tensors[0].data");
    assert_eq!(field(g.generate(tokio_stream::iter(with(vec![1.0; 64], 1e-40))).await), "setup.sampling.temperature");
    // A header claiming [67108864, 64] f32 (16 GiB) is refused before a byte is reserved.
    let mut m = with(vec![0.0; 64], 1.0);
    if let Some(generate_request::Msg::Tensor(h)) = &mut m[1].msg {
        h.shape = vec![67_108_864, 64];
        h.total_bytes = 67_108_864 * 64 * 4;
    }
    m.truncate(2);
    assert_eq!(field(g.generate(tokio_stream::iter(m)).await), "tensors[0].shape");
    // Coefficients whose sum leaves the bound are refused by the ActivationService.
    let huge = [AdditionSpec::new(1, 1e9, "Love "), AdditionSpec::new(1, -1.0, "Hate")];
    let err = client.steering_tensors(&huge, &RunOptions::default()).await.unwrap_err();
    assert!(err.to_string().contains("additions[0].coeff"), "{err}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dns_name_brings_every_address_it_resolves_to_into_the_pool() {
    let (server, _) = start_with(engine(), ServeConfig::default()).await;
    let name = format!("dns://localhost:{}", server.addr.port());
    let client = SteerClient::connect(&server.url(), &[name]).await.unwrap();
    let urls = client.generation_urls();
    assert!(urls.contains(&format!("http://127.0.0.1:{}", server.addr.port())), "{urls:?}");
    // Whatever else `localhost` resolves to (::1, where nothing listens), runs reach the live address.
    let tensors = client.steering_tensors(&adds(), &quick()).await.unwrap();
    for _ in 0..3 {
        assert_eq!(client.generate("I hate you because", &tensors, &quick(), |_| {}).await.unwrap().steered.len(), 1);
    }
    server.shutdown().await;
}

/// A generation-only worker fetches library vectors from an activation worker that wants TLS
/// and a token: with the CA and the token it works; without the token the request fails as
/// UNAVAILABLE (the worker's misconfiguration), never as the client's fault.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn library_vectors_are_fetched_over_tls_with_the_workers_token() {
    let p = pki();
    let token = "s3cret-token-0123456789".to_string();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = ServeConfig::default();
    cfg.security.tls = Some(TlsFiles { cert_pem: p.server.0.clone().into(), key_pem: p.server.1.clone().into(), client_ca_pem: None });
    cfg.security.tokens = vec![token.clone()];
    cfg.vectors.library = Some(steer_client::steer_vector::LibraryConfig { dir: dir.path().into(), ..Default::default() });
    let act = LocalServer::start(engine(), cfg).await.unwrap();
    let tls = ConnectOptions { tls_ca_pem: Some(p.ca.clone().into()), token: Some(token.clone()), ..ConnectOptions::default() };
    let client = SteerClient::connect_with(&act.url(), &[act.url()], tls).await.unwrap();
    let digest = client.save_vector("love", &adds(), &quick(), true).await.unwrap().info.unwrap().digest;
    let with_ref = RunOptions { vectors: vec![steer_client::v1::VectorRef { digest, ..Default::default() }], ..quick() };
    for (tok, want) in [(Some(token.clone()), None), (None, Some(Code::Unavailable))] {
        let mut g = ServeConfig { role: steer_server::Role::Generation, ..Default::default() };
        g.vectors = steer_server::VectorsConfig {
            source_url: Some(act.url()),
            source_token: tok,
            source_ca: Some(p.ca.clone().into()),
            ..Default::default()
        };
        let gen = LocalServer::start(engine(), g).await.unwrap();
        let gc = SteerClient::connect(&gen.url(), &[gen.url()]).await.unwrap();
        let r = gc.generate("I hate you because", &[], &with_ref, |_| {}).await;
        match want {
            None => assert_eq!(r.unwrap().steered.len(), 1),
            Some(code) => {
                let err = r.unwrap_err();
                assert!(err.code() == code && err.to_string().contains("setup.vectors[0]"), "{err}");
            }
        }
        gen.shutdown().await;
    }
    act.shutdown().await;
}
