//! What a forward pass can do at a hook point: capture the activations, or steer them with
//! [`Addition`]s (ADD a tensor, ABLATE or CLAMP a direction, each over a [`Window`] of
//! positions). The points themselves ([`HookPoint`], [`HookKind`]), windows and ops are the
//! shared vocabulary of `steer-hooks`, re-exported here.
//!
//! At one stream the ops run in [`Op::rank`] order: every ADD (one summed delta), then each
//! ABLATE, then each CLAMP, each kind in the order given.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

use crate::error::Result;
pub use steer_hooks::{HookKind, HookPoint, Op, ParseError, Window};

/// Largest magnitude a steering value may have. Far beyond any useful steering (GPT-2-XL's
/// residual stream norms are in the hundreds to thousands), and small enough that a layer norm's
/// sum of squares over d_model stays finite in f32 (a 3e38 value would make it Inf, then NaN).
pub const MAX_STEERING_ABS: f32 = 1e7;

/// One steering operation of one row: f32 values, row-major on the host, applied at `hook` by
/// `op` over the positions of `window`. The values are shared (`Arc`) by every row that
/// carries them. (The name is ActAdd's; ABLATE and CLAMP are steering operations too.)
///
/// The engine trusts its additions: the services validate them once, at their edge (layer in
/// range, `k <= prompt length` for a prefix, `k = 1` for every other window, values finite and
/// within [`MAX_STEERING_ABS`], no zero direction); the engine only `debug_assert`s.
#[derive(Debug, Clone)]
pub struct Addition {
    pub hook: HookPoint,
    /// Rows of `values`: positions covered by a prefix, else 1.
    pub k: usize,
    /// `k * d_model` values (unit rows for ABLATE and CLAMP: [`Addition::with_op`]).
    pub values: Arc<[f32]>,
    pub window: Window,
    pub op: Op,
}

impl Addition {
    /// An ActAdd (prefix) addition of `k` positions.
    pub fn new(hook: HookPoint, k: usize, values: impl Into<Arc<[f32]>>) -> Self {
        let values = values.into();
        debug_assert!(k > 0 && values.len() % k == 0, "{} values for k = {k}", values.len());
        Self { hook, k, values, window: Window::Prefix, op: Op::Add }
    }

    /// A `[1, d_model]` direction added at every position.
    pub fn all_positions(hook: HookPoint, values: impl Into<Arc<[f32]>>) -> Self {
        Self::new(hook, 1, values).in_window(Window::AllPositions)
    }

    /// The same tensor over another window (a prefix keeps its k rows; any other window takes
    /// one `[1, d]` direction).
    pub fn in_window(self, window: Window) -> Self {
        debug_assert!(window.positional() || self.k == 1, "a {window} window takes a [1, d_model] direction");
        Self { window, ..self }
    }

    /// The same tensor as `op`: ABLATE and CLAMP use each row normalised to unit length (a
    /// zero row stays zero and does nothing; the services refuse one).
    pub fn with_op(self, op: Op) -> Self {
        let values = match op.projects() {
            true => unit_rows(&self.values, self.k).into(),
            false => self.values,
        };
        Self { op, values, ..self }
    }

    /// From a `[k, d]` tensor of any float dtype (e.g. a capture).
    pub fn from_tensor(hook: HookPoint, t: &Tensor) -> Result<Self> {
        let (k, _) = t.dims2()?;
        let values = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        Ok(Self::new(hook, k, values))
    }

    /// True when both carry the very same values (shared, not compared element by element).
    pub fn same_as(&self, other: &Addition) -> bool {
        self.hook == other.hook && self.k == other.k && self.window == other.window && self.op == other.op && Arc::ptr_eq(&self.values, &other.values)
    }

    /// The positions it acts on in a row whose prompt has `prompt_len` tokens: `start..end`.
    pub fn span(&self, prompt_len: usize) -> (usize, Option<usize>) {
        self.window.span(self.k, prompt_len)
    }

    /// Whether it acts on any generated token (a decode step) of a row with that prompt.
    pub fn reaches_decode(&self, prompt_len: usize) -> bool {
        self.span(prompt_len).1.is_none_or(|end| end > prompt_len)
    }

    /// Whether it acts on some position of the prompt.
    pub fn touches_prompt(&self, prompt_len: usize) -> bool {
        self.span(prompt_len).0 < prompt_len
    }

    /// The values for position `pos` of the span (row `pos` of a prefix, else the direction).
    fn row(&self, pos: usize, d: usize) -> &[f32] {
        let i = if self.window.positional() { pos } else { 0 };
        &self.values[i * d..(i + 1) * d]
    }
}

/// Each of the `k` rows of `values` divided by its norm (computed in f64); zero rows stay zero.
pub fn unit_rows(values: &[f32], k: usize) -> Vec<f32> {
    let d = values.len() / k.max(1);
    values
        .chunks(d.max(1))
        .flat_map(|r| {
            let norm = r.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>().sqrt();
            r.iter().map(move |&v| if norm > 0.0 { (f64::from(v) / norm) as f32 } else { 0.0 })
        })
        .collect()
}

/// An ABLATE or CLAMP over positions `t0..t1` of one row of a part (`x` rows `row * t + i`).
#[derive(Debug, Clone)]
struct Projection {
    row: usize,
    t0: usize,
    t1: usize,
    /// Local index of the row's absolute position 0 (a prefix's direction i sits at
    /// `origin + i`); negative once a chunk starts past it.
    origin: isize,
    positional: bool,
    d: usize,
    dirs: Arc<[f32]>,
    /// CLAMP's value (0 for ABLATE).
    value: f32,
    rank: u8,
}

impl Projection {
    fn dir(&self, i: usize) -> &[f32] {
        let j = if self.positional { (i as isize - self.origin) as usize } else { 0 };
        &self.dirs[j * self.d..(j + 1) * self.d]
    }
}

/// The steering of one batched forward, resolved per stream: a `[B, T, d]` delta (a `[B, d]`
/// one for a decode step) that is zero for unsteered rows, padding and positions outside each
/// ADD's window, and the ABLATEs and CLAMPs in the order they run.
#[derive(Debug, Clone, Default)]
pub struct Additions {
    deltas: BTreeMap<usize, Tensor>,
    projections: BTreeMap<usize, Vec<Projection>>,
    /// Positions per row of the forward (`T`; 1 for a decode step).
    t: usize,
}

impl Additions {
    /// `rows[b]` are row b's additions; `offsets[b]` is where its first real token sits (left
    /// padding), so local index `i` is its absolute position `i - offsets[b]`; `prompt_lens[b]`
    /// is its prompt's length (where GENERATED windows begin). Returns `None` when no row
    /// steers any position, so a plain forward pays nothing.
    pub fn build(
        rows: &[&[Addition]],
        offsets: &[usize],
        prompt_lens: &[usize],
        seq_len: usize,
        d_model: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<Option<Self>> {
        let b = rows.len();
        let mut host: BTreeMap<usize, Vec<f32>> = BTreeMap::new();
        let mut projections: BTreeMap<usize, Vec<Projection>> = BTreeMap::new();
        for (row, adds) in rows.iter().enumerate() {
            let len = seq_len - offsets[row];
            for add in adds.iter() {
                debug_assert_eq!(add.values.len(), add.k * d_model, "steering tensor at {} is not [k, d_model]", add.hook);
                let (start, end) = add.span(prompt_lens[row]);
                let end = end.map_or(len, |e| e.min(len));
                if start >= end {
                    continue;
                }
                debug_assert!(!add.window.positional() || add.k <= len, "steering tensor longer than row {row}'s prompt");
                let (t0, t1) = (offsets[row] + start, offsets[row] + end);
                if add.op.projects() {
                    let p = projection(add, row, t0, t1, offsets[row] as isize, d_model);
                    projections.entry(add.hook.stream()).or_default().push(p);
                    continue;
                }
                let delta = host.entry(add.hook.stream()).or_insert_with(|| vec![0f32; b * seq_len * d_model]);
                for (i, pos) in delta[(row * seq_len + t0) * d_model..(row * seq_len + t1) * d_model].chunks_mut(d_model).enumerate() {
                    for (dst, src) in pos.iter_mut().zip(add.row(start + i, d_model)) {
                        *dst += src;
                    }
                }
            }
        }
        Self::from_host(host, projections, &[b, seq_len, d_model], seq_len, dtype, device)
    }

    /// The steering of one decode step: row b's token sits at absolute position
    /// `positions[b]` after a prompt of `prompt_lens[b]` tokens; every addition whose window
    /// covers that position acts (`[B, d]` per stream). `None` when none does.
    pub fn decode(
        rows: &[&[Addition]],
        positions: &[usize],
        prompt_lens: &[usize],
        d_model: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<Option<Self>> {
        let b = rows.len();
        let mut host: BTreeMap<usize, Vec<f32>> = BTreeMap::new();
        let mut projections: BTreeMap<usize, Vec<Projection>> = BTreeMap::new();
        for (row, adds) in rows.iter().enumerate() {
            let pos = positions[row];
            for add in adds.iter() {
                let (start, end) = add.span(prompt_lens[row]);
                if pos < start || end.is_some_and(|e| pos >= e) {
                    continue;
                }
                if add.op.projects() {
                    let p = projection(add, row, 0, 1, -(pos as isize), d_model);
                    projections.entry(add.hook.stream()).or_default().push(p);
                    continue;
                }
                let delta = host.entry(add.hook.stream()).or_insert_with(|| vec![0f32; b * d_model]);
                for (dst, src) in delta[row * d_model..(row + 1) * d_model].iter_mut().zip(add.row(pos - start, d_model)) {
                    *dst += src;
                }
            }
        }
        Self::from_host(host, projections, &[b, d_model], 1, dtype, device)
    }

    fn from_host(
        host: BTreeMap<usize, Vec<f32>>,
        mut projections: BTreeMap<usize, Vec<Projection>>,
        shape: &[usize],
        t: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<Option<Self>> {
        if host.is_empty() && projections.is_empty() {
            return Ok(None);
        }
        let mut deltas = BTreeMap::new();
        for (stream, v) in host {
            deltas.insert(stream, Tensor::from_vec(v, shape, device)?.to_dtype(dtype)?);
        }
        for p in projections.values_mut() {
            p.sort_by_key(|p| p.rank); // stable: each kind in the order given
        }
        Ok(Some(Self { deltas, projections, t }))
    }

    /// The ADD delta at `stream`.
    pub fn at_stream(&self, stream: usize) -> Option<&Tensor> {
        self.deltas.get(&stream)
    }

    /// Whether anything acts at `stream`.
    pub fn acts_at(&self, stream: usize) -> bool {
        self.deltas.contains_key(&stream) || self.projections.contains_key(&stream)
    }

    /// `x` (`[rows * t, d]`, the part's rows at `stream`) steered: the delta added, then each
    /// ABLATE and CLAMP at its positions (in f64 on the host: x <- x - (x . u - c) u).
    pub fn apply(&self, stream: usize, x: Tensor) -> Result<Tensor> {
        let (n, d) = x.dims2()?;
        let x = match self.deltas.get(&stream) {
            Some(delta) => (x + delta.reshape((n, d))?)?,
            None => x,
        };
        let Some(projs) = self.projections.get(&stream) else { return Ok(x) };
        let device = x.device().clone();
        let mut v = x.flatten_all()?.to_vec1::<f32>()?;
        for p in projs {
            for i in p.t0..p.t1 {
                let at = (p.row * self.t + i) * d;
                let x = &mut v[at..at + d];
                let u = p.dir(i);
                let dot: f64 = x.iter().zip(u).map(|(&a, &b)| f64::from(a) * f64::from(b)).sum();
                let c = dot - f64::from(p.value);
                for (xj, &uj) in x.iter_mut().zip(u) {
                    *xj = (f64::from(*xj) - c * f64::from(uj)) as f32;
                }
            }
        }
        Ok(Tensor::from_vec(v, (n, d), &device)?)
    }

    /// Positions `start..start + len` of every delta and projection (a chunk of a prefill).
    pub fn window(&self, start: usize, len: usize) -> Result<Self> {
        let deltas = self.deltas.iter().map(|(&s, t)| Ok((s, t.narrow(1, start, len)?))).collect::<Result<_>>()?;
        let projections = self
            .projections
            .iter()
            .map(|(&s, ps)| {
                let clipped = ps
                    .iter()
                    .filter_map(|p| {
                        let (t0, t1) = (p.t0.max(start), p.t1.min(start + len));
                        (t0 < t1).then(|| Projection { t0: t0 - start, t1: t1 - start, origin: p.origin - start as isize, ..p.clone() })
                    })
                    .collect::<Vec<_>>();
                (s, clipped)
            })
            .filter(|(_, ps)| !ps.is_empty())
            .collect();
        Ok(Self { deltas, projections, t: len })
    }
}

fn projection(add: &Addition, row: usize, t0: usize, t1: usize, origin: isize, d: usize) -> Projection {
    let value = match add.op {
        Op::Clamp { value } => value,
        _ => 0.0,
    };
    Projection { row, t0, t1, origin, positional: add.window.positional(), d, dirs: add.values.clone(), value, rank: add.op.rank() }
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
        let a = Additions::build(&rows, &[0, 1], &[4, 3], 4, 2, DType::F32, &dev).unwrap().unwrap();
        let delta = a.at_stream(1).unwrap().to_vec3::<f32>().unwrap();
        assert_eq!(delta[0], vec![vec![0., 0.]; 4]);
        assert_eq!(delta[1], vec![vec![0., 0.], vec![1., 2.], vec![3., 4.], vec![0., 0.]]);
        assert!(a.at_stream(0).is_none());
        let none: [&[Addition]; 2] = [&[], &[]];
        assert!(Additions::build(&none, &[0, 0], &[4, 4], 4, 2, DType::F32, &dev).unwrap().is_none());
    }

    #[test]
    fn all_positions_directions_cover_every_real_position_and_each_decode_step() {
        let dev = Device::Cpu;
        let dir = [Addition::all_positions(HookPoint::BlockOutput(0), vec![1f32, -1.]), Addition::new(HookPoint::ResidPre(1), 1, vec![5f32, 5.])];
        let rows: [&[Addition]; 2] = [&dir, &[]];
        let a = Additions::build(&rows, &[1, 0], &[2, 3], 3, 2, DType::F32, &dev).unwrap().unwrap();
        let delta = a.at_stream(1).unwrap().to_vec3::<f32>().unwrap();
        // Row 0 is left-padded by one: the padding gets nothing; the prefix addition lands once.
        assert_eq!(delta[0], vec![vec![0., 0.], vec![6., 4.], vec![1., -1.]]);
        assert_eq!(delta[1], vec![vec![0., 0.]; 3]);
        let step = Additions::decode(&rows, &[2, 3], &[2, 3], 2, DType::F32, &dev).unwrap().unwrap();
        assert_eq!(step.at_stream(1).unwrap().to_vec2::<f32>().unwrap(), vec![vec![1., -1.], vec![0., 0.]]);
        let prefix_only: [&[Addition]; 1] = [&dir[1..]];
        assert!(Additions::decode(&prefix_only, &[2], &[2], 2, DType::F32, &dev).unwrap().is_none());
    }

    #[test]
    fn windows_cover_their_positions_in_the_prefill_and_the_decode_steps() {
        let dev = Device::Cpu;
        let gen = [Addition::all_positions(HookPoint::ResidPre(0), vec![1f32]).in_window(Window::Generated)];
        let range = [Addition::all_positions(HookPoint::ResidPre(0), vec![2f32]).in_window(Window::Range { start: 1, end: Some(4) })];
        let rows: [&[Addition]; 2] = [&gen, &range];
        // Row 0 is left-padded by one; its prompt is 2 tokens, so GENERATED touches none of it.
        let a = Additions::build(&rows, &[1, 0], &[2, 3], 3, 1, DType::F32, &dev).unwrap().unwrap();
        assert_eq!(a.at_stream(0).unwrap().to_vec3::<f32>().unwrap(), vec![vec![vec![0.]; 3], vec![vec![0.], vec![2.], vec![2.]]]);
        // Decode: position 3 is in both; position 4 is past the range's end.
        let step = Additions::decode(&rows, &[3, 3], &[2, 3], 1, DType::F32, &dev).unwrap().unwrap();
        assert_eq!(step.at_stream(0).unwrap().to_vec2::<f32>().unwrap(), vec![vec![1.], vec![2.]]);
        let step = Additions::decode(&rows, &[4, 4], &[2, 3], 1, DType::F32, &dev).unwrap().unwrap();
        assert_eq!(step.at_stream(0).unwrap().to_vec2::<f32>().unwrap(), vec![vec![1.], vec![0.]]);
        assert!(gen[0].reaches_decode(2) && !gen[0].touches_prompt(2));
        assert!(!range[0].reaches_decode(4) && range[0].reaches_decode(3));
    }

    #[test]
    fn ops_run_add_then_ablate_then_clamp_at_their_positions_and_chunks_keep_them() {
        let dev = Device::Cpu;
        let hook = HookPoint::ResidPre(0);
        // Given clamp first: it still runs last. u = (0.6, 0.8) after normalising (3, 4).
        let ops = [
            Addition::all_positions(hook, vec![3f32, 4.]).with_op(Op::Clamp { value: 2.0 }).in_window(Window::Range { start: 1, end: None }),
            Addition::all_positions(hook, vec![0f32, 5.]).with_op(Op::Ablate),
            Addition::all_positions(hook, vec![10f32, 0.]),
        ];
        let rows: [&[Addition]; 1] = [&ops];
        let a = Additions::build(&rows, &[0], &[3], 3, 2, DType::F32, &dev).unwrap().unwrap();
        assert!(a.acts_at(0) && !a.acts_at(1));
        let x = Tensor::new(&[[1f32, 1.], [1., 1.], [2., -3.]], &dev).unwrap();
        let y = a.apply(0, x.clone()).unwrap().to_vec2::<f32>().unwrap();
        // Position 0: + (10, 0), then the y component ablated; no clamp there.
        assert_eq!(y[0], vec![11., 0.]);
        // Positions 1, 2: the same, then the component along u set to 2.
        for (i, r) in y.iter().enumerate().skip(1) {
            let x0 = [1f32, 1., 2.][i] + 10.;
            let dot = 0.6 * x0 as f64;
            let want = [x0 as f64 - (dot - 2.0) * 0.6, -(dot - 2.0) * 0.8];
            assert!((r[0] as f64 - want[0]).abs() < 1e-5 && (r[1] as f64 - want[1]).abs() < 1e-5, "{r:?} vs {want:?}");
            assert!(((r[0] * 0.6 + r[1] * 0.8) - 2.0).abs() < 1e-5);
        }
        // A chunk of positions 1..3 gives the same rows.
        let c = a.window(1, 2).unwrap().apply(0, x.narrow(0, 1, 2).unwrap()).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(c, y[1..].to_vec());
    }

    #[test]
    fn a_positional_ablation_uses_row_i_at_position_i_and_zero_rows_stay_zero() {
        let dev = Device::Cpu;
        let abl = [Addition::new(HookPoint::BlockOutput(0), 2, vec![2f32, 0., 0., 0.]).with_op(Op::Ablate)];
        assert_eq!(&abl[0].values[..], &[1., 0., 0., 0.]);
        let rows: [&[Addition]; 1] = [&abl];
        let a = Additions::build(&rows, &[1], &[3], 4, 2, DType::F32, &dev).unwrap().unwrap();
        let x = Tensor::new(&[[5f32, 5.], [5., 5.], [5., 5.], [5., 5.]], &dev).unwrap();
        let y = a.apply(1, x).unwrap().to_vec2::<f32>().unwrap();
        // Padding (0) untouched, position 0 loses its first component, position 1's row is zero.
        assert_eq!(y, vec![vec![5., 5.], vec![0., 5.], vec![5., 5.], vec![5., 5.]]);
        // Chunked from position 1 on, the directions stay with their positions.
        let w = a.window(2, 2).unwrap().apply(1, Tensor::new(&[[5f32, 5.], [5., 5.]], &dev).unwrap()).unwrap();
        assert_eq!(w.to_vec2::<f32>().unwrap(), vec![vec![5., 5.], vec![5., 5.]]);
    }
}
