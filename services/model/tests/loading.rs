//! Model sources: a hand-made Hugging Face cache served offline, prefixed weight names, and
//! clear errors for what is missing.

use std::path::{Path, PathBuf};

use steer_model::random::{builtin_tokenizer, write_random_checkpoint, RandomInit};
use steer_model::{Config, Engine, HubOptions, LoadOptions, ModelSource};

fn tiny() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/tiny-gpt2")
}

fn logits(e: &Engine) -> Vec<Vec<f32>> {
    let p = e.encode("I went up to my friend and said", true).unwrap();
    e.logits(&[p], &[vec![]]).unwrap()[0].to_vec2::<f32>().unwrap()
}

/// `models--ORG--NAME/refs/REV` -> commit, `snapshots/COMMIT/<files>`, as hf-hub writes it.
fn make_cache(root: &Path, repo: &str, commit: &str) {
    let repo_dir = root.join(format!("models--{}", repo.replace('/', "--")));
    std::fs::create_dir_all(repo_dir.join("refs")).unwrap();
    std::fs::write(repo_dir.join("refs/main"), commit).unwrap();
    let snap = repo_dir.join("snapshots").join(commit);
    std::fs::create_dir_all(&snap).unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(tiny().join(f), snap.join(f)).unwrap();
    }
}

#[test]
fn offline_hub_cache_hit_loads_without_network() {
    let cache = tempfile::tempdir().unwrap();
    let commit = "0123456789abcdef0123456789abcdef01234567";
    make_cache(cache.path(), "openai-community/gpt2-xl", commit);
    let hub = HubOptions { offline: true, cache_dir: Some(cache.path().into()), ..HubOptions::from_env() };
    let opts = LoadOptions { hub, ..Default::default() };
    let e = Engine::load(&ModelSource::default(), &opts).unwrap();
    assert_eq!(e.info().name, "openai-community/gpt2-xl");
    let local = Engine::load(&ModelSource::Dir(tiny()), &LoadOptions::default()).unwrap();
    assert_eq!(logits(&e), logits(&local));
    // A commit hash as the revision reads the snapshot directly.
    let by_commit = ModelSource::Hub { repo: "openai-community/gpt2-xl".into(), revision: commit.into(), file: None };
    assert!(Engine::load(&by_commit, &opts).is_ok());
    // A revision that is not cached: one error naming what and where.
    let missing = ModelSource::Hub { repo: "openai-community/gpt2-xl".into(), revision: "v2".into(), file: None };
    let err = Engine::load(&missing, &opts).err().unwrap().to_string();
    assert!(err.contains("openai-community/gpt2-xl@v2") && err.contains(&cache.path().display().to_string()), "{err}");
}

#[test]
fn prefixed_weight_names_load_identically() {
    let cfg = Config::tiny();
    let dir = tempfile::tempdir().unwrap();
    let (plain, prefixed) = (dir.path().join("plain"), dir.path().join("prefixed"));
    let tok = builtin_tokenizer().unwrap();
    write_random_checkpoint(&plain, &cfg, &RandomInit { seed: 3, std: 0.1, prefixed: false }, &tok).unwrap();
    write_random_checkpoint(&prefixed, &cfg, &RandomInit { seed: 3, std: 0.1, prefixed: true }, &tok).unwrap();
    let a = Engine::load(&ModelSource::Dir(plain), &LoadOptions::default()).unwrap();
    let b = Engine::load(&ModelSource::Dir(prefixed), &LoadOptions::default()).unwrap();
    assert_eq!(logits(&a), logits(&b));
}

#[test]
fn f16_and_bf16_are_selectable_and_close_to_f32() {
    let f32e = Engine::load(&ModelSource::Dir(tiny()), &LoadOptions::default()).unwrap();
    let base = logits(&f32e);
    for (dtype, tol) in [(steer_model::WeightDtype::F16, 0.05f32), (steer_model::WeightDtype::Bf16, 0.3)] {
        let e = Engine::load(&ModelSource::Dir(tiny()), &LoadOptions { dtype: Some(dtype), ..Default::default() }).unwrap();
        let l = logits(&e);
        let worst = l.iter().flatten().zip(base.iter().flatten()).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(worst < tol, "{dtype}: max logit error {worst}");
        assert_eq!(e.info().dtype, dtype);
    }
}

#[test]
fn a_missing_model_says_what_was_looked_for_and_where() {
    let dir = tempfile::tempdir().unwrap();
    let err = Engine::load(&ModelSource::Dir(dir.path().join("nope")), &LoadOptions::default()).err().unwrap().to_string();
    assert!(err.contains("nope"), "{err}");
    std::fs::copy(tiny().join("config.json"), dir.path().join("config.json")).unwrap();
    let err = Engine::load(&ModelSource::Dir(dir.path().into()), &LoadOptions::default()).err().unwrap().to_string();
    assert!(err.contains("model.safetensors"), "{err}");
}

/// The tiny checkpoint rewritten with its 2-D matrices in BF16 (truncated), as a safetensors
/// file of its own.
fn bf16_checkpoint(to: &Path) {
    let raw = std::fs::read(tiny().join("model.safetensors")).unwrap();
    let n = u64::from_le_bytes(raw[..8].try_into().unwrap()) as usize;
    let header: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&raw[8..8 + n]).unwrap();
    let (mut out_header, mut data) = (serde_json::Map::new(), Vec::new());
    for (name, e) in header {
        if name == "__metadata__" {
            continue;
        }
        let (s, t) = (e["data_offsets"][0].as_u64().unwrap() as usize, e["data_offsets"][1].as_u64().unwrap() as usize);
        let bytes = &raw[8 + n + s..8 + n + t];
        let start = data.len();
        let dtype = if e["shape"].as_array().unwrap().len() == 2 {
            bytes.chunks_exact(4).for_each(|b| data.extend_from_slice(&b[2..4])); // the high half of each f32
            "BF16"
        } else {
            data.extend_from_slice(bytes);
            "F32"
        };
        out_header.insert(name, serde_json::json!({"dtype": dtype, "shape": e["shape"], "data_offsets": [start, data.len()]}));
    }
    let head = serde_json::to_vec(&out_header).unwrap();
    let mut file = (head.len() as u64).to_le_bytes().to_vec();
    file.extend(head);
    file.extend(data);
    std::fs::create_dir_all(to).unwrap();
    std::fs::write(to.join("model.safetensors"), file).unwrap();
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(tiny().join(f), to.join(f)).unwrap();
    }
}

#[test]
fn a_bf16_checkpoint_serves_as_bf16_unless_a_dtype_is_asked_for() {
    use steer_model::WeightDtype;
    let dir = tempfile::tempdir().unwrap();
    bf16_checkpoint(dir.path());
    let source = ModelSource::Dir(dir.path().into());
    let stored = Engine::load(&source, &LoadOptions::default()).unwrap();
    assert_eq!((stored.info().dtype, stored.info().stored_dtype), (WeightDtype::Bf16, WeightDtype::Bf16));
    assert_eq!(stored.info().precision(), "bf16 (as stored)");
    let asked = Engine::load(&source, &LoadOptions { dtype: Some(WeightDtype::Bf16), ..Default::default() }).unwrap();
    assert_eq!(logits(&stored), logits(&asked));
    let widened = Engine::load(&source, &LoadOptions { dtype: Some(WeightDtype::F32), ..Default::default() }).unwrap();
    assert_eq!(widened.info().precision(), "f32 (converted from bf16)");
    assert!(widened.weight_bytes() > stored.weight_bytes() * 3 / 2, "{} vs {}", widened.weight_bytes(), stored.weight_bytes());
}
