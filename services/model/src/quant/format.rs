//! The q8_0 format: blocks of 32 int8 weights with one f16 scale each, quantized bit for bit as
//! ggml does, and read from GGUF's interleaved bytes.

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
pub(super) fn quantize_block(b: &[f32]) -> (f32, Q32) {
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
        if !bytes.len().is_multiple_of(34) {
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
