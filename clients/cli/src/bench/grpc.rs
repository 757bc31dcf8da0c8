//! `steer bench --grpc`: the services over loopback gRPC: cold and cached steering tensors, time
//! to the first streamed token, and a full run against the same rows in process.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{ensure, Result};
use steer_model::{Engine, GenerateOptions};

use super::{percentile, PROMPT};

/// Full runs of each kind, taken in turn.
const FULL_RUNS: usize = 5;

pub async fn run(engine: Arc<Engine>, tokens: usize) -> Result<()> {
    use futures::StreamExt;
    use steer_client::{AdditionSpec, RunOptions, SteerClient};
    use steer_server::{LocalServer, ServeConfig};
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
    outln!("steering tensors (weddings pair), cold cache: median {:.1} ms ({} ms)", percentile(&mut cold, 0.5), shown.join(", "));
    let tensors = client.steering_tensors(&adds, &opts).await?;
    let mut lat = vec![];
    for _ in 0..200 {
        let t = Instant::now();
        client.steering_tensors(&adds, &opts).await?;
        lat.push(t.elapsed().as_secs_f64() * 1e3);
    }
    outln!("steering tensors, cache hit over loopback gRPC: p50 {:.3} ms, p99 {:.3} ms", percentile(&mut lat, 0.5), percentile(&mut lat, 0.99));
    // Time to first streamed token.
    let t = Instant::now();
    let mut stream = client.generate_stream(PROMPT, &tensors, &opts).await?;
    let _ = stream.next().await;
    outln!("time to first streamed token (6 rows, prefill): {:.3} s", t.elapsed().as_secs_f64());
    while stream.next().await.is_some() {}
    // Full runs over gRPC against the same rows in process (built by the service's own
    // validation, so both run exactly the same batch), taken in turn: one of each varied by
    // 10% from run to run on a shared machine, more than the overhead being measured.
    let wire = tensors.iter().map(|t| (t.header.clone(), t.values.clone())).collect();
    let valid = steer_generation::batch(opts.setup(PROMPT, tensors.len()), wire, &engine, &Default::default())?;
    let gen = GenerateOptions { max_new_tokens: valid.max_new_tokens, ..Default::default() };
    let (mut via_grpc, mut in_process) = (vec![], vec![]);
    for _ in 0..FULL_RUNS {
        let t = Instant::now();
        let cmp = client.calculate_and_apply_steering_vector(PROMPT, &adds, &opts).await?;
        via_grpc.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        let local = engine.generate(&valid.rows, &gen, |_| std::ops::ControlFlow::Continue(()))?;
        in_process.push(t.elapsed().as_secs_f64());
        ensure!(local[valid.n_unsteered].tokens == cmp.steered[0].token_ids, "gRPC and in-process runs differ for the same seeds");
    }
    let shown = |v: &[f64]| v.iter().map(|s| format!("{s:.3}")).collect::<Vec<_>>().join(", ");
    let (runs_grpc, runs_local) = (shown(&via_grpc), shown(&in_process));
    let (g, l) = (percentile(&mut via_grpc, 0.5), percentile(&mut in_process, 0.5));
    outln!(
        "full run, {tokens} tokens x 6 rows, {FULL_RUNS} of each in turn: gRPC (cached steering) median {g:.3} s ({runs_grpc}), \
         in-process {l:.3} s ({runs_local}), overhead {:+.1}%",
        (g / l - 1.0) * 100.0
    );
    server.shutdown().await;
    Ok(())
}
