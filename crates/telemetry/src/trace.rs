//! Logs and OpenTelemetry traces.
//!
//! [`init`] installs the process-wide `tracing` subscriber: human-readable
//! logs on stderr (filtered by `RUST_LOG`), and, only when an OTLP endpoint
//! is configured (`--otlp-endpoint`, `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or
//! `OTEL_EXPORTER_OTLP_ENDPOINT`; `OTEL_SDK_DISABLED=true` wins), veto's
//! spans exported over OTLP/gRPC in batches.
//!
//! Trace context crosses process boundaries as W3C `traceparent` /
//! `tracestate` strings: in gRPC metadata between callers and servers, and
//! inside the replicated command from the leader to every edge.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Largest `tracestate` carried into the log (bytes).
const MAX_TRACESTATE: usize = 256;

/// Tracing could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The OTLP exporter could not be built (bad endpoint).
    #[error("OTLP exporter for {endpoint}: {reason}")]
    Exporter {
        /// Endpoint given.
        endpoint: String,
        /// Cause.
        reason: String,
    },
    /// A global subscriber was already installed.
    #[error("tracing subscriber: {0}")]
    Subscriber(String),
}

/// Keeps the exporter alive; [`Guard::shutdown`] flushes what is buffered.
#[must_use = "dropping the guard without shutdown may lose the last spans"]
pub struct Guard {
    provider: Option<SdkTracerProvider>,
}

impl Guard {
    /// Whether spans are exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Flushes and stops the exporter. Runs the blocking flush off the
    /// async runtime (the gRPC exporter itself needs that runtime).
    pub async fn shutdown(mut self) {
        if let Some(p) = self.provider.take() {
            ENABLED.store(false, Ordering::Relaxed);
            let _ = tokio::task::spawn_blocking(move || {
                let _ = p.force_flush();
                let _ = p.shutdown();
            })
            .await;
        }
    }
}

/// The OTLP endpoint to use: the flag, else the standard environment.
pub fn endpoint_from(flag: Option<&str>) -> Option<String> {
    if std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true")) {
        return None;
    }
    flag.map(str::to_string)
        .or_else(|| std::env::var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").ok())
        .or_else(|| std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok())
        .filter(|s| !s.trim().is_empty())
}

/// Installs logging, and OTLP span export when `otlp_endpoint` (see
/// [`endpoint_from`]) is set. With an endpoint it must run inside a Tokio
/// runtime (the gRPC exporter's channel lives on it).
///
/// `service` names the process in traces unless `OTEL_SERVICE_NAME` does;
/// `default_filter` is the log filter when `RUST_LOG` is unset.
pub fn init(
    service: &'static str,
    otlp_endpoint: Option<&str>,
    default_filter: &str,
) -> Result<Guard, Error> {
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter)),
        );
    let endpoint = endpoint_from(otlp_endpoint);
    let Some(endpoint) = endpoint else {
        tracing_subscriber::registry()
            .with(logs)
            .try_init()
            .map_err(|e| Error::Subscriber(e.to_string()))?;
        return Ok(Guard { provider: None });
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint.clone())
        .with_timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| Error::Exporter {
            endpoint: endpoint.clone(),
            reason: e.to_string(),
        })?;
    let processor = BatchSpanProcessor::builder(exporter)
        .with_batch_config(
            BatchConfigBuilder::default()
                .with_scheduled_delay(Duration::from_millis(500))
                .with_max_queue_size(65_536)
                .build(),
        )
        .build();
    let mut resource = opentelemetry_sdk::Resource::builder();
    if std::env::var("OTEL_SERVICE_NAME").is_err() {
        resource = resource.with_service_name(service);
    }
    let provider = SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_resource(resource.build())
        .build();
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let tracer = provider.tracer("veto");
    // Only veto's own spans (and their events) are exported; logs stay on
    // stderr. A static target filter: callsites of other crates (hyper, h2
    // and tonic trace on every frame) are never asked again, where a
    // closure filter would be evaluated on every event.
    let (filter, reload) = tracing_subscriber::reload::Layer::new(exported_targets(true));
    let spans = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_filter(filter);
    let _ = PAUSE.set(Box::new(move |on: bool| {
        let _ = reload.modify(|t| *t = exported_targets(on));
    }));
    tracing_subscriber::registry()
        .with(logs)
        .with(spans)
        .try_init()
        .map_err(|e| Error::Subscriber(e.to_string()))?;
    ENABLED.store(true, Ordering::Relaxed);
    tracing::info!(%endpoint, service, "exporting traces over OTLP");
    Ok(Guard {
        provider: Some(provider),
    })
}

/// What the span exporter takes: veto's spans at INFO, or nothing.
fn exported_targets(on: bool) -> tracing_subscriber::filter::Targets {
    if on {
        tracing_subscriber::filter::Targets::new().with_target("veto", tracing::Level::INFO)
    } else {
        tracing_subscriber::filter::Targets::new()
    }
}

type Switch = Box<dyn Fn(bool) + Send + Sync>;
static PAUSE: std::sync::OnceLock<Switch> = std::sync::OnceLock::new();

/// Turns span export off and on again at run time (after [`init`] with an
/// endpoint; a no-op otherwise). For measuring what tracing costs in
/// alternating rounds (`veto-bench overhead`); not needed in operation.
pub fn set_exporting(on: bool) {
    if let Some(f) = PAUSE.get() {
        f(on);
        ENABLED.store(on, Ordering::Relaxed);
    }
}

/// Whether spans are being exported (so callers skip propagation work when
/// they are not).
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// The current span's context as W3C headers, if tracing is on and the
/// span is part of a trace.
pub fn current_context() -> Option<BTreeMap<String, String>> {
    if !enabled() {
        return None;
    }
    let cx = tracing::Span::current().context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut map: HashMap<String, String> = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut map);
    // This rides in the replicated log and in every edge's feed: keep the
    // caller's tracestate only while it is small.
    map.retain(|k, v| k == "traceparent" || v.len() <= MAX_TRACESTATE);
    (!map.is_empty()).then(|| map.into_iter().collect())
}

/// Makes `span` a child of the remote context in `headers`
/// (`traceparent` / `tracestate`); a no-op when tracing is off or the
/// headers hold no valid context.
pub fn set_parent<'a>(span: &tracing::Span, headers: impl IntoIterator<Item = (&'a str, &'a str)>) {
    if !enabled() {
        return;
    }
    let map: HashMap<String, String> = headers
        .into_iter()
        .filter(|(k, _)| {
            k.eq_ignore_ascii_case("traceparent") || k.eq_ignore_ascii_case("tracestate")
        })
        .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
        .collect();
    if map.is_empty() {
        return;
    }
    let cx = TraceContextPropagator::new().extract(&map);
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

/// Plain logs to stderr for command-line tools, filtered by `VETO_LOG`
/// (else `default_filter`); no span export.
pub fn stderr_logs(default_filter: &str) {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("VETO_LOG")
                .unwrap_or_else(|_| default_filter.into()),
        )
        .with_writer(std::io::stderr)
        .init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_flag_wins_and_blank_means_off() {
        assert_eq!(
            endpoint_from(Some("http://127.0.0.1:4317")).as_deref(),
            Some("http://127.0.0.1:4317")
        );
        assert_eq!(endpoint_from(Some("  ")), None);
    }

    #[test]
    fn without_tracing_nothing_is_propagated() {
        assert!(!enabled());
        assert_eq!(current_context(), None);
        // and a parent is ignored without panicking
        set_parent(
            &tracing::Span::none(),
            [(
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            )],
        );
    }
}
