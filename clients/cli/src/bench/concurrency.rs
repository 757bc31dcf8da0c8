//! `steer bench --concurrency 1,4,8,16`: N clients start at once, each asking one comparison (1
//! unsteered + 1 steered row) of 32 tokens with its own prompt (of different lengths) and seed;
//! then the same N requests one at a time, in the same run. Prints aggregate tokens/s, time to
//! first token and inter-token latency. Then the stall a long prompt's prefill causes to a
//! stream that is decoding when it arrives. The prefix cache is off here: both sides prefill
//! every prompt.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::Result;
use steer_client::{AdditionSpec, RunOptions, SteerClient, SteeringTensor};
use steer_model::Engine;
use steer_server::{LocalServer, ServeConfig};

use super::percentile;

const TOKENS: u32 = 32;

/// Prompts of different lengths (9 to 38 tokens with BOS), from the post's demonstrations.
const PROMPTS: [&str; 8] = [
    "I went up to my friend and said",
    "I want to kill you because you're such a",
    "To see the eiffel tower, people flock to",
    "Thanks for asking about that! I moved to Berkeley, CA because",
    "Yesterday, my dog died. Today, I got denied for a raise. I'm feeling",
    "The rock hurtled toward the child. The child couldn't get out of the way in time, and so sadly the rock",
    "Some people think that death is scary and should be avoided. I agree. I never want to die. \
     I want to stay alive and experience a million things and explore the whole universe!",
    "Barack Obama was born in the state of Hawaii, and before that he said",
];

/// When each token of each row arrived.
type Times = Vec<Vec<Instant>>;

struct Outcome {
    started: Instant,
    times: Times,
}

async fn one(client: &SteerClient, i: usize, tensors: &[SteeringTensor], started: Instant) -> Result<Outcome> {
    let opts = RunOptions { n_tokens: TOKENS, n_comparisons: 1, seed: i as u64, ..RunOptions::default() };
    let times = Mutex::new(vec![vec![]; 2]);
    client.generate(PROMPTS[i % PROMPTS.len()], tensors, &opts, |t| times.lock().unwrap()[t.row as usize].push(Instant::now())).await?;
    Ok(Outcome { started, times: times.into_inner().unwrap() })
}

#[derive(Clone, Copy)]
struct Stats {
    tokens_per_s: f64,
    ttft_p50: f64,
    ttft_p99: f64,
    itl_p50: f64,
    itl_p99: f64,
}

fn stats(outcomes: &[Outcome], wall: f64) -> Stats {
    let tokens: usize = outcomes.iter().flat_map(|o| o.times.iter()).map(Vec::len).sum();
    let mut ttft: Vec<f64> = outcomes
        .iter()
        .map(|o| o.times.iter().filter_map(|t| t.first()).min().map_or(f64::NAN, |f| f.duration_since(o.started).as_secs_f64()))
        .collect();
    let mut itl: Vec<f64> =
        outcomes.iter().flat_map(|o| o.times.iter()).flat_map(|t| t.windows(2).map(|w| w[1].duration_since(w[0]).as_secs_f64())).collect();
    Stats {
        tokens_per_s: tokens as f64 / wall,
        ttft_p50: percentile(&mut ttft, 0.5),
        ttft_p99: percentile(&mut ttft, 0.99),
        itl_p50: percentile(&mut itl, 0.5),
        itl_p99: percentile(&mut itl, 0.99),
    }
}

/// The table for each prefill budget (`prefill_tokens_per_step`) in `budgets`; the one-at-a-time
/// baseline is measured once per N, with the first.
pub async fn run(engine: Arc<Engine>, levels: &[usize], budgets: &[usize]) -> Result<()> {
    let most = levels.iter().copied().max().unwrap_or(1);
    let mut alone_stats = std::collections::HashMap::new();
    for (b, &budget) in budgets.iter().enumerate() {
        let mut cfg = ServeConfig::default();
        cfg.generation.max_batch_rows = cfg.generation.max_batch_rows.max(2 * most);
        cfg.generation.max_queue = cfg.generation.max_queue.max(most);
        cfg.generation.prefill_tokens_per_step = budget;
        // Batching alone: with the prefix cache on, the one-at-a-time requests (the same prompts,
        // after the concurrent ones) found every prefill cached and skipped it (TTFT 0.02 s), so
        // the ratio compared prefills against none. `--prefix-cache` measures the cache.
        cfg.generation.prefix_cache_bytes = 0;
        let server = LocalServer::start(engine.clone(), cfg).await?;
        let client = Arc::new(SteerClient::connect(&server.url(), &[server.url()]).await?);
        let layer = (engine.info().n_layer as u32 * 20 / 48).max(1);
        let adds = [
            AdditionSpec::new(layer, 4.0, "I talk about weddings constantly  "),
            AdditionSpec::new(layer, -4.0, "I do not talk about weddings constantly"),
        ];
        let tensors = Arc::new(client.steering_tensors(&adds, &RunOptions::default()).await?);
        one(&client, 0, &tensors, Instant::now()).await?; // warm-up
        outln!(
            "concurrency: N clients at once, each 1 unsteered + 1 steered row of {TOKENS} tokens, prompts of 9-38 tokens; \
             prefill {budget} positions per step while others decode (--prefill-tokens-per-step)"
        );
        outln!(
            "| N | aggregate tokens/s | one at a time | ratio | TTFT p50 | TTFT p99 | inter-token p50 | inter-token p99 | \
             (one at a time: TTFT p50, inter-token p50) |"
        );
        outln!("|---|---|---|---|---|---|---|---|---|");
        for &n in levels {
            let started = Instant::now();
            let tasks: Vec<_> = (0..n)
                .map(|i| {
                    let (client, tensors) = (client.clone(), tensors.clone());
                    tokio::spawn(async move { one(&client, i, &tensors, started).await })
                })
                .collect();
            let mut together = vec![];
            for t in tasks {
                together.push(t.await??);
            }
            let c = stats(&together, started.elapsed().as_secs_f64());
            if let std::collections::hash_map::Entry::Vacant(e) = alone_stats.entry(n) {
                let started = Instant::now();
                let mut alone = vec![];
                for i in 0..n {
                    alone.push(one(&client, i, &tensors, Instant::now()).await?);
                }
                e.insert(stats(&alone, started.elapsed().as_secs_f64()));
            }
            let s = alone_stats[&n];
            outln!(
                "| {n} | {:.2} | {:.2} | {:.2}x | {:.2} s | {:.2} s | {:.3} s | {:.3} s | ({:.2} s, {:.3} s) |",
                c.tokens_per_s,
                s.tokens_per_s,
                c.tokens_per_s / s.tokens_per_s,
                c.ttft_p50,
                c.ttft_p99,
                c.itl_p50,
                c.itl_p99,
                s.ttft_p50,
                s.itl_p50
            );
        }
        if b == 0 {
            stall(&client, &tensors, &engine).await?;
        }
        server.shutdown().await;
    }
    Ok(())
}

/// A stream decodes; after its 8th token a request with a long prompt arrives. The stream's
/// longest gap between tokens against its median gap is the stall the prefill caused.
async fn stall(client: &Arc<SteerClient>, tensors: &Arc<Vec<SteeringTensor>>, engine: &Engine) -> Result<()> {
    // ~320 tokens, or as many as the model's positions allow.
    let mut ids = engine.encode(&PROMPTS.join(" ").repeat(2), false)?;
    ids.truncate(engine.info().n_positions.saturating_sub(16).min(320));
    let long_prompt = engine.tokenizer().decode(&ids)?;
    let prompt_tokens = engine.encode(&long_prompt, true)?.len();
    let (tx, rx) = tokio::sync::oneshot::channel::<Instant>();
    let joiner = {
        let client = client.clone();
        tokio::spawn(async move {
            let Ok(at) = rx.await else { return Ok::<_, anyhow::Error>(None) };
            let opts = RunOptions { n_tokens: 4, n_comparisons: 1, skip_unsteered: true, ..RunOptions::default() };
            let mut stream = client.generate_stream(&long_prompt, &[], &opts).await?;
            let mut prefill_ms = f64::NAN;
            while let Some(m) = futures::StreamExt::next(&mut stream).await {
                if let Some(steer_client::v1::generate_response::Event::Finished(f)) = m?.event {
                    prefill_ms = f.prefill_ms;
                }
            }
            Ok(Some((at, prefill_ms)))
        })
    };
    let opts = RunOptions { n_tokens: 40, n_comparisons: 1, skip_unsteered: true, ..RunOptions::default() };
    let times = Mutex::new(vec![]);
    let mut tx = Some(tx);
    client
        .generate(PROMPTS[0], tensors, &opts, |_| {
            let mut t = times.lock().unwrap();
            t.push(Instant::now());
            if t.len() == 8 {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(Instant::now());
                }
            }
        })
        .await?;
    let joined = joiner.await??;
    let times = times.into_inner().unwrap();
    let mut gaps: Vec<f64> = times.windows(2).map(|w| w[1].duration_since(w[0]).as_secs_f64()).collect();
    let worst = gaps.iter().copied().fold(0.0, f64::max);
    let median = percentile(&mut gaps, 0.5);
    if let Some((_, prefill_ms)) = joined {
        outln!(
            "stall: a {prompt_tokens}-token prompt's prefill (prefill time {:.3} s) joining a decoding stream: \
             its longest gap {worst:.3} s vs median {median:.3} s ({:.1} steps' worth)",
            prefill_ms / 1e3,
            worst / median
        );
    }
    Ok(())
}
