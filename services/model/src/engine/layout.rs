//! Left padding of a batch of rows of different lengths, the masks and position ids of a
//! forward over it, and which rows of a request are the same row.

use candle_core::Tensor;

use super::request::RowRequest;
use crate::error::{ModelError, Result};
use crate::gpt2::{Gpt2, Step};

/// Left padding of a batch: row b's tokens sit at `offsets[b]..width`.
#[derive(Debug, Clone)]
pub(super) struct BatchLayout {
    pub(super) width: usize,
    pub(super) offsets: Vec<usize>,
}

impl BatchLayout {
    pub(super) fn new(seqs: &[Vec<u32>], n_positions: usize) -> Result<Self> {
        let width = seqs.iter().map(|s| s.len()).max().unwrap_or(0);
        if width > n_positions {
            return Err(ModelError::invalid("prompt", format!("{width} tokens exceed the model's {n_positions} positions")));
        }
        if let Some(i) = seqs.iter().position(|s| s.is_empty()) {
            return Err(ModelError::invalid("prompt", format!("row {i}: empty prompt")));
        }
        Ok(Self { width, offsets: seqs.iter().map(|s| width - s.len()).collect() })
    }

    /// The whole (left-padded) sequences: causal mask that also hides padding keys.
    pub(super) fn prefill_step(&self, seqs: &[Vec<u32>], model: &Gpt2) -> Result<Step> {
        self.chunk_step(seqs, 0, self.width, model)
    }

    /// Columns `p0..p1` of the (left-padded) sequences, after `p0` cached columns: a causal mask
    /// over `0..p1` that also hides padding keys.
    pub(super) fn chunk_step(&self, seqs: &[Vec<u32>], p0: usize, p1: usize, model: &Gpt2) -> Result<Step> {
        let (b, t, s) = (seqs.len(), p1 - p0, p1);
        let mut ids = vec![0u32; b * t];
        let mut pos = vec![0u32; b * t];
        let mut mask = vec![0f32; b * t * s];
        for (row, seq) in seqs.iter().enumerate() {
            let off = self.offsets[row];
            for q in p0..p1 {
                if q >= off {
                    ids[row * t + q - p0] = seq[q - off];
                    pos[row * t + q - p0] = (q - off) as u32;
                }
                for k in 0..s {
                    let visible = k <= q && (k >= off || k == q);
                    if !visible {
                        mask[(row * t + q - p0) * s + k] = f32::NEG_INFINITY;
                    }
                }
            }
        }
        self.step(ids, pos, mask, (b, t, s), model)
    }

    fn step(&self, ids: Vec<u32>, pos: Vec<u32>, mask: Vec<f32>, (b, t, s): (usize, usize, usize), model: &Gpt2) -> Result<Step> {
        let dev = model.device();
        Ok(Step {
            ids: Tensor::from_vec(ids, (b, t), dev)?,
            positions: Tensor::from_vec(pos, (b, t), dev)?,
            mask: Tensor::from_vec(mask, (b, 1, t, s), dev)?.to_dtype(model.dtype())?,
        })
    }
}

/// The first row of each group of identical rows (same prompt, same steering tensors), and for
/// every row the index of its group.
pub(super) fn distinct_rows(rows: &[RowRequest]) -> (Vec<usize>, Vec<u32>) {
    let mut keys: Vec<&RowRequest> = vec![];
    let mut distinct = vec![];
    let mut fan_out = vec![];
    let same = |a: &RowRequest, b: &RowRequest| {
        a.prompt == b.prompt && a.additions.len() == b.additions.len() && a.additions.iter().zip(&b.additions).all(|(x, y)| x.same_as(y))
    };
    for (i, r) in rows.iter().enumerate() {
        match keys.iter().position(|k| same(k, r)) {
            Some(g) => fan_out.push(g as u32),
            None => {
                fan_out.push(keys.len() as u32);
                keys.push(r);
                distinct.push(i);
            }
        }
    }
    (distinct, fan_out)
}
