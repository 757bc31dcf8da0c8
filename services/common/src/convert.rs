//! Between the contract (`steer_proto::v1`) and the engine (`steer_model`): hook points, the
//! weights' dtype, sampling settings and model info, each converted here and nowhere else.
//! Conversions from the wire check what they convert and name the request field that is wrong.

use steer_model::{Engine, FinishReason, HookKind, HookPoint, Op, SamplingParams, WeightDtype, Window};
use steer_proto::hooks;
use steer_proto::v1::{self, Dtype};

use crate::error::ServiceError;

/// A proto hook kind ([`steer_proto::hooks`]; UNSPECIFIED means RESID_PRE), or an error naming
/// `field`.
pub fn hook_kind(hook: i32, field: &str) -> Result<HookKind, ServiceError> {
    hooks::hook_kind(hook).ok_or_else(|| ServiceError::invalid(field, format!("unknown hook {hook}")))
}

/// A proto hook kind and layer, checked against the model's depth; `field` names the message
/// (errors name `{field}.hook` or `{field}.layer`).
pub fn hook_point(hook: i32, layer: u32, n_layer: usize, field: &str) -> Result<HookPoint, ServiceError> {
    let kind = hook_kind(hook, &format!("{field}.hook"))?;
    checked_point(kind.at(layer as usize), n_layer, &format!("{field}.layer"))
}

/// A point (from a vector file, say) with its layer checked against the model's depth; errors
/// name `field`.
pub fn checked_point(p: HookPoint, n_layer: usize, field: &str) -> Result<HookPoint, ServiceError> {
    p.check(n_layer).map_err(|_| {
        ServiceError::invalid(
            field,
            format!("layer {} does not exist (this model has {n_layer} layers, 0 to {})", p.layer(), n_layer.saturating_sub(1)),
        )
    })?;
    Ok(p)
}

/// A proto window (mode, window_start, window_end), or an error naming `{field}.mode` (an
/// unknown mode) or `{field}.window_end` (an empty range).
pub fn window(mode: i32, start: u32, end: Option<u32>, field: &str) -> Result<Window, ServiceError> {
    hooks::window(mode, start, end).map_err(|why| {
        let at = if why.starts_with("window_end") { "window_end" } else { "mode" };
        ServiceError::invalid(format!("{field}.{at}"), why)
    })
}

/// A proto op (op, clamp_value), or an error naming `{field}.op` or `{field}.clamp_value`.
pub fn op(op: i32, clamp_value: f32, field: &str) -> Result<Op, ServiceError> {
    hooks::op(op, clamp_value).map_err(|why| {
        let at = if why.starts_with("clamp_value") { "clamp_value" } else { "op" };
        ServiceError::invalid(format!("{field}.{at}"), why)
    })
}

/// Why a row ended, as the contract says it.
pub fn proto_finish(reason: FinishReason) -> v1::FinishReason {
    match reason {
        FinishReason::Length => v1::FinishReason::Length,
        FinishReason::Eos => v1::FinishReason::Eos,
        FinishReason::Cancelled => v1::FinishReason::Cancelled,
        FinishReason::Stop => v1::FinishReason::Stop,
    }
}

pub fn proto_dtype(d: WeightDtype) -> Dtype {
    match d {
        WeightDtype::F32 => Dtype::F32,
        WeightDtype::F16 => Dtype::F16,
        WeightDtype::Bf16 => Dtype::Bf16,
        WeightDtype::Q8_0 => Dtype::Q80,
    }
}

/// Proto sampling settings as the engine's, validated (errors name `sampling.<field>`).
/// Proto zeros mean "off": `top_k` 0 = no top-k, `repetition_penalty` 0 = 1.
pub fn sampling(s: &v1::SamplingParameters) -> Result<SamplingParams, ServiceError> {
    let p = SamplingParams {
        temperature: s.temperature,
        top_k: (s.top_k > 0).then_some(s.top_k as usize),
        top_p: s.top_p,
        repetition_penalty: if s.repetition_penalty == 0.0 { 1.0 } else { s.repetition_penalty },
        frequency_penalty: s.frequency_penalty,
        presence_penalty: s.presence_penalty,
    };
    p.validate()?;
    Ok(p)
}

/// The proto `ModelInfo` of a loaded engine (without service-specific fields).
pub fn model_info(engine: &Engine) -> v1::ModelInfo {
    let i = engine.info();
    v1::ModelInfo {
        name: i.name.clone(),
        revision: i.revision.clone(),
        n_layer: i.n_layer as u32,
        d_model: i.d_model as u32,
        n_head: i.n_head as u32,
        vocab_size: i.vocab_size as u32,
        n_positions: i.n_positions as u32,
        dtype: proto_dtype(i.dtype) as i32,
        cache: None,
        max_new_tokens: 0,
        max_comparisons: 0,
        architecture: i.architecture.clone(),
        weights_fingerprint: i.fingerprint.clone(),
    }
}

/// The model a vector made on this engine is for (a local directory by its last component,
/// as ModelInfo shows it).
pub fn model_ref(engine: &Engine) -> steer_vector::ModelRef {
    let i = engine.info();
    let path = std::path::Path::new(&i.name);
    let name = if path.exists() { path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default() } else { i.name.clone() };
    steer_vector::ModelRef {
        name,
        revision: i.revision.clone(),
        d_model: i.d_model as u32,
        n_layer: i.n_layer as u32,
        architecture: i.architecture.clone(),
        fingerprint: i.fingerprint.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use steer_proto::v1::Hook;

    #[test]
    fn hook_points_round_trip_and_bad_ones_name_the_field() {
        for p in [HookPoint::ResidPre(0), HookPoint::BlockOutput(3)] {
            let q = v1::HookPoint::from(p);
            assert_eq!(hook_point(q.hook, q.layer, 4, "x").unwrap(), p);
        }
        assert_eq!(hook_point(Hook::Unspecified as i32, 2, 4, "x").unwrap(), HookPoint::ResidPre(2));
        assert!(hook_point(1, 4, 4, "tensors[0].point").unwrap_err().to_string().starts_with("tensors[0].point.layer"));
        assert!(hook_point(7, 0, 4, "additions[1]").unwrap_err().to_string().starts_with("additions[1].hook"));
    }

    #[test]
    fn dtypes_map_one_to_one() {
        let mapped: Vec<Dtype> = WeightDtype::ALL.iter().map(|&d| proto_dtype(d)).collect();
        assert_eq!(mapped, vec![Dtype::F32, Dtype::F16, Dtype::Bf16, Dtype::Q80]);
    }

    #[test]
    fn sampling_zeros_mean_off_and_bad_values_name_the_field() {
        let p = sampling(&v1::SamplingParameters::post()).unwrap();
        assert_eq!((p.top_k, p.top_p, p.repetition_penalty, p.frequency_penalty), (None, Some(0.3), 1.0, 1.0));
        let bad = v1::SamplingParameters { top_p: Some(1.5), ..v1::SamplingParameters::post() };
        assert!(sampling(&bad).unwrap_err().to_string().contains("sampling.top_p"));
    }
}
