//! The generation worker's prefix cache over gRPC: a request whose every row the worker
//! prefilled before (same prompt, same steering) skips its prefill, and its tokens and
//! log-probabilities equal, bit for bit, those of a server with the cache off: for prefix and
//! all-positions steering and plain rows, on a hit, a miss and a partial hit, alone and in a
//! busy batch.

use std::sync::Arc;

use steer_client::steer_vector::{HookPoint, VectorTensor, Window};
use steer_client::v1::TokenEvent;
use steer_client::{AdditionSpec, RunOptions, SteerClient, SteeringTensor};
use steer_e2e::{engine, start_with};
use steer_server::ServeConfig;

const PROMPT: &str = "I went up to my friend and said that the weather";

fn config(prefix_cache_bytes: usize) -> ServeConfig {
    let mut cfg = ServeConfig::default();
    cfg.generation.prefix_cache_bytes = prefix_cache_bytes;
    cfg
}

/// Every token event of a generation (row, side, index, token, log-probability and its top
/// alternatives as bits), in a fixed order.
async fn events(client: &SteerClient, tensors: &[SteeringTensor], opts: &RunOptions) -> Vec<(u32, bool, u32, u32, u32, Vec<(u32, u32)>)> {
    let mut out = vec![];
    client
        .generate(PROMPT, tensors, opts, |t: &TokenEvent| {
            let top = t.top_logprobs.iter().map(|a| (a.token_id, a.logprob.to_bits())).collect();
            out.push((t.row, t.steered, t.index, t.token_id, t.logprob.to_bits(), top));
        })
        .await
        .unwrap();
    out.sort();
    out
}

fn opts(seed: u64) -> RunOptions {
    RunOptions { n_tokens: 8, n_comparisons: 2, seed, top_logprobs: 3, ..RunOptions::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hits_misses_and_partial_hits_give_the_numbers_of_a_server_without_the_cache() {
    let e = engine();
    let (off_server, off) = start_with(e.clone(), config(0)).await;
    let (on_server, on) = start_with(e.clone(), config(64 << 20)).await;
    let on = Arc::new(on);
    let adds = |coeff: f64| vec![AdditionSpec::new(1, coeff, "Love "), AdditionSpec::new(1, -coeff, "Hate")];
    let prefix = off.steering_tensors(&adds(4.0), &opts(0)).await.unwrap();
    let other = off.steering_tensors(&adds(2.0), &opts(0)).await.unwrap();
    let d = e.info().d_model;
    let direction: Vec<f32> = (0..d).map(|i| ((i % 5) as f32 - 2.0) * 0.5).collect();
    let steady = vec![SteeringTensor::from_vector(&VectorTensor { point: HookPoint::ResidPre(2), k: 1, values: direction }, Window::AllPositions)];
    for (name, tensors) in [("prefix", &prefix), ("all positions", &steady), ("plain", &vec![])] {
        let want = events(&off, tensors, &opts(5)).await;
        assert_eq!(events(&on, tensors, &opts(5)).await, want, "{name}: a miss");
        assert_eq!(events(&on, tensors, &opts(5)).await, want, "{name}: a hit");
        // Another seed: a hit on the prompt's states, other draws.
        assert_eq!(events(&on, tensors, &opts(6)).await, events(&off, tensors, &opts(6)).await, "{name}: a hit, another seed");
    }
    // A partial hit: the plain row is held, the steered one (another coefficient) is not.
    assert_eq!(events(&on, &other, &opts(5)).await, events(&off, &other, &opts(5)).await, "a partial hit");
    // A hit joining a busy batch: another request streams 200 tokens meanwhile.
    let busy = {
        let on = on.clone();
        let o = RunOptions { n_tokens: 200, n_comparisons: 3, seed: 1, ..RunOptions::default() };
        tokio::spawn(async move { on.generate("Yesterday, my dog died. Today, I got denied for a raise.", &[], &o, |_| {}).await.unwrap() })
    };
    assert_eq!(events(&on, &prefix, &opts(7)).await, events(&off, &prefix, &opts(7)).await, "a hit in a busy batch");
    busy.await.unwrap();
    on_server.shutdown().await;
    off_server.shutdown().await;
}

/// Every score as bits: (text, side, token ids, log-probabilities, KL and its top tokens).
type ScoreBits = Vec<(u32, bool, Vec<u32>, Vec<u32>, u64, Vec<(u32, u32)>)>;

async fn score_bits(client: &SteerClient, texts: &[(String, String)], tensors: &[SteeringTensor], unsteered: bool, kl: u32) -> ScoreBits {
    let scores = client.score(texts, tensors, &RunOptions::default(), unsteered, kl).await.unwrap();
    scores
        .iter()
        .map(|s| {
            let top = s.kl_top.iter().map(|k| (k.token_id, k.contribution.to_bits())).collect();
            (s.index, s.steered, s.token_ids.clone(), s.logprobs.iter().map(|x| x.to_bits()).collect(), s.next_token_kl.to_bits(), top)
        })
        .collect()
}

/// Score runs in the engine loop through the same cache: a sweep's unsteered pass leaves each
/// text's trunk, and every steered setting after it starts from its steered stream; texts over
/// one context start after it. The scores equal a server's without the cache bit for bit, and a
/// text scores the same alone as among others (no padding: each text is its own row).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scores_through_the_cache_equal_a_server_without_it_and_never_depend_on_the_other_texts() {
    let e = engine();
    let (off_server, off) = start_with(e.clone(), config(0)).await;
    let (on_server, on) = start_with(e.clone(), config(64 << 20)).await;
    let texts: Vec<(String, String)> = [
        ("", "I went to a wedding and the bride was lovely"),
        ("", "The weather today is cold and grey, and it rained all afternoon long"),
        ("Love", " is all you need"),
        // One context, three continuations: the context is computed once.
        ("The weather today in the north", " is cold"),
        ("The weather today in the north", " was lovely and warm all day"),
        ("The weather today in the north", " will be"),
    ]
    .iter()
    .map(|(p, c)| (p.to_string(), c.to_string()))
    .collect();
    assert_eq!(score_bits(&on, &texts, &[], false, 0).await, score_bits(&off, &texts, &[], false, 0).await, "unsteered: misses");
    for layer in [0, 1, 3] {
        let adds = vec![AdditionSpec::new(layer, 3.0, "Love "), AdditionSpec::new(layer, -3.0, "Hate")];
        let tensors = off.steering_tensors(&adds, &RunOptions::default()).await.unwrap();
        for (unsteered, kl) in [(false, 0), (true, 4)] {
            let want = score_bits(&off, &texts, &tensors, unsteered, kl).await;
            assert_eq!(score_bits(&on, &texts, &tensors, unsteered, kl).await, want, "layer {layer}, unsteered {unsteered}");
        }
        // One text alone: the same numbers as among the others.
        let alone = score_bits(&on, &texts[1..2], &tensors, true, 0).await;
        let among: ScoreBits =
            score_bits(&off, &texts, &tensors, true, 0).await.into_iter().filter(|s| s.0 == 1).map(|s| (0, s.1, s.2, s.3, s.4, s.5)).collect();
        assert_eq!(alone, among, "layer {layer}: text 1 alone");
    }
    on_server.shutdown().await;
    off_server.shutdown().await;
}
