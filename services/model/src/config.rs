//! `config.json` of a GPT-2 checkpoint (the Hugging Face `GPT2Config` fields we use).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};

/// GPT-2 hyper-parameters, as written by `transformers` in `config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Config {
    #[serde(default = "default_vocab_size")]
    pub vocab_size: usize,
    pub n_positions: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    /// Width of the MLP; `None` means 4 * n_embd.
    #[serde(default)]
    pub n_inner: Option<usize>,
    #[serde(default = "default_eps")]
    pub layer_norm_epsilon: f64,
    #[serde(default = "default_activation")]
    pub activation_function: String,
    #[serde(default = "default_eos")]
    pub bos_token_id: u32,
    #[serde(default = "default_eos")]
    pub eos_token_id: u32,
    #[serde(default = "default_model_type")]
    pub model_type: String,
}

fn default_vocab_size() -> usize {
    50257
}
fn default_eps() -> f64 {
    1e-5
}
fn default_activation() -> String {
    "gelu_new".into()
}
fn default_eos() -> u32 {
    50256
}
fn default_model_type() -> String {
    "gpt2".into()
}

/// The MLP non-linearity named by `activation_function`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// tanh approximation (`gelu_new`, `gelu_pytorch_tanh`, `gelu_fast`): GPT-2's own.
    GeluTanh,
    /// exact erf GELU (`gelu`).
    GeluErf,
    Relu,
}

impl Config {
    /// Shapes of the released checkpoints.
    pub fn gpt2_small() -> Self {
        Self::with_shape(12, 768, 12)
    }
    pub fn gpt2_medium() -> Self {
        Self::with_shape(24, 1024, 16)
    }
    pub fn gpt2_large() -> Self {
        Self::with_shape(36, 1280, 20)
    }
    pub fn gpt2_xl() -> Self {
        Self::with_shape(48, 1600, 25)
    }
    /// The tiny shape the tests use: real vocabulary, 4 layers of width 64.
    pub fn tiny() -> Self {
        Self { n_positions: 256, ..Self::with_shape(4, 64, 4) }
    }

    pub fn with_shape(n_layer: usize, n_embd: usize, n_head: usize) -> Self {
        Self {
            vocab_size: default_vocab_size(),
            n_positions: 1024,
            n_embd,
            n_layer,
            n_head,
            n_inner: None,
            layer_norm_epsilon: default_eps(),
            activation_function: default_activation(),
            bos_token_id: default_eos(),
            eos_token_id: default_eos(),
            model_type: default_model_type(),
        }
    }

    /// Named shape: `tiny`, `small` (or `gpt2`), `medium`, `large`, `xl`.
    pub fn by_name(name: &str) -> Option<Self> {
        Some(match name {
            "tiny" => Self::tiny(),
            "small" | "gpt2" => Self::gpt2_small(),
            "medium" => Self::gpt2_medium(),
            "large" => Self::gpt2_large(),
            "xl" => Self::gpt2_xl(),
            _ => return None,
        })
    }

    /// Bytes the loaded weights take in `dtype` (what [`crate::Gpt2::weight_bytes`] reports once
    /// loaded), from the shapes alone: the embedding matrix and each block's four matrices in
    /// `dtype`, their biases in f32 (layer norms and positions are noise). For sizing memory
    /// before a model is downloaded (`steer generation-worker --print-memory-plan`).
    pub fn weight_bytes(&self, dtype: crate::WeightDtype) -> usize {
        let d = self.n_embd;
        let inner = self.n_inner.unwrap_or(4 * d);
        // Linears in panels of 32 columns (n_out padded), q8_0 in rows of 32-weight blocks.
        let elems = |n_in: usize, n_out: usize, panels: bool| {
            let cols = if panels { n_out.next_multiple_of(32) } else { n_out };
            match dtype {
                crate::WeightDtype::F32 => n_in * cols * 4,
                crate::WeightDtype::F16 | crate::WeightDtype::Bf16 => n_in * cols * 2,
                crate::WeightDtype::Q8_0 => n_in.div_ceil(32) * n_out * 34,
            }
        };
        let linear = |n_in: usize, n_out: usize| elems(n_in, n_out, true) + n_out * 4;
        let block = linear(d, 3 * d) + linear(d, d) + linear(d, inner) + linear(inner, d);
        elems(d, self.vocab_size, false) + self.n_layer * block
    }

    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
        let cfg: Config = serde_json::from_str(&text).map_err(|e| ModelError::Config { path: path.into(), message: e.to_string() })?;
        cfg.validate().map_err(|message| ModelError::Config { path: path.into(), message })?;
        Ok(cfg)
    }

    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.n_head == 0 || !self.n_embd.is_multiple_of(self.n_head) {
            return Err(format!("n_embd ({}) must be a multiple of n_head ({})", self.n_embd, self.n_head));
        }
        if self.n_layer == 0 || self.n_positions == 0 || self.vocab_size == 0 {
            return Err("n_layer, n_positions and vocab_size must be positive".into());
        }
        self.activation()?;
        Ok(())
    }

    pub fn activation(&self) -> std::result::Result<Activation, String> {
        match self.activation_function.as_str() {
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Ok(Activation::GeluTanh),
            "gelu" => Ok(Activation::GeluErf),
            "relu" => Ok(Activation::Relu),
            other => Err(format!("unsupported activation_function `{other}`")),
        }
    }

    pub fn head_dim(&self) -> usize {
        self.n_embd / self.n_head
    }

    pub fn inner_dim(&self) -> usize {
        self.n_inner.unwrap_or(4 * self.n_embd)
    }

    /// Number of parameters (embeddings counted once: lm_head is tied to wte).
    pub fn n_params(&self) -> usize {
        let d = self.n_embd;
        let f = self.inner_dim();
        let block = 2 * 2 * d + (d * 3 * d + 3 * d) + (d * d + d) + (d * f + f) + (f * d + d);
        self.vocab_size * d + self.n_positions * d + self.n_layer * block + 2 * d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xl_has_1_56b_parameters() {
        let n = Config::gpt2_xl().n_params();
        assert_eq!(n, 1_557_611_200);
    }

    #[test]
    fn parses_hub_config_and_defaults() {
        let json = r#"{"n_positions":1024,"n_embd":1600,"n_layer":48,"n_head":25,
            "activation_function":"gelu_new","layer_norm_epsilon":1e-05,"n_ctx":1024}"#;
        let cfg: Config = serde_json::from_str(json).unwrap();
        assert_eq!(cfg.vocab_size, 50257);
        assert_eq!(cfg.head_dim(), 64);
        assert_eq!(cfg.inner_dim(), 6400);
        assert_eq!(cfg.activation().unwrap(), Activation::GeluTanh);
        assert!(cfg.validate().is_ok());
    }

    #[test]
    fn rejects_bad_shapes() {
        let mut cfg = Config::tiny();
        cfg.n_head = 5;
        assert!(cfg.validate().is_err());
        let mut cfg = Config::tiny();
        cfg.activation_function = "swish".into();
        assert!(cfg.validate().unwrap_err().contains("swish"));
    }
}
