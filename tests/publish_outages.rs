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

use hutch_rs::{BoxError, Error, Hutch, HutchBuilder, Message, PublishOptions, consumer};
use hutch_rs_tests::{
    ALARM_OFF, ALARM_ON, PATIENCE, Scope, TALLY, init_logging, own_broker, rabbitmqctl,
};
use serde::{Deserialize, Serialize};

static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

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
    let _turn = ONE_AT_A_TIME.lock().await;
    init_logging();
    let broker = own_broker().await;
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
    let _turn = ONE_AT_A_TIME.lock().await;
    init_logging();
    let broker = own_broker().await;
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
    // one, on the same connection, once the broker read that again.
    let never_sent = BTreeSet::from(["sent-while-blocked".to_owned()]);
    assert_eq!(
        TALLY.missing(&run, &never_sent).len(),
        1,
        "it was never sent"
    );
    running.shutdown().await.expect("clean shutdown");
    hutch.close().await.unwrap();
}
