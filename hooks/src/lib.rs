//! `steer-hooks`: the one vocabulary for where steering happens, used by the model
//! (`steer-model`), the vector files (`steer-vector`), the contract's conversions (`steer-proto`)
//! and every front end. Each name has one spelling (`resid_pre`, `block_output`, `prefix`,
//! `all_positions`; parsers also take `-` for `_` and any case) and one `Display`/`FromStr`.
//!
//! GPT-2 with `n_layer` blocks has `n_layer + 1` residual streams: stream 0 is the embeddings
//! (what block 0 reads), stream `s` is the output of block `s - 1`. Every hook point names one of
//! them, so the two conventions in the literature are explicit and never ambiguous:
//! `ResidPre(L)` = stream L (TransformerLens `blocks.L.hook_resid_pre`, HF `hidden_states[L]`),
//! `BlockOutput(L)` = stream L + 1 (nnsight `transformer.h[L].output[0]`).
//! Note that HF's last `hidden_states` entry has `ln_f` applied; `BlockOutput(n_layer - 1)` does not.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A name that is not one of the vocabulary's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{input}`: expected {expected}")]
pub struct ParseError {
    pub input: String,
    /// What would have been accepted, e.g. `resid_pre or block_output`.
    pub expected: &'static str,
}

/// A hook point whose layer the model does not have.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{point}: layer {} does not exist (this model has {n_layer} layers, 0 to {})", .point.layer(), .n_layer.saturating_sub(1))]
pub struct LayerError {
    pub point: HookPoint,
    pub n_layer: usize,
}

/// `s` lower-cased with `-` read as `_`: the one normalisation of every name here.
fn normalised(s: &str) -> String {
    s.trim().to_ascii_lowercase().replace('-', "_")
}

/// `ALL`, `name()`, `Display` and `FromStr` (`-` for `_`, any case) of a named enum: one
/// spelling per variant, one parser.
macro_rules! named {
    ($ty:ident, $expected:literal, { $($variant:ident => $name:literal),+ $(,)? }) => {
        impl $ty {
            pub const ALL: [$ty; [$($name),+].len()] = [$($ty::$variant),+];

            /// The name, as files, the wire's JSON and every front end spell it.
            pub fn name(self) -> &'static str {
                match self {
                    $($ty::$variant => $name),+
                }
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.name())
            }
        }

        impl FromStr for $ty {
            type Err = ParseError;
            fn from_str(s: &str) -> Result<Self, ParseError> {
                let bad = || ParseError { input: s.to_string(), expected: $expected };
                Self::ALL.into_iter().find(|v| v.name() == normalised(s)).ok_or_else(bad)
            }
        }
    };
}

named!(HookKind, "resid_pre or block_output", { ResidPre => "resid_pre", BlockOutput => "block_output" });
named!(Placement, "prefix or all_positions", { Prefix => "prefix", AllPositions => "all_positions" });

/// The two conventions for "layer L", named explicitly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HookKind {
    /// The stream entering block L (ActAdd's convention, the default).
    #[default]
    ResidPre,
    /// The stream leaving block L (ARENA/nnsight, llama.cpp, repeng).
    BlockOutput,
}

impl HookKind {
    /// The point of this kind at `layer`.
    pub fn at(self, layer: usize) -> HookPoint {
        match self {
            HookKind::ResidPre => HookPoint::ResidPre(layer),
            HookKind::BlockOutput => HookPoint::BlockOutput(layer),
        }
    }
}

/// A point on the residual stream. Ordered by kind, then layer (the order of a vector file's
/// tensors).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HookPoint {
    /// The stream entering block L (ActAdd's convention), L in 0..n_layer.
    ResidPre(usize),
    /// The stream leaving block L (ARENA/nnsight, llama.cpp, repeng), L in 0..n_layer.
    BlockOutput(usize),
}

impl HookPoint {
    pub fn kind(self) -> HookKind {
        match self {
            HookPoint::ResidPre(_) => HookKind::ResidPre,
            HookPoint::BlockOutput(_) => HookKind::BlockOutput,
        }
    }

    pub fn layer(self) -> usize {
        match self {
            HookPoint::ResidPre(l) | HookPoint::BlockOutput(l) => l,
        }
    }

    /// Index of the residual stream this point reads and writes (0..=n_layer).
    pub fn stream(self) -> usize {
        match self {
            HookPoint::ResidPre(l) => l,
            HookPoint::BlockOutput(l) => l + 1,
        }
    }

    /// Checks the layer against the model's depth.
    pub fn check(self, n_layer: usize) -> Result<(), LayerError> {
        if self.layer() >= n_layer {
            return Err(LayerError { point: self, n_layer });
        }
        Ok(())
    }
}

impl fmt::Display for HookPoint {
    /// `resid_pre.6`, `block_output.20`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.kind(), self.layer())
    }
}

impl FromStr for HookPoint {
    type Err = ParseError;
    /// `resid_pre.6`, `block_output.6` (also `resid-pre:6`).
    fn from_str(s: &str) -> Result<Self, ParseError> {
        let bad = || ParseError { input: s.to_string(), expected: "resid_pre.L or block_output.L" };
        let (kind, layer) = s.split_once(['.', ':']).ok_or_else(bad)?;
        let layer: usize = layer.trim().parse().map_err(|_| bad())?;
        Ok(kind.parse::<HookKind>().map_err(|_| bad())?.at(layer))
    }
}

/// Where an addition lands (proto `SteeringMode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Placement {
    /// ActAdd: a `[k, d_model]` tensor at positions 0..k-1 of the prompt (BOS included when
    /// present), in the prefill pass only.
    #[default]
    Prefix,
    /// Control vectors, CAA: a `[1, d_model]` direction at every position of the prompt and
    /// at every generated token (in each decode step).
    AllPositions,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_display_and_from_str() {
        for kind in HookKind::ALL {
            for layer in [0, 7, 47] {
                let p = kind.at(layer);
                assert_eq!(p.to_string().parse::<HookPoint>().unwrap(), p);
                assert_eq!((p.kind(), p.layer()), (kind, layer));
            }
            assert_eq!(kind.to_string().parse::<HookKind>().unwrap(), kind);
        }
        for p in Placement::ALL {
            assert_eq!(p.to_string().parse::<Placement>().unwrap(), p);
        }
    }

    #[test]
    fn parsers_take_dashes_and_any_case_and_name_what_they_expect() {
        assert_eq!("Resid-Pre:6".parse::<HookPoint>().unwrap(), HookPoint::ResidPre(6));
        assert_eq!("block-output".parse::<HookKind>().unwrap(), HookKind::BlockOutput);
        assert_eq!("ALL-POSITIONS".parse::<Placement>().unwrap(), Placement::AllPositions);
        let e = "resid_post".parse::<HookKind>().unwrap_err();
        assert_eq!(e.to_string(), "`resid_post`: expected resid_pre or block_output");
        assert!("resid_pre".parse::<HookPoint>().is_err());
        assert!("resid_pre.x".parse::<HookPoint>().is_err());
        assert!("middle".parse::<Placement>().unwrap_err().to_string().contains("prefix or all_positions"));
    }

    #[test]
    fn block_output_l_is_the_stream_resid_pre_l_plus_one_reads() {
        assert_eq!(HookPoint::BlockOutput(5).stream(), HookPoint::ResidPre(6).stream());
        assert_eq!(HookPoint::ResidPre(0).stream(), 0);
    }

    #[test]
    fn points_order_by_kind_then_layer_and_layers_are_checked() {
        let mut ps = vec![HookPoint::BlockOutput(1), HookPoint::ResidPre(9), HookPoint::ResidPre(2)];
        ps.sort();
        assert_eq!(ps, vec![HookPoint::ResidPre(2), HookPoint::ResidPre(9), HookPoint::BlockOutput(1)]);
        assert!(HookPoint::ResidPre(3).check(4).is_ok());
        assert_eq!(
            HookPoint::BlockOutput(4).check(4).unwrap_err().to_string(),
            "block_output.4: layer 4 does not exist (this model has 4 layers, 0 to 3)"
        );
    }

    #[test]
    fn serde_spells_kinds_and_placements_as_files_do() {
        assert_eq!(serde_json::to_string(&HookKind::BlockOutput).unwrap(), "\"block_output\"");
        assert_eq!(serde_json::to_string(&Placement::AllPositions).unwrap(), "\"all_positions\"");
        assert_eq!(serde_json::from_str::<Placement>("\"prefix\"").unwrap(), Placement::Prefix);
    }
}
