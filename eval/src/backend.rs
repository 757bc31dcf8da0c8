//! What the evals need of the services, as a trait: a `SteerClient` over gRPC implements it in
//! `steer-client`, and a serving process calling its own services in process implements it in
//! `steer-server` (the sweep jobs).

use std::future::Future;

use steer_proto::v1::{HookPoint, ScoreRequest, TextScore};

use crate::error::Result;
use crate::run::{AdditionSpec, Comparison, RunOptions, SteeringTensor};

/// Activations as `[prompt][point] = (len, d, values)`.
pub type Activations = Vec<Vec<(usize, usize, Vec<f32>)>>;

/// What the evals need of the services: steering tensors, Score, generations and activations.
/// A `SteerClient` over gRPC, or a serving process calling its own services in process
/// (steer-server's sweep jobs).
pub trait Backend: Sync {
    fn steering_tensors(&self, additions: &[AdditionSpec], opts: &RunOptions) -> impl Future<Output = Result<Vec<SteeringTensor>>> + Send;
    /// Unsteered and steered completions (`opts.n_comparisons` each).
    fn comparison(&self, prompt: &str, tensors: &[SteeringTensor], opts: &RunOptions) -> impl Future<Output = Result<Comparison>> + Send;
    /// Most comparisons one generation may ask for.
    fn max_comparisons(&self) -> impl Future<Output = Result<u32>> + Send;
    fn activations(&self, prompts: &[String], points: &[HookPoint], use_bos: bool) -> impl Future<Output = Result<Activations>> + Send;
    /// Teacher-forced scores (`score_request` builds the request), in text order, unsteered
    /// before steered.
    fn score(&self, req: ScoreRequest) -> impl Future<Output = Result<Vec<TextScore>>> + Send;
}
