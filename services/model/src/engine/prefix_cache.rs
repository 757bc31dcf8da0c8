//! Prompts computed once ([`PrefixCache`]): a row's prefilled state, its KV cache and the logits
//! of its first token, kept after its request ends and handed to a later row whose key is the
//! same instead of a prefill. The key covers exactly what that state depends on: the prompt's
//! tokens and every addition of the row (hook point, placement, positions and the values'
//! bits), so a hit gives the numbers a prefill would, bit for bit.
//!
//! Today a row hits when its whole prompt and steering match (a re-run with another seed,
//! several clients sending one prompt); the states below a row's first steered stream are not
//! yet shared across requests with other steering.
//!
//! Bounded in bytes, least recently used out first. A hit copies the state out, so nothing a
//! running request reads is ever evicted, and a full cache still serves every request.

use std::collections::HashMap;

use sha2::{Digest, Sha256};

use crate::hooks::{Addition, Placement};
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
        let placement: u8 = match a.placement {
            Placement::Prefix => 0,
            Placement::AllPositions => 1,
        };
        h.update(format!("{} {placement} {} {}\n", a.hook, a.k, a.values.len()).as_bytes());
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
    /// Prompt positions not prefilled thanks to hits.
    pub positions_reused: u64,
    pub evictions: u64,
    pub bytes: usize,
    pub entries: usize,
}

struct Entry {
    kv: RowKv,
    logits: Vec<f32>,
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

    /// A copy of the state under `key`, counting a hit or a miss.
    pub(crate) fn get(&mut self, key: &RowKey) -> Option<(RowKv, Vec<f32>)> {
        self.clock += 1;
        match self.entries.get_mut(key) {
            Some(e) => {
                e.used = self.clock;
                self.stats.hits += 1;
                self.stats.positions_reused += e.kv.len() as u64;
                Some((e.kv.clone(), e.logits.clone()))
            }
            None => {
                self.stats.misses += 1;
                None
            }
        }
    }

    /// Whether `key` is held (no counting).
    pub(crate) fn contains(&self, key: &RowKey) -> bool {
        self.entries.contains_key(key)
    }

    /// Keeps a copy of a prefilled row, evicting the least recently used entries to make room;
    /// a state larger than the whole cache is not kept.
    pub(crate) fn insert(&mut self, key: RowKey, kv: &RowKv, logits: &[f32]) {
        let bytes = kv.bytes() + logits.len() * 4;
        if bytes > self.max_bytes || self.entries.contains_key(&key) {
            return;
        }
        while self.stats.bytes + bytes > self.max_bytes {
            let Some(oldest) = self.entries.iter().min_by_key(|(_, e)| e.used).map(|(k, _)| *k) else { break };
            let e = self.entries.remove(&oldest).expect("present");
            self.stats.bytes -= e.bytes;
            self.stats.evictions += 1;
        }
        self.clock += 1;
        let kv = kv.compact();
        self.entries.insert(key, Entry { kv, logits: logits.to_vec(), bytes, used: self.clock });
        self.stats.bytes += bytes;
        self.stats.entries = self.entries.len();
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
    use crate::hooks::HookPoint;
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
        let (cold, cold_seqs) = prefill(&e, cold);
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
            cache.insert([key; 32], &seqs[0].kv, &logits);
            if key == 1 {
                assert!(cache.get(&[0; 32]).is_some(), "entry 0 is now the most recently used");
            }
        }
        let s = cache.stats();
        assert!(s.bytes <= 2 * one + one / 2 && s.entries == 2 && s.evictions == 1, "{s:?}");
        assert!(cache.contains(&[0; 32]) && !cache.contains(&[1; 32]) && cache.contains(&[2; 32]));
        let mut off = PrefixCache::new(0);
        off.insert([0; 32], &seqs[0].kv, &logits);
        assert!(!off.enabled() && off.stats().entries == 0);
    }
}
