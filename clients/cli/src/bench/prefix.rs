//! `steer bench --prefix-cache`: the generation worker's prefix cache against the same server
//! with it off, in one run, printed as ratios:
//! - a re-run of a weddings comparison (a prompt of 30+ tokens) with a new seed: time to first
//!   token;
//! - a coefficient change at `BLOCK_OUTPUT(20)` (scaled to the model's depth): the prefill's
//!   compute (block-positions the engine ran) and time to first token;
//! - `steer eval perplexity` over layers 0, 6, ..., 42 (scaled) and coefficients 1, 2, 4 on the
//!   committed text sets: the work done against the ideal (each setting from its steered
//!   stream up, the unsteered and prompting passes once), and the time against the cache off
//!   with the settings one after another;
//! - 8 concurrent clients re-running 2 prompts of 100+ tokens, 32 new tokens each: aggregate
//!   tokens/s.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;
use steer_client::eval::sweeps::{default_text_sets, perplexity_sweep_at, Sweep, SETTINGS_AT_ONCE};
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

/// Block-positions the engine computes while `f` runs, and what `f` gives.
async fn work<T>(engine: &Engine, f: impl std::future::Future<Output = Result<T>>) -> Result<(u64, T)> {
    let before = engine.model().block_positions();
    let out = f.await?;
    Ok((engine.model().block_positions() - before, out))
}

/// A coefficient change at `BLOCK_OUTPUT(layer)`: prefill compute and time to first token of
/// the cache-on server (which has seen the comparison at another coefficient) against the
/// cold run, alternated, a new coefficient each round.
async fn coefficient_change(engine: &Engine, off: &SteerClient, on: &SteerClient, layer: u32) -> Result<()> {
    let adds = |c: f64| {
        [AdditionSpec::new(layer, c, "I talk about weddings constantly  "), AdditionSpec::new(layer, -c, "I do not talk about weddings constantly")]
    };
    // One token: the prefill alone (the first token comes from its logits).
    let opts = RunOptions { n_tokens: 1, n_comparisons: 3, ..RunOptions::seed(false) };
    first_token(on, LONG_PROMPT, &on.steering_tensors(&adds(4.0), &opts).await?, &opts).await?;
    let (mut cold, mut warm, mut cold_work, mut warm_work) = (vec![], vec![], 0, 0);
    for round in 0..ROUNDS {
        let tensors = off.steering_tensors(&adds(5.0 + round as f64), &opts).await?;
        let (w, t) = work(engine, first_token(off, LONG_PROMPT, &tensors, &opts)).await?;
        (cold_work, cold) = (cold_work + w, [cold, vec![t]].concat());
        let (w, t) = work(engine, first_token(on, LONG_PROMPT, &tensors, &opts)).await?;
        (warm_work, warm) = (warm_work + w, [warm, vec![t]].concat());
    }
    let (c, w) = (percentile(&mut cold, 0.5), percentile(&mut warm, 0.5));
    outln!(
        "prefix cache: coefficient change at block_output({layer}), prefill compute: cache off {cold_work} block-positions, \
         cache on {warm_work} ({ROUNDS} rounds): {:.2}x the cold run; time to first token {c:.3} s vs {w:.3} s: {:.2}x",
        warm_work as f64 / cold_work as f64,
        w / c
    );
    Ok(())
}

/// `steer eval perplexity` over `layers` x `coeffs` on the committed text sets: the cache-on
/// server's work against the ideal, and its time (settings `SETTINGS_AT_ONCE` at a time)
/// against the cache-off server's (one after another).
async fn perplexity_sweep(engine: &Engine, off: &SteerClient, on: &SteerClient, layers: Vec<u32>) -> Result<()> {
    let sweep = Sweep { plus: " wedding".into(), minus: " ".into(), layers, coeffs: vec![1.0, 2.0, 4.0] };
    let sets = default_text_sets();
    let opts = RunOptions::default();
    let n = engine.info().n_layer as u64;
    let lens = |prompt: &str| -> Result<u64> {
        let mut total = 0;
        for t in sets.iter().flat_map(|s| &s.texts) {
            total += (engine.encode(prompt, opts.use_bos)?.len() + engine.encode(t, false)?.len()) as u64;
        }
        Ok(total)
    };
    let (plain, prompted) = (lens("")?, lens(&sweep.plus)?);
    // Steering at resid_pre(L) acts at stream L: blocks L.. run for each setting.
    let steered: u64 = sweep.settings().iter().map(|&(l, _)| plain * (n - l as u64)).sum();
    let ideal = plain * n + steered + prompted * n;
    let t = Instant::now();
    let (off_work, _) = work(engine, async { Ok(perplexity_sweep_at(off, &sweep, &sets, &opts, 1, |_, _, _| {}).await?) }).await?;
    let off_secs = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let (on_work, _) = work(engine, async { Ok(perplexity_sweep_at(on, &sweep, &sets, &opts, SETTINGS_AT_ONCE, |_, _, _| {}).await?) }).await?;
    let on_secs = t.elapsed().as_secs_f64();
    outln!(
        "prefix cache: eval perplexity, {} settings x {} texts: work cache on {on_work} block-positions = {:.3}x the ideal {ideal} \
         (cache off {off_work} = {:.2}x); time cache off, one setting after another {off_secs:.1} s, cache on, {SETTINGS_AT_ONCE} at once \
         {on_secs:.1} s: {:.2}x faster (the ideal: {:.2}x)",
        sweep.settings().len(),
        sets.iter().map(|s| s.texts.len()).sum::<usize>(),
        on_work as f64 / ideal as f64,
        off_work as f64 / ideal as f64,
        off_secs / on_secs,
        off_work as f64 / ideal as f64,
    );
    Ok(())
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
    coefficient_change(&engine, &off, &on, layer).await?;
    let mut layers: Vec<u32> = (0..8).map(|i| i * n_layer / 8).collect();
    layers.dedup();
    perplexity_sweep(&engine, &off, &on, layers).await?;
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
    // Both servers' budgets (the cache-off one without its cache) share the one engine's weights.
    let cfg = ServeConfig::default().generation;
    let plan = cfg.memory_plan(engine.info(), engine.weight_bytes());
    let budgets = plan.total() + (plan.total() - plan.weights - plan.prefix_cache);
    let rss = super::peak_rss_gb();
    let verdict = if rss * 1e9 <= budgets as f64 { "inside" } else { "OVER" };
    outln!(
        "prefix cache: peak RSS {rss:.2} GB, {verdict} the two servers' budgets ({:.2} GB: {plan}; the same without the cache and weights)",
        budgets as f64 / 1e9
    );
    on_server.shutdown().await;
    off_server.shutdown().await;
    Ok(())
}
