//! `steer-client`: orchestrates the two services. It asks the ActivationService for the
//! steering tensors of a list of activation additions, streams them to a GenerationService
//! (chosen round-robin among the endpoints given), and returns or streams the unsteered and
//! steered completions. `calculate_and_apply_steering_vector` mirrors the ARENA function.
//!
//! Connections ([`connection`]) are lazy (a dead worker fails only the calls sent to it),
//! over TLS for `https://` URLs, carry a bearer token when given, and every call has a
//! deadline. A generation that fails because of its worker moves to the next one, skipping
//! workers that failed a moment ago.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use steer_proto::v1::activation_service_client::ActivationServiceClient;
use steer_proto::v1::{
    generate_request, generate_response, get_steering_tensors_response, ActivationAddition, GenerateRequest, GenerateResponse,
    GenerateSetup, ActivationServiceGetModelInfoRequest, GenerationServiceGetModelInfoRequest, Hook, ModelInfo, SamplingParameters, GetSteeringTensorsRequest, TensorChunk, TensorHeader,
};
use steer_proto::v1::{
    compute_vector_request, compute_vector_response, ComputeVectorRequest, ContrastPairs, DeleteVectorRequest, GetVectorRequest,
    ListVectorsRequest, ListVectorsResponse, PutVectorRequest, PutVectorResponse, VectorFile, VectorInfo, VectorRef,
};
use steer_proto::wire::TensorAssembler;
use steer_vector::{Mode, ModelRef, SteeringVector, VectorTensor};
use tonic::Status;

pub use steer_proto::v1;
pub use steer_vector;

pub mod connection;
pub mod eval;
pub mod presets;

pub use connection::ConnectOptions;
use connection::{Channel, Workers};

/// Largest tensor the client accepts from a server (a GPT-2-XL `[1024, 1600]` f32 is 6.5 MB).
const MAX_TENSOR_BYTES: u64 = 1 << 30;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server's status, code kept.
    #[error("{}: {}", .0.code(), .0.message())]
    Status(#[from] Status),
    #[error("cannot connect to {endpoint}: {message}")]
    Connect { endpoint: String, message: String },
    #[error("protocol: {0}")]
    Protocol(String),
    /// A value given to the client (e.g. an addition spec) does not parse.
    #[error("{0}")]
    Parse(String),
    /// A vector file that does not read, or is for another model.
    #[error("{0}")]
    Vector(String),
}

impl ClientError {
    /// The gRPC code: the server's own for a status, UNAVAILABLE for a failed connection.
    pub fn code(&self) -> tonic::Code {
        match self {
            ClientError::Status(s) => s.code(),
            ClientError::Connect { .. } => tonic::Code::Unavailable,
            ClientError::Protocol(_) => tonic::Code::Internal,
            ClientError::Parse(_) => tonic::Code::InvalidArgument,
            ClientError::Vector(_) => tonic::Code::FailedPrecondition,
        }
    }
}

pub type Result<T> = std::result::Result<T, ClientError>;

/// One term of a steering vector: `coeff * activation(prompt)` at `layer`.
#[derive(Debug, Clone, PartialEq)]
pub struct AdditionSpec {
    pub layer: u32,
    pub coeff: f64,
    pub prompt: String,
}

impl AdditionSpec {
    pub fn new(layer: u32, coeff: f64, prompt: impl Into<String>) -> Self {
        Self { layer, coeff, prompt: prompt.into() }
    }
}

impl std::str::FromStr for AdditionSpec {
    type Err = ClientError;
    /// `LAYER:COEFF:TEXT` (the text may contain colons), e.g. `20:4:I talk about weddings`.
    fn from_str(spec: &str) -> Result<Self> {
        let bad = |what: &str| ClientError::Parse(format!("`{spec}`: {what}; expected LAYER:COEFF:TEXT"));
        let mut parts = spec.splitn(3, ':');
        let (Some(layer), Some(coeff), Some(text)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad("missing fields"));
        };
        let layer = layer.trim().parse().map_err(|_| bad("LAYER is not a whole number"))?;
        let coeff: f64 = coeff.trim().parse().map_err(|_| bad("COEFF is not a number"))?;
        if !coeff.is_finite() {
            return Err(bad("COEFF must be finite"));
        }
        Ok(Self::new(layer, coeff, text))
    }
}

/// Everything about a run but the prompt and the additions. `Default` is the post's settings
/// (RESID_PRE, BOS, space padding, [`SamplingParameters::post`]); [`RunOptions::seed`] the ARENA
/// seed's.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub hook: Hook,
    pub use_bos: bool,
    pub n_tokens: u32,
    pub n_comparisons: u32,
    pub seed: u64,
    pub sampling: SamplingParameters,
    pub strict_lengths: bool,
    pub top_logprobs: u32,
    /// Only the steered rows.
    pub skip_unsteered: bool,
    /// Keep generating past <|endoftext|>.
    pub ignore_eos: bool,
    /// Library vectors (by digest) the generation worker adds along with the tensors sent.
    pub vectors: Vec<VectorRef>,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            hook: Hook::ResidPre,
            use_bos: true,
            n_tokens: 50,
            n_comparisons: 3,
            seed: 0,
            sampling: SamplingParameters::post(),
            strict_lengths: false,
            top_logprobs: 0,
            skip_unsteered: false,
            ignore_eos: false,
            vectors: vec![],
        }
    }
}

impl RunOptions {
    /// The ARENA exercise: BLOCK_OUTPUT, the seed's sampling (top_p 0.3, repetition penalty
    /// 1.2), contrast prompts of equal token length (strict, as the seed asserts).
    pub fn seed(use_bos: bool) -> Self {
        Self { hook: Hook::BlockOutput, use_bos, sampling: SamplingParameters::seed(), strict_lengths: true, ..Self::default() }
    }

    /// The `GenerateSetup` of a generation of `prompt` with `n_tensors` steering tensors.
    pub fn setup(&self, prompt: &str, n_tensors: usize) -> GenerateSetup {
        GenerateSetup {
            prompt: prompt.to_string(),
            use_bos: self.use_bos,
            sampling: Some(self.sampling),
            n_comparisons: self.n_comparisons,
            max_new_tokens: self.n_tokens,
            seed: self.seed,
            n_tensors: n_tensors as u32,
            top_logprobs: self.top_logprobs,
            skip_unsteered: self.skip_unsteered,
            ignore_eos: self.ignore_eos,
            vectors: self.vectors.clone(),
            ..Default::default()
        }
    }

    /// Rows a finished generation has.
    fn rows(&self) -> usize {
        self.n_comparisons as usize * if self.skip_unsteered { 1 } else { 2 }
    }
}

/// A steering tensor as received (or read from a vector file): its header (hook point, shape,
/// mode) and values.
#[derive(Debug, Clone)]
pub struct SteeringTensor {
    pub header: TensorHeader,
    pub values: Vec<f32>,
    chunks: Vec<TensorChunk>,
}

impl SteeringTensor {
    /// A tensor of a vector file, to add as its mode says.
    pub fn from_vector(t: &VectorTensor, mode: Mode) -> Self {
        let (mut header, chunks) = steer_proto::wire::encode_f32(&t.values, &[t.k, t.d()], Some(t.point.to_proto()), 0);
        header.mode = mode.to_proto() as i32;
        Self { header, values: t.values.clone(), chunks }
    }

    /// A prefix (ActAdd) tensor of `values.len() / d` positions at `point`.
    pub fn prefix(point: v1::HookPoint, values: Vec<f32>, d: usize) -> Self {
        let (header, chunks) = steer_proto::wire::encode_f32(&values, &[values.len() / d.max(1), d], Some(point), 0);
        Self { header, values, chunks }
    }

    /// The tensor in one piece (GenerateFromTensors, Score).
    pub fn inline(&self) -> v1::InlineTensor {
        v1::InlineTensor { header: Some(self.header.clone()), data: self.chunks.iter().flat_map(|c| c.data.iter().copied()).collect() }
    }

    /// The tensors to send for a vector file: checked against the model the services hold
    /// (`info`), scaled, narrowed to `layers` (inclusive).
    pub fn from_file(v: &SteeringVector, info: &ModelInfo, scale: f32, layers: Option<(u32, u32)>) -> Result<Vec<Self>> {
        v.check_model(&model_ref(info)).map_err(|e| ClientError::Vector(e.to_string()))?;
        let tensors = v.applied(scale, layers);
        if tensors.is_empty() {
            return Err(ClientError::Parse(format!("vector {}: no tensor in layers {layers:?}", v.meta.name)));
        }
        Ok(tensors.iter().map(|t| Self::from_vector(t, v.mode())).collect())
    }

    /// L2 norm of each position's vector.
    pub fn position_norms(&self) -> Vec<f32> {
        let d = self.header.shape.get(1).copied().unwrap_or(1).max(1) as usize;
        self.values.chunks(d).map(|r| r.iter().map(|x| x * x).sum::<f32>().sqrt()).collect()
    }
}

/// One finished completion.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    pub row: u32,
    pub steered: bool,
    pub text: String,
    pub token_ids: Vec<u32>,
    pub finish_reason: v1::FinishReason,
    pub seed: u64,
    /// The generation worker that produced it.
    pub worker: String,
}

impl From<v1::RowFinished> for Completion {
    fn from(f: v1::RowFinished) -> Self {
        Self {
            row: f.row,
            steered: f.steered,
            text: f.text,
            token_ids: f.token_ids,
            finish_reason: v1::FinishReason::try_from(f.reason).unwrap_or_default(),
            seed: f.seed,
            worker: f.worker,
        }
    }
}

/// The result of `calculate_and_apply_steering_vector`.
#[derive(Debug, Clone)]
pub struct Comparison {
    pub unsteered: Vec<Completion>,
    pub steered: Vec<Completion>,
}

/// Connections to one activation worker and one or more generation workers.
pub struct SteerClient {
    activation: ActivationServiceClient<Channel>,
    generation: Arc<Workers>,
    opts: ConnectOptions,
}

impl SteerClient {
    /// `activation_url` and each of `generation_urls` as `http://host:port` (or `https://`;
    /// a generation URL may also be `dns://host:port`, every address the name resolves to,
    /// followed as it changes),
    /// with the default options: no token, the system's roots for TLS, a 10-minute deadline.
    pub async fn connect(activation_url: &str, generation_urls: &[String]) -> Result<Self> {
        Self::connect_with(activation_url, generation_urls, ConnectOptions::default()).await
    }

    /// As [`SteerClient::connect`], with TLS, token and deadline from `opts`. Nothing is
    /// dialled yet: each connection is made on its first call (and remade after a failure).
    pub async fn connect_with(activation_url: &str, generation_urls: &[String], opts: ConnectOptions) -> Result<Self> {
        if generation_urls.is_empty() {
            return Err(ClientError::Protocol("at least one generation endpoint".into()));
        }
        let activation = ActivationServiceClient::new(opts.channel(activation_url)?).max_decoding_message_size(64 << 20);
        let generation = Workers::new(generation_urls, &opts).await?;
        Ok(Self { activation, generation, opts })
    }

    /// A request carrying the client's deadline (sent as `grpc-timeout`, which the workers honour).
    fn request<T>(&self, msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        r.set_timeout(self.opts.deadline);
        r
    }

    pub async fn activation_info(&self) -> Result<ModelInfo> {
        let r = self.activation.clone().get_model_info(self.request(ActivationServiceGetModelInfoRequest {})).await?.into_inner();
        r.info.ok_or_else(|| ClientError::Protocol("model info missing".into()))
    }

    pub async fn generation_info(&self) -> Result<ModelInfo> {
        let (_, mut g) = self.generation.pick(None).ok_or_else(no_worker)?;
        let r = g.get_model_info(self.request(GenerationServiceGetModelInfoRequest {})).await?.into_inner();
        r.info.ok_or_else(|| ClientError::Protocol("model info missing".into()))
    }

    /// The generation workers' URLs now (`dns://` names resolved).
    pub fn generation_urls(&self) -> Vec<String> {
        self.generation.urls()
    }

    /// Teacher-forced scores of `(prompt, continuation)` texts under `tensors` (and
    /// `opts.vectors`): one [`v1::TextScore`] per text and side (unsteered first when
    /// `include_unsteered`), in text order. `kl_top` > 0 adds the next-token KL after each text.
    pub async fn score(&self, texts: &[(String, String)], tensors: &[SteeringTensor], opts: &RunOptions, include_unsteered: bool, kl_top: u32) -> Result<Vec<v1::TextScore>> {
        let req = score_request(texts, tensors, opts, include_unsteered, kl_top);
        let (_, mut g) = self.generation.pick(None).ok_or_else(no_worker)?;
        let mut stream = g.score(self.request(req)).await?.into_inner();
        let mut out = vec![];
        while let Some(msg) = self.next(&mut stream).await? {
            out.extend(msg.score);
        }
        out.sort_by_key(|s| (s.index, s.steered));
        Ok(out)
    }

    /// Builds a vector file on the activation worker (ActAdd additions or contrast pairs),
    /// calling `on_progress(done, total)` as a dataset vector's batches finish.
    pub async fn compute_vector(&self, req: ComputeVectorRequest, mut on_progress: impl FnMut(u32, u32)) -> Result<VectorFile> {
        let mut stream = self.activation.clone().compute_vector(self.request(req)).await?.into_inner();
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
        let req = ComputeVectorRequest { name: name.into(), source: Some(compute_vector_request::Source::Additions(steering_request(additions, opts))), store };
        self.compute_vector(req, |_, _| {}).await
    }

    /// A dataset vector: the mean over `pairs` of reduce(act(positive)) - reduce(act(negative))
    /// at each point (CAA), one all-positions direction per point.
    pub async fn train_vector(&self, name: &str, pairs: ContrastPairs, store: bool, on_progress: impl FnMut(u32, u32)) -> Result<VectorFile> {
        let req = ComputeVectorRequest { name: name.into(), source: Some(compute_vector_request::Source::Pairs(pairs)), store };
        self.compute_vector(req, on_progress).await
    }

    /// Puts a vector file in the activation worker's library (under `name`, or its own).
    pub async fn put_vector(&self, data: Vec<u8>, name: &str) -> Result<PutVectorResponse> {
        Ok(self.activation.clone().put_vector(self.request(PutVectorRequest { data, name: name.into() })).await?.into_inner())
    }

    /// A library vector by name, digest or digest prefix.
    pub async fn get_vector(&self, r: &str) -> Result<VectorFile> {
        let resp = self.activation.clone().get_vector(self.request(GetVectorRequest { r#ref: r.into() })).await?.into_inner();
        resp.vector.ok_or_else(|| ClientError::Protocol("GetVector without a vector".into()))
    }

    pub async fn list_vectors(&self) -> Result<ListVectorsResponse> {
        Ok(self.activation.clone().list_vectors(self.request(ListVectorsRequest {})).await?.into_inner())
    }

    pub async fn delete_vector(&self, r: &str) -> Result<VectorInfo> {
        let resp = self.activation.clone().delete_vector(self.request(DeleteVectorRequest { r#ref: r.into() })).await?.into_inner();
        resp.deleted.ok_or_else(|| ClientError::Protocol("DeleteVector without the vector".into()))
    }

    /// A reference to a library vector (by name, digest or prefix) for [`RunOptions::vectors`]:
    /// its full digest, looked up on the activation worker.
    pub async fn vector_ref(&self, r: &str, scale: f64, layers: Option<(u32, u32)>) -> Result<VectorRef> {
        let info = self.get_vector(r).await?.info.ok_or_else(|| ClientError::Protocol("vector without info".into()))?;
        Ok(VectorRef { digest: info.digest, scale: Some(scale), first_layer: layers.map(|l| l.0), last_layer: layers.map(|l| l.1) })
    }

    /// The steering tensor of each layer for `additions`. A call that fails because the
    /// activation worker is unreachable or restarting is tried again, with backoff, within the
    /// deadline.
    pub async fn steering_tensors(&self, additions: &[AdditionSpec], opts: &RunOptions) -> Result<Vec<SteeringTensor>> {
        let started = std::time::Instant::now();
        let mut wait = Duration::from_millis(100);
        loop {
            match self.steering_tensors_once(additions, opts).await {
                Err(ClientError::Status(s)) if retryable(&s) && started.elapsed() + wait < self.opts.deadline.min(self.opts.retry_for) => {
                    tracing::warn!(code = ?s.code(), ?wait, "activation worker failed; trying again");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(2));
                }
                other => return other,
            }
        }
    }

    async fn steering_tensors_once(&self, additions: &[AdditionSpec], opts: &RunOptions) -> Result<Vec<SteeringTensor>> {
        let req = steering_request(additions, opts);
        let stream = self.activation.clone().get_steering_tensors(self.request(req)).await?.into_inner();
        collect_steering_tensors(self.within(stream)).await
    }

    /// A response stream whose every message must come within the deadline (else
    /// DEADLINE_EXCEEDED): a stopped worker never hangs the caller.
    fn within<T: Send + 'static>(&self, stream: tonic::Streaming<T>) -> std::pin::Pin<Box<dyn futures::Stream<Item = std::result::Result<T, Status>> + Send>> {
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
    pub async fn generate_stream(
        &self,
        prompt: &str,
        tensors: &[SteeringTensor],
        opts: &RunOptions,
    ) -> Result<tonic::Streaming<GenerateResponse>> {
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
            msgs.extend(t.chunks.iter().map(|c| GenerateRequest { msg: Some(generate_request::Msg::Chunk(c.clone())) }));
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
                    let mut cmp = Comparison { unsteered: vec![], steered: vec![] };
                    let drained = async {
                        while let Some(msg) = self.next(&mut stream).await? {
                            collect(msg, &mut cmp, |t| {
                                let seen = delivered.get_mut(t.row as usize);
                                if let Some(seen) = seen.filter(|seen| t.index >= **seen) {
                                    *seen = t.index + 1;
                                    on_token(t);
                                }
                            });
                        }
                        if cmp.unsteered.len() + cmp.steered.len() == opts.rows() {
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
                    after = Some(worker);
                    last = Some(ClientError::Status(s));
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

/// The Score request of `texts` under `tensors` and `opts.vectors`.
pub fn score_request(texts: &[(String, String)], tensors: &[SteeringTensor], opts: &RunOptions, include_unsteered: bool, kl_top: u32) -> v1::ScoreRequest {
    v1::ScoreRequest {
        texts: texts.iter().map(|(p, c)| v1::ScoreText { prompt: p.clone(), continuation: c.clone() }).collect(),
        use_bos: opts.use_bos,
        tensors: tensors.iter().map(SteeringTensor::inline).collect(),
        vectors: opts.vectors.clone(),
        include_unsteered,
        short_prompt: 0,
        kl_top,
    }
}

/// Steering tensors from a GetSteeringTensors response stream (any transport).
pub async fn collect_steering_tensors<S>(mut stream: S) -> Result<Vec<SteeringTensor>>
where
    S: futures::Stream<Item = std::result::Result<v1::GetSteeringTensorsResponse, Status>> + Unpin,
{
    let mut out = vec![];
    let mut current: Option<(TensorAssembler, Vec<TensorChunk>)> = None;
    while let Some(msg) = stream.next().await {
        match msg?.event {
            Some(get_steering_tensors_response::Event::Header(h)) => {
                let asm = TensorAssembler::new(h, MAX_TENSOR_BYTES).map_err(|e| ClientError::Protocol(e.to_string()))?;
                current = Some((asm, vec![]));
            }
            Some(get_steering_tensors_response::Event::Chunk(c)) => {
                let (asm, chunks) = current.as_mut().ok_or_else(|| ClientError::Protocol("chunk before header".into()))?;
                asm.push(&c).map_err(|e| ClientError::Protocol(e.to_string()))?;
                chunks.push(c);
            }
            _ => {}
        }
        if current.as_ref().is_some_and(|(a, _)| a.is_complete()) {
            let (asm, chunks) = current.take().expect("complete");
            let (header, _, values) = asm.finish_f32().map_err(|e| ClientError::Protocol(e.to_string()))?;
            out.push(SteeringTensor { header, values, chunks });
        }
    }
    Ok(out)
}

/// The request for the steering tensors of `additions`.
pub fn steering_request(additions: &[AdditionSpec], opts: &RunOptions) -> GetSteeringTensorsRequest {
    GetSteeringTensorsRequest {
        additions: additions.iter().map(|a| ActivationAddition { prompt: a.prompt.clone(), coeff: a.coeff, layer: a.layer }).collect(),
        hook: opts.hook as i32,
        use_bos: opts.use_bos,
        strict_lengths: opts.strict_lengths,
    }
}

/// The model a service reports, as vector files name models.
pub fn model_ref(info: &ModelInfo) -> ModelRef {
    ModelRef { name: info.name.clone(), revision: info.revision.clone(), d_model: info.d_model, n_layer: info.n_layer }
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

/// Drains a generation stream into its finished rows, passing each token to `on_token`.
pub async fn drain(mut stream: tonic::Streaming<GenerateResponse>, mut on_token: impl FnMut(&v1::TokenEvent)) -> Result<Comparison> {
    let mut cmp = Comparison { unsteered: vec![], steered: vec![] };
    while let Some(msg) = stream.next().await {
        collect(msg?, &mut cmp, &mut on_token);
    }
    Ok(cmp)
}

/// One event of a generation stream: a token to `on_token`, a finished row into `cmp`.
fn collect(msg: GenerateResponse, cmp: &mut Comparison, mut on_token: impl FnMut(&v1::TokenEvent)) {
    match msg.event {
        Some(generate_response::Event::Token(t)) => on_token(&t),
        Some(generate_response::Event::Finished(f)) => {
            let c = Completion::from(f);
            if c.steered {
                cmp.steered.push(c);
            } else {
                cmp.unsteered.push(c);
            }
        }
        None => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addition_specs_parse_once_with_clear_errors() {
        let a: AdditionSpec = "20:4:I talk about weddings: constantly".parse().unwrap();
        assert_eq!(a, AdditionSpec::new(20, 4.0, "I talk about weddings: constantly"));
        assert_eq!("6:-8.5:".parse::<AdditionSpec>().unwrap(), AdditionSpec::new(6, -8.5, ""));
        for bad in ["20:4", "x:4:a", "20:y:a", "20:inf:a", "-1:2:a"] {
            let e = bad.parse::<AdditionSpec>().unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{bad}");
            assert!(e.to_string().contains("LAYER:COEFF:TEXT"), "{e}");
        }
    }

    #[test]
    fn the_presets_come_from_the_named_sampling_settings() {
        assert_eq!(RunOptions::default().sampling, SamplingParameters::post());
        let s = RunOptions::seed(false);
        assert_eq!((s.sampling, s.hook, s.strict_lengths, s.use_bos), (SamplingParameters::seed(), Hook::BlockOutput, true, false));
        assert_eq!(RunOptions { skip_unsteered: true, ..RunOptions::default() }.rows(), 3);
    }
}
