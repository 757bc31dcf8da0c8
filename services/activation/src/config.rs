//! Limits and sizes of the activation worker.

/// Configuration with defaults sized for GPT-2-XL on a small machine.
#[derive(Debug, Clone)]
pub struct ActivationConfig {
    /// Bytes of activations the cache may hold before evicting the least recently used.
    pub cache_bytes: usize,
    /// Most prompts (or additions) in one request.
    pub max_prompts: usize,
    /// Most hook points in one GetActivations request.
    pub max_points: usize,
    /// Calls computing or streaming at once; one more gets RESOURCE_EXHAUSTED (each holds a
    /// blocking thread while it computes).
    pub max_concurrent: usize,
    /// Most contrast pairs in one dataset vector.
    pub max_pairs: usize,
    /// Pairs per capture forward of a dataset vector, unless the request says.
    pub pair_batch: usize,
}

impl Default for ActivationConfig {
    fn default() -> Self {
        Self { cache_bytes: 512 << 20, max_prompts: 64, max_points: 64, max_concurrent: 8, max_pairs: 4096, pair_batch: 8 }
    }
}
