//! One trace from a publishing request through the broker to the handler,
//! and on through a retry: hutch-rs's spans sent to an OpenTelemetry
//! collector (Jaeger, Tempo, the OpenTelemetry Collector…) over OTLP/HTTP,
//! with the `opentelemetry` feature propagating the trace context in the
//! messages' headers. With a private broker (no HUTCH_URI).
//!
//! ```sh
//! docker run --rm -p 4318:4318 -p 16686:16686 jaegertracing/all-in-one
//! cargo run --example traces
//! # then open the printed trace in http://localhost:16686
//! ```
//!
//! The collector's address comes from `OTEL_EXPORTER_OTLP_ENDPOINT`
//! (default `http://localhost:4318`), as in every OpenTelemetry SDK.

use hutch_rs::{
    BoxError, Hutch, Message, consumer,
    otel::{
        opentelemetry::trace::{TraceContextExt as _, TracerProvider as _},
        opentelemetry_sdk::{Resource, trace::SdkTracerProvider},
        tracing_opentelemetry::{self, OpenTelemetrySpanExt as _},
    },
};
use serde::{Deserialize, Serialize};
use tracing::Instrument;
use tracing_subscriber::{EnvFilter, layer::SubscriberExt as _, util::SubscriberInitExt as _};

#[derive(Debug, Serialize, Deserialize)]
struct OrderPlaced {
    order_id: u64,
}

#[consumer(routing_key = "orders.placed", retry_min_delay = "100ms")]
async fn send_receipt(msg: Message<OrderPlaced>) -> Result<(), BoxError> {
    // Inside the delivery's `process` span: this log is part of the trace.
    tracing::info!(
        order_id = msg.order_id,
        attempt = msg.attempt(),
        "sending the receipt"
    );
    if msg.attempt() == 1 {
        return Err("the mail server is busy".into());
    }
    RECEIPT_SENT.notify_one();
    Ok(())
}

/// Tells `main` that the receipt went out.
static RECEIPT_SENT: tokio::sync::Notify = tokio::sync::Notify::const_new();

// ANCHOR: setup
/// Sends `tracing` spans to an OTLP collector, and logs to stderr.
fn init_tracing() -> Result<SdkTracerProvider, BoxError> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(Resource::builder().with_service_name("orders").build())
        .build();
    tracing_subscriber::registry()
        .with(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with(tracing_subscriber::fmt::layer())
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("orders")))
        .init();
    Ok(provider)
}
// ANCHOR_END: setup

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let provider = init_tracing()?;
    let private_broker = match std::env::var("HUTCH_URI") {
        Ok(_) => None,
        Err(_) => Some(tokio::task::spawn_blocking(hutch_rs::testing::Broker::start).await??),
    };
    let mut builder = Hutch::builder().namespace("traces-example");
    if let Some(broker) = &private_broker {
        builder = builder.uri(broker.amqp_uri());
    }
    let hutch = builder.build()?;
    let running = hutch.start().await?;

    // ANCHOR: publish
    // What a web handler's span would be: the publish is its child, the
    // handler's `process` span the publish's, across the broker.
    let checkout = tracing::info_span!("checkout", order_id = 42);
    let trace_id = checkout.context().span().span_context().trace_id();
    hutch
        .publish("orders.placed", &OrderPlaced { order_id: 42 })
        .instrument(checkout)
        .await?;
    // ANCHOR_END: publish

    // The first attempt fails, the retry succeeds.
    RECEIPT_SENT.notified().await;
    running.shutdown().await?;
    hutch.close().await?;
    // Sends what the batch still holds.
    provider.shutdown()?;
    println!("trace {trace_id}: http://localhost:16686/trace/{trace_id}");
    Ok(())
}
