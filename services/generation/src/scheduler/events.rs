//! The messages of a request's stream, built from the engine's events: each row's tokens
//! detokenized as they come ([`StreamDecoder`]), and its `RowFinished` when it ends. Finish
//! reasons map through `steer-common`'s conversions.

use std::time::Instant;

use steer_common::convert;
use steer_model::tokenizer::StreamDecoder;
use steer_model::{FinishReason, Gpt2Tokenizer, Sequence};
use steer_proto::v1::{generate_response, GenerateResponse, RowFinished, TokenEvent, TopLogprob};

use crate::validation::ValidRequest;

/// One request's stream writer.
pub(super) struct EventWriter {
    decoders: Vec<StreamDecoder>,
    n_unsteered: usize,
    prompt_tokens: u32,
    seeds: Vec<u64>,
    queue_ms: f64,
}

/// When a request's phases ended, for its rows' `RowFinished`.
pub(super) struct Timing {
    pub started: Instant,
    pub prefill_ms: f64,
}

impl EventWriter {
    pub(super) fn new(request: &ValidRequest, queue_ms: f64) -> Self {
        Self {
            decoders: vec![StreamDecoder::default(); request.rows.len()],
            n_unsteered: request.n_unsteered,
            prompt_tokens: request.prompt_tokens as u32,
            seeds: request.rows.iter().map(|r| r.seed).collect(),
            queue_ms,
        }
    }

    fn steered(&self, row: usize) -> bool {
        row >= self.n_unsteered
    }

    /// Row `ev.row`'s token, its text the newly complete part of the row's UTF-8.
    pub(super) fn token(&mut self, tok: &Gpt2Tokenizer, ev: &steer_model::TokenEvent) -> GenerateResponse {
        let token = TokenEvent {
            row: ev.row as u32,
            steered: self.steered(ev.row),
            index: ev.index as u32,
            token_id: ev.token,
            text_delta: self.decoders[ev.row].push(tok, ev.token),
            logprob: ev.logprob,
            top_logprobs: ev.top_logprobs.iter().map(|&(token_id, logprob)| TopLogprob { token_id, logprob }).collect(),
        };
        GenerateResponse { event: Some(generate_response::Event::Token(token)) }
    }

    /// Row `row`'s end: its whole text, tokens, reason and timings.
    pub(super) fn finished(
        &self,
        tok: &Gpt2Tokenizer,
        row: usize,
        seq: &Sequence,
        reason: FinishReason,
        timing: &Timing,
        worker: &str,
    ) -> GenerateResponse {
        let finished = RowFinished {
            row: row as u32,
            steered: self.steered(row),
            text: tok.decode(&seq.tokens).unwrap_or_default(),
            token_ids: seq.tokens.clone(),
            reason: convert::proto_finish(reason) as i32,
            prompt_tokens: self.prompt_tokens,
            generated_tokens: seq.tokens.len() as u32,
            prefill_ms: timing.prefill_ms,
            total_ms: timing.started.elapsed().as_secs_f64() * 1e3,
            seed: self.seeds[row],
            queue_ms: self.queue_ms,
            worker: worker.to_string(),
        };
        GenerateResponse { event: Some(generate_response::Event::Finished(finished)) }
    }
}
