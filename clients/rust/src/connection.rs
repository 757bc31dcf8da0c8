//! How the client reaches workers: lazy channels (TLS for `https://`, a bearer token on every
//! call, connect timeout, HTTP/2 keepalive) and the pool of generation workers, which hands out
//! workers round-robin and skips, for a while, one that just failed.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use steer_proto::v1::generation_service_client::GenerationServiceClient;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
use tonic::{Request, Status};

use crate::{ClientError, Result};

/// A channel to one worker, with the token interceptor.
pub type Channel = InterceptedService<tonic::transport::Channel, Token>;

/// How to reach the workers. `Default`: no token, the system's roots for `https://` URLs, a
/// 10-minute deadline per call, 5 s to connect.
#[derive(Clone)]
pub struct ConnectOptions {
    /// Deadline of each call, a whole generation included (sent to the worker as `grpc-timeout`).
    pub deadline: Duration,
    pub connect_timeout: Duration,
    /// How long calls to the activation worker are tried again while it is unreachable.
    pub retry_for: Duration,
    /// Bearer token sent with every call (`authorization: Bearer TOKEN`).
    pub token: Option<String>,
    /// Trust this CA (PEM) for `https://` URLs instead of the system's roots.
    pub tls_ca_pem: Option<Vec<u8>>,
    /// Client certificate and key (PEM) for mutual TLS.
    pub tls_identity: Option<(Vec<u8>, Vec<u8>)>,
    /// The name the server's certificate must carry, when not the URL's host (e.g. a probe
    /// dialling `localhost` inside a pod whose certificate names its Service).
    pub tls_domain: Option<String>,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        Self {
            deadline: Duration::from_secs(600),
            connect_timeout: Duration::from_secs(5),
            retry_for: Duration::from_secs(30),
            token: None,
            tls_ca_pem: None,
            tls_identity: None,
            tls_domain: None,
        }
    }
}

impl std::fmt::Debug for ConnectOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectOptions")
            .field("deadline", &self.deadline)
            .field("token", &self.token.as_ref().map(|_| "***"))
            .field("tls_ca", &self.tls_ca_pem.is_some())
            .field("mtls", &self.tls_identity.is_some())
            .finish()
    }
}

impl ConnectOptions {
    /// A lazy channel to `url`: nothing is dialled until the first call.
    pub fn channel(&self, url: &str) -> Result<Channel> {
        let err = |e: tonic::transport::Error| ClientError::Connect { endpoint: url.to_string(), message: e.to_string() };
        let mut ep = Endpoint::from_shared(url.to_string())
            .map_err(err)?
            .connect_timeout(self.connect_timeout)
            .timeout(self.deadline)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(false);
        if url.starts_with("https://") {
            let mut tls = ClientTlsConfig::new();
            tls = match &self.tls_ca_pem {
                Some(ca) => tls.ca_certificate(Certificate::from_pem(ca)),
                None => tls.with_native_roots(),
            };
            if let Some((cert, key)) = &self.tls_identity {
                tls = tls.identity(Identity::from_pem(cert, key));
            }
            if let Some(d) = &self.tls_domain {
                tls = tls.domain_name(d.clone());
            }
            ep = ep.tls_config(tls).map_err(err)?;
        } else if self.tls_ca_pem.is_some() {
            return Err(ClientError::Connect { endpoint: url.into(), message: "a TLS CA was given for a plaintext URL: use https://".into() });
        }
        let token = match &self.token {
            Some(t) => Some(format!("Bearer {t}").parse().map_err(|_| ClientError::Parse("the token must be printable ASCII".into()))?),
            None => None,
        };
        Ok(InterceptedService::new(ep.connect_lazy(), Token(token)))
    }
}

/// Adds the bearer token to every call.
#[derive(Clone)]
pub struct Token(Option<MetadataValue<Ascii>>);

impl Interceptor for Token {
    fn call(&mut self, mut req: Request<()>) -> std::result::Result<Request<()>, Status> {
        if let Some(t) = &self.0 {
            req.metadata_mut().insert("authorization", t.clone());
        }
        Ok(req)
    }
}

/// How long a worker that failed is passed over (unless every worker failed).
const SKIP_FOR: Duration = Duration::from_secs(10);

/// The generation workers.
pub(crate) struct Workers {
    workers: Vec<(String, GenerationServiceClient<Channel>)>,
    /// Milliseconds after `epoch` until which each worker is passed over.
    skip_until: Vec<AtomicU64>,
    next: AtomicUsize,
    epoch: Instant,
}

impl Workers {
    pub(crate) fn new(workers: Vec<(String, GenerationServiceClient<Channel>)>) -> Self {
        let skip_until = workers.iter().map(|_| AtomicU64::new(0)).collect();
        Self { workers, skip_until, next: AtomicUsize::new(0), epoch: Instant::now() }
    }

    pub(crate) fn len(&self) -> usize {
        self.workers.len()
    }

    pub(crate) fn url(&self, i: usize) -> &str {
        &self.workers[i].0
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// The next worker in turn that has not just failed, never `after` (the one that just
    /// failed this call) when another exists; round-robin when all have failed.
    pub(crate) fn pick(&self, after: Option<usize>) -> (usize, GenerationServiceClient<Channel>) {
        let n = self.workers.len();
        let start = match after {
            Some(a) => a + 1,
            None => self.next.fetch_add(1, Ordering::Relaxed),
        };
        let now = self.now_ms();
        let healthy = |i: usize| self.skip_until[i].load(Ordering::Relaxed) <= now && Some(i) != after;
        let i = (0..n).map(|k| (start + k) % n).find(|&i| healthy(i)).unwrap_or(start % n);
        (i, self.workers[i].1.clone())
    }

    pub(crate) fn failed(&self, i: usize) {
        self.skip_until[i].store(self.now_ms() + SKIP_FOR.as_millis() as u64, Ordering::Relaxed);
    }

    pub(crate) fn succeeded(&self, i: usize) {
        self.skip_until[i].store(0, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(n: usize) -> Workers {
        let opts = ConnectOptions::default();
        let ws = (0..n)
            .map(|i| {
                let url = format!("http://127.0.0.1:{}", 1 + i);
                (url.clone(), GenerationServiceClient::new(opts.channel(&url).unwrap()))
            })
            .collect();
        Workers::new(ws)
    }

    #[tokio::test]
    async fn a_failed_worker_is_skipped_and_never_retried_at_once() {
        let w = pool(3);
        assert_eq!((0..3).map(|_| w.pick(None).0).collect::<Vec<_>>(), [0, 1, 2]);
        w.failed(1);
        let picks: Vec<usize> = (0..4).map(|_| w.pick(None).0).collect();
        assert!(!picks.contains(&1), "{picks:?}");
        assert_eq!(w.pick(Some(0)).0, 2, "a retry after worker 0 skips the failed worker 1");
        w.failed(0);
        w.failed(2);
        // All failed: still an answer, but not the one that just failed this call.
        assert_ne!(w.pick(Some(2)).0, 2);
        w.succeeded(1);
        assert_eq!(w.pick(Some(0)).0, 1);
    }

    #[tokio::test]
    async fn channels_are_lazy_and_tls_needs_https() {
        let opts = ConnectOptions::default();
        assert!(opts.channel("http://127.0.0.1:1").is_ok(), "nothing is dialled up front");
        let with_ca = ConnectOptions { tls_ca_pem: Some(b"x".to_vec()), ..ConnectOptions::default() };
        assert!(with_ca.channel("http://127.0.0.1:1").is_err());
    }
}
