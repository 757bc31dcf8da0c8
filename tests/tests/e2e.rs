//! End to end over real gRPC on loopback (ephemeral ports), with the tiny random GPT-2.

use std::ops::ControlFlow;
use std::sync::Arc;

use futures::StreamExt;
use steer_client::presets;
use steer_client::v1::activation_service_client::ActivationServiceClient;
use steer_client::v1::generation_service_client::GenerationServiceClient;
use steer_client::v1::{
    generate_request, generate_response, ActivationServiceGetModelInfoRequest, GenerateRequest, GenerateSetup, GetActivationsRequest, Hook,
    HookPoint as PHook, SamplingParameters, ShortPrompt,
};
use steer_client::{AdditionSpec, RunOptions, SteerClient};
use steer_e2e::{engine, start};
use steer_model::{Addition, Engine, GenerateOptions, HookPoint, LoadOptions, ModelSource, RowRequest, WeightDtype};
use steer_proto::wire;
use tonic::Code;
use tonic_types::StatusExt;

fn short(mut o: RunOptions, tokens: u32) -> RunOptions {
    o.n_tokens = tokens;
    o
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seeds_three_examples_produce_paired_completions() {
    let (server, client) = start(engine()).await;
    for name in ["love-hate", "weddings", "eiffel"] {
        let mut p = presets::find(name).unwrap();
        presets::scale_layers(&mut p, 4);
        let opts = short(p.options.clone(), 12);
        let cmp = client.calculate_and_apply_steering_vector(p.prompt, &p.additions, &opts).await.unwrap();
        assert_eq!(cmp.unsteered.len(), 3, "{name}");
        assert_eq!(cmp.steered.len(), 3, "{name}");
        for (u, s) in cmp.unsteered.iter().zip(&cmp.steered) {
            assert_eq!(u.seed, s.seed, "{name}: row i of each side shares its seed");
            assert_eq!(u.token_ids.len(), 12);
        }
        let differs = cmp.unsteered.iter().zip(&cmp.steered).any(|(u, s)| u.token_ids != s.token_ids);
        assert!(differs, "{name}: steering changed nothing");
        // Same seed + same request = same tokens.
        let again = client.calculate_and_apply_steering_vector(p.prompt, &p.additions, &opts).await.unwrap();
        assert_eq!(again.steered, cmp.steered, "{name}");
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_coefficient_gives_the_unsteered_completions() {
    let (server, client) = start(engine()).await;
    let adds = [AdditionSpec::new(2, 0.0, "Love "), AdditionSpec::new(2, -0.0, "Hate")];
    let cmp = client.calculate_and_apply_steering_vector("I hate you because", &adds, &short(RunOptions::default(), 10)).await.unwrap();
    for (u, s) in cmp.unsteered.iter().zip(&cmp.steered) {
        assert_eq!(u.token_ids, s.token_ids);
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn greedy_steered_output_equals_the_in_process_engine() {
    greedy_steered_over_grpc_equals_in_process(engine()).await;
}

/// In every weight dtype the services send f32 steering tensors and steer exactly as the
/// engine in process does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_weight_dtype_steers_over_grpc_as_in_process() {
    for dtype in [WeightDtype::Bf16, WeightDtype::F16, WeightDtype::Q8_0] {
        let e = Engine::load(&ModelSource::Dir(steer_e2e::tiny_dir()), &LoadOptions { dtype: Some(dtype), ..Default::default() }).unwrap();
        greedy_steered_over_grpc_equals_in_process(Arc::new(e)).await;
    }
}

async fn greedy_steered_over_grpc_equals_in_process(e: Arc<Engine>) {
    let (server, client) = start(e.clone()).await;
    let adds = [AdditionSpec::new(2, 8.0, "Love "), AdditionSpec::new(2, -8.0, "Hate")];
    let mut opts = short(RunOptions::default(), 15);
    opts.sampling = SamplingParameters { temperature: 0.0, ..opts.sampling };
    opts.n_comparisons = 1;
    let mut act = ActivationServiceClient::connect(server.url()).await.unwrap();
    let info = act.get_model_info(ActivationServiceGetModelInfoRequest {}).await.unwrap().into_inner().info.unwrap();
    assert_eq!(info.dtype, steer_common::convert::proto_dtype(e.info().dtype) as i32, "model info names the weights' dtype");
    let tensors = client.steering_tensors(&adds, &opts).await.unwrap();
    assert_eq!(tensors[0].header.dtype, steer_client::v1::Dtype::F32 as i32, "{}: steering travels in f32", e.info().dtype);
    let cmp = client.calculate_and_apply_steering_vector("I hate you because", &adds, &opts).await.unwrap();

    let hook = HookPoint::ResidPre(2);
    let acts = e.capture(&[e.encode("Love ", true).unwrap(), e.encode("Hate", true).unwrap()], &[hook]).unwrap();
    let steer = ((&acts[0][0] - &acts[1][0]).unwrap() * 8.0).unwrap();
    let sampling = steer_common::convert::sampling(&opts.sampling).unwrap();
    let row = RowRequest {
        prompt: e.encode("I hate you because", true).unwrap(),
        additions: vec![Addition::from_tensor(hook, &steer).unwrap()],
        sampling,
        seed: 0,
    };
    let gen = GenerateOptions { max_new_tokens: 15, ..Default::default() };
    let local = e.generate(&[row], &gen, |_| ControlFlow::Continue(())).unwrap();
    assert_eq!(cmp.steered[0].token_ids, local[0].tokens, "{}", e.info().dtype);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_serves_repeated_prompts_without_recomputing() {
    let (server, client) = start(engine()).await;
    let adds = [AdditionSpec::new(1, 4.0, "I talk about weddings constantly  "), AdditionSpec::new(1, -4.0, "I do not talk")];
    let opts = RunOptions::default();
    client.steering_tensors(&adds, &opts).await.unwrap();
    let first = client.activation_info().await.unwrap().cache.unwrap();
    assert_eq!((first.misses, first.hits), (2, 0));
    let again = client.steering_tensors(&adds, &opts).await.unwrap();
    let second = client.activation_info().await.unwrap().cache.unwrap();
    assert_eq!(second.misses, 2, "nothing recomputed");
    assert_eq!(second.hits, 2);
    // Space padding: "I do not talk" padded to the longer prompt's 8 tokens (with BOS).
    assert_eq!(again[0].header.shape[0], 8);
    // Concurrent identical requests for a new prompt: computed once.
    let mut act = ActivationServiceClient::connect(server.url()).await.unwrap();
    let req = GetActivationsRequest {
        prompts: vec!["A brand new prompt".into()],
        use_bos: true,
        points: vec![PHook { hook: Hook::BlockOutput as i32, layer: 2 }],
        ..Default::default()
    };
    let calls = (0..4).map(|_| {
        let mut c = act.clone();
        let r = req.clone();
        async move { c.get_activations(r).await.unwrap().into_inner().collect::<Vec<_>>().await }
    });
    for msgs in futures::future::join_all(calls).await {
        assert!(msgs.iter().all(|m| m.is_ok()));
        assert_eq!(msgs.len(), 3, "tokens, header, one chunk");
    }
    let third = act.get_model_info(ActivationServiceGetModelInfoRequest {}).await.unwrap().into_inner().info.unwrap().cache.unwrap();
    assert_eq!(third.misses, 3);
    assert_eq!(third.hits, 2 + 3);
    server.shutdown().await;
}

fn setup(prompt: &str) -> GenerateSetup {
    GenerateSetup {
        prompt: prompt.into(),
        use_bos: true,
        sampling: Some(SamplingParameters::post()),
        n_comparisons: 1,
        max_new_tokens: 4,
        ..Default::default()
    }
}

async fn generate_status(url: &str, msgs: Vec<GenerateRequest>) -> Result<(), tonic::Status> {
    let mut g = GenerationServiceClient::connect(url.to_string()).await.unwrap();
    let mut s = g.generate(tokio_stream::iter(msgs)).await?.into_inner();
    while let Some(m) = s.next().await {
        m?;
    }
    Ok(())
}

fn tensor_msgs(values: &[f32], shape: &[usize], layer: u32) -> Vec<GenerateRequest> {
    let (h, chunks) = wire::encode_f32(values, shape, Some(PHook { hook: Hook::ResidPre as i32, layer }), 0);
    let mut v = vec![GenerateRequest { msg: Some(generate_request::Msg::Tensor(h)) }];
    v.extend(chunks.into_iter().map(|c| GenerateRequest { msg: Some(generate_request::Msg::Chunk(c)) }));
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_invalid_input_gets_invalid_argument_naming_the_field() {
    let (server, client) = start(engine()).await;
    let url = server.url();
    let d = 64;
    let with = |s: GenerateSetup, extra: Vec<GenerateRequest>| {
        let mut v = vec![GenerateRequest { msg: Some(generate_request::Msg::Setup(s)) }];
        v.extend(extra);
        v
    };
    let one = |s: GenerateSetup| with(GenerateSetup { n_tensors: 1, ..s }, vec![]);
    let cases: Vec<(Vec<GenerateRequest>, &str)> = vec![
        (with(GenerateSetup { prompt: String::new(), ..setup("x") }, vec![]), "setup.prompt"),
        (
            {
                let mut m = one(setup("I hate you"));
                m.extend(tensor_msgs(&vec![0.0; d], &[1, d], 9));
                m
            },
            "tensors[0].point.layer",
        ),
        (
            {
                let mut m = one(setup("I hate you"));
                m.extend(tensor_msgs(&vec![0.0; d + 1], &[1, d + 1], 1));
                m
            },
            "tensors[0].shape",
        ),
        (
            {
                let mut m = one(setup("Hi"));
                m.extend(tensor_msgs(&vec![0.0; 5 * d], &[5, d], 1));
                m
            },
            "setup.prompt",
        ),
        (
            {
                let mut m = one(setup("I hate you"));
                m.extend(tensor_msgs(&[f32::NAN; 64], &[1, d], 1));
                m
            },
            "tensors[0].data",
        ),
        (
            {
                let mut m = one(setup("I hate you"));
                let mut t = tensor_msgs(&vec![0.0; 2 * d], &[2, d], 1);
                t.pop(); // the only chunk
                m.extend(t);
                m
            },
            "tensors[0].chunks",
        ),
        (
            {
                let mut m = one(setup("I hate you"));
                // A q8_0 tensor: a weights-only dtype, never steering data.
                let (h, chunks) =
                    wire::encode(steer_client::v1::Dtype::Q80, &vec![0.0; 2 * d], &[2, d], Some(PHook { hook: Hook::ResidPre as i32, layer: 1 }), 0);
                m.push(GenerateRequest { msg: Some(generate_request::Msg::Tensor(h)) });
                m.extend(chunks.into_iter().map(|c| GenerateRequest { msg: Some(generate_request::Msg::Chunk(c)) }));
                m
            },
            "tensors[0].dtype",
        ),
        (with(GenerateSetup { max_new_tokens: 100_000, ..setup("x") }, vec![]), "setup.max_new_tokens"),
        (with(GenerateSetup { n_comparisons: 1000, ..setup("x") }, vec![]), "setup.n_comparisons"),
        (
            with(GenerateSetup { sampling: Some(SamplingParameters { top_p: Some(1.5), ..SamplingParameters::post() }), ..setup("x") }, vec![]),
            "top_p",
        ),
        (
            with(GenerateSetup { sampling: Some(SamplingParameters { top_p: Some(0.0), ..SamplingParameters::post() }), ..setup("x") }, vec![]),
            "top_p",
        ),
        (
            with(GenerateSetup { sampling: Some(SamplingParameters { temperature: -1.0, ..SamplingParameters::post() }), ..setup("x") }, vec![]),
            "temperature",
        ),
        (tensor_msgs(&[0.0; 64], &[1, d], 1), "setup"),
    ];
    for (msgs, field) in cases {
        let err = generate_status(&url, msgs).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{field}: {err:?}");
        assert!(err.message().contains(field), "{field}: {}", err.message());
        let bad = err.get_details_bad_request().expect("google.rpc.BadRequest details");
        assert!(bad.field_violations.iter().any(|v| v.field.contains(field)), "{field}: {bad:?}");
    }
    // Pad mode accepts the short prompt.
    let mut m = vec![GenerateRequest {
        msg: Some(generate_request::Msg::Setup(GenerateSetup { n_tensors: 1, short_prompt: ShortPrompt::Pad as i32, ..setup("Hi") })),
    }];
    m.extend(tensor_msgs(&vec![0.0; 5 * d], &[5, d], 1));
    generate_status(&url, m).await.unwrap();
    // Activation side: layer out of range, strict lengths, no prompts.
    let bad = [AdditionSpec::new(7, 1.0, "a")];
    let err = client.steering_tensors(&bad, &RunOptions::default()).await.unwrap_err();
    assert!(err.to_string().contains("additions[0].layer"), "{err}");
    let unequal = [AdditionSpec::new(1, 1.0, "Love "), AdditionSpec::new(1, -1.0, "I do not love")];
    let strict = RunOptions { strict_lengths: true, ..RunOptions::default() };
    let err = client.steering_tensors(&unequal, &strict).await.unwrap_err();
    assert!(err.to_string().contains("additions[0].prompt"), "{err}");
    let mut act = ActivationServiceClient::connect(url.clone()).await.unwrap();
    let err = act.get_activations(GetActivationsRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    // The server still serves after all that.
    let adds = [AdditionSpec::new(1, 1.0, "Love "), AdditionSpec::new(1, -1.0, "Hate")];
    client.calculate_and_apply_steering_vector("I hate you", &adds, &short(RunOptions::default(), 3)).await.unwrap();
    server.shutdown().await;
}

/// A short request completes (bounded wait): the server's one engine slot is free.
async fn assert_slot_free(client: &SteerClient) {
    let adds = [AdditionSpec::new(1, 2.0, "Love "), AdditionSpec::new(1, -2.0, "Hate")];
    let quick = RunOptions { n_tokens: 5, n_comparisons: 1, ..RunOptions::default() };
    let cmp =
        tokio::time::timeout(std::time::Duration::from_secs(60), client.calculate_and_apply_steering_vector("I hate you because", &adds, &quick))
            .await
            .expect("the slot was not freed")
            .unwrap();
    assert_eq!(cmp.steered[0].token_ids.len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_stream_frees_its_slot() {
    let (server, client) = start(engine()).await;
    let adds = [AdditionSpec::new(1, 2.0, "Love "), AdditionSpec::new(1, -2.0, "Hate")];
    let long = RunOptions { n_tokens: 200, n_comparisons: 4, ..RunOptions::default() };
    let tensors = client.steering_tensors(&adds, &long).await.unwrap();
    let mut stream = client.generate_stream("I hate you because", &tensors, &long).await.unwrap();
    // Read a few tokens, then walk away.
    for _ in 0..3 {
        let m = stream.next().await.unwrap().unwrap();
        assert!(matches!(m.event, Some(generate_response::Event::Token(_))));
    }
    drop(stream);
    // With one slot, the next request only completes if the first one let go.
    assert_slot_free(&client).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_stream_as_valid_utf8_deltas_that_add_up_to_the_text() {
    let (server, client) = start(engine()).await;
    let adds = [AdditionSpec::new(1, 2.0, "Love "), AdditionSpec::new(1, -2.0, "Hate")];
    let opts = RunOptions { n_tokens: 30, n_comparisons: 2, top_logprobs: 3, ..RunOptions::default() };
    let tensors = client.steering_tensors(&adds, &opts).await.unwrap();
    let mut stream = client.generate_stream("I hate you because", &tensors, &opts).await.unwrap();
    let mut texts = vec![String::new(); 4];
    let mut finished = 0;
    while let Some(m) = stream.next().await {
        match m.unwrap().event.unwrap() {
            generate_response::Event::Token(t) => {
                assert_eq!(t.top_logprobs.len(), 3);
                assert!(t.logprob <= 0.0);
                texts[t.row as usize].push_str(&t.text_delta);
            }
            generate_response::Event::Finished(f) => {
                finished += 1;
                assert!(f.text.starts_with(&texts[f.row as usize]) || f.text.contains('\u{FFFD}'));
                assert_eq!(f.generated_tokens, 30);
            }
        }
    }
    assert_eq!(finished, 4);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passed_deadline_stops_the_generation_and_frees_the_slot() {
    let (server, client) = start(engine()).await;
    let mut g = GenerationServiceClient::connect(server.url()).await.unwrap();
    let msgs = vec![GenerateRequest {
        msg: Some(generate_request::Msg::Setup(GenerateSetup { n_comparisons: 8, max_new_tokens: 250, ..setup("I hate you because") })),
    }];
    let mut req = tonic::Request::new(tokio_stream::iter(msgs));
    req.set_timeout(std::time::Duration::from_millis(300));
    let started = std::time::Instant::now();
    let outcome = match g.generate(req).await {
        Err(s) => Err(s),
        Ok(resp) => {
            let mut s = resp.into_inner();
            let mut err = None;
            while let Some(m) = s.next().await {
                if let Err(e) = m {
                    err = Some(e);
                    break;
                }
            }
            err.map_or(Ok(()), Err)
        }
    };
    let status = outcome.expect_err("the deadline must end the stream");
    assert!(matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled), "{status:?}");
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
    // The one slot is free again: a following request completes.
    assert_slot_free(&client).await;
    server.shutdown().await;
}
