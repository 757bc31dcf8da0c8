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
    /// Requests waiting to join the running batch before new ones get RESOURCE_EXHAUSTED.
    pub max_queue: usize,
    /// Most rows decoding at once, over all requests.
    pub max_batch_rows: usize,
    /// Most KV positions the running rows may reserve, over all requests (each row reserves
    /// prompt + max_new_tokens; memory is allocated as rows grow).
    pub max_batch_tokens: usize,
    /// Prefill chunk (prompt positions): a long prompt is prefilled this many positions per
    /// iteration while other rows decode, so they wait one chunk, not a whole prompt.
    pub max_prefill_tokens: usize,
    /// Prompt positions prefilled per forward (each forward also runs the decode step of every
    /// running row): one chunk of each waiting request, shortest first (see `prefill_aging`),
    /// while they stay within this (at least one chunk). One chunk (the default) keeps the
    /// running streams' gaps shortest and gives the first of a burst of arrivals their first
    /// tokens soonest; more prefills more requests per forward, as vLLM's and TGI's prefill
    /// token budgets do.
    pub prefill_tokens_per_step: usize,
    /// Prefills run shortest remaining prompt first; a request admitted this long ago goes
    /// first (oldest first), so long prompts are never starved by short ones.
    pub prefill_aging: std::time::Duration,
    /// When a request reaches an idle engine, how long it waits for others arriving with it,
    /// so that a burst's shortest prompts are prefilled first.
    pub arrival_window: std::time::Duration,
    /// A request whose client reads nothing for this long is cancelled (ABORTED) and its rows
    /// freed; the other requests never wait for it.
    pub stall_timeout: std::time::Duration,
    /// Bytes of steering tensors one request may send (read, then widened to f32).
    pub max_request_bytes: u64,
    /// Bytes of steering tensors all requests in the worker may hold at once (being read,
    /// queued or running); a request past it gets RESOURCE_EXHAUSTED.
    pub max_inflight_bytes: u64,
    /// Longest wait for the next message of a `Generate` request stream.
    pub read_timeout: std::time::Duration,
    /// Most texts in one Score request.
    pub max_score_texts: usize,
    /// Text positions scored per forward when no generation runs (a forward's logits take
    /// this x vocabulary x 4 bytes); beside generations, `prefill_tokens_per_step` holds.
    pub score_batch_tokens: usize,
    /// Score calls computing at once; one more gets RESOURCE_EXHAUSTED.
    pub max_score_calls: usize,
    /// Bytes of library vectors kept after fetching (by digest).
    pub vector_cache_bytes: u64,
    /// Bytes of prefilled rows (KV and first logits) kept for later requests with the same
    /// prompt and steering (`steer_model::PrefixCache`); 0 turns it off.
    pub prefix_cache_bytes: usize,
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
            max_batch_rows: 32,
            max_batch_tokens: 8192,
            max_prefill_tokens: 32,
            prefill_tokens_per_step: 32,
            prefill_aging: std::time::Duration::from_secs(10),
            arrival_window: std::time::Duration::from_millis(10),
            stall_timeout: std::time::Duration::from_secs(10),
            max_request_bytes: 64 << 20,
            max_inflight_bytes: 512 << 20,
            read_timeout: std::time::Duration::from_secs(30),
            max_score_texts: 1024,
            score_batch_tokens: 1024,
            max_score_calls: 8,
            vector_cache_bytes: 256 << 20,
            prefix_cache_bytes: 1 << 30,
            worker_id: String::new(),
        }
    }
}

/// The most memory the generation worker's budgets allow it to hold, part by part
/// ([`GenerationConfig::memory_plan`]): what a container's memory limit must cover.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryPlan {
    /// The loaded weights.
    pub weights: u64,
    /// KV of `max_batch_tokens` positions (f32 keys and values of every layer).
    pub kv: u64,
    /// `prefix_cache_bytes`.
    pub prefix_cache: u64,
    /// `max_inflight_bytes` of steering tensors.
    pub inflight: u64,
    /// `vector_cache_bytes` of library vectors.
    pub vectors: u64,
    /// One forward's logits at its largest (`score_batch_tokens` positions x the vocabulary).
    pub logits: u64,
}

impl MemoryPlan {
    pub fn total(&self) -> u64 {
        self.weights + self.kv + self.prefix_cache + self.inflight + self.vectors + self.logits
    }
}

impl std::fmt::Display for MemoryPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let gb = |b: u64| b as f64 / 1e9;
        write!(
            f,
            "weights {:.2} GB + KV {:.2} GB (--max-batch-tokens) + prefix cache {:.2} GB (--prefix-cache-mib) + steering in flight \
             {:.2} GB (--max-inflight-bytes) + library vectors {:.2} GB + logits {:.2} GB = {:.2} GB",
            gb(self.weights),
            gb(self.kv),
            gb(self.prefix_cache),
            gb(self.inflight),
            gb(self.vectors),
            gb(self.logits),
            gb(self.total())
        )
    }
}

impl GenerationConfig {
    /// The most memory these budgets let a worker hold on `info`'s model with `weight_bytes`
    /// of weights.
    pub fn memory_plan(&self, info: &steer_model::ModelInfo, weight_bytes: usize) -> MemoryPlan {
        let kv_per_position = (info.n_layer * 2 * info.d_model * 4) as u64;
        MemoryPlan {
            weights: weight_bytes as u64,
            kv: self.max_batch_tokens as u64 * kv_per_position,
            prefix_cache: self.prefix_cache_bytes as u64,
            inflight: self.max_inflight_bytes,
            vectors: self.vector_cache_bytes,
            logits: (self.score_batch_tokens.max(self.prefill_tokens_per_step + self.max_batch_rows) * info.vocab_size * 4) as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_memory_plan_of_xl_f32_with_the_defaults_fits_a_24_gib_machine() {
        let info = steer_model::ModelInfo {
            name: "gpt2-xl".into(),
            revision: String::new(),
            n_layer: 48,
            d_model: 1600,
            d_inner: 6400,
            n_head: 25,
            n_positions: 1024,
            vocab_size: 50257,
            dtype: steer_model::WeightDtype::F32,
            stored_dtype: steer_model::WeightDtype::F32,
            architecture: "gpt2".into(),
            fingerprint: String::new(),
        };
        let plan = GenerationConfig::default().memory_plan(&info, 6_224_000_000);
        // 48 layers x K and V x 1600 x 4 bytes = 614 KB per position.
        assert_eq!(plan.kv, 8192 * 614_400);
        assert_eq!(plan.prefix_cache, 1 << 30);
        assert!(plan.total() < 24 << 30, "{plan}");
        assert!(plan.to_string().contains("= 13."), "{plan}");
    }
}
