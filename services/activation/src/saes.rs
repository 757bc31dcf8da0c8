//! Sparse autoencoders the worker can read: each subdirectory of its `--sae-dir` in SAELens's
//! layout (`steer_vector::sae`), listed by name, opened once and kept (the decoder is read
//! whole), browsed by feature index, and turned into vector files.

use std::path::PathBuf;
use std::sync::Arc;

use dashmap::DashMap;
use steer_common::{convert, ServiceError};
use steer_model::candle_core::{self, Tensor};
use steer_model::Engine;
use steer_proto::v1::{SaeFeature, SaeInfo, TokenWeight};
use steer_vector::sae::{SaeConfig, CFG};
use steer_vector::{ModelRef, Sae, SteeringVector};

/// Most features one GetSaeFeatures call browses.
pub const MAX_FEATURES: u32 = 256;
/// Most tokens per feature.
pub const MAX_TOP_TOKENS: u32 = 20;

/// The SAEs under one directory.
pub struct SaeStore {
    dir: PathBuf,
    opened: DashMap<String, Arc<Sae>>,
}

impl SaeStore {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into(), opened: DashMap::new() }
    }

    /// Every subdirectory holding a `cfg.json`, by name, with whether this model can use it.
    pub fn list(&self, model: &ModelRef) -> Result<Vec<SaeInfo>, ServiceError> {
        let entries = std::fs::read_dir(&self.dir).map_err(|e| ServiceError::Internal(format!("{}: {e}", self.dir.display())))?;
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter(|e| e.path().join(CFG).is_file())
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .collect();
        names.sort();
        Ok(names
            .into_iter()
            .filter_map(|name| {
                let cfg = SaeConfig::parse(&std::fs::read_to_string(self.dir.join(&name).join(CFG)).ok()?).ok()?;
                Some(info(&name, &cfg, model))
            })
            .collect())
    }

    /// The SAE called `name` (a subdirectory), opened once.
    pub fn open(&self, name: &str, field: &str) -> Result<Arc<Sae>, ServiceError> {
        if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
            return Err(ServiceError::invalid(field, format!("`{name}`: an SAE is named by its directory under --sae-dir")));
        }
        if let Some(s) = self.opened.get(name) {
            return Ok(s.clone());
        }
        let dir = self.dir.join(name);
        if !dir.join(CFG).is_file() {
            return Err(ServiceError::Model(steer_model::ModelError::NotFound(format!("{field}: no SAE `{name}` (ListSaes names them)"))));
        }
        let sae = Arc::new(Sae::open(&dir).map_err(|e| ServiceError::from(e.within(field)))?);
        self.opened.insert(name.to_string(), sae.clone());
        Ok(sae)
    }
}

/// The proto summary of an SAE: its dimensions, point, and why this model cannot use it.
pub fn info(name: &str, cfg: &SaeConfig, model: &ModelRef) -> SaeInfo {
    let point = cfg.point().ok();
    let unusable = match (cfg.d_in == model.d_model as usize, cfg.point()) {
        (false, _) => format!("d_in {} is not this model's d_model {}", cfg.d_in, model.d_model),
        (true, Err(e)) => e.to_string(),
        (true, Ok(p)) if p.check(model.n_layer as usize).is_err() => {
            format!("layer {} does not exist in this {}-layer model", p.layer(), model.n_layer)
        }
        _ => String::new(),
    };
    SaeInfo {
        name: name.to_string(),
        d_in: cfg.d_in as u32,
        d_sae: cfg.d_sae as u32,
        hook_name: cfg.hook_name.clone(),
        point: point.map(Into::into),
        model_name: cfg.model_name.clone(),
        unusable,
    }
}

/// Features `first..first + count` of `sae`: each decoder row's norm and, with `top`, the
/// tokens whose unembedding it raises most (W_dec[f] . wte[t], the model's tied lm_head).
pub fn features(sae: &Sae, engine: &Engine, first: u32, count: u32, top: u32) -> Result<Vec<SaeFeature>, ServiceError> {
    let count = if count == 0 { 32 } else { count };
    if count > MAX_FEATURES {
        return Err(ServiceError::invalid("count", format!("{count}: at most {MAX_FEATURES} features per call")));
    }
    if top > MAX_TOP_TOKENS {
        return Err(ServiceError::invalid("top_tokens", format!("{top}: at most {MAX_TOP_TOKENS}")));
    }
    let d_sae = sae.cfg.d_sae as u32;
    if first >= d_sae {
        return Err(ServiceError::invalid("first", format!("{first}: this SAE has features 0 to {}", d_sae - 1)));
    }
    let idx: Vec<u32> = (first..first.saturating_add(count).min(d_sae)).collect();
    let rows: Vec<f32> = idx.iter().flat_map(|&f| sae.row(f as usize).to_vec()).collect();
    let lens = match top {
        0 => None,
        _ => {
            let model_err = |e: candle_core::Error| ServiceError::from(steer_model::ModelError::from(e));
            let h = Tensor::from_vec(rows.clone(), (idx.len(), sae.cfg.d_in), engine.model().device()).map_err(model_err)?;
            Some(engine.model().logits(&h).map_err(ServiceError::from)?.to_vec2::<f32>().map_err(model_err)?)
        }
    };
    Ok(idx
        .iter()
        .enumerate()
        .map(|(i, &f)| {
            let row = sae.row(f as usize);
            let norm = row.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>().sqrt() as f32;
            let top_tokens = lens.as_ref().map_or_else(Vec::new, |l| {
                let mut order: Vec<u32> = (0..l[i].len() as u32).collect();
                let k = top as usize;
                order.select_nth_unstable_by(k - 1, |&a, &b| l[i][b as usize].total_cmp(&l[i][a as usize]));
                order.truncate(k);
                order.sort_by(|&a, &b| l[i][b as usize].total_cmp(&l[i][a as usize]));
                let texts = engine.tokenizer().token_strings(&order);
                order.iter().zip(texts).map(|(&t, text)| TokenWeight { token_id: t, text, value: l[i][t as usize] }).collect()
            });
            SaeFeature { index: f, norm, top_tokens }
        })
        .collect())
}

/// The vector of a SaeVector request (checked: features, scale, clamp value).
pub fn vector(
    sae: &Sae,
    name: &str,
    features: &[u32],
    scale: Option<f64>,
    clamp: Option<f32>,
    engine: &Engine,
) -> Result<SteeringVector, ServiceError> {
    let name = match name {
        "" => format!("{}-f{}", sae.dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(), join(features)),
        n => n.to_string(),
    };
    if let Some(c) = clamp.filter(|c| !c.is_finite() || c.abs() > steer_model::MAX_STEERING_ABS) {
        return Err(ServiceError::invalid("clamp_value", format!("{c}: must be finite and within ±{:e}", steer_model::MAX_STEERING_ABS)));
    }
    Ok(sae.vector(&name, features, scale.unwrap_or(1.0), clamp, convert::model_ref(engine))?)
}

fn join(features: &[u32]) -> String {
    features.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
}
