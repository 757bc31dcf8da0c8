//! `steer`: the command-line program. Parses flags into the library crates' configs and calls
//! them: `steer-server` to serve, `steer-client` to run experiments (embedded servers go through
//! the same client path), `steer-model` to load models and write random checkpoints.

mod bench;
mod commands;
mod serve;
mod table;

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use steer_model::random::{builtin_tokenizer, write_random_checkpoint, RandomInit};
use steer_model::{Config, Engine, LoadOptions, ModelSource, WeightDtype};
use steer_server::Role;

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
    Run(commands::RunArgs),
    /// Run a named preset: love-hate, weddings, eiffel (ARENA) or post-N (the post's table).
    Demo(commands::DemoArgs),
    /// Serve both services in one process (the embedded default).
    Serve(serve::ServeArgs),
    /// Serve the ActivationService only.
    ActivationWorker(serve::ServeArgs),
    /// Serve the GenerationService only.
    GenerationWorker(serve::ServeArgs),
    /// Stream one completion of a prompt, steered by any --add given.
    Generate(commands::GenerateArgs),
    /// Write a GPT-2 checkpoint with random weights in the hub layout.
    RandomModel(RandomModelArgs),
    /// Ask a server's health (exit 0 when SERVING): a probe that also works over TLS.
    Health(commands::HealthArgs),
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
    /// Weights' precision: f32 (the post's), f16 or bf16.
    #[arg(long, default_value = "f32", value_parser = parse_dtype)]
    pub dtype: WeightDtype,
}

fn parse_dtype(s: &str) -> Result<WeightDtype, String> {
    s.parse().map_err(|e: steer_model::ModelError| e.to_string())
}

impl ModelArgs {
    pub fn load(&self) -> Result<Engine> {
        let source = ModelSource::parse(&self.model, self.revision.as_deref());
        let mut opts = LoadOptions { dtype: self.dtype, ..Default::default() };
        opts.hub.progress = true;
        eprintln!("loading {} ...", source.name());
        let t = std::time::Instant::now();
        let engine = Engine::load(&source, &opts).with_context(|| format!("loading {}", source.name()))?;
        let i = engine.info();
        eprintln!(
            "loaded {} in {:.1}s: {} layers, d_model {}, {} heads, {} positions, {}",
            i.name,
            t.elapsed().as_secs_f64(),
            i.n_layer,
            i.d_model,
            i.n_head,
            i.n_positions,
            i.dtype
        );
        Ok(engine)
    }
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
        Command::Serve(a) => commands::runtime()?.block_on(serve::serve(a, Role::Both)),
        Command::ActivationWorker(a) => commands::runtime()?.block_on(serve::serve(a, Role::Activation)),
        Command::GenerationWorker(a) => commands::runtime()?.block_on(serve::serve(a, Role::Generation)),
        Command::Generate(a) => commands::runtime()?.block_on(commands::generate(a)),
        Command::RandomModel(a) => random_model(a),
        Command::Health(a) => commands::runtime()?.block_on(commands::health(a)),
        Command::Bench(a) => bench::run(a),
    }
}

fn random_model(a: RandomModelArgs) -> Result<()> {
    let cfg = Config::by_name(&a.shape).with_context(|| format!("unknown shape {}", a.shape))?;
    let init = RandomInit { seed: a.seed, std: a.std, prefixed: a.prefixed };
    let t = std::time::Instant::now();
    write_random_checkpoint(&a.out, &cfg, &init, &builtin_tokenizer()?)?;
    eprintln!("wrote {} ({} parameters) in {:.1}s", a.out.display(), cfg.n_params(), t.elapsed().as_secs_f64());
    Ok(())
}
