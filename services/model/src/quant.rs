//! llama.cpp's `q8_0` format and the small-batch product with it.
//!
//! A q8_0 row is a run of blocks of 32 weights, each block one f16 scale `d` and 32 int8 `q`
//! (34 bytes in ggml's files; weight = d * q), with `d = max|w| / 127` (ggml's
//! `quantize_row_q8_0_ref`). [`Q8Blocks`] holds the same values and bytes split in two arrays,
//! the quants 32-byte aligned, since a 34-byte block straddles a cache line about half the time
//! (measured against ggml's interleaved blocks in one session: +0-5% at m = 1 and 6, within the
//! noise). GGUF's q8_0 bytes are split as they are read.
//!
//! The product `y = x . W^T` (W: `[n, k]` rows of blocks, x: `[m, k]` f32) follows llama.cpp:
//! each 32-value block of x is quantized to int8 with its own f32 scale, and each (weight
//! block, x block) pair is one integer dot product (AVX2 `maddubs`/`madd`), scaled by both
//! scales and accumulated in f32. Each weight block is loaded once and used for up to 8 rows of
//! x from registers (5 to 8 in fixed-size loops: a 6-row step passes over each weight row once
//! instead of twice, 8.2-8.8 against 7.3-7.8 G weights/s at m = 6 and 5.9 against 5.0-5.1 at
//! m = 9 on XL's MLP shapes; 215-229 against 234-242 ms per 6-row XL step); output rows are
//! split over threads. Not kept: the scale applied as `dw * (dx * p)` with dx broadcast from
//! memory (one vector op fewer per pair) measured no faster.
//!
//! Against candle 0.11's `QMatMul` (its CPU path does the same int8 dot products, ggml's
//! `vec_dot_q8_0_q8_0`) on the same q8_0 weights, XL's MLP matrices x 12 (beyond the caches),
//! 2 cores: 25.2 against 19.8 G weights/s at m = 1 (1.27x), 7.3 against 4.8 at m = 6 (1.53x)
//! (`cargo run --release -p steer-model --example dtypes -- --qmatmul`). Kept: this one.
//! AVX512-VNNI's `vpdpbusd` in place of `maddubs` + `madd` measured +3% at m = 6 and -15% at
//! m = 1 here, so it is not used.

use rayon::prelude::*;

/// Weights per block.
pub const QK8_0: usize = 32;

/// Rows of x that share each weight block loaded into registers: up to 4 in one loop, 5 to 8
/// (a step of 6 rows, the usual comparison batch) in fixed-size ones.
const GROUP: usize = 8;

/// 32 int8 values, 32-byte aligned: one AVX2 load that never straddles a cache line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C, align(32))]
pub struct Q32(pub [i8; QK8_0]);

/// q8_0 blocks: the quants and their f16 scales (bits), block i being `d[i] * qs[i]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Q8Blocks {
    pub qs: Vec<Q32>,
    pub d: Vec<u16>,
}

/// `d = max|x| / 127`, `q = round(x / d)` (half away from zero), as ggml and the `gguf` package.
fn quantize_block(b: &[f32]) -> (f32, Q32) {
    let amax = b.iter().fold(0f32, |a, v| a.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut q = Q32::default();
    for (q, v) in q.0.iter_mut().zip(b) {
        *q = (v * id).round() as i8;
    }
    (d, q)
}

impl Q8Blocks {
    /// Quantizes `x` (whole blocks) with f16 scales, bit for bit as ggml does.
    pub fn quantize(x: &[f32]) -> Self {
        assert_eq!(x.len() % QK8_0, 0, "q8_0 rows are whole blocks");
        let (d, qs) = x
            .chunks_exact(QK8_0)
            .map(|b| {
                let (d, q) = quantize_block(b);
                (half::f16::from_f32(d).to_bits(), q)
            })
            .unzip();
        Self { qs, d }
    }

    /// From ggml's bytes (34 per block: f16 scale, 32 int8).
    pub fn from_ggml(bytes: &[u8]) -> Option<Self> {
        if bytes.len() % 34 != 0 {
            return None;
        }
        let (d, qs) = bytes
            .chunks_exact(34)
            .map(|c| {
                let mut q = Q32::default();
                for (q, &b) in q.0.iter_mut().zip(&c[2..]) {
                    *q = b as i8;
                }
                (u16::from_le_bytes([c[0], c[1]]), q)
            })
            .unzip();
        Some(Self { qs, d })
    }

    /// Blocks held.
    pub fn len(&self) -> usize {
        self.qs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.qs.is_empty()
    }

    /// Bytes in memory (as in ggml's files: 34 per block).
    pub fn bytes(&self) -> usize {
        self.len() * (QK8_0 + 2)
    }

    /// The weights of blocks `blocks` as f32, appended to `out`.
    pub fn dequantize_into(&self, blocks: std::ops::Range<usize>, out: &mut Vec<f32>) {
        for (q, &d) in self.qs[blocks.clone()].iter().zip(&self.d[blocks]) {
            let d = half::f16::from_bits(d).to_f32();
            out.extend(q.0.iter().map(|&v| v as f32 * d));
        }
    }

    /// All weights as f32.
    pub fn to_f32(&self) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.len() * QK8_0);
        self.dequantize_into(0..self.len(), &mut out);
        out
    }
}

/// Activations quantized per block, with f32 scales (the weights' are f16; an f32 one costs
/// nothing here and keeps the activations' rounding at int8's alone).
struct XQ {
    qs: Vec<Q32>,
    d: Vec<f32>,
}

fn quantize_x(x: &[f32]) -> XQ {
    let (d, qs) = x.chunks_exact(QK8_0).map(quantize_block).unzip();
    XQ { qs, d }
}

/// `y[m, n] = x[m, k] . W[n, k]^T (+ bias[n])`, W in q8_0 rows of `k / 32` blocks.
///
/// Each output element is one fixed-order sum over its blocks, whatever m is: a row's result
/// never depends on the rows computed beside it.
pub fn matmul_t(x: &[f32], w: &Q8Blocks, bias: Option<&[f32]>, m: usize, k: usize, n: usize) -> Vec<f32> {
    assert_eq!(k % QK8_0, 0, "k is whole blocks");
    assert_eq!(x.len(), m * k, "x shape");
    assert_eq!(w.len(), n * k / QK8_0, "w shape");
    let nb = k / QK8_0;
    let xq = quantize_x(x);
    // Output rows per task: enough work to amortise the task, enough tasks to balance.
    const ROWS: usize = 64;
    let mut yt = vec![0f32; n * m]; // [n, m]
    yt.par_chunks_mut(ROWS * m).enumerate().for_each(|(ci, out)| {
        let o0 = ci * ROWS;
        for (j, o) in out.chunks_exact_mut(m).enumerate() {
            let rows = (o0 + j) * nb..(o0 + j + 1) * nb;
            let (qs, d) = (&w.qs[rows.clone()], &w.d[rows]);
            let mut r = 0;
            while r < m {
                let g = (m - r).min(GROUP);
                dot_rows(qs, d, &xq, nb, r, g, &mut o[r..r + g]);
                r += g;
            }
        }
    });
    let mut y = vec![0f32; m * n];
    for o in 0..n {
        for r in 0..m {
            y[r * n + o] = yt[o * m + r] + bias.map_or(0.0, |b| b[o]);
        }
    }
    y
}

/// Dots of one weight row (`qs`, `d`) with x rows `r0..r0 + g` (g <= GROUP).
fn dot_rows(qs: &[Q32], d: &[u16], xq: &XQ, nb: usize, r0: usize, g: usize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") && std::is_x86_feature_detected!("f16c") {
            // SAFETY: the features were just detected on this CPU.
            unsafe {
                match g {
                    5 => avx2::rows::<5>(qs, d, xq, nb, r0, out),
                    6 => avx2::rows::<6>(qs, d, xq, nb, r0, out),
                    7 => avx2::rows::<7>(qs, d, xq, nb, r0, out),
                    8 => avx2::rows::<8>(qs, d, xq, nb, r0, out),
                    _ => avx2::dot_rows(qs, d, xq, nb, r0, g, out),
                }
            }
            return;
        }
    }
    for (i, o) in out.iter_mut().enumerate().take(g) {
        let x0 = (r0 + i) * nb;
        let mut s = 0f32;
        for (b, (q, &dw)) in qs.iter().zip(d).enumerate() {
            let dot: i32 = q.0.iter().zip(&xq.qs[x0 + b].0).map(|(&p, &v)| p as i32 * v as i32).sum();
            s += dot as f32 * (half::f16::from_bits(dw).to_f32() * xq.d[x0 + b]);
        }
        *o = s;
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{Q32, XQ};
    use std::arch::x86_64::*;

    /// `sum(a_i * b_i)` of 32 int8 pairs as 8 f32 lanes (llama.cpp's `mul_sum_i8_pairs_float`):
    /// `maddubs` multiplies unsigned by signed bytes, so |a| meets b with a's sign.
    #[inline(always)]
    unsafe fn mul_sum_i8(abs_a: __m256i, a: __m256i, b: __m256i) -> __m256 {
        let sb = _mm256_sign_epi8(b, a);
        let dot = _mm256_maddubs_epi16(abs_a, sb);
        _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_set1_epi16(1), dot))
    }

    #[inline(always)]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_rows(qs: &[Q32], d: &[u16], xq: &XQ, nb: usize, r0: usize, g: usize, out: &mut [f32]) {
        let mut acc = [_mm256_setzero_ps(); 4];
        let x0 = r0 * nb;
        for (b, (q, &dw)) in qs.iter().zip(d).enumerate() {
            let a = _mm256_load_si256(q.0.as_ptr().cast());
            let abs_a = _mm256_sign_epi8(a, a);
            let dw = _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(dw as i32)));
            for (i, acc) in acc.iter_mut().enumerate().take(g) {
                let at = x0 + i * nb + b;
                let p = mul_sum_i8(abs_a, a, _mm256_load_si256(xq.qs.get_unchecked(at).0.as_ptr().cast()));
                *acc = _mm256_fmadd_ps(_mm256_set1_ps(dw * *xq.d.get_unchecked(at)), p, *acc);
            }
        }
        for (o, acc) in out.iter_mut().zip(acc) {
            *o = hsum(acc);
        }
    }

    /// The same sums for exactly G rows (5 to 8), each in its own register: one pass over the
    /// weight row serves a whole 6-row step. (Up to 4 rows [`dot_rows`]'s loop stays: a
    /// fixed-size version of it measured 17 against 23-25 G weights/s at 1 row.)
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn rows<const G: usize>(qs: &[Q32], d: &[u16], xq: &XQ, nb: usize, r0: usize, out: &mut [f32]) {
        let mut acc = [_mm256_setzero_ps(); G];
        let x0 = r0 * nb;
        for (b, (q, &dw)) in qs.iter().zip(d).enumerate() {
            let a = _mm256_load_si256(q.0.as_ptr().cast());
            let abs_a = _mm256_sign_epi8(a, a);
            let dw = _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(dw as i32)));
            for i in 0..G {
                let at = x0 + i * nb + b;
                let p = mul_sum_i8(abs_a, a, _mm256_load_si256(xq.qs.get_unchecked(at).0.as_ptr().cast()));
                acc[i] = _mm256_fmadd_ps(_mm256_set1_ps(dw * *xq.d.get_unchecked(at)), p, acc[i]);
            }
        }
        for (o, acc) in out.iter_mut().zip(acc) {
            *o = hsum(acc);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::kernels::test_data as data;

    #[test]
    fn quantize_round_trip_is_within_half_a_step() {
        let x = data(32 * 50, 3);
        let back = Q8Blocks::quantize(&x).to_f32();
        for (xs, bs) in x.chunks_exact(32).zip(back.chunks_exact(32)) {
            let amax = xs.iter().fold(0f32, |a, v| a.max(v.abs()));
            for (v, b) in xs.iter().zip(bs) {
                // half a step (max/127/2), plus f16's rounding of the scale (2^-11 relative)
                let err = (b - v).abs();
                assert!(err <= amax / 254.0 + amax * 1e-3, "{err} vs {amax}");
            }
        }
    }

    #[test]
    fn bytes_round_trip_in_ggml_layout() {
        let q = Q8Blocks::quantize(&data(64, 9));
        let mut bytes = Vec::new();
        for (qs, d) in q.qs.iter().zip(&q.d) {
            bytes.extend(d.to_le_bytes());
            bytes.extend(qs.0.iter().map(|&v| v as u8));
        }
        assert_eq!(Q8Blocks::from_ggml(&bytes).unwrap(), q);
        assert_eq!(q.bytes(), bytes.len());
        assert!(Q8Blocks::from_ggml(&bytes[1..]).is_none());
    }

    #[test]
    fn matmul_matches_the_dequantized_product_and_rows_are_independent() {
        for &(m, k, n) in &[(1usize, 32usize, 5usize), (3, 64, 130), (5, 64, 31), (6, 256, 77), (7, 32, 9), (9, 96, 200), (16, 64, 40)] {
            let x = data(m * k, 1);
            let bias = data(n, 3);
            let w = Q8Blocks::quantize(&data(n * k, 2));
            let wd = w.to_f32();
            let got = matmul_t(&x, &w, Some(&bias), m, k, n);
            for r in 0..m {
                for o in 0..n {
                    let e: f64 = (0..k).map(|i| x[r * k + i] as f64 * wd[o * k + i] as f64).sum::<f64>() + bias[o] as f64;
                    // x is quantized to int8 per block too: error <= sum |w| * step/2
                    let bound: f64 = (0..k).map(|i| wd[o * k + i].abs() as f64).sum::<f64>() / 254.0 + 1e-4;
                    let g = got[r * n + o] as f64;
                    assert!((g - e).abs() <= bound, "m={m} k={k} n={n} ({r},{o}): {g} vs {e}");
                }
            }
            for r in 0..m {
                let alone = matmul_t(&x[r * k..(r + 1) * k], &w, Some(&bias), 1, k, n);
                assert_eq!(alone[..], got[r * n..(r + 1) * n], "row {r} alone, bit for bit");
            }
        }
    }
}
