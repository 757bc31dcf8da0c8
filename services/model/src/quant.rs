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
//! in f32. The layout is ours ([`Q8Rows`]): groups of 16 blocks interleaved so that one 512-bit
//! instruction advances 16 blocks' dot products at once, one per lane, with AVX512-VNNI's
//! `vpdpbusd` where the CPU has it (AVX2's `maddubs` + `madd` on the two 256-bit halves
//! otherwise, the same sums); a row's last 8 to 15 blocks past its 16-block groups take one
//! 8-block group, the rest (fewer than 8) stay plain. Each weight group is loaded once for up to
//! 8 rows of x held in registers; output rows are split over threads.
//!
//! Against candle 0.11's `QMatMul` (its CPU path is ggml's `vec_dot_q8_0_q8_0`, one block at a
//! time) on the same q8_0 weights, XL's MLP matrices x 12 (beyond the caches), 2 cores, three
//! runs: 20.0-24.6 against 17.3-19.9 G weights/s at m = 1 (1.11-1.24x), 10.8-11.5 against 4.4-4.7
//! at m = 6 (2.30-2.47x) (`cargo run --release -p steer-model --example dtypes -- --qmatmul`);
//! with the 16-block groups and tiles (2026-12-01), two runs: 23.9-25.9 against 19.9-20.3 at
//! m = 1 (1.18-1.30x), 17.0-17.1 against 4.5-4.7 at m = 6 (3.61-3.80x). Kept: this one.

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

/// Blocks one 512-bit vector advances at once: each of its 16 lanes holds 4 bytes of one block,
/// so a group's 8 vectors give every lane its block's whole dot product (`vpdpbusd`, 4 bytes per
/// lane), with no horizontal sums, and the scales, offsets and f32 sums of 16 blocks take one
/// instruction each.
const GROUP: usize = 16;
/// The 8-block group a row ends with when 8 to 15 blocks remain after its 16-block groups (XL's
/// 6400-wide rows: 12 groups of 16 and one of 8), in 256-bit vectors.
const HALF: usize = 8;

/// How a row of `nb` blocks is laid out: `wide` groups of [`GROUP`] blocks, then (`half`) one
/// group of [`HALF`], then plain blocks from `tail` on (fewer than 8: XL's 1600-wide rows end
/// with 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Shape {
    wide: usize,
    half: bool,
    tail: usize,
}

impl Shape {
    fn of(nb: usize) -> Self {
        let (wide, half) = (nb / GROUP, nb % GROUP >= HALF);
        Self { wide, half, tail: wide * GROUP + if half { HALF } else { 0 } }
    }

    /// Where byte `e` of block `b` sits in the row's bytes: in a group of `n` blocks, vector
    /// `e / 4` (`4n` bytes) holds bytes `4(e/4)..4(e/4) + 4` of each block, block j's at `4j`.
    #[inline(always)]
    fn pos(self, b: usize, e: usize) -> usize {
        let (base, n) = if b < self.wide * GROUP {
            (b / GROUP * GROUP, GROUP)
        } else if b < self.tail {
            (self.wide * GROUP, HALF)
        } else {
            return b * QK8_0 + e;
        };
        base * QK8_0 + (e / 4) * 4 * n + (b - base) * 4 + e % 4
    }
}

/// Byte `p` of a row of blocks.
#[inline(always)]
fn byte(row: &[Q32], p: usize) -> i8 {
    row[p / QK8_0].0[p % QK8_0]
}

/// Writes block `b`'s bytes `q` (xor-ed with `flip`) where [`Shape::pos`] puts them in `row`, 4
/// bytes at a time (a 4-byte run never leaves its 32-byte vector).
#[inline(always)]
fn place(row: &mut [Q32], shape: Shape, b: usize, q: &Q32, flip: u8) {
    let flip = u32::from_ne_bytes([flip; 4]);
    for e in (0..QK8_0).step_by(4) {
        let p = shape.pos(b, e);
        let word = u32::from_ne_bytes(std::array::from_fn(|i| q.0[e + i] as u8)) ^ flip;
        row[p / QK8_0].0[p % QK8_0..][..4].copy_from_slice(&word.to_ne_bytes().map(|v| v as i8));
    }
}

/// Lays out one row's blocks as [`Shape::pos`] says, xor-ing every byte with `flip`; `out` is
/// scratch of the row's length.
fn pack_row(row: &mut [Q32], shape: Shape, flip: u8, out: &mut [Q32]) {
    for (b, q) in row.iter().enumerate() {
        place(out, shape, b, q, flip);
    }
    row.copy_from_slice(out);
}

/// A q8_0 matrix `[n, k]` as the product reads it: the same blocks and bytes as [`Q8Blocks`]
/// (34 per 32 weights), each row's blocks laid out in groups ([`Shape`]) and every quant stored
/// unsigned as `q + 128`, the operand `vpdpbusd` multiplies unsigned (the signed activations'
/// `128 * sum(x)` per block, computed once per product, takes the offset back out). Packed in
/// place at load.
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
        let shape = Shape::of(row_blocks);
        b.qs.par_chunks_mut(row_blocks)
            .for_each_init(|| vec![Q32::default(); row_blocks], |out, row| pack_row(row, shape, 0x80, out));
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
        let shape = Shape::of(nb);
        for (b, &d) in d.iter().enumerate() {
            let d = half::f16::from_bits(d).to_f32();
            out.extend((0..QK8_0).map(|e| ((byte(qs, shape.pos(b, e)) as u8 ^ 0x80) as i8) as f32 * d));
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
/// nothing here and keeps the activations' rounding at int8's alone), laid out as the weights
/// (signed), with each block's `128 * sum(q)`.
struct XQ {
    qs: Vec<Q32>,
    d: Vec<f32>,
    offset: Vec<i32>,
    nb: usize,
    shape: Shape,
}

fn quantize_x(x: &[f32], nb: usize) -> XQ {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the feature was just detected on this CPU.
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
    let most = kernel.max_rows();
    let tiled = kernel.tiles(nb, m.min(most));
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
            let mut r = 0;
            while r < m {
                let g = (m - r).min(most);
                kernel.tile(qs, d, &xq, r, &mut out[..rows * g]);
                for o in 0..rows {
                    put(r, o0 + o, &out[o * g..(o + 1) * g]);
                }
                r += g;
            }
            return;
        }
        for o in o0..o0 + rows {
            let (qs, d) = (&w.qs[o * nb..(o + 1) * nb], &w.d[o * nb..(o + 1) * nb]);
            let mut r = 0;
            while r < m {
                let g = (m - r).min(most);
                kernel.rows(qs, d, &xq, r, &mut out[..g]);
                put(r, o, &out[..g]);
                r += g;
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

    /// Rows of x that share each pass over a weight row, each with its sums in registers:
    /// AVX-512 has 32 registers, AVX2 16 (two 8-lane sums and two dots per row).
    fn max_rows(self) -> usize {
        match self {
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => X_ROWS / 2,
            _ => X_ROWS,
        }
    }

    /// Whether rows of `nb` blocks against `g` rows of x at a time go through [`Kernel::tile`]:
    /// with VNNI, from 2 rows of x and rows of 128 blocks (k = 4096) up.
    fn tiles(self, nb: usize, g: usize) -> bool {
        #[cfg(target_arch = "x86_64")]
        if self == Kernel::Vnni {
            return g >= 2 && nb >= TILE_FROM_BLOCKS;
        }
        let _ = (nb, g);
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
            // SAFETY: `detect` found the features on this CPU.
            return unsafe { fixed!(1 2 3 4 5 6 7 8) };
        }
        let _ = (qs, d, xq, r0, out);
        unreachable!("only VNNI tiles")
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

/// Rows of x that share each pass over a weight row (at most).
const X_ROWS: usize = 8;

/// Tiles ([`Kernel::tile`]): a pass over the weights takes [`TILE_GROUPS`] 16-block groups
/// (2048 weights) of each of [`TILE_ROWS`] rows in turn, so that the slice of x they meet (2 KB
/// a row) stays in L1; from rows of [`TILE_FROM_BLOCKS`] blocks up, where x (k bytes a row) no
/// longer does (6 rows at k = 6400: 38 KB, against a 32 KB L1), and each of the ~50 lines of x a
/// group reads missed L1 while the weights streamed in from memory. XL's `[6400 -> 1600]` x 12
/// from memory, interleaved runs, G weights/s: m = 2: 20.3-21.9 against 16.4-17.0; m = 6:
/// 15.1-16.5 against 12.1-13.3; m = 16: 8.7-9.1 against 6.7; 8 and 32 rows a tile the same,
/// 2 groups (13.1-14.3) or 8 (12.1-15.1) less. Not at m = 1 (18.5-20.5 against 20.9-25.5: the
/// hardware prefetcher follows one row better) nor at k = 1600 (x fits; 10-14 against 16.6-16.8).
const TILE_ROWS: usize = 16;
const TILE_GROUPS: usize = 4;
const TILE_FROM_BLOCKS: usize = 128;

/// The exact dot product of a stored (`q + 128`) weight block with an activation block, laid
/// out alike.
#[inline(always)]
fn block_dot(w: &Q32, x: &Q32) -> i32 {
    w.0.iter().zip(&x.0).map(|(&a, &b)| (a as u8 as i32 - 128) * b as i32).sum()
}

/// The sum of the 8 lanes, in the tree the AVX2 `hsum` uses.
#[inline(always)]
fn lanes_sum(a: [f32; HALF]) -> f32 {
    ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]))
}

/// The tail blocks (after the groups) added to `s` in order.
#[inline(always)]
fn tail(qs: &[Q32], d: &[u16], xq: &XQ, r: usize, mut s: f32) -> f32 {
    let nb = xq.nb;
    for b in xq.shape.tail..nb {
        let at = r * nb + b;
        let scale = half::f16::from_bits(d[b]).to_f32() * xq.d[at];
        s = (block_dot(&qs[b], &xq.qs[at]) as f32).mul_add(scale, s);
    }
    s
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

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{tail, Q32, GROUP, HALF, QK8_0, TILE_GROUPS, TILE_ROWS, XQ};
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
    unsafe fn wide_vnni<const G: usize>(wp: *const Q32, dp: *const u16, xq: &XQ, x0: usize, groups: std::ops::Range<usize>, ahead: usize, wide: &mut [__m512; G]) {
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
        if shape.half {
            let b0 = shape.wide * GROUP;
            let dot = dot8_avx2::<G>(wp.add(b0), xp.add(x0 + b0), nb, 1);
            scale8(&mut acc, dot, d.as_ptr().add(b0), xq, x0 + b0);
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
    fn the_avx2_block_quantizer_gives_the_portable_bits() {
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            let mut blocks: Vec<Vec<f32>> = data(32 * 200, 7).chunks(32).map(|b| b.iter().map(|v| v * 100.0).collect()).collect();
            // ties at every half step (127 * k / 2 scaled), zeros, one value, NaN and infinities
            blocks.push((0..32).map(|i| (i as f32 - 16.0) * 0.5 * 127.0 / 16.0 * 2.0).collect());
            blocks.push((0..32).map(|i| if i == 31 { 127.0 } else { i as f32 - 15.5 }).collect());
            blocks.push(vec![0.0; 32]);
            blocks.push((0..32).map(|i| if i == 3 { -2.5 } else { 0.0 }).collect());
            blocks.push((0..32).map(|i| if i == 5 { f32::NAN } else { i as f32 }).collect());
            blocks.push((0..32).map(|i| if i == 5 { f32::INFINITY } else { -(i as f32) }).collect());
            blocks.push((0..32).map(|i| if i % 2 == 0 { f32::NEG_INFINITY } else { 1.0 }).collect());
            for b in &blocks {
                let (d, q) = quantize_block(b);
                // SAFETY: detected above.
                let (d2, q2) = unsafe { x86::quantize_block_avx2(b) };
                assert_eq!((d.to_bits(), q), (d2.to_bits(), q2), "{b:?}");
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
        for &(n, k) in &[(3usize, 32usize), (2, 256), (4, 320), (1, 1600), (2, 800), (1, 6400)] {
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
        // k: tail blocks only, an 8-block group alone or with a tail, 16-block groups alone, with
        // a tail (XL's 1600), with an 8-block group (XL's 6400) and with both, and tiled (k from
        // 4096, m from 2: whole tiles and a partial one, group counts that are and are not a
        // multiple of the tile's); m: every fixed-size kernel, and more rows than one pass takes.
        let shapes = [(1usize, 32usize, 5usize), (3, 64, 130), (5, 256, 31), (6, 320, 77), (7, 32, 9), (8, 512, 20), (9, 96, 200), (16, 288, 40), (4, 800, 19), (2, 1600, 7), (8, 768, 5), (11, 6400, 3), (6, 4096, 37), (3, 5120, 21)];
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
