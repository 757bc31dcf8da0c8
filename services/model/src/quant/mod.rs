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
//!
//! | file | holds |
//! |---|---|
//! | [`format`] | the blocks ([`Q8Blocks`]), quantization, GGUF's bytes |
//! | [`packing`] | the 16-block-group layout ([`Q8Rows`]) and the tiles' shape |
//! | `activations` | x quantized per block, and the tail blocks' exact dots |
//! | [`product`] | [`matmul_t`]: x's quantization, kernel choice, threads, the portable kernel |
//! | `x86` | the VNNI and AVX2 kernels |

mod activations;
pub mod format;
pub mod packing;
pub mod product;
#[cfg(target_arch = "x86_64")]
mod x86;

pub use format::{Q8Blocks, Q32, QK8_0};
pub use packing::Q8Rows;
pub use product::matmul_t;

#[cfg(test)]
mod tests;
