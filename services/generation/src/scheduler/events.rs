//! The messages of a request's stream, built from the engine's events: each row's tokens
//! detokenized as they come ([`StreamDecoder`]), and its `RowFinished` when it ends. Finish
//! reasons map through `steer-common`'s conversions.

use std::time::Instant;

use steer_common::convert;
use steer_model::tokenizer::StreamDecoder;
use steer_model::{FinishReason, Gpt2Tokenizer, Sequence};
use steer_proto::v1::{generate_response, GenerateResponse, RowFinished, TokenEvent, TopLogprob};

use crate::stop::StopText;
use crate::validation::ValidRequest;

/// One request's stream writer: each row's detokenizer and stop strings, and how long the
/// request queued.
pub(super) struct EventWriter {
    decoders: Vec<StreamDecoder>,
    /// Per row, with stop strings only.
    stops: Vec<StopText>,
    queue_ms: f64,
}

/// When a request's phases ended, for its rows' `RowFinished`.
pub(super) struct Timing {
    pub started: Instant,
    pub prefill_ms: f64,
}

impl EventWriter {
    pub(super) fn new(request: &ValidRequest, queue_ms: f64) -> Self {
        let stops = match request.stop.is_empty() {
            true => vec![],
            false => vec![StopText::new(&request.stop); request.rows.len()],
        };
        Self { decoders: vec![StreamDecoder::default(); request.rows.len()], stops, queue_ms }
    }

    /// Row `ev.row`'s token, its text the newly complete part of the row's UTF-8 (with stop
    /// strings: what of it can be released; everything left when `last`), and whether a stop
    /// string appeared.
    pub(super) fn token(
        &mut self,
        request: &ValidRequest,
        tok: &Gpt2Tokenizer,
        ev: &steer_model::TokenEvent,
        last: bool,
    ) -> (GenerateResponse, bool) {
        let mut text_delta = self.decoders[ev.row].push(tok, ev.token);
        let mut stopped = false;
        if let Some(stop) = self.stops.get_mut(ev.row) {
            (text_delta, stopped) = stop.push(&text_delta);
            if last && !stopped {
                text_delta.push_str(&stop.finish());
            }
        }
        let token = TokenEvent {
            row: ev.row as u32,
            steered: ev.row >= request.n_unsteered,
            index: ev.index as u32,
            token_id: ev.token,
            text_delta,
            logprob: ev.logprob,
            top_logprobs: ev
                .top_logprobs
                .iter()
                .map(|&(token_id, logprob)| TopLogprob { token_id, logprob, text: tok.decode(&[token_id]).unwrap_or_default() })
                .collect(),
        };
        (GenerateResponse { event: Some(generate_response::Event::Token(token)) }, stopped)
    }

    /// Row `row`'s end: its whole text, tokens, reason and timings.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn finished(
        &self,
        request: &ValidRequest,
        tok: &Gpt2Tokenizer,
        row: usize,
        seq: &Sequence,
        reason: FinishReason,
        timing: &Timing,
        worker: &str,
    ) -> GenerateResponse {
        let finished = RowFinished {
            row: row as u32,
            steered: row >= request.n_unsteered,
            text: match self.stops.get(row) {
                Some(stop) => stop.text().to_string(),
                None => tok.decode(&seq.tokens).unwrap_or_default(),
            },
            token_ids: seq.tokens.clone(),
            reason: convert::proto_finish(reason) as i32,
            prompt_tokens: request.prompt_tokens as u32,
            generated_tokens: seq.tokens.len() as u32,
            prefill_ms: timing.prefill_ms,
            total_ms: timing.started.elapsed().as_secs_f64() * 1e3,
            seed: request.rows[row].seed,
            queue_ms: self.queue_ms,
            worker: worker.to_string(),
        };
        GenerateResponse { event: Some(generate_response::Event::Finished(finished)) }
    }
}
