//! Publishing while the broker misbehaves: every connection force-closed
//! during a stream of concurrent publishes, and a memory alarm. Each test
//! has a node of its own, and they take turns.

use std::{
    collections::BTreeSet,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use hutch_rs::{
    BoxError, Error, Hutch, HutchBuilder, Message, Outgoing, PublishOptions, consumer,
    testing::Broker,
};
use hutch_rs_tests::{
    ALARM_OFF, ALARM_ON, NodeTurn, PATIENCE, Scope, TALLY, bound_queue_on, init_logging,
    own_broker, proxy::BlackHoleProxy, rabbitmqctl,
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct Tagged {
    run: String,
    n: u64,
}

#[consumer(routing_key = "stream.#", group = "sink")]
async fn sink(msg: Message<Tagged>) -> Result<(), BoxError> {
    TALLY.record(&msg.run, msg.message_id().unwrap_or_default());
    Ok(())
}

fn builder(broker: &hutch_rs::testing::Broker, scope: &Scope) -> HutchBuilder {
    Hutch::builder()
        .uri(broker.amqp_uri())
        .exchange(&scope.exchange)
        .namespace(&scope.namespace)
        .group("sink")
        .heartbeat(Duration::from_secs(2))
        .connection_timeout(Duration::from_secs(3))
        .reconnect_delay(Duration::from_millis(50), Duration::from_millis(500))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_publish_that_returned_ok_is_consumed_through_forced_closes() {
    let turn = NodeTurn::take().await;
    init_logging();
    let broker = turn.broker();
    let scope = Scope::new("forced");
    let hutch = builder(&broker, &scope)
        .confirm_timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let running = hutch.start().await.expect("start");
    let run = scope.namespace.clone();

    // 20 tasks publish until told to stop; each keeps the ids of its
    // publishes that returned Ok.
    let stop = Arc::new(AtomicBool::new(false));
    let confirmed = Arc::new(Mutex::new(BTreeSet::new()));
    let failed = Arc::new(AtomicU64::new(0));
    let count = Arc::new(tokio::sync::watch::Sender::new(0_u64));
    let tasks: Vec<_> = (0..20)
        .map(|task| {
            let (hutch, run, stop, confirmed, failed, count) = (
                hutch.clone(),
                run.clone(),
                stop.clone(),
                confirmed.clone(),
                failed.clone(),
                count.clone(),
            );
            tokio::spawn(async move {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let message = Tagged {
                        run: run.clone(),
                        n: task * 1_000_000 + n,
                    };
                    n += 1;
                    match hutch
                        .publish_with("stream.item", &message, PublishOptions::new())
                        .await
                    {
                        Ok(published) => {
                            confirmed
                                .lock()
                                .unwrap()
                                .insert(published.message_id().to_owned());
                            count.send_modify(|count| *count += 1);
                        }
                        Err(_) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();

    // Three forced closes, each once more messages were confirmed.
    let mut progress = count.subscribe();
    for round in 1..=3_u64 {
        let target = round * 1_000;
        tokio::time::timeout(PATIENCE, progress.wait_for(|count| *count >= target))
            .await
            .unwrap_or_else(|_| panic!("publishing stalled at {}", *count.borrow()))
            .unwrap();
        let closing = broker.clone();
        tokio::task::spawn_blocking(move || closing.close_all_connections("test outage"))
            .await
            .unwrap()
            .unwrap();
    }
    let after = *count.borrow() + 1_000;
    tokio::time::timeout(PATIENCE, progress.wait_for(|count| *count >= after))
        .await
        .expect("publishing recovers after the closes")
        .unwrap();
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.unwrap();
    }

    let expected = confirmed.lock().unwrap().clone();
    // The consumer drains what 50 publishers sent; a deadline, not a pace.
    TALLY
        .wait_for_all(&run, &expected, Duration::from_secs(180))
        .await;
    // A publish whose connection died before its confirm was published
    // again on the next connection, within its timeout, not failed.
    assert_eq!(failed.load(Ordering::Relaxed), 0, "no publish failed");
    eprintln!(
        "forced closes: {} publishes confirmed and consumed",
        expected.len()
    );
    running.shutdown().await.expect("clean shutdown");
    hutch.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_alarm_fails_publishes_as_blocked_while_consumers_go_on() {
    let turn = NodeTurn::take().await;
    init_logging();
    let broker = turn.broker();
    let scope = Scope::new("alarm");
    let hutch = builder(&broker, &scope)
        .confirm_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let run = scope.namespace.clone();
    // Messages waiting before the alarm, with no consumer yet.
    let declared = hutch.start().await.expect("declare the topology");
    declared.shutdown().await.unwrap();
    let mut waiting = BTreeSet::new();
    for n in 0..500 {
        let message = Tagged {
            run: run.clone(),
            n,
        };
        let published = hutch
            .publish_with("stream.before", &message, PublishOptions::new())
            .await
            .unwrap();
        waiting.insert(published.message_id().to_owned());
    }

    rabbitmqctl(&broker, ALARM_ON).await;
    let error = hutch
        .publish(
            "stream.during",
            &Tagged {
                run: run.clone(),
                n: 1_000,
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&error, Error::Blocked { reason, routing_key, .. } if reason.contains("memory") && routing_key == "stream.during"),
        "{error:?}"
    );
    // A second publish during the alarm is not even sent: it waits for the
    // alarm to clear and then gives up with the same error.
    let again = hutch
        .publish_with(
            "stream.during",
            &Tagged {
                run: run.clone(),
                n: 1_001,
            },
            PublishOptions::new().message_id("sent-while-blocked"),
        )
        .await
        .unwrap_err();
    assert!(matches!(again, Error::Blocked { .. }), "{again:?}");

    // Consuming is not blocked: everything that waited is consumed during
    // the alarm.
    let running = hutch.start().await.expect("start during the alarm");
    TALLY.wait_for_all(&run, &waiting, PATIENCE).await;
    let status = hutch.status();
    assert!(status.connection("publish").unwrap().blocked, "{status:?}");
    assert!(!status.connection("consume").unwrap().blocked, "{status:?}");

    rabbitmqctl(&broker, ALARM_OFF).await;
    let after = hutch
        .publish_with(
            "stream.after",
            &Tagged {
                run: run.clone(),
                n: 2_000,
            },
            PublishOptions::new(),
        )
        .await
        .expect("confirmed once the alarm cleared");
    TALLY
        .wait_for_all(
            &run,
            &BTreeSet::from([after.message_id().to_owned()]),
            PATIENCE,
        )
        .await;
    // Had it been sent, it would have reached the queue ahead of the last
    // one, on the same connection, once the broker read that again. It may
    // still be on its way to the handler when the last one is seen: only
    // once the queue holds nothing, delivered or not, has the handler seen
    // everything that reached it.
    await_drained(&broker, &scope.queue("sink")).await;
    let never_sent = BTreeSet::from(["sent-while-blocked".to_owned()]);
    assert_eq!(
        TALLY.missing(&run, &never_sent).len(),
        1,
        "it was never sent"
    );
    running.shutdown().await.expect("clean shutdown");
    hutch.close().await.unwrap();
}

/// Waits until `queue` on `broker` holds no message, ready or delivered and
/// unacknowledged. The broker's state can only be polled; the deadline turns
/// a hang into a failure.
async fn await_drained(broker: &Arc<Broker>, queue: &str) {
    let broker = broker.clone();
    let queue = queue.to_owned();
    tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + PATIENCE;
        loop {
            let info = broker.queue(&queue).expect("rabbitmqctl list_queues");
            if info.as_ref().is_some_and(|info| info.messages == 0) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "queue {queue} was never drained: {info:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    })
    .await
    .unwrap();
}

/// The numbers of the channels open on `broker`, over all connections.
async fn channel_numbers(broker: &Arc<Broker>) -> BTreeSet<u64> {
    let broker = broker.clone();
    tokio::task::spawn_blocking(move || {
        let listed = broker
            .rabbitmqctl(&["-q", "list_channels", "--formatter", "json", "number"])
            .expect("rabbitmqctl list_channels");
        let rows: Vec<serde_json::Value> =
            serde_json::from_str(&listed).unwrap_or_else(|error| panic!("{error}: {listed}"));
        rows.iter()
            .map(|row| row["number"].as_u64().expect("a channel number"))
            .collect()
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mandatory_publish_abandoned_before_its_answer_leaves_its_channel_behind() {
    let turn = NodeTurn::take().await;
    init_logging();
    let broker = turn.broker();
    let scope = Scope::new("abandoned");
    let queue = bound_queue_on(&broker, &scope, "held", "held.#", Default::default()).await;
    // Through a proxy that can hold the broker's answers back.
    let proxy = BlackHoleProxy::start(broker.amqp_port()).await;
    let hutch = Hutch::builder()
        .uri(proxy.amqp_uri())
        .exchange(&scope.exchange)
        .confirm_timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let mandatory = || PublishOptions::new().mandatory();
    hutch
        .publish_with("held.first", &1, mandatory())
        .await
        .expect("confirmed");
    // The publishing connection has one channel: the mandatory lane's.
    let before = channel_numbers(&broker).await;
    assert_eq!(before.len(), 1, "{before:?}");

    // Sent, but its answer cannot come: the caller gives up on it.
    proxy.black_hole();
    let abandoned = tokio::time::timeout(
        Duration::from_millis(300),
        hutch.publish_with("held.second", &2, mandatory()),
    )
    .await;
    assert!(abandoned.is_err(), "{abandoned:?}");
    proxy.heal();

    // The next mandatory publishes get their own answers: the unroutable
    // one its return, the routable one its ack.
    let error = hutch
        .publish_with("nowhere.third", &3, mandatory())
        .await
        .unwrap_err();
    assert!(
        matches!(&error, Error::Unroutable { routing_key, .. } if routing_key == "nowhere.third"),
        "{error:?}"
    );
    hutch
        .publish_with("held.fourth", &4, mandatory())
        .await
        .expect("a routable mandatory publish is confirmed");
    // They went out on a new channel; the abandoned one is closed. Closing
    // is asynchronous on the broker's side: poll.
    let deadline = std::time::Instant::now() + PATIENCE;
    let after = loop {
        let after = channel_numbers(&broker).await;
        if after.is_disjoint(&before) {
            break after;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the abandoned channel {before:?} is still open: {after:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(after.len(), 1, "{after:?}");
    // The abandoned message reached the queue once the path healed (its
    // outcome was unknown to the caller, not lost).
    assert_eq!(broker.queue(&queue).unwrap().unwrap().messages, 3);
    hutch.close().await.unwrap();
}

/// Lowers the node's `max_message_size` (128 MiB by default) to 1 KiB, for
/// channels opened from now on. RabbitMQ 3.10's channels read the
/// application environment; 4.0's read a persistent term set at boot.
const SMALL_MAX_MESSAGE_SIZE: &[&str] = &[
    "eval",
    "application:set_env(rabbit, max_message_size, 1024), \
     persistent_term:put(max_message_size, 1024).",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_message_fails_alone_and_the_rest_of_its_batch_is_confirmed() {
    let _turn = NodeTurn::alone().await;
    init_logging();
    let broker = own_broker().await;
    rabbitmqctl(&broker, SMALL_MAX_MESSAGE_SIZE).await;
    let scope = Scope::new("oversized");
    let hutch = builder(&broker, &scope)
        .confirm_timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let running = hutch.start().await.expect("start");
    let run = scope.namespace.clone();

    const OVERSIZED: usize = 150;
    let mut batch: Vec<Outgoing> = (0..300)
        .map(|n| {
            Outgoing::json(
                "stream.item",
                &Tagged {
                    run: run.clone(),
                    n,
                },
            )
            .unwrap()
        })
        .collect();
    batch.insert(
        OVERSIZED,
        Outgoing::bytes("stream.big", vec![b' '; 4_096], "application/json"),
    );
    let outcomes = hutch.publish_batch(batch).await;
    let mut confirmed = BTreeSet::new();
    for (index, outcome) in outcomes.into_iter().enumerate() {
        if index == OVERSIZED {
            let error = outcome.unwrap_err();
            assert!(
                matches!(&error, Error::MessageTooLarge { routing_key, size: 4_096, max: 1_024 } if routing_key == "stream.big"),
                "{error:?}"
            );
            assert!(error.to_string().contains("4096 bytes"), "{error}");
        } else {
            let published =
                outcome.unwrap_or_else(|error| panic!("message {index} failed: {error:?}"));
            confirmed.insert(published.message_id().to_owned());
        }
    }
    assert_eq!(confirmed.len(), 300);
    TALLY.wait_for_all(&run, &confirmed, PATIENCE).await;

    // The limit counts the body: one of exactly 1 KiB is accepted. Now that
    // the broker named its limit, a larger one fails without being sent.
    hutch
        .publish_bytes(
            "edge.limit",
            vec![b'a'; 1_024],
            "text/plain",
            PublishOptions::new(),
        )
        .await
        .expect("a message at the limit is accepted");
    let error = hutch
        .publish_bytes(
            "edge.over",
            vec![b'a'; 1_025],
            "text/plain",
            PublishOptions::new(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            &error,
            Error::MessageTooLarge {
                size: 1_025,
                max: 1_024,
                ..
            }
        ),
        "{error:?}"
    );
    running.shutdown().await.expect("clean shutdown");
    hutch.close().await.unwrap();
}
