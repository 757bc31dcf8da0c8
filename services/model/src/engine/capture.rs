//! Forwards that return what the residual stream or the logits hold instead of generating:
//! activations at hook points, logits, and teacher-forced scores.

use candle_core::{DType, IndexOp, Tensor};

use super::layout::BatchLayout;
use super::logprobs::{log_sum_exp, score_at};
use super::Engine;
use crate::error::Result;
use crate::hooks::{Addition, Captures, HookPoint, Hooks};
use crate::kv_cache::KvCache;

impl Engine {
    /// Activations of each prompt at each point: `out[row][point]` is `[len_row, d]` (f32).
    /// The forward stops after the deepest point asked for.
    pub fn capture(&self, prompts: &[Vec<u32>], points: &[HookPoint]) -> Result<Vec<Vec<Tensor>>> {
        self.capture_steered(prompts, points, &[])
    }

    /// [`Engine::capture`] under steering: `additions[row]` act on row `row` (none when
    /// `additions` is empty), and a point's activations are taken after its own steering ran
    /// (so after an ABLATE at a point, its direction is gone from that point's capture).
    pub fn capture_steered(&self, prompts: &[Vec<u32>], points: &[HookPoint], additions: &[Vec<Addition>]) -> Result<Vec<Vec<Tensor>>> {
        if points.is_empty() || prompts.is_empty() {
            return Ok(vec![vec![]; prompts.len()]);
        }
        for p in points {
            p.check(self.info.n_layer)?;
        }
        let layout = BatchLayout::new(prompts, self.info.n_positions)?;
        let mut captures = Captures::new(points.iter().copied());
        let step = layout.prefill_step(prompts, &self.model)?;
        let mut cache = KvCache::new(self.info.n_layer, layout.width);
        let adds = match additions.is_empty() {
            true => None,
            false => self.additions(&layout, additions, None)?,
        };
        let hooks = Hooks { additions: adds.as_ref(), stop_after_stream: captures.last_stream(), captures: Some(&mut captures) };
        self.model.forward(&step, &mut cache, hooks)?;
        prompts
            .iter()
            .enumerate()
            .map(|(row, p)| {
                points
                    .iter()
                    .map(|&pt| {
                        let t = captures.get(pt).expect("captured");
                        Ok(t.i(row)?.narrow(0, layout.offsets[row], p.len())?.to_dtype(DType::F32)?)
                    })
                    .collect()
            })
            .collect()
    }

    /// Logits (f32, `[len_row, V]`) of every position of every row, with optional steering.
    pub fn logits(&self, prompts: &[Vec<u32>], additions: &[Vec<Addition>]) -> Result<Vec<Tensor>> {
        let layout = BatchLayout::new(prompts, self.info.n_positions)?;
        let adds = self.additions(&layout, additions, None)?;
        let step = layout.prefill_step(prompts, &self.model)?;
        let mut cache = KvCache::new(self.info.n_layer, layout.width);
        let hooks = Hooks { additions: adds.as_ref(), ..Default::default() };
        let hidden = self.model.forward(&step, &mut cache, hooks)?;
        prompts.iter().enumerate().map(|(row, p)| self.model.logits(&hidden.i(row)?.narrow(0, layout.offsets[row], p.len())?)).collect()
    }

    /// Teacher-forced scores of every row (steered by its additions): the log-probability of
    /// each token `t >= starts[row]` (and `t >= 1`) given the tokens before it, and with `next`
    /// the log-softmax of the token after the row.
    pub fn score(&self, rows: &[Vec<u32>], additions: &[Vec<Addition>], starts: &[usize], next: bool) -> Result<Vec<Scored>> {
        let logits = self.logits(rows, additions)?;
        rows.iter()
            .zip(logits)
            .zip(starts)
            .map(|((ids, l), &start)| {
                let l = l.to_vec2::<f32>()?;
                let (logprobs, top) = (start.max(1)..ids.len()).map(|t| score_at(&l[t - 1], ids[t] as usize)).unzip();
                let next = next.then(|| {
                    let last = &l[ids.len() - 1];
                    let lse = log_sum_exp(last);
                    last.iter().map(|&x| x - lse).collect()
                });
                Ok(Scored { logprobs, top, next })
            })
            .collect()
    }
}

/// One row's teacher-forced scores ([`Engine::score`]).
#[derive(Debug, Clone)]
pub struct Scored {
    /// log P(token t | tokens before it), for the scored tokens in order.
    pub logprobs: Vec<f32>,
    /// The [`SCORE_TOP`](super::SCORE_TOP) most likely tokens at each scored position, as
    /// (token, log-probability), most likely first.
    pub top: Vec<Vec<(u32, f32)>>,
    /// log-softmax over the vocabulary of the token after the row, when asked.
    pub next: Option<Vec<f32>>,
}
