//! Log-softmax of raw logits, as scores and reported token probabilities use it.

/// log(sum(exp(logits))), in f64 for the sum.
pub(super) fn log_sum_exp(logits: &[f32]) -> f32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    max + logits.iter().map(|&l| ((l - max) as f64).exp()).sum::<f64>().ln() as f32
}

pub(super) fn log_softmax_at(logits: &[f32], token: usize) -> f32 {
    logits[token] - log_sum_exp(logits)
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
