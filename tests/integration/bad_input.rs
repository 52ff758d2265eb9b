//! Bad input gets a clear error and loses nothing: malformed bodies and
//! failing handlers are logged so an operator can find them, conflicting
//! consumers are refused. (Retries and dead-lettering in detail are in
//! `failure_handling.rs`; refused credentials and declarations in
//! `supervision.rs`.)

use hutch_rs::{BoxError, Error, Message, consumer};
use hutch_rs_tests::{
    JOURNAL, Scope, Seen, broker, init_logging, log_lines_with, queue_depth, raw_publish,
};
use lapin::BasicProperties;
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct Invoice {
    invoice_id: u64,
    amount_cents: i64,
}

#[consumer(routing_key = "invoices.created", group = "bad_body")]
async fn bad_body(msg: Message<Invoice>) -> Result<(), BoxError> {
    JOURNAL.record(Seen::of("bad_body", &msg));
    Ok(())
}

#[consumer(
    routing_key = "fails.#",
    group = "failing",
    max_attempts = 2,
    retry_min_delay = "100ms",
    retry_max_delay = "100ms"
)]
async fn always_fails(msg: Message<serde_json::Value>) -> Result<(), BoxError> {
    JOURNAL.record(Seen::of("always_fails", &msg));
    Err(std::io::Error::other("the payment provider is down").into())
}

#[consumer(routing_key = "dup.one", queue = "shared_queue", group = "duplicate")]
async fn first_claimant(_msg: Message<serde_json::Value>) -> Result<(), BoxError> {
    Ok(())
}

#[consumer(routing_key = "dup.two", queue = "shared_queue", group = "duplicate")]
async fn second_claimant(_msg: Message<serde_json::Value>) -> Result<(), BoxError> {
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_messages_are_logged_and_dead_lettered_once_without_calling_the_handler() {
    init_logging();
    let scope = Scope::new("bad-body");
    let hutch = scope.hutch("bad_body");
    let running = hutch.start().await.expect("start");
    let queue = scope.queue("bad_body");

    let bad = [
        (
            "bad-not-json",
            b"this is not json".to_vec(),
            BasicProperties::default(),
        ),
        (
            "bad-wrong-shape",
            br#"{"invoice_id":"seven"}"#.to_vec(),
            BasicProperties::default(),
        ),
        (
            "bad-content-type",
            br#"{"invoice_id":1,"amount_cents":5}"#.to_vec(),
            BasicProperties::default().with_content_type("application/xml".into()),
        ),
    ];
    for (id, body, properties) in bad {
        let properties = properties.with_message_id(id.into());
        raw_publish(&scope.exchange, "invoices.created", &body, properties).await;
    }
    // A good message after the bad ones: once it is handled, the bad ones
    // (ahead of it in the queue) have been dealt with.
    hutch
        .publish(
            "invoices.created",
            &Invoice {
                invoice_id: 9,
                amount_cents: 100,
            },
        )
        .await
        .unwrap();
    let seen = JOURNAL.wait_for("bad_body", 1).await;
    assert_eq!(
        seen.len(),
        1,
        "the handler only ever saw the good message: {seen:?}"
    );
    assert_eq!(seen[0].body["invoice_id"], 9);

    running.shutdown().await.expect("clean shutdown");
    // Dead-lettered, not requeued: had they been requeued they would be back
    // in the queue (or looping through the handler) now.
    assert_eq!(queue_depth(&queue), 0);
    assert_eq!(queue_depth(&format!("{queue}:dead")), 3);
    assert_eq!(JOURNAL.by("bad_body").len(), 1);

    for id in ["bad-not-json", "bad-wrong-shape", "bad-content-type"] {
        let lines = log_lines_with(id);
        assert_eq!(lines.len(), 1, "one log line for {id}: {lines:#?}");
        assert!(
            lines[0].contains(&queue),
            "the log names the queue: {}",
            lines[0]
        );
        assert!(lines[0].contains("ERROR"), "{}", lines[0]);
    }
    assert!(log_lines_with("bad-content-type")[0].contains("application/xml"));
    assert!(log_lines_with("bad-wrong-shape")[0].contains("Invoice"));
    hutch.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_error_is_logged_on_each_attempt_then_dead_lettered_never_looping() {
    init_logging();
    let scope = Scope::new("failing");
    let (dead_lettered, mut dead_letters) = tokio::sync::mpsc::unbounded_channel();
    let hutch = scope
        .builder("failing")
        .on_error(move |failure: hutch_rs::Failure| {
            let dead_lettered = dead_lettered.clone();
            async move {
                if matches!(failure.outcome(), hutch_rs::Outcome::DeadLettered { .. }) {
                    let _ = dead_lettered.send(());
                }
                Ok::<_, BoxError>(())
            }
        })
        .build()
        .unwrap();
    let running = hutch.start().await.expect("start");
    let queue = scope.queue("always_fails");

    hutch
        .publish("fails.now", &serde_json::json!({ "n": 1 }))
        .await
        .unwrap();
    // Two attempts, then the dead-letter queue.
    let seen = JOURNAL.wait_for("always_fails", 2).await;
    tokio::time::timeout(hutch_rs_tests::PATIENCE, dead_letters.recv())
        .await
        .expect("dead-lettered in time")
        .expect("the hook lives as long as the Hutch");
    running.shutdown().await.expect("clean shutdown");
    assert_eq!(queue_depth(&queue), 0);
    assert_eq!(queue_depth(&format!("{queue}:dead")), 1);
    let seen_after = JOURNAL.by("always_fails");
    assert_eq!(
        seen_after.iter().map(|s| s.attempt).collect::<Vec<_>>(),
        [1, 2],
        "handled max_attempts times: {seen_after:?}"
    );

    let id = seen[0].message_id.clone().unwrap();
    let lines = log_lines_with(&id);
    assert_eq!(lines.len(), 2, "one line per failed attempt: {lines:#?}");
    assert!(
        lines[0].contains("WARN") && lines[0].contains("retried"),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].contains("ERROR") && lines[1].contains("dead-lettered"),
        "{}",
        lines[1]
    );
    for line in &lines {
        assert!(line.contains("the payment provider is down"), "{line}");
        assert!(line.contains(&queue), "{line}");
    }
    hutch.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_consumers_on_one_queue_fail_startup_naming_both() {
    let scope = Scope::new("duplicate");
    let error = scope.hutch("duplicate").start().await.unwrap_err();
    let Error::DuplicateQueue {
        queue,
        first,
        second,
    } = &error
    else {
        panic!("expected DuplicateQueue, got {error:?}");
    };
    assert_eq!(queue, &scope.queue("shared_queue"));
    let mut names = [first.as_str(), second.as_str()];
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "integration::bad_input::first_claimant",
            "integration::bad_input::second_claimant",
        ]
    );
    assert!(
        error.to_string().contains("first_claimant")
            && error.to_string().contains("second_claimant")
    );
    let ours = broker()
        .queues()
        .unwrap()
        .into_iter()
        .filter(|q| q.name.starts_with(&scope.namespace))
        .count();
    assert_eq!(ours, 0, "nothing was declared");
}
