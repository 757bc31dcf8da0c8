//! Steering beyond addition over real gRPC with the tiny model: ABLATE and CLAMP tensors and
//! windows through GenerationService (tokens equal the Hugging Face goldens), the ablated
//! direction gone from GetActivations, library vectors applied with another op or window,
//! SAE features through ListSaes/GetSaeFeatures/SaeVector, and bad steering refused naming
//! its field.

use std::path::PathBuf;

use serde_json::Value;
use steer_client::steer_vector::{self, Op, SteeringVector, Window};
use steer_client::v1::{self, SaeVectorRequest, TensorHeader};
use steer_client::{ClientError, RunOptions, SteerClient, SteeringTensor};
use steer_e2e::{engine, start_with};
use steer_server::{ServeConfig, VectorsConfig};
use tonic::Code;
use tonic_types::StatusExt;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures")
}

fn goldens() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join("goldens/tiny-gpt2-ops.json")).unwrap()).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

/// A server with a library in `lib` and the fixtures' SAEs.
fn config(lib: &std::path::Path) -> ServeConfig {
    let library = steer_vector::LibraryConfig { dir: lib.to_path_buf(), ..Default::default() };
    ServeConfig { vectors: VectorsConfig { library: Some(library), sae_dir: Some(fixtures()), ..Default::default() }, ..Default::default() }
}

/// Greedy, 20 tokens, the steered rows only.
fn greedy() -> RunOptions {
    let mut o = RunOptions { n_tokens: 20, n_comparisons: 1, skip_unsteered: true, ignore_eos: true, ..RunOptions::default() };
    o.sampling.temperature = 0.0;
    o.sampling.frequency_penalty = 0.0;
    o.sampling.repetition_penalty = 1.0;
    o.sampling.top_p = None;
    o
}

fn case_tensor(c: &Value) -> SteeringTensor {
    let hook = if c["hook"] == "resid_pre" { v1::Hook::ResidPre } else { v1::Hook::BlockOutput };
    let point = v1::HookPoint { hook: hook as i32, layer: c["layer"].as_u64().unwrap() as u32 };
    let t = SteeringTensor::prefix(point, floats(&c["rows"]), 64);
    let op = match c["op"].as_str().unwrap() {
        "ablate" => Op::Ablate,
        _ => Op::Clamp { value: c["value"].as_f64().unwrap() as f32 },
    };
    t.in_window(c["window"].as_str().unwrap().parse().unwrap()).with_op(op)
}

fn field(e: ClientError) -> String {
    match e {
        ClientError::Status(s) => {
            assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
            s.get_details_bad_request().expect("a BadRequest").field_violations[0].field.clone()
        }
        other => panic!("expected a status, got {other}"),
    }
}

async fn steered(client: &SteerClient, prompt: &str, tensors: &[SteeringTensor], opts: &RunOptions) -> Vec<u32> {
    client.generate(prompt, tensors, opts, |_| {}).await.unwrap().steered.remove(0).token_ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ablate_and_clamp_tensors_in_every_window_give_the_hugging_face_tokens_over_grpc() {
    let tmp = tempfile::tempdir().unwrap();
    let (server, client) = start_with(engine(), config(tmp.path())).await;
    let g = goldens();
    for c in g["cases"].as_array().unwrap() {
        let t = case_tensor(c);
        // The golden prompt is "I hate you because" with BOS.
        let got = steered(&client, "I hate you because", &[t], &greedy()).await;
        assert_eq!(got, ids(&c["greedy_kv"]), "{} {}.{} {}", c["op"], c["hook"], c["layer"], c["window"]);
    }
    // All at once: the worker batches them continuously (prefills beside decode steps, rows
    // joining and leaving), and each row still gets its own tokens.
    let cases = g["cases"].as_array().unwrap();
    let all = futures::future::join_all(cases.iter().map(|c| {
        let (client, t) = (&client, case_tensor(c));
        async move { steered(client, "I hate you because", &[t], &greedy()).await }
    }))
    .await;
    for (c, got) in cases.iter().zip(all) {
        assert_eq!(got, ids(&c["greedy_kv"]), "concurrent: {} {}.{} {}", c["op"], c["hook"], c["layer"], c["window"]);
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_ablation_get_activations_has_no_component_along_the_direction_in_its_window() {
    let tmp = tempfile::tempdir().unwrap();
    let (server, client) = start_with(engine(), config(tmp.path())).await;
    let g = goldens();
    let c =
        g["cases"].as_array().unwrap().iter().find(|c| c["op"] == "ablate" && c["window"] == "all_positions" && c["hook"] == "block_output").unwrap();
    let rows = floats(&c["rows"]);
    let norm = rows.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>().sqrt();
    let u: Vec<f64> = rows.iter().map(|v| f64::from(*v) / norm).collect();
    let point = v1::HookPoint { hook: v1::Hook::BlockOutput as i32, layer: 2 };
    let prompts = vec!["Steering a language model one direction at a time".to_string(), "Hi".to_string()];
    for window in [Window::AllPositions, Window::Range { start: 3, end: Some(7) }, Window::Range { start: 1, end: None }] {
        let t = SteeringTensor::prefix(point, rows.clone(), 64).in_window(window).with_op(Op::Ablate);
        let after = client.activations_steered(&prompts, &[point], true, &[t]).await.unwrap();
        let before = client.activations(&prompts, &[point], true).await.unwrap();
        let (start, end) = window.span(1, 0);
        for (p, (a, b)) in after.iter().zip(&before).enumerate() {
            let (len, d, a) = &a[0];
            let b = &b[0].2;
            for pos in 0..*len {
                let dot = |x: &[f32]| x.iter().zip(&u).map(|(x, u)| f64::from(*x) * u).sum::<f64>();
                let (da, db) = (dot(&a[pos * d..(pos + 1) * d]), dot(&b[pos * d..(pos + 1) * d]));
                if pos >= start && end.is_none_or(|e| pos < e) {
                    assert!(da.abs() < 1e-4, "{window}: prompt {p} position {pos}: x.u = {da} (was {db})");
                } else {
                    assert_eq!(da, db, "{window}: prompt {p} position {pos} is outside the window");
                }
            }
        }
    }
    // The plain activations stay cached and unchanged by the steered call.
    let again = client.activations(&prompts, &[point], true).await.unwrap();
    assert_eq!(again, client.activations(&prompts, &[point], true).await.unwrap());
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sae_features_are_listed_browsed_and_steer_as_their_scaled_decoder_rows() {
    let tmp = tempfile::tempdir().unwrap();
    let (server, client) = start_with(engine(), config(tmp.path())).await;
    let g = goldens();
    let s = &g["sae"];
    let saes = client.list_saes().await.unwrap();
    let sae = saes.iter().find(|i| i.name == "tiny-sae").expect("the fixture SAE is listed");
    assert_eq!((sae.d_in, sae.d_sae, sae.hook_name.as_str(), sae.unusable.as_str()), (64, 16, "blocks.1.hook_resid_post", ""));
    assert_eq!(sae.point, Some(v1::HookPoint { hook: v1::Hook::BlockOutput as i32, layer: 1 }));
    // Browsing by index: norms and the tokens each decoder row promotes.
    let f = client.sae_features("tiny-sae", 4, 3, 5).await.unwrap();
    assert_eq!(f.features.iter().map(|f| f.index).collect::<Vec<_>>(), vec![4, 5, 6]);
    assert!(f.features.iter().all(|f| f.norm > 0.0 && f.top_tokens.len() == 5));
    assert!(f.features[0].top_tokens.windows(2).all(|w| w[0].value >= w[1].value), "most promoted first");
    // A vector of feature f at scale s, stored, applied by reference: the HF hook's tokens.
    let (feature, scale) = (s["feature"].as_u64().unwrap() as u32, s["scale"].as_f64().unwrap());
    let req = SaeVectorRequest { sae: "tiny-sae".into(), features: vec![feature], scale: Some(scale), store: true, ..Default::default() };
    let file = client.sae_vector(req).await.unwrap();
    let v = SteeringVector::from_bytes(&file.data).unwrap();
    let steer_vector::Origin::Sae { features, d_sae, .. } = &v.meta.origin else { panic!("{:?}", v.meta.origin) };
    assert_eq!((features.clone(), *d_sae), (vec![feature], 16));
    let mut opts = greedy();
    opts.vectors.push(client.vector_ref(&v.meta.name, 1.0, None).await.unwrap());
    assert_eq!(steered(&client, "I hate you because", &[], &opts).await, ids(&s["greedy"]));
    // The same vector as tensors from the file.
    let info = client.generation_info().await.unwrap();
    let tensors = SteeringTensor::from_file(&v, &info, 1.0, None).unwrap();
    assert_eq!(steered(&client, "I hate you because", &tensors, &greedy()).await, ids(&s["greedy"]));
    // Bad requests name their field.
    let bad = |features: Vec<u32>, sae: &str| SaeVectorRequest { sae: sae.into(), features, ..Default::default() };
    assert_eq!(field(client.sae_vector(bad(vec![16], "tiny-sae")).await.unwrap_err()), "features[0]");
    assert_eq!(field(client.sae_vector(bad(vec![1, 1], "tiny-sae")).await.unwrap_err()), "features[1]");
    assert_eq!(field(client.sae_vector(bad(vec![1], "../tiny-sae")).await.unwrap_err()), "sae");
    assert_eq!(client.sae_vector(bad(vec![1], "nope")).await.unwrap_err().code(), Code::NotFound);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_library_vector_applies_with_another_op_and_window_and_files_carry_theirs() {
    let tmp = tempfile::tempdir().unwrap();
    let (server, client) = start_with(engine(), config(tmp.path())).await;
    let g = goldens();
    let m = &g["mixed"];
    let dir = floats(&m["direction"]);
    let model = steer_client::model_ref(&client.generation_info().await.unwrap());
    let t = steer_vector::VectorTensor { point: steer_vector::HookPoint::ResidPre(2), k: 1, values: dir.clone() };
    let origin = steer_vector::Origin::Gguf { model_hint: "gpt2".into(), layer_count: 4 };
    let v = SteeringVector::new("dir", model, Window::AllPositions, origin, vec![t]).unwrap();
    client.put_vector(v.to_bytes(), "dir", false).await.unwrap();
    let want_ablate = ids(&m["rows"][2]["greedy"]);
    // By reference, applied as ABLATE over the generated tokens.
    let mut r = client.vector_ref("dir", 1.0, None).await.unwrap();
    (r.op, r.mode) = (v1::SteeringOp::Ablate as i32, v1::SteeringMode::GeneratedOnly as i32);
    let mut opts = greedy();
    opts.vectors.push(r);
    assert_eq!(steered(&client, "I hate you because", &[], &opts).await, want_ablate);
    // A file that carries ABLATE and GENERATED itself, put and applied as filed.
    let carried = v.clone().in_window(Window::Generated).unwrap().with_op(Op::Ablate).unwrap();
    assert_ne!(carried.digest(), v.digest(), "the op and window are part of what steers");
    let back = SteeringVector::from_bytes(&carried.to_bytes()).unwrap();
    assert_eq!((back.op(), back.mode()), (Op::Ablate, Window::Generated));
    client.put_vector(carried.to_bytes(), "dir-ablate", false).await.unwrap();
    let mut opts = greedy();
    opts.vectors.push(client.vector_ref("dir-ablate", 1.0, None).await.unwrap());
    assert_eq!(steered(&client, "I hate you because", &[], &opts).await, want_ablate);
    // CLAMP needs a value when the file records none.
    let mut r = client.vector_ref("dir", 1.0, None).await.unwrap();
    r.op = v1::SteeringOp::Clamp as i32;
    let mut opts = greedy();
    opts.vectors.push(r);
    let e = client.generate("I hate you because", &[], &opts, |_| {}).await.unwrap_err();
    assert_eq!(field(e), "setup.vectors[0].clamp_value");
    // llama.cpp's control vectors only add.
    assert!(steer_vector::gguf::export(&back).unwrap_err().to_string().starts_with("mode"));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_ops_and_windows_are_refused_naming_the_field() {
    let tmp = tempfile::tempdir().unwrap();
    let (server, client) = start_with(engine(), config(tmp.path())).await;
    let point = v1::HookPoint { hook: v1::Hook::ResidPre as i32, layer: 1 };
    let dir: Vec<f32> = (0..64).map(|i| i as f32 / 64.0).collect();
    let one = SteeringTensor::prefix(point, dir.clone(), 64);
    let run = |t: SteeringTensor| {
        let client = &client;
        async move { field(client.generate("I hate you because", &[t], &greedy(), |_| {}).await.unwrap_err()) }
    };
    assert_eq!(run(SteeringTensor::prefix(point, vec![0.0; 64], 64).with_op(Op::Ablate)).await, "tensors[0].data");
    assert_eq!(
        run(SteeringTensor::prefix(point, [dir.clone(), vec![0.0; 64]].concat(), 64).with_op(Op::Clamp { value: 1.0 })).await,
        "tensors[0].data"
    );
    assert_eq!(run(SteeringTensor::prefix(point, [dir.clone(), dir.clone()].concat(), 64).in_window(Window::Generated)).await, "tensors[0].shape");
    let mut t = one.clone();
    let h: &mut TensorHeader = &mut t.header;
    (h.mode, h.window_start, h.window_end) = (v1::SteeringMode::Range as i32, 5, Some(5));
    assert_eq!(run(t).await, "tensors[0].window_end");
    let mut t = one.clone();
    t.header.op = 9;
    assert_eq!(run(t).await, "tensors[0].op");
    assert_eq!(run(one.clone().with_op(Op::Clamp { value: f32::INFINITY })).await, "tensors[0].clamp_value");
    assert_eq!(run(one.clone().with_op(Op::Clamp { value: 1e9 })).await, "tensors[0].clamp_value");
    // GetActivations checks its steering the same way.
    let e = client.activations_steered(&["Hi".into()], &[point], true, &[SteeringTensor::prefix(point, vec![0.0; 64], 64).with_op(Op::Ablate)]).await;
    assert_eq!(field(e.unwrap_err()), "steering[0].data");
    let long = SteeringTensor::prefix(point, [dir.clone(), dir.clone(), dir.clone()].concat(), 64);
    assert_eq!(field(client.activations_steered(&["Hi".into()], &[point], false, &[long]).await.unwrap_err()), "prompts[0]");
    server.shutdown().await;
}
