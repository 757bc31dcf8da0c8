//! The one place that turns the services' response streams back into values, whatever carries
//! them (a gRPC stream, or a service called in process): generations into a [`Comparison`],
//! steering tensors, activations.

use futures::{Stream, StreamExt};
use steer_proto::v1::{
    self, generate_from_tensors_response, generate_response, get_activations_response, get_steering_tensors_response, TensorChunk,
};
use steer_proto::wire::TensorAssembler;
use tonic::Status;

use crate::backend::Activations;
use crate::error::{Error, Result};
use crate::run::{Comparison, Completion, SteeringTensor};

/// Largest tensor accepted from a server (a GPT-2-XL `[1024, 1600]` f32 is 6.5 MB).
pub const MAX_TENSOR_BYTES: u64 = 1 << 30;

/// One event of a generation, whichever RPC streamed it.
pub enum GenerationEvent {
    Token(v1::TokenEvent),
    Finished(v1::RowFinished),
}

/// A response message of a generating RPC (Generate, GenerateFromTensors).
pub trait IntoGenerationEvent {
    fn into_event(self) -> Option<GenerationEvent>;
}

impl IntoGenerationEvent for v1::GenerateResponse {
    fn into_event(self) -> Option<GenerationEvent> {
        match self.event? {
            generate_response::Event::Token(t) => Some(GenerationEvent::Token(t)),
            generate_response::Event::Finished(f) => Some(GenerationEvent::Finished(f)),
        }
    }
}

impl IntoGenerationEvent for v1::GenerateFromTensorsResponse {
    fn into_event(self) -> Option<GenerationEvent> {
        match self.event? {
            generate_from_tensors_response::Event::Token(t) => Some(GenerationEvent::Token(t)),
            generate_from_tensors_response::Event::Finished(f) => Some(GenerationEvent::Finished(f)),
        }
    }
}

impl Comparison {
    /// An empty comparison, to [`collect`] into.
    pub fn new() -> Self {
        Self { unsteered: vec![], steered: vec![] }
    }

    /// Rows finished so far, both sides.
    pub fn rows(&self) -> usize {
        self.unsteered.len() + self.steered.len()
    }

    /// A finished row, on its side, in row order (rows finish in any order).
    pub fn push(&mut self, f: v1::RowFinished) {
        let c = Completion::from(f);
        let side = if c.steered { &mut self.steered } else { &mut self.unsteered };
        let at = side.partition_point(|o| o.row < c.row);
        side.insert(at, c);
    }
}

impl Default for Comparison {
    fn default() -> Self {
        Self::new()
    }
}

/// One message of a generation stream: a token to `on_token`, a finished row into `cmp`.
pub fn collect(msg: impl IntoGenerationEvent, cmp: &mut Comparison, mut on_token: impl FnMut(&v1::TokenEvent)) {
    match msg.into_event() {
        Some(GenerationEvent::Token(t)) => on_token(&t),
        Some(GenerationEvent::Finished(f)) => cmp.push(f),
        None => {}
    }
}

/// Drains a generation stream into its finished rows (in row order), passing each token to
/// `on_token`.
pub async fn drain<S, M>(mut stream: S, mut on_token: impl FnMut(&v1::TokenEvent)) -> Result<Comparison>
where
    S: Stream<Item = std::result::Result<M, Status>> + Unpin,
    M: IntoGenerationEvent,
{
    let mut cmp = Comparison::new();
    while let Some(msg) = stream.next().await {
        collect(msg?, &mut cmp, &mut on_token);
    }
    Ok(cmp)
}

/// Steering tensors from a GetSteeringTensors response stream (any transport).
pub async fn collect_steering_tensors<S>(mut stream: S) -> Result<Vec<SteeringTensor>>
where
    S: Stream<Item = std::result::Result<v1::GetSteeringTensorsResponse, Status>> + Unpin,
{
    let mut out = vec![];
    let mut current: Option<(TensorAssembler, Vec<TensorChunk>)> = None;
    while let Some(msg) = stream.next().await {
        match msg?.event {
            Some(get_steering_tensors_response::Event::Header(h)) => {
                let asm = TensorAssembler::new(h, MAX_TENSOR_BYTES).map_err(|e| Error::Protocol(e.to_string()))?;
                current = Some((asm, vec![]));
            }
            Some(get_steering_tensors_response::Event::Chunk(c)) => {
                let (asm, chunks) = current.as_mut().ok_or_else(|| Error::Protocol("chunk before header".into()))?;
                asm.push(&c).map_err(|e| Error::Protocol(e.to_string()))?;
                chunks.push(c);
            }
            _ => {}
        }
        if current.as_ref().is_some_and(|(a, _)| a.is_complete()) {
            let (asm, chunks) = current.take().expect("complete");
            let (header, _, values) = asm.finish_f32().map_err(|e| Error::Protocol(e.to_string()))?;
            out.push(SteeringTensor { header, values, chunks });
        }
    }
    Ok(out)
}

/// Activations from a GetActivations response stream (any transport), for `n` prompts.
pub async fn collect_activations<S>(mut stream: S, n: usize) -> Result<Activations>
where
    S: Stream<Item = std::result::Result<v1::GetActivationsResponse, Status>> + Unpin,
{
    let mut out: Activations = vec![vec![]; n];
    let mut current: Option<(usize, usize, usize, Vec<u8>)> = None;
    while let Some(msg) = stream.next().await {
        match msg?.event {
            Some(get_activations_response::Event::Header(h)) => {
                let (len, d) = (h.shape.first().copied().unwrap_or(0) as usize, h.shape.get(1).copied().unwrap_or(0) as usize);
                if len.saturating_mul(d) > (MAX_TENSOR_BYTES / 4) as usize || h.prompt_index as usize >= n {
                    return Err(Error::Protocol(format!("activation header {:?} out of range", h.shape)));
                }
                current = Some((h.prompt_index as usize, len, d, Vec::with_capacity(len * d * 4)));
            }
            Some(get_activations_response::Event::Chunk(c)) => {
                let (_, _, _, buf) = current.as_mut().ok_or_else(|| Error::Protocol("chunk before header".into()))?;
                buf.extend_from_slice(&c.data);
            }
            _ => {}
        }
        if let Some((i, len, d, buf)) = current.take() {
            if buf.len() == len * d * 4 {
                out[i].push((len, d, buf.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()));
            } else {
                current = Some((i, len, d, buf));
            }
        }
    }
    Ok(out)
}

/// Scores from a Score response stream (any transport), in text order, unsteered before
/// steered (the worker sends them as they finish).
pub async fn collect_scores<S>(mut stream: S) -> Result<Vec<v1::TextScore>>
where
    S: Stream<Item = std::result::Result<v1::ScoreResponse, Status>> + Unpin,
{
    let mut out = vec![];
    while let Some(msg) = stream.next().await {
        out.extend(msg?.score);
    }
    out.sort_by_key(|s| (s.index, s.steered));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finished(row: u32, steered: bool) -> v1::GenerateResponse {
        v1::GenerateResponse { event: Some(generate_response::Event::Finished(v1::RowFinished { row, steered, ..Default::default() })) }
    }

    #[tokio::test]
    async fn rows_come_back_in_row_order_whatever_order_they_finish_in() {
        let token = v1::GenerateResponse { event: Some(generate_response::Event::Token(v1::TokenEvent { row: 1, ..Default::default() })) };
        let msgs = vec![finished(2, true), token, finished(0, false), finished(0, true), finished(2, false), finished(1, true)];
        let mut tokens = 0;
        let cmp = drain(futures::stream::iter(msgs.into_iter().map(Ok)), |_| tokens += 1).await.unwrap();
        assert_eq!(tokens, 1);
        assert_eq!(cmp.steered.iter().map(|c| c.row).collect::<Vec<_>>(), vec![0, 1, 2]);
        assert_eq!(cmp.unsteered.iter().map(|c| c.row).collect::<Vec<_>>(), vec![0, 2]);
        assert_eq!(cmp.rows(), 5);
    }

    #[tokio::test]
    async fn a_status_in_the_stream_ends_the_drain_with_its_code() {
        let msgs: Vec<std::result::Result<v1::GenerateFromTensorsResponse, Status>> = vec![Err(Status::invalid_argument("x"))];
        let e = drain(futures::stream::iter(msgs), |_| {}).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
    }
}
