//! Vector files on disk: ours (`.safetensors`, [`crate::format`]) and llama.cpp control vectors
//! (`.gguf`, [`crate::gguf`]), told apart by extension.

use std::path::Path;

use crate::error::{Result, VectorError};
use crate::format::SteeringVector;

impl SteeringVector {
    /// Writes the file (`.safetensors`).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        std::fs::write(path, self.to_bytes()).map_err(|e| VectorError::io(path, e))
    }

    /// Reads a vector file: a `.gguf` as a llama.cpp control vector, anything else as ours.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| VectorError::io(path, e))?;
        if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf")) {
            let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            return crate::gguf::import(&bytes, &name);
        }
        Self::from_bytes(&bytes)
    }
}
