//! The served model's tokenizer in vLLM's shapes, so that a client without the tokenizer
//! (lm-evaluation-harness's `tokenizer_backend=remote`, offline) can count and cut tokens:
//! `GET /tokenizer_info`, `POST /tokenize {"prompt", "add_special_tokens"}` ->
//! `{"tokens", "count", "max_model_len"}`, `POST /detokenize {"tokens"}` -> `{"prompt"}`.
//! GPT-2's tokenizer adds no special tokens (as Hugging Face's), whatever
//! `add_special_tokens` says; `<|endoftext|>` in the text is that token.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::errors::body_error;
use super::errors::openai_error as error;
use crate::services::Services;

const EOS: &str = "<|endoftext|>";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TokenizeRequest {
    prompt: String,
    #[serde(default)]
    #[allow(dead_code)] // GPT-2 adds no special tokens either way
    add_special_tokens: Option<bool>,
    #[serde(default)]
    #[allow(dead_code)] // one tokenizer serves every profile
    model: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DetokenizeRequest {
    tokens: Vec<u32>,
    #[serde(default)]
    #[allow(dead_code)]
    model: Option<String>,
}

pub(super) async fn info(services: Arc<Services>) -> Response {
    let engine = match services.engine() {
        Ok(e) => e,
        Err(s) => return error(&s),
    };
    Json(json!({
        "tokenizer_class": "GPT2Tokenizer",
        "eos_token": EOS,
        "bos_token": EOS,
        "unk_token": EOS,
        "pad_token": null,
        "add_bos_token": false,
        "add_eos_token": false,
        "model_max_length": engine.info().n_positions,
        "vocab_size": engine.info().vocab_size,
    }))
    .into_response()
}

pub(super) async fn tokenize(services: Arc<Services>, body: Result<Json<TokenizeRequest>, JsonRejection>) -> Response {
    let (engine, Json(req)) = match (services.engine(), body) {
        (Err(s), _) => return error(&s),
        (_, Err(e)) => return error(&body_error(e)),
        (Ok(e), Ok(b)) => (e, b),
    };
    match engine.encode(&req.prompt, false) {
        Ok(ids) => Json(json!({"tokens": ids, "count": ids.len(), "max_model_len": engine.info().n_positions})).into_response(),
        Err(e) => error(&steer_proto::status::invalid_argument("prompt", &e.to_string())),
    }
}

pub(super) async fn detokenize(services: Arc<Services>, body: Result<Json<DetokenizeRequest>, JsonRejection>) -> Response {
    let (engine, Json(req)) = match (services.engine(), body) {
        (Err(s), _) => return error(&s),
        (_, Err(e)) => return error(&body_error(e)),
        (Ok(e), Ok(b)) => (e, b),
    };
    if let Err(e) = steer_generation::validation::token_ids(&req.tokens, engine.info().vocab_size, "tokens") {
        return error(&e.into());
    }
    Json(json!({"prompt": engine.tokenizer().decode(&req.tokens).unwrap_or_default()})).into_response()
}
