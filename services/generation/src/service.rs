//! The `steer.v1.GenerationService` handlers: read the request (read.rs), validate it once
//! (validation.rs), schedule it (scheduler.rs), stream the events back.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use steer_common::convert;
use steer_model::Engine;
use steer_proto::v1::generation_service_server::{GenerationService, GenerationServiceServer};
use steer_proto::v1::{
    generate_from_tensors_response, generate_response, GenerateFromTensorsRequest, GenerateFromTensorsResponse, GenerateRequest, GenerateResponse,
    GenerateSetup, GenerationServiceGetModelInfoRequest, GenerationServiceGetModelInfoResponse, ScoreRequest, ScoreResponse, VectorRef,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use crate::config::GenerationConfig;
use crate::read::{self, ReadLimits};
use crate::scheduler::{Scheduler, ScoreJob};
use crate::score;
use crate::validation::{self, ValidRequest};
use crate::vectors::{RefTensor, VectorCache, VectorSource};

/// Generates unsteered and steered completions with one loaded model.
#[derive(Clone)]
pub struct GenerationWorker {
    engine: Arc<Engine>,
    scheduler: Arc<Scheduler>,
    config: GenerationConfig,
    limits: ReadLimits,
    vectors: Arc<VectorCache>,
    /// Score calls computing, against `max_score_calls`.
    score_calls: steer_common::Budget,
}

impl GenerationWorker {
    pub fn new(engine: Arc<Engine>, config: GenerationConfig, metrics: Arc<steer_telemetry::Metrics>) -> Self {
        let info = engine.info();
        let plan = config.memory_plan(info, engine.weight_bytes());
        metrics.memory_budget_bytes.set(plan.total() as i64);
        metrics.kv_budget_bytes.set(plan.kv as i64);
        tracing::info!(%plan, "generation worker memory budgets");
        if let Some(total) = physical_memory().filter(|&m| plan.total() > m) {
            tracing::warn!(%plan, machine_gb = total as f64 / 1e9, "the budgets allow more memory than this machine has");
        }
        let scheduler = Arc::new(Scheduler::new(engine.clone(), &config, metrics));
        let limits = ReadLimits {
            max_tensors: config.max_tensors,
            max_tensor_bytes: (info.n_positions * info.d_model * 4) as u64,
            max_request_bytes: config.max_request_bytes,
            read_timeout: config.read_timeout,
            inflight: steer_common::Budget::new("--max-inflight-bytes", "steering tensor bytes in flight", config.max_inflight_bytes, 1024),
        };
        let vectors = Arc::new(VectorCache::new(VectorSource::None, config.vector_cache_bytes));
        let score_calls = steer_common::Budget::new("--max-score-calls", "Score calls in progress", config.max_score_calls as u64, 1);
        Self { engine, scheduler, config, limits, vectors, score_calls }
    }

    /// Library vectors referenced by digest come from `source`.
    pub fn with_vectors(mut self, source: VectorSource) -> Self {
        self.vectors = Arc::new(VectorCache::new(source, self.config.vector_cache_bytes));
        self
    }

    /// Checks a request, its library vectors fetched first.
    async fn validate(&self, raw: read::RawRequest) -> Result<ValidRequest, Status> {
        let refs = self.library_vectors(&raw.setup.vectors).await?;
        Ok(validation::validate(raw, refs, &self.engine, &self.config)?)
    }

    /// The tensors of library vectors referenced by digest (none fetched past `max_tensors`).
    async fn library_vectors(&self, refs: &[VectorRef]) -> Result<Vec<RefTensor>, Status> {
        let n = refs.len();
        if n > self.config.max_tensors {
            let max = self.config.max_tensors;
            return Err(steer_common::ServiceError::invalid("setup.vectors", format!("{n} library vectors; at most {max}")).into());
        }
        if n == 0 {
            return Ok(vec![]);
        }
        Ok(self.vectors.resolve(refs, &convert::model_ref(&self.engine)).await?)
    }

    pub fn into_server(self) -> GenerationServiceServer<Self> {
        GenerationServiceServer::new(self)
    }

    pub fn queue_depth(&self) -> usize {
        self.scheduler.depth()
    }

    /// Why the engine loop counts as stuck, if it does (see [`crate::heartbeat`]).
    pub fn stuck(&self, timeout: Duration) -> Option<String> {
        self.scheduler.heartbeat().stuck(Instant::now(), timeout)
    }

    /// Bytes of steering tensors held by requests now (read, queued or running).
    pub fn inflight_bytes(&self) -> u64 {
        self.limits.inflight.in_use()
    }

    /// Queues a valid request; its events come back on the returned stream.
    fn submit(&self, valid: ValidRequest, deadline: Option<Instant>) -> Result<ReceiverStream<Result<GenerateResponse, Status>>, Status> {
        tracing::info!(rows = valid.rows.len(), max_new = valid.max_new_tokens, prompt_tokens = valid.prompt_tokens, "queued");
        // Enough room for a step of every row, so the engine rarely waits on the network.
        let (tx, rx) = mpsc::channel(2 * valid.rows.len() + 8);
        self.scheduler.submit(valid, tx, deadline)?;
        Ok(ReceiverStream::new(rx))
    }
}

/// Bytes of memory this machine has (`MemTotal`, Linux), if known.
fn physical_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb: u64 = info.lines().find_map(|l| l.strip_prefix("MemTotal:"))?.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kb * 1024)
}

/// The client's deadline (`grpc-timeout`: at most 8 digits and a unit, H M S m u n, per the
/// gRPC spec; anything else is ignored). tonic applies it to the response headers only; a
/// stream is held to it by the engine loop.
fn deadline(md: &tonic::metadata::MetadataMap) -> Option<Instant> {
    let v = md.get("grpc-timeout")?.to_str().ok()?;
    let (num, unit) = v.split_at(v.len().checked_sub(1)?);
    if num.is_empty() || num.len() > 8 || !num.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = num.parse().ok()?;
    let timeout = match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    };
    Instant::now().checked_add(timeout)
}

#[tonic::async_trait]
impl GenerationService for GenerationWorker {
    type GenerateStream = ReceiverStream<Result<GenerateResponse, Status>>;
    type GenerateFromTensorsStream = Pin<Box<dyn Stream<Item = Result<GenerateFromTensorsResponse, Status>> + Send>>;
    type ScoreStream = ReceiverStream<Result<ScoreResponse, Status>>;

    #[tracing::instrument(skip(self, request), fields(model = %self.engine.info().name))]
    async fn generate(&self, request: Request<Streaming<GenerateRequest>>) -> Result<Response<Self::GenerateStream>, Status> {
        let deadline = deadline(request.metadata());
        let raw = read::from_stream(request.into_inner(), &self.limits).await?;
        let valid = self.validate(raw).await?;
        Ok(Response::new(self.submit(valid, deadline)?))
    }

    #[tracing::instrument(skip(self, request), fields(model = %self.engine.info().name))]
    async fn generate_from_tensors(&self, request: Request<GenerateFromTensorsRequest>) -> Result<Response<Self::GenerateFromTensorsStream>, Status> {
        let deadline = deadline(request.metadata());
        let raw = read::from_inline(request.into_inner(), &self.limits)?;
        let valid = self.validate(raw).await?;
        let out = self.submit(valid, deadline)?.map(|r| {
            r.map(|g| GenerateFromTensorsResponse {
                event: g.event.map(|e| match e {
                    generate_response::Event::Token(t) => generate_from_tensors_response::Event::Token(t),
                    generate_response::Event::Finished(f) => generate_from_tensors_response::Event::Finished(f),
                }),
            })
        });
        Ok(Response::new(Box::pin(out)))
    }

    #[tracing::instrument(skip(self, request), fields(model = %self.engine.info().name, texts))]
    async fn score(&self, request: Request<ScoreRequest>) -> Result<Response<Self::ScoreStream>, Status> {
        let call = self.score_calls.try_take(1)?;
        let deadline = deadline(request.metadata());
        let mut req = request.into_inner();
        tracing::Span::current().record("texts", req.texts.len());
        // The tensors are read as GenerateFromTensors reads them (caps, the worker's byte budget).
        let inline = GenerateFromTensorsRequest {
            setup: Some(GenerateSetup { n_tensors: req.tensors.len() as u32, ..Default::default() }),
            tensors: std::mem::take(&mut req.tensors),
        };
        let read::RawRequest { tensors, memory, .. } = read::from_inline(inline, &self.limits)?;
        let refs = self.library_vectors(&req.vectors).await?;
        let additions = validation::additions(tensors, refs, &self.engine, &self.config)?;
        let valid = score::validate(&req, additions, &self.engine, &self.config)?;
        let (tx, rx) = mpsc::channel(16);
        let job = ScoreJob { valid, out: tx, _held: Box::new((call, memory)) };
        self.scheduler.submit_score(job, deadline)?;
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    #[tracing::instrument(skip(self, _request))]
    async fn get_model_info(
        &self,
        _request: Request<GenerationServiceGetModelInfoRequest>,
    ) -> Result<Response<GenerationServiceGetModelInfoResponse>, Status> {
        let mut info = convert::model_info(&self.engine);
        info.max_new_tokens = self.config.max_new_tokens as u32;
        info.max_comparisons = self.config.max_comparisons as u32;
        Ok(Response::new(GenerationServiceGetModelInfoResponse { info: Some(info) }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timeout(v: &str) -> Option<Duration> {
        let mut md = tonic::metadata::MetadataMap::new();
        md.insert("grpc-timeout", v.parse().unwrap());
        deadline(&md).map(|d| d.saturating_duration_since(Instant::now()))
    }

    #[test]
    fn grpc_timeout_is_parsed_per_the_spec_and_never_overflows() {
        assert!(timeout("300m").unwrap() <= Duration::from_millis(300));
        assert!(timeout("99999999H").unwrap() > Duration::from_secs(3600 * 24 * 365));
        assert_eq!(timeout("18446744073709551615S"), None, "more than 8 digits");
        assert_eq!(timeout("-1S"), None);
        assert_eq!(timeout("5x"), None);
    }
}
