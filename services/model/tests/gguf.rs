//! GGUF files written by the `gguf` Python package (llama.cpp's writer; scripts/make_gguf.py)
//! from the tiny model load as the same model: the same hyper-parameters, the same tokenizer,
//! and the same logits as the safetensors checkpoint loaded in the same dtype (bit for bit: the
//! f16 values and the q8_0 blocks are the ones our loader makes from the f32 checkpoint).

use std::path::PathBuf;

use steer_model::{Engine, LoadOptions, ModelSource, WeightDtype};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

fn gguf(kind: &str) -> PathBuf {
    fixtures().join(format!("tiny-gpt2-gguf/tiny-gpt2-{kind}.gguf"))
}

fn load(source: &ModelSource, dtype: WeightDtype) -> Engine {
    Engine::load(source, &LoadOptions { dtype: Some(dtype), ..Default::default() }).unwrap()
}

fn logits(e: &Engine) -> Vec<Vec<f32>> {
    let p = e.encode("I went up to my friend and said", true).unwrap();
    e.logits(&[p], &[vec![]]).unwrap()[0].to_vec2::<f32>().unwrap()
}

#[test]
fn each_gguf_type_loads_as_the_safetensors_model_in_that_dtype() {
    let st = ModelSource::Dir(fixtures().join("tiny-gpt2"));
    for (kind, dtype) in [("f32", WeightDtype::F32), ("f16", WeightDtype::F16), ("q8_0", WeightDtype::Q8_0)] {
        let g = load(&ModelSource::Dir(gguf(kind)), dtype);
        let s = load(&st, dtype);
        let (gi, si) = (g.info(), s.info());
        assert_eq!(
            (gi.n_layer, gi.d_model, gi.n_head, gi.n_positions, gi.vocab_size, gi.dtype),
            (si.n_layer, si.d_model, si.n_head, si.n_positions, si.vocab_size, si.dtype),
            "{kind}"
        );
        let text = "Hello, world! I hate you because I love you. 123 \u{e9}t\u{e9}";
        assert_eq!(g.encode(text, true).unwrap(), s.encode(text, true).unwrap(), "{kind}: the GGUF's own tokenizer");
        assert_eq!(logits(&g), logits(&s), "{kind}: logits bit for bit");
        assert_eq!(g.weight_bytes(), s.weight_bytes(), "{kind}: the same bytes per token");
    }
}

#[test]
fn a_gguf_loads_in_another_dtype_and_from_its_directory() {
    // q8_0 weights asked for as bf16: dequantized, then rounded to bf16 (close to f32).
    let e = load(&ModelSource::Dir(gguf("q8_0")), WeightDtype::Bf16);
    assert_eq!(e.info().dtype, WeightDtype::Bf16);
    let f32e = load(&ModelSource::Dir(fixtures().join("tiny-gpt2")), WeightDtype::F32);
    let worst = logits(&e).iter().flatten().zip(logits(&f32e).iter().flatten()).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(worst < 0.5, "max logit error {worst}");
    // A directory holding one GGUF file is that file; several must be named.
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(gguf("f16"), dir.path().join("model.gguf")).unwrap();
    assert_eq!(
        logits(&load(&ModelSource::Dir(dir.path().into()), WeightDtype::F16)),
        logits(&load(&ModelSource::Dir(gguf("f16")), WeightDtype::F16))
    );
    std::fs::copy(gguf("f32"), dir.path().join("other.gguf")).unwrap();
    let err = Engine::load(&ModelSource::Dir(dir.path().into()), &LoadOptions::default()).err().unwrap().to_string();
    assert!(err.contains("several GGUF files") && err.contains("other.gguf"), "{err}");
}

#[test]
fn a_gguf_in_the_hub_cache_loads_offline() {
    let cache = tempfile::tempdir().unwrap();
    let commit = "89abcdef0123456789abcdef0123456789abcdef";
    let repo_dir = cache.path().join("models--ggml-org--tiny-gpt2-GGUF");
    std::fs::create_dir_all(repo_dir.join("refs")).unwrap();
    std::fs::write(repo_dir.join("refs/main"), commit).unwrap();
    std::fs::create_dir_all(repo_dir.join("snapshots").join(commit)).unwrap();
    std::fs::copy(gguf("q8_0"), repo_dir.join("snapshots").join(commit).join("tiny-gpt2-q8_0.gguf")).unwrap();
    let hub = steer_model::HubOptions { offline: true, cache_dir: Some(cache.path().into()), ..steer_model::HubOptions::from_env() };
    let source = ModelSource::parse("ggml-org/tiny-gpt2-GGUF/tiny-gpt2-q8_0.gguf", None);
    let e = Engine::load(&source, &LoadOptions { dtype: Some(WeightDtype::Q8_0), hub, ..Default::default() }).unwrap();
    assert_eq!(e.info().name, "ggml-org/tiny-gpt2-GGUF/tiny-gpt2-q8_0.gguf");
    assert_eq!(logits(&e), logits(&load(&ModelSource::Dir(gguf("q8_0")), WeightDtype::Q8_0)));
    // The repository alone: its one GGUF file.
    let opts = LoadOptions {
        dtype: Some(WeightDtype::Q8_0),
        hub: steer_model::HubOptions { offline: true, cache_dir: Some(cache.path().into()), ..steer_model::HubOptions::from_env() },
        ..Default::default()
    };
    let whole = Engine::load(&ModelSource::parse("ggml-org/tiny-gpt2-GGUF", None), &opts).unwrap();
    assert_eq!(logits(&whole), logits(&e));
}

#[test]
fn an_untied_output_or_a_foreign_architecture_is_refused_by_name() {
    use steer_model::candle_core::quantized::gguf_file::Content;
    let bytes = std::fs::read(gguf("q8_0")).unwrap();
    let content = Content::read(&mut std::io::Cursor::new(&bytes)).unwrap();
    let at = (content.tensor_data_offset + content.tensor_infos["output.weight"].offset) as usize;
    let dir = tempfile::tempdir().unwrap();
    let mut untied = bytes.clone();
    untied[at + 2] ^= 0x55; // a weight of output.weight's first block
    std::fs::write(dir.path().join("untied.gguf"), &untied).unwrap();
    let err = Engine::load(&ModelSource::Dir(dir.path().join("untied.gguf")), &LoadOptions { dtype: Some(WeightDtype::Q8_0), ..Default::default() })
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("output.weight differs from token_embd.weight"), "{err}");
    // `general.architecture` = "gpt2" -> "gptj" (same length, so the file stays well formed)
    let key = b"general.architecture";
    let pos = bytes.windows(key.len()).position(|w| w == key).unwrap();
    let value = bytes[pos..].windows(4).position(|w| w == b"gpt2").unwrap() + pos;
    let mut other = bytes.clone();
    other[value..value + 4].copy_from_slice(b"gptj");
    std::fs::write(dir.path().join("gptj.gguf"), &other).unwrap();
    let err = Engine::load(&ModelSource::Dir(dir.path().join("gptj.gguf")), &LoadOptions::default()).err().unwrap().to_string();
    assert!(err.contains("`gptj`") && err.contains("GPT-2"), "{err}");
    // Cut short: an error naming a tensor that runs past the end, never a huge allocation.
    std::fs::write(dir.path().join("short.gguf"), &bytes[..bytes.len() / 2]).unwrap();
    let err = Engine::load(&ModelSource::Dir(dir.path().join("short.gguf")), &LoadOptions::default()).err().unwrap().to_string();
    assert!(err.contains("runs past the end"), "{err}");
}

#[test]
fn weights_keep_the_files_type_unless_a_dtype_is_asked_for() {
    for (kind, dtype) in [("f32", WeightDtype::F32), ("f16", WeightDtype::F16), ("q8_0", WeightDtype::Q8_0)] {
        let source = ModelSource::Dir(gguf(kind));
        let stored = Engine::load(&source, &LoadOptions::default()).unwrap();
        let i = stored.info();
        assert_eq!((i.dtype, i.stored_dtype), (dtype, dtype), "{kind}");
        assert_eq!(i.precision(), format!("{kind} (as stored)"));
        // The same model as asking for the file's type by name, held in as few bytes.
        let asked = load(&source, dtype);
        assert_eq!(logits(&stored), logits(&asked), "{kind}");
        assert_eq!(stored.weight_bytes(), asked.weight_bytes(), "{kind}");
        // Converting is explicit, and said.
        let widened = load(&source, WeightDtype::F32);
        assert_eq!((widened.info().dtype, widened.info().stored_dtype), (WeightDtype::F32, dtype));
        if kind != "f32" {
            assert_eq!(widened.info().precision(), format!("f32 (converted from {kind})"));
            assert!(widened.weight_bytes() > stored.weight_bytes(), "{kind}");
        }
    }
    // The safetensors fixture stores f32.
    let st = Engine::load(&ModelSource::Dir(fixtures().join("tiny-gpt2")), &LoadOptions::default()).unwrap();
    assert_eq!(st.info().precision(), "f32 (as stored)");
}
