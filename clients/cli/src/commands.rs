//! `steer run`, `demo`, `generate` (through `steer-client`, against running services or an
//! embedded server on loopback) and `serve` / the workers (through `steer-server`).

use std::io::{IsTerminal, Write};
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;
use steer_client::presets;
use steer_client::v1::TokenEvent;
use steer_client::{AdditionSpec, Comparison, RunOptions, SteerClient};
use steer_model::HookKind;
use steer_server::{LocalServer, Role, ServeConfig};

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
    /// Most new tokens per row.
    #[arg(long, default_value_t = 256)]
    max_new_tokens: usize,
    /// Most comparisons (rows per side) per request.
    #[arg(long, default_value_t = 16)]
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
    /// Prefill chunk: prompt positions prefilled per iteration while others decode.
    #[arg(long, default_value_t = 32, env = "STEER_MAX_PREFILL_TOKENS")]
    max_prefill_tokens: usize,
    /// Seconds a client may read nothing before its request is cancelled (ABORTED).
    #[arg(long, default_value_t = 10.0, env = "STEER_STALL_TIMEOUT_SECS")]
    stall_timeout_secs: f64,
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
        let g = &mut c.generation;
        g.max_new_tokens = self.max_new_tokens;
        g.max_comparisons = self.max_comparisons;
        g.max_queue = self.max_queue;
        g.max_batch_rows = self.max_batch_rows;
        g.max_batch_tokens = self.max_batch_tokens;
        g.max_prefill_tokens = self.max_prefill_tokens;
        g.stall_timeout = std::time::Duration::from_secs_f64(self.stall_timeout_secs.max(0.0));
        c.generation.worker_id = self.worker_id.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()).unwrap_or_default();
            if host.is_empty() { self.addr.clone() } else { format!("{host}/{}", self.addr) }
        });
        c
    }
}

/// Listens at once (health NOT_SERVING), loads the model, then reports SERVING. Exits 0 after
/// SIGTERM/Ctrl-C once open streams finish or the grace period ends; non-zero if the model
/// cannot be loaded.
pub async fn serve(a: ServeArgs, role: Role) -> Result<()> {
    let model = a.model.clone();
    eprintln!("serving {role:?} on {} (loading the model)", a.addr);
    let load = move || model.load().map_err(|e| steer_server::ServerError::Loader(format!("{e:#}")));
    steer_server::run(&a.addr, a.config(role), a.metrics_addr, load, steer_server::shutdown_signal()).await?;
    Ok(())
}

fn parse_hook(s: &str) -> Result<HookKind, String> {
    s.parse().map_err(|e: steer_model::ModelError| e.to_string())
}

/// Flags shared by run, demo and generate; each overrides the base options (the post's, or a
/// preset's) only when given.
#[derive(Args, Clone)]
pub struct RunFlags {
    /// resid-pre (ActAdd) or block-output (ARENA).
    #[arg(long, value_parser = parse_hook)]
    hook: Option<HookKind>,
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
    fn apply(&self, mut o: RunOptions) -> RunOptions {
        if let Some(h) = self.hook {
            o.hook = steer_common::convert::proto_hook(h);
        }
        if self.bos || self.no_bos {
            o.use_bos = self.bos;
        }
        let s = &mut o.sampling;
        s.temperature = self.temperature.unwrap_or(s.temperature);
        s.top_p = self.top_p.or(s.top_p);
        s.top_k = self.top_k.unwrap_or(s.top_k);
        s.repetition_penalty = self.repetition_penalty.unwrap_or(s.repetition_penalty);
        s.frequency_penalty = self.frequency_penalty.unwrap_or(s.frequency_penalty);
        o.n_tokens = self.tokens.unwrap_or(o.n_tokens);
        o.n_comparisons = self.comparisons.unwrap_or(o.n_comparisons);
        o.seed = self.seed.unwrap_or(o.seed);
        o.strict_lengths |= self.strict_lengths;
        o
    }

    /// A client of the given services, or of an embedded server (loopback, same data path).
    async fn connect(&self) -> Result<(SteerClient, Option<LocalServer>)> {
        if let Some(act) = &self.activation_url {
            return Ok((SteerClient::connect(act, &self.generation_url).await?, None));
        }
        let model = self.model.clone();
        let engine = Arc::new(tokio::task::spawn_blocking(move || model.load()).await??);
        let local = LocalServer::start(engine, ServeConfig::default()).await?;
        Ok((SteerClient::connect(&local.url(), &[local.url()]).await?, Some(local)))
    }
}

#[derive(Args, Clone)]
pub struct RunArgs {
    #[arg(long)]
    prompt: String,
    /// LAYER:COEFF:TEXT, repeatable (e.g. --add "20:4:I talk about weddings constantly").
    #[arg(long = "add", required = true)]
    add: Vec<AdditionSpec>,
    #[command(flatten)]
    opts: RunFlags,
}

pub async fn run(a: RunArgs) -> Result<()> {
    let opts = a.opts.apply(RunOptions::default());
    let cmp = execute(&a.prompt, &a.add, &opts, &a.opts, Progress::Steps).await?;
    print_comparison(&a.prompt, &cmp, &a.opts);
    Ok(())
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
    let Some(name) = a.name.as_deref().filter(|_| !a.list) else {
        for p in presets::all() {
            println!("{:<10} {}", p.name, p.description);
        }
        return Ok(());
    };
    let p = presets::find(name).with_context(|| format!("no preset {name} (steer demo --list)"))?;
    let opts = a.opts.apply(p.options.clone());
    eprintln!("{}: {}", p.name, p.description);
    let cmp = execute(p.prompt, &p.additions, &opts, &a.opts, Progress::Steps).await?;
    print_comparison(p.prompt, &cmp, &a.opts);
    Ok(())
}

#[derive(Args, Clone)]
pub struct GenerateArgs {
    #[arg(long)]
    prompt: String,
    /// LAYER:COEFF:TEXT, repeatable; none for a plain completion.
    #[arg(long = "add")]
    add: Vec<AdditionSpec>,
    #[command(flatten)]
    opts: RunFlags,
}

/// One completion (the steered row only), its text streamed to stdout as it is generated.
pub async fn generate(a: GenerateArgs) -> Result<()> {
    let opts = RunOptions { n_comparisons: 1, skip_unsteered: true, ..a.opts.apply(RunOptions::default()) };
    print!("{}", a.prompt);
    let t = std::time::Instant::now();
    let cmp = execute(&a.prompt, &a.add, &opts, &a.opts, Progress::Text).await?;
    println!();
    let c = &cmp.steered[0];
    eprintln!(
        "[{} tokens, {}, {:.2} tokens/s]",
        c.token_ids.len(),
        c.finish_reason.as_str_name(),
        c.token_ids.len() as f64 / t.elapsed().as_secs_f64()
    );
    Ok(())
}

/// What to show while tokens stream.
#[derive(Clone, Copy, PartialEq)]
enum Progress {
    /// `step i/n` on stderr, when it is a terminal.
    Steps,
    /// The text of row 0 on stdout.
    Text,
}

/// Steering tensors, then the generation through the client (with its retries).
async fn execute(prompt: &str, additions: &[AdditionSpec], opts: &RunOptions, flags: &RunFlags, progress: Progress) -> Result<Comparison> {
    let (client, local) = flags.connect().await?;
    let tensors = if additions.is_empty() {
        vec![]
    } else {
        eprintln!("computing steering tensors ...");
        client.steering_tensors(additions, opts).await?
    };
    for t in &tensors {
        let norms: Vec<String> = t.position_norms().iter().map(|n| format!("{n:.1}")).collect();
        let point = t.header.point.unwrap_or_default();
        let hook = steer_client::v1::Hook::try_from(point.hook).unwrap_or_default().as_str_name();
        eprintln!("  {hook} layer {}: shape {:?}, position norms [{}]", point.layer, t.header.shape, norms.join(", "));
    }
    let rows = opts.n_comparisons as usize * if opts.skip_unsteered { 1 } else { 2 };
    let tty = std::io::stderr().is_terminal();
    let mut tokens = 0usize;
    let t0 = std::time::Instant::now();
    let on_token = |t: &TokenEvent| {
        tokens += 1;
        match progress {
            Progress::Text if t.row == 0 => {
                print!("{}", t.text_delta);
                let _ = std::io::stdout().flush();
            }
            Progress::Steps if tty && tokens % rows.max(1) == 0 => eprint!("\r  step {}/{}", tokens / rows.max(1), opts.n_tokens),
            _ => {}
        }
    };
    let cmp = client.generate(prompt, &tensors, opts, on_token).await?;
    if progress == Progress::Steps {
        eprintln!("{}{tokens} tokens in {:.1}s", if tty { "\r  " } else { "  " }, t0.elapsed().as_secs_f64());
    }
    if let Some(l) = local {
        l.shutdown().await;
    }
    Ok(cmp)
}

fn print_comparison(prompt: &str, cmp: &Comparison, flags: &RunFlags) {
    if flags.json {
        for c in cmp.unsteered.iter().chain(&cmp.steered) {
            let row = serde_json::json!({
                "row": c.row, "steered": c.steered, "seed": c.seed, "text": c.text,
                "token_ids": c.token_ids, "finish_reason": c.finish_reason.as_str_name(),
            });
            println!("{row}");
        }
    } else {
        print!("{}", crate::table::render(prompt, cmp, flags.width));
    }
}
