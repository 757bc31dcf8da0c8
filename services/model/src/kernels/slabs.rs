//! The one split of a product's weight rows over threads, shared by the row-major and the
//! panel kernels, and the bias add after it.

use rayon::prelude::*;

/// Column tile (floats) one task works on: 4 weight rows of it stay in L1.
pub(super) const TILE: usize = 1024;

/// The weight rows `0..k` split into one contiguous slab per thread; `slab(acc, i0, i1)` adds
/// rows `i0..i1` into a zeroed partial sum of `len` values, and the partials are added in order.
/// Slabs of whole 4-row groups, at least 64 rows each so tiny matrices stay on one thread (the
/// split depends on k and the thread count only, never on m: every output element is one FMA
/// chain over the slab's rows in order, and the slabs are added in order, whatever m is, so a
/// row's result never depends on how many rows share the call).
pub(super) fn by_slabs(k: usize, len: usize, slab: impl Fn(&mut [f32], usize, usize) + Sync) -> Vec<f32> {
    let threads = rayon::current_num_threads().max(1);
    let rows_per = k.div_ceil(threads).div_ceil(4).max(16) * 4;
    let slabs: Vec<(usize, usize)> = (0..k).step_by(rows_per).map(|i0| (i0, (i0 + rows_per).min(k))).collect();
    let mut partials: Vec<Vec<f32>> = slabs
        .par_iter()
        .map(|&(i0, i1)| {
            let mut acc = vec![0f32; len];
            slab(&mut acc, i0, i1);
            acc
        })
        .collect();
    let mut y = partials.swap_remove(0);
    for p in &partials {
        for (a, b) in y.iter_mut().zip(p) {
            *a += b;
        }
    }
    y
}

/// Adds `bias` to each row of `y` (rows of `bias.len()`).
pub fn add_bias(y: &mut [f32], bias: &[f32]) {
    for row in y.chunks_exact_mut(bias.len()) {
        for (a, b) in row.iter_mut().zip(bias) {
            *a += b;
        }
    }
}
