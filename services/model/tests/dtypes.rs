//! Each weight dtype against f32, on the parity prompts of the Hugging Face goldens: max abs
//! logit error, mean next-token KL(f32 || dtype), top-1 agreement, and the cosine similarity
//! of ActAdd steering tensors; on the committed tiny model and on a random model of GPT-2
//! small's width (d_model 768, 12 heads; 2 layers to keep the test fast).
//!
//! Tolerances from each format's rounding: a weight is stored with relative error at most u,
//! u = 2^-9 for bf16 (8 significant bits), 2^-12 for f16 (11 bits), and for q8_0 half a step of
//! its block's max/127, u = 1/254, with the small-batch kernel rounding activations to int8
//! blocks as well (2u). A logit is a sum of such products through the network, so its error
//! is bounded by a small multiple of u times the scale of the logits: the tests hold
//! max |logit error| <= 8 u max|logit| (and 8 x 2u for q8_0), KL <= (8u)^2 x 8 (a second-order
//! quantity in the logit error), and top-1 agreement >= 1 - 64u (a flip needs two logits
//! within the error of each other). The measured figures are printed and sit well inside.

use std::path::PathBuf;

use steer_model::random::{builtin_tokenizer, write_random_checkpoint, RandomInit};
use steer_model::tokenizer::SPACE;
use steer_model::{Config, Engine, HookPoint, LoadOptions, ModelSource, WeightDtype};

fn tiny() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/tiny-gpt2")
}

fn goldens() -> serde_json::Value {
    let text = std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/goldens/tiny-gpt2.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The format's unit rounding error (see the module doc).
fn unit(dtype: WeightDtype) -> f64 {
    match dtype {
        WeightDtype::F32 => f32::EPSILON as f64 / 2.0,
        WeightDtype::Bf16 => 2f64.powi(-9),
        WeightDtype::F16 => 2f64.powi(-12),
        WeightDtype::Q8_0 => 2.0 / 254.0,
    }
}

#[derive(Debug, Default)]
struct Accuracy {
    max_abs: f64,
    max_logit: f64,
    kl_sum: f64,
    positions: usize,
    top1_same: usize,
    min_cosine: f64,
}

fn log_softmax(v: &[f32]) -> Vec<f64> {
    let max = v.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let z = v.iter().map(|&x| (x as f64 - max).exp()).sum::<f64>().ln() + max;
    v.iter().map(|&x| x as f64 - z).collect()
}

fn argmax(v: &[f32]) -> usize {
    v.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

/// ActAdd's steering tensor for one golden: coeff * (act(plus) - act(minus)) at its hook,
/// the two prompts right-padded with spaces to equal length.
fn steering(e: &Engine, a: &serde_json::Value, n_layer: usize) -> Vec<f32> {
    let bos = a["bos"].as_bool().unwrap();
    let mut plus = e.encode(a["plus"].as_str().unwrap(), bos).unwrap();
    let mut minus = e.encode(a["minus"].as_str().unwrap(), bos).unwrap();
    let k = plus.len().max(minus.len());
    plus.resize(k, SPACE);
    minus.resize(k, SPACE);
    let layer = (a["layer"].as_u64().unwrap() as usize).min(n_layer - 1);
    let point = if a["hook"].as_str().unwrap().contains("out") { HookPoint::BlockOutput(layer) } else { HookPoint::ResidPre(layer) };
    let acts = e.capture(&[plus, minus], &[point]).unwrap();
    let (p, m) = (acts[0][0].flatten_all().unwrap().to_vec1::<f32>().unwrap(), acts[1][0].flatten_all().unwrap().to_vec1::<f32>().unwrap());
    let c = a["coeff"].as_f64().unwrap() as f32;
    p.iter().zip(&m).map(|(x, y)| c * (x - y)).collect()
}

fn measure(source: &ModelSource, dtype: WeightDtype, base: &Engine) -> Accuracy {
    let e = Engine::load(source, &LoadOptions { dtype: Some(dtype), ..Default::default() }).unwrap();
    assert_eq!(e.info().dtype, dtype);
    let g = goldens();
    let mut acc = Accuracy { min_cosine: 1.0, ..Default::default() };
    for p in g["prompts"].as_array().unwrap() {
        let ids = e.encode(p["text"].as_str().unwrap(), p["bos"].as_bool().unwrap()).unwrap();
        let want = base.logits(std::slice::from_ref(&ids), &[vec![]]).unwrap()[0].to_vec2::<f32>().unwrap();
        let got = e.logits(&[ids], &[vec![]]).unwrap()[0].to_vec2::<f32>().unwrap();
        for (w, g) in want.iter().zip(&got) {
            for (a, b) in w.iter().zip(g) {
                acc.max_abs = acc.max_abs.max((a - b).abs() as f64);
                acc.max_logit = acc.max_logit.max(a.abs() as f64);
            }
            let (lw, lg) = (log_softmax(w), log_softmax(g));
            acc.kl_sum += lw.iter().zip(&lg).map(|(a, b)| a.exp() * (a - b)).sum::<f64>();
            acc.positions += 1;
            acc.top1_same += usize::from(argmax(w) == argmax(g));
        }
    }
    let n_layer = e.info().n_layer;
    for a in g["actadd"].as_array().unwrap() {
        acc.min_cosine = acc.min_cosine.min(cosine(&steering(base, a, n_layer), &steering(&e, a, n_layer)));
    }
    acc
}

fn check_all(name: &str, source: &ModelSource) {
    let base = Engine::load(source, &LoadOptions::default()).unwrap();
    eprintln!("{name}: dtype | max abs logit error (max |logit|) | mean KL | top-1 agreement | min steering cosine");
    for dtype in [WeightDtype::Bf16, WeightDtype::F16, WeightDtype::Q8_0] {
        let a = measure(source, dtype, &base);
        let (u, kl) = (unit(dtype), a.kl_sum / a.positions as f64);
        let top1 = a.top1_same as f64 / a.positions as f64;
        eprintln!("{name}: {dtype} | {:.2e} ({:.2}) | {kl:.2e} | {:.4} | {:.6}", a.max_abs, a.max_logit, top1, a.min_cosine);
        assert!(a.max_abs <= 8.0 * u * a.max_logit.max(1.0), "{name} {dtype}: max logit error {} > 8u x {}", a.max_abs, a.max_logit);
        assert!(kl <= 8.0 * (8.0 * u).powi(2), "{name} {dtype}: mean KL {kl}");
        assert!(top1 >= 1.0 - 64.0 * u, "{name} {dtype}: top-1 agreement {top1}");
        assert!(a.min_cosine >= 1.0 - 8.0 * u * u.sqrt(), "{name} {dtype}: steering cosine {}", a.min_cosine);
    }
}

#[test]
fn every_dtype_stays_within_its_formats_error_on_the_tiny_model() {
    check_all("tiny", &ModelSource::Dir(tiny()));
}

#[test]
fn every_dtype_stays_within_its_formats_error_at_gpt2_smalls_width() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = Config { n_positions: 128, ..Config::with_shape(2, 768, 12) };
    write_random_checkpoint(dir.path(), &cfg, &RandomInit { seed: 11, std: 0.02, prefixed: false }, &builtin_tokenizer().unwrap()).unwrap();
    check_all("small-width", &ModelSource::Dir(dir.path().into()));
}

/// `Config::weight_bytes` (what a pod's memory limit is sized from before any download) is what
/// the loaded weights take, in every dtype.
#[test]
fn weight_bytes_from_the_shapes_match_the_loaded_weights() {
    let source = ModelSource::Dir(tiny());
    let cfg = Config::from_file(&tiny().join("config.json")).unwrap();
    for dtype in WeightDtype::ALL {
        let e = Engine::load(&source, &LoadOptions { dtype: Some(dtype), ..Default::default() }).unwrap();
        assert_eq!(cfg.weight_bytes(dtype), e.weight_bytes(), "{dtype:?}");
    }
}
