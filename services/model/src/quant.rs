//! llama.cpp's `q8_0` format and the small-batch product with it.
//!
//! A q8_0 row is a run of blocks of 32 weights, each block one f16 scale `d` and 32 int8 `q`
//! (34 bytes in ggml's files; weight = d * q), with `d = max|w| / 127` (ggml's
//! `quantize_row_q8_0_ref`). [`Q8Blocks`] holds the same values and bytes split in two arrays,
//! the quants 32-byte aligned, since a 34-byte block straddles a cache line about half the time
//! (measured against ggml's interleaved blocks in one session: +0-5% at m = 1 and 6, within the
//! noise). GGUF's q8_0 bytes are split as they are read.
//!
//! The product `y = x . W^T` (W: `[n, k]` rows of blocks, x: `[m, k]` f32) follows llama.cpp's
//! arithmetic: each 32-value block of x is quantized to int8 with its own f32 scale, each (weight
//! block, x block) pair is one exact integer dot product, scaled by both scales and accumulated
//! in f32. The layout is ours ([`Q8Rows`]): whole groups of 8 blocks interleaved so that one
//! vector instruction advances 8 blocks' dot products at once, one per lane, with AVX512-VNNI's
//! `vpdpbusd` where the CPU has it (AVX2's `maddubs` + `madd` otherwise, the same sums). Each
//! weight group is loaded once for up to 8 rows of x held in registers; output rows are split
//! over threads.
//!
//! Against candle 0.11's `QMatMul` (its CPU path is ggml's `vec_dot_q8_0_q8_0`, one block at a
//! time) on the same q8_0 weights, XL's MLP matrices x 12 (beyond the caches), 2 cores, three
//! runs: 20.0-24.6 against 17.3-19.9 G weights/s at m = 1 (1.11-1.24x), 10.8-11.5 against 4.4-4.7
//! at m = 6 (2.30-2.47x) (`cargo run --release -p steer-model --example dtypes -- --qmatmul`).
//! Kept: this one.

use rayon::prelude::*;

/// Weights per block.
pub const QK8_0: usize = 32;

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
#[inline(always)]
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

/// Blocks the product takes at once from a row: 8 blocks (256 weights) give each of a vector's
/// 8 lanes one block's whole dot product.
const GROUP_BLOCKS: usize = 8;

/// Where byte `e` of block `j` of a group sits in the group's 256 bytes: each 32-byte vector
/// holds 4 consecutive bytes of each of the 8 blocks, so a 4-byte dot product per lane
/// (`vpdpbusd`, or `maddubs` + `madd`) over the group's 8 vectors leaves lane j with block j's
/// whole dot product, no horizontal sums.
#[inline(always)]
fn group_pos(j: usize, e: usize) -> usize {
    (e / 4) * QK8_0 + j * 4 + e % 4
}

/// Interleaves one group of 8 blocks in place ([`group_pos`]), xor-ing each byte with `flip`.
fn interleave(group: &mut [Q32], flip: u8) {
    let mut out = [Q32::default(); GROUP_BLOCKS];
    for (j, q) in group.iter().enumerate() {
        for (e, &v) in q.0.iter().enumerate() {
            let p = group_pos(j, e);
            out[p / QK8_0].0[p % QK8_0] = (v as u8 ^ flip) as i8;
        }
    }
    group.copy_from_slice(&out);
}

/// Interleaves the whole groups of each row of `row_blocks` blocks (the tail blocks stay plain)
/// and xors every byte with `flip`.
fn pack_rows(qs: &mut [Q32], row_blocks: usize, flip: u8) {
    let whole = row_blocks / GROUP_BLOCKS * GROUP_BLOCKS;
    for row in qs.chunks_exact_mut(row_blocks) {
        let (groups, tail) = row.split_at_mut(whole);
        groups.chunks_exact_mut(GROUP_BLOCKS).for_each(|g| interleave(g, flip));
        for v in tail.iter_mut().flat_map(|q| q.0.iter_mut()) {
            *v = (*v as u8 ^ flip) as i8;
        }
    }
}

/// A q8_0 matrix `[n, k]` as the product reads it: the same blocks and bytes as [`Q8Blocks`]
/// (34 per 32 weights), each row's whole groups of 8 blocks interleaved ([`group_pos`]) and every
/// quant stored unsigned as `q + 128`, the operand `vpdpbusd` multiplies unsigned (the signed
/// activations' `128 * sum(x)` per block, computed once per product, takes the offset back out).
/// Packed in place at load.
///
/// Measured against the layout ggml computes on (one block's 32 bytes per vector: an integer dot
/// product, then a horizontal sum, scale and FMA per block and row), XL's MLP matrices x 12,
/// same session (`cargo run --release -p steer-model --example dtypes`): see [`matmul_t`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Q8Rows {
    qs: Vec<Q32>,
    d: Vec<u16>,
    row_blocks: usize,
}

impl Q8Rows {
    /// Packs `b`, rows of `row_blocks` blocks.
    pub fn pack(mut b: Q8Blocks, row_blocks: usize) -> Self {
        assert!(row_blocks > 0 && b.len().is_multiple_of(row_blocks), "whole rows of blocks");
        pack_rows(&mut b.qs, row_blocks, 0x80);
        Self { qs: b.qs, d: b.d, row_blocks }
    }

    /// Bytes in memory (as in ggml's files: 34 per block).
    pub fn bytes(&self) -> usize {
        self.qs.len() * (QK8_0 + 2)
    }

    /// The weights of row `row` as f32, appended to `out`.
    pub fn dequantize_row_into(&self, row: usize, out: &mut Vec<f32>) {
        let nb = self.row_blocks;
        let (qs, d) = (&self.qs[row * nb..(row + 1) * nb], &self.d[row * nb..(row + 1) * nb]);
        let whole = nb / GROUP_BLOCKS * GROUP_BLOCKS;
        for (b, &d) in d.iter().enumerate() {
            let d = half::f16::from_bits(d).to_f32();
            out.extend((0..QK8_0).map(|e| {
                let byte = if b < whole {
                    let p = group_pos(b % GROUP_BLOCKS, e);
                    qs[b / GROUP_BLOCKS * GROUP_BLOCKS + p / QK8_0].0[p % QK8_0]
                } else {
                    qs[b].0[e]
                };
                ((byte as u8 ^ 0x80) as i8) as f32 * d
            }));
        }
    }

    /// All weights as f32.
    pub fn to_f32(&self) -> Vec<f32> {
        let rows = self.qs.len() / self.row_blocks;
        let mut out = Vec::with_capacity(self.qs.len() * QK8_0);
        for r in 0..rows {
            self.dequantize_row_into(r, &mut out);
        }
        out
    }
}

/// Activations quantized per block with f32 scales (the weights' are f16; an f32 one costs
/// nothing here and keeps the activations' rounding at int8's alone), packed as the weights
/// (signed), with each block's `128 * sum(q)`.
struct XQ {
    qs: Vec<Q32>,
    d: Vec<f32>,
    offset: Vec<i32>,
    nb: usize,
}

fn quantize_x(x: &[f32], nb: usize) -> XQ {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the feature was just detected on this CPU.
            return unsafe { quantize_x_avx2(x, nb) };
        }
    }
    quantize_x_portable(x, nb)
}

/// The same with AVX2 enabled, so that `round` is `vroundps` (with the same results: the
/// compiler keeps round-half-away-from-zero) rather than a call to libm's `roundf` per value,
/// which showed in the profile of a 6-row product (the product's rate moved within the noise).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn quantize_x_avx2(x: &[f32], nb: usize) -> XQ {
    quantize_x_portable(x, nb)
}

#[inline(always)]
fn quantize_x_portable(x: &[f32], nb: usize) -> XQ {
    let (d, mut qs): (Vec<f32>, Vec<Q32>) = x.chunks_exact(QK8_0).map(quantize_block).unzip();
    let offset = qs.iter().map(|q| 128 * q.0.iter().map(|&v| v as i32).sum::<i32>()).collect();
    pack_rows(&mut qs, nb, 0);
    XQ { qs, d, offset, nb }
}

/// Rows of x that share each pass over a weight row (each in its own registers).
const X_ROWS: usize = 8;

/// `y[m, n] = x[m, k] . W[n, k]^T (+ bias[n])`.
///
/// Per output element: for each whole group, lane j of an f32 accumulator takes
/// `dot_j * (dw_j * dx_j)` (one FMA; the integer dot is exact); the 8 lanes are summed in a
/// fixed tree, then the tail blocks in order. That order never depends on m or on the kernel
/// (AVX512-VNNI, AVX2, portable): a row's result never depends on the rows computed beside it,
/// and every CPU gives the same bits.
///
/// XL's MLP matrices x 12, 2 cores, interleaved A/B runs in one session, G weights/s, against
/// ggml's block-at-a-time layout (AVX2 `maddubs` + `madd`, then a horizontal sum, scale and FMA
/// per block and row; there 256-bit `vpdpbusd` had measured +3% at m = 6 and -15% at m = 1):
/// m = 1: 22.4-26.6 against 17.7-24.3; m = 6: 12.0-12.5 against 5.4-8.5; m = 16: 5.2-5.9
/// against 3.2-3.6. `steer bench --dtypes f32,q8_0` on XL, same run: 6-row decode 37.8 tok/s
/// (2.37x f32's; was 1.52-1.70x), prefill of 9 tokens 0.38x f32's (was 0.68-0.83x).
pub fn matmul_t(x: &[f32], w: &Q8Rows, bias: Option<&[f32]>, m: usize, k: usize, n: usize) -> Vec<f32> {
    assert_eq!(k % QK8_0, 0, "k is whole blocks");
    assert_eq!(k / QK8_0, w.row_blocks, "k matches the rows");
    assert_eq!(x.len(), m * k, "x shape");
    assert_eq!(w.qs.len(), n * w.row_blocks, "w shape");
    matmul_with(Kernel::detect(), x, w, bias, m, n)
}

fn matmul_with(kernel: Kernel, x: &[f32], w: &Q8Rows, bias: Option<&[f32]>, m: usize, n: usize) -> Vec<f32> {
    let nb = w.row_blocks;
    let xq = quantize_x(x, nb);
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
                let g = (m - r).min(X_ROWS);
                kernel.rows(qs, d, &xq, r, &mut o[r..r + g]);
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kernel {
    #[cfg(target_arch = "x86_64")]
    Vnni,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    Portable,
}

impl Kernel {
    fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") && std::is_x86_feature_detected!("f16c");
            if avx2 && std::is_x86_feature_detected!("avx512vnni") && std::is_x86_feature_detected!("avx512vl") {
                return Kernel::Vnni;
            }
            if avx2 {
                return Kernel::Avx2;
            }
        }
        Kernel::Portable
    }

    /// Dots of one weight row (`qs`, `d`) with x rows `r0..r0 + out.len()` (at most [`X_ROWS`]).
    fn rows(self, qs: &[Q32], d: &[u16], xq: &XQ, r0: usize, out: &mut [f32]) {
        macro_rules! fixed {
            ($f:ident) => {
                match out.len() {
                    1 => x86::$f::<1>(qs, d, xq, r0, out),
                    2 => x86::$f::<2>(qs, d, xq, r0, out),
                    3 => x86::$f::<3>(qs, d, xq, r0, out),
                    4 => x86::$f::<4>(qs, d, xq, r0, out),
                    5 => x86::$f::<5>(qs, d, xq, r0, out),
                    6 => x86::$f::<6>(qs, d, xq, r0, out),
                    7 => x86::$f::<7>(qs, d, xq, r0, out),
                    8 => x86::$f::<8>(qs, d, xq, r0, out),
                    g => unreachable!("{g} rows"),
                }
            };
        }
        match self {
            // SAFETY: `detect` found the features on this CPU.
            #[cfg(target_arch = "x86_64")]
            Kernel::Vnni => unsafe { fixed!(rows_vnni) },
            // SAFETY: as above.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => unsafe { fixed!(rows_avx2) },
            Kernel::Portable => {
                for (i, o) in out.iter_mut().enumerate() {
                    *o = portable_row(qs, d, xq, r0 + i);
                }
            }
        }
    }
}

/// The exact dot product of a stored (`q + 128`) weight block with an activation block, laid
/// out alike.
#[inline(always)]
fn block_dot(w: &Q32, x: &Q32) -> i32 {
    w.0.iter().zip(&x.0).map(|(&a, &b)| (a as u8 as i32 - 128) * b as i32).sum()
}

/// The sum of a group accumulator's lanes, in the tree the AVX2 `hsum` uses.
#[inline(always)]
fn lanes_sum(a: [f32; 8]) -> f32 {
    ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]))
}

/// The tail blocks (after the whole groups) added to `s` in order.
#[inline(always)]
fn tail(qs: &[Q32], d: &[u16], xq: &XQ, r: usize, mut s: f32) -> f32 {
    let nb = xq.nb;
    for b in nb / GROUP_BLOCKS * GROUP_BLOCKS..nb {
        let at = r * nb + b;
        let scale = half::f16::from_bits(d[b]).to_f32() * xq.d[at];
        s = (block_dot(&qs[b], &xq.qs[at]) as f32).mul_add(scale, s);
    }
    s
}

/// One output element without SIMD: the same operations in the same order as the kernels.
fn portable_row(qs: &[Q32], d: &[u16], xq: &XQ, r: usize) -> f32 {
    let nb = xq.nb;
    let mut acc = [0f32; 8];
    for g in 0..nb / GROUP_BLOCKS {
        let (w, x) = (&qs[g * GROUP_BLOCKS..][..GROUP_BLOCKS], &xq.qs[r * nb + g * GROUP_BLOCKS..][..GROUP_BLOCKS]);
        for (j, a) in acc.iter_mut().enumerate() {
            let dot: i32 = (0..QK8_0)
                .map(|e| {
                    let p = group_pos(j, e);
                    (w[p / QK8_0].0[p % QK8_0] as u8 as i32 - 128) * x[p / QK8_0].0[p % QK8_0] as i32
                })
                .sum();
            let b = g * GROUP_BLOCKS + j;
            *a = (dot as f32).mul_add(half::f16::from_bits(d[b]).to_f32() * xq.d[r * nb + b], *a);
        }
    }
    tail(qs, d, xq, r, lanes_sum(acc))
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{tail, Q32, GROUP_BLOCKS, XQ};
    use std::arch::x86_64::*;

    /// How far ahead of the kernel the weights are prefetched (bytes), from 2 rows up: +10-15% at
    /// 6 and 16 rows; at 1 row, where the loop is short, the hardware keeps up alone.
    const PREFETCH: usize = 1024;

    #[inline(always)]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }

    /// The scaled group sums added to `acc`: lane j takes `dot_j * (dw_j * dx_j)`.
    #[inline(always)]
    unsafe fn scale_into(acc: &mut __m256, dot: __m256i, d: &[u16], xq: &XQ, at: usize, g: usize) {
        let dw = _mm256_cvtph_ps(_mm_loadu_si128(d.as_ptr().add(g * GROUP_BLOCKS).cast()));
        let s = _mm256_mul_ps(dw, _mm256_loadu_ps(xq.d.as_ptr().add(at)));
        *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), s, *acc);
    }

    /// G rows of x against one weight row with `vpdpbusd` (unsigned weights, signed x; the
    /// offset's `128 * sum(x)` subtracted per block).
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512vnni")]
    pub unsafe fn rows_vnni<const G: usize>(qs: &[Q32], d: &[u16], xq: &XQ, r0: usize, out: &mut [f32]) {
        let nb = xq.nb;
        let (wp, xp) = (qs.as_ptr(), xq.qs.as_ptr());
        let mut acc = [_mm256_setzero_ps(); G];
        for g in 0..nb / GROUP_BLOCKS {
            // 512-bit vectors: two of the group's 32-byte vectors each (lanes 8..16 take the
            // odd ones), then the halves added. `vpdpbusd` runs as many 512-bit instructions
            // per second as 256-bit ones here (1.8 G/s on a core, measured), so twice the work.
            // Two chains per row: one chain per row waits on the instruction's latency (the
            // compiler runs the rows one after another).
            if G > 1 {
                let ahead = wp.add(g * GROUP_BLOCKS).cast::<i8>().wrapping_add(PREFETCH);
                for line in 0..4 {
                    _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(64 * line));
                }
            }
            let mut dot = [[_mm512_setzero_si512(); 2]; G];
            for c in 0..GROUP_BLOCKS / 2 {
                let w = _mm512_loadu_si512(wp.add(g * GROUP_BLOCKS + 2 * c).cast());
                for (i, dot) in dot.iter_mut().enumerate() {
                    let x = _mm512_loadu_si512(xp.add((r0 + i) * nb + g * GROUP_BLOCKS + 2 * c).cast());
                    dot[c % 2] = _mm512_dpbusd_epi32(dot[c % 2], w, x);
                }
            }
            for (i, (acc, [even, odd])) in acc.iter_mut().zip(dot).enumerate() {
                let at = (r0 + i) * nb + g * GROUP_BLOCKS;
                let both = _mm512_add_epi32(even, odd);
                let (even, odd) = (_mm512_castsi512_si256(both), _mm512_extracti64x4_epi64::<1>(both));
                let dot = _mm256_sub_epi32(_mm256_add_epi32(even, odd), _mm256_loadu_si256(xq.offset.as_ptr().add(at).cast()));
                scale_into(acc, dot, d, xq, at, g);
            }
        }
        for (i, (o, acc)) in out.iter_mut().zip(acc).enumerate() {
            *o = tail(qs, d, xq, r0 + i, hsum(acc));
        }
    }

    /// The same with AVX2: the weights' sign moved onto x so that `maddubs` multiplies |w|
    /// (unsigned) by signed bytes (llama.cpp's `mul_sum_i8_pairs`), `madd` summing 4 per lane.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn rows_avx2<const G: usize>(qs: &[Q32], d: &[u16], xq: &XQ, r0: usize, out: &mut [f32]) {
        let nb = xq.nb;
        let (wp, xp) = (qs.as_ptr(), xq.qs.as_ptr());
        let (flip, ones) = (_mm256_set1_epi8(0x80u8 as i8), _mm256_set1_epi16(1));
        let mut acc = [_mm256_setzero_ps(); G];
        for g in 0..nb / GROUP_BLOCKS {
            let mut dot = [_mm256_setzero_si256(); G];
            for c in 0..GROUP_BLOCKS {
                let w = _mm256_xor_si256(_mm256_load_si256(wp.add(g * GROUP_BLOCKS + c).cast()), flip);
                let abs_w = _mm256_abs_epi8(w);
                for (i, dot) in dot.iter_mut().enumerate() {
                    let x = _mm256_load_si256(xp.add((r0 + i) * nb + g * GROUP_BLOCKS + c).cast());
                    let p = _mm256_maddubs_epi16(abs_w, _mm256_sign_epi8(x, w));
                    *dot = _mm256_add_epi32(*dot, _mm256_madd_epi16(p, ones));
                }
            }
            for (i, (acc, dot)) in acc.iter_mut().zip(dot).enumerate() {
                scale_into(acc, dot, d, xq, (r0 + i) * nb + g * GROUP_BLOCKS, g);
            }
        }
        for (i, (o, acc)) in out.iter_mut().zip(acc).enumerate() {
            *o = tail(qs, d, xq, r0 + i, hsum(acc));
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
    fn packing_keeps_every_weight() {
        for &(n, k) in &[(3usize, 32usize), (2, 256), (4, 320), (1, 1600)] {
            let b = Q8Blocks::quantize(&data(n * k, 4));
            let plain = b.to_f32();
            let packed = Q8Rows::pack(b.clone(), k / QK8_0);
            assert_eq!(packed.to_f32(), plain, "n={n} k={k}");
            assert_eq!(packed.bytes(), b.bytes());
        }
    }

    /// The kernels this CPU can run (the portable one always).
    fn kernels() -> Vec<Kernel> {
        let mut ks = vec![Kernel::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") && std::is_x86_feature_detected!("f16c") {
                ks.push(Kernel::Avx2);
            }
            if Kernel::detect() == Kernel::Vnni {
                ks.push(Kernel::Vnni);
            }
        }
        ks
    }

    #[test]
    fn matmul_matches_the_dequantized_product_and_rows_are_independent() {
        // k: a tail block only, whole groups only, groups and a tail; m: every fixed-size
        // kernel, and more rows than one pass takes.
        let shapes = [(1usize, 32usize, 5usize), (3, 64, 130), (5, 256, 31), (6, 320, 77), (7, 32, 9), (8, 512, 20), (9, 96, 200), (16, 288, 40)];
        for &(m, k, n) in &shapes {
            let x = data(m * k, 1);
            let bias = data(n, 3);
            let blocks = Q8Blocks::quantize(&data(n * k, 2));
            let wd = blocks.to_f32();
            let w = Q8Rows::pack(blocks, k / QK8_0);
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
            for kernel in kernels() {
                assert_eq!(matmul_with(kernel, &x, &w, Some(&bias), m, n), got, "{kernel:?}, m={m} k={k}: the same bits");
            }
        }
    }

    #[test]
    fn extreme_quants_neither_saturate_nor_wrap() {
        // -128 (possible in a foreign GGUF file) and 127 weights against +-127 activations.
        let (m, k, n) = (2usize, 320usize, 3usize);
        let mut blocks = Q8Blocks::quantize(&data(n * k, 5));
        for (i, q) in blocks.qs.iter_mut().enumerate() {
            q.0 = [if i % 2 == 0 { -128 } else { 127 }; QK8_0];
        }
        let wd = blocks.to_f32();
        let w = Q8Rows::pack(blocks, k / QK8_0);
        let x: Vec<f32> = (0..m * k).map(|i| if i % 3 == 0 { -1.0 } else { 1.0 }).collect();
        for kernel in kernels() {
            let got = matmul_with(kernel, &x, &w, None, m, n);
            for r in 0..m {
                for o in 0..n {
                    let e: f64 = (0..k).map(|i| x[r * k + i] as f64 * wd[o * k + i] as f64).sum();
                    assert!((got[r * n + o] as f64 - e).abs() <= 1e-3 * e.abs().max(1.0), "{kernel:?} ({r},{o}): {} vs {e}", got[r * n + o]);
                }
            }
        }
    }
}
