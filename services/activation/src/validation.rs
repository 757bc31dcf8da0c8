//! ActivationService requests checked once, at the edge, into typed values: token ids, hook
//! points, the padded steering plan. The handlers and the engine trust what comes out.

use steer_common::{convert, ServiceError};
use steer_model::{Addition, Engine, HookPoint};
use steer_proto::v1::{ContrastPairs, GetActivationsRequest, GetSteeringTensorsRequest, Reduction};
use steer_proto::wire::TensorAssembler;

use crate::config::ActivationConfig;
use crate::steering::{self, Plan};

/// A valid GetActivations: every prompt at every point.
#[derive(Debug, Clone)]
pub struct ValidActivations {
    pub prompts: Vec<Vec<u32>>,
    /// Distinct, in request order.
    pub points: Vec<HookPoint>,
    /// Applied to every prompt while capturing (none: plain, cached activations).
    pub steering: Vec<Addition>,
}

pub fn activations(req: &GetActivationsRequest, engine: &Engine, cfg: &ActivationConfig) -> Result<ValidActivations, ServiceError> {
    let n_layer = engine.info().n_layer;
    count("prompts", req.prompts.len(), cfg.max_prompts, "prompts")?;
    count("points", req.points.len(), cfg.max_points, "hook points")?;
    let mut points = vec![];
    for (i, p) in req.points.iter().enumerate() {
        let point = convert::hook_point(p.hook, p.layer, n_layer, &format!("points[{i}]"))?;
        if !points.contains(&point) {
            points.push(point);
        }
    }
    let mut prompts = vec![];
    for (i, text) in req.prompts.iter().enumerate() {
        let field = format!("prompts[{i}]");
        let ids = encode(engine, text, req.use_bos, &field)?;
        if ids.is_empty() {
            return Err(ServiceError::invalid(field, "empty prompt"));
        }
        prompts.push(ids);
    }
    count_max("steering", req.steering.len(), cfg.max_points, "steering tensors")?;
    let mut steering = vec![];
    for (i, t) in req.steering.iter().enumerate() {
        let field = format!("steering[{i}]");
        let header = t.header.clone().ok_or_else(|| ServiceError::invalid(format!("{field}.header"), "missing"))?;
        let (header, _, values) =
            TensorAssembler::whole(header, &t.data, MAX_STEERING_BYTES).map_err(|e| ServiceError::invalid(&field, e.to_string()))?;
        let add = steer_common::steering::tensor(&header, values, engine, &field)?;
        if let Some((j, p)) = prompts.iter().enumerate().find(|(_, p)| add.window.positional() && add.k > p.len()) {
            return Err(ServiceError::invalid(format!("prompts[{j}]"), format!("{} tokens are fewer than {field}'s {} positions", p.len(), add.k)));
        }
        steering.push(add);
    }
    Ok(ValidActivations { prompts, points, steering })
}

/// Most bytes of one steering tensor in a GetActivations request.
const MAX_STEERING_BYTES: u64 = 16 << 20;

fn count_max(field: &str, n: usize, max: usize, what: &str) -> Result<(), ServiceError> {
    match n > max {
        true => Err(ServiceError::invalid(field, format!("{n} {what}; at most {max}"))),
        false => Ok(()),
    }
}

/// A valid GetSteeringTensors: the additions tokenised, grouped by hook point and padded.
pub fn steering(req: &GetSteeringTensorsRequest, engine: &Engine, cfg: &ActivationConfig) -> Result<Plan, ServiceError> {
    let n_layer = engine.info().n_layer;
    count("additions", req.additions.len(), cfg.max_prompts, "activation additions")?;
    let mut tokenised = vec![];
    for (i, a) in req.additions.iter().enumerate() {
        let field = format!("additions[{i}]");
        let point = convert::hook_point(req.hook, a.layer, n_layer, &field)?;
        if !a.coeff.is_finite() {
            return Err(ServiceError::invalid(format!("{field}.coeff"), "must be finite"));
        }
        let ids = encode(engine, &a.prompt, req.use_bos, &format!("{field}.prompt"))?;
        tokenised.push((point, a.coeff, ids));
    }
    steering::plan(&tokenised, req.strict_lengths)
}

fn count(field: &str, n: usize, max: usize, what: &str) -> Result<(), ServiceError> {
    if n == 0 {
        return Err(ServiceError::invalid(field, format!("no {what}: at least one is needed")));
    }
    if n > max {
        return Err(ServiceError::invalid(field, format!("{n} {what}; at most {max}")));
    }
    Ok(())
}

fn encode(engine: &Engine, text: &str, use_bos: bool, field: &str) -> Result<Vec<u32>, ServiceError> {
    let ids = engine.encode(text, use_bos)?;
    let n = engine.info().n_positions;
    if ids.len() > n {
        return Err(ServiceError::invalid(field, format!("{} tokens exceed the model's {n} positions", ids.len())));
    }
    Ok(ids)
}

/// Which positions a dataset vector averages, per prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reduce {
    /// The last token (CAA).
    LastToken,
    /// The mean over positions `skip..` (`skip` = 1 drops BOS).
    Mean { skip: usize },
}

impl Reduce {
    pub fn name(self) -> &'static str {
        match self {
            Reduce::LastToken => "last_token",
            Reduce::Mean { .. } => "mean",
        }
    }
}

/// A valid dataset-vector request: each pair tokenised, the points distinct.
#[derive(Debug, Clone)]
pub struct ValidPairs {
    /// (positive, negative) token ids.
    pub pairs: Vec<(Vec<u32>, Vec<u32>)>,
    pub points: Vec<HookPoint>,
    pub reduce: Reduce,
    pub use_bos: bool,
    /// Pairs per capture forward.
    pub batch: usize,
}

/// Checks a ContrastPairs message (errors name `pairs.<field>`).
pub fn pairs(req: &ContrastPairs, engine: &Engine, cfg: &ActivationConfig) -> Result<ValidPairs, ServiceError> {
    let n_layer = engine.info().n_layer;
    count("pairs.pairs", req.pairs.len(), cfg.max_pairs, "contrast pairs")?;
    count("pairs.points", req.points.len(), cfg.max_points, "hook points")?;
    let mut points = vec![];
    for (i, p) in req.points.iter().enumerate() {
        let point = convert::hook_point(p.hook, p.layer, n_layer, &format!("pairs.points[{i}]"))?;
        if !points.contains(&point) {
            points.push(point);
        }
    }
    let reduce = match Reduction::try_from(req.reduction) {
        Ok(Reduction::Unspecified | Reduction::LastToken) => Reduce::LastToken,
        Ok(Reduction::Mean) => Reduce::Mean { skip: usize::from(req.use_bos) },
        Err(_) => return Err(ServiceError::invalid("pairs.reduction", format!("unknown reduction {}", req.reduction))),
    };
    let mut pairs = vec![];
    for (i, p) in req.pairs.iter().enumerate() {
        let side = |text: &str, name: &str| {
            let field = format!("pairs.pairs[{i}].{name}");
            if text.is_empty() {
                return Err(ServiceError::invalid(field, "empty prompt"));
            }
            encode(engine, text, req.use_bos, &field)
        };
        pairs.push((side(&p.positive, "positive")?, side(&p.negative, "negative")?));
    }
    let batch = if req.batch_size == 0 { cfg.pair_batch } else { (req.batch_size as usize).min(cfg.max_prompts / 2).max(1) };
    Ok(ValidPairs { pairs, points, reduce, use_bos: req.use_bos, batch })
}
