//! The `steer.v1.ActivationService` implementation.

use std::sync::Arc;

use steer_model::{Engine, HookPoint};
use steer_proto::v1::activation_service_server::ActivationService;
use steer_proto::v1::{
    get_activations_response, get_steering_tensors_response, GetActivationsResponse, AdditionTokens, GetActivationsRequest,
    ActivationServiceGetModelInfoRequest, ActivationServiceGetModelInfoResponse, Hook, ModelInfo, PromptTokens, GetSteeringTensorsRequest, GetSteeringTensorsResponse, Tokens,
};
use steer_proto::wire;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::cache::{Activation, ActivationCache, CacheKey};
use crate::config::ActivationConfig;
use crate::error::ActivationError;
use crate::steering;

/// Serves activations and steering tensors of one loaded model.
#[derive(Clone)]
pub struct ActivationWorker {
    engine: Arc<Engine>,
    cache: Arc<ActivationCache>,
    config: ActivationConfig,
    model_key: String,
}

type Stream<T> = ReceiverStream<Result<T, Status>>;

/// Proto hook point -> engine hook point, checking the layer.
pub fn hook_point(hook: i32, layer: u32, n_layer: usize, field: &str) -> Result<HookPoint, ActivationError> {
    let point = match Hook::try_from(hook) {
        Ok(Hook::Unspecified) | Ok(Hook::ResidPre) => HookPoint::ResidPre(layer as usize),
        Ok(Hook::BlockOutput) => HookPoint::BlockOutput(layer as usize),
        Err(_) => return Err(ActivationError::invalid(format!("{field}.hook"), format!("unknown hook {hook}"))),
    };
    if layer as usize >= n_layer {
        return Err(ActivationError::invalid(format!("{field}.layer"), format!("{layer}: must be in 0..{n_layer}")));
    }
    Ok(point)
}

pub fn proto_point(p: HookPoint) -> steer_proto::v1::HookPoint {
    let hook = match p {
        HookPoint::ResidPre(_) => Hook::ResidPre,
        HookPoint::BlockOutput(_) => Hook::BlockOutput,
    };
    steer_proto::v1::HookPoint { hook: hook as i32, layer: p.layer() as u32 }
}

impl ActivationWorker {
    pub fn new(engine: Arc<Engine>, config: ActivationConfig) -> Self {
        let info = engine.info();
        let model_key = format!("{}@{}:{}", info.name, info.revision, info.dtype);
        Self { cache: Arc::new(ActivationCache::new(config.cache_bytes)), engine, config, model_key }
    }

    pub fn cache(&self) -> &ActivationCache {
        &self.cache
    }

    pub fn into_server(self) -> steer_proto::v1::activation_service_server::ActivationServiceServer<Self> {
        steer_proto::v1::activation_service_server::ActivationServiceServer::new(self)
    }

    fn tokens(&self, ids: &[u32]) -> Tokens {
        Tokens { ids: ids.to_vec(), strings: self.engine.tokenizer().token_strings(ids) }
    }

    /// Activation of `ids` at `point`, from the cache or one capture forward.
    async fn activation(&self, ids: Vec<u32>, point: HookPoint) -> Result<Arc<Activation>, ActivationError> {
        let key = CacheKey { model: self.model_key.clone(), stream: point.stream(), ids: ids.clone() };
        let engine = self.engine.clone();
        self.cache
            .get_or_compute(key, || async move {
                tokio::task::spawn_blocking(move || {
                    let t = engine.capture(&[ids], &[point])?.remove(0).remove(0);
                    let (len, d) = t.dims2().map_err(steer_model::ModelError::from)?;
                    let values = t.flatten_all().and_then(|t| t.to_vec1::<f32>()).map_err(steer_model::ModelError::from)?;
                    Ok::<_, ActivationError>(Activation { values, len, d })
                })
                .await
                .map_err(|e| ActivationError::Internal(e.to_string()))?
            })
            .await
    }

    fn encode_prompt(&self, text: &str, use_bos: bool, field: &str) -> Result<Vec<u32>, ActivationError> {
        let ids = self.engine.encode(text, use_bos)?;
        let n = self.engine.info().n_positions;
        if ids.len() > n {
            return Err(ActivationError::invalid(field, format!("{} tokens exceed the model's {n} positions", ids.len())));
        }
        Ok(ids)
    }

    fn wire_dtype(&self) -> steer_proto::v1::Dtype {
        wire::dtype_of_name(&self.engine.info().dtype)
    }
}

/// Sends header and chunks; false when the client has gone.
async fn send_tensor<T>(
    tx: &mpsc::Sender<Result<T, Status>>,
    header: steer_proto::v1::TensorHeader,
    chunks: Vec<steer_proto::v1::TensorChunk>,
    wrap_header: impl Fn(steer_proto::v1::TensorHeader) -> T,
    wrap_chunk: impl Fn(steer_proto::v1::TensorChunk) -> T,
) -> bool {
    if tx.send(Ok(wrap_header(header))).await.is_err() {
        return false;
    }
    for c in chunks {
        if tx.send(Ok(wrap_chunk(c))).await.is_err() {
            return false;
        }
    }
    true
}

#[tonic::async_trait]
impl ActivationService for ActivationWorker {
    type GetActivationsStream = Stream<GetActivationsResponse>;
    type GetSteeringTensorsStream = Stream<GetSteeringTensorsResponse>;

    #[tracing::instrument(skip(self, request), fields(model = %self.model_key, prompts, points))]
    async fn get_activations(
        &self,
        request: Request<GetActivationsRequest>,
    ) -> Result<Response<Self::GetActivationsStream>, Status> {
        let req = request.into_inner();
        tracing::Span::current().record("prompts", req.prompts.len()).record("points", req.points.len());
        let n_layer = self.engine.info().n_layer;
        if req.prompts.is_empty() {
            return Err(ActivationError::invalid("prompts", "at least one prompt").into());
        }
        if req.prompts.len() > self.config.max_prompts {
            return Err(ActivationError::invalid("prompts", format!("at most {} prompts", self.config.max_prompts)).into());
        }
        if req.points.is_empty() {
            return Err(ActivationError::invalid("points", "at least one hook point").into());
        }
        let points = req
            .points
            .iter()
            .enumerate()
            .map(|(i, p)| hook_point(p.hook, p.layer, n_layer, &format!("points[{i}]")))
            .collect::<Result<Vec<_>, _>>()?;
        let mut prompts = vec![];
        for (i, text) in req.prompts.iter().enumerate() {
            let ids = self.encode_prompt(text, req.use_bos, &format!("prompts[{i}]"))?;
            if ids.is_empty() {
                return Err(ActivationError::invalid(format!("prompts[{i}]"), "empty prompt").into());
            }
            prompts.push(ids);
        }
        let (tx, rx) = mpsc::channel(16);
        let this = self.clone();
        tokio::spawn(async move {
            for (i, ids) in prompts.into_iter().enumerate() {
                let tokens = PromptTokens { prompt_index: i as u32, tokens: Some(this.tokens(&ids)) };
                let ev = get_activations_response::Event::Tokens(tokens);
                if tx.send(Ok(GetActivationsResponse { event: Some(ev) })).await.is_err() {
                    return;
                }
                for &point in &points {
                    let act = match this.activation(ids.clone(), point).await {
                        Ok(a) => a,
                        Err(e) => {
                            let _ = tx.send(Err(e.into())).await;
                            return;
                        }
                    };
                    let (h, chunks) =
                        wire::encode(this.wire_dtype(), &act.values, &[act.len, act.d], Some(proto_point(point)), i as u32);
                    let wrap_h = |h| GetActivationsResponse { event: Some(get_activations_response::Event::Header(h)) };
                    let wrap_c = |c| GetActivationsResponse { event: Some(get_activations_response::Event::Chunk(c)) };
                    if !send_tensor(&tx, h, chunks, wrap_h, wrap_c).await {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    #[tracing::instrument(skip(self, request), fields(model = %self.model_key, additions))]
    async fn get_steering_tensors(
        &self,
        request: Request<GetSteeringTensorsRequest>,
    ) -> Result<Response<Self::GetSteeringTensorsStream>, Status> {
        let req = request.into_inner();
        tracing::Span::current().record("additions", req.additions.len());
        let n_layer = self.engine.info().n_layer;
        if req.additions.is_empty() {
            return Err(ActivationError::invalid("additions", "at least one activation addition").into());
        }
        if req.additions.len() > self.config.max_prompts {
            return Err(ActivationError::invalid("additions", format!("at most {} additions", self.config.max_prompts)).into());
        }
        let mut tokenised = vec![];
        let mut points = std::collections::BTreeMap::new();
        for (i, a) in req.additions.iter().enumerate() {
            let point = hook_point(req.hook, a.layer, n_layer, &format!("additions[{i}]"))?;
            if !a.coeff.is_finite() {
                return Err(ActivationError::invalid(format!("additions[{i}].coeff"), "must be finite").into());
            }
            let ids = self.encode_prompt(&a.prompt, req.use_bos, &format!("additions[{i}].prompt"))?;
            points.insert(a.layer as usize, point);
            tokenised.push((a.layer as usize, a.coeff, ids));
        }
        let plan = steering::plan(&tokenised, req.strict_lengths)?;
        let (tx, rx) = mpsc::channel(16);
        let this = self.clone();
        tokio::spawn(async move {
            // Tokens of every addition, in request order.
            let mut all: Vec<&steering::PlannedAddition> = plan.values().flatten().collect();
            all.sort_by_key(|a| a.index);
            for a in all {
                let ev = get_steering_tensors_response::Event::Tokens(AdditionTokens {
                    addition_index: a.index as u32,
                    tokens: Some(this.tokens(&a.ids)),
                    padding: a.padding as u32,
                });
                if tx.send(Ok(GetSteeringTensorsResponse { event: Some(ev) })).await.is_err() {
                    return;
                }
            }
            for (layer, group) in &plan {
                let point = points[layer];
                let mut sum: Option<Vec<f32>> = None;
                let (mut k, mut d) = (0, 0);
                for a in group {
                    let act = match this.activation(a.ids.clone(), point).await {
                        Ok(x) => x,
                        Err(e) => {
                            let _ = tx.send(Err(e.into())).await;
                            return;
                        }
                    };
                    (k, d) = (act.len, act.d);
                    let s = sum.get_or_insert_with(|| vec![0f32; act.values.len()]);
                    for (o, v) in s.iter_mut().zip(&act.values) {
                        *o += (a.coeff * *v as f64) as f32;
                    }
                }
                let values = sum.unwrap_or_default();
                let (h, chunks) = wire::encode(this.wire_dtype(), &values, &[k, d], Some(proto_point(point)), 0);
                let wrap_h = |h| GetSteeringTensorsResponse { event: Some(get_steering_tensors_response::Event::Header(h)) };
                let wrap_c = |c| GetSteeringTensorsResponse { event: Some(get_steering_tensors_response::Event::Chunk(c)) };
                if !send_tensor(&tx, h, chunks, wrap_h, wrap_c).await {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    #[tracing::instrument(skip(self, _request))]
    async fn get_model_info(
        &self,
        _request: Request<ActivationServiceGetModelInfoRequest>,
    ) -> Result<Response<ActivationServiceGetModelInfoResponse>, Status> {
        let mut info = model_info(&self.engine);
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

/// The proto `ModelInfo` of a loaded engine (without service-specific fields).
pub fn model_info(engine: &Engine) -> ModelInfo {
    let i = engine.info();
    ModelInfo {
        name: i.name.clone(),
        revision: i.revision.clone(),
        n_layer: i.n_layer as u32,
        d_model: i.d_model as u32,
        n_head: i.n_head as u32,
        vocab_size: i.vocab_size as u32,
        n_positions: i.n_positions as u32,
        dtype: wire::dtype_of_name(&i.dtype) as i32,
        cache: None,
        max_new_tokens: 0,
        max_comparisons: 0,
    }
}
