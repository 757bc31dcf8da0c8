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
            max_score_calls: 2,
            vector_cache_bytes: 256 << 20,
            prefix_cache_bytes: 1 << 30,
            worker_id: String::new(),
        }
    }
}
