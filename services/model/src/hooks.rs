//! The two things a forward pass can do at a hook point: capture the activations, or add a
//! steering tensor. The points themselves ([`HookPoint`], [`HookKind`]) and where an addition
//! lands ([`Placement`]) are the shared vocabulary of `steer-hooks`, re-exported here.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

use crate::error::Result;
pub use steer_hooks::{HookKind, HookPoint, Placement};

/// Largest magnitude a steering value may have. Far beyond any useful steering (GPT-2-XL's
/// residual stream norms are in the hundreds to thousands), and small enough that a layer norm's
/// sum of squares over d_model stays finite in f32 (a 3e38 value would make it Inf, then NaN).
pub const MAX_STEERING_ABS: f32 = 1e7;

/// One steering addition for one row: f32 values, row-major on the host, added at `hook` as
/// its [`Placement`] says. The values are shared (`Arc`) by every row that carries them.
///
/// The engine trusts its additions: the services validate them once, at their edge (layer in
/// range, `k <= prompt length`, `k = 1` for all positions, values finite and within
/// [`MAX_STEERING_ABS`]); the engine only `debug_assert`s.
#[derive(Debug, Clone)]
pub struct Addition {
    pub hook: HookPoint,
    /// Positions covered (1 for [`Placement::AllPositions`]).
    pub k: usize,
    /// `k * d_model` values.
    pub values: Arc<[f32]>,
    pub placement: Placement,
}

impl Addition {
    /// An ActAdd (prefix) addition of `k` positions.
    pub fn new(hook: HookPoint, k: usize, values: impl Into<Arc<[f32]>>) -> Self {
        let values = values.into();
        debug_assert!(k > 0 && values.len() % k == 0, "{} values for k = {k}", values.len());
        Self { hook, k, values, placement: Placement::Prefix }
    }

    /// A `[1, d_model]` direction added at every position.
    pub fn all_positions(hook: HookPoint, values: impl Into<Arc<[f32]>>) -> Self {
        Self { placement: Placement::AllPositions, ..Self::new(hook, 1, values) }
    }

    /// From a `[k, d]` tensor of any float dtype (e.g. a capture).
    pub fn from_tensor(hook: HookPoint, t: &Tensor) -> Result<Self> {
        let (k, _) = t.dims2()?;
        let values = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        Ok(Self::new(hook, k, values))
    }

    /// True when both carry the very same values (shared, not compared element by element).
    pub fn same_as(&self, other: &Addition) -> bool {
        self.hook == other.hook && self.k == other.k && self.placement == other.placement && Arc::ptr_eq(&self.values, &other.values)
    }
}

/// The additions of one batched forward, resolved per stream into a `[B, T, d]` delta (a
/// `[B, d]` one for a decode step) that is zero for unsteered rows, padding and positions past
/// each prefix addition's k.
#[derive(Debug, Clone, Default)]
pub struct Additions {
    deltas: BTreeMap<usize, Tensor>,
}

impl Additions {
    /// `rows[b]` are row b's additions; `offsets[b]` is where its first real token sits
    /// (left padding). Returns `None` when no row adds anything, so a plain forward pays nothing.
    pub fn build(rows: &[&[Addition]], offsets: &[usize], seq_len: usize, d_model: usize, dtype: DType, device: &Device) -> Result<Option<Self>> {
        let b = rows.len();
        let mut host: BTreeMap<usize, Vec<f32>> = BTreeMap::new();
        for (row, adds) in rows.iter().enumerate() {
            for add in adds.iter() {
                let k = add.k;
                debug_assert_eq!(add.values.len(), k * d_model, "steering tensor at {} is not [k, d_model]", add.hook);
                debug_assert!(offsets[row] + k <= seq_len, "steering tensor longer than row {row}'s prompt");
                let delta = host.entry(add.hook.stream()).or_insert_with(|| vec![0f32; b * seq_len * d_model]);
                let start = (row * seq_len + offsets[row]) * d_model;
                let positions = match add.placement {
                    Placement::Prefix => &mut delta[start..start + k * d_model],
                    Placement::AllPositions => &mut delta[start..(row + 1) * seq_len * d_model],
                };
                for pos in positions.chunks_mut(k * d_model) {
                    for (dst, src) in pos.iter_mut().zip(add.values.iter()) {
                        *dst += src;
                    }
                }
            }
        }
        Self::from_host(host, &[b, seq_len, d_model], dtype, device)
    }

    /// The all-positions additions of one decode step: row b's directions, `[B, d]` per stream
    /// (prefix additions act in the prefill only and are skipped). `None` when no row has any.
    pub fn decode(rows: &[&[Addition]], d_model: usize, dtype: DType, device: &Device) -> Result<Option<Self>> {
        let b = rows.len();
        let mut host: BTreeMap<usize, Vec<f32>> = BTreeMap::new();
        for (row, adds) in rows.iter().enumerate() {
            for add in adds.iter().filter(|a| a.placement == Placement::AllPositions) {
                let delta = host.entry(add.hook.stream()).or_insert_with(|| vec![0f32; b * d_model]);
                for (dst, src) in delta[row * d_model..(row + 1) * d_model].iter_mut().zip(add.values.iter()) {
                    *dst += src;
                }
            }
        }
        Self::from_host(host, &[b, d_model], dtype, device)
    }

    fn from_host(host: BTreeMap<usize, Vec<f32>>, shape: &[usize], dtype: DType, device: &Device) -> Result<Option<Self>> {
        if host.is_empty() {
            return Ok(None);
        }
        let mut deltas = BTreeMap::new();
        for (stream, v) in host {
            deltas.insert(stream, Tensor::from_vec(v, shape, device)?.to_dtype(dtype)?);
        }
        Ok(Some(Self { deltas }))
    }

    pub fn at_stream(&self, stream: usize) -> Option<&Tensor> {
        self.deltas.get(&stream)
    }

    /// Positions `start..start + len` of every delta (a chunk of a prefill).
    pub fn window(&self, start: usize, len: usize) -> Result<Self> {
        let deltas = self.deltas.iter().map(|(&s, t)| Ok((s, t.narrow(1, start, len)?))).collect::<Result<_>>()?;
        Ok(Self { deltas })
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
        Self { wanted: points.into_iter().map(HookPoint::stream).collect(), got: BTreeMap::new() }
    }

    /// Captures of the residual at each of `streams` (stream s enters block s).
    pub fn streams(streams: impl IntoIterator<Item = usize>) -> Self {
        Self { wanted: streams.into_iter().collect(), got: BTreeMap::new() }
    }

    /// The recorded `[B, T, d]` residual at `stream`.
    pub fn at_stream(&self, stream: usize) -> Option<&Tensor> {
        self.got.get(&stream)
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
    fn additions_land_at_each_rows_offset() {
        let dev = Device::Cpu;
        let add = [Addition::new(HookPoint::ResidPre(1), 2, vec![1f32, 2., 3., 4.])];
        let rows: [&[Addition]; 2] = [&[], &add];
        let a = Additions::build(&rows, &[0, 1], 4, 2, DType::F32, &dev).unwrap().unwrap();
        let delta = a.at_stream(1).unwrap().to_vec3::<f32>().unwrap();
        assert_eq!(delta[0], vec![vec![0., 0.]; 4]);
        assert_eq!(delta[1], vec![vec![0., 0.], vec![1., 2.], vec![3., 4.], vec![0., 0.]]);
        assert!(a.at_stream(0).is_none());
        let none: [&[Addition]; 2] = [&[], &[]];
        assert!(Additions::build(&none, &[0, 0], 4, 2, DType::F32, &dev).unwrap().is_none());
    }

    #[test]
    fn all_positions_directions_cover_every_real_position_and_each_decode_step() {
        let dev = Device::Cpu;
        let dir = [Addition::all_positions(HookPoint::BlockOutput(0), vec![1f32, -1.]), Addition::new(HookPoint::ResidPre(1), 1, vec![5f32, 5.])];
        let rows: [&[Addition]; 2] = [&dir, &[]];
        let a = Additions::build(&rows, &[1, 0], 3, 2, DType::F32, &dev).unwrap().unwrap();
        let delta = a.at_stream(1).unwrap().to_vec3::<f32>().unwrap();
        // Row 0 is left-padded by one: the padding gets nothing; the prefix addition lands once.
        assert_eq!(delta[0], vec![vec![0., 0.], vec![6., 4.], vec![1., -1.]]);
        assert_eq!(delta[1], vec![vec![0., 0.]; 3]);
        let step = Additions::decode(&rows, 2, DType::F32, &dev).unwrap().unwrap();
        assert_eq!(step.at_stream(1).unwrap().to_vec2::<f32>().unwrap(), vec![vec![1., -1.], vec![0., 0.]]);
        let prefix_only: [&[Addition]; 1] = [&dir[1..]];
        assert!(Additions::decode(&prefix_only, 2, DType::F32, &dev).unwrap().is_none());
    }
}
