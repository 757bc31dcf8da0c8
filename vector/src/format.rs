//! The vector file: safetensors with one `[k, d_model]` f32 tensor per hook point and JSON
//! metadata under the `steer` key (its `format` field names the format).
//!
//! The digest is SHA-256 over what steers: the format name, the mode, the op (when not ADD), and
//! each tensor's name,
//! shape and little-endian f32 bytes in point order. Names, prompts and other metadata do not
//! change it, so two files that steer the same way have the same digest, and a file whose bytes
//! were damaged fails to load.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use steer_hooks::{HookKind, HookPoint, Op, Window};
use steer_proto::v1;

use crate::error::{Result, VectorError};

/// Written in the file's metadata; a reader refuses any other.
pub const FORMAT: &str = "steer.vector/1";

/// One tensor of a vector: `k` positions of `d` values, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct VectorTensor {
    pub point: HookPoint,
    pub k: usize,
    pub values: Vec<f32>,
}

impl VectorTensor {
    pub fn d(&self) -> usize {
        self.values.len() / self.k.max(1)
    }

    /// L2 norm over all values.
    pub fn norm(&self) -> f32 {
        self.values.iter().map(|v| (*v as f64) * (*v as f64)).sum::<f64>().sqrt() as f32
    }

    /// L2 norm of each position's vector.
    pub fn position_norms(&self) -> Vec<f32> {
        self.values.chunks(self.d().max(1)).map(|r| r.iter().map(|v| (*v as f64) * (*v as f64)).sum::<f64>().sqrt() as f32).collect()
    }
}

/// The model a vector was made for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ModelRef {
    /// Hub repo id or local directory ("" when unknown, e.g. from a GGUF control vector).
    pub name: String,
    #[serde(default)]
    pub revision: String,
    pub d_model: u32,
    /// 0 when unknown.
    pub n_layer: u32,
    /// `gpt2` ("" when unknown: files written before it was recorded, GGUF control vectors).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub architecture: String,
    /// The weights' fingerprint (ModelInfo.weights_fingerprint; "" when unknown).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub fingerprint: String,
}

/// One ActAdd term as it was computed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdditionMeta {
    pub prompt: String,
    pub coeff: f64,
    pub layer: u32,
    /// Token ids as added, after BOS and padding.
    pub tokens: Vec<u32>,
    /// Space tokens appended.
    pub padding: u32,
}

/// Where a vector came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Origin {
    /// ActAdd: per layer, sum of coeff * activation(prompt), the prompts at one layer
    /// right-padded with `pad_token` to equal length.
    ActAdd { additions: Vec<AdditionMeta>, use_bos: bool, strict_lengths: bool, pad_token: u32 },
    /// Mean over `pairs` contrast pairs of reduce(act(positive)) - reduce(act(negative)).
    MeanDifference { pairs: usize, reduction: String, use_bos: bool },
    /// Read from a llama.cpp control-vector GGUF.
    Gguf { model_hint: String, layer_count: u32 },
    /// Decoder rows of a sparse autoencoder (SAELens layout): the sum of `scale` x
    /// `W_dec[f]` over `features` (or their unit direction, clamped).
    Sae {
        /// cfg.json's `model_name`, `hook_name`, `d_sae` (and where it was read from).
        model_name: String,
        hook_name: String,
        d_sae: u32,
        source: String,
        features: Vec<u32>,
        scale: f64,
        /// SHA-256 (64 hex digits) of the used rows of W_dec as f32 little-endian, in
        /// `features` order: which decoder these features came from.
        w_dec_digest: String,
    },
}

/// Per-tensor metadata (derived from the tensors; written for readers of the JSON alone).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TensorMeta {
    pub name: String,
    pub hook: HookKind,
    pub layer: u32,
    pub k: usize,
    pub norm: f32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metadata {
    pub format: String,
    pub name: String,
    pub model: ModelRef,
    /// The window (`prefix`, `all_positions`, `generated`, `A-B`, `A-`).
    pub mode: Window,
    /// What the tensors do (`add`, `ablate`, `clamp=C`); files without it are ADD.
    #[serde(default, skip_serializing_if = "is_add")]
    pub op: Op,
    pub origin: Origin,
    pub tensors: Vec<TensorMeta>,
    /// 64 hex digits (see the module doc).
    pub digest: String,
    pub created_by: String,
}

/// A steering vector: tensors in point order and their metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct SteeringVector {
    pub meta: Metadata,
    pub tensors: Vec<VectorTensor>,
}

impl SteeringVector {
    /// Checks the tensors (`d_model` values per position, `k = 1` for all_positions, one per
    /// point, finite) and computes the derived metadata and digest.
    pub fn new(name: impl Into<String>, model: ModelRef, mode: Window, origin: Origin, mut tensors: Vec<VectorTensor>) -> Result<Self> {
        if tensors.is_empty() {
            return Err(VectorError::invalid("tensors", "a vector needs at least one tensor"));
        }
        tensors.sort_by_key(|t| t.point);
        let d = model.d_model as usize;
        for (i, t) in tensors.iter().enumerate() {
            let field = format!("tensors[{i}]");
            if t.k == 0 || d == 0 || t.values.len() != t.k * d {
                return Err(VectorError::invalid(field, format!("{}: {} values for k = {} and d_model = {d}", t.point, t.values.len(), t.k)));
            }
            if !mode.positional() && t.k != 1 {
                return Err(VectorError::invalid(field, format!("{}: a {mode} vector is [1, d_model], not [{}, {d}]", t.point, t.k)));
            }
            if model.n_layer > 0 {
                t.point.check(model.n_layer as usize).map_err(|e| VectorError::invalid(&field, e.to_string()))?;
            }
            if i > 0 && tensors[i - 1].point == t.point {
                return Err(VectorError::invalid(field, format!("{}: two tensors at one point", t.point)));
            }
            if t.values.iter().any(|v| !v.is_finite()) {
                return Err(VectorError::invalid(field, format!("{}: NaN or Inf", t.point)));
            }
        }
        let meta = Metadata {
            format: FORMAT.into(),
            name: name.into(),
            model,
            mode,
            op: Op::Add,
            origin,
            tensors: tensors
                .iter()
                .map(|t| TensorMeta { name: t.point.to_string(), hook: t.point.kind(), layer: t.point.layer() as u32, k: t.k, norm: t.norm() })
                .collect(),
            digest: digest(mode, Op::Add, &tensors),
            created_by: format!("steer {}", env!("CARGO_PKG_VERSION")),
        };
        Ok(Self { meta, tensors })
    }

    pub fn digest(&self) -> &str {
        &self.meta.digest
    }

    pub fn mode(&self) -> Window {
        self.meta.mode
    }

    pub fn op(&self) -> Op {
        self.meta.op
    }

    /// The same tensors as `op` (ABLATE and CLAMP take each row's direction: a zero row is
    /// refused, naming its tensor).
    pub fn with_op(mut self, op: Op) -> Result<Self> {
        if op.projects() {
            for (i, t) in self.tensors.iter().enumerate() {
                if let Some(p) = t.position_norms().iter().position(|&n| n == 0.0) {
                    return Err(VectorError::invalid(
                        format!("tensors[{i}]"),
                        format!("{}: row {p} is zero, it has no direction to {}", t.point, op.name()),
                    ));
                }
            }
        }
        self.meta.op = op;
        self.meta.digest = digest(self.meta.mode, op, &self.tensors);
        Ok(self)
    }

    /// The same tensors over another window (every window but a prefix takes `[1, d_model]`
    /// tensors).
    pub fn in_window(self, mode: Window) -> Result<Self> {
        let op = self.meta.op;
        let m = self.meta;
        Self::new(m.name, m.model, mode, m.origin, self.tensors)?.with_op(op)
    }

    /// The same tensors under another name.
    pub fn renamed(mut self, name: impl Into<String>) -> Self {
        self.meta.name = name.into();
        self
    }

    /// The safetensors bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let bytes: Vec<Vec<u8>> = self.tensors.iter().map(|t| le_bytes(&t.values)).collect();
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = self
            .tensors
            .iter()
            .zip(&bytes)
            .map(|(t, b)| {
                let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![t.k, t.d()], b).expect("shape matches");
                (t.point.to_string(), view)
            })
            .collect();
        // One key (the format is inside): a HashMap of several would serialise in a different
        // order each time, and the same vector must give the same bytes.
        let info = HashMap::from([("steer".to_string(), serde_json::to_string(&self.meta).expect("metadata serialises"))]);
        safetensors::serialize(views, Some(info)).expect("in-memory serialisation")
    }

    /// Reads and checks a vector file's bytes: the format, every tensor against the metadata,
    /// and the digest.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| VectorError::invalid("file", format!("not a safetensors file: {e}")))?;
        let (_, header) = safetensors::SafeTensors::read_metadata(bytes).map_err(|e| VectorError::invalid("file", e.to_string()))?;
        let info = header.metadata().clone().unwrap_or_default();
        let format =
            info.get("steer").and_then(|m| serde_json::from_str::<serde_json::Value>(m).ok()).and_then(|m| m["format"].as_str().map(str::to_string));
        if format.as_deref() != Some(FORMAT) {
            return Err(VectorError::invalid("file", format!("not a steering vector file (no `steer` metadata of format {FORMAT})")));
        }
        let meta: Metadata = serde_json::from_str(info.get("steer").map(String::as_str).unwrap_or(""))
            .map_err(|e| VectorError::invalid("metadata", format!("unreadable: {e}")))?;
        if st.len() != meta.tensors.len() {
            return Err(VectorError::invalid("tensors", format!("{} tensors, the metadata lists {}", st.len(), meta.tensors.len())));
        }
        let mut tensors = vec![];
        for (i, m) in meta.tensors.iter().enumerate() {
            let field = format!("tensors[{i}]");
            let view = st.tensor(&m.name).map_err(|_| VectorError::invalid(&field, format!("`{}` listed but missing", m.name)))?;
            if view.dtype() != safetensors::Dtype::F32 || view.shape().len() != 2 || view.shape()[0] != m.k {
                return Err(VectorError::invalid(
                    field,
                    format!("`{}`: {:?} {:?}, expected F32 [{}, d_model]", m.name, view.dtype(), view.shape(), m.k),
                ));
            }
            let values = view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
            let point = m.name.parse::<HookPoint>().map_err(|e| VectorError::invalid(&field, e.to_string()))?;
            tensors.push(VectorTensor { point, k: m.k, values });
        }
        let checked = Self::new(meta.name.clone(), meta.model.clone(), meta.mode, meta.origin.clone(), tensors)?.with_op(meta.op)?;
        if checked.meta.digest != meta.digest {
            return Err(VectorError::invalid(
                "digest",
                format!("the tensors hash to {}, the file says {}: the file was altered", checked.meta.digest, meta.digest),
            ));
        }
        Ok(Self { meta: Metadata { created_by: meta.created_by, ..checked.meta }, tensors: checked.tensors })
    }

    /// Refuses a vector made for a model of another shape ([`SteeringVector::check_shape`]) or
    /// on other weights: another architecture, or another weights fingerprint, when both sides
    /// know it. The model's name is informative only (one checkpoint has many paths and files).
    pub fn check_model(&self, model: &ModelRef) -> Result<()> {
        self.check_shape(model)?;
        let mine = &self.meta.model;
        let known = |a: &str, b: &str| !a.is_empty() && !b.is_empty() && a != b;
        if known(&mine.architecture, &model.architecture) {
            return Err(VectorError::WrongModel {
                field: "model.architecture".into(),
                message: format!("the vector was made on a {} model, this is {}", mine.architecture, model.architecture),
            });
        }
        if known(&mine.fingerprint, &model.fingerprint) {
            return Err(VectorError::WrongModel {
                field: "model.fingerprint".into(),
                message: format!(
                    "the vector was made on other weights of this shape ({}, weights {}; these are {}, weights {}); \
                     --force-model (force_model) applies it anyway",
                    or_unknown(&mine.name),
                    mine.fingerprint,
                    or_unknown(&model.name),
                    model.fingerprint
                ),
            });
        }
        Ok(())
    }

    /// Refuses a vector whose shape the model cannot take: another d_model, another depth
    /// (when both are known), or a tensor at a layer the model does not have. `--force-model`
    /// skips the identity checks of [`SteeringVector::check_model`], never these.
    pub fn check_shape(&self, model: &ModelRef) -> Result<()> {
        let mine = &self.meta.model;
        if mine.d_model != model.d_model {
            return Err(VectorError::WrongModel {
                field: "model.d_model".into(),
                message: format!("the vector is for d_model {} ({}), the model has {}", mine.d_model, or_unknown(&mine.name), model.d_model),
            });
        }
        if mine.n_layer != 0 && model.n_layer != 0 && mine.n_layer != model.n_layer {
            return Err(VectorError::WrongModel {
                field: "model.n_layer".into(),
                message: format!("the vector is for {} layers ({}), the model has {}", mine.n_layer, or_unknown(&mine.name), model.n_layer),
            });
        }
        if let Some(t) = self.tensors.iter().find(|t| model.n_layer != 0 && t.point.check(model.n_layer as usize).is_err()) {
            return Err(VectorError::WrongModel {
                field: format!("tensors.{}", t.point),
                message: format!("layer {} does not exist in a {}-layer model", t.point.layer(), model.n_layer),
            });
        }
        Ok(())
    }

    /// [`SteeringVector::check_model`], or only [`SteeringVector::check_shape`] when `force`.
    pub fn check_model_or_shape(&self, model: &ModelRef, force: bool) -> Result<()> {
        if force {
            self.check_shape(model)
        } else {
            self.check_model(model)
        }
    }

    /// The tensors to apply: values times `scale`, only those whose layer is in `layers`
    /// (inclusive; all when `None`).
    pub fn applied(&self, scale: f32, layers: Option<(u32, u32)>) -> Vec<VectorTensor> {
        self.tensors
            .iter()
            .filter(|t| layers.is_none_or(|(a, b)| (a..=b).contains(&(t.point.layer() as u32))))
            .map(|t| VectorTensor { point: t.point, k: t.k, values: t.values.iter().map(|v| v * scale).collect() })
            .collect()
    }

    /// Longest tensor's positions.
    pub fn positions(&self) -> usize {
        self.tensors.iter().map(|t| t.k).max().unwrap_or(0)
    }

    /// The proto summary (`bytes`: the file's size).
    pub fn info(&self, bytes: u64) -> v1::VectorInfo {
        v1::VectorInfo {
            name: self.meta.name.clone(),
            digest: self.meta.digest.clone(),
            mode: steer_proto::hooks::wire_window(self.meta.mode).0,
            points: self.tensors.iter().map(|t| v1::HookPoint::from(t.point)).collect(),
            positions: self.positions() as u32,
            bytes,
            model: self.meta.model.name.clone(),
            d_model: self.meta.model.d_model,
            n_layer: self.meta.model.n_layer,
            metadata_json: serde_json::to_string(&self.meta).expect("metadata serialises"),
            norms: self.tensors.iter().map(VectorTensor::norm).collect(),
            op: steer_proto::hooks::wire_op(self.meta.op).0,
            clamp_value: steer_proto::hooks::wire_op(self.meta.op).1,
            window_start: steer_proto::hooks::wire_window(self.meta.mode).1,
            window_end: steer_proto::hooks::wire_window(self.meta.mode).2,
        }
    }

    /// A human-readable summary: metadata and per-layer norms.
    pub fn describe(&self) -> String {
        use std::fmt::Write;
        let m = &self.meta;
        let mut s = String::new();
        let _ = writeln!(s, "name      {}", m.name);
        let _ = writeln!(s, "digest    {}", m.digest);
        let mut model = vec![];
        if !m.model.architecture.is_empty() {
            model.push(m.model.architecture.clone());
        }
        model.push(format!("d_model {}", m.model.d_model));
        model.push(if m.model.n_layer == 0 { "layers not recorded".into() } else { format!("{} layers", m.model.n_layer) });
        if !m.model.fingerprint.is_empty() {
            model.push(format!("weights {}", m.model.fingerprint));
        }
        if !m.model.revision.is_empty() {
            model.push(format!("rev {}", m.model.revision));
        }
        let name = if m.model.name.is_empty() { "not recorded" } else { &m.model.name };
        let _ = writeln!(s, "model     {name} ({})", model.join(", "));
        let _ = writeln!(s, "mode      {}", m.mode);
        let _ = writeln!(s, "op        {}", m.op);
        match &m.origin {
            Origin::ActAdd { additions, use_bos, strict_lengths, pad_token } => {
                let _ = writeln!(
                    s,
                    "origin    ActAdd: {} additions, BOS {use_bos}, strict lengths {strict_lengths}, pad token {pad_token}",
                    additions.len()
                );
                for a in additions {
                    let _ = writeln!(
                        s,
                        "          layer {:>3} coeff {:>+8.3} {:?} tokens {:?} (+{} pad)",
                        a.layer, a.coeff, a.prompt, a.tokens, a.padding
                    );
                }
            }
            Origin::MeanDifference { pairs, reduction, use_bos } => {
                let _ = writeln!(s, "origin    mean difference over {pairs} contrast pairs, {reduction}, BOS {use_bos}");
            }
            Origin::Gguf { model_hint, layer_count } => {
                let _ = writeln!(s, "origin    llama.cpp control vector (model_hint {model_hint:?}, layer_count {layer_count})");
            }
            Origin::Sae { model_name, hook_name, d_sae, source, features, scale, w_dec_digest } => {
                let _ = writeln!(s, "origin    SAE {source} ({model_name}, {hook_name}, d_sae {d_sae}): features {features:?}, scale {scale}");
                let _ = writeln!(s, "          W_dec rows digest {w_dec_digest}");
            }
        }
        let _ = writeln!(s, "{:<18} {:>4} {:>12}  position norms", "tensor", "k", "norm");
        for t in &self.tensors {
            let norms: Vec<String> = t.position_norms().iter().map(|n| format!("{n:.3}")).collect();
            let _ = writeln!(s, "{:<18} {:>4} {:>12.4}  [{}]", t.point.to_string(), t.k, t.norm(), norms.join(", "));
        }
        s
    }
}

fn or_unknown(s: &str) -> &str {
    if s.is_empty() {
        "?"
    } else {
        s
    }
}

/// Little-endian f32 bytes (the files' and the digest's byte order on any host).
fn le_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn is_add(op: &Op) -> bool {
    *op == Op::Add
}

/// SHA-256 over the format, the mode, the op (when not ADD: files from before ops keep their
/// digests) and each tensor's name, shape and bytes, in point order.
fn digest(mode: Window, op: Op, tensors: &[VectorTensor]) -> String {
    let mut h = Sha256::new();
    h.update(FORMAT.as_bytes());
    h.update(b"\n");
    h.update(mode.to_string().as_bytes());
    h.update(b"\n");
    if op != Op::Add {
        h.update(format!("op {op}\n").as_bytes());
    }
    for t in tensors {
        h.update(format!("{} {} {}\n", t.point, t.k, t.d()).as_bytes());
        h.update(le_bytes(&t.values));
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn model() -> ModelRef {
        ModelRef {
            name: "fixtures/tiny-gpt2".into(),
            revision: "main".into(),
            d_model: 4,
            n_layer: 3,
            architecture: "gpt2".into(),
            fingerprint: "0123456789abcdef".into(),
        }
    }

    pub fn actadd() -> SteeringVector {
        let origin = Origin::ActAdd {
            additions: vec![AdditionMeta { prompt: "Love".into(), coeff: 5.0, layer: 1, tokens: vec![50256, 1, 2], padding: 0 }],
            use_bos: true,
            strict_lengths: false,
            pad_token: 220,
        };
        let tensors = vec![
            VectorTensor { point: HookPoint::ResidPre(2), k: 1, values: vec![0.5, -1.0, 2.0, 0.0] },
            VectorTensor { point: HookPoint::ResidPre(1), k: 2, values: (0..8).map(|i| i as f32 * 0.25).collect() },
        ];
        SteeringVector::new("love", model(), Window::Prefix, origin, tensors).unwrap()
    }

    #[test]
    fn files_from_before_ops_read_as_add_with_their_digests_and_ops_change_the_digest() {
        let v = actadd();
        // The digest of a file written before ops existed: format, mode, tensors.
        let mut h = Sha256::new();
        h.update(format!("{FORMAT}\nprefix\n").as_bytes());
        for t in &v.tensors {
            h.update(format!("{} {} {}\n", t.point, t.k, t.d()).as_bytes());
            h.update(le_bytes(&t.values));
        }
        let old: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(v.digest(), old);
        // Its metadata has no `op` (an ADD file is written as before), and reads back as ADD.
        let json = serde_json::to_value(&v.meta).unwrap();
        assert!(json.get("op").is_none(), "{json}");
        let back = SteeringVector::from_bytes(&v.to_bytes()).unwrap();
        assert_eq!((back.op(), back.digest()), (Op::Add, old.as_str()));
        // An ABLATE of the same tensors is another vector; a zero row has no direction.
        let ablate = v.clone().with_op(Op::Ablate).unwrap();
        assert_ne!(ablate.digest(), v.digest());
        assert_eq!(SteeringVector::from_bytes(&ablate.to_bytes()).unwrap().op(), Op::Ablate);
        let zero = vec![VectorTensor { point: HookPoint::ResidPre(0), k: 1, values: vec![0.0; 4] }];
        let z = SteeringVector::new("z", model(), Window::AllPositions, v.meta.origin.clone(), zero).unwrap();
        let e = z.with_op(Op::Clamp { value: 1.0 }).unwrap_err().to_string();
        assert!(e.starts_with("tensors[0]: resid_pre.0: row 0 is zero"), "{e}");
    }

    #[test]
    fn round_trips_bytes_and_keeps_the_digest() {
        let v = actadd();
        assert_eq!(v.tensors[0].point, HookPoint::ResidPre(1), "tensors in point order");
        assert_eq!(v.digest().len(), 64);
        let back = SteeringVector::from_bytes(&v.to_bytes()).unwrap();
        assert_eq!(back, v);
        assert_eq!(back.to_bytes(), v.to_bytes(), "the same vector, the same bytes");
        // Names do not change the digest; values do.
        assert_eq!(v.clone().renamed("other").digest(), v.digest());
        let mut t = v.tensors.clone();
        t[1].values[0] += 1.0;
        let w = SteeringVector::new("love", model(), Window::Prefix, v.meta.origin.clone(), t).unwrap();
        assert_ne!(w.digest(), v.digest());
    }

    #[test]
    fn a_damaged_file_is_refused() {
        let v = actadd();
        let mut bytes = v.to_bytes();
        let n = bytes.len();
        bytes[n - 1] ^= 0x40; // last tensor byte
        let err = SteeringVector::from_bytes(&bytes).unwrap_err();
        assert!(err.to_string().starts_with("digest:"), "{err}");
        assert!(SteeringVector::from_bytes(b"not a file").unwrap_err().to_string().starts_with("file:"));
    }

    #[test]
    fn shapes_and_modes_are_checked() {
        let o = actadd().meta.origin;
        let bad = vec![VectorTensor { point: HookPoint::ResidPre(0), k: 2, values: vec![0.0; 8] }];
        let err = SteeringVector::new("x", model(), Window::AllPositions, o.clone(), bad).unwrap_err();
        assert!(err.to_string().contains("[1, d_model]"), "{err}");
        let bad = vec![VectorTensor { point: HookPoint::ResidPre(0), k: 1, values: vec![0.0; 5] }];
        assert!(SteeringVector::new("x", model(), Window::Prefix, o.clone(), bad).unwrap_err().to_string().starts_with("tensors[0]"));
        let bad = vec![VectorTensor { point: HookPoint::ResidPre(3), k: 1, values: vec![0.0; 4] }];
        assert!(SteeringVector::new("x", model(), Window::Prefix, o, bad).is_err());
    }

    #[test]
    fn other_models_are_refused_naming_the_field() {
        let v = actadd();
        v.check_model(&ModelRef { name: "/tmp/copy/tiny-gpt2/".into(), ..model() }).unwrap();
        let err = v.check_model(&ModelRef { d_model: 1600, ..model() }).unwrap_err();
        assert!(matches!(&err, VectorError::WrongModel { field, .. } if field == "model.d_model"), "{err}");
        let err = v.check_model(&ModelRef { n_layer: 48, ..model() }).unwrap_err();
        assert!(matches!(&err, VectorError::WrongModel { field, .. } if field == "model.n_layer"), "{err}");
        // The name is informative only: the same weights under another name or file pass.
        v.check_model(&ModelRef { name: "tiny-gpt2-f32.gguf".into(), ..model() }).unwrap();
        // Other weights of the same shape are refused, unless forced; an unknown fingerprint
        // (an older file, a GGUF control vector) is not compared.
        let other = ModelRef { fingerprint: "fedcba9876543210".into(), ..model() };
        let err = v.check_model(&other).unwrap_err();
        assert!(matches!(&err, VectorError::WrongModel { field, .. } if field == "model.fingerprint"), "{err}");
        assert!(err.to_string().contains("--force-model"), "{err}");
        v.check_model_or_shape(&other, true).unwrap();
        assert!(v.check_model_or_shape(&ModelRef { d_model: 1600, ..other.clone() }, true).is_err(), "forcing never skips the shape");
        v.check_model(&ModelRef { fingerprint: String::new(), ..other }).unwrap();
        let err = v.check_model(&ModelRef { architecture: "llama".into(), ..model() }).unwrap_err();
        assert!(matches!(&err, VectorError::WrongModel { field, .. } if field == "model.architecture"), "{err}");
    }

    #[test]
    fn applied_scales_and_selects_layers() {
        let v = actadd();
        let a = v.applied(2.0, Some((2, 5)));
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].values, vec![1.0, -2.0, 4.0, 0.0]);
        assert_eq!(v.applied(1.0, None).len(), 2);
        assert!(v.describe().contains("resid_pre.1"));
        assert_eq!("block_output.3".parse::<HookPoint>().unwrap().stream(), 4);
    }
}
