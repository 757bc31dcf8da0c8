//! CPU kernels for every product on the host, shaped first for decoding.
//!
//! Decoding multiplies a handful of rows (batch x 1 token) by every weight matrix: the time goes
//! to streaming the weights from memory, once per step. A general GEMM tiles for reuse and leaves
//! bandwidth on the table at m <= 16; these kernels instead stream each weight row once and use
//! it for all m input rows while it is in cache, one contiguous range of outputs per thread
//! ([`split`]). Every output element is one FMA chain over all of k in order, so a row's numbers
//! depend neither on its batch nor on the thread count.
//!
//! | file | holds |
//! |---|---|
//! | [`elem`] | the weight element types (f32, bf16 and f16 bits) and their conversion to f32 |
//! | [`isa`] | the one instruction-set dispatch (AVX2 / AVX-512 / VNNI), detected once |
//! | [`panels`] | the production product: weights in panels of 32 columns ([`matmul_panels`]) |
//! | [`reference`] | the row-major product ([`matmul_reference`]): what the panels are tested against |
//! | [`dots`] | the tied lm_head: `h . w^T` by rows ([`rows_dot`]) |
//! | [`attention`], [`gelu`] | one head attending over its cache; GPT-2's tanh GELU |
//! | [`probe`] | this machine's limits: read bandwidth (several patterns, the best kept) and FMA peak |
//! | `x86/` | the SIMD micro-kernels by family and width |
//!
//! q8_0 has its own folder ([`crate::quant`]) and takes its instruction set from [`isa`] too.

pub mod attention;
pub mod dots;
pub mod elem;
pub mod gelu;
pub mod isa;
pub mod panels;
pub mod probe;
pub mod reference;
mod split;
#[cfg(target_arch = "x86_64")]
mod x86;

pub use attention::{attend_heads, attend_one};
pub use dots::rows_dot;
pub use elem::{bf16_bits, f16_bits, Bf16Bits, Elem, F16Bits};
pub use gelu::gelu_tanh;
pub use isa::{isa, Isa};
pub use panels::{matmul_panels, pack_panels, unpack_panels, PANEL};
pub use probe::{fma_peak, int8_dot_peak, read_bandwidth, stream_sum, Bandwidth, Pattern};
pub use reference::matmul_reference;
pub use split::add_bias;

/// Deterministic values in [-1, 1) for the tests of the kernels and the formats built on them.
#[cfg(test)]
pub(crate) fn test_data(len: usize, seed: u32) -> Vec<f32> {
    (0..len).map(|i| (((i as u32).wrapping_mul(2654435761) ^ seed) % 1000) as f32 / 500.0 - 1.0).collect()
}

#[cfg(test)]
mod tests;
