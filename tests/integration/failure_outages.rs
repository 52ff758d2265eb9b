//! Failure handling while the broker misbehaves: a failed message is not
//! acknowledged until its copy is confirmed, through a broker alarm that
//! blocks publishing and through connections force-closed mid-stream. Each
//! test has a node of its own (an alarm or a forced close would hit every
//! test on a shared one), and they take turns.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::{Duration, Instant},
};

use hutch_rs::{
    BoxError, Decision, Failure, Hutch, HutchBuilder, Message, Outcome, consumer, testing::Broker,
};
use hutch_rs_tests::{
    ALARM_OFF, ALARM_ON, JOURNAL, NodeTurn, PATIENCE, Scope, Seen, init_logging, rabbitmqctl,
};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

#[derive(Debug, Serialize, Deserialize)]
struct Job {
    id: u64,
}

#[consumer(routing_key = "blocked.#", group = "blocked", max_attempts = 1)]
async fn fails_while_blocked(msg: Message<Job>) -> Result<(), BoxError> {
    JOURNAL.record(Seen::of("fails_while_blocked", &msg));
    Err("this job always fails".into())
}

#[consumer(
    routing_key = "outage.#",
    group = "outage",
    max_attempts = 2,
    retry_min_delay = "50ms",
    retry_max_delay = "50ms"
)]
async fn fails_through_outages(msg: Message<Job>) -> Result<(), BoxError> {
    JOURNAL.record(Seen::of("fails_through_outages", &msg));
    Err("this job always fails".into())
}

#[consumer(routing_key = "patient.#", group = "patient")]
async fn patient(msg: Message<Job>) -> Result<(), BoxError> {
    JOURNAL.record(Seen::of("patient", &msg));
    if msg.attempt() == 1 {
        return Err(Decision::retry_after(Duration::from_secs(4)).into());
    }
    Ok(())
}

/// The ready messages in `queue`, from a passive declare: quicker than
/// `rabbitmqctl`, for a queue nothing consumes.
async fn ready_messages(broker: &Broker, queue: &str) -> u32 {
    let connection = lapin::Connection::connect(&broker.amqp_uri(), Default::default())
        .await
        .expect("raw connection");
    let channel = connection.create_channel().await.expect("raw channel");
    let declared = channel
        .queue_declare(
            queue.into(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await
        .unwrap_or_else(|error| panic!("queue {queue} exists: {error}"));
    connection.close(200, "done".into()).await.unwrap();
    declared.message_count()
}

/// The depth of `queue` on `broker` (ready + unacknowledged).
async fn depth(broker: &Arc<Broker>, queue: &str) -> u64 {
    let broker = broker.clone();
    let queue = queue.to_owned();
    tokio::task::spawn_blocking(move || {
        broker
            .queue(&queue)
            .unwrap()
            .unwrap_or_else(|| panic!("queue {queue} exists"))
            .messages
    })
    .await
    .unwrap()
}

/// Settings for these tests, with a hook reporting every failure.
fn builder(
    broker: &Broker,
    scope: &Scope,
    group: &str,
) -> (HutchBuilder, mpsc::UnboundedReceiver<Failure>) {
    let (sender, failures) = mpsc::unbounded_channel();
    let builder = Hutch::builder()
        .uri(broker.amqp_uri())
        .exchange(&scope.exchange)
        .namespace(&scope.namespace)
        .group(group)
        .heartbeat(Duration::from_secs(2))
        .connection_timeout(Duration::from_secs(3))
        .reconnect_delay(Duration::from_millis(50), Duration::from_millis(500))
        .confirm_timeout(Duration::from_secs(1))
        .on_error(move |failure: Failure| {
            let sender = sender.clone();
            async move {
                let _ = sender.send(failure);
                Ok::<_, BoxError>(())
            }
        });
    (builder, failures)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_message_stays_unacknowledged_while_a_broker_alarm_blocks_its_copy() {
    let turn = NodeTurn::take().await;
    init_logging();
    let broker = turn.broker();
    let scope = Scope::new("blocked");
    let queue = scope.queue("fails_while_blocked");
    let (builder, mut failures) = builder(&broker, &scope, "blocked");
    let hutch = builder.build().unwrap();
    // The message is in its queue before the alarm: publishing is what an
    // alarm blocks.
    let publisher = Hutch::builder()
        .uri(broker.amqp_uri())
        .exchange(&scope.exchange)
        .build()
        .unwrap();
    let declared = hutch.start().await.expect("declare the topology");
    declared.shutdown().await.unwrap();
    publisher
        .publish("blocked.job", &Job { id: 1 })
        .await
        .unwrap();
    publisher.close().await.unwrap();

    rabbitmqctl(&broker, ALARM_ON).await;
    let running = hutch.start().await.expect("consuming is not blocked");
    JOURNAL.wait_for("fails_while_blocked", 1).await;
    // The copy cannot be confirmed while the alarm lasts; the original must
    // stay where it is, unacknowledged, and the consumer must not give up.
    // Several confirm timeouts (1 s each) pass while this is checked.
    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        assert_eq!(
            depth(&broker, &queue).await,
            1,
            "the original is still held"
        );
        assert_eq!(depth(&broker, &format!("{queue}:dead")).await, 0);
        assert!(failures.try_recv().is_err(), "no outcome while blocked");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let status = hutch.status();
    assert!(status.connection("publish").unwrap().blocked, "{status:?}");
    assert!(!status.connection("consume").unwrap().blocked, "{status:?}");
    assert_eq!(status.consumer(&queue).unwrap().restarts, 0, "{status:?}");

    rabbitmqctl(&broker, ALARM_OFF).await;
    let failure = tokio::time::timeout(PATIENCE, failures.recv())
        .await
        .expect("dead-lettered once the alarm clears")
        .unwrap();
    assert!(matches!(failure.outcome(), Outcome::DeadLettered { .. }));
    running.shutdown().await.expect("clean shutdown");
    assert_eq!(depth(&broker, &queue).await, 0);
    // Publishes whose confirms timed out during the alarm were read by the
    // broker once it cleared: at least one copy, perhaps more, none lost.
    assert!(depth(&broker, &format!("{queue}:dead")).await >= 1);
    assert_eq!(JOURNAL.by("fails_while_blocked").len(), 1, "handled once");
    hutch.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_messages_reach_the_dead_letter_queue_through_forced_closes() {
    let turn = NodeTurn::take().await;
    init_logging();
    const COUNT: u64 = 300;
    let broker = turn.broker();
    let scope = Scope::new("outage");
    let queue = scope.queue("fails_through_outages");
    let (builder, mut failures) = builder(&broker, &scope, "outage");
    let hutch = builder
        .restart_intensity(100, Duration::from_secs(60))
        .build()
        .unwrap();
    let declared = hutch.start().await.expect("declare the topology");
    declared.shutdown().await.unwrap();
    for id in 0..COUNT {
        hutch.publish("outage.job", &Job { id }).await.unwrap();
    }

    let running = hutch.start().await.expect("start");
    // Close every connection three times while the messages go through
    // their retries and into the dead-letter queue.
    let mut dead: BTreeSet<u64> = BTreeSet::new();
    let mut closes = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    while dead.len() < COUNT as usize {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let failure = tokio::time::timeout(remaining, failures.recv())
            .await
            .unwrap_or_else(|_| panic!("{} of {COUNT} dead-lettered", dead.len()))
            .unwrap();
        if let Outcome::DeadLettered { .. } = failure.outcome() {
            let job: Job = serde_json::from_slice(failure.body()).unwrap();
            dead.insert(job.id);
        }
        if closes < 3 && dead.len() >= 60 * (closes + 1) {
            closes += 1;
            let broker = broker.clone();
            tokio::task::spawn_blocking(move || broker.close_all_connections("test outage"))
                .await
                .unwrap()
                .unwrap();
        }
    }
    assert_eq!(closes, 3);
    running.shutdown().await.expect("clean shutdown");

    assert_eq!(depth(&broker, &queue).await, 0, "nothing left behind");
    let mut in_dead: BTreeMap<u64, usize> = BTreeMap::new();
    let dead_queue = format!("{queue}:dead");
    let copies = depth(&broker, &dead_queue).await;
    assert!(copies >= COUNT, "{copies} copies for {COUNT} messages");
    // Every message is there (at least once: a copy confirmed just before a
    // close can be made again when its original comes back).
    let raw = lapin::Connection::connect(&broker.amqp_uri(), Default::default())
        .await
        .unwrap();
    let channel = raw.create_channel().await.unwrap();
    while let Some(message) = channel
        .basic_get(
            dead_queue.as_str().into(),
            lapin::options::BasicGetOptions { no_ack: true },
        )
        .await
        .unwrap()
    {
        let job: Job = serde_json::from_slice(&message.data).unwrap();
        *in_dead.entry(job.id).or_default() += 1;
    }
    raw.close(200, "done".into()).await.unwrap();
    assert_eq!(
        in_dead.len(),
        COUNT as usize,
        "every message is dead-lettered"
    );
    for (name, info) in broker
        .queues()
        .unwrap()
        .into_iter()
        .map(|info| (info.name.clone(), info))
    {
        if name.starts_with(&format!("{queue}:delay:")) {
            assert_eq!(info.messages, 0, "{name} is empty");
        }
    }
    hutch.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_waiting_in_a_delay_queue_survives_all_connections_being_closed() {
    let turn = NodeTurn::take().await;
    init_logging();
    let broker = turn.broker();
    let scope = Scope::new("patient");
    let queue = scope.queue("patient");
    let (builder, mut failures) = builder(&broker, &scope, "patient");
    let hutch = builder.build().unwrap();
    let running = hutch.start().await.expect("start");

    hutch.publish("patient.job", &Job { id: 1 }).await.unwrap();
    let failure = tokio::time::timeout(PATIENCE, failures.recv())
        .await
        .expect("the first attempt fails")
        .unwrap();
    let Outcome::Retried {
        queue: delay_queue,
        delay,
        ..
    } = failure.outcome().clone()
    else {
        panic!("expected a retry: {failure:?}");
    };
    assert_eq!(delay, Duration::from_millis(3_900), "4 s on the delay grid");
    // The copy is confirmed before the hook runs; it waits on the broker
    // while every connection is closed under it.
    assert_eq!(ready_messages(&broker, &delay_queue).await, 1);
    let closing = broker.clone();
    tokio::task::spawn_blocking(move || {
        closing.close_all_connections("test: the copy must wait on the broker")
    })
    .await
    .unwrap()
    .unwrap();

    let seen = JOURNAL.wait_for("patient", 2).await;
    assert_eq!(seen[1].attempt, 2);
    assert!(seen[1].at.duration_since(seen[0].at) >= Duration::from_millis(3_900));
    running.shutdown().await.expect("clean shutdown");
    assert_eq!(depth(&broker, &queue).await, 0);
    assert_eq!(depth(&broker, &delay_queue).await, 0);
    hutch.close().await.unwrap();
}
