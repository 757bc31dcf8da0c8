//! The services of one process, before and after the model loads: health reports NOT_SERVING
//! until [`Services::ready`], then SERVING, and NOT_SERVING again while draining.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use steer_activation::ActivationWorker;
use steer_generation::{GenerationWorker, VectorSource};
use steer_model::Engine;
use steer_telemetry::Metrics;
use steer_vector::Library;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

use steer_proto::v1::activation_service_client::ActivationServiceClient;
use steer_proto::v1::activation_service_server::ActivationService;
use steer_proto::v1::{
    GetSteeringTensorsRequest, GetSteeringTensorsResponse, GetVectorRequest, GetVectorResponse, ListVectorsRequest, ListVectorsResponse,
};

use crate::config::ServeConfig;
use crate::error::ServerError;
use crate::gate::Gate;

pub(crate) const ACTIVATION: &str = "steer.v1.ActivationService";
pub(crate) const GENERATION: &str = "steer.v1.GenerationService";

pub struct Services {
    pub(crate) cfg: ServeConfig,
    pub metrics: Arc<Metrics>,
    pub(crate) activation: Gate<ActivationWorker>,
    pub(crate) generation: Gate<GenerationWorker>,
    reporter: HealthReporter,
    /// What `/readyz` reports: loaded, draining, stuck (the watchdog).
    loaded: Arc<AtomicBool>,
    draining: Arc<AtomicBool>,
    stuck: Arc<AtomicBool>,
    /// The split-mode activation client of the HTTP routes, dialled once ([`Self::activation_api`]).
    remote_activation: std::sync::OnceLock<Option<(ActivationServiceClient<tonic::transport::Channel>, Option<String>)>>,
    library: Option<Arc<Library>>,
    /// The loaded model (tokenizer and names for the HTTP routes).
    engine: std::sync::OnceLock<Arc<Engine>>,
}

impl Services {
    /// Opens the vector library (when this process keeps one) before anything is served.
    pub async fn new(cfg: ServeConfig) -> Result<(Self, HealthServer<impl Health>), ServerError> {
        let library = match (&cfg.vectors.library, cfg.role.activation()) {
            (Some(l), true) => {
                let l = l.clone();
                let lib = tokio::task::spawn_blocking(move || Library::open(l)).await.map_err(|e| ServerError::Config(e.to_string()))?;
                Some(Arc::new(lib.map_err(|e| ServerError::Config(format!("vector library: {e}")))?))
            }
            _ => None,
        };
        let (reporter, health) = tonic_health::server::health_reporter();
        for name in ["", ACTIVATION, GENERATION] {
            reporter.set_service_status(name, ServingStatus::NotServing).await;
        }
        let metrics = Metrics::new();
        let expose = cfg.security.expose_model_path;
        let s = Self {
            cfg,
            activation: Gate::new(metrics.clone(), ACTIVATION, expose),
            generation: Gate::new(metrics.clone(), GENERATION, expose),
            metrics,
            reporter,
            loaded: Arc::new(AtomicBool::new(false)),
            draining: Arc::new(AtomicBool::new(false)),
            stuck: Arc::new(AtomicBool::new(false)),
            remote_activation: std::sync::OnceLock::new(),
            library,
            engine: std::sync::OnceLock::new(),
        };
        Ok((s, health))
    }

    /// Where the generation worker finds library vectors: this process's library, or the
    /// activation worker named in the configuration.
    fn vector_source(&self) -> VectorSource {
        if let Some(lib) = &self.library {
            return VectorSource::Local(lib.clone());
        }
        match &self.cfg.vectors.source_url {
            Some(url) => {
                VectorSource::remote(url, self.cfg.vectors.source_token.clone(), self.cfg.vectors.source_ca.as_deref()).unwrap_or_else(|e| {
                    tracing::error!(error = %e, "--vector-source: library vectors unavailable");
                    VectorSource::None
                })
            }
            None => VectorSource::None,
        }
    }

    /// Installs the workers on the loaded engine and reports SERVING.
    pub async fn ready(&self, engine: Arc<Engine>) {
        let _ = self.engine.set(engine.clone());
        let role = self.cfg.role;
        if role.activation() {
            let mut worker = ActivationWorker::new(engine.clone(), self.cfg.activation.clone());
            if let Some(lib) = &self.library {
                worker = worker.with_library(lib.clone());
            }
            if let Some(dir) = &self.cfg.vectors.sae_dir {
                worker = worker.with_saes(dir.clone());
            }
            let _ = self.activation.worker.set(worker);
            self.reporter.set_service_status(ACTIVATION, ServingStatus::Serving).await;
        }
        if role.generation() {
            let worker = GenerationWorker::new(engine, self.cfg.generation.clone(), self.metrics.clone()).with_vectors(self.vector_source());
            let _ = self.generation.worker.set(worker);
            self.reporter.set_service_status(GENERATION, ServingStatus::Serving).await;
            self.watch_generation();
        }
        self.reporter.set_service_status("", ServingStatus::Serving).await;
        self.loaded.store(true, Ordering::SeqCst);
    }

    /// The watchdog: while the generation engine loop is stuck (busy with no progress for
    /// `cfg.watchdog`, or ended), health reports the generation service and the server
    /// NOT_SERVING, so probes and load balancers notice; SERVING again once it moves.
    fn watch_generation(&self) {
        let (Some(worker), reporter, draining, flag) =
            (self.generation.worker.get().cloned(), self.reporter.clone(), self.draining.clone(), self.stuck.clone())
        else {
            return;
        };
        let timeout = self.cfg.watchdog;
        let every = (timeout / 4).clamp(std::time::Duration::from_millis(50), std::time::Duration::from_secs(1));
        tokio::spawn(async move {
            let mut was_stuck = false;
            loop {
                tokio::time::sleep(every).await;
                if draining.load(Ordering::SeqCst) {
                    return;
                }
                let stuck = worker.stuck(timeout);
                if stuck.is_some() != was_stuck {
                    let status = match &stuck {
                        Some(why) => {
                            tracing::error!(reason = %why, "watchdog: generation NOT_SERVING");
                            ServingStatus::NotServing
                        }
                        None => {
                            tracing::warn!("watchdog: generation engine moving again; SERVING");
                            ServingStatus::Serving
                        }
                    };
                    for name in ["", GENERATION] {
                        reporter.set_service_status(name, status).await;
                    }
                    was_stuck = stuck.is_some();
                    flag.store(was_stuck, Ordering::SeqCst);
                }
            }
        });
    }

    /// Serves `/metrics` (activation-cache gauges refreshed at each scrape), `/healthz` (the
    /// process answers: liveness) and `/readyz` (loaded, not draining, engine not stuck:
    /// readiness and startup) on `addr`.
    pub async fn serve_metrics(&self, addr: SocketAddr) -> std::io::Result<SocketAddr> {
        let (metrics, act, gen) = (self.metrics.clone(), self.activation.worker.clone(), self.generation.worker.clone());
        let refresh = move || {
            if let Some(w) = gen.get() {
                metrics.inflight_bytes.set(w.inflight_bytes() as i64);
            }
            if let Some(w) = act.get() {
                let s = w.cache().stats();
                metrics.cache_hits.set(s.hits as i64);
                metrics.cache_misses.set(s.misses as i64);
                metrics.cache_bytes.set(s.bytes as i64);
                metrics.cache_entries.set(s.entries as i64);
            }
        };
        let (loaded, draining, stuck) = (self.loaded.clone(), self.draining.clone(), self.stuck.clone());
        let ready = move || {
            if draining.load(Ordering::SeqCst) {
                Err("draining".to_string())
            } else if !loaded.load(Ordering::SeqCst) {
                Err("loading the model".to_string())
            } else if stuck.load(Ordering::SeqCst) {
                Err("the generation engine is stuck (watchdog)".to_string())
            } else {
                Ok(())
            }
        };
        steer_telemetry::serve_metrics(addr, self.metrics.clone(), steer_telemetry::Probes::new(refresh, ready)).await
    }

    /// The activation service the HTTP routes steer with: this process's, or in split mode the
    /// activation worker the generation worker was pointed at (`--vector-source`, its token
    /// and CA). `None` when there is neither.
    pub(crate) fn activation_api(&self) -> Option<ActivationApi<'_>> {
        if self.cfg.role.activation() {
            return Some(ActivationApi::Local(&self.activation));
        }
        let remote = self.remote_activation.get_or_init(|| match self.vector_source() {
            VectorSource::Remote { client, token } => Some((client, token)),
            _ => None,
        });
        remote.as_ref().map(|(client, token)| ActivationApi::Remote { client: client.clone(), token: token.clone() })
    }

    /// The loaded model, or UNAVAILABLE while it loads.
    pub(crate) fn engine(&self) -> Result<&Arc<Engine>, tonic::Status> {
        self.engine.get().ok_or_else(|| tonic::Status::unavailable("the model is still loading"))
    }

    /// The name OpenAI clients give for the unsteered model: `--served-model-name`, else the
    /// loaded model's.
    pub(crate) fn served_model_name(&self) -> Option<String> {
        self.cfg.served_model_name.clone().or_else(|| self.engine.get().map(|e| e.info().name.clone()))
    }

    /// Reports NOT_SERVING (on shutdown, so load balancers stop sending).
    pub async fn draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
        for name in ["", ACTIVATION, GENERATION] {
            self.reporter.set_service_status(name, ServingStatus::NotServing).await;
        }
    }
}

/// Where the HTTP routes reach the ActivationService ([`Services::activation_api`]).
pub(crate) enum ActivationApi<'a> {
    Local(&'a Gate<ActivationWorker>),
    Remote { client: ActivationServiceClient<tonic::transport::Channel>, token: Option<String> },
}

type Responses<T> = std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<T, tonic::Status>> + Send>>;

impl ActivationApi<'_> {
    fn request<T>(&self, msg: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        steer_telemetry::inject_current(req.metadata_mut());
        if let ActivationApi::Remote { token: Some(t), .. } = self {
            if let Ok(v) = format!("Bearer {t}").parse() {
                req.metadata_mut().insert("authorization", v);
            }
        }
        req
    }

    pub(crate) async fn get_steering_tensors(&self, msg: GetSteeringTensorsRequest) -> Result<Responses<GetSteeringTensorsResponse>, tonic::Status> {
        let req = self.request(msg);
        Ok(match self {
            ActivationApi::Local(gate) => Box::pin(gate.get_steering_tensors(req).await?.into_inner()),
            ActivationApi::Remote { client, .. } => Box::pin(client.clone().get_steering_tensors(req).await?.into_inner()),
        })
    }

    pub(crate) async fn list_vectors(&self) -> Result<ListVectorsResponse, tonic::Status> {
        let req = self.request(ListVectorsRequest {});
        Ok(match self {
            ActivationApi::Local(gate) => gate.list_vectors(req).await?.into_inner(),
            ActivationApi::Remote { client, .. } => client.clone().list_vectors(req).await?.into_inner(),
        })
    }

    pub(crate) async fn get_vector(&self, msg: GetVectorRequest) -> Result<GetVectorResponse, tonic::Status> {
        let req = self.request(msg);
        Ok(match self {
            ActivationApi::Local(gate) => gate.get_vector(req).await?.into_inner(),
            ActivationApi::Remote { client, .. } => client.clone().get_vector(req).await?.into_inner(),
        })
    }
}
