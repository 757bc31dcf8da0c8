//! Limits of the generation worker.

#[derive(Debug, Clone)]
pub struct GenerationConfig {
    /// Most new tokens per row.
    pub max_new_tokens: usize,
    /// Most comparisons (rows per side) per request.
    pub max_comparisons: usize,
    /// Most steering tensors per request (one per hook point).
    pub max_tensors: usize,
    /// Most alternatives reported with each token (`top_logprobs`).
    pub max_top_logprobs: usize,
    /// Requests waiting for an engine slot before new ones get RESOURCE_EXHAUSTED.
    pub max_queue: usize,
    /// Engine threads generating at once (each runs one request's batch).
    pub slots: usize,
    /// Name reported in each finished row (the serving process sets it; empty by default).
    pub worker_id: String,
}

impl Default for GenerationConfig {
    fn default() -> Self {
        Self {
            max_new_tokens: 256,
            max_comparisons: 16,
            max_tensors: 64,
            max_top_logprobs: 20,
            max_queue: 32,
            slots: 1,
            worker_id: String::new(),
        }
    }
}
