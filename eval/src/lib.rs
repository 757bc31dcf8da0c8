//! `steer-eval`: what every caller of the steer services shares, below both `steer-client`
//! (over gRPC) and `steer-server` (its sweep jobs, in process):
//!
//! - [`run`]: a steering run's parts: [`AdditionSpec`], [`RunOptions`], [`SteeringTensor`],
//!   [`Comparison`], and the requests built from them;
//! - [`collect`]: the one collector of response streams (generations, steering tensors,
//!   activations), whatever transport carries them;
//! - [`backend`]: the [`Backend`] trait, what the evals need of the services;
//! - [`sweeps`]: the post's measurements over (layer, coefficient) settings;
//! - [`error`]: the one error type of a call ([`Error`]; `steer_client::ClientError`).

pub mod backend;
pub mod collect;
pub mod error;
pub mod run;
pub mod sweeps;

pub use backend::{Activations, Backend};
pub use collect::{collect, collect_activations, collect_scores, collect_steering_tensors, drain, MAX_TENSOR_BYTES};
pub use error::{Error, Result};
pub use run::{model_ref, no_op_warnings, score_request, steering_request, AdditionSpec, Comparison, Completion, RunOptions, SteeringTensor};
pub use sweeps::{
    count_words, default_text_sets, kl_sweep, norms, perplexity, perplexity_sweep, topic_words, Position, Sweep, TextSet, WEDDING_WORDS,
};
