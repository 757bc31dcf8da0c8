//! GPT-2 in candle, in the shape of candle-transformers' model files: a component per struct,
//! each with `load(params, prefix, cfg)` and `forward`. Hook points sit between blocks (see
//! `hooks`). The large matrices are [`Matrix`]es in the loaded dtype; activations are f32.

use candle_core::{DType, Device, Module, Tensor, D};
use rayon::prelude::*;
use candle_nn::{Embedding, LayerNorm};

use crate::config::{Activation, Config};
use crate::error::Result;
use crate::hooks::{Additions, Hooks};
use crate::kernels;
use crate::kv_cache::{KvCache, LayerKv, RowKv};
use crate::matrix::Matrix;
use crate::weights::Params;

/// GPT-2's `Conv1D`: `y = x . W + b`, `W` mapping `n_in` features to `n_out`.
#[derive(Debug, Clone)]
pub struct Conv1D {
    weight: Matrix,
    bias: Tensor,
    n_out: usize,
}

impl Conv1D {
    pub fn load(p: &mut Params, prefix: &str, n_in: usize, n_out: usize) -> Result<Self> {
        let weight = p.matrix(&format!("{prefix}.weight"), n_in, n_out)?;
        let bias = p.tensor(&format!("{prefix}.bias"), &[n_out])?;
        Ok(Self { weight, bias, n_out })
    }

    /// x: [.., n_in] -> [.., n_out]
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut out_dims = x.dims().to_vec();
        let m: usize = out_dims[..out_dims.len() - 1].iter().product();
        *out_dims.last_mut().unwrap() = self.n_out;
        let x2 = x.reshape((m, self.weight.n_in()))?;
        Ok(self.weight.matmul(&x2, Some(&self.bias))?.reshape(out_dims)?)
    }

    /// Bytes of weights.
    pub fn bytes(&self) -> usize {
        self.weight.bytes() + self.n_out * 4
    }
}

fn layer_norm(p: &mut Params, prefix: &str, size: usize, eps: f64) -> Result<LayerNorm> {
    let weight = p.tensor(&format!("{prefix}.weight"), &[size])?;
    let bias = p.tensor(&format!("{prefix}.bias"), &[size])?;
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
    pub fn load(p: &mut Params, prefix: &str, cfg: &Config) -> Result<Self> {
        let d = cfg.n_embd;
        Ok(Self {
            c_attn: Conv1D::load(p, &format!("{prefix}.c_attn"), d, 3 * d)?,
            c_proj: Conv1D::load(p, &format!("{prefix}.c_proj"), d, d)?,
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
    pub fn load(p: &mut Params, prefix: &str, cfg: &Config) -> Result<Self> {
        let act = cfg.activation().map_err(|m| candle_core::Error::Msg(m))?;
        Ok(Self {
            c_fc: Conv1D::load(p, &format!("{prefix}.c_fc"), cfg.n_embd, cfg.inner_dim())?,
            c_proj: Conv1D::load(p, &format!("{prefix}.c_proj"), cfg.inner_dim(), cfg.n_embd)?,
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
    pub fn load(p: &mut Params, prefix: &str, cfg: &Config) -> Result<Self> {
        let eps = cfg.layer_norm_epsilon;
        Ok(Self {
            ln_1: layer_norm(p, &format!("{prefix}.ln_1"), cfg.n_embd, eps)?,
            attn: Attention::load(p, &format!("{prefix}.attn"), cfg)?,
            ln_2: layer_norm(p, &format!("{prefix}.ln_2"), cfg.n_embd, eps)?,
            mlp: Mlp::load(p, &format!("{prefix}.mlp"), cfg)?,
        })
    }

    /// Bytes of weights (the matrices; layer norms are noise).
    pub fn bytes(&self) -> usize {
        self.attn.c_attn.bytes() + self.attn.c_proj.bytes() + self.mlp.c_fc.bytes() + self.mlp.c_proj.bytes()
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
    /// Token embeddings, `[V, d]`; also the lm_head.
    wte: Matrix,
    wpe: Embedding,
    blocks: Vec<Block>,
    ln_f: LayerNorm,
    cfg: Config,
    device: Device,
}

impl Gpt2 {
    /// `p` holds the transformer's parameters (names `wte.weight`, `h.0.ln_1.weight`, ...).
    pub fn load(p: &mut Params, cfg: &Config, device: &Device) -> Result<Self> {
        let wte = p.matrix("wte.weight", cfg.n_embd, cfg.vocab_size)?;
        let wpe_w = p.tensor("wpe.weight", &[cfg.n_positions, cfg.n_embd])?;
        let blocks = (0..cfg.n_layer)
            .map(|i| Block::load(p, &format!("h.{i}"), cfg))
            .collect::<Result<Vec<_>>>()?;
        let ln_f = layer_norm(p, "ln_f", cfg.n_embd, cfg.layer_norm_epsilon)?;
        Ok(Self {
            wte,
            wpe: Embedding::new(wpe_w, cfg.n_embd),
            blocks,
            ln_f,
            cfg: cfg.clone(),
            device: device.clone(),
        })
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }
    /// The activations' dtype: f32, whatever the weights are held in.
    pub fn dtype(&self) -> DType {
        DType::F32
    }
    /// Bytes of weights streamed per decoded token (every matrix, the lm_head included).
    pub fn weight_bytes(&self) -> usize {
        self.wte.bytes() + self.blocks.iter().map(Block::bytes).sum::<usize>()
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
        let ids = step.ids.flatten_all()?.to_vec1::<u32>()?;
        let tokens = self.wte.gather(&ids, &self.device)?.reshape(step.positions.dims().iter().copied().chain([self.cfg.n_embd]).collect::<Vec<_>>())?;
        Ok((tokens + self.wpe.forward(&step.positions)?)?)
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
    /// `additions` ([m, d] per stream) are the rows' all-positions directions; ActAdd's prefix
    /// additions act in the prefill only.
    pub fn decode(&self, ids: &[u32], kv: &mut [&mut RowKv], additions: Option<&Additions>) -> Result<Tensor> {
        let m = ids.len();
        let positions: Vec<u32> = kv.iter().map(|r| r.len() as u32).collect();
        let positions = Tensor::from_vec(positions, m, &self.device)?;
        let mut x = (self.wte.gather(ids, &self.device)? + self.wpe.forward(&positions)?)?;
        for stream in 0..=self.blocks.len() {
            if stream > 0 {
                x = self.blocks[stream - 1].decode(&x, stream - 1, kv)?;
            }
            if let Some(delta) = additions.and_then(|a| a.at_stream(stream)) {
                x = (x + delta)?;
            }
        }
        Ok(self.ln_f.forward(&x)?)
    }

    /// hidden [N, d] -> logits [N, V] in f32.
    /// The lm_head is `wte`'s rows: one dot product per vocabulary entry, streamed once.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        self.wte.matmul(hidden, None)
    }
}
