//! The engine the services use: a loaded model and tokenizer, and three operations on batches
//! of rows of different lengths (left-padded, with position ids and an attention mask):
//! capture activations at hook points, compute logits, and generate with per-row steering.

use std::ops::ControlFlow;
use std::time::Instant;

use candle_core::{DType, Device, IndexOp, Tensor};
use rayon::prelude::*;
use serde::Serialize;

use crate::config::Config;
use crate::dtype::WeightDtype;
use crate::error::{ModelError, Result};
use crate::gpt2::{Gpt2, Input, Part, SharedPrefix, Step};
use crate::hooks::{Addition, Additions, Captures, HookPoint, Hooks, Placement};
use crate::kv_cache::{KvCache, RowKv};
use crate::sampler::{Sampler, SamplingParams};
use crate::gguf;
use crate::source::{Format, HubOptions, ModelSource};
use crate::tokenizer::Gpt2Tokenizer;
use crate::weights;

/// How to load a model.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// f32 by default (the post's precision); f16 and bf16 selectable.
    pub dtype: WeightDtype,
    pub device: Device,
    pub hub: HubOptions,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            dtype: WeightDtype::F32,
            device: Device::Cpu,
            hub: HubOptions::from_env(),
        }
    }
}

/// What is loaded: enough for a client to check its tensors against.
#[derive(Debug, Clone, Serialize)]
pub struct ModelInfo {
    pub name: String,
    pub revision: String,
    pub n_layer: usize,
    pub d_model: usize,
    pub n_head: usize,
    pub n_positions: usize,
    pub vocab_size: usize,
    pub dtype: WeightDtype,
}

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
        Self {
            max_new_tokens: 50,
            stop_at_eos: true,
            use_kv_cache: true,
            top_logprobs: 0,
        }
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
}

/// The result of one row.
#[derive(Debug, Clone)]
pub struct RowOutput {
    pub tokens: Vec<u32>,
    pub finish: FinishReason,
    pub prefill_secs: f64,
    pub decode_secs: f64,
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
        let t0 = Instant::now();
        let (cfg, tokenizer, mut params) = match files.format {
            Format::Safetensors => {
                let cfg = Config::from_file(&files.config)?;
                let tokenizer = Gpt2Tokenizer::from_dir(&files.dir)?;
                (cfg, tokenizer, weights::load(&files.weights, opts.dtype, &opts.device)?)
            }
            Format::Gguf => {
                let g = gguf::load(&files.config, opts.dtype, &opts.device)?;
                let tokenizer = match g.tokenizer {
                    Some(t) => t,
                    None => Gpt2Tokenizer::from_dir(&files.dir)?,
                };
                (g.config, tokenizer, g.params)
            }
        };
        let model = Gpt2::load(&mut params, &cfg, &opts.device).map_err(|e| match e {
            e @ ModelError::Weights { .. } => e,
            e => ModelError::Weights { path: files.weights[0].clone(), message: e.to_string() },
        })?;
        tracing::info!(model = %source.name(), secs = t0.elapsed().as_secs_f64(), "weights loaded");
        Ok(Self::new(model, tokenizer, source.name(), source.revision(), opts.dtype))
    }

    fn new(model: Gpt2, tokenizer: Gpt2Tokenizer, name: String, revision: String, dtype: WeightDtype) -> Self {
        let cfg = model.config();
        let info = ModelInfo {
            name,
            revision,
            n_layer: cfg.n_layer,
            d_model: cfg.n_embd,
            n_head: cfg.n_head,
            n_positions: cfg.n_positions,
            vocab_size: cfg.vocab_size,
            dtype,
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

    /// Activations of each prompt at each point: `out[row][point]` is `[len_row, d]` (f32).
    /// The forward stops after the deepest point asked for.
    pub fn capture(&self, prompts: &[Vec<u32>], points: &[HookPoint]) -> Result<Vec<Vec<Tensor>>> {
        if points.is_empty() || prompts.is_empty() {
            return Ok(vec![vec![]; prompts.len()]);
        }
        for p in points {
            p.check(self.info.n_layer)?;
        }
        let layout = Layout::new(prompts, self.info.n_positions)?;
        let mut captures = Captures::new(points.iter().copied());
        let step = layout.prefill_step(prompts, &self.model)?;
        let mut cache = KvCache::new(self.info.n_layer, layout.width);
        let hooks = Hooks {
            additions: None,
            stop_after_stream: captures.last_stream(),
            captures: Some(&mut captures),
        };
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
        let layout = Layout::new(prompts, self.info.n_positions)?;
        let adds = self.additions(&layout, additions)?;
        let step = layout.prefill_step(prompts, &self.model)?;
        let mut cache = KvCache::new(self.info.n_layer, layout.width);
        let hooks = Hooks {
            additions: adds.as_ref(),
            ..Default::default()
        };
        let hidden = self.model.forward(&step, &mut cache, hooks)?;
        prompts
            .iter()
            .enumerate()
            .map(|(row, p)| self.model.logits(&hidden.i(row)?.narrow(0, layout.offsets[row], p.len())?))
            .collect()
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
                let logprobs = (start.max(1)..ids.len()).map(|t| log_softmax_at(&l[t - 1], ids[t] as usize)).collect();
                let next = next.then(|| {
                    let last = &l[ids.len() - 1];
                    let lse = log_sum_exp(last);
                    last.iter().map(|&x| x - lse).collect()
                });
                Ok(Scored { logprobs, next })
            })
            .collect()
    }

    fn additions(&self, layout: &Layout, per_row: &[Vec<Addition>]) -> Result<Option<Additions>> {
        if per_row.iter().all(|a| a.is_empty()) {
            return Ok(None);
        }
        debug_assert_eq!(per_row.len(), layout.offsets.len(), "one list of additions per row");
        let rows: Vec<&[Addition]> = per_row.iter().map(|a| a.as_slice()).collect();
        Additions::build(&rows, &layout.offsets, layout.width, self.info.d_model, self.model.dtype(), self.model.device())
    }

    /// A forward of whole (left-padded) sequences with their additions, filling `cache`;
    /// returns the last position's hidden state of each row, `[B, d]`.
    fn prefill(&self, seqs: &[Vec<u32>], per_row: &[Vec<Addition>], cache: &mut KvCache) -> Result<Tensor> {
        debug_assert_eq!(seqs.len(), per_row.len());
        let layout = Layout::new(seqs, self.info.n_positions)?;
        let additions = self.additions(&layout, per_row)?;
        let step = layout.prefill_step(seqs, &self.model)?;
        let hooks = Hooks { additions: additions.as_ref(), ..Default::default() };
        let hidden = self.model.forward(&step, cache, hooks)?;
        Ok(hidden.i((.., layout.width - 1, ..))?.contiguous()?)
    }

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

    /// A prefill to run in chunks ([`Engine::prefill_chunk`]), so that a long prompt can share
    /// the engine with decoding rows.
    pub fn begin(&self, rows: &[RowRequest], opts: &GenerateOptions) -> Result<Prefill> {
        let width = rows.iter().map(|r| r.prompt.len()).max().unwrap_or(0);
        // The caller validated the rows (steer-generation's validation module); trust them.
        debug_assert!(width + opts.max_new_tokens <= self.info.n_positions, "prompt + new tokens exceed n_positions");
        debug_assert!(rows.iter().all(|r| r.sampling.validate().is_ok()), "invalid sampling settings");
        debug_assert!(
            rows.iter().flat_map(|r| r.additions.iter().map(move |a| (r, a))).all(|(r, a)| {
                a.hook.check(self.info.n_layer).is_ok() && a.k <= r.prompt.len() && a.values.iter().all(|v| v.is_finite())
            }),
            "invalid steering"
        );
        let (distinct, fan_out) = distinct_rows(rows);
        let seqs: Vec<Vec<u32>> = distinct.iter().map(|&r| rows[r].prompt.clone()).collect();
        let adds: Vec<Vec<Addition>> = distinct.iter().map(|&r| rows[r].additions.clone()).collect();
        let layout = Layout::new(&seqs, self.info.n_positions)?;
        let additions = self.additions(&layout, &adds)?;
        let shared = self.shared_prefix(&seqs, &adds)?;
        let cache = KvCache::new(self.info.n_layer, layout.width);
        Ok(Prefill { rows: rows.to_vec(), seqs, fan_out, layout, additions, shared, cache, done: 0, opts: opts.clone() })
    }

    /// Rows with the same prompt and different steering (a comparison's unsteered and steered
    /// sides) are the same up to the first stream any of them adds to: compute those streams
    /// once per prompt. `None` when nothing would be shared.
    fn shared_prefix(&self, seqs: &[Vec<u32>], adds: &[Vec<Addition>]) -> Result<Option<Shared>> {
        let Some(first) = adds.iter().flatten().map(|a| a.hook.stream()).min() else {
            return Ok(None);
        };
        let mut prompts: Vec<Vec<u32>> = vec![];
        let mut groups = vec![];
        for s in seqs {
            match prompts.iter().position(|p| p == s) {
                Some(g) => groups.push(g),
                None => {
                    groups.push(prompts.len());
                    prompts.push(s.clone());
                }
            }
        }
        if prompts.len() == seqs.len() || first < 2 {
            return Ok(None);
        }
        let layout = Layout::new(&prompts, self.info.n_positions)?;
        let rows = Tensor::from_vec(groups.iter().map(|&g| g as u32).collect::<Vec<_>>(), groups.len(), self.model.device())?;
        Ok(Some(Shared { prompts, layout, rows, groups, streams: first }))
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
        let additions = Additions::decode(&steady, self.info.d_model, self.model.dtype(), self.model.device())?;
        let mut parts = Vec::with_capacity(prefills.len() + 1);
        for (p, c) in prefills.iter_mut().zip(&chunks) {
            let Prefill { shared, cache, .. } = &mut **p;
            let shared = shared.as_ref().zip(c.group_step.as_ref()).map(|(sh, step)| SharedPrefix { step, rows: &sh.rows, streams: sh.streams });
            let hooks = Hooks { additions: c.window.as_ref(), ..Default::default() };
            parts.push(Part::new(Input::Batch { step: &c.step, shared, cache }, hooks));
        }
        if !seqs.is_empty() {
            let kv = seqs.iter_mut().map(|s| &mut s.kv).collect();
            parts.push(Part::new(Input::Rows { ids: &ids, kv }, Hooks { additions: additions.as_ref(), ..Default::default() }));
        }
        if parts.is_empty() {
            return Ok(vec![]);
        }
        let hidden = self.model.forward_parts(parts)?;
        // One lm_head pass: the last position of every prefill that is over, then the decode rows.
        let mut last = vec![];
        for ((p, c), h) in prefills.iter_mut().zip(&chunks).zip(&hidden) {
            p.done = c.p1;
            if c.p1 == p.layout.width {
                last.push(h.i((.., c.p1 - c.p0 - 1, ..))?.contiguous()?);
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
        for p in prefills.iter() {
            out.push(match p.remaining() {
                0 => Some(self.sequences(p, logits.by_ref().take(p.seqs.len()).collect())?),
                _ => None,
            });
        }
        for (s, l) in seqs.iter_mut().zip(logits) {
            s.logits = Some(l);
        }
        Ok(out)
    }

    /// The inputs of `p`'s next chunk of at most `max_tokens` positions.
    fn chunk(&self, p: &Prefill, max_tokens: usize) -> Result<Chunk> {
        let (p0, width) = (p.done, p.layout.width);
        let p1 = p0 + p.next_chunk(max_tokens);
        let window = match &p.additions {
            Some(a) if p0 == 0 && p1 == width => Some(a.clone()),
            Some(a) => Some(a.window(p0, p1 - p0)?),
            None => None,
        };
        let group_step = p.shared.as_ref().map(|sh| sh.layout.chunk_step(&sh.prompts, p0, p1, &self.model)).transpose()?;
        Ok(Chunk { p0, p1, step: p.layout.chunk_step(&p.seqs, p0, p1, &self.model)?, window, group_step })
    }

    /// The rows of a prefill that is over, each with its cache and its first logits (those of
    /// its distinct row, `logits[fan_out[row]]`).
    fn sequences(&self, p: &Prefill, logits: Vec<Vec<f32>>) -> Result<Vec<Sequence>> {
        let (shared_layers, groups) = match &p.shared {
            Some(sh) => (sh.streams - 1, sh.groups.clone()),
            None => (0, (0..p.seqs.len()).collect()),
        };
        let kv = (0..p.seqs.len()).map(|i| p.cache.row(i, shared_layers, groups[i], p.layout.offsets[i])).collect::<Result<Vec<_>>>()?;
        Ok(p.rows.iter().zip(&p.fan_out).map(|(r, &g)| Sequence::new(r, kv[g as usize].clone(), logits[g as usize].clone(), &p.opts)).collect())
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
                let layout = Layout::new(&full, self.info.n_positions)?;
                let mut cache = KvCache::new(self.info.n_layer, layout.width);
                let hidden = self.prefill(&full, &per_row, &mut cache)?;
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
            .map(|s| RowOutput { finish: s.finish.unwrap_or(FinishReason::Length), tokens: s.tokens, prefill_secs, decode_secs: total - prefill_secs })
            .collect())
    }
}

/// A prefill in progress: the distinct rows' shared batch cache and how far it got.
#[derive(Debug)]
pub struct Prefill {
    rows: Vec<RowRequest>,
    seqs: Vec<Vec<u32>>,
    fan_out: Vec<u32>,
    layout: Layout,
    additions: Option<Additions>,
    shared: Option<Shared>,
    cache: KvCache,
    done: usize,
    opts: GenerateOptions,
}

/// The next chunk of a prefill: positions `p0..p1`, with their steering and, when rows share
/// streams, the groups' step.
struct Chunk {
    p0: usize,
    p1: usize,
    step: Step,
    window: Option<Additions>,
    group_step: Option<Step>,
}

/// The streams a prefill's rows share: one row per distinct prompt (see `gpt2::Input::Batch`).
#[derive(Debug)]
struct Shared {
    prompts: Vec<Vec<u32>>,
    layout: Layout,
    /// u32 [B]: each distinct row's prompt.
    rows: Tensor,
    groups: Vec<usize>,
    streams: usize,
}

impl Prefill {
    /// Prompt positions still to prefill.
    pub fn remaining(&self) -> usize {
        self.layout.width - self.done
    }

    /// Positions the next chunk of at most `max_tokens` covers ([`Engine::run`]).
    pub fn next_chunk(&self, max_tokens: usize) -> usize {
        self.remaining().min(max_tokens.max(1))
    }
}

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
    kv: RowKv,
    /// The row's all-positions additions, applied at every decode step.
    steady: Vec<Addition>,
    sampler: Sampler,
    logits: Option<Vec<f32>>,
    pub tokens: Vec<u32>,
    pub finish: Option<FinishReason>,
    max_new_tokens: usize,
    stop_at_eos: bool,
    top_logprobs: usize,
}

impl Sequence {
    fn new(row: &RowRequest, kv: RowKv, logits: Vec<f32>, opts: &GenerateOptions) -> Self {
        Self {
            kv,
            steady: row.additions.iter().filter(|a| a.placement == Placement::AllPositions).cloned().collect(),
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

    fn last_token(&self) -> u32 {
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

    fn finish(&mut self, reason: FinishReason) {
        self.finish = Some(reason);
        self.kv = RowKv::default();
        self.logits = None;
    }
}

/// The first row of each group of identical rows (same prompt, same steering tensors), and for
/// every row the index of its group.
fn distinct_rows(rows: &[RowRequest]) -> (Vec<usize>, Vec<u32>) {
    let mut keys: Vec<&RowRequest> = vec![];
    let mut distinct = vec![];
    let mut fan_out = vec![];
    let same = |a: &RowRequest, b: &RowRequest| {
        a.prompt == b.prompt && a.additions.len() == b.additions.len() && a.additions.iter().zip(&b.additions).all(|(x, y)| x.same_as(y))
    };
    for (i, r) in rows.iter().enumerate() {
        match keys.iter().position(|k| same(k, r)) {
            Some(g) => fan_out.push(g as u32),
            None => {
                fan_out.push(keys.len() as u32);
                keys.push(r);
                distinct.push(i);
            }
        }
    }
    (distinct, fan_out)
}

/// One row's teacher-forced scores ([`Engine::score`]).
#[derive(Debug, Clone)]
pub struct Scored {
    /// log P(token t | tokens before it), for the scored tokens in order.
    pub logprobs: Vec<f32>,
    /// log-softmax over the vocabulary of the token after the row, when asked.
    pub next: Option<Vec<f32>>,
}

/// log(sum(exp(logits))), in f64 for the sum.
fn log_sum_exp(logits: &[f32]) -> f32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    max + logits.iter().map(|&l| ((l - max) as f64).exp()).sum::<f64>().ln() as f32
}

fn log_softmax_at(logits: &[f32], token: usize) -> f32 {
    logits[token] - log_sum_exp(logits)
}

/// log-softmax of raw logits: a lookup for any token, and the `n` most likely.
fn log_probs(logits: &[f32], n: usize) -> (impl Fn(u32) -> f32 + '_, Vec<(u32, f32)>) {
    let lse = log_sum_exp(logits);
    let top = if n == 0 {
        vec![]
    } else {
        let mut idx: Vec<u32> = (0..logits.len() as u32).collect();
        let n = n.min(idx.len());
        idx.select_nth_unstable_by(n - 1, |&a, &b| logits[b as usize].total_cmp(&logits[a as usize]));
        let mut top: Vec<(u32, f32)> = idx[..n].iter().map(|&i| (i, logits[i as usize] - lse)).collect();
        top.sort_by(|a, b| b.1.total_cmp(&a.1));
        top
    };
    (move |t: u32| logits[t as usize] - lse, top)
}

/// Left padding of a batch: row b's tokens sit at `offsets[b]..width`.
#[derive(Debug, Clone)]
struct Layout {
    width: usize,
    offsets: Vec<usize>,
}

impl Layout {
    fn new(seqs: &[Vec<u32>], n_positions: usize) -> Result<Self> {
        let width = seqs.iter().map(|s| s.len()).max().unwrap_or(0);
        if width > n_positions {
            return Err(ModelError::invalid("prompt", format!("{width} tokens exceed the model's {n_positions} positions")));
        }
        if let Some(i) = seqs.iter().position(|s| s.is_empty()) {
            return Err(ModelError::invalid("prompt", format!("row {i}: empty prompt")));
        }
        Ok(Self { width, offsets: seqs.iter().map(|s| width - s.len()).collect() })
    }

    /// The whole (left-padded) sequences: causal mask that also hides padding keys.
    fn prefill_step(&self, seqs: &[Vec<u32>], model: &Gpt2) -> Result<Step> {
        self.chunk_step(seqs, 0, self.width, model)
    }

    /// Columns `p0..p1` of the (left-padded) sequences, after `p0` cached columns: a causal mask
    /// over `0..p1` that also hides padding keys.
    fn chunk_step(&self, seqs: &[Vec<u32>], p0: usize, p1: usize, model: &Gpt2) -> Result<Step> {
        let (b, t, s) = (seqs.len(), p1 - p0, p1);
        let mut ids = vec![0u32; b * t];
        let mut pos = vec![0u32; b * t];
        let mut mask = vec![0f32; b * t * s];
        for (row, seq) in seqs.iter().enumerate() {
            let off = self.offsets[row];
            for q in p0..p1 {
                if q >= off {
                    ids[row * t + q - p0] = seq[q - off];
                    pos[row * t + q - p0] = (q - off) as u32;
                }
                for k in 0..s {
                    let visible = k <= q && (k >= off || k == q);
                    if !visible {
                        mask[(row * t + q - p0) * s + k] = f32::NEG_INFINITY;
                    }
                }
            }
        }
        self.step(ids, pos, mask, (b, t, s), model)
    }

    fn step(&self, ids: Vec<u32>, pos: Vec<u32>, mask: Vec<f32>, (b, t, s): (usize, usize, usize), model: &Gpt2) -> Result<Step> {
        let dev = model.device();
        Ok(Step {
            ids: Tensor::from_vec(ids, (b, t), dev)?,
            positions: Tensor::from_vec(pos, (b, t), dev)?,
            mask: Tensor::from_vec(mask, (b, 1, t, s), dev)?.to_dtype(model.dtype())?,
        })
    }
}
