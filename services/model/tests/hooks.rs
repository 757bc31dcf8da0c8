//! The seams: hooks off, zero steering and unsteered rows in a mixed batch change nothing.

use std::ops::ControlFlow;
use std::path::PathBuf;

use steer_model::{Addition, Engine, GenerateOptions, HookPoint, LoadOptions, ModelSource, RowRequest, SamplingParams};

fn engine() -> Engine {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/tiny-gpt2");
    Engine::load(&ModelSource::Dir(dir), &LoadOptions::default()).unwrap()
}

/// Sampled as in the post (top_p 0.3, frequency penalty 1). On a random model's near-uniform
/// distribution, plain sampling lets float noise between paths (cache vs recompute) pick
/// another token within 15 steps; these settings keep the draws stable for these seeds.
fn sampled(prompt: &[u32], additions: Vec<Addition>, seed: u64) -> RowRequest {
    let sampling = SamplingParams { top_p: Some(0.3), frequency_penalty: 1.0, ..Default::default() };
    RowRequest { prompt: prompt.to_vec(), additions, sampling, seed }
}

fn gen(e: &Engine, rows: &[RowRequest]) -> Vec<Vec<u32>> {
    let opts = GenerateOptions { max_new_tokens: 15, stop_at_eos: false, ..Default::default() };
    e.generate(rows, &opts, |_| ControlFlow::Continue(())).unwrap().into_iter().map(|o| o.tokens).collect()
}

fn love_hate(e: &Engine, hook: HookPoint, coeff: f64) -> Addition {
    let acts = e.capture(&[e.encode("Love ", true).unwrap(), e.encode("Hate", true).unwrap()], &[hook]).unwrap();
    Addition::from_tensor(hook, &((&acts[0][0] - &acts[1][0]).unwrap() * coeff).unwrap()).unwrap()
}

#[test]
fn zero_steering_equals_baseline_bit_for_bit() {
    let e = engine();
    let p = e.encode("I hate you because", true).unwrap();
    let zero = Addition::new(HookPoint::ResidPre(2), 3, vec![0f32; 3 * e.info().d_model]);
    let base = e.logits(std::slice::from_ref(&p), &[vec![]]).unwrap()[0].to_vec2::<f32>().unwrap();
    let z = e.logits(std::slice::from_ref(&p), &[vec![zero.clone()]]).unwrap()[0].to_vec2::<f32>().unwrap();
    assert_eq!(base, z);
    let a = gen(&e, &[sampled(&p, vec![], 3)]);
    let b = gen(&e, &[sampled(&p, vec![zero], 3)]);
    assert_eq!(a, b);
}

#[test]
fn in_a_mixed_batch_only_steered_rows_change() {
    let e = engine();
    let p = e.encode("I hate you because", true).unwrap();
    let steer = love_hate(&e, HookPoint::ResidPre(2), 8.0);
    let alone = gen(&e, &[sampled(&p, vec![], 1)]);
    let steered_alone = gen(&e, &[sampled(&p, vec![steer.clone()], 1)]);
    let mixed = gen(&e, &[sampled(&p, vec![], 1), sampled(&p, vec![steer], 1)]);
    assert_eq!(mixed[0], alone[0]);
    assert_eq!(mixed[1], steered_alone[0]);
    assert_ne!(mixed[0], mixed[1]);
}

#[test]
fn block_output_l_is_resid_pre_l_plus_1() {
    let e = engine();
    let p = e.encode("The Eiffel Tower is in Rome", false).unwrap();
    let acts = e.capture(&[p], &[HookPoint::BlockOutput(1), HookPoint::ResidPre(2)]).unwrap();
    assert_eq!(acts[0][0].to_vec2::<f32>().unwrap(), acts[0][1].to_vec2::<f32>().unwrap());
}

#[test]
fn several_additions_at_several_layers_add_up() {
    let e = engine();
    let p = e.encode("I went up to my friend and said", true).unwrap();
    let a = love_hate(&e, HookPoint::ResidPre(1), 4.0);
    let b = love_hate(&e, HookPoint::ResidPre(3), -2.0);
    let both = vec![a.clone(), b.clone()];
    let la = e.logits(std::slice::from_ref(&p), &[both]).unwrap()[0].to_vec2::<f32>().unwrap();
    let only_a = e.logits(std::slice::from_ref(&p), &[vec![a]]).unwrap()[0].to_vec2::<f32>().unwrap();
    assert_ne!(la, only_a, "the second addition must act");
    // The first positions of the later stream carry the sum: check via capture of stream 3.
    let base = e.logits(&[p], &[vec![]]).unwrap()[0].to_vec2::<f32>().unwrap();
    assert_ne!(base, only_a);
}

#[test]
fn same_seed_same_tokens_and_cancellation_stops() {
    let e = engine();
    let p = e.encode("I went up to my friend and said", true).unwrap();
    assert_eq!(gen(&e, &[sampled(&p, vec![], 7)]), gen(&e, &[sampled(&p, vec![], 7)]));
    let opts = GenerateOptions { max_new_tokens: 30, stop_at_eos: false, ..Default::default() };
    let mut seen = 0;
    let out = e
        .generate(&[sampled(&p, vec![], 7)], &opts, |_| {
            seen += 1;
            if seen == 3 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .unwrap();
    assert_eq!(out[0].tokens.len(), 3);
    assert_eq!(out[0].finish, steer_model::FinishReason::Cancelled);
}

#[test]
fn shared_prefill_of_identical_rows_equals_each_row_alone() {
    let e = engine();
    let p = e.encode("I hate you because", true).unwrap();
    let steer = love_hate(&e, HookPoint::ResidPre(2), 8.0);
    let add = || vec![steer.clone()];
    // 3 unsteered + 3 steered, paired seeds: the prefill runs for 2 distinct rows and fans out.
    let rows: Vec<RowRequest> = (0..3).map(|i| sampled(&p, vec![], i)).chain((0..3).map(|i| sampled(&p, add(), i))).collect();
    let batched = gen(&e, &rows);
    for (i, r) in rows.iter().enumerate() {
        assert_eq!(batched[i], gen(&e, std::slice::from_ref(r))[0], "row {i}");
    }
    assert_ne!(batched[0], batched[1], "different seeds, different samples");
    // Without the cache (no fan-out) the tokens are the same too.
    let opts = GenerateOptions { max_new_tokens: 15, stop_at_eos: false, use_kv_cache: false, ..Default::default() };
    let uncached: Vec<Vec<u32>> = e.generate(&rows, &opts, |_| ControlFlow::Continue(())).unwrap().into_iter().map(|o| o.tokens).collect();
    assert_eq!(uncached, batched);
}

#[test]
fn a_prefill_in_chunks_matches_the_whole_prefill() {
    let e = engine();
    let p = e.encode("I went up to my friend and said", true).unwrap();
    let steer = love_hate(&e, HookPoint::ResidPre(2), 8.0); // 3 positions: the window spans chunks
    let rows = [
        RowRequest { sampling: SamplingParams::greedy(), ..sampled(&p, vec![steer.clone()], 0) },
        RowRequest { sampling: SamplingParams::greedy(), ..sampled(&p, vec![], 0) },
    ];
    let opts = GenerateOptions { max_new_tokens: 15, stop_at_eos: false, ..Default::default() };
    let run = |chunk: usize| {
        let mut pre = e.begin(&rows, &opts).unwrap();
        let mut seqs = loop {
            if let Some(s) = e.prefill_chunk(&mut pre, chunk).unwrap() {
                break s;
            }
        };
        for _ in 0..15 {
            for (row, s) in seqs.iter_mut().enumerate() {
                s.advance(row, 50256);
            }
            let mut live: Vec<&mut steer_model::Sequence> = seqs.iter_mut().filter(|s| !s.is_finished()).collect();
            if !live.is_empty() {
                e.step(&mut live).unwrap();
            }
        }
        seqs.into_iter().map(|s| s.tokens).collect::<Vec<_>>()
    };
    let whole = run(usize::MAX);
    assert_eq!(whole, e.generate(&rows, &opts, |_| ControlFlow::Continue(())).unwrap().into_iter().map(|o| o.tokens).collect::<Vec<_>>());
    for chunk in [1, 2, 4] {
        assert_eq!(run(chunk), whole, "chunks of {chunk}");
    }
    assert_ne!(whole[0], whole[1], "the steering acts through the chunks");
}

/// Tokens and their log-probabilities (as bits) of each row, when `requests` are prefilled in
/// chunks of `chunk` positions and decoded either each in forwards of its own or all in shared
/// forwards (`Engine::run`: every request's next chunk and every decoding row in one).
fn run_requests(e: &Engine, requests: &[Vec<RowRequest>], chunk: usize, shared: bool) -> Vec<Vec<(u32, u32)>> {
    use steer_model::{advance_all, Prefill, Sequence};
    let opts = GenerateOptions { max_new_tokens: 6, stop_at_eos: false, ..Default::default() };
    let mut prefills: Vec<Option<Prefill>> = requests.iter().map(|rows| Some(e.begin(rows, &opts).unwrap())).collect();
    let mut seqs: Vec<Vec<Sequence>> = requests.iter().map(|_| vec![]).collect();
    let mut out: Vec<Vec<(u32, u32)>> = requests.iter().flat_map(|rows| rows.iter().map(|_| vec![])).collect();
    let groups: Vec<Vec<usize>> = if shared { vec![(0..requests.len()).collect()] } else { (0..requests.len()).map(|i| vec![i]).collect() };
    while seqs.iter().zip(&prefills).any(|(s, p)| p.is_some() || s.iter().any(|s| !s.is_finished())) {
        for group in &groups {
            let mut joined = vec![];
            let mut ps: Vec<&mut Prefill> = vec![];
            let mut decoding: Vec<&mut Sequence> = vec![];
            for (i, (p, s)) in prefills.iter_mut().zip(seqs.iter_mut()).enumerate().filter(|(i, _)| group.contains(i)) {
                match p {
                    Some(p) => {
                        joined.push(i);
                        ps.push(p);
                    }
                    None => decoding.extend(s.iter_mut().filter(|s| !s.is_finished())),
                }
            }
            let done = e.run(&mut ps, chunk, &mut decoding).unwrap();
            for (i, d) in joined.into_iter().zip(done) {
                if let Some(d) = d {
                    prefills[i] = None;
                    seqs[i] = d;
                }
            }
        }
        let mut row = 0;
        for (s, rows) in seqs.iter_mut().zip(requests) {
            for ev in advance_all(s, e.tokenizer().bos_id()).into_iter().flatten() {
                out[row + ev.row].push((ev.token, ev.logprob.to_bits()));
            }
            row += rows.len();
        }
    }
    out
}

#[test]
fn requests_sharing_forwards_get_the_numbers_they_get_alone() {
    let e = engine();
    let steer = love_hate(&e, HookPoint::ResidPre(2), 8.0);
    let [p1, p2, p3] = ["I went up to my friend and said", "Hi", "To see the eiffel tower, people flock to"].map(|t| e.encode(t, true).unwrap());
    let requests = vec![
        // A comparison: the rows share the streams below the steering (a shared prefix).
        vec![sampled(&p1, vec![], 1), sampled(&p1, vec![steer.clone()], 1)],
        vec![sampled(&p2, vec![], 2)],
        // Identical rows, prefilled once and fanned out, sampled with their own seeds.
        vec![sampled(&p3, vec![steer.clone()], 3), sampled(&p3, vec![steer], 4)],
    ];
    for chunk in [3, 64] {
        let alone = run_requests(&e, &requests, chunk, false);
        let shared = run_requests(&e, &requests, chunk, true);
        assert!(alone.iter().all(|r| r.len() == 6), "every row generated its tokens");
        assert_eq!(alone, shared, "chunks of {chunk}");
    }
}
