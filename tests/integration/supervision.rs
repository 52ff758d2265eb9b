//! The supervision tree against a real broker that misbehaves: connections
//! force-closed, the broker stopped and started, panicking handlers, a
//! deleted queue, a black-holed network path. Every test counts by number
//! that each confirmed message is consumed at least once, and ends with the
//! broker holding exactly the connections and channels the tree needs.
//!
//! Each test has a node of its own, and they take turns, so the broker's
//! connection and channel counts are theirs alone.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{
        Arc, LazyLock, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use futures_util::FutureExt;
use hutch_rs::{
    BoxError, ConnectionState, Error, Event, EventStream, Hutch, HutchBuilder, Message, Running,
    Status, consumer, testing::Broker,
};
use hutch_rs_tests::{
    ALARM_OFF, ALARM_ON, NodeTurn, PATIENCE, Scope, TALLY, init_logging, isolated_broker,
    own_broker, proxy::BlackHoleProxy, rabbitmqctl, raw_channel_to, spawn_run_until,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// The attempt on which `flaky_sink` handled each of the messages that
/// panic once, by publish id.
static HANDLED_AFTER_PANIC: LazyLock<Mutex<BTreeMap<String, u32>>> =
    LazyLock::new(Default::default);
/// How many times `flaky_sink` panicked.
static FLAKY_PANICS: AtomicU64 = AtomicU64::new(0);

const HEARTBEAT: Duration = Duration::from_secs(2);

/// A test message: its run, its number in the run, and an id unique to the
/// publish call (a retried publish gets a new one).
#[derive(Debug, Serialize, Deserialize)]
struct Numbered {
    run: String,
    n: u64,
    publish_id: String,
}

impl Numbered {
    fn new(run: &str, n: u64) -> Self {
        Self {
            run: run.to_owned(),
            n,
            publish_id: uuid::Uuid::new_v4().to_string(),
        }
    }
}

/// Publishes one message and returns its publish id, once confirmed.
async fn publish_one(hutch: &Hutch, key: &str, run: &str, n: u64) -> String {
    let message = Numbered::new(run, n);
    hutch.publish(key, &message).await.expect("confirmed");
    message.publish_id
}

#[consumer(routing_key = "stream.#", group = "stream")]
async fn stream_sink(msg: Message<Numbered>) -> Result<(), BoxError> {
    TALLY.record(&msg.run, &msg.publish_id);
    Ok(())
}

/// Every 100th message panics on its first attempt.
#[consumer(routing_key = "flaky.#", group = "supervision_flaky")]
async fn flaky_sink(msg: Message<Numbered>) -> Result<(), BoxError> {
    if msg.n % 100 == 99 {
        if msg.attempt() == 1 {
            FLAKY_PANICS.fetch_add(1, Ordering::SeqCst);
            panic!("message {} panics on its first attempt", msg.n);
        }
        HANDLED_AFTER_PANIC
            .lock()
            .unwrap()
            .insert(msg.publish_id.clone(), msg.attempt());
    }
    TALLY.record(&msg.run, &msg.publish_id);
    Ok(())
}

/// Its queue is deleted under it again and again in the test below.
#[consumer(routing_key = "doomed.#", group = "supervision_doomed")]
async fn doomed_sink(_msg: Message<Numbered>) -> Result<(), BoxError> {
    Ok(())
}

/// Slow on a message's first delivery, longer than the broker's delivery
/// acknowledgement timeout in the test below; quick on its redelivery.
#[consumer(routing_key = "slow.#", group = "slow_once")]
async fn slow_once(msg: Message<Numbered>) -> Result<(), BoxError> {
    if msg.redelivered() {
        // Only the redelivery counts: the first handling's ack is never sent.
        TALLY.record(&msg.run, &msg.publish_id);
    } else {
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    Ok(())
}

#[consumer(routing_key = "pair.a", group = "pair")]
async fn pair_first(_msg: Message<Numbered>) -> Result<(), BoxError> {
    Ok(())
}

#[consumer(routing_key = "pair.b", group = "pair")]
async fn pair_second(_msg: Message<Numbered>) -> Result<(), BoxError> {
    Ok(())
}

/// A broker of the test's own, and its names: either a turn on the node of
/// the disturbing tests (tests take turns, so the node's connection and
/// channel counts are the test's alone; the turn ends when `_turn` drops),
/// or a virtual host of its own on the shared node, whose counts are its
/// own too, for a test that disturbs no node.
struct OwnNode {
    broker: Arc<Broker>,
    scope: Scope,
    _turn: Option<NodeTurn>,
}

impl OwnNode {
    /// Waits for this test's turn, for a test that stops, alarms or closes
    /// every connection of its node.
    async fn take(test: &str) -> Self {
        let turn = NodeTurn::take().await;
        Self {
            broker: turn.broker(),
            scope: Scope::new(test),
            _turn: Some(turn),
        }
    }

    /// A virtual host of its own on the shared node, at once, for a test
    /// that only deletes its own queues or is refused by the broker.
    async fn isolated(test: &str) -> Self {
        init_logging();
        Self {
            broker: isolated_broker().await,
            scope: Scope::new(test),
            _turn: None,
        }
    }
}

/// Settings for a test: quick heartbeats and reconnects.
fn builder(uri: String, scope: &Scope, group: &str) -> HutchBuilder {
    Hutch::builder()
        .uri(uri)
        .exchange(&scope.exchange)
        .namespace(&scope.namespace)
        .group(group)
        .heartbeat(HEARTBEAT)
        .connection_timeout(Duration::from_secs(3))
        .reconnect_delay(Duration::from_millis(50), Duration::from_secs(1))
        .confirm_timeout(Duration::from_secs(10))
}

/// Messages confirmed by the broker, and how many.
#[derive(Clone, Default)]
struct Confirmed {
    /// Publish id → the message's number.
    ids: Arc<Mutex<BTreeMap<String, u64>>>,
    count: watch::Sender<u64>,
}

impl Confirmed {
    fn add(&self, message: &Numbered) {
        self.ids
            .lock()
            .unwrap()
            .insert(message.publish_id.clone(), message.n);
        self.count.send_modify(|count| *count += 1);
    }

    fn ids(&self) -> BTreeSet<String> {
        self.ids.lock().unwrap().keys().cloned().collect()
    }

    /// The numbers of these publish ids.
    fn numbers(&self, publish_ids: &[String]) -> Vec<u64> {
        let ids = self.ids.lock().unwrap();
        publish_ids
            .iter()
            .filter_map(|id| ids.get(id).copied())
            .collect()
    }

    async fn wait_for(&self, at_least: u64) {
        let mut count = self.count.subscribe();
        tokio::time::timeout(PATIENCE * 3, count.wait_for(|count| *count >= at_least))
            .await
            .unwrap_or_else(|_| panic!("fewer than {at_least} messages were confirmed"))
            .unwrap();
    }
}

/// Publishes messages `0..total` of `run` from `tasks` tasks. A publish that
/// fails (the connection was closed under it) is tried again: only confirmed
/// messages count, and each must be consumed.
fn publish_stream(
    hutch: &Hutch,
    key: &'static str,
    run: &str,
    total: u64,
    tasks: u64,
    confirmed: &Confirmed,
    stop: &Arc<AtomicBool>,
) -> tokio::task::JoinHandle<u64> {
    let publishers: Vec<_> = (0..tasks)
        .map(|task| {
            let (hutch, run, confirmed, stop) = (
                hutch.clone(),
                run.to_owned(),
                confirmed.clone(),
                stop.clone(),
            );
            tokio::spawn(async move {
                let mut failures = 0;
                for n in (task..total).step_by(tasks as usize) {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    // Each attempt is a message of its own: only the one the
                    // broker confirmed must be consumed.
                    loop {
                        let message = Numbered::new(&run, n);
                        match hutch.publish(key, &message).await {
                            Ok(()) => {
                                confirmed.add(&message);
                                break;
                            }
                            Err(error) => {
                                failures += 1;
                                assert!(failures < 1_000, "publishing keeps failing: {error}");
                            }
                        }
                    }
                }
                failures
            })
        })
        .collect();
    tokio::spawn(async move {
        let mut failures = 0;
        for publisher in publishers {
            failures += publisher.await.unwrap();
        }
        failures
    })
}

/// Waits until the broker holds exactly the connections and channels the
/// tree needs. The broker closes a dead peer's connection on its own
/// schedule, so this polls, with a deadline.
async fn assert_broker_holds(broker: &Arc<Broker>, connections: usize, channels: usize) {
    let broker = broker.clone();
    tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let held = (broker.connection_count().unwrap(), broker.channel_count().unwrap());
            if held == (connections, channels) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the broker holds {} connection(s) and {} channel(s), the tree needs {connections} and {channels}",
                held.0,
                held.1
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    })
    .await
    .unwrap();
}

/// Waits until every id in `expected` was consumed; if the tree gives up
/// meanwhile, fails with its reason rather than with a count. A message
/// still missing after the wait fails the test with what would find it:
/// its number, the tree's status and where the broker holds messages.
async fn consumed_or_failed(
    running: &mut Running,
    hutch: &Hutch,
    broker: &Arc<Broker>,
    run: &str,
    expected: &BTreeSet<String>,
    confirmed: &Confirmed,
) {
    let missing = tokio::select! {
        waited = TALLY.all_within(run, expected, PATIENCE * 3) => waited,
        failure = running.failure() => panic!("the supervision tree gave up: {failure}"),
    };
    let Err(missing) = missing else { return };
    let queues: Vec<_> = tokio::task::block_in_place(|| broker.queues())
        .map(|queues| {
            queues
                .into_iter()
                .filter(|queue| queue.name.starts_with(run))
                .map(|queue| {
                    format!(
                        "{}: {} ready, {} unacked, {} consumer(s)",
                        queue.name,
                        queue.messages_ready,
                        queue.messages_unacknowledged,
                        queue.consumers
                    )
                })
                .collect()
        })
        .unwrap_or_else(|error| vec![format!("queues not listed: {error}")]);
    panic!(
        "{} confirmed message(s) of {run} were never consumed: numbers {:?}, e.g. {:?}; \
         status {:#?}; queues {queues:#?}",
        missing.len(),
        confirmed.numbers(&missing),
        &missing[..missing.len().min(20)],
        hutch.status(),
    );
}

/// Force-closes every connection on `broker`, then waits until the consume
/// connection is back for the `closes`-th time.
async fn force_close_all(
    broker: &Arc<Broker>,
    hutch: &Hutch,
    events: &mut EventStream,
    closes: u64,
) {
    let closing = broker.clone();
    tokio::task::spawn_blocking(move || {
        closing.close_all_connections("hutch-rs test: forced close")
    })
    .await
    .unwrap()
    .expect("close all connections");
    wait_until(hutch, events, |status| {
        status.connection("consume").is_some_and(|consume| {
            consume.connects > closes && consume.state == ConnectionState::Connected
        })
    })
    .await;
}

/// Waits, event by event, until the status satisfies `done`.
async fn wait_until(hutch: &Hutch, events: &mut EventStream, done: impl Fn(&Status) -> bool) {
    let waited = tokio::time::timeout(PATIENCE, async {
        while !done(&hutch.status()) {
            events
                .recv()
                .await
                .expect("the event stream lives as long as hutch");
        }
    })
    .await;
    assert!(
        waited.is_ok(),
        "the tree never got there: {:?}",
        hutch.status()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_force_closed_repeatedly_during_a_stream_lose_nothing() {
    let OwnNode {
        broker,
        scope,
        _turn,
    } = OwnNode::take("force-closed").await;
    let hutch = builder(broker.amqp_uri(), &scope, "stream")
        .build()
        .unwrap();
    let mut events = hutch.events();
    let mut running = hutch.start().await.expect("start");

    // Publishing runs throughout: before, between and after three forced
    // closes, each of which hits a live consume connection.
    let confirmed = Confirmed::default();
    let stop = Arc::new(AtomicBool::new(false));
    let stream = publish_stream(
        &hutch,
        "stream.forced",
        &scope.namespace,
        u64::MAX,
        10,
        &confirmed,
        &stop,
    );
    for round in 1..=3_u64 {
        confirmed.wait_for(round * 2_500).await;
        force_close_all(&broker, &hutch, &mut events, round).await;
    }
    let after_last_close = confirmed.ids().len() as u64;
    confirmed
        .wait_for((after_last_close + 500).max(10_000))
        .await;
    stop.store(true, Ordering::SeqCst);
    let publish_failures = stream.await.unwrap();
    let expected = confirmed.ids();
    assert!(expected.len() >= 10_000);
    let run = scope.namespace.as_str();
    consumed_or_failed(&mut running, &hutch, &broker, run, &expected, &confirmed).await;
    wait_until(&hutch, &mut events, Status::is_healthy).await;

    let status = hutch.status();
    let consume = status.connection("consume").unwrap();
    assert_eq!(
        consume.connects, 4,
        "reconnected after each forced close: {consume:?}"
    );
    let sink = status.consumer(&scope.queue("stream_sink")).unwrap();
    assert_eq!(
        sink.restarts, 0,
        "a connection loss is not a consumer failure: {sink:?}"
    );
    eprintln!(
        "forced closes: {} confirmed, all consumed; {publish_failures} publish(es) retried",
        expected.len()
    );
    // One consume connection with one channel, one publish connection with one.
    assert_broker_holds(&broker, 2, 2).await;
    running.shutdown().await.expect("clean shutdown");
    hutch.close().await.unwrap();
    assert_broker_holds(&broker, 0, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_stopped_and_started_mid_stream_loses_nothing() {
    let OwnNode {
        broker,
        scope,
        _turn,
    } = OwnNode::take("restarted").await;
    let hutch = builder(broker.amqp_uri(), &scope, "stream")
        .build()
        .unwrap();
    let mut events = hutch.events();
    let mut running = hutch.start().await.expect("start");

    // Publishing goes on before, during and after the outage, until a
    // good number of messages were confirmed after the broker came back.
    let confirmed = Confirmed::default();
    let stop = Arc::new(AtomicBool::new(false));
    let stream = publish_stream(
        &hutch,
        "stream.restart",
        &scope.namespace,
        u64::MAX,
        4,
        &confirmed,
        &stop,
    );
    confirmed.wait_for(500).await;
    rabbitmqctl(&broker, &["stop_app"]).await;
    rabbitmqctl(&broker, &["start_app"]).await;
    let restarted_at = confirmed.ids().len() as u64;
    confirmed.wait_for(restarted_at + 500).await;
    stop.store(true, Ordering::SeqCst);
    let publish_failures = stream.await.unwrap();
    eprintln!(
        "broker restart: {} confirmed, {publish_failures} publish(es) failed and were retried",
        confirmed.ids().len()
    );
    let expected = confirmed.ids();
    // If anything is missing, say what the broker holds: queued (not
    // consumed) or gone (dropped on the way).
    let waited = tokio::time::timeout(
        PATIENCE * 2,
        TALLY.wait_for_all(&scope.namespace, &expected, PATIENCE * 3),
    )
    .await;
    if waited.is_err() {
        let (b, q) = (broker.clone(), scope.queue("stream_sink"));
        let (queue, bindings) = tokio::task::spawn_blocking(move || {
            let bindings: Vec<_> = b
                .bindings()
                .unwrap()
                .into_iter()
                .filter(|binding| binding.destination == q)
                .collect();
            (b.queue(&q).unwrap(), bindings)
        })
        .await
        .unwrap();
        panic!(
            "{} confirmed message(s) never consumed; status {:?}; queue {queue:?}; bindings {bindings:?}",
            TALLY.missing(&scope.namespace, &expected).len(),
            hutch.status()
        );
    }
    let run = scope.namespace.as_str();
    consumed_or_failed(&mut running, &hutch, &broker, run, &expected, &confirmed).await;

    wait_until(&hutch, &mut events, Status::is_healthy).await;
    let status = hutch.status();
    assert!(status.connection("consume").unwrap().connects >= 2);
    assert!(status.is_healthy(), "{status:?}");
    assert_broker_holds(&broker, 2, 2).await;
    running.shutdown().await.expect("clean shutdown");
    hutch.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_back_after_an_outage_is_used_at_once_not_after_the_backoff() {
    let OwnNode {
        broker,
        scope,
        _turn,
    } = OwnNode::take("back").await;
    // Without watching for the broker's return, the next attempt after the
    // outage would come 30 s or more later.
    let hutch = builder(broker.amqp_uri(), &scope, "stream")
        .reconnect_delay(Duration::from_secs(30), Duration::from_secs(60))
        .build()
        .unwrap();
    let running = hutch.start().await.expect("start");
    let before = publish_one(&hutch, "stream.back", &scope.namespace, 0).await;
    TALLY
        .wait_for_all(&scope.namespace, &BTreeSet::from([before]), PATIENCE)
        .await;

    rabbitmqctl(&broker, &["stop_app"]).await;
    rabbitmqctl(&broker, &["start_app"]).await;
    // Both connections come back well inside the first 30 s delay: the
    // publish is confirmed (10 s confirm timeout) and consumed.
    let after = tokio::time::timeout(
        Duration::from_secs(10),
        publish_one(&hutch, "stream.back", &scope.namespace, 1),
    )
    .await
    .expect("the publishing connection came back without waiting out its backoff");
    TALLY
        .wait_for_all(
            &scope.namespace,
            &BTreeSet::from([after]),
            Duration::from_secs(10),
        )
        .await;
    let status = hutch.status();
    assert_eq!(status.connection("consume").unwrap().connects, 2);
    running.shutdown().await.expect("clean shutdown");
    hutch.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panics_are_failures_of_their_messages_and_never_stop_the_consumer() {
    let OwnNode {
        broker,
        scope,
        _turn,
    } = OwnNode::take("flaky").await;
    // The default intensity (10 in 60 s): fifty panics would use it up five
    // times over if a panic restarted the consumer.
    let hutch = builder(broker.amqp_uri(), &scope, "supervision_flaky")
        .retry_delay(Duration::from_millis(50), Duration::from_millis(200))
        .build()
        .unwrap();
    let mut events = hutch.events();
    let mut running = hutch.start().await.expect("start");
    let queue = scope.queue("flaky_sink");

    // 5,000 messages, of which every 100th panics once, published throughout
    // five forced closes of every connection.
    const TOTAL: u64 = 5_000;
    let confirmed = Confirmed::default();
    let stream = publish_stream(
        &hutch,
        "flaky.work",
        &scope.namespace,
        TOTAL,
        8,
        &confirmed,
        &Arc::new(AtomicBool::new(false)),
    );
    for round in 1..=5_u64 {
        confirmed.wait_for(round * 700).await;
        force_close_all(&broker, &hutch, &mut events, round).await;
    }
    stream.await.unwrap();
    let expected = confirmed.ids();
    assert!(expected.len() as u64 >= TOTAL);
    let run = scope.namespace.as_str();
    consumed_or_failed(&mut running, &hutch, &broker, run, &expected, &confirmed).await;

    // Each message that panicked was handled on its second attempt: retried
    // through its delay queue like any failure. A forced close may make one
    // panic twice (its first attempt redelivered), never a third time.
    let handled_after_panic = HANDLED_AFTER_PANIC.lock().unwrap().clone();
    let panicky: Vec<_> = handled_after_panic
        .iter()
        .filter(|(id, _)| expected.contains(*id))
        .collect();
    assert!(
        panicky.len() >= 50,
        "{} panicky ones handled",
        panicky.len()
    );
    assert!(
        panicky.iter().all(|(_, attempt)| **attempt == 2),
        "each panicking message is handled on attempt 2: {panicky:?}"
    );
    let panics = FLAKY_PANICS.load(Ordering::SeqCst);
    assert!(panics >= 50, "{panics} panics");

    // Nothing restarted, nothing given up; the consumer still consumes
    // (once back from the last forced close).
    wait_until(&hutch, &mut events, Status::is_healthy).await;
    let status = hutch.status();
    let sink = status.consumer(&queue).unwrap();
    assert_eq!(
        sink.restarts, 0,
        "a panic is not a consumer failure: {sink:?}"
    );
    assert_eq!(sink.state, hutch_rs::ConsumerState::Consuming);
    assert_eq!(status.connection("consume").unwrap().connects, 6);
    while let Ok(Some(event)) = tokio::time::timeout(Duration::from_millis(10), events.recv()).await
    {
        assert!(
            !matches!(event, Event::ConsumerRestarted { .. }),
            "no restart: {event:?}"
        );
    }
    assert!(
        running.failure().now_or_never().is_none(),
        "run is still running"
    );
    // One more that panics once, after the last forced close: it is
    // forwarded on a new connection's forwarding channel.
    let after = publish_one(&hutch, "flaky.after", &scope.namespace, 199).await;
    TALLY
        .wait_for_all(&scope.namespace, &BTreeSet::from([after]), PATIENCE)
        .await;
    eprintln!(
        "{} confirmed and handled, {panics} panics, 0 restarts",
        expected.len()
    );
    // No channel or connection leaked: one consumer channel; the publishing
    // connection has the test's channel and the one that forwarded the
    // panicking messages to their delay queue.
    assert_broker_holds(&broker, 2, 3).await;
    running.shutdown().await.expect("clean shutdown");
    hutch.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_deleted_while_consuming_is_declared_again_and_consumed() {
    let OwnNode {
        broker,
        scope,
        _turn,
    } = OwnNode::isolated("deleted").await;
    let hutch = builder(broker.amqp_uri(), &scope, "stream")
        .build()
        .unwrap();
    let mut events = hutch.events();
    let running = hutch.start().await.expect("start");
    let queue = scope.queue("stream_sink");
    let run = scope.namespace.clone();

    let before = publish_one(&hutch, "stream.before", &run, 0).await;
    TALLY
        .wait_for_all(&run, &BTreeSet::from([before.clone()]), PATIENCE)
        .await;

    // Delete the queue with a plain client, as an operator might.
    let (connection, channel) = raw_channel_to(&broker).await;
    channel
        .queue_delete(queue.as_str().into(), Default::default())
        .await
        .unwrap();
    connection.close(200, "done".into()).await.unwrap();

    // The broker cancels the consumer; it restarts, declares its queue and
    // bindings again, and consumes: its second start since the first.
    let restarted = tokio::time::timeout(PATIENCE, async {
        let mut starts = 0;
        while starts < 2 {
            match events.recv().await {
                Some(Event::ConsumerStarted { consumer, .. })
                    if consumer == "integration::supervision::stream_sink" =>
                {
                    starts += 1
                }
                Some(_) => {}
                None => panic!("event stream ended"),
            }
        }
    });
    restarted.await.expect("the consumer started again");
    let sink = hutch.status().consumer(&queue).cloned().unwrap();
    assert_eq!(sink.restarts, 1, "{sink:?}");

    let after = publish_one(&hutch, "stream.after", &run, 1).await;
    TALLY
        .wait_for_all(&run, &BTreeSet::from([before, after]), PATIENCE)
        .await;
    let info = {
        let (broker, queue) = (broker.clone(), queue.clone());
        tokio::task::spawn_blocking(move || broker.queue(&queue).unwrap())
            .await
            .unwrap()
    };
    let info = info.expect("the queue exists again");
    assert!(info.durable && info.consumers == 1, "{info:?}");
    assert_broker_holds(&broker, 2, 2).await;
    running.shutdown().await.expect("clean shutdown");
    hutch.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_holed_connection_is_noticed_by_heartbeats_and_recovered() {
    let OwnNode {
        broker,
        scope,
        _turn,
    } = OwnNode::take("black-hole").await;
    let proxy = BlackHoleProxy::start(broker.amqp_port()).await;
    // Consumers through the proxy; the publisher straight to the broker.
    let consumers = builder(proxy.amqp_uri(), &scope, "stream").build().unwrap();
    let publisher = builder(broker.amqp_uri(), &scope, "stream")
        .build()
        .unwrap();
    let mut events = consumers.events();
    let running = consumers.start().await.expect("start");
    let run = scope.namespace.clone();
    let first = publish_one(&publisher, "stream.hole", &run, 0).await;
    TALLY
        .wait_for_all(&run, &BTreeSet::from([first.clone()]), PATIENCE)
        .await;

    proxy.black_hole();
    let blackholed_at = Instant::now();
    let noticed = tokio::time::timeout(HEARTBEAT * 5, async {
        loop {
            if let Some(Event::Disconnected {
                connection: "consume",
                reason,
            }) = events.recv().await
            {
                return reason;
            }
        }
    })
    .await
    .expect("the dead path is noticed");
    let noticed_after = blackholed_at.elapsed();
    eprintln!("black hole noticed after {noticed_after:?} (heartbeat {HEARTBEAT:?}): {noticed}");
    // lapin gives up after two intervals without a byte and checks every
    // half interval.
    assert!(
        noticed_after <= HEARTBEAT * 5 / 2,
        "noticed after {noticed_after:?}"
    );

    // Published while the consumers cannot be reached: kept by the broker.
    let mut expected = BTreeSet::from([first]);
    for n in 1..=50 {
        expected.insert(publish_one(&publisher, "stream.hole", &run, n).await);
    }
    proxy.heal();
    TALLY.wait_for_all(&run, &expected, PATIENCE).await;
    assert!(consumers.status().connection("consume").unwrap().connects >= 2);
    // The black-holed connection is gone from the broker too (its heartbeat
    // check closes it); one consume and one publish connection remain.
    assert_broker_holds(&broker, 2, 2).await;
    running.shutdown().await.expect("clean shutdown");
    publisher.close().await.unwrap();
}

/// Deletes `queue` with a plain client, as an operator might: the broker
/// cancels its consumer, a failure of the consumer's own machinery.
async fn delete_queue(broker: &Broker, queue: &str) {
    let (connection, channel) = raw_channel_to(broker).await;
    channel
        .queue_delete(queue.into(), Default::default())
        .await
        .unwrap();
    connection.close(200, "done".into()).await.unwrap();
}

/// Deletes the consumer's queue `times` times, each time once it consumes
/// again after the previous deletion.
async fn cancel_by_deleting_its_queue(
    broker: &Broker,
    hutch: &Hutch,
    events: &mut EventStream,
    queue: &str,
    times: u32,
) {
    for time in 1..=times {
        wait_until(hutch, events, |status| {
            status.consumer(queue).is_some_and(|consumer| {
                consumer.state == hutch_rs::ConsumerState::Consuming
                    && consumer.restarts == time - 1
            })
        })
        .await;
        delete_queue(broker, queue).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_past_its_restart_intensity_ends_run_with_its_name() {
    let OwnNode {
        broker,
        scope,
        _turn,
    } = OwnNode::isolated("doomed").await;
    let hutch = builder(broker.amqp_uri(), &scope, "supervision_doomed")
        .restart_intensity(2, Duration::from_secs(60))
        .build()
        .unwrap();
    let mut events = hutch.events();
    let mut running = hutch.start().await.expect("start");
    let queue = scope.queue("doomed_sink");
    // Two restarts are allowed; the third cancellation is one too many.
    cancel_by_deleting_its_queue(&broker, &hutch, &mut events, &queue, 3).await;
    let error = tokio::time::timeout(PATIENCE, running.failure())
        .await
        .expect("the consumer gives up");
    let Error::ConsumerFailed {
        consumer,
        queue: failed_queue,
        restarts,
        reason,
    } = &error
    else {
        panic!("expected ConsumerFailed, got {error:?}");
    };
    assert_eq!(consumer, "integration::supervision::doomed_sink");
    assert_eq!(failed_queue, &queue);
    assert_eq!(*restarts, 2);
    assert!(reason.contains("cancelled the consumer"), "{reason}");
    assert!(
        error
            .to_string()
            .contains("integration::supervision::doomed_sink")
    );
    assert_eq!(
        hutch.status().consumer(&queue).unwrap().state,
        hutch_rs::ConsumerState::Failed
    );
    // The failed consumer's channel is closed; the connection stays for the
    // others.
    assert_broker_holds(&broker, 1, 0).await;

    // run_until reports the same failure and closes everything.
    running.shutdown().await.expect("clean shutdown");
    let mut events = hutch.events();
    let run = tokio::spawn({
        let hutch = hutch.clone();
        async move { hutch.run_until(std::future::pending()).await }
    });
    cancel_by_deleting_its_queue(&broker, &hutch, &mut events, &queue, 3).await;
    let error = tokio::time::timeout(PATIENCE, run)
        .await
        .expect("run_until gives up")
        .unwrap()
        .unwrap_err();
    assert!(matches!(error, Error::ConsumerFailed { .. }), "{error:?}");
    assert_broker_holds(&broker, 0, 0).await;
    hutch.close().await.unwrap();
}

/// Fatal errors end `start` at once and leave nothing open on the broker.
async fn assert_fatal(broker: &Arc<Broker>, hutch: &Hutch) -> Error {
    let started = Instant::now();
    let error = tokio::time::timeout(Duration::from_secs(10), hutch.start())
        .await
        .expect("a fatal error ends start at once, without a retry loop")
        .unwrap_err();
    eprintln!("fatal after {:?}: {error}", started.elapsed());
    assert_broker_holds(broker, 0, 0).await;
    error
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_credentials_and_unknown_vhosts_are_fatal() {
    let OwnNode {
        broker,
        scope,
        _turn,
    } = OwnNode::take("refused").await;
    let port = broker.amqp_port();

    let wrong_password = format!("amqp://guest:not-the-password@127.0.0.1:{port}/%2f");
    let hutch = builder(wrong_password, &scope, "stream").build().unwrap();
    assert!(!format!("{hutch:?}").contains("not-the-password"));
    let error = assert_fatal(&broker, &hutch).await;
    assert!(!format!("{error:?}").contains("not-the-password"));
    assert!(matches!(error, Error::Connect { .. }), "{error:?}");
    let message = error.to_string();
    assert!(
        message.contains("ACCESS_REFUSED") || message.contains("ACCESS-REFUSED"),
        "{message}"
    );
    assert!(!message.contains("not-the-password"), "{message}");
    let consume = hutch.status().connection("consume").cloned().unwrap();
    assert_eq!(consume.state, ConnectionState::Failed);
    assert_eq!(consume.connects, 0);
    let publish = hutch.publish("stream.x", &1).await.unwrap_err();
    assert!(
        !publish.to_string().contains("not-the-password"),
        "{publish}"
    );
    assert!(publish.to_string().contains("ACCESS_REFUSED"), "{publish}");
    assert_broker_holds(&broker, 0, 0).await;

    let unknown_vhost = format!("amqp://guest:guest@127.0.0.1:{port}/no-such-vhost");
    let hutch = builder(unknown_vhost, &scope, "stream").build().unwrap();
    let error = assert_fatal(&broker, &hutch).await;
    assert!(matches!(error, Error::Connect { .. }), "{error:?}");
    assert!(error.to_string().contains("no-such-vhost"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_refused_to_a_resource_is_fatal_and_names_it() {
    let OwnNode {
        broker,
        scope,
        _turn,
    } = OwnNode::take("forbidden").await;
    // A user who may use the vhost but configure (declare) nothing.
    rabbitmqctl(&broker, &["add_user", "limited", "limited-password"]).await;
    rabbitmqctl(
        &broker,
        &["set_permissions", "-p", "/", "limited", "^$", ".*", ".*"],
    )
    .await;
    let uri = format!(
        "amqp://limited:limited-password@127.0.0.1:{}/%2f",
        broker.amqp_port()
    );
    let hutch = builder(uri, &scope, "stream").build().unwrap();
    let error = assert_fatal(&broker, &hutch).await;
    assert!(matches!(error, Error::Declare { .. }), "{error:?}");
    let message = error.to_string();
    assert!(
        message.contains(&scope.exchange) && message.contains("ACCESS_REFUSED"),
        "{message}"
    );
    assert!(!message.contains("limited-password"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_declared_elsewhere_with_other_arguments_is_fatal_and_names_what_differs() {
    let OwnNode {
        broker,
        scope,
        _turn,
    } = OwnNode::isolated("inequivalent").await;
    let queue = scope.queue("stream_sink");
    let (connection, channel) = raw_channel_to(&broker).await;
    let mut arguments = lapin::types::FieldTable::default();
    arguments.insert(
        "x-queue-mode".into(),
        lapin::types::AMQPValue::LongString("lazy".into()),
    );
    channel
        .queue_declare(
            queue.as_str().into(),
            lapin::options::QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            arguments,
        )
        .await
        .unwrap();
    connection.close(200, "done".into()).await.unwrap();

    let hutch = builder(broker.amqp_uri(), &scope, "stream")
        .build()
        .unwrap();
    let error = assert_fatal(&broker, &hutch).await;
    assert!(matches!(error, Error::Declare { .. }), "{error:?}");
    let message = error.to_string();
    assert!(message.contains(&queue), "{message}");
    assert!(
        message.contains("PRECONDITION_FAILED") && message.contains("x-queue-mode"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_nodes_of_a_cluster_are_tried_in_turn() {
    let OwnNode {
        broker,
        scope,
        _turn,
    } = OwnNode::take("nodes").await;
    // Nothing listens on the first node's port.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_port = dead.local_addr().unwrap().port();
    drop(dead);
    let hutch = builder(String::new(), &scope, "stream")
        .uris([
            format!("amqp://guest:guest@127.0.0.1:{dead_port}/%2f"),
            broker.amqp_uri(),
        ])
        .build()
        .unwrap();
    let running = hutch.start().await.expect("the second node is used");
    let consume = hutch.status().connection("consume").cloned().unwrap();
    assert_eq!(
        consume.broker.as_deref(),
        Some(format!("amqp://guest:***@127.0.0.1:{}/%2f", broker.amqp_port()).as_str())
    );
    running.shutdown().await.expect("clean shutdown");
    assert_broker_holds(&broker, 0, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_closed_by_the_broker_restarts_the_consumer_and_the_stale_ack_is_not_sent() {
    let _turn = NodeTurn::alone().await;
    init_logging();
    let broker = own_broker().await;
    // The broker closes a channel with 406 when a delivery stays
    // unacknowledged longer than consumer_timeout, checked every channel tick.
    rabbitmqctl(
        &broker,
        &[
            "eval",
            "application:set_env(rabbit, consumer_timeout, 1000), application:set_env(rabbit, channel_tick_interval, 250).",
        ],
    )
    .await;
    let scope = Scope::new("timed-out");
    let hutch = builder(broker.amqp_uri(), &scope, "slow_once")
        .build()
        .unwrap();
    let mut events = hutch.events();
    let running = hutch.start().await.expect("start");
    let queue = scope.queue("slow_once");
    let first_channel = hutch.status().consumer(&queue).unwrap().channel;

    let slow = publish_one(&hutch, "slow.work", &scope.namespace, 7).await;
    TALLY
        .wait_for_all(&scope.namespace, &BTreeSet::from([slow]), PATIENCE)
        .await;
    wait_until(&hutch, &mut events, |status| {
        status.is_healthy()
            && status
                .consumer(&queue)
                .is_some_and(|sink| sink.restarts > 0)
    })
    .await;

    let sink = hutch.status().consumer(&queue).cloned().unwrap();
    assert_eq!(
        sink.restarts, 1,
        "restarted once, after the broker closed its channel: {sink:?}"
    );
    assert_eq!(
        sink.stale_acks, 1,
        "the ack for the closed channel was not sent: {sink:?}"
    );
    assert_ne!(
        sink.channel, first_channel,
        "the closed channel was replaced"
    );
    // The redelivery is acked on the new channel (the broker's count can
    // only be polled).
    {
        let (broker, queue) = (broker.clone(), queue.clone());
        tokio::task::spawn_blocking(move || {
            let deadline = Instant::now() + PATIENCE;
            while broker.queue(&queue).unwrap().unwrap().messages != 0 {
                assert!(Instant::now() < deadline, "the redelivery was never acked");
                std::thread::sleep(Duration::from_millis(100));
            }
        })
        .await
        .unwrap();
    }
    assert_broker_holds(&broker, 2, 2).await;
    running.shutdown().await.expect("clean shutdown");
    hutch.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_alarm_shows_as_a_blocked_connection_and_clears() {
    let OwnNode {
        broker,
        scope,
        _turn,
    } = OwnNode::take("alarm").await;
    let hutch = builder(broker.amqp_uri(), &scope, "stream")
        .confirm_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let mut events = hutch.events();
    // Drained only at the end, to check the stream carried both events.
    let mut recorded = hutch.events();
    let running = hutch.start().await.expect("start");
    let run = scope.namespace.clone();
    let before_alarm = publish_one(&hutch, "stream.alarm", &run, 0).await;

    rabbitmqctl(&broker, ALARM_ON).await;
    // The broker blocks a connection when it publishes during the alarm.
    let blocked = hutch.publish("stream.alarm", &Numbered::new(&run, 1)).await;
    assert!(matches!(blocked, Err(Error::Blocked { .. })), "{blocked:?}");
    wait_until(&hutch, &mut events, |status| {
        status
            .connection("publish")
            .is_some_and(|publish| publish.blocked)
    })
    .await;
    assert!(!hutch.status().is_healthy());
    // The broker does not read a blocked connection: closing it gives up
    // after a few seconds instead of hanging until the alarm clears.
    tokio::time::timeout(Duration::from_secs(10), hutch.close())
        .await
        .expect("closing a blocked connection is bounded")
        .unwrap();
    // A new publishing connection gets blocked as well.
    let during_alarm = Numbered::new(&run, 3);
    let blocked = hutch.publish("stream.alarm", &during_alarm).await;
    assert!(matches!(blocked, Err(Error::Blocked { .. })), "{blocked:?}");
    wait_until(&hutch, &mut events, |status| {
        status
            .connection("publish")
            .is_some_and(|publish| publish.blocked && publish.connects == 2)
    })
    .await;

    rabbitmqctl(&broker, ALARM_OFF).await;
    wait_until(&hutch, &mut events, |status| {
        status
            .connection("publish")
            .is_some_and(|publish| !publish.blocked)
    })
    .await;
    let after_alarm = publish_one(&hutch, "stream.alarm", &run, 2).await;
    // The message whose confirm timed out on the connection that stayed open
    // was taken in once unblocked; the one on the connection closed during
    // the alarm may be lost, which its publish reported.
    TALLY
        .wait_for_all(
            &run,
            &BTreeSet::from([before_alarm, during_alarm.publish_id, after_alarm]),
            PATIENCE,
        )
        .await;
    let mut saw = (false, false);
    // Everything was sent before this point; the timeout only ends the drain.
    while let Ok(Some(event)) =
        tokio::time::timeout(Duration::from_millis(50), recorded.recv()).await
    {
        match event {
            Event::ConnectionBlocked {
                connection: "publish",
                reason,
            } => {
                assert!(reason.contains("memory"), "{reason}");
                saw.0 = true;
            }
            Event::ConnectionUnblocked {
                connection: "publish",
            } => saw.1 = true,
            _ => {}
        }
    }
    assert_eq!(
        saw,
        (true, true),
        "blocked and unblocked events on the publish connection"
    );
    assert!(hutch.status().is_healthy());
    running.shutdown().await.expect("clean shutdown");
    hutch.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_refused_on_a_live_connection_is_fatal_not_a_wait() {
    let OwnNode {
        broker,
        scope,
        _turn,
    } = OwnNode::take("channel-max").await;
    // One channel per connection: the second consumer cannot have one.
    let uri = format!("{}?channel_max=1", broker.amqp_uri());
    let hutch = builder(uri, &scope, "pair").build().unwrap();
    let error = assert_fatal(&broker, &hutch).await;
    assert!(matches!(error, Error::Declare { .. }), "{error:?}");
    assert!(
        error
            .to_string()
            .contains("a channel for consumer integration::supervision::pair_"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_until_gives_up_waiting_for_an_unreachable_broker_on_its_signal() {
    let _turn = NodeTurn::alone().await;
    init_logging();
    let scope = Scope::new("unreachable");
    let nobody = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = nobody.local_addr().unwrap().port();
    drop(nobody);
    let hutch = builder(
        format!("amqp://guest:guest@127.0.0.1:{port}/%2f"),
        &scope,
        "stream",
    )
    .build()
    .unwrap();
    let (stop, run) = spawn_run_until(&hutch);
    // The consumer waits for a connection that keeps failing. Failed
    // attempts emit no event, so the status is polled, with a deadline.
    let deadline = Instant::now() + PATIENCE;
    while !hutch
        .status()
        .consumer("integration::supervision::stream_sink")
        .is_some_and(|sink| sink.state == hutch_rs::ConsumerState::WaitingForChannel)
    {
        assert!(
            Instant::now() < deadline,
            "never started waiting: {:?}",
            hutch.status()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), run)
        .await
        .expect("the signal ends the wait")
        .unwrap()
        .expect("a requested stop is not an error");
    assert_eq!(hutch.status().connection("consume").unwrap().connects, 0);
}
