//! The x86-64 micro-kernels, one file per family: [`blocked`] (the register-blocked products,
//! 256- and 512-bit, row-major and panel-packed), [`f16c`] (IEEE-half weights at one row),
//! [`dots256`] and [`dots512`] (the tied lm_head's row dots). Every function here is `unsafe`
//! and compiled for the features it names; the portable callers in [`super`] pick one from
//! [`super::isa`] and keep the same sums in the same order, so every path gives the same bits.

// The micro-kernels index their register arrays in explicit, fully unrolled loops.
#![allow(clippy::needless_range_loop)]

pub(super) mod blocked;
pub(super) mod dots256;
pub(super) mod dots512;
pub(super) mod f16c;

use super::Elem;
use std::arch::x86_64::*;

/// 8 weights from `p` as f32 (f32, bf16 or f16 bits, by size and [`Elem::IS_F16`]).
#[inline(always)]
pub(super) unsafe fn load8<E: Elem>(p: *const E) -> __m256 {
    if std::mem::size_of::<E>() == 4 {
        _mm256_loadu_ps(p.cast())
    } else if E::IS_F16 {
        _mm256_cvtph_ps(_mm_loadu_si128(p.cast()))
    } else {
        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(_mm_loadu_si128(p.cast()))))
    }
}

/// 16 weights from `p` as f32.
#[inline(always)]
pub(super) unsafe fn load16<E: Elem>(p: *const E) -> __m512 {
    if std::mem::size_of::<E>() == 4 {
        _mm512_loadu_ps(p.cast())
    } else if E::IS_F16 {
        _mm512_cvtph_ps(_mm256_loadu_si256(p.cast()))
    } else {
        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(_mm256_loadu_si256(p.cast()))))
    }
}
