//! Hook points on the residual stream, and the two things a forward pass can do there:
//! capture the activations, or add a steering tensor.
//!
//! GPT-2 with `n_layer` blocks has `n_layer + 1` residual streams: stream 0 is the embeddings
//! (what block 0 reads), stream `s` is the output of block `s - 1`. Every hook point names one of
//! them, so the two conventions in the literature are explicit and never ambiguous:
//! `ResidPre(L)` = stream L (TransformerLens `blocks.L.hook_resid_pre`, HF `hidden_states[L]`),
//! `BlockOutput(L)` = stream L + 1 (nnsight `transformer.h[L].output[0]`).
//! Note that HF's last `hidden_states` entry has `ln_f` applied; `BlockOutput(n_layer - 1)` does not.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use candle_core::{DType, Device, Tensor};

use crate::error::{ModelError, Result};

/// A point on the residual stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HookPoint {
    /// The stream entering block L (ActAdd's convention), L in 0..n_layer.
    ResidPre(usize),
    /// The stream leaving block L (ARENA/nnsight, llama.cpp, repeng), L in 0..n_layer.
    BlockOutput(usize),
}

impl HookPoint {
    pub fn layer(self) -> usize {
        match self {
            HookPoint::ResidPre(l) | HookPoint::BlockOutput(l) => l,
        }
    }

    /// Index of the residual stream this point reads and writes (0..=n_layer).
    pub fn stream(self) -> usize {
        match self {
            HookPoint::ResidPre(l) => l,
            HookPoint::BlockOutput(l) => l + 1,
        }
    }

    /// Checks the layer against the model depth.
    pub fn check(self, n_layer: usize) -> Result<()> {
        if self.layer() >= n_layer {
            return Err(ModelError::invalid(
                "layer",
                format!("{self}: layer must be in 0..{n_layer}"),
            ));
        }
        Ok(())
    }
}

impl fmt::Display for HookPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HookPoint::ResidPre(l) => write!(f, "resid_pre.{l}"),
            HookPoint::BlockOutput(l) => write!(f, "block_output.{l}"),
        }
    }
}

impl FromStr for HookPoint {
    type Err = ModelError;
    /// `resid_pre.6`, `block_output.6` (also `resid-pre:6`).
    fn from_str(s: &str) -> Result<Self> {
        let bad = || ModelError::invalid("hook", format!("`{s}`: expected resid_pre.L or block_output.L"));
        let (kind, layer) = s.split_once(['.', ':']).ok_or_else(bad)?;
        let layer: usize = layer.parse().map_err(|_| bad())?;
        match kind.replace('-', "_").as_str() {
            "resid_pre" => Ok(HookPoint::ResidPre(layer)),
            "block_output" => Ok(HookPoint::BlockOutput(layer)),
            _ => Err(bad()),
        }
    }
}

/// One steering addition for one row: `tensor` ([k, d_model]) is added at positions 0..k-1 of
/// the row's prompt (BOS included when present), at `hook`, in the prefill pass only.
#[derive(Debug, Clone)]
pub struct Addition {
    pub hook: HookPoint,
    pub tensor: Tensor,
}

/// The additions of one batched forward, resolved per stream into a `[B, T, d]` delta that is
/// zero for unsteered rows, padding and positions past each row's k.
#[derive(Debug, Clone, Default)]
pub struct Additions {
    deltas: BTreeMap<usize, Tensor>,
}

impl Additions {
    /// `rows[b]` are row b's additions; `offsets[b]` is where its first real token sits
    /// (left padding). Returns `None` when no row adds anything, so a plain forward pays nothing.
    pub fn build(
        rows: &[&[Addition]],
        offsets: &[usize],
        seq_len: usize,
        d_model: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<Option<Self>> {
        let b = rows.len();
        let mut host: BTreeMap<usize, Vec<f32>> = BTreeMap::new();
        for (row, adds) in rows.iter().enumerate() {
            for add in adds.iter() {
                let (k, d) = add.tensor.dims2()?;
                if d != d_model {
                    return Err(ModelError::invalid("tensor.shape", format!("d_model {d}, model has {d_model}")));
                }
                if offsets[row] + k > seq_len {
                    return Err(ModelError::invalid(
                        "tensor.shape",
                        format!("steering tensor of {k} positions is longer than the prompt ({} tokens)", seq_len - offsets[row]),
                    ));
                }
                let values = add.tensor.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
                let delta = host.entry(add.hook.stream()).or_insert_with(|| vec![0f32; b * seq_len * d_model]);
                let start = (row * seq_len + offsets[row]) * d_model;
                for (dst, src) in delta[start..start + k * d_model].iter_mut().zip(&values) {
                    *dst += src;
                }
            }
        }
        if host.is_empty() {
            return Ok(None);
        }
        let mut deltas = BTreeMap::new();
        for (stream, v) in host {
            let t = Tensor::from_vec(v, (b, seq_len, d_model), device)?.to_dtype(dtype)?;
            deltas.insert(stream, t);
        }
        Ok(Some(Self { deltas }))
    }

    pub fn at_stream(&self, stream: usize) -> Option<&Tensor> {
        self.deltas.get(&stream)
    }
}

/// Which streams to record during a forward, and what was recorded (`[B, T, d]`, after any
/// addition at that stream).
#[derive(Debug, Clone, Default)]
pub struct Captures {
    wanted: BTreeSet<usize>,
    got: BTreeMap<usize, Tensor>,
}

impl Captures {
    pub fn new(points: impl IntoIterator<Item = HookPoint>) -> Self {
        Self {
            wanted: points.into_iter().map(HookPoint::stream).collect(),
            got: BTreeMap::new(),
        }
    }

    pub fn wants(&self, stream: usize) -> bool {
        self.wanted.contains(&stream)
    }

    /// The deepest stream wanted: a capture-only forward can stop there.
    pub fn last_stream(&self) -> Option<usize> {
        self.wanted.iter().next_back().copied()
    }

    pub(crate) fn record(&mut self, stream: usize, t: &Tensor) {
        if self.wanted.contains(&stream) {
            self.got.insert(stream, t.clone());
        }
    }

    /// The recorded `[B, T, d]` activations at `point`.
    pub fn get(&self, point: HookPoint) -> Option<&Tensor> {
        self.got.get(&point.stream())
    }
}

/// What a forward pass does at the hook points. `Hooks::default()` is a plain forward.
#[derive(Default)]
pub struct Hooks<'a> {
    pub additions: Option<&'a Additions>,
    pub captures: Option<&'a mut Captures>,
    /// Stop after this stream is computed (no later blocks, no `ln_f`): for captures.
    pub stop_after_stream: Option<usize>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hook_points_name_streams() {
        assert_eq!(HookPoint::ResidPre(6).stream(), 6);
        assert_eq!(HookPoint::BlockOutput(5).stream(), 6);
        assert_eq!("resid_pre.6".parse::<HookPoint>().unwrap(), HookPoint::ResidPre(6));
        assert_eq!("block-output:3".parse::<HookPoint>().unwrap(), HookPoint::BlockOutput(3));
        assert!("resid_mid.3".parse::<HookPoint>().is_err());
        assert!(HookPoint::ResidPre(4).check(4).is_err());
        assert!(HookPoint::BlockOutput(3).check(4).is_ok());
    }

    #[test]
    fn additions_land_at_each_rows_offset() {
        let dev = Device::Cpu;
        let t = Tensor::new(&[[1f32, 2.], [3., 4.]], &dev).unwrap();
        let add = [Addition { hook: HookPoint::ResidPre(1), tensor: t }];
        let rows: [&[Addition]; 2] = [&[], &add];
        let a = Additions::build(&rows, &[0, 1], 4, 2, DType::F32, &dev).unwrap().unwrap();
        let delta = a.at_stream(1).unwrap().to_vec3::<f32>().unwrap();
        assert_eq!(delta[0], vec![vec![0., 0.]; 4]);
        assert_eq!(delta[1], vec![vec![0., 0.], vec![1., 2.], vec![3., 4.], vec![0., 0.]]);
        assert!(a.at_stream(0).is_none());
        let none: [&[Addition]; 2] = [&[], &[]];
        assert!(Additions::build(&none, &[0, 0], 4, 2, DType::F32, &dev).unwrap().is_none());
        // Longer than the prompt.
        let rows: [&[Addition]; 1] = [&add];
        assert!(Additions::build(&rows, &[3], 4, 2, DType::F32, &dev).is_err());
    }
}
