//! The reference loop ([`Engine::generate`]): one batch, prefilled in one forward, then decoded
//! step by step to the end, with the KV cache or (to check it) recomputing every step. Also the
//! simplest uses of the serving loop's forward: [`Engine::start`], [`Engine::prefill_chunk`],
//! [`Engine::step`].

use std::ops::ControlFlow;
use std::time::Instant;

use candle_core::{IndexOp, Tensor};

use super::layout::BatchLayout;
use super::prefill::Prefill;
use super::request::{FinishReason, GenerateOptions, RowOutput, RowRequest, TokenEvent};
use super::sequence::{advance_all, Sequence};
use super::Engine;
use crate::error::Result;
use crate::hooks::{Addition, Hooks};
use crate::kv_cache::KvCache;

impl Engine {
    /// Prefills `rows` in one forward (with each row's additions at its positions 0..k-1; rows
    /// with the same prompt and steering share it and their caches are copied out) and returns
    /// one [`Sequence`] per row, ready to sample its first token.
    pub fn start(&self, rows: &[RowRequest], opts: &GenerateOptions) -> Result<Vec<Sequence>> {
        if rows.is_empty() {
            return Ok(vec![]);
        }
        let mut p = self.begin(rows, opts)?;
        Ok(self.prefill_chunk(&mut p, usize::MAX)?.expect("one chunk covers the prompt"))
    }

    /// Prefills the next `max_tokens` positions (at most) of `p`; the sequences once the whole
    /// prompt is in. Chunk boundaries fall at multiples of `max_tokens` from the start, so a
    /// request prefilled with the same chunk size computes the same numbers whatever else runs.
    pub fn prefill_chunk(&self, p: &mut Prefill, max_tokens: usize) -> Result<Option<Vec<Sequence>>> {
        Ok(self.run(&mut [p], max_tokens, &mut [])?.remove(0))
    }

    /// One decode step for every sequence given (none finished): each attends over its own
    /// cache, so sequences of any lengths share the step, and the host kernels give each row
    /// the same bits whatever rows share it, so its tokens never depend on the batch.
    pub fn step(&self, seqs: &mut [&mut Sequence]) -> Result<()> {
        self.run(&mut [], 0, seqs).map(drop)
    }

    /// Generates for all rows in one batch: one prefill (with each row's additions), then
    /// decode steps. `on_token` sees every token as it is chosen; returning
    /// `ControlFlow::Break` stops the generation (rows finish as `Cancelled`).
    pub fn generate(
        &self,
        rows: &[RowRequest],
        opts: &GenerateOptions,
        mut on_token: impl FnMut(&TokenEvent) -> ControlFlow<()>,
    ) -> Result<Vec<RowOutput>> {
        let t_start = Instant::now();
        let mut seqs = self.start(rows, opts)?;
        let prefill_secs = t_start.elapsed().as_secs_f64();
        let per_row: Vec<Vec<Addition>> = rows.iter().map(|r| r.additions.clone()).collect();
        for index in 0.. {
            if index > 0 && opts.use_kv_cache {
                let mut active: Vec<&mut Sequence> = seqs.iter_mut().filter(|s| !s.is_finished()).collect();
                self.step(&mut active)?;
            } else if index > 0 {
                // Recomputing from scratch (to check the cache): every row's whole sequence, with
                // the same additions; finished rows stay in the batch, ignored.
                let full: Vec<Vec<u32>> = rows.iter().zip(&seqs).map(|(r, s)| [r.prompt.as_slice(), &s.tokens].concat()).collect();
                let layout = BatchLayout::new(&full, self.info.n_positions)?;
                let mut cache = KvCache::new(self.info.n_layer, layout.width);
                let prompt_lens: Vec<usize> = rows.iter().map(|r| r.prompt.len()).collect();
                let hidden = self.prefill(&full, &per_row, &prompt_lens, &mut cache)?;
                for (s, l) in seqs.iter_mut().zip(self.model.logits(&hidden)?.to_vec2::<f32>()?) {
                    if !s.is_finished() {
                        s.logits = Some(l);
                    }
                }
            }
            let mut stop = false;
            for ev in advance_all(&mut seqs, self.tokenizer.bos_id()).into_iter().flatten() {
                stop |= on_token(&ev).is_break();
            }
            if stop {
                seqs.iter_mut().for_each(Sequence::cancel);
            }
            if seqs.iter().all(Sequence::is_finished) {
                break;
            }
        }
        let total = t_start.elapsed().as_secs_f64();
        tracing::debug!(rows = rows.len(), prefill_secs, total, "generated");
        Ok(seqs
            .into_iter()
            .map(|s| RowOutput {
                finish: s.finish.unwrap_or(FinishReason::Length),
                tokens: s.tokens,
                prefill_secs,
                decode_secs: total - prefill_secs,
            })
            .collect())
    }

    /// A forward of whole (left-padded) sequences (prompts of `prompt_lens` tokens, then what
    /// was generated) with their steering, filling `cache`; returns the last position's hidden
    /// state of each row, `[B, d]`.
    fn prefill(&self, seqs: &[Vec<u32>], per_row: &[Vec<Addition>], prompt_lens: &[usize], cache: &mut KvCache) -> Result<Tensor> {
        debug_assert_eq!(seqs.len(), per_row.len());
        let layout = BatchLayout::new(seqs, self.info.n_positions)?;
        let additions = self.additions(&layout, per_row, Some(prompt_lens))?;
        let step = layout.prefill_step(seqs, &self.model)?;
        let hooks = Hooks { additions: additions.as_ref(), ..Default::default() };
        let hidden = self.model.forward(&step, cache, hooks)?;
        Ok(hidden.i((.., layout.width - 1, ..))?.contiguous()?)
    }
}
