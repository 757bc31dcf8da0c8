//! Continuous batching over gRPC: every in-flight request shares each decode step, and a request
//! cannot tell: its tokens are the same alone or inside a busy batch, its steering never reaches
//! another request's rows, a request that leaves (or whose client stops reading) is dropped at
//! the next step while the others finish unchanged.

use std::time::{Duration, Instant};

use futures::StreamExt;
use steer_client::v1::{generate_response, SamplingParameters};
use steer_client::{AdditionSpec, Comparison, RunOptions, SteerClient, SteeringTensor};
use steer_e2e::{engine, start, start_with};
use steer_server::ServeConfig;
use tonic::Code;

const PROMPT: &str = "I went up to my friend and said";

fn opts(sampling: SamplingParameters, n_tokens: u32, seed: u64) -> RunOptions {
    RunOptions { sampling, n_tokens, n_comparisons: 2, seed, ..RunOptions::default() }
}

/// Token ids of every row, unsteered then steered.
fn ids(c: &Comparison) -> Vec<Vec<u32>> {
    c.unsteered.iter().chain(&c.steered).map(|r| r.token_ids.clone()).collect()
}

/// Background requests with other prompts, steering, lengths and sampling, each streaming;
/// returns once every one of them has produced a token, with their tasks (which report when
/// they finished).
async fn busy_batch(client: &std::sync::Arc<SteerClient>) -> Vec<tokio::task::JoinHandle<Instant>> {
    let others: Vec<(&str, Vec<AdditionSpec>, RunOptions)> = vec![
        (
            "Yesterday, my dog died. Today, I got denied for a raise. I'm feeling",
            vec![AdditionSpec::new(3, 10.0, "Anger"), AdditionSpec::new(3, -10.0, "Calm")],
            RunOptions { n_tokens: 200, n_comparisons: 3, seed: 99, ..RunOptions::seed(true) },
        ),
        (
            "Hi",
            vec![AdditionSpec::new(0, 2.0, "Love")],
            RunOptions {
                n_tokens: 180,
                n_comparisons: 1,
                skip_unsteered: true,
                sampling: SamplingParameters { temperature: 0.7, top_k: 40, top_p: None, ..SamplingParameters::post() },
                ..RunOptions::default()
            },
        ),
        ("To see the eiffel tower, people flock to", vec![], RunOptions { n_tokens: 190, n_comparisons: 4, seed: 3, ..RunOptions::default() }),
    ];
    let mut tasks = vec![];
    for (prompt, adds, o) in others {
        let client = client.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        tasks.push((
            tokio::spawn(async move {
                let tensors = if adds.is_empty() { vec![] } else { client.steering_tensors(&adds, &o).await.unwrap() };
                let mut tx = Some(tx);
                client
                    .generate(prompt, &tensors, &o, |_| {
                        if let Some(t) = tx.take() {
                            let _ = t.send(());
                        }
                    })
                    .await
                    .unwrap();
                Instant::now()
            }),
            rx,
        ));
    }
    let mut handles = vec![];
    for (task, first_token) in tasks {
        first_token.await.expect("every background request streams");
        handles.push(task);
    }
    handles
}

async fn run(client: &SteerClient, prompt: &str, tensors: &[SteeringTensor], o: &RunOptions) -> (Comparison, Instant) {
    let c = client.generate(prompt, tensors, o, |_| {}).await.unwrap();
    (c, Instant::now())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_gives_the_same_tokens_alone_and_inside_a_busy_batch() {
    let (server, client) = start(engine()).await;
    let client = std::sync::Arc::new(client);
    let adds = [AdditionSpec::new(2, 8.0, "Love "), AdditionSpec::new(2, -8.0, "Hate")];
    let greedy = opts(SamplingParameters::greedy(), 20, 0);
    let sampled = opts(SamplingParameters::post(), 24, 7);
    let tensors = client.steering_tensors(&adds, &greedy).await.unwrap();
    let cases = [(tensors.clone(), greedy.clone()), (tensors.clone(), sampled.clone()), (vec![], sampled.clone())];
    let mut alone = vec![];
    for (t, o) in &cases {
        alone.push(ids(&run(&client, PROMPT, t, o).await.0));
    }
    // A prompt longer than the prefill chunk (32 positions): prefilled in pieces between steps.
    let long_prompt = PROMPT.repeat(6);
    let long_alone = ids(&run(&client, &long_prompt, &tensors, &sampled).await.0);
    assert_ne!(alone[1][0], alone[1][2], "steering changes the sampled rows");
    let others = busy_batch(&client).await;
    assert_eq!(ids(&run(&client, &long_prompt, &tensors, &sampled).await.0), long_alone, "long prompt");
    for o in others {
        o.await.unwrap();
    }
    for (i, (t, o)) in cases.iter().enumerate() {
        let others = busy_batch(&client).await;
        let (busy, done_at) = run(&client, PROMPT, t, o).await;
        assert_eq!(ids(&busy), alone[i], "case {i}: same tokens inside a busy batch");
        // The batch really was busy: the longer requests were still decoding when this one ended.
        for o in others {
            assert!(o.await.unwrap() > done_at, "case {i}: a background request ended first");
        }
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_leaves_is_dropped_and_the_others_finish_unchanged() {
    let (server, client) = start(engine()).await;
    let adds = [AdditionSpec::new(1, 4.0, "Love "), AdditionSpec::new(1, -4.0, "Hate")];
    let b = opts(SamplingParameters::post(), 30, 11);
    let tensors = client.steering_tensors(&adds, &b).await.unwrap();
    let alone = ids(&run(&client, PROMPT, &tensors, &b).await.0);
    // A long request starts, B joins, A's client leaves after a few tokens.
    let long = RunOptions { n_tokens: 220, n_comparisons: 6, ..RunOptions::default() };
    let mut a = client.generate_stream("I hate you because", &tensors, &long).await.unwrap();
    let _ = a.next().await.unwrap().unwrap();
    let joined = {
        let (client, tensors, b) = (&client, &tensors, &b);
        async move { run(client, PROMPT, tensors, b).await.0 }
    };
    let (busy, _) = tokio::join!(joined, async move {
        for _ in 0..3 {
            a.next().await;
        }
        drop(a);
    });
    assert_eq!(ids(&busy), alone);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_cancelled_and_stalls_nobody() {
    let mut cfg = ServeConfig::default();
    cfg.generation.stall_timeout = Duration::from_millis(500);
    let (server, client) = start_with(engine(), cfg).await;
    // A client with tiny HTTP/2 windows: once it stops reading, the server's sends back up at
    // once (a default window would absorb this whole small stream).
    let channel = tonic::transport::Endpoint::from_shared(server.url())
        .unwrap()
        .initial_stream_window_size(Some(1024))
        .initial_connection_window_size(Some(1024))
        .connect()
        .await
        .unwrap();
    let mut raw = steer_client::v1::generation_service_client::GenerationServiceClient::new(channel);
    let long = RunOptions { n_tokens: 200, n_comparisons: 8, top_logprobs: 5, ..RunOptions::default() };
    let setup = steer_client::v1::GenerateRequest { msg: Some(steer_client::v1::generate_request::Msg::Setup(long.setup("I hate you because", 0))) };
    let mut stalled = raw.generate(tokio_stream::iter(vec![setup])).await.unwrap().into_inner();
    let _ = stalled.next().await.unwrap().unwrap(); // admitted; now it reads nothing
                                                    // Others are served meanwhile (with the old batcher this hung forever).
    for seed in 0..3 {
        let c = tokio::time::timeout(Duration::from_secs(60), run(&client, PROMPT, &[], &opts(SamplingParameters::post(), 20, seed)))
            .await
            .expect("a stalled client held up the others")
            .0;
        assert_eq!(c.steered.len(), 2);
    }
    // When it reads again, it finds the buffered tokens and then ABORTED (not a clean end).
    let mut status = None;
    let mut finished = 0;
    while let Some(m) = tokio::time::timeout(Duration::from_secs(60), stalled.next()).await.expect("the stream ends") {
        match m {
            Ok(m) => finished += usize::from(matches!(m.event, Some(generate_response::Event::Finished(_)))),
            Err(s) => status = Some(s),
        }
    }
    let status = status.expect("a cancelled request ends with a status");
    assert_eq!(status.code(), Code::Aborted, "{status:?}");
    assert!(finished < 16, "its rows were freed before they finished");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_larger_than_the_budgets_is_invalid_naming_the_field() {
    let mut cfg = ServeConfig::default();
    cfg.generation.max_batch_rows = 4;
    cfg.generation.max_batch_tokens = 200;
    let (server, client) = start_with(engine(), cfg).await;
    let cases = [
        (RunOptions { n_comparisons: 3, n_tokens: 5, ..RunOptions::default() }, "setup.n_comparisons"),
        (RunOptions { n_comparisons: 2, n_tokens: 60, ..RunOptions::default() }, "setup.max_new_tokens"),
    ];
    for (o, field) in cases {
        let err = client.generate(PROMPT, &[], &o, |_| {}).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err}");
        assert!(err.to_string().contains(field), "{err}");
    }
    // Within the budgets: served.
    let ok = RunOptions { n_comparisons: 2, n_tokens: 30, ..RunOptions::default() };
    assert_eq!(client.generate(PROMPT, &[], &ok, |_| {}).await.unwrap().steered.len(), 2);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_past_its_deadline_leaves_and_the_others_finish_unchanged() {
    let (server, client) = start(engine()).await;
    let b = opts(SamplingParameters::post(), 40, 5);
    let alone = ids(&run(&client, PROMPT, &[], &b).await.0);
    // A joins with a deadline far shorter than its 250 tokens x 16 rows take.
    let mut raw = steer_client::v1::generation_service_client::GenerationServiceClient::connect(server.url()).await.unwrap();
    let long = RunOptions { n_tokens: 250, n_comparisons: 8, ..RunOptions::default() };
    let setup = steer_client::v1::GenerateRequest { msg: Some(steer_client::v1::generate_request::Msg::Setup(long.setup("I hate you because", 0))) };
    let mut req = tonic::Request::new(tokio_stream::iter(vec![setup]));
    req.set_timeout(Duration::from_millis(300));
    let a = async move { steer_e2e::error_codes(raw.generate(req).await).await };
    let (codes, (busy, _)) = tokio::join!(a, run(&client, PROMPT, &[], &b));
    assert!(matches!(codes[..], [Code::DeadlineExceeded] | [Code::Cancelled]), "{codes:?}");
    assert_eq!(ids(&busy), alone, "the other request finished unchanged");
    server.shutdown().await;
}
