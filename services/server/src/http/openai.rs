//! HTTP/JSON for curl and OpenAI SDK users, on the service port: `POST /v1/completions`, an
//! OpenAI-compatible completion (object `text_completion`) with a `steering` field, as
//! vLLM-based steering servers take it:
//!
//! ```json
//! {"prompt": "I hate you because", "max_tokens": 20, "seed": 0,
//!  "steering": {"hook": "resid_pre", "additions": [{"layer": 6, "coeff": 5, "text": "Love"},
//!                                                  {"layer": 6, "coeff": -5, "text": "Hate"}],
//!               "compare": true}}
//! ```
//!
//! The choices are the steered completions; with `"compare": true` the unsteered ones come
//! first, and every choice says which it is (`"steered"`). `"stream": true` streams Server-Sent
//! Events (`data: {chunk}` per token, then `data: [DONE]`). It goes through the same services
//! (gates, validation, batching, metrics) as gRPC: the steering tensors from the
//! ActivationService, the completion from the GenerationService's `GenerateFromTensors`. Errors
//! come as OpenAI error objects with the HTTP status of the gRPC code; bearer tokens apply as
//! for gRPC (the SDK's `api_key`).

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::rejection::JsonRejection;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use steer_model::HookKind;
use steer_proto::v1::generation_service_server::GenerationService;
use steer_proto::v1::{
    generate_from_tensors_response, get_steering_tensors_response, ActivationAddition, FinishReason, GenerateFromTensorsRequest, GenerateSetup,
    GetSteeringTensorsRequest, GetVectorRequest, Hook, InlineTensor, SamplingParameters, ShortPrompt, VectorRef,
};
use tokio_stream::StreamExt;
use tonic::{Code, Status};

use super::errors::{body_error, error_naming, stream_error};
use crate::services::Services;

/// OpenAI's completion request, the fields that apply, plus `steering`.
#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    pub prompt: String,
    #[serde(default)]
    pub model: Option<String>,
    /// OpenAI's default.
    #[serde(default = "sixteen")]
    pub max_tokens: u32,
    #[serde(default)]
    pub temperature: Option<f32>,
    #[serde(default)]
    pub top_p: Option<f32>,
    #[serde(default)]
    pub frequency_penalty: Option<f32>,
    #[serde(default)]
    pub presence_penalty: Option<f32>,
    /// Completions per side.
    #[serde(default)]
    pub n: Option<u32>,
    #[serde(default)]
    pub seed: Option<u64>,
    #[serde(default)]
    pub stream: bool,
    #[serde(default)]
    pub steering: Option<Steering>,
}

fn sixteen() -> u32 {
    16
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Steering {
    /// `resid_pre` (default) or `block_output` (`resid-pre`, `block-output` too).
    #[serde(default)]
    pub hook: Option<String>,
    /// A prompt shorter than the steering is padded with spaces after BOS (else refused).
    #[serde(default)]
    pub pad_short_prompt: bool,
    #[serde(default)]
    pub additions: Vec<SteeringAddition>,
    /// Library vectors, by name, digest or digest prefix, each with an optional scale and layer
    /// range.
    #[serde(default)]
    pub vectors: Vec<SteeringVectorRef>,
    /// Return the unsteered completions too (first), each choice marked.
    #[serde(default)]
    pub compare: bool,
    /// Prepend <|endoftext|> (default true, the post's).
    #[serde(default)]
    pub use_bos: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SteeringAddition {
    pub layer: u32,
    pub coeff: f64,
    pub text: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SteeringVectorRef {
    /// Name, digest or digest prefix (8+ hex digits) in the library.
    pub name: String,
    #[serde(default)]
    pub scale: Option<f64>,
    #[serde(default)]
    pub first_layer: Option<u32>,
    #[serde(default)]
    pub last_layer: Option<u32>,
    /// Apply it though it was made on other weights of the same shape.
    #[serde(default)]
    pub force_model: bool,
}

/// Why steering cannot be computed here.
const NO_ACTIVATION: &str =
    "steering needs an ActivationService: in this process (steer serve), or the activation worker a generation worker is given with --vector-source";

/// The library vectors of `s` as references by digest (names resolved in the activation
/// service's library).
async fn vector_refs(services: &Services, s: &Steering) -> Result<Vec<VectorRef>, Status> {
    let mut out = vec![];
    for (i, v) in s.vectors.iter().enumerate() {
        let api = services.activation_api().ok_or_else(|| Status::failed_precondition(NO_ACTIVATION))?;
        let got = api.get_vector(GetVectorRequest { r#ref: v.name.clone() }).await;
        let file = got.map_err(|e| match e.code() {
            Code::NotFound => steer_proto::status::invalid_argument(&format!("steering.vectors[{i}].name"), e.message()),
            _ => e,
        })?;
        let digest = file.vector.and_then(|f| f.info).map(|i| i.digest).unwrap_or_default();
        out.push(VectorRef { digest, scale: v.scale, first_layer: v.first_layer, last_layer: v.last_layer, force_model: v.force_model });
    }
    Ok(out)
}

/// An OpenAI error object with the HTTP status of the gRPC code; `param` names the field.
pub(super) fn error(status: &Status) -> Response {
    error_naming(status, openai_param)
}

/// A field of the GenerateSetup this request became, by its name in the OpenAI request.
fn openai_param(field: &str) -> String {
    let f = field.strip_prefix("setup.").unwrap_or(field);
    let f = f.strip_prefix("sampling.").unwrap_or(f);
    match f {
        "max_new_tokens" => "max_tokens".into(),
        "n_comparisons" => "n".into(),
        _ if f.starts_with("tensors") => "steering".into(),
        _ if f.starts_with("vectors") => format!("steering.{f}"),
        _ => f.into(),
    }
}

fn finish_reason(r: i32) -> &'static str {
    FinishReason::try_from(r).unwrap_or_default().name()
}

/// The steering tensors of `s`, inline, from the ActivationService (this process's, or the one
/// `--vector-source` names).
async fn steering_tensors(services: &Services, s: &Steering, use_bos: bool) -> Result<Vec<InlineTensor>, Status> {
    let api = services.activation_api().ok_or_else(|| Status::failed_precondition(NO_ACTIVATION))?;
    let hook: HookKind = match s.hook.as_deref().unwrap_or("resid_pre").parse() {
        Ok(h) => h,
        Err(e) => return Err(steer_proto::status::invalid_argument("steering.hook", &e.to_string())),
    };
    let req = GetSteeringTensorsRequest {
        additions: s.additions.iter().map(|a| ActivationAddition { layer: a.layer, coeff: a.coeff, prompt: a.text.clone() }).collect(),
        hook: Hook::from(hook) as i32,
        use_bos,
        strict_lengths: false,
    };
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

/// What in the steering cannot change a completion ([`steer_eval::no_op_warnings`]), returned
/// as the response's `warnings`.
async fn no_op_warnings(services: &Services, tensors: &[InlineTensor]) -> Result<Vec<String>, Status> {
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
/// are `steering.additions[0].layer`.
fn rename(s: Status) -> Status {
    if s.code() == Code::InvalidArgument && s.message().starts_with("additions") {
        return steer_proto::status::invalid_argument(
            &format!("steering.{}", s.message().split(':').next().unwrap_or_default()),
            s.message().split_once(": ").map_or("", |p| p.1),
        );
    }
    s
}

/// `POST /v1/completions`.
pub async fn completions(services: Arc<Services>, body: Result<Json<CompletionRequest>, JsonRejection>) -> Response {
    let Json(req) = match body {
        Ok(b) => b,
        Err(e) => return error(&body_error(e)),
    };
    match start(&services, &req).await {
        Ok(resp) => resp,
        Err(s) => error(&s),
    }
}

async fn start(services: &Arc<Services>, req: &CompletionRequest) -> Result<Response, Status> {
    if !services.cfg.role.generation() {
        return Err(Status::failed_precondition("completions need the GenerationService in this process"));
    }
    let use_bos = req.steering.as_ref().and_then(|s| s.use_bos).unwrap_or(true);
    let tensors = match &req.steering {
        Some(s) if !s.additions.is_empty() => steering_tensors(services, s, use_bos).await?,
        _ => vec![],
    };
    let vectors = match &req.steering {
        Some(s) => vector_refs(services, s).await?,
        None => vec![],
    };
    let warnings = no_op_warnings(services, &tensors).await?;
    let compare = req.steering.as_ref().is_some_and(|s| s.compare);
    let n = req.n.unwrap_or(1);
    let setup = GenerateSetup {
        prompt: req.prompt.clone(),
        use_bos,
        sampling: Some(SamplingParameters {
            temperature: req.temperature.unwrap_or(1.0),
            top_p: req.top_p.filter(|&p| p < 1.0),
            frequency_penalty: req.frequency_penalty.unwrap_or(0.0),
            presence_penalty: req.presence_penalty.unwrap_or(0.0),
            ..Default::default()
        }),
        n_comparisons: n,
        max_new_tokens: req.max_tokens,
        seed: req.seed.unwrap_or(0),
        n_tensors: tensors.len() as u32,
        skip_unsteered: !compare,
        vectors,
        short_prompt: if req.steering.as_ref().is_some_and(|s| s.pad_short_prompt) { ShortPrompt::Pad } else { ShortPrompt::Error } as i32,
        ..Default::default()
    };
    let call = GenerateFromTensorsRequest { setup: Some(setup), tensors };
    let events = services.generation.generate_from_tensors(tonic::Request::new(call)).await?.into_inner();
    let model = req.model.clone().unwrap_or_else(|| "steer".into());
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let (id, created) = (format!("cmpl-{:x}", now.as_nanos()), now.as_secs());
    // A choice's index is its row: unsteered rows (compare only) first, then the steered ones.
    let head = move |choices: Value| json!({"id": id, "object": "text_completion", "created": created, "model": model, "choices": choices});
    if req.stream {
        let sse = events.map(move |ev| {
            let line = match ev.map(|e| e.event) {
                Ok(Some(generate_from_tensors_response::Event::Token(t))) => head(json!([{
                    "index": t.row, "text": t.text_delta, "logprobs": null, "finish_reason": null, "steered": t.steered,
                }])),
                Ok(Some(generate_from_tensors_response::Event::Finished(f))) => head(json!([{
                    "index": f.row, "text": "", "logprobs": null, "finish_reason": finish_reason(f.reason), "steered": f.steered,
                }])),
                Ok(None) => return Ok::<_, Infallible>(String::new()),
                Err(s) => stream_error(&s),
            };
            Ok(format!("data: {line}\n\n"))
        });
        let done = tokio_stream::once(Ok("data: [DONE]\n\n".to_string()));
        let body = Body::from_stream(sse.chain(done));
        return Ok(([(header::CONTENT_TYPE, "text/event-stream"), (header::CACHE_CONTROL, "no-cache")], body).into_response());
    }
    // Whole completions: the headers go now (the request timeout bounds only the start), the
    // body when every row has finished.
    let body = async move {
        let mut rows = vec![];
        let mut events = events;
        while let Some(ev) = events.next().await {
            match ev {
                Ok(m) => {
                    if let Some(generate_from_tensors_response::Event::Finished(f)) = m.event {
                        rows.push(f);
                    }
                }
                Err(s) => return stream_error(&s).to_string(),
            }
        }
        rows.sort_by_key(|f| f.row);
        let prompt_tokens = rows.first().map_or(0, |f| f.prompt_tokens);
        let completion_tokens: u32 = rows.iter().map(|f| f.generated_tokens).sum();
        let choices: Vec<Value> = rows
            .iter()
            .map(|f| {
                json!({"index": f.row, "text": f.text, "logprobs": null,
                       "finish_reason": finish_reason(f.reason), "steered": f.steered, "seed": f.seed})
            })
            .collect();
        let mut obj = head(Value::Array(choices));
        obj["usage"] = json!({"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                              "total_tokens": prompt_tokens + completion_tokens});
        if !warnings.is_empty() {
            obj["warnings"] = json!(warnings);
        }
        obj.to_string()
    };
    let body = Body::from_stream(futures::stream::once(body).map(Ok::<_, Infallible>));
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}
