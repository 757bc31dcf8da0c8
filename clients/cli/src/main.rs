//! `steer`: the command-line program. Parses flags into the library crates' configs and calls
//! them: `steer-server` to serve, `steer-client` to run experiments (embedded servers go through
//! the same client path), `steer-model` to load models and write random checkpoints.

#[macro_use]
mod output;
mod args;
mod bench;
mod commands;
mod eval;
mod plot;
mod progress;
mod serve;
mod table;
mod vector;

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use steer_model::random::{builtin_tokenizer, write_random_checkpoint, RandomInit};
use steer_model::Config;
use steer_server::Role;

#[derive(Parser)]
#[command(name = "steer", version, about = "Steer GPT-2 by adding activation vectors (ActAdd)")]
struct Cli {
    /// Log filter (RUST_LOG syntax) [default: info for serve and the workers, warn otherwise].
    #[arg(long, global = true, env = "STEER_LOG")]
    log: Option<String>,
    /// Log JSON lines (with the RPC span: service, method, request id) instead of text.
    #[arg(long, global = true, env = "STEER_LOG_JSON")]
    log_json: bool,
    /// Compute threads of the model's kernels [default: the CPUs this process may use, a
    /// container's CPU limit included]. The numbers are the same bits whatever the count.
    #[arg(long, global = true, env = "STEER_THREADS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    threads: Option<u16>,
    /// Export trace spans to this OTLP/gRPC collector (http://host:4317): every RPC of the
    /// services, and a client's calls as their parent (W3C trace context in the metadata).
    #[arg(long, global = true, env = "STEER_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
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
    /// Steering vectors as files and the service's vector library.
    Vector {
        #[command(subcommand)]
        cmd: vector::VectorCommand,
    },
    /// The post's measurements over a sweep: perplexity, kl, topic-words, norms.
    Eval {
        #[command(subcommand)]
        cmd: eval::EvalCommand,
    },
    /// Write a GPT-2 checkpoint with random weights in the hub layout.
    RandomModel(RandomModelArgs),
    /// Download the model's files into the hub cache (HF_HOME) without loading them, and print
    /// where they are (the snapshot's directory names the commit): a prefetch Job or an init
    /// container fills the cache once, the workers then run with HF_HUB_OFFLINE=1.
    Fetch(args::ModelArgs),
    /// Ask a server's health (exit 0 when SERVING): a probe that also works over TLS.
    Health(commands::HealthArgs),
    /// Measure prefill and decode speed of the engine (prints numbers).
    Bench(bench::BenchArgs),
    /// Print a shell completion script (e.g. `steer completions bash > /etc/bash_completion.d/steer`).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Args)]
struct RandomModelArgs {
    /// tiny, small, medium, large or xl.
    #[arg(long, default_value = "tiny")]
    shape: String,
    /// Directory to write (config.json, model.safetensors, tokenizer).
    #[arg(long)]
    out: PathBuf,
    /// Seed of the random weights.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Standard deviation of the weight matrices.
    #[arg(long, default_value_t = 0.02)]
    std: f32,
    /// Prefix names with `transformer.` as save_pretrained does.
    #[arg(long)]
    prefixed: bool,
}

/// Errors are printed as their chain of causes; the backtrace that anyhow captures when
/// RUST_BACKTRACE is set in a developer's shell is shown only with RUST_LIB_BACKTRACE=1.
fn main() -> std::process::ExitCode {
    match steer() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            if std::env::var_os("RUST_LIB_BACKTRACE").is_some_and(|v| v == "1") {
                eprintln!("Error: {e:?}");
            } else {
                eprintln!("Error: {e}");
                for cause in e.chain().skip(1) {
                    eprintln!("  caused by: {}", cause.to_string().replace('\n', "\n    "));
                }
            }
            std::process::ExitCode::FAILURE
        }
    }
}

fn steer() -> Result<()> {
    let cli = Cli::parse();
    let serving = matches!(cli.command, Command::Serve(_) | Command::ActivationWorker(_) | Command::GenerationWorker(_));
    let default_log = if serving { "info" } else { "warn" };
    let service = match &cli.command {
        Command::ActivationWorker(_) => "steer-activation",
        Command::GenerationWorker(_) => "steer-generation",
        Command::Serve(_) => "steer",
        _ => "steer-client",
    };
    let _traces = steer_telemetry::init_logging(cli.log.as_deref().unwrap_or(default_log), cli.log_json, cli.otlp_endpoint.as_deref(), service)
        .map_err(anyhow::Error::msg)?;
    if let Some(n) = cli.threads {
        rayon::ThreadPoolBuilder::new().num_threads(n.into()).build_global().context("--threads: the compute pool was already started")?;
    }
    if serving {
        tracing::info!(threads = rayon::current_num_threads(), "compute threads");
    }
    match cli.command {
        Command::Run(a) => args::runtime()?.block_on(commands::run(a)),
        Command::Demo(a) => args::runtime()?.block_on(commands::demo(a)),
        Command::Serve(a) => args::runtime()?.block_on(serve::serve(a, Role::Both)),
        Command::ActivationWorker(a) => args::runtime()?.block_on(serve::serve(a, Role::Activation)),
        Command::GenerationWorker(a) => args::runtime()?.block_on(serve::serve(a, Role::Generation)),
        Command::Generate(a) => args::runtime()?.block_on(commands::generate(a)),
        Command::Fetch(m) => {
            let mut hub = steer_model::source::HubOptions::from_env();
            hub.progress = std::io::IsTerminal::is_terminal(&std::io::stderr());
            let files = m.source().resolve(&hub).with_context(|| format!("fetching {}", m.model))?;
            println!("{}", files.dir.display());
            Ok(())
        }
        Command::Vector { cmd } => args::runtime()?.block_on(vector::run(cmd)),
        Command::Eval { cmd } => args::runtime()?.block_on(eval::run(cmd)),
        Command::RandomModel(a) => random_model(a),
        Command::Health(a) => args::runtime()?.block_on(commands::health(a)),
        Command::Bench(a) => bench::run(a),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut <Cli as clap::CommandFactory>::command(), "steer", &mut output::Stdout);
            Ok(())
        }
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
