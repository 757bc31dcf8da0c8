//! The sampling settings users ask for by name, spelled out once. Every default a client applies
//! (the Rust client's `RunOptions`, the CLI, the presets, the bench) comes from here; the server
//! applies none beyond the proto's own (`repetition_penalty` 0 = off, `top_p` unset = off).

use crate::v1::SamplingParameters;

impl SamplingParameters {
    /// The ActAdd post's settings: temperature 1, top_p 0.3, frequency penalty 1 (TransformerLens).
    pub fn post() -> Self {
        Self { temperature: 1.0, top_p: Some(0.3), top_k: 0, repetition_penalty: 1.0, frequency_penalty: 1.0, presence_penalty: 0.0 }
    }

    /// The ARENA seed's settings: temperature 1, top_p 0.3, Hugging Face repetition penalty 1.2.
    pub fn seed() -> Self {
        Self { repetition_penalty: 1.2, frequency_penalty: 0.0, ..Self::post() }
    }

    /// Argmax, no penalties.
    pub fn greedy() -> Self {
        Self { temperature: 0.0, top_p: None, top_k: 0, repetition_penalty: 1.0, frequency_penalty: 0.0, presence_penalty: 0.0 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_named_settings_are_the_papers() {
        let p = SamplingParameters::post();
        assert_eq!((p.temperature, p.top_p, p.frequency_penalty, p.repetition_penalty), (1.0, Some(0.3), 1.0, 1.0));
        let s = SamplingParameters::seed();
        assert_eq!((s.temperature, s.top_p, s.frequency_penalty, s.repetition_penalty), (1.0, Some(0.3), 0.0, 1.2));
        assert_eq!(SamplingParameters::greedy().temperature, 0.0);
    }
}
