//! `steer-generation`: the GenerationService. Receives a prompt, sampling settings and streamed
//! steering tensors, and queues one batch (unsteered and steered rows, paired by seed) to the
//! engine workers, streaming tokens back.
//!
//! [`read`] (the wire into a raw request) -> [`validation`] (once, into typed values) ->
//! [`batcher`] (the engine's time) -> [`service`] (the handlers tying them together).

pub mod batcher;
pub mod config;
pub mod read;
pub mod service;
pub mod validation;

pub use config::GenerationConfig;
pub use service::GenerationWorker;
