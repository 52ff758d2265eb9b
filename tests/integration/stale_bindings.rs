//! Stale-binding removal against the real node: an application whose
//! consumer dropped a routing key (version 2 of the same queue) loses
//! hutch-rs's binding for it, and nothing else; off by default; a
//! management API that cannot be reached or refuses fails the start.

use std::collections::{BTreeMap, BTreeSet};

use hutch_rs::{
    BINDING_MARK, BINDING_MARK_VALUE, BoxError, Error, HutchBuilder, Message, consumer,
    testing::BindingInfo,
};
use hutch_rs_tests::{
    Scope, await_consumer_count, broker, init_logging, queue_depth, raw_channel, unique,
};
use lapin::{
    ExchangeKind,
    options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable},
};
use serde_json::{Value, json};

// Version 1 of the application: its orders consumer takes two routing keys,
// and it has a consumer that version 2 removed altogether.
#[consumer(routing_key = ["stale.a", "stale.b"], queue = "stale_orders", group = "stale_v1")]
async fn stale_orders_v1(_msg: Message<Value>) -> Result<(), BoxError> {
    Ok(())
}

#[consumer(routing_key = "stale.gone", queue = "stale_gone", group = "stale_v1")]
async fn stale_gone_v1(_msg: Message<Value>) -> Result<(), BoxError> {
    Ok(())
}

// Version 2: the same queue, one routing key left.
#[consumer(routing_key = "stale.a", queue = "stale_orders", group = "stale_v2")]
async fn stale_orders_v2(_msg: Message<Value>) -> Result<(), BoxError> {
    Ok(())
}

/// The arguments hutch-rs binds with, as the broker lists them.
fn marked() -> BTreeMap<String, Value> {
    BTreeMap::from([(BINDING_MARK.to_owned(), json!(BINDING_MARK_VALUE))])
}

fn arguments(pairs: &[(&str, &str)]) -> FieldTable {
    let mut table = FieldTable::default();
    for (name, value) in pairs {
        table.insert((*name).into(), AMQPValue::LongString((*value).into()));
    }
    table
}

/// The bindings from `exchange` to `queue`: routing key and arguments.
fn bindings_between(
    all: &[BindingInfo],
    exchange: &str,
    queue: &str,
) -> BTreeSet<(String, String)> {
    all.iter()
        .filter(|binding| binding.source == exchange && binding.destination == queue)
        .map(|binding| {
            (
                binding.routing_key.clone(),
                serde_json::to_string(&binding.arguments).unwrap(),
            )
        })
        .collect()
}

fn entry(key: &str, arguments: &BTreeMap<String, Value>) -> (String, String) {
    (key.to_owned(), serde_json::to_string(arguments).unwrap())
}

async fn node_bindings() -> Vec<BindingInfo> {
    tokio::task::spawn_blocking(|| broker().bindings().expect("rabbitmqctl list_bindings"))
        .await
        .unwrap()
}

/// Version 2's builder with stale-binding removal on, through the test
/// node's management API (no credentials in the URI: the broker URI's).
fn v2_removing(scope: &Scope) -> HutchBuilder {
    scope
        .builder("stale_v2")
        .remove_stale_bindings(true)
        .management_uri(broker().management_url())
}

/// Runs version 1 once: its queues and marked bindings exist afterwards.
async fn deploy_v1(scope: &Scope) {
    let running = scope.hutch("stale_v1").start().await.expect("v1 starts");
    running.shutdown().await.expect("v1 stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_routing_key_loses_hutch_rs_s_binding_and_nothing_else() {
    init_logging();
    let scope = Scope::new("stale");
    let orders = scope.queue("stale_orders");
    deploy_v1(&scope).await;

    // What others bound, which must all survive.
    let other_app = format!("{}:stale_orders", unique("other-app"));
    let other_exchange = unique("x-stale-other");
    let (connection, channel) = raw_channel().await;
    let bind = async |queue: &str, exchange: &str, key: &str, args: FieldTable| {
        channel
            .queue_bind(
                queue.into(),
                exchange.into(),
                key.into(),
                QueueBindOptions::default(),
                args,
            )
            .await
            .expect("hand-made binding");
    };
    let mark = || arguments(&[(BINDING_MARK, BINDING_MARK_VALUE)]);
    // By hand, without the mark: the dropped key, and another.
    bind(&orders, &scope.exchange, "stale.b", FieldTable::default()).await;
    bind(
        &orders,
        &scope.exchange,
        "stale.hand",
        FieldTable::default(),
    )
    .await;
    // With arguments of its own, and with the mark among others.
    bind(
        &orders,
        &scope.exchange,
        "stale.b",
        arguments(&[("purpose", "audit")]),
    )
    .await;
    bind(
        &orders,
        &scope.exchange,
        "stale.b",
        arguments(&[(BINDING_MARK, BINDING_MARK_VALUE), ("purpose", "audit")]),
    )
    .await;
    // Another application's queue, bound by a hutch-rs from the same
    // exchange with the dropped key.
    channel
        .queue_declare(
            other_app.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("the other application's queue");
    bind(&other_app, &scope.exchange, "stale.b", mark()).await;
    // Marked, but from another exchange.
    channel
        .exchange_declare(
            other_exchange.as_str().into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("another exchange");
    bind(&orders, &other_exchange, "stale.b", mark()).await;
    connection.close(200, "done".into()).await.unwrap();

    let before = node_bindings().await;
    assert!(
        bindings_between(&before, &scope.exchange, &orders).contains(&entry("stale.b", &marked())),
        "v1 made a marked binding for stale.b: {before:#?}"
    );

    let running = v2_removing(&scope)
        .build()
        .unwrap()
        .start()
        .await
        .expect("v2 starts, removing what is stale");
    let removed: Vec<_> = running
        .removed_bindings()
        .iter()
        .map(|binding| {
            (
                binding.exchange.as_str(),
                binding.queue.as_str(),
                binding.routing_key.as_str(),
            )
        })
        .collect();
    assert_eq!(
        removed,
        [(scope.exchange.as_str(), orders.as_str(), "stale.b")]
    );

    let after = node_bindings().await;
    let none = BTreeMap::new();
    let audit = BTreeMap::from([("purpose".to_owned(), json!("audit"))]);
    let mut marked_audit = marked();
    marked_audit.insert("purpose".to_owned(), json!("audit"));
    assert_eq!(
        bindings_between(&after, &scope.exchange, &orders),
        BTreeSet::from([
            entry("stale.a", &marked()),
            entry("stale.b", &none),
            entry("stale.b", &audit),
            entry("stale.b", &marked_audit),
            entry("stale.hand", &none),
        ]),
        "only hutch-rs's binding for the dropped key is gone"
    );
    assert_eq!(
        bindings_between(&after, &scope.exchange, &other_app),
        BTreeSet::from([entry("stale.b", &marked())]),
        "another application's queue keeps its binding"
    );
    assert_eq!(
        bindings_between(&after, &other_exchange, &orders),
        BTreeSet::from([entry("stale.b", &marked())]),
        "a binding from another exchange stays"
    );
    assert_eq!(
        bindings_between(&after, &scope.exchange, &scope.queue("stale_gone")),
        BTreeSet::from([entry("stale.gone", &marked())]),
        "the queue of a consumer removed altogether is not this process's: its bindings stay"
    );
    running.shutdown().await.expect("v2 stops");

    // Started again, nothing is stale any more.
    let v2 = v2_removing(&scope).build().unwrap();
    let running = v2.start().await.unwrap();
    assert!(running.removed_bindings().is_empty());
    running.shutdown().await.unwrap();

    // Three bindings for one key (as after an upgrade, an old unmarked one
    // and the marked one): a message still reaches the queue once. Nothing
    // consumes now, and a confirmed message is in the queue.
    v2.publish("stale.b", &json!({ "once": true }))
        .await
        .expect("confirmed");
    let depth = tokio::task::spawn_blocking({
        let orders = orders.clone();
        move || queue_depth(&orders)
    })
    .await
    .unwrap();
    assert_eq!(depth, 1, "one copy, however many bindings match");
    v2.close().await.unwrap();

    let (connection, channel) = raw_channel().await;
    channel
        .queue_delete(other_app.as_str().into(), Default::default())
        .await
        .unwrap();
    channel
        .exchange_delete(other_exchange.as_str().into(), Default::default())
        .await
        .unwrap();
    connection.close(200, "done".into()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_setting_nothing_is_removed() {
    init_logging();
    let scope = Scope::new("stale-off");
    let orders = scope.queue("stale_orders");
    deploy_v1(&scope).await;

    let running = scope.hutch("stale_v2").start().await.expect("v2 starts");
    assert!(running.removed_bindings().is_empty());
    let after = node_bindings().await;
    assert_eq!(
        bindings_between(&after, &scope.exchange, &orders),
        BTreeSet::from([entry("stale.a", &marked()), entry("stale.b", &marked())]),
        "off by default: the stale binding stays"
    );
    running.shutdown().await.unwrap();
}

/// Starts version 2 with removal on through `management_uri`, expects the
/// start to fail with [`Error::StaleBindings`], and its consumer stopped.
async fn failed_start(scope: &Scope, management_uri: String) -> String {
    let error = scope
        .builder("stale_v2")
        .remove_stale_bindings(true)
        .management_uri(management_uri)
        .build()
        .unwrap()
        .start()
        .await
        .expect_err("the management API cannot list the bindings");
    let Error::StaleBindings { reason } = &error else {
        panic!("expected Error::StaleBindings, got {error:?}");
    };
    let queue = scope.queue("stale_orders");
    tokio::task::spawn_blocking(move || await_consumer_count(&queue, 0))
        .await
        .unwrap();
    reason.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_management_api_that_cannot_be_reached_or_refuses_fails_the_start() {
    init_logging();
    let scope = Scope::new("stale-fail");
    deploy_v1(&scope).await;
    let orders = scope.queue("stale_orders");

    // Nothing listens on a port just given back by the OS.
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let reason = failed_start(&scope, format!("http://127.0.0.1:{closed_port}")).await;
    assert!(reason.contains("could not reach"), "{reason}");
    assert!(reason.contains("HUTCH_MANAGEMENT_URI"), "{reason}");
    assert!(reason.contains("rabbitmq_management"), "{reason}");

    let port = broker().management_port();
    let reason = failed_start(
        &scope,
        format!("http://guest:wrong-password@127.0.0.1:{port}"),
    )
    .await;
    assert!(reason.contains("refused user \"guest\""), "{reason}");
    assert!(reason.contains("401"), "{reason}");
    assert!(!reason.contains("wrong-password"), "{reason}");

    let reason = failed_start(&scope, format!("http://127.0.0.1:{port}/not-the-api")).await;
    // RabbitMQ answers 400 for a path it does not route.
    assert!(reason.contains("/not-the-api/api/bindings/"), "{reason}");
    assert!(
        reason.contains("check the management URI's host, port and path"),
        "{reason}"
    );
    assert!(
        reason.contains("now HutchBuilder::management_uri"),
        "{reason}"
    );

    // Whatever failed, nothing was removed.
    let after = node_bindings().await;
    assert_eq!(
        bindings_between(&after, &scope.exchange, &orders),
        BTreeSet::from([entry("stale.a", &marked()), entry("stale.b", &marked())]),
    );
}
