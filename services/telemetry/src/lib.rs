//! `steer-telemetry`: the workers' Prometheus metrics (one registry per process, passed down),
//! their HTTP endpoint at `/metrics` ([`http`]), and the tracing subscriber (text or JSON).

mod http;
mod traces;

pub use traces::{adopt_remote_parent, inject_current, TraceGuard};

use std::sync::Arc;

use prometheus::{Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};

/// Every metric the workers export.
pub struct Metrics {
    pub registry: Registry,
    /// RPCs by service, method and status code.
    pub requests: IntCounterVec,
    /// Time to the response (unary) or to the stream's start, by method.
    pub latency: HistogramVec,
    pub tokens_generated: IntCounter,
    /// Tokens per second of the last finished request.
    pub tokens_per_second: prometheus::Gauge,
    /// Seconds from a generation's start to its first token.
    pub time_to_first_token: prometheus::Histogram,
    /// Whole generations (prefill + decode), seconds.
    pub generation_seconds: prometheus::Histogram,
    /// Seconds per output token after the first (a finished request's decode time over its
    /// row's tokens after the first): vLLM's `time_per_output_token_seconds`.
    pub time_per_output_token: prometheus::Histogram,
    /// Requests waiting to join the running batch.
    pub queue_depth: IntGauge,
    /// Seconds a request waited before its prefill.
    pub queue_wait: prometheus::Histogram,
    /// Rows in the running batch (batch occupancy).
    pub batch_rows: IntGauge,
    /// Requests in the running batch.
    pub requests_running: IntGauge,
    /// Decode steps run (their rate is steps/s).
    pub decode_steps: IntCounter,
    /// Rows sharing each decode step.
    pub step_rows: prometheus::Histogram,
    /// Bytes of KV cache the running rows hold.
    pub kv_bytes: IntGauge,
    /// The KV budget (`--max-batch-tokens` positions), bytes: `kv_bytes` against it is KV usage.
    pub kv_budget_bytes: IntGauge,
    /// Bytes of steering tensors held by generation requests (read, queued or running).
    pub inflight_bytes: IntGauge,
    pub cache_hits: IntGauge,
    pub cache_misses: IntGauge,
    pub cache_bytes: IntGauge,
    pub cache_entries: IntGauge,
    /// The generation worker's prefix cache: requests whose rows were all held, rows missed,
    /// prompt positions not prefilled, bytes and entries held.
    pub prefix_cache_hits: IntGauge,
    pub prefix_cache_misses: IntGauge,
    pub prefix_cache_positions_reused: IntGauge,
    pub prefix_cache_partial_hits: IntGauge,
    pub memory_budget_bytes: IntGauge,
    pub prefix_cache_block_positions_reused: IntGauge,
    pub prefix_cache_bytes: IntGauge,
    pub prefix_cache_entries: IntGauge,
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let registry = Registry::new_custom(Some("steer".into()), None).expect("registry");
        let requests = IntCounterVec::new(Opts::new("requests_total", "RPCs by service, method and code"), &["service", "method", "code"]).unwrap();
        let buckets = vec![0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];
        let latency = HistogramVec::new(
            HistogramOpts::new("request_duration_seconds", "time to the response or the stream's start").buckets(buckets.clone()),
            &["service", "method"],
        )
        .unwrap();
        let h = |name: &str, help: &str| prometheus::Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.clone())).unwrap();
        let g = |name: &str, help: &str| IntGauge::new(name, help).unwrap();
        let m = Self {
            requests,
            latency,
            tokens_generated: IntCounter::new("tokens_generated_total", "tokens generated, all rows").unwrap(),
            tokens_per_second: prometheus::Gauge::new("tokens_per_second", "tokens per second of the last finished request").unwrap(),
            time_to_first_token: h("time_to_first_token_seconds", "generation start to first token"),
            generation_seconds: h("generation_seconds", "whole generations, prefill and decode"),
            time_per_output_token: prometheus::Histogram::with_opts(
                HistogramOpts::new("time_per_output_token_seconds", "decode seconds per output token after the first, per finished request")
                    .buckets(vec![0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0]),
            )
            .unwrap(),
            queue_depth: g("queue_depth", "requests waiting to join the running batch"),
            queue_wait: h("queue_wait_seconds", "time from arrival to prefill"),
            batch_rows: g("batch_rows", "rows in the running batch"),
            requests_running: g("requests_running", "requests in the running batch"),
            decode_steps: IntCounter::new("decode_steps_total", "decode steps run").unwrap(),
            step_rows: prometheus::Histogram::with_opts(
                HistogramOpts::new("step_rows", "rows sharing a decode step").buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0]),
            )
            .unwrap(),
            kv_bytes: g("kv_bytes", "bytes of KV cache held by running rows"),
            kv_budget_bytes: g("kv_budget_bytes", "the KV budget: --max-batch-tokens positions of f32 keys and values"),
            inflight_bytes: g("inflight_tensor_bytes", "bytes of steering tensors held by generation requests"),
            cache_hits: g("activation_cache_hits", "activation cache hits"),
            cache_misses: g("activation_cache_misses", "activation cache misses (computations)"),
            cache_bytes: g("activation_cache_bytes", "bytes held by the activation cache"),
            cache_entries: g("activation_cache_entries", "entries in the activation cache"),
            prefix_cache_hits: g("prefix_cache_hits", "prompt rows served from the prefix cache"),
            prefix_cache_misses: g("prefix_cache_misses", "prompt rows the prefix cache did not hold"),
            prefix_cache_positions_reused: g("prefix_cache_positions_reused", "prompt positions not prefilled thanks to the prefix cache"),
            memory_budget_bytes: g(
                "memory_budget_bytes",
                "the most memory the generation worker's budgets allow: weights, KV, prefix cache, tensors in flight, vectors, logits",
            ),
            prefix_cache_partial_hits: g(
                "prefix_cache_partial_hits",
                "steered rows prefilled from a cached unsteered trunk, from their first steered stream",
            ),
            prefix_cache_block_positions_reused: g(
                "prefix_cache_block_positions_reused",
                "prompt positions times blocks not computed thanks to the prefix cache (hits and partial hits)",
            ),
            prefix_cache_bytes: g("prefix_cache_bytes", "bytes held by the prefix cache"),
            prefix_cache_entries: g("prefix_cache_entries", "prefilled rows held by the prefix cache"),
            registry,
        };
        let r = &m.registry;
        r.register(Box::new(m.requests.clone())).unwrap();
        r.register(Box::new(m.latency.clone())).unwrap();
        r.register(Box::new(m.tokens_generated.clone())).unwrap();
        r.register(Box::new(m.tokens_per_second.clone())).unwrap();
        r.register(Box::new(m.time_to_first_token.clone())).unwrap();
        r.register(Box::new(m.generation_seconds.clone())).unwrap();
        r.register(Box::new(m.time_per_output_token.clone())).unwrap();
        // process_cpu_seconds_total, process_resident_memory_bytes, process_open_fds, ...
        #[cfg(target_os = "linux")]
        r.register(Box::new(prometheus::process_collector::ProcessCollector::for_self())).unwrap();
        r.register(Box::new(m.queue_wait.clone())).unwrap();
        r.register(Box::new(m.decode_steps.clone())).unwrap();
        r.register(Box::new(m.step_rows.clone())).unwrap();
        for gauge in [
            &m.queue_depth,
            &m.batch_rows,
            &m.requests_running,
            &m.kv_bytes,
            &m.kv_budget_bytes,
            &m.inflight_bytes,
            &m.cache_hits,
            &m.cache_misses,
            &m.cache_bytes,
            &m.cache_entries,
            &m.prefix_cache_hits,
            &m.prefix_cache_misses,
            &m.prefix_cache_positions_reused,
            &m.prefix_cache_partial_hits,
            &m.memory_budget_bytes,
            &m.prefix_cache_block_positions_reused,
            &m.prefix_cache_bytes,
            &m.prefix_cache_entries,
        ] {
            r.register(Box::new(gauge.clone())).unwrap();
        }
        Arc::new(m)
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = vec![];
        TextEncoder::new().encode(&self.registry.gather(), &mut buf).expect("encode");
        String::from_utf8(buf).expect("utf-8")
    }
}

pub use http::{serve_metrics, Probes};

/// Installs the tracing subscriber: `filter` in RUST_LOG syntax, JSON lines when `json`, and
/// with `otlp` (an OTLP/gRPC collector, `http://host:4317`) spans exported as `service`.
/// Keep the guard until the process ends: dropping it flushes the spans.
pub fn init_logging(filter: &str, json: bool, otlp: Option<&str>, service: &str) -> Result<TraceGuard, String> {
    use std::io::IsTerminal;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    // Colour only for a terminal: redirected logs stay plain text.
    let fmt = tracing_subscriber::fmt::layer().with_ansi(std::io::stderr().is_terminal()).with_writer(std::io::stderr);
    let fmt = if json { fmt.json().with_current_span(true).boxed() } else { fmt.boxed() };
    // Each layer filters on its own: spans go to the collector at info (every RPC) even where
    // the logs are kept at warn.
    let registry = tracing_subscriber::registry().with(fmt.with_filter(tracing_subscriber::EnvFilter::new(filter)));
    match otlp {
        Some(endpoint) => {
            let (layer, guard) = traces::otlp_layer(endpoint, service)?;
            registry.with(layer.with_filter(tracing_subscriber::filter::LevelFilter::INFO)).init();
            Ok(guard)
        }
        None => {
            registry.init();
            Ok(TraceGuard::none())
        }
    }
}
