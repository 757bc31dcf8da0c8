//! [`dot_rows_generic`]'s sums for several rows of h: each 16 weights are loaded and converted
//! once for up to 4 rows, whose 8 chains of FMAs run side by side (one row at a time is 2 chains
//! of `d / 16` dependent FMAs: latency-bound, 23 ms for XL's lm_head at 6 rows against 11 ms
//! to stream it). The same operations in the same order per row, so the same bits.

use super::{dots512, load8};
use crate::kernels::{isa, Elem};
use std::arch::x86_64::*;

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn rows<E: Elem>(h: &[f32], w: &[E], out: &mut [f32], m: usize, d: usize) {
    let mut first = 0;
    if isa().avx512 {
        first = dots512::rows(h, w, out, m, d);
    }
    // Blocks of weight rows that stay in L2 while every group of 4 rows of h (25.6 KB for
    // XL, in L1) goes over them: one weight row at a time, each group read its h from L2 (all of
    // h, 102 KB at 16 rows, per 6.4 KB weight row). XL's f32 lm_head, old and new alternated,
    // three rounds, medians: 16 rows 53.0 -> 47.1 ms, 6 rows 27.9 -> 21.7 ms, 1 row the same.
    let rows = w.len() / d;
    for b in (first..rows).step_by(BLOCK) {
        let mut r = 0;
        while r < m {
            for o in b..(b + BLOCK).min(rows) {
                let (wr, out) = (&w[o * d..(o + 1) * d], &mut out[o * m + r..(o + 1) * m]);
                match m - r {
                    1 => group::<E, 1>(h, wr, out, r, d),
                    2 => group::<E, 2>(h, wr, out, r, d),
                    3 => group::<E, 3>(h, wr, out, r, d),
                    _ => group::<E, 4>(h, wr, out, r, d),
                }
            }
            r += (m - r).min(4);
        }
    }
}

/// Weight rows per block of [`rows`]: 205 KB of XL's f32 rows, within a 512 KiB L2.
const BLOCK: usize = 32;

#[inline(always)]
unsafe fn group<E: Elem, const G: usize>(h: &[f32], wr: &[E], out: &mut [f32], r0: usize, d: usize) {
    const L: usize = 16;
    let whole = d / L * L;
    let (wp, hp) = (wr.as_ptr(), h.as_ptr().add(r0 * d));
    let mut acc = [[_mm256_setzero_ps(); 2]; G];
    let mut c = 0;
    while c < whole {
        if r0 == 0 {
            // The weight row 4 ahead, a line per 16 weights: 19.5 against 24.2 ms for XL's
            // f32 lm_head at 6 rows, 12.0 against 15.0 for bf16, -9% at 16 rows.
            _mm_prefetch::<_MM_HINT_T0>(wp.wrapping_add(c + 4 * d).cast());
        }
        let (v0, v1) = (load8(wp.add(c)), load8(wp.add(c + 8)));
        for (q, acc) in acc.iter_mut().enumerate() {
            let hq = hp.add(q * d + c);
            acc[0] = _mm256_fmadd_ps(v0, _mm256_loadu_ps(hq), acc[0]);
            acc[1] = _mm256_fmadd_ps(v1, _mm256_loadu_ps(hq.add(8)), acc[1]);
        }
        c += L;
    }
    for (q, acc) in acc.iter().enumerate() {
        let mut lanes = [0f32; L];
        _mm256_storeu_ps(lanes.as_mut_ptr(), acc[0]);
        _mm256_storeu_ps(lanes.as_mut_ptr().add(8), acc[1]);
        let mut s: f32 = lanes.iter().sum();
        for c in whole..d {
            s = wr[c].to_f32().mul_add(h[(r0 + q) * d + c], s);
        }
        out[q] = s;
    }
}
