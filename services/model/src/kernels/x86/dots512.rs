//! [`dots::rows`] with AVX-512: 4 weight rows x up to 4 rows of h per pass, 16 sums in
//! registers, so each 16 values of h read from L2 serve 4 weight rows (one weight row at a time
//! read all of h from L2 per weight row: at 16 rows, 102 KB per 6.4 KB row, which bounded the
//! lm_head at ~60 GFLOP/s). A 512-bit sum's 16 lanes are the 2 x 8 lanes of the 256-bit loop,
//! summed in the same order: the same bits.

use super::load16;
use crate::kernels::Elem;
use std::arch::x86_64::*;

/// The sums of the whole groups of 4 weight rows; returns how many weight rows that was.
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
pub unsafe fn rows<E: Elem>(h: &[f32], w: &[E], out: &mut [f32], m: usize, d: usize) -> usize {
    let whole_rows = w.len() / d / 4 * 4;
    for o in (0..whole_rows).step_by(4) {
        let wr = &w[o * d..(o + 4) * d];
        let mut r = 0;
        while r < m {
            match m - r {
                1 => block::<E, 1>(h, wr, out, o, r, m, d),
                2 => block::<E, 2>(h, wr, out, o, r, m, d),
                3 => block::<E, 3>(h, wr, out, o, r, m, d),
                _ => block::<E, 4>(h, wr, out, o, r, m, d),
            }
            r += (m - r).min(4);
        }
    }
    whole_rows
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn block<E: Elem, const G: usize>(h: &[f32], wr: &[E], out: &mut [f32], o: usize, r0: usize, m: usize, d: usize) {
    const L: usize = 16;
    let whole = d / L * L;
    let (wp, hp) = (wr.as_ptr(), h.as_ptr().add(r0 * d));
    let mut acc = [[_mm512_setzero_ps(); G]; 4];
    let mut c = 0;
    while c < whole {
        if r0 == 0 {
            // The next group's weight rows, a line per 16 weights.
            for j in 0..4 {
                _mm_prefetch::<_MM_HINT_T0>(wp.wrapping_add((4 + j) * d + c).cast());
            }
        }
        let v = [load16(wp.add(c)), load16(wp.add(d + c)), load16(wp.add(2 * d + c)), load16(wp.add(3 * d + c))];
        for q in 0..G {
            let hq = _mm512_loadu_ps(hp.add(q * d + c));
            for j in 0..4 {
                acc[j][q] = _mm512_fmadd_ps(v[j], hq, acc[j][q]);
            }
        }
        c += L;
    }
    for (j, acc) in acc.iter().enumerate() {
        for (q, a) in acc.iter().enumerate() {
            let mut lanes = [0f32; L];
            _mm512_storeu_ps(lanes.as_mut_ptr(), *a);
            let mut s: f32 = lanes.iter().sum();
            for c in whole..d {
                s = wr[j * d + c].to_f32().mul_add(h[(r0 + q) * d + c], s);
            }
            out[(o + j) * m + r0 + q] = s;
        }
    }
}
