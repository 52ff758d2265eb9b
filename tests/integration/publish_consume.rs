//! Publish → consume through a real broker: routing keys, wildcards, queue
//! names, namespaces, bindings, groups, concurrent publishers.

use std::collections::BTreeSet;

use hutch_rs::{BoxError, Message, consumer};
use hutch_rs_tests::{JOURNAL, Scope, Seen, broker, init_logging, queue_depth};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct OrderPlaced {
    order_id: u64,
}

#[consumer(routing_key = "orders.placed", group = "one_key")]
async fn send_receipt(msg: Message<OrderPlaced>) -> Result<(), BoxError> {
    JOURNAL.record(Seen::of("send_receipt", &msg));
    Ok(())
}

#[consumer(routing_key = ["billing.#", "refunds.*"], queue = "billing_audit", group = "wildcards")]
async fn audit(msg: Message<serde_json::Value>) -> Result<(), BoxError> {
    JOURNAL.record(Seen::of("audit", &msg));
    Ok(())
}

#[consumer(routing_key = "groups.a", group = "group_a")]
async fn in_group_a(msg: Message<serde_json::Value>) -> Result<(), BoxError> {
    JOURNAL.record(Seen::of("in_group_a", &msg));
    Ok(())
}

#[consumer(routing_key = "groups.#", group = "group_b")]
async fn in_group_b(msg: Message<serde_json::Value>) -> Result<(), BoxError> {
    JOURNAL.record(Seen::of("in_group_b", &msg));
    Ok(())
}

#[consumer(routing_key = "load.#", group = "concurrent")]
async fn load_sink(msg: Message<serde_json::Value>) -> Result<(), BoxError> {
    JOURNAL.record(Seen::of("load_sink", &msg));
    Ok(())
}

fn binding_keys(exchange: &str, queue: &str) -> BTreeSet<String> {
    broker()
        .bindings()
        .expect("rabbitmqctl list_bindings")
        .into_iter()
        .filter(|binding| binding.source == exchange && binding.destination == queue)
        .map(|binding| binding.routing_key)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_routing_key_delivers_typed_json_and_declares_the_convention() {
    init_logging();
    let scope = Scope::new("one-key");
    let hutch = scope.hutch("one_key");
    let running = hutch.start().await.expect("start");

    for order_id in 1..=3 {
        hutch
            .publish("orders.placed", &OrderPlaced { order_id })
            .await
            .expect("publish");
    }
    let seen = JOURNAL.wait_for("send_receipt", 3).await;

    let bodies: Vec<_> = seen
        .iter()
        .map(|s| s.body["order_id"].as_u64().unwrap())
        .collect();
    assert_eq!(bodies, vec![1, 2, 3]);
    for message in &seen {
        assert_eq!(message.routing_key, "orders.placed");
        assert_eq!(message.content_type.as_deref(), Some("application/json"));
        assert_eq!(
            message.delivery_mode,
            Some(2),
            "published messages are persistent"
        );
        assert!(message.has_timestamp);
        assert!(!message.redelivered);
        let id = message.message_id.as_deref().expect("a message id");
        uuid::Uuid::parse_str(id).expect("the message id is a UUID");
    }
    let ids: BTreeSet<_> = seen.iter().map(|s| s.message_id.clone()).collect();
    assert_eq!(ids.len(), 3, "each publish has a fresh message id");

    // What the broker holds: the convention, declared as promised.
    let queue_name = scope.queue("send_receipt");
    let queue = broker()
        .queue(&queue_name)
        .unwrap()
        .expect("queue declared");
    assert!(
        queue.durable && !queue.auto_delete && !queue.exclusive,
        "{queue:?}"
    );
    assert_eq!(queue.consumers, 1);
    let exchange = broker()
        .exchanges()
        .unwrap()
        .into_iter()
        .find(|exchange| exchange.name == scope.exchange)
        .expect("exchange declared");
    assert_eq!(exchange.kind, "topic");
    assert!(exchange.durable && !exchange.auto_delete);
    assert_eq!(
        binding_keys(&scope.exchange, &queue_name),
        BTreeSet::from(["orders.placed".to_owned()])
    );

    running.shutdown().await.expect("clean shutdown");
    assert_eq!(queue_depth(&queue_name), 0, "every message was acked");
    hutch.close().await.expect("close publisher");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_routing_keys_with_wildcards_bind_an_explicit_queue() {
    init_logging();
    let scope = Scope::new("wildcards");
    let hutch = scope.hutch("wildcards");
    let running = hutch.start().await.expect("start");
    let queue_name = scope.queue("billing_audit");
    assert_eq!(running.queues(), std::slice::from_ref(&queue_name));
    assert_eq!(
        binding_keys(&scope.exchange, &queue_name),
        BTreeSet::from(["billing.#".to_owned(), "refunds.*".to_owned()])
    );

    // Keys that must not reach the queue go first: the queue is FIFO and has
    // one consumer, so had any of them been routed it would be seen before
    // the matching ones.
    for key in [
        "refunds",
        "refunds.issued.late",
        "orders.placed",
        "billingx.paid",
    ] {
        hutch
            .publish(key, &serde_json::json!({ "key": key }))
            .await
            .unwrap();
    }
    let matching = ["billing", "billing.invoice.paid", "refunds.issued"];
    for key in matching {
        hutch
            .publish(key, &serde_json::json!({ "key": key }))
            .await
            .unwrap();
    }
    let seen = JOURNAL.wait_for("audit", matching.len()).await;
    let keys: Vec<_> = seen.iter().map(|s| s.routing_key.as_str()).collect();
    assert_eq!(
        keys, matching,
        "`#` matches zero or more words, `*` exactly one"
    );
    assert!(seen.iter().all(|s| s.body["key"] == s.routing_key.as_str()));

    running.shutdown().await.expect("clean shutdown");
    hutch.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_declares_and_runs_only_its_consumers() {
    init_logging();
    let scope = Scope::new("groups");
    let hutch = scope.hutch("group_a");
    assert_eq!(hutch.queue_names().unwrap(), [scope.queue("in_group_a")]);
    let running = hutch.start().await.expect("start");

    let mut ours: Vec<_> = broker()
        .queues()
        .unwrap()
        .into_iter()
        .filter(|queue| queue.name.starts_with(&format!("{}:", scope.namespace)))
        .map(|queue| queue.name)
        .collect();
    ours.sort();
    let queue = scope.queue("in_group_a");
    assert_eq!(
        ours,
        [queue.clone(), format!("{queue}:dead")],
        "the group's queue and its dead-letter queue, no queue of another group"
    );

    hutch
        .publish("groups.a", &serde_json::json!({ "n": 1 }))
        .await
        .unwrap();
    JOURNAL.wait_for("in_group_a", 1).await;
    running.shutdown().await.expect("clean shutdown");
    assert!(
        JOURNAL.by("in_group_b").is_empty(),
        "group_b's consumer never ran"
    );
    hutch.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_tasks_publish_at_once_and_everything_is_consumed() {
    init_logging();
    const TASKS: usize = 20;
    const EACH: usize = 25;
    let scope = Scope::new("concurrent");
    let hutch = scope.hutch("concurrent");
    let running = hutch.start().await.expect("start");

    let publishers: Vec<_> = (0..TASKS)
        .map(|task| {
            let hutch = hutch.clone();
            tokio::spawn(async move {
                for n in 0..EACH {
                    hutch
                        .publish(
                            &format!("load.{task}"),
                            &serde_json::json!({ "task": task, "n": n }),
                        )
                        .await
                        .expect("every publish is confirmed");
                }
            })
        })
        .collect();
    for publisher in publishers {
        publisher.await.unwrap();
    }
    let seen = JOURNAL.wait_for("load_sink", TASKS * EACH).await;
    assert_eq!(seen.len(), TASKS * EACH);
    let ids: BTreeSet<_> = seen.iter().map(|s| s.message_id.clone().unwrap()).collect();
    assert_eq!(ids.len(), TASKS * EACH, "message ids are unique");
    let pairs: BTreeSet<_> = seen
        .iter()
        .map(|s| {
            (
                s.body["task"].as_u64().unwrap(),
                s.body["n"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(pairs.len(), TASKS * EACH, "each message arrived once");

    running.shutdown().await.expect("clean shutdown");
    assert_eq!(queue_depth(&scope.queue("load_sink")), 0);
    hutch.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_first_declares_the_exchange() {
    init_logging();
    let scope = Scope::new("publish-first");
    let hutch = scope.hutch("nobody");
    hutch
        .publish("nobody.listens", &serde_json::json!({}))
        .await
        .expect("an unroutable message is still confirmed");
    let exchange = broker()
        .exchanges()
        .unwrap()
        .into_iter()
        .find(|exchange| exchange.name == scope.exchange)
        .expect("the publisher declared the exchange");
    assert_eq!(exchange.kind, "topic");
    assert!(exchange.durable);
    hutch.close().await.unwrap();
}
