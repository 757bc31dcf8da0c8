//! Next-token choice: greedy, temperature, top-k, top-p, HF repetition penalty and
//! TransformerLens/OpenAI-style frequency and presence penalties, seeded per row.
//!
//! Order of the rules, per step and row (logits in f32):
//! 1. repetition_penalty (HF): for each distinct token seen so far (prompt included), a positive
//!    logit is divided by the penalty, a negative one multiplied by it;
//! 2. temperature: logits / T (T = 0 means greedy: argmax after the penalties);
//! 3. frequency and presence penalties: logit -= f * count(token) + p * [count > 0], counting every
//!    token so far, prompt and BOS included (TransformerLens applies them after the temperature);
//! 4. top_k: keep the k largest; 5. top_p: keep the smallest set of most likely tokens whose
//!    probability reaches p (always at least one); 6. draw from the softmax with the row's RNG.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};

/// Smallest non-zero temperature (below it, logits / T overflows f32 for large logits).
pub const MIN_TEMPERATURE: f32 = 1e-3;
pub const MAX_TEMPERATURE: f32 = 100.0;
/// Largest magnitude of the frequency and presence penalties, and of the repetition penalty's
/// factor (it lies in [1/MAX_PENALTY, MAX_PENALTY]).
pub const MAX_PENALTY: f32 = 100.0;

/// Sampling settings of one row. `Default` is neutral: plain sampling at T = 1, no filters, no
/// penalties. The named settings users ask for (the post's, the ARENA seed's) are built in one
/// place, `steer_proto::sampling`, and reach the engine through the services.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SamplingParams {
    /// 0 = greedy.
    pub temperature: f32,
    pub top_k: Option<usize>,
    pub top_p: Option<f32>,
    /// 1.0 = off.
    pub repetition_penalty: f32,
    pub frequency_penalty: f32,
    pub presence_penalty: f32,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self { temperature: 1.0, top_k: None, top_p: None, repetition_penalty: 1.0, frequency_penalty: 0.0, presence_penalty: 0.0 }
    }
}

impl SamplingParams {
    pub fn greedy() -> Self {
        Self { temperature: 0.0, ..Self::default() }
    }

    /// Checks the settings, naming the field (`sampling.<field>`) that is out of range.
    pub fn validate(&self) -> Result<()> {
        // Bounds keep every logit finite: logits / T with a subnormal T, or a penalty of 3e38
        // times a count, would overflow to Inf and make the distribution NaN.
        let t = self.temperature;
        if !(t == 0.0 || (MIN_TEMPERATURE..=MAX_TEMPERATURE).contains(&t)) {
            return Err(ModelError::invalid("sampling.temperature", format!("{t}: must be 0 (greedy) or in [{MIN_TEMPERATURE}, {MAX_TEMPERATURE}]")));
        }
        if let Some(p) = self.top_p {
            if !(p > 0.0 && p <= 1.0) {
                return Err(ModelError::invalid("sampling.top_p", format!("{p}: must be in (0, 1]")));
            }
        }
        if self.top_k == Some(0) {
            return Err(ModelError::invalid("sampling.top_k", "0: must be >= 1 (or unset)"));
        }
        let r = self.repetition_penalty;
        if !(1.0 / MAX_PENALTY..=MAX_PENALTY).contains(&r) {
            return Err(ModelError::invalid("sampling.repetition_penalty", format!("{r}: must be in [{}, {MAX_PENALTY}]", 1.0 / MAX_PENALTY)));
        }
        for (name, v) in [("frequency_penalty", self.frequency_penalty), ("presence_penalty", self.presence_penalty)] {
            if !(-MAX_PENALTY..=MAX_PENALTY).contains(&v) {
                return Err(ModelError::invalid(format!("sampling.{name}"), format!("{v}: must be in [-{MAX_PENALTY}, {MAX_PENALTY}]")));
            }
        }
        Ok(())
    }
}

/// xoshiro256** seeded by splitmix64: small, fast, and fixed forever (same seed, same tokens,
/// whatever crate versions come).
#[derive(Debug, Clone)]
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    pub fn new(seed: u64) -> Self {
        let mut z = seed;
        let mut next = || {
            z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut x = z;
            x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            x ^ (x >> 31)
        };
        Self { s: [next(), next(), next(), next()] }
    }

    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Standard normal (Box-Muller).
    pub fn next_normal(&mut self) -> f64 {
        let u1 = 1.0 - self.next_f64();
        let u2 = self.next_f64();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}

/// The sampler of one row: its settings, its RNG and the counts of the tokens it has seen.
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    rng: Rng,
    counts: HashMap<u32, u32>,
}

impl Sampler {
    /// `context`: the tokens so far (prompt, BOS included), which the penalties count.
    pub fn new(params: SamplingParams, seed: u64, context: &[u32]) -> Self {
        let mut s = Self { params, rng: Rng::new(seed), counts: HashMap::new() };
        for &t in context {
            s.observe(t);
        }
        s
    }

    /// Records a token as part of the context (the sampled one, after `sample`).
    pub fn observe(&mut self, token: u32) {
        *self.counts.entry(token).or_insert(0) += 1;
    }

    /// Applies the penalties and the temperature to `logits` in place (rules 1-3).
    pub fn adjust(&self, logits: &mut [f32]) {
        let p = &self.params;
        if p.repetition_penalty != 1.0 {
            for &t in self.counts.keys() {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l = if *l > 0.0 { *l / p.repetition_penalty } else { *l * p.repetition_penalty };
                }
            }
        }
        if p.temperature > 0.0 && p.temperature != 1.0 {
            for l in logits.iter_mut() {
                *l /= p.temperature;
            }
        }
        if p.frequency_penalty != 0.0 || p.presence_penalty != 0.0 {
            for (&t, &c) in &self.counts {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l -= p.frequency_penalty * c as f32 + p.presence_penalty;
                }
            }
        }
    }

    /// Chooses the next token from raw logits, and records it.
    pub fn sample(&mut self, logits: &mut [f32]) -> u32 {
        self.adjust(logits);
        let token = if self.params.temperature == 0.0 {
            argmax(logits)
        } else {
            let kept = filter(logits, self.params.top_k, self.params.top_p);
            draw(&kept, self.rng.next_f64())
        };
        self.observe(token);
        token
    }
}

/// Index of the largest logit (the first one on ties).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// Softmax, then top-k and top-p: the surviving (token, probability) pairs, most likely first,
/// probabilities renormalised.
pub fn filter(logits: &[f32], top_k: Option<usize>, top_p: Option<f32>) -> Vec<(u32, f64)> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut probs: Vec<(u32, f64)> =
        logits.iter().enumerate().map(|(i, &l)| (i as u32, ((l - max) as f64).exp())).filter(|&(_, p)| p > 0.0).collect();
    let order = |a: &(u32, f64), b: &(u32, f64)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    let total: f64 = probs.iter().map(|p| p.1).sum();
    // Only the head of the distribution can survive top-k/top-p: partition out the most likely
    // `head` tokens in O(V) and sort just those when they already cover top_p (or top_k fits),
    // trying 256, 2048 and 16384 tokens; otherwise sort everything. The order is total (ties by
    // id), so the head is the full sort's beginning and the result the same bits either way. A
    // flat distribution (random weights; top_p 0.3 took ~15% of the vocabulary) sorted the whole
    // vocabulary every step: 3% of XL's 16-row f32 step.
    let mut head = 256;
    let mut head_suffices = false;
    while (top_k.is_some() || top_p.is_some()) && probs.len() > head {
        probs.select_nth_unstable_by(head - 1, order);
        let head_mass: f64 = probs[..head].iter().map(|p| p.1).sum::<f64>() / total;
        head_suffices = match top_k {
            Some(k) => k <= head,
            None => top_p.is_some_and(|p| head_mass >= p as f64),
        };
        if head_suffices {
            probs.truncate(head);
            break;
        }
        head *= 8;
    }
    probs.sort_unstable_by(order);
    if let Some(k) = top_k {
        probs.truncate(k.max(1));
    }
    // Renormalise over what is kept (the full mass when nothing was cut).
    let total: f64 = if head_suffices && top_k.is_none() { total } else { probs.iter().map(|p| p.1).sum() };
    for p in probs.iter_mut() {
        p.1 /= total;
    }
    if let Some(top_p) = top_p {
        let mut cum = 0.0;
        let mut keep = probs.len();
        for (i, p) in probs.iter().enumerate() {
            cum += p.1;
            if cum >= top_p as f64 - 1e-6 {
                keep = i + 1;
                break;
            }
        }
        probs.truncate(keep.max(1));
        let total: f64 = probs.iter().map(|p| p.1).sum();
        for p in probs.iter_mut() {
            p.1 /= total;
        }
    }
    probs
}

/// Inverse-CDF draw with `u` in [0, 1).
pub fn draw(kept: &[(u32, f64)], u: f64) -> u32 {
    let mut cum = 0.0;
    for &(t, p) in kept {
        cum += p;
        if u < cum {
            return t;
        }
    }
    kept.last().map_or(0, |k| k.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_that_could_overflow_a_logit_are_refused() {
        let bad = |p: SamplingParams| match p.validate().unwrap_err() {
            ModelError::InvalidArgument { field, .. } => field,
            e => panic!("{e}"),
        };
        let d = SamplingParams::default();
        assert!(bad(SamplingParams { temperature: 1e-40, ..d }).starts_with("sampling.temperature"));
        assert!(bad(SamplingParams { temperature: f32::NAN, ..d }).starts_with("sampling.temperature"));
        assert!(bad(SamplingParams { frequency_penalty: 3e38, ..d }).starts_with("sampling.frequency_penalty"));
        assert!(bad(SamplingParams { presence_penalty: -1e3, ..d }).starts_with("sampling.presence_penalty"));
        assert!(bad(SamplingParams { repetition_penalty: 1e-6, ..d }).starts_with("sampling.repetition_penalty"));
        for ok in [SamplingParams::greedy(), SamplingParams { temperature: 1e-3, repetition_penalty: 1.2, frequency_penalty: -2.0, ..d }] {
            ok.validate().unwrap();
        }
    }

    fn close(a: &[f32], b: &[f32]) {
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() < 1e-6, "{a:?} vs {b:?}");
        }
    }

    #[test]
    fn greedy_takes_argmax_first_on_ties() {
        let mut s = Sampler::new(SamplingParams::greedy(), 0, &[]);
        assert_eq!(s.sample(&mut [0.1, 2.0, -1.0, 2.0]), 1);
    }

    #[test]
    fn repetition_penalty_divides_positive_multiplies_negative() {
        let p = SamplingParams { repetition_penalty: 2.0, ..SamplingParams::greedy() };
        // token 0 seen twice: penalised once (HF penalises distinct tokens).
        let s = Sampler::new(p, 0, &[0, 0, 2]);
        let mut l = [4.0, 1.0, -3.0, 0.5];
        s.adjust(&mut l);
        close(&l, &[2.0, 1.0, -6.0, 0.5]);
    }

    #[test]
    fn temperature_then_frequency_and_presence_penalties() {
        let p = SamplingParams { temperature: 2.0, frequency_penalty: 1.0, presence_penalty: 0.5, top_p: None, ..SamplingParams::greedy() };
        // context: BOS(3) once, token 1 twice.
        let s = Sampler::new(p, 0, &[3, 1, 1]);
        let mut l = [4.0, 4.0, 2.0, 6.0];
        s.adjust(&mut l);
        // [4/2, 4/2 - 2*1 - 0.5, 2/2, 6/2 - 1 - 0.5]
        close(&l, &[2.0, -0.5, 1.0, 1.5]);
    }

    #[test]
    fn greedy_applies_penalties() {
        let p = SamplingParams { frequency_penalty: 1.0, ..SamplingParams::greedy() };
        let mut s = Sampler::new(p, 0, &[0]);
        assert_eq!(s.sample(&mut [1.0, 0.5]), 1);
    }

    #[test]
    fn top_k_keeps_k_largest_renormalised() {
        let l = [0f32, (2f32).ln(), (3f32).ln(), (4f32).ln()]; // probs 1:2:3:4
        let kept = filter(&l, Some(2), None);
        assert_eq!(kept.iter().map(|k| k.0).collect::<Vec<_>>(), vec![3, 2]);
        assert!((kept[0].1 - 4.0 / 7.0).abs() < 1e-6 && (kept[1].1 - 3.0 / 7.0).abs() < 1e-6);
    }

    #[test]
    fn top_p_keeps_smallest_set_reaching_p() {
        let l = [0f32, (2f32).ln(), (3f32).ln(), (4f32).ln()]; // probs .1 .2 .3 .4
        let ids = |p| filter(&l, None, Some(p)).iter().map(|k| k.0).collect::<Vec<_>>();
        assert_eq!(ids(0.3), vec![3]); // .4 >= .3
        assert_eq!(ids(0.4), vec![3]); // exactly reaches
        assert_eq!(ids(0.5), vec![3, 2]); // .7
        assert_eq!(ids(0.75), vec![3, 2, 1]); // .9
        assert_eq!(ids(1.0), vec![3, 2, 1, 0]);
        assert_eq!(ids(1e-9), vec![3]); // always at least one
        let kept = filter(&l, None, Some(0.5));
        assert!((kept[0].1 - 4.0 / 7.0).abs() < 1e-6);
    }

    #[test]
    fn the_head_shortcut_gives_the_same_nucleus_as_a_full_sort() {
        // A long-tailed distribution over a GPT-2-sized vocabulary, whose top_p 0.3 fits the
        // first head (256), and flatter ones that need the second (2048) and third (16384).
        let mut rng = Rng::new(1);
        let cases = [(None, Some(0.3)), (None, Some(0.999)), (Some(40), None), (Some(1000), Some(0.9)), (Some(5000), None), (None, None)];
        let mut nucleus = vec![];
        for (spread, k, p) in [2.5, 1.5, 0.7].into_iter().flat_map(|s| cases.map(|(k, p)| (s, k, p))) {
            let logits: Vec<f32> = (0..50257).map(|_| (rng.next_normal() * spread) as f32).collect();
            let fast = filter(&logits, k, p);
            // Reference: full sort, then the same rules.
            let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut all: Vec<(u32, f64)> = logits.iter().enumerate().map(|(i, &l)| (i as u32, ((l - max) as f64).exp())).collect();
            all.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            if let Some(k) = k {
                all.truncate(k);
            }
            let t: f64 = all.iter().map(|x| x.1).sum();
            let mut cum = 0.0;
            let keep = match p {
                Some(p) => all
                    .iter()
                    .position(|x| {
                        cum += x.1 / t;
                        cum >= p as f64 - 1e-6
                    })
                    .map_or(all.len(), |i| i + 1),
                None => all.len(),
            };
            if (k, p) == (None, Some(0.3)) {
                nucleus.push(keep);
            }
            let ids: Vec<u32> = all[..keep].iter().map(|x| x.0).collect();
            assert_eq!(fast.iter().map(|x| x.0).collect::<Vec<_>>(), ids, "spread {spread} k={k:?} p={p:?}");
            let mass: f64 = all[..keep].iter().map(|x| x.1).sum();
            for (f, a) in fast.iter().zip(&all[..keep]) {
                assert!((f.1 - a.1 / mass).abs() < 1e-9);
            }
        }
        // The cases reach every head size: 256, 2048 and 16384.
        assert!(nucleus[0] <= 256 && (257..=2048).contains(&nucleus[1]) && (2049..=16384).contains(&nucleus[2]), "{nucleus:?}");
    }

    #[test]
    fn draw_follows_the_cdf() {
        let kept = [(7, 0.5), (9, 0.3), (1, 0.2)];
        assert_eq!(draw(&kept, 0.0), 7);
        assert_eq!(draw(&kept, 0.49), 7);
        assert_eq!(draw(&kept, 0.5), 9);
        assert_eq!(draw(&kept, 0.79), 9);
        assert_eq!(draw(&kept, 0.99), 1);
    }

    #[test]
    fn same_seed_same_draws_and_empirical_frequencies() {
        let l = [0f32, (3f32).ln()]; // .25 .75
        let p = SamplingParams { top_p: None, frequency_penalty: 0.0, ..SamplingParams::default() };
        let run = |seed| {
            let mut s = Sampler::new(p.clone(), seed, &[]);
            (0..4000).map(|_| s.sample(&mut l.clone())).collect::<Vec<_>>()
        };
        assert_eq!(run(5), run(5));
        assert_ne!(run(5), run(6));
        let ones = run(5).iter().filter(|&&t| t == 1).count() as f64 / 4000.0;
        assert!((ones - 0.75).abs() < 0.03, "{ones}");
    }

    #[test]
    fn validation_names_the_field() {
        let bad = SamplingParams { top_p: Some(1.5), ..Default::default() };
        assert!(bad.validate().unwrap_err().to_string().contains("top_p"));
        let bad = SamplingParams { temperature: -1.0, ..Default::default() };
        assert!(bad.validate().unwrap_err().to_string().contains("temperature"));
        assert!(SamplingParams::default().validate().is_ok());
    }
}
