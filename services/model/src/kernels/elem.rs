//! The element types of weight matrices, converted to f32 in registers as they are streamed.

/// An element of a weight matrix, converted to f32 in registers as it is streamed: the memory
/// traffic is the stored bytes, the arithmetic stays f32. Each conversion is a few integer and
/// float ops that the compiler vectorises inside the kernels' loops (a first version converted
/// 1024-column tiles into an L1 buffer instead; streaming from memory it reached half the rate
/// of this, on XL's matrices: 8 against 16+ G weights/s on 2 cores).
pub trait Elem: Copy + Send + Sync {
    /// IEEE half, which x86's F16C converts in one instruction (the `x86::f16c` kernels).
    const IS_F16: bool = false;
    fn to_f32(self) -> f32;
}

impl Elem for f32 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
}

/// bfloat16 bits: f32's high half, so conversion is a 16-bit shift.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(transparent)]
pub struct Bf16Bits(pub u16);

impl Elem for Bf16Bits {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f32::from_bits((self.0 as u32) << 16)
    }
}

/// IEEE half bits, finite (the loader refuses others). Exponent and mantissa move into f32's
/// fields by a shift and one multiply by 2^112 rebiases the exponent, which also turns f16's
/// subnormals into f32 normals exactly; then the sign. Five vector ops, no lookup, no F16C.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(transparent)]
pub struct F16Bits(pub u16);

impl Elem for F16Bits {
    const IS_F16: bool = true;
    #[inline(always)]
    fn to_f32(self) -> f32 {
        let h = self.0 as u32;
        let magnitude = f32::from_bits((h & 0x7fff) << 13) * f32::from_bits(0x7780_0000); // 2^112
        f32::from_bits(magnitude.to_bits() | ((h & 0x8000) << 16))
    }
}

/// 16-bit bits as bfloat16 elements.
pub fn bf16_bits(bits: &[u16]) -> &[Bf16Bits] {
    // SAFETY: Bf16Bits is repr(transparent) over u16: same size, alignment and validity.
    unsafe { std::slice::from_raw_parts(bits.as_ptr().cast(), bits.len()) }
}

/// 16-bit bits as IEEE-half elements.
pub fn f16_bits(bits: &[u16]) -> &[F16Bits] {
    // SAFETY: F16Bits is repr(transparent) over u16: same size, alignment and validity.
    unsafe { std::slice::from_raw_parts(bits.as_ptr().cast(), bits.len()) }
}
