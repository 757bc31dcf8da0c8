//! Tensors on the wire: a `TensorHeader` (dtype, shape, hook point, total bytes), then the raw
//! little-endian bytes in `TensorChunk`s of at most [`MAX_CHUNK_BYTES`], so no message nears
//! gRPC's 4 MiB default whatever the tensor size.

use crate::v1::{Dtype, HookPoint, TensorChunk, TensorHeader};

pub const MAX_CHUNK_BYTES: usize = 1 << 20;

/// A tensor that does not add up.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum WireError {
    #[error("unsupported dtype {0}")]
    Dtype(i32),
    #[error("shape {shape:?} of {dtype:?} needs {want} bytes, header says {got}")]
    HeaderBytes { shape: Vec<u64>, dtype: Dtype, want: u64, got: u64 },
    #[error("chunk at offset {got}, expected {want}")]
    Offset { want: u64, got: u64 },
    #[error("chunk of {0} bytes exceeds the 1 MiB limit")]
    ChunkTooLarge(usize),
    #[error("chunks carry more than the declared {0} bytes")]
    Overflow(u64),
    #[error("chunks carry {got} of the declared {want} bytes")]
    Incomplete { want: u64, got: u64 },
    #[error("{bytes} bytes declared; at most {limit} per tensor")]
    TooLarge { bytes: u64, limit: u64 },
}

pub fn dtype_size(dtype: Dtype) -> Option<usize> {
    match dtype {
        Dtype::F32 => Some(4),
        Dtype::F16 | Dtype::Bf16 => Some(2),
        Dtype::Unspecified | Dtype::Q80 => None,
    }
}

/// Header and chunks of an f32 tensor.
pub fn encode_f32(values: &[f32], shape: &[usize], point: Option<HookPoint>, prompt_index: u32) -> (TensorHeader, Vec<TensorChunk>) {
    encode(Dtype::F32, values, shape, point, prompt_index)
}

/// Header and chunks of f32 values sent as `dtype`.
pub fn encode(dtype: Dtype, values: &[f32], shape: &[usize], point: Option<HookPoint>, prompt_index: u32) -> (TensorHeader, Vec<TensorChunk>) {
    let bytes: Vec<u8> = match dtype {
        Dtype::F16 => values.iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect(),
        Dtype::Bf16 => values.iter().flat_map(|v| half::bf16::from_f32(*v).to_le_bytes()).collect(),
        _ => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
    };
    let dtype = if dtype == Dtype::Unspecified { Dtype::F32 } else { dtype };
    encode_bytes(dtype, bytes, shape, point, prompt_index)
}

/// Header and chunks of raw little-endian bytes.
pub fn encode_bytes(dtype: Dtype, bytes: Vec<u8>, shape: &[usize], point: Option<HookPoint>, prompt_index: u32) -> (TensorHeader, Vec<TensorChunk>) {
    let header = TensorHeader {
        dtype: dtype as i32,
        shape: shape.iter().map(|&s| s as u64).collect(),
        point,
        total_bytes: bytes.len() as u64,
        prompt_index,
        ..Default::default()
    };
    let chunks =
        bytes.chunks(MAX_CHUNK_BYTES).enumerate().map(|(i, c)| TensorChunk { offset: (i * MAX_CHUNK_BYTES) as u64, data: c.to_vec() }).collect();
    (header, chunks)
}

/// Collects the chunks of one tensor and checks that they add up to its header.
#[derive(Debug, Clone)]
pub struct TensorAssembler {
    pub header: TensorHeader,
    dtype: Dtype,
    bytes: Vec<u8>,
}

impl TensorAssembler {
    /// Checks the header against itself and against `max_bytes` before reserving anything.
    pub fn new(header: TensorHeader, max_bytes: u64) -> Result<Self, WireError> {
        let (dtype, want) = Self::check(&header, max_bytes)?;
        Ok(Self { bytes: Vec::with_capacity(want as usize), dtype, header })
    }

    /// The header's dtype and byte count, checked against its shape and `max_bytes`; nothing
    /// is reserved (a caller may charge a budget before [`TensorAssembler::new`] allocates).
    pub fn check(header: &TensorHeader, max_bytes: u64) -> Result<(Dtype, u64), WireError> {
        let dtype = Dtype::try_from(header.dtype).map_err(|_| WireError::Dtype(header.dtype))?;
        let size = dtype_size(dtype).ok_or(WireError::Dtype(header.dtype))? as u64;
        let want = header.shape.iter().try_fold(size, |a, &s| a.checked_mul(s)).unwrap_or(u64::MAX);
        if want != header.total_bytes {
            return Err(WireError::HeaderBytes { shape: header.shape.clone(), dtype, want, got: header.total_bytes });
        }
        if want > max_bytes {
            return Err(WireError::TooLarge { bytes: want, limit: max_bytes });
        }
        Ok((dtype, want))
    }

    /// Bytes held while a tensor of this header is read and widened to f32 (its wire bytes,
    /// then as many f32 values): what a worker's memory budget charges for it.
    pub fn held_bytes(dtype: Dtype, wire_bytes: u64) -> u64 {
        let size = dtype_size(dtype).unwrap_or(4) as u64;
        wire_bytes + wire_bytes / size * 4
    }

    pub fn push(&mut self, chunk: &TensorChunk) -> Result<(), WireError> {
        if chunk.data.len() > MAX_CHUNK_BYTES {
            return Err(WireError::ChunkTooLarge(chunk.data.len()));
        }
        if chunk.offset != self.bytes.len() as u64 {
            return Err(WireError::Offset { want: self.bytes.len() as u64, got: chunk.offset });
        }
        if self.bytes.len() as u64 + chunk.data.len() as u64 > self.header.total_bytes {
            return Err(WireError::Overflow(self.header.total_bytes));
        }
        self.bytes.extend_from_slice(&chunk.data);
        Ok(())
    }

    pub fn is_complete(&self) -> bool {
        self.bytes.len() as u64 == self.header.total_bytes
    }

    /// The values as f32 (converted from f16/bf16 when needed).
    pub fn finish_f32(self) -> Result<(TensorHeader, Dtype, Vec<f32>), WireError> {
        if !self.is_complete() {
            return Err(WireError::Incomplete { want: self.header.total_bytes, got: self.bytes.len() as u64 });
        }
        let values = decode_f32(self.dtype, &self.bytes);
        Ok((self.header, self.dtype, values))
    }

    /// A tensor whose bytes arrived in one piece (`InlineTensor`): the same checks as chunks.
    pub fn whole(header: TensorHeader, data: &[u8], max_bytes: u64) -> Result<(TensorHeader, Dtype, Vec<f32>), WireError> {
        let mut a = Self::new(header, max_bytes)?;
        if data.len() as u64 > a.header.total_bytes {
            return Err(WireError::Overflow(a.header.total_bytes));
        }
        a.bytes.extend_from_slice(data);
        a.finish_f32()
    }
}

/// Little-endian `dtype` values as f32.
fn decode_f32(dtype: Dtype, bytes: &[u8]) -> Vec<f32> {
    match dtype {
        Dtype::F16 => bytes.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        Dtype::Bf16 => bytes.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        Dtype::F32 | Dtype::Unspecified => bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
        Dtype::Q80 => Vec::new(), // weights only: a header with it is refused (no wire size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_in_1mib_chunks() {
        let values: Vec<f32> = (0..600_000).map(|i| i as f32 * 0.5).collect(); // 2.4 MB
        let (h, chunks) = encode_f32(&values, &[375, 1600], None, 0);
        assert_eq!(chunks.len(), 3);
        assert!(chunks.iter().all(|c| c.data.len() <= MAX_CHUNK_BYTES));
        let mut a = TensorAssembler::new(h, u64::MAX).unwrap();
        for c in &chunks {
            a.push(c).unwrap();
        }
        let (_, _, got) = a.finish_f32().unwrap();
        assert_eq!(got, values);
    }

    #[test]
    fn inline_tensors_pass_the_same_checks() {
        let values = [1.5f32, -2.0, 3.25, 0.0];
        let (h, chunks) = encode(Dtype::Bf16, &values, &[2, 2], None, 0);
        let (_, dtype, got) = TensorAssembler::whole(h.clone(), &chunks[0].data, u64::MAX).unwrap();
        assert_eq!((dtype, got), (Dtype::Bf16, values.to_vec()));
        assert!(matches!(TensorAssembler::whole(h.clone(), &chunks[0].data[..6], u64::MAX), Err(WireError::Incomplete { .. })));
        assert!(matches!(TensorAssembler::whole(h, &[0u8; 10], u64::MAX), Err(WireError::Overflow(_))));
    }

    #[test]
    fn chunks_that_do_not_add_up_are_errors() {
        let (h, chunks) = encode_f32(&[1.0; 10], &[2, 5], None, 0);
        let mut bad = h.clone();
        bad.shape = vec![3, 5];
        assert!(matches!(TensorAssembler::new(bad, u64::MAX), Err(WireError::HeaderBytes { .. })));
        assert!(matches!(TensorAssembler::new(h.clone(), 39), Err(WireError::TooLarge { bytes: 40, limit: 39 })));
        let mut huge = h.clone();
        huge.shape = vec![67_108_864, 64];
        huge.total_bytes = 67_108_864 * 64 * 4;
        assert!(matches!(TensorAssembler::new(huge, 1 << 20), Err(WireError::TooLarge { .. })), "refused before reserving");
        let mut a = TensorAssembler::new(h.clone(), u64::MAX).unwrap();
        let mut c = chunks[0].clone();
        c.offset = 4;
        assert!(matches!(a.push(&c), Err(WireError::Offset { .. })));
        let mut a = TensorAssembler::new(h.clone(), u64::MAX).unwrap();
        let mut c = chunks[0].clone();
        c.data.truncate(20);
        a.push(&c).unwrap();
        assert!(matches!(a.finish_f32(), Err(WireError::Incomplete { .. })));
        let mut a = TensorAssembler::new(h, u64::MAX).unwrap();
        let mut c = chunks[0].clone();
        c.data.extend([0u8; 4]);
        assert!(matches!(a.push(&c), Err(WireError::Overflow(_))));
    }
}
