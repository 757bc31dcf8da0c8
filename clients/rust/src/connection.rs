//! How the client reaches workers: lazy channels (TLS for `https://`, a bearer token on every
//! call, connect timeout, HTTP/2 keepalive) and the pool of generation workers, which hands out
//! workers round-robin and skips, for a while, one that just failed.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
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

/// The one address form every front end takes: `host:port` (plaintext), `http://host:port`,
/// `https://host:port`, or a DNS name whose every address is a worker, `dns:host:port` (also
/// written `dns://host:port`, `dns:///host:port`; `dns+https:` for TLS). A missing port is
/// 50051, the server's. Returns the URL the client dials (`http://`, `https://`, `dns://` or
/// `dns+https://`), or a one-line error naming the address.
pub fn normalize_address(address: &str) -> Result<String> {
    let a = address.trim();
    let bad =
        |why: &str| ClientError::Parse(format!("address `{address}`: {why} (give host:port, http://host:port, https://host:port or dns:host:port)"));
    let (scheme, rest) = match a.split_once(':') {
        Some((s @ ("http" | "https"), r)) if r.starts_with("//") => (s, &r[2..]),
        Some((s @ ("dns" | "dns+https"), r)) => (s, r.trim_start_matches('/')),
        Some((s, r)) if r.starts_with("//") => return Err(bad(&format!("unknown scheme `{s}`"))),
        _ => ("http", a),
    };
    let rest = rest.trim_end_matches('/');
    if rest.is_empty() || rest.contains(['/', '?', '#', ' ']) {
        return Err(bad("not host:port"));
    }
    let has_port = match rest.rsplit_once(':') {
        // `[::1]` alone has no port; `[::1]:50051` has.
        Some((host, port)) if !port.ends_with(']') => {
            if host.is_empty() || port.parse::<u16>().is_err() {
                return Err(bad(&format!("`{port}` is not a port")));
            }
            true
        }
        _ => false,
    };
    let hostport = if has_port { rest.to_string() } else { format!("{rest}:50051") };
    let url = match scheme {
        "dns" => format!("dns://{hostport}"),
        "dns+https" => format!("dns+https://{hostport}"),
        s => format!("{s}://{hostport}"),
    };
    if !url.starts_with("dns") {
        Endpoint::from_shared(url.clone()).map_err(|e| bad(&e.to_string()))?;
    }
    Ok(url)
}

/// A call that failed because `endpoint` could not be reached at all (nothing listens, no such
/// host, no answer within the connect timeout) as one line, [`ClientError::Connect`]; any other
/// status as it is.
pub fn unreachable(endpoint: &str, status: tonic::Status) -> ClientError {
    match connect_failure(&status) {
        Some(why) => ClientError::Connect { endpoint: endpoint.to_string(), message: why },
        None => ClientError::Status(status),
    }
}

/// Why a call never reached its server, when that is what `status` says.
pub(crate) fn connect_failure(status: &tonic::Status) -> Option<String> {
    if status.code() != tonic::Code::Unavailable && status.code() != tonic::Code::Unknown {
        return None;
    }
    let mut text = status.message().to_string();
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return Some(match io.kind() {
                std::io::ErrorKind::ConnectionRefused => "connection refused: nothing listens there (is `steer serve` running?)".into(),
                std::io::ErrorKind::TimedOut => "no answer within the connect timeout".into(),
                _ => io.to_string(),
            });
        }
        text = format!("{text}: {e}");
        source = e.source();
    }
    let lower = text.to_ascii_lowercase();
    if lower.contains("dns error") || lower.contains("lookup address") {
        return Some("no such host".into());
    }
    (lower.contains("tcp connect error") || lower.contains("connection refused")).then_some(text)
}

impl ConnectOptions {
    /// A lazy channel to `url` (any form [`normalize_address`] takes): nothing is dialled until
    /// the first call.
    pub fn channel(&self, url: &str) -> Result<Channel> {
        let url = &normalize_address(url)?;
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

/// Adds the bearer token to every call, and the caller's trace context (W3C `traceparent`,
/// when a tracer is installed: `steer --otlp-endpoint`), so that the services' spans of the call
/// join the caller's trace.
#[derive(Clone)]
pub struct Token(Option<MetadataValue<Ascii>>);

impl Interceptor for Token {
    fn call(&mut self, mut req: Request<()>) -> std::result::Result<Request<()>, Status> {
        if let Some(t) = &self.0 {
            req.metadata_mut().insert("authorization", t.clone());
        }
        inject_trace_context(req.metadata_mut());
        Ok(req)
    }
}

fn inject_trace_context(metadata: &mut tonic::metadata::MetadataMap) {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    struct Carrier<'a>(&'a mut tonic::metadata::MetadataMap);
    impl opentelemetry::propagation::Injector for Carrier<'_> {
        fn set(&mut self, key: &str, value: String) {
            if let (Ok(k), Ok(v)) = (tonic::metadata::MetadataKey::from_bytes(key.as_bytes()), value.parse()) {
                self.0.insert(k, v);
            }
        }
    }
    let cx = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&cx, &mut Carrier(metadata)));
}

/// How long a worker that failed is passed over (unless every worker failed).
const SKIP_FOR: Duration = Duration::from_secs(10);
/// How often `dns://` names are resolved again.
const RESOLVE_EVERY: Duration = Duration::from_secs(10);

struct Member {
    url: String,
    client: GenerationServiceClient<Channel>,
    /// Milliseconds after the pool's epoch until which the worker is passed over.
    skip_until: AtomicU64,
    /// The `dns://` name it was resolved from, if any.
    from: Option<String>,
}

/// The generation workers: fixed URLs, and `dns://HOST:PORT` (plaintext) or
/// `dns+https://HOST:PORT` names whose addresses (e.g. a Kubernetes headless Service's pods) are
/// resolved now and every 10 s, so workers that come and go join and leave the pool.
pub(crate) struct Workers {
    members: RwLock<Vec<Arc<Member>>>,
    next: AtomicUsize,
    epoch: Instant,
}

fn client(opts: &ConnectOptions, url: &str) -> Result<GenerationServiceClient<Channel>> {
    Ok(GenerationServiceClient::new(opts.channel(url)?).max_decoding_message_size(64 << 20))
}

/// `dns://host:port` -> (scheme, host, port).
fn dns_name(url: &str) -> Option<(&'static str, &str, u16)> {
    let (scheme, rest) = if let Some(r) = url.strip_prefix("dns://") { ("http", r) } else { ("https", url.strip_prefix("dns+https://")?) };
    let (host, port) = rest.trim_end_matches('/').rsplit_once(':')?;
    Some((scheme, host, port.parse().ok()?))
}

impl Workers {
    /// The pool for `urls`; `dns://` names are resolved now (a name that resolves to nothing
    /// yet is tried again later) and then in the background while the pool lives.
    pub(crate) async fn new(urls: &[String], opts: &ConnectOptions) -> Result<Arc<Self>> {
        let pool = Arc::new(Self { members: RwLock::new(vec![]), next: AtomicUsize::new(0), epoch: Instant::now() });
        let urls = urls.iter().map(|u| normalize_address(u)).collect::<Result<Vec<_>>>()?;
        let mut names = vec![];
        for u in &urls {
            match dns_name(u) {
                Some(_) => names.push(u.clone()),
                None => pool.members.write().unwrap().push(Arc::new(Member {
                    url: u.clone(),
                    client: client(opts, u)?,
                    skip_until: AtomicU64::new(0),
                    from: None,
                })),
            }
        }
        for name in &names {
            pool.resolve(name, opts).await?;
        }
        if !names.is_empty() {
            let (weak, opts) = (Arc::downgrade(&pool), opts.clone());
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(RESOLVE_EVERY).await;
                    let Some(pool) = weak.upgrade() else { return };
                    for name in &names {
                        if let Err(e) = pool.resolve(name, &opts).await {
                            tracing::warn!(name, error = %e, "resolving generation workers failed");
                        }
                    }
                }
            });
        }
        Ok(pool)
    }

    /// Resolves a `dns://` name and makes its members exactly its current addresses (keeping
    /// the channels of addresses it already had).
    async fn resolve(&self, name: &str, opts: &ConnectOptions) -> Result<()> {
        let (scheme, host, port) = dns_name(name).expect("a dns:// name");
        let addrs: Vec<std::net::SocketAddr> = match tokio::net::lookup_host((host, port)).await {
            Ok(a) => a.collect(),
            Err(e) => {
                tracing::warn!(name, error = %e, "no addresses for generation workers (yet)");
                vec![]
            }
        };
        let urls: Vec<String> = addrs.iter().map(|a| format!("{scheme}://{a}")).collect();
        // Certificates name the host, not the pod address.
        let opts = ConnectOptions { tls_domain: opts.tls_domain.clone().or_else(|| Some(host.to_string())), ..opts.clone() };
        let mut members = self.members.write().unwrap();
        members.retain(|m| m.from.as_deref() != Some(name) || urls.contains(&m.url));
        for url in urls {
            if !members.iter().any(|m| m.url == url) {
                members.push(Arc::new(Member { client: client(&opts, &url)?, url, skip_until: AtomicU64::new(0), from: Some(name.into()) }));
            }
        }
        Ok(())
    }

    /// The workers' URLs now (resolved addresses for `dns://` names).
    pub(crate) fn urls(&self) -> Vec<String> {
        self.members.read().unwrap().iter().map(|m| m.url.clone()).collect()
    }

    pub(crate) fn len(&self) -> usize {
        self.members.read().unwrap().len().max(1)
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// The next worker in turn that has not just failed, never `after` (the one that just
    /// failed this call) when another exists; round-robin when all have failed. None when the
    /// pool is empty (a name that resolves to nothing).
    pub(crate) fn pick(&self, after: Option<&str>) -> Option<(String, GenerationServiceClient<Channel>)> {
        let members = self.members.read().unwrap();
        let n = members.len();
        if n == 0 {
            return None;
        }
        let start = match after.and_then(|a| members.iter().position(|m| m.url == a)) {
            Some(i) => i + 1,
            None => self.next.fetch_add(1, Ordering::Relaxed),
        };
        let now = self.now_ms();
        let healthy = |m: &Member| m.skip_until.load(Ordering::Relaxed) <= now && Some(m.url.as_str()) != after;
        let i = (0..n).map(|k| (start + k) % n).find(|&i| healthy(&members[i])).unwrap_or(start % n);
        Some((members[i].url.clone(), members[i].client.clone()))
    }

    fn mark(&self, url: &str, until: u64) {
        if let Some(m) = self.members.read().unwrap().iter().find(|m| m.url == url) {
            m.skip_until.store(until, Ordering::Relaxed);
        }
    }

    pub(crate) fn failed(&self, url: &str) {
        self.mark(url, self.now_ms() + SKIP_FOR.as_millis() as u64);
    }

    pub(crate) fn succeeded(&self, url: &str) {
        self.mark(url, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn pool(n: usize) -> Arc<Workers> {
        let urls: Vec<String> = (0..n).map(|i| format!("http://127.0.0.1:{}", 1 + i)).collect();
        Workers::new(&urls, &ConnectOptions::default()).await.unwrap()
    }

    fn at(w: &Workers, after: Option<&str>) -> String {
        w.pick(after).unwrap().0
    }

    #[tokio::test]
    async fn a_failed_worker_is_skipped_and_never_retried_at_once() {
        let w = pool(3).await;
        let u: Vec<String> = w.urls();
        assert_eq!((0..3).map(|_| at(&w, None)).collect::<Vec<_>>(), u);
        w.failed(&u[1]);
        let picks: Vec<String> = (0..4).map(|_| at(&w, None)).collect();
        assert!(!picks.contains(&u[1]), "{picks:?}");
        assert_eq!(at(&w, Some(&u[0])), u[2], "a retry after worker 0 skips the failed worker 1");
        w.failed(&u[0]);
        w.failed(&u[2]);
        // All failed: still an answer, but not the one that just failed this call.
        assert_ne!(at(&w, Some(&u[2])), u[2]);
        w.succeeded(&u[1]);
        assert_eq!(at(&w, Some(&u[0])), u[1]);
    }

    #[tokio::test]
    async fn dns_names_become_one_worker_per_address() {
        assert_eq!(dns_name("dns://steer-generation.steer.svc:50051"), Some(("http", "steer-generation.steer.svc", 50051)));
        assert_eq!(dns_name("dns+https://h:1/"), Some(("https", "h", 1)));
        assert_eq!(dns_name("http://h:1"), None);
        let w = Workers::new(&["dns://127.0.0.1:7".into(), "http://127.0.0.1:8".into()], &ConnectOptions::default()).await.unwrap();
        let mut urls = w.urls();
        urls.sort();
        assert_eq!(urls, ["http://127.0.0.1:7", "http://127.0.0.1:8"]);
        // Resolving again keeps the pool as it is; a name with no addresses leaves it empty, not broken.
        w.resolve("dns://127.0.0.1:7", &ConnectOptions::default()).await.unwrap();
        assert_eq!(w.urls().len(), 2);
        let none = Workers::new(&["dns://no-such-host.invalid:1".into()], &ConnectOptions::default()).await.unwrap();
        assert!(none.pick(None).is_none());
    }

    #[tokio::test]
    async fn channels_are_lazy_and_tls_needs_https() {
        let opts = ConnectOptions::default();
        assert!(opts.channel("http://127.0.0.1:1").is_ok(), "nothing is dialled up front");
        let with_ca = ConnectOptions { tls_ca_pem: Some(b"x".to_vec()), ..ConnectOptions::default() };
        assert!(with_ca.channel("http://127.0.0.1:1").is_err());
    }
}
