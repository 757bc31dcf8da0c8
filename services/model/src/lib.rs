//! `steer-model`: GPT-2 in candle with hook points on the residual stream, a KV cache, batched
//! generation of rows of different lengths, and the sampler ActAdd uses. No gRPC in here.
//!
//! - [`config`]: `config.json`; [`dtype`]: the weights' element type; [`gpt2`]: the network; [`hooks`]: capture/add on the residual stream;
//! - [`kv_cache`]; [`kernels`]: CPU kernels for decode shapes; [`matrix`]: weight matrices in f32,
//!   bf16, f16 or [`quant`]'s q8_0; [`sampler`]: next-token rules;
//! - [`tokenizer`]; [`source`]: local directory, GGUF file or hub; [`weights`]: safetensors I/O;
//!   [`gguf`]: llama.cpp's GGUF files;
//! - [`random`]: random checkpoints for tests and benchmarks; [`engine`]: the API the services use.

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
    advance_all, Engine, FinishReason, GenerateOptions, LoadOptions, ModelInfo, Prefill, RowOutput, RowRequest, Scored, Sequence, TokenEvent,
};
pub use error::{ModelError, Result};
pub use hooks::{Addition, HookKind, HookPoint, Placement, MAX_STEERING_ABS};
pub use sampler::SamplingParams;
pub use source::{HubOptions, ModelSource};
pub use tokenizer::Gpt2Tokenizer;

pub use candle_core;
pub use candle_core::{DType, Device, Tensor};
