//! Status codes survive every hop: a worker's status reaches the client (and the caller of
//! `calculate_and_apply_steering_vector`) with its code and details, whichever service raised it.

use std::sync::Arc;

use futures::StreamExt;
use steer_client::v1::{generate_response, GenerateSetup};
use steer_client::{AdditionSpec, ClientError, RunOptions, SteerClient};
use steer_e2e::{engine, start, start_with};
use steer_server::{ServeConfig, Services};
use tonic::Code;
use tonic_types::StatusExt;

fn love_hate(layer: u32) -> Vec<AdditionSpec> {
    vec![AdditionSpec::new(layer, 4.0, "Love "), AdditionSpec::new(layer, -4.0, "Hate")]
}

fn status(e: ClientError) -> tonic::Status {
    match e {
        ClientError::Status(s) => s,
        other => panic!("expected a status, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_argument_from_the_activation_service_reaches_the_caller() {
    let (server, client) = start(engine()).await;
    let err = client.calculate_and_apply_steering_vector("I hate you", &love_hate(9), &RunOptions::default()).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let s = status(err);
    let bad = s.get_details_bad_request().expect("BadRequest details survive the hop");
    assert_eq!(bad.field_violations[0].field, "additions[0].layer");
    let huge = [AdditionSpec::new(1, 1e300, "Love "), AdditionSpec::new(1, -1e300, "Hate")];
    let err = client.steering_tensors(&huge, &RunOptions::default()).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    assert!(err.to_string().contains("additions[0].coeff"), "{err}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_argument_from_the_generation_service_is_not_retried_and_keeps_its_field() {
    let (server, client) = start(engine()).await;
    // Valid steering (8 positions with BOS), a 2-token prompt: only generation can refuse it.
    let adds = [AdditionSpec::new(1, 4.0, "I talk about weddings constantly"), AdditionSpec::new(1, -4.0, "Hate")];
    let tensors = client.steering_tensors(&adds, &RunOptions::default()).await.unwrap();
    let mut seen = 0;
    let err = client.generate("Hi", &tensors, &RunOptions::default(), |_| seen += 1).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(seen, 0);
    let bad = status(err).get_details_bad_request().expect("details");
    assert_eq!(bad.field_violations[0].field, "setup.prompt");
    let top = RunOptions { top_logprobs: 21, ..RunOptions::default() };
    let err = client.generate("I hate you because", &tensors, &top, |_| {}).await.unwrap_err();
    assert!(err.to_string().contains("setup.top_logprobs"), "{err}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resource_exhausted_from_a_full_queue_reaches_the_caller() {
    let long = RunOptions { n_tokens: 200, n_comparisons: 8, ..RunOptions::default() };
    let mut cfg = ServeConfig::default();
    cfg.generation.max_queue = 1;
    // The KV budget holds exactly one such request ("I hate you because" is 5 tokens with BOS),
    // and A's client reads so little that A stays in the batch (stall timeout far away).
    cfg.generation.max_batch_tokens = 16 * (5 + 200);
    cfg.generation.stall_timeout = std::time::Duration::from_secs(600);
    let (server, client) = start_with(engine(), cfg).await;
    // A holds the budget (its first token proves it was admitted) ...
    let mut a = client.generate_stream("I hate you because", &[], &long).await.unwrap();
    assert!(matches!(a.next().await.unwrap().unwrap().event, Some(generate_response::Event::Token(_))));
    // ... B waits in the one queue place, so C is refused at once.
    let b = client.generate_stream("I hate you because", &[], &long).await.unwrap();
    let err = client.generate("I hate you because", &[], &long, |_| {}).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err}");
    drop((a, b));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unavailable_while_the_model_loads_reaches_the_caller() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (services, health) = Services::new(ServeConfig::default()).await.unwrap(); // never made ready
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(steer_server::serve(Arc::new(services), health, listener, async move {
        let _ = stopped.await;
    }));
    let client = SteerClient::connect(&url, std::slice::from_ref(&url)).await.unwrap();
    let err = client.steering_tensors(&love_hate(1), &RunOptions::default()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err}");
    let err = client.generate("I hate you", &[], &RunOptions::default(), |_| {}).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err}");
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_exceeded_reaches_the_caller_of_a_raw_stream() {
    let (server, _client) = start(engine()).await;
    let mut g = steer_client::v1::generation_service_client::GenerationServiceClient::connect(server.url()).await.unwrap();
    let setup = GenerateSetup {
        prompt: "I hate you because".into(),
        use_bos: true,
        sampling: Some(steer_client::v1::SamplingParameters::post()),
        n_comparisons: 8,
        max_new_tokens: 250,
        ..Default::default()
    };
    let msgs = vec![steer_client::v1::GenerateRequest { msg: Some(steer_client::v1::generate_request::Msg::Setup(setup)) }];
    let mut req = tonic::Request::new(tokio_stream::iter(msgs));
    req.set_timeout(std::time::Duration::from_millis(200));
    let codes = steer_e2e::error_codes(g.generate(req).await).await;
    assert!(matches!(codes[..], [Code::DeadlineExceeded] | [Code::Cancelled]), "{codes:?}");
    server.shutdown().await;
}
