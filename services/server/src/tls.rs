//! TLS for the service port, with rustls. Done here rather than by tonic's `tls_config`, which
//! offers only `h2` by ALPN: browsers (gRPC-Web, the dashboard) and HTTP/JSON clients (curl,
//! the OpenAI SDK) speak HTTP/1.1 and would be refused. Handshakes run on their own tasks with a
//! timeout, so a client that stalls one holds up nobody's accept.

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};

use crate::config::TlsFiles;
use crate::error::ServerError;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

fn bad(what: &str, e: impl std::fmt::Display) -> ServerError {
    ServerError::Config(format!("TLS {what}: {e}"))
}

/// The acceptor for `files`: ALPN h2 and http/1.1; client certificates required when a client CA is given.
pub fn acceptor(files: &TlsFiles) -> Result<TlsAcceptor, ServerError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(&files.cert_pem).collect::<Result<_, _>>().map_err(|e| bad("certificate", e))?;
    if certs.is_empty() {
        return Err(bad("certificate", "no certificate in the PEM file"));
    }
    let key = PrivateKeyDer::from_pem_slice(&files.key_pem).map_err(|e| bad("key", e))?;
    let builder = ServerConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions().map_err(|e| bad("config", e))?;
    let builder = match &files.client_ca_pem {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(ca) {
                roots.add(c.map_err(|e| bad("client CA", e))?).map_err(|e| bad("client CA", e))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).build().map_err(|e| bad("client CA", e))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut cfg = builder.with_single_cert(certs, key).map_err(|e| bad("certificate and key", e))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(cfg)))
}

/// TLS connections from the TCP connections of `tcp`, handshaken concurrently.
pub fn incoming<S>(mut tcp: S, acceptor: TlsAcceptor) -> impl Stream<Item = Result<TlsStream<TcpStream>, std::io::Error>>
where
    S: Stream<Item = Result<TcpStream, std::io::Error>> + Unpin + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        while let Some(conn) = tcp.next().await {
            let sock = match conn {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            if tx.is_closed() {
                return; // the server has stopped
            }
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(sock)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(tls)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!("TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}
