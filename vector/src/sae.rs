//! Sparse autoencoders as steering vectors: a feature's decoder row `W_dec[f]` is a direction in
//! the residual stream, steered with by adding `s x W_dec[f]` at every position, or by clamping
//! the component along it (Neuronpedia's steering, the "Golden Gate" demo).
//!
//! An SAE is read in SAELens's on-disk layout: a directory with `cfg.json` (`d_in`, `d_sae`,
//! `hook_name` such as `blocks.8.hook_resid_pre`, `model_name`; SAELens 6 keeps the last two
//! under `metadata`) and `sae_weights.safetensors` (`W_dec` `[d_sae, d_in]`, f32, f16 or bf16).
//! `hook_resid_pre` maps to RESID_PRE, `hook_resid_post` to BLOCK_OUTPUT; nothing else is a
//! point on the residual stream this engine steers.

use std::path::{Path, PathBuf};

use serde_json::Value;
use sha2::{Digest, Sha256};
use steer_hooks::{HookPoint, Op, Window};

use crate::error::{Result, VectorError};
use crate::format::{ModelRef, Origin, SteeringVector, VectorTensor};

/// The configuration file of an SAE directory.
pub const CFG: &str = "cfg.json";
/// The weights file of an SAE directory.
pub const WEIGHTS: &str = "sae_weights.safetensors";

/// What `cfg.json` says.
#[derive(Debug, Clone, PartialEq)]
pub struct SaeConfig {
    pub d_in: usize,
    pub d_sae: usize,
    pub hook_name: String,
    pub model_name: String,
}

impl SaeConfig {
    /// Reads `cfg.json`'s fields (top level, or SAELens 6's `metadata` for the names).
    pub fn parse(json: &str) -> Result<Self> {
        let v: Value = serde_json::from_str(json).map_err(|e| VectorError::invalid(CFG, format!("not JSON: {e}")))?;
        let dim = |k: &str| -> Result<usize> {
            v[k].as_u64()
                .filter(|&n| n > 0)
                .map(|n| n as usize)
                .ok_or_else(|| VectorError::invalid(format!("{CFG}.{k}"), "missing or not a positive integer"))
        };
        let name = |k: &str| v[k].as_str().or_else(|| v["metadata"][k].as_str()).map(str::to_string);
        let hook_name = name("hook_name").ok_or_else(|| VectorError::invalid(format!("{CFG}.hook_name"), "missing"))?;
        Ok(Self { d_in: dim("d_in")?, d_sae: dim("d_sae")?, hook_name, model_name: name("model_name").unwrap_or_default() })
    }

    /// The hook point `hook_name` names: `blocks.L.hook_resid_pre` is RESID_PRE L,
    /// `blocks.L.hook_resid_post` is BLOCK_OUTPUT L.
    pub fn point(&self) -> Result<HookPoint> {
        let bad = |why: &str| VectorError::invalid(format!("{CFG}.hook_name"), format!("`{}`: {why}", self.hook_name));
        let rest = self.hook_name.strip_prefix("blocks.").ok_or_else(|| bad("expected blocks.L.hook_resid_pre or blocks.L.hook_resid_post"))?;
        let (layer, hook) = rest.split_once('.').ok_or_else(|| bad("expected blocks.L.<hook>"))?;
        let layer: usize = layer.parse().map_err(|_| bad("the layer is not a number"))?;
        match hook {
            "hook_resid_pre" => Ok(HookPoint::ResidPre(layer)),
            "hook_resid_post" => Ok(HookPoint::BlockOutput(layer)),
            other => Err(bad(&format!(
                "`{other}` is not a residual-stream point this engine steers (hook_resid_pre maps to resid_pre, hook_resid_post to block_output)"
            ))),
        }
    }
}

/// An SAE read from disk: its configuration and decoder.
#[derive(Debug, Clone)]
pub struct Sae {
    pub dir: PathBuf,
    pub cfg: SaeConfig,
    /// `W_dec`, `[d_sae, d_in]` row-major, in f32.
    w_dec: Vec<f32>,
}

impl Sae {
    /// Reads `dir/cfg.json` and `W_dec` from `dir/sae_weights.safetensors`.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        let cfg_path = dir.join(CFG);
        let cfg = SaeConfig::parse(&std::fs::read_to_string(&cfg_path).map_err(|e| VectorError::io(&cfg_path, e))?)?;
        let w_path = dir.join(WEIGHTS);
        let bytes = std::fs::read(&w_path).map_err(|e| VectorError::io(&w_path, e))?;
        let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| VectorError::invalid(WEIGHTS, format!("not a safetensors file: {e}")))?;
        let field = format!("{WEIGHTS}.W_dec");
        let view = st.tensor("W_dec").map_err(|_| VectorError::invalid(&field, "missing"))?;
        if view.shape() != [cfg.d_sae, cfg.d_in] {
            return Err(VectorError::invalid(&field, format!("shape {:?}, cfg.json says [d_sae {}, d_in {}]", view.shape(), cfg.d_sae, cfg.d_in)));
        }
        let w_dec = decode_floats(view.dtype(), view.data())
            .ok_or_else(|| VectorError::invalid(&field, format!("{:?}: expected F32, F16 or BF16", view.dtype())))?;
        Ok(Self { dir, cfg, w_dec })
    }

    /// Decoder row `f` (`d_in` values).
    pub fn row(&self, f: usize) -> &[f32] {
        &self.w_dec[f * self.cfg.d_in..(f + 1) * self.cfg.d_in]
    }

    /// Refuses an SAE this model cannot take: another d_model, or a hook it cannot map to a
    /// layer the model has. Returns the point it steers.
    pub fn check(&self, model: &ModelRef) -> Result<HookPoint> {
        if self.cfg.d_in != model.d_model as usize {
            return Err(VectorError::WrongModel {
                field: format!("{CFG}.d_in"),
                message: format!(
                    "the SAE reads d_in {} ({}), the model has d_model {}",
                    self.cfg.d_in,
                    or_unknown(&self.cfg.model_name),
                    model.d_model
                ),
            });
        }
        let point = self.cfg.point()?;
        if model.n_layer > 0 && point.check(model.n_layer as usize).is_err() {
            return Err(VectorError::WrongModel {
                field: format!("{CFG}.hook_name"),
                message: format!("`{}`: layer {} does not exist in a {}-layer model", self.cfg.hook_name, point.layer(), model.n_layer),
            });
        }
        Ok(point)
    }

    /// A vector steering with `features`: ADD `scale x sum W_dec[f]` at every position, or,
    /// with `clamp`, CLAMP that sum's unit direction to the value. Records the SAE's identity
    /// (model, hook, d_sae, features, a digest of the rows used).
    pub fn vector(&self, name: &str, features: &[u32], scale: f64, clamp: Option<f32>, model: ModelRef) -> Result<SteeringVector> {
        let point = self.check(&model)?;
        if features.is_empty() {
            return Err(VectorError::invalid("features", "give at least one feature index"));
        }
        let mut h = Sha256::new();
        let mut sum = vec![0f64; self.cfg.d_in];
        for (i, &f) in features.iter().enumerate() {
            if f as usize >= self.cfg.d_sae {
                return Err(VectorError::invalid(format!("features[{i}]"), format!("{f}: this SAE has features 0 to {}", self.cfg.d_sae - 1)));
            }
            if features[..i].contains(&f) {
                return Err(VectorError::invalid(format!("features[{i}]"), format!("{f} is given twice")));
            }
            let row = self.row(f as usize);
            for (s, &v) in sum.iter_mut().zip(row) {
                *s += f64::from(v);
            }
            h.update(row.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>());
        }
        if !scale.is_finite() {
            return Err(VectorError::invalid("scale", format!("{scale} is not finite")));
        }
        let values: Vec<f32> = match clamp {
            Some(_) => sum.iter().map(|&v| v as f32).collect(),
            None => sum.iter().map(|&v| (v * scale) as f32).collect(),
        };
        let origin = Origin::Sae {
            model_name: self.cfg.model_name.clone(),
            hook_name: self.cfg.hook_name.clone(),
            d_sae: self.cfg.d_sae as u32,
            source: self.dir.display().to_string(),
            features: features.to_vec(),
            scale,
            w_dec_digest: h.finalize().iter().map(|b| format!("{b:02x}")).collect(),
        };
        let tensor = VectorTensor { point, k: 1, values };
        let v = SteeringVector::new(name, model, Window::AllPositions, origin, vec![tensor])?;
        match clamp {
            Some(value) if !value.is_finite() => Err(VectorError::invalid("clamp", format!("{value} is not finite"))),
            Some(value) => v.with_op(Op::Clamp { value }).map_err(|e| e.within("features")),
            None => Ok(v),
        }
    }
}

fn or_unknown(s: &str) -> &str {
    if s.is_empty() {
        "model not named"
    } else {
        s
    }
}

/// Little-endian floats of `dtype` as f32 (`None` for other dtypes).
fn decode_floats(dtype: safetensors::Dtype, data: &[u8]) -> Option<Vec<f32>> {
    use candle_core::{DType, Device, Tensor};
    let dt = match dtype {
        safetensors::Dtype::F32 => DType::F32,
        safetensors::Dtype::F16 => DType::F16,
        safetensors::Dtype::BF16 => DType::BF16,
        _ => return None,
    };
    let n = data.len() / dt.size_in_bytes();
    let t = Tensor::from_raw_buffer(data, dt, &[n], &Device::Cpu).ok()?;
    t.to_dtype(DType::F32).ok()?.to_vec1::<f32>().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> ModelRef {
        ModelRef { name: "tiny".into(), d_model: 4, n_layer: 3, ..Default::default() }
    }

    /// An SAE directory as SAELens writes it (W_dec rows `f + 1` times e_(f mod 4)).
    pub fn write_sae(dir: &Path, d_in: usize, d_sae: usize, hook: &str, nested: bool) {
        let cfg = match nested {
            false => serde_json::json!({"d_in": d_in, "d_sae": d_sae, "hook_name": hook, "model_name": "gpt2", "dtype": "float32"}),
            true => serde_json::json!({"d_in": d_in, "d_sae": d_sae, "metadata": {"hook_name": hook, "model_name": "gpt2"}}),
        };
        std::fs::write(dir.join(CFG), cfg.to_string()).unwrap();
        let w: Vec<f32> = (0..d_sae).flat_map(|f| (0..d_in).map(move |j| if j == f % d_in { (f + 1) as f32 } else { 0.0 })).collect();
        let bytes: Vec<u8> = w.iter().flat_map(|v| v.to_le_bytes()).collect();
        let enc = vec![0u8; d_in * d_sae * 4];
        let views = vec![
            ("W_dec".to_string(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![d_sae, d_in], &bytes).unwrap()),
            ("W_enc".to_string(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![d_in, d_sae], &enc).unwrap()),
        ];
        std::fs::write(dir.join(WEIGHTS), safetensors::serialize(views, None).unwrap()).unwrap();
    }

    #[test]
    fn features_become_scaled_decoder_rows_at_every_position_with_the_saes_identity() {
        let dir = tempfile::tempdir().unwrap();
        write_sae(dir.path(), 4, 6, "blocks.1.hook_resid_post", false);
        let sae = Sae::open(dir.path()).unwrap();
        let v = sae.vector("f", &[1, 5], 2.0, None, model()).unwrap();
        assert_eq!(v.mode(), Window::AllPositions);
        assert_eq!(v.op(), Op::Add);
        assert_eq!(v.tensors[0].point, HookPoint::BlockOutput(1));
        assert_eq!(v.tensors[0].values, vec![0., 4. + 12., 0., 0.]);
        let Origin::Sae { features, d_sae, w_dec_digest, .. } = &v.meta.origin else { panic!("origin") };
        assert_eq!((features.clone(), *d_sae, w_dec_digest.len()), (vec![1, 5], 6, 64));
        let c = sae.vector("c", &[2], 1.0, Some(3.0), model()).unwrap();
        assert_eq!(c.op(), Op::Clamp { value: 3.0 });
        assert_ne!(c.digest(), sae.vector("a", &[2], 1.0, None, model()).unwrap().digest());
        let back = SteeringVector::from_bytes(&c.to_bytes()).unwrap();
        assert_eq!(back.op(), Op::Clamp { value: 3.0 });
        assert_eq!(back.meta.origin, c.meta.origin);
    }

    #[test]
    fn saes_for_another_model_or_hook_and_bad_features_are_refused_naming_the_field() {
        let dir = tempfile::tempdir().unwrap();
        write_sae(dir.path(), 8, 6, "blocks.1.hook_resid_pre", true);
        let e = Sae::open(dir.path()).unwrap().vector("x", &[0], 1.0, None, model()).unwrap_err();
        assert!(e.to_string().starts_with("cfg.json.d_in: the SAE reads d_in 8"), "{e}");
        write_sae(dir.path(), 4, 6, "blocks.1.hook_mlp_out", false);
        let e = Sae::open(dir.path()).unwrap().vector("x", &[0], 1.0, None, model()).unwrap_err();
        assert!(e.to_string().starts_with("cfg.json.hook_name: `blocks.1.hook_mlp_out`"), "{e}");
        write_sae(dir.path(), 4, 6, "blocks.7.hook_resid_pre", false);
        let e = Sae::open(dir.path()).unwrap().vector("x", &[0], 1.0, None, model()).unwrap_err();
        assert!(e.to_string().contains("layer 7 does not exist"), "{e}");
        write_sae(dir.path(), 4, 6, "blocks.0.hook_resid_pre", true);
        let sae = Sae::open(dir.path()).unwrap();
        assert_eq!(sae.cfg.point().unwrap(), HookPoint::ResidPre(0));
        assert!(sae.vector("x", &[6], 1.0, None, model()).unwrap_err().to_string().starts_with("features[0]: 6"));
        assert!(sae.vector("x", &[1, 1], 1.0, None, model()).unwrap_err().to_string().starts_with("features[1]"));
        assert!(sae.vector("x", &[], 1.0, None, model()).unwrap_err().to_string().starts_with("features"));
    }
}
