//! The `steer.v1.ActivationService` handlers: validate (validation.rs), fetch or compute every
//! activation the request needs in one batched capture (cache.rs), then stream tokens and
//! tensors.

use std::collections::HashMap;
use std::sync::Arc;

use steer_common::{convert, Budget, ServiceError};
use steer_model::{Addition, Engine, HookPoint};
use steer_proto::v1::activation_service_server::{ActivationService, ActivationServiceServer};
use steer_proto::v1::{
    compute_vector_request, compute_vector_response, get_activations_response, get_steering_tensors_response, ActivationServiceGetModelInfoRequest,
    ActivationServiceGetModelInfoResponse, AdditionTokens, ComputeProgress, ComputeVectorRequest, ComputeVectorResponse, DeleteVectorRequest,
    DeleteVectorResponse, GetActivationsRequest, GetActivationsResponse, GetSaeFeaturesRequest, GetSaeFeaturesResponse, GetSteeringTensorsRequest,
    GetSteeringTensorsResponse, GetVectorRequest, GetVectorResponse, ListSaesRequest, ListSaesResponse, ListVectorsRequest, ListVectorsResponse,
    PromptTokens, PutVectorRequest, PutVectorResponse, SaeVectorRequest, SaeVectorResponse, TensorChunk, TensorHeader, Tokens, VectorFile,
};
use steer_proto::wire;
use steer_vector::{Library, SteeringVector};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::cache::{Activation, ActivationCache, CacheKey};
use crate::config::ActivationConfig;
use crate::saes::{self, SaeStore};
use crate::{steering, validation, vectors};

/// `field: ...` as `{prefix}field: ...` (an embedded request's fields named from the outer one).
fn prefixed(prefix: &str, e: ServiceError) -> ServiceError {
    match e {
        ServiceError::InvalidArgument { field, reason } => ServiceError::invalid(format!("{prefix}{field}"), reason),
        other => other,
    }
}

/// Serves activations and steering tensors of one loaded model.
#[derive(Clone)]
pub struct ActivationWorker {
    engine: Arc<Engine>,
    cache: Arc<ActivationCache>,
    config: ActivationConfig,
    model_key: String,
    /// Calls in progress (computing or streaming), against `max_concurrent`.
    calls: Budget,
    /// The vector library, when this worker keeps one.
    library: Option<Arc<Library>>,
    /// Sparse autoencoders it serves (--sae-dir), when it has any.
    saes: Option<Arc<SaeStore>>,
}

type Stream<T> = ReceiverStream<Result<T, Status>>;

/// The response messages that carry tensors as a header and chunks.
trait TensorEvents: Sized {
    fn header(h: TensorHeader) -> Self;
    fn chunk(c: TensorChunk) -> Self;
}

impl TensorEvents for GetActivationsResponse {
    fn header(h: TensorHeader) -> Self {
        Self { event: Some(get_activations_response::Event::Header(h)) }
    }
    fn chunk(c: TensorChunk) -> Self {
        Self { event: Some(get_activations_response::Event::Chunk(c)) }
    }
}

impl TensorEvents for GetSteeringTensorsResponse {
    fn header(h: TensorHeader) -> Self {
        Self { event: Some(get_steering_tensors_response::Event::Header(h)) }
    }
    fn chunk(c: TensorChunk) -> Self {
        Self { event: Some(get_steering_tensors_response::Event::Chunk(c)) }
    }
}

/// Sends `event`; false when the client has gone.
async fn send<T>(tx: &mpsc::Sender<Result<T, Status>>, event: T) -> bool {
    tx.send(Ok(event)).await.is_ok()
}

impl ActivationWorker {
    pub fn new(engine: Arc<Engine>, config: ActivationConfig) -> Self {
        let info = engine.info();
        let model_key = format!("{}@{}:{}", info.name, info.revision, info.dtype);
        let calls = Budget::new("--max-activation-calls", "activation calls in progress", config.max_concurrent as u64, 1);
        Self { cache: ActivationCache::new(config.cache_bytes), engine, config, model_key, calls, library: None, saes: None }
    }

    /// Serves the vector library RPCs from `library` (without one they answer FAILED_PRECONDITION).
    pub fn with_library(mut self, library: Arc<Library>) -> Self {
        self.library = Some(library);
        self
    }

    /// Serves the SAEs under `dir` (each subdirectory in SAELens's layout) through ListSaes,
    /// GetSaeFeatures and SaeVector (without it they answer FAILED_PRECONDITION).
    pub fn with_saes(mut self, dir: impl Into<std::path::PathBuf>) -> Self {
        self.saes = Some(Arc::new(SaeStore::new(dir)));
        self
    }

    fn saes(&self) -> Result<&Arc<SaeStore>, Status> {
        self.saes.as_ref().ok_or_else(|| Status::failed_precondition("this activation worker serves no SAEs (start it with --sae-dir)"))
    }

    fn library(&self) -> Result<&Arc<Library>, Status> {
        self.library
            .as_ref()
            .ok_or_else(|| Status::failed_precondition("this activation worker keeps no vector library (start it with --vector-dir)"))
    }

    /// The steering tensor of each point of `plan`: sum of coeff * activation over its group.
    async fn steering_tensors(&self, plan: &steering::Plan) -> Result<Vec<(HookPoint, [usize; 2], Vec<f32>)>, Status> {
        let pairs: Vec<(&[u32], HookPoint)> = plan.iter().flat_map(|(&point, group)| group.iter().map(move |a| (a.ids.as_slice(), point))).collect();
        let mut acts = self.activations(&pairs).await?.into_iter();
        let mut tensors = vec![];
        for (&point, group) in plan {
            let group_acts: Vec<Arc<Activation>> = acts.by_ref().take(group.len()).collect();
            let shape = [group_acts[0].len, group_acts[0].d];
            let sum = steering::sum(point, group, group_acts.iter().map(|a| a.values.as_slice()))?;
            tensors.push((point, shape, sum));
        }
        Ok(tensors)
    }

    /// A vector as the response carries it; with `store`, put in the library first (its info
    /// then the library's).
    fn vector_file(&self, v: SteeringVector, store: bool) -> Result<VectorFile, Status> {
        let data = v.to_bytes();
        let info = if store {
            self.library()?.put(&data, None, Some(&convert::model_ref(&self.engine)), false).map_err(ServiceError::from)?.0
        } else {
            v.info(data.len() as u64)
        };
        Ok(VectorFile { info: Some(info), data })
    }

    /// A dataset vector, batch by batch, reporting progress on `tx`.
    async fn mean_difference(
        &self,
        name: &str,
        valid: &validation::ValidPairs,
        tx: &mpsc::Sender<Result<ComputeVectorResponse, Status>>,
    ) -> Result<Option<SteeringVector>, Status> {
        let mut md = vectors::MeanDifference::new(&valid.points, self.engine.info().d_model, valid.reduce);
        let total = valid.pairs.len() as u32;
        for (b, batch) in valid.pairs.chunks(valid.batch).enumerate() {
            let wanted: Vec<(&[u32], HookPoint)> =
                batch.iter().flat_map(|(p, n)| [p, n]).flat_map(|ids| valid.points.iter().map(move |&pt| (ids.as_slice(), pt))).collect();
            let acts = self.activations(&wanted).await?;
            let np = valid.points.len();
            for pair in acts.chunks(2 * np) {
                let (pos, neg) = pair.split_at(np);
                md.add(&pos.iter().map(|a| a.as_ref()).collect::<Vec<_>>(), &neg.iter().map(|a| a.as_ref()).collect::<Vec<_>>());
            }
            let done = ((b + 1) * valid.batch).min(valid.pairs.len()) as u32;
            let progress = ComputeProgress { done, total };
            if !send(tx, ComputeVectorResponse { event: Some(compute_vector_response::Event::Progress(progress)) }).await {
                return Ok(None);
            }
        }
        Ok(Some(md.finish(name, convert::model_ref(&self.engine), valid)?))
    }

    pub fn cache(&self) -> &ActivationCache {
        &self.cache
    }

    pub fn into_server(self) -> ActivationServiceServer<Self> {
        ActivationServiceServer::new(self)
    }

    fn tokens(&self, ids: &[u32]) -> Tokens {
        Tokens { ids: ids.to_vec(), strings: self.engine.tokenizer().token_strings(ids) }
    }

    /// The activation of each `(ids, point)`: cached ones from the cache, all missing ones
    /// from one capture forward (left-padded, stopping at the deepest stream asked for).
    async fn activations(&self, pairs: &[(&[u32], HookPoint)]) -> Result<Vec<Arc<Activation>>, Status> {
        let keys: Vec<CacheKey> =
            pairs.iter().map(|(ids, p)| CacheKey { model: self.model_key.clone(), stream: p.stream(), ids: ids.to_vec() }).collect();
        let point_of: HashMap<usize, HookPoint> = pairs.iter().map(|(_, p)| (p.stream(), *p)).collect();
        let engine = self.engine.clone();
        self.cache
            .get_many(&keys, move |missing| async move {
                let computed = tokio::task::spawn_blocking(move || capture(&engine, &missing, &point_of)).await;
                computed.map_err(|e| Status::internal(format!("capture task: {e}")))?.map_err(Status::from)
            })
            .await
    }

    /// The activations of every prompt at every point (prompt-major) under `steering`: one
    /// capture forward, not cached (the cache keys activations by tokens and point alone).
    async fn steered_activations(&self, prompts: &[Vec<u32>], points: &[HookPoint], steering: &[Addition]) -> Result<Vec<Arc<Activation>>, Status> {
        let (engine, prompts, points) = (self.engine.clone(), prompts.to_vec(), points.to_vec());
        let per_row = vec![steering.to_vec(); prompts.len()];
        let out = tokio::task::spawn_blocking(move || engine.capture_steered(&prompts, &points, &per_row))
            .await
            .map_err(|e| Status::internal(format!("capture task: {e}")))?
            .map_err(ServiceError::from)?;
        out.into_iter()
            .flatten()
            .map(|t| {
                let (len, d) = t.dims2().map_err(steer_model::ModelError::from).map_err(ServiceError::from)?;
                let values = t.flatten_all().and_then(|t| t.to_vec1::<f32>()).map_err(steer_model::ModelError::from).map_err(ServiceError::from)?;
                Ok(Arc::new(Activation { values, len, d }))
            })
            .collect()
    }

    /// Header and chunks of a `[len, d]` tensor, in f32 (the residual stream's dtype whatever the
    /// weights are held in); false when the client has gone.
    async fn send_tensor<T: TensorEvents>(
        &self,
        tx: &mpsc::Sender<Result<T, Status>>,
        values: &[f32],
        shape: [usize; 2],
        point: HookPoint,
        prompt_index: u32,
    ) -> bool {
        let (h, chunks) = wire::encode_f32(values, &shape, Some(point.into()), prompt_index);
        if !send(tx, T::header(h)).await {
            return false;
        }
        for c in chunks {
            if !send(tx, T::chunk(c)).await {
                return false;
            }
        }
        true
    }
}

/// One capture forward for `keys` (distinct prompts as rows, distinct streams as points).
fn capture(engine: &Engine, keys: &[CacheKey], point_of: &HashMap<usize, HookPoint>) -> Result<Vec<Activation>, ServiceError> {
    let mut prompts: Vec<Vec<u32>> = vec![];
    let mut points: Vec<HookPoint> = vec![];
    for k in keys {
        if !prompts.contains(&k.ids) {
            prompts.push(k.ids.clone());
        }
        if !points.contains(&point_of[&k.stream]) {
            points.push(point_of[&k.stream]);
        }
    }
    let out = engine.capture(&prompts, &points)?;
    keys.iter()
        .map(|k| {
            let row = prompts.iter().position(|p| *p == k.ids).expect("captured row");
            let col = points.iter().position(|p| *p == point_of[&k.stream]).expect("captured point");
            let t = &out[row][col];
            let (len, d) = t.dims2().map_err(steer_model::ModelError::from)?;
            let values = t.flatten_all().and_then(|t| t.to_vec1::<f32>()).map_err(steer_model::ModelError::from)?;
            Ok(Activation { values, len, d })
        })
        .collect()
}

#[tonic::async_trait]
impl ActivationService for ActivationWorker {
    type GetActivationsStream = Stream<GetActivationsResponse>;
    type GetSteeringTensorsStream = Stream<GetSteeringTensorsResponse>;
    type ComputeVectorStream = Stream<ComputeVectorResponse>;

    #[tracing::instrument(skip(self, request), fields(model = %self.model_key, name))]
    async fn compute_vector(&self, request: Request<ComputeVectorRequest>) -> Result<Response<Self::ComputeVectorStream>, Status> {
        let call = self.calls.try_take(1)?;
        let req = request.into_inner();
        tracing::Span::current().record("name", req.name.as_str());
        if req.store {
            self.library()?;
        }
        let (tx, rx) = mpsc::channel(16);
        match req.source {
            Some(compute_vector_request::Source::Additions(a)) => {
                let plan = validation::steering(&a, &self.engine, &self.config).map_err(|e| prefixed("additions.", e))?;
                let tensors = self.steering_tensors(&plan).await?;
                let v = vectors::actadd(&req.name, convert::model_ref(&self.engine), &a, &plan, tensors)?;
                let file = self.vector_file(v, req.store)?;
                let _ = tx.send(Ok(ComputeVectorResponse { event: Some(compute_vector_response::Event::Vector(file)) })).await;
            }
            Some(compute_vector_request::Source::Pairs(p)) => {
                let valid = validation::pairs(&p, &self.engine, &self.config)?;
                let this = self.clone();
                tokio::spawn(async move {
                    let _call = call;
                    let result = match this.mean_difference(&req.name, &valid, &tx).await {
                        Ok(Some(v)) => this.vector_file(v, req.store),
                        Ok(None) => return, // the client left
                        Err(e) => Err(e),
                    };
                    let event = result.map(|f| ComputeVectorResponse { event: Some(compute_vector_response::Event::Vector(f)) });
                    let _ = tx.send(event).await;
                });
            }
            None => return Err(ServiceError::invalid("source", "additions or pairs").into()),
        }
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    #[tracing::instrument(skip(self, request), fields(name))]
    async fn put_vector(&self, request: Request<PutVectorRequest>) -> Result<Response<PutVectorResponse>, Status> {
        let req = request.into_inner();
        let (lib, model) = (self.library()?.clone(), convert::model_ref(&self.engine));
        let (info, replaced) = tokio::task::spawn_blocking(move || lib.put(&req.data, Some(&req.name), Some(&model), req.force_model))
            .await
            .map_err(|e| Status::internal(format!("library task: {e}")))?
            .map_err(ServiceError::from)?;
        tracing::Span::current().record("name", info.name.as_str());
        Ok(Response::new(PutVectorResponse { info: Some(info), replaced: replaced.unwrap_or_default() }))
    }

    #[tracing::instrument(skip(self, request))]
    async fn get_vector(&self, request: Request<GetVectorRequest>) -> Result<Response<GetVectorResponse>, Status> {
        let r = request.into_inner().r#ref;
        let (v, data) = self.library()?.get(&r).map_err(ServiceError::from)?;
        let info = v.info(data.len() as u64);
        Ok(Response::new(GetVectorResponse { vector: Some(VectorFile { info: Some(info), data }) }))
    }

    #[tracing::instrument(skip(self, _request))]
    async fn list_vectors(&self, _request: Request<ListVectorsRequest>) -> Result<Response<ListVectorsResponse>, Status> {
        let lib = self.library()?;
        let cfg = lib.config();
        Ok(Response::new(ListVectorsResponse {
            vectors: lib.list(),
            bytes: lib.bytes(),
            capacity_bytes: cfg.max_bytes,
            max_entries: cfg.max_entries as u32,
        }))
    }

    #[tracing::instrument(skip(self, request))]
    async fn delete_vector(&self, request: Request<DeleteVectorRequest>) -> Result<Response<DeleteVectorResponse>, Status> {
        let r = request.into_inner().r#ref;
        let info = self.library()?.delete(&r).map_err(ServiceError::from)?;
        Ok(Response::new(DeleteVectorResponse { deleted: Some(info) }))
    }

    #[tracing::instrument(skip(self, request), fields(model = %self.model_key, prompts, points))]
    async fn get_activations(&self, request: Request<GetActivationsRequest>) -> Result<Response<Self::GetActivationsStream>, Status> {
        let call = self.calls.try_take(1)?;
        let req = request.into_inner();
        tracing::Span::current().record("prompts", req.prompts.len()).record("points", req.points.len());
        let valid = validation::activations(&req, &self.engine, &self.config)?;
        let acts = match valid.steering.is_empty() {
            true => {
                let pairs: Vec<(&[u32], HookPoint)> =
                    valid.prompts.iter().flat_map(|ids| valid.points.iter().map(move |&p| (ids.as_slice(), p))).collect();
                self.activations(&pairs).await?
            }
            false => self.steered_activations(&valid.prompts, &valid.points, &valid.steering).await?,
        };
        let (tx, rx) = mpsc::channel(16);
        let this = self.clone();
        tokio::spawn(async move {
            let _call = call;
            let mut acts = acts.into_iter();
            for (i, ids) in valid.prompts.iter().enumerate() {
                let tokens = PromptTokens { prompt_index: i as u32, tokens: Some(this.tokens(ids)) };
                if !send(&tx, GetActivationsResponse { event: Some(get_activations_response::Event::Tokens(tokens)) }).await {
                    return;
                }
                for &point in &valid.points {
                    let act = acts.next().expect("one activation per pair");
                    if !this.send_tensor(&tx, &act.values, [act.len, act.d], point, i as u32).await {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    #[tracing::instrument(skip(self, request), fields(model = %self.model_key, additions))]
    async fn get_steering_tensors(&self, request: Request<GetSteeringTensorsRequest>) -> Result<Response<Self::GetSteeringTensorsStream>, Status> {
        let call = self.calls.try_take(1)?;
        let req = request.into_inner();
        tracing::Span::current().record("additions", req.additions.len());
        let plan = validation::steering(&req, &self.engine, &self.config)?;
        let tensors = self.steering_tensors(&plan).await?;
        let (tx, rx) = mpsc::channel(16);
        let this = self.clone();
        tokio::spawn(async move {
            let _call = call;
            // Tokens of every addition, in request order, then a tensor per hook point.
            let mut all: Vec<&steering::PlannedAddition> = plan.values().flatten().collect();
            all.sort_by_key(|a| a.index);
            for a in all {
                let ev = get_steering_tensors_response::Event::Tokens(AdditionTokens {
                    addition_index: a.index as u32,
                    tokens: Some(this.tokens(&a.ids)),
                    padding: a.padding as u32,
                });
                if !send(&tx, GetSteeringTensorsResponse { event: Some(ev) }).await {
                    return;
                }
            }
            for (point, shape, values) in tensors {
                if !this.send_tensor(&tx, &values, shape, point, 0).await {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    #[tracing::instrument(skip(self, _request), fields(model = %self.model_key))]
    async fn list_saes(&self, _request: Request<ListSaesRequest>) -> Result<Response<ListSaesResponse>, Status> {
        let saes = self.saes()?.list(&convert::model_ref(&self.engine))?;
        Ok(Response::new(ListSaesResponse { saes }))
    }

    #[tracing::instrument(skip(self, request), fields(model = %self.model_key, sae))]
    async fn get_sae_features(&self, request: Request<GetSaeFeaturesRequest>) -> Result<Response<GetSaeFeaturesResponse>, Status> {
        let call = self.calls.try_take(1)?;
        let req = request.into_inner();
        tracing::Span::current().record("sae", req.sae.as_str());
        let (store, engine) = (self.saes()?.clone(), self.engine.clone());
        let resp = tokio::task::spawn_blocking(move || -> Result<GetSaeFeaturesResponse, ServiceError> {
            let _call = call;
            let sae = store.open(&req.sae, "sae")?;
            let features = saes::features(&sae, &engine, req.first, req.count, req.top_tokens)?;
            Ok(GetSaeFeaturesResponse { sae: Some(saes::info(&req.sae, &sae.cfg, &convert::model_ref(&engine))), features })
        })
        .await
        .map_err(|e| Status::internal(format!("SAE task: {e}")))??;
        Ok(Response::new(resp))
    }

    #[tracing::instrument(skip(self, request), fields(model = %self.model_key, sae))]
    async fn sae_vector(&self, request: Request<SaeVectorRequest>) -> Result<Response<SaeVectorResponse>, Status> {
        let call = self.calls.try_take(1)?;
        let req = request.into_inner();
        tracing::Span::current().record("sae", req.sae.as_str());
        if req.store {
            self.library()?;
        }
        let (store, engine) = (self.saes()?.clone(), self.engine.clone());
        let v = tokio::task::spawn_blocking(move || -> Result<SteeringVector, ServiceError> {
            let _call = call;
            let sae = store.open(&req.sae, "sae")?;
            saes::vector(&sae, &req.name, &req.features, req.scale, req.clamp_value, &engine)
        })
        .await
        .map_err(|e| Status::internal(format!("SAE task: {e}")))??;
        Ok(Response::new(SaeVectorResponse { vector: Some(self.vector_file(v, req.store)?) }))
    }

    #[tracing::instrument(skip(self, _request))]
    async fn get_model_info(
        &self,
        _request: Request<ActivationServiceGetModelInfoRequest>,
    ) -> Result<Response<ActivationServiceGetModelInfoResponse>, Status> {
        let mut info = convert::model_info(&self.engine);
        let s = self.cache.stats();
        info.cache = Some(steer_proto::v1::CacheStats {
            hits: s.hits,
            misses: s.misses,
            entries: s.entries,
            bytes: s.bytes,
            capacity_bytes: s.capacity_bytes,
            evictions: s.evictions,
        });
        Ok(Response::new(ActivationServiceGetModelInfoResponse { info: Some(info) }))
    }
}
