//! `steer-model`: GPT-2 in candle with hook points on the residual stream, a KV cache, batched
//! generation of rows of different lengths, and the sampler ActAdd uses. No gRPC in here.
//!
//! - [`engine`]: the API the services use (loading, capture and scores, the serving loop's
//!   prefill and forward, sequences, the reference generate loop);
//! - [`gpt2`]: the network; [`hooks`]: capture/add on the residual stream (the hook vocabulary
//!   itself is `steer-hooks`', re-exported); [`kv_cache`]; [`sampler`]: next-token rules;
//! - [`matrix`]: weight matrices in f32, bf16, f16 or q8_0; [`kernels`]: the CPU kernels and the
//!   one instruction-set dispatch; [`quant`]: q8_0; [`dtype`]: the weights' element types;
//! - [`config`]: `config.json`; [`tokenizer`]; [`source`]: local directory, GGUF file or hub;
//!   [`weights`]: safetensors I/O; [`gguf`]: llama.cpp's GGUF files; [`random`]: random
//!   checkpoints for tests and benchmarks.

pub mod config;
pub mod dtype;
pub mod engine;
pub mod error;
pub mod gguf;
pub mod gpt2;
pub mod hooks;
pub mod kernels;
pub mod kv_cache;
pub mod matrix;
pub mod quant;
pub mod random;
pub mod sampler;
pub mod source;
pub mod tokenizer;
pub mod weights;

pub use config::Config;
pub use dtype::WeightDtype;
pub use engine::{
    advance_all, stored_dtype, Engine, FinishReason, GenerateOptions, LoadOptions, ModelInfo, Prefill, PrefixCache, PrefixStats, RowOutput,
    RowRequest, Scored, Sequence, TokenEvent, SCORE_TOP,
};
pub use error::{ModelError, Result};
pub use hooks::{Addition, HookKind, HookPoint, Op, Window, MAX_STEERING_ABS};
pub use sampler::SamplingParams;
pub use source::{HubOptions, ModelSource};
pub use tokenizer::Gpt2Tokenizer;

pub use candle_core;
pub use candle_core::{DType, Device, Tensor};
