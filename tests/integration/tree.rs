//! The root owns the whole tree: a consumer whose task dies outside a
//! handler is restarted under its intensity and then reported, never left
//! showing "consuming"; error hooks run on
//! bounded queues, one worker each, drained with a deadline at shutdown.

use std::{
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use hutch_rs::{
    BoxError, ConsumerState, ERROR_HOOK_QUEUE_CAPACITY, Error, Event, Failure, Message, Outgoing,
    consumer,
};
use hutch_rs_tests::{
    JOURNAL, PATIENCE, Scope, Seen, await_consumer_count, await_depth, init_logging, queue_depth,
    spawn_run_until,
};
use tokio::sync::Semaphore;

#[consumer(routing_key = "faulty.#", group = "faulty")]
async fn faulty(msg: Message<serde_json::Value>) -> Result<(), BoxError> {
    JOURNAL.record(Seen::of("faulty", &msg));
    Ok(())
}

/// Every message fails once and is dead-lettered at once.
#[consumer(routing_key = "storm.#", group = "storm", max_attempts = 1)]
async fn storm(_msg: Message<serde_json::Value>) -> Result<(), BoxError> {
    Err("storm".into())
}

#[consumer(routing_key = "drain.#", group = "drain", max_attempts = 1)]
async fn drain(_msg: Message<serde_json::Value>) -> Result<(), BoxError> {
    Err("drain".into())
}

#[consumer(routing_key = "hang.#", group = "hang", max_attempts = 1)]
async fn hang(_msg: Message<serde_json::Value>) -> Result<(), BoxError> {
    Err("hang".into())
}

async fn publish_many(hutch: &hutch_rs::Hutch, routing_key: &str, count: usize) {
    let batch = (0..count)
        .map(|n| Outgoing::json(routing_key, &serde_json::json!({ "n": n })))
        .collect::<hutch_rs::Result<Vec<_>>>()
        .unwrap();
    for outcome in hutch.publish_batch(batch).await {
        outcome.expect("published");
    }
}

/// A panic in the consumer's own code (injected on every delivery) is a
/// crash of its machinery: the run on that channel ends, the channel is
/// closed so the message goes back, and the consumer restarts on a new
/// channel under its restart intensity. The message panics it again each
/// time, so past the intensity the consumer is reported failed and `run`
/// ends; nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_panics_outside_a_handler_restarts_then_fails_past_its_intensity() {
    const MAX_RESTARTS: u32 = 2;
    init_logging();
    let scope = Scope::new("faulty");
    let queue = scope.queue("faulty");
    let hutch = scope
        .builder("faulty")
        .__panic_in_run_loop(&queue)
        .restart_intensity(MAX_RESTARTS, Duration::from_secs(60))
        .reconnect_delay(Duration::from_millis(10), Duration::from_millis(50))
        .build()
        .unwrap();
    let mut events = hutch.events();
    let (_stop, run) = spawn_run_until(&hutch);
    tokio::task::spawn_blocking({
        let queue = queue.clone();
        move || await_consumer_count(&queue, 1)
    })
    .await
    .unwrap();

    hutch
        .publish("faulty.work", &serde_json::json!({ "n": 1 }))
        .await
        .unwrap();
    let ended = tokio::time::timeout(PATIENCE, run)
        .await
        .expect("run_until ends once the consumer fails past its intensity")
        .unwrap();
    let Err(Error::ConsumerFailed {
        consumer,
        reason,
        restarts,
        ..
    }) = ended
    else {
        panic!("expected ConsumerFailed, got {ended:?}");
    };
    assert!(consumer.ends_with("::faulty"), "{consumer}");
    assert!(
        reason.starts_with("the consumer's task panicked: injected fault"),
        "{reason}"
    );
    assert_eq!(restarts, MAX_RESTARTS);

    let status = hutch.status();
    let faulty = status.consumer(&queue).expect("tracked");
    assert_eq!(faulty.state, ConsumerState::Failed, "{status:?}");
    assert_eq!(faulty.restarts, MAX_RESTARTS, "{status:?}");
    // Every restart and the final failure were announced, with the panic.
    let (restarted, failed) = tokio::time::timeout(PATIENCE, async {
        let mut restarted = Vec::new();
        loop {
            match events.recv().await.expect("the Hutch lives") {
                Event::ConsumerRestarted {
                    consumer,
                    restarts,
                    reason,
                } if consumer.ends_with("::faulty") => {
                    assert!(reason.contains("panicked"), "{reason}");
                    restarted.push(restarts);
                }
                Event::ConsumerFailed { consumer, reason } if consumer.ends_with("::faulty") => {
                    return (restarted, reason);
                }
                _ => continue,
            }
        }
    })
    .await
    .expect("a ConsumerFailed event");
    assert_eq!(restarted, (1..=MAX_RESTARTS).collect::<Vec<_>>());
    assert!(failed.contains("panicked"), "{failed}");

    // The handler never ran; the message went back with each channel, and
    // no channel of the consumer stays open.
    assert!(JOURNAL.by("faulty").is_empty());
    assert_eq!(queue_depth(&queue), 1);
    tokio::task::spawn_blocking({
        let queue = queue.clone();
        move || await_consumer_count(&queue, 0)
    })
    .await
    .unwrap();
    hutch.close().await.unwrap();
}

static STORM_GATE: Semaphore = Semaphore::const_new(0);
static STORM_RECEIVED: AtomicUsize = AtomicUsize::new(0);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_hook_under_a_burst_drops_and_counts_the_overflow_without_slowing_the_consumer() {
    const COUNT: usize = ERROR_HOOK_QUEUE_CAPACITY + 500;
    init_logging();
    let scope = Scope::new("storm");
    let hutch = scope
        .builder("storm")
        .on_error(|_failure: Failure| async {
            STORM_GATE.acquire().await?.forget();
            STORM_RECEIVED.fetch_add(1, Ordering::SeqCst);
            Ok::<_, BoxError>(())
        })
        .build()
        .unwrap();
    let running = hutch.start().await.expect("start");
    let tasks_before = tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks();

    publish_many(&hutch, "storm.job", COUNT).await;
    // Every message is handled and dead-lettered while the hook is stuck on
    // the first failure.
    let dead = format!("{}:dead", scope.queue("storm"));
    await_depth(&dead, COUNT as u64).await;
    assert_eq!(STORM_RECEIVED.load(Ordering::SeqCst), 0);

    let tasks = tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks();
    assert!(
        tasks <= tasks_before + 20,
        "{tasks} tasks alive, {tasks_before} before the burst: failures pile up as tasks"
    );
    // One failure in the hook, a full queue behind it, the rest dropped.
    let dropped = hutch.status().hook_failures_dropped;
    let expected = (COUNT - ERROR_HOOK_QUEUE_CAPACITY - 1) as u64;
    assert!(
        dropped == expected || dropped == expected + 1,
        "{dropped} dropped, expected {expected}"
    );

    STORM_GATE.add_permits(COUNT);
    running.shutdown().await.expect("clean shutdown");
    let received = STORM_RECEIVED.load(Ordering::SeqCst);
    assert_eq!(received as u64, COUNT as u64 - dropped);
    assert_eq!(hutch.status().hook_failures_dropped, dropped);
    hutch.close().await.unwrap();
}

static DRAINED: AtomicUsize = AtomicUsize::new(0);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_waits_for_the_hooks_to_report_what_was_queued() {
    const COUNT: usize = 10;
    const HOOK_TIME: Duration = Duration::from_millis(500);
    init_logging();
    let scope = Scope::new("drain");
    let hutch = scope
        .builder("drain")
        .shutdown_timeout(Duration::from_secs(15))
        .on_error(|_failure: Failure| async {
            tokio::time::sleep(HOOK_TIME).await;
            DRAINED.fetch_add(1, Ordering::SeqCst);
            Ok::<_, BoxError>(())
        })
        .build()
        .unwrap();
    let running = hutch.start().await.expect("start");
    publish_many(&hutch, "drain.job", COUNT).await;
    await_depth(&format!("{}:dead", scope.queue("drain")), COUNT as u64).await;
    assert!(
        DRAINED.load(Ordering::SeqCst) < COUNT,
        "the hook is still busy when shutdown begins"
    );

    let started = Instant::now();
    running.shutdown().await.expect("clean shutdown");
    assert_eq!(
        DRAINED.load(Ordering::SeqCst),
        COUNT,
        "every queued failure reported"
    );
    assert!(started.elapsed() < Duration::from_secs(15));
    assert_eq!(hutch.status().hook_failures_dropped, 0);
    hutch.close().await.unwrap();
}

static HANG_ENTERED: AtomicUsize = AtomicUsize::new(0);
static HANG_ABANDONED: AtomicUsize = AtomicUsize::new(0);

/// Counts the hook's future being dropped unfinished.
struct Abandoned;

impl Drop for Abandoned {
    fn drop(&mut self) {
        HANG_ABANDONED.fetch_add(1, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hook_that_never_returns_does_not_hold_shutdown_past_its_deadline() {
    const COUNT: usize = 3;
    const TIMEOUT: Duration = Duration::from_secs(1);
    init_logging();
    let scope = Scope::new("hang");
    let hutch = scope
        .builder("hang")
        .shutdown_timeout(TIMEOUT)
        .on_error(|_failure: Failure| async {
            let _abandoned = Abandoned;
            HANG_ENTERED.fetch_add(1, Ordering::SeqCst);
            std::future::pending::<()>().await;
            Ok::<_, BoxError>(())
        })
        .build()
        .unwrap();
    let running = hutch.start().await.expect("start");
    publish_many(&hutch, "hang.job", COUNT).await;
    await_depth(&format!("{}:dead", scope.queue("hang")), COUNT as u64).await;
    assert_eq!(HANG_ENTERED.load(Ordering::SeqCst), 1);

    let started = Instant::now();
    running
        .shutdown()
        .await
        .expect("the handlers finished: a clean shutdown");
    // The deadline, then the connection's close.
    assert!(
        started.elapsed() < TIMEOUT + Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    // Aborting a task drops its future when the runtime next gets to it:
    // soon after, not necessarily before shutdown returned.
    let abandoning = Instant::now();
    while HANG_ABANDONED.load(Ordering::SeqCst) == 0
        && abandoning.elapsed() < Duration::from_secs(2)
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        HANG_ABANDONED.load(Ordering::SeqCst),
        1,
        "the hook was abandoned"
    );
    assert_eq!(HANG_ENTERED.load(Ordering::SeqCst), 1);
    assert_eq!(hutch.status().hook_failures_dropped, COUNT as u64);

    let closing = Instant::now();
    hutch.close().await.unwrap();
    assert!(closing.elapsed() < TIMEOUT + Duration::from_secs(3));
}
