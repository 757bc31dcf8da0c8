//! Limits of the generation worker.

#[derive(Debug, Clone)]
pub struct GenerationConfig {
    /// Most new tokens per row.
    pub max_new_tokens: usize,
    /// Most comparisons (rows per side) per request.
    pub max_comparisons: usize,
    /// Requests waiting for an engine slot before new ones get RESOURCE_EXHAUSTED.
    pub max_queue: usize,
    /// Engine threads generating at once (each runs one request's batch).
    pub slots: usize,
    /// Name reported in each finished row (default: the host name).
    pub worker_id: String,
}

impl Default for GenerationConfig {
    fn default() -> Self {
        let host = std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()).unwrap_or_default();
        Self { max_new_tokens: 256, max_comparisons: 16, max_queue: 32, slots: 1, worker_id: host }
    }
}
