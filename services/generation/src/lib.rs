//! `steer-generation`: the GenerationService. Receives a prompt, sampling settings and streamed
//! steering tensors, and schedules its rows (unsteered and steered, paired by seed) into the one
//! running batch that every in-flight request shares, streaming tokens back.
//!
//! [`read`] (the wire into a raw request) -> [`validation`] (once, into typed values) ->
//! [`scheduler`] (the engine loop: continuous batching, its pulse in [`heartbeat`]) -> [`service`]
//! (the handlers tying them together).

pub mod config;
pub mod heartbeat;
pub mod read;
pub mod scheduler;
pub mod score;
pub mod service;
pub mod validation;
pub mod vectors;

pub use config::GenerationConfig;
pub use service::GenerationWorker;
pub use vectors::VectorSource;
