//! Steering beyond addition against Hugging Face hooks on the committed tiny random GPT-2
//! (goldens by scripts/make_op_goldens.py): ABLATE and CLAMP at a resid_pre and a block_output
//! point over every window kind, with and without the KV cache, through the reference loop and
//! through the serving loop in chunks with a prefix cache; a mixed batch; SAE features; and
//! the ablated direction gone from the capture at its point.

use std::ops::ControlFlow;
use std::path::PathBuf;

use serde_json::Value;
use steer_model::engine::{advance_all, PrefixCache, Sequence};
use steer_model::{Addition, Engine, GenerateOptions, HookPoint, LoadOptions, ModelSource, Op, RowRequest, SamplingParams, Window};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

fn engine() -> Engine {
    Engine::load(&ModelSource::Dir(fixtures().join("tiny-gpt2")), &LoadOptions::default()).unwrap()
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

fn point(c: &Value) -> HookPoint {
    let layer = c["layer"].as_u64().unwrap() as usize;
    match c["hook"].as_str().unwrap() {
        "resid_pre" => HookPoint::ResidPre(layer),
        _ => HookPoint::BlockOutput(layer),
    }
}

/// The case's steering as the engine takes it.
fn steering(c: &Value) -> Addition {
    let window: Window = c["window"].as_str().unwrap().parse().unwrap();
    let op = match c["op"].as_str().unwrap() {
        "ablate" => Op::Ablate,
        "clamp" => Op::Clamp { value: c["value"].as_f64().unwrap() as f32 },
        _ => Op::Add,
    };
    let k = c["k"].as_u64().unwrap() as usize;
    Addition::new(point(c), k, floats(&c["rows"])).in_window(window).with_op(op)
}

fn row(prompt: Vec<u32>, additions: Vec<Addition>) -> RowRequest {
    RowRequest { prompt, additions, sampling: SamplingParams::greedy(), seed: 0 }
}

fn opts(n: usize, cache: bool) -> GenerateOptions {
    GenerateOptions { max_new_tokens: n, stop_at_eos: false, use_kv_cache: cache, top_logprobs: 0 }
}

/// The reference loop: one prefill, then decode (or recompute) to the end.
fn reference(e: &Engine, rows: &[RowRequest], n: usize, cache: bool) -> Vec<Vec<u32>> {
    e.generate(rows, &opts(n, cache), |_| ControlFlow::Continue(())).unwrap().into_iter().map(|o| o.tokens).collect()
}

/// The serving loop: the prefill in chunks of `chunk` positions through `cache`, then decode
/// steps of every row together.
fn serving(e: &Engine, rows: &[RowRequest], n: usize, chunk: usize, cache: &mut PrefixCache) -> Vec<Vec<u32>> {
    let mut p = e.begin_cached(rows, &opts(n, true), cache).unwrap();
    let mut seqs = match p.take_ready() {
        Some(s) => s,
        None => loop {
            if let Some(s) = e.prefill_chunk(&mut p, chunk).unwrap() {
                p.remember(&s, cache);
                break s;
            }
        },
    };
    loop {
        advance_all(&mut seqs, 50256);
        let mut live: Vec<&mut Sequence> = seqs.iter_mut().filter(|s| !s.is_finished()).collect();
        if live.is_empty() {
            break;
        }
        e.step(&mut live).unwrap();
    }
    seqs.into_iter().map(|s| s.tokens).collect()
}

#[test]
fn ablate_and_clamp_match_hugging_face_hooks_in_every_window_with_and_without_the_kv_cache() {
    let e = engine();
    let g = goldens();
    let n = g["n_new"].as_u64().unwrap() as usize;
    let base = ids(&g["unsteered_greedy"]);
    let mut changed = 0;
    let mut cache = PrefixCache::new(64 << 20);
    for c in g["cases"].as_array().unwrap() {
        let what = format!("{} {} {}", c["op"], point(c), c["window"]);
        let rows = [row(ids(&c["prompt_ids"]), vec![steering(c)])];
        let kv = ids(&c["greedy_kv"]);
        assert_eq!(reference(&e, &rows, n, true)[0], kv, "{what}, KV cache");
        assert_eq!(reference(&e, &rows, n, false)[0], ids(&c["greedy_no_kv"]), "{what}, no KV cache");
        // Chunks of 2 split the prompt (and a window's edges) across forwards; the second run
        // comes from the prefix cache.
        for pass in 0..2 {
            assert_eq!(serving(&e, &rows, n, 2, &mut cache)[0], kv, "{what}, serving loop pass {pass}");
        }
        changed += usize::from(kv != base);
    }
    assert!(changed >= 12, "only {changed} of 20 cases change the tokens: the goldens would not catch a no-op");
}

#[test]
fn a_mixed_batch_gives_each_row_its_own_tokens() {
    let e = engine();
    let g = goldens();
    let m = &g["mixed"];
    let p = point(m);
    let dir = floats(&m["direction"]);
    let mut rows = vec![];
    for r in m["rows"].as_array().unwrap() {
        let adds = match r["op"].as_str() {
            None => vec![],
            Some("add") => vec![Addition::all_positions(p, dir.clone())],
            Some(_) => vec![Addition::all_positions(p, dir.clone()).in_window(Window::Generated).with_op(Op::Ablate)],
        };
        rows.push(row(ids(&r["prompt_ids"]), adds));
    }
    let want: Vec<Vec<u32>> = m["rows"].as_array().unwrap().iter().map(|r| ids(&r["greedy"])).collect();
    assert_eq!(reference(&e, &rows, 20, true), want);
    assert_eq!(serving(&e, &rows, 20, 3, &mut PrefixCache::new(0)), want, "serving loop, chunks of 3");
    assert_ne!(want[0], want[2], "the ablation changes the generated tokens");
}

#[test]
fn after_an_ablation_the_capture_at_its_point_has_no_component_along_the_direction() {
    let e = engine();
    let g = goldens();
    for c in g["cases"].as_array().unwrap().iter().filter(|c| c["op"] == "ablate" && c["window"] != "prefix") {
        let prompt = e.encode("Steering a language model one direction at a time", true).unwrap();
        let add = steering(c).in_window(Window::Range { start: 2, end: Some(9) });
        let u = add.values.to_vec();
        let got = e.capture_steered(std::slice::from_ref(&prompt), &[add.hook], &[vec![add.clone()]]).unwrap();
        let plain = e.capture(std::slice::from_ref(&prompt), &[add.hook]).unwrap();
        let dots = |t: &steer_model::Tensor| -> Vec<f64> {
            t.to_vec2::<f32>().unwrap().iter().map(|x| x.iter().zip(&u).map(|(a, b)| f64::from(*a) * f64::from(*b)).sum()).collect()
        };
        let (after, before) = (dots(&got[0][0]), dots(&plain[0][0]));
        for (pos, (a, b)) in after.iter().zip(&before).enumerate() {
            match (2..9).contains(&pos) {
                true => assert!(a.abs() < 1e-4, "{}: position {pos}: x.u = {a}", add.hook),
                false => assert_eq!(a, b, "{}: position {pos} is outside the window", add.hook),
            }
        }
        assert!(before[2..9].iter().any(|b| b.abs() > 1e-2), "the direction was there before");
    }
}

#[test]
fn an_sae_feature_steers_as_adding_scale_times_its_decoder_row_at_every_position() {
    let e = engine();
    let g = goldens();
    let s = &g["sae"];
    let sae = steer_vector::Sae::open(fixtures().join("../").join(s["dir"].as_str().unwrap())).unwrap();
    let model = steer_vector::ModelRef { name: "tiny".into(), d_model: 64, n_layer: 4, ..Default::default() };
    let (f, scale) = (s["feature"].as_u64().unwrap() as u32, s["scale"].as_f64().unwrap());
    let v = sae.vector("f", &[f], scale, None, model).unwrap();
    assert_eq!((v.mode(), v.op(), v.tensors[0].point), (Window::AllPositions, Op::Add, HookPoint::BlockOutput(1)));
    let want: Vec<f32> = sae.row(f as usize).iter().map(|&x| (f64::from(x) * scale) as f32).collect();
    assert_eq!(v.tensors[0].values, want);
    let t = &v.tensors[0];
    let rows = [row(ids(&s["prompt_ids"]), vec![Addition::all_positions(t.point, t.values.clone())])];
    let got = reference(&e, &rows, 20, true);
    assert_eq!(got[0], ids(&s["greedy"]), "SAE feature {f} x {scale} (written by {})", s["written_by"]);
    assert_ne!(got[0], ids(&g["unsteered_greedy"]));
}
