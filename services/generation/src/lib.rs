//! `steer-generation`: the GenerationService. Receives a prompt, sampling settings and streamed
//! steering tensors, and schedules its rows (unsteered and steered, paired by seed) into the one
//! running batch that every in-flight request shares, streaming tokens back.
//!
//! [`read`] (the wire into a raw request) -> [`validation`] (once, into typed values) ->
//! [`scheduler`] (the engine loop: continuous batching, its pulse in [`heartbeat`]) -> [`service`]
//! (the handlers tying them together). Outside this crate, [`batch`] builds the rows a request
//! would run, validated exactly as the service does, for tools that run them in process;
//! [`read`] and [`validation`] are public for the fuzz targets, which drive the wire reader and
//! the validator directly.

pub mod config;
mod heartbeat;
pub mod read;
mod scheduler;
mod score;
pub mod service;
mod stop;
pub mod validation;
pub mod vectors;

pub use config::GenerationConfig;
pub use service::GenerationWorker;
pub use validation::{pair_rows, ValidRequest};
pub use vectors::VectorSource;

use steer_common::ServiceError;
use steer_model::Engine;
use steer_proto::v1::{GenerateSetup, TensorHeader};

/// The rows a GenerationService would run for `setup` and its steering `tensors` (each a
/// header and its values as f32), validated exactly as a request is (errors name the field):
/// for tools that run the very same batch in process, as `steer bench --grpc` does.
pub fn batch(
    setup: GenerateSetup,
    tensors: Vec<(TensorHeader, Vec<f32>)>,
    engine: &Engine,
    cfg: &GenerationConfig,
) -> Result<ValidRequest, ServiceError> {
    let tensors = tensors.into_iter().map(|(header, values)| read::WireTensor { header, values }).collect();
    validation::validate(read::RawRequest { setup, tensors, memory: Default::default() }, vec![], engine, cfg)
}
