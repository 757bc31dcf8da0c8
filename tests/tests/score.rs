//! GenerationService.Score over real gRPC with the tiny model: the log-probabilities, sums,
//! perplexities and next-token KL against an independent computation from the engine's logits
//! in this test, with and without steering; bad input named.

use steer_client::steer_vector::{HookPoint, VectorTensor, Window};
use steer_client::{AdditionSpec, RunOptions, SteeringTensor};
use steer_e2e::{engine, start};
use steer_model::Addition;
use tonic::Code;

fn texts() -> Vec<(String, String)> {
    [("I went to a", " wedding and the bride was lovely"), ("The weather today", " is cold and grey"), ("", "Love is all you need")]
        .iter()
        .map(|(p, c)| (p.to_string(), c.to_string()))
        .collect()
}

/// log-softmax of a row of logits, in f64.
fn log_softmax(row: &[f32]) -> Vec<f64> {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = max + row.iter().map(|&x| (x as f64 - max).exp()).sum::<f64>().ln();
    row.iter().map(|&x| x as f64 - lse).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scores_perplexity_and_kl_equal_an_independent_computation() {
    let e = engine();
    let (server, client) = start(e.clone()).await;
    let opts = RunOptions::default();
    let adds = [AdditionSpec::new(2, 8.0, "Love "), AdditionSpec::new(2, -8.0, "Hate")];
    let tensors = client.steering_tensors(&adds, &opts).await.unwrap();
    let scores = client.score(&texts(), &tensors, &opts, true, 5).await.unwrap();
    assert_eq!(scores.len(), 6, "one score per text and side");
    let steer = Addition::new(HookPoint::ResidPre(2), tensors[0].header.shape[0] as usize, tensors[0].values.clone());
    for (i, (p, c)) in texts().iter().enumerate() {
        let prompt = e.encode(p, true).unwrap();
        let ids = [prompt.clone(), e.encode(c, false).unwrap()].concat();
        for (side, adds) in [(false, vec![]), (true, vec![steer.clone()])] {
            let s = scores.iter().find(|s| s.index == i as u32 && s.steered == side).unwrap();
            assert_eq!(s.token_ids, ids[prompt.len()..].to_vec());
            assert_eq!(s.prompt_tokens as usize, prompt.len());
            let logits = e.logits(std::slice::from_ref(&ids), &[adds]).unwrap()[0].to_vec2::<f32>().unwrap();
            let want: Vec<f64> = (prompt.len()..ids.len()).map(|t| log_softmax(&logits[t - 1])[ids[t] as usize]).collect();
            for (got, want) in s.logprobs.iter().zip(&want) {
                assert!((*got as f64 - want).abs() < 1e-4, "text {i} steered {side}: {got} vs {want}");
            }
            let sum: f64 = want.iter().sum();
            assert!((s.sum - sum).abs() < 1e-3 && (s.mean - sum / want.len() as f64).abs() < 1e-4);
            // Perplexity as the evals compute it.
            let ppl = (-s.mean).exp();
            assert!((ppl - (-sum / want.len() as f64).exp()).abs() / ppl < 1e-4);
        }
        assert!(
            scores.iter().filter(|s| s.index == i as u32).map(|s| s.sum).fold(f64::NAN, |a, b| if a.is_nan() { b } else { a - b }).abs() > 1e-3,
            "text {i}: the steering changed nothing"
        );
    }
    // KL(steered || unsteered) after text 0, and its largest terms, from the logits here.
    let (p, c) = &texts()[0];
    let ids = [e.encode(p, true).unwrap(), e.encode(c, false).unwrap()].concat();
    let last = |adds: Vec<Addition>| e.logits(std::slice::from_ref(&ids), &[adds]).unwrap()[0].to_vec2::<f32>().unwrap().pop().unwrap();
    let (ls, lu) = (log_softmax(&last(vec![steer.clone()])), log_softmax(&last(vec![])));
    let terms: Vec<f64> = ls.iter().zip(&lu).map(|(p, q)| p.exp() * (p - q)).collect();
    let kl: f64 = terms.iter().sum();
    let s0 = scores.iter().find(|s| s.index == 0 && s.steered).unwrap();
    assert!((s0.next_token_kl - kl).abs() < 1e-4 * kl.max(1.0), "{} vs {kl}", s0.next_token_kl);
    let mut order: Vec<usize> = (0..terms.len()).collect();
    order.sort_by(|&a, &b| terms[b].total_cmp(&terms[a]));
    assert_eq!(s0.kl_top.iter().map(|k| k.token_id as usize).collect::<Vec<_>>(), order[..5].to_vec());
    assert!(scores.iter().filter(|s| !s.steered).all(|s| s.kl_top.is_empty()));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_positions_and_library_steering_score_like_inline_tensors_and_bad_input_is_named() {
    let (server, client) = start(engine()).await;
    let opts = RunOptions::default();
    let dir = VectorTensor { point: HookPoint::BlockOutput(1), k: 1, values: (0..64).map(|i| (i as f32 * 0.37).sin()).collect() };
    let t = SteeringTensor::from_vector(&dir, Window::AllPositions);
    let a = client.score(&texts(), std::slice::from_ref(&t), &opts, false, 0).await.unwrap();
    let b = client.score(&texts(), &[t], &opts, true, 0).await.unwrap();
    let steered: Vec<_> = b.iter().filter(|s| s.steered).cloned().collect();
    assert_eq!(a, steered, "scores do not depend on the unsteered rows beside them");
    // Bad input.
    let err = client.score(&[], &[], &opts, false, 0).await.unwrap_err();
    assert!(err.code() == Code::InvalidArgument && err.to_string().contains("texts"), "{err}");
    let err = client.score(&[("x".into(), String::new())], &[], &opts, false, 0).await.unwrap_err();
    assert!(err.to_string().contains("texts[0].continuation"), "{err}");
    let err = client.score(&texts(), &[], &opts, false, 3).await.unwrap_err();
    assert!(err.to_string().contains("kl_top"), "{err}");
    let long = RunOptions { use_bos: false, ..RunOptions::default() };
    let err = client.score(&[(String::new(), "Hi".into())], &[], &long, false, 0).await.unwrap_err();
    assert!(err.to_string().contains("texts[0].prompt"), "{err}");
    server.shutdown().await;
}
