//! The engine the services use: a loaded model and tokenizer, and three operations on batches
//! of rows of different lengths (left-padded, with position ids and an attention mask):
//! capture activations at hook points, score text, and generate with per-row steering.
//!
//! | entry point | for | file |
//! |---|---|---|
//! | [`Engine::load`] | loading from a directory, a GGUF file or the hub | here |
//! | [`Engine::capture`], [`Engine::logits`], [`Engine::score`] | activations and teacher-forced scores | [`capture`] |
//! | [`Engine::begin`], [`Engine::run`] | **the serving loop**: chunked prefills and decode steps in one forward | [`prefill`], [`step`] |
//! | [`Engine::begin_cached`], [`Engine::begin_score`] | the same through a [`PrefixCache`] (whole rows, and steered rows from a cached trunk); scoring as a prefill | [`prefill`], [`prefix_cache`] |
//! | [`Engine::generate`] | the reference loop: one batch, prefill then decode to the end | [`reference`] |
//!
//! A generation's rows are [`RowRequest`]s; [`Engine::begin`] makes a [`Prefill`], which
//! [`Engine::run`] advances chunk by chunk and turns into one [`Sequence`] per row; each
//! [`Engine::run`] then also takes one decode step of every sequence given, and
//! [`Sequence::advance`] samples its token. [`Engine::generate`] is that loop for one batch alone
//! (with [`Engine::start`], [`Engine::prefill_chunk`] and [`Engine::step`], the same forward
//! in its simplest uses); the serving loop is held to its tokens by the tests.

mod capture;
mod layout;
mod logprobs;
mod prefill;
mod prefix_cache;
mod reference;
mod request;
mod sequence;
mod step;

use candle_core::Device;
use serde::Serialize;

use crate::config::Config;
use crate::dtype::WeightDtype;
use crate::error::{ModelError, Result};
use crate::gguf;
use crate::gpt2::Gpt2;
use crate::hooks::{Addition, Additions};
use crate::source::{Format, HubOptions, ModelFiles, ModelSource};
use crate::tokenizer::Gpt2Tokenizer;
use crate::weights;
use layout::BatchLayout;

pub use capture::Scored;
pub use logprobs::SCORE_TOP;
pub use prefill::Prefill;
pub use prefix_cache::{row_key, PrefixCache, PrefixStats, RowKey};
pub use request::{FinishReason, GenerateOptions, RowOutput, RowRequest, TokenEvent};
pub use sequence::{advance_all, Sequence};

/// How to load a model.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// The type the weight matrices are held in: `None` (the default) keeps the type the
    /// checkpoint stores them in (GPT-2-XL on the hub: f32, the post's precision; a q8_0 GGUF:
    /// q8_0); `Some` converts at load. Off the host, f32 whatever the checkpoint.
    pub dtype: Option<WeightDtype>,
    pub device: Device,
    pub hub: HubOptions,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self { dtype: None, device: Device::Cpu, hub: HubOptions::from_env() }
    }
}

/// What is loaded: enough for a client to check its tensors against.
#[derive(Debug, Clone, Serialize)]
pub struct ModelInfo {
    pub name: String,
    pub revision: String,
    pub n_layer: usize,
    pub d_model: usize,
    /// The MLP's hidden width (`n_inner`, 4 x d_model unless the config says otherwise).
    pub d_inner: usize,
    pub n_head: usize,
    pub n_positions: usize,
    pub vocab_size: usize,
    pub dtype: WeightDtype,
    /// The type the checkpoint stores them in (`dtype` differs when `--dtype` converted them).
    pub stored_dtype: WeightDtype,
    /// The architecture's name, as vector files record it: `gpt2`.
    pub architecture: String,
    /// [`Gpt2::fingerprint`]: which weights these are, whatever file or dtype they came in.
    pub fingerprint: String,
}

/// The type a checkpoint's files store the weight matrices in (read from their headers): what
/// [`Engine::load`] holds them in when [`LoadOptions::dtype`] is `None`.
pub fn stored_dtype(files: &ModelFiles) -> Result<WeightDtype> {
    match files.format {
        Format::Safetensors => weights::stored_dtype(&files.weights),
        Format::Gguf => gguf::stored(&files.config),
    }
}

impl ModelInfo {
    /// What the weights are held in and why: `q8_0 (as stored)`, or `f32 (converted from
    /// q8_0)` when the load asked for another type.
    pub fn precision(&self) -> String {
        if self.dtype == self.stored_dtype {
            format!("{} (as stored)", self.dtype)
        } else {
            format!("{} (converted from {})", self.dtype, self.stored_dtype)
        }
    }
}

/// A loaded GPT-2 and its tokenizer.
pub struct Engine {
    model: Gpt2,
    tokenizer: Gpt2Tokenizer,
    info: ModelInfo,
}

impl Engine {
    /// Resolves `source` (local directory or hub) and loads it.
    pub fn load(source: &ModelSource, opts: &LoadOptions) -> Result<Self> {
        let files = source.resolve(&opts.hub)?;
        let t0 = std::time::Instant::now();
        // Off the host only f32 runs: a checkpoint stored otherwise is widened there.
        let asked = opts.dtype.or((!opts.device.is_cpu()).then_some(WeightDtype::F32));
        let (cfg, tokenizer, mut params, stored) = match files.format {
            Format::Safetensors => {
                let cfg = Config::from_file(&files.config)?;
                let tokenizer = Gpt2Tokenizer::from_dir(&files.dir)?;
                let stored = weights::stored_dtype(&files.weights)?;
                (cfg, tokenizer, weights::load(&files.weights, asked.unwrap_or(stored), &opts.device)?, stored)
            }
            Format::Gguf => {
                let g = gguf::load(&files.config, asked, &opts.device)?;
                let tokenizer = match g.tokenizer {
                    Some(t) => t,
                    None => Gpt2Tokenizer::from_dir(&files.dir)?,
                };
                (g.config, tokenizer, g.params, g.stored)
            }
        };
        let dtype = asked.unwrap_or(stored);
        let model = Gpt2::load(&mut params, &cfg, &opts.device).map_err(|e| match e {
            e @ ModelError::Weights { .. } => e,
            e => ModelError::Weights { path: files.weights[0].clone(), message: e.to_string() },
        })?;
        tracing::info!(model = %source.name(), secs = t0.elapsed().as_secs_f64(), %dtype, %stored, "weights loaded");
        Ok(Self::new(model, tokenizer, source.name(), source.revision(), dtype, stored))
    }

    fn new(model: Gpt2, tokenizer: Gpt2Tokenizer, name: String, revision: String, dtype: WeightDtype, stored_dtype: WeightDtype) -> Self {
        let cfg = model.config();
        let info = ModelInfo {
            name,
            revision,
            n_layer: cfg.n_layer,
            d_model: cfg.n_embd,
            d_inner: cfg.inner_dim(),
            n_head: cfg.n_head,
            n_positions: cfg.n_positions,
            vocab_size: cfg.vocab_size,
            dtype,
            stored_dtype,
            architecture: "gpt2".into(),
            fingerprint: model.fingerprint().to_string(),
        };
        Self { model, tokenizer, info }
    }

    /// Bytes of weights a decode step streams (every matrix in its loaded dtype).
    pub fn weight_bytes(&self) -> usize {
        self.model.weight_bytes()
    }

    pub fn info(&self) -> &ModelInfo {
        &self.info
    }
    pub fn model(&self) -> &Gpt2 {
        &self.model
    }
    pub fn tokenizer(&self) -> &Gpt2Tokenizer {
        &self.tokenizer
    }

    /// Token ids of `text` (BOS first when `bos`).
    pub fn encode(&self, text: &str, bos: bool) -> Result<Vec<u32>> {
        self.tokenizer.encode(text, bos)
    }

    /// The steering of a batch laid out as `layout`, per row (`None` when no row steers).
    /// `prompt_lens` are the rows' prompt lengths when the rows hold generated tokens too (the
    /// reference loop's recomputation); by default each row is all prompt.
    fn additions(&self, layout: &BatchLayout, per_row: &[Vec<Addition>], prompt_lens: Option<&[usize]>) -> Result<Option<Additions>> {
        if per_row.iter().all(|a| a.is_empty()) {
            return Ok(None);
        }
        debug_assert_eq!(per_row.len(), layout.offsets.len(), "one list of additions per row");
        let rows: Vec<&[Addition]> = per_row.iter().map(|a| a.as_slice()).collect();
        let lens: Vec<usize> = match prompt_lens {
            Some(l) => l.to_vec(),
            None => layout.offsets.iter().map(|o| layout.width - o).collect(),
        };
        Additions::build(&rows, &layout.offsets, &lens, layout.width, self.info.d_model, self.model.dtype(), self.model.device())
    }
}
