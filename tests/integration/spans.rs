//! The spans of a message's life, as a subscriber sees them: a publish span
//! per publish and per retry or dead-letter copy, a process span per
//! delivery, named and filled in after OpenTelemetry's messaging semantic
//! conventions for RabbitMQ, with the consumer, the attempt and the outcome.

use hutch_rs::{BoxError, Message, PublishOptions, consumer};
use hutch_rs_tests::{
    Job, PATIENCE, Scope, init_logging, raw_publish,
    spans::{CapturedSpan, await_spans},
};

#[consumer(
    routing_key = "traced.#",
    group = "spans",
    max_attempts = 2,
    retry_min_delay = "100ms",
    retry_max_delay = "200ms"
)]
async fn traced(msg: Message<Job>) -> Result<(), BoxError> {
    msg.outcome(msg.attempt())
}

/// What every span of hutch-rs carries.
fn assert_rabbitmq(span: &CapturedSpan) {
    assert_eq!(span.field("messaging.system"), "rabbitmq", "{span:#?}");
    assert!(!span.field("otel.name").is_empty(), "{span:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_message_has_publish_process_and_copy_spans_with_its_outcomes() {
    init_logging();
    let scope = Scope::new("spans");
    let hutch = scope.hutch("spans");
    let running = hutch.start().await.expect("start");
    let queue = scope.queue("traced");

    // Fails on attempt 1, succeeds on attempt 2.
    let published = hutch
        .publish_with(
            "traced.order",
            &Job {
                id: 1,
                succeed_on: 2,
            },
            PublishOptions::new(),
        )
        .await
        .expect("publish");
    let id = published.message_id().to_owned();
    let of_message = |span: &CapturedSpan| span.field("messaging.message.id") == id;

    let publish = await_spans(1, PATIENCE, |span| {
        of_message(span) && span.name == "publish" && span.field("hutch.copy").is_empty()
    })
    .await
    .remove(0);
    assert_rabbitmq(&publish);
    assert_eq!(publish.field("otel.kind"), "producer");
    assert_eq!(publish.field("messaging.operation.type"), "send");
    assert_eq!(publish.field("messaging.destination.name"), scope.exchange);
    assert_eq!(
        publish.field("messaging.rabbitmq.destination.routing_key"),
        "traced.order"
    );
    assert_eq!(publish.field("hutch.outcome"), "confirmed");
    assert_eq!(
        publish.field("otel.name"),
        format!("send {}", scope.exchange)
    );

    let mut processed = await_spans(2, PATIENCE, |span| {
        of_message(span) && span.name == "process"
    })
    .await;
    processed.sort_by_key(|span| span.field("hutch.attempt").to_owned());
    let (first, second) = (&processed[0], &processed[1]);
    for span in &processed {
        assert_rabbitmq(span);
        assert_eq!(span.field("otel.kind"), "consumer");
        assert_eq!(span.field("otel.name"), format!("process {queue}"));
        assert_eq!(span.field("messaging.operation.type"), "process");
        assert_eq!(span.field("messaging.destination.subscription.name"), queue);
        assert!(
            span.field("hutch.consumer").ends_with("spans::traced"),
            "{span:#?}"
        );
        // A delivery is a trace of its own, not part of the consumer's span.
        assert_eq!(span.parent, None, "{span:#?}");
    }
    // The first attempt: published to the exchange with its key; the retry
    // keeps them (it came through a delay queue, but says where it began).
    for span in &processed {
        assert_eq!(span.field("messaging.destination.name"), scope.exchange);
        assert_eq!(
            span.field("messaging.rabbitmq.destination.routing_key"),
            "traced.order"
        );
    }
    assert_eq!(first.field("hutch.attempt"), "1");
    assert_eq!(first.field("hutch.outcome"), "retried");
    assert_eq!(first.field("error.type"), "handler_error");
    assert_eq!(first.field("otel.status_code"), "ERROR");
    assert_eq!(second.field("hutch.attempt"), "2");
    assert_eq!(second.field("hutch.outcome"), "acked");
    assert_eq!(second.field("error.type"), "");

    // The retry copy: a publish span inside the first attempt's.
    let copy = await_spans(1, PATIENCE, |span| {
        of_message(span) && span.field("hutch.copy") == "retry"
    })
    .await
    .remove(0);
    assert_rabbitmq(&copy);
    assert_eq!(copy.parent, Some(first.id), "{copy:#?}");
    assert_eq!(copy.field("hutch.outcome"), "confirmed");
    assert_eq!(copy.field("messaging.destination.name"), "");
    assert!(
        copy.field("messaging.rabbitmq.destination.routing_key")
            .starts_with(&format!("{queue}:delay:")),
        "{copy:#?}"
    );
    running.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_message_has_a_process_span_that_says_so_and_a_dead_letter_copy() {
    init_logging();
    let scope = Scope::new("spans-poison");
    let hutch = scope.hutch("spans");
    let running = hutch.start().await.expect("start");
    let queue = scope.queue("traced");
    let id = hutch_rs_tests::unique("poison");
    raw_publish(
        &scope.exchange,
        "traced.poison",
        b"{not json",
        lapin::BasicProperties::default()
            .with_content_type("application/json".into())
            .with_message_id(id.as_str().into()),
    )
    .await;
    let of_message = |span: &CapturedSpan| span.field("messaging.message.id") == id;
    let process = await_spans(1, PATIENCE, |span| {
        of_message(span) && span.name == "process"
    })
    .await
    .remove(0);
    assert_eq!(process.field("hutch.outcome"), "dead_lettered");
    assert_eq!(process.field("error.type"), "undecodable");
    let copy = await_spans(1, PATIENCE, |span| {
        of_message(span) && span.field("hutch.copy") == "dead_letter"
    })
    .await
    .remove(0);
    assert_eq!(copy.parent, Some(process.id));
    assert_eq!(
        copy.field("messaging.rabbitmq.destination.routing_key"),
        format!("{queue}:dead")
    );
    assert_eq!(copy.field("hutch.outcome"), "confirmed");
    running.shutdown().await.expect("clean shutdown");
}

/// Panics on attempt 1, overruns its timeout on attempt 2: both are failures
/// of that message alone, and its spans say which.
#[consumer(
    routing_key = "unruly.#",
    group = "spans_unruly",
    max_attempts = 2,
    // Long enough that a loaded 2-core runtime starts the panicking call
    // before its deadline: the timeout counts from the call's spawn.
    timeout = "1s",
    retry_min_delay = "100ms",
    retry_max_delay = "200ms"
)]
async fn unruly(msg: Message<Job>) -> Result<(), BoxError> {
    if msg.attempt() == 1 {
        panic!("attempt 1 of job {} panics", msg.id);
    }
    // Far past the timeout: the call is dropped at 1 s.
    tokio::time::sleep(PATIENCE).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_and_a_timeout_are_recorded_as_such_on_the_process_spans() {
    init_logging();
    let scope = Scope::new("spans-unruly");
    let hutch = scope.hutch("spans_unruly");
    let running = hutch.start().await.expect("start");
    let published = hutch
        .publish_with(
            "unruly.order",
            &Job {
                id: 5,
                succeed_on: 1,
            },
            PublishOptions::new(),
        )
        .await
        .expect("publish");
    let id = published.message_id().to_owned();
    let mut processed = await_spans(2, PATIENCE, |span| {
        span.field("messaging.message.id") == id && span.name == "process"
    })
    .await;
    processed.sort_by_key(|span| span.field("hutch.attempt").to_owned());
    let (first, second) = (&processed[0], &processed[1]);
    assert_eq!(first.field("error.type"), "panicked", "{first:#?}");
    assert_eq!(first.field("hutch.outcome"), "retried");
    assert_eq!(first.field("otel.status_code"), "ERROR");
    assert_eq!(second.field("error.type"), "timed_out", "{second:#?}");
    assert_eq!(second.field("hutch.outcome"), "dead_lettered");
    assert_eq!(second.field("otel.status_code"), "ERROR");
    running.shutdown().await.expect("clean shutdown");
}
