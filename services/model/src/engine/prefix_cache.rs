//! Prompts computed once ([`PrefixCache`]): a row's prefilled state, its KV cache and the logits
//! of its first token, kept after its request ends and handed to a later row whose key is the
//! same instead of a prefill. The key covers exactly what that state depends on: the prompt's
//! tokens and every addition of the row (hook point, window, op, positions and the values'
//! bits), so a hit gives the numbers a prefill would, bit for bit.
//!
//! An unsteered row also keeps its residual stream entering every block (its *trunk*). Steering
//! first acts at some stream S, and below S a steered row's states are the unsteered prompt's:
//! so a steered row the cache does not hold, whose prompt's trunk it does, is prefilled from
//! stream S with the trunk's residual and takes the trunk's keys and values below S (a
//! partial hit: a coefficient change, another steering text at the layer, a sweep).
//!
//! Bounded in bytes, least recently used out first (trunks after every other entry). A steered
//! row a Score computed is kept without its KV (its scores and last logits: what a Score asks
//! again), so sweeps do not push the trunks out. A hit copies the state out, so nothing a
//! running request reads is ever evicted, and a full cache still serves every request.

use std::collections::HashMap;

use sha2::{Digest, Sha256};

use crate::hooks::Addition;
use crate::kv_cache::RowKv;

/// What a row's prefilled state depends on, hashed: its prompt and its additions.
pub type RowKey = [u8; 32];

/// The key of a row with `prompt` and `additions`.
pub fn row_key(prompt: &[u32], additions: &[Addition]) -> RowKey {
    let mut h = Sha256::new();
    h.update((prompt.len() as u64).to_le_bytes());
    for t in prompt {
        h.update(t.to_le_bytes());
    }
    for a in additions {
        h.update(format!("{} {} {} {} {}\n", a.hook, a.window, a.op, a.k, a.values.len()).as_bytes());
        for v in a.values.iter() {
            h.update(v.to_bits().to_le_bytes());
        }
    }
    h.finalize().into()
}

/// Counters of a [`PrefixCache`] since it was made (bytes and entries: now).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PrefixStats {
    pub hits: u64,
    pub misses: u64,
    /// Rows prefilled from a cached trunk (from their first steered stream).
    pub partial_hits: u64,
    /// Prompt positions not prefilled thanks to hits.
    pub positions_reused: u64,
    /// Positions times blocks not computed thanks to hits and partial hits.
    pub block_positions_reused: u64,
    pub evictions: u64,
    pub bytes: usize,
    pub entries: usize,
}

/// The key of a row's additions alone: rows whose keys agree here and whose prompts begin
/// alike have the same states over the shared beginning ([`PrefixCache::longest_shared`]).
pub fn additions_key(additions: &[Addition]) -> RowKey {
    row_key(&[], additions)
}

/// A scored row's scores: the log-probability of each token after the first, and the
/// [`SCORE_TOP`](super::SCORE_TOP) most likely tokens at each of those positions.
#[derive(Debug, Clone, Default)]
pub(crate) struct Scores {
    pub(crate) logprobs: Vec<f32>,
    pub(crate) top: Vec<Vec<(u32, f32)>>,
}

impl Scores {
    fn bytes(&self) -> usize {
        self.logprobs.len() * 4 + self.top.iter().map(|t| 16 + t.len() * 8).sum::<usize>()
    }

    /// The first `n` positions' scores.
    pub(crate) fn first(&self, n: usize) -> Scores {
        Scores { logprobs: self.logprobs[..n].to_vec(), top: self.top[..n].to_vec() }
    }

    pub(crate) fn push(&mut self, (logprob, top): (f32, Vec<(u32, f32)>)) {
        self.logprobs.push(logprob);
        self.top.push(top);
    }
}

/// A prefilled row as the cache hands it out: its KV cache, the logits after its last
/// position and, when it was scored, its [`Scores`].
#[derive(Debug, Clone)]
pub(crate) struct Held {
    pub(crate) kv: RowKv,
    pub(crate) logits: Vec<f32>,
    pub(crate) scores: Option<Scores>,
    /// An unsteered row's trunk ([`Entry::streams`]), where asked for.
    pub(crate) streams: Vec<Vec<f32>>,
}

struct Entry {
    kv: RowKv,
    logits: Vec<f32>,
    scores: Option<Scores>,
    /// The row's tokens and [`additions_key`], for [`PrefixCache::longest_shared`].
    tokens: Vec<u32>,
    adds: RowKey,
    /// An unsteered row's residual entering each block `s - 1` for streams `s` in `1..=n_layer`
    /// (`streams[s - 1]`, `[len, d]`): its trunk. Empty for steered rows.
    streams: Vec<Vec<f32>>,
    bytes: usize,
    used: u64,
}

/// Prefilled rows by [`RowKey`], at most `max_bytes` of them.
pub struct PrefixCache {
    max_bytes: usize,
    entries: HashMap<RowKey, Entry>,
    clock: u64,
    stats: PrefixStats,
}

impl PrefixCache {
    /// A cache of at most `max_bytes` (0: nothing is kept).
    pub fn new(max_bytes: usize) -> Self {
        Self { max_bytes, entries: HashMap::new(), clock: 0, stats: PrefixStats::default() }
    }

    pub fn stats(&self) -> PrefixStats {
        self.stats
    }

    pub fn enabled(&self) -> bool {
        self.max_bytes > 0
    }

    /// Most bytes it holds.
    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    /// A copy of the state under `key` (with `scored`, only one that was scored), counting a
    /// hit or a miss.
    pub(crate) fn lookup(&mut self, key: &RowKey, scored: bool) -> Option<Held> {
        self.clock += 1;
        // A steered row kept from a Score has no KV: it serves Score only.
        match self.entries.get_mut(key).filter(|e| if scored { e.scores.is_some() } else { e.kv.n_layer() > 0 }) {
            Some(e) => {
                e.used = self.clock;
                self.stats.hits += 1;
                self.stats.positions_reused += e.kv.len() as u64;
                self.stats.block_positions_reused += (e.kv.len() * e.kv.n_layer()) as u64;
                Some(Held { kv: e.kv.clone(), logits: e.logits.clone(), scores: e.scores.clone(), streams: vec![] })
            }
            None => {
                self.stats.misses += 1;
                None
            }
        }
    }

    /// Whether a scored row is held under `key` (no counting).
    pub(crate) fn holds_scored(&self, key: &RowKey) -> bool {
        self.entries.get(key).is_some_and(|e| e.scores.is_some() && e.kv.n_layer() > 0)
    }

    /// A copy of the scored row under `key` with its trunk, as a text's context (counted as a
    /// partial hit).
    pub(crate) fn context(&mut self, key: &RowKey) -> Option<Held> {
        self.clock += 1;
        let e = self.entries.get_mut(key).filter(|e| e.scores.is_some() && e.kv.n_layer() > 0)?;
        e.used = self.clock;
        self.stats.partial_hits += 1;
        self.stats.positions_reused += e.kv.len() as u64;
        self.stats.block_positions_reused += (e.kv.len() * e.kv.n_layer()) as u64;
        Some(Held { kv: e.kv.clone(), logits: e.logits.clone(), scores: e.scores.clone(), streams: e.streams.clone() })
    }

    /// For a text `ids` scored with the additions keyed `adds`: the scored row (with its KV)
    /// whose tokens begin like `ids` for longest, and how many of its first positions serve,
    /// `n >= min` (no counting; [`Self::shared`] takes them). `n` is the shared length when
    /// that row ends there (its last logits score the next token), else one less (the position
    /// before the first differing token is computed again, for its distribution). An exact
    /// match is [`Self::lookup`]'s, not this.
    pub(crate) fn longest_shared(&self, ids: &[u32], adds: &RowKey, min: usize) -> Option<(usize, RowKey)> {
        let usable = |e: &Entry| {
            let shared = e.tokens.iter().zip(ids).take_while(|(a, b)| a == b).count();
            match shared == e.tokens.len() {
                true if shared < ids.len() => shared,
                _ => shared.saturating_sub(1).min(ids.len().saturating_sub(1)),
            }
        };
        self.entries
            .iter()
            .filter(|(_, e)| e.adds == *adds && e.scores.is_some() && e.kv.n_layer() > 0)
            .map(|(k, e)| (usable(e), *k))
            .max_by_key(|&(n, _)| n)
            .filter(|&(n, _)| n >= min.max(1))
    }

    /// The state after the first `n` positions of the row under `key` ([`Self::longest_shared`]),
    /// counted as a partial hit: its KV there, its scores of those positions, its last logits
    /// when `n` is its length (empty otherwise) and its trunk there.
    pub(crate) fn shared(&mut self, key: &RowKey, n: usize) -> Option<Held> {
        self.clock += 1;
        let e = self.entries.get_mut(key)?;
        e.used = self.clock;
        self.stats.partial_hits += 1;
        self.stats.positions_reused += n as u64;
        self.stats.block_positions_reused += (n * e.kv.n_layer()) as u64;
        let d = e.streams.first().map_or(0, |s| s.len() / e.tokens.len().max(1));
        let whole = n == e.tokens.len();
        Some(Held {
            kv: e.kv.first(n),
            logits: if whole { e.logits.clone() } else { vec![] },
            scores: e.scores.as_ref().map(|s| s.first(n.min(e.tokens.len() - 1))),
            streams: e.streams.iter().map(|s| s[..n * d].to_vec()).collect(),
        })
    }

    /// The trunk of the unsteered row under `key` at `stream` (in `1..=n_layer`): the keys and
    /// values of the blocks below it and the residual entering block `stream` (`[len * d]`),
    /// counted as a partial hit. `None` when the row or its trunk is not held.
    pub(crate) fn trunk(&mut self, key: &RowKey, stream: usize) -> Option<(RowKv, Vec<f32>)> {
        self.clock += 1;
        let e = self.entries.get_mut(key)?;
        let x = e.streams.get(stream.checked_sub(1)?)?.clone();
        e.used = self.clock;
        self.stats.partial_hits += 1;
        self.stats.block_positions_reused += (e.kv.len() * stream) as u64;
        Some((e.kv.layers_below(stream), x))
    }

    /// Keeps a copy of a prefilled row (and an unsteered row's `streams`, see [`Entry`]),
    /// evicting the least recently used entries to make room; a state larger than the whole
    /// cache is not kept.
    /// `tokens` and `adds` ([`additions_key`]) are the row's, for [`Self::longest_shared`].
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn insert(
        &mut self,
        key: RowKey,
        tokens: &[u32],
        adds: RowKey,
        kv: &RowKv,
        logits: &[f32],
        scores: Option<Scores>,
        streams: Vec<Vec<f32>>,
    ) {
        if !self.enabled() {
            return;
        }
        if let Some(e) = self.entries.get(&key) {
            // Held already: keep it unless this one knows more (scores, a trunk).
            let more = (e.scores.is_none() && scores.is_some())
                || (e.streams.is_empty() && !streams.is_empty())
                || (e.kv.n_layer() == 0 && kv.n_layer() > 0);
            if !more {
                return;
            }
            let old = self.entries.remove(&key).expect("present");
            self.stats.bytes -= old.bytes;
            let scores = scores.or(old.scores);
            let streams = if streams.is_empty() { old.streams } else { streams };
            let kv = if old.kv.n_layer() > 0 { &old.kv } else { kv };
            return self.insert(key, tokens, adds, kv, &old.logits, scores, streams);
        }
        let kv = kv.compact();
        let bytes = kv.bytes()
            + logits.len() * 4
            + tokens.len() * 4
            + scores.as_ref().map_or(0, Scores::bytes)
            + streams.iter().map(|s| s.len() * 4).sum::<usize>();
        if bytes > self.max_bytes {
            return;
        }
        while self.stats.bytes + bytes > self.max_bytes {
            // Trunks last: every steered row of their prompt starts from one.
            let Some(oldest) = self.entries.iter().min_by_key(|(_, e)| (!e.streams.is_empty(), e.used)).map(|(k, _)| *k) else { break };
            let e = self.entries.remove(&oldest).expect("present");
            self.stats.bytes -= e.bytes;
            self.stats.evictions += 1;
        }
        self.clock += 1;
        self.entries.insert(key, Entry { kv, logits: logits.to_vec(), scores, tokens: tokens.to_vec(), adds, streams, bytes, used: self.clock });
        self.stats.bytes += bytes;
        self.stats.entries = self.entries.len();
    }

    /// Whether `key` is held (no counting).
    #[cfg(test)]
    pub(crate) fn contains(&self, key: &RowKey) -> bool {
        self.entries.contains_key(key)
    }
}

impl std::fmt::Debug for PrefixCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrefixCache").field("max_bytes", &self.max_bytes).field("stats", &self.stats).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Engine, GenerateOptions, LoadOptions, Prefill, RowRequest, Sequence};
    use crate::hooks::{HookPoint, Window};
    use crate::{ModelSource, SamplingParams};

    fn engine() -> Engine {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/tiny-gpt2");
        Engine::load(&ModelSource::Dir(dir), &LoadOptions::default()).expect("the tiny fixture loads")
    }

    /// An unsteered and a steered row of one prompt (a comparison), seeded `seed`.
    fn rows(e: &Engine, prompt: &str, coeff: f32, seed: u64) -> Vec<RowRequest> {
        let ids = e.encode(prompt, true).unwrap();
        let d = e.info().d_model;
        let values: Vec<f32> = (0..2 * d).map(|i| coeff * ((i % 7) as f32 - 3.0)).collect();
        let add = Addition::new(HookPoint::ResidPre(2), 2, values);
        let row = |additions: Vec<Addition>| RowRequest { prompt: ids.clone(), additions, sampling: SamplingParams::greedy(), seed };
        vec![row(vec![]), row(vec![add])]
    }

    fn prefill(e: &Engine, mut p: Prefill) -> (Prefill, Vec<Sequence>) {
        loop {
            if let Some(seqs) = e.run(&mut [&mut p], 4, &mut []).unwrap().pop().flatten() {
                return (p, seqs);
            }
        }
    }

    #[test]
    fn a_held_row_skips_its_prefill_with_the_same_numbers_and_other_steering_misses() {
        let e = engine();
        let opts = GenerateOptions { max_new_tokens: 4, ..Default::default() };
        let mut cache = PrefixCache::new(64 << 20);
        let cold = e.begin_cached(&rows(&e, "I hate you because", 4.0, 1), &opts, &mut cache).unwrap();
        let (mut cold, cold_seqs) = prefill(&e, cold);
        assert_eq!(cache.stats().misses, 2, "both distinct rows missed");
        cold.remember(&cold_seqs, &mut cache);
        assert_eq!(cache.stats().entries, 2);
        // The same prompt and steering, another seed: no prefill, the same states bit for bit.
        let mut warm = e.begin_cached(&rows(&e, "I hate you because", 4.0, 9), &opts, &mut cache).unwrap();
        let warm_seqs = warm.take_ready().expect("every row was held");
        assert_eq!(cache.stats().hits, 2);
        assert_eq!(cache.stats().positions_reused, 2 * cold_seqs[0].kv.len() as u64);
        for (a, b) in cold_seqs.iter().zip(&warm_seqs) {
            assert_eq!(a.logits, b.logits);
            for l in 0..e.info().n_layer {
                assert_eq!(a.kv.layer(l), b.kv.layer(l));
            }
        }
        // Another coefficient: the steered row misses, so the request is prefilled.
        let mut other = e.begin_cached(&rows(&e, "I hate you because", 2.0, 1), &opts, &mut cache).unwrap();
        assert!(other.take_ready().is_none());
        assert_eq!(cache.stats().misses, 3);
        assert_ne!(row_key(&[1, 2], &[]), row_key(&[1, 2, 3], &[]));
    }

    /// Decodes `seqs` greedily for `n` steps; every row's tokens.
    fn decode(e: &Engine, mut seqs: Vec<Sequence>, n: usize) -> Vec<Vec<u32>> {
        for _ in 0..n {
            crate::engine::advance_all(&mut seqs, u32::MAX);
            let mut live: Vec<&mut Sequence> = seqs.iter_mut().filter(|s| !s.is_finished()).collect();
            if live.is_empty() {
                break;
            }
            e.step(&mut live).unwrap();
        }
        seqs.iter().map(|s| s.tokens.clone()).collect()
    }

    #[test]
    fn a_coefficient_change_starts_from_the_cached_trunk_with_the_numbers_of_a_cold_prefill() {
        let e = engine();
        let opts = GenerateOptions { max_new_tokens: 6, ..Default::default() };
        let prompt = "I went up to my friend and said that";
        for (hook, window) in [(HookPoint::BlockOutput(2), Window::Prefix), (HookPoint::ResidPre(1), Window::AllPositions)] {
            let steer = |coeff: f32| {
                let mut rows = rows(&e, prompt, coeff, 3);
                let a = &mut rows[1].additions[0];
                a.hook = hook;
                if window == Window::AllPositions {
                    *a = Addition::all_positions(hook, a.values[..e.info().d_model].to_vec());
                }
                rows
            };
            let mut cache = PrefixCache::new(64 << 20);
            let (mut first, seqs) = prefill(&e, e.begin_cached(&steer(4.0), &opts, &mut cache).unwrap());
            first.remember(&seqs, &mut cache);
            // Another coefficient: the unsteered row is held, the steered one starts at its stream.
            let warm = e.begin_cached(&steer(-2.5), &opts, &mut cache).unwrap();
            assert_eq!(warm.trunk.as_ref().map(|t| t.stream), Some(hook.stream()), "{hook}");
            let s = cache.stats();
            assert_eq!((s.hits, s.partial_hits), (1, 1), "{s:?}");
            let (_, warm) = prefill(&e, warm);
            let (_, cold) = prefill(&e, e.begin(&steer(-2.5), &opts).unwrap());
            for (a, b) in warm.iter().zip(&cold) {
                assert_eq!(a.logits, b.logits, "{hook}");
                for l in 0..e.info().n_layer {
                    assert_eq!(a.kv.layer(l), b.kv.layer(l), "{hook} layer {l}");
                }
            }
            assert_eq!(decode(&e, warm, 6), decode(&e, cold, 6), "{hook}");
        }
    }

    /// Runs a scoring prefill to its end; its scores.
    fn scored(e: &Engine, mut p: Prefill, cache: Option<&mut PrefixCache>) -> Vec<crate::engine::Scored> {
        let (mut p, seqs) = match p.take_scored() {
            Some(s) => return s,
            None => prefill(e, p),
        };
        if let Some(c) = cache {
            p.remember(&seqs, c);
        }
        p.take_scored().expect("over")
    }

    #[test]
    fn a_steered_score_starts_from_the_texts_trunk_and_a_scored_text_is_not_scored_again() {
        let e = engine();
        let ids = e.encode("The weather today is cold and grey, and it rained all afternoon long", true).unwrap();
        let steer = rows(&e, "x", 2.0, 0)[1].additions.clone(); // at ResidPre(2), k = 2
        let mut cache = PrefixCache::new(64 << 20);
        let plain = scored(&e, e.begin_score(&ids, 0, &[vec![]], Some(&mut cache), false).unwrap(), Some(&mut cache));
        let warm = e.begin_score(&ids, 0, &[vec![], steer.clone()], Some(&mut cache), false).unwrap();
        assert_eq!(warm.trunk.as_ref().map(|t| t.stream), Some(2));
        let warm = scored(&e, warm, Some(&mut cache));
        let cold = scored(&e, e.begin_score(&ids, 0, &[vec![], steer], None, false).unwrap(), None);
        let s = cache.stats();
        assert_eq!((s.hits, s.partial_hits, s.misses), (1, 1, 2), "{s:?}");
        assert_eq!(warm[0].logprobs, plain[0].logprobs);
        for (w, c) in warm.iter().zip(&cold) {
            assert_eq!((&w.logprobs, &w.next), (&c.logprobs, &c.next));
        }
        assert_eq!(cold[0].logprobs.len(), ids.len() - 1);
        assert_ne!(cold[0].logprobs, cold[1].logprobs, "the steering changed nothing");
    }

    #[test]
    fn texts_over_one_context_compute_it_once_with_the_numbers_of_a_cold_scoring() {
        let e = engine();
        let ctx = e.encode("The weather today is", true).unwrap();
        let texts: Vec<Vec<u32>> =
            [" cold and grey", " warm", " a mystery to everyone"].iter().map(|c| [ctx.clone(), e.encode(c, false).unwrap()].concat()).collect();
        let sides = [vec![], rows(&e, "x", 2.0, 0)[1].additions.clone()];
        let mut cache = PrefixCache::new(64 << 20);
        for (i, ids) in texts.iter().enumerate() {
            let p = e.begin_score(ids, ctx.len(), &sides, Some(&mut cache), false).unwrap();
            assert_eq!(p.done, if i == 0 { 0 } else { ctx.len() }, "text {i} starts after the context");
            let before = e.model().block_positions();
            let warm = scored(&e, p, Some(&mut cache));
            let warm_work = e.model().block_positions() - before;
            let cold = scored(&e, e.begin_score(ids, ctx.len(), &sides, None, false).unwrap(), None);
            for (w, c) in warm.iter().zip(&cold) {
                assert_eq!((&w.logprobs, &w.next), (&c.logprobs, &c.next), "text {i}");
            }
            assert_eq!(cold[0].logprobs.len(), ids.len() - 1);
            if i > 0 {
                // Only the continuation's positions ran, for both rows, through every block.
                assert_eq!(warm_work, (2 * (ids.len() - ctx.len()) * e.info().n_layer) as u64, "text {i}");
            }
        }
        assert_eq!(cache.stats().partial_hits, 2 * 2, "{:?}", cache.stats());
    }

    #[test]
    fn texts_sharing_an_undeclared_beginning_start_after_it_with_the_numbers_of_a_scoring_cut_there() {
        let e = engine();
        let enc = |t: &str| e.encode(t, false).unwrap();
        let ctx = enc("Question: what is the weather like today in the north of the country? Answer:");
        let first = [ctx.clone(), enc(" cold and grey")].concat();
        // Another continuation: shares the context; a prefix of the first text: shares all of it.
        let other = [ctx.clone(), enc(" warm")].concat();
        let longer = [first.clone(), enc(" all week")].concat();
        let steer = rows(&e, "x", 2.0, 0)[1].additions.clone();
        for sides in [vec![vec![]], vec![steer.clone()]] {
            let mut cache = PrefixCache::new(64 << 20);
            let cold_first = scored(&e, e.begin_score(&first, 0, &sides, Some(&mut cache), true).unwrap(), Some(&mut cache));
            assert_eq!(cold_first[0].top.len(), first.len() - 1);
            assert!(cold_first[0].top.iter().all(|t| t.len() == crate::engine::SCORE_TOP));
            for (ids, starts_at) in [(&other, ctx.len() - 1), (&longer, first.len())] {
                let p = e.begin_score(ids, 0, &sides, Some(&mut cache), true).unwrap();
                assert_eq!(p.done, starts_at, "{} steered rows", sides[0].len());
                let warm = scored(&e, p, Some(&mut cache));
                let cold = scored(&e, e.begin_score(ids, starts_at, &sides, None, true).unwrap(), None);
                assert_eq!((&warm[0].logprobs, &warm[0].top, &warm[0].next), (&cold[0].logprobs, &cold[0].top, &cold[0].next));
                assert_eq!(warm[0].logprobs.len(), ids.len() - 1);
            }
            // Other steering shares nothing with these rows.
            let other_steering = if sides[0].is_empty() { steer.clone() } else { vec![] };
            assert_eq!(e.begin_score(&other, 0, &[other_steering], Some(&mut cache), true).unwrap().done, 0);
        }
    }

    #[test]
    fn the_cache_stays_within_its_bytes_least_recently_used_out_first() {
        let e = engine();
        let opts = GenerateOptions::default();
        let (p, seqs) = prefill(&e, e.begin(&rows(&e, "A", 1.0, 0)[..1], &opts).unwrap());
        drop(p);
        let one = seqs[0].kv.compact().bytes() + seqs[0].logits.as_ref().unwrap().len() * 4;
        let mut cache = PrefixCache::new(2 * one + one / 2);
        let logits = seqs[0].logits.clone().unwrap();
        for key in 0..3u8 {
            cache.insert([key; 32], &[], [0; 32], &seqs[0].kv, &logits, None, vec![]);
            if key == 1 {
                assert!(cache.lookup(&[0; 32], false).is_some(), "entry 0 is now the most recently used");
            }
        }
        let s = cache.stats();
        assert!(s.bytes <= 2 * one + one / 2 && s.entries == 2 && s.evictions == 1, "{s:?}");
        assert!(cache.contains(&[0; 32]) && !cache.contains(&[1; 32]) && cache.contains(&[2; 32]));
        let mut off = PrefixCache::new(0);
        off.insert([0; 32], &[], [0; 32], &seqs[0].kv, &logits, None, vec![]);
        assert!(!off.enabled() && off.stats().entries == 0);
    }
}
