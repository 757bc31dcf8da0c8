//! `steer bench --prefix-cache`: the generation worker's prefix cache against the same server
//! with it off, in one run, printed as ratios: a re-run of a weddings comparison (a prompt of
//! 30+ tokens) with a new seed, time to first token; and 8 concurrent clients re-running 2
//! prompts of 100+ tokens, 32 new tokens each, aggregate tokens/s.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;
use steer_client::{AdditionSpec, RunOptions, SteerClient, SteeringTensor};
use steer_model::Engine;
use steer_server::{LocalServer, ServeConfig};

use super::percentile;

/// A weddings comparison on a prompt of 30+ tokens.
const LONG_PROMPT: &str = "I went up to my friend, who had just come back from a long trip across the country to see her family, \
                           and over a cup of coffee at the small cafe near the station I said";

/// Re-runs compared, alternating the servers.
const ROUNDS: usize = 3;

async fn server(engine: &Arc<Engine>, prefix_cache_bytes: usize) -> Result<(LocalServer, Arc<SteerClient>)> {
    let mut cfg = ServeConfig::default();
    cfg.generation.prefix_cache_bytes = prefix_cache_bytes;
    let s = LocalServer::start(engine.clone(), cfg).await?;
    let c = SteerClient::connect(&s.url(), &[s.url()]).await?;
    Ok((s, Arc::new(c)))
}

/// Seconds to the first streamed token of a generation.
async fn first_token(client: &SteerClient, prompt: &str, tensors: &[SteeringTensor], opts: &RunOptions) -> Result<f64> {
    let t = Instant::now();
    let mut first = None;
    client
        .generate(prompt, tensors, opts, |_| {
            first.get_or_insert_with(|| t.elapsed().as_secs_f64());
        })
        .await?;
    Ok(first.unwrap_or(f64::NAN))
}

/// Aggregate tokens/s of `clients` concurrent requests over `prompts` (in turn).
async fn concurrent(client: &Arc<SteerClient>, prompts: &[String], clients: usize, tokens: u32) -> Result<f64> {
    let t = Instant::now();
    let mut tasks = vec![];
    for i in 0..clients {
        let (client, prompt) = (client.clone(), prompts[i % prompts.len()].clone());
        let opts = RunOptions { n_tokens: tokens, n_comparisons: 1, skip_unsteered: true, ignore_eos: true, seed: i as u64, ..RunOptions::default() };
        tasks.push(tokio::spawn(async move { client.generate(&prompt, &[], &opts, |_| {}).await.map(|c| c.steered[0].token_ids.len()) }));
    }
    let mut n = 0;
    for task in tasks {
        n += task.await??;
    }
    Ok(n as f64 / t.elapsed().as_secs_f64())
}

pub async fn run(engine: Arc<Engine>) -> Result<()> {
    let (off_server, off) = server(&engine, 0).await?;
    let (on_server, on) = server(&engine, ServeConfig::default().generation.prefix_cache_bytes).await?;
    let n_layer = engine.info().n_layer as u32;
    let layer = (n_layer * 20 / 48).max(1);
    let adds = [
        AdditionSpec::new(layer, 4.0, "I talk about weddings constantly  "),
        AdditionSpec::new(layer, -4.0, "I do not talk about weddings constantly"),
    ];
    let opts = RunOptions { n_tokens: 4, n_comparisons: 3, ..RunOptions::seed(false) };
    let tensors = off.steering_tensors(&adds, &opts).await?;
    let prompt_tokens = engine.encode(LONG_PROMPT, opts.use_bos)?.len();
    // The cache-on server sees the comparison once; every measured run has a new seed.
    first_token(&on, LONG_PROMPT, &tensors, &opts).await?;
    let (mut cold, mut warm) = (vec![], vec![]);
    for round in 0..ROUNDS {
        let o = RunOptions { seed: 100 + round as u64, ..opts.clone() };
        cold.push(first_token(&off, LONG_PROMPT, &tensors, &o).await?);
        warm.push(first_token(&on, LONG_PROMPT, &tensors, &o).await?);
    }
    let (c, w) = (percentile(&mut cold, 0.5), percentile(&mut warm, 0.5));
    outln!(
        "prefix cache: weddings comparison re-run with a new seed ({prompt_tokens}-token prompt, 6 rows), time to first token: \
         cache off {c:.3} s, cache hit {w:.3} s (medians of {ROUNDS}, alternated): {:.2}x the cold run",
        w / c
    );
    // 8 clients re-running 2 prompts of 100+ tokens, 32 new tokens each.
    let base = "The history of the town is long and full of small events that nobody remembers any more, \
                though the old people in the square still talk about them on summer evenings when the light is low and";
    let prompts: Vec<String> = ["the harvest", "the river"].iter().map(|t| format!("{base} {t}. {base} {t}. {base} {t}")).collect();
    let lens: Vec<usize> = prompts.iter().map(|p| engine.encode(p, true).map(|ids| ids.len())).collect::<steer_model::Result<_>>()?;
    concurrent(&on, &prompts, 2, 1).await?; // the cache-on server has seen both prompts
    let off_rate = concurrent(&off, &prompts, 8, 32).await?;
    let on_rate = concurrent(&on, &prompts, 8, 32).await?;
    outln!(
        "prefix cache: 8 concurrent clients re-running 2 prompts ({} and {} tokens), 32 new tokens each: cache off {off_rate:.2} tokens/s, \
         cache on {on_rate:.2} tokens/s: {:.2}x",
        lens[0],
        lens[1],
        on_rate / off_rate
    );
    on_server.shutdown().await;
    off_server.shutdown().await;
    Ok(())
}
