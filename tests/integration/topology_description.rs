//! `Hutch::topology` against the broker: after `declare()`, the node holds
//! exactly the exchange, queues (with their arguments) and bindings the
//! description lists, read back through the management side of the harness;
//! and a retry declares one of the delay queues it lists, with the listed
//! arguments.

use std::collections::BTreeMap;

use hutch_rs::{BoxError, Message, Topology, consumer};
use hutch_rs_tests::{JOURNAL, Job, Scope, Seen, broker};
use serde_json::Value;

#[consumer(
    routing_key = ["described.placed", "described.paid.*"],
    group = "described",
    max_length = 1000,
    max_attempts = 2,
    retry_min_delay = "100ms",
    retry_max_delay = "200ms"
)]
async fn described_classic(msg: Message<Job>) -> Result<(), BoxError> {
    JOURNAL.record(Seen::of("described_classic", &msg));
    msg.outcome(msg.attempt())
}

#[consumer(
    routing_key = "described.#",
    group = "described",
    queue_type = "quorum"
)]
async fn described_quorum(_msg: Message<Job>) -> Result<(), BoxError> {
    Ok(())
}

/// (durable, auto-delete, exclusive, arguments) by queue name.
type QueueFacts = BTreeMap<String, (bool, bool, bool, BTreeMap<String, Value>)>;

/// The node's queues whose names start with `prefix`.
///
/// RabbitMQ 4.0 records the default type, `x-queue-type: classic`, on a
/// queue declared without one (3.10 lists no argument); hutch-rs declares
/// classic queues without it, so that queues declared before queue types
/// existed still match, and the description lists what hutch-rs sends. The
/// broker's default is removed here so both versions compare the same.
fn queues_on_node(prefix: &str) -> QueueFacts {
    broker()
        .queues()
        .unwrap()
        .into_iter()
        .filter(|queue| queue.name.starts_with(prefix))
        .map(|queue| {
            let mut arguments = queue.arguments;
            if arguments.get("x-queue-type") == Some(&Value::from("classic")) {
                arguments.remove("x-queue-type");
            }
            (
                queue.name,
                (queue.durable, queue.auto_delete, queue.exclusive, arguments),
            )
        })
        .collect()
}

/// The queues `declare` declares, as the description lists them.
fn declared_queues(topology: &Topology) -> QueueFacts {
    topology
        .consumers
        .iter()
        .flat_map(|consumer| [&consumer.queue, &consumer.dead_letter_queue])
        .map(|queue| {
            (
                queue.name.clone(),
                (queue.durable, false, false, queue.arguments.clone()),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declare_creates_exactly_what_the_description_lists() {
    let scope = Scope::new("described");
    let hutch = scope.hutch("described");
    let topology = hutch.topology().unwrap();
    assert_eq!(topology.consumers.len(), 2);
    assert_eq!(topology.exchange.name, scope.exchange);

    let declared = hutch.declare().await.unwrap();
    let listed: Vec<_> = topology
        .consumers
        .iter()
        .map(|c| c.queue.name.clone())
        .collect();
    assert_eq!(declared, listed);

    // The exchange.
    let exchange = broker()
        .exchanges()
        .unwrap()
        .into_iter()
        .find(|exchange| exchange.name == scope.exchange)
        .expect("the exchange is declared");
    assert_eq!(exchange.kind, topology.exchange.kind);
    assert_eq!(exchange.durable, topology.exchange.durable);
    assert!(!exchange.auto_delete);

    // The queues: every one listed, with its arguments, and no other in
    // the namespace.
    let prefix = format!("{}:", scope.namespace);
    assert_eq!(queues_on_node(&prefix), declared_queues(&topology));
    let quorum = topology
        .consumers
        .iter()
        .find(|consumer| consumer.function == "described_quorum")
        .unwrap();
    assert_eq!(
        quorum.queue.arguments.get("x-queue-type"),
        Some(&Value::from("quorum"))
    );

    // The bindings from the exchange: exactly those listed.
    // (source, destination, routing key) → arguments: a binding is one
    // such triple on the broker.
    let on_node: BTreeMap<_, _> = broker()
        .bindings()
        .unwrap()
        .into_iter()
        .filter(|binding| binding.source == scope.exchange)
        .map(|binding| {
            assert_eq!(binding.destination_kind, "queue");
            (
                (binding.source, binding.destination, binding.routing_key),
                binding.arguments,
            )
        })
        .collect();
    let listed: BTreeMap<_, _> = topology
        .consumers
        .iter()
        .flat_map(|consumer| &consumer.bindings)
        .map(|binding| {
            (
                (
                    binding.source.clone(),
                    binding.destination.clone(),
                    binding.routing_key.clone(),
                ),
                binding.arguments.clone(),
            )
        })
        .collect();
    assert_eq!(listed.len(), 3);
    assert_eq!(on_node, listed);

    // A failed attempt is retried through a delay queue: one of those
    // listed, declared with the listed arguments.
    let running = hutch.start().await.unwrap();
    hutch
        .publish(
            "described.placed",
            &Job {
                id: 1,
                succeed_on: 2,
            },
        )
        .await
        .unwrap();
    let seen = JOURNAL.wait_for("described_classic", 2).await;
    assert_eq!(
        seen.iter().map(|seen| seen.attempt).collect::<Vec<_>>(),
        [1, 2]
    );
    running.shutdown().await.unwrap();
    let classic = topology
        .consumers
        .iter()
        .find(|consumer| consumer.function == "described_classic")
        .unwrap();
    let delay_prefix = format!("{}:delay:", classic.queue.name);
    let delay_queues = queues_on_node(&delay_prefix);
    assert_eq!(delay_queues.len(), 1, "{delay_queues:?}");
    let listed_delays: QueueFacts = classic
        .delay_queues
        .iter()
        .map(|delay| {
            (
                delay.queue.name.clone(),
                (
                    delay.queue.durable,
                    false,
                    false,
                    delay.queue.arguments.clone(),
                ),
            )
        })
        .collect();
    for (name, facts) in &delay_queues {
        assert_eq!(
            listed_delays.get(name),
            Some(facts),
            "{name} is not listed as declared: {listed_delays:#?}"
        );
    }
}
