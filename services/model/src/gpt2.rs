//! GPT-2 in candle, in the shape of candle-transformers' model files: a component per struct,
//! each with `load(vb, cfg)` and `forward`. Hook points sit between blocks (see `hooks`).

use candle_core::{DType, Device, Module, Storage, Tensor, D};
use rayon::prelude::*;
use candle_nn::{Embedding, LayerNorm, VarBuilder};

use crate::config::{Activation, Config};
use crate::error::Result;
use crate::hooks::Hooks;
use crate::kernels;
use crate::kv_cache::{KvCache, LayerKv, RowKv};

/// GPT-2's `Conv1D`: weight stored `[in, out]`, so `y = x . w + b`.
#[derive(Debug, Clone)]
pub struct Conv1D {
    weight: Tensor,
    bias: Tensor,
    n_in: usize,
    n_out: usize,
}

impl Conv1D {
    pub fn load(vb: VarBuilder, n_in: usize, n_out: usize) -> Result<Self> {
        let weight = vb.get((n_in, n_out), "weight")?.contiguous()?;
        let bias = vb.get(n_out, "bias")?;
        Ok(Self { weight, bias, n_in, n_out })
    }

    /// x: [.., n_in] -> [.., n_out]
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut out_dims = x.dims().to_vec();
        let m: usize = out_dims[..out_dims.len() - 1].iter().product();
        *out_dims.last_mut().unwrap() = self.n_out;
        if let Some(y) = self.forward_small_m(x, m)? {
            return Ok(y.reshape(out_dims)?);
        }
        let x2 = x.reshape((m, self.n_in))?;
        let y = x2.matmul(&self.weight)?.broadcast_add(&self.bias)?;
        Ok(y.reshape(out_dims)?)
    }

    /// The bandwidth-bound decode shapes on CPU in f32 go to our kernel.
    fn forward_small_m(&self, x: &Tensor, m: usize) -> Result<Option<Tensor>> {
        if m > kernels::SMALL_M_MAX || x.dtype() != DType::F32 || !x.device().is_cpu() {
            return Ok(None);
        }
        let x = x.contiguous()?;
        let y = {
            let (xs, xl) = x.storage_and_layout();
            let (ws, wl) = self.weight.storage_and_layout();
            let (bs, bl) = self.bias.storage_and_layout();
            let (Storage::Cpu(xs), Storage::Cpu(ws), Storage::Cpu(bs)) = (&*xs, &*ws, &*bs) else {
                return Ok(None);
            };
            let (Some((x0, x1)), Some((w0, w1)), Some((b0, b1))) =
                (xl.contiguous_offsets(), wl.contiguous_offsets(), bl.contiguous_offsets())
            else {
                return Ok(None);
            };
            let xs = &xs.as_slice::<f32>()?[x0..x1];
            let ws = &ws.as_slice::<f32>()?[w0..w1];
            let bs = &bs.as_slice::<f32>()?[b0..b1];
            kernels::small_m_matmul(xs, ws, Some(bs), m, self.n_in, self.n_out)
        };
        Ok(Some(Tensor::from_vec(y, (m, self.n_out), x.device())?))
    }
}

fn layer_norm(vb: VarBuilder, size: usize, eps: f64) -> Result<LayerNorm> {
    let weight = vb.get(size, "weight")?;
    let bias = vb.get(size, "bias")?;
    Ok(LayerNorm::new(weight, bias, eps))
}

/// Causal self-attention.
#[derive(Debug, Clone)]
pub struct Attention {
    c_attn: Conv1D,
    c_proj: Conv1D,
    n_head: usize,
    head_dim: usize,
}

impl Attention {
    pub fn load(vb: VarBuilder, cfg: &Config) -> Result<Self> {
        let d = cfg.n_embd;
        Ok(Self {
            c_attn: Conv1D::load(vb.pp("c_attn"), d, 3 * d)?,
            c_proj: Conv1D::load(vb.pp("c_proj"), d, d)?,
            n_head: cfg.n_head,
            head_dim: cfg.head_dim(),
        })
    }

    /// x: [B, T, d]; mask: additive [B, 1, T, S] (S = cached + T); returns [B, T, d].
    pub fn forward(&self, x: &Tensor, mask: &Tensor, kv: &mut LayerKv) -> Result<Tensor> {
        let (b, t, d) = x.dims3()?;
        let qkv = self.c_attn.forward(x)?; // [B, T, 3d]
        let heads = |i: usize| -> Result<Tensor> {
            Ok(qkv
                .narrow(D::Minus1, i * d, d)?
                .reshape((b, t, self.n_head, self.head_dim))?
                .transpose(1, 2)?
                .contiguous()?) // [B, H, T, hd]
        };
        let (q, k, v) = (heads(0)?, heads(1)?, heads(2)?);
        let (k, v) = kv.append(&k, &v)?; // [B, H, S, hd]
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let att = (q.matmul(&k.t()?)? * scale)?; // [B, H, T, S]
        let att = att.broadcast_add(mask)?;
        let att = candle_nn::ops::softmax_last_dim(&att)?;
        let y = att.matmul(&v.contiguous()?)?; // [B, H, T, hd]
        let y = y.transpose(1, 2)?.reshape((b, t, d))?;
        self.c_proj.forward(&y)
    }

    /// One new position per row: x [m, d], row r attending over its own cache `kv[r]` (which
    /// gets this position's key and value at `layer`); returns [m, d].
    pub fn decode(&self, x: &Tensor, layer: usize, kv: &mut [&mut RowKv]) -> Result<Tensor> {
        let (m, d) = x.dims2()?;
        let qkv = self.c_attn.forward(x)?.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?; // [m, 3d]
        for (r, row) in kv.iter_mut().enumerate() {
            let at = r * 3 * d;
            row.push(layer, &qkv[at + d..at + 2 * d], &qkv[at + 2 * d..at + 3 * d]);
        }
        let (h, hd) = (self.n_head, self.head_dim);
        let mut y = vec![0f32; m * d];
        let kv: &[&mut RowKv] = kv;
        y.par_chunks_mut(hd).enumerate().for_each(|(i, out)| {
            let (r, head) = (i / h, i % h);
            let (keys, values) = kv[r].layer(layer);
            kernels::attend_one(&qkv[r * 3 * d + head * hd..][..hd], keys, values, head * hd, d, out);
        });
        let y = Tensor::from_vec(y, (m, d), x.device())?.to_dtype(x.dtype())?;
        self.c_proj.forward(&y)
    }
}

/// Position-wise MLP.
#[derive(Debug, Clone)]
pub struct Mlp {
    c_fc: Conv1D,
    c_proj: Conv1D,
    act: Activation,
}

impl Mlp {
    pub fn load(vb: VarBuilder, cfg: &Config) -> Result<Self> {
        let act = cfg.activation().map_err(|m| candle_core::Error::Msg(m))?;
        Ok(Self {
            c_fc: Conv1D::load(vb.pp("c_fc"), cfg.n_embd, cfg.inner_dim())?,
            c_proj: Conv1D::load(vb.pp("c_proj"), cfg.inner_dim(), cfg.n_embd)?,
            act,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.c_fc.forward(x)?;
        let h = match self.act {
            Activation::GeluTanh if h.dtype() == DType::F32 && h.device().is_cpu() => {
                let h = h.contiguous()?;
                let y = kernels::gelu_tanh(&h.flatten_all()?.to_vec1::<f32>()?);
                Tensor::from_vec(y, h.shape(), h.device())?
            }
            Activation::GeluTanh => h.gelu()?,
            Activation::GeluErf => h.gelu_erf()?,
            Activation::Relu => h.relu()?,
        };
        self.c_proj.forward(&h)
    }
}

/// One transformer block: resid_mid = x + attn(ln_1(x)); out = resid_mid + mlp(ln_2(resid_mid)).
#[derive(Debug, Clone)]
pub struct Block {
    ln_1: LayerNorm,
    attn: Attention,
    ln_2: LayerNorm,
    mlp: Mlp,
}

impl Block {
    pub fn load(vb: VarBuilder, cfg: &Config) -> Result<Self> {
        let eps = cfg.layer_norm_epsilon;
        Ok(Self {
            ln_1: layer_norm(vb.pp("ln_1"), cfg.n_embd, eps)?,
            attn: Attention::load(vb.pp("attn"), cfg)?,
            ln_2: layer_norm(vb.pp("ln_2"), cfg.n_embd, eps)?,
            mlp: Mlp::load(vb.pp("mlp"), cfg)?,
        })
    }

    pub fn forward(&self, x: &Tensor, mask: &Tensor, kv: &mut LayerKv) -> Result<Tensor> {
        let h = (x + self.attn.forward(&self.ln_1.forward(x)?, mask, kv)?)?;
        Ok((&h + self.mlp.forward(&self.ln_2.forward(&h)?)?)?)
    }

    /// [`Attention::decode`] in place of the batched attention; x [m, d].
    pub fn decode(&self, x: &Tensor, layer: usize, kv: &mut [&mut RowKv]) -> Result<Tensor> {
        let h = (x + self.attn.decode(&self.ln_1.forward(x)?, layer, kv)?)?;
        Ok((&h + self.mlp.forward(&self.ln_2.forward(&h)?)?)?)
    }
}

/// The inputs of one batched forward: token ids, position ids and the additive attention mask.
#[derive(Debug, Clone)]
pub struct Step {
    /// [B, T] u32
    pub ids: Tensor,
    /// [B, T] u32
    pub positions: Tensor,
    /// [B, 1, T, S] additive (0 or -inf), S = cached positions + T
    pub mask: Tensor,
}

/// The streams that identical-prompt rows share in a prefill: see [`Gpt2::forward_shared`].
#[derive(Debug, Clone, Copy)]
pub struct SharedPrefix<'a> {
    /// One row per group of rows with the same prompt.
    pub step: &'a Step,
    /// u32 [B]: the group of each row.
    pub rows: &'a Tensor,
    /// Streams `0..streams` are computed per group (blocks `0..streams - 1`).
    pub streams: usize,
}

/// GPT-2 language model (lm_head tied to `wte`).
#[derive(Debug, Clone)]
pub struct Gpt2 {
    wte: Embedding,
    wpe: Embedding,
    blocks: Vec<Block>,
    ln_f: LayerNorm,
    lm_head: Tensor, // wte, [V, d]
    cfg: Config,
    dtype: DType,
    device: Device,
}

impl Gpt2 {
    /// `vb` is rooted at the transformer (names `wte.weight`, `h.0.ln_1.weight`, ...).
    pub fn load(vb: VarBuilder, cfg: &Config) -> Result<Self> {
        let wte_w = vb.get((cfg.vocab_size, cfg.n_embd), "wte.weight")?;
        let wpe_w = vb.get((cfg.n_positions, cfg.n_embd), "wpe.weight")?;
        let blocks = (0..cfg.n_layer)
            .map(|i| Block::load(vb.pp(format!("h.{i}")), cfg))
            .collect::<Result<Vec<_>>>()?;
        let ln_f = layer_norm(vb.pp("ln_f"), cfg.n_embd, cfg.layer_norm_epsilon)?;
        Ok(Self {
            wte: Embedding::new(wte_w.clone(), cfg.n_embd),
            wpe: Embedding::new(wpe_w, cfg.n_embd),
            blocks,
            ln_f,
            lm_head: wte_w,
            cfg: cfg.clone(),
            dtype: vb.dtype(),
            device: vb.device().clone(),
        })
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Runs the blocks on `step`, appending to `cache`, applying `hooks` at each residual stream.
    /// Returns the final hidden states after `ln_f` ([B, T, d]), or, when
    /// `hooks.stop_after_stream` is set, the raw stream at that point.
    pub fn forward(&self, step: &Step, cache: &mut KvCache, hooks: &mut Hooks<'_>) -> Result<Tensor> {
        let x = self.embed(step)?;
        match self.streams(x, 0..self.cfg.n_layer + 1, &step.mask, cache, hooks)? {
            std::ops::ControlFlow::Break(stopped) => Ok(stopped),
            std::ops::ControlFlow::Continue(x) => Ok(self.ln_f.forward(&x)?),
        }
    }

    /// [`Gpt2::forward`] where rows that differ only from stream `prefix.streams` on (the same
    /// prompt, steered and unsteered) compute the streams before it once: `prefix.step` holds
    /// one row per group, `prefix.rows[b]` is row b's group. The cache's layers below
    /// `prefix.streams - 1` hold the groups' rows, the others every row's. No hook may act
    /// before `prefix.streams`.
    pub fn forward_shared(&self, step: &Step, prefix: &SharedPrefix<'_>, cache: &mut KvCache, hooks: &mut Hooks<'_>) -> Result<Tensor> {
        let x = self.embed(prefix.step)?;
        let std::ops::ControlFlow::Continue(x) = self.streams(x, 0..prefix.streams, &prefix.step.mask, cache, &mut Hooks::default())? else {
            unreachable!("no hooks on the shared streams")
        };
        let x = x.index_select(prefix.rows, 0)?;
        match self.streams(x, prefix.streams..self.cfg.n_layer + 1, &step.mask, cache, hooks)? {
            std::ops::ControlFlow::Break(stopped) => Ok(stopped),
            std::ops::ControlFlow::Continue(x) => Ok(self.ln_f.forward(&x)?),
        }
    }

    /// Token + position embeddings: stream 0 before any hook, [B, T, d].
    fn embed(&self, step: &Step) -> Result<Tensor> {
        Ok((self.wte.forward(&step.ids)? + self.wpe.forward(&step.positions)?)?)
    }

    /// Residual streams `range` (stream s > 0 is block s - 1's output), with the hooks at each;
    /// `Break` with the raw stream when the hooks stop early.
    fn streams(
        &self,
        mut x: Tensor,
        range: std::ops::Range<usize>,
        mask: &Tensor,
        cache: &mut KvCache,
        hooks: &mut Hooks<'_>,
    ) -> Result<std::ops::ControlFlow<Tensor, Tensor>> {
        for stream in range {
            if stream > 0 {
                x = self.blocks[stream - 1].forward(&x, mask, cache.layer(stream - 1))?;
            }
            if let Some(delta) = hooks.additions.and_then(|a| a.at_stream(stream)) {
                x = (x + delta)?;
            }
            if let Some(c) = hooks.captures.as_deref_mut() {
                c.record(stream, &x);
            }
            if hooks.stop_after_stream == Some(stream) {
                return Ok(std::ops::ControlFlow::Break(x));
            }
        }
        Ok(std::ops::ControlFlow::Continue(x))
    }

    /// One decode step of m rows, each with its own cache and position: `ids[r]` is row r's
    /// newest token, at position `kv[r].len()`. Returns the hidden states after `ln_f`, [m, d].
    /// No steering: ActAdd acts in the prefill only.
    pub fn decode(&self, ids: &[u32], kv: &mut [&mut RowKv]) -> Result<Tensor> {
        let m = ids.len();
        let positions: Vec<u32> = kv.iter().map(|r| r.len() as u32).collect();
        let ids = Tensor::from_slice(ids, m, &self.device)?;
        let positions = Tensor::from_vec(positions, m, &self.device)?;
        let mut x = (self.wte.forward(&ids)? + self.wpe.forward(&positions)?)?;
        for (layer, block) in self.blocks.iter().enumerate() {
            x = block.decode(&x, layer, kv)?;
        }
        Ok(self.ln_f.forward(&x)?)
    }

    /// hidden [N, d] -> logits [N, V] in f32.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        let (n, d) = hidden.dims2()?;
        let v = self.cfg.vocab_size;
        if n <= kernels::SMALL_M_MAX && self.dtype == DType::F32 && self.device.is_cpu() {
            // lm_head as [V, d] rows: one dot product per vocabulary entry, streamed once.
            let h = hidden.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
            let (ws, wl) = self.lm_head.storage_and_layout();
            if let (Storage::Cpu(ws), Some((w0, w1))) = (&*ws, wl.contiguous_offsets()) {
                let w = &ws.as_slice::<f32>()?[w0..w1];
                let y = kernels::rows_dot(&h, w, n, d, v);
                return Ok(Tensor::from_vec(y, (n, v), &self.device)?);
            }
        }
        Ok(hidden.matmul(&self.lm_head.t()?)?.to_dtype(DType::F32)?)
    }
}
