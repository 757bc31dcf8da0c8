//! ActAdd's steering tensors from activation additions: per layer, the contrast prompts are
//! tokenised, right-padded with the space token to the longest of them (or required to be of
//! equal length in strict mode), and summed as coeff * activation.

use std::collections::BTreeMap;

use steer_model::tokenizer::SPACE;

use crate::error::ActivationError;

/// One addition, tokenised: `ids` already padded.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedAddition {
    pub index: usize,
    pub coeff: f64,
    pub ids: Vec<u32>,
    pub padding: usize,
}

/// The additions grouped by layer, each group padded to one length.
pub fn plan(
    additions: &[(usize, f64, Vec<u32>)], // (layer, coeff, ids)
    strict_lengths: bool,
) -> Result<BTreeMap<usize, Vec<PlannedAddition>>, ActivationError> {
    let mut by_layer: BTreeMap<usize, Vec<PlannedAddition>> = BTreeMap::new();
    for (index, (layer, coeff, ids)) in additions.iter().enumerate() {
        by_layer.entry(*layer).or_default().push(PlannedAddition { index, coeff: *coeff, ids: ids.clone(), padding: 0 });
    }
    for (layer, group) in by_layer.iter_mut() {
        let k = group.iter().map(|a| a.ids.len()).max().unwrap_or(0);
        if k == 0 {
            return Err(ActivationError::invalid(
                format!("additions[{}].prompt", group[0].index),
                format!("the prompts added at layer {layer} have no tokens"),
            ));
        }
        for a in group.iter_mut() {
            if a.ids.len() < k {
                if strict_lengths {
                    return Err(ActivationError::invalid(
                        format!("additions[{}].prompt", a.index),
                        format!(
                            "{} tokens, but another prompt at layer {layer} has {k} (strict_lengths: prompts at one layer must have equal token lengths)",
                            a.ids.len()
                        ),
                    ));
                }
                a.padding = k - a.ids.len();
                a.ids.resize(k, SPACE);
            }
        }
    }
    Ok(by_layer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pads_each_layer_to_its_longest_with_spaces() {
        let plan = plan(&[(6, 4.0, vec![1, 2, 3]), (6, -4.0, vec![9]), (2, 1.0, vec![5])], false).unwrap();
        assert_eq!(plan[&6][1].ids, vec![9, SPACE, SPACE]);
        assert_eq!(plan[&6][1].padding, 2);
        assert_eq!(plan[&6][0].padding, 0);
        assert_eq!(plan[&2][0].ids, vec![5]);
    }

    #[test]
    fn strict_mode_rejects_unequal_lengths_naming_the_addition() {
        let err = plan(&[(6, 4.0, vec![1, 2, 3]), (6, -4.0, vec![9])], true).unwrap_err();
        assert!(err.to_string().contains("additions[1].prompt"), "{err}");
        assert!(plan(&[(6, 4.0, vec![1, 2]), (6, -4.0, vec![9, 8])], true).is_ok());
        assert!(plan(&[(6, 4.0, vec![]), (6, -4.0, vec![])], false).is_err());
    }
}
