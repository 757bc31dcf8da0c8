//! `steer run`, `steer demo`, `steer serve` and the workers.

use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::Args;
use steer_cli::presets;
use steer_cli::server::{self, LocalServer, Role, ServeConfig};
use steer_client::v1::{Hook, SamplingParameters};
use steer_client::{AdditionSpec, RunOptions, SteerClient};

use crate::ModelArgs;

pub fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

#[derive(Args, Clone)]
pub struct ServeArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:50051", env = "STEER_ADDR")]
    addr: String,
    /// Activation cache size in MiB.
    #[arg(long, default_value_t = 512)]
    cache_mib: usize,
    /// Engine threads generating at once.
    #[arg(long, default_value_t = 1)]
    slots: usize,
    #[arg(long, default_value_t = 256)]
    max_new_tokens: usize,
    #[arg(long, default_value_t = 16)]
    max_comparisons: usize,
    /// Seconds open streams may run after SIGTERM/Ctrl-C.
    #[arg(long, default_value_t = 10)]
    grace_secs: u64,
    /// Serve Prometheus metrics at http://ADDR/metrics.
    #[arg(long, env = "STEER_METRICS_ADDR")]
    metrics_addr: Option<std::net::SocketAddr>,
    /// Name reported in finished rows (default: host name, then the listen address).
    #[arg(long, env = "STEER_WORKER_ID")]
    worker_id: Option<String>,
}

impl ServeArgs {
    fn config(&self, role: Role) -> ServeConfig {
        let mut c = ServeConfig { role, grace: std::time::Duration::from_secs(self.grace_secs), ..Default::default() };
        c.activation.cache_bytes = self.cache_mib << 20;
        c.generation.slots = self.slots;
        c.generation.max_new_tokens = self.max_new_tokens;
        c.generation.max_comparisons = self.max_comparisons;
        c.generation.worker_id = match &self.worker_id {
            Some(w) => w.clone(),
            None if c.generation.worker_id.is_empty() => self.addr.clone(),
            None => format!("{}/{}", c.generation.worker_id, self.addr),
        };
        c
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! { _ = ctrl_c => {}, _ = term.recv() => {} }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// Listens at once (health NOT_SERVING), loads the model, then reports SERVING. Exits 0 after
/// SIGTERM/Ctrl-C once open streams finish or the grace period ends; non-zero if the model
/// cannot be loaded.
pub async fn serve(a: ServeArgs, role: Role) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(&a.addr).await.with_context(|| format!("binding {}", a.addr))?;
    eprintln!("serving {role:?} on {} (loading the model)", listener.local_addr()?);
    let (services, health) = server::Services::new(a.config(role)).await;
    let services = Arc::new(services);
    if let Some(addr) = a.metrics_addr {
        let bound = services.serve_metrics(addr).await.with_context(|| format!("binding metrics on {addr}"))?;
        eprintln!("metrics on http://{bound}/metrics");
    }
    let (failed_tx, failed_rx) = tokio::sync::oneshot::channel::<anyhow::Error>();
    let loader = {
        let (services, model) = (services.clone(), a.model.clone());
        tokio::spawn(async move {
            match tokio::task::spawn_blocking(move || model.load()).await {
                Ok(Ok(engine)) => {
                    services.ready(Arc::new(engine)).await;
                    eprintln!("ready");
                }
                Ok(Err(e)) => drop(failed_tx.send(e)),
                Err(e) => drop(failed_tx.send(e.into())),
            }
        })
    };
    tokio::select! {
        r = server::serve(services, health, listener, shutdown_signal()) => r?,
        Ok(e) = failed_rx => return Err(e.context("loading the model")),
    }
    loader.abort();
    Ok(())
}

#[derive(Args, Clone)]
pub struct RunArgs {
    #[arg(long)]
    prompt: String,
    /// LAYER:COEFF:TEXT, repeatable (e.g. --add "20:4:I talk about weddings constantly").
    #[arg(long = "add", required = true)]
    add: Vec<String>,
    #[command(flatten)]
    opts: RunFlags,
}

#[derive(Args, Clone)]
pub struct RunFlags {
    /// resid-pre (ActAdd) or block-output (ARENA).
    #[arg(long)]
    hook: Option<String>,
    #[arg(long)]
    tokens: Option<u32>,
    #[arg(long)]
    comparisons: Option<u32>,
    #[arg(long)]
    seed: Option<u64>,
    /// Prepend <|endoftext|> to prompt and contrast prompts.
    #[arg(long, overrides_with = "no_bos")]
    bos: bool,
    #[arg(long, overrides_with = "bos")]
    no_bos: bool,
    /// 0 = greedy.
    #[arg(long)]
    temperature: Option<f32>,
    #[arg(long)]
    top_p: Option<f32>,
    #[arg(long)]
    top_k: Option<u32>,
    #[arg(long)]
    repetition_penalty: Option<f32>,
    #[arg(long)]
    frequency_penalty: Option<f32>,
    /// Contrast prompts at one layer must have equal token lengths (else they are space-padded).
    #[arg(long)]
    strict_lengths: bool,
    /// Print each row as JSON (steered, text, token ids) instead of the table.
    #[arg(long)]
    json: bool,
    /// Use running services instead of embedding them: the activation worker's URL...
    #[arg(long, requires = "generation_url")]
    activation_url: Option<String>,
    /// ...and one or more generation workers' URLs.
    #[arg(long, requires = "activation_url")]
    generation_url: Vec<String>,
    /// Terminal width of the table.
    #[arg(long, default_value_t = 120)]
    width: usize,
    #[command(flatten)]
    model: ModelArgs,
}

impl RunFlags {
    /// Flags over a base (the post's defaults, or a preset's).
    fn apply(&self, mut o: RunOptions) -> Result<RunOptions> {
        if let Some(h) = &self.hook {
            o.hook = match h.as_str() {
                "resid-pre" | "resid_pre" => Hook::ResidPre,
                "block-output" | "block_output" => Hook::BlockOutput,
                other => bail!("--hook {other}: expected resid-pre or block-output"),
            };
        }
        if self.bos {
            o.use_bos = true;
        }
        if self.no_bos {
            o.use_bos = false;
        }
        let s: &mut SamplingParameters = &mut o.sampling;
        if let Some(t) = self.temperature {
            s.temperature = t;
        }
        if let Some(p) = self.top_p {
            s.top_p = Some(p);
        }
        if let Some(k) = self.top_k {
            s.top_k = k;
        }
        if let Some(r) = self.repetition_penalty {
            s.repetition_penalty = r;
        }
        if let Some(f) = self.frequency_penalty {
            s.frequency_penalty = f;
        }
        o.n_tokens = self.tokens.unwrap_or(o.n_tokens);
        o.n_comparisons = self.comparisons.unwrap_or(o.n_comparisons);
        o.seed = self.seed.unwrap_or(o.seed);
        o.strict_lengths |= self.strict_lengths;
        Ok(o)
    }
}

fn parse_add(spec: &str) -> Result<AdditionSpec> {
    let mut parts = spec.splitn(3, ':');
    let (Some(l), Some(c), Some(text)) = (parts.next(), parts.next(), parts.next()) else {
        bail!("--add {spec}: expected LAYER:COEFF:TEXT");
    };
    Ok(AdditionSpec::new(
        l.parse().with_context(|| format!("--add {spec}: layer"))?,
        c.parse().with_context(|| format!("--add {spec}: coeff"))?,
        text,
    ))
}

pub async fn run(a: RunArgs) -> Result<()> {
    let additions = a.add.iter().map(|s| parse_add(s)).collect::<Result<Vec<_>>>()?;
    let opts = a.opts.apply(RunOptions::default())?;
    execute(&a.prompt, &additions, &opts, &a.opts).await
}

#[derive(Args, Clone)]
pub struct DemoArgs {
    /// Preset name; `--list` shows them.
    name: Option<String>,
    #[arg(long)]
    list: bool,
    #[command(flatten)]
    opts: RunFlags,
}

pub async fn demo(a: DemoArgs) -> Result<()> {
    if a.list || a.name.is_none() {
        for p in presets::all() {
            println!("{:<10} {}", p.name, p.description);
        }
        return Ok(());
    }
    let name = a.name.unwrap();
    let p = presets::find(&name).with_context(|| format!("no preset {name} (steer demo --list)"))?;
    let opts = a.opts.apply(p.options.clone())?;
    eprintln!("{}: {}", p.name, p.description);
    execute(p.prompt, &p.additions, &opts, &a.opts).await
}

async fn execute(prompt: &str, additions: &[AdditionSpec], opts: &RunOptions, flags: &RunFlags) -> Result<()> {
    // Embedded unless URLs are given: both services on an ephemeral loopback port, same data path.
    let (client, local) = match &flags.activation_url {
        Some(act) => (SteerClient::connect(act, &flags.generation_url).await?, None),
        None => {
            let model = flags.model.clone();
            let engine = Arc::new(tokio::task::spawn_blocking(move || model.load()).await??);
            let local = LocalServer::start(engine, ServeConfig::default()).await?;
            (SteerClient::connect(&local.url(), &[local.url()]).await?, Some(local))
        }
    };
    eprintln!("computing steering tensors ...");
    let tensors = client.steering_tensors(additions, opts).await?;
    for t in &tensors {
        let norms: Vec<String> = t.position_norms().iter().map(|n| format!("{n:.1}")).collect();
        eprintln!("  {:?} shape {:?}, position norms [{}]", t.header.point, t.header.shape, norms.join(", "));
    }
    eprintln!(
        "generating {} x 2 completions of {} tokens ...",
        opts.n_comparisons, opts.n_tokens
    );
    let t0 = std::time::Instant::now();
    let mut stream = client.generate_stream(prompt, &tensors, opts).await?;
    let mut cmp = steer_client::Comparison { unsteered: vec![], steered: vec![] };
    let mut tokens = 0usize;
    use futures::StreamExt;
    while let Some(msg) = stream.next().await {
        match msg?.event {
            Some(steer_client::v1::generate_response::Event::Token(_)) => {
                tokens += 1;
                if tokens % (2 * opts.n_comparisons as usize).max(1) == 0 {
                    eprint!("\r  step {}/{}", tokens / (2 * opts.n_comparisons as usize).max(1), opts.n_tokens);
                }
            }
            Some(steer_client::v1::generate_response::Event::Finished(f)) => {
                let c = steer_client::Completion::from(f);
                if c.steered { cmp.steered.push(c) } else { cmp.unsteered.push(c) }
            }
            None => {}
        }
    }
    eprintln!("\r  {tokens} tokens in {:.1}s", t0.elapsed().as_secs_f64());
    if flags.json {
        for c in cmp.unsteered.iter().chain(&cmp.steered) {
            let row = serde_json::json!({
                "row": c.row, "steered": c.steered, "seed": c.seed, "text": c.text,
                "token_ids": c.token_ids, "finish_reason": c.finish_reason.as_str_name(),
            });
            println!("{row}");
        }
    } else {
        print!("{}", steer_cli::table::render(prompt, &cmp, flags.width));
    }
    if let Some(l) = local {
        l.shutdown().await;
    }
    Ok(())
}
