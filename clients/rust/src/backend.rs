//! The evals' [`Backend`] over gRPC: a [`SteerClient`] calls the services it is connected to.

use std::future::Future;

use steer_eval::{collect_activations, Activations, Backend};
use steer_proto::v1::{GetActivationsRequest, HookPoint, ScoreRequest, TextScore};

use crate::{AdditionSpec, Comparison, Result, RunOptions, SteerClient, SteeringTensor};

impl Backend for SteerClient {
    fn steering_tensors(&self, additions: &[AdditionSpec], opts: &RunOptions) -> impl Future<Output = Result<Vec<SteeringTensor>>> + Send {
        SteerClient::steering_tensors(self, additions, opts)
    }
    fn comparison(&self, prompt: &str, tensors: &[SteeringTensor], opts: &RunOptions) -> impl Future<Output = Result<Comparison>> + Send {
        SteerClient::generate(self, prompt, tensors, opts, |_| {})
    }
    async fn max_comparisons(&self) -> Result<u32> {
        Ok(self.generation_info().await?.max_comparisons)
    }
    fn activations(&self, prompts: &[String], points: &[HookPoint], use_bos: bool) -> impl Future<Output = Result<Activations>> + Send {
        SteerClient::activations(self, prompts, points, use_bos)
    }
    fn score(&self, req: ScoreRequest) -> impl Future<Output = Result<Vec<TextScore>>> + Send {
        self.score_with(req)
    }
}

impl SteerClient {
    /// The activations of each prompt at each point: `out[prompt][point] = (len, d, values)`.
    pub async fn activations(&self, prompts: &[String], points: &[HookPoint], use_bos: bool) -> Result<Activations> {
        self.activations_steered(prompts, points, use_bos, &[]).await
    }

    /// [`SteerClient::activations`] under `steering` (each point read after its own steering
    /// ran: after an ABLATE, its direction is gone there). Not cached by the worker.
    pub async fn activations_steered(
        &self,
        prompts: &[String],
        points: &[HookPoint],
        use_bos: bool,
        steering: &[SteeringTensor],
    ) -> Result<Activations> {
        let steering = steering.iter().map(SteeringTensor::inline).collect();
        let req = GetActivationsRequest { prompts: prompts.to_vec(), use_bos, points: points.to_vec(), steering };
        let stream = self.activation.clone().get_activations(self.request(req)).await?.into_inner();
        collect_activations(self.within(stream), prompts.len()).await
    }
}
