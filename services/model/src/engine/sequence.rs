//! One row being generated ([`Sequence`]): its cache, its sampler, its pending logits and its
//! tokens; and the sampling of a step's rows side by side ([`advance_all`]).

use rayon::prelude::*;

use super::logprobs::log_probs;
use super::request::{FinishReason, GenerateOptions, RowRequest, TokenEvent};
use crate::hooks::Addition;
use crate::kv_cache::RowKv;
use crate::sampler::Sampler;

/// Samples every sequence's pending logits ([`Sequence::advance`], row `i` reported as row `i`),
/// rows in parallel: each has its own sampler (seed, penalties), so the draws are those of one
/// row at a time, and the full-vocabulary work (softmax, penalties, the nucleus) of a step's
/// rows no longer runs on one core while the others wait.
pub fn advance_all(seqs: &mut [Sequence], eos: u32) -> Vec<Option<TokenEvent>> {
    seqs.par_iter_mut().enumerate().map(|(row, s)| s.advance(row, eos)).collect()
}

/// One row being generated: its cache, its sampler (seed, penalties), the logits of its next
/// token, and what it produced. [`Engine::start`] makes them, [`Engine::step`] advances their
/// caches, [`Sequence::advance`] samples; finishing frees the cache at once.
#[derive(Debug)]
pub struct Sequence {
    pub(super) kv: RowKv,
    /// The row's steering whose window reaches past the prompt (all positions, generated
    /// tokens, open or late ranges), applied at the decode steps its window covers.
    pub(super) steady: Vec<Addition>,
    /// Tokens of the prompt: where the generated positions begin.
    pub(super) prompt_len: usize,
    sampler: Sampler,
    pub(super) logits: Option<Vec<f32>>,
    pub tokens: Vec<u32>,
    pub finish: Option<FinishReason>,
    max_new_tokens: usize,
    stop_at_eos: bool,
    top_logprobs: usize,
}

impl Sequence {
    pub(super) fn new(row: &RowRequest, kv: RowKv, logits: Vec<f32>, opts: &GenerateOptions) -> Self {
        Self {
            kv,
            steady: row.additions.iter().filter(|a| a.reaches_decode(row.prompt.len())).cloned().collect(),
            prompt_len: row.prompt.len(),
            sampler: Sampler::new(row.sampling.clone(), row.seed, &row.prompt),
            logits: Some(logits),
            tokens: vec![],
            finish: None,
            max_new_tokens: opts.max_new_tokens,
            stop_at_eos: opts.stop_at_eos,
            top_logprobs: opts.top_logprobs,
        }
    }

    pub fn is_finished(&self) -> bool {
        self.finish.is_some()
    }

    /// Logits are waiting to be sampled ([`Sequence::advance`] before the next [`Engine::step`]).
    pub fn has_pending(&self) -> bool {
        self.logits.is_some()
    }

    /// Bytes of KV cache held (0 once finished).
    pub fn kv_bytes(&self) -> usize {
        self.kv.bytes()
    }

    pub(super) fn last_token(&self) -> u32 {
        *self.tokens.last().expect("a sequence decodes after its first token")
    }

    /// Samples the next token from the pending logits (`None` when finished or nothing is
    /// pending), reporting it as row `row`; finishes at EOS or `max_new_tokens`.
    pub fn advance(&mut self, row: usize, eos: u32) -> Option<TokenEvent> {
        if self.is_finished() {
            return None;
        }
        let mut l = self.logits.take()?;
        let raw = l.clone(); // the sampler applies penalties in place
        let (logprob_of, top_logprobs) = log_probs(&raw, self.top_logprobs);
        let token = self.sampler.sample(&mut l);
        let logprob = logprob_of(token);
        let index = self.tokens.len();
        self.tokens.push(token);
        if self.stop_at_eos && token == eos {
            self.finish(FinishReason::Eos);
        } else if self.tokens.len() >= self.max_new_tokens {
            self.finish(FinishReason::Length);
        }
        Some(TokenEvent { row, index, token, logprob, top_logprobs })
    }

    /// Stops the sequence (client gone, deadline) unless it already finished.
    pub fn cancel(&mut self) {
        if !self.is_finished() {
            self.finish(FinishReason::Cancelled);
        }
    }

    /// Ends the sequence at its last token because a stop string appeared in its text (also
    /// when that token reached the length or was EOS: the stop string is why its text ends).
    pub fn stop(&mut self) {
        if self.finish != Some(FinishReason::Cancelled) {
            self.finish(FinishReason::Stop);
        }
    }

    fn finish(&mut self, reason: FinishReason) {
        self.finish = Some(reason);
        self.kv = RowKv::default();
        self.logits = None;
    }
}
