//! What `#[consumer]` registers, seen at run time through `hutch_rs::consumers()`,
//! and the handler it generates, driven with a delivery built in memory.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use hutch_rs::{
    __private::{Delivered, HandlerOutcome, Incoming},
    Message,
    amqp::BasicProperties,
    consumer,
};

#[derive(Debug, serde::Deserialize)]
struct OrderPlaced {
    order_id: u64,
}

static LAST_RECEIPT: AtomicU64 = AtomicU64::new(0);

#[consumer(routing_key = "orders.placed")]
async fn send_receipt(msg: Message<OrderPlaced>) -> Result<(), hutch_rs::BoxError> {
    if msg.order_id == 0 {
        return Err("order 0 does not exist".into());
    }
    assert_eq!(msg.routing_key(), "orders.placed");
    LAST_RECEIPT.store(msg.order_id, Ordering::SeqCst);
    Ok(())
}

mod billing {
    use hutch_rs::{Message, consumer};

    #[consumer(routing_key = ["billing.#", "refunds.*"], queue = "billing_audit", group = "billing")]
    pub(crate) async fn audit(_msg: Message<serde_json::Value>) -> Result<(), hutch_rs::BoxError> {
        Ok(())
    }
}

mod payments {
    use hutch_rs::{Message, consumer};

    #[consumer(
        routing_key = "payments.charge",
        max_attempts = 5,
        retry_min_delay = "500ms",
        retry_max_delay = "5m",
        timeout = "1m 30s"
    )]
    pub(crate) async fn charge(_msg: Message<u64>) -> Result<(), hutch_rs::BoxError> {
        Ok(())
    }
}

mod images {
    use hutch_rs::{Message, consumer};

    #[consumer(routing_key = "images.resize", prefetch = 64, concurrency = 8)]
    pub(crate) async fn resize(_msg: Message<String>) -> Result<(), hutch_rs::BoxError> {
        Ok(())
    }
}

fn registration(qualified_name: &str) -> &'static hutch_rs::ConsumerRegistration {
    hutch_rs::consumers()
        .into_iter()
        .find(|registration| registration.qualified_name() == qualified_name)
        .unwrap_or_else(|| panic!("{qualified_name} is not registered"))
}

#[test]
fn lists_every_consumer_of_the_binary_in_a_stable_order() {
    let names: Vec<String> = hutch_rs::consumers()
        .iter()
        .map(|registration| registration.qualified_name())
        .collect();
    assert_eq!(
        names,
        // By module path, then function name.
        [
            "registration::declared_in_a_test",
            "registration::declared_in_an_async_test",
            "registration::send_receipt",
            "registration::billing::audit",
            "registration::images::resize",
            "registration::payments::charge",
        ]
    );
}

#[test]
fn registers_function_name_routing_keys_queue_and_group() {
    let receipt = registration("registration::send_receipt");
    assert_eq!(receipt.function(), "send_receipt");
    assert_eq!(receipt.module_path(), "registration");
    assert_eq!(receipt.routing_keys(), ["orders.placed"]);
    assert_eq!(receipt.queue_argument(), None);
    assert_eq!(receipt.base_queue_name(), "send_receipt");
    assert_eq!(receipt.group(), None);

    let audit = registration("registration::billing::audit");
    assert_eq!(audit.function(), "audit");
    assert_eq!(audit.module_path(), "registration::billing");
    assert_eq!(audit.routing_keys(), ["billing.#", "refunds.*"]);
    assert_eq!(audit.queue_argument(), Some("billing_audit"));
    assert_eq!(audit.base_queue_name(), "billing_audit");
    assert_eq!(audit.group(), Some("billing"));
}

#[test]
fn registers_failure_handling_arguments() {
    let charge = registration("registration::payments::charge");
    assert_eq!(charge.max_attempts(), Some(5));
    assert_eq!(charge.retry_min_delay(), Some(Duration::from_millis(500)));
    assert_eq!(charge.retry_max_delay(), Some(Duration::from_secs(5 * 60)));
    assert_eq!(charge.timeout(), Some(Duration::from_secs(90)));

    // Without them, the configured defaults apply at run time.
    let receipt = registration("registration::send_receipt");
    assert_eq!(receipt.max_attempts(), None);
    assert_eq!(receipt.retry_min_delay(), None);
    assert_eq!(receipt.retry_max_delay(), None);
    assert_eq!(receipt.timeout(), None);
}

#[test]
fn registers_prefetch_and_concurrency() {
    let resize = registration("registration::images::resize");
    assert_eq!(resize.prefetch(), Some(64));
    assert_eq!(resize.concurrency(), Some(8));
    let debug = format!("{resize:?}");
    assert!(debug.contains("prefetch: Some(64)"), "{debug}");
    assert!(debug.contains("concurrency: Some(8)"), "{debug}");

    // Without them, the configured defaults apply at run time.
    let receipt = registration("registration::send_receipt");
    assert_eq!(receipt.prefetch(), None);
    assert_eq!(receipt.concurrency(), None);
}

#[test]
fn registers_consumers_declared_inside_a_test() {
    #[consumer(routing_key = "tests.sync", group = "tests")]
    async fn declared_in_a_test(_msg: Message<u64>) -> Result<(), hutch_rs::BoxError> {
        Ok(())
    }

    let registration = registration("registration::declared_in_a_test");
    assert_eq!(registration.routing_keys(), ["tests.sync"]);
    assert_eq!(registration.group(), Some("tests"));
}

#[tokio::test]
async fn registers_consumers_declared_inside_an_async_test() {
    #[consumer(routing_key = "tests.async")]
    async fn declared_in_an_async_test(msg: Message<u64>) -> Result<(), hutch_rs::BoxError> {
        assert_eq!(*msg, 5);
        Ok(())
    }

    let registration = registration("registration::declared_in_an_async_test");
    assert_eq!(registration.routing_keys(), ["tests.async"]);
    // Still an ordinary function.
    declared_in_an_async_test(Message::new(5)).await.unwrap();
}

fn incoming(body: &str) -> Incoming {
    Incoming::new(
        body.as_bytes().to_vec(),
        "orders.placed",
        BasicProperties::default().with_content_type("application/json".into()),
    )
}

/// Calls the entry point `#[consumer]` generated for `send_receipt`, as the
/// runtime does for each delivery.
async fn deliver(body: &str) -> HandlerOutcome {
    let handler = registration("registration::send_receipt").handler();
    let hutch = hutch_rs::Hutch::builder().build().unwrap();
    handler(Delivered::detached(incoming(body), &hutch)).await
}

#[tokio::test]
async fn handler_decodes_the_body_and_calls_the_function() {
    let outcome = deliver(r#"{"order_id":42}"#).await;
    assert!(matches!(outcome, HandlerOutcome::Succeeded), "{outcome:?}");
    assert_eq!(LAST_RECEIPT.load(Ordering::SeqCst), 42);
}

#[tokio::test]
async fn handler_reports_errors_and_undecodable_bodies() {
    let outcome = deliver(r#"{"order_id":0}"#).await;
    match outcome {
        HandlerOutcome::Failed(error) => assert_eq!(error.to_string(), "order 0 does not exist"),
        other => panic!("expected Failed, got {other:?}"),
    }

    let outcome = deliver(r#"{"id":1}"#).await;
    assert!(
        matches!(outcome, HandlerOutcome::Undecodable(_)),
        "{outcome:?}"
    );
}
