//! The element type the weights are held in, as a typed value: parsed once (an unknown name is
//! an error, never a silent f32), shown in model info, and mapped to candle's `DType` here only.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

use crate::error::ModelError;

/// Precision of the loaded weights. The residual stream, steering and sampling stay in f32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WeightDtype {
    /// The post's precision; the default.
    #[default]
    F32,
    F16,
    Bf16,
}

impl WeightDtype {
    pub const ALL: [WeightDtype; 3] = [WeightDtype::F32, WeightDtype::F16, WeightDtype::Bf16];

    pub fn name(self) -> &'static str {
        match self {
            WeightDtype::F32 => "f32",
            WeightDtype::F16 => "f16",
            WeightDtype::Bf16 => "bf16",
        }
    }

    pub fn candle(self) -> candle_core::DType {
        match self {
            WeightDtype::F32 => candle_core::DType::F32,
            WeightDtype::F16 => candle_core::DType::F16,
            WeightDtype::Bf16 => candle_core::DType::BF16,
        }
    }
}

impl fmt::Display for WeightDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for WeightDtype {
    type Err = ModelError;
    /// `f32`, `f16` or `bf16` (case-insensitive; `float32`, `float16`, `bfloat16` too).
    fn from_str(s: &str) -> Result<Self, ModelError> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "float32" => Ok(WeightDtype::F32),
            "f16" | "float16" => Ok(WeightDtype::F16),
            "bf16" | "bfloat16" => Ok(WeightDtype::Bf16),
            _ => Err(ModelError::invalid("dtype", format!("`{s}`: expected f32, f16 or bf16"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_are_errors() {
        for d in WeightDtype::ALL {
            assert_eq!(d.name().parse::<WeightDtype>().unwrap(), d);
        }
        assert_eq!("BFloat16".parse::<WeightDtype>().unwrap(), WeightDtype::Bf16);
        let err = "f8".parse::<WeightDtype>().unwrap_err().to_string();
        assert!(err.contains("f8") && err.contains("expected"), "{err}");
    }
}
