//! Shutdown stops consuming, lets the in-flight handler finish and be acked,
//! and gives up after the shutdown timeout without losing the message.

use std::time::Duration;

use hutch_rs::{BoxError, Error, Message, consumer};
use hutch_rs_tests::{
    JOURNAL, Scope, Seen, await_consumer_count, broker, init_logging, queue_depth, spawn_run_until,
};
use tokio::sync::Semaphore;

/// Lets the `slow` handler finish, one permit per message.
static RELEASE_SLOW: Semaphore = Semaphore::const_new(0);
/// Never released: the `stuck` handler outlives any shutdown timeout.
static NEVER: Semaphore = Semaphore::const_new(0);

#[consumer(routing_key = "slow.work", group = "slow")]
async fn slow(msg: Message<serde_json::Value>) -> Result<(), BoxError> {
    JOURNAL.record(Seen::of("slow:started", &msg));
    RELEASE_SLOW.acquire().await?.forget();
    JOURNAL.record(Seen::of("slow:finished", &msg));
    Ok(())
}

#[consumer(routing_key = "stuck.work", group = "stuck")]
async fn stuck(msg: Message<serde_json::Value>) -> Result<(), BoxError> {
    JOURNAL.record(Seen::of("stuck:started", &msg));
    NEVER.acquire().await?.forget();
    Ok(())
}

#[consumer(routing_key = "quick.work", group = "quick")]
async fn quick(msg: Message<serde_json::Value>) -> Result<(), BoxError> {
    JOURNAL.record(Seen::of("quick", &msg));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_consuming_then_waits_for_the_in_flight_handler() {
    init_logging();
    let scope = Scope::new("slow");
    let hutch = scope.hutch("slow");
    let queue = scope.queue("slow");
    let running = hutch.start().await.expect("start");

    hutch
        .publish("slow.work", &serde_json::json!({ "n": 1 }))
        .await
        .unwrap();
    hutch
        .publish("slow.work", &serde_json::json!({ "n": 2 }))
        .await
        .unwrap();
    JOURNAL.wait_for("slow:started", 1).await;

    let shutdown = tokio::spawn(running.shutdown());
    // The consumer is cancelled at once, while its handler is still running.
    tokio::task::spawn_blocking({
        let queue = queue.clone();
        move || await_consumer_count(&queue, 0)
    })
    .await
    .unwrap();
    assert!(!shutdown.is_finished(), "shutdown waits for the handler");
    assert!(JOURNAL.by("slow:finished").is_empty());

    RELEASE_SLOW.add_permits(1);
    shutdown.await.unwrap().expect("clean shutdown");

    let finished = JOURNAL.by("slow:finished");
    assert_eq!(finished.len(), 1, "the in-flight handler ran to completion");
    assert_eq!(finished[0].body["n"], 1);
    assert_eq!(
        JOURNAL.by("slow:started").len(),
        1,
        "nothing new was handled after shutdown began"
    );
    // Message 1 was acked; message 2, prefetched but never handled, is back.
    assert_eq!(queue_depth(&queue), 1);
    hutch.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_that_outlives_the_shutdown_timeout_is_abandoned_and_its_message_kept() {
    init_logging();
    let scope = Scope::new("stuck");
    let hutch = scope
        .builder("stuck")
        .shutdown_timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let running = hutch.start().await.expect("start");
    hutch
        .publish("stuck.work", &serde_json::json!({ "n": 1 }))
        .await
        .unwrap();
    JOURNAL.wait_for("stuck:started", 1).await;

    let error = running.shutdown().await.unwrap_err();
    assert!(
        matches!(error, Error::ShutdownTimeout { in_flight: 1, timeout } if timeout == Duration::from_millis(500)),
        "{error:?}"
    );
    // Not acked, so the broker kept it.
    assert_eq!(queue_depth(&scope.queue("stuck")), 1);
    hutch.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_until_returns_when_its_future_resolves() {
    init_logging();
    let scope = Scope::new("quick");
    let hutch = scope.hutch("quick");
    let (stop, run) = spawn_run_until(&hutch);
    // run_until has started once the queue has its consumer.
    let queue = scope.queue("quick");
    tokio::task::spawn_blocking({
        let queue = queue.clone();
        move || await_consumer_count(&queue, 1)
    })
    .await
    .unwrap();
    hutch
        .publish("quick.work", &serde_json::json!({ "n": 1 }))
        .await
        .unwrap();
    JOURNAL.wait_for("quick", 1).await;

    stop.send(()).unwrap();
    run.await.unwrap().expect("run_until ends cleanly");
    let info = broker().queue(&queue).unwrap().unwrap();
    assert_eq!((info.consumers, info.messages), (0, 0));
    hutch.close().await.unwrap();
}
