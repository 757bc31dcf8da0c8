//! Attention of a decoded row over its KV cache: [`attend_heads`] takes a run of heads at once,
//! reading each cached position's keys and values as one contiguous piece; [`attend_one`] is
//! one head, the reference it matches bit for bit.

use super::isa::isa;

/// One head of one row attending over its cache: `q` ([hd]) against positions `0..S` of
/// `keys`/`values` (`[S, d]`, this head's slice at `offset..offset + hd`), softmax of the
/// scaled scores, weighted sum of the values into `out` ([hd]). The order of every sum is fixed
/// by S alone, so a row's result never depends on the rows decoded beside it.
///
/// Dispatched to an AVX2+FMA build: without it every `mul_add` here was a call to libm's
/// `fmaf` (15% of a q8_0 decode step at 300 tokens, growing with the sequence).
pub fn attend_one(q: &[f32], keys: &[f32], values: &[f32], offset: usize, d: usize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if isa().avx2 {
            // SAFETY: the dispatch found the features on this CPU.
            unsafe { attend_one_avx2(q, keys, values, offset, d, out) };
            return;
        }
    }
    attend_one_generic(q, keys, values, offset, d, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn attend_one_avx2(q: &[f32], keys: &[f32], values: &[f32], offset: usize, d: usize, out: &mut [f32]) {
    attend_one_generic(q, keys, values, offset, d, out)
}

/// q.k in 8 lanes summed in a fixed order: one chain of 64 dependent FMAs per position was
/// latency-bound. (Plain loops, no closures: a closure is compiled on its own, without the
/// caller's target features, and its mul_add became a call to libm's fmaf.)
#[inline(always)]
fn dot(q: &[f32], k: &[f32]) -> f32 {
    let mut l = [0f32; 8];
    let (mut qc, mut kc) = (q.chunks_exact(8), k.chunks_exact(8));
    for (a, b) in (&mut qc).zip(&mut kc) {
        for j in 0..8 {
            l[j] = a[j].mul_add(b[j], l[j]);
        }
    }
    let mut dot = ((l[0] + l[4]) + (l[1] + l[5])) + ((l[2] + l[6]) + (l[3] + l[7]));
    for (a, b) in qc.remainder().iter().zip(kc.remainder()) {
        dot = a.mul_add(*b, dot);
    }
    dot
}

#[inline(always)]
fn attend_one_generic(q: &[f32], keys: &[f32], values: &[f32], offset: usize, d: usize, out: &mut [f32]) {
    let hd = q.len();
    let s = keys.len() / d;
    let scale = 1.0 / (hd as f32).sqrt();
    let mut scores = vec![0f32; s];
    for (t, score) in scores.iter_mut().enumerate() {
        *score = dot(q, &keys[t * d + offset..t * d + offset + hd]) * scale;
    }
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f32;
    for x in scores.iter_mut() {
        *x = (*x - max).exp();
        sum += *x;
    }
    out.fill(0.0);
    for (t, p) in scores.iter().enumerate() {
        let p = p / sum;
        let v = &values[t * d + offset..t * d + offset + hd];
        for (o, x) in out.iter_mut().zip(v) {
            *o = x.mul_add(p, *o);
        }
    }
}

/// Heads `h0..h0 + out.len() / hd` of one row attending over its cache, each exactly as
/// [`attend_one`] computes it (the same sums in the same order, so the same bits), but with the
/// positions outermost: each cached position's keys, then values, for all these heads are one
/// contiguous read. Head by head, a row's cache was read in 256-byte pieces 6.4 KB apart (XL),
/// which held a 16-row decode step's attention to ~9% of the step.
/// `q` is the row's queries for these heads, `[heads * hd]`; `keys`/`values` `[S, d]`.
pub fn attend_heads(q: &[f32], keys: &[f32], values: &[f32], h0: usize, hd: usize, d: usize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if isa().avx2 {
            // SAFETY: the dispatch found the features on this CPU.
            unsafe { attend_heads_avx2(q, keys, values, h0, hd, d, out) };
            return;
        }
    }
    attend_heads_generic(q, keys, values, h0, hd, d, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn attend_heads_avx2(q: &[f32], keys: &[f32], values: &[f32], h0: usize, hd: usize, d: usize, out: &mut [f32]) {
    attend_heads_generic(q, keys, values, h0, hd, d, out)
}

#[inline(always)]
fn attend_heads_generic(q: &[f32], keys: &[f32], values: &[f32], h0: usize, hd: usize, d: usize, out: &mut [f32]) {
    let heads = out.len() / hd;
    let s = keys.len() / d;
    let scale = 1.0 / (hd as f32).sqrt();
    let (lo, hi) = (h0 * hd, (h0 + heads) * hd);
    // scores[h * s + t], each q.k as attend_one sums it.
    let mut scores = vec![0f32; heads * s];
    for t in 0..s {
        let krow = &keys[t * d + lo..t * d + hi];
        for h in 0..heads {
            scores[h * s + t] = dot(&q[h * hd..(h + 1) * hd], &krow[h * hd..(h + 1) * hd]) * scale;
        }
    }
    let mut sums = vec![0f32; heads];
    for (h, sum) in sums.iter_mut().enumerate() {
        let row = &mut scores[h * s..(h + 1) * s];
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        for x in row.iter_mut() {
            *x = (*x - max).exp();
            *sum += *x;
        }
    }
    out.fill(0.0);
    for t in 0..s {
        let vrow = &values[t * d + lo..t * d + hi];
        for h in 0..heads {
            let p = scores[h * s + t] / sums[h];
            for (o, x) in out[h * hd..(h + 1) * hd].iter_mut().zip(&vrow[h * hd..(h + 1) * hd]) {
                *o = x.mul_add(p, *o);
            }
        }
    }
}
