//! A publish resolves only after the broker's publisher confirm: Ok means
//! the broker holds the message, a nack or a missing confirm is an Err.

use std::time::Duration;

use hutch_rs::{Error, Event};
use hutch_rs_tests::{
    ALARM_OFF, ALARM_ON, PATIENCE, Scope, bound_queue, broker, init_logging, queue_depth, take_all,
};
use lapin::types::{AMQPValue, FieldTable};
use tokio::sync::Mutex;

/// The alarm test blocks the whole node; the tests of this binary take turns.
static ONE_AT_A_TIME: Mutex<()> = Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ok_means_the_broker_holds_the_message() {
    let _turn = ONE_AT_A_TIME.lock().await;
    init_logging();
    let scope = Scope::new("confirmed");
    let queue = bound_queue(&scope, "sink", "confirmed.key", FieldTable::default()).await;
    let hutch = scope.hutch("none");
    for n in 1..=3 {
        hutch.publish("confirmed.key", &n).await.expect("confirmed");
        assert_eq!(
            queue_depth(&queue),
            n,
            "the message is in the queue when publish returns"
        );
    }
    hutch.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nack_from_the_broker_is_an_error() {
    let _turn = ONE_AT_A_TIME.lock().await;
    init_logging();
    let scope = Scope::new("nacked");
    // A queue that refuses every message: the broker nacks the publish.
    let mut full = FieldTable::default();
    full.insert("x-max-length".into(), AMQPValue::LongInt(0));
    full.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".into()),
    );
    let queue = bound_queue(&scope, "full", "nacked.key", full).await;

    let hutch = scope.hutch("none");
    let error = hutch.publish("nacked.key", &"refused").await.unwrap_err();
    assert!(
        matches!(&error, Error::PublishNacked { routing_key } if routing_key == "nacked.key"),
        "{error:?}"
    );
    assert_eq!(queue_depth(&queue), 0);
    // The channel survives a nack: the next publish to a willing queue works.
    let open = bound_queue(&scope, "open", "open.key", FieldTable::default()).await;
    hutch
        .publish("open.key", &"accepted")
        .await
        .expect("confirmed");
    assert_eq!(queue_depth(&open), 1);
    hutch.close().await.unwrap();
}

/// Sets a memory alarm on the node and clears it when dropped, even if the
/// test fails.
struct MemoryAlarm;

impl MemoryAlarm {
    fn raise() -> Self {
        broker().rabbitmqctl(ALARM_ON).expect("set the alarm");
        MemoryAlarm
    }
}

impl Drop for MemoryAlarm {
    fn drop(&mut self) {
        broker().rabbitmqctl(ALARM_OFF).expect("clear the alarm");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_blocked_by_a_broker_alarm_fails_with_a_blocked_error() {
    let _turn = ONE_AT_A_TIME.lock().await;
    init_logging();
    let scope = Scope::new("blocked");
    let queue = bound_queue(&scope, "sink", "blocked.key", FieldTable::default()).await;
    let hutch = scope
        .builder("none")
        .confirm_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    // Open the publishing connection before the alarm, as a running
    // application would have.
    hutch
        .publish("blocked.key", &0)
        .await
        .expect("confirmed before the alarm");

    let alarm = MemoryAlarm::raise();
    let error = tokio::time::timeout(Duration::from_secs(10), hutch.publish("blocked.key", &1))
        .await
        .expect("publish gives up at its confirm timeout")
        .unwrap_err();
    assert!(
        matches!(&error, Error::Blocked { routing_key, timeout, reason } if routing_key == "blocked.key" && *timeout == Duration::from_secs(2) && reason.contains("memory")),
        "{error:?}"
    );
    assert!(error.to_string().contains("blocked"), "{error}");
    drop(alarm);

    hutch
        .publish("blocked.key", &2)
        .await
        .expect("confirmed after the alarm cleared");
    // The timed-out message was not lost by hutch-rs: the broker took it in
    // once unblocked. Only the confirm came too late.
    assert_eq!(queue_depth(&queue), 3);
    hutch.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_during_an_alarm_fails_a_waiting_publish_as_unavailable_at_once() {
    let _turn = ONE_AT_A_TIME.lock().await;
    init_logging();
    let scope = Scope::new("closed");
    let queue = bound_queue(&scope, "sink", "closed.key", FieldTable::default()).await;
    let hutch = scope
        .builder("none")
        .confirm_timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    hutch
        .publish("closed.key", &0)
        .await
        .expect("confirmed before the alarm");

    let mut events = hutch.events();
    let alarm = MemoryAlarm::raise();
    // The broker blocks a connection (and says so) once it publishes.
    let first = tokio::spawn({
        let hutch = hutch.clone();
        async move { hutch.publish("closed.key", &1).await }
    });
    tokio::time::timeout(PATIENCE, async {
        loop {
            if let Event::ConnectionBlocked {
                connection: "publish",
                ..
            } = events.recv().await.expect("the hutch is alive")
            {
                break;
            }
        }
    })
    .await
    .expect("the publishing connection is told it is blocked");
    // Polled once, this publish waits for the alarm to clear.
    let mut waiting = Box::pin(hutch.publish("closed.key", &2));
    tokio::select! {
        biased;
        outcome = &mut waiting => panic!("the publish did not wait: {outcome:?}"),
        () = std::future::ready(()) => {}
    }

    hutch.close().await.unwrap();
    let error = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the publish ends with the connection, not at its confirm timeout")
        .unwrap_err();
    assert!(
        matches!(&error, Error::Unavailable { connection: "publish", reason } if reason.contains("closed")),
        "{error:?}"
    );
    // The one sent before the block has no confirm either; it ends too.
    let first = tokio::time::timeout(PATIENCE, first)
        .await
        .expect("the sent publish ends with the connection")
        .unwrap();
    assert!(
        matches!(&first, Err(Error::Unavailable { .. })),
        "{first:?}"
    );
    drop(alarm);
    let bodies: Vec<Vec<u8>> = take_all(&queue)
        .await
        .into_iter()
        .map(|message| message.data.clone())
        .collect();
    assert!(
        !bodies.contains(&b"2".to_vec()),
        "the waiting publish was never sent: {bodies:?}"
    );
}
