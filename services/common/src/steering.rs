//! Steering tensors from the wire (streamed, inline, or a library vector's) checked into the
//! engine's [`Addition`]s: one check for both services, naming the offending field.

use std::sync::Arc;

use steer_model::{Addition, Engine, HookPoint, Op, Window, MAX_STEERING_ABS};
use steer_proto::v1::{Dtype, TensorHeader};

use crate::error::ServiceError;

/// A steering tensor: f32, f16 or bf16 on the wire (added in f32, whatever the weights are
/// held in), `[k, d_model]` with k >= 1, a real hook point, finite values.
pub fn tensor(h: &TensorHeader, values: Vec<f32>, engine: &Engine, field: &str) -> Result<Addition, ServiceError> {
    let info = engine.info();
    if Dtype::try_from(h.dtype).ok().and_then(steer_proto::wire::dtype_size).is_none() {
        let got = Dtype::try_from(h.dtype).map_or_else(|_| h.dtype.to_string(), |d| d.as_str_name().to_string());
        return Err(ServiceError::invalid(format!("{field}.dtype"), format!("{got}: steering tensors are DTYPE_F32, DTYPE_F16 or DTYPE_BF16")));
    }
    if h.shape.len() != 2 || h.shape[0] == 0 || h.shape[1] != info.d_model as u64 {
        return Err(ServiceError::invalid(format!("{field}.shape"), format!("{:?}: expected [k, {}] (d_model) with k >= 1", h.shape, info.d_model)));
    }
    let point = h.point.unwrap_or_default();
    let hook = crate::convert::hook_point(point.hook, point.layer, info.n_layer, &format!("{field}.point"))?;
    let window = crate::convert::window(h.mode, h.window_start, h.window_end, field)?;
    let op = crate::convert::op(h.op, h.clamp_value, field)?;
    checked(hook, h.shape[0] as usize, values, window, op, field)
}

/// A steering operation from checked values: finite, within [`MAX_STEERING_ABS`] (a clamp
/// value too), `[1, d]` for every window but a prefix, and no zero direction for ABLATE and
/// CLAMP (which normalise their rows).
pub fn checked(hook: HookPoint, k: usize, values: Vec<f32>, window: Window, op: Op, field: &str) -> Result<Addition, ServiceError> {
    if values.iter().any(|v| !v.is_finite()) {
        return Err(ServiceError::invalid(format!("{field}.data"), "NaN or Inf in the steering tensor"));
    }
    if let Some(v) = values.iter().find(|v| v.abs() > MAX_STEERING_ABS) {
        return Err(ServiceError::invalid(format!("{field}.data"), format!("{v:e}: steering values must be within ±{MAX_STEERING_ABS:e}")));
    }
    if !window.positional() && k != 1 {
        let mode = steer_proto::v1::SteeringMode::from(window).as_str_name();
        return Err(ServiceError::invalid(format!("{field}.shape"), format!("[{k}, d_model]: a {mode} tensor is one direction, [1, d_model]")));
    }
    if let Op::Clamp { value } = op {
        if value.abs() > MAX_STEERING_ABS {
            return Err(ServiceError::invalid(format!("{field}.clamp_value"), format!("{value:e}: must be within ±{MAX_STEERING_ABS:e}")));
        }
    }
    let d = values.len() / k.max(1);
    if op.projects() {
        if let Some(row) = values.chunks(d.max(1)).position(|r| r.iter().all(|&v| v == 0.0)) {
            let what = steer_proto::v1::SteeringOp::from(op).as_str_name();
            return Err(ServiceError::invalid(format!("{field}.data"), format!("row {row} is zero: {what} needs a direction")));
        }
    }
    Ok(Addition::new(hook, k, Arc::<[f32]>::from(values)).in_window(window).with_op(op))
}
