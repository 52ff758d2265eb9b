//! Per-consumer prefetch and concurrency against the real broker: how many
//! handler calls run at once, what the broker holds back, that batched
//! acknowledgements never cover a message still in its handler, and that a
//! panic among concurrent calls loses none of the others.

use std::{
    collections::BTreeMap,
    sync::{
        LazyLock,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use futures_util::{StreamExt, stream};
use hutch_rs::{BoxError, Decision, Error, Hutch, Message, consumer};
use hutch_rs_tests::{JOURNAL, PATIENCE, Scope, Seen, broker, take_all};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Item {
    id: u64,
}

/// Handler calls of one consumer that are under way, and a gate that holds
/// them until the test opens it.
#[derive(Debug)]
struct Flight {
    inside: watch::Sender<usize>,
    most: AtomicUsize,
    open: watch::Sender<bool>,
}

impl Flight {
    fn new() -> Self {
        Self {
            inside: watch::Sender::new(0),
            most: AtomicUsize::new(0),
            open: watch::Sender::new(false),
        }
    }

    /// Counts this call as under way until it returns, then waits at the gate.
    async fn pass(&self) {
        self.inside.send_modify(|inside| {
            *inside += 1;
            self.most.fetch_max(*inside, Ordering::SeqCst);
        });
        let mut open = self.open.subscribe();
        open.wait_for(|open| *open).await.expect("the gate lives");
        self.inside.send_modify(|inside| *inside -= 1);
    }

    /// Waits until `n` calls are under way at once.
    async fn await_inside(&self, n: usize) {
        let mut inside = self.inside.subscribe();
        tokio::time::timeout(PATIENCE, inside.wait_for(|inside| *inside == n))
            .await
            .unwrap_or_else(|_| panic!("{n} handler calls never ran at once"))
            .expect("the counter lives");
    }

    fn most(&self) -> usize {
        self.most.load(Ordering::SeqCst)
    }
}

static GATED: LazyLock<Flight> = LazyLock::new(Flight::new);
static PLAIN: LazyLock<Flight> = LazyLock::new(Flight::new);
static BRITTLE: LazyLock<Flight> = LazyLock::new(Flight::new);

#[consumer(
    routing_key = "gated.#",
    group = "gated",
    prefetch = 6,
    concurrency = 4
)]
async fn gated(msg: Message<Item>) -> Result<(), BoxError> {
    GATED.pass().await;
    JOURNAL.record(Seen::of("gated", &msg));
    Ok(())
}

/// No arguments of its own: the builder's defaults apply.
#[consumer(routing_key = "plain.#", group = "plain")]
async fn plain(msg: Message<Item>) -> Result<(), BoxError> {
    PLAIN.pass().await;
    JOURNAL.record(Seen::of("plain", &msg));
    Ok(())
}

/// Asks for more calls at once than the default prefetch (50).
#[consumer(routing_key = "wide.#", group = "wide", concurrency = 40)]
async fn wide(_msg: Message<Item>) -> Result<(), BoxError> {
    Ok(())
}

/// Finishes out of order (a different number of yields per message) and
/// dead-letters every seventh message, so that acknowledgements of handled
/// messages and settles of failed ones interleave.
#[consumer(
    routing_key = "mixed.#",
    group = "mixed",
    prefetch = 64,
    concurrency = 16,
    max_attempts = 1
)]
async fn mixed(msg: Message<Item>) -> Result<(), BoxError> {
    JOURNAL.record(Seen::of("mixed", &msg));
    for _ in 0..(msg.id * 7919) % 13 {
        tokio::task::yield_now().await;
    }
    if msg.id % 7 == 0 {
        return Err(Decision::dead_letter("a multiple of seven").into());
    }
    Ok(())
}

/// Message 0 panics on its first attempt; the others wait at the gate.
#[consumer(
    routing_key = "brittle.#",
    group = "brittle",
    prefetch = 8,
    concurrency = 4,
    max_attempts = 2,
    retry_min_delay = "50ms",
    retry_max_delay = "100ms"
)]
async fn brittle(msg: Message<Item>) -> Result<(), BoxError> {
    JOURNAL.record(Seen::of("brittle", &msg));
    if msg.id == 0 {
        assert!(msg.attempt() > 1, "message 0 panics on its first attempt");
        return Ok(());
    }
    BRITTLE.pass().await;
    Ok(())
}

/// Set once the CPU hog's first call stops burning.
static HOG_DONE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Message 0's first call burns CPU for 8 s without ever reaching an
/// `.await`: it can be neither interrupted nor share its thread.
#[consumer(
    routing_key = "hog.#",
    group = "hog",
    prefetch = 8,
    concurrency = 2,
    timeout = "300ms",
    max_attempts = 2,
    retry_min_delay = "50ms",
    retry_max_delay = "50ms"
)]
async fn hog(msg: Message<Item>) -> Result<(), BoxError> {
    JOURNAL.record(Seen::of("hog", &msg));
    if msg.id == 0 && msg.attempt() == 1 {
        let until = Instant::now() + Duration::from_secs(8);
        while Instant::now() < until {
            std::hint::spin_loop();
        }
        HOG_DONE.store(true, Ordering::SeqCst);
    }
    Ok(())
}

async fn publish_items(hutch: &Hutch, key: &str, ids: impl Iterator<Item = u64>) {
    stream::iter(ids)
        .map(|id| async move {
            hutch
                .publish(key, &Item { id })
                .await
                .expect("publish confirmed")
        })
        .buffer_unordered(50)
        .collect::<Vec<()>>()
        .await;
}

/// Polls the broker until `queue` holds `ready` and `unacked` messages.
/// Its counts can only be polled; the deadline turns a hang into a failure.
async fn await_queue(queue: &str, ready: u64, unacked: u64) {
    let queue = queue.to_owned();
    tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let info = broker()
                .queue(&queue)
                .expect("rabbitmqctl list_queues")
                .expect("the queue exists");
            if info.messages_ready == ready && info.messages_unacknowledged == unacked {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{queue} never held {ready} ready and {unacked} unacknowledged: {info:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    })
    .await
    .expect("the broker poll does not panic");
}

/// The prefetch the broker applies to the one consumer of `queue`.
fn broker_prefetch(queue: &str) -> u64 {
    let consumers: Vec<_> = broker()
        .consumers()
        .expect("rabbitmqctl list_consumers")
        .into_iter()
        .filter(|consumer| consumer.queue == queue)
        .collect();
    assert_eq!(consumers.len(), 1, "one consumer on {queue}: {consumers:?}");
    assert!(consumers[0].ack_required, "manual acknowledgements");
    consumers[0].prefetch_count
}

/// Runs `group` with 10 messages held at the gate: exactly `concurrency`
/// calls run, the broker has sent `prefetch`, the rest wait in the queue;
/// once the gate opens every message is handled once and acknowledged.
async fn check_flow(
    group: &'static str,
    flight: &Flight,
    customize: impl FnOnce(hutch_rs::HutchBuilder) -> hutch_rs::HutchBuilder,
    prefetch: u64,
    concurrency: usize,
) {
    hutch_rs_tests::init_logging();
    let scope = Scope::new(group);
    let hutch = customize(scope.builder(group)).build().expect("valid");
    let running = hutch.start().await.expect("start");
    let queue = scope.queue(group);
    assert_eq!(broker_prefetch(&queue), prefetch);

    publish_items(&hutch, &format!("{group}.item"), 0..10).await;
    flight.await_inside(concurrency).await;
    await_queue(&queue, 10 - prefetch, prefetch).await;
    // The broker has sent `prefetch` messages, so the client holds more
    // than `concurrency`; still no further call has started.
    assert_eq!(flight.most(), concurrency, "calls at once");
    assert_eq!(*flight.inside.borrow(), concurrency);

    flight.open.send_replace(true);
    let seen = JOURNAL.wait_for(group, 10).await;
    await_queue(&queue, 0, 0).await;
    running.shutdown().await.expect("clean shutdown");
    assert_eq!(flight.most(), concurrency, "never more calls at once");
    let mut ids: Vec<u64> = seen
        .iter()
        .map(|seen| seen.body["id"].as_u64().unwrap())
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, (0..10).collect::<Vec<_>>(), "each handled once");
    assert!(seen.iter().all(|seen| !seen.redelivered));
    let status = hutch.status();
    let consumer = status.consumer(&queue).unwrap();
    assert_eq!((consumer.restarts, consumer.stale_acks), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_runs_its_concurrency_and_the_broker_holds_back_past_its_prefetch() {
    check_flow("gated", &GATED, |builder| builder, 6, 4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_without_arguments_take_the_builder_defaults() {
    check_flow(
        "plain",
        &PLAIN,
        |builder| builder.prefetch(3).concurrency(2),
        3,
        2,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unset_prefetch_follows_the_concurrency_and_a_smaller_one_is_refused() {
    hutch_rs_tests::init_logging();
    let scope = Scope::new("wide");
    // `wide` asks for 40 calls at once: unset, its prefetch is twice that.
    let running = scope.hutch("wide").start().await.expect("start");
    assert_eq!(broker_prefetch(&scope.queue("wide")), 80);
    running.shutdown().await.expect("clean shutdown");

    // A prefetch set below it is refused before anything is declared.
    let scope = Scope::new("wide");
    let refused = scope
        .builder("wide")
        .prefetch(32)
        .build()
        .unwrap()
        .start()
        .await
        .map(|_| ());
    match refused {
        Err(Error::Config { setting, reason }) => {
            assert_eq!(setting, "#[consumer] on integration::concurrency::wide");
            assert!(
                reason.contains(
                    "concurrency 40 (its own argument) exceeds prefetch 32 (HutchBuilder::prefetch)"
                ),
                "{reason}"
            );
        }
        other => panic!("expected a configuration error, got {other:?}"),
    }
    assert_eq!(broker().queue(&scope.queue("wide")).unwrap(), None);

    match Hutch::builder().concurrency(0).build() {
        Err(Error::Config { setting, reason }) => {
            assert_eq!(setting, "HutchBuilder::concurrency");
            assert!(reason.contains("at least 1"), "{reason}");
        }
        other => panic!("expected a configuration error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_order_completions_and_failures_lose_nothing_and_ack_nothing_twice() {
    hutch_rs_tests::init_logging();
    let scope = Scope::new("mixed");
    let hutch = scope.hutch("mixed");
    let running = hutch.start().await.expect("start");
    let queue = scope.queue("mixed");
    const COUNT: u64 = 2_000;
    publish_items(&hutch, "mixed.item", 0..COUNT).await;

    let seen = tokio::time::timeout(
        Duration::from_secs(180),
        JOURNAL.wait_for("mixed", COUNT as usize),
    )
    .await
    .expect("every message handled");
    await_queue(&queue, 0, 0).await;
    let dead = take_all(&format!("{queue}:dead")).await;
    running.shutdown().await.expect("clean shutdown");

    // Each message handled exactly once: an acknowledgement that covered a
    // message still in its handler, or one naming a tag the broker already
    // forgot, would have closed the channel and brought messages back.
    let mut handled: BTreeMap<u64, usize> = BTreeMap::new();
    for seen in &seen {
        *handled
            .entry(seen.body["id"].as_u64().unwrap())
            .or_default() += 1;
        assert!(!seen.redelivered, "no redelivery: {seen:?}");
    }
    assert_eq!(handled.len() as u64, COUNT);
    assert!(handled.values().all(|times| *times == 1));
    let mut dead_ids: Vec<u64> = dead
        .iter()
        .map(|message| {
            serde_json::from_slice::<Item>(&message.delivery.data)
                .unwrap()
                .id
        })
        .collect();
    dead_ids.sort_unstable();
    let sevens: Vec<u64> = (0..COUNT).filter(|id| id % 7 == 0).collect();
    assert_eq!(dead_ids, sevens, "exactly the multiples of seven");
    let status = hutch.status();
    let consumer = status.consumer(&queue).unwrap();
    assert_eq!((consumer.restarts, consumer.stale_acks), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_among_concurrent_calls_is_retried_while_the_others_go_on() {
    hutch_rs_tests::init_logging();
    let scope = Scope::new("brittle");
    let hutch = scope.hutch("brittle");
    let running = hutch.start().await.expect("start");
    let queue = scope.queue("brittle");
    publish_items(&hutch, "brittle.item", 1..4).await;
    BRITTLE.await_inside(3).await;
    publish_items(&hutch, "brittle.item", std::iter::once(0)).await;
    // Message 0 panics while 1, 2 and 3 wait at the gate. The consumer goes
    // on consuming: the retry of message 0 is handled in the fourth slot
    // while the three still wait, with no restart.
    let before_the_gate_opens = JOURNAL.wait_for("brittle", 5).await;
    let zero: Vec<u32> = before_the_gate_opens
        .iter()
        .filter(|seen| seen.body["id"] == 0)
        .map(|seen| seen.attempt)
        .collect();
    assert_eq!(zero, [1, 2], "retried while the others wait at the gate");
    assert_eq!(hutch.status().consumer(&queue).unwrap().restarts, 0);
    BRITTLE.open.send_replace(true);

    await_queue(&queue, 0, 0).await;
    running.shutdown().await.expect("clean shutdown");
    let seen = JOURNAL.by("brittle");
    let attempts = |id: u64| -> Vec<(u32, bool)> {
        seen.iter()
            .filter(|seen| seen.body["id"] == id)
            .map(|seen| (seen.attempt, seen.redelivered))
            .collect()
    };
    for id in 1..4 {
        assert_eq!(attempts(id), [(1, false)], "message {id} handled once");
    }
    assert_eq!(attempts(0), [(1, false), (2, false)]);
    let status = hutch.status();
    let consumer = status.consumer(&queue).unwrap();
    assert_eq!((consumer.restarts, consumer.stale_acks), (0, 0));
    assert_eq!(take_all(&format!("{queue}:dead")).await.len(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_burning_cpu_holds_up_neither_the_other_calls_nor_its_timeout() {
    hutch_rs_tests::init_logging();
    let scope = Scope::new("hog");
    let hutch = scope.hutch("hog");
    let running = hutch.start().await.expect("start");
    let queue = scope.queue("hog");
    publish_items(&hutch, "hog.item", std::iter::once(0)).await;
    JOURNAL.wait_for("hog", 1).await;
    publish_items(&hutch, "hog.item", 1..6).await;
    // While message 0's first call still burns its thread: the others are
    // handled and acknowledged on the other slot, and message 0's timeout
    // fired, so that its retry (attempt 2) was handled too.
    let seen = JOURNAL.wait_for("hog", 7).await;
    assert!(
        !HOG_DONE.load(Ordering::SeqCst),
        "all of this happened while the hog still burned"
    );
    await_queue(&queue, 0, 0).await;
    assert!(!HOG_DONE.load(Ordering::SeqCst));
    let zero: Vec<u32> = seen
        .iter()
        .filter(|seen| seen.body["id"] == 0)
        .map(|seen| seen.attempt)
        .collect();
    assert_eq!(zero, [1, 2], "timed out at 300 ms and retried");
    for id in 1..6 {
        assert!(
            seen.iter().any(|seen| seen.body["id"] == id),
            "{id} handled"
        );
    }
    running.shutdown().await.expect("clean shutdown");
    let status = hutch.status();
    let consumer = status.consumer(&queue).unwrap();
    assert_eq!((consumer.restarts, consumer.stale_acks), (0, 0));
    assert_eq!(take_all(&format!("{queue}:dead")).await.len(), 0);
}
