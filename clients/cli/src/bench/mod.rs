//! `steer bench`: speed, printed (never asserted). The engine's prefill and decode here; the
//! weights' dtypes side by side against the read-bandwidth limit in [`dtypes`]; the services
//! over loopback gRPC in [`grpc`]; many clients at once in [`concurrency`].

mod concurrency;
mod dtypes;
mod grpc;
mod loglikelihood;
mod ops;
mod prefix;

use std::time::Instant;

use anyhow::Result;
use clap::Args;
use steer_client::v1::SamplingParameters;
use steer_model::{Engine, GenerateOptions, RowRequest};

use crate::args::ModelArgs;

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
    /// Also measure the generation worker's prefix cache against the same server with it off:
    /// a re-run with a new seed (time to first token) and 8 clients re-running 2 long prompts.
    #[arg(long)]
    prefix_cache: bool,
    /// Also measure lm-evaluation-harness's loglikelihood requests over shared contexts
    /// (/v1/completions with echo and logprobs) against independent scorings of the same texts.
    #[arg(long)]
    loglikelihood: bool,
    /// Also measure what ADD, ABLATE and CLAMP on every row cost a decode step (at the last of
    /// --batches), against plain steps, alternated.
    #[arg(long)]
    ops: bool,
    /// Also serve N clients at once for each N given (e.g. 1,4,8,16), against the same requests
    /// one at a time, and the stall a long prefill causes to running streams.
    #[arg(long, value_delimiter = ',')]
    concurrency: Vec<usize>,
    /// With --concurrency: the serving loop's prefill budgets to compare (prompt positions
    /// prefilled per step while others decode; the first is `steer serve`'s default).
    #[arg(long, value_delimiter = ',', default_value = "32")]
    prefill_tokens_per_step: Vec<usize>,
    /// Measure each of these weight dtypes (f32, bf16, f16, q8_0), each in its own process,
    /// against this machine's read-bandwidth limit and against f32 (e.g. f32,bf16,f16,q8_0).
    #[arg(long, value_delimiter = ',')]
    dtypes: Vec<String>,
    /// One dtype's measurement for `--dtypes` (printed as one JSON line).
    #[arg(long, hide = true)]
    child: bool,
}

const PROMPT: &str = "I went up to my friend and said"; // 9 tokens with BOS

/// `n` unsteered rows of the post's sampling, seeds 0..n.
fn rows(engine: &Engine, n: usize) -> Result<Vec<RowRequest>> {
    let prompt = engine.encode(PROMPT, true)?;
    let sampling = steer_common::convert::sampling(&SamplingParameters::post())?;
    Ok(steer_generation::pair_rows(&prompt, &sampling, n, 0, &[], true).0)
}

fn peak_rss_gb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok()).map_or(f64::NAN, |kb| kb / 1e6)
}

pub fn run(a: BenchArgs) -> Result<()> {
    if !a.dtypes.is_empty() {
        return dtypes::compare(&a);
    }
    let limits = (!a.child).then(dtypes::limits);
    let t = Instant::now();
    let engine = a.model.load()?;
    let weight_bytes = engine.weight_bytes() as u64;
    outln!(
        "load: {:.1} s, peak RSS {:.2} GB; weights {} ({:.2} GB read per token)",
        t.elapsed().as_secs_f64(),
        peak_rss_gb(),
        engine.info().precision(),
        weight_bytes as f64 / 1e9
    );
    if let Some(l) = limits {
        outln!("batch-1 limit at {:.1} GB/s: {:.2} tokens/s", l.bandwidth, l.bandwidth * 1e9 / weight_bytes as f64);
    }
    let flops_per_row = flops_per_token(engine.info());
    // Prefill of the 9-token prompt: generate one token.
    let one = GenerateOptions { max_new_tokens: 1, stop_at_eos: false, ..Default::default() };
    engine.generate(&rows(&engine, 1)?, &one, |_| std::ops::ControlFlow::Continue(()))?; // warm-up
    let mut best = f64::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        engine.generate(&rows(&engine, 1)?, &one, |_| std::ops::ControlFlow::Continue(()))?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    outln!("prefill 9 tokens (batch 1): {best:.3} s");
    let mut decode = vec![];
    for &b in &a.batches {
        let opts = GenerateOptions { max_new_tokens: a.tokens + 1, stop_at_eos: false, ..Default::default() };
        let out = engine.generate(&rows(&engine, b)?, &opts, |_| std::ops::ControlFlow::Continue(()))?;
        let o = &out[0];
        let steps = (o.tokens.len() - 1) as f64;
        let step_s = o.decode_secs / steps;
        let gflops = flops_per_row * b as f64 / step_s / 1e9;
        let of_limits = match limits {
            Some(l) => {
                let bw_pct = 100.0 * weight_bytes as f64 / step_s / 1e9 / l.bandwidth;
                // q8_0's products run on int8 instructions: its compute limit is theirs.
                let (peak, name) = match engine.info().dtype {
                    steer_model::WeightDtype::Q8_0 => (l.int8, "int8 dot peak"),
                    _ => (l.fma, "FMA peak"),
                };
                let peak_pct = peak.map_or(String::new(), |p| format!(", {:.0}% of the {name}", 100.0 * gflops / p));
                format!("; weights streamed at {:.0}% of the read bandwidth{peak_pct}", bw_pct)
            }
            None => String::new(),
        };
        outln!(
            "decode batch {b}: {:.1} ms/step, {:.2} tokens/s per row, {:.2} tokens/s total, {gflops:.1} GFLOP/s (prefill {:.3} s){of_limits}",
            step_s * 1e3,
            1.0 / step_s,
            b as f64 / step_s,
            o.prefill_secs
        );
        decode.push((b, 1.0 / step_s));
    }
    outln!("peak RSS: {:.2} GB", peak_rss_gb());
    if a.child {
        let m = dtypes::Measured { dtype: engine.info().dtype.to_string(), weight_bytes, prefill_secs: best, decode, peak_rss_gb: peak_rss_gb() };
        outln!("{}{}", dtypes::LINE, serde_json::to_string(&m)?);
    }
    if a.ops {
        ops::run(&engine, a.batches.last().copied().unwrap_or(6), a.tokens)?;
    }
    let engine = std::sync::Arc::new(engine);
    if a.grpc {
        crate::args::runtime()?.block_on(grpc::run(engine.clone(), a.tokens))?;
    }
    if a.prefix_cache {
        crate::args::runtime()?.block_on(prefix::run(engine.clone()))?;
    }
    if a.loglikelihood {
        crate::args::runtime()?.block_on(loglikelihood::run(engine.clone()))?;
    }
    if !a.concurrency.is_empty() {
        crate::args::runtime()?.block_on(concurrency::run(engine, &a.concurrency, &a.prefill_tokens_per_step))?;
    }
    Ok(())
}

/// FLOPs of one decoded token's matrix products (2 per weight: the blocks' four matrices and
/// the tied lm_head; attention over the cache and the vector work left out).
/// FLOPs of one row's decode step: every layer's attention (4 d x d) and MLP (2 d x inner)
/// products, and the lm_head (v x d); 2 per multiply-add.
fn flops_per_token(i: &steer_model::ModelInfo) -> f64 {
    let (l, d, inner, v) = (i.n_layer as f64, i.d_model as f64, i.d_inner as f64, i.vocab_size as f64);
    2.0 * (l * (4.0 * d * d + 2.0 * d * inner) + v * d)
}

/// The p-quantile (0..=1) of `v`, nearest rank; NaN when empty.
fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}
