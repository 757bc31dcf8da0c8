//! The one split of a product over threads, shared by the row-major and the panel kernels, and
//! the bias add after it.
//!
//! A product is split by its *outputs* only (columns of panels, or rows of x), never along the
//! reduction: every output element is one FMA chain over all `k` weight rows in ascending
//! order, computed by one thread. How many threads there are, and which one takes which
//! outputs, changes who computes an element, never how: the same bits on 1, 2, 3 or 64 cores
//! (a pod's CPU limit, `--threads`, `RAYON_NUM_THREADS`), and for every m (batch invariance).
//! Before, the weight rows were split into one slab per thread and the partial sums added
//! after, so the bits depended on the thread count (7th digit of a log-probability).

use rayon::prelude::*;
use std::ops::Range;

/// Column tile (floats) one task works on: 4 weight rows of it stay in L1.
pub(super) const TILE: usize = 1024;

/// `parts` contiguous ranges covering `0..len` as evenly as possible (the first `len % parts`
/// one longer), at most `len` of them.
pub(super) fn even_ranges(len: usize, parts: usize) -> Vec<Range<usize>> {
    let parts = parts.clamp(1, len.max(1));
    let (base, extra) = (len / parts, len % parts);
    let mut start = 0;
    (0..parts)
        .map(|p| {
            let end = start + base + usize::from(p < extra);
            let r = start..end;
            start = end;
            r
        })
        .collect()
}

/// Runs `part(range)` over contiguous ranges of `units` output units, about 4 per thread of the
/// current rayon pool (each at least 4 units), which the threads take as they come free: a core
/// slowed by the host or by other work no longer holds the other at the end of every product.
/// The split only decides who computes an output.
pub(super) fn by_outputs(units: usize, part: impl Fn(Range<usize>) + Sync + Send) {
    let threads = rayon::current_num_threads();
    let ranges = even_ranges(units, (units / 4).clamp(threads, 4 * threads));
    ranges.into_par_iter().with_max_len(1).for_each(part);
}

/// x (`[m, k]`) transposed, `[k, m]`: what the blocked kernels broadcast from. In parallel over
/// blocks of k (a copy: its order changes no bits).
pub(super) fn transpose(x: &[f32], m: usize, k: usize) -> Vec<f32> {
    if m == 1 {
        return x.to_vec();
    }
    let mut xt = vec![0f32; k * m];
    const ROWS: usize = 256;
    xt.par_chunks_mut(ROWS * m).enumerate().for_each(|(c, out)| {
        let i0 = c * ROWS;
        for (di, col) in out.chunks_exact_mut(m).enumerate() {
            for (r, v) in col.iter_mut().enumerate() {
                *v = x[r * k + i0 + di];
            }
        }
    });
    xt
}

/// A product's output, written by every task at its own outputs.
#[derive(Clone, Copy)]
pub(super) struct Shared(pub(super) *mut f32);

// SAFETY: tasks write disjoint elements of the buffer, which outlives them (`by_outputs` returns
// after every task).
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

impl Shared {
    /// The pointer (a method, so that closures capture the `Sync` wrapper, not the field).
    pub(super) fn get(self) -> *mut f32 {
        self.0
    }
}

/// Adds `bias` to each row of `y` (rows of `bias.len()`).
pub fn add_bias(y: &mut [f32], bias: &[f32]) {
    for row in y.chunks_exact_mut(bias.len()) {
        for (a, b) in row.iter_mut().zip(bias) {
            *a += b;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::even_ranges;

    #[test]
    fn even_ranges_cover_every_unit_once_in_order() {
        for len in [0, 1, 2, 5, 50, 200] {
            for parts in [1, 2, 3, 8, 64] {
                let r = even_ranges(len, parts);
                assert_eq!(r.first().map(|r| r.start), Some(0));
                assert_eq!(r.last().map(|r| r.end), Some(len));
                assert!(r.windows(2).all(|w| w[0].end == w[1].start));
                let sizes: Vec<usize> = r.iter().map(|r| r.len()).collect();
                assert!(sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1, "{len} {parts} {sizes:?}");
                assert!(r.len() <= parts.max(1));
            }
        }
    }
}
