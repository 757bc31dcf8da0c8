//! The layout the product computes on ([`Q8Rows`]): each row's blocks in groups of 16, their
//! bytes interleaved so that one 512-bit instruction advances 16 blocks' dot products at once.

use rayon::prelude::*;

use super::format::{Q8Blocks, Q32, QK8_0};

/// Blocks one 512-bit vector advances at once: each of its 16 lanes holds 4 bytes of one block,
/// so a group's 8 vectors give every lane its block's whole dot product (`vpdpbusd`, 4 bytes per
/// lane), with no horizontal sums, and the scales, offsets and f32 sums of 16 blocks take one
/// instruction each.
pub(super) const GROUP: usize = 16;
/// The 8-block group a row ends with when 8 to 15 blocks remain after its 16-block groups (XL's
/// 6400-wide rows: 12 groups of 16 and one of 8), in 256-bit vectors.
pub(super) const HALF: usize = 8;

/// How a row of `nb` blocks is laid out: `wide` groups of [`GROUP`] blocks, then (`half`) one
/// group of [`HALF`], then plain blocks from `tail` on (fewer than 8: XL's 1600-wide rows end
/// with 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Shape {
    pub(super) wide: usize,
    pub(super) half: bool,
    pub(super) tail: usize,
}

impl Shape {
    pub(super) fn of(nb: usize) -> Self {
        let (wide, half) = (nb / GROUP, nb % GROUP >= HALF);
        Self { wide, half, tail: wide * GROUP + if half { HALF } else { 0 } }
    }

    /// Where byte `e` of block `b` sits in the row's bytes: in a group of `n` blocks, vector
    /// `e / 4` (`4n` bytes) holds bytes `4(e/4)..4(e/4) + 4` of each block, block j's at `4j`.
    #[inline(always)]
    pub(super) fn pos(self, b: usize, e: usize) -> usize {
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
pub(super) fn byte(row: &[Q32], p: usize) -> i8 {
    row[p / QK8_0].0[p % QK8_0]
}

/// Writes block `b`'s bytes `q` (xor-ed with `flip`) where [`Shape::pos`] puts them in `row`, 4
/// bytes at a time (a 4-byte run never leaves its 32-byte vector).
#[inline(always)]
pub(super) fn place(row: &mut [Q32], shape: Shape, b: usize, q: &Q32, flip: u8) {
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
    pub(super) qs: Vec<Q32>,
    pub(super) d: Vec<u16>,
    pub(super) row_blocks: usize,
}

impl Q8Rows {
    /// Packs `b`, rows of `row_blocks` blocks.
    pub fn pack(mut b: Q8Blocks, row_blocks: usize) -> Self {
        assert!(row_blocks > 0 && b.len().is_multiple_of(row_blocks), "whole rows of blocks");
        let shape = Shape::of(row_blocks);
        b.qs.par_chunks_mut(row_blocks).for_each_init(|| vec![Q32::default(); row_blocks], |out, row| pack_row(row, shape, 0x80, out));
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

/// Tiles (`Kernel::tile`): a pass over the weights takes [`TILE_GROUPS`] 16-block groups
/// (2048 weights) of each of [`TILE_ROWS`] rows in turn, so that the slice of x they meet (2 KB
/// a row) stays in L1; from rows of [`TILE_FROM_BLOCKS`] blocks up, where x (k bytes a row) no
/// longer does (6 rows at k = 6400: 38 KB, against a 32 KB L1), and each of the ~50 lines of x a
/// group reads missed L1 while the weights streamed in from memory. XL's `[6400 -> 1600]` x 12
/// from memory, interleaved runs, G weights/s: m = 2: 20.3-21.9 against 16.4-17.0; m = 6:
/// 15.1-16.5 against 12.1-13.3; m = 16: 8.7-9.1 against 6.7; 8 and 32 rows a tile the same,
/// 2 groups (13.1-14.3) or 8 (12.1-15.1) less. Not at m = 1 (18.5-20.5 against 20.9-25.5: the
/// hardware prefetcher follows one row better) nor at k = 1600 (x fits; 10-14 against 16.6-16.8).
pub(super) const TILE_ROWS: usize = 16;
pub(super) const TILE_GROUPS: usize = 4;
pub(super) const TILE_FROM_BLOCKS: usize = 128;
