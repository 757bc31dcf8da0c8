//! llama.cpp control vectors (`--control-vector FILE.gguf`, files from `cvector-generator` or
//! repeng), both ways.
//!
//! The file: `general.architecture = "controlvector"`, `controlvector.model_hint` (the model's
//! architecture, `gpt2`), `controlvector.layer_count`, and one f32 tensor `direction.N` of
//! n_embd values per layer N. llama.cpp's numbering, from its source (common.cpp,
//! `common_control_vector_load_one`: "invalid (zero) direction tensor layer index", and
//! llama-adapter.cpp, `llama_adapter_cvec::apply_to`, called as `build_cvec(cur, il)` on the
//! output of layer il after its feed-forward residual add): `direction.N` is added to the output
//! of block N at every position, i.e. our `block_output.N` = `resid_pre.(N+1)`, in
//! all_positions mode. `direction.0` does not exist (the output of block 0 cannot be steered
//! there), so `block_output.0` / `resid_pre.1` and `resid_pre.0` cannot be exported.

use std::io::Cursor;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};

use crate::error::{Result, VectorError};
use crate::format::{ModelRef, Origin, SteeringVector, VectorTensor};
use steer_hooks::{HookPoint, Window};

/// The architecture GPT-2 GGUF files declare; written as the model hint.
pub const MODEL_HINT: &str = "gpt2";

/// llama.cpp's layer index of a point (`direction.N` = output of block N), when it has one.
pub fn llama_layer(p: HookPoint) -> Option<u32> {
    let il = p.stream().checked_sub(1)? as u32;
    (il >= 1).then_some(il)
}

/// The control-vector GGUF of an all_positions vector.
pub fn export(v: &SteeringVector) -> Result<Vec<u8>> {
    if v.mode() != Window::AllPositions {
        return Err(VectorError::invalid(
            "mode",
            "llama.cpp control vectors are added at every position: only an all_positions vector ([1, d_model] per layer) exports",
        ));
    }
    if v.op() != steer_hooks::Op::Add {
        return Err(VectorError::invalid("op", format!("llama.cpp control vectors only add: an {} vector does not export", v.op().name())));
    }
    let mut tensors: Vec<(String, QTensor)> = vec![];
    let mut seen = std::collections::BTreeMap::new();
    let exportable: Vec<u32> = v.tensors.iter().filter(|t| llama_layer(t.point).is_some()).map(|t| t.point.layer() as u32).collect();
    for t in &v.tensors {
        let il = llama_layer(t.point).ok_or_else(|| {
            let others = match (exportable.first(), exportable.last()) {
                (Some(a), Some(b)) => format!("; export the other layers only with --layers {a}-{b}"),
                _ => String::new(),
            };
            VectorError::invalid(
                format!("tensors.{}", t.point),
                format!(
                    "llama.cpp steers the outputs of blocks 1.. (direction.0 is invalid): \
                     block_output.0 = resid_pre.1 and resid_pre.0 have no control-vector layer{others}"
                ),
            )
        })?;
        if let Some(other) = seen.insert(il, t.point) {
            return Err(VectorError::invalid(format!("tensors.{}", t.point), format!("the same stream as {other} (direction.{il})")));
        }
        let x = Tensor::from_vec(t.values.clone(), t.values.len(), &Device::Cpu).map_err(gguf_error)?;
        tensors.push((format!("direction.{il}"), QTensor::quantize(&x, GgmlDType::F32).map_err(gguf_error)?));
    }
    let layer_count = seen.keys().next_back().copied().unwrap_or(0);
    let arch = Value::String("controlvector".into());
    let hint = Value::String(MODEL_HINT.into());
    let count = Value::I32(layer_count as i32);
    let metadata = [("general.architecture", &arch), ("controlvector.model_hint", &hint), ("controlvector.layer_count", &count)];
    let refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let mut out = Cursor::new(Vec::new());
    gguf_file::write(&mut out, &metadata, &refs).map_err(gguf_error)?;
    Ok(out.into_inner())
}

/// A control-vector GGUF as an all_positions vector at `block_output.N`.
pub fn import(bytes: &[u8], name: &str) -> Result<SteeringVector> {
    let mut r = Cursor::new(bytes);
    let content = gguf_file::Content::read(&mut r).map_err(gguf_error)?;
    let text = |k: &str| content.metadata.get(k).and_then(|v| v.to_string().ok().cloned());
    if let Some(arch) = text("general.architecture").filter(|a| a != "controlvector") {
        return Err(VectorError::invalid("general.architecture", format!("`{arch}`: not a control vector")));
    }
    let model_hint = text("controlvector.model_hint").unwrap_or_default();
    if !model_hint.is_empty() && model_hint != MODEL_HINT {
        return Err(VectorError::WrongModel {
            field: "controlvector.model_hint".into(),
            message: format!("`{model_hint}`: this control vector is for another architecture than {MODEL_HINT}"),
        });
    }
    let layer_count = content.metadata.get("controlvector.layer_count").and_then(int).unwrap_or(0);
    let mut tensors = vec![];
    let mut d = 0;
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    for tname in names {
        // Nothing is allocated from the header: a direction is F32 and lies inside the file.
        let info = &content.tensor_infos[tname];
        let n = info.shape.elem_count();
        let end = (content.tensor_data_offset as usize).saturating_add(info.offset as usize).saturating_add(n.saturating_mul(4));
        if info.ggml_dtype != GgmlDType::F32 || info.shape.rank() != 1 || end > bytes.len() {
            return Err(VectorError::invalid(
                tname.clone(),
                format!("{:?} {:?}: a direction is F32 [n_embd] within the file ({} bytes)", info.ggml_dtype, info.shape.dims(), bytes.len()),
            ));
        }
        let il: u32 = tname
            .strip_prefix("direction.")
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| VectorError::invalid(tname.clone(), "expected tensors named direction.N"))?;
        if il == 0 {
            return Err(VectorError::invalid(tname.clone(), "direction.0 is invalid (llama.cpp's layers start at 1)"));
        }
        let q = content.tensor(&mut r, tname, &Device::Cpu).map_err(gguf_error)?;
        let values = q.dequantize(&Device::Cpu).and_then(|t| t.flatten_all()).and_then(|t| t.to_vec1::<f32>()).map_err(gguf_error)?;
        if d != 0 && values.len() != d {
            return Err(VectorError::invalid(tname.clone(), format!("{} values, another direction has {d}", values.len())));
        }
        d = values.len();
        tensors.push(VectorTensor { point: HookPoint::BlockOutput(il as usize), k: 1, values });
    }
    let model = ModelRef { d_model: d as u32, ..ModelRef::default() };
    let origin = Origin::Gguf { model_hint, layer_count: layer_count.max(0) as u32 };
    SteeringVector::new(name, model, Window::AllPositions, origin, tensors)
}

/// An integer of any GGUF width (llama.cpp writes i32, Python writers often u32).
fn int(v: &Value) -> Option<i64> {
    Some(match v {
        Value::U8(x) => *x as i64,
        Value::I8(x) => *x as i64,
        Value::U16(x) => *x as i64,
        Value::I16(x) => *x as i64,
        Value::U32(x) => *x as i64,
        Value::I32(x) => *x as i64,
        Value::U64(x) => *x as i64,
        Value::I64(x) => *x,
        _ => return None,
    })
}

fn gguf_error(e: candle_core::Error) -> VectorError {
    VectorError::invalid("gguf", e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::tests::model;

    fn directions() -> SteeringVector {
        let tensors = vec![
            VectorTensor { point: HookPoint::BlockOutput(2), k: 1, values: vec![1.0, 2.0, 3.0, 4.0] },
            VectorTensor { point: HookPoint::ResidPre(2), k: 1, values: vec![-1.0, 0.5, 0.0, 8.0] },
        ];
        let origin = Origin::MeanDifference { pairs: 3, reduction: "last_token".into(), use_bos: true };
        SteeringVector::new("honest", model(), Window::AllPositions, origin, tensors).unwrap()
    }

    #[test]
    fn exports_with_llama_numbering_and_reads_back() {
        let v = directions();
        let bytes = export(&v).unwrap();
        let back = import(&bytes, "honest").unwrap();
        assert_eq!(back.mode(), Window::AllPositions);
        let points: Vec<String> = back.tensors.iter().map(|t| t.point.to_string()).collect();
        // resid_pre.2 is the output of block 1: direction.1.
        assert_eq!(points, ["block_output.1", "block_output.2"]);
        assert_eq!(back.tensors[0].values, v.tensors[0].values);
        assert_eq!(back.tensors[1].values, v.tensors[1].values);
        assert!(matches!(&back.meta.origin, Origin::Gguf { model_hint, layer_count: 2 } if model_hint == MODEL_HINT));
        back.check_model(&model()).unwrap();
    }

    #[test]
    fn what_llama_cannot_hold_is_refused() {
        let mut v = directions();
        let ablate = directions().with_op(steer_hooks::Op::Ablate).unwrap();
        assert!(export(&ablate).unwrap_err().to_string().starts_with("op: llama.cpp control vectors only add: an ablate"));
        v.meta.mode = Window::Prefix;
        assert!(export(&v).unwrap_err().to_string().starts_with("mode"));
        let t = vec![VectorTensor { point: HookPoint::ResidPre(1), k: 1, values: vec![0.0; 4] }];
        let v = SteeringVector::new("x", model(), Window::AllPositions, directions().meta.origin, t).unwrap();
        assert!(export(&v).unwrap_err().to_string().contains("direction.0"));
        assert!(import(b"GGUF", "x").is_err());
        // A direction that runs past the end of the file is named, not allocated.
        let bytes = export(&directions()).unwrap();
        let err = import(&bytes[..bytes.len() - 40], "x").unwrap_err();
        assert!(err.to_string().starts_with("direction.") && err.to_string().contains("within the file"), "{err}");
    }
}
