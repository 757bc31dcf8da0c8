//! The serving loop's one forward ([`Engine::run`]): the next chunk of any number of prefills
//! and one decode step of any number of sequences, every weight matrix streamed once for all.

use candle_core::{IndexOp, Tensor};

use super::prefill::Prefill;
use super::sequence::Sequence;
use super::Engine;
use crate::error::Result;
use crate::gpt2::{Input, Part, SharedPrefix, Start};
use crate::hooks::{Addition, Additions, Captures, Hooks};

impl Engine {
    /// One forward for the next chunk (at most `max_tokens` positions) of each prefill given and
    /// one decode step of each sequence given (none finished, none with logits pending): every
    /// matrix is streamed once for all of them (one lm_head pass too), while each prefill keeps
    /// its own cache, mask and steering and each sequence attends over its own cache, so every
    /// row gets the numbers it would get alone ([`Engine::prefill_chunk`], [`Engine::step`]).
    /// Returns, per prefill, its sequences once its whole prompt is in.
    pub fn run(&self, prefills: &mut [&mut Prefill], max_tokens: usize, seqs: &mut [&mut Sequence]) -> Result<Vec<Option<Vec<Sequence>>>> {
        let chunks = prefills.iter().map(|p| self.chunk(p, max_tokens)).collect::<Result<Vec<_>>>()?;
        let ids: Vec<u32> = seqs.iter().map(|s| s.last_token()).collect();
        let steady: Vec<&[Addition]> = seqs.iter().map(|s| s.steady.as_slice()).collect();
        let positions: Vec<usize> = seqs.iter().map(|s| s.kv.len()).collect();
        let prompt_lens: Vec<usize> = seqs.iter().map(|s| s.prompt_len).collect();
        let additions = Additions::decode(&steady, &positions, &prompt_lens, self.info.d_model, self.model.dtype(), self.model.device())?;
        // An unsteered row that a prefix cache will keep records its trunk.
        let mut captures: Vec<Option<Captures>> = prefills.iter().map(|p| p.keep.map(|_| Captures::streams(1..=self.info.n_layer))).collect();
        let mut parts = Vec::with_capacity(prefills.len() + 1);
        for ((p, c), captures) in prefills.iter_mut().zip(&chunks).zip(captures.iter_mut()) {
            let Prefill { shared, trunk, cache, .. } = &mut **p;
            let shared = shared.as_ref().zip(c.group_step.as_ref()).map(|(sh, step)| SharedPrefix { step, rows: &sh.rows, streams: sh.streams });
            let start = trunk.as_ref().zip(c.start.as_ref()).map(|(t, x)| Start { stream: t.stream, x });
            let hooks = Hooks { additions: c.window.as_ref(), captures: captures.as_mut(), ..Default::default() };
            parts.push(Part::new(Input::Batch { step: &c.step, shared, start, cache }, hooks));
        }
        if !seqs.is_empty() {
            let kv = seqs.iter_mut().map(|s| &mut s.kv).collect();
            parts.push(Part::new(Input::Rows { ids: &ids, kv }, Hooks { additions: additions.as_ref(), ..Default::default() }));
        }
        if parts.is_empty() {
            return Ok(vec![]);
        }
        let hidden = self.model.forward_parts(parts)?;
        // One lm_head pass: the last position of every prefill that is over (every position of a
        // scoring prefill's chunk), then the decode rows.
        let mut last = vec![];
        let mut taken = Vec::with_capacity(prefills.len());
        for (((p, c), h), captures) in prefills.iter_mut().zip(&chunks).zip(&hidden).zip(&captures) {
            if let Some(captures) = captures {
                self.keep_streams(p, captures)?;
            }
            p.done = c.p1;
            let (b, t, d) = h.dims3()?;
            if p.is_scoring() {
                last.push(h.reshape((b * t, d))?);
                taken.push(b * t);
            } else if c.p1 == p.layout.width {
                last.push(h.i((.., t - 1, ..))?.contiguous()?);
                taken.push(b);
            } else {
                taken.push(0);
            }
        }
        if !seqs.is_empty() {
            last.push(hidden.last().expect("the decode part").clone());
        }
        let mut logits = match last.len() {
            0 => vec![],
            _ => self.model.logits(&Tensor::cat(&last, 0)?)?.to_vec2::<f32>()?,
        }
        .into_iter();
        let mut out = Vec::with_capacity(prefills.len());
        for ((p, c), n) in prefills.iter_mut().zip(&chunks).zip(taken) {
            let mine: Vec<Vec<f32>> = logits.by_ref().take(n).collect();
            let ends = p.remaining() == 0;
            let last_logits = match p.is_scoring() {
                true => {
                    self.score_chunk(p, c.p0, &mine);
                    self.keep_context(p, &mine)?;
                    let t = c.p1 - c.p0;
                    match ends {
                        true => mine.chunks(t).map(|rows| rows[t - 1].clone()).collect(),
                        false => vec![],
                    }
                }
                false => mine,
            };
            out.push(match ends {
                true => {
                    let seqs = self.sequences(p, last_logits)?;
                    p.finish_scores(&seqs);
                    Some(seqs)
                }
                false => None,
            });
        }
        for (s, l) in seqs.iter_mut().zip(logits) {
            s.logits = Some(l);
        }
        Ok(out)
    }
}
