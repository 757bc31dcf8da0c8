//! Trace export over OTLP (`--otlp-endpoint`) and W3C trace context (`traceparent`) across
//! processes: a client's span is the parent of the `rpc` span each service opens for its call,
//! so one trace holds the client, the activation worker and the generation worker.

use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Flushes and stops the exporter when dropped (at the end of `main`).
#[must_use = "traces are flushed when this is dropped"]
pub struct TraceGuard {
    provider: Option<SdkTracerProvider>,
    /// The exporter's gRPC channel runs its connection on this runtime's thread.
    _runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for TraceGuard {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take() {
            if let Err(e) = p.shutdown() {
                eprintln!("warning: flushing traces to the OTLP endpoint: {e}");
            }
        }
    }
}

/// The OpenTelemetry layer exporting spans to the OTLP/gRPC collector at `endpoint`
/// (`http://host:4317`), naming this process `service`; installs the W3C propagator.
pub(crate) fn otlp_layer<S>(endpoint: &str, service: &str) -> Result<(impl tracing_subscriber::Layer<S>, TraceGuard), String>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("otlp")
        .enable_all()
        .build()
        .map_err(|e| format!("--otlp-endpoint: {e}"))?;
    let exporter = {
        let _in = runtime.enter();
        use opentelemetry_otlp::WithExportConfig;
        opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .build()
            .map_err(|e| format!("--otlp-endpoint {endpoint}: {e}"))?
    };
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(Resource::builder().with_service_name(service.to_string()).build())
        .build();
    let tracer = provider.tracer("steer");
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    opentelemetry::global::set_tracer_provider(provider.clone());
    Ok((tracing_opentelemetry::layer().with_tracer(tracer), TraceGuard { provider: Some(provider), _runtime: Some(runtime) }))
}

impl TraceGuard {
    pub(crate) fn none() -> Self {
        Self { provider: None, _runtime: None }
    }
}

/// Makes the trace context a call carries (`traceparent`, `tracestate`) the parent of `span`.
pub fn adopt_remote_parent(span: &tracing::Span, metadata: &tonic::metadata::MetadataMap) {
    struct Carrier<'a>(&'a tonic::metadata::MetadataMap);
    impl Extractor for Carrier<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            self.0.get(key).and_then(|v| v.to_str().ok())
        }
        fn keys(&self) -> Vec<&str> {
            self.0
                .keys()
                .filter_map(|k| match k {
                    tonic::metadata::KeyRef::Ascii(k) => Some(k.as_str()),
                    tonic::metadata::KeyRef::Binary(_) => None,
                })
                .collect()
        }
    }
    if metadata.get("traceparent").is_none() {
        return;
    }
    let parent = opentelemetry::global::get_text_map_propagator(|p| p.extract(&Carrier(metadata)));
    let _ = span.set_parent(parent);
}

/// Writes the current span's trace context into an outgoing call's metadata (a call a worker
/// makes to another: the generation worker fetching a library vector).
pub fn inject_current(metadata: &mut tonic::metadata::MetadataMap) {
    struct Carrier<'a>(&'a mut tonic::metadata::MetadataMap);
    impl Injector for Carrier<'_> {
        fn set(&mut self, key: &str, value: String) {
            if let (Ok(k), Ok(v)) = (tonic::metadata::MetadataKey::from_bytes(key.as_bytes()), value.parse()) {
                self.0.insert(k, v);
            }
        }
    }
    let cx = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&cx, &mut Carrier(metadata)));
}
