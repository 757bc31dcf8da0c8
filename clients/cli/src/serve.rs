//! `steer serve` and the two workers: flags (each with an env fallback and a default) into a
//! `steer_server::ServeConfig`, then `steer_server::run`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use steer_server::{Role, ServeConfig, TlsFiles};

use crate::args::{default_vector_dir, ModelArgs};

#[derive(Args, Clone)]
pub struct ServeArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Address to listen on (loopback by default; 0.0.0.0 to serve a network: then set TLS and tokens).
    #[arg(long, default_value = "127.0.0.1:50051", env = "STEER_ADDR")]
    addr: String,
    /// Serve Prometheus metrics at http://ADDR/metrics.
    #[arg(long, env = "STEER_METRICS_ADDR")]
    metrics_addr: Option<std::net::SocketAddr>,
    /// Name reported in finished rows (default: host name, then the listen address).
    #[arg(long, env = "STEER_WORKER_ID")]
    worker_id: Option<String>,
    /// Seconds open streams may run after SIGTERM/Ctrl-C.
    #[arg(long, default_value_t = 10, env = "STEER_GRACE_SECS")]
    grace_secs: u64,
    /// Print the memory these flags budget for (JSON: weights from the model's shapes and
    /// --dtype, KV, caches, tensors in flight) without loading anything, and exit. What a
    /// container's memory limit is sized from (deploy/k8s/README.md).
    #[arg(long)]
    print_memory_plan: bool,
    #[command(flatten)]
    limits: LimitArgs,
    #[command(flatten)]
    security: SecurityArgs,
    #[command(flatten)]
    pub vectors: VectorArgs,
    #[command(flatten)]
    openai: OpenAiArgs,
}

/// What OpenAI clients (and lm-evaluation-harness) select with `model`.
#[derive(Args, Clone)]
#[command(next_help_heading = "OpenAI API")]
pub struct OpenAiArgs {
    /// The `model` name of the unsteered model [default: the loaded model's name].
    #[arg(long, env = "STEER_SERVED_MODEL_NAME")]
    served_model_name: Option<String>,
    /// A steering profile a client selects with `"model": NAME` (repeatable): NAME={steering
    /// object as in a completion request}, NAME=vector:REF[:SCALE] (a library vector) or
    /// NAME=file:PATH[:SCALE] (a vector file). Library vectors are models by name too.
    #[arg(long = "profile", value_name = "NAME=SPEC")]
    profiles: Vec<String>,
}

/// The vector library.
#[derive(Args, Clone)]
#[command(next_help_heading = "Vector library")]
pub struct VectorArgs {
    /// Directory of the activation service's vector library [default: $XDG_DATA_HOME/steer/vectors,
    /// else ~/.local/share/steer/vectors].
    #[arg(long, env = "STEER_VECTOR_DIR")]
    pub vector_dir: Option<PathBuf>,
    /// Keep no vector library (the library RPCs answer FAILED_PRECONDITION).
    #[arg(long, env = "STEER_NO_VECTOR_LIBRARY", conflicts_with = "vector_dir")]
    pub no_vector_library: bool,
    /// Most vectors the library holds; a put past it gets RESOURCE_EXHAUSTED.
    #[arg(long, default_value_t = 1024, env = "STEER_VECTOR_LIBRARY_MAX_ENTRIES")]
    pub vector_library_max_entries: usize,
    /// Most MiB the library holds on disk.
    #[arg(long, default_value_t = 2048, env = "STEER_VECTOR_LIBRARY_MAX_MIB")]
    pub vector_library_max_mib: u64,
    /// generation-worker: fetch library vectors from this activation worker (http(s)://host:port).
    #[arg(long, env = "STEER_VECTOR_SOURCE")]
    pub vector_source: Option<String>,
    /// Bearer token for --vector-source [default: the first of --auth-tokens].
    #[arg(long, env = "STEER_VECTOR_SOURCE_TOKEN", hide_env_values = true)]
    pub vector_source_token: Option<String>,
    /// Trust this CA (PEM) for an https:// --vector-source (default: the system's roots).
    #[arg(long, env = "STEER_VECTOR_SOURCE_CA")]
    pub vector_source_ca: Option<PathBuf>,
    /// Serve the sparse autoencoders under this directory (one per subdirectory, SAELens's
    /// layout: cfg.json, sae_weights.safetensors) to browse and steer with.
    #[arg(long, env = "STEER_SAE_DIR")]
    pub sae_dir: Option<PathBuf>,
}

impl VectorArgs {
    /// The library's configuration (`None` with --no-vector-library).
    pub fn library(&self) -> Option<steer_vector::LibraryConfig> {
        if self.no_vector_library {
            return None;
        }
        let dir = self.vector_dir.clone().unwrap_or_else(default_vector_dir);
        Some(steer_vector::LibraryConfig {
            dir,
            max_entries: self.vector_library_max_entries,
            max_bytes: self.vector_library_max_mib << 20,
            ..Default::default()
        })
    }

    /// The vectors' configuration; a worker's own first token stands for --vector-source-token
    /// when none is given (workers of one deployment share their tokens).
    pub fn config(&self, own_tokens: &[String]) -> Result<steer_server::VectorsConfig> {
        let source_ca = self.vector_source_ca.as_ref().map(|p| std::fs::read(p).with_context(|| format!("reading {}", p.display()))).transpose()?;
        Ok(steer_server::VectorsConfig {
            library: self.library(),
            source_url: self.vector_source.clone(),
            source_token: self.vector_source_token.clone().or_else(|| own_tokens.first().cloned()),
            source_ca,
            sae_dir: self.sae_dir.clone(),
        })
    }
}

/// What one request, and all of them together, may take.
#[derive(Args, Clone)]
#[command(next_help_heading = "Limits")]
struct LimitArgs {
    /// Activation cache size in MiB.
    #[arg(long, default_value_t = 512, env = "STEER_CACHE_MIB")]
    cache_mib: usize,
    /// ActivationService calls computing or streaming at once; more get RESOURCE_EXHAUSTED.
    #[arg(long, default_value_t = 8, env = "STEER_MAX_ACTIVATION_CALLS")]
    max_activation_calls: usize,
    /// Most new tokens per row.
    #[arg(long, default_value_t = 256, env = "STEER_MAX_NEW_TOKENS")]
    max_new_tokens: usize,
    /// Most comparisons (rows per side) per request.
    #[arg(long, default_value_t = 16, env = "STEER_MAX_COMPARISONS")]
    max_comparisons: usize,
    /// Requests waiting to join the running batch; more get RESOURCE_EXHAUSTED.
    #[arg(long, default_value_t = 32, env = "STEER_MAX_QUEUE")]
    max_queue: usize,
    /// Most rows decoding at once, over all requests.
    #[arg(long, default_value_t = 32, env = "STEER_MAX_BATCH_ROWS")]
    max_batch_rows: usize,
    /// Most KV positions the running rows may reserve (prompt + max new tokens per row).
    #[arg(long, default_value_t = 8192, env = "STEER_MAX_BATCH_TOKENS")]
    max_batch_tokens: usize,
    /// MiB of prefilled prompts (KV and first logits) kept for later requests with the same
    /// prompt and steering (a re-run with another seed skips its prefill); 0 turns it off.
    #[arg(long, default_value_t = 1024, env = "STEER_PREFIX_CACHE_MIB")]
    prefix_cache_mib: usize,
    /// Prefill chunk: prompt positions of one request prefilled per forward while others decode.
    #[arg(long, default_value_t = 32, env = "STEER_MAX_PREFILL_TOKENS")]
    max_prefill_tokens: usize,
    /// Prompt positions prefilled per forward (beside the running rows' decode step): one chunk
    /// from each waiting request, shortest first, while they stay within it (at least one chunk);
    /// higher prefills more requests per forward, at the cost of longer gaps in the running
    /// streams.
    #[arg(long, default_value_t = 32, env = "STEER_PREFILL_TOKENS_PER_STEP", value_parser = clap::value_parser!(u32).range(1..))]
    prefill_tokens_per_step: u32,
    /// Seconds after which a waiting prefill goes ahead of shorter ones (prefills run shortest
    /// remaining prompt first, then oldest first once a request has waited this long).
    #[arg(long, default_value_t = 10.0, env = "STEER_PREFILL_AGING_SECS")]
    prefill_aging_secs: f64,
    /// Milliseconds a request reaching an idle engine waits for others arriving with it, so that
    /// a burst's shortest prompts are prefilled first (0: none).
    #[arg(long, default_value_t = 10, env = "STEER_ARRIVAL_WINDOW_MS")]
    arrival_window_ms: u64,
    /// Bytes of steering tensors one generation request may send (as f32, plus their wire form).
    #[arg(long, default_value_t = 64 << 20, env = "STEER_MAX_REQUEST_BYTES")]
    max_request_bytes: u64,
    /// Bytes of steering tensors all generation requests may hold at once; more get RESOURCE_EXHAUSTED.
    #[arg(long, default_value_t = 512 << 20, env = "STEER_MAX_INFLIGHT_BYTES")]
    max_inflight_bytes: u64,
    /// Seconds a client may read nothing before its request is cancelled (ABORTED).
    #[arg(long, default_value_t = 10.0, env = "STEER_STALL_TIMEOUT_SECS")]
    stall_timeout_secs: f64,
    /// Seconds to wait for the next message of a request stream (DEADLINE_EXCEEDED after).
    #[arg(long, default_value_t = 30.0, env = "STEER_READ_TIMEOUT_SECS")]
    read_timeout_secs: f64,
    /// Seconds to receive a call's request and start answering.
    #[arg(long, default_value_t = 60.0, env = "STEER_REQUEST_TIMEOUT_SECS")]
    request_timeout_secs: f64,
    /// Concurrent calls per HTTP/2 connection.
    #[arg(long, default_value_t = 64, env = "STEER_MAX_STREAMS")]
    max_streams: u32,
    /// Seconds between HTTP/2 keepalive pings (a peer silent for 10 s more is closed).
    #[arg(long, default_value_t = 30.0, env = "STEER_KEEPALIVE_SECS")]
    keepalive_secs: f64,
    /// Seconds the generation engine may hold work without progress before health says NOT_SERVING.
    #[arg(long, default_value_t = 60.0, env = "STEER_WATCHDOG_SECS")]
    watchdog_secs: f64,
}

/// TLS, tokens and what callers may see.
#[derive(Args, Clone)]
#[command(next_help_heading = "Security")]
struct SecurityArgs {
    /// Serve TLS with this certificate chain (PEM); needs --tls-key.
    #[arg(long, env = "STEER_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, env = "STEER_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Require client certificates signed by this CA (mutual TLS).
    #[arg(long, env = "STEER_TLS_CLIENT_CA", requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
    /// Accept only calls bearing one of these tokens (a file, one per line; health stays open).
    #[arg(long, env = "STEER_AUTH_TOKENS")]
    auth_tokens: Option<PathBuf>,
    /// Do not serve gRPC reflection.
    #[arg(long, env = "STEER_NO_REFLECTION")]
    no_reflection: bool,
    /// Show a local model's full path in ModelInfo (by default only its directory's name).
    #[arg(long, env = "STEER_EXPOSE_MODEL_PATH")]
    expose_model_path: bool,
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.clamp(0.0, 1e9))
}

impl ServeArgs {
    fn config(&self, role: Role) -> Result<ServeConfig> {
        let l = &self.limits;
        let mut c = ServeConfig { role, grace: Duration::from_secs(self.grace_secs), watchdog: secs(l.watchdog_secs), ..Default::default() };
        c.activation.cache_bytes = l.cache_mib << 20;
        c.activation.max_concurrent = l.max_activation_calls;
        let g = &mut c.generation;
        g.max_new_tokens = l.max_new_tokens;
        g.max_comparisons = l.max_comparisons;
        g.max_queue = l.max_queue;
        g.max_batch_rows = l.max_batch_rows;
        g.max_batch_tokens = l.max_batch_tokens;
        g.max_prefill_tokens = l.max_prefill_tokens;
        g.prefix_cache_bytes = l.prefix_cache_mib << 20;
        g.prefill_tokens_per_step = l.prefill_tokens_per_step as usize;
        g.prefill_aging = secs(l.prefill_aging_secs);
        g.arrival_window = Duration::from_millis(l.arrival_window_ms);
        g.max_request_bytes = l.max_request_bytes;
        g.max_inflight_bytes = l.max_inflight_bytes;
        g.stall_timeout = secs(l.stall_timeout_secs);
        g.read_timeout = secs(l.read_timeout_secs);
        g.worker_id = self.worker_id.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()).unwrap_or_default();
            if host.is_empty() {
                self.addr.clone()
            } else {
                format!("{host}/{}", self.addr)
            }
        });
        let t = &mut c.transport;
        t.request_timeout = secs(l.request_timeout_secs);
        t.max_concurrent_streams = l.max_streams;
        t.keepalive_interval = secs(l.keepalive_secs);
        let s = &self.security;
        if let (Some(cert), Some(key)) = (&s.tls_cert, &s.tls_key) {
            c.security.tls = Some(TlsFiles::read(cert, key, s.tls_client_ca.as_deref())?);
        }
        if let Some(path) = &s.auth_tokens {
            c.security.tokens = steer_server::read_tokens(path)?;
        }
        c.security.no_reflection = s.no_reflection;
        c.security.expose_model_path = s.expose_model_path;
        c.vectors = self.vectors.config(&c.security.tokens)?;
        c.served_model_name = self.openai.served_model_name.clone();
        c.profiles = self.openai.profiles.iter().map(|p| steer_server::profiles::Profile::parse(p)).collect::<Result<_, _>>()?;
        steer_server::profiles::check_unique(&c.profiles)?;
        Ok(c)
    }
}

/// Listens at once (health NOT_SERVING), loads the model, then reports SERVING. Exits 0 after
/// SIGTERM/Ctrl-C once open streams finish or the grace period ends; non-zero if the model
/// cannot be loaded.
pub async fn serve(a: ServeArgs, role: Role) -> Result<()> {
    let cfg = a.config(role).context("serve flags")?;
    if a.print_memory_plan {
        println!("{}", serde_json::to_string_pretty(&memory_plan(&a.model, &cfg, role)?)?);
        return Ok(());
    }
    let model = a.model.clone();
    let scheme = if cfg.security.tls.is_some() { "TLS" } else { "plaintext" };
    eprintln!("serving {role:?} on {} ({scheme}; loading the model)", a.addr);
    if cfg.security.tokens.is_empty() && !is_loopback(&a.addr) {
        eprintln!("warning: listening beyond loopback with no --auth-tokens: anyone who reaches {} can use it", a.addr);
    }
    let load = move || model.load().map_err(|e| steer_server::ServerError::Loader(format!("{e:#}")));
    steer_server::run(&a.addr, cfg, a.metrics_addr, load, steer_server::shutdown_signal()).await?;
    Ok(())
}

/// The bytes `cfg` budgets for in `role`, from the model's shapes (its config.json when
/// `--model` is a directory, else the released GPT-2 shape its hub name gives) and `--dtype`
/// (else the type a local checkpoint stores; the released GPT-2s on the hub store f32).
fn memory_plan(model: &ModelArgs, cfg: &ServeConfig, role: Role) -> Result<serde_json::Value> {
    let dir = std::path::Path::new(&model.model);
    let shapes = if dir.join("config.json").is_file() {
        steer_model::Config::from_file(&dir.join("config.json"))?
    } else {
        let name = model.model.rsplit('/').next().unwrap_or_default();
        let size = name.strip_prefix("gpt2-").unwrap_or(if name == "gpt2" { "small" } else { name });
        steer_model::Config::by_name(size).with_context(|| format!("--model {}: no config.json there and not a released GPT-2 name", model.model))?
    };
    let dtype = match model.dtype {
        Some(d) => d.into(),
        None => match steer_model::ModelSource::Dir(dir.into()).resolve(&steer_model::HubOptions::from_env()) {
            Ok(files) => steer_model::stored_dtype(&files)?,
            Err(_) => steer_model::WeightDtype::F32,
        },
    };
    let weights = shapes.weight_bytes(dtype) as u64;
    let mut parts = serde_json::Map::new();
    parts.insert("weights".into(), weights.into());
    if role.generation() {
        let info = steer_model::ModelInfo {
            name: model.model.clone(),
            revision: model.revision.clone().unwrap_or_default(),
            n_layer: shapes.n_layer,
            d_model: shapes.n_embd,
            d_inner: shapes.inner_dim(),
            n_head: shapes.n_head,
            n_positions: shapes.n_positions,
            vocab_size: shapes.vocab_size,
            dtype,
            stored_dtype: dtype,
            architecture: "gpt2".into(),
            fingerprint: String::new(),
        };
        let p = cfg.generation.memory_plan(&info, weights as usize);
        for (k, v) in [("kv", p.kv), ("prefix_cache", p.prefix_cache), ("inflight", p.inflight), ("vectors", p.vectors), ("logits", p.logits)] {
            parts.insert(k.into(), v.into());
        }
    }
    if role.activation() {
        parts.insert("activation_cache".into(), (cfg.activation.cache_bytes as u64).into());
    }
    let total: u64 = parts.values().filter_map(serde_json::Value::as_u64).sum();
    Ok(serde_json::json!({ "role": format!("{role:?}"), "dtype": format!("{dtype:?}"), "bytes": parts, "total": total }))
}

fn is_loopback(addr: &str) -> bool {
    addr.parse::<std::net::SocketAddr>().is_ok_and(|a| a.ip().is_loopback()) || addr.starts_with("localhost:")
}
