//! ActAdd's steering tensors from activation additions, the one place the sum is made: per hook
//! point, the contrast prompts are right-padded with the space token to the longest of them (or
//! required to be of equal length in strict mode), and summed as coeff * activation.

use std::collections::BTreeMap;

use steer_common::ServiceError;
use steer_model::tokenizer::SPACE;
use steer_model::HookPoint;

/// One addition, tokenised: `ids` already padded.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedAddition {
    /// Index in the request.
    pub index: usize,
    pub coeff: f64,
    pub ids: Vec<u32>,
    pub padding: usize,
}

/// The additions grouped by hook point, each group padded to one length.
pub type Plan = BTreeMap<HookPoint, Vec<PlannedAddition>>;

/// Groups `(point, coeff, ids)` additions by point and pads each group.
pub fn plan(additions: &[(HookPoint, f64, Vec<u32>)], strict_lengths: bool) -> Result<Plan, ServiceError> {
    let mut by_point = Plan::new();
    for (index, (point, coeff, ids)) in additions.iter().enumerate() {
        by_point.entry(*point).or_default().push(PlannedAddition { index, coeff: *coeff, ids: ids.clone(), padding: 0 });
    }
    for (point, group) in by_point.iter_mut() {
        let k = group.iter().map(|a| a.ids.len()).max().unwrap_or(0);
        if k == 0 {
            return Err(ServiceError::invalid(
                format!("additions[{}].prompt", group[0].index),
                format!("the prompts added at {point} have no tokens"),
            ));
        }
        for a in group.iter_mut() {
            if a.ids.len() < k {
                if strict_lengths {
                    return Err(ServiceError::invalid(
                        format!("additions[{}].prompt", a.index),
                        format!(
                            "{} tokens, but another prompt at {point} has {k} (strict_lengths: prompts at one layer must have equal token lengths)",
                            a.ids.len()
                        ),
                    ));
                }
                a.padding = k - a.ids.len();
                a.ids.resize(k, SPACE);
            }
        }
    }
    Ok(by_point)
}

/// sum of coeff * activation over a group (each activation `[k, d]` row-major, all of one
/// length). A sum that leaves f32's range is an error naming the group's first addition.
pub fn sum<'a>(point: HookPoint, group: &[PlannedAddition], acts: impl IntoIterator<Item = &'a [f32]>) -> Result<Vec<f32>, ServiceError> {
    let mut total: Vec<f32> = vec![];
    for (a, act) in group.iter().zip(acts) {
        if total.is_empty() {
            total = vec![0f32; act.len()];
        }
        for (o, v) in total.iter_mut().zip(act) {
            *o += (a.coeff * *v as f64) as f32;
        }
    }
    if total.iter().any(|v| !v.is_finite() || v.abs() > steer_model::MAX_STEERING_ABS) {
        return Err(ServiceError::invalid(
            format!("additions[{}].coeff", group[0].index),
            format!("the steering tensor at {point} leaves ±{:e}: coefficients too large", steer_model::MAX_STEERING_ABS),
        ));
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    const L6: HookPoint = HookPoint::ResidPre(6);

    #[test]
    fn pads_each_point_to_its_longest_with_spaces() {
        let plan = plan(&[(L6, 4.0, vec![1, 2, 3]), (L6, -4.0, vec![9]), (HookPoint::ResidPre(2), 1.0, vec![5])], false).unwrap();
        assert_eq!(plan[&L6][1].ids, vec![9, SPACE, SPACE]);
        assert_eq!(plan[&L6][1].padding, 2);
        assert_eq!(plan[&L6][0].padding, 0);
        assert_eq!(plan[&HookPoint::ResidPre(2)][0].ids, vec![5]);
    }

    #[test]
    fn strict_mode_rejects_unequal_lengths_naming_the_addition() {
        let err = plan(&[(L6, 4.0, vec![1, 2, 3]), (L6, -4.0, vec![9])], true).unwrap_err();
        assert!(err.to_string().contains("additions[1].prompt"), "{err}");
        assert!(plan(&[(L6, 4.0, vec![1, 2]), (L6, -4.0, vec![9, 8])], true).is_ok());
        assert!(plan(&[(L6, 4.0, vec![]), (L6, -4.0, vec![])], false).is_err());
    }

    #[test]
    fn sums_coeff_times_activation_and_refuses_overflow() {
        let group = plan(&[(L6, 2.0, vec![1]), (L6, -1.0, vec![2])], false).unwrap().remove(&L6).unwrap();
        let (a, b) = ([1.0f32, 2.0], [0.5f32, 4.0]);
        assert_eq!(sum(L6, &group, [&a[..], &b[..]]).unwrap(), vec![1.5, 0.0]);
        let huge = plan(&[(L6, 1e300, vec![1])], false).unwrap().remove(&L6).unwrap();
        let err = sum(L6, &huge, [&a[..]]).unwrap_err();
        assert!(err.to_string().starts_with("additions[0].coeff"), "{err}");
    }
}
