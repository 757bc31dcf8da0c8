//! Log-softmax of raw logits, as scores and reported token probabilities use it.

/// log(sum(exp(logits))), in f64 for the sum.
pub(super) fn log_sum_exp(logits: &[f32]) -> f32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    max + logits.iter().map(|&l| ((l - max) as f64).exp()).sum::<f64>().ln() as f32
}

/// log-softmax of raw logits: a lookup for any token, and the `n` most likely.
pub(super) fn log_probs(logits: &[f32], n: usize) -> (impl Fn(u32) -> f32 + '_, Vec<(u32, f32)>) {
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

/// How many alternatives a scoring keeps at each scored position ([`crate::Scored::top`]):
/// OpenAI's and vLLM's most, so a cached score answers any `logprobs` asked later.
pub const SCORE_TOP: usize = 20;

/// The `k` most likely tokens of `logits` as (token, logit - lse), most likely first (equal
/// values: the lower id first). One pass, no copy of the vocabulary.
pub(super) fn top_k(logits: &[f32], lse: f32, k: usize) -> Vec<(u32, f32)> {
    let mut best: Vec<(u32, f32)> = Vec::with_capacity(k + 1);
    for (i, &x) in logits.iter().enumerate() {
        if best.len() == k && best.last().is_none_or(|&(_, m)| x <= m) {
            continue;
        }
        let at = best.partition_point(|&(_, v)| v >= x);
        best.insert(at, (i as u32, x));
        best.truncate(k);
    }
    best.into_iter().map(|(i, x)| (i, x - lse)).collect()
}

/// A scored position: log P(`token`) and the [`SCORE_TOP`] most likely tokens, from the same
/// log-sum-exp (so the chosen token's value equals its entry among the alternatives).
pub(super) fn score_at(logits: &[f32], token: usize) -> (f32, Vec<(u32, f32)>) {
    let lse = log_sum_exp(logits);
    (logits[token] - lse, top_k(logits, lse, SCORE_TOP))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_agrees_with_a_full_sort_and_the_chosen_value() {
        let logits: Vec<f32> = (0..1000).map(|i| ((i * 7919) % 1009) as f32 * 0.01 - ((i % 3) as f32)).collect();
        let lse = log_sum_exp(&logits);
        let mut all: Vec<(u32, f32)> = logits.iter().enumerate().map(|(i, &x)| (i as u32, x - lse)).collect();
        all.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        assert_eq!(top_k(&logits, lse, 20), all[..20].to_vec());
        let (lp, top) = score_at(&logits, all[0].0 as usize);
        assert_eq!(lp, top[0].1, "the argmax's value is its own entry, bit for bit");
        assert_eq!(top_k(&[1.0, 3.0, 3.0], 0.0, 2), vec![(1, 3.0), (2, 3.0)]);
    }
}
