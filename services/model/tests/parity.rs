//! The engine against Hugging Face `transformers` on the committed tiny random GPT-2
//! (goldens written by scripts/make_goldens.py).

use std::ops::ControlFlow;
use std::path::PathBuf;

use serde_json::Value;
use steer_model::{Addition, Engine, GenerateOptions, HookPoint, LoadOptions, ModelSource, RowRequest, SamplingParams, Tensor};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

fn engine() -> Engine {
    Engine::load(&ModelSource::Dir(fixtures().join("tiny-gpt2")), &LoadOptions::default()).unwrap()
}

fn goldens() -> Value {
    let text = std::fs::read_to_string(fixtures().join("goldens/tiny-gpt2.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

fn matrix(v: &Value) -> Vec<Vec<f32>> {
    v.as_array().unwrap().iter().map(|r| r.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()).collect()
}

fn max_abs_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    assert_eq!(a.len(), b.len(), "rows");
    a.iter()
        .zip(b)
        .flat_map(|(x, y)| {
            assert_eq!(x.len(), y.len(), "cols");
            x.iter().zip(y).map(|(p, q)| (p - q).abs())
        })
        .fold(0.0, f32::max)
}

fn prompts(g: &Value) -> Vec<Vec<u32>> {
    g["prompts"].as_array().unwrap().iter().map(|p| ids(&p["ids"])).collect()
}

fn greedy_rows(prompts: &[Vec<u32>], additions: Vec<Vec<Addition>>) -> Vec<RowRequest> {
    prompts.iter().zip(additions).map(|(p, a)| RowRequest { prompt: p.clone(), additions: a, sampling: SamplingParams::greedy(), seed: 0 }).collect()
}

fn run(engine: &Engine, rows: &[RowRequest], n: usize, cache: bool) -> Vec<Vec<u32>> {
    let opts = GenerateOptions { max_new_tokens: n, stop_at_eos: false, use_kv_cache: cache, top_logprobs: 0 };
    engine.generate(rows, &opts, |_| ControlFlow::Continue(())).unwrap().into_iter().map(|o| o.tokens).collect()
}

#[test]
fn tokenizer_ids_match_hugging_face() {
    let e = engine();
    let g = goldens();
    for p in g["prompts"].as_array().unwrap() {
        let got = e.encode(p["text"].as_str().unwrap(), p["bos"].as_bool().unwrap()).unwrap();
        assert_eq!(got, ids(&p["ids"]), "{}", p["text"]);
    }
    assert_eq!(e.encode("I talk about weddings constantly  ", false).unwrap(), vec![40, 1561, 546, 37377, 7558, 220, 220]);
    assert_eq!(e.encode("Love ", false).unwrap(), vec![18565, 220]);
    assert_eq!(e.encode("Hate", false).unwrap(), vec![39, 378]);
    assert_eq!(e.encode("Love", true).unwrap(), vec![50256, 18565]);
    assert_eq!(e.tokenizer().decode(&[40, 1561, 546, 37377, 7558]).unwrap(), "I talk about weddings constantly");
}

#[test]
fn residual_stream_at_every_hook_matches_hugging_face() {
    let e = engine();
    let g = goldens();
    let n_layer = e.info().n_layer;
    let points: Vec<HookPoint> = (0..n_layer).flat_map(|l| [HookPoint::ResidPre(l), HookPoint::BlockOutput(l)]).collect();
    // All prompts in one left-padded batch: padding must not leak into any row.
    let got = e.capture(&prompts(&g), &points).unwrap();
    let mut worst = 0f32;
    for (row, p) in g["prompts"].as_array().unwrap().iter().enumerate() {
        for (j, pt) in points.iter().enumerate() {
            let want = matrix(&p["streams"][pt.to_string()]);
            let have = got[row][j].to_vec2::<f32>().unwrap();
            let d = max_abs_diff(&have, &want);
            assert!(d <= 1e-4, "{} at {pt}: max abs error {d}", p["text"]);
            worst = worst.max(d);
        }
    }
    eprintln!("worst stream error {worst:e}");
}

#[test]
fn logits_match_hugging_face() {
    let e = engine();
    let g = goldens();
    let prompts = prompts(&g);
    let logits = e.logits(&prompts, &vec![vec![]; prompts.len()]).unwrap();
    for (row, p) in g["prompts"].as_array().unwrap().iter().enumerate() {
        let have = logits[row].to_vec2::<f32>().unwrap();
        let head: Vec<Vec<f32>> = have.iter().map(|r| r[..32].to_vec()).collect();
        let d = max_abs_diff(&head, &matrix(&p["logits_head32"]));
        assert!(d <= 1e-4, "{}: logits head error {d}", p["text"]);
        let top_ids = p["logits_top10_ids"].as_array().unwrap();
        let top_vals = matrix(&p["logits_top10_values"]);
        for (pos, r) in have.iter().enumerate() {
            let want_ids = ids(&top_ids[pos]);
            for (k, &id) in want_ids.iter().enumerate() {
                let d = (r[id as usize] - top_vals[pos][k]).abs();
                assert!(d <= 1e-4, "{} pos {pos}: logit of {id} off by {d}", p["text"]);
            }
            let lse = {
                let m = r.iter().copied().fold(f32::MIN, f32::max);
                m + r.iter().map(|&x| ((x - m) as f64).exp()).sum::<f64>().ln() as f32
            };
            let want = p["logits_logsumexp"][pos].as_f64().unwrap() as f32;
            assert!((lse - want).abs() <= 1e-4, "logsumexp {lse} vs {want}");
            assert_eq!(steer_model::sampler::argmax(r), want_ids[0], "{} pos {pos}: argmax", p["text"]);
        }
    }
}

#[test]
fn greedy_with_and_without_kv_cache_matches_hugging_face() {
    let e = engine();
    let g = goldens();
    let prompts = prompts(&g);
    let rows = greedy_rows(&prompts, vec![vec![]; prompts.len()]);
    let cached = run(&e, &rows, 20, true);
    let uncached = run(&e, &rows, 20, false);
    assert_eq!(cached, uncached);
    for (row, p) in g["prompts"].as_array().unwrap().iter().enumerate() {
        assert_eq!(cached[row], ids(&p["greedy"]), "{}", p["text"]);
        // Alone (no padding) it is the same too.
        assert_eq!(run(&e, &rows[row..row + 1], 20, true)[0], cached[row]);
    }
}

fn hook_of(a: &Value) -> HookPoint {
    format!("{}.{}", a["hook"].as_str().unwrap(), a["layer"]).parse().unwrap()
}

#[test]
fn actadd_steering_tensor_and_steered_greedy_match_hugging_face() {
    let e = engine();
    let g = goldens();
    for a in g["actadd"].as_array().unwrap() {
        let hook = hook_of(a);
        let coeff = a["coeff"].as_f64().unwrap();
        let plus = e.encode(a["plus"].as_str().unwrap(), true).unwrap();
        let minus = e.encode(a["minus"].as_str().unwrap(), true).unwrap();
        let acts = e.capture(&[plus, minus], &[hook]).unwrap();
        let steer = ((&acts[0][0] - &acts[1][0]).unwrap() * coeff).unwrap();
        let want = matrix(&a["steering"]);
        let d = max_abs_diff(&steer.to_vec2::<f32>().unwrap(), &want);
        assert!(d <= 1e-3, "{hook}: steering error {d}");

        let prompt = ids(&a["prompt_ids"]);
        let golden_tensor = Tensor::new(want, &steer_model::Device::Cpu).unwrap();
        for tensor in [steer, golden_tensor] {
            let rows = greedy_rows(std::slice::from_ref(&prompt), vec![vec![Addition::from_tensor(hook, &tensor).unwrap()]]);
            let steered = run(&e, &rows, 20, true);
            assert_eq!(steered[0], ids(&a["steered_greedy"]), "{hook}");
            assert_eq!(run(&e, &rows, 20, false), steered, "{hook}: cache vs recompute");
        }
        let plain = run(&e, &greedy_rows(std::slice::from_ref(&prompt), vec![vec![]]), 20, true);
        assert_eq!(plain[0], ids(&a["unsteered_greedy"]));
        // Unsteered and steered in one prefill, sharing the streams below the steering.
        let steer = Addition::from_tensor(hook, &Tensor::new(matrix(&a["steering"]), &steer_model::Device::Cpu).unwrap()).unwrap();
        let both = run(&e, &greedy_rows(&[prompt.clone(), prompt], vec![vec![], vec![steer]]), 20, true);
        assert_eq!(both, vec![ids(&a["unsteered_greedy"]), ids(&a["steered_greedy"])], "{hook}: shared prefill");
        assert_ne!(plain[0], ids(&a["steered_greedy"]), "the steering must change something");
    }
}

/// all_positions steering (control vectors, CAA): a direction added at every position of every
/// pass, against a Hugging Face forward hook that does the same (scripts/make_vector_goldens.py).
#[test]
fn all_positions_steering_matches_a_hugging_face_hook_at_every_position() {
    let e = engine();
    let text = std::fs::read_to_string(fixtures().join("goldens/tiny-gpt2-vectors.json")).unwrap();
    let g: Value = serde_json::from_str(&text).unwrap();
    for c in g["all_positions"].as_array().unwrap() {
        let layer = c["layer"].as_u64().unwrap() as usize;
        let hook = match c["hook"].as_str().unwrap() {
            "resid_pre" => HookPoint::ResidPre(layer),
            _ => HookPoint::BlockOutput(layer),
        };
        let golden: Vec<f32> = c["direction"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
        // Our captures give the same direction.
        let acts = e.capture(&[e.encode("Love ", true).unwrap(), e.encode("Hate", true).unwrap()], &[hook]).unwrap();
        let last = |t: &Tensor| t.get(t.dim(0).unwrap() - 1).unwrap().to_vec1::<f32>().unwrap();
        let coeff = c["coeff"].as_f64().unwrap() as f32;
        let ours: Vec<f32> = last(&acts[0][0]).iter().zip(last(&acts[1][0])).map(|(p, m)| coeff * (p - m)).collect();
        assert!(max_abs_diff(&[ours], std::slice::from_ref(&golden)) < 1e-4, "{hook}: direction");
        let prompt = ids(&c["prompt_ids"]);
        let dir = Addition::all_positions(hook, golden.clone());
        for cache in [true, false] {
            let got = run(&e, &greedy_rows(std::slice::from_ref(&prompt), vec![vec![dir.clone()]]), 20, cache);
            assert_eq!(got[0], ids(&c["steered_greedy"]), "{hook}, kv cache {cache}");
        }
        // Beside an unsteered row and a prefix (ActAdd) row of the same values: each its own.
        let prefix = Addition::new(hook, 1, golden);
        let mixed = run(&e, &greedy_rows(&[prompt.clone(), prompt.clone(), prompt.clone()], vec![vec![], vec![dir], vec![prefix]]), 20, true);
        assert_eq!(mixed[0], ids(&c["unsteered_greedy"]), "{hook}");
        assert_eq!(mixed[1], ids(&c["steered_greedy"]), "{hook}: mixed batch");
        assert_ne!(mixed[2], mixed[1], "{hook}: prefix placement differs from all positions");
        assert_ne!(mixed[0], mixed[1], "{hook}: the direction must change something");
    }
}

/// Teacher-forced scores (GenerationService.Score's engine path) against Hugging Face, plain,
/// with an ActAdd prefix tensor and with an all-positions direction
/// (scripts/make_score_goldens.py); the next-token KL and its largest terms too.
#[test]
fn teacher_forced_scores_match_hugging_face_with_and_without_steering() {
    let e = engine();
    let text = std::fs::read_to_string(fixtures().join("goldens/tiny-gpt2-score.json")).unwrap();
    let g: Value = serde_json::from_str(&text).unwrap();
    let floats = |v: &Value| v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect::<Vec<f32>>();
    let tensor = matrix(&g["prefix"]["tensor"]);
    let prefix = Addition::new(HookPoint::ResidPre(2), tensor.len(), tensor.concat());
    let dir = Addition::all_positions(HookPoint::BlockOutput(1), floats(&g["all_positions"]["direction"]));
    for t in g["texts"].as_array().unwrap() {
        let (ids, start) = (ids(&t["ids"]), t["start"].as_u64().unwrap() as usize);
        let rows = vec![ids.clone(); 3];
        let scored = e.score(&rows, &[vec![], vec![prefix.clone()], vec![dir.clone()]], &[start; 3], true).unwrap();
        for (s, key) in scored.iter().zip(["unsteered", "prefix", "all_positions"]) {
            let want = floats(&t[key]);
            assert_eq!(s.logprobs.len(), want.len(), "{key}");
            let err = s.logprobs.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
            assert!(err < 1e-4, "{} {key}: max error {err}", t["continuation"]);
        }
        if let Some(kl) = t["next_token_kl"].as_f64() {
            let (p, q) = (scored[1].next.as_ref().unwrap(), scored[0].next.as_ref().unwrap());
            let terms: Vec<f64> = p.iter().zip(q).map(|(&a, &b)| (a as f64).exp() * (a as f64 - b as f64)).collect();
            assert!((terms.iter().sum::<f64>() - kl).abs() < 1e-4, "KL");
            for pair in t["kl_top"].as_array().unwrap() {
                let (token, value) = (pair[0].as_u64().unwrap() as usize, pair[1].as_f64().unwrap());
                assert!((terms[token] - value).abs() < 1e-4, "term of token {token}");
            }
        }
    }
}
