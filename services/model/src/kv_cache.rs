//! The KV cache of one batch, as an explicit object passed to `forward` (as candle's llama.rs does):
//! the model itself holds no per-sequence state, so any number of batches can share one model.

use candle_core::Tensor;

use crate::error::Result;

/// Keys and values of one layer, `[B, H, S, hd]`, preallocated and filled in place.
#[derive(Debug, Clone)]
pub struct LayerKv {
    inner: candle_nn::kv_cache::KvCache,
}

impl LayerKv {
    /// Appends this step's keys/values and returns all of them so far.
    pub fn append(&mut self, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        Ok(self.inner.append(k, v)?)
    }
}

/// Per-layer caches for one batch of rows.
#[derive(Debug, Clone)]
pub struct KvCache {
    layers: Vec<LayerKv>,
}

impl KvCache {
    /// `capacity`: positions to preallocate (prompt + new tokens); it grows if exceeded.
    pub fn new(n_layer: usize, capacity: usize) -> Self {
        let layers = (0..n_layer)
            .map(|_| LayerKv {
                inner: candle_nn::kv_cache::KvCache::new(2, capacity.max(1)),
            })
            .collect();
        Self { layers }
    }

    /// Positions cached so far.
    pub fn len(&self) -> usize {
        self.layers.first().map_or(0, |l| l.inner.current_seq_len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A cache whose row b is row `rows[b]` of this one (rows that share a prefill fan out).
    pub fn select_rows(&self, rows: &[u32], capacity: usize) -> Result<Self> {
        let mut out = Self::new(self.layers.len(), capacity);
        for (src, dst) in self.layers.iter().zip(out.layers.iter_mut()) {
            if let (Some(k), Some(v)) = (src.inner.k()?, src.inner.v()?) {
                let idx = Tensor::from_slice(rows, rows.len(), k.device())?;
                dst.append(&k.contiguous()?.index_select(&idx, 0)?, &v.contiguous()?.index_select(&idx, 0)?)?;
            }
        }
        Ok(out)
    }

    pub fn layer(&mut self, i: usize) -> &mut LayerKv {
        &mut self.layers[i]
    }
}
