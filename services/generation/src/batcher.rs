//! The owner of the engine's time: a bounded queue of jobs served by `slots` engine threads.
//! Each job is one request's batch (unsteered + steered rows); its events go back through a
//! bounded channel, and a failed send means the client left, which stops that job's generation.

use std::ops::ControlFlow;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use steer_model::tokenizer::StreamDecoder;
use steer_model::{Engine, FinishReason, GenerateOptions};
use steer_proto::v1::{generate_response, FinishReason as PFinish, GenerateResponse, RowFinished, TokenEvent, TopLogprob};
use tokio::sync::mpsc;
use tonic::Status;

use steer_common::ServiceError;
use steer_telemetry::Metrics;

use crate::validation::ValidRequest;

pub type Events = mpsc::Sender<Result<GenerateResponse, Status>>;

struct Job {
    request: ValidRequest,
    events: Events,
    queued_at: Instant,
    deadline: Option<Instant>,
}

/// The job queue and its engine threads.
pub struct Batcher {
    queue: std::sync::mpsc::SyncSender<Job>,
    depth: Arc<AtomicUsize>,
    max_queue: usize,
    metrics: Arc<Metrics>,
}

impl Batcher {
    pub fn new(engine: Arc<Engine>, slots: usize, max_queue: usize, worker_id: String, metrics: Arc<Metrics>) -> Self {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Job>(max_queue.max(1));
        let rx = Arc::new(Mutex::new(rx));
        let depth = Arc::new(AtomicUsize::new(0));
        for i in 0..slots.max(1) {
            let (rx, engine, depth, worker, metrics) = (rx.clone(), engine.clone(), depth.clone(), worker_id.clone(), metrics.clone());
            std::thread::Builder::new()
                .name(format!("steer-gen-{i}"))
                .spawn(move || loop {
                    // Ends when every sender (the service) is dropped.
                    let job = match rx.lock().unwrap().recv() {
                        Ok(j) => j,
                        Err(_) => return,
                    };
                    depth.fetch_sub(1, Ordering::SeqCst);
                    metrics.queue_depth.set(depth.load(Ordering::SeqCst) as i64);
                    let rows = job.request.rows.len() as i64;
                    metrics.slots_busy.inc();
                    metrics.batch_rows.add(rows);
                    run_job(&engine, job, &worker, &metrics);
                    metrics.batch_rows.sub(rows);
                    metrics.slots_busy.dec();
                })
                .expect("spawn engine thread");
        }
        Self { queue: tx, depth, max_queue, metrics }
    }

    /// Requests waiting for a slot.
    pub fn depth(&self) -> usize {
        self.depth.load(Ordering::SeqCst)
    }

    pub fn submit(&self, request: ValidRequest, events: Events, deadline: Option<Instant>) -> Result<(), ServiceError> {
        let d = self.depth.fetch_add(1, Ordering::SeqCst) + 1;
        self.metrics.queue_depth.set(d as i64);
        let job = Job { request, events, queued_at: Instant::now(), deadline };
        self.queue.try_send(job).map_err(|e| {
            self.depth.fetch_sub(1, Ordering::SeqCst);
            match e {
                std::sync::mpsc::TrySendError::Full(_) => {
                    ServiceError::ResourceExhausted(format!("queue full ({} requests waiting)", self.max_queue))
                }
                std::sync::mpsc::TrySendError::Disconnected(_) => ServiceError::Unavailable("generation workers are shut down".into()),
            }
        })
    }
}

fn run_job(engine: &Engine, job: Job, worker: &str, metrics: &Metrics) {
    let Job { request, events, queued_at, deadline } = job;
    if events.is_closed() {
        return; // the client left while queued
    }
    let past_deadline = || deadline.is_some_and(|d| Instant::now() >= d);
    if past_deadline() {
        let _ = events.blocking_send(Err(ServiceError::DeadlineExceeded("deadline passed while queued".into()).into()));
        return;
    }
    let mut timed_out = false;
    let queue_ms = queued_at.elapsed().as_secs_f64() * 1e3;
    let span = tracing::info_span!("generate", rows = request.rows.len(), max_new = request.max_new_tokens);
    let _g = span.enter();
    let tok = engine.tokenizer();
    let n_unsteered = request.n_unsteered;
    let mut decoders = vec![StreamDecoder::default(); request.rows.len()];
    let opts = GenerateOptions {
        max_new_tokens: request.max_new_tokens,
        stop_at_eos: request.stop_at_eos,
        use_kv_cache: true,
        top_logprobs: request.top_logprobs,
    };
    let started = Instant::now();
    let mut produced = 0u64;
    let result = engine.generate(&request.rows, &opts, |ev| {
        if produced == 0 {
            metrics.time_to_first_token.observe(started.elapsed().as_secs_f64());
        }
        produced += 1;
        let text_delta = decoders[ev.row].push(tok, ev.token);
        let token = TokenEvent {
            row: ev.row as u32,
            steered: ev.row >= n_unsteered,
            index: ev.index as u32,
            token_id: ev.token,
            text_delta,
            logprob: ev.logprob,
            top_logprobs: ev.top_logprobs.iter().map(|&(token_id, logprob)| TopLogprob { token_id, logprob }).collect(),
        };
        let msg = GenerateResponse { event: Some(generate_response::Event::Token(token)) };
        if past_deadline() {
            timed_out = true;
            return ControlFlow::Break(());
        }
        match events.blocking_send(Ok(msg)) {
            Ok(()) => ControlFlow::Continue(()),
            Err(_) => ControlFlow::Break(()), // client gone or deadline passed: free the slot
        }
    });
    let secs = started.elapsed().as_secs_f64();
    metrics.tokens_generated.inc_by(produced);
    metrics.generation_seconds.observe(secs);
    if secs > 0.0 {
        metrics.tokens_per_second.set(produced as f64 / secs);
    }
    match result {
        Ok(outputs) if timed_out => {
            let n: usize = outputs.iter().map(|o| o.tokens.len()).sum();
            let _ = events.blocking_send(Err(ServiceError::DeadlineExceeded(format!("deadline passed after {n} tokens")).into()));
        }
        Ok(outputs) => {
            for (row, out) in outputs.iter().enumerate() {
                let reason = match out.finish {
                    FinishReason::Length => PFinish::Length,
                    FinishReason::Eos => PFinish::Eos,
                    FinishReason::Cancelled => PFinish::Cancelled,
                };
                let finished = RowFinished {
                    row: row as u32,
                    steered: row >= n_unsteered,
                    text: tok.decode(&out.tokens).unwrap_or_default(),
                    token_ids: out.tokens.clone(),
                    reason: reason as i32,
                    prompt_tokens: request.prompt_tokens as u32,
                    generated_tokens: out.tokens.len() as u32,
                    prefill_ms: out.prefill_secs * 1e3,
                    total_ms: started.elapsed().as_secs_f64() * 1e3,
                    seed: request.rows[row].seed,
                    queue_ms,
                    worker: worker.to_string(),
                };
                let msg = GenerateResponse { event: Some(generate_response::Event::Finished(finished)) };
                if events.blocking_send(Ok(msg)).is_err() {
                    break;
                }
            }
        }
        Err(e) => {
            let _ = events.blocking_send(Err(ServiceError::from(e).into()));
        }
    }
}
