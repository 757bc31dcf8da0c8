//! EvalService: sweeps as jobs of the serving process, over real gRPC with the tiny model:
//! a sweep's rows equal the client-side sweep's; it can be watched, cancelled (keeping its
//! finished settings) and fetched again by id; bad requests are named.

use steer_client::eval::{self, Sweep};
use steer_client::v1::eval_service_client::EvalServiceClient;
use steer_client::v1::{CancelSweepRequest, EvalTextSet, ListSweepsRequest, StartSweepRequest, SweepKind, SweepState, WatchSweepRequest};
use steer_client::RunOptions;
use steer_e2e::{engine, start};
use tonic::Code;

fn request(kind: SweepKind, layers: Vec<u32>, coeffs: Vec<f64>) -> StartSweepRequest {
    StartSweepRequest {
        kind: kind as i32,
        plus: " wedding".into(),
        minus: " ".into(),
        layers,
        coeffs,
        use_bos: true,
        sets: vec![EvalTextSet { name: "w".into(), texts: vec!["The bride smiled at the groom.".into(), "We cut the cake.".into()] }],
        prompt: "I'm excited because I'm going to a".into(),
        top: 3,
        ..Default::default()
    }
}

async fn watch_to_end(c: &mut EvalServiceClient<tonic::transport::Channel>, id: &str) -> (Vec<u32>, steer_client::v1::Sweep) {
    let mut stream = c.watch_sweep(WatchSweepRequest { id: id.into() }).await.unwrap().into_inner();
    let mut seen = vec![];
    let mut last = None;
    while let Some(m) = stream.message().await.unwrap() {
        let s = m.sweep.unwrap();
        seen.push(s.done);
        last = Some(s);
    }
    (seen, last.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sweeps_run_as_jobs_that_can_be_watched_cancelled_and_fetched_again() {
    let (server, client) = start(engine()).await;
    let mut c = EvalServiceClient::connect(server.url()).await.unwrap();
    // A perplexity sweep: its rows are the client-side sweep's, one per setting and prompting.
    let started = c.start_sweep(request(SweepKind::Perplexity, vec![1, 2], vec![2.0])).await.unwrap().into_inner().sweep.unwrap();
    assert_eq!((started.state, started.total), (SweepState::Running as i32, 3));
    let (seen, done) = watch_to_end(&mut c, &started.id).await;
    assert_eq!(done.state, SweepState::Done as i32, "{}", done.error);
    assert_eq!(*seen.last().unwrap(), 3);
    let rows: Vec<serde_json::Value> = done.rows_json.iter().map(|r| serde_json::from_str(r).unwrap()).collect();
    let sweep = Sweep { plus: " wedding".into(), minus: " ".into(), layers: vec![1, 2], coeffs: vec![2.0] };
    let set = eval::TextSet { name: "w".into(), texts: vec!["The bride smiled at the groom.".into(), "We cut the cake.".into()] };
    let want = eval::perplexity_sweep(&client, &sweep, &[set], &RunOptions::default(), |_, _, _| {}).await.unwrap();
    // (through the same JSON text: serde_json's default float parsing may differ by an ulp)
    let want: Vec<serde_json::Value> = want.iter().map(|r| serde_json::from_str(&r.to_string()).unwrap()).collect();
    assert_eq!(rows, want);
    // Fetched again: watching an ended sweep gives its final state at once.
    let (again, last) = watch_to_end(&mut c, &started.id).await;
    assert_eq!((again.len(), last.rows_json.clone()), (1, done.rows_json.clone()));
    // Topic words and norms run as jobs too, with the client-side sweeps' rows.
    let mut tw = request(SweepKind::TopicWords, vec![1], vec![4.0]);
    (tw.n, tw.n_tokens, tw.positions, tw.words, tw.prompt) =
        (2, 4, vec!["front".into(), "end".into()], vec!["the".into()], "I went up to my friend and said".into());
    let id = c.start_sweep(tw).await.unwrap().into_inner().sweep.unwrap().id;
    let (_, tw) = watch_to_end(&mut c, &id).await;
    assert_eq!((tw.state, tw.done, tw.total), (SweepState::Done as i32, 2, 2), "{}", tw.error);
    let o = RunOptions { n_tokens: 4, ..RunOptions::default() };
    let sweep1 = Sweep { layers: vec![1], coeffs: vec![4.0], ..sweep.clone() };
    let want = eval::topic_words(
        &client,
        &sweep1,
        "I went up to my friend and said",
        &["the".into()],
        2,
        &[eval::Position::Front, eval::Position::End],
        &o,
        |_, _, _| {},
    )
    .await
    .unwrap();
    let json = |v: &[serde_json::Value]| v.iter().map(|r| r.to_string()).collect::<Vec<_>>();
    assert_eq!(tw.rows_json, json(&want));
    let mut nr = request(SweepKind::Norms, vec![0, 3], vec![10.0]);
    nr.prompt = "I think you're".into();
    let id = c.start_sweep(nr).await.unwrap().into_inner().sweep.unwrap().id;
    let (_, nr) = watch_to_end(&mut c, &id).await;
    let want = eval::norms(
        &client,
        &Sweep { layers: vec![0, 3], coeffs: vec![10.0], ..sweep.clone() },
        "I think you're",
        &RunOptions::default(),
        |_, _, _| {},
    )
    .await
    .unwrap();
    assert_eq!(nr.rows_json, json(&want));
    // A KL sweep.
    let kl = c.start_sweep(request(SweepKind::Kl, vec![1], vec![1.0, 4.0])).await.unwrap().into_inner().sweep.unwrap();
    let (_, kl) = watch_to_end(&mut c, &kl.id).await;
    assert_eq!((kl.state, kl.rows_json.len()), (SweepState::Done as i32, 2));
    // Cancelled after its first setting: it keeps that row and says so.
    let long =
        c.start_sweep(request(SweepKind::Perplexity, (0..4).collect(), (1..=40).map(f64::from).collect())).await.unwrap().into_inner().sweep.unwrap();
    let mut stream = c.watch_sweep(WatchSweepRequest { id: long.id.clone() }).await.unwrap().into_inner();
    while let Some(m) = stream.message().await.unwrap() {
        if m.sweep.unwrap().done >= 1 {
            break;
        }
    }
    let cancelled = c.cancel_sweep(CancelSweepRequest { id: long.id.clone() }).await.unwrap().into_inner().sweep.unwrap();
    assert_eq!(cancelled.state, SweepState::Cancelled as i32);
    assert!(!cancelled.rows_json.is_empty() && cancelled.rows_json.len() < 161, "{}", cancelled.rows_json.len());
    let (_, fetched) = watch_to_end(&mut c, &long.id).await;
    assert_eq!(fetched.rows_json, cancelled.rows_json, "nothing runs after the cancel");
    // Listed (without rows), newest last.
    let list = c.list_sweeps(ListSweepsRequest {}).await.unwrap().into_inner().sweeps;
    assert_eq!(list.len(), 5);
    assert_eq!(
        list.iter().map(|s| s.id.as_str()).filter(|i| [&started.id, &kl.id, &long.id].contains(&&i.to_string())).collect::<Vec<_>>(),
        [started.id.as_str(), kl.id.as_str(), long.id.as_str()]
    );
    assert!(list.iter().all(|s| s.rows_json.is_empty()));
    // Bad requests.
    let err = c.start_sweep(request(SweepKind::Perplexity, vec![], vec![1.0])).await.unwrap_err();
    assert!(err.code() == Code::InvalidArgument && err.message().starts_with("layers"), "{err}");
    let err = c.start_sweep(request(SweepKind::Unspecified, vec![1], vec![1.0])).await.unwrap_err();
    assert!(err.message().starts_with("kind"), "{err}");
    let err = c.start_sweep(request(SweepKind::Perplexity, vec![9], vec![1.0])).await.unwrap();
    let (_, failed) = watch_to_end(&mut c, &err.into_inner().sweep.unwrap().id).await;
    assert!(failed.state == SweepState::Failed as i32 && failed.error.contains("layer"), "{}", failed.error);
    assert_eq!(c.watch_sweep(WatchSweepRequest { id: "nope".into() }).await.unwrap_err().code(), Code::NotFound);
    server.shutdown().await;
}
