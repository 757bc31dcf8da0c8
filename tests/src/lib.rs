//! What the end-to-end tests share: the committed tiny random GPT-2, an embedded server on an
//! ephemeral loopback port, and a client of it.

use std::path::PathBuf;
use std::sync::Arc;

use steer_client::SteerClient;
use steer_model::{Engine, LoadOptions, ModelSource};
use steer_server::{LocalServer, ServeConfig};

/// `fixtures/tiny-gpt2`: 4 layers, d_model 64, the real GPT-2 tokenizer.
pub fn tiny_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/tiny-gpt2")
}

pub fn engine() -> Arc<Engine> {
    Arc::new(Engine::load(&ModelSource::Dir(tiny_dir()), &LoadOptions::default()).expect("the tiny fixture loads"))
}

/// Both services on loopback with `cfg`, and a client of them.
pub async fn start_with(engine: Arc<Engine>, cfg: ServeConfig) -> (LocalServer, SteerClient) {
    let server = LocalServer::start(engine, cfg).await.expect("bind loopback");
    let client = SteerClient::connect(&server.url(), &[server.url()]).await.expect("connect");
    (server, client)
}

pub async fn start(engine: Arc<Engine>) -> (LocalServer, SteerClient) {
    start_with(engine, ServeConfig::default()).await
}

/// The error codes a generation call ends with: its own status, or those its stream yields.
pub async fn error_codes(call: Result<tonic::Response<tonic::Streaming<steer_client::v1::GenerateResponse>>, tonic::Status>) -> Vec<tonic::Code> {
    use futures::StreamExt;
    match call {
        Err(s) => vec![s.code()],
        Ok(r) => r.into_inner().filter_map(|m| async move { m.err().map(|e| e.code()) }).collect().await,
    }
}
