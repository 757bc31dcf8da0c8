//! The x86-64 q8_0 kernels: AVX512-VNNI's `vpdpbusd` on 16-block groups (with tiles for wide
//! rows), AVX2's `maddubs` + `madd` on the two 256-bit halves, and AVX2's block quantizer. The
//! same sums in the same order as the portable kernel ([`super::product`]).

// The kernels index their register arrays in explicit, fully unrolled loops.
#![allow(clippy::needless_range_loop)]

use super::activations::XQ;
use super::format::{Q32, QK8_0};
use super::packing::{GROUP, HALF};
use super::packing::{TILE_GROUPS, TILE_ROWS};
use std::arch::x86_64::*;

/// How far ahead of the kernel the weights are prefetched (bytes), from 2 rows up: +10-15% at
/// 6 and 16 rows; at 1 row, where the loop is short, the hardware keeps up alone (prefetching
/// there measured 0 to -10%). With 16-block groups, XL's `[1600 -> 6400]` from memory, three
/// interleaved runs, G weights/s: 2048 gave 16.0-17.7 at m = 6 and 7.7-8.2 at m = 16, against
/// 15.5-16.9 and 7.2-7.5 for 1024, 14.4-17.1 and 7.4-7.9 for 3072, 12.5-15.4 and 6.8-7.1 for 512.
const PREFETCH: usize = 2048;

#[inline(always)]
unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// 8 blocks' scaled dots added to `acc[i]` for each row i: lane j takes
/// `dot_j * (dw_j * dx_j)`; `d` points at the blocks' weight scales, `at` at row 0's
/// first block in x.
#[inline(always)]
unsafe fn scale8<const G: usize>(acc: &mut [__m256; G], dot: [__m256i; G], d: *const u16, xq: &XQ, at: usize) {
    let dw = _mm256_cvtph_ps(_mm_loadu_si128(d.cast()));
    for (i, (acc, dot)) in acc.iter_mut().zip(dot).enumerate() {
        let s = _mm256_mul_ps(dw, _mm256_loadu_ps(xq.d.as_ptr().add(at + i * xq.nb)));
        *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), s, *acc);
    }
}

/// [`super::quantize_block`] with AVX2, bit for bit: the same `max|x|`, scale and products;
/// round half away from zero as `trunc(v) + (|v - trunc(v)| >= 0.5 ? sign(v) : 0)` (exact:
/// `v - trunc(v)` is exact in f32), then `as i8`'s saturation (NaN to 0).
#[target_feature(enable = "avx2,fma")]
pub unsafe fn quantize_block_avx2(b: &[f32]) -> (f32, Q32) {
    assert_eq!(b.len(), QK8_0);
    let p = b.as_ptr();
    let v = [_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8)), _mm256_loadu_ps(p.add(16)), _mm256_loadu_ps(p.add(24))];
    let sign = _mm256_set1_ps(-0.0);
    // `maxps(a, m)` returns m where a is NaN, as `f32::max` skips NaN.
    let mut m = _mm256_setzero_ps();
    for v in v {
        m = _mm256_max_ps(_mm256_andnot_ps(sign, v), m);
    }
    let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    let amax = _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
    let d = amax / 127.0;
    let id = _mm256_set1_ps(if d != 0.0 { 1.0 / d } else { 0.0 });
    let (half, one) = (_mm256_set1_ps(0.5), _mm256_set1_ps(1.0));
    let (lo, hi) = (_mm256_set1_ps(-128.0), _mm256_set1_ps(127.0));
    // (A loop, not `map`: a closure is compiled without this function's target features.)
    let mut q = [_mm256_setzero_si256(); 4];
    for (q, v) in q.iter_mut().zip(v) {
        let x = _mm256_mul_ps(v, id);
        let t = _mm256_round_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(x);
        let away = _mm256_cmp_ps::<_CMP_GE_OQ>(_mm256_andnot_ps(sign, _mm256_sub_ps(x, t)), half);
        let r = _mm256_add_ps(t, _mm256_and_ps(away, _mm256_or_ps(_mm256_and_ps(sign, x), one)));
        let r = _mm256_and_ps(_mm256_min_ps(_mm256_max_ps(r, lo), hi), _mm256_cmp_ps::<_CMP_ORD_Q>(x, x));
        *q = _mm256_cvttps_epi32(r);
    }
    let bytes = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
    let mut out = Q32::default();
    _mm256_store_si256((&mut out as *mut Q32).cast(), _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
    (d, out)
}

/// The 16-block groups `groups` of one weight row (`wp`, `dp`) against G rows of x (row r
/// at block `x0 + r * nb`), added to `wide`; the weights `ahead` bytes on are prefetched.
#[inline(always)]
unsafe fn wide_vnni<const G: usize>(
    wp: *const Q32,
    dp: *const u16,
    xq: &XQ,
    x0: usize,
    groups: std::ops::Range<usize>,
    ahead: usize,
    wide: &mut [__m512; G],
) {
    let (nb, xp) = (xq.nb, xq.qs.as_ptr());
    for g in groups {
        let b0 = g * GROUP;
        if G > 1 {
            let ahead = wp.add(b0).cast::<i8>().wrapping_add(ahead);
            for line in 0..GROUP / 2 {
                _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(64 * line));
            }
        }
        // Two chains per row: one chain per row waits on the instruction's latency (the
        // compiler runs the rows one after another).
        let mut dot = [[_mm512_setzero_si512(); 2]; G];
        for c in 0..GROUP / 2 {
            let w = _mm512_loadu_si512(wp.add(b0 + 2 * c).cast());
            for (i, dot) in dot.iter_mut().enumerate() {
                let x = _mm512_loadu_si512(xp.add(x0 + i * nb + b0 + 2 * c).cast());
                dot[c % 2] = _mm512_dpbusd_epi32(dot[c % 2], w, x);
            }
        }
        let dw = _mm512_cvtph_ps(_mm256_loadu_si256(dp.add(b0).cast()));
        for (i, (acc, [even, odd])) in wide.iter_mut().zip(dot).enumerate() {
            let at = x0 + i * nb + b0;
            let dot = _mm512_sub_epi32(_mm512_add_epi32(even, odd), _mm512_loadu_si512(xq.offset.as_ptr().add(at).cast()));
            let s = _mm512_mul_ps(dw, _mm512_loadu_ps(xq.d.as_ptr().add(at)));
            *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), s, *acc);
        }
    }
}

/// A row's sums after its 16-block groups: lanes j and j + 8 added, the 8-block group, the
/// 8 lanes' tree, the tail.
#[inline(always)]
unsafe fn finish_vnni<const G: usize>(qs: &[Q32], d: &[u16], xq: &XQ, r0: usize, wide: [__m512; G], out: &mut [f32]) {
    let (nb, shape) = (xq.nb, xq.shape);
    let (wp, xp, x0) = (qs.as_ptr(), xq.qs.as_ptr(), r0 * nb);
    // (Loops, not closures: a closure is compiled without the caller's target features.)
    let mut acc = [_mm256_setzero_ps(); G];
    for (acc, a) in acc.iter_mut().zip(wide) {
        *acc = _mm256_add_ps(_mm512_castps512_ps256(a), _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(a))));
    }
    if shape.half {
        let b0 = shape.wide * GROUP;
        let mut dot = [[_mm256_setzero_si256(); 2]; G];
        for c in 0..HALF {
            let w = _mm256_load_si256(wp.add(b0 + c).cast());
            for (i, dot) in dot.iter_mut().enumerate() {
                dot[c % 2] = _mm256_dpbusd_epi32(dot[c % 2], w, _mm256_load_si256(xp.add(x0 + i * nb + b0 + c).cast()));
            }
        }
        let mut sums = [_mm256_setzero_si256(); G];
        for (i, (sum, [even, odd])) in sums.iter_mut().zip(dot).enumerate() {
            let offset = _mm256_loadu_si256(xq.offset.as_ptr().add(x0 + i * nb + b0).cast());
            *sum = _mm256_sub_epi32(_mm256_add_epi32(even, odd), offset);
        }
        scale8(&mut acc, sums, d.as_ptr().add(b0), xq, x0 + b0);
    }
    let mut sums = [0f32; G];
    for (s, acc) in sums.iter_mut().zip(acc) {
        *s = hsum(acc);
    }
    // The tail blocks in order, as [`tail`] adds them, each block's exact dot by one 256-bit
    // `vpdpbusd` and a horizontal sum (the scalar dots had cost ~10% of a 6-row product with
    // k = 1600, whose rows end with 2 tail blocks).
    for b in shape.tail..nb {
        let (w, dw) = (_mm256_load_si256(wp.add(b).cast()), half::f16::from_bits(d[b]).to_f32());
        for (i, s) in sums.iter_mut().enumerate() {
            let at = x0 + i * nb + b;
            let dot = _mm256_dpbusd_epi32(_mm256_setzero_si256(), w, _mm256_load_si256(xp.add(at).cast()));
            let dot = hsum_epi32(dot) - xq.offset[at];
            *s = (dot as f32).mul_add(dw * xq.d[at], *s);
        }
    }
    out.copy_from_slice(&sums);
}

#[inline(always)]
unsafe fn hsum_epi32(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
    _mm_cvtsi128_si32(_mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s)))
}

/// G rows of x against one weight row with `vpdpbusd` (unsigned weights, signed x; the
/// offset's `128 * sum(x)` subtracted per block).
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512vnni")]
pub unsafe fn rows_vnni<const G: usize>(qs: &[Q32], d: &[u16], xq: &XQ, r0: usize, out: &mut [f32]) {
    let mut wide = [_mm512_setzero_ps(); G];
    wide_vnni(qs.as_ptr(), d.as_ptr(), xq, r0 * xq.nb, 0..xq.shape.wide, PREFETCH, &mut wide);
    finish_vnni(qs, d, xq, r0, wide, out);
}

/// The same for up to [`TILE_ROWS`] weight rows, a few groups of each in turn, so that the
/// slice of x they take stays in L1 (into `out[o * G + i]`).
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512vnni")]
pub unsafe fn tile_vnni<const G: usize>(qs: &[Q32], d: &[u16], xq: &XQ, r0: usize, out: &mut [f32]) {
    let nb = xq.nb;
    let rows = qs.len() / nb;
    let mut wide = [[_mm512_setzero_ps(); G]; TILE_ROWS];
    let mut c = 0;
    while c < xq.shape.wide {
        let groups = c..(c + TILE_GROUPS).min(xq.shape.wide);
        for (o, wide) in wide[..rows].iter_mut().enumerate() {
            // the next row's same groups are the next read
            wide_vnni(qs.as_ptr().add(o * nb), d.as_ptr().add(o * nb), xq, r0 * nb, groups.clone(), nb * QK8_0, wide);
        }
        c += TILE_GROUPS;
    }
    for (o, wide) in wide[..rows].iter().enumerate() {
        finish_vnni(&qs[o * nb..][..nb], &d[o * nb..][..nb], xq, r0, *wide, &mut out[o * G..][..G]);
    }
}

/// The exact dots of 8 blocks (8 vectors of 32 bytes, `stride` blocks apart from `w` on, and
/// likewise in each x row from `x`) with AVX2: the weights' sign moved onto x so that
/// `maddubs` multiplies |w| (unsigned) by signed bytes (llama.cpp's `mul_sum_i8_pairs`),
/// `madd` summing 4 per lane.
#[inline(always)]
unsafe fn dot8_avx2<const G: usize>(w: *const Q32, x: *const Q32, nb: usize, stride: usize) -> [__m256i; G] {
    let (flip, ones) = (_mm256_set1_epi8(0x80u8 as i8), _mm256_set1_epi16(1));
    let mut dot = [_mm256_setzero_si256(); G];
    for c in 0..HALF {
        let w = _mm256_xor_si256(_mm256_load_si256(w.add(c * stride).cast()), flip);
        let abs_w = _mm256_abs_epi8(w);
        for (i, dot) in dot.iter_mut().enumerate() {
            let x = _mm256_load_si256(x.add(i * nb + c * stride).cast());
            let p = _mm256_maddubs_epi16(abs_w, _mm256_sign_epi8(x, w));
            *dot = _mm256_add_epi32(*dot, _mm256_madd_epi16(p, ones));
        }
    }
    dot
}

/// [`dot8_avx2`] for two weight rows at once: each x vector, loaded once, feeds both (x's
/// reads, from L2 at k = 6400, are half those of one row at a time).
#[inline(always)]
unsafe fn dot8_pair_avx2<const G: usize>(w: [*const Q32; 2], x: *const Q32, nb: usize, stride: usize) -> [[__m256i; G]; 2] {
    let (flip, ones) = (_mm256_set1_epi8(0x80u8 as i8), _mm256_set1_epi16(1));
    let mut dot = [[_mm256_setzero_si256(); G]; 2];
    for c in 0..HALF {
        let w0 = _mm256_xor_si256(_mm256_load_si256(w[0].add(c * stride).cast()), flip);
        let w1 = _mm256_xor_si256(_mm256_load_si256(w[1].add(c * stride).cast()), flip);
        let (a0, a1) = (_mm256_abs_epi8(w0), _mm256_abs_epi8(w1));
        for i in 0..G {
            let x = _mm256_load_si256(x.add(i * nb + c * stride).cast());
            let p0 = _mm256_maddubs_epi16(a0, _mm256_sign_epi8(x, w0));
            dot[0][i] = _mm256_add_epi32(dot[0][i], _mm256_madd_epi16(p0, ones));
            let p1 = _mm256_maddubs_epi16(a1, _mm256_sign_epi8(x, w1));
            dot[1][i] = _mm256_add_epi32(dot[1][i], _mm256_madd_epi16(p1, ones));
        }
    }
    dot
}

/// One output's sums after its 16-block groups (`acc`, lanes j and j + 8 already added): the
/// 8-block group, the 8 lanes' tree, then the tail blocks in order as [`super::activations::tail`] adds them, each
/// block's exact dot by `maddubs` + `madd` and a horizontal sum, where the compiler's
/// vectorisation of the scalar dots had widened each byte to 32 bits (XL's 1600-wide rows end
/// with 2 tail blocks; 1.05-1.06x for the whole product at m = 2, 4 and 16).
#[inline(always)]
unsafe fn finish_avx2<const G: usize>(qs: &[Q32], d: &[u16], xq: &XQ, r0: usize, mut acc: [__m256; G], out: &mut [f32]) {
    let (nb, shape) = (xq.nb, xq.shape);
    let (wp, xp, x0) = (qs.as_ptr(), xq.qs.as_ptr(), r0 * nb);
    if shape.half {
        let b0 = shape.wide * GROUP;
        let dot = dot8_avx2::<G>(wp.add(b0), xp.add(x0 + b0), nb, 1);
        scale8(&mut acc, dot, d.as_ptr().add(b0), xq, x0 + b0);
    }
    let mut sums = [0f32; G];
    for (s, acc) in sums.iter_mut().zip(acc) {
        *s = hsum(acc);
    }
    let (flip, ones) = (_mm256_set1_epi8(0x80u8 as i8), _mm256_set1_epi16(1));
    for b in shape.tail..nb {
        let w = _mm256_xor_si256(_mm256_load_si256(wp.add(b).cast()), flip);
        let (abs_w, dw) = (_mm256_abs_epi8(w), half::f16::from_bits(d[b]).to_f32());
        for (i, s) in sums.iter_mut().enumerate() {
            let at = x0 + i * nb + b;
            let p = _mm256_maddubs_epi16(abs_w, _mm256_sign_epi8(_mm256_load_si256(xp.add(at).cast()), w));
            let dot = hsum_epi32(_mm256_madd_epi16(p, ones));
            *s = (dot as f32).mul_add(dw * xq.d[at], *s);
        }
    }
    out.copy_from_slice(&sums);
}

/// Up to [`TILE_ROWS`] weight rows against G rows of x with AVX2 (into `out[o * G + i]`), two
/// weight rows at a time ([`dot8_pair_avx2`]); per output the same operations in the same
/// order as [`rows_avx2`].
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn tile_avx2<const G: usize>(qs: &[Q32], d: &[u16], xq: &XQ, r0: usize, out: &mut [f32]) {
    let nb = xq.nb;
    let rows = qs.len() / nb;
    let (xp, x0) = (xq.qs.as_ptr(), r0 * nb);
    let mut o = 0;
    while o + 2 <= rows {
        let w = [qs.as_ptr().add(o * nb), qs.as_ptr().add((o + 1) * nb)];
        let dp = [d.as_ptr().add(o * nb), d.as_ptr().add((o + 1) * nb)];
        let (mut lo, mut hi) = ([[_mm256_setzero_ps(); G]; 2], [[_mm256_setzero_ps(); G]; 2]);
        for g in 0..xq.shape.wide {
            let b0 = g * GROUP;
            let dot = dot8_pair_avx2::<G>([w[0].add(b0), w[1].add(b0)], xp.add(x0 + b0), nb, 2);
            for (j, dot) in dot.into_iter().enumerate() {
                scale8(&mut lo[j], dot, dp[j].add(b0), xq, x0 + b0);
            }
            let dot = dot8_pair_avx2::<G>([w[0].add(b0 + 1), w[1].add(b0 + 1)], xp.add(x0 + b0 + 1), nb, 2);
            for (j, dot) in dot.into_iter().enumerate() {
                scale8(&mut hi[j], dot, dp[j].add(b0 + HALF), xq, x0 + b0 + HALF);
            }
        }
        for j in 0..2 {
            let mut acc = lo[j];
            for (acc, hi) in acc.iter_mut().zip(hi[j]) {
                *acc = _mm256_add_ps(*acc, hi);
            }
            let oj = o + j;
            finish_avx2(&qs[oj * nb..][..nb], &d[oj * nb..][..nb], xq, r0, acc, &mut out[oj * G..][..G]);
        }
        o += 2;
    }
    if o < rows {
        rows_avx2::<G>(&qs[o * nb..][..nb], &d[o * nb..][..nb], xq, r0, &mut out[o * G..][..G]);
    }
}

/// The same with AVX2: a 16-block group's 64-byte vectors as two 32-byte halves (blocks
/// 0..8 and 8..16), each with its own 8-lane sums, added lane by lane as the 512-bit halves.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn rows_avx2<const G: usize>(qs: &[Q32], d: &[u16], xq: &XQ, r0: usize, out: &mut [f32]) {
    let (nb, shape) = (xq.nb, xq.shape);
    let (wp, xp, x0) = (qs.as_ptr(), xq.qs.as_ptr(), r0 * nb);
    let (mut lo, mut hi) = ([_mm256_setzero_ps(); G], [_mm256_setzero_ps(); G]);
    for g in 0..shape.wide {
        let b0 = g * GROUP;
        let dot = dot8_avx2::<G>(wp.add(b0), xp.add(x0 + b0), nb, 2);
        scale8(&mut lo, dot, d.as_ptr().add(b0), xq, x0 + b0);
        let dot = dot8_avx2::<G>(wp.add(b0 + 1), xp.add(x0 + b0 + 1), nb, 2);
        scale8(&mut hi, dot, d.as_ptr().add(b0 + HALF), xq, x0 + b0 + HALF);
    }
    let mut acc = lo;
    for (acc, hi) in acc.iter_mut().zip(hi) {
        *acc = _mm256_add_ps(*acc, hi);
    }
    finish_avx2(qs, d, xq, r0, acc, out);
}
