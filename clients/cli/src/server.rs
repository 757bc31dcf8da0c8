//! Serving: both services in one process (the embedded default), or one of them per worker.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use steer_activation::{ActivationConfig, ActivationWorker};
use steer_generation::{GenerationConfig, GenerationWorker};
use steer_model::Engine;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;

/// Which services a process serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Both,
    Activation,
    Generation,
}

/// Configuration of a serving process.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub role: Role,
    pub activation: ActivationConfig,
    pub generation: GenerationConfig,
    /// How long open streams may run after the shutdown signal.
    pub grace: Duration,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            role: Role::Both,
            activation: ActivationConfig::default(),
            generation: GenerationConfig::default(),
            grace: Duration::from_secs(10),
        }
    }
}

/// Serves on `listener` until `shutdown` resolves, then drains for at most `cfg.grace`.
pub async fn serve(
    engine: Arc<Engine>,
    cfg: ServeConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let act = matches!(cfg.role, Role::Both | Role::Activation)
        .then(|| ActivationWorker::new(engine.clone(), cfg.activation.clone()).into_server().max_decoding_message_size(8 << 20));
    let gen = matches!(cfg.role, Role::Both | Role::Generation)
        .then(|| GenerationWorker::new(engine.clone(), cfg.generation.clone()).into_server().max_decoding_message_size(8 << 20));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tonic::transport::Server::builder()
        .add_optional_service(act)
        .add_optional_service(gen)
        .serve_with_incoming_shutdown(TcpIncoming::from(listener).with_nodelay(Some(true)), async move {
            shutdown.await;
            tracing::info!("shutting down: no new requests");
            let _ = stop_tx.send(());
        });
    let grace = cfg.grace;
    tokio::select! {
        r = server => r,
        _ = async move {
            if stop_rx.await.is_ok() {
                tokio::time::sleep(grace).await;
            } else {
                std::future::pending::<()>().await;
            }
        } => {
            tracing::warn!("grace period over: closing open streams");
            Ok(())
        }
    }
}

/// A server on an ephemeral loopback port, running in the background (embedded mode, tests).
pub struct LocalServer {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), tonic::transport::Error>>>,
}

impl LocalServer {
    pub async fn start(engine: Arc<Engine>, cfg: ServeConfig) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(serve(engine, cfg, listener, async move {
            let _ = rx.await;
        }));
        Ok(Self { addr, stop: Some(tx), task: Some(task) })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting, drains, and waits for the server to end.
    pub async fn shutdown(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for LocalServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}
