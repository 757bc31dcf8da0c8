//! `steer-generation`: the GenerationService. Receives a prompt, sampling settings and streamed
//! steering tensors, validates them once at the edge, and queues one batch (unsteered and
//! steered rows, paired by seed) to the engine workers, streaming tokens back.

pub mod batcher;
pub mod config;
pub mod error;
pub mod service;
pub mod validation;

pub use config::GenerationConfig;
pub use error::GenerationError;
pub use service::GenerationWorker;
