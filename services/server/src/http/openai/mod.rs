//! `POST /v1/completions`, OpenAI's completions API to the letter (vLLM's behaviour where the
//! spec is silent), plus a `steering` field as vLLM-based steering servers take it:
//!
//! ```json
//! {"model": "gpt2-xl", "prompt": "I hate you because", "max_tokens": 20, "seed": 0,
//!  "steering": {"hook": "resid_pre", "additions": [{"layer": 6, "coeff": 5, "text": "Love"},
//!                                                  {"layer": 6, "coeff": -5, "text": "Hate"}],
//!               "compare": true}}
//! ```
//!
//! - `prompt`: a string, a list of strings, token ids or a list of token-id lists; one set of
//!   choices per prompt, `index` in prompt order (prompt p's choices at `p * per_prompt ..`).
//!   Token ids are taken as they are (no BOS added); a text prompt gets BOS unless the
//!   steering's `use_bos` is false.
//! - Choices per prompt: `n`, or with `"compare": true` the `n` unsteered ones first and then
//!   the `n` steered ones; every choice says whether it was `steered`.
//! - `model`: the served model (unsteered), or a steering profile ([`crate::profiles`]),
//!   or a library vector by name; anything else is 404 `model_not_found`.
//! - `echo` returns the prompt before the completion; with `logprobs` (0..=20) the prompt's
//!   tokens come with their log-probabilities (the first `null` when nothing precedes it) from
//!   the teacher-forced `Score` path and its prefix cache (texts that begin alike compute
//!   their shared beginning once), then the generated tokens'; `max_tokens: 0` with `echo`
//!   returns the prompt only.
//! - `stop` (a string or up to 4): the generation ends there, the stop string left out,
//!   `finish_reason: "stop"`. `usage` counts every prompt's tokens and every choice's.
//! - `stream`: Server-Sent Events (`data: {chunk}` per token, then `data: [DONE]`; with
//!   `stream_options.include_usage` a last chunk carries `usage`).
//!
//! It goes through the same services (gates, validation, batching, metrics) as gRPC.
//! Errors are OpenAI error objects with the HTTP status of the gRPC code and `param` the
//! request field; bearer tokens apply as for gRPC (the SDK's `api_key`).

mod logprobs;
pub mod request;
mod tensors;

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::rejection::JsonRejection;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::stream::BoxStream;
use serde_json::{json, Value};
use steer_model::Engine;
use steer_proto::v1::generation_service_server::GenerationService;
use steer_proto::v1::{
    generate_from_tensors_response, FinishReason, GenerateFromTensorsRequest, GenerateSetup, InlineTensor, RowFinished, SamplingParameters,
    ScoreRequest, ScoreText, ShortPrompt, TextScore, TokenEvent, VectorRef,
};
use tokio_stream::StreamExt;
use tonic::Status;

use self::logprobs::Logprobs;
use self::request::{Completion, Prompt};
use self::tensors::{addition_tensors, file_tensors, no_op_warnings, vector_refs};
use super::errors::{body_error, openai_error as error, stream_error};
use super::models;
use crate::services::Services;

fn finish_reason(r: i32) -> &'static str {
    FinishReason::try_from(r).unwrap_or_default().name()
}

/// `POST /v1/completions`.
pub async fn completions(services: Arc<Services>, body: Result<Json<Value>, JsonRejection>) -> Response {
    let req = match body.map_err(body_error).and_then(|Json(v)| request::parse(v)) {
        Ok(r) => r,
        Err(s) => return error(&s),
    };
    match start(&services, req).await {
        Ok(resp) | Err(resp) => resp,
    }
}

/// One prompt as the model sees it.
struct Planned {
    /// Its tokens (BOS first when the server added one).
    ids: Vec<u32>,
    /// The text prompt, when it was one (sent as text, so padding goes after BOS as always).
    text: Option<String>,
    /// The server put BOS in front: it is not echoed, and the first echoed token has a context.
    bos_added: bool,
}

impl Planned {
    fn echoed(&self) -> &[u32] {
        &self.ids[self.bos_added as usize..]
    }
}

/// What every prompt of a request shares.
struct Shared {
    req: Completion,
    model: String,
    tensors: Vec<InlineTensor>,
    vectors: Vec<VectorRef>,
    steered: bool,
    compare: bool,
    use_bos: bool,
    short_prompt: ShortPrompt,
    engine: Arc<Engine>,
}

impl Shared {
    /// Choices per prompt.
    fn per_prompt(&self) -> usize {
        self.req.n as usize * if self.compare { 2 } else { 1 }
    }

    /// Whether row `r` of a prompt is steered, and which Score side it reads.
    fn row(&self, r: usize) -> (bool, usize) {
        let unsteered = self.compare && r < self.req.n as usize;
        (self.steered && !unsteered, if self.compare && !unsteered { 1 } else { 0 })
    }

    fn setup(&self, p: &Planned) -> GenerateSetup {
        let r = &self.req;
        GenerateSetup {
            prompt: p.text.clone().unwrap_or_default(),
            use_bos: p.bos_added,
            prompt_token_ids: if p.text.is_some() { vec![] } else { p.ids.clone() },
            sampling: Some(SamplingParameters {
                temperature: r.temperature,
                top_p: r.top_p,
                top_k: r.top_k,
                repetition_penalty: r.repetition_penalty,
                frequency_penalty: r.frequency_penalty,
                presence_penalty: r.presence_penalty,
            }),
            n_comparisons: r.n,
            max_new_tokens: r.max_tokens,
            seed: r.seed,
            n_tensors: self.tensors.len() as u32,
            top_logprobs: r.logprobs.unwrap_or(0),
            skip_unsteered: !self.compare,
            ignore_eos: r.ignore_eos,
            vectors: self.vectors.clone(),
            short_prompt: self.short_prompt as i32,
            stop: r.stop.clone(),
        }
    }

    fn head(&self, id: &str, created: u64, choices: Value) -> Value {
        json!({"id": id, "object": "text_completion", "created": created, "model": self.model, "choices": choices})
    }
}

async fn start(services: &Arc<Services>, req: Completion) -> Result<Response, Response> {
    let e = |s: Status| error(&s);
    if !services.cfg.role.generation() {
        return Err(e(Status::failed_precondition("completions need the GenerationService in this process")));
    }
    let engine = services.engine().map_err(e)?.clone();
    let profile = models::select(services, req.model.as_deref()).await?;
    let model = req.model.clone().or_else(|| services.served_model_name()).unwrap_or_default();
    let (steering, field, file) = match (&profile, &req.steering) {
        (Some(p), Some(_)) => {
            let why = format!("model `{}` is a steering profile: give steering with the served model, or the profile alone", p.name);
            return Err(e(steer_proto::status::invalid_argument("steering", &why)));
        }
        (Some(p), None) => (p.steering.clone(), "model", p.file.clone()),
        (None, s) => (s.clone().unwrap_or_default(), "steering", None),
    };
    let use_bos = steering.use_bos.unwrap_or(true);
    let mut tensors = addition_tensors(services, &steering, use_bos, field).await.map_err(e)?;
    if let Some(f) = &file {
        tensors.extend(file_tensors(services, f).await.map_err(e)?);
    }
    let vectors = vector_refs(services, &steering, field).await.map_err(e)?;
    let warnings = no_op_warnings(services, &tensors).await.map_err(e)?;
    let steered = !tensors.is_empty() || !vectors.is_empty();
    let short_prompt = if steering.pad_short_prompt { ShortPrompt::Pad } else { ShortPrompt::Error };
    let planned: Vec<Planned> = req
        .prompts
        .iter()
        .enumerate()
        .map(|(i, p)| match p {
            Prompt::Text(t) => {
                let ids =
                    engine.encode(t, use_bos).map_err(|err| steer_proto::status::invalid_argument(&format!("prompt[{i}]"), &err.to_string()))?;
                if ids.is_empty() {
                    return Err(steer_proto::status::invalid_argument(
                        "prompt",
                        "an empty prompt without BOS gives the model nothing to condition on",
                    ));
                }
                Ok(Planned { ids, text: Some(t.clone()), bos_added: use_bos })
            }
            Prompt::Ids(ids) => Ok(Planned { ids: ids.clone(), text: None, bos_added: false }),
        })
        .collect::<Result<_, Status>>()
        .map_err(e)?;
    let shared = Arc::new(Shared { compare: steered && steering.compare, req, model, tensors, vectors, steered, use_bos, short_prompt, engine });
    // The echoed prompts' log-probabilities first: the generations then find the prompts'
    // states in the prefix cache.
    let scores = match (shared.req.echo, shared.req.logprobs) {
        (true, Some(k)) => score_prompts(services, &shared, &planned, k).await.map_err(e)?,
        _ => vec![vec![]; planned.len()],
    };
    let mut generations = vec![];
    if shared.req.max_tokens > 0 {
        for p in &planned {
            let call = GenerateFromTensorsRequest { setup: Some(shared.setup(p)), tensors: shared.tensors.clone() };
            generations.push(Some(services.generation.generate_from_tensors(tonic::Request::new(call)).await.map_err(e)?.into_inner()));
        }
    } else {
        generations.resize_with(planned.len(), || None);
    }
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let (id, created) = (format!("cmpl-{:x}", now.as_nanos()), now.as_secs());
    let prompts: Vec<Prompted> = planned.into_iter().zip(scores).map(|(plan, scores)| Prompted { plan, scores }).collect();
    if shared.req.stream {
        return Ok(streamed(shared, prompts, generations, id, created));
    }
    Ok(whole(shared, prompts, generations, id, created, warnings))
}

/// A prompt with its echo scores (per Score side).
struct Prompted {
    plan: Planned,
    scores: Vec<TextScore>,
}

type Events = std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<steer_proto::v1::GenerateFromTensorsResponse, Status>> + Send>>;

/// The echoed prompts' log-probabilities, per prompt and Score side (unsteered first with
/// compare), through `Score` with the prefix cache shared across requests.
async fn score_prompts(services: &Services, shared: &Shared, planned: &[Planned], k: u32) -> Result<Vec<Vec<TextScore>>, Status> {
    // A one-token prompt without BOS has nothing to score.
    let which: Vec<usize> = (0..planned.len()).filter(|&i| planned[i].ids.len() >= 2).collect();
    let mut out = vec![vec![]; planned.len()];
    if which.is_empty() {
        return Ok(out);
    }
    let req = ScoreRequest {
        texts: which.iter().map(|&i| ScoreText { token_ids: planned[i].ids.clone(), score_from: 1, ..Default::default() }).collect(),
        use_bos: shared.use_bos,
        tensors: shared.tensors.clone(),
        vectors: shared.vectors.clone(),
        include_unsteered: shared.compare,
        short_prompt: shared.short_prompt as i32,
        kl_top: 0,
        top_logprobs: k,
        share_prefixes: true,
    };
    let mut stream = services.generation.score(tonic::Request::new(req)).await?.into_inner();
    while let Some(msg) = stream.next().await {
        if let Some(s) = msg?.score {
            out[which[s.index as usize]].push(s);
        }
    }
    Ok(out)
}

/// One choice being assembled.
struct Choice {
    text: String,
    logprobs: Option<Logprobs>,
    finished: Option<RowFinished>,
}

impl Shared {
    /// Choice `r` of prompt `p` before any generated token: the echo, when asked.
    fn choice(&self, p: &Prompted, r: usize) -> Choice {
        let tok = self.engine.tokenizer();
        let (text, mut logprobs) = (String::new(), self.req.logprobs.map(|_| Logprobs::starting_at(0)));
        if !self.req.echo {
            return Choice { text, logprobs, finished: None };
        }
        let echoed = match &p.plan.text {
            Some(t) => t.clone(),
            None => tok.decode(p.plan.echoed()).unwrap_or_default(),
        };
        if let (Some(lp), Some(k)) = (&mut logprobs, self.req.logprobs) {
            let score = p.scores.get(self.row(r).1);
            lp.echo(tok, p.plan.echoed(), score, p.plan.bos_added, k as usize);
            // Offsets of generated tokens continue after the echoed text.
            lp.continue_at(echoed.chars().count());
        }
        Choice { text: echoed, logprobs, finished: None }
    }

    fn choice_json(&self, index: usize, c: &Choice, steered: bool) -> Value {
        let f = c.finished.as_ref();
        json!({"index": index, "text": c.text, "logprobs": c.logprobs.as_ref().map(Logprobs::json),
               "finish_reason": f.map_or("length", |f| finish_reason(f.reason)), "steered": steered,
               "seed": f.map(|f| f.seed)})
    }
}

fn usage(prompt_tokens: u64, completion_tokens: u64) -> Value {
    json!({"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens})
}

/// The whole response once every choice finished: the headers go now (the request timeout
/// bounds only the start), the body when every row has finished.
fn whole(shared: Arc<Shared>, prompts: Vec<Prompted>, generations: Vec<Option<Events>>, id: String, created: u64, warnings: Vec<String>) -> Response {
    let body = async move {
        let per = shared.per_prompt();
        let tok = shared.engine.tokenizer();
        let k = shared.req.logprobs.unwrap_or(0) as usize;
        let (mut choices, mut prompt_tokens, mut completion_tokens) = (vec![], 0u64, 0u64);
        for (p, events) in prompts.iter().zip(generations) {
            let mut rows: Vec<Choice> = (0..per).map(|r| shared.choice(p, r)).collect();
            let mut seen_prompt = p.plan.ids.len() as u64;
            if let Some(mut events) = events {
                while let Some(ev) = events.next().await {
                    match ev.map(|m| m.event) {
                        Ok(Some(generate_from_tensors_response::Event::Token(t))) => {
                            if let Some(lp) = rows.get_mut(t.row as usize).and_then(|c| c.logprobs.as_mut()) {
                                lp.generated(tok, &t, k);
                            }
                        }
                        Ok(Some(generate_from_tensors_response::Event::Finished(f))) => {
                            seen_prompt = f.prompt_tokens as u64;
                            completion_tokens += f.generated_tokens as u64;
                            if let Some(c) = rows.get_mut(f.row as usize) {
                                c.text.push_str(&f.text);
                                c.finished = Some(f);
                            }
                        }
                        Ok(None) => {}
                        Err(s) => return stream_error(&s).to_string(),
                    }
                }
            }
            prompt_tokens += seen_prompt;
            let base = choices.len();
            for (r, c) in rows.iter().enumerate() {
                choices.push(shared.choice_json(base + r, c, shared.row(r).0));
            }
        }
        let mut obj = shared.head(&id, created, Value::Array(choices));
        obj["usage"] = usage(prompt_tokens, completion_tokens);
        if !warnings.is_empty() {
            obj["warnings"] = json!(warnings);
        }
        obj.to_string()
    };
    let body = Body::from_stream(futures::stream::once(body).map(Ok::<_, Infallible>));
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// Server-Sent Events: per prompt its echo chunks, then a chunk per token and per finished
/// row; prompts interleave as their tokens come; `[DONE]` last.
fn streamed(shared: Arc<Shared>, prompts: Vec<Prompted>, generations: Vec<Option<Events>>, id: String, created: u64) -> Response {
    let per = shared.per_prompt();
    let totals = Arc::new((AtomicU64::new(0), AtomicU64::new(0)));
    let mut streams: Vec<BoxStream<'static, String>> = vec![];
    for (i, (p, events)) in prompts.into_iter().zip(generations).enumerate() {
        let base = i * per;
        let mut rows: Vec<Choice> = (0..per).map(|r| shared.choice(&p, r)).collect();
        let mut first = vec![];
        if shared.req.echo {
            for (r, c) in rows.iter().enumerate() {
                let mut chunk = json!({"index": base + r, "text": c.text, "logprobs": c.logprobs.as_ref().map(Logprobs::json),
                                       "finish_reason": null, "steered": shared.row(r).0});
                if events.is_none() {
                    chunk["finish_reason"] = json!("length");
                }
                first.push(shared.head(&id, created, json!([chunk])));
            }
        }
        totals.0.fetch_add(p.plan.ids.len() as u64, Ordering::Relaxed);
        let head = futures::stream::iter(first.into_iter().map(|v| format!("data: {v}\n\n")));
        let Some(events) = events else {
            streams.push(Box::pin(head));
            continue;
        };
        let (shared, id, totals) = (shared.clone(), id.clone(), totals.clone());
        let k = shared.req.logprobs.unwrap_or(0) as usize;
        let body = events.map(move |ev| {
            let tok = shared.engine.tokenizer();
            let chunk = match ev.map(|e| e.event) {
                Ok(Some(generate_from_tensors_response::Event::Token(t))) => token_chunk(&shared, &mut rows, base, &t, k, tok),
                Ok(Some(generate_from_tensors_response::Event::Finished(f))) => {
                    totals.1.fetch_add(f.generated_tokens as u64, Ordering::Relaxed);
                    json!([{"index": base + f.row as usize, "text": "", "logprobs": null,
                            "finish_reason": finish_reason(f.reason), "steered": shared.row(f.row as usize).0}])
                }
                Ok(None) => return String::new(),
                Err(s) => return format!("data: {}\n\n", stream_error(&s)),
            };
            format!("data: {}\n\n", shared.head(&id, created, chunk))
        });
        streams.push(Box::pin(head.chain(body)));
    }
    let merged = futures::stream::select_all(streams);
    let tail = {
        let (shared, id) = (shared.clone(), id.clone());
        futures::stream::once(async move {
            let mut out = String::new();
            if shared.req.include_usage {
                let mut last = shared.head(&id, created, json!([]));
                last["usage"] = usage(totals.0.load(Ordering::Relaxed), totals.1.load(Ordering::Relaxed));
                out.push_str(&format!("data: {last}\n\n"));
            }
            out.push_str("data: [DONE]\n\n");
            out
        })
    };
    let body = Body::from_stream(merged.chain(tail).map(Ok::<_, Infallible>));
    ([(header::CONTENT_TYPE, "text/event-stream"), (header::CACHE_CONTROL, "no-cache")], body).into_response()
}

/// A streamed token's chunk, its logprobs (when asked) continuing the row's offsets.
fn token_chunk(shared: &Shared, rows: &mut [Choice], base: usize, t: &TokenEvent, k: usize, tok: &steer_model::Gpt2Tokenizer) -> Value {
    let r = t.row as usize;
    let logprobs = rows.get_mut(r).and_then(|c| c.logprobs.as_mut()).map(|lp| {
        let from = lp.len();
        lp.generated(tok, t, k);
        lp.since(from)
    });
    json!([{"index": base + r, "text": t.text_delta, "logprobs": logprobs, "finish_reason": null, "steered": shared.row(r).0}])
}
