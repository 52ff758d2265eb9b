//! The application's command line (`hutch_rs::cli`) against the real node:
//! every subcommand, and dead-letter replay under a connection kill.

use std::{
    collections::BTreeSet,
    sync::{
        Mutex,
        atomic::{AtomicBool, Ordering},
    },
};

use hutch_rs::{
    BoxError, Error, Hutch, HutchBuilder, Message, PublishOptions,
    cli::{CliError, run_with_args},
    consumer,
    testing::Broker,
};
use hutch_rs_tests::{PATIENCE, Scope, broker, init_logging, queue_depth};
use lapin::options::BasicGetOptions;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Invoice {
    invoice_id: u64,
}

/// Whether `bill` fails: set while the test wants dead letters.
static BILLING_BROKEN: AtomicBool = AtomicBool::new(true);
/// What `bill` and `archive` handled: consumer, invoice, routing key,
/// attempt.
static HANDLED: Mutex<Vec<(&str, u64, String, u32)>> = Mutex::new(Vec::new());

#[consumer(routing_key = "cli.invoice.*", group = "cli", max_attempts = 1)]
async fn bill(msg: Message<Invoice>) -> Result<(), BoxError> {
    if BILLING_BROKEN.load(Ordering::SeqCst) {
        return Err(format!("the ledger refuses invoice {}", msg.invoice_id).into());
    }
    HANDLED.lock().unwrap().push((
        "bill",
        msg.invoice_id,
        msg.routing_key().to_owned(),
        msg.attempt(),
    ));
    Ok(())
}

#[consumer(routing_key = "cli.invoice.#", group = "cli")]
async fn archive(msg: Message<Invoice>) -> Result<(), BoxError> {
    HANDLED.lock().unwrap().push((
        "archive",
        msg.invoice_id,
        msg.routing_key().to_owned(),
        msg.attempt(),
    ));
    Ok(())
}

/// Runs the command line with `args` and returns what it printed.
async fn cli(builder: HutchBuilder, args: &[&str]) -> Result<String, CliError> {
    let mut out = Vec::new();
    let mut all = vec!["shop"];
    all.extend_from_slice(args);
    run_with_args(all, builder, &mut out).await?;
    Ok(String::from_utf8(out).expect("utf-8 output"))
}

async fn ok(builder: HutchBuilder, args: &[&str]) -> String {
    cli(builder, args)
        .await
        .unwrap_or_else(|error| panic!("shop {}: {error}", args.join(" ")))
}

fn handled(consumer: &str) -> Vec<(u64, String, u32)> {
    HANDLED
        .lock()
        .unwrap()
        .iter()
        .filter(|(name, ..)| *name == consumer)
        .map(|(_, id, key, attempt)| (*id, key.clone(), *attempt))
        .collect()
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let waited = tokio::time::timeout(PATIENCE, async {
        while !done() {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "{what} within {PATIENCE:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_subcommand_works_on_the_node() {
    init_logging();
    let scope = Scope::new("cli");
    let builder = || scope.builder("cli");

    // consumers: one row each, with the queue and the settings.
    let consumers = ok(builder(), &["consumers"]).await;
    let header = consumers.lines().next().unwrap();
    assert!(
        header.starts_with("CONSUMER") && header.contains("MAX ATTEMPTS"),
        "{consumers}"
    );
    let bill_row = consumers
        .lines()
        .find(|line| line.contains("cli::bill"))
        .unwrap_or_else(|| panic!("{consumers}"));
    for cell in [
        scope.queue("bill").as_str(),
        "cli.invoice.*",
        "cli",
        "classic",
        "1",
    ] {
        assert!(bill_row.contains(cell), "{cell:?} in {bill_row:?}");
    }
    assert_eq!(consumers.lines().count(), 3, "{consumers}");

    // topology: the exchange, queues with arguments, marked bindings.
    let topology = ok(builder(), &["topology"]).await;
    assert!(
        topology.starts_with(&format!("exchange {} (topic, durable)", scope.exchange)),
        "{topology}"
    );
    assert!(
        topology.contains(&format!("dead-letter queue {}:dead", scope.queue("bill"))),
        "{topology}"
    );
    assert!(
        topology.contains(&format!(
            "binding    {} -> {} with \"cli.invoice.*\" [x-hutch-rs=\"1\"]",
            scope.exchange,
            scope.queue("bill")
        )),
        "{topology}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&ok(builder(), &["topology", "--json"]).await).expect("JSON");
    assert_eq!(json["consumers"].as_array().unwrap().len(), 2);

    // asyncapi: a 3.0 document naming both queues.
    let asyncapi: serde_json::Value =
        serde_json::from_str(&ok(builder(), &["asyncapi"]).await).expect("JSON");
    assert_eq!(asyncapi["asyncapi"], "3.0.0");
    let text = asyncapi.to_string();
    assert!(text.contains(&scope.queue("bill")) && text.contains(&scope.queue("archive")));

    // publish: confirmed, routed to both queues.
    let hutch = builder().build().unwrap();
    hutch.declare().await.expect("declare");
    let published = ok(
        builder(),
        &["publish", "cli.invoice.issued", r#"{"invoice_id": 1}"#],
    )
    .await;
    assert!(published.starts_with("published "), "{published}");
    assert_eq!(queue_depth(&scope.queue("bill")), 1);
    assert_eq!(queue_depth(&scope.queue("archive")), 1);
    match cli(builder(), &["publish", "cli.invoice.issued", "{ not json"]).await {
        Err(CliError::Refused(reason)) => assert!(reason.contains("not JSON"), "{reason}"),
        other => panic!("expected a refusal, got {other:?}"),
    }

    // Three more invoices; billing fails, so four dead letters.
    for id in 2..=4 {
        hutch
            .publish_with(
                &format!("cli.invoice.{}", if id == 3 { "paid" } else { "issued" }),
                &Invoice { invoice_id: id },
                PublishOptions::new().message_id(format!("invoice-{id}")),
            )
            .await
            .unwrap();
    }
    let running = hutch.start().await.expect("start");
    let dead_queue = format!("{}:dead", scope.queue("bill"));
    wait_until("four dead letters", || queue_depth(&dead_queue) == 4).await;
    wait_until("archive handles all four", || handled("archive").len() == 4).await;
    running.shutdown().await.expect("shutdown");

    // dead list: all four, oldest first, with reason and error; left there.
    let list = ok(builder(), &["dead", "list", "bill"]).await;
    assert!(
        list.starts_with("4 message(s) in the dead-letter queue"),
        "{list}"
    );
    let ids: Vec<&str> = list
        .lines()
        .skip(2)
        .map(|line| line.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(ids.len(), 4, "{list}");
    assert_eq!(&ids[1..], ["invoice-2", "invoice-3", "invoice-4"], "{list}");
    assert!(list.contains("attempts-exhausted"), "{list}");
    assert!(list.contains("the ledger refuses invoice 3"), "{list}");
    assert_eq!(queue_depth(&dead_queue), 4);
    let limited = ok(builder(), &["dead", "list", "cli::bill", "--limit", "2"]).await;
    assert!(limited.starts_with("4 message(s) in the dead-letter queue, the first 2 listed"));

    // dead show: headers and body in full.
    let shown = ok(builder(), &["dead", "show", "bill", "invoice-3"]).await;
    for expected in [
        "message id:     invoice-3",
        "routing key:    cli.invoice.paid",
        "reason:         attempts-exhausted",
        "x-hutch-error: the ledger refuses invoice 3",
        "\"invoice_id\": 3",
    ] {
        assert!(shown.contains(expected), "{expected:?} in\n{shown}");
    }
    assert!(matches!(
        cli(builder(), &["dead", "show", "bill", "invoice-99"]).await,
        Err(CliError::Refused(_))
    ));

    // dead replay --dry-run moves nothing; --limit 2 moves the oldest two.
    let dry = ok(builder(), &["dead", "replay", "bill", "--dry-run"]).await;
    assert!(
        dry.starts_with("dry run: would replay 4 message(s)"),
        "{dry}"
    );
    assert_eq!(queue_depth(&dead_queue), 4);
    let replayed = ok(builder(), &["dead", "replay", "bill", "--limit", "2"]).await;
    assert!(
        replayed.starts_with(&format!(
            "replayed 2 message(s) to {}; 2 left",
            scope.queue("bill")
        )),
        "{replayed}"
    );
    assert_eq!(queue_depth(&dead_queue), 2);
    assert_eq!(queue_depth(&scope.queue("bill")), 2);
    // Only bill's queue got them: archive handled them already.
    assert_eq!(queue_depth(&scope.queue("archive")), 0);

    // The bug is fixed: the replayed messages are handled as first
    // attempts on their original routing keys.
    BILLING_BROKEN.store(false, Ordering::SeqCst);
    let running = hutch.start().await.expect("start");
    wait_until("bill handles the two replayed", || {
        handled("bill").len() == 2
    })
    .await;
    running.shutdown().await.expect("shutdown");
    let mut billed = handled("bill");
    billed.sort();
    assert_eq!(
        billed,
        [
            (1, "cli.invoice.issued".to_owned(), 1),
            (2, "cli.invoice.issued".to_owned(), 1)
        ]
    );
    assert_eq!(handled("archive").len(), 4, "archive got no second copy");

    // dead purge: refused without --yes, then done.
    match cli(builder(), &["dead", "purge", "bill"]).await {
        Err(CliError::Refused(reason)) => assert!(reason.contains("--yes"), "{reason}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(queue_depth(&dead_queue), 2);
    let purged = ok(builder(), &["dead", "purge", "bill", "--yes"]).await;
    assert!(purged.starts_with("purged 2 message(s)"), "{purged}");
    assert_eq!(queue_depth(&dead_queue), 0);

    // An unknown consumer is named with the known ones; bad arguments are
    // clap's usage errors.
    match cli(builder(), &["dead", "list", "no_such_consumer"]).await {
        Err(CliError::Hutch(Error::UnknownConsumer { known, .. })) => {
            assert!(known.iter().any(|name| name.ends_with("cli::bill")));
        }
        other => panic!("expected UnknownConsumer, got {other:?}"),
    }
    match cli(builder(), &["dead", "frobnicate"]).await {
        Err(CliError::Usage(error)) => assert_eq!(error.exit_code(), 2),
        other => panic!("expected a usage error, got {other:?}"),
    }
    hutch.close().await.unwrap();
}

#[consumer(routing_key = "replay.kill.#", group = "replay-kill", max_attempts = 1)]
async fn reject_all(_msg: Message<u64>) -> Result<(), BoxError> {
    Err("rejected for the replay test".into())
}

/// Message ids of what `queue` holds, taken off it.
async fn ids_in(queue: &str, broker: &Broker) -> Vec<String> {
    let (connection, channel) = hutch_rs_tests::raw_channel_to(broker).await;
    let mut ids = Vec::new();
    while let Some(message) = channel
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .expect("get")
    {
        ids.push(
            message
                .delivery
                .properties
                .message_id()
                .as_ref()
                .map(|id| id.to_string())
                .unwrap_or_default(),
        );
    }
    connection.close(200, "done".into()).await.ok();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_cut_off_by_a_connection_kill_loses_and_duplicates_nothing() {
    init_logging();
    // A vhost of its own: its connections can be closed without touching
    // the other tests'.
    let vhost = std::sync::Arc::new(broker().isolated().expect("a vhost"));
    let builder = || {
        Hutch::builder()
            .uri(vhost.amqp_uri())
            .namespace("kill")
            .group("replay-kill")
    };
    const MESSAGES: usize = 3000;
    let hutch = builder().build().unwrap();
    hutch.declare().await.expect("declare");
    // Dead letters as the consumer leaves them, put there directly: many,
    // quickly.
    let dead_queue = "kill:reject_all:dead";
    let (connection, channel) = hutch_rs_tests::raw_channel_to(&vhost).await;
    channel
        .confirm_select(lapin::options::ConfirmSelectOptions::default())
        .await
        .unwrap();
    let mut confirms = Vec::new();
    for id in 0..MESSAGES {
        let mut headers = hutch_rs::amqp::FieldTable::default();
        headers.insert(
            hutch_rs::headers::ORIGINAL_ROUTING_KEY.into(),
            hutch_rs::amqp::AMQPValue::LongString("replay.kill.one".into()),
        );
        headers.insert(
            hutch_rs::headers::REASON.into(),
            hutch_rs::amqp::AMQPValue::LongString("rejected".into()),
        );
        confirms.push(
            channel
                .basic_publish(
                    "".into(),
                    dead_queue.into(),
                    lapin::options::BasicPublishOptions::default(),
                    id.to_string().as_bytes(),
                    hutch_rs::amqp::BasicProperties::default()
                        .with_message_id(format!("m-{id}").into())
                        .with_headers(headers),
                )
                .await
                .unwrap(),
        );
    }
    for confirm in confirms {
        assert!(confirm.await.unwrap().is_ack());
    }
    connection.close(200, "done".into()).await.unwrap();
    let depth = |queue: &str| vhost.queue(queue).unwrap().map_or(0, |info| info.messages);

    // Replay all, and close every connection of the vhost while it runs.
    let dead = hutch
        .dead_letters("reject_all")
        .await
        .expect("dead letters");
    let killer = {
        let vhost = std::sync::Arc::clone(&vhost);
        std::thread::spawn(move || {
            // Once the replay has begun (closing takes rabbitmqctl a while),
            // so that the kill lands mid-way.
            std::thread::sleep(std::time::Duration::from_millis(200));
            vhost
                .close_all_connections("the replay test cuts the connection")
                .expect("close the connections");
        })
    };
    let replay_started = std::time::Instant::now();
    let cut = dead.replay(None).await;
    killer.join().unwrap();
    let error = cut.expect_err("the replay was cut off");
    assert!(
        matches!(&error, Error::DeadLetters { reason, .. } if reason.contains("replay failed after")),
        "{error}"
    );

    // Take what moved; replay the rest on a new connection; take that.
    // Together: every message exactly once, none left dead.
    let moved = ids_in("kill:reject_all", &vhost).await;
    let dead_after_cut = depth(dead_queue);
    eprintln!(
        "replay cut after {} of {MESSAGES} moved in {:?}",
        moved.len(),
        replay_started.elapsed()
    );
    assert!(!moved.is_empty() && dead_after_cut > 0, "cut mid-way");
    assert_eq!(
        moved.len() as u64 + dead_after_cut,
        MESSAGES as u64,
        "{} moved and {dead_after_cut} still dead after the cut",
        moved.len()
    );
    let dead = hutch
        .dead_letters("reject_all")
        .await
        .expect("dead letters");
    let rest = dead.replay(None).await.expect("the second replay");
    dead.close().await.unwrap();
    assert_eq!(rest.replayed as u64, dead_after_cut);
    assert_eq!(rest.remaining, 0);
    let moved_later = ids_in("kill:reject_all", &vhost).await;
    let all: BTreeSet<&String> = moved.iter().chain(&moved_later).collect();
    assert_eq!(moved.len() + moved_later.len(), MESSAGES);
    assert_eq!(all.len(), MESSAGES, "no message twice");
    assert_eq!(depth(dead_queue), 0);
}
