//! `steer bench`: prefill and decode speed of the engine, printed (never asserted).

use std::time::Instant;

use anyhow::{ensure, Result};
use clap::Args;
use steer_client::v1::SamplingParameters;
use steer_model::{Engine, GenerateOptions, RowRequest};

use crate::ModelArgs;

#[derive(Args)]
pub struct BenchArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Tokens decoded per measurement.
    #[arg(long, default_value_t = 16)]
    tokens: usize,
    /// Batch sizes to measure decode at.
    #[arg(long, value_delimiter = ',', default_value = "1,6")]
    batches: Vec<usize>,
    /// Also measure the services over loopback gRPC: cache-hit latency, time to first token,
    /// and the overhead of a full run against the in-process engine.
    #[arg(long)]
    grpc: bool,
}

const PROMPT: &str = "I went up to my friend and said"; // 9 tokens with BOS

/// `n` unsteered rows of the post's sampling, seeds 0..n.
fn rows(engine: &Engine, n: usize) -> Result<Vec<RowRequest>> {
    let prompt = engine.encode(PROMPT, true)?;
    let sampling = steer_common::convert::sampling(&SamplingParameters::post())?;
    Ok(steer_generation::validation::pair_rows(&prompt, &sampling, n, 0, &[], true).0)
}

fn peak_rss_gb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1e6)
}

pub fn run(a: BenchArgs) -> Result<()> {
    let t = Instant::now();
    let engine = a.model.load()?;
    println!("load: {:.1} s, peak RSS {:.2} GB", t.elapsed().as_secs_f64(), peak_rss_gb());
    // Prefill of the 9-token prompt: generate one token.
    let one = GenerateOptions { max_new_tokens: 1, stop_at_eos: false, ..Default::default() };
    engine.generate(&rows(&engine, 1)?, &one, |_| std::ops::ControlFlow::Continue(()))?; // warm-up
    let mut best = f64::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        engine.generate(&rows(&engine, 1)?, &one, |_| std::ops::ControlFlow::Continue(()))?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    println!("prefill 9 tokens (batch 1): {best:.3} s");
    for &b in &a.batches {
        let opts = GenerateOptions { max_new_tokens: a.tokens + 1, stop_at_eos: false, ..Default::default() };
        let out = engine.generate(&rows(&engine, b)?, &opts, |_| std::ops::ControlFlow::Continue(()))?;
        let o = &out[0];
        let steps = (o.tokens.len() - 1) as f64;
        let step_s = o.decode_secs / steps;
        println!(
            "decode batch {b}: {:.1} ms/step, {:.2} tokens/s per row, {:.2} tokens/s total (prefill {:.3} s)",
            step_s * 1e3,
            1.0 / step_s,
            b as f64 / step_s,
            o.prefill_secs
        );
    }
    println!("peak RSS: {:.2} GB", peak_rss_gb());
    if a.grpc {
        crate::commands::runtime()?.block_on(grpc(engine, a.tokens))?;
    }
    Ok(())
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

async fn grpc(engine: Engine, tokens: usize) -> Result<()> {
    use futures::StreamExt;
    use steer_client::{AdditionSpec, RunOptions, SteerClient};
    use steer_server::{LocalServer, ServeConfig};
    let engine = std::sync::Arc::new(engine);
    let server = LocalServer::start(engine.clone(), ServeConfig::default()).await?;
    let client = SteerClient::connect(&server.url(), &[server.url()]).await?;
    let layer = (engine.info().n_layer as u32 * 20 / 48).max(1);
    let adds = [
        AdditionSpec::new(layer, 4.0, "I talk about weddings constantly  "),
        AdditionSpec::new(layer, -4.0, "I do not talk about weddings constantly"),
    ];
    let opts = RunOptions { n_tokens: tokens as u32, n_comparisons: 3, ..RunOptions::default() };
    // Cold: the weddings pair with a distinct suffix each time, so every request misses the cache
    // (one batched capture forward of both prompts).
    let mut cold = vec![];
    for i in 0..5 {
        let fresh: Vec<AdditionSpec> = adds.iter().map(|a| AdditionSpec::new(a.layer, a.coeff, format!("{} {i}", a.prompt))).collect();
        let t = Instant::now();
        client.steering_tensors(&fresh, &opts).await?;
        cold.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let shown: Vec<String> = cold.iter().map(|ms| format!("{ms:.0}")).collect();
    println!("steering tensors (weddings pair), cold cache: median {:.1} ms ({} ms)", percentile(&mut cold, 0.5), shown.join(", "));
    let tensors = client.steering_tensors(&adds, &opts).await?;
    let mut lat = vec![];
    for _ in 0..200 {
        let t = Instant::now();
        client.steering_tensors(&adds, &opts).await?;
        lat.push(t.elapsed().as_secs_f64() * 1e3);
    }
    println!(
        "steering tensors, cache hit over loopback gRPC: p50 {:.3} ms, p99 {:.3} ms",
        percentile(&mut lat, 0.5),
        percentile(&mut lat, 0.99)
    );
    // Time to first streamed token.
    let t = Instant::now();
    let mut stream = client.generate_stream(PROMPT, &tensors, &opts).await?;
    let _ = stream.next().await;
    println!("time to first streamed token (6 rows, prefill): {:.3} s", t.elapsed().as_secs_f64());
    while stream.next().await.is_some() {}
    // Full run over gRPC against the same rows in process (built by the service's own
    // validation, so both run exactly the same batch).
    let t = Instant::now();
    let cmp = client.calculate_and_apply_steering_vector(PROMPT, &adds, &opts).await?;
    let via_grpc = t.elapsed().as_secs_f64();
    let raw = steer_generation::read::RawRequest {
        setup: opts.setup(PROMPT, tensors.len()),
        tensors: tensors.iter().map(|t| steer_generation::read::WireTensor { header: t.header.clone(), values: t.values.clone() }).collect(),
    };
    let valid = steer_generation::validation::validate(raw, &engine, &Default::default())?;
    let gen = GenerateOptions { max_new_tokens: valid.max_new_tokens, ..Default::default() };
    let t = Instant::now();
    let local = engine.generate(&valid.rows, &gen, |_| std::ops::ControlFlow::Continue(()))?;
    let in_process = t.elapsed().as_secs_f64();
    ensure!(local[valid.n_unsteered].tokens == cmp.steered[0].token_ids, "gRPC and in-process runs differ for the same seeds");
    println!(
        "full run, {tokens} tokens x 6 rows: gRPC (cached steering) {via_grpc:.3} s, in-process {in_process:.3} s, overhead {:+.1}%",
        (via_grpc / in_process - 1.0) * 100.0
    );
    server.shutdown().await;
    Ok(())
}
