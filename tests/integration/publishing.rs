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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strings_longer_than_amqp_allows_fail_the_publish_instead_of_panicking() {
    hutch_rs_tests::init_logging();
    let scope = Scope::new("long");
    let queue = bound_queue(&scope, "inbox", "long.#", FieldTable::default()).await;
    let hutch = scope.hutch("none");
    let long = "x".repeat(256);
    let limit = "y".repeat(255);

    let too_long = [
        ("header name", PublishOptions::new().header(&long, "v")),
        ("message id", PublishOptions::new().message_id(&long)),
        (
            "correlation id",
            PublishOptions::new().correlation_id(&long),
        ),
        ("reply_to", PublishOptions::new().reply_to(&long)),
    ];
    for (property, options) in too_long.clone() {
        let error = hutch
            .publish_with("long.json", &1, options)
            .await
            .unwrap_err();
        assert!(
            matches!(&error, Error::InvalidProperty { property: named, routing_key, .. } if named.starts_with(property) && routing_key == "long.json"),
            "{property}: {error:?}"
        );
        assert!(error.to_string().contains("256 bytes"), "{error}");
    }
    let error = hutch
        .publish_bytes("long.raw", b"x".to_vec(), &long, PublishOptions::new())
        .await
        .unwrap_err();
    assert!(
        matches!(&error, Error::InvalidProperty { property, .. } if property == "content type"),
        "{error:?}"
    );

    // In a batch, each bad message fails alone, between good ones.
    let mut batch = vec![Outgoing::json("long.ok", &0).unwrap()];
    for (_, options) in too_long {
        batch.push(
            Outgoing::json("long.bad", &1)
                .unwrap()
                .with_options(options),
        );
        batch.push(Outgoing::json("long.ok", &2).unwrap());
    }
    batch.push(Outgoing::bytes("long.bad", b"x".to_vec(), &long));
    // 255 bytes is allowed everywhere.
    batch.push(
        Outgoing::bytes("long.ok", b"limit".to_vec(), &limit).with_options(
            PublishOptions::new()
                .header(&limit, 1)
                .message_id(&limit)
                .correlation_id(&limit)
                .reply_to(&limit),
        ),
    );
    let outcomes = hutch.publish_batch(batch).await;
    assert_eq!(outcomes.len(), 11);
    for (index, outcome) in outcomes.iter().enumerate() {
        match index {
            1 | 3 | 5 | 7 | 9 => assert!(
                matches!(outcome, Err(Error::InvalidProperty { routing_key, .. }) if routing_key == "long.bad"),
                "message {index}: {outcome:?}"
            ),
            _ => assert!(outcome.is_ok(), "message {index}: {outcome:?}"),
        }
    }
    assert_eq!(queue_depth(&queue), 6, "only the valid messages were sent");
    let arrived = take_all(&queue).await;
    let at_limit = arrived
        .iter()
        .find(|message| message.data == b"limit")
        .expect("the message at the limits arrived");
    assert_eq!(
        at_limit.properties.reply_to().as_ref().unwrap().as_str(),
        limit
    );
    assert!(
        at_limit
            .properties
            .headers()
            .as_ref()
            .unwrap()
            .contains_key(limit.as_str())
    );
    hutch.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_publish_waiting_on_refused_credentials_gets_the_connect_error() {
    hutch_rs_tests::init_logging();
    let scope = Scope::new("refused");
    let port = hutch_rs_tests::broker().amqp_port();
    let hutch = Hutch::builder()
        .uri(format!(
            "amqp://guest:not-the-password@127.0.0.1:{port}/%2f"
        ))
        .exchange(&scope.exchange)
        .confirm_timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let publishes = (0..8).map(|n| {
        let hutch = hutch.clone();
        tokio::spawn(async move {
            let options = if n % 2 == 0 {
                PublishOptions::new()
            } else {
                PublishOptions::new().mandatory()
            };
            hutch.publish_with("refused.key", &n, options).await
        })
    });
    let outcomes = tokio::time::timeout(
        Duration::from_secs(10),
        futures_util::future::join_all(publishes),
    )
    .await
    .expect("a refused connection fails the publishes at once, not at their timeout");
    for outcome in outcomes {
        let error = outcome.expect("publishing task").unwrap_err();
        assert!(matches!(&error, Error::Connect { .. }), "{error:?}");
        assert!(error.to_string().contains("ACCESS_REFUSED"), "{error}");
        assert!(!error.to_string().contains("not-the-password"), "{error}");
    }
    hutch.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mandatory_messages_waiting_their_turn_on_a_healthy_broker_do_not_time_out() {
    hutch_rs_tests::init_logging();
    // Eight batches at once: about 2000 mandatory messages wait for their
    // turn together, far longer in all than one confirm timeout, while each
    // one is answered in milliseconds.
    const BATCHES: usize = 8;
    const EACH: usize = 250;
    // Short against the ~13 s the batches take in all, long enough that
    // one slow fsync on a loaded machine is not a timeout.
    const TIMEOUT: Duration = Duration::from_secs(3);
    let scope = Scope::new("mandatory-batch");
    let queue = bound_queue(&scope, "bound", "mbatch.ok", FieldTable::default()).await;
    let hutch = scope
        .builder("none")
        .confirm_timeout(TIMEOUT)
        .build()
        .unwrap();
    // Open the connection first: the batches measure publishing only.
    hutch
        .publish_with("mbatch.ok", &-1, PublishOptions::new().mandatory())
        .await
        .unwrap();

    let started = std::time::Instant::now();
    let batches = (0..BATCHES).map(|batch| {
        let hutch = hutch.clone();
        tokio::spawn(async move {
            let messages = (0..EACH).map(move |n| {
                Outgoing::json("mbatch.ok", &(batch * EACH + n))
                    .unwrap()
                    .with_options(PublishOptions::new().mandatory())
            });
            hutch.publish_batch(messages).await
        })
    });
    let outcomes = futures_util::future::join_all(batches).await;
    let took = started.elapsed();
    eprintln!(
        "{} mandatory messages, one at a time, took {took:?}",
        BATCHES * EACH
    );
    for (batch, outcomes) in outcomes.into_iter().enumerate() {
        for (index, outcome) in outcomes.expect("batch task").iter().enumerate() {
            assert!(
                outcome.is_ok(),
                "batch {batch} message {index}: {outcome:?}"
            );
        }
    }
    assert!(
        took > TIMEOUT,
        "the test needs the messages to wait longer than a confirm timeout in all"
    );
    assert_eq!(queue_depth(&queue), (BATCHES * EACH) as u64 + 1);
    hutch.close().await.unwrap();
}
