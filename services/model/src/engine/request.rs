//! What a generation is asked for and what it gives back, row by row.

use serde::Serialize;

use crate::hooks::Addition;
use crate::sampler::SamplingParams;

/// One row of a generation batch.
#[derive(Debug, Clone)]
pub struct RowRequest {
    /// Prompt token ids (BOS already prepended if wanted).
    pub prompt: Vec<u32>,
    /// Steering: prefix additions at positions 0..k-1 of the prompt, in the prefill only;
    /// all-positions ones at every position and every decode step.
    pub additions: Vec<Addition>,
    pub sampling: SamplingParams,
    pub seed: u64,
}

/// Settings shared by the rows of one generation.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    /// Stop a row at `<|endoftext|>`.
    pub stop_at_eos: bool,
    /// Decode incrementally on the KV cache (true), or recompute the whole sequence every step
    /// (false: slow, for checking the cache).
    pub use_kv_cache: bool,
    /// How many of the most likely tokens (with log-probabilities) to report per step.
    pub top_logprobs: usize,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self { max_new_tokens: 50, stop_at_eos: true, use_kv_cache: true, top_logprobs: 0 }
    }
}

/// One generated token of one row, as it is produced.
#[derive(Debug, Clone)]
pub struct TokenEvent {
    pub row: usize,
    /// 0 for the first generated token.
    pub index: usize,
    pub token: u32,
    /// log P(token) under the model (before penalties and temperature).
    pub logprob: f32,
    pub top_logprobs: Vec<(u32, f32)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum FinishReason {
    /// max_new_tokens reached.
    Length,
    /// `<|endoftext|>` generated.
    Eos,
    /// The caller stopped the generation.
    Cancelled,
    /// A stop string appeared in the row's text (the caller's check: [`Sequence::stop`]).
    Stop,
}

/// The result of one row.
#[derive(Debug, Clone)]
pub struct RowOutput {
    pub tokens: Vec<u32>,
    pub finish: FinishReason,
    pub prefill_secs: f64,
    pub decode_secs: f64,
}
