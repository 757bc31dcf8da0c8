//! Steering vectors as files, made here: ActAdd's (the steering tensors of a list of
//! additions, with their prompts, token ids and padding) and dataset vectors (the mean over
//! contrast pairs of the difference of reduced activations, CAA's recipe).

use steer_model::HookPoint;
use steer_proto::v1::GetSteeringTensorsRequest;
use steer_vector::{AdditionMeta, ModelRef, Origin, SteeringVector, VectorTensor, Window};

use steer_common::ServiceError;

use crate::cache::Activation;
use crate::steering::Plan;
use crate::validation::{Reduce, ValidPairs};

/// The ActAdd vector of `req`: one prefix tensor per hook point (`tensors` in plan order).
pub fn actadd(
    name: &str,
    model: ModelRef,
    req: &GetSteeringTensorsRequest,
    plan: &Plan,
    tensors: Vec<(HookPoint, [usize; 2], Vec<f32>)>,
) -> Result<SteeringVector, ServiceError> {
    let mut additions: Vec<(usize, AdditionMeta)> = plan
        .iter()
        .flat_map(|(point, group)| {
            group.iter().map(move |a| {
                let r = &req.additions[a.index];
                (
                    a.index,
                    AdditionMeta {
                        prompt: r.prompt.clone(),
                        coeff: r.coeff,
                        layer: point.layer() as u32,
                        tokens: a.ids.clone(),
                        padding: a.padding as u32,
                    },
                )
            })
        })
        .collect();
    additions.sort_by_key(|(i, _)| *i);
    let origin = Origin::ActAdd {
        additions: additions.into_iter().map(|(_, a)| a).collect(),
        use_bos: req.use_bos,
        strict_lengths: req.strict_lengths,
        pad_token: steer_model::tokenizer::SPACE,
    };
    let tensors = tensors.into_iter().map(|(p, [k, _], values)| VectorTensor { point: p, k, values }).collect();
    Ok(SteeringVector::new(name, model, Window::Prefix, origin, tensors)?)
}

/// The running sums of a dataset vector: per point, sum over pairs of
/// reduce(act(positive)) - reduce(act(negative)), in f64.
pub struct MeanDifference {
    points: Vec<HookPoint>,
    sums: Vec<Vec<f64>>,
    pairs: usize,
    reduce: Reduce,
}

impl MeanDifference {
    pub fn new(points: &[HookPoint], d_model: usize, reduce: Reduce) -> Self {
        Self { points: points.to_vec(), sums: vec![vec![0.0; d_model]; points.len()], pairs: 0, reduce }
    }

    /// One pair's activations, `positive[j]` and `negative[j]` at `points[j]`.
    pub fn add(&mut self, positive: &[&Activation], negative: &[&Activation]) {
        for (j, sum) in self.sums.iter_mut().enumerate() {
            let (p, n) = (reduce(positive[j], self.reduce), reduce(negative[j], self.reduce));
            for ((s, a), b) in sum.iter_mut().zip(p).zip(n) {
                *s += a - b;
            }
        }
        self.pairs += 1;
    }

    /// The vector: one all-positions `[1, d]` direction per point.
    pub fn finish(self, name: &str, model: ModelRef, valid: &ValidPairs) -> Result<SteeringVector, ServiceError> {
        let n = self.pairs.max(1) as f64;
        let tensors = self
            .points
            .iter()
            .zip(self.sums)
            .map(|(&p, s)| VectorTensor { point: p, k: 1, values: s.iter().map(|v| (v / n) as f32).collect() })
            .collect();
        let origin = Origin::MeanDifference { pairs: self.pairs, reduction: valid.reduce.name().into(), use_bos: valid.use_bos };
        Ok(SteeringVector::new(name, model, Window::AllPositions, origin, tensors)?)
    }
}

/// A prompt's `[len, d]` activation reduced to `[d]`: its last row, or the mean of rows
/// `skip..` (all rows when the prompt is only what would be skipped).
pub fn reduce(a: &Activation, r: Reduce) -> Vec<f64> {
    let row = |i: usize| &a.values[i * a.d..(i + 1) * a.d];
    match r {
        Reduce::LastToken => row(a.len - 1).iter().map(|&v| v as f64).collect(),
        Reduce::Mean { skip } => {
            let from = if skip < a.len { skip } else { 0 };
            let mut m = vec![0f64; a.d];
            for i in from..a.len {
                for (o, &v) in m.iter_mut().zip(row(i)) {
                    *o += v as f64;
                }
            }
            m.iter().map(|v| v / (a.len - from) as f64).collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reductions_take_the_last_row_or_the_mean_after_bos() {
        let a = Activation { values: vec![1.0, 2.0, 3.0, 4.0, 5.0, 9.0], len: 3, d: 2 };
        assert_eq!(reduce(&a, Reduce::LastToken), vec![5.0, 9.0]);
        assert_eq!(reduce(&a, Reduce::Mean { skip: 1 }), vec![4.0, 6.5]);
        assert_eq!(reduce(&a, Reduce::Mean { skip: 0 }), vec![3.0, 5.0]);
        let one = Activation { values: vec![1.0, 2.0], len: 1, d: 2 };
        assert_eq!(reduce(&one, Reduce::Mean { skip: 1 }), vec![1.0, 2.0]);
    }
}
