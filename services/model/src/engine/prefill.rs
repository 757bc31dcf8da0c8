//! A prefill in progress ([`Prefill`]): the distinct rows of a request laid out as one batch,
//! their steering, the streams rows with the same prompt share, and how far the prompt got.
//! [`Engine::begin`] makes one; [`Engine::run`] takes it forward chunk by chunk.

use candle_core::Tensor;

use super::layout::{distinct_rows, BatchLayout};
use super::prefix_cache::{row_key, PrefixCache, RowKey};
use super::request::{GenerateOptions, RowRequest};
use super::sequence::Sequence;
use super::Engine;
use crate::error::Result;
use crate::gpt2::Step;
use crate::hooks::{Addition, Additions};
use crate::kv_cache::{KvCache, RowKv};

impl Engine {
    /// A prefill to run in chunks ([`Engine::prefill_chunk`]), so that a long prompt can share
    /// the engine with decoding rows.
    pub fn begin(&self, rows: &[RowRequest], opts: &GenerateOptions) -> Result<Prefill> {
        let width = rows.iter().map(|r| r.prompt.len()).max().unwrap_or(0);
        // The caller validated the rows (steer-generation's validation module); trust them.
        debug_assert!(width + opts.max_new_tokens <= self.info.n_positions, "prompt + new tokens exceed n_positions");
        debug_assert!(rows.iter().all(|r| r.sampling.validate().is_ok()), "invalid sampling settings");
        debug_assert!(
            rows.iter()
                .flat_map(|r| r.additions.iter().map(move |a| (r, a)))
                .all(|(r, a)| { a.hook.check(self.info.n_layer).is_ok() && a.k <= r.prompt.len() && a.values.iter().all(|v| v.is_finite()) }),
            "invalid steering"
        );
        let (distinct, fan_out) = distinct_rows(rows);
        let seqs: Vec<Vec<u32>> = distinct.iter().map(|&r| rows[r].prompt.clone()).collect();
        let adds: Vec<Vec<Addition>> = distinct.iter().map(|&r| rows[r].additions.clone()).collect();
        let layout = BatchLayout::new(&seqs, self.info.n_positions)?;
        let additions = self.additions(&layout, &adds)?;
        let shared = self.shared_prefix(&seqs, &adds)?;
        let cache = KvCache::new(self.info.n_layer, layout.width);
        Ok(Prefill { rows: rows.to_vec(), seqs, fan_out, layout, additions, shared, cache, done: 0, opts: opts.clone(), keys: vec![], ready: None })
    }

    /// [`Engine::begin`], with the rows' prefilled states taken from `cache` when it holds every
    /// distinct row of the request: then nothing is prefilled and the sequences are ready at
    /// once ([`Prefill::take_ready`]), with the numbers a prefill would give. Otherwise the
    /// prefill runs, and [`Prefill::remember`] keeps its rows for later requests.
    pub fn begin_cached(&self, rows: &[RowRequest], opts: &GenerateOptions, cache: &mut PrefixCache) -> Result<Prefill> {
        let mut p = self.begin(rows, opts)?;
        if !cache.enabled() {
            return Ok(p);
        }
        let firsts: Vec<usize> =
            (0..p.seqs.len()).map(|d| p.fan_out.iter().position(|&g| g as usize == d).expect("every distinct row has a row")).collect();
        p.keys = firsts.iter().map(|&r| row_key(&rows[r].prompt, &rows[r].additions)).collect();
        if p.keys.iter().all(|k| cache.contains(k)) {
            let states: Vec<(RowKv, Vec<f32>)> = p.keys.iter().map(|k| cache.get(k).expect("held")).collect();
            let seqs = rows.iter().zip(&p.fan_out).map(|(r, &g)| Sequence::new(r, states[g as usize].0.clone(), states[g as usize].1.clone(), opts));
            p.ready = Some(seqs.collect());
        } else {
            for k in p.keys.iter().filter(|k| !cache.contains(k)).copied().collect::<Vec<_>>() {
                let _ = cache.get(&k); // counts the miss
            }
        }
        Ok(p)
    }

    /// Rows with the same prompt and different steering (a comparison's unsteered and steered
    /// sides) are the same up to the first stream any of them adds to: compute those streams
    /// once per prompt. `None` when nothing would be shared.
    fn shared_prefix(&self, seqs: &[Vec<u32>], adds: &[Vec<Addition>]) -> Result<Option<PromptGroups>> {
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
        let layout = BatchLayout::new(&prompts, self.info.n_positions)?;
        let rows = Tensor::from_vec(groups.iter().map(|&g| g as u32).collect::<Vec<_>>(), groups.len(), self.model.device())?;
        Ok(Some(PromptGroups { prompts, layout, rows, groups, streams: first }))
    }

    /// The inputs of `p`'s next chunk of at most `max_tokens` positions.
    pub(super) fn chunk(&self, p: &Prefill, max_tokens: usize) -> Result<Chunk> {
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
    pub(super) fn sequences(&self, p: &Prefill, logits: Vec<Vec<f32>>) -> Result<Vec<Sequence>> {
        let (shared_layers, groups) = match &p.shared {
            Some(sh) => (sh.streams - 1, sh.groups.clone()),
            None => (0, (0..p.seqs.len()).collect()),
        };
        let kv = (0..p.seqs.len()).map(|i| p.cache.row(i, shared_layers, groups[i], p.layout.offsets[i])).collect::<Result<Vec<_>>>()?;
        Ok(p.rows.iter().zip(&p.fan_out).map(|(r, &g)| Sequence::new(r, kv[g as usize].clone(), logits[g as usize].clone(), &p.opts)).collect())
    }
}

/// A prefill in progress: the distinct rows' shared batch cache and how far it got.
#[derive(Debug)]
pub struct Prefill {
    rows: Vec<RowRequest>,
    pub(super) seqs: Vec<Vec<u32>>,
    fan_out: Vec<u32>,
    pub(super) layout: BatchLayout,
    additions: Option<Additions>,
    pub(super) shared: Option<PromptGroups>,
    pub(super) cache: KvCache,
    pub(super) done: usize,
    opts: GenerateOptions,
    /// Each distinct row's [`RowKey`] when a prefix cache is in use.
    keys: Vec<RowKey>,
    /// The sequences, when the cache held every row (nothing to prefill).
    ready: Option<Vec<Sequence>>,
}

/// The next chunk of a prefill: positions `p0..p1`, with their steering and, when rows share
/// streams, the groups' step.
pub(super) struct Chunk {
    pub(super) p0: usize,
    pub(super) p1: usize,
    pub(super) step: Step,
    pub(super) window: Option<Additions>,
    pub(super) group_step: Option<Step>,
}

/// The streams a prefill's rows share: one row per distinct prompt (see `gpt2::Input::Batch`).
#[derive(Debug)]
pub(super) struct PromptGroups {
    prompts: Vec<Vec<u32>>,
    layout: BatchLayout,
    /// u32 [B]: each distinct row's prompt.
    pub(super) rows: Tensor,
    groups: Vec<usize>,
    pub(super) streams: usize,
}

impl Prefill {
    /// The sequences when the prefix cache held every row ([`Engine::begin_cached`]): the
    /// request decodes at once.
    pub fn take_ready(&mut self) -> Option<Vec<Sequence>> {
        self.ready.take()
    }

    /// Keeps the prefilled state of each distinct row in `cache` (`seqs`: this prefill's
    /// sequences, as [`Engine::run`] returned them, before their first token is sampled).
    pub fn remember(&self, seqs: &[Sequence], cache: &mut PrefixCache) {
        for (d, key) in self.keys.iter().enumerate() {
            let Some(r) = self.fan_out.iter().position(|&g| g as usize == d) else { continue };
            if let Some(logits) = seqs.get(r).and_then(|s| s.logits.as_deref()) {
                cache.insert(*key, &seqs[r].kv, logits);
            }
        }
    }

    /// Prompt positions still to prefill.
    pub fn remaining(&self) -> usize {
        self.layout.width - self.done
    }

    /// Positions the next chunk of at most `max_tokens` covers ([`Engine::run`]).
    pub fn next_chunk(&self, max_tokens: usize) -> usize {
        self.remaining().min(max_tokens.max(1))
    }
}
