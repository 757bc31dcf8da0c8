//! The gate in front of each service: UNAVAILABLE until the model has loaded, then every call
//! goes through [`Gate::observe`]: a span with the request id (taken from `x-request-id` or
//! made, and echoed back), the latency histogram and the request counter by code. ModelInfo
//! names a local model by its directory's name unless the full path is to be shown.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use steer_activation::ActivationWorker;
use steer_generation::GenerationWorker;
use steer_proto::v1::activation_service_server::ActivationService;
use steer_proto::v1::generation_service_server::GenerationService;
use steer_proto::v1::{
    ActivationServiceGetModelInfoRequest, ActivationServiceGetModelInfoResponse, ComputeVectorRequest, DeleteVectorRequest, DeleteVectorResponse,
    GenerateFromTensorsRequest, GenerateRequest, GenerationServiceGetModelInfoRequest, GenerationServiceGetModelInfoResponse, GetActivationsRequest,
    GetSaeFeaturesRequest, GetSaeFeaturesResponse, GetSteeringTensorsRequest, GetVectorRequest, GetVectorResponse, ListSaesRequest, ListSaesResponse,
    ListVectorsRequest, ListVectorsResponse, PutVectorRequest, PutVectorResponse, SaeVectorRequest, SaeVectorResponse, ScoreRequest,
};
use steer_telemetry::Metrics;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

/// A service whose worker exists once the model has loaded.
pub struct Gate<W> {
    pub(crate) worker: Arc<OnceLock<W>>,
    metrics: Arc<Metrics>,
    service: &'static str,
    expose_model_path: bool,
}

impl<W> Clone for Gate<W> {
    fn clone(&self) -> Self {
        Self { worker: self.worker.clone(), metrics: self.metrics.clone(), service: self.service, expose_model_path: self.expose_model_path }
    }
}

/// A model's name as callers see it: a local path becomes its last component (a hub repo id,
/// which names no local file, stays as it is).
fn public_name(name: &str, expose_path: bool) -> String {
    let path = std::path::Path::new(name);
    if expose_path || !path.exists() {
        return name.to_string();
    }
    path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_else(|| "local model".into())
}

static REQUEST_IDS: AtomicU64 = AtomicU64::new(1);

impl<W> Gate<W> {
    pub(crate) fn new(metrics: Arc<Metrics>, service: &'static str, expose_model_path: bool) -> Self {
        Self { worker: Arc::new(OnceLock::new()), metrics, service, expose_model_path }
    }

    /// ModelInfo as callers may see it (a local path by its last component).
    fn show(&self, info: &mut Option<steer_proto::v1::ModelInfo>) {
        if let Some(i) = info.as_mut() {
            i.name = public_name(&i.name, self.expose_model_path);
        }
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
        steer_telemetry::adopt_remote_parent(&span, req.metadata());
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
    type ComputeVectorStream = <ActivationWorker as ActivationService>::ComputeVectorStream;
    async fn compute_vector(&self, r: Request<ComputeVectorRequest>) -> Result<Response<Self::ComputeVectorStream>, Status> {
        self.observe("ComputeVector", r, |w, r| async move { w.compute_vector(r).await }).await
    }
    async fn put_vector(&self, r: Request<PutVectorRequest>) -> Result<Response<PutVectorResponse>, Status> {
        self.observe("PutVector", r, |w, r| async move { w.put_vector(r).await }).await
    }
    async fn get_vector(&self, r: Request<GetVectorRequest>) -> Result<Response<GetVectorResponse>, Status> {
        self.observe("GetVector", r, |w, r| async move { w.get_vector(r).await }).await
    }
    async fn list_vectors(&self, r: Request<ListVectorsRequest>) -> Result<Response<ListVectorsResponse>, Status> {
        self.observe("ListVectors", r, |w, r| async move { w.list_vectors(r).await }).await
    }
    async fn delete_vector(&self, r: Request<DeleteVectorRequest>) -> Result<Response<DeleteVectorResponse>, Status> {
        self.observe("DeleteVector", r, |w, r| async move { w.delete_vector(r).await }).await
    }
    async fn get_activations(&self, r: Request<GetActivationsRequest>) -> Result<Response<Self::GetActivationsStream>, Status> {
        self.observe("GetActivations", r, |w, r| async move { w.get_activations(r).await }).await
    }
    async fn get_steering_tensors(&self, r: Request<GetSteeringTensorsRequest>) -> Result<Response<Self::GetSteeringTensorsStream>, Status> {
        self.observe("GetSteeringTensors", r, |w, r| async move { w.get_steering_tensors(r).await }).await
    }
    async fn list_saes(&self, r: Request<ListSaesRequest>) -> Result<Response<ListSaesResponse>, Status> {
        self.observe("ListSaes", r, |w, r| async move { w.list_saes(r).await }).await
    }
    async fn get_sae_features(&self, r: Request<GetSaeFeaturesRequest>) -> Result<Response<GetSaeFeaturesResponse>, Status> {
        self.observe("GetSaeFeatures", r, |w, r| async move { w.get_sae_features(r).await }).await
    }
    async fn sae_vector(&self, r: Request<SaeVectorRequest>) -> Result<Response<SaeVectorResponse>, Status> {
        self.observe("SaeVector", r, |w, r| async move { w.sae_vector(r).await }).await
    }
    async fn get_model_info(
        &self,
        r: Request<ActivationServiceGetModelInfoRequest>,
    ) -> Result<Response<ActivationServiceGetModelInfoResponse>, Status> {
        let mut resp = self.observe("GetModelInfo", r, |w, r| async move { ActivationService::get_model_info(&w, r).await }).await?;
        self.show(&mut resp.get_mut().info);
        Ok(resp)
    }
}

#[tonic::async_trait]
impl GenerationService for Gate<GenerationWorker> {
    type GenerateStream = <GenerationWorker as GenerationService>::GenerateStream;
    type GenerateFromTensorsStream = <GenerationWorker as GenerationService>::GenerateFromTensorsStream;
    type ScoreStream = <GenerationWorker as GenerationService>::ScoreStream;
    async fn score(&self, r: Request<ScoreRequest>) -> Result<Response<Self::ScoreStream>, Status> {
        self.observe("Score", r, |w, r| async move { w.score(r).await }).await
    }
    async fn generate(&self, r: Request<Streaming<GenerateRequest>>) -> Result<Response<Self::GenerateStream>, Status> {
        self.observe("Generate", r, |w, r| async move { w.generate(r).await }).await
    }
    async fn generate_from_tensors(&self, r: Request<GenerateFromTensorsRequest>) -> Result<Response<Self::GenerateFromTensorsStream>, Status> {
        self.observe("GenerateFromTensors", r, |w, r| async move { w.generate_from_tensors(r).await }).await
    }
    async fn get_model_info(
        &self,
        r: Request<GenerationServiceGetModelInfoRequest>,
    ) -> Result<Response<GenerationServiceGetModelInfoResponse>, Status> {
        let mut resp = self.observe("GetModelInfo", r, |w, r| async move { GenerationService::get_model_info(&w, r).await }).await?;
        self.show(&mut resp.get_mut().info);
        Ok(resp)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn local_paths_are_shown_by_their_last_component_only() {
        let dir = std::env::temp_dir();
        let full = dir.display().to_string();
        let last = dir.file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(super::public_name(&full, false), last);
        assert_eq!(super::public_name(&full, true), full);
        assert_eq!(super::public_name("openai-community/gpt2-xl", false), "openai-community/gpt2-xl");
    }
}
