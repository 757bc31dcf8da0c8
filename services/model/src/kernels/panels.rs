//! The production product of the model's linears on the host: weights packed in panels of 32
//! columns ([`pack_panels`]) and multiplied by [`matmul_panels`], which keeps the sums in
//! registers over a core's whole share of each panel and reads it as one stream. It gives the
//! bits of the row-major reference ([`super::matmul_reference`], tested).

use super::isa::isa;
use super::split::{self, add_bias, Shared};
#[cfg(target_arch = "x86_64")]
use super::x86::blocked;
use super::Elem;
use std::ops::Range;

/// Columns per panel of a packed weight matrix ([`pack_panels`]).
pub const PANEL: usize = 32;

/// `w [k, n]` (row-major, GPT-2's Conv1D) in panels of [`PANEL`] columns: panel p holds rows
/// `0..k` of columns `p * 32..p * 32 + 32` one after another (`out[(p * k + i) * 32 + c]`), the
/// last panel padded with zeros. A core's share of one panel's rows is then one sequential
/// stream, and 8 rows x 32 columns of sums stay in registers over all of it ([`matmul_panels`]).
pub fn pack_panels<T: Copy + Default>(w: &[T], k: usize, n: usize) -> Vec<T> {
    assert_eq!(w.len(), k * n, "w shape");
    let panels = n.div_ceil(PANEL);
    let mut out = vec![T::default(); panels * k * PANEL];
    for p in 0..panels {
        let cols = PANEL.min(n - p * PANEL);
        for i in 0..k {
            out[(p * k + i) * PANEL..][..cols].copy_from_slice(&w[i * n + p * PANEL..][..cols]);
        }
    }
    out
}

/// [`pack_panels`]'s input back, `[k, n]` row-major.
pub fn unpack_panels<T: Copy + Default>(wp: &[T], k: usize, n: usize) -> Vec<T> {
    let mut out = vec![T::default(); k * n];
    for p in 0..n.div_ceil(PANEL) {
        let cols = PANEL.min(n - p * PANEL);
        for i in 0..k {
            out[i * n + p * PANEL..][..cols].copy_from_slice(&wp[(p * k + i) * PANEL..][..cols]);
        }
    }
    out
}

/// [`matmul`] on panel-packed weights ([`pack_panels`]): each thread takes one contiguous
/// range of panels ([`split::by_outputs`]), and every output element is one FMA chain over all
/// the weight rows in ascending order, so the same bits for every m and every thread count. A
/// panel goes by in blocks of 64 weight rows that every group of rows of x takes from L1 while
/// the next block is prefetched (`blocked::panels_512` with 8 rows x 32 columns of 512-bit sums
/// in registers, `blocked::panels_256` with 6 x 16 of 256-bit), where the row-major kernel
/// reloads its sums every 8 weight rows and reads 8 weight rows 4-25 KiB apart.
/// XL's MLP shapes, weights from memory, 2-core Zen 4, GFLOP/s: 16 rows 171-186 against 142,
/// 32 rows 205-210 against 144, 1-6 rows the same (memory-bound).
pub fn matmul_panels<E: Elem>(x: &[f32], wp: &[E], bias: Option<&[f32]>, m: usize, k: usize, n: usize) -> Vec<f32> {
    let np = n.div_ceil(PANEL) * PANEL;
    assert_eq!(x.len(), m * k, "x shape");
    assert_eq!(wp.len(), k * np, "packed w shape");
    let mut y = vec![0f32; m * np];
    let at = Shared(y.as_mut_ptr());
    #[cfg(target_arch = "x86_64")]
    {
        if isa().avx2 {
            let xt = split::transpose(x, m, k);
            split::by_outputs(np / PANEL, |range| {
                // SAFETY: the dispatch found the features on this CPU; y is [m, np] and each
                // task writes only its own panels' columns.
                unsafe {
                    if isa().avx512 {
                        blocked::panels_512(&xt, wp, at.get(), m, k, np, range)
                    } else {
                        blocked::panels_256(&xt, wp, at.get(), m, k, np, range)
                    }
                }
            });
        }
    }
    if !isa().avx2 {
        split::by_outputs(np / PANEL, |range| {
            // SAFETY: as above, each task writes only its own panels' columns of y.
            unsafe { panels_generic(x, wp, at.get(), m, k, np, range) }
        });
    }
    if np != n {
        y = y.chunks_exact(np).flat_map(|row| &row[..n]).copied().collect();
    }
    if let Some(b) = bias {
        add_bias(&mut y, b);
    }
    y
}

/// The panels `range` without SIMD: per sum the same FMAs in the same order as the kernels.
///
/// # Safety
/// `ap` points at `[m, np]` sums that no one else writes in these panels' columns.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn panels_generic<E: Elem>(x: &[f32], wp: &[E], ap: *mut f32, m: usize, k: usize, np: usize, range: Range<usize>) {
    for p in range {
        for r in 0..m {
            let out = std::slice::from_raw_parts_mut(ap.add(r * np + p * PANEL), PANEL);
            for i in 0..k {
                let xv = x[r * k + i];
                for (o, w) in out.iter_mut().zip(&wp[(p * k + i) * PANEL..][..PANEL]) {
                    *o = w.to_f32().mul_add(xv, *o);
                }
            }
        }
    }
}
