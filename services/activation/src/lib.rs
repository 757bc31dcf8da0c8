//! `steer-activation`: the ActivationService. Computes residual-stream activations of prompts
//! with the engine's capture forward and ActAdd steering tensors from contrast prompts, through
//! a content-keyed, byte-bounded cache that computes all of a request's missing activations in
//! one forward.
//!
//! [`validation`] (requests into typed values) -> [`service`] (handlers) -> [`cache`] (single
//! flight, batched) and [`steering`] (padding and the ActAdd sum); [`vectors`] makes vector
//! files (ActAdd's, and dataset mean differences) and the library RPCs serve a
//! `steer_vector::Library`; [`saes`] serves sparse autoencoders (SAELens layout) as features to
//! browse and vectors to steer with.

pub mod cache;
pub mod config;
pub mod saes;
pub mod service;
pub mod steering;
pub mod validation;
pub mod vectors;

pub use cache::ActivationCache;
pub use config::ActivationConfig;
pub use service::ActivationWorker;
