//! The element type the weights are held in, as a typed value: parsed once (an unknown name is
//! an error, never a silent f32), shown in model info, and mapped to candle's `DType` here only.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

use crate::error::ModelError;

/// Which 16-bit float a half-precision matrix holds (the storage of [`WeightDtype::F16`] and
/// [`WeightDtype::Bf16`] weights).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HalfKind {
    /// bfloat16: the high half of an f32.
    Bf16,
    /// IEEE half.
    F16,
}

/// Precision of the loaded weights. The residual stream, steering and sampling stay in f32.
/// By default the weights keep the type the checkpoint stores them in (a q8_0 GGUF serves as
/// q8_0, an f16 safetensors file as f16); `--dtype` converts them at load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WeightDtype {
    /// The post's precision; the default.
    #[default]
    F32,
    F16,
    Bf16,
    /// llama.cpp's 8-bit blocks (32 int8 and one f16 scale each): 1.0625 bytes per weight.
    Q8_0,
}

impl WeightDtype {
    pub const ALL: [WeightDtype; 4] = [WeightDtype::F32, WeightDtype::F16, WeightDtype::Bf16, WeightDtype::Q8_0];

    pub fn name(self) -> &'static str {
        match self {
            WeightDtype::F32 => "f32",
            WeightDtype::F16 => "f16",
            WeightDtype::Bf16 => "bf16",
            WeightDtype::Q8_0 => "q8_0",
        }
    }

    /// Bytes per weight of the large matrices (what a decoded token streams per parameter).
    pub fn bytes_per_weight(self) -> f64 {
        match self {
            WeightDtype::F32 => 4.0,
            WeightDtype::F16 | WeightDtype::Bf16 => 2.0,
            WeightDtype::Q8_0 => 34.0 / 32.0,
        }
    }

    /// The dtype a safetensors header names (`F32`, `F16`, `BF16`), if it is one of these.
    pub fn from_safetensors(name: &str) -> Option<Self> {
        match name {
            "F32" => Some(WeightDtype::F32),
            "F16" => Some(WeightDtype::F16),
            "BF16" => Some(WeightDtype::Bf16),
            _ => None,
        }
    }

    /// The 16-bit kind, for f16 and bf16.
    pub fn half(self) -> Option<HalfKind> {
        match self {
            WeightDtype::F16 => Some(HalfKind::F16),
            WeightDtype::Bf16 => Some(HalfKind::Bf16),
            _ => None,
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
    /// `f32`, `f16`, `bf16` or `q8_0` (case-insensitive; `float32`, `float16`, `bfloat16`, `q8` too).
    fn from_str(s: &str) -> Result<Self, ModelError> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "float32" => Ok(WeightDtype::F32),
            "f16" | "float16" => Ok(WeightDtype::F16),
            "bf16" | "bfloat16" => Ok(WeightDtype::Bf16),
            "q8_0" | "q8" => Ok(WeightDtype::Q8_0),
            _ => Err(ModelError::invalid("dtype", format!("`{s}`: expected f32, f16, bf16 or q8_0"))),
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
