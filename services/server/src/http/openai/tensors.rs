//! A request's steering as tensors: additions through the ActivationService (this process's,
//! or the activation worker `--vector-source` names), library vectors by digest, and a
//! profile's vector file checked against the served model.

use steer_model::{HookKind, Op, Window};
use steer_proto::v1::generation_service_server::GenerationService;
use steer_proto::v1::{
    get_steering_tensors_response, ActivationAddition, GetSteeringTensorsRequest, GetVectorRequest, Hook, InlineTensor, VectorRef,
};
use tokio_stream::StreamExt;
use tonic::{Code, Status};

use crate::profiles::ProfileFile;
use crate::services::Services;
use crate::steering::Steering;

/// Why steering cannot be computed here.
const NO_ACTIVATION: &str =
    "steering needs an ActivationService: in this process (steer serve), or the activation worker a generation worker is given with --vector-source";

/// The library vectors of `s` as references by digest (names resolved in the activation
/// service's library); errors name `{field}.vectors[i].name`.
pub(super) async fn vector_refs(services: &Services, s: &Steering, field: &str) -> Result<Vec<VectorRef>, Status> {
    let mut out = vec![];
    for (i, v) in s.vectors.iter().enumerate() {
        let api = services.activation_api().ok_or_else(|| Status::failed_precondition(NO_ACTIVATION))?;
        let got = api.get_vector(GetVectorRequest { r#ref: v.name.clone() }).await;
        let file = got.map_err(|e| match e.code() {
            Code::NotFound => steer_proto::status::invalid_argument(&format!("{field}.vectors[{i}].name"), e.message()),
            _ => e,
        })?;
        let digest = file.vector.and_then(|f| f.info).map(|i| i.digest).unwrap_or_default();
        let named = |what: &str, e: steer_model::hooks::ParseError| {
            steer_proto::status::invalid_argument(&format!("{field}.vectors[{i}].{what}"), &e.to_string())
        };
        let mut r = VectorRef {
            digest,
            scale: v.scale,
            first_layer: v.first_layer,
            last_layer: v.last_layer,
            force_model: v.force_model,
            ..Default::default()
        };
        if let Some(op) = &v.op {
            let op: Op = op.parse().map_err(|e| named("op", e))?;
            (r.op, r.clamp_value) = (steer_proto::hooks::wire_op(op).0, matches!(op, Op::Clamp { .. }).then_some(steer_proto::hooks::wire_op(op).1));
        }
        if let Some(w) = &v.window {
            let w: Window = w.parse().map_err(|e| named("window", e))?;
            (r.mode, r.window_start, r.window_end) = steer_proto::hooks::wire_window(w);
        }
        out.push(r);
    }
    Ok(out)
}

/// The steering tensors of `s`'s additions, inline, from the ActivationService; errors name
/// `{field}.additions[i]...`.
pub(super) async fn addition_tensors(services: &Services, s: &Steering, use_bos: bool, field: &str) -> Result<Vec<InlineTensor>, Status> {
    if s.additions.is_empty() {
        return Ok(vec![]);
    }
    let api = services.activation_api().ok_or_else(|| Status::failed_precondition(NO_ACTIVATION))?;
    let hook: HookKind = match s.hook.as_deref().unwrap_or("resid_pre").parse() {
        Ok(h) => h,
        Err(e) => return Err(steer_proto::status::invalid_argument(&format!("{field}.hook"), &e.to_string())),
    };
    let req = GetSteeringTensorsRequest {
        additions: s.additions.iter().map(|a| ActivationAddition { layer: a.layer, coeff: a.coeff, prompt: a.text.clone() }).collect(),
        hook: Hook::from(hook) as i32,
        use_bos,
        strict_lengths: false,
    };
    let rename = |s: Status| rename(s, field);
    let mut stream = api.get_steering_tensors(req).await.map_err(rename)?;
    let mut out: Vec<InlineTensor> = vec![];
    while let Some(msg) = stream.next().await {
        match msg.map_err(rename)?.event {
            Some(get_steering_tensors_response::Event::Header(h)) => out.push(InlineTensor { header: Some(h), data: vec![] }),
            Some(get_steering_tensors_response::Event::Chunk(c)) => {
                out.last_mut().ok_or_else(|| Status::internal("chunk before header"))?.data.extend_from_slice(&c.data)
            }
            _ => {}
        }
    }
    Ok(out)
}

/// What in the steering cannot change a completion ([`steer_eval::no_op_warnings`]).
pub(super) async fn no_op_warnings(services: &Services, tensors: &[InlineTensor]) -> Result<Vec<String>, Status> {
    if tensors.is_empty() {
        return Ok(vec![]);
    }
    let info = services.generation.get_model_info(tonic::Request::new(Default::default())).await?.into_inner().info.unwrap_or_default();
    let tensors: Vec<steer_eval::SteeringTensor> = tensors
        .iter()
        .map(|t| {
            let h = t.header.clone().unwrap_or_default();
            let values = t.data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
            steer_eval::SteeringTensor::prefix(h.point.unwrap_or_default(), values, info.d_model as usize)
        })
        .collect();
    Ok(steer_eval::no_op_warnings(&tensors, info.n_layer))
}

/// The activation service names fields of its own request (`additions[0].layer`): here they
/// are `{field}.additions[0].layer`.
fn rename(s: Status, field: &str) -> Status {
    if s.code() == Code::InvalidArgument && s.message().starts_with("additions") {
        return steer_proto::status::invalid_argument(
            &format!("{field}.{}", s.message().split(':').next().unwrap_or_default()),
            s.message().split_once(": ").map_or("", |p| p.1),
        );
    }
    s
}

/// A profile's vector file as inline tensors, checked against the served model.
pub(super) async fn file_tensors(services: &Services, f: &ProfileFile) -> Result<Vec<InlineTensor>, Status> {
    let info = services.generation.get_model_info(tonic::Request::new(Default::default())).await?.into_inner().info.unwrap_or_default();
    let tensors = steer_eval::SteeringTensor::from_file(&f.vector, &info, f.scale, None)
        .map_err(|err| Status::failed_precondition(format!("profile vector file {}: {err}", f.path.display())))?;
    Ok(tensors.iter().map(steer_eval::SteeringTensor::inline).collect())
}
