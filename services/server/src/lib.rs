//! `steer-server`: the serving process as a library. Both services (or one, per [`Role`]) behind
//! a gate that answers UNAVAILABLE until the model has loaded, grpc.health.v1 and reflection,
//! gRPC-Web and the dashboard on the same port, metrics, and a bounded drain on shutdown; TLS
//! (rustls, optionally mutual), bearer tokens ([`auth`]), transport limits and a watchdog on the
//! generation engine that health reports; HTTP/JSON ([`http`]: OpenAI-compatible completions and
//! JSON mirrors of the RPCs); EvalService sweep jobs ([`sweeps`]).
//!
//! [`config`] -> [`services`] (workers, health, metrics) -> [`gate`] (per-RPC span, metrics)
//! -> [`serve`] (the transport, the process's life) and [`local`] (an embedded loopback server).

pub mod answer_early;
pub mod auth;
pub mod config;
pub mod dashboard;
pub mod error;
pub mod gate;
pub mod http;
pub mod local;
pub mod profiles;
pub mod serve;
pub mod services;
pub mod steering;
pub mod sweeps;
pub mod tls;

pub use config::{read_tokens, Role, SecurityConfig, ServeConfig, TlsFiles, TransportConfig, VectorsConfig};
pub use error::ServerError;
pub use local::LocalServer;
pub use serve::{run, serve, shutdown_signal};
pub use services::Services;
