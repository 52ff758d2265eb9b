//! The OpenTelemetry spans that hutch-rs's `tracing` spans become through
//! `tracing-opentelemetry`, as an application exporting traces would send
//! them: the tests' subscriber (installed by
//! [`init_logging`](crate::init_logging)) has the bridge's layer, whose
//! tracer ends every span in opentelemetry_sdk's in-memory exporter.
//!
//! The layer sees spans only while a test holds a [`Capture`]: every
//! message span of the whole binary would otherwise pile up in the
//! exporter. A test finds its own spans by their trace id.

use std::{
    sync::{
        LazyLock,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use hutch_rs::otel::{
    opentelemetry::{
        Context,
        trace::{SpanId, TraceContextExt as _, TraceId, TracerProvider as _},
    },
    opentelemetry_sdk::{
        error::OTelSdkResult,
        trace::{InMemorySpanExporter, SdkTracerProvider, Span, SpanData, SpanProcessor},
    },
    tracing_opentelemetry::{self, OpenTelemetrySpanExt as _},
};
use tokio::sync::watch;
use tracing::Subscriber;
use tracing_subscriber::{Layer, registry::LookupSpan};

/// The target of the tests' own spans (the request a publish is made in).
pub const TARGET: &str = "hutch_rs_tests::otel";

/// How many tests hold a [`Capture`].
static CAPTURING: AtomicUsize = AtomicUsize::new(0);

/// Where ended spans go.
static EXPORTER: LazyLock<InMemorySpanExporter> = LazyLock::new(InMemorySpanExporter::default);

/// The tracers' provider: the in-memory exporter first, then the counter.
/// Once the counter moves, the span is in the exporter (the simple
/// processor exports as the span ends).
static PROVIDER: LazyLock<SdkTracerProvider> = LazyLock::new(|| {
    SdkTracerProvider::builder()
        .with_simple_exporter(EXPORTER.clone())
        .with_span_processor(Ended)
        .build()
});

/// Counts ended spans, for waiting.
static ENDED: LazyLock<watch::Sender<u64>> = LazyLock::new(|| watch::Sender::new(0));

/// The bridge's layer, seeing hutch-rs's message spans and the tests' own
/// while a [`Capture`] is held.
pub fn layer<S>() -> impl Layer<S>
where
    S: Subscriber + for<'span> LookupSpan<'span>,
{
    tracing_opentelemetry::layer()
        .with_tracer(PROVIDER.tracer("hutch-rs-tests"))
        .with_filter(tracing_subscriber::filter::filter_fn(|metadata| {
            CAPTURING.load(Ordering::Relaxed) > 0
                && (metadata.target() == crate::spans::TARGET || metadata.target() == TARGET)
        }))
}

/// Moves [`ENDED`] after the exporter has the span.
#[derive(Debug)]
struct Ended;

impl SpanProcessor for Ended {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, _span: SpanData) {
        ENDED.send_modify(|ended| *ended += 1);
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
}

/// While held, spans go to the exporter.
#[derive(Debug)]
#[must_use = "spans are captured only while it is held"]
pub struct Capture(());

impl Drop for Capture {
    fn drop(&mut self) {
        CAPTURING.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Starts capturing spans, until the [`Capture`] is dropped.
pub fn capture() -> Capture {
    crate::init_logging();
    CAPTURING.fetch_add(1, Ordering::Relaxed);
    Capture(())
}

/// The trace id and span id OpenTelemetry gave a `tracing` span.
pub fn ids_of(span: &tracing::Span) -> (TraceId, SpanId) {
    let context = span.context();
    let span_context = context.span().span_context().clone();
    (span_context.trace_id(), span_context.span_id())
}

/// The spans of `trace` once `wanted` holds for them, waiting for them to
/// end for at most `patience`.
pub async fn await_trace(
    trace: TraceId,
    patience: Duration,
    wanted: impl Fn(&[SpanData]) -> bool,
) -> Vec<SpanData> {
    let of_trace = || -> Vec<SpanData> {
        EXPORTER
            .get_finished_spans()
            .expect("the in-memory exporter is never shut down")
            .into_iter()
            .filter(|span| span.span_context.trace_id() == trace)
            .collect()
    };
    let mut changes = ENDED.subscribe();
    let waited = tokio::time::timeout(patience, async {
        loop {
            let spans = of_trace();
            if wanted(&spans) {
                return spans;
            }
            changes.changed().await.expect("the counter lives for ever");
        }
    })
    .await;
    waited.unwrap_or_else(|_| {
        let spans: Vec<String> = of_trace().iter().map(describe).collect();
        panic!("the spans of trace {trace} never were as expected: {spans:#?}")
    })
}

/// An attribute of `span`, as text, or `""`.
pub fn attribute(span: &SpanData, key: &str) -> String {
    span.attributes
        .iter()
        .find(|attribute| attribute.key.as_str() == key)
        .map_or_else(String::new, |attribute| attribute.value.to_string())
}

/// One line per span, for a failure's message.
pub fn describe(span: &SpanData) -> String {
    format!(
        "{} {:?} span {} parent {} message {} attempt {} copy {} outcome {}",
        span.name,
        span.span_kind,
        span.span_context.span_id(),
        span.parent_span_id,
        attribute(span, "messaging.message.id"),
        attribute(span, "hutch.attempt"),
        attribute(span, "hutch.copy"),
        attribute(span, "hutch.outcome"),
    )
}
