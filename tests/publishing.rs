//! Production publishing on the binary's node: many concurrent publishers,
//! per-publish options, raw bytes, mandatory publishes, batches, and an
//! unreachable broker. Every check reads what the broker holds.

use std::{collections::BTreeSet, time::Duration};

use futures_util::{StreamExt, stream};
use hutch_rs::{
    BoxError, Error, Hutch, Message, Outgoing, PublishOptions,
    amqp::{AMQPValue, FieldTable},
    consumer,
};
use hutch_rs_tests::{Scope, TALLY, bound_queue, queue_depth, take_all};
use serde::{Deserialize, Serialize};

/// A message of one test run.
#[derive(Debug, Serialize, Deserialize)]
struct Tagged {
    run: String,
    n: u64,
}

#[consumer(routing_key = "many.#", group = "many")]
async fn many_sink(msg: Message<Tagged>) -> Result<(), BoxError> {
    TALLY.record(&msg.run, msg.message_id().unwrap_or_default());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_publishes_from_fifty_tasks_are_all_confirmed_and_consumed() {
    hutch_rs_tests::init_logging();
    const TASKS: u64 = 50;
    const EACH: u64 = 200;
    let scope = Scope::new("many");
    let hutch = scope.hutch("many");
    let running = hutch.start().await.expect("start");
    let run = scope.namespace.clone();

    let confirmed: Vec<String> = stream::iter(0..TASKS)
        .map(|task| {
            let hutch = hutch.clone();
            let run = run.clone();
            tokio::spawn(async move {
                let mut ids = Vec::new();
                for i in 0..EACH {
                    let message = Tagged {
                        run: run.clone(),
                        n: task * EACH + i,
                    };
                    let published = hutch
                        .publish_with("many.items", &message, PublishOptions::new())
                        .await
                        .expect("confirmed");
                    ids.push(published.message_id().to_owned());
                }
                ids
            })
        })
        .buffer_unordered(TASKS as usize)
        .flat_map(|ids| stream::iter(ids.expect("publishing task")))
        .collect()
        .await;
    let expected: BTreeSet<String> = confirmed.into_iter().collect();
    assert_eq!(
        expected.len(),
        (TASKS * EACH) as usize,
        "one distinct id per publish"
    );
    // The consumer drains what 50 publishers sent (a debug build, on a
    // machine the broker shares): a deadline, not a pace.
    TALLY
        .wait_for_all(&run, &expected, Duration::from_secs(180))
        .await;
    running.shutdown().await.expect("clean shutdown");
    assert_eq!(queue_depth(&scope.queue("many_sink")), 0);
    hutch.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_publish_options_and_raw_bytes_arrive_as_given() {
    hutch_rs_tests::init_logging();
    let scope = Scope::new("options");
    let queue = bound_queue(&scope, "inbox", "options.#", FieldTable::default()).await;
    let hutch = scope.hutch("none");

    let options = PublishOptions::new()
        .header("tenant", "acme")
        .header("retries", AMQPValue::LongLongInt(2))
        .correlation_id("req-7")
        .reply_to("shop:replies")
        .expiration(Duration::from_secs(600))
        .priority(4)
        .message_id("order-7-placed");
    let published = hutch
        .publish_with(
            "options.json",
            &serde_json::json!({ "order_id": 7 }),
            options,
        )
        .await
        .unwrap();
    assert_eq!(published.message_id(), "order-7-placed");
    let raw = hutch
        .publish_bytes(
            "options.raw",
            b"plain words".to_vec(),
            "text/plain",
            PublishOptions::new(),
        )
        .await
        .unwrap();

    let arrived = take_all(&queue).await;
    assert_eq!(arrived.len(), 2);
    let json = &arrived[0].properties;
    assert_eq!(arrived[0].data, br#"{"order_id":7}"#);
    assert_eq!(
        json.message_id().as_ref().unwrap().as_str(),
        "order-7-placed"
    );
    assert_eq!(json.correlation_id().as_ref().unwrap().as_str(), "req-7");
    assert_eq!(json.reply_to().as_ref().unwrap().as_str(), "shop:replies");
    assert_eq!(json.expiration().as_ref().unwrap().as_str(), "600000");
    assert_eq!(json.priority(), &Some(4));
    assert_eq!(json.delivery_mode(), &Some(2));
    assert!(json.timestamp().is_some());
    assert_eq!(
        json.content_type().as_ref().unwrap().as_str(),
        "application/json"
    );
    let headers = json.headers().as_ref().unwrap().inner();
    assert_eq!(headers["tenant"], AMQPValue::LongString("acme".into()));
    assert_eq!(headers["retries"], AMQPValue::LongLongInt(2));

    assert_eq!(arrived[1].data, b"plain words");
    let bytes = &arrived[1].properties;
    assert_eq!(
        bytes.content_type().as_ref().unwrap().as_str(),
        "text/plain"
    );
    assert_eq!(
        bytes.message_id().as_ref().unwrap().as_str(),
        raw.message_id()
    );
    assert_eq!(bytes.delivery_mode(), &Some(2));
    hutch.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mandatory_publish_that_reaches_no_queue_is_an_error_naming_the_routing_key() {
    hutch_rs_tests::init_logging();
    let scope = Scope::new("mandatory");
    let queue = bound_queue(&scope, "bound", "mandatory.bound", FieldTable::default()).await;
    let hutch = scope.hutch("none");

    let error = hutch
        .publish_with("mandatory.nowhere", &1, PublishOptions::new().mandatory())
        .await
        .unwrap_err();
    assert!(
        matches!(&error, Error::Unroutable { routing_key, exchange } if routing_key == "mandatory.nowhere" && *exchange == scope.exchange),
        "{error:?}"
    );
    assert!(error.to_string().contains("mandatory.nowhere"), "{error}");
    hutch
        .publish_with("mandatory.bound", &2, PublishOptions::new().mandatory())
        .await
        .expect("a routable mandatory publish is confirmed");
    // Not mandatory: dropped by the broker, as AMQP says, and confirmed.
    hutch.publish("mandatory.nowhere", &3).await.unwrap();
    assert_eq!(queue_depth(&queue), 1);
    hutch.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_reports_each_message_s_outcome_in_order() {
    hutch_rs_tests::init_logging();
    let scope = Scope::new("batch");
    let queue = bound_queue(&scope, "bound", "batch.ok", FieldTable::default()).await;
    let hutch = scope.hutch("none");

    let mut batch: Vec<Outgoing> = (0..500)
        .map(|n| Outgoing::json("batch.ok", &n).unwrap())
        .collect();
    batch.insert(
        100,
        Outgoing::json("batch.nowhere", &-1)
            .unwrap()
            .with_options(PublishOptions::new().mandatory()),
    );
    batch.insert(
        200,
        Outgoing::bytes(&"x".repeat(300), b"{}".to_vec(), "application/json"),
    );
    batch.insert(
        300,
        Outgoing::json("batch.ok", &"explicit")
            .unwrap()
            .with_options(
                PublishOptions::new()
                    .message_id("batch-explicit")
                    .mandatory(),
            ),
    );
    let outcomes = hutch.publish_batch(batch).await;
    assert_eq!(outcomes.len(), 503);
    for (index, outcome) in outcomes.iter().enumerate() {
        match index {
            100 => assert!(
                matches!(outcome, Err(Error::Unroutable { routing_key, .. }) if routing_key == "batch.nowhere"),
                "{outcome:?}"
            ),
            200 => assert!(
                matches!(outcome, Err(Error::InvalidRoutingKey { .. })),
                "{outcome:?}"
            ),
            300 => assert_eq!(outcome.as_ref().unwrap().message_id(), "batch-explicit"),
            _ => assert!(outcome.is_ok(), "message {index}: {outcome:?}"),
        }
    }
    let ids: BTreeSet<&str> = outcomes
        .iter()
        .filter_map(|outcome| outcome.as_ref().ok())
        .map(|published| published.message_id())
        .collect();
    assert_eq!(ids.len(), 501, "one id per confirmed message");
    assert_eq!(queue_depth(&queue), 501, "every confirmed message is there");
    let arrived = take_all(&queue).await;
    let explicit = arrived
        .iter()
        .find(|message| message.data == br#""explicit""#)
        .expect("the explicit-id message arrived");
    assert_eq!(
        explicit.properties.message_id().as_ref().unwrap().as_str(),
        "batch-explicit"
    );
    hutch.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_to_an_unreachable_broker_waits_then_times_out() {
    hutch_rs_tests::init_logging();
    let nobody = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = nobody.local_addr().unwrap().port();
    drop(nobody);
    let hutch = Hutch::builder()
        .uri(format!("amqp://guest:guest@127.0.0.1:{port}/%2f"))
        .confirm_timeout(Duration::from_secs(2))
        .reconnect_delay(Duration::from_millis(50), Duration::from_millis(200))
        .build()
        .unwrap();
    let started = std::time::Instant::now();
    let error = tokio::time::timeout(Duration::from_secs(10), hutch.publish("a.b", &1))
        .await
        .expect("bounded by the confirm timeout")
        .unwrap_err();
    assert!(
        matches!(&error, Error::PublishTimeout { routing_key, .. } if routing_key == "a.b"),
        "{error:?}"
    );
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "it waited for a connection"
    );
    hutch.close().await.unwrap();
}
