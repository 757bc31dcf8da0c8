//! The HTTP routes' steering object: `"steering"` in a completion request, and what a
//! steering profile holds ([`crate::profiles`]). `http::openai::tensors` turns it into
//! steering tensors.
//!
//! ```json
//! {"hook": "resid_pre", "additions": [{"layer": 6, "coeff": 5, "text": "Love"},
//!                                     {"layer": 6, "coeff": -5, "text": "Hate"}],
//!  "vectors": [{"name": "love-hate", "scale": 2},
//!              {"name": "refusal", "op": "ablate", "window": "all_positions"},
//!              {"name": "golden-gate", "op": "clamp=8", "window": "generated"}],
//!  "compare": true}
//! ```

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Steering {
    /// `resid_pre` (default) or `block_output` (`resid-pre`, `block-output` too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hook: Option<String>,
    /// A prompt shorter than the steering is padded with spaces after BOS (else refused).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pad_short_prompt: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub additions: Vec<SteeringAddition>,
    /// Library vectors, by name, digest or digest prefix, each with an optional scale and layer
    /// range.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vectors: Vec<SteeringVectorRef>,
    /// Return the unsteered completions too (first), each choice marked.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub compare: bool,
    /// Prepend <|endoftext|> to a text prompt (default true, the post's). Token-id prompts are
    /// taken as they are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_bos: Option<bool>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SteeringAddition {
    pub layer: u32,
    pub coeff: f64,
    pub text: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SteeringVectorRef {
    /// Name, digest or digest prefix (8+ hex digits) in the library.
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_layer: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_layer: Option<u32>,
    /// Apply it though it was made on other weights of the same shape.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub force_model: bool,
    /// Apply it as `add`, `ablate` or `clamp=VALUE` instead of as its file says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub op: Option<String>,
    /// Apply it over `prefix`, `all_positions`, `generated`, `A-B` or `A-` (positions A..B, B
    /// excluded; A on) instead of its file's window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<String>,
}

impl Steering {
    /// Whether it steers at all (additions or vectors).
    pub fn steers(&self) -> bool {
        !self.additions.is_empty() || !self.vectors.is_empty()
    }
}
