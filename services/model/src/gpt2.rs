//! GPT-2 in candle, in the shape of candle-transformers' model files: a component per struct,
//! each with `load(params, prefix, cfg)` and `forward`. Hook points sit between blocks (see
//! `hooks`). The large matrices are [`Matrix`]es in the loaded dtype; activations are f32.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::{Embedding, LayerNorm};
use rayon::prelude::*;

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

    /// Batched attention of a chunk `[B, T]` over its batch cache: qkv `[B * T, 3d]` (this
    /// layer's `c_attn` output), mask additive `[B, 1, T, S]` (S = cached + T); returns the heads'
    /// outputs before `c_proj`, `[B * T, d]`.
    fn attend_batch(&self, qkv: &Tensor, (b, t): (usize, usize), mask: &Tensor, kv: &mut LayerKv) -> Result<Tensor> {
        let d = self.n_head * self.head_dim;
        let qkv = qkv.reshape((b, t, 3 * d))?;
        let heads = |i: usize| -> Result<Tensor> {
            Ok(qkv.narrow(D::Minus1, i * d, d)?.reshape((b, t, self.n_head, self.head_dim))?.transpose(1, 2)?.contiguous()?)
            // [B, H, T, hd]
        };
        let (q, k, v) = (heads(0)?, heads(1)?, heads(2)?);
        let (k, v) = kv.append(&k, &v)?; // [B, H, S, hd]
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let att = (q.matmul(&k.t()?)? * scale)?; // [B, H, T, S]
        let att = att.broadcast_add(mask)?;
        let att = candle_nn::ops::softmax_last_dim(&att)?;
        let y = att.matmul(&v.contiguous()?)?; // [B, H, T, hd]
        Ok(y.transpose(1, 2)?.reshape((b * t, d))?)
    }

    /// One new position per row: qkv `[m, 3d]`, row r attending over its own cache `kv[r]`
    /// (which gets this position's key and value at `layer`); returns the heads' outputs before
    /// `c_proj`, `[m, d]`.
    fn attend_rows(&self, qkv: &Tensor, layer: usize, kv: &mut [&mut RowKv]) -> Result<Tensor> {
        let (m, three_d) = qkv.dims2()?;
        let (d, device) = (three_d / 3, qkv.device().clone());
        let qkv = qkv.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        for (r, row) in kv.iter_mut().enumerate() {
            let at = r * 3 * d;
            row.push(layer, &qkv[at + d..at + 2 * d], &qkv[at + 2 * d..at + 3 * d]);
        }
        let (h, hd) = (self.n_head, self.head_dim);
        let mut y = vec![0f32; m * d];
        let kv: &[&mut RowKv] = kv;
        // Tasks of a run of heads of one row (every head of a row when there are rows enough
        // for the threads), each reading the row's cache position by position.
        let per_row = (2 * rayon::current_num_threads()).div_ceil(m).clamp(1, h);
        let heads = h.div_ceil(per_row);
        y.par_chunks_mut(d).enumerate().for_each(|(r, row)| {
            let (keys, values) = kv[r].layer(layer);
            row.par_chunks_mut(heads * hd).enumerate().for_each(|(g, out)| {
                let h0 = g * heads;
                kernels::attend_heads(&qkv[r * 3 * d + h0 * hd..][..out.len()], keys, values, h0, hd, d, out);
            });
        });
        Ok(Tensor::from_vec(y, (m, d), &device)?)
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
        let act = cfg.activation().map_err(candle_core::Error::Msg)?;
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

    /// Block `layer` over the rows of every live part, `x` `[N, d]` (the parts' rows one after
    /// another): the four matrix products run once over all N rows (the kernels give each row the
    /// same bits whatever rows share the call), attention runs per part, as the part attends.
    fn forward(&self, x: &Tensor, layer: usize, parts: &mut [Part<'_>], live: &[Live]) -> Result<Tensor> {
        let qkv = self.attn.c_attn.forward(&self.ln_1.forward(x)?)?;
        let mut ys = Vec::with_capacity(parts.len());
        let mut at = 0;
        for (part, l) in parts.iter_mut().zip(live).filter(|(_, l)| l.at(layer)) {
            let qkv = qkv.narrow(0, at, l.rows())?;
            at += l.rows();
            ys.push(match &mut part.input {
                Input::Batch { step, shared, cache, .. } => {
                    let mask = match shared {
                        Some(sh) if layer + 1 < sh.streams => &sh.step.mask,
                        _ => &step.mask,
                    };
                    self.attn.attend_batch(&qkv, (l.batch, l.t), mask, cache.layer(layer))?
                }
                Input::Rows { kv, .. } => self.attn.attend_rows(&qkv, layer, kv)?,
            });
        }
        let h = (x + self.attn.c_proj.forward(&cat_rows(ys)?)?)?;
        Ok((&h + self.mlp.forward(&self.ln_2.forward(&h)?)?)?)
    }
}

/// Tensors `[n_i, d]` one after another, `[sum n_i, d]`.
fn cat_rows(pieces: Vec<Tensor>) -> Result<Tensor> {
    match pieces.len() {
        1 => Ok(pieces.into_iter().next().expect("one piece")),
        _ => Ok(Tensor::cat(&pieces, 0)?),
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

/// The streams that identical-prompt rows share in a prefill: see [`Input::Batch`].
#[derive(Debug, Clone, Copy)]
pub struct SharedPrefix<'a> {
    /// One row per group of rows with the same prompt.
    pub step: &'a Step,
    /// u32 [B]: the group of each row.
    pub rows: &'a Tensor,
    /// Streams `0..streams` are computed per group (blocks `0..streams - 1`).
    pub streams: usize,
}

/// A part that starts at stream `stream` from the given residual instead of at the
/// embeddings: the blocks below it do not run for the part (their keys and values are the
/// caller's), its hooks act from `stream` on.
#[derive(Debug, Clone, Copy)]
pub struct Start<'a> {
    pub stream: usize,
    /// `[B * T, d]`: the residual entering block `stream`, before the hooks at `stream`.
    pub x: &'a Tensor,
}

/// What one part of a forward ([`Gpt2::forward_parts`]) computes on.
pub enum Input<'a> {
    /// A chunk of a (left-padded) batch, `[B, T]` positions after those in `cache`. With
    /// `shared`, rows that differ only from stream `shared.streams` on (the same prompt, steered
    /// and unsteered) compute the streams before it once, one row per group (`shared.step`); the
    /// cache's layers below `shared.streams - 1` then hold the groups' rows, the others every
    /// row's, and no hook may act before `shared.streams`.
    /// With `start`, the part joins at a later stream: see [`Start`].
    Batch { step: &'a Step, shared: Option<SharedPrefix<'a>>, start: Option<Start<'a>>, cache: &'a mut KvCache },
    /// One new position per row: `ids[r]` is row r's newest token, at position `kv[r].len()`;
    /// each row attends over its own cache.
    Rows { ids: &'a [u32], kv: Vec<&'a mut RowKv> },
}

/// One part of a forward: its rows and what happens at its hook points.
pub struct Part<'a> {
    pub input: Input<'a>,
    pub hooks: Hooks<'a>,
}

impl<'a> Part<'a> {
    pub fn new(input: Input<'a>, hooks: Hooks<'a>) -> Self {
        Self { input, hooks }
    }
}

/// A part's place in the running forward: `batch x t` rows of `x` from stream `from` until
/// it stops.
#[derive(Debug, Clone, Copy)]
struct Live {
    batch: usize,
    t: usize,
    done: bool,
    from: usize,
}

impl Live {
    fn rows(&self) -> usize {
        self.batch * self.t
    }

    /// The part has rows in `x` at `stream` (it joined at or before it and has not stopped).
    fn at(&self, stream: usize) -> bool {
        !self.done && self.from <= stream
    }
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
    fingerprint: String,
    /// Block-positions computed so far (rows x positions through each block), for benchmarks.
    work: Arc<AtomicU64>,
}

/// See [`Gpt2::fingerprint`].
fn weights_fingerprint(tensors: &[&Tensor]) -> Result<String> {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for t in tensors {
        for v in t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()? {
            h.update(v.to_le_bytes());
        }
    }
    Ok(h.finalize().iter().take(8).map(|b| format!("{b:02x}")).collect())
}

impl Gpt2 {
    /// `p` holds the transformer's parameters (names `wte.weight`, `h.0.ln_1.weight`, ...).
    pub fn load(p: &mut Params, cfg: &Config, device: &Device) -> Result<Self> {
        let wte = p.matrix("wte.weight", cfg.n_embd, cfg.vocab_size)?;
        let wpe_w = p.tensor("wpe.weight", &[cfg.n_positions, cfg.n_embd])?;
        let blocks = (0..cfg.n_layer).map(|i| Block::load(p, &format!("h.{i}"), cfg)).collect::<Result<Vec<_>>>()?;
        let ln_f_w = p.tensor("ln_f.weight", &[cfg.n_embd])?;
        let ln_f_b = p.tensor("ln_f.bias", &[cfg.n_embd])?;
        let fingerprint = weights_fingerprint(&[&wpe_w, &ln_f_w, &ln_f_b])?;
        let ln_f = LayerNorm::new(ln_f_w, ln_f_b, cfg.layer_norm_epsilon);
        let wpe = Embedding::new(wpe_w, cfg.n_embd);
        Ok(Self { wte, wpe, blocks, ln_f, cfg: cfg.clone(), device: device.clone(), fingerprint, work: Arc::default() })
    }

    /// 16 hex digits of SHA-256 over the position embeddings and the final layer norm as
    /// stored (f32 whatever the weights' dtype, so a checkpoint loaded as f32, f16, bf16 or
    /// q8_0, from safetensors or GGUF, has one fingerprint; other weights have another).
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Block-positions computed since loading: each block run adds the rows it ran on (one per
    /// position of each row of a prefill, one per decoding row). What a prefix cache saves shows
    /// here.
    pub fn block_positions(&self) -> u64 {
        self.work.load(Ordering::Relaxed)
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
    pub fn forward(&self, step: &Step, cache: &mut KvCache, hooks: Hooks<'_>) -> Result<Tensor> {
        Ok(self.forward_parts(vec![Part::new(Input::Batch { step, shared: None, start: None, cache }, hooks)])?.remove(0))
    }

    /// One decode step of m rows, each with its own cache and position: `ids[r]` is row r's
    /// newest token, at position `kv[r].len()`. Returns the hidden states after `ln_f`, [m, d].
    /// `additions` ([`Additions::decode`]) are the rows' steering at their positions; ActAdd's
    /// prefix additions act in the prefill only.
    pub fn decode(&self, ids: &[u32], kv: &mut [&mut RowKv], additions: Option<&Additions>) -> Result<Tensor> {
        let kv = kv.iter_mut().map(|r| &mut **r).collect();
        let hooks = Hooks { additions, ..Default::default() };
        Ok(self.forward_parts(vec![Part::new(Input::Rows { ids, kv }, hooks)])?.remove(0))
    }

    /// One forward over several parts at once (prefill chunks of different requests, a decode
    /// step): each block's matrix products run once over every part's rows, so the weights are
    /// streamed once for all of them, while each part attends over its own cache and has its own
    /// hooks. A part's numbers are the same as in a forward of its own (the kernels give a row the
    /// same bits whatever rows share the call; the rest is per row or per part).
    ///
    /// Returns, per part, the final hidden states after `ln_f` (`[B, T, d]` for a batch, `[m, d]`
    /// for rows), or the raw stream where its hooks stopped.
    pub fn forward_parts(&self, parts: Vec<Part<'_>>) -> Result<Vec<Tensor>> {
        // On a worker of the compute pool, so that its ~300 parallel sections a step run partly
        // on this thread and hand work to the other workers directly; called from outside the
        // pool, each section would be injected into it and this thread put to sleep and woken.
        match rayon::current_thread_index() {
            Some(_) => self.forward_parts_in_pool(parts),
            None => rayon::scope(|_| self.forward_parts_in_pool(parts)),
        }
    }

    fn forward_parts_in_pool(&self, mut parts: Vec<Part<'_>>) -> Result<Vec<Tensor>> {
        let d = self.cfg.n_embd;
        let mut live = Vec::with_capacity(parts.len());
        let mut xs = Vec::with_capacity(parts.len());
        for part in &parts {
            let (l, x) = match &part.input {
                Input::Batch { step, start: Some(st), .. } => {
                    let (b, t) = step.ids.dims2()?;
                    (Live { batch: b, t, done: false, from: st.stream }, None)
                }
                Input::Batch { step, shared, .. } => {
                    let step = shared.as_ref().map_or(*step, |sh| sh.step);
                    let (b, t) = step.ids.dims2()?;
                    (Live { batch: b, t, done: false, from: 0 }, Some(self.embed(step)?.reshape((b * t, d))?))
                }
                Input::Rows { ids, kv } => {
                    let positions: Vec<u32> = kv.iter().map(|r| r.len() as u32).collect();
                    let positions = Tensor::from_vec(positions, ids.len(), &self.device)?;
                    let x = (self.wte.gather(ids, &self.device)? + self.wpe.forward(&positions)?)?;
                    (Live { batch: ids.len(), t: 1, done: false, from: 0 }, Some(x))
                }
            };
            live.push(l);
            xs.extend(x);
        }
        let mut out: Vec<Option<Tensor>> = vec![None; parts.len()];
        let mut x = match xs.is_empty() {
            true => Tensor::zeros((0, d), self.dtype(), &self.device)?,
            false => cat_rows(xs)?,
        };
        for stream in 0..=self.blocks.len() {
            if stream > 0 {
                let expands = |p: &Part<'_>| matches!(&p.input, Input::Batch { shared: Some(sh), .. } if sh.streams == stream);
                if parts.iter().zip(&live).any(|(p, l)| l.at(stream - 1) && expands(p)) {
                    x = self.each_part(x, stream - 1, &mut parts, &mut live, |_, part, l, piece| match &part.input {
                        Input::Batch { step, shared: Some(sh), .. } if sh.streams == stream => {
                            let (b, t) = step.ids.dims2()?;
                            let piece = piece.reshape((l.batch, l.t, d))?.index_select(sh.rows, 0)?;
                            *l = Live { batch: b, t, ..*l };
                            Ok(piece.reshape((b * t, d))?)
                        }
                        _ => Ok(piece),
                    })?;
                }
                if live.iter().any(|l| l.at(stream - 1)) {
                    self.work.fetch_add(x.dim(0)? as u64, Ordering::Relaxed);
                    x = self.blocks[stream - 1].forward(&x, stream - 1, &mut parts, &live)?;
                }
                if live.iter().any(|l| !l.done && l.from == stream) {
                    x = self.join(x, stream, &parts, &live)?;
                }
            }
            let acts = |h: &Hooks<'_>| {
                h.additions.is_some_and(|a| a.acts_at(stream))
                    || h.captures.as_ref().is_some_and(|c| c.wants(stream))
                    || h.stop_after_stream == Some(stream)
            };
            if parts.iter().zip(&live).any(|(p, l)| l.at(stream) && acts(&p.hooks)) {
                x = self.each_part(x, stream, &mut parts, &mut live, |i, part, l, mut piece| {
                    if let Some(a) = part.hooks.additions.filter(|a| a.acts_at(stream)) {
                        piece = a.apply(stream, piece)?;
                    }
                    let shaped = |t: &Tensor| -> Result<Tensor> {
                        Ok(match part.input {
                            Input::Batch { .. } => t.reshape((l.batch, l.t, d))?,
                            Input::Rows { .. } => t.clone(),
                        })
                    };
                    if let Some(c) = part.hooks.captures.as_deref_mut() {
                        if c.wants(stream) {
                            c.record(stream, &shaped(&piece)?);
                        }
                    }
                    if part.hooks.stop_after_stream == Some(stream) {
                        out[i] = Some(shaped(&piece)?);
                        l.done = true;
                    }
                    Ok(piece)
                })?;
                if live.iter().all(|l| l.done) {
                    break;
                }
            }
        }
        if live.iter().all(|l| l.done) {
            return Ok(out.into_iter().map(|o| o.expect("every part stopped")).collect());
        }
        let last = self.ln_f.forward(&x)?;
        let mut at = 0;
        for ((o, part), l) in out.iter_mut().zip(&parts).zip(&live).filter(|((o, _), _)| o.is_none()) {
            let rows = last.narrow(0, at, l.rows())?;
            at += l.rows();
            *o = Some(match part.input {
                Input::Batch { .. } => rows.reshape((l.batch, l.t, d))?,
                Input::Rows { .. } => rows,
            });
        }
        Ok(out.into_iter().map(|o| o.expect("every part ends")).collect())
    }

    /// Splits `x` (at `stream`) into the live parts' rows, maps each piece with `f(part index,
    /// ..)` (which may change the part's rows, or end it), and joins the pieces of the parts
    /// still live.
    fn each_part(
        &self,
        x: Tensor,
        stream: usize,
        parts: &mut [Part<'_>],
        live: &mut [Live],
        mut f: impl FnMut(usize, &mut Part<'_>, &mut Live, Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let mut pieces = Vec::with_capacity(parts.len());
        let mut at = 0;
        for (i, (part, l)) in parts.iter_mut().zip(live.iter_mut()).enumerate().filter(|(_, (_, l))| l.at(stream)) {
            let piece = x.narrow(0, at, l.rows())?;
            at += l.rows();
            let piece = f(i, part, l, piece)?;
            if !l.done {
                pieces.push(piece);
            }
        }
        if pieces.is_empty() {
            return Ok(x.narrow(0, 0, 0)?);
        }
        cat_rows(pieces)
    }

    /// `x` at `stream` with the rows of the parts that start there ([`Start`]) in their places.
    fn join(&self, x: Tensor, stream: usize, parts: &[Part<'_>], live: &[Live]) -> Result<Tensor> {
        let mut pieces = Vec::with_capacity(parts.len());
        let mut at = 0;
        for (part, l) in parts.iter().zip(live).filter(|(_, l)| l.at(stream)) {
            match &part.input {
                Input::Batch { start: Some(st), .. } if st.stream == stream => pieces.push(st.x.clone()),
                _ => {
                    pieces.push(x.narrow(0, at, l.rows())?);
                    at += l.rows();
                }
            }
        }
        cat_rows(pieces)
    }

    /// Token + position embeddings: stream 0 before any hook, [B, T, d].
    fn embed(&self, step: &Step) -> Result<Tensor> {
        let ids = step.ids.flatten_all()?.to_vec1::<u32>()?;
        let tokens =
            self.wte.gather(&ids, &self.device)?.reshape(step.positions.dims().iter().copied().chain([self.cfg.n_embd]).collect::<Vec<_>>())?;
        Ok((tokens + self.wpe.forward(&step.positions)?)?)
    }

    /// hidden [N, d] -> logits [N, V] in f32.
    /// The lm_head is `wte`'s rows: one dot product per vocabulary entry, streamed once.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        self.wte.matmul(hidden, None)
    }
}
