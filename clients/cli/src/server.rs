//! Serving: both services in one process (the embedded default), or one of them per worker.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use steer_telemetry::Metrics;
use tracing::Instrument;
use std::time::Duration;

use steer_activation::{ActivationConfig, ActivationWorker};
use steer_generation::{GenerationConfig, GenerationWorker};
use steer_model::Engine;
use steer_proto::v1::activation_service_server::{ActivationService, ActivationServiceServer};
use steer_proto::v1::generation_service_server::{GenerationService, GenerationServiceServer};
use steer_proto::v1::{
    ActivationServiceGetModelInfoRequest, ActivationServiceGetModelInfoResponse, GenerateFromTensorsRequest, GenerateRequest, GenerationServiceGetModelInfoRequest,
    GenerationServiceGetModelInfoResponse, GetActivationsRequest, GetSteeringTensorsRequest,
};
use tonic::{Request, Response, Status, Streaming};
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;

/// Which services a process serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Both,
    Activation,
    Generation,
}

/// Configuration of a serving process.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub role: Role,
    pub activation: ActivationConfig,
    pub generation: GenerationConfig,
    /// How long open streams may run after the shutdown signal.
    pub grace: Duration,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            role: Role::Both,
            activation: ActivationConfig::default(),
            generation: GenerationConfig::default(),
            grace: Duration::from_secs(10),
        }
    }
}

/// A service whose worker exists once the model has loaded (UNAVAILABLE until then). Every
/// call goes through `observe`: a span with the request id, the latency histogram and the
/// request counter by code.
pub struct Gate<W> {
    worker: Arc<OnceLock<W>>,
    metrics: Arc<Metrics>,
    service: &'static str,
}

impl<W> Clone for Gate<W> {
    fn clone(&self) -> Self {
        Self { worker: self.worker.clone(), metrics: self.metrics.clone(), service: self.service }
    }
}

static REQUEST_IDS: AtomicU64 = AtomicU64::new(1);

impl<W> Gate<W> {
    fn new(metrics: Arc<Metrics>, service: &'static str) -> Self {
        Self { worker: Arc::new(OnceLock::new()), metrics, service }
    }

    fn get(&self) -> Result<&W, Status> {
        self.worker.get().ok_or_else(|| Status::unavailable("the model is still loading"))
    }

    async fn observe<Req, T, F, Fut>(&self, method: &'static str, req: Request<Req>, call: F) -> Result<Response<T>, Status>
    where
        W: Clone,
        F: FnOnce(W, Request<Req>) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        let id = req
            .metadata()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .unwrap_or_else(|| format!("{:x}", REQUEST_IDS.fetch_add(1, Ordering::Relaxed)));
        let span = tracing::info_span!("rpc", service = self.service, method, request_id = %id);
        let started = std::time::Instant::now();
        let result = async {
            let worker = self.get()?.clone();
            call(worker, req).await
        }
        .instrument(span.clone())
        .await;
        let code = match &result {
            Ok(_) => tonic::Code::Ok,
            Err(s) => s.code(),
        };
        span.in_scope(|| tracing::info!(code = ?code, ms = started.elapsed().as_secs_f64() * 1e3, "rpc"));
        self.metrics.latency.with_label_values(&[self.service, method]).observe(started.elapsed().as_secs_f64());
        self.metrics.requests.with_label_values(&[self.service, method, &format!("{code:?}")]).inc();
        result.map(|mut r| {
            if let Ok(v) = id.parse() {
                r.metadata_mut().insert("x-request-id", v);
            }
            r
        })
    }
}

#[tonic::async_trait]
impl ActivationService for Gate<ActivationWorker> {
    type GetActivationsStream = <ActivationWorker as ActivationService>::GetActivationsStream;
    type GetSteeringTensorsStream = <ActivationWorker as ActivationService>::GetSteeringTensorsStream;
    async fn get_activations(&self, r: Request<GetActivationsRequest>) -> Result<Response<Self::GetActivationsStream>, Status> {
        self.observe("GetActivations", r, |w, r| async move { w.get_activations(r).await }).await
    }
    async fn get_steering_tensors(&self, r: Request<GetSteeringTensorsRequest>) -> Result<Response<Self::GetSteeringTensorsStream>, Status> {
        self.observe("GetSteeringTensors", r, |w, r| async move { w.get_steering_tensors(r).await }).await
    }
    async fn get_model_info(
        &self,
        r: Request<ActivationServiceGetModelInfoRequest>,
    ) -> Result<Response<ActivationServiceGetModelInfoResponse>, Status> {
        self.observe("GetModelInfo", r, |w, r| async move { ActivationService::get_model_info(&w, r).await }).await
    }
}

#[tonic::async_trait]
impl GenerationService for Gate<GenerationWorker> {
    type GenerateStream = <GenerationWorker as GenerationService>::GenerateStream;
    type GenerateFromTensorsStream = <GenerationWorker as GenerationService>::GenerateFromTensorsStream;
    async fn generate_from_tensors(
        &self,
        r: Request<GenerateFromTensorsRequest>,
    ) -> Result<Response<Self::GenerateFromTensorsStream>, Status> {
        self.observe("GenerateFromTensors", r, |w, r| async move { w.generate_from_tensors(r).await }).await
    }
    async fn generate(&self, r: Request<Streaming<GenerateRequest>>) -> Result<Response<Self::GenerateStream>, Status> {
        self.observe("Generate", r, |w, r| async move { w.generate(r).await }).await
    }
    async fn get_model_info(
        &self,
        r: Request<GenerationServiceGetModelInfoRequest>,
    ) -> Result<Response<GenerationServiceGetModelInfoResponse>, Status> {
        self.observe("GetModelInfo", r, |w, r| async move { GenerationService::get_model_info(&w, r).await }).await
    }
}

const ACTIVATION: &str = "steer.v1.ActivationService";
const GENERATION: &str = "steer.v1.GenerationService";

/// The services of one process, before and after the model loads: health reports NOT_SERVING
/// until `ready`, then SERVING.
pub struct Services {
    cfg: ServeConfig,
    pub metrics: Arc<Metrics>,
    activation: Gate<ActivationWorker>,
    generation: Gate<GenerationWorker>,
    reporter: HealthReporter,
}

impl Services {
    pub async fn new(cfg: ServeConfig) -> (Self, HealthServer<impl Health>) {
        let (reporter, health) = tonic_health::server::health_reporter();
        for name in ["", ACTIVATION, GENERATION] {
            reporter.set_service_status(name, ServingStatus::NotServing).await;
        }
        let metrics = Metrics::new();
        let s = Self {
            cfg,
            activation: Gate::new(metrics.clone(), ACTIVATION),
            generation: Gate::new(metrics.clone(), GENERATION),
            metrics,
            reporter,
        };
        (s, health)
    }

    /// Installs the workers on the loaded engine and reports SERVING.
    pub async fn ready(&self, engine: Arc<Engine>) {
        let role = self.cfg.role;
        if matches!(role, Role::Both | Role::Activation) {
            let _ = self.activation.worker.set(ActivationWorker::new(engine.clone(), self.cfg.activation.clone()));
            self.reporter.set_service_status(ACTIVATION, ServingStatus::Serving).await;
        }
        if matches!(role, Role::Both | Role::Generation) {
            let _ = self.generation.worker.set(GenerationWorker::new(engine, self.cfg.generation.clone(), self.metrics.clone()));
            self.reporter.set_service_status(GENERATION, ServingStatus::Serving).await;
        }
        self.reporter.set_service_status("", ServingStatus::Serving).await;
    }

    /// Serves `/metrics` on `addr`; activation-cache gauges are refreshed at each scrape.
    pub async fn serve_metrics(&self, addr: SocketAddr) -> std::io::Result<SocketAddr> {
        let (metrics, act) = (self.metrics.clone(), self.activation.worker.clone());
        steer_telemetry::serve_metrics(addr, self.metrics.clone(), move || {
            if let Some(w) = act.get() {
                let s = w.cache().stats();
                metrics.cache_hits.set(s.hits as i64);
                metrics.cache_misses.set(s.misses as i64);
                metrics.cache_bytes.set(s.bytes as i64);
                metrics.cache_entries.set(s.entries as i64);
            }
        })
        .await
    }

    /// Reports NOT_SERVING (on shutdown, so load balancers stop sending).
    pub async fn draining(&self) {
        for name in ["", ACTIVATION, GENERATION] {
            self.reporter.set_service_status(name, ServingStatus::NotServing).await;
        }
    }
}

/// Serves on `listener` until `shutdown` resolves, then drains for at most `cfg.grace`.
pub async fn serve(
    services: Arc<Services>,
    health: HealthServer<impl Health>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let role = services.cfg.role;
    let max = 8 << 20;
    let act = matches!(role, Role::Both | Role::Activation)
        .then(|| ActivationServiceServer::new(services.activation.clone()).max_decoding_message_size(max));
    let gen = matches!(role, Role::Both | Role::Generation)
        .then(|| GenerationServiceServer::new(services.generation.clone()).max_decoding_message_size(max));
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(steer_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .expect("descriptor sets are valid");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let svc = services.clone();
    // HTTP/1.1 and the gRPC-Web translation let browsers call the same services; the dashboard
    // page is served from this port too.
    let server = tonic::transport::Server::builder()
        .accept_http1(true)
        .layer(crate::dashboard::DashboardLayer)
        .layer(tonic_web::GrpcWebLayer::new())
        .add_service(health)
        .add_service(reflection)
        .add_optional_service(act)
        .add_optional_service(gen)
        .serve_with_incoming_shutdown(TcpIncoming::from(listener).with_nodelay(Some(true)), async move {
            shutdown.await;
            tracing::info!("shutting down: no new requests");
            svc.draining().await;
            let _ = stop_tx.send(());
        });
    let grace = services.cfg.grace;
    tokio::select! {
        r = server => r,
        _ = async move {
            if stop_rx.await.is_ok() {
                tokio::time::sleep(grace).await;
            } else {
                std::future::pending::<()>().await;
            }
        } => {
            tracing::warn!("grace period over: closing open streams");
            Ok(())
        }
    }
}

/// A server on an ephemeral loopback port, running in the background (embedded mode, tests).
pub struct LocalServer {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), tonic::transport::Error>>>,
}

impl LocalServer {
    pub async fn start(engine: Arc<Engine>, cfg: ServeConfig) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let (services, health) = Services::new(cfg).await;
        services.ready(engine).await;
        let task = tokio::spawn(serve(Arc::new(services), health, listener, async move {
            let _ = rx.await;
        }));
        Ok(Self { addr, stop: Some(tx), task: Some(task) })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting, drains, and waits for the server to end.
    pub async fn shutdown(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for LocalServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}
