//! Configuration of a serving process.

use std::path::Path;
use std::time::Duration;

use steer_activation::ActivationConfig;
use steer_generation::GenerationConfig;

use crate::error::ServerError;

/// Which services a process serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Both,
    Activation,
    Generation,
}

impl Role {
    pub fn activation(self) -> bool {
        matches!(self, Role::Both | Role::Activation)
    }

    pub fn generation(self) -> bool {
        matches!(self, Role::Both | Role::Generation)
    }
}

#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub role: Role,
    pub activation: ActivationConfig,
    pub generation: GenerationConfig,
    pub transport: TransportConfig,
    pub security: SecurityConfig,
    /// How long open streams may run after the shutdown signal.
    pub grace: Duration,
    /// Largest request message (tensor chunks are at most 1 MiB).
    pub max_message_bytes: usize,
    /// The generation engine counts as stuck (health NOT_SERVING) when it has work and has not
    /// finished an iteration for this long.
    pub watchdog: Duration,
    pub vectors: VectorsConfig,
    /// The name OpenAI clients give as `model` for the unsteered model (default: the loaded
    /// model's name).
    pub served_model_name: Option<String>,
    /// Named steering an OpenAI client selects with `model` ([`crate::profiles`]).
    pub profiles: Vec<crate::profiles::Profile>,
}

/// The vector library (kept by the activation service) and where a generation-only worker
/// fetches library vectors from.
#[derive(Debug, Clone, Default)]
pub struct VectorsConfig {
    /// The library's directory and bounds; `None`: no library.
    pub library: Option<steer_vector::LibraryConfig>,
    /// A generation-only worker fetches library vectors from this activation worker
    /// (`http(s)://host:port`); with both services in one process the local library is used.
    pub source_url: Option<String>,
    /// Bearer token for `source_url`.
    pub source_token: Option<String>,
    /// CA (PEM) to trust for an `https://` `source_url` (else the system's roots).
    pub source_ca: Option<Vec<u8>>,
    /// The activation service serves the sparse autoencoders under this directory (one per
    /// subdirectory, SAELens's layout): ListSaes, GetSaeFeatures, SaeVector.
    pub sae_dir: Option<std::path::PathBuf>,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            role: Role::Both,
            activation: ActivationConfig::default(),
            generation: GenerationConfig::default(),
            transport: TransportConfig::default(),
            security: SecurityConfig::default(),
            grace: Duration::from_secs(10),
            max_message_bytes: 8 << 20,
            watchdog: Duration::from_secs(60),
            vectors: VectorsConfig::default(),
            served_model_name: None,
            profiles: vec![],
        }
    }
}

/// Limits of the connections themselves (HTTP/2 and TCP), so that dead or idle peers and
/// half-sent requests hold nothing for long.
#[derive(Debug, Clone)]
pub struct TransportConfig {
    /// HTTP/2 PING interval; a peer that does not answer within `keepalive_timeout` is closed.
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
    /// TCP keepalive (dead peers whose connection carries no streams).
    pub tcp_keepalive: Duration,
    /// Concurrent streams (calls) per connection.
    pub max_concurrent_streams: u32,
    /// Bytes of request headers (metadata) per call.
    pub max_header_bytes: u32,
    /// Time to receive a call's request and start answering (the response stream itself is
    /// bounded by the client's deadline and the stall timeout).
    pub request_timeout: Duration,
}

impl Default for TransportConfig {
    fn default() -> Self {
        Self {
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(10),
            tcp_keepalive: Duration::from_secs(60),
            max_concurrent_streams: 64,
            max_header_bytes: 16 << 10,
            request_timeout: Duration::from_secs(60),
        }
    }
}

/// Who may call, over what, and what a caller may learn.
#[derive(Clone, Default)]
pub struct SecurityConfig {
    /// Serve TLS (rustls) with this certificate chain and key (PEM).
    pub tls: Option<TlsFiles>,
    /// Bearer tokens accepted (`authorization: Bearer TOKEN`); empty: no authentication.
    /// Health stays open for probes, and so do the dashboard's static files.
    pub tokens: Vec<String>,
    /// Turn off gRPC reflection.
    pub no_reflection: bool,
    /// Report a local model's full path in ModelInfo (by default only its directory's name).
    pub expose_model_path: bool,
}

impl std::fmt::Debug for SecurityConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecurityConfig")
            .field("tls", &self.tls.is_some())
            .field("mtls", &self.tls.as_ref().is_some_and(|t| t.client_ca_pem.is_some()))
            .field("tokens", &self.tokens.len())
            .field("no_reflection", &self.no_reflection)
            .field("expose_model_path", &self.expose_model_path)
            .finish()
    }
}

/// PEM contents of the server's TLS files.
#[derive(Clone)]
pub struct TlsFiles {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
    /// Require client certificates signed by this CA (mutual TLS).
    pub client_ca_pem: Option<Vec<u8>>,
}

impl TlsFiles {
    /// Reads the PEM files named by `--tls-cert`, `--tls-key` and `--tls-client-ca`.
    pub fn read(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Result<Self, ServerError> {
        Ok(Self { cert_pem: read(cert)?, key_pem: read(key)?, client_ca_pem: client_ca.map(read).transpose()? })
    }
}

fn read(path: &Path) -> Result<Vec<u8>, ServerError> {
    std::fs::read(path).map_err(|source| ServerError::File { path: path.display().to_string(), source })
}

/// The tokens of an `--auth-tokens` file: one per line; blank lines and `#` comments skipped.
pub fn read_tokens(path: &Path) -> Result<Vec<String>, ServerError> {
    let text = String::from_utf8(read(path)?).map_err(|_| ServerError::Config(format!("{}: not UTF-8", path.display())))?;
    let tokens: Vec<String> = text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(str::to_string).collect();
    if tokens.is_empty() {
        return Err(ServerError::Config(format!("{}: no tokens (one per line)", path.display())));
    }
    if let Some(t) = tokens.iter().find(|t| t.len() < 16 || !t.bytes().all(|b| b.is_ascii_graphic())) {
        let shown: String = t.chars().take(4).collect();
        return Err(ServerError::Config(format!("{}: token {shown}...: tokens must be at least 16 printable ASCII characters", path.display())));
    }
    Ok(tokens)
}
