//! The row-major product, [`matmul_reference`]: weights as GPT-2 stores them (`[k, n]`, Conv1D),
//! streamed a few weight rows at a time. The model's linears go through the panel kernels
//! ([`super::panels`]); this is the reference that the tests hold them to (the same bits, for
//! every m and element type) and the old path that the `kernels` example measures them against.
//! From 2 rows of x the register-blocked x86 kernels do the FMAs, from 48 a packed one; every
//! path gives each output element the same FMA chain in the same order.

use super::isa::isa;
use super::split::{self, add_bias, Shared, TILE};
#[cfg(target_arch = "x86_64")]
use super::x86::{blocked, f16c};
use super::Elem;

/// `y[m, n] = x[m, k] . w[k, n] (+ bias[n])`, all row-major f32; `w` in GPT-2's Conv1D layout.
/// The reference product ([`super::matmul_panels`] must give its bits).
///
/// Each thread takes a contiguous group of x's rows ([`split::by_outputs`]) and streams all the
/// weight rows front to back for it: every output element is one FMA chain over all of k in
/// order, whatever the thread count or the group's size.
pub fn matmul_reference<E: Elem>(x: &[f32], w: &[E], bias: Option<&[f32]>, m: usize, k: usize, n: usize) -> Vec<f32> {
    assert_eq!(x.len(), m * k, "x shape");
    assert_eq!(w.len(), k * n, "w shape");
    if let Some(b) = bias {
        assert_eq!(b.len(), n, "bias shape");
    }
    let mut y = vec![0f32; m * n];
    let at = Shared(y.as_mut_ptr());
    split::by_outputs(m, |rows| {
        // SAFETY: y is [m, n]; each task writes only its own rows.
        let acc = unsafe { std::slice::from_raw_parts_mut(at.get().add(rows.start * n), rows.len() * n) };
        row_slab(&x[rows.start * k..rows.end * k], w, acc, rows.len(), k, n, 0, k);
    });
    if let Some(b) = bias {
        add_bias(&mut y, b);
    }
    y
}

#[allow(clippy::too_many_arguments)]
fn row_slab<E: Elem>(x: &[f32], w: &[E], acc: &mut [f32], m: usize, k: usize, n: usize, i0: usize, i1: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        let isa = isa();
        if m >= BLOCKED_MIN_ROWS && isa.avx2 {
            // SAFETY: the dispatch found the features on this CPU.
            unsafe {
                // 16-bit weights under 16 rows stay on 256-bit: their conversions share the
                // vector pipes with the FMAs, and at 6 rows that measured 8.9-9.4 against 8.4-8.9
                // G weights/s (the same at 16 and 32 rows; f32 the same at 6, faster from ~24).
                if isa.avx512 && (std::mem::size_of::<E>() == 4 || m >= 16) {
                    blocked::row_slab_512(x, w, acc, m, k, n, i0, i1)
                } else {
                    blocked::row_slab(x, w, acc, m, k, n, i0, i1)
                }
            };
            return;
        }
    }
    // One row of 16-bit weights: 8 weight rows per pass (see `WIDE` in `row_slab_generic`).
    if std::mem::size_of::<E>() == 2 && m == 1 {
        row_slab_for::<E, true>(x, w, acc, m, k, n, i0, i1)
    } else {
        row_slab_for::<E, false>(x, w, acc, m, k, n, i0, i1)
    }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn row_slab_for<E: Elem, const WIDE: bool>(x: &[f32], w: &[E], acc: &mut [f32], m: usize, k: usize, n: usize, i0: usize, i1: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        let isa = isa();
        if E::IS_F16 && isa.avx2 {
            // SAFETY: E is F16Bits, repr(transparent) over u16; the dispatch found the features on this CPU.
            unsafe { f16c::row_slab::<WIDE>(x, std::slice::from_raw_parts(w.as_ptr().cast::<u16>(), w.len()), acc, m, k, n, i0, i1) };
            return;
        }
        if isa.avx512 {
            // SAFETY: the dispatch found the features on this CPU.
            unsafe { row_slab_avx512::<E, WIDE>(x, w, acc, m, k, n, i0, i1) };
            return;
        }
        if isa.avx2 {
            // SAFETY: the dispatch found the features on this CPU.
            unsafe { row_slab_avx2::<E, WIDE>(x, w, acc, m, k, n, i0, i1) };
            return;
        }
    }
    row_slab_generic::<E, WIDE>(x, w, acc, m, k, n, i0, i1)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
unsafe fn row_slab_avx2<E: Elem, const WIDE: bool>(x: &[f32], w: &[E], acc: &mut [f32], m: usize, k: usize, n: usize, i0: usize, i1: usize) {
    row_slab_generic::<E, WIDE>(x, w, acc, m, k, n, i0, i1)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
unsafe fn row_slab_avx512<E: Elem, const WIDE: bool>(x: &[f32], w: &[E], acc: &mut [f32], m: usize, k: usize, n: usize, i0: usize, i1: usize) {
    row_slab_generic::<E, WIDE>(x, w, acc, m, k, n, i0, i1)
}

/// Rows of x from which the register-blocked kernel (`x86::blocked`) takes over (at one row it
/// measured the same as the streaming loop for f32, and 16-bit weights have their 8-row loop).
const BLOCKED_MIN_ROWS: usize = 2;

/// Adds weight rows i0..i1 into `acc` ([m, n]): 4 rows at a time, column tile by column tile,
/// so each weight element is loaded from memory once and used for all m rows from L1.
///
/// `WIDE` (one row of x, 16-bit weights): 8 weight rows at a time, so 8 streams are in flight
/// and `acc` is loaded and stored half as often. A 16-bit weight costs a conversion and an FMA
/// per 2 bytes against f32's FMA per 4, and at one row 4 streams left the 16-bit kernels at
/// ~24 GB/s against f32's ~28-34; with 8, XL's batch-1 decode went from 1.36x to 1.76x f32's
/// tokens/s for bf16 and from 1.44x to 2.22x for f16 (`steer bench --dtypes f32,bf16,f16`,
/// before and after, one session). The sums and their order are those of 4 at a time. Packing
/// each 4-row group's tiles contiguously (one stream per core) was slower: 20 against 26 GB/s.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn row_slab_generic<E: Elem, const WIDE: bool>(x: &[f32], w: &[E], acc: &mut [f32], m: usize, k: usize, n: usize, i0: usize, i1: usize) {
    let mut i = i0;
    if WIDE {
        while i + 8 <= i1 {
            rows_group::<E, 8>(x, w, acc, m, k, n, i);
            i += 8;
        }
    }
    while i + 4 <= i1 {
        rows_group::<E, 4>(x, w, acc, m, k, n, i);
        i += 4;
    }
    while i < i1 {
        rows_group::<E, 1>(x, w, acc, m, k, n, i);
        i += 1;
    }
}

/// Adds weight rows `i..i + R` into `acc`, column tile by column tile: each element of `acc`
/// is loaded once, takes R FMAs (rows in ascending order, so the sum's order is that of one
/// row at a time, whatever R) and is stored once; three input rows share each weight vector
/// loaded from L1. Measured on XL's shapes and not kept: R = 8 for f32 (no faster at 1 or 6
/// rows; 16-bit weights at one row do take it, see `row_slab_generic`),
/// software prefetch of the next tile, in a burst or a line per step (slower). On x86 this loop
/// now serves one row only: from 2 rows the register-blocked kernel (`x86::blocked`, which reads
/// the weights in place 8 rows at a time; a first version that packed 16-64 weight rows into
/// panels as they streamed had reached 0.7-1.2x of this loop) gives the same bits faster.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn rows_group<E: Elem, const R: usize>(x: &[f32], w: &[E], acc: &mut [f32], m: usize, k: usize, n: usize, i: usize) {
    let mut t0 = 0;
    while t0 < n {
        let tw = TILE.min(n - t0);
        let ws: [&[E]; R] = std::array::from_fn(|j| &w[(i + j) * n + t0..(i + j) * n + t0 + tw]);
        let xs = |r: usize| -> [f32; R] { std::array::from_fn(|j| x[r * k + i + j]) };
        let mut r = 0;
        while r + 3 <= m {
            let (xa, xb, xc) = (xs(r), xs(r + 1), xs(r + 2));
            let (oa, rest) = acc[r * n..].split_at_mut(n);
            let (ob, rest) = rest.split_at_mut(n);
            let oa = &mut oa[t0..t0 + tw];
            let ob = &mut ob[t0..t0 + tw];
            let oc = &mut rest[t0..t0 + tw];
            for c in 0..tw {
                let (mut a, mut b, mut d) = (oa[c], ob[c], oc[c]);
                for j in 0..R {
                    let v = ws[j][c].to_f32();
                    a = v.mul_add(xa[j], a);
                    b = v.mul_add(xb[j], b);
                    d = v.mul_add(xc[j], d);
                }
                (oa[c], ob[c], oc[c]) = (a, b, d);
            }
            r += 3;
        }
        for r in r..m {
            let xr = xs(r);
            let out = &mut acc[r * n + t0..r * n + t0 + tw];
            for c in 0..tw {
                let mut a = out[c];
                for j in 0..R {
                    a = ws[j][c].to_f32().mul_add(xr[j], a);
                }
                out[c] = a;
            }
        }
        t0 += tw;
    }
}
