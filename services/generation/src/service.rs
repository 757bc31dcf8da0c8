//! The `steer.v1.GenerationService` implementation.

use std::sync::Arc;

use steer_model::Engine;
use steer_proto::v1::generation_service_server::{GenerationService, GenerationServiceServer};
use std::pin::Pin;

use steer_proto::v1::{
    generate_from_tensors_response, generate_request, generate_response, GenerateFromTensorsRequest,
    GenerateFromTensorsResponse, GenerateRequest, GenerateResponse, GenerationServiceGetModelInfoRequest,
    GenerationServiceGetModelInfoResponse, TensorChunk,
};
use tokio_stream::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::batcher::Batcher;
use crate::config::GenerationConfig;
use crate::error::GenerationError;
use crate::validation;

/// Generates unsteered and steered completions with one loaded model.
#[derive(Clone)]
pub struct GenerationWorker {
    engine: Arc<Engine>,
    batcher: Arc<Batcher>,
    config: GenerationConfig,
}

impl GenerationWorker {
    pub fn new(engine: Arc<Engine>, config: GenerationConfig, metrics: Arc<steer_telemetry::Metrics>) -> Self {
        let batcher = Arc::new(Batcher::new(engine.clone(), config.slots, config.max_queue, config.worker_id.clone(), metrics));
        Self { engine, batcher, config }
    }

    pub fn into_server(self) -> GenerationServiceServer<Self> {
        GenerationServiceServer::new(self)
    }

    pub fn queue_depth(&self) -> usize {
        self.batcher.depth()
    }
}

/// Most bytes of steering tensors inline in one GenerateFromTensors request.
const MAX_INLINE_BYTES: usize = 3 << 20;

/// The client's deadline (`grpc-timeout`: digits and a unit, H M S m u n). tonic applies it to
/// the response headers only; a stream is held to it here, by the engine loop.
fn grpc_timeout(md: &tonic::metadata::MetadataMap) -> Option<std::time::Duration> {
    let v = md.get("grpc-timeout")?.to_str().ok()?;
    let (num, unit) = v.split_at(v.len().checked_sub(1)?);
    let n: u64 = num.parse().ok()?;
    use std::time::Duration;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[tonic::async_trait]
impl GenerationService for GenerationWorker {
    type GenerateStream = ReceiverStream<Result<GenerateResponse, Status>>;
    type GenerateFromTensorsStream = Pin<Box<dyn Stream<Item = Result<GenerateFromTensorsResponse, Status>> + Send>>;

    #[tracing::instrument(skip(self, request), fields(model = %self.engine.info().name))]
    async fn generate(&self, request: Request<Streaming<GenerateRequest>>) -> Result<Response<Self::GenerateStream>, Status> {
        let deadline = grpc_timeout(request.metadata()).map(|t| std::time::Instant::now() + t);
        let stream = request.into_inner();
        let valid = validation::read_request(&self.engine, &self.config, stream).await?;
        tracing::info!(rows = valid.rows.len(), max_new = valid.max_new_tokens, prompt_tokens = valid.prompt_tokens, "queued");
        // Enough room for a step of every row, so the engine rarely waits on the network.
        let (tx, rx) = mpsc::channel(2 * valid.rows.len() + 8);
        self.batcher.submit(valid, tx, deadline)?;
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    #[tracing::instrument(skip(self, request), fields(model = %self.engine.info().name))]
    async fn generate_from_tensors(
        &self,
        request: Request<GenerateFromTensorsRequest>,
    ) -> Result<Response<Self::GenerateFromTensorsStream>, Status> {
        let deadline = grpc_timeout(request.metadata()).map(|t| std::time::Instant::now() + t);
        let req = request.into_inner();
        let total: usize = req.tensors.iter().map(|t| t.data.len()).sum();
        if total > MAX_INLINE_BYTES {
            return Err(GenerationError::invalid("tensors", format!("{total} bytes inline; at most {MAX_INLINE_BYTES} (use Generate)")).into());
        }
        // The same request as a Generate stream: one validation path for both.
        let mut msgs = vec![GenerateRequest { msg: req.setup.map(generate_request::Msg::Setup) }];
        for t in req.tensors {
            msgs.push(GenerateRequest { msg: t.header.map(generate_request::Msg::Tensor) });
            for (i, data) in t.data.chunks(steer_proto::wire::MAX_CHUNK_BYTES).enumerate() {
                let chunk = TensorChunk { offset: (i * steer_proto::wire::MAX_CHUNK_BYTES) as u64, data: data.to_vec() };
                msgs.push(GenerateRequest { msg: Some(generate_request::Msg::Chunk(chunk)) });
            }
        }
        let valid = validation::read_request(&self.engine, &self.config, tokio_stream::iter(msgs.into_iter().map(Ok))).await?;
        let (tx, rx) = mpsc::channel(2 * valid.rows.len() + 8);
        self.batcher.submit(valid, tx, deadline)?;
        let out = ReceiverStream::new(rx).map(|r| {
            r.map(|g| GenerateFromTensorsResponse {
                event: g.event.map(|e| match e {
                    generate_response::Event::Token(t) => generate_from_tensors_response::Event::Token(t),
                    generate_response::Event::Finished(f) => generate_from_tensors_response::Event::Finished(f),
                }),
            })
        });
        Ok(Response::new(Box::pin(out)))
    }

    #[tracing::instrument(skip(self, _request))]
    async fn get_model_info(
        &self,
        _request: Request<GenerationServiceGetModelInfoRequest>,
    ) -> Result<Response<GenerationServiceGetModelInfoResponse>, Status> {
        let mut info = steer_activation::service::model_info(&self.engine);
        info.max_new_tokens = self.config.max_new_tokens as u32;
        info.max_comparisons = self.config.max_comparisons as u32;
        Ok(Response::new(GenerationServiceGetModelInfoResponse { info: Some(info) }))
    }
}
