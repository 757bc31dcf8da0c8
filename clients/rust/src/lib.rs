//! `steer-client`: orchestrates the two services. It asks the ActivationService for the
//! steering tensors of a list of activation additions, streams them to a GenerationService
//! (chosen round-robin among the endpoints given), and returns or streams the unsteered and
//! steered completions. `calculate_and_apply_steering_vector` mirrors the ARENA function.
//!
//! Connections ([`connection`]) are lazy (a dead worker fails only the calls sent to it),
//! over TLS for `https://` URLs, carry a bearer token when given, and every call has a
//! deadline. A generation that fails because of its worker moves to the next one, skipping
//! workers that failed a moment ago.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use steer_proto::v1::activation_service_client::ActivationServiceClient;
use steer_proto::v1::{
    compute_vector_request, compute_vector_response, generate_request, ActivationServiceGetModelInfoRequest, ComputeVectorRequest, ContrastPairs,
    DeleteVectorRequest, GenerateRequest, GenerateResponse, GenerationServiceGetModelInfoRequest, GetVectorRequest, ListVectorsRequest,
    ListVectorsResponse, ModelInfo, PutVectorRequest, PutVectorResponse, VectorFile, VectorInfo, VectorRef,
};
use tonic::Status;

pub use steer_eval as eval;
pub use steer_eval::{
    collect_steering_tensors, drain, model_ref, no_op_warnings, score_request, steering_request, AdditionSpec, Comparison, Completion,
    Error as ClientError, Result, RunOptions, SteeringTensor,
};
pub use steer_proto::{hooks, v1};
pub use steer_vector;

mod backend;
pub mod connection;
pub mod presets;

pub use connection::{normalize_address, unreachable, ConnectOptions};
use connection::{Channel, Workers};

/// Connections to one activation worker and one or more generation workers.
pub struct SteerClient {
    activation: ActivationServiceClient<Channel>,
    /// The activation worker's URL, as dialled.
    activation_url: String,
    /// Whether the activation worker has answered once: only then is a failure to reach it
    /// taken for a restart and tried again.
    reached: AtomicBool,
    generation: Arc<Workers>,
    opts: ConnectOptions,
}

impl SteerClient {
    /// `activation_url` and each of `generation_urls` as `host:port`, `http://host:port` or
    /// `https://host:port` (a generation address may also be `dns:host:port`, every address the
    /// name resolves to, followed as it changes; see [`normalize_address`]), with the default options: no token, the system's roots for TLS, a 10-minute deadline.
    pub async fn connect(activation_url: &str, generation_urls: &[String]) -> Result<Self> {
        Self::connect_with(activation_url, generation_urls, ConnectOptions::default()).await
    }

    /// As [`SteerClient::connect`], with TLS, token and deadline from `opts`. Nothing is
    /// dialled yet: each connection is made on its first call (and remade after a failure).
    pub async fn connect_with(activation_url: &str, generation_urls: &[String], opts: ConnectOptions) -> Result<Self> {
        if generation_urls.is_empty() {
            return Err(ClientError::Protocol("at least one generation endpoint".into()));
        }
        let activation_url = normalize_address(activation_url)?;
        let activation = ActivationServiceClient::new(opts.channel(&activation_url)?).max_decoding_message_size(64 << 20);
        let generation = Workers::new(generation_urls, &opts).await?;
        Ok(Self { activation, activation_url, reached: AtomicBool::new(false), generation, opts })
    }

    /// The error of a call to the activation worker: one line when it could not be reached.
    fn act_err(&self, s: Status) -> ClientError {
        unreachable(&self.activation_url, s)
    }

    /// A request carrying the client's deadline (sent as `grpc-timeout`, which the workers honour).
    fn request<T>(&self, msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        r.set_timeout(self.opts.deadline);
        r
    }

    pub async fn activation_info(&self) -> Result<ModelInfo> {
        let r = self
            .activation
            .clone()
            .get_model_info(self.request(ActivationServiceGetModelInfoRequest {}))
            .await
            .map_err(|e| self.act_err(e))?
            .into_inner();
        r.info.ok_or_else(|| ClientError::Protocol("model info missing".into()))
    }

    pub async fn generation_info(&self) -> Result<ModelInfo> {
        let (url, mut g) = self.generation.pick(None).ok_or_else(no_worker)?;
        let r = g.get_model_info(self.request(GenerationServiceGetModelInfoRequest {})).await.map_err(|e| unreachable(&url, e))?.into_inner();
        r.info.ok_or_else(|| ClientError::Protocol("model info missing".into()))
    }

    /// The generation workers' URLs now (`dns://` names resolved).
    pub fn generation_urls(&self) -> Vec<String> {
        self.generation.urls()
    }

    /// Teacher-forced scores of `(prompt, continuation)` texts under `tensors` (and
    /// `opts.vectors`): one [`v1::TextScore`] per text and side (unsteered first when
    /// `include_unsteered`), in text order. `kl_top` > 0 adds the next-token KL after each text.
    pub async fn score(
        &self,
        texts: &[(String, String)],
        tensors: &[SteeringTensor],
        opts: &RunOptions,
        include_unsteered: bool,
        kl_top: u32,
    ) -> Result<Vec<v1::TextScore>> {
        self.score_with(score_request(texts, tensors, opts, include_unsteered, kl_top)).await
    }

    /// [`SteerClient::score`] of a request already built.
    pub async fn score_with(&self, req: v1::ScoreRequest) -> Result<Vec<v1::TextScore>> {
        let (url, mut g) = self.generation.pick(None).ok_or_else(no_worker)?;
        let stream = g.score(self.request(req)).await.map_err(|e| unreachable(&url, e))?.into_inner();
        steer_eval::collect_scores(self.within(stream)).await
    }

    /// Builds a vector file on the activation worker (ActAdd additions or contrast pairs),
    /// calling `on_progress(done, total)` as a dataset vector's batches finish.
    pub async fn compute_vector(&self, req: ComputeVectorRequest, mut on_progress: impl FnMut(u32, u32)) -> Result<VectorFile> {
        let mut stream = self.activation.clone().compute_vector(self.request(req)).await.map_err(|e| self.act_err(e))?.into_inner();
        while let Some(msg) = self.next(&mut stream).await? {
            match msg.event {
                Some(compute_vector_response::Event::Progress(p)) => on_progress(p.done, p.total),
                Some(compute_vector_response::Event::Vector(f)) => return Ok(f),
                None => {}
            }
        }
        Err(ClientError::Protocol("ComputeVector ended without a vector".into()))
    }

    /// ActAdd's vector of `additions` (one prefix tensor per layer, with the prompts, token ids,
    /// padding and BOS choice in its metadata), as a file; `store` also puts it in the library.
    pub async fn save_vector(&self, name: &str, additions: &[AdditionSpec], opts: &RunOptions, store: bool) -> Result<VectorFile> {
        let req = ComputeVectorRequest {
            name: name.into(),
            source: Some(compute_vector_request::Source::Additions(steering_request(additions, opts))),
            store,
        };
        self.compute_vector(req, |_, _| {}).await
    }

    /// A dataset vector: the mean over `pairs` of reduce(act(positive)) - reduce(act(negative))
    /// at each point (CAA), one all-positions direction per point.
    pub async fn train_vector(&self, name: &str, pairs: ContrastPairs, store: bool, on_progress: impl FnMut(u32, u32)) -> Result<VectorFile> {
        let req = ComputeVectorRequest { name: name.into(), source: Some(compute_vector_request::Source::Pairs(pairs)), store };
        self.compute_vector(req, on_progress).await
    }

    /// Puts a vector file in the activation worker's library (under `name`, or its own);
    /// `force_model` stores one made on other weights of the same shape.
    pub async fn put_vector(&self, data: Vec<u8>, name: &str, force_model: bool) -> Result<PutVectorResponse> {
        let req = PutVectorRequest { data, name: name.into(), force_model };
        Ok(self.activation.clone().put_vector(self.request(req)).await.map_err(|e| self.act_err(e))?.into_inner())
    }

    /// A library vector by name, digest or digest prefix.
    pub async fn get_vector(&self, r: &str) -> Result<VectorFile> {
        let resp =
            self.activation.clone().get_vector(self.request(GetVectorRequest { r#ref: r.into() })).await.map_err(|e| self.act_err(e))?.into_inner();
        resp.vector.ok_or_else(|| ClientError::Protocol("GetVector without a vector".into()))
    }

    pub async fn list_vectors(&self) -> Result<ListVectorsResponse> {
        Ok(self.activation.clone().list_vectors(self.request(ListVectorsRequest {})).await.map_err(|e| self.act_err(e))?.into_inner())
    }

    pub async fn delete_vector(&self, r: &str) -> Result<VectorInfo> {
        let resp = self
            .activation
            .clone()
            .delete_vector(self.request(DeleteVectorRequest { r#ref: r.into() }))
            .await
            .map_err(|e| self.act_err(e))?
            .into_inner();
        resp.deleted.ok_or_else(|| ClientError::Protocol("DeleteVector without the vector".into()))
    }

    /// A reference to a library vector (by name, digest or prefix) for [`RunOptions::vectors`]:
    /// its full digest, looked up on the activation worker.
    pub async fn vector_ref(&self, r: &str, scale: f64, layers: Option<(u32, u32)>) -> Result<VectorRef> {
        let info = self.get_vector(r).await?.info.ok_or_else(|| ClientError::Protocol("vector without info".into()))?;
        Ok(VectorRef {
            digest: info.digest,
            scale: Some(scale),
            first_layer: layers.map(|l| l.0),
            last_layer: layers.map(|l| l.1),
            ..Default::default()
        })
    }

    /// Sparse autoencoders the activation worker serves (its --sae-dir).
    pub async fn list_saes(&self) -> Result<Vec<v1::SaeInfo>> {
        Ok(self.activation.clone().list_saes(self.request(v1::ListSaesRequest {})).await.map_err(|e| self.act_err(e))?.into_inner().saes)
    }

    /// Features `first..first + count` of a served SAE: decoder norms and the `top` tokens each
    /// promotes.
    pub async fn sae_features(&self, sae: &str, first: u32, count: u32, top: u32) -> Result<v1::GetSaeFeaturesResponse> {
        let req = v1::GetSaeFeaturesRequest { sae: sae.into(), first, count, top_tokens: top };
        Ok(self.activation.clone().get_sae_features(self.request(req)).await.map_err(|e| self.act_err(e))?.into_inner())
    }

    /// A vector file from features of a served SAE (ADD `scale x W_dec[f]` at every position, or
    /// CLAMP to `clamp`); `store` also puts it in the library.
    pub async fn sae_vector(&self, req: v1::SaeVectorRequest) -> Result<VectorFile> {
        let resp = self.activation.clone().sae_vector(self.request(req)).await.map_err(|e| self.act_err(e))?.into_inner();
        resp.vector.ok_or_else(|| ClientError::Protocol("SaeVector without a vector".into()))
    }

    /// The steering tensor of each layer for `additions`. A call that fails because the
    /// activation worker is restarting (or refuses connections after it has answered once) is
    /// tried again, with backoff, within the deadline and `retry_for`; an address where nothing
    /// ever answered fails at once.
    pub async fn steering_tensors(&self, additions: &[AdditionSpec], opts: &RunOptions) -> Result<Vec<SteeringTensor>> {
        let started = std::time::Instant::now();
        let mut wait = Duration::from_millis(100);
        loop {
            let in_time = started.elapsed() + wait < self.opts.deadline.min(self.opts.retry_for);
            match self.steering_tensors_once(additions, opts).await {
                Ok(t) => {
                    self.reached.store(true, Ordering::Relaxed);
                    return Ok(t);
                }
                // Refused at the first call is a wrong address, not a restart: no retry.
                Err(e)
                    if in_time
                        && (matches!(&e, ClientError::Status(s) if retryable(s))
                            || matches!(e, ClientError::Connect { .. }) && self.reached.load(Ordering::Relaxed)) =>
                {
                    tracing::warn!(code = ?e.code(), ?wait, "activation worker failed; trying again");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(2));
                }
                other => return other,
            }
        }
    }

    async fn steering_tensors_once(&self, additions: &[AdditionSpec], opts: &RunOptions) -> Result<Vec<SteeringTensor>> {
        let req = steering_request(additions, opts);
        let stream = self.activation.clone().get_steering_tensors(self.request(req)).await.map_err(|e| self.act_err(e))?.into_inner();
        collect_steering_tensors(self.within(stream)).await
    }

    /// A response stream whose every message must come within the deadline (else
    /// DEADLINE_EXCEEDED): a stopped worker never hangs the caller.
    fn within<T: Send + 'static>(
        &self,
        stream: tonic::Streaming<T>,
    ) -> std::pin::Pin<Box<dyn futures::Stream<Item = std::result::Result<T, Status>> + Send>> {
        let deadline = self.opts.deadline;
        Box::pin(futures::stream::unfold(stream, move |mut s| async move {
            match tokio::time::timeout(deadline, s.next()).await {
                Ok(m) => m.map(|m| (m, s)),
                Err(_) => Some((Err(Status::deadline_exceeded("no message from the worker within the client's deadline")), s)),
            }
        }))
    }

    /// The next message of a response stream, or DEADLINE_EXCEEDED when none comes within the
    /// deadline (a worker that stopped, SIGSTOP or a dead peer, never hangs the caller).
    async fn next<T>(&self, stream: &mut tonic::Streaming<T>) -> Result<Option<T>> {
        match tokio::time::timeout(self.opts.deadline, stream.next()).await {
            Ok(m) => Ok(m.transpose()?),
            Err(_) => Err(ClientError::Status(Status::deadline_exceeded("no message from the worker within the client's deadline"))),
        }
    }

    /// Starts a generation with the given tensors; yields the server's events as they come.
    pub async fn generate_stream(&self, prompt: &str, tensors: &[SteeringTensor], opts: &RunOptions) -> Result<tonic::Streaming<GenerateResponse>> {
        let (_, stream) = self.generate_on(None, prompt, tensors, opts).await.map_err(|(_, e)| e)?;
        Ok(stream)
    }

    /// Starts a generation on a worker picked by the pool (`after`: the worker tried last).
    async fn generate_on(
        &self,
        after: Option<&str>,
        prompt: &str,
        tensors: &[SteeringTensor],
        opts: &RunOptions,
    ) -> std::result::Result<(String, tonic::Streaming<GenerateResponse>), (String, ClientError)> {
        let setup = opts.setup(prompt, tensors.len());
        let mut msgs = vec![GenerateRequest { msg: Some(generate_request::Msg::Setup(setup)) }];
        for t in tensors {
            msgs.push(GenerateRequest { msg: Some(generate_request::Msg::Tensor(t.header.clone())) });
            msgs.extend(t.chunks().iter().map(|c| GenerateRequest { msg: Some(generate_request::Msg::Chunk(c.clone())) }));
        }
        let Some((url, mut g)) = self.generation.pick(after) else {
            return Err((String::new(), no_worker()));
        };
        match g.generate(self.request(tokio_stream::iter(msgs))).await {
            Ok(r) => Ok((url, r.into_inner())),
            Err(s) => Err((url, s.into())),
        }
    }

    /// The seed's `calculate_and_apply_steering_vector`: unsteered and steered completions.
    pub async fn calculate_and_apply_steering_vector(&self, prompt: &str, additions: &[AdditionSpec], opts: &RunOptions) -> Result<Comparison> {
        let tensors = self.steering_tensors(additions, opts).await?;
        self.generate(prompt, &tensors, opts, |_| {}).await
    }

    /// Generates with the given tensors, calling `on_token` for every token as it streams, and
    /// returns the finished rows.
    ///
    /// Requests go round-robin over the generation workers. A request that fails because its
    /// worker is unreachable or went away is run again on the next worker: before any token a
    /// plain retry, after some tokens a replay from the same seeds, which yields the same tokens
    /// (`on_token` sees each token once). Invalid requests are not retried.
    pub async fn generate(
        &self,
        prompt: &str,
        tensors: &[SteeringTensor],
        opts: &RunOptions,
        mut on_token: impl FnMut(&v1::TokenEvent),
    ) -> Result<Comparison> {
        let mut delivered: Vec<u32> = vec![0; opts.rows()];
        let mut last = None;
        let mut after: Option<String> = None;
        for attempt in 0..self.generation.len() {
            let (worker, result) = match self.generate_on(after.as_deref(), prompt, tensors, opts).await {
                Ok((worker, mut stream)) => {
                    let mut cmp = Comparison::new();
                    let drained = async {
                        while let Some(msg) = self.next(&mut stream).await? {
                            steer_eval::collect(msg, &mut cmp, |t| {
                                let seen = delivered.get_mut(t.row as usize);
                                if let Some(seen) = seen.filter(|seen| t.index >= **seen) {
                                    *seen = t.index + 1;
                                    on_token(t);
                                }
                            });
                        }
                        if cmp.rows() == opts.rows() {
                            Ok(cmp)
                        } else {
                            Err(ClientError::Status(Status::unavailable("the stream ended before every row finished")))
                        }
                    };
                    (worker, drained.await)
                }
                Err((worker, e)) => (worker, Err(e)),
            };
            match result {
                Err(ClientError::Status(s)) if retryable(&s) => {
                    tracing::warn!(attempt, worker, code = ?s.code(), "generation worker failed; trying the next one");
                    self.generation.failed(&worker);
                    last = Some(unreachable(&worker, s));
                    after = Some(worker);
                }
                Ok(c) => {
                    self.generation.succeeded(&worker);
                    return Ok(c);
                }
                other => return other,
            }
        }
        Err(last.unwrap_or_else(|| ClientError::Protocol("no generation worker".into())))
    }
}

fn no_worker() -> ClientError {
    ClientError::Status(Status::unavailable("no generation worker (a dns:// name that resolves to no address yet?)"))
}

/// Failures of the worker or the connection, not of the request.
fn retryable(s: &Status) -> bool {
    use tonic::Code;
    matches!(s.code(), Code::Unavailable | Code::Unknown | Code::Internal | Code::Aborted | Code::ResourceExhausted)
        // A call this client cancels ends without a status: a CANCELLED that arrives came from
        // the transport or a draining worker.
        || s.code() == Code::Cancelled
}
