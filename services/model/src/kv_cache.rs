//! KV caches, as explicit objects passed to the forward passes (as candle's llama.rs does): the
//! model itself holds no per-sequence state, so any number of sequences can share one model.
//!
//! - [`KvCache`]: one left-padded batch, `[B, H, S, hd]` per layer: the prefill's working cache.
//! - [`RowKv`]: one row's keys and values, on the host, growing one position per step. Decoding
//!   runs on these: each row of a step attends over its own cache only, so rows of any lengths
//!   and ages share a step, a row's result never depends on its neighbours (no padding, no
//!   shared reduction), and a finished row's memory is freed at once. See `gpt2::Input::Rows`.

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
        let layers = (0..n_layer).map(|_| LayerKv { inner: candle_nn::kv_cache::KvCache::new(2, capacity.max(1)) }).collect();
        Self { layers }
    }

    /// Positions cached so far.
    pub fn len(&self) -> usize {
        self.layers.first().map_or(0, |l| l.inner.current_seq_len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn layer(&mut self, i: usize) -> &mut LayerKv {
        &mut self.layers[i]
    }

    /// Fills an empty cache with `rows`' keys and values (one batch row each, every layer, the
    /// same positions), as if a prefill had computed them.
    pub fn preload(&mut self, rows: &[&RowKv], n_head: usize) -> Result<()> {
        debug_assert!(self.is_empty(), "preloading a cache in use");
        let Some(first) = rows.first() else { return Ok(()) };
        let (s, d) = (first.len, first.d);
        let dev = candle_core::Device::Cpu;
        for (l, layer) in self.layers.iter_mut().enumerate() {
            // [S, H * hd] per row -> [B, H, S, hd].
            let stack = |pick: &dyn Fn(&RowKv) -> &Vec<f32>| -> Result<Tensor> {
                let per_row = rows
                    .iter()
                    .map(|r| Ok(Tensor::from_slice(&pick(r)[..s * d], (s, n_head, d / n_head), &dev)?.transpose(0, 1)?))
                    .collect::<Result<Vec<_>>>()?;
                Ok(Tensor::stack(&per_row, 0)?.contiguous()?)
            };
            let (k, v) = (stack(&|r: &RowKv| &r.k[l])?, stack(&|r: &RowKv| &r.v[l])?);
            layer.append(&k, &v)?;
        }
        Ok(())
    }

    /// Row `row`'s cache as a [`RowKv`], without its first `skip` (left-padding) positions. The
    /// first `shared_layers` layers hold one row per group of rows (see
    /// `gpt2::Input::Batch`): there the row's group, `group`, is read.
    pub fn row(&self, row: usize, shared_layers: usize, group: usize, skip: usize) -> Result<RowKv> {
        let mut out = RowKv::default();
        for (l, layer) in self.layers.iter().enumerate() {
            let row = if l < shared_layers { group } else { row };
            let (Some(k), Some(v)) = (layer.inner.k()?, layer.inner.v()?) else {
                // A layer the forward never reached (it stopped early, or started later).
                out.k.push(vec![]);
                out.v.push(vec![]);
                continue;
            };
            let (_, h, s, hd) = k.dims4()?;
            // [H, S, hd] -> [S, H * hd]: position-major, heads side by side.
            let take = |t: &Tensor| -> Result<Vec<f32>> {
                Ok(t.get(row)?
                    .narrow(1, skip, s - skip)?
                    .transpose(0, 1)?
                    .contiguous()?
                    .to_dtype(candle_core::DType::F32)?
                    .flatten_all()?
                    .to_vec1()?)
            };
            out.k.push(take(&k)?);
            out.v.push(take(&v)?);
            (out.len, out.d) = (s - skip, h * hd);
        }
        Ok(out)
    }
}

/// One row's keys and values, layer by layer, on the host in f32: `k[l][s * d..(s + 1) * d]`
/// holds position s of layer l, heads side by side (as `c_attn` writes them).
#[derive(Debug, Clone, Default)]
pub struct RowKv {
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    len: usize,
    d: usize,
}

impl RowKv {
    /// Positions cached.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Layers held.
    pub fn n_layer(&self) -> usize {
        self.k.len()
    }

    /// A copy holding exactly its positions (no spare capacity).
    pub(crate) fn compact(&self) -> Self {
        Self { k: self.k.iter().map(|l| l.to_vec()).collect(), v: self.v.iter().map(|l| l.to_vec()).collect(), len: self.len, d: self.d }
    }

    /// The first `n` positions.
    pub(crate) fn first(&self, n: usize) -> Self {
        let n = n.min(self.len);
        let take = |ls: &[Vec<f32>]| ls.iter().map(|v| v[..n * self.d].to_vec()).collect();
        Self { k: take(&self.k), v: take(&self.v), len: n, d: self.d }
    }

    /// A copy of the first `n` layers (exactly their positions); the layers above are empty.
    pub(crate) fn layers_below(&self, n: usize) -> Self {
        let take = |ls: &[Vec<f32>]| ls.iter().enumerate().map(|(l, v)| if l < n { v.to_vec() } else { vec![] }).collect();
        Self { k: take(&self.k), v: take(&self.v), len: self.len, d: self.d }
    }

    /// `above` with its first `n` layers taken from `below`, whose first `above.len()`
    /// positions are the same positions.
    pub(crate) fn splice(below: &RowKv, n: usize, mut above: RowKv) -> Self {
        debug_assert!(below.len >= above.len, "below covers above's positions");
        let at = above.len * above.d;
        for l in 0..n.min(above.k.len()) {
            above.k[l] = below.k[l][..at].to_vec();
            above.v[l] = below.v[l][..at].to_vec();
        }
        above
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.k.iter().chain(&self.v).map(|l| l.capacity() * 4).sum()
    }

    /// Appends one position's key and value at `layer` (the last layer's push completes it).
    /// The row must come from a prefill ([`KvCache::row`]), which sized it.
    pub(crate) fn push(&mut self, layer: usize, k: &[f32], v: &[f32]) {
        debug_assert!(layer < self.k.len() && k.len() == self.d, "a RowKv starts from a prefill");
        self.k[layer].extend_from_slice(k);
        self.v[layer].extend_from_slice(v);
        if layer + 1 == self.k.len() {
            self.len += 1;
        }
    }

    /// Keys and values of `layer` (`[len (+1 while a step is in progress), d]`).
    pub(crate) fn layer(&self, layer: usize) -> (&[f32], &[f32]) {
        (&self.k[layer], &self.v[layer])
    }
}
