//! The transport and the life of a serving process: listen at once (health NOT_SERVING), load
//! the model, report SERVING, and on the shutdown signal stop accepting, report NOT_SERVING and
//! give open streams a bounded grace period.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use steer_model::Engine;
use steer_proto::v1::activation_service_server::ActivationServiceServer;
use steer_proto::v1::generation_service_server::GenerationServiceServer;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic_health::pb::health_server::{Health, HealthServer};

use crate::config::ServeConfig;
use crate::error::ServerError;
use crate::services::Services;
use crate::sweeps::SweepService;

/// Serves on `listener` until `shutdown` resolves, then drains for at most the configured grace.
pub async fn serve(
    services: Arc<Services>,
    health: HealthServer<impl Health>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let cfg = &services.cfg;
    let (role, max, t, sec) = (cfg.role, cfg.max_message_bytes, &cfg.transport, &cfg.security);
    let act = role.activation().then(|| ActivationServiceServer::new(services.activation.clone()).max_decoding_message_size(max));
    let gen = role.generation().then(|| GenerationServiceServer::new(services.generation.clone()).max_decoding_message_size(max));
    let reflection = (!sec.no_reflection).then(|| {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(steer_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .expect("descriptor sets are valid")
    });
    let builder = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(t.keepalive_interval))
        .http2_keepalive_timeout(Some(t.keepalive_timeout))
        .max_concurrent_streams(t.max_concurrent_streams)
        .http2_max_header_list_size(t.max_header_bytes)
        .http2_max_pending_accept_reset_streams(Some(64))
        .timeout(t.request_timeout);
    let acceptor = sec.tls.as_ref().map(crate::tls::acceptor).transpose()?;
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true)).with_keepalive(Some(t.tcp_keepalive));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let svc = services.clone();
    // HTTP/1.1 and the gRPC-Web translation let browsers call the same services; the dashboard
    // page is served from this port too. Tokens are checked after the gRPC-Web translation, so
    // a browser gets its UNAUTHENTICATED in gRPC-Web form.
    let mut grpc = tonic::service::RoutesBuilder::default();
    grpc.add_service(health);
    if let Some(r) = reflection {
        grpc.add_service(r);
    }
    if let Some(a) = act {
        grpc.add_service(a);
    }
    if let Some(g) = gen {
        grpc.add_service(g);
    }
    // Sweep jobs call both services in process.
    let sweeps = (role == crate::config::Role::Both).then(|| SweepService::new(services.clone()));
    if let Some(s) = &sweeps {
        grpc.add_service(s.clone().into_server());
    }
    let router = builder
        .accept_http1(true)
        .layer(crate::dashboard::layer())
        // HTTP/JSON (OpenAI-compatible completions) on the same port, before gRPC-Web.
        .layer(crate::http::layer(services.clone(), sweeps))
        .layer(tonic_web::GrpcWebLayer::new())
        .layer(crate::auth::layer(&sec.tokens))
        .add_routes(grpc.routes());
    let stopping = async move {
        shutdown.await;
        tracing::info!("shutting down: no new requests");
        svc.draining().await;
        let _ = stop_tx.send(());
    };
    let server: std::pin::Pin<Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>> = match acceptor {
        Some(a) => Box::pin(router.serve_with_incoming_shutdown(crate::tls::incoming(incoming, a), stopping)),
        None => Box::pin(router.serve_with_incoming_shutdown(incoming, stopping)),
    };
    let grace = services.cfg.grace;
    tokio::select! {
        r = server => Ok(r?),
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

/// SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! { _ = ctrl_c => {}, _ = term.recv() => {} }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// A whole serving process: binds `addr` at once (health NOT_SERVING), runs `load` on a
/// blocking thread, then reports SERVING. Returns after `shutdown` once open streams finish or
/// the grace period ends, or with an error if the model cannot be loaded.
pub async fn run<L>(
    addr: &str,
    cfg: ServeConfig,
    metrics_addr: Option<SocketAddr>,
    load: L,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError>
where
    L: FnOnce() -> Result<Engine, ServerError> + Send + 'static,
{
    let listener = TcpListener::bind(addr).await.map_err(|source| ServerError::Bind { addr: addr.to_string(), source })?;
    tracing::info!(addr = %listener.local_addr()?, role = ?cfg.role, "listening (loading the model)");
    let (services, health) = Services::new(cfg).await?;
    let services = Arc::new(services);
    if let Some(addr) = metrics_addr {
        let bound = services.serve_metrics(addr).await.map_err(|source| ServerError::Bind { addr: addr.to_string(), source })?;
        tracing::info!(%bound, "metrics at /metrics");
    }
    let (failed_tx, failed_rx) = tokio::sync::oneshot::channel::<ServerError>();
    let loader = {
        let services = services.clone();
        tokio::spawn(async move {
            match tokio::task::spawn_blocking(load).await {
                Ok(Ok(engine)) => {
                    services.ready(Arc::new(engine)).await;
                    tracing::info!("ready");
                }
                Ok(Err(e)) => drop(failed_tx.send(e)),
                Err(e) => drop(failed_tx.send(ServerError::Loader(e.to_string()))),
            }
        })
    };
    tokio::select! {
        r = serve(services, health, listener, shutdown) => r?,
        Ok(e) = failed_rx => return Err(e),
    }
    loader.abort();
    Ok(())
}
