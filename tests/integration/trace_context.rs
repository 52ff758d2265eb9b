//! W3C trace context across the broker (feature `opentelemetry`): what an
//! application exporting traces through `tracing-opentelemetry` sees. A
//! publish made inside a request's span, its deliveries, its retry and its
//! dead-letter copy are one trace, each span the child of the one before it
//! across the broker; a message another client published with a
//! `traceparent` joins that client's trace; a malformed one is ignored and
//! the message handled all the same.

use hutch_rs::{
    BoxError, Message, consumer,
    headers::{TRACEPARENT, TRACESTATE},
    otel::{
        opentelemetry::trace::{SpanId, SpanKind, TraceId},
        opentelemetry_sdk::trace::SpanData,
    },
};
use hutch_rs_tests::{
    JOURNAL, Job, PATIENCE, Scope, Seen, header_text,
    otel::{self, attribute, await_trace, describe},
    raw_publish, take_all,
};
use lapin::types::{AMQPValue, FieldTable};
use tracing::Instrument;

#[consumer(
    routing_key = "context.#",
    group = "trace_context",
    max_attempts = 2,
    retry_min_delay = "100ms",
    retry_max_delay = "200ms"
)]
async fn traced_across(msg: Message<Job>) -> Result<(), BoxError> {
    JOURNAL.record(Seen::of("trace_context::traced_across", &msg));
    msg.outcome(msg.attempt())
}

#[consumer(routing_key = "context.#", group = "trace_context_foreign")]
async fn traced_foreign(msg: Message<Job>) -> Result<(), BoxError> {
    JOURNAL.record(Seen::of("trace_context::traced_foreign", &msg));
    msg.outcome(msg.attempt())
}

/// The one span of `spans` that `wanted` picks.
fn only<'a>(spans: &'a [SpanData], what: &str, wanted: impl Fn(&SpanData) -> bool) -> &'a SpanData {
    let found: Vec<&SpanData> = spans.iter().filter(|span| wanted(span)).collect();
    assert_eq!(
        found.len(),
        1,
        "one {what} expected in {:#?}",
        spans.iter().map(describe).collect::<Vec<_>>()
    );
    found[0]
}

fn process(spans: &[SpanData], attempt: u32) -> &SpanData {
    only(
        spans,
        &format!("process span of attempt {attempt}"),
        |span| {
            span.span_kind == SpanKind::Consumer
                && attribute(span, "hutch.attempt") == attempt.to_string()
        },
    )
}

fn copy<'a>(spans: &'a [SpanData], kind: &str) -> &'a SpanData {
    only(spans, &format!("{kind} copy span"), |span| {
        attribute(span, "hutch.copy") == kind
    })
}

/// Asserts that `child` is a child of `parent`, and a span of its own.
fn assert_child(child: &SpanData, parent: &SpanData) {
    assert_eq!(
        child.parent_span_id,
        parent.span_context.span_id(),
        "{} should be a child of {}",
        describe(child),
        describe(parent)
    );
    assert_ne!(child.span_context.span_id(), parent.span_context.span_id());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_runs_from_the_publishing_request_through_a_retry_to_the_dead_letter_queue() {
    let _capture = otel::capture();
    let scope = Scope::new("trace-context");
    let hutch = scope.hutch("trace_context");
    let running = hutch.start().await.expect("start");
    let queue = scope.queue("traced_across");

    // Order 1 fails once, then succeeds; order 2 fails on both of its
    // attempts and is dead-lettered. Each is published inside a request's
    // span, as a web handler would.
    let mut requests = Vec::new();
    for (id, succeed_on) in [(1, 2), (2, 0)] {
        let request =
            tracing::info_span!(target: otel::TARGET, parent: None, "request", order = id);
        let (trace, request_id) = otel::ids_of(&request);
        hutch
            .publish("context.order", &Job { id, succeed_on })
            .instrument(request)
            .await
            .expect("publish");
        requests.push((trace, request_id));
    }

    // Order 1: request → publish → process (attempt 1, retried) → retry
    // copy → process (attempt 2, acked).
    let (trace, request_id) = requests[0];
    let spans = await_trace(trace, PATIENCE, |spans| {
        spans
            .iter()
            .any(|span| attribute(span, "hutch.outcome") == "acked")
            && spans.len() >= 5
    })
    .await;
    assert_order_trace(&spans, request_id, &scope.exchange, &queue);
    let acked = process(&spans, 2);
    assert_eq!(attribute(acked, "hutch.outcome"), "acked");
    assert_eq!(
        spans.len(),
        5,
        "{:#?}",
        spans.iter().map(describe).collect::<Vec<_>>()
    );

    // Order 2: the same, then a dead-letter copy inside the last attempt.
    let (trace, request_id) = requests[1];
    let spans = await_trace(trace, PATIENCE, |spans| {
        spans
            .iter()
            .any(|span| attribute(span, "hutch.copy") == "dead_letter")
            && spans
                .iter()
                .any(|span| attribute(span, "hutch.outcome") == "dead_lettered")
            && spans.len() >= 6
    })
    .await;
    assert_order_trace(&spans, request_id, &scope.exchange, &queue);
    let last = process(&spans, 2);
    assert_eq!(attribute(last, "hutch.outcome"), "dead_lettered");
    let dead_letter = copy(&spans, "dead_letter");
    assert_child(dead_letter, last);
    assert_eq!(
        spans.len(),
        6,
        "{:#?}",
        spans.iter().map(describe).collect::<Vec<_>>()
    );

    // The dead letter itself carries its copy span's context: whoever
    // replays or inspects it can find the trace.
    let dead = take_all(&format!("{queue}:dead")).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(
        header_text(&dead[0].properties, TRACEPARENT),
        format!(
            "00-{}-{}-01",
            dead_letter.span_context.trace_id(),
            dead_letter.span_context.span_id()
        )
    );
    running.shutdown().await.expect("clean shutdown");
}

/// The part every order's trace has: request → publish → process
/// (attempt 1, retried) → retry copy → process (attempt 2), every span in
/// the request's trace, each a child of the one before it.
fn assert_order_trace(spans: &[SpanData], request_id: SpanId, exchange: &str, queue: &str) {
    let request = only(spans, "request span", |span| span.name == "request");
    assert_eq!(request.span_context.span_id(), request_id);
    let publish = only(spans, "publish span", |span| {
        span.span_kind == SpanKind::Producer && attribute(span, "hutch.copy").is_empty()
    });
    assert_eq!(publish.name, format!("send {exchange}"));
    assert_eq!(attribute(publish, "hutch.outcome"), "confirmed");
    assert_child(publish, request);

    let first = process(spans, 1);
    assert_eq!(first.name, format!("process {queue}"));
    assert_eq!(attribute(first, "hutch.outcome"), "retried");
    assert_child(first, publish);
    assert!(first.parent_span_is_remote, "{}", describe(first));

    let retry = copy(spans, "retry");
    assert_eq!(attribute(retry, "hutch.outcome"), "confirmed");
    assert_child(retry, first);

    let second = process(spans, 2);
    assert_child(second, retry);
    for span in spans {
        assert_eq!(
            span.span_context.trace_id(),
            request.span_context.trace_id()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_published_by_another_client_joins_the_trace_its_traceparent_names() {
    let _capture = otel::capture();
    let scope = Scope::new("trace-context-foreign");
    let hutch = scope.hutch("trace_context_foreign");
    let running = hutch.start().await.expect("start");

    // Another service's trace, as its own OpenTelemetry SDK would write it.
    let trace = TraceId::from(fastrand_u128());
    let parent = SpanId::from(u64::from_le_bytes(*b"upstream"));
    let mut headers = FieldTable::default();
    headers.insert(
        TRACEPARENT.into(),
        AMQPValue::LongString(format!("00-{trace}-{parent}-01").as_str().into()),
    );
    headers.insert(
        TRACESTATE.into(),
        AMQPValue::LongString("vendor=opaque".into()),
    );
    let job = Job {
        id: 3,
        succeed_on: 1,
    };
    raw_publish(
        &scope.exchange,
        "context.foreign",
        &serde_json::to_vec(&job).expect("json"),
        lapin::BasicProperties::default()
            .with_content_type("application/json".into())
            .with_headers(headers),
    )
    .await;

    let spans = await_trace(trace, PATIENCE, |spans| {
        spans
            .iter()
            .any(|span| attribute(span, "hutch.outcome") == "acked")
    })
    .await;
    let processed = process(&spans, 1);
    assert_eq!(processed.parent_span_id, parent);
    assert!(processed.parent_span_is_remote);
    assert_eq!(
        processed.span_context.trace_state().get("vendor"),
        Some("opaque")
    );
    assert_eq!(
        spans.len(),
        1,
        "{:#?}",
        spans.iter().map(describe).collect::<Vec<_>>()
    );

    // A malformed traceparent (upper-case hex, which W3C forbids) is
    // ignored: the message is handled, in a trace of its own.
    let mut headers = FieldTable::default();
    headers.insert(
        TRACEPARENT.into(),
        AMQPValue::LongString(
            format!("00-{}-{parent}-01", trace.to_string().to_uppercase())
                .as_str()
                .into(),
        ),
    );
    let job = Job {
        id: 4,
        succeed_on: 1,
    };
    raw_publish(
        &scope.exchange,
        "context.malformed",
        &serde_json::to_vec(&job).expect("json"),
        lapin::BasicProperties::default()
            .with_content_type("application/json".into())
            .with_headers(headers),
    )
    .await;
    let handled = JOURNAL
        .wait_for("trace_context::traced_foreign", 2)
        .await
        .into_iter()
        .filter(|seen| seen.routing_key == "context.malformed")
        .count();
    assert_eq!(handled, 1);
    running.shutdown().await.expect("clean shutdown");
    // Nothing of the malformed message joined the foreign trace.
    let spans = await_trace(trace, PATIENCE, |_| true).await;
    assert_eq!(
        spans.len(),
        1,
        "{:#?}",
        spans.iter().map(describe).collect::<Vec<_>>()
    );
}

/// A random trace id, as another service's SDK would make one.
fn fastrand_u128() -> u128 {
    uuid::Uuid::new_v4().as_u128()
}
