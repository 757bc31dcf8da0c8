//! `steer-hooks`: the one vocabulary for where steering happens, used by the model
//! (`steer-model`), the vector files (`steer-vector`), the contract's conversions (`steer-proto`)
//! and every front end. Each name has one spelling (`resid_pre`, `block_output`; windows
//! `prefix`, `all_positions`, `generated`, `A-B`; ops `add`, `ablate`, `clamp=C`; parsers also
//! take `-` for `_` and any case) and one `Display`/`FromStr`.
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

/// Which positions of a row a steering tensor acts on (proto `SteeringMode` and the range
/// fields). Positions are absolute: 0 is the row's first token (BOS when it has one), the
/// prompt is `0..prompt_len`, generated token i sits at `prompt_len + i`.
///
/// Spelled `prefix`, `all_positions`, `generated`, `A-B` (positions A..B, B excluded) and `A-`
/// (A on); files and JSON carry the same strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Window {
    /// ActAdd: a `[k, d_model]` tensor at positions 0..k-1 of the prompt (BOS included when
    /// present), row i at position i, in the prefill pass only.
    #[default]
    Prefix,
    /// Control vectors, CAA: a `[1, d_model]` direction at every position of the prompt and
    /// at every generated token (in each decode step).
    AllPositions,
    /// Only the generated tokens (the decode steps): the prompt is left as it is. The first
    /// generated token comes from the prompt's last position, so it is unsteered; the steering
    /// acts from the second on.
    Generated,
    /// Positions `start..end` (`end` open: from `start` on), prompt and generated alike.
    Range { start: usize, end: Option<usize> },
}

impl Window {
    /// The four kinds, with `Range` from 0 on (for listing and tests).
    pub const KINDS: [Window; 4] = [Window::Prefix, Window::AllPositions, Window::Generated, Window::Range { start: 0, end: None }];

    /// The positions covered, `start..end` (`None`: no end), for a tensor of `k` rows on a row
    /// whose prompt has `prompt_len` tokens.
    pub fn span(self, k: usize, prompt_len: usize) -> (usize, Option<usize>) {
        match self {
            Window::Prefix => (0, Some(k)),
            Window::AllPositions => (0, None),
            Window::Generated => (prompt_len, None),
            Window::Range { start, end } => (start, end),
        }
    }

    /// Only ActAdd's prefix takes a `[k, d]` tensor (row i at position i); every other window
    /// applies one `[1, d]` direction at each of its positions.
    pub fn positional(self) -> bool {
        self == Window::Prefix
    }

    /// The kind's name: `prefix`, `all_positions`, `generated` or `range`.
    pub fn kind_name(self) -> &'static str {
        match self {
            Window::Prefix => "prefix",
            Window::AllPositions => "all_positions",
            Window::Generated => "generated",
            Window::Range { .. } => "range",
        }
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Window::Range { start, end: Some(end) } => write!(f, "{start}-{end}"),
            Window::Range { start, end: None } => write!(f, "{start}-"),
            w => f.write_str(w.kind_name()),
        }
    }
}

impl FromStr for Window {
    type Err = ParseError;
    /// `prefix`, `all_positions` (`all`), `generated` (`generated_only`), `A-B`, `A-` (also
    /// `A..B`, `A..`); a range must not be empty.
    fn from_str(s: &str) -> Result<Self, ParseError> {
        let bad = || ParseError { input: s.to_string(), expected: "prefix, all_positions, generated, A-B or A- (positions A..B, B excluded)" };
        let n = normalised(s);
        match n.as_str() {
            "prefix" => return Ok(Window::Prefix),
            "all_positions" | "all" => return Ok(Window::AllPositions),
            "generated" | "generated_only" => return Ok(Window::Generated),
            _ => {}
        }
        let t = s.trim();
        let (a, b) = t.split_once("..").or_else(|| t.split_once('-')).ok_or_else(bad)?;
        let start: usize = a.trim().parse().map_err(|_| bad())?;
        let end = match b.trim() {
            "" => None,
            b => Some(b.parse::<usize>().map_err(|_| bad())?),
        };
        if end.is_some_and(|e| e <= start) {
            return Err(bad());
        }
        Ok(Window::Range { start, end })
    }
}

/// serde as the `Display`/`FromStr` string (files and JSON spell a value as every front end does).
macro_rules! serde_as_string {
    ($($ty:ident),+) => {$(
        impl Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
            }
        }
    )+};
}

serde_as_string!(Op, Window);

/// What a steering tensor does to the residual stream at the positions of its window.
///
/// At one hook point the operations run in a fixed order, whatever order they were given in:
/// every ADD first (they commute), then the ABLATEs, then the CLAMPs, each kind in the order
/// given. So an ablated direction stays ablated whatever was added, and a clamped component
/// holds its value exactly. `resid_pre.L+1` and `block_output.L` are one stream and one point.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Op {
    /// x <- x + v (v: the tensor's row for the position).
    #[default]
    Add,
    /// x <- x - (x . u) u, u the tensor's row normalised (directional ablation).
    Ablate,
    /// x <- x - (x . u) u + value u: the component along u set to `value` (SAE feature clamping).
    Clamp { value: f32 },
}

impl Op {
    /// The kind's name: `add`, `ablate` or `clamp`.
    pub fn name(self) -> &'static str {
        match self {
            Op::Add => "add",
            Op::Ablate => "ablate",
            Op::Clamp { .. } => "clamp",
        }
    }

    /// Where the op runs among a point's ops: ADD, then ABLATE, then CLAMP.
    pub fn rank(self) -> u8 {
        match self {
            Op::Add => 0,
            Op::Ablate => 1,
            Op::Clamp { .. } => 2,
        }
    }

    /// A projection (ABLATE, CLAMP) acts on the unit direction of its tensor's rows.
    pub fn projects(self) -> bool {
        self != Op::Add
    }
}

impl fmt::Display for Op {
    /// `add`, `ablate`, `clamp=VALUE`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Clamp { value } => write!(f, "clamp={value}"),
            o => f.write_str(o.name()),
        }
    }
}

impl FromStr for Op {
    type Err = ParseError;
    /// `add`, `ablate`, `clamp=VALUE` (also `clamp:VALUE`).
    fn from_str(s: &str) -> Result<Self, ParseError> {
        let bad = || ParseError { input: s.to_string(), expected: "add, ablate or clamp=VALUE" };
        match s.split_once(['=', ':']) {
            None if normalised(s) == "add" => Ok(Op::Add),
            None if normalised(s) == "ablate" => Ok(Op::Ablate),
            Some((k, v)) if normalised(k) == "clamp" => {
                v.trim().parse::<f32>().ok().filter(|v| v.is_finite()).map(|value| Op::Clamp { value }).ok_or_else(bad)
            }
            _ => Err(bad()),
        }
    }
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
        for w in Window::KINDS.into_iter().chain([Window::Range { start: 3, end: Some(9) }]) {
            assert_eq!(w.to_string().parse::<Window>().unwrap(), w);
        }
        for o in [Op::Add, Op::Ablate, Op::Clamp { value: -2.5 }] {
            assert_eq!(o.to_string().parse::<Op>().unwrap(), o);
        }
    }

    #[test]
    fn parsers_take_dashes_and_any_case_and_name_what_they_expect() {
        assert_eq!("Resid-Pre:6".parse::<HookPoint>().unwrap(), HookPoint::ResidPre(6));
        assert_eq!("block-output".parse::<HookKind>().unwrap(), HookKind::BlockOutput);
        assert_eq!("ALL-POSITIONS".parse::<Window>().unwrap(), Window::AllPositions);
        assert_eq!("generated_only".parse::<Window>().unwrap(), Window::Generated);
        assert_eq!("4..".parse::<Window>().unwrap(), Window::Range { start: 4, end: None });
        assert_eq!("Clamp:3".parse::<Op>().unwrap(), Op::Clamp { value: 3.0 });
        assert!("5-5".parse::<Window>().is_err(), "an empty range");
        assert!("clamp=nan".parse::<Op>().is_err());
        let e = "resid_post".parse::<HookKind>().unwrap_err();
        assert_eq!(e.to_string(), "`resid_post`: expected resid_pre or block_output");
        assert!("resid_pre".parse::<HookPoint>().is_err());
        assert!("resid_pre.x".parse::<HookPoint>().is_err());
        assert!("middle".parse::<Window>().unwrap_err().to_string().contains("prefix, all_positions, generated"));
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
        assert_eq!(serde_json::to_string(&Window::AllPositions).unwrap(), "\"all_positions\"");
        assert_eq!(serde_json::from_str::<Window>("\"prefix\"").unwrap(), Window::Prefix);
        assert_eq!(serde_json::to_string(&Window::Range { start: 2, end: None }).unwrap(), "\"2-\"");
        assert_eq!(serde_json::to_string(&Op::Clamp { value: 1.5 }).unwrap(), "\"clamp=1.5\"");
        assert_eq!(serde_json::from_str::<Op>("\"ablate\"").unwrap(), Op::Ablate);
    }
}
