//! A server on an ephemeral loopback port, running in the background: the embedded mode of
//! `steer run`, the benchmarks and the end-to-end tests.

use std::net::SocketAddr;
use std::sync::Arc;

use steer_model::Engine;
use tokio::net::TcpListener;

use crate::config::ServeConfig;
use crate::error::ServerError;
use crate::serve::serve;
use crate::services::Services;

pub struct LocalServer {
    pub addr: SocketAddr,
    tls: bool,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), ServerError>>>,
}

impl LocalServer {
    /// Serves `engine` (already loaded) on 127.0.0.1 at an ephemeral port.
    pub async fn start(engine: Arc<Engine>, mut cfg: ServeConfig) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        if cfg.generation.worker_id.is_empty() {
            cfg.generation.worker_id = format!("local/{addr}");
        }
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let tls = cfg.security.tls.is_some();
        let (services, health) = Services::new(cfg).await.map_err(std::io::Error::other)?;
        services.ready(engine).await;
        let task = tokio::spawn(serve(Arc::new(services), health, listener, async move {
            let _ = rx.await;
        }));
        Ok(Self { addr, tls, stop: Some(tx), task: Some(task) })
    }

    /// `http://127.0.0.1:PORT`, or `https://localhost:PORT` when serving TLS (certificates
    /// name hosts, not ephemeral addresses).
    pub fn url(&self) -> String {
        if self.tls {
            format!("https://localhost:{}", self.addr.port())
        } else {
            format!("http://{}", self.addr)
        }
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
