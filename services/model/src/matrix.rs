//! Weight matrices held in the format `--dtype` asks for, and their products with f32
//! activations. Everything around them (activations, residual stream, steering, layer norms,
//! biases, sampling) stays f32: only the bytes streamed per token change.
//!
//! | held as (on the host) | layout | product, any number of rows |
//! |---|---|---|
//! | f32, bf16, f16 | `[in, out]` (Conv1D) in panels of 32 columns | [`kernels::matmul_panels`] (16-bit converted as loaded) |
//! | q8_0 | `[out, in]`, blocks along `in` | [`quant::matmul_t`]: int8 dot products |
//!
//! Off the host (f32 only) linears are `[in, out]` tensors and products candle's.
//!
//! The token-embedding table (`wte`, tied to the lm_head) is a matrix too, `[vocab, d]`: its
//! rows are gathered for the embedding and dotted with the hidden states for the logits.

use candle_core::{Device, Storage, Tensor};

use crate::dtype::HalfKind;
use crate::dtype::WeightDtype;
use crate::error::{ModelError, Result};
use crate::kernels::{self, Elem};
use crate::quant::{self, Q8Blocks, Q8Rows, QK8_0};

/// What a matrix is for, which fixes the layout its kernels want.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `y = x . W + b` (GPT-2's Conv1D, `W: [in, out]` in checkpoints).
    Linear,
    /// Rows of a table, `[rows, d]` (`n_out` = rows, `n_in` = d): gathered and dotted.
    Table,
}

/// How a source array is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `[in, out]`, row-major (Hugging Face's Conv1D).
    InOut,
    /// `[out, in]`, row-major (GGUF, nn.Linear, embedding tables).
    OutIn,
}

/// A matrix's values as read from a checkpoint.
pub enum Source {
    F32(Vec<f32>),
    Half(Vec<u16>, HalfKind),
    Q8(Q8Blocks),
}

impl Source {
    /// The values as f32.
    pub fn into_f32(self) -> Vec<f32> {
        match self {
            Source::F32(v) => v,
            Source::Half(b, kind) => half_to_f32(&b, kind),
            Source::Q8(b) => b.to_f32(),
        }
    }
}

/// The kernels' conversions ([`kernels::Elem`]), for whole arrays.
fn half_to_f32(bits: &[u16], kind: HalfKind) -> Vec<f32> {
    match kind {
        HalfKind::Bf16 => kernels::bf16_bits(bits).iter().map(|b| b.to_f32()).collect(),
        HalfKind::F16 => kernels::f16_bits(bits).iter().map(|b| b.to_f32()).collect(),
    }
}

#[derive(Debug, Clone)]
enum Data {
    /// Tables, and linears off the host.
    F32(Tensor),
    /// Tables.
    Half(Vec<u16>, HalfKind),
    /// Linears on the host, in panels of 32 columns ([`kernels::pack_panels`]).
    Panels(Vec<f32>),
    HalfPanels(Vec<u16>, HalfKind),
    Q8(Q8Rows),
}

/// A weight matrix mapping `n_in` features to `n_out`.
#[derive(Debug, Clone)]
pub struct Matrix {
    data: Data,
    /// The layout `data` is in: `[in, out]` for f32 and 16-bit linears, `[out, in]` otherwise.
    layout: Layout,
    n_in: usize,
    n_out: usize,
}

fn transpose<T: Copy + Default>(v: &[T], rows: usize, cols: usize) -> Vec<T> {
    let mut out = vec![T::default(); v.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = v[r * cols + c];
        }
    }
    out
}

impl Matrix {
    /// Converts `src` (laid out as `layout`) to `dtype` in the layout `role` wants there.
    pub fn new(src: Source, layout: Layout, n_in: usize, n_out: usize, role: Role, dtype: WeightDtype, device: &Device) -> Result<Self> {
        let len = n_in * n_out;
        let src_len = match &src {
            Source::F32(v) => v.len(),
            Source::Half(v, _) => v.len(),
            Source::Q8(b) => b.len() * QK8_0,
        };
        if src_len != len {
            return Err(ModelError::invalid("weights", format!("{src_len} values for a [{n_in}, {n_out}] matrix")));
        }
        if matches!(src, Source::Q8(_)) && layout != Layout::OutIn {
            return Err(ModelError::invalid("weights", "q8_0 blocks run along the input dimension ([out, in])"));
        }
        let want = match (dtype, role) {
            (WeightDtype::Q8_0, _) | (_, Role::Table) => Layout::OutIn,
            _ => Layout::InOut,
        };
        if !device.is_cpu() && dtype != WeightDtype::F32 {
            return Err(ModelError::invalid("dtype", format!("{dtype} weights run on the CPU only")));
        }
        if dtype == WeightDtype::Q8_0 && !n_in.is_multiple_of(QK8_0) {
            return Err(ModelError::invalid("dtype", format!("q8_0 needs rows of a multiple of 32 values, not {n_in}")));
        }
        // (rows, cols) of the source as stored
        let (rows, cols) = match layout {
            Layout::InOut => (n_in, n_out),
            Layout::OutIn => (n_out, n_in),
        };
        let relayout = |v: Vec<f32>| if layout == want { v } else { transpose(&v, rows, cols) };
        let data = match (src, dtype) {
            (Source::Q8(b), WeightDtype::Q8_0) => Data::Q8(Q8Rows::pack(b, n_in / QK8_0)),
            (Source::Half(b, k), WeightDtype::Bf16 | WeightDtype::F16) if Some(k) == dtype.half() => {
                Data::Half(if layout == want { b } else { transpose(&b, rows, cols) }, k)
            }
            (src, dtype) => {
                let f = relayout(src.into_f32());
                match dtype {
                    WeightDtype::F32 if want == Layout::InOut && device.is_cpu() => Data::Panels(kernels::pack_panels(&f, n_in, n_out)),
                    WeightDtype::F32 => {
                        let shape = if want == Layout::InOut { (n_in, n_out) } else { (n_out, n_in) };
                        Data::F32(Tensor::from_vec(f, shape, device)?)
                    }
                    WeightDtype::Bf16 => Data::Half(f.iter().map(|&x| half::bf16::from_f32(x).to_bits()).collect(), HalfKind::Bf16),
                    WeightDtype::F16 => Data::Half(f.iter().map(|&x| half::f16::from_f32(x).to_bits()).collect(), HalfKind::F16),
                    WeightDtype::Q8_0 => Data::Q8(Q8Rows::pack(Q8Blocks::quantize(&f), n_in / QK8_0)),
                }
            }
        };
        // 16-bit linears are host-only (checked above): packed in panels too.
        let data = match data {
            Data::Half(b, kind) if want == Layout::InOut => Data::HalfPanels(kernels::pack_panels(&b, n_in, n_out), kind),
            data => data,
        };
        if let Data::Half(b, HalfKind::F16) | Data::HalfPanels(b, HalfKind::F16) = &data {
            // The f16 kernels take finite values (and a checkpoint with others is broken).
            if b.iter().any(|&x| x & 0x7c00 == 0x7c00) {
                return Err(ModelError::invalid("dtype", "a weight is infinite or NaN in f16 (beyond 65504): use bf16 or f32"));
            }
        }
        Ok(Self { data, layout: want, n_in, n_out })
    }

    pub fn n_in(&self) -> usize {
        self.n_in
    }
    pub fn n_out(&self) -> usize {
        self.n_out
    }

    /// Bytes the weights take in memory (and are read per token).
    pub fn bytes(&self) -> usize {
        match &self.data {
            Data::F32(t) => t.elem_count() * 4,
            Data::Panels(w) => w.len() * 4,
            Data::Half(b, _) | Data::HalfPanels(b, _) => b.len() * 2,
            Data::Q8(b) => b.bytes(),
        }
    }

    /// `x [m, n_in] -> [m, n_out]` (+ `bias`), all f32.
    ///
    /// On the host every product goes through this crate's kernels, whatever m: they give each
    /// row the same bits however many rows share the call (tested), so a request's numbers never
    /// depend on what is batched beside it, and 16-bit and 8-bit weights are never converted as a
    /// whole. Against candle's GEMM on XL's MLP shapes (`--example kernels`, `many`): 1.1-2.1x
    /// up to 96 rows, 0.95x at 128-256 (169-183 against 177-190 GFLOP/s).
    pub fn matmul(&self, x: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        let (m, k) = x.dims2()?;
        debug_assert_eq!(k, self.n_in);
        let device = x.device().clone();
        if device.is_cpu() {
            let xs = x.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
            let b = bias.map(|b| b.to_vec1::<f32>()).transpose()?;
            // Calls of at most `per_call` rows (the kernels hold an [m, n] sum per thread),
            // split evenly so that no call is a sliver that streams the weights for one row.
            let calls = m.div_ceil(self.rows_per_call()).max(1);
            let rows = m.div_ceil(calls).max(1);
            let mut y = Vec::with_capacity(m * self.n_out);
            for chunk in xs.chunks(rows * k) {
                y.extend(self.host(chunk, b.as_deref(), chunk.len() / k)?);
            }
            return Ok(Tensor::from_vec(y, (m, self.n_out), &device)?);
        }
        let y = match (&self.data, self.layout) {
            (Data::F32(w), Layout::InOut) => x.matmul(w)?,
            (Data::F32(w), Layout::OutIn) => x.matmul(&w.t()?)?,
            _ => x.matmul(&self.to_f32(&device)?)?,
        };
        Ok(match bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }

    /// Rows per kernel call: row-dots against a table (the LM head) hold one weight row in L1
    /// for the call's rows, so few; the others bound their per-thread sums.
    fn rows_per_call(&self) -> usize {
        match (&self.data, self.layout) {
            (Data::Q8(_), _) => 256,
            (_, Layout::OutIn) => 32,
            (_, Layout::InOut) => 256,
        }
    }

    /// The product on host slices.
    fn host(&self, x: &[f32], bias: Option<&[f32]>, m: usize) -> Result<Vec<f32>> {
        let (k, n) = (self.n_in, self.n_out);
        Ok(match (&self.data, self.layout) {
            (Data::F32(w), layout) => {
                let (ws, wl) = w.storage_and_layout();
                let (Storage::Cpu(ws), Some((w0, w1))) = (&*ws, wl.contiguous_offsets()) else {
                    return Err(ModelError::invalid("weights", "f32 weights are not a contiguous host array"));
                };
                let w = &ws.as_slice::<f32>()?[w0..w1];
                match layout {
                    Layout::InOut => kernels::matmul_reference(x, w, bias, m, k, n),
                    Layout::OutIn => with_bias(kernels::rows_dot(x, w, m, k, n), bias),
                }
            }
            (Data::Panels(w), _) => kernels::matmul_panels(x, w, bias, m, k, n),
            (Data::HalfPanels(b, HalfKind::Bf16), _) => kernels::matmul_panels(x, kernels::bf16_bits(b), bias, m, k, n),
            (Data::HalfPanels(b, HalfKind::F16), _) => kernels::matmul_panels(x, kernels::f16_bits(b), bias, m, k, n),
            // 16-bit linears are always panels: these are tables.
            (Data::Half(b, HalfKind::Bf16), _) => with_bias(kernels::rows_dot(x, kernels::bf16_bits(b), m, k, n), bias),
            (Data::Half(b, HalfKind::F16), _) => with_bias(kernels::rows_dot(x, kernels::f16_bits(b), m, k, n), bias),
            (Data::Q8(b), _) => quant::matmul_t(x, b, bias, m, k, n),
        })
    }

    /// The whole matrix as an f32 `[in, out]` tensor.
    fn to_f32(&self, device: &Device) -> Result<Tensor> {
        let f: Vec<f32> = match &self.data {
            Data::F32(w) => {
                return Ok(match self.layout {
                    Layout::InOut => w.clone(),
                    Layout::OutIn => w.t()?.contiguous()?,
                })
            }
            Data::Half(b, kind) => half_to_f32(b, *kind),
            Data::Panels(w) => kernels::unpack_panels(w, self.n_in, self.n_out),
            Data::HalfPanels(b, kind) => half_to_f32(&kernels::unpack_panels(b, self.n_in, self.n_out), *kind),
            Data::Q8(b) => b.to_f32(),
        };
        Ok(match self.layout {
            Layout::InOut => Tensor::from_vec(f, (self.n_in, self.n_out), device)?,
            Layout::OutIn => Tensor::from_vec(f, (self.n_out, self.n_in), device)?.t()?.contiguous()?,
        })
    }

    /// Rows `ids` of a table (`[rows, d]`), as f32 `[ids.len(), d]`.
    pub fn gather(&self, ids: &[u32], device: &Device) -> Result<Tensor> {
        assert_eq!(self.layout, Layout::OutIn, "gather reads a table");
        let d = self.n_in;
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= self.n_out) {
            return Err(ModelError::invalid("tokens", format!("token id {id} is outside the vocabulary of {}", self.n_out)));
        }
        if let Data::F32(w) = &self.data {
            let ids = Tensor::from_slice(ids, ids.len(), w.device())?;
            return Ok(w.index_select(&ids, 0)?);
        }
        let mut out = Vec::with_capacity(ids.len() * d);
        for &id in ids {
            let row = id as usize;
            match &self.data {
                Data::Half(b, kind) => out.extend(half_to_f32(&b[row * d..(row + 1) * d], *kind)),
                Data::Q8(b) => b.dequantize_row_into(row, &mut out),
                Data::F32(_) => unreachable!("handled above"),
                Data::Panels(_) | Data::HalfPanels(..) => unreachable!("linears are not tables"),
            }
        }
        Ok(Tensor::from_vec(out, (ids.len(), d), device)?)
    }
}

fn with_bias(mut y: Vec<f32>, bias: Option<&[f32]>) -> Vec<f32> {
    if let Some(b) = bias {
        kernels::add_bias(&mut y, b);
    }
    y
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::kernels::test_data as data;

    /// Every dtype, from either layout, small and large m, against the f32 product; the
    /// tolerance is the format's: bf16 keeps 8 significant bits (relative step 2^-8), f16 11,
    /// q8_0 int8 steps of max/127 (weights and, in the small-m kernel, activations).
    #[test]
    fn every_dtype_and_layout_computes_the_product() {
        let (k, n) = (64usize, 96usize);
        let w_io = data(k * n, 1);
        let w_oi = transpose(&w_io, k, n);
        let bias = data(n, 2);
        let dev = Device::Cpu;
        let bias_t = Tensor::from_slice(&bias, n, &dev).unwrap();
        for m in [1usize, 5, 40] {
            let x = data(m * k, 3);
            let xt = Tensor::from_slice(&x, (m, k), &dev).unwrap();
            let want: Vec<f64> =
                (0..m * n).map(|i| (0..k).map(|j| x[i / n * k + j] as f64 * w_io[j * n + i % n] as f64).sum::<f64>() + bias[i % n] as f64).collect();
            let sum_abs: f64 = (0..k).map(|j| x[j].abs() as f64).sum::<f64>().max(1.0);
            for (dtype, rel) in
                [(WeightDtype::F32, 1e-6), (WeightDtype::Bf16, 1.0 / 256.0), (WeightDtype::F16, 1.0 / 2048.0), (WeightDtype::Q8_0, 2.0 / 127.0)]
            {
                for (src, layout) in [(w_io.clone(), Layout::InOut), (w_oi.clone(), Layout::OutIn)] {
                    let mat = Matrix::new(Source::F32(src), layout, k, n, Role::Linear, dtype, &dev).unwrap();
                    let got = mat.matmul(&xt, Some(&bias_t)).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
                    for (g, e) in got.iter().zip(&want) {
                        assert!((*g as f64 - e).abs() <= rel * sum_abs + 1e-5, "{dtype} {layout:?} m={m}: {g} vs {e}");
                    }
                }
            }
        }
    }

    /// Batch invariance at the bottom: a row's product is the same bits alone, in a step of a
    /// few rows, or among hundreds (split into several kernel calls), in every dtype and layout.
    #[test]
    fn a_rows_product_does_not_depend_on_the_rows_beside_it() {
        let (k, n) = (64usize, 40usize);
        let w = data(k * n, 11);
        let bias = data(n, 12);
        let dev = Device::Cpu;
        let bias_t = Tensor::from_slice(&bias, n, &dev).unwrap();
        let m = 300;
        let x = data(m * k, 13);
        for dtype in [WeightDtype::F32, WeightDtype::Bf16, WeightDtype::F16, WeightDtype::Q8_0] {
            for layout in [Layout::InOut, Layout::OutIn] {
                let mat = Matrix::new(Source::F32(w.clone()), layout, k, n, Role::Linear, dtype, &dev).unwrap();
                let run = |rows: &[f32]| {
                    let xt = Tensor::from_slice(rows, (rows.len() / k, k), &dev).unwrap();
                    mat.matmul(&xt, Some(&bias_t)).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()
                };
                let all = run(&x);
                for r in [0usize, 7, 45, 299] {
                    assert_eq!(run(&x[r * k..(r + 1) * k]), all[r * n..(r + 1) * n], "{dtype} {layout:?}: row {r} alone");
                }
                for rows in [2usize, 6, 41, 257] {
                    assert_eq!(run(&x[..rows * k]), all[..rows * n], "{dtype} {layout:?}: the first {rows} rows");
                }
            }
        }
    }

    #[test]
    fn tables_gather_rows_and_give_logits_in_every_dtype() {
        let (v, d) = (70usize, 64usize);
        let table = data(v * d, 4);
        let dev = Device::Cpu;
        for dtype in WeightDtype::ALL {
            let mat = Matrix::new(Source::F32(table.clone()), Layout::OutIn, d, v, Role::Table, dtype, &dev).unwrap();
            let rows = mat.gather(&[3, 69, 0], &dev).unwrap().to_vec2::<f32>().unwrap();
            for (r, id) in rows.iter().zip([3usize, 69, 0]) {
                for (g, e) in r.iter().zip(&table[id * d..(id + 1) * d]) {
                    assert!((g - e).abs() <= 1.0 / 127.0, "{dtype}: {g} vs {e}");
                }
            }
            assert!(mat.gather(&[70], &dev).unwrap_err().to_string().contains("70"));
            let h = Tensor::from_slice(&table[5 * d..6 * d], (1, d), &dev).unwrap();
            let logits = mat.matmul(&h, None).unwrap().to_vec2::<f32>().unwrap();
            let best = logits[0].iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0;
            assert_eq!(best, 5, "{dtype}: a row is closest to itself");
        }
    }

    #[test]
    fn q8_0_needs_whole_blocks_and_16_bit_kinds_convert() {
        let dev = Device::Cpu;
        let err = Matrix::new(Source::F32(vec![0.0; 40 * 2]), Layout::InOut, 40, 2, Role::Linear, WeightDtype::Q8_0, &dev).unwrap_err();
        assert!(err.to_string().contains("multiple of 32"), "{err}");
        let bits: Vec<u16> = data(256, 5).iter().map(|&x| half::f16::from_f32(x).to_bits()).collect();
        let m = Matrix::new(Source::Half(bits, HalfKind::F16), Layout::InOut, 8, 32, Role::Linear, WeightDtype::Bf16, &dev).unwrap();
        assert_eq!(m.bytes(), 512);
    }
}
