//! x's side of the product: activations quantized per block ([`XQ`]), laid out as the weights,
//! and the exact dots of the blocks past a row's groups, which every kernel adds the same way.

use super::format::Q32;
use super::packing::Shape;

/// Activations quantized per block with f32 scales (the weights' are f16; an f32 one costs
/// nothing here and keeps the activations' rounding at int8's alone), laid out as the weights
/// (signed), with each block's `128 * sum(q)`.
pub(super) struct XQ {
    pub(super) qs: Vec<Q32>,
    pub(super) d: Vec<f32>,
    pub(super) offset: Vec<i32>,
    pub(super) nb: usize,
    pub(super) shape: Shape,
}

/// The exact dot product of a stored (`q + 128`) weight block with an activation block, laid
/// out alike.
#[inline(always)]
pub(super) fn block_dot(w: &Q32, x: &Q32) -> i32 {
    w.0.iter().zip(&x.0).map(|(&a, &b)| (a as u8 as i32 - 128) * b as i32).sum()
}

/// The tail blocks (after the groups) added to `s` in order.
#[inline(always)]
pub(super) fn tail(qs: &[Q32], d: &[u16], xq: &XQ, r: usize, mut s: f32) -> f32 {
    let nb = xq.nb;
    for b in xq.shape.tail..nb {
        let at = r * nb + b;
        let scale = half::f16::from_bits(d[b]).to_f32() * xq.d[at];
        s = (block_dot(&qs[b], &xq.qs[at]) as f32).mul_add(scale, s);
    }
    s
}
