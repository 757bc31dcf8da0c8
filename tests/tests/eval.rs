//! The eval functions of `steer_client::eval` (behind `steer eval` and the Python evals) against
//! independent computations in this test: perplexities from the engine's logits, the KL from
//! the last position's distributions, and word counts on the same completions.

use steer_client::eval::{self, Position, Sweep, TextSet};
use steer_client::RunOptions;
use steer_e2e::{engine, start};
use steer_model::{Addition, Engine, HookPoint};

fn log_softmax(row: &[f32]) -> Vec<f64> {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = max + row.iter().map(|&x| (x as f64 - max).exp()).sum::<f64>().ln();
    row.iter().map(|&x| x as f64 - lse).collect()
}

/// exp(-mean log P) of each text's own tokens after `prefix`, with `adds`.
fn ppl(e: &Engine, prefix: &[u32], texts: &[String], adds: &[Addition]) -> f64 {
    let (mut sum, mut n) = (0.0, 0);
    for t in texts {
        let ids = [prefix.to_vec(), e.encode(t, false).unwrap()].concat();
        let logits = e.logits(std::slice::from_ref(&ids), &[adds.to_vec()]).unwrap()[0].to_vec2::<f32>().unwrap();
        for p in prefix.len()..ids.len() {
            sum += log_softmax(&logits[p - 1])[ids[p] as usize];
            n += 1;
        }
    }
    (-sum / n as f64).exp()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn perplexity_kl_and_topic_words_equal_independent_computations() {
    let e = engine();
    let (server, client) = start(e.clone()).await;
    let opts = RunOptions { seed: 5, n_tokens: 8, ..RunOptions::default() };
    let sweep = Sweep { plus: " wedding".into(), minus: " ".into(), layers: vec![2], coeffs: vec![4.0] };
    let set = TextSet { name: "w".into(), texts: vec!["The bride smiled at the groom.".into(), "We cut the cake.".into()] };
    let rows = eval::perplexity_sweep(&client, &sweep, std::slice::from_ref(&set), &opts, |_, _, _| {}).await.unwrap();
    // The steering tensor here: 4 * (act(BOS " wedding") - act(BOS " ")), both two tokens.
    let point = HookPoint::ResidPre(2);
    let acts = e.capture(&[e.encode(" wedding", true).unwrap(), e.encode(" ", true).unwrap()], &[point]).unwrap();
    let steer = Addition::from_tensor(point, &((&acts[0][0] - &acts[1][0]).unwrap() * 4.0).unwrap()).unwrap();
    let bos = e.encode("", true).unwrap();
    let (u, s) = (ppl(&e, &bos, &set.texts, &[]), ppl(&e, &bos, &set.texts, std::slice::from_ref(&steer)));
    let m = &rows[0]["sets"]["w"];
    let close = |a: f64, b: f64| (a - b).abs() / b < 1e-4;
    assert!(close(m["perplexity_unsteered"].as_f64().unwrap(), u) && close(m["perplexity_steered"].as_f64().unwrap(), s), "{m} vs {u} {s}");
    assert!(close(m["ratio"].as_f64().unwrap(), s / u));
    // Prompting: the plus text before each text, no steering.
    let p = ppl(&e, &e.encode(" wedding", true).unwrap(), &set.texts, &[]);
    assert!(close(rows[1]["sets"]["w"]["perplexity_steered"].as_f64().unwrap(), p), "{}", rows[1]);

    // KL after a prompt.
    let prompt = "I'm excited because I'm going to a";
    let kl_rows = eval::kl_sweep(&client, &sweep, prompt, 3, &opts, |_, _, _| {}).await.unwrap();
    let ids = e.encode(prompt, true).unwrap();
    let last = |adds: Vec<Addition>| log_softmax(&e.logits(std::slice::from_ref(&ids), &[adds]).unwrap()[0].to_vec2::<f32>().unwrap().pop().unwrap());
    let (ps, pu) = (last(vec![steer]), last(vec![]));
    let kl: f64 = ps.iter().zip(&pu).map(|(a, b)| a.exp() * (a - b)).sum();
    assert!((kl_rows[0]["kl"].as_f64().unwrap() - kl).abs() < 1e-4 * kl.max(1.0), "{} vs {kl}", kl_rows[0]["kl"]);
    assert_eq!(kl_rows[0]["top"].as_array().unwrap().len(), 3);

    // Topic words on the same completions, counted here: the words of the first unsteered one.
    let prompt = "I went up to my friend and said";
    let o = RunOptions { n_comparisons: 3, ..opts.clone() };
    let tensors = client.steering_tensors(&sweep.additions(2, 4.0), &opts).await.unwrap();
    let cmp = client.generate(prompt, &tensors, &o, |_| {}).await.unwrap();
    let words: Vec<String> =
        cmp.unsteered[0].text.split(' ').map(|w| w.trim_matches(|c: char| !c.is_alphanumeric()).to_lowercase()).filter(|w| w.len() > 2).collect();
    assert!(!words.is_empty(), "{:?}", cmp.unsteered[0].text);
    let count = |text: &str| {
        let lower = text.to_lowercase();
        lower.split(|c: char| !c.is_alphanumeric()).filter(|w| words.iter().any(|x| x == w)).count()
    };
    let mean = |rows: &[steer_client::Completion]| rows.iter().map(|c| count(&c.text)).sum::<usize>() as f64 / 3.0;
    let t = eval::topic_words(&client, &sweep, prompt, &words, 3, &[Position::Front], &opts, |_, _, _| {}).await.unwrap();
    assert_eq!(t[0]["mean_count_unsteered"].as_f64().unwrap(), mean(&cmp.unsteered));
    assert_eq!(t[0]["mean_count_steered"].as_f64().unwrap(), mean(&cmp.steered));
    assert!(t[0]["mean_count_unsteered"].as_f64().unwrap() > 0.0);
    server.shutdown().await;
}
