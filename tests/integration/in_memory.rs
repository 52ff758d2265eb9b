//! The in-memory test broker (`hutch_rs::testing::TestBroker`): the same
//! messages run through the same consumers on the real node and in
//! memory must be handled, retried, requeued and dead-lettered the same
//! way, with the same headers; and what only the in-memory broker offers
//! (records, requests, state, handlers publishing) works.

use std::{sync::Mutex, time::Duration};

use hutch_rs::{
    BoxError, Context, Decision, Error, Failure, Message, Outcome, PublishOptions, State, consumer,
    headers,
    testing::{Handled, TestBroker},
};
use hutch_rs_tests::{PATIENCE, Scope, init_logging, take_all};
use serde::{Deserialize, Serialize};

/// What a twin consumer is told to do.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Order {
    action: String,
}

/// One handler call, as the twin consumers see it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Call {
    consumer: &'static str,
    message_id: String,
    routing_key: String,
    attempt: u32,
    redelivered: bool,
}

/// Calls and failures of both runs; a run is told apart by the message
/// id's prefix.
static CALLS: Mutex<Vec<Call>> = Mutex::new(Vec::new());
static FAILURES: Mutex<Vec<(String, String, String)>> = Mutex::new(Vec::new());

fn record(consumer: &'static str, msg: &Message<Order>) {
    CALLS.lock().unwrap().push(Call {
        consumer,
        message_id: msg.message_id().unwrap_or_default().to_owned(),
        routing_key: msg.routing_key().to_owned(),
        attempt: msg.attempt(),
        redelivered: msg.redelivered(),
    });
}

#[consumer(
    routing_key = "twin.order.*",
    group = "twin",
    max_attempts = 3,
    retry_min_delay = "100ms",
    retry_max_delay = "200ms"
)]
async fn twin_orders(msg: Message<Order>) -> Result<(), BoxError> {
    record("twin_orders", &msg);
    match msg.action.as_str() {
        "fail_once" if msg.attempt() == 1 => Err("not yet".into()),
        "fail_always" => Err(format!("attempt {} failed", msg.attempt()).into()),
        "panic_once" if msg.attempt() == 1 => panic!("the first attempt panics"),
        "dead_letter" => Err(Decision::dead_letter("the order is void").into()),
        "requeue_once" if !msg.redelivered() => Err(Decision::requeue().into()),
        _ => Ok(()),
    }
}

#[consumer(routing_key = "twin.#", group = "twin")]
async fn twin_audit(msg: Message<Order>) -> Result<(), BoxError> {
    record("twin_audit", &msg);
    Ok(())
}

/// What each failure became, as an error hook sees it.
fn outcome_text(outcome: &Outcome) -> String {
    match outcome {
        // The delay is drawn at random within the consumer's bounds: only
        // which queue's delay queues it went through is compared.
        Outcome::Retried { attempt, queue, .. } => format!(
            "retried as attempt {attempt} via {}",
            &queue[..queue.find(":delay:").unwrap_or(queue.len())]
        ),
        Outcome::DeadLettered { queue, reason } => format!("dead-lettered to {queue}: {reason}"),
        Outcome::Requeued => "requeued".to_owned(),
        other => format!("{other:?}"),
    }
}

/// The messages of one run, each with an id `<run>-<label>`.
const ORDERS: &[(&str, &str, &str)] = &[
    ("ok", "twin.order.placed", "ok"),
    ("fail-once", "twin.order.placed", "fail_once"),
    ("fail-always", "twin.order.paid", "fail_always"),
    ("panic-once", "twin.order.placed", "panic_once"),
    ("dead-letter", "twin.order.void", "dead_letter"),
    ("requeue-once", "twin.order.placed", "requeue_once"),
    ("audit-only", "twin.invoice", "ok"),
];

/// One run's calls and failures, with the run's prefix taken off the ids.
fn of_run(run: &str) -> (Vec<Call>, Vec<(String, String, String)>) {
    let prefix = format!("{run}-");
    let calls = CALLS
        .lock()
        .unwrap()
        .iter()
        .filter_map(|call| {
            let label = call.message_id.strip_prefix(&prefix)?;
            Some(Call {
                message_id: label.to_owned(),
                ..call.clone()
            })
        })
        .collect();
    let failures = FAILURES
        .lock()
        .unwrap()
        .iter()
        .filter_map(|(id, error, outcome)| {
            let label = id.strip_prefix(&prefix)?;
            Some((label.to_owned(), error.clone(), outcome.clone()))
        })
        .collect();
    (calls, failures)
}

/// A dead letter's headers that say what happened, not when.
fn dead_summary(properties: &hutch_rs::amqp::BasicProperties, run: &str) -> Vec<String> {
    let id = properties
        .message_id()
        .as_ref()
        .map(|id| {
            id.as_str()
                .trim_start_matches(&format!("{run}-"))
                .to_owned()
        })
        .unwrap_or_default();
    let mut summary = vec![format!("id={id}")];
    for name in [
        headers::REASON,
        headers::ERROR,
        headers::ATTEMPTS,
        headers::CONSUMER,
        headers::QUEUE,
        headers::ORIGINAL_ROUTING_KEY,
        headers::ORIGINAL_EXCHANGE,
    ] {
        let value = properties
            .headers()
            .as_ref()
            .and_then(|headers| headers.inner().get(name).cloned());
        summary.push(format!("{name}={value:?}"));
    }
    summary
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_memory_and_rabbitmq_handle_the_same_messages_the_same_way() {
    init_logging();
    let scope = Scope::new("twin");
    let builder = || {
        scope
            .builder("twin")
            .on_error(|failure: Failure| async move {
                FAILURES.lock().unwrap().push((
                    failure.message_id().unwrap_or_default().to_owned(),
                    failure.error().to_string(),
                    outcome_text(failure.outcome()),
                ));
                Ok::<(), BoxError>(())
            })
    };
    let publish_all = async |hutch: &hutch_rs::Hutch, run: &str| {
        for (label, routing_key, action) in ORDERS {
            hutch
                .publish_with(
                    routing_key,
                    &Order {
                        action: (*action).to_owned(),
                    },
                    PublishOptions::new().message_id(format!("{run}-{label}")),
                )
                .await
                .expect("publish");
        }
        hutch
            .publish_bytes(
                "twin.order.placed",
                b"{ not json".to_vec(),
                "application/json",
                PublishOptions::new().message_id(format!("{run}-poison")),
            )
            .await
            .expect("publish the poison message");
    };

    // In memory.
    let memory = TestBroker::with_builder(builder()).expect("in-memory broker");
    publish_all(memory.hutch(), "memory").await;
    memory.settled().await;
    let (memory_calls, memory_failures) = of_run("memory");
    let memory_dead: Vec<Vec<String>> = memory
        .dead_letters("twin_orders")
        .iter()
        .map(|dead| dead_summary(&dead.properties, "memory"))
        .collect();

    // On the node.
    let hutch = builder().build().expect("settings");
    let running = hutch.start().await.expect("start");
    publish_all(&hutch, "real").await;
    let waited = tokio::time::timeout(PATIENCE, async {
        loop {
            let (calls, failures) = of_run("real");
            if calls.len() >= memory_calls.len() && failures.len() >= memory_failures.len() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let (real_calls, real_failures) = of_run("real");
    let real_dead: Vec<Vec<String>> = take_all(&scope.queue("twin_orders:dead"))
        .await
        .iter()
        .map(|dead| dead_summary(&dead.delivery.properties, "real"))
        .collect();
    running.shutdown().await.expect("shutdown");
    assert!(
        waited.is_ok(),
        "the node handled {} calls and {} failures within {PATIENCE:?}; in memory: {} and {}",
        real_calls.len(),
        real_failures.len(),
        memory_calls.len(),
        memory_failures.len()
    );

    // The same calls: order differs between consumers and retries on the
    // node (they run concurrently and wait for their delays), so compare
    // them sorted.
    let sorted = |mut calls: Vec<Call>| {
        calls.sort();
        calls
    };
    let sorted_failures = |mut failures: Vec<(String, String, String)>| {
        failures.sort();
        failures
    };
    let sorted_dead = |mut dead: Vec<Vec<String>>| {
        dead.sort();
        dead
    };
    assert_eq!(sorted(memory_calls.clone()), sorted(real_calls));
    assert_eq!(
        sorted_failures(memory_failures.clone()),
        sorted_failures(real_failures)
    );
    assert_eq!(sorted_dead(memory_dead.clone()), sorted_dead(real_dead));

    // And it is what the consumers are meant to do, not only the same.
    // twin_orders: 1 + 2 + 3 + 2 + 1 + 2 (the poison message never reaches
    // the handler); twin_audit: the seven that decode.
    assert_eq!(memory_calls.len(), 11 + 7);
    assert_eq!(memory_failures.len(), 8 + 1);
    assert_eq!(memory_dead.len(), 3, "{memory_dead:#?}");
    let received = memory.received("twin_orders");
    let attempts = |id: &str| -> Vec<(u32, bool)> {
        received
            .iter()
            .filter(|received| received.message_id() == Some(&format!("memory-{id}")))
            .map(|received| (received.attempt, received.is_acked()))
            .collect()
    };
    assert_eq!(attempts("fail-once"), [(1, false), (2, true)]);
    assert_eq!(
        attempts("fail-always"),
        [(1, false), (2, false), (3, false)]
    );
    assert_eq!(attempts("poison"), [(1, false)]);
    let requeued: Vec<bool> = received
        .iter()
        .filter(|received| received.message_id() == Some("memory-requeue-once"))
        .map(|received| received.redelivered)
        .collect();
    assert_eq!(requeued, [false, true]);
}

/// The in-memory tests below need no node: they are what a user's unit
/// tests look like.
#[derive(Debug, Clone, Default)]
struct Ledger(std::sync::Arc<Mutex<Vec<u64>>>);

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Payment {
    order_id: u64,
    cents: u64,
}

#[consumer(routing_key = "mem.payment.received", group = "memory")]
async fn book_payment(
    msg: Message<Payment>,
    State(ledger): State<Ledger>,
    ctx: Context,
) -> Result<(), BoxError> {
    ledger.0.lock().unwrap().push(msg.cents);
    // A follow-up message, through the same broker.
    ctx.hutch()
        .publish("mem.receipt.due", &msg.order_id)
        .await?;
    Ok(())
}

#[consumer(routing_key = "mem.receipt.*", group = "memory")]
async fn send_receipt(msg: Message<u64>) -> Result<(), BoxError> {
    // hutch_rs::publish inside a handler goes to the instance running it.
    if msg.routing_key() == "mem.receipt.due" {
        hutch_rs::publish("mem.receipt.sent", &*msg).await?;
    }
    Ok(())
}

#[consumer(routing_key = "mem.price.quote", group = "memory")]
async fn quote(msg: Message<u64>, ctx: Context) -> Result<(), BoxError> {
    ctx.reply(&(*msg * 100)).await?;
    Ok(())
}

#[consumer(routing_key = "mem.stubborn", group = "memory")]
async fn stubborn(_msg: Message<u64>) -> Result<(), BoxError> {
    Err(Decision::requeue().into())
}

#[consumer(
    routing_key = "mem.slow",
    group = "memory",
    timeout = "50ms",
    max_attempts = 1
)]
async fn slow(_msg: Message<u64>) -> Result<(), BoxError> {
    std::future::pending::<()>().await;
    Ok(())
}

fn memory_broker() -> (TestBroker, Ledger) {
    let ledger = Ledger::default();
    let builder = hutch_rs::Hutch::builder()
        .namespace("shop")
        .group("memory")
        .state(ledger.clone());
    (
        TestBroker::with_builder(builder).expect("in-memory broker"),
        ledger,
    )
}

#[tokio::test]
async fn handlers_get_their_state_and_their_publishes_are_routed_in_memory() {
    init_logging();
    let (broker, ledger) = memory_broker();
    let payment = Payment {
        order_id: 7,
        cents: 1250,
    };
    broker
        .publish("mem.payment.received", &payment)
        .await
        .expect("publish");

    assert_eq!(*ledger.0.lock().unwrap(), [1250]);
    let received = broker.received("book_payment");
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].json::<Payment>().unwrap(), payment);
    assert_eq!(received[0].queue, "shop:book_payment");
    // The follow-up reached send_receipt, whose own publish reached it
    // again (mem.receipt.*), and that was all.
    let receipts: Vec<String> = broker
        .received("send_receipt")
        .iter()
        .map(|received| received.routing_key.clone())
        .collect();
    assert_eq!(receipts, ["mem.receipt.due", "mem.receipt.sent"]);
    let published: Vec<(String, Vec<String>)> = broker
        .published()
        .iter()
        .map(|published| (published.routing_key.clone(), published.queues.clone()))
        .collect();
    assert_eq!(
        published,
        [
            (
                "mem.payment.received".to_owned(),
                vec!["shop:book_payment".to_owned()]
            ),
            (
                "mem.receipt.due".to_owned(),
                vec!["shop:send_receipt".to_owned()]
            ),
            (
                "mem.receipt.sent".to_owned(),
                vec!["shop:send_receipt".to_owned()]
            ),
        ]
    );
    // Properties as a broker delivers them: a message id and a timestamp.
    assert!(received[0].message_id().is_some());
    assert!(received[0].properties.timestamp().is_some());
}

#[tokio::test]
async fn a_request_is_answered_by_its_consumer_in_memory() {
    init_logging();
    let (broker, _) = memory_broker();
    let price: u64 = broker
        .request("mem.price.quote", &12_u64)
        .await
        .expect("reply");
    assert_eq!(price, 1200);
    // The request and its reply, to the reply-to name the request got.
    let published = broker.published();
    assert_eq!(published.len(), 2);
    let reply_to = published[0]
        .properties
        .reply_to()
        .clone()
        .expect("reply-to");
    assert_eq!(published[1].exchange, "");
    assert_eq!(published[1].routing_key, reply_to.as_str());

    match broker.request::<_, u64>("mem.nobody.home", &1_u64).await {
        Err(Error::Unroutable { routing_key, .. }) => assert_eq!(routing_key, "mem.nobody.home"),
        other => panic!("expected Unroutable, got {other:?}"),
    }
}

#[tokio::test]
async fn what_a_broker_would_refuse_or_never_finish_is_reported() {
    init_logging();
    let (broker, _) = memory_broker();
    // A mandatory message no binding matches.
    match broker
        .publish_with("mem.unbound", &1_u64, PublishOptions::new().mandatory())
        .await
    {
        Err(Error::Unroutable { routing_key, .. }) => assert_eq!(routing_key, "mem.unbound"),
        other => panic!("expected Unroutable, got {other:?}"),
    }
    // Not mandatory: dropped, as a broker drops it, and recorded.
    broker
        .publish("mem.unbound", &2_u64)
        .await
        .expect("publish");
    assert!(broker.published()[1].queues.is_empty());

    // A handler that always sends the message back is stopped after 100
    // requeues, and the message set aside.
    broker
        .publish("mem.stubborn", &3_u64)
        .await
        .expect("publish");
    let received = broker.received("stubborn");
    assert_eq!(received.len(), 101);
    assert!(received[1..].iter().all(|received| received.redelivered));
    assert!(received.iter().all(|received| matches!(
        &received.handled,
        Handled::Failed {
            outcome: Outcome::Requeued,
            ..
        }
    )));
    assert_eq!(broker.parked("stubborn").len(), 1);

    // The consumer's timeout stops a handler that never ends.
    broker.publish("mem.slow", &4_u64).await.expect("publish");
    let dead = broker.dead_letters("slow");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].reason(), Some("attempts-exhausted"));
    assert!(
        dead[0]
            .error()
            .unwrap()
            .contains("did not finish within 50ms"),
        "{:?}",
        dead[0].error()
    );

    // Its Hutch has no broker to start on.
    match broker.hutch().start().await {
        Err(Error::Unavailable { reason, .. }) => {
            assert!(reason.contains("TestBroker"), "{reason}")
        }
        other => panic!("expected Unavailable, got {:?}", other.map(drop)),
    }
    match broker.hutch().declare().await {
        Err(Error::Unavailable { .. }) => {}
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

#[tokio::test]
async fn a_missing_state_or_an_unknown_consumer_name_is_reported_with_what_exists() {
    init_logging();
    let without_state = hutch_rs::Hutch::builder().group("memory");
    match TestBroker::with_builder(without_state) {
        Err(Error::MissingState { missing }) => {
            assert!(
                missing
                    .iter()
                    .any(|(consumer, _)| consumer.ends_with("book_payment"))
            );
        }
        other => panic!("expected MissingState, got {:?}", other.map(drop)),
    }
    let (broker, _) = memory_broker();
    let unknown = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        broker.received("no_such_consumer")
    }))
    .expect_err("an unknown name panics");
    let message = unknown
        .downcast_ref::<String>()
        .cloned()
        .unwrap_or_default();
    assert!(
        message.contains("no consumer named \"no_such_consumer\""),
        "{message}"
    );
    assert!(message.contains("in_memory::book_payment"), "{message}");
}
