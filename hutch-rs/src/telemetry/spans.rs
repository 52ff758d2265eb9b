//! The spans of a message's life, named and filled in as OpenTelemetry's
//! messaging semantic conventions for RabbitMQ describe them, so that
//! `tracing-opentelemetry` turns them into the spans a tracing backend
//! expects: a producer span per publish (and per retry or dead-letter copy),
//! a consumer span per delivery handled.
//!
//! Field names are the conventions' attribute names; `otel.name` and
//! `otel.kind` are what `tracing-opentelemetry` reads for the span's name
//! and kind. What the conventions do not cover is under `hutch.`: the
//! consumer, the attempt and the outcome. Spans are at INFO level, under the
//! target `hutch_rs::messaging`, so a subscriber can keep or drop them
//! apart from hutch-rs's logs.

use tracing::{Span, field::Empty};

use super::propagation;
use crate::{Error, message::Envelope};

/// The target of every span here.
pub(crate) const TARGET: &str = "hutch_rs::messaging";

/// The span of one delivery, from its arrival until it was settled: the
/// handler call (and its logs) inside it, the outcome recorded on it.
pub(crate) fn process(consumer: &str, queue: &str, envelope: &Envelope, delivery_tag: u64) -> Span {
    // A root, not a child of the consumer's long-lived span: every delivery
    // is a trace of its own, or (with the `opentelemetry` feature) joins the
    // trace of the span that published it.
    let span = tracing::info_span!(
        target: TARGET,
        parent: None,
        "process",
        otel.name = %format_args!("process {queue}"),
        otel.kind = "consumer",
        otel.status_code = Empty,
        messaging.system = "rabbitmq",
        messaging.operation.type = "process",
        messaging.operation.name = "process",
        messaging.destination.name = %envelope.exchange,
        messaging.destination.subscription.name = %queue,
        messaging.rabbitmq.destination.routing_key = %envelope.routing_key,
        messaging.rabbitmq.message.delivery_tag = delivery_tag,
        messaging.message.id = envelope.message_id().unwrap_or_default(),
        hutch.consumer = %consumer,
        hutch.attempt = envelope.attempt,
        hutch.outcome = Empty,
        error.type = Empty,
    );
    propagation::adopt_parent(&span, envelope.properties.headers().as_ref());
    span
}

/// The span of one publish, until its confirm (or failure).
pub(crate) fn publish(exchange: &str, routing_key: &str, message_id: &str) -> Span {
    tracing::info_span!(
        target: TARGET,
        "publish",
        otel.name = %format_args!("send {}", if exchange.is_empty() { "amq.default" } else { exchange }),
        otel.kind = "producer",
        otel.status_code = Empty,
        messaging.system = "rabbitmq",
        messaging.operation.type = "send",
        messaging.operation.name = "publish",
        messaging.destination.name = %exchange,
        messaging.rabbitmq.destination.routing_key = %routing_key,
        messaging.message.id = %message_id,
        hutch.outcome = Empty,
        error.type = Empty,
    )
}

/// The span of a failed delivery's copy (`retry` to a delay queue, or
/// `dead_letter` to `<queue>:dead`), published through the default
/// exchange: a child of the delivery's span, so that the copy stays in the
/// delivery's trace.
pub(crate) fn forward(parent: &Span, queue: &str, message_id: &str, copy: &'static str) -> Span {
    tracing::info_span!(
        target: TARGET,
        parent: parent,
        "publish",
        otel.name = %format_args!("send {queue}"),
        otel.kind = "producer",
        otel.status_code = Empty,
        messaging.system = "rabbitmq",
        messaging.operation.type = "send",
        messaging.operation.name = "publish",
        messaging.destination.name = "",
        messaging.rabbitmq.destination.routing_key = %queue,
        messaging.message.id = %message_id,
        hutch.copy = copy,
        hutch.outcome = Empty,
        error.type = Empty,
    )
}

/// Records what became of a copy of [`forward`]: `confirmed`, or `nacked`,
/// `returned` (its queue was missing), `timed_out` or `failed`, each sent
/// again.
pub(crate) fn record_forwarded(span: &Span, outcome: &'static str) {
    if outcome == "confirmed" {
        span.record("hutch.outcome", outcome);
    } else {
        record_failure(span, outcome);
    }
}

/// Records a failed send: its outcome is also its error's type.
fn record_failure(span: &Span, kind: &'static str) {
    span.record("hutch.outcome", kind);
    span.record("error.type", kind);
    span.record("otel.status_code", "ERROR");
}

/// How a delivery ended, as [`process`] spans record it in `hutch.outcome`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Settled {
    /// Handled; acknowledged.
    Acked,
    /// Failed; a copy waits in a delay queue for the next attempt.
    Retried,
    /// Failed for good; a copy is in `<queue>:dead`.
    DeadLettered,
    /// Failed; the handler asked for it to be requeued at once.
    Requeued,
    /// Its channel closed before it was settled; the broker delivers it
    /// again.
    Redelivered,
}

impl Settled {
    fn as_str(self) -> &'static str {
        match self {
            Settled::Acked => "acked",
            Settled::Retried => "retried",
            Settled::DeadLettered => "dead_lettered",
            Settled::Requeued => "requeued",
            Settled::Redelivered => "redelivered",
        }
    }
}

/// Records how the delivery of `span` ended, and why it failed if it did
/// (`error.type`: `undecodable`, `timed_out`, `panicked` or `handler_error`).
pub(crate) fn record_settled(span: &Span, settled: Settled, failure: Option<&'static str>) {
    span.record("hutch.outcome", settled.as_str());
    if let Some(kind) = failure {
        span.record("error.type", kind);
        span.record("otel.status_code", "ERROR");
    }
}

/// Records a publish's end: `confirmed`, or the error's kind.
pub(crate) fn record_published(span: &Span, outcome: Result<(), &Error>) {
    match outcome {
        Ok(()) => {
            span.record("hutch.outcome", "confirmed");
        }
        Err(error) => record_failure(span, failure_kind(error)),
    }
}

/// Records a request's end (its span is a [`publish`] span): `answered`
/// when its reply came, or the error's kind.
pub(crate) fn record_requested(span: &Span, outcome: Result<(), &Error>) {
    match outcome {
        Ok(()) => {
            span.record("hutch.outcome", "answered");
        }
        Err(error) => record_failure(span, failure_kind(error)),
    }
}

/// What a publish's or request's error is, in a word.
fn failure_kind(error: &Error) -> &'static str {
    match error {
        Error::PublishNacked { .. } => "nacked",
        Error::PublishTimeout { .. } | Error::RequestTimeout { .. } => "timed_out",
        Error::Unroutable { .. } => "unroutable",
        Error::Blocked { .. } => "blocked",
        _ => "failed",
    }
}
