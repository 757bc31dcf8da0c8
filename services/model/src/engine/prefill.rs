//! A prefill in progress ([`Prefill`]): the distinct rows of a request laid out as one batch,
//! their steering, the streams rows with the same prompt share, and how far the prompt got.
//! [`Engine::begin`] makes one; [`Engine::run`] takes it forward chunk by chunk.

use candle_core::Tensor;

use super::capture::Scored;
use super::layout::{distinct_rows, BatchLayout};
use super::logprobs::{log_sum_exp, score_at};
use super::prefix_cache::{additions_key, row_key, Held, PrefixCache, RowKey, Scores};
use super::request::{GenerateOptions, RowRequest};
use super::sequence::Sequence;
use super::Engine;
use crate::error::Result;
use crate::gpt2::Step;
use crate::hooks::{Addition, Additions, Captures};
use crate::kv_cache::{KvCache, RowKv};
use crate::sampler::SamplingParams;

impl Engine {
    /// A prefill to run in chunks ([`Engine::prefill_chunk`]), so that a long prompt can share
    /// the engine with decoding rows.
    pub fn begin(&self, rows: &[RowRequest], opts: &GenerateOptions) -> Result<Prefill> {
        self.begin_with(rows, opts, None, false)
    }

    /// [`Engine::begin`] with a prefix cache: the distinct rows `cache` holds are not prefilled
    /// (when it holds them all, the sequences are ready at once: [`Prefill::take_ready`]); the
    /// others are, and when they all steer one prompt whose unsteered trunk it holds, from
    /// their first steered stream on. The numbers are those a prefill would give, bit for bit.
    /// [`Prefill::remember`] keeps what was prefilled for later requests.
    pub fn begin_cached(&self, rows: &[RowRequest], opts: &GenerateOptions, cache: &mut PrefixCache) -> Result<Prefill> {
        self.begin_with(rows, opts, Some(cache).filter(|c| c.enabled()), false)
    }

    /// A teacher-forced scoring of `ids` once per entry of `sides` (each a row's steering), run
    /// as a prefill ([`Engine::run`]) that also takes the log-probability of every token after
    /// the first: [`Prefill::take_scored`] once it is over. A row is computed alone (no padding,
    /// whatever else shares the forward), so its numbers depend on the text, its steering and
    /// the chunk size only; with `cache`, as [`Engine::begin_cached`] (a scored row it holds is
    /// not recomputed; a steered row starts from the text's cached trunk).
    ///
    /// `context` (the text's prompt, `ids[..context]`) is a chunk boundary: the rows' states
    /// there are kept too ([`Prefill::remember`]), so a later text with the same context (and
    /// steering) starts after it, from its KV; the numbers are the same either way.
    ///
    /// Without a held context, a text that begins like a scored row the cache holds with its
    /// KV (the same steering) starts after the longest shared beginning
    /// ([`PrefixCache::longest_shared`]): texts that share a context nobody declared (token-id
    /// prompts, as lm-evaluation-harness sends) compute it once. `keep_kv` keeps the KV of
    /// steered rows too when they are remembered (else only their scores: see
    /// `prefix_cache`), so that steered texts share their beginnings as well.
    pub fn begin_score(
        &self,
        ids: &[u32],
        context: usize,
        sides: &[Vec<Addition>],
        cache: Option<&mut PrefixCache>,
        keep_kv: bool,
    ) -> Result<Prefill> {
        let rows: Vec<RowRequest> =
            sides.iter().map(|a| RowRequest { prompt: ids.to_vec(), additions: a.clone(), sampling: SamplingParams::greedy(), seed: 0 }).collect();
        let opts = GenerateOptions { max_new_tokens: 0, stop_at_eos: false, ..Default::default() };
        let mut cache = cache.filter(|c| c.enabled());
        let boundary = (0 < context && context < ids.len()).then_some(context);
        let mut p = self.begin_with(&rows, &opts, cache.as_deref_mut(), true)?;
        p.boundary = boundary;
        p.keep_kv = keep_kv;
        // Every row still to compute starts from the cache when it can (no trunk was found).
        let (Some(c), None) = (cache, &p.trunk) else { return Ok(p) };
        if p.todo.is_empty() {
            return Ok(p);
        }
        let adds: Vec<&[Addition]> =
            p.todo.iter().map(|&d| &rows[p.fan_out.iter().position(|&g| g as usize == d).expect("a row")].additions[..]).collect();
        // The longest beginning a held scored row shares, common to every row, when it goes
        // further than the declared context; else the declared context's states, when held
        // for every row.
        let found: Vec<Option<(usize, RowKey)>> = adds.iter().map(|a| c.longest_shared(ids, &additions_key(a), 2)).collect();
        let shared = found.iter().map(|f| f.map(|(n, _)| n)).min().flatten();
        if let Some(b) = boundary.filter(|&b| shared.is_none_or(|n| n < b)) {
            let keys: Vec<RowKey> = adds.iter().map(|a| row_key(&ids[..b], a)).collect();
            if keys.iter().all(|k| c.holds_scored(k)) {
                let held: Vec<Held> = keys.iter().map(|k| c.context(k).expect("held")).collect();
                self.resume(&mut p, ids, b, held)?;
                return Ok(p);
            }
        }
        let Some(n) = shared else { return Ok(p) };
        let held = found.into_iter().map(|f| c.shared(&f.expect("every row found one").1, n).expect("held")).collect();
        self.resume(&mut p, ids, n, held)?;
        Ok(p)
    }

    /// A scoring prefill of `ids` starts after its first `n` positions, from `held` (per row
    /// computed: the KV of those positions, their scores, and the last logits when they
    /// score token `n`).
    fn resume(&self, p: &mut Prefill, ids: &[u32], n: usize, held: Vec<Held>) -> Result<()> {
        p.cache.preload(&held.iter().map(|h| &h.kv).collect::<Vec<_>>(), self.info.n_head)?;
        let scores = held
            .iter()
            .map(|h| {
                let mut s = h.scores.clone().unwrap_or_default();
                if s.logprobs.len() < n {
                    s.push(score_at(&h.logits, ids[n] as usize));
                }
                s
            })
            .collect();
        p.scoring = Some(scores);
        if let Some(j) = p.keep {
            p.kept = held[j].streams.clone();
            if p.kept.is_empty() {
                p.keep = None; // the context kept no trunk: neither does the text
            }
        }
        (p.done, p.shared) = (n, None);
        Ok(())
    }

    fn begin_with(&self, rows: &[RowRequest], opts: &GenerateOptions, cache: Option<&mut PrefixCache>, scoring: bool) -> Result<Prefill> {
        // The caller validated the rows (steer-generation's validation module); trust them.
        debug_assert!(
            rows.iter().map(|r| r.prompt.len()).max().unwrap_or(0) + opts.max_new_tokens <= self.info.n_positions,
            "prompt + new tokens exceed n_positions"
        );
        debug_assert!(rows.iter().all(|r| r.sampling.validate().is_ok()), "invalid sampling settings");
        debug_assert!(
            rows.iter()
                .flat_map(|r| r.additions.iter().map(move |a| (r, a)))
                .all(|(r, a)| { a.hook.check(self.info.n_layer).is_ok() && a.k <= r.prompt.len() && a.values.iter().all(|v| v.is_finite()) }),
            "invalid steering"
        );
        let (distinct, fan_out) = distinct_rows(rows);
        let mut held = vec![None; distinct.len()];
        let mut todo: Vec<usize> = (0..distinct.len()).collect();
        let (mut keys, mut trunk) = (vec![], None);
        if let Some(cache) = cache {
            keys = distinct.iter().map(|&r| row_key(&rows[r].prompt, &rows[r].additions)).collect();
            for (h, key) in held.iter_mut().zip(&keys) {
                *h = cache.lookup(key, scoring);
            }
            todo.retain(|&d| held[d].is_none());
            let todo_rows: Vec<&RowRequest> = todo.iter().map(|&d| &rows[distinct[d]]).collect();
            trunk = self.trunk(&todo_rows, cache)?;
        }
        let seqs: Vec<Vec<u32>> = todo.iter().map(|&d| rows[distinct[d]].prompt.clone()).collect();
        let adds: Vec<Vec<Addition>> = todo.iter().map(|&d| rows[distinct[d]].additions.clone()).collect();
        // An unsteered row computed here leaves its trunk in the cache.
        let keep = match keys.is_empty() {
            true => None,
            false => adds.iter().position(|a| a.is_empty()),
        };
        let layout = BatchLayout::new(&seqs, self.info.n_positions)?;
        let keep = keep.filter(|&j| layout.offsets[j] == 0);
        let additions = self.additions(&layout, &adds, None)?;
        let shared = match trunk {
            Some(_) => None,
            None => self.shared_prefix(&seqs, &adds)?,
        };
        let cache = KvCache::new(self.info.n_layer, layout.width);
        let mut p = Prefill {
            rows: rows.to_vec(),
            fan_out,
            held,
            todo,
            seqs,
            layout,
            additions,
            shared,
            trunk,
            cache,
            done: 0,
            opts: opts.clone(),
            keys,
            keep,
            kept: vec![],
            keep_kv: false,
            boundary: None,
            context_states: vec![],
            scoring: scoring.then(Vec::new),
            scored: None,
            ready: None,
        };
        if let Some(acc) = &mut p.scoring {
            acc.resize(p.todo.len(), Scores::default());
        }
        if p.todo.is_empty() {
            let seqs = self.sequences(&p, vec![])?;
            p.finish_scores(&seqs);
            p.ready = Some(seqs);
        }
        Ok(p)
    }

    /// Where rows that all steer one prompt can start: at their first steered stream, from the
    /// prompt's unsteered trunk in `cache`.
    fn trunk(&self, rows: &[&RowRequest], cache: &mut PrefixCache) -> Result<Option<Trunk>> {
        let Some(first) = rows.first() else { return Ok(None) };
        if rows.iter().any(|r| r.prompt != first.prompt || r.additions.is_empty()) {
            return Ok(None);
        }
        let Some(stream) = rows.iter().flat_map(|r| r.additions.iter().map(|a| a.hook.stream())).min().filter(|&s| s > 0) else {
            return Ok(None);
        };
        let Some((kv, x)) = cache.trunk(&row_key(&first.prompt, &[]), stream) else { return Ok(None) };
        let x = Tensor::from_vec(x, (first.prompt.len(), self.info.d_model), self.model.device())?;
        Ok(Some(Trunk { stream, x, kv }))
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
        // Every row of a prefill from a trunk has the trunk's prompt (no padding).
        let start = p
            .trunk
            .as_ref()
            .map(|t| -> Result<Tensor> {
                let (b, d) = (p.seqs.len(), self.info.d_model);
                Ok(t.x.narrow(0, p0, p1 - p0)?.unsqueeze(0)?.broadcast_as((b, p1 - p0, d))?.contiguous()?.reshape((b * (p1 - p0), d))?)
            })
            .transpose()?;
        Ok(Chunk { p0, p1, step: p.layout.chunk_step(&p.seqs, p0, p1, &self.model)?, window, group_step, start })
    }

    /// The rows of a prefill that is over, each with its cache and its first logits: those of
    /// its distinct row, held by the prefix cache or prefilled here (`logits[j]` for the j-th
    /// row computed).
    pub(super) fn sequences(&self, p: &Prefill, logits: Vec<Vec<f32>>) -> Result<Vec<Sequence>> {
        let mut states: Vec<Option<(RowKv, Vec<f32>)>> = p.held.iter().map(|h| h.as_ref().map(|h| (h.kv.clone(), h.logits.clone()))).collect();
        for ((j, &d), logits) in p.todo.iter().enumerate().zip(logits) {
            states[d] = Some((p.row_kv(j)?, logits));
        }
        let state = |g: u32| states[g as usize].as_ref().expect("every distinct row held or prefilled");
        Ok(p.rows.iter().zip(&p.fan_out).map(|(r, &g)| Sequence::new(r, state(g).0.clone(), state(g).1.clone(), &p.opts)).collect())
    }

    /// A scoring prefill's chunk is over: the log-probability of each token after one of the
    /// chunk's positions, from `logits` (`[rows * t, V]`, the prefilled rows' positions `p0..p1`).
    pub(super) fn score_chunk(&self, p: &mut Prefill, p0: usize, logits: &[Vec<f32>]) {
        use rayon::prelude::*;
        let Some(acc) = &mut p.scoring else { return };
        let t = logits.len() / acc.len().max(1);
        for (j, acc) in acc.iter_mut().enumerate() {
            let ids = &p.seqs[j];
            // A log-softmax over the vocabulary per position: the positions side by side.
            let next: Vec<(usize, u32)> = (p0..p0 + t).enumerate().filter_map(|(i, q)| ids.get(q + 1).map(|&n| (i, n))).collect();
            for s in next.par_iter().map(|&(i, n)| score_at(&logits[j * t + i], n as usize)).collect::<Vec<_>>() {
                acc.push(s);
            }
        }
    }

    /// A scoring prefill reached its context (`logits`: the chunk's, `[rows * t, V]`): keeps
    /// each prefilled row's state there for [`Prefill::remember`].
    pub(super) fn keep_context(&self, p: &mut Prefill, logits: &[Vec<f32>]) -> Result<()> {
        let (Some(b), Some(acc)) = (p.boundary, &p.scoring) else { return Ok(()) };
        if p.done != b || p.todo.is_empty() {
            return Ok(());
        }
        let t = logits.len() / p.todo.len();
        let mut states = vec![];
        for j in 0..p.todo.len() {
            let kv = p.row_kv(j)?;
            let streams = if p.keep == Some(j) { p.kept.clone() } else { vec![] };
            // The context's own tokens 1..b-1; token b is the continuation's (its log-probability
            // comes from these last logits when a text starts here).
            states.push(Held { kv, logits: logits[(j + 1) * t - 1].clone(), scores: Some(acc[j].first(b - 1)), streams });
        }
        p.context_states = states;
        Ok(())
    }

    /// The streams a prefill keeps as its unsteered row's trunk ([`Prefill::remember`]), from
    /// the `[B, T, d]` captures of a chunk's forward.
    pub(super) fn keep_streams(&self, p: &mut Prefill, captures: &Captures) -> Result<()> {
        let Some(row) = p.keep else { return Ok(()) };
        p.kept.resize(self.info.n_layer, vec![]);
        for stream in 1..=self.info.n_layer {
            let at = match &p.shared {
                Some(sh) if stream < sh.streams => sh.groups[row],
                _ => row,
            };
            let t = captures.at_stream(stream).expect("every stream captured");
            p.kept[stream - 1].extend(t.get(at)?.flatten_all()?.to_vec1::<f32>()?);
        }
        Ok(())
    }
}

/// A prefill in progress: the distinct rows a prefix cache did not hold, as one batch with its
/// cache, and how far it got.
#[derive(Debug)]
pub struct Prefill {
    rows: Vec<RowRequest>,
    /// Each row's distinct row.
    fan_out: Vec<u32>,
    /// Per distinct row: its prefilled state, when the prefix cache held it.
    held: Vec<Option<Held>>,
    /// The distinct rows computed here, in batch order (`seqs`, the layout and the cache).
    todo: Vec<usize>,
    pub(super) seqs: Vec<Vec<u32>>,
    pub(super) layout: BatchLayout,
    additions: Option<Additions>,
    pub(super) shared: Option<PromptGroups>,
    /// Where the rows start when the cache held their prompt's trunk.
    pub(super) trunk: Option<Trunk>,
    pub(super) cache: KvCache,
    pub(super) done: usize,
    opts: GenerateOptions,
    /// Each distinct row's [`RowKey`] when a prefix cache is in use.
    keys: Vec<RowKey>,
    /// The batch row of an unsteered row whose trunk this prefill keeps, and the trunk so far
    /// (`kept[s - 1]`: stream s, `[done, d]`).
    pub(super) keep: Option<usize>,
    kept: Vec<Vec<f32>>,
    /// A scoring prefill keeps its steered rows' KV in the cache too ([`Engine::begin_score`]).
    keep_kv: bool,
    /// A scoring prefill ([`Engine::begin_score`]): each prefilled row's scores so far.
    pub(super) scoring: Option<Vec<Scores>>,
    /// A scoring prefill's context length: a chunk ends there, and the rows' states there are
    /// kept ([`Prefill::remember`]) as `context_states` (per prefilled row).
    pub(super) boundary: Option<usize>,
    pub(super) context_states: Vec<Held>,
    /// A scoring prefill's scores, per row, once it is over.
    scored: Option<Vec<Scored>>,
    /// The sequences, when the cache held every row (nothing to prefill).
    ready: Option<Vec<Sequence>>,
}

/// Rows prefilled from a cached trunk: they start at `stream` from `x`, and take `kv`'s
/// layers below it.
#[derive(Debug)]
pub(super) struct Trunk {
    pub(super) stream: usize,
    /// f32 `[T, d]`: the prompt's unsteered residual entering block `stream`.
    x: Tensor,
    kv: RowKv,
}

/// The next chunk of a prefill: positions `p0..p1`, with their steering and, when rows share
/// streams, the groups' step.
pub(super) struct Chunk {
    pub(super) p0: usize,
    pub(super) p1: usize,
    pub(super) step: Step,
    pub(super) window: Option<Additions>,
    pub(super) group_step: Option<Step>,
    /// With a trunk: the rows' residual at its stream, `[B * T, d]`.
    pub(super) start: Option<Tensor>,
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
    /// Prefilled row `j`'s keys and values so far (without its left padding; below a trunk's
    /// stream, the trunk's).
    fn row_kv(&self, j: usize) -> Result<RowKv> {
        let kv = match &self.shared {
            Some(sh) => self.cache.row(j, sh.streams - 1, sh.groups[j], self.layout.offsets[j])?,
            None => self.cache.row(j, 0, j, self.layout.offsets[j])?,
        };
        Ok(match &self.trunk {
            Some(t) => RowKv::splice(&t.kv, t.stream, kv),
            None => kv,
        })
    }

    /// The sequences when the prefix cache held every row ([`Engine::begin_cached`]): the
    /// request decodes at once.
    pub fn take_ready(&mut self) -> Option<Vec<Sequence>> {
        self.ready.take()
    }

    /// Keeps the state of each row prefilled here in `cache`, an unsteered row's with its trunk
    /// (`seqs`: this prefill's sequences, as [`Engine::run`] returned them, before their first
    /// token is sampled).
    pub fn remember(&mut self, seqs: &[Sequence], cache: &mut PrefixCache) {
        for (j, &d) in self.todo.iter().enumerate() {
            let Some(r) = self.fan_out.iter().position(|&g| g as usize == d) else { continue };
            let (Some(key), Some(logits)) = (self.keys.get(d), seqs.get(r).and_then(|s| s.logits.as_deref())) else { continue };
            let streams = if self.keep == Some(j) { std::mem::take(&mut self.kept) } else { vec![] };
            let scores = self.scoring.as_ref().map(|acc| acc[j].clone());
            let additions = &self.rows[r].additions;
            // A steered scored row keeps its scores, not its KV (see `prefix_cache`), unless asked.
            let kv = match (&scores, additions.is_empty() || self.keep_kv) {
                (Some(_), false) => &RowKv::default(),
                _ => &seqs[r].kv,
            };
            cache.insert(*key, &self.rows[r].prompt, additions_key(additions), kv, logits, scores, streams);
        }
        if let Some(context) = self.context_ids().map(<[u32]>::to_vec) {
            for (j, held) in std::mem::take(&mut self.context_states).into_iter().enumerate() {
                let additions = &self.rows[self.fan_out.iter().position(|&g| g as usize == self.todo[j]).expect("a row")].additions;
                cache.insert(row_key(&context, additions), &context, additions_key(additions), &held.kv, &held.logits, held.scores, held.streams);
            }
        }
    }

    /// A scoring prefill's scores, one per side in order, once it is over (then `None`).
    pub fn take_scored(&mut self) -> Option<Vec<Scored>> {
        self.scored.take()
    }

    /// Whether this is a scoring prefill ([`Engine::begin_score`]).
    pub fn is_scoring(&self) -> bool {
        self.scoring.is_some()
    }

    /// A scoring prefill is over (`seqs`: its rows, with their last logits): its scores.
    pub(super) fn finish_scores(&mut self, seqs: &[Sequence]) {
        let Some(acc) = &self.scoring else { return };
        let scored = self
            .fan_out
            .iter()
            .zip(seqs)
            .map(|(&g, s)| {
                let g = g as usize;
                let scores = match self.todo.iter().position(|&d| d == g) {
                    Some(j) => acc[j].clone(),
                    None => self.held[g].as_ref().and_then(|h| h.scores.clone()).expect("a held scored row has its scores"),
                };
                let last = s.logits.as_deref().expect("a prefilled row has its last logits");
                let lse = log_sum_exp(last);
                Scored { logprobs: scores.logprobs, top: scores.top, next: Some(last.iter().map(|&x| x - lse).collect()) }
            })
            .collect();
        self.scored = Some(scored);
    }

    /// Prompt positions still to prefill.
    pub fn remaining(&self) -> usize {
        self.layout.width - self.done
    }

    /// Positions the next chunk of at most `max_tokens` covers ([`Engine::run`]); a scoring
    /// prefill's chunk also ends at its context.
    pub fn next_chunk(&self, max_tokens: usize) -> usize {
        let n = self.remaining().min(max_tokens.max(1));
        match self.boundary {
            Some(b) if b > self.done => n.min(b - self.done),
            _ => n,
        }
    }

    /// The context of a scoring prefill (its tokens up to the boundary).
    fn context_ids(&self) -> Option<&[u32]> {
        self.boundary.map(|b| &self.seqs.first().map_or(&self.rows[0].prompt, |s| s)[..b])
    }
}
