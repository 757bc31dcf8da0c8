//! `steer-activation`: the ActivationService. Computes residual-stream activations of prompts
//! with the engine's capture forward and ActAdd steering tensors from contrast prompts, through
//! a content-keyed, byte-bounded, single-flight cache.

pub mod cache;
pub mod config;
pub mod error;
pub mod service;
pub mod steering;

pub use cache::ActivationCache;
pub use config::ActivationConfig;
pub use error::ActivationError;
pub use service::ActivationWorker;
