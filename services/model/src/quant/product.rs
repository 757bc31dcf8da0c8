//! The product `y = x . W^T` on packed q8_0 weights: x quantized per block, the kernel chosen
//! from the one dispatch ([`crate::kernels::isa`]), output rows split over threads, and the
//! portable kernel that fixes the order of every sum.

use rayon::prelude::*;

use super::activations::{tail, XQ};
use super::format::{quantize_block, Q32, QK8_0};
use super::packing::{byte, place, Q8Rows, Shape, GROUP, HALF, TILE_FROM_BLOCKS, TILE_ROWS};
#[cfg(target_arch = "x86_64")]
use super::x86;
use crate::kernels::{isa, Isa};

fn quantize_x(x: &[f32], nb: usize) -> XQ {
    #[cfg(target_arch = "x86_64")]
    {
        if isa().avx2 {
            // SAFETY: the dispatch found the features on this CPU.
            return unsafe { quantize_x_avx2(x, nb) };
        }
    }
    quantize_x_with(x, nb, quantize_block)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn quantize_x_avx2(x: &[f32], nb: usize) -> XQ {
    // SAFETY: the caller found AVX2.
    quantize_x_with(x, nb, |b| unsafe { x86::quantize_block_avx2(b) })
}

/// Each block quantized straight into its place in the layout, serially (the rows split over
/// rayon's threads took longer: 22 us against 15 at m = 6, k = 1600). Before, the scalar `round`
/// and saturating cast per value, then a per-byte layout pass, had taken 37 us of a ~190 us
/// 6-row product with k = 1600, and 144 of ~470 with k = 6400; now 6-15 and ~60.
#[inline(always)]
fn quantize_x_with(x: &[f32], nb: usize, block: impl Fn(&[f32]) -> (f32, Q32)) -> XQ {
    let shape = Shape::of(nb);
    let blocks = x.len() / QK8_0;
    let (mut qs, mut d, mut offset) = (vec![Q32::default(); blocks], vec![0f32; blocks], vec![0i32; blocks]);
    let rows = qs.chunks_exact_mut(nb).zip(d.chunks_exact_mut(nb)).zip(offset.chunks_exact_mut(nb)).zip(x.chunks_exact(nb * QK8_0));
    for (((qs, d), offset), x) in rows {
        for (b, ((xb, d), offset)) in x.chunks_exact(QK8_0).zip(d).zip(offset).enumerate() {
            let (scale, q) = block(xb);
            *d = scale;
            *offset = 128 * q.0.iter().map(|&v| v as i32).sum::<i32>();
            place(qs, shape, b, &q, 0);
        }
    }
    XQ { qs, d, offset, nb, shape }
}

/// `y[m, n] = x[m, k] . W[n, k]^T (+ bias[n])`.
///
/// Per output element: for each 16-block group, lane j of an f32 accumulator takes
/// `dot_j * (dw_j * dx_j)` (one FMA; the integer dot is exact); lanes j and j + 8 are then
/// added, the 8-block group (if any) FMA-ed into those 8 lanes the same way, the 8 lanes summed
/// in a fixed tree, then the tail blocks added in order. That order never depends on m or on the
/// kernel (AVX512-VNNI, AVX2, portable): a row's result never depends on the rows computed beside
/// it, and every CPU gives the same bits.
///
/// XL's MLP matrices x 12, 2 cores, interleaved A/B runs in one session, G weights/s, against
/// ggml's block-at-a-time layout (AVX2 `maddubs` + `madd`, then a horizontal sum, scale and FMA
/// per block and row; there 256-bit `vpdpbusd` had measured +3% at m = 6 and -15% at m = 1):
/// m = 1: 22.4-26.6 against 17.7-24.3; m = 6: 12.0-12.5 against 5.4-8.5; m = 16: 5.2-5.9
/// against 3.2-3.6. `steer bench --dtypes f32,q8_0` on XL, same run: 6-row decode 37.8 tok/s
/// (2.37x f32's; was 1.52-1.70x), prefill of 9 tokens 0.38x f32's (was 0.68-0.83x).
///
/// Groups of 16 blocks in 512-bit lanes (one scale, offset and FMA instruction per 16 blocks and
/// row, where 8-block groups took a 512-bit add, an extract and seven 256-bit ones per 8), with x
/// quantized by AVX2 straight into place, against 8-block groups: the same matrices, interleaved
/// runs, three each, G weights/s, `[1600 -> 6400]` and `[6400 -> 1600]` apart: m = 1: 20.1-25.6
/// and 21.7-25.6 against 22.6-26.6 and 20.2-24.7 (memory-bound, the same); m = 6: 17.1-18.1 and
/// 12.4-12.7 against 11.3-12.8 and 9.9-10.9; m = 16: 7.0-7.4 and 6.8-7.1 against 6.0-6.2 and
/// 5.0-5.8. Tried and dropped: two weight rows per pass, each x vector feeding both (+10-20%
/// with the weights in L3, but -35% at m = 1 and 6 with k = 1600 streaming them from memory);
/// the 6400-wide rows' 6 rows of x in two passes of 3, to keep x in L1 (-10-20%); prefetching
/// the scales, or with other hints or distances (no change).
///
/// AVX2 without VNNI (2-core Zen 3), from many rows up: 6 rows a pass (was 4), pairs of weight
/// rows from 12 rows at k = 6400 ([`Kernel::tiles`]), the tail blocks' dots in SIMD. XL q8_0,
/// `steer bench --batches 1,6,16`, old and new binaries alternated, three rounds, medians:
/// 16-row step 458.4 -> 394.1 ms (1.16x), 6 rows 180.1 -> 150.4 ms (1.20x), prefill of 9
/// tokens 0.231 -> 0.197 s, batch 1 unchanged (84.0 against 81.2 ms).
pub fn matmul_t(x: &[f32], w: &Q8Rows, bias: Option<&[f32]>, m: usize, k: usize, n: usize) -> Vec<f32> {
    assert_eq!(k % QK8_0, 0, "k is whole blocks");
    assert_eq!(k / QK8_0, w.row_blocks, "k matches the rows");
    assert_eq!(x.len(), m * k, "x shape");
    assert_eq!(w.qs.len(), n * w.row_blocks, "w shape");
    matmul_with(Kernel::detect(), x, w, bias, m, n)
}

pub(super) fn matmul_with(kernel: Kernel, x: &[f32], w: &Q8Rows, bias: Option<&[f32]>, m: usize, n: usize) -> Vec<f32> {
    let nb = w.row_blocks;
    let xq = quantize_x(x, nb);
    // Output rows per task: enough work to amortise the task, enough tasks to balance.
    const ROWS: usize = 64;
    let tiled = kernel.tiles(nb, m);
    let most = kernel.max_rows(tiled);
    // Passes of `most` rows and the rest (16 rows at 6: 6 + 6 + 4; 6 + 5 + 5 measured 0.9x).
    let passes: Vec<(usize, usize)> = (0..m).step_by(most.max(1)).map(|r| (r, (m - r).min(most))).collect();
    let task_rows = if tiled { TILE_ROWS } else { ROWS };
    let mut y = vec![0f32; m * n];
    let at = Shared(y.as_mut_ptr());
    (0..n.div_ceil(task_rows)).into_par_iter().for_each(|task| {
        let o0 = task * task_rows;
        let rows = task_rows.min(n - o0);
        let mut out = [0f32; X_ROWS * TILE_ROWS];
        // Output o's values for x rows r.. into y.
        let put = |r: usize, o: usize, out: &[f32]| {
            for (i, v) in out.iter().enumerate() {
                // SAFETY: y is m x n; each task writes its own outputs' columns.
                unsafe { at.get().add((r + i) * n + o).write(v + bias.map_or(0.0, |b| b[o])) };
            }
        };
        if tiled {
            let (qs, d) = (&w.qs[o0 * nb..(o0 + rows) * nb], &w.d[o0 * nb..(o0 + rows) * nb]);
            for &(r, g) in &passes {
                kernel.tile(qs, d, &xq, r, &mut out[..rows * g]);
                for o in 0..rows {
                    put(r, o0 + o, &out[o * g..(o + 1) * g]);
                }
            }
            return;
        }
        for o in o0..o0 + rows {
            let (qs, d) = (&w.qs[o * nb..(o + 1) * nb], &w.d[o * nb..(o + 1) * nb]);
            for &(r, g) in &passes {
                kernel.rows(qs, d, &xq, r, &mut out[..g]);
                put(r, o, &out[..g]);
            }
        }
    });
    y
}

/// The product's output, written by every task at its own columns.
struct Shared(*mut f32);

// SAFETY: the tasks write disjoint elements, and the buffer outlives them.
unsafe impl Sync for Shared {}

impl Shared {
    /// A method, so that closures capture the whole (Sync) wrapper, not its raw pointer.
    fn get(&self) -> *mut f32 {
        self.0
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kernel {
    #[cfg(target_arch = "x86_64")]
    Vnni,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    Portable,
}

impl Kernel {
    /// The kernel this process runs: the one dispatch's choice ([`isa`]), so `STEER_NO_AVX512`
    /// turns VNNI off here too.
    pub(super) fn detect() -> Self {
        Kernel::for_isa(isa())
    }

    /// The kernel for an instruction set: VNNI, else AVX2, else portable.
    pub(super) fn for_isa(isa: Isa) -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if isa.vnni {
                return Kernel::Vnni;
            }
            if isa.avx2 {
                return Kernel::Avx2;
            }
        }
        let _ = isa;
        Kernel::Portable
    }

    /// Rows of x that share each pass over a weight row (or, tiled, a pair of them), each with
    /// its sums in registers: AVX-512 has 32 registers, AVX2 16. AVX2's dots of one weight row
    /// take 6 rows (their f32 sums, touched once per 8 blocks, spill) and a pair's 4 (two dots
    /// a row).
    fn max_rows(self, tiled: bool) -> usize {
        match self {
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => match tiled {
                true => X_ROWS / 2,
                false => 6,
            },
            _ => X_ROWS,
        }
    }

    /// Whether rows of `nb` blocks against `m` rows of x go through [`Kernel::tile`]: from rows
    /// of 128 blocks (k = 4096) up, where x no longer fits L1 and a pass that reads each x
    /// vector once for a tile of (VNNI, from 2 rows of x) or two (AVX2, from 12) weight rows
    /// pays. AVX2 on XL's `[6400 -> 1600]` x 12, in-process alternated, best of 8, G weights/s,
    /// pairs against single rows: m = 12 6.75 against 5.88, m = 16 5.40-5.47 against 4.62-4.63;
    /// below 12 rows pairs were slower (m = 9 6.93-7.02 against 7.44-7.72, m = 2 11.97 against
    /// 13.37).
    fn tiles(self, nb: usize, m: usize) -> bool {
        #[cfg(target_arch = "x86_64")]
        match self {
            Kernel::Vnni => return m >= 2 && nb >= TILE_FROM_BLOCKS,
            Kernel::Avx2 => return m >= 12 && nb >= TILE_FROM_BLOCKS,
            Kernel::Portable => {}
        }
        let _ = (nb, m);
        false
    }

    /// The dots of the `out.len() / g` weight rows in `qs`, `d` (at most [`TILE_ROWS`]) with x
    /// rows `r0..r0 + g`, into `out[o * g + i]`, [`TILE_GROUPS`] groups of every row at a time.
    fn tile(self, qs: &[Q32], d: &[u16], xq: &XQ, r0: usize, out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if self == Kernel::Vnni {
            let g = out.len() / (qs.len() / xq.nb);
            macro_rules! fixed {
                ($($g:literal)*) => {
                    match g {
                        $($g => x86::tile_vnni::<$g>(qs, d, xq, r0, out),)*
                        g => unreachable!("{g} rows"),
                    }
                };
            }
            // SAFETY: the dispatch (`detect`) found the features on this CPU.
            return unsafe { fixed!(1 2 3 4 5 6 7 8) };
        }
        #[cfg(target_arch = "x86_64")]
        if self == Kernel::Avx2 {
            let g = out.len() / (qs.len() / xq.nb);
            // SAFETY: as above.
            return unsafe {
                match g {
                    1 => x86::tile_avx2::<1>(qs, d, xq, r0, out),
                    2 => x86::tile_avx2::<2>(qs, d, xq, r0, out),
                    3 => x86::tile_avx2::<3>(qs, d, xq, r0, out),
                    4 => x86::tile_avx2::<4>(qs, d, xq, r0, out),
                    g => unreachable!("{g} rows"),
                }
            };
        }
        let _ = (qs, d, xq, r0, out);
        unreachable!("only VNNI and AVX2 tile")
    }

    /// Dots of one weight row (`qs`, `d`) with x rows `r0..r0 + out.len()` (at most
    /// [`Kernel::max_rows`]).
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
            // SAFETY: the dispatch (`detect`) found the features on this CPU.
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

/// Rows of x that share each pass over a weight row (at most).
pub(super) const X_ROWS: usize = 8;

/// The sum of the 8 lanes, in the tree the AVX2 `hsum` uses.
#[inline(always)]
fn lanes_sum(a: [f32; HALF]) -> f32 {
    ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]))
}

/// One output element without SIMD: the same operations in the same order as the kernels.
fn portable_row(qs: &[Q32], d: &[u16], xq: &XQ, r: usize) -> f32 {
    let (nb, shape) = (xq.nb, xq.shape);
    let (x, xd) = (&xq.qs[r * nb..][..nb], &xq.d[r * nb..][..nb]);
    let term = |b: usize, acc: f32| {
        let dot: i32 = (0..QK8_0).map(|e| (byte(qs, shape.pos(b, e)) as u8 as i32 - 128) * byte(x, shape.pos(b, e)) as i32).sum();
        (dot as f32).mul_add(half::f16::from_bits(d[b]).to_f32() * xd[b], acc)
    };
    let mut wide = [0f32; GROUP];
    for g in 0..shape.wide {
        for (j, a) in wide.iter_mut().enumerate() {
            *a = term(g * GROUP + j, *a);
        }
    }
    let mut acc: [f32; HALF] = std::array::from_fn(|j| wide[j] + wide[j + HALF]);
    if shape.half {
        for (j, a) in acc.iter_mut().enumerate() {
            *a = term(shape.wide * GROUP + j, *a);
        }
    }
    tail(qs, d, xq, r, lanes_sum(acc))
}
