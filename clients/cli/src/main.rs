//! `steer`: the command-line program.

mod bench;
pub(crate) mod commands;

use commands::{DemoArgs, RunArgs, ServeArgs};
use steer_cli::server::Role;

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use steer_model::random::{builtin_tokenizer, write_random_checkpoint, RandomInit};
use steer_model::{Config, DType, Engine, GenerateOptions, HookPoint, LoadOptions, ModelSource, RowRequest, SamplingParams};

#[derive(Parser)]
#[command(name = "steer", version, about = "Steer GPT-2 by adding activation vectors (ActAdd)")]
struct Cli {
    /// Log filter (RUST_LOG syntax).
    #[arg(long, global = true, env = "STEER_LOG", default_value = "info")]
    log: String,
    /// Log JSON lines (with the RPC span: service, method, request id) instead of text.
    #[arg(long, global = true, env = "STEER_LOG_JSON")]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Steer: unsteered and steered completions side by side (the seed's experiment).
    Run(RunArgs),
    /// Run a named preset: love-hate, weddings, eiffel (ARENA) or post-N (the post's table).
    Demo(DemoArgs),
    /// Serve both services in one process (the embedded default).
    Serve(ServeArgs),
    /// Serve the ActivationService only.
    ActivationWorker(ServeArgs),
    /// Serve the GenerationService only.
    GenerationWorker(ServeArgs),
    /// Load a model and generate a completion of a prompt in-process (engine only, no gRPC).
    Generate(GenerateArgs),
    /// Write a GPT-2 checkpoint with random weights in the hub layout.
    RandomModel(RandomModelArgs),
    /// Measure prefill and decode speed of the engine (prints numbers).
    Bench(bench::BenchArgs),
}

#[derive(Args, Clone)]
pub struct ModelArgs {
    /// Hub repo id or local directory.
    #[arg(long, default_value = steer_model::source::DEFAULT_REPO)]
    pub model: String,
    /// Hub revision (branch, tag or commit).
    #[arg(long)]
    pub revision: Option<String>,
    /// f32 (default, the post's precision), f16 or bf16.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
}

impl ModelArgs {
    pub fn load(&self) -> Result<Engine> {
        let dtype = match self.dtype.as_str() {
            "f32" => DType::F32,
            "f16" => DType::F16,
            "bf16" => DType::BF16,
            other => bail!("--dtype {other}: expected f32, f16 or bf16"),
        };
        let source = ModelSource::parse(&self.model, self.revision.as_deref());
        let mut opts = LoadOptions { dtype, ..Default::default() };
        opts.hub.progress = true;
        eprintln!("loading {} ...", source.name());
        let t = std::time::Instant::now();
        let engine = Engine::load(&source, &opts).with_context(|| format!("loading {}", source.name()))?;
        eprintln!("loaded in {:.1}s: {:?}", t.elapsed().as_secs_f64(), engine.info());
        Ok(engine)
    }
}

#[derive(Args)]
struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[arg(long)]
    prompt: String,
    #[arg(long, default_value_t = 50)]
    tokens: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// 0 = greedy.
    #[arg(long, default_value_t = 1.0)]
    temperature: f32,
    #[arg(long, default_value_t = 0.3)]
    top_p: f32,
    #[arg(long)]
    top_k: Option<usize>,
    #[arg(long, default_value_t = 1.0)]
    repetition_penalty: f32,
    #[arg(long, default_value_t = 1.0)]
    frequency_penalty: f32,
    /// Prepend <|endoftext|>.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    bos: bool,
    /// Steering as LAYER:COEFF:TEXT (repeatable), added at RESID_PRE of LAYER.
    #[arg(long = "add")]
    add: Vec<String>,
}

#[derive(Args)]
struct RandomModelArgs {
    /// tiny, small, medium, large or xl.
    #[arg(long, default_value = "tiny")]
    shape: String,
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Standard deviation of the weight matrices.
    #[arg(long, default_value_t = 0.02)]
    std: f32,
    /// Prefix names with `transformer.` as save_pretrained does.
    #[arg(long)]
    prefixed: bool,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    steer_telemetry::init_logging(&cli.log, cli.log_json);
    match cli.command {
        Command::Run(a) => commands::runtime()?.block_on(commands::run(a)),
        Command::Demo(a) => commands::runtime()?.block_on(commands::demo(a)),
        Command::Serve(a) => commands::runtime()?.block_on(commands::serve(a, Role::Both)),
        Command::ActivationWorker(a) => commands::runtime()?.block_on(commands::serve(a, Role::Activation)),
        Command::GenerationWorker(a) => commands::runtime()?.block_on(commands::serve(a, Role::Generation)),
        Command::Generate(a) => generate(a),
        Command::RandomModel(a) => random_model(a),
        Command::Bench(a) => bench::run(a),
    }
}

fn random_model(a: RandomModelArgs) -> Result<()> {
    let cfg = Config::by_name(&a.shape).with_context(|| format!("unknown shape {}", a.shape))?;
    let init = RandomInit { seed: a.seed, std: a.std, prefixed: a.prefixed };
    let t = std::time::Instant::now();
    write_random_checkpoint(&a.out, &cfg, &init, &builtin_tokenizer()?)?;
    eprintln!(
        "wrote {} ({} parameters) in {:.1}s",
        a.out.display(),
        cfg.n_params(),
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `LAYER:COEFF:TEXT` -> steering of the prompt's first positions (engine-level ActAdd).
fn generate(a: GenerateArgs) -> Result<()> {
    let engine = a.model.load()?;
    let prompt = engine.encode(&a.prompt, a.bos)?;
    let mut additions = vec![];
    for spec in &a.add {
        let mut parts = spec.splitn(3, ':');
        let (Some(l), Some(c), Some(text)) = (parts.next(), parts.next(), parts.next()) else {
            bail!("--add {spec}: expected LAYER:COEFF:TEXT");
        };
        let layer: usize = l.parse().with_context(|| format!("--add {spec}: layer"))?;
        let coeff: f64 = c.parse().with_context(|| format!("--add {spec}: coeff"))?;
        let ids = engine.encode(text, a.bos)?;
        let hook = HookPoint::ResidPre(layer);
        let act = engine.capture(&[ids], &[hook])?.remove(0).remove(0);
        additions.push(steer_model::Addition { hook, tensor: (act * coeff)? });
    }
    let sampling = SamplingParams {
        temperature: a.temperature,
        top_k: a.top_k,
        top_p: Some(a.top_p),
        repetition_penalty: a.repetition_penalty,
        frequency_penalty: a.frequency_penalty,
        presence_penalty: 0.0,
    };
    let row = RowRequest { prompt: prompt.clone(), additions, sampling, seed: a.seed };
    let opts = GenerateOptions { max_new_tokens: a.tokens, ..Default::default() };
    let tok = engine.tokenizer();
    let mut dec = steer_model::tokenizer::StreamDecoder::default();
    print!("{}", a.prompt);
    let out = engine.generate(&[row], &opts, |ev| {
        use std::io::Write;
        print!("{}", dec.push(tok, ev.token));
        let _ = std::io::stdout().flush();
        std::ops::ControlFlow::Continue(())
    })?;
    println!("{}", dec.finish());
    let o = &out[0];
    eprintln!(
        "[{} tokens, {:?}, prefill {:.3}s, decode {:.2} tokens/s]",
        o.tokens.len(),
        o.finish,
        o.prefill_secs,
        (o.tokens.len().saturating_sub(1)) as f64 / o.decode_secs.max(1e-9)
    );
    Ok(())
}
