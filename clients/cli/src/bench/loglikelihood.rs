//! `steer bench --loglikelihood`: lm-evaluation-harness's loglikelihood workload as it reaches a
//! server: 64 requests `POST /v1/completions {"prompt": [[ids]], "max_tokens": 1, "logprobs": 1,
//! "echo": true, "temperature": 0}`, one at a time, over 4 shared contexts of 100+ tokens with
//! 16 continuations of under 10 tokens each. Against 64 independent scorings of the same texts
//! (one `Score` each, prefix cache off) and against the same requests with the cache off, in
//! one run: time and the engine's work (block-positions), as ratios; and the largest
//! difference between the loglikelihoods the two paths give.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use serde_json::{json, Value};
use steer_model::Engine;
use steer_server::{LocalServer, ServeConfig};

const TOPICS: [&str; 4] = ["the harvest", "the river", "the old mill", "the winter fair"];
const CONTINUATIONS: [&str; 16] = [
    " yes",
    " no",
    " it rained",
    " nobody came",
    " the bells rang",
    " a dog barked",
    " they sang",
    " it was late",
    " the end",
    " and then",
    " quietly",
    " at dawn",
    " with bread",
    " by the sea",
    " once more",
    " for ever",
];

async fn server(engine: &Arc<Engine>, prefix_cache_bytes: usize) -> Result<LocalServer> {
    let mut cfg = ServeConfig { served_model_name: Some("bench".into()), ..ServeConfig::default() };
    cfg.generation.prefix_cache_bytes = prefix_cache_bytes;
    Ok(LocalServer::start(engine.clone(), cfg).await?)
}

/// POSTs `body` to `url`, the response's JSON lines.
async fn post(url: String, body: Value) -> Result<Vec<Value>> {
    tokio::task::spawn_blocking(move || -> Result<Vec<Value>> {
        let text = ureq::post(&url).send_json(&body).with_context(|| url.clone())?.body_mut().read_to_string()?;
        Ok(text.lines().filter(|l| !l.trim().is_empty()).map(serde_json::from_str).collect::<Result<_, _>>()?)
    })
    .await?
}

/// The 64 texts as token ids, and where each one's continuation starts.
fn texts(engine: &Engine) -> Result<Vec<(Vec<u32>, usize)>> {
    let base = "The history of the town is long and full of small events that nobody remembers any more, though the old people \
                in the square still talk about them on the long warm summer evenings when the light is low and the swallows are out over";
    let mut out = vec![];
    for cont in CONTINUATIONS {
        for topic in TOPICS {
            let ctx = engine.encode(&format!("{base} {topic}. {base} {topic}, and they said"), false)?;
            let whole = engine.encode(&format!("{base} {topic}. {base} {topic}, and they said{cont}"), false)?;
            out.push((whole, ctx.len()));
        }
    }
    Ok(out)
}

/// Runs `f` and returns its seconds, the block-positions the engine ran meanwhile, and its value.
async fn measured<T>(engine: &Engine, f: impl std::future::Future<Output = Result<T>>) -> Result<(f64, u64, T)> {
    let (t, before) = (Instant::now(), engine.model().block_positions());
    let out = f.await?;
    Ok((t.elapsed().as_secs_f64(), engine.model().block_positions() - before, out))
}

/// The harness's requests, one at a time: each text's continuation loglikelihood.
async fn harness(url: &str, texts: &[(Vec<u32>, usize)]) -> Result<Vec<f64>> {
    let mut out = vec![];
    for (ids, start) in texts {
        let body = json!({"model": "bench", "prompt": [ids], "max_tokens": 1, "logprobs": 1, "echo": true, "temperature": 0, "seed": 1234});
        let r = post(format!("{url}/v1/completions"), body).await?;
        let lp = &r[0]["choices"][0]["logprobs"]["token_logprobs"];
        let lp = lp.as_array().with_context(|| format!("no logprobs in {}", r[0]))?;
        out.push(lp[*start..ids.len()].iter().map(|x| x.as_f64().unwrap_or(f64::NAN)).sum());
    }
    Ok(out)
}

/// One Score per text.
async fn scorings(url: &str, texts: &[(Vec<u32>, usize)]) -> Result<Vec<f64>> {
    let mut out = vec![];
    for (ids, start) in texts {
        let body = json!({"texts": [{"tokenIds": ids, "scoreFrom": start}]});
        let r = post(format!("{url}/v1/rpc/steer.v1.GenerationService/Score"), body).await?;
        out.push(r[0]["score"]["sum"].as_f64().with_context(|| format!("no score in {}", r[0]))?);
    }
    Ok(out)
}

pub async fn run(engine: Arc<Engine>) -> Result<()> {
    let texts = texts(&engine)?;
    let (ctx_len, longest) = (texts[0].1, texts.iter().map(|(t, s)| t.len() - s).max().unwrap_or(0));
    let off = server(&engine, 0).await?;
    let on = server(&engine, ServeConfig::default().generation.prefix_cache_bytes).await?;
    let http = |s: &LocalServer| s.url().replace("https://", "http://");
    let (alone_s, alone_w, alone) = measured(&engine, scorings(&http(&off), &texts)).await?;
    let (shared_s, shared_w, shared) = measured(&engine, harness(&http(&on), &texts)).await?;
    let (cold_s, cold_w, _) = measured(&engine, harness(&http(&off), &texts)).await?;
    let diff = alone.iter().zip(&shared).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    outln!(
        "loglikelihood: 64 harness requests (echo, logprobs 1, max_tokens 1) over 4 contexts of {ctx_len} tokens, continuations of \
         1-{longest} tokens: {shared_s:.2} s, {shared_w} block-positions; 64 independent scorings (cache off) {alone_s:.2} s, {alone_w} \
         block-positions: {:.3}x the time, {:.3}x the work; the same requests with the cache off {cold_s:.2} s ({cold_w}): {:.3}x; \
         largest loglikelihood difference {diff:.2e}",
        shared_s / alone_s,
        shared_w as f64 / alone_w as f64,
        shared_s / cold_s
    );
    on.shutdown().await;
    off.shutdown().await;
    Ok(())
}
