//! The axpy kernel for IEEE-half weights with F16C's `vcvtph2ps` (8 per instruction, against
//! 6 vector ops per 16 for the portable conversion; 1.2x the rate on XL's MLP shapes). The same
//! sums in the same order as [`row_slab_generic`], so the results are the same bit for bit.

use crate::kernels::split::TILE;
use std::arch::x86_64::*;

#[inline(always)]
fn f(b: u16) -> f32 {
    half::f16::from_bits(b).to_f32()
}

#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn row_slab<const WIDE: bool>(x: &[f32], w: &[u16], acc: &mut [f32], m: usize, k: usize, n: usize, i0: usize, i1: usize) {
    let mut i = i0;
    if WIDE {
        while i + 8 <= i1 {
            group::<8, 1>(x, w, acc, m, k, n, i);
            i += 8;
        }
    }
    while i + 4 <= i1 {
        group::<4, 3>(x, w, acc, m, k, n, i);
        i += 4;
    }
    while i < i1 {
        for r in 0..m {
            let a0 = x[r * k + i];
            let out = &mut acc[r * n..(r + 1) * n];
            for (o, &b) in out.iter_mut().zip(&w[i * n..(i + 1) * n]) {
                *o = f(b).mul_add(a0, *o);
            }
        }
        i += 1;
    }
}

/// Weight rows `i..i + R` into `acc`, `P` rows of x per pass: each 8 weights of the R rows
/// converted once for them. (At 6 rows this loop measured 0.85x of a written-out 4-row one;
/// 2+ rows now take the register-blocked kernel, so here m is 1 on x86.)
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn group<const R: usize, const P: usize>(x: &[f32], w: &[u16], acc: &mut [f32], m: usize, k: usize, n: usize, i: usize) {
    let mut t0 = 0;
    while t0 < n {
        let tw = TILE.min(n - t0);
        let ws: [&[u16]; R] = std::array::from_fn(|j| &w[(i + j) * n + t0..(i + j) * n + t0 + tw]);
        let mut r = 0;
        while r < m {
            let g = (m - r).min(P);
            let mut xs = [[_mm256_setzero_ps(); R]; P];
            for (q, xq) in xs.iter_mut().enumerate().take(g) {
                for (j, v) in xq.iter_mut().enumerate() {
                    *v = _mm256_set1_ps(x[(r + q) * k + i + j]);
                }
            }
            let mut c = 0;
            while c + 8 <= tw {
                let mut v = [_mm256_setzero_ps(); R];
                for (j, v) in v.iter_mut().enumerate() {
                    *v = _mm256_cvtph_ps(_mm_loadu_si128(ws[j].as_ptr().add(c).cast()));
                }
                for (q, xq) in xs.iter().enumerate().take(g) {
                    let o = acc.as_mut_ptr().add((r + q) * n + t0 + c);
                    let mut a = _mm256_loadu_ps(o);
                    for j in 0..R {
                        a = _mm256_fmadd_ps(v[j], xq[j], a);
                    }
                    _mm256_storeu_ps(o, a);
                }
                c += 8;
            }
            for q in 0..g {
                let xr = &x[(r + q) * k + i..(r + q) * k + i + R];
                let out = &mut acc[(r + q) * n + t0..(r + q) * n + t0 + tw];
                for c in c..tw {
                    for j in 0..R {
                        out[c] = f(ws[j][c]).mul_add(xr[j], out[c]);
                    }
                }
            }
            r += g;
        }
        t0 += tw;
    }
}
