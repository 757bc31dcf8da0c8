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
        let e = Engine::load(&ModelSource::Dir(tiny()), &LoadOptions { dtype, ..Default::default() }).unwrap();
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
