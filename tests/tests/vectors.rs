//! Steering vectors as artifacts, over real gRPC with the tiny model: files, the library,
//! references by digest, dataset vectors, all_positions mode and other models' vectors.

use std::path::Path;

use steer_client::steer_vector::{self, ModelRef, Origin, SteeringVector, VectorTensor, Window};
use steer_client::v1::activation_service_client::ActivationServiceClient;
use steer_client::v1::{get_activations_response, ContrastPair, ContrastPairs, GetActivationsRequest, Hook, HookPoint, Reduction, VectorRef};
use steer_client::{AdditionSpec, RunOptions, SteerClient, SteeringTensor};
use steer_e2e::{engine, start_with};
use steer_server::{ServeConfig, VectorsConfig};
use tonic::Code;

fn library(dir: &Path) -> ServeConfig {
    let lib = steer_vector::LibraryConfig { dir: dir.to_path_buf(), ..Default::default() };
    ServeConfig { vectors: VectorsConfig { library: Some(lib), ..Default::default() }, ..Default::default() }
}

fn love_hate() -> Vec<AdditionSpec> {
    vec![AdditionSpec::new(2, 4.0, "Love "), AdditionSpec::new(2, -4.0, "Hate")]
}

fn opts() -> RunOptions {
    RunOptions { n_tokens: 12, n_comparisons: 2, seed: 7, ..RunOptions::default() }
}

async fn steered(client: &SteerClient, tensors: &[SteeringTensor], opts: &RunOptions) -> Vec<Vec<u32>> {
    let cmp = client.generate("I hate you because", tensors, opts, |_| {}).await.unwrap();
    cmp.steered.into_iter().map(|c| c.token_ids).collect()
}

fn pairs() -> Vec<ContrastPair> {
    [("I love you", "I hate you"), ("Love is kind", "Hate is cruel"), ("What a joy", "What a pain")]
        .iter()
        .map(|(p, n)| ContrastPair { positive: p.to_string(), negative: n.to_string() })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn save_load_run_gives_the_tokens_of_the_in_memory_run() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let (server, client) = start_with(engine(), library(&dir)).await;
    let in_memory = client.steering_tensors(&love_hate(), &opts()).await.unwrap();
    let want = steered(&client, &in_memory, &opts()).await;
    // Saved to disk, read back, sent as tensors.
    let file = client.save_vector("love", &love_hate(), &opts(), false).await.unwrap();
    let path = dir.join("love.safetensors");
    std::fs::write(&path, &file.data).unwrap();
    let v = SteeringVector::load(&path).unwrap();
    assert_eq!(v.meta.name, "love");
    let Origin::ActAdd { additions, use_bos, .. } = &v.meta.origin else { panic!("{:?}", v.meta.origin) };
    assert!(*use_bos && additions.len() == 2 && additions[0].tokens[0] == 50256 && additions[1].coeff == -4.0, "{additions:?}");
    let info = client.generation_info().await.unwrap();
    let tensors = SteeringTensor::from_file(&v, &info, 1.0, None).unwrap();
    assert_eq!(tensors[0].values, in_memory[0].values, "the file holds the computed tensor");
    assert_eq!(steered(&client, &tensors, &opts()).await, want);
    // Scaled by 0: the unsteered tokens.
    let zero = SteeringTensor::from_file(&v, &info, 0.0, None).unwrap();
    let cmp = client.generate("I hate you because", &zero, &opts(), |_| {}).await.unwrap();
    assert_eq!(cmp.steered.iter().map(|c| &c.token_ids).collect::<Vec<_>>(), cmp.unsteered.iter().map(|c| &c.token_ids).collect::<Vec<_>>());
    // Stored, then referenced by digest instead of streamed: the same tokens.
    let put = client.put_vector(file.data.clone(), "", false).await.unwrap().info.unwrap();
    let r = client.vector_ref("love", 1.0, None).await.unwrap();
    assert_eq!(r.digest, put.digest);
    let by_ref = steered(&client, &[], &RunOptions { vectors: vec![r], ..opts() }).await;
    assert_eq!(by_ref, want);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_library_survives_a_restart_and_serves_a_generation_only_worker() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let (server, client) = start_with(engine(), library(&dir)).await;
    let file = client.save_vector("love", &love_hate(), &opts(), true).await.unwrap();
    let digest = file.info.unwrap().digest;
    let want = steered(&client, &[], &RunOptions { vectors: vec![reference(&digest)], ..opts() }).await;
    server.shutdown().await;

    let (server, client) = start_with(engine(), library(&dir)).await;
    let listed = client.list_vectors().await.unwrap();
    assert_eq!(listed.vectors.iter().map(|v| (v.name.as_str(), v.digest.as_str())).collect::<Vec<_>>(), vec![("love", digest.as_str())]);
    assert_eq!(client.get_vector(&digest[..10]).await.unwrap().data, file.data);
    // A generation-only worker fetches the vector from the activation worker by digest.
    let remote = ServeConfig {
        role: steer_server::Role::Generation,
        vectors: VectorsConfig { source_url: Some(server.url()), ..Default::default() },
        ..Default::default()
    };
    let (gen_server, gen_client) = start_with(engine(), remote).await;
    let got = steered(&gen_client, &[], &RunOptions { vectors: vec![reference(&digest)], ..opts() }).await;
    assert_eq!(got, want);
    // Deleted: gone for new requests, and for the library (a worker's cached copy may serve on).
    client.delete_vector("love").await.unwrap();
    assert_eq!(client.get_vector("love").await.unwrap_err().code(), Code::NotFound);
    let err = client.generate("I hate you because", &[], &RunOptions { vectors: vec![reference(&digest)], ..opts() }, |_| {}).await.unwrap_err();
    assert!(err.code() == Code::InvalidArgument && err.to_string().contains("setup.vectors[0].digest"), "{err}");
    gen_server.shutdown().await;
    server.shutdown().await;
}

fn reference(digest: &str) -> VectorRef {
    VectorRef { digest: digest.into(), ..VectorRef::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vector_for_another_model_is_refused_naming_the_field() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let (server, client) = start_with(engine(), library(&dir)).await;
    let other = |d: u32, name: &str| {
        let fingerprint = "00000000000000ff".into();
        let model = ModelRef { name: name.into(), revision: "main".into(), d_model: d, n_layer: 4, fingerprint, ..ModelRef::default() };
        let t = vec![VectorTensor { point: steer_vector::HookPoint::ResidPre(1), k: 1, values: vec![0.5; d as usize] }];
        SteeringVector::new("other", model, Window::AllPositions, Origin::Gguf { model_hint: "gpt2".into(), layer_count: 1 }, t).unwrap()
    };
    // Put: FAILED_PRECONDITION naming the field.
    let err = client.put_vector(other(1600, "gpt2-xl").to_bytes(), "", true).await.unwrap_err();
    assert!(err.code() == Code::FailedPrecondition && err.to_string().contains("data.model.d_model"), "forcing never skips the shape: {err}");
    // Same shape, other weights (another fingerprint): refused, unless forced. The name plays no part.
    let err = client.put_vector(other(64, "fixtures/tiny-gpt2").to_bytes(), "", false).await.unwrap_err();
    assert!(err.code() == Code::FailedPrecondition && err.to_string().contains("data.model.fingerprint"), "{err}");
    assert!(err.to_string().contains("--force-model"), "{err}");
    let forced = other(64, "fixtures/tiny-gpt2");
    client.put_vector(forced.to_bytes(), "forced", true).await.unwrap();
    // Referenced for a generation: the worker refuses it in turn, unless the reference forces it.
    let plain = RunOptions { vectors: vec![reference(forced.digest())], n_comparisons: 1, ..opts() };
    let err = client.generate("I hate you because", &[], &plain, |_| {}).await.unwrap_err();
    assert!(err.to_string().contains("setup.vectors[0].model.fingerprint"), "{err}");
    let force = RunOptions { vectors: vec![VectorRef { force_model: true, ..reference(forced.digest()) }], ..plain };
    assert_eq!(client.generate("I hate you because", &[], &force, |_| {}).await.unwrap().steered.len(), 1);
    // Client side, before anything is sent.
    let info = client.generation_info().await.unwrap();
    let err = SteeringTensor::from_file(&other(1600, "gpt2-xl"), &info, 1.0, None).unwrap_err();
    assert!(err.code() == Code::FailedPrecondition && err.to_string().contains("model.d_model"), "{err}");
    // A file dropped into the library directory (not put) and referenced: the generation worker checks it.
    let wrong = other(32, "tiny-gpt2");
    std::fs::write(dir.join(format!("{}.safetensors", wrong.digest())), wrong.to_bytes()).unwrap();
    server.shutdown().await;
    let (server, client) = start_with(engine(), library(&dir)).await;
    let err =
        client.generate("I hate you because", &[], &RunOptions { vectors: vec![reference(wrong.digest())], ..opts() }, |_| {}).await.unwrap_err();
    assert!(err.code() == Code::FailedPrecondition && err.to_string().contains("setup.vectors[0].model.d_model"), "{err}");
    // A damaged upload: INVALID_ARGUMENT naming the digest.
    let mut bytes = client.save_vector("love", &love_hate(), &opts(), false).await.unwrap().data;
    let n = bytes.len();
    bytes[n - 2] ^= 1;
    let err = client.put_vector(bytes, "", false).await.unwrap_err();
    assert!(err.code() == Code::InvalidArgument && err.to_string().contains("data.digest"), "{err}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mean_difference_vectors_equal_an_independent_computation_on_captured_activations() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let (server, client) = start_with(engine(), library(&dir)).await;
    let points = vec![HookPoint { hook: Hook::ResidPre as i32, layer: 1 }, HookPoint { hook: Hook::BlockOutput as i32, layer: 2 }];
    for (reduction, mean) in [(Reduction::LastToken, false), (Reduction::Mean, true)] {
        let req = ContrastPairs { pairs: pairs(), points: points.clone(), reduction: reduction as i32, use_bos: true, batch_size: 2 };
        let mut progress = vec![];
        let file = client.train_vector("kind", req, false, |done, total| progress.push((done, total))).await.unwrap();
        assert_eq!(progress, vec![(2, 3), (3, 3)], "one progress event per batch");
        let v = SteeringVector::from_bytes(&file.data).unwrap();
        assert_eq!(v.mode(), Window::AllPositions);
        // Independently: every prompt's activations over GetActivations, reduced and averaged here.
        let mut raw = ActivationServiceClient::connect(server.url()).await.unwrap();
        let prompts: Vec<String> = pairs().iter().flat_map(|p| [p.positive.clone(), p.negative.clone()]).collect();
        let req = GetActivationsRequest { prompts: prompts.clone(), use_bos: true, points: points.clone(), ..Default::default() };
        let mut stream = raw.get_activations(req).await.unwrap().into_inner();
        let (mut acts, mut cur, mut shape): (Vec<Vec<f32>>, Vec<u8>, Vec<u64>) = (vec![], vec![], vec![]);
        while let Some(m) = stream.message().await.unwrap() {
            match m.event {
                Some(get_activations_response::Event::Header(h)) => shape = h.shape,
                Some(get_activations_response::Event::Chunk(c)) => {
                    cur.extend(c.data);
                    if cur.len() as u64 == shape[0] * shape[1] * 4 {
                        acts.push(cur.chunks(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect());
                        cur.clear();
                    }
                }
                _ => {}
            }
        }
        // acts: prompt-major, then point.
        let d = 64;
        for (j, t) in v.tensors.iter().enumerate() {
            let mut want = vec![0f64; d];
            for pair in 0..3 {
                for (sign, prompt) in [(1.0, 2 * pair), (-1.0, 2 * pair + 1)] {
                    let a = &acts[prompt * points.len() + j];
                    let len = a.len() / d;
                    let rows: Vec<usize> = if mean { (1..len).collect() } else { vec![len - 1] };
                    for &r in &rows {
                        for i in 0..d {
                            want[i] += sign * a[r * d + i] as f64 / rows.len() as f64 / 3.0;
                        }
                    }
                }
            }
            let err = t.values.iter().zip(&want).map(|(x, y)| (*x as f64 - y).abs()).fold(0.0, f64::max);
            assert!(err < 1e-5, "{reduction:?} {}: {err}", t.point);
        }
    }
    // Bad requests name their field.
    let bad =
        ContrastPairs { pairs: vec![ContrastPair { positive: "a".into(), negative: String::new() }], points: points.clone(), ..Default::default() };
    let err = client.train_vector("x", bad, false, |_, _| {}).await.unwrap_err();
    assert!(err.code() == Code::InvalidArgument && err.to_string().contains("pairs.pairs[0].negative"), "{err}");
    let bad = ContrastPairs { pairs: pairs(), points: vec![HookPoint { hook: 1, layer: 9 }], ..Default::default() };
    let err = client.train_vector("x", bad, false, |_, _| {}).await.unwrap_err();
    assert!(err.to_string().contains("pairs.points[0].layer"), "{err}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_positions_tensors_steer_every_token_and_are_one_direction() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let (server, client) = start_with(engine(), library(&dir)).await;
    let req = ContrastPairs { pairs: pairs(), points: vec![HookPoint { hook: Hook::ResidPre as i32, layer: 2 }], ..Default::default() };
    let v = SteeringVector::from_bytes(&client.train_vector("kind", req, false, |_, _| {}).await.unwrap().data).unwrap();
    let info = client.generation_info().await.unwrap();
    let o = RunOptions { skip_unsteered: false, ..opts() };
    let t = SteeringTensor::from_file(&v, &info, 8.0, None).unwrap();
    let cmp = client.generate("Hi", &t, &o, |_| {}).await.unwrap();
    assert!(cmp.unsteered.iter().zip(&cmp.steered).any(|(u, s)| u.token_ids != s.token_ids), "the direction changed nothing");
    // The same values as a prefix addition at position 0 only: another result.
    let prefix = SteeringTensor::from_vector(&v.applied(8.0, None)[0], Window::Prefix);
    let cmp_prefix = client.generate("Hi", &[prefix], &o, |_| {}).await.unwrap();
    assert_ne!(cmp_prefix.steered, cmp.steered);
    // An all_positions tensor must be [1, d_model].
    let two = VectorTensor { point: steer_vector::HookPoint::ResidPre(2), k: 2, values: vec![0.1; 128] };
    let err = client.generate("Hi there you", &[SteeringTensor::from_vector(&two, Window::AllPositions)], &o, |_| {}).await.unwrap_err();
    assert!(err.code() == Code::InvalidArgument && err.to_string().contains("tensors[0].shape"), "{err}");
    server.shutdown().await;
}
