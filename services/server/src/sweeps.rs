//! `steer.v1.EvalService`: sweeps of the post's measurements (perplexity, KL, topic words,
//! norms) as jobs of a process that serves
//! both services. A job runs `steer_eval`'s sweep against this process's own services,
//! called in process (no network, no second authentication), records each setting's row as it
//! finishes, can be cancelled (keeping the rows it has), and is kept, rows and all, for
//! fetching again by id: the last [`KEEP`] jobs, at most [`MAX_RUNNING`] running at once.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use steer_eval::{self as eval, AdditionSpec, Backend, Comparison, RunOptions, SteeringTensor, TextSet};
use steer_proto::v1::activation_service_server::ActivationService;
use steer_proto::v1::eval_service_server::{EvalService, EvalServiceServer};
use steer_proto::v1::generation_service_server::GenerationService;
use steer_proto::v1::{
    CancelSweepRequest, CancelSweepResponse, GenerateFromTensorsRequest, GetActivationsRequest, Hook, HookPoint, ListSweepsRequest,
    ListSweepsResponse, ScoreRequest, StartSweepRequest, StartSweepResponse, Sweep, SweepKind, SweepState, TextScore, WatchSweepRequest,
    WatchSweepResponse,
};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::services::Services;

/// Jobs kept for fetching again (the oldest finished ones go first).
pub const KEEP: usize = 32;
/// Jobs running at once; one more is RESOURCE_EXHAUSTED.
pub const MAX_RUNNING: usize = 4;
/// Most settings (layers x coefficients) in one sweep.
pub const MAX_SETTINGS: usize = 1024;

struct Job {
    status: watch::Sender<Sweep>,
    task: Mutex<Option<tokio::task::AbortHandle>>,
}

impl Job {
    fn sweep(&self) -> Sweep {
        self.status.borrow().clone()
    }

    fn running(&self) -> bool {
        self.status.borrow().state == SweepState::Running as i32
    }
}

/// The jobs of one process.
#[derive(Default)]
pub struct SweepStore {
    jobs: Mutex<VecDeque<Arc<Job>>>,
    next: AtomicU64,
}

impl SweepStore {
    fn find(&self, id: &str) -> Result<Arc<Job>, Status> {
        let jobs = self.jobs.lock().expect("sweeps");
        jobs.iter().find(|j| j.status.borrow().id == id).cloned().ok_or_else(|| Status::not_found(format!("no sweep `{id}`")))
    }
}

/// This process's own services, called in process.
struct Local(Arc<Services>);

impl Backend for Local {
    fn comparison(&self, prompt: &str, tensors: &[SteeringTensor], opts: &RunOptions) -> impl Future<Output = eval::Result<Comparison>> + Send {
        let req = GenerateFromTensorsRequest {
            setup: Some(opts.setup(prompt, tensors.len())),
            tensors: tensors.iter().map(SteeringTensor::inline).collect(),
        };
        let services = self.0.clone();
        async move {
            let stream = services.generation.generate_from_tensors(Request::new(req)).await?.into_inner();
            eval::drain(stream, |_| {}).await
        }
    }

    fn max_comparisons(&self) -> impl Future<Output = eval::Result<u32>> + Send {
        let n = self.0.cfg.generation.max_comparisons as u32;
        async move { Ok(n) }
    }

    fn activations(&self, prompts: &[String], points: &[HookPoint], use_bos: bool) -> impl Future<Output = eval::Result<eval::Activations>> + Send {
        let req = GetActivationsRequest { prompts: prompts.to_vec(), use_bos, points: points.to_vec(), ..Default::default() };
        let (services, n) = (self.0.clone(), prompts.len());
        async move {
            let stream = services.activation.get_activations(Request::new(req)).await?.into_inner();
            eval::collect_activations(stream, n).await
        }
    }

    fn steering_tensors(&self, additions: &[AdditionSpec], opts: &RunOptions) -> impl Future<Output = eval::Result<Vec<SteeringTensor>>> + Send {
        let (services, req) = (self.0.clone(), eval::steering_request(additions, opts));
        async move {
            let stream = services.activation.get_steering_tensors(Request::new(req)).await?.into_inner();
            eval::collect_steering_tensors(stream).await
        }
    }

    fn score(&self, req: ScoreRequest) -> impl Future<Output = eval::Result<Vec<TextScore>>> + Send {
        let services = self.0.clone();
        async move {
            let stream = services.generation.score(Request::new(req)).await?.into_inner();
            eval::collect_scores(stream).await
        }
    }
}

/// The EvalService of a process serving both services.
#[derive(Clone)]
pub struct SweepService {
    services: Arc<Services>,
    store: Arc<SweepStore>,
}

impl SweepService {
    /// The service and its (empty) job store; built once where the server is assembled, and
    /// shared by the gRPC service and its HTTP/JSON mirror.
    pub fn new(services: Arc<Services>) -> Self {
        Self { services, store: Arc::default() }
    }

    pub fn into_server(self) -> EvalServiceServer<Self> {
        EvalServiceServer::new(self)
    }

    fn store(&self) -> &SweepStore {
        &self.store
    }
}

fn invalid(field: &str, reason: &str) -> Status {
    steer_proto::status::invalid_argument(field, reason)
}

/// The sweep a request asks for, checked (errors name the field).
fn spec(req: &StartSweepRequest) -> Result<(SweepKind, eval::Sweep, RunOptions, Vec<TextSet>), Status> {
    let kind = match SweepKind::try_from(req.kind) {
        Ok(SweepKind::Unspecified) | Err(_) => return Err(invalid("kind", "SWEEP_KIND_PERPLEXITY, _KL, _TOPIC_WORDS or _NORMS")),
        Ok(k) => k,
    };
    if req.layers.is_empty() {
        return Err(invalid("layers", "at least one layer"));
    }
    if req.coeffs.is_empty() || req.coeffs.iter().any(|c| !c.is_finite()) {
        return Err(invalid("coeffs", "at least one, all finite"));
    }
    if req.layers.len() * req.coeffs.len() > MAX_SETTINGS {
        return Err(invalid("layers", &format!("{} settings; at most {MAX_SETTINGS}", req.layers.len() * req.coeffs.len())));
    }
    if kind != SweepKind::Perplexity && req.prompt.is_empty() {
        return Err(invalid("prompt", "this sweep needs a prompt"));
    }
    if req.n > 1000 || req.n_tokens > 1000 {
        return Err(invalid("n", "at most 1000 completions of at most 1000 tokens"));
    }
    if let Some(p) = req.positions.iter().find(|p| !["front", "middle", "end"].contains(&p.as_str())) {
        return Err(invalid("positions", &format!("`{p}`: front, middle or end")));
    }
    let hook = match Hook::try_from(req.hook) {
        Ok(Hook::BlockOutput) => Hook::BlockOutput,
        Ok(_) => Hook::ResidPre,
        Err(_) => return Err(invalid("hook", "unknown hook")),
    };
    let sets = if req.sets.is_empty() {
        eval::default_text_sets()
    } else {
        req.sets.iter().map(|s| TextSet { name: s.name.clone(), texts: s.texts.clone() }).collect()
    };
    if let Some(i) = sets.iter().position(|s| s.texts.is_empty() || s.name.is_empty()) {
        return Err(invalid(&format!("sets[{i}]"), "a text set needs a name and texts"));
    }
    let sweep = eval::Sweep { plus: req.plus.clone(), minus: req.minus.clone(), layers: req.layers.clone(), coeffs: req.coeffs.clone() };
    let opts = RunOptions {
        hook,
        use_bos: req.use_bos,
        seed: req.seed,
        n_tokens: if req.n_tokens == 0 { 40 } else { req.n_tokens },
        ..RunOptions::default()
    };
    Ok((kind, sweep, opts, sets))
}

#[tonic::async_trait]
impl EvalService for SweepService {
    type WatchSweepStream = ReceiverStream<Result<WatchSweepResponse, Status>>;

    #[tracing::instrument(skip(self, request), fields(id))]
    async fn start_sweep(&self, request: Request<StartSweepRequest>) -> Result<Response<StartSweepResponse>, Status> {
        let req = request.into_inner();
        let (kind, sweep, opts, sets) = spec(&req)?;
        let store = self.store();
        let mut jobs = store.jobs.lock().expect("sweeps");
        if jobs.iter().filter(|j| j.running()).count() >= MAX_RUNNING {
            return Err(Status::resource_exhausted(format!("{MAX_RUNNING} sweeps are running; wait for one or cancel it")));
        }
        while jobs.len() >= KEEP {
            match jobs.iter().position(|j| !j.running()) {
                Some(i) => drop(jobs.remove(i)),
                None => break,
            }
        }
        let id = format!("sweep-{}", store.next.fetch_add(1, Ordering::Relaxed) + 1);
        tracing::Span::current().record("id", id.as_str());
        let settings = match kind {
            SweepKind::Perplexity => sweep.settings().len() + 1,
            SweepKind::TopicWords => sweep.settings().len() * if req.positions.is_empty() { 1 } else { req.positions.len() },
            _ => sweep.settings().len(),
        };
        let first = Sweep { id: id.clone(), kind: kind as i32, state: SweepState::Running as i32, total: settings as u32, ..Default::default() };
        let (tx, _) = watch::channel(first.clone());
        let job = Arc::new(Job { status: tx, task: Mutex::new(None) });
        let (backend, runner, top, prompt) = (Local(self.services.clone()), job.clone(), req.top.clamp(1, 50), req.prompt.clone());
        let n = if req.n == 0 { 20 } else { req.n };
        let words: Vec<String> = if req.words.is_empty() { eval::WEDDING_WORDS.iter().map(|w| w.to_string()).collect() } else { req.words.clone() };
        let positions: Vec<eval::Position> = match req.positions.is_empty() {
            true => vec![eval::Position::Front],
            false => req
                .positions
                .iter()
                .map(|p| match p.as_str() {
                    "middle" => eval::Position::Middle,
                    "end" => eval::Position::End,
                    _ => eval::Position::Front,
                })
                .collect(),
        };
        let task = tokio::spawn(async move {
            let progress = |done: usize, total: usize, row: &serde_json::Value| {
                runner.status.send_modify(|s| {
                    s.done = done as u32;
                    s.total = total as u32;
                    s.rows_json.push(row.to_string());
                });
            };
            let result = match kind {
                SweepKind::Kl => eval::kl_sweep(&backend, &sweep, &prompt, top, &opts, progress).await,
                SweepKind::TopicWords => eval::topic_words(&backend, &sweep, &prompt, &words, n, &positions, &opts, progress).await,
                SweepKind::Norms => eval::norms(&backend, &sweep, &prompt, &opts, progress).await,
                _ => eval::perplexity_sweep(&backend, &sweep, &sets, &opts, progress).await,
            };
            runner.status.send_modify(|s| match result {
                Ok(_) => s.state = SweepState::Done as i32,
                Err(e) => {
                    s.state = SweepState::Failed as i32;
                    s.error = e.to_string();
                }
            });
        });
        *job.task.lock().expect("task") = Some(task.abort_handle());
        jobs.push_back(job);
        Ok(Response::new(StartSweepResponse { sweep: Some(first) }))
    }

    #[tracing::instrument(skip(self, request))]
    async fn watch_sweep(&self, request: Request<WatchSweepRequest>) -> Result<Response<Self::WatchSweepStream>, Status> {
        let job = self.store().find(&request.into_inner().id)?;
        let mut rx = job.status.subscribe();
        let (tx, out) = mpsc::channel(8);
        tokio::spawn(async move {
            loop {
                let s = rx.borrow_and_update().clone();
                let ended = s.state != SweepState::Running as i32;
                if tx.send(Ok(WatchSweepResponse { sweep: Some(s) })).await.is_err() || ended || rx.changed().await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(out)))
    }

    #[tracing::instrument(skip(self, request))]
    async fn cancel_sweep(&self, request: Request<CancelSweepRequest>) -> Result<Response<CancelSweepResponse>, Status> {
        let job = self.store().find(&request.into_inner().id)?;
        if let Some(t) = job.task.lock().expect("task").take() {
            t.abort();
        }
        job.status.send_modify(|s| {
            if s.state == SweepState::Running as i32 {
                s.state = SweepState::Cancelled as i32;
            }
        });
        Ok(Response::new(CancelSweepResponse { sweep: Some(job.sweep()) }))
    }

    #[tracing::instrument(skip(self, _request))]
    async fn list_sweeps(&self, _request: Request<ListSweepsRequest>) -> Result<Response<ListSweepsResponse>, Status> {
        let jobs = self.store().jobs.lock().expect("sweeps");
        let sweeps = jobs.iter().map(|j| Sweep { rows_json: vec![], ..j.sweep() }).collect();
        Ok(Response::new(ListSweepsResponse { sweeps }))
    }
}
