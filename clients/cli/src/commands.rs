//! `steer run`, `demo`, `generate` (through `steer-client`, against running services or an
//! embedded server on loopback).

use anyhow::{bail, Context, Result};
use clap::Args;
use steer_client::presets;
use steer_client::steer_vector::{Op, SteeringVector, Window};
use steer_client::v1::TokenEvent;
use steer_client::{AdditionSpec, Comparison, RunOptions, SteerClient, SteeringTensor};
use steer_server::LocalServer;

use crate::args::{parse_range, parse_scaled, ConnectArgs, HookArg, ServiceArgs};

/// Flags shared by run, demo and generate; each overrides the base options (the post's, or a
/// preset's) only when given.
#[derive(Args, Clone)]
pub struct RunFlags {
    /// Where steering is added [default: resid-pre; a preset's own for demo].
    #[arg(long, value_enum)]
    hook: Option<HookArg>,
    /// New tokens per completion [default: 50].
    #[arg(long)]
    tokens: Option<u32>,
    /// Completions per side (unsteered and steered rows) [default: 3].
    #[arg(long)]
    comparisons: Option<u32>,
    /// Seed of row 0; row i uses seed + i, the same for its unsteered and steered row [default: 0].
    #[arg(long)]
    seed: Option<u64>,
    /// Prepend <|endoftext|> to prompt and contrast prompts [default: on; a preset's own for demo].
    #[arg(long, overrides_with = "no_bos")]
    bos: bool,
    /// Do not prepend <|endoftext|>.
    #[arg(long, overrides_with = "bos")]
    no_bos: bool,
    /// Sampling temperature; 0 = greedy [default: 1].
    #[arg(long)]
    temperature: Option<f32>,
    /// Nucleus sampling: keep the most likely tokens up to this mass [default: 0.3, the post's].
    #[arg(long)]
    top_p: Option<f32>,
    /// Keep only the k most likely tokens [default: off].
    #[arg(long)]
    top_k: Option<u32>,
    /// Hugging Face repetition penalty [default: 1 (off); 1.2 in the ARENA presets].
    #[arg(long)]
    repetition_penalty: Option<f32>,
    /// TransformerLens frequency penalty [default: 1, the post's; 0 in the ARENA presets].
    #[arg(long)]
    frequency_penalty: Option<f32>,
    /// TransformerLens presence penalty [default: 0].
    #[arg(long)]
    presence_penalty: Option<f32>,
    /// Report this many alternatives (with log-probabilities) for each token, in --json [default: 0].
    #[arg(long)]
    top_logprobs: Option<u32>,
    /// Only the steered rows.
    #[arg(long)]
    skip_unsteered: bool,
    /// Keep generating past <|endoftext|>.
    #[arg(long)]
    ignore_eos: bool,
    /// Stop a row once its text contains this (repeatable, at most 4); the text ends before it.
    #[arg(long = "stop", value_name = "TEXT")]
    stop: Vec<String>,
    /// Contrast prompts at one layer must have equal token lengths (else they are space-padded).
    #[arg(long)]
    strict_lengths: bool,
    /// A prompt shorter than the steering is padded with spaces after BOS (else refused).
    #[arg(long)]
    pad_short_prompt: bool,
    /// Print each row as JSON (steered, text, token ids) instead of the table.
    #[arg(long)]
    json: bool,
    /// Terminal width of the table.
    #[arg(long, default_value_t = 120)]
    width: usize,
    /// A vector file to add, FILE[:SCALE] (safetensors from `steer vector`, or a llama.cpp
    /// control-vector .gguf); repeatable, combinable with --add.
    #[arg(long = "vector", value_name = "FILE[:SCALE]")]
    vectors: Vec<String>,
    /// A library vector to add, NAME[:SCALE] (or a digest); the worker fetches it by digest.
    #[arg(long = "library-vector", value_name = "REF[:SCALE]")]
    library_vectors: Vec<String>,
    /// Only the vectors' tensors at these layers (A-B, inclusive), as llama.cpp's
    /// --control-vector-layer-range.
    #[arg(long, value_name = "A-B")]
    vector_layers: Option<String>,
    /// Apply --vector and --library-vector files made on other weights of the same shape
    /// (d_model and layers must still match).
    #[arg(long)]
    force_model: bool,
    /// Ablate the direction of each tensor of a vector file (x <- x - (x.u)u, u its unit
    /// direction) over --window [default: all positions]; repeatable.
    #[arg(long = "ablate", value_name = "FILE")]
    ablate: Vec<String>,
    /// Clamp the component along each tensor's direction of a vector file to VALUE
    /// (x <- x - (x.u)u + VALUE u) over --window [default: all positions]; repeatable.
    #[arg(long = "clamp", value_name = "FILE:VALUE")]
    clamp: Vec<String>,
    /// Positions --vector, --library-vector, --ablate and --clamp act on: `generated` (only
    /// the generated tokens), `A-B` (positions A..B, B excluded; 0 is BOS), `A-` (A on),
    /// `all_positions` or `prefix` [default: each file's own; all positions for --ablate and
    /// --clamp]. --add's ActAdd tensors stay at the prompt's first positions.
    #[arg(long, value_name = "WINDOW")]
    window: Option<String>,
    #[command(flatten)]
    service: ServiceArgs,
}

impl RunFlags {
    fn apply(&self, mut o: RunOptions) -> RunOptions {
        if let Some(h) = self.hook {
            o.hook = steer_client::v1::Hook::from(h);
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
        s.presence_penalty = self.presence_penalty.unwrap_or(s.presence_penalty);
        o.top_logprobs = self.top_logprobs.unwrap_or(o.top_logprobs);
        o.skip_unsteered |= self.skip_unsteered;
        o.ignore_eos |= self.ignore_eos;
        if !self.stop.is_empty() {
            o.stop = self.stop.clone();
        }
        o.n_tokens = self.tokens.unwrap_or(o.n_tokens);
        o.n_comparisons = self.comparisons.unwrap_or(o.n_comparisons);
        o.seed = self.seed.unwrap_or(o.seed);
        o.strict_lengths |= self.strict_lengths;
        o.pad_short_prompt |= self.pad_short_prompt;
        o
    }

    /// A client of the given services, or of an embedded server (loopback, same data path).
    async fn connect(&self) -> Result<(SteerClient, Option<LocalServer>)> {
        self.service.connect().await
    }
}

#[derive(Args, Clone)]
pub struct RunArgs {
    /// The prompt to complete.
    #[arg(long)]
    prompt: String,
    /// LAYER:COEFF:TEXT, repeatable (e.g. --add "20:4:I talk about weddings constantly").
    #[arg(long = "add", required_unless_present_any = ["vectors", "library_vectors", "ablate", "clamp"])]
    add: Vec<AdditionSpec>,
    #[command(flatten)]
    opts: RunFlags,
}

pub async fn run(a: RunArgs) -> Result<()> {
    let opts = a.opts.apply(RunOptions::default());
    let out = execute(&a.prompt, &a.add, &opts, &a.opts, Progress::Steps).await?;
    print_comparison(&a.prompt, &out, &a.opts);
    Ok(())
}

#[derive(Args, Clone)]
pub struct DemoArgs {
    /// Preset name; `--list` shows them.
    name: Option<String>,
    /// List the presets.
    #[arg(long)]
    list: bool,
    /// Map the preset's layers (written for GPT-2-XL's 48) onto the model's, in proportion
    /// (e.g. to try a preset on fixtures/tiny-gpt2).
    #[arg(long)]
    scale_layers: bool,
    #[command(flatten)]
    opts: RunFlags,
}

pub async fn demo(a: DemoArgs) -> Result<()> {
    let Some(name) = a.name.as_deref().filter(|_| !a.list) else {
        for p in presets::all() {
            outln!("{:<10} {}", p.name, p.description);
        }
        return Ok(());
    };
    let mut p = presets::find(name).with_context(|| format!("no preset {name} (steer demo --list)"))?;
    let opts = a.opts.apply(p.options.clone());
    eprintln!("{}: {}", p.name, p.description);
    let (client, local) = a.opts.connect().await?;
    let n_layer = client.activation_info().await?.n_layer;
    if a.scale_layers {
        presets::scale_layers(&mut p, n_layer);
        let layers: Vec<String> = p.additions.iter().map(|a| a.layer.to_string()).collect();
        eprintln!("  layers scaled from {} to {n_layer}: {}", presets::WRITTEN_FOR_LAYERS, layers.join(", "));
    } else if n_layer != presets::WRITTEN_FOR_LAYERS {
        eprintln!("  note: the presets were written for {} layers; this model has {n_layer} (add --scale-layers)", presets::WRITTEN_FOR_LAYERS);
    }
    let cmp = execute_with(&client, p.prompt, &p.additions, &opts, &a.opts, Progress::Steps).await;
    if let Some(l) = local {
        l.shutdown().await;
    }
    print_comparison(p.prompt, &cmp?, &a.opts);
    Ok(())
}

#[derive(Args, Clone)]
pub struct GenerateArgs {
    /// The prompt to complete.
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
    out!("{}", a.prompt);
    let t = std::time::Instant::now();
    let out = execute(&a.prompt, &a.add, &opts, &a.opts, Progress::Text).await?;
    outln!();
    let c = &out.cmp.steered[0];
    eprintln!("[{} tokens, {}, {:.2} tokens/s]", c.token_ids.len(), c.finish_reason.name(), c.token_ids.len() as f64 / t.elapsed().as_secs_f64());
    Ok(())
}

/// What to show while tokens stream.
#[derive(Clone, Copy, PartialEq)]
enum Progress {
    /// Steps and tokens/s on stderr (a bar on a terminal, lines otherwise).
    Steps,
    /// The text of row 0 on stdout.
    Text,
}

/// Steering tensors, then the generation through the client (with its retries), against the
/// services the flags name or an embedded server.
async fn execute(prompt: &str, additions: &[AdditionSpec], opts: &RunOptions, flags: &RunFlags, progress: Progress) -> Result<Outcome> {
    let (client, local) = flags.connect().await?;
    // The client's span: with --otlp-endpoint, the parent of both services' spans of the run.
    let span = tracing::info_span!("steer.run", prompt_chars = prompt.chars().count(), additions = additions.len());
    let cmp = tracing::Instrument::instrument(execute_with(&client, prompt, additions, opts, flags, progress), span).await;
    if let Some(l) = local {
        l.shutdown().await;
    }
    cmp
}

/// A comparison and, when `top_logprobs` was asked for, every token event (for --json).
struct Outcome {
    cmp: Comparison,
    tokens: Vec<TokenEvent>,
}

async fn execute_with(
    client: &SteerClient,
    prompt: &str,
    additions: &[AdditionSpec],
    opts: &RunOptions,
    flags: &RunFlags,
    progress: Progress,
) -> Result<Outcome> {
    let mut tensors = if additions.is_empty() {
        vec![]
    } else {
        eprintln!("computing steering tensors ...");
        client.steering_tensors(additions, opts).await?
    };
    let layers = flags.vector_layers.as_deref().map(parse_range).transpose()?;
    let window = flags.window.as_deref().map(str::parse::<Window>).transpose().context("--window")?;
    let n_act = tensors.len();
    if !flags.vectors.is_empty() {
        let info = client.generation_info().await?;
        for spec in &flags.vectors {
            let (file, scale) = parse_scaled(spec);
            let v = SteeringVector::load(&file).with_context(|| format!("--vector {file}"))?;
            eprintln!("vector {} ({}, {}, {}, {} tensors) x {scale}", v.meta.name, &v.digest()[..12], v.mode(), v.op(), v.tensors.len());
            tensors.extend(SteeringTensor::from_file_with(&v, &info, scale, layers, flags.force_model).with_context(|| format!("--vector {file}"))?);
        }
    }
    if let Some(w) = window {
        // The vector files' tensors (after --add's) take the window.
        for t in tensors.iter_mut().skip(n_act) {
            *t = t.clone().in_window(w);
        }
    }
    let projections = flags.ablate.iter().map(|f| (f.as_str(), "--ablate", Op::Ablate)).chain(flags.clamp.iter().map(|spec| -> (&str, &str, Op) {
        match spec.rsplit_once(':').and_then(|(f, v)| Some((f, v.parse::<f32>().ok()?))) {
            Some((f, value)) => (f, "--clamp", Op::Clamp { value }),
            None => (spec.as_str(), "--clamp", Op::Clamp { value: f32::NAN }),
        }
    }));
    for (file, flag, op) in projections {
        if matches!(op, Op::Clamp { value } if value.is_nan()) {
            bail!("{flag} {file}: expected FILE:VALUE with a finite VALUE");
        }
        let info = client.generation_info().await?;
        let v = SteeringVector::load(file).with_context(|| format!("{flag} {file}"))?;
        let w = window.unwrap_or(Window::AllPositions);
        eprintln!("{} {} ({}, {w}, {} tensors)", op, v.meta.name, &v.digest()[..12], v.tensors.len());
        let ts = SteeringTensor::from_file_with(&v, &info, 1.0, layers, flags.force_model).with_context(|| format!("{flag} {file}"))?;
        tensors.extend(ts.into_iter().map(|t| t.in_window(w).with_op(op)));
    }
    let mut opts = opts.clone();
    for spec in &flags.library_vectors {
        let (r, scale) = parse_scaled(spec);
        let mut v = client.vector_ref(&r, scale as f64, layers).await.with_context(|| format!("--library-vector {r}"))?;
        v.force_model = flags.force_model;
        if let Some(w) = window {
            (v.mode, v.window_start, v.window_end) = steer_client::hooks::wire_window(w);
        }
        eprintln!("library vector {r} ({}) x {scale}", &v.digest[..12]);
        opts.vectors.push(v);
    }
    let opts = &opts;
    if !tensors.is_empty() {
        for w in steer_client::no_op_warnings(&tensors, client.generation_info().await?.n_layer) {
            eprintln!("warning: {w}");
        }
    }
    for t in &tensors {
        let norms: Vec<String> = t.position_norms().iter().map(|n| format!("{n:.1}")).collect();
        let point = t.header.point.unwrap_or_default().point().map_or_else(|| "?".to_string(), |p| p.to_string());
        let shape: Vec<String> = t.header.shape.iter().map(u64::to_string).collect();
        eprintln!("  {point}: shape [{}], position norms [{}]", shape.join(", "), norms.join(", "));
    }
    let rows = opts.n_comparisons as usize * if opts.skip_unsteered { 1 } else { 2 };
    let mut steps = (progress == Progress::Steps).then(|| crate::progress::Steps::new(opts.n_tokens as u64));
    let mut tokens = 0usize;
    let mut events = vec![];
    let on_token = |t: &TokenEvent| {
        tokens += 1;
        if opts.top_logprobs > 0 {
            events.push(t.clone());
        }
        match progress {
            Progress::Text if t.row == 0 => {
                out!("{}", t.text_delta);
            }
            Progress::Steps if tokens.is_multiple_of(rows.max(1)) => {
                if let Some(s) = steps.as_mut() {
                    s.update((tokens / rows.max(1)) as u64, tokens);
                }
            }
            _ => {}
        }
    };
    let cmp = client.generate(prompt, &tensors, opts, on_token).await?;
    if let Some(s) = steps {
        s.finish(tokens);
    }
    Ok(Outcome { cmp, tokens: events })
}

fn print_comparison(prompt: &str, out: &Outcome, flags: &RunFlags) {
    let cmp = &out.cmp;
    if flags.json {
        for c in cmp.unsteered.iter().chain(&cmp.steered) {
            let mut row = serde_json::json!({
                "row": c.row, "steered": c.steered, "seed": c.seed, "text": c.text,
                "token_ids": c.token_ids, "finish_reason": c.finish_reason.name(),
            });
            let mut tokens: Vec<&TokenEvent> = out.tokens.iter().filter(|t| t.row == c.row && t.steered == c.steered).collect();
            if !tokens.is_empty() {
                tokens.sort_by_key(|t| t.index);
                row["tokens"] = tokens
                    .iter()
                    .map(|t| {
                        let top: Vec<_> = t
                            .top_logprobs
                            .iter()
                            .map(|a| serde_json::json!({"token_id": a.token_id, "text": a.text, "logprob": a.logprob}))
                            .collect();
                        serde_json::json!({"token_id": t.token_id, "text": t.text_delta, "logprob": t.logprob, "top_logprobs": top})
                    })
                    .collect();
            }
            outln!("{row}");
        }
    } else {
        out!("{}", crate::table::render(prompt, cmp, flags.width));
    }
}

#[derive(Args)]
pub struct HealthArgs {
    /// The server to ask (http:// or https://).
    #[arg(long, default_value = "http://127.0.0.1:50051", env = "STEER_URL")]
    url: String,
    /// One service (steer.v1.GenerationService, ...); the whole server by default.
    #[arg(long, default_value = "")]
    service: String,
    #[command(flatten)]
    conn: ConnectArgs,
}

/// `steer health`: exits 0 when the server (or service) reports SERVING, 1 otherwise. Works
/// over TLS, so it serves as a Kubernetes exec probe where the kubelet's gRPC probe (plaintext
/// only) cannot.
pub async fn health(a: HealthArgs) -> Result<()> {
    let mut opts = a.conn.options()?;
    opts.deadline = opts.deadline.min(std::time::Duration::from_secs(10));
    let mut h = tonic_health::pb::health_client::HealthClient::new(opts.channel(&a.url)?);
    let status = h.check(tonic_health::pb::HealthCheckRequest { service: a.service.clone() }).await?.into_inner().status();
    outln!("{}", status.as_str_name());
    anyhow::ensure!(status == tonic_health::pb::health_check_response::ServingStatus::Serving, "not serving");
    Ok(())
}
