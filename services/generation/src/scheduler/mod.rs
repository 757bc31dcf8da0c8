//! The owner of the engine's time: one loop, iteration-level scheduling (Orca; TGI's
//! `batching_task`; vLLM). Each iteration it
//! 1. takes arrivals off the queue (when idle, the first of a burst waits `arrival_window` for
//!    the rest), dropping those whose client left or whose deadline passed;
//! 2. admits waiting requests, first come first served, while they fit the budgets (rows, and KV
//!    positions reserved as prompt + max_new_tokens per row);
//! 3. runs one forward (`Engine::run`) of the next prefill chunk (`max_prefill_tokens`
//!    positions) of some of the admitted requests, shortest remaining prefill first (oldest
//!    first once a request has waited `prefill_aging`), within `prefill_tokens_per_step`
//!    positions, each with its own steering (positions 0..k-1, prefill only), together with one
//!    decode step for every running row of every request: the weights are streamed once for
//!    both, so a joining request costs the running streams its chunk's compute, not another
//!    pass over the weights, and a long prompt holds them for a chunk, not its whole prefill;
//! 4. samples each row with its own sampler (seed, penalties) and queues its events
//!    ([`events`]: detokenized tokens, each row's `RowFinished`);
//! 5. hands each request's events to its own bounded channel without ever waiting: a client
//!    that reads nothing for `stall_timeout` has its request cancelled (ABORTED), one that left
//!    or passed its deadline leaves at this step; finished rows free their KV memory at once.
//!
//! A request's life in the batch is an explicit phase ([`running::Phase`]): prefilling,
//! decoding, draining, ended. Score calls share the loop ([`scoring`]): each text is a scoring
//! prefill whose chunks join the forwards within the same budgets, deadlines and cancellation,
//! and prefills of both kinds go through the prefix cache (`steer_model::PrefixCache`).
//!
//! KV layout: one host cache per row (`steer_model::kv_cache::RowKv`), the projections and MLPs
//! batched over all rows of the step, attention per row over its own cache. Chosen over a
//! padded `[B, H, S, hd]` batch with masks because (a) rows of any length and age share a step
//! with no re-padding or copying when a request joins or leaves, (b) a row's arithmetic is the
//! same whatever rows share its step (no padded reduction whose order changes with the batch),
//! so a request gives the same tokens alone or in a busy batch, and (c) memory follows use and is
//! freed per row. Measured on XL-shaped weights against the padded layout, same session: batch-1
//! decode 308/325 ms vs 305/319 ms per step (within noise); 6 and 16 rows about 10% slower per
//! step (561-567 vs 502-510 ms, 1035-1057 vs 950-955 ms), not yet profiled. Paged blocks would
//! add indirection that buys nothing at these sizes on a CPU.

mod engine_loop;
mod events;
mod running;
mod scoring;

pub(crate) use scoring::ScoreJob;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use steer_common::ServiceError;
use steer_model::Engine;
use steer_proto::v1::GenerateResponse;
use steer_telemetry::Metrics;
use tokio::sync::mpsc;
use tonic::Status;

use crate::config::GenerationConfig;
use crate::heartbeat::Heartbeat;
use crate::validation::ValidRequest;
use engine_loop::EngineLoop;

type Event = Result<GenerateResponse, Status>;
pub type Events = mpsc::Sender<Event>;

/// What a job asks of the engine loop.
pub(crate) enum Work {
    /// A generation, its events streamed on `events`.
    Generate { request: ValidRequest, events: Events },
    /// A Score call ([`scoring`]).
    Score(ScoreJob),
}

pub(crate) struct Job {
    work: Work,
    queued_at: Instant,
    deadline: Option<Instant>,
}

impl Job {
    /// The client left.
    fn is_closed(&self) -> bool {
        match &self.work {
            Work::Generate { events, .. } => events.is_closed(),
            Work::Score(s) => s.out.is_closed(),
        }
    }

    /// Tells the client why its job never started (when its channel has room).
    fn refuse(&self, e: ServiceError) {
        let status: Status = e.into();
        match &self.work {
            Work::Generate { events, .. } => drop(events.try_send(Err(status))),
            Work::Score(s) => drop(s.out.try_send(Err(status))),
        }
    }
}

/// The queue in front of the engine loop.
pub struct Scheduler {
    queue: std::sync::mpsc::Sender<Job>,
    depth: Arc<AtomicUsize>,
    max_queue: usize,
    metrics: Arc<Metrics>,
    heartbeat: Arc<Heartbeat>,
}

impl Scheduler {
    /// Starts the engine loop on its own thread; it ends when the scheduler is dropped.
    pub fn new(engine: Arc<Engine>, config: &GenerationConfig, metrics: Arc<Metrics>) -> Self {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let depth = Arc::new(AtomicUsize::new(0));
        let heartbeat = Arc::new(Heartbeat::default());
        let mut lp = EngineLoop {
            heartbeat: heartbeat.clone(),
            engine,
            cfg: config.clone(),
            rx,
            depth: depth.clone(),
            metrics: metrics.clone(),
            waiting: VecDeque::new(),
            running: vec![],
            scoring: vec![],
            prefix: steer_model::PrefixCache::new(config.prefix_cache_bytes),
        };
        std::thread::Builder::new().name("steer-engine".into()).spawn(move || lp.run()).expect("spawn the engine loop");
        Self { queue: tx, depth, max_queue: config.max_queue, metrics, heartbeat }
    }

    /// The engine loop's pulse (for the server's watchdog).
    pub fn heartbeat(&self) -> &Heartbeat {
        &self.heartbeat
    }

    /// Requests waiting to join the running batch.
    pub fn depth(&self) -> usize {
        self.depth.load(Ordering::SeqCst)
    }

    /// Queues a request, or refuses it at once when `max_queue` requests already wait.
    pub fn submit(&self, request: ValidRequest, events: Events, deadline: Option<Instant>) -> Result<(), ServiceError> {
        self.submit_work(Work::Generate { request, events }, deadline)
    }

    /// Queues a Score call, as [`Scheduler::submit`] does a generation.
    pub(crate) fn submit_score(&self, job: ScoreJob, deadline: Option<Instant>) -> Result<(), ServiceError> {
        self.submit_work(Work::Score(job), deadline)
    }

    fn submit_work(&self, work: Work, deadline: Option<Instant>) -> Result<(), ServiceError> {
        let max = self.max_queue;
        self.depth
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |d| (d < max).then_some(d + 1))
            .map_err(|_| ServiceError::ResourceExhausted(format!("queue full ({max} requests waiting)")))?;
        self.metrics.queue_depth.set(self.depth() as i64);
        self.queue.send(Job { work, queued_at: Instant::now(), deadline }).map_err(|_| {
            self.depth.fetch_sub(1, Ordering::SeqCst);
            ServiceError::Unavailable("the generation engine has stopped".into())
        })
    }
}
