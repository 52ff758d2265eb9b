//! Generated hostile messages against a running application: hundreds of
//! properties, headers and bodies from a fixed seed, published with a plain
//! client. Each must be handled, or dead-lettered with a reason, exactly
//! once; nothing stays behind in a queue; the consumers keep consuming.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use hutch_rs::{BoxError, ConsumerState, Message, consumer, headers};
use hutch_rs_tests::{JOURNAL, PATIENCE, Scope, Seen, broker, raw_channel, take_all};
use lapin::{
    BasicProperties,
    options::{BasicPublishOptions, ConfirmSelectOptions},
    types::{AMQPValue, ByteArray, DecimalValue, FieldArray, FieldTable, LongString},
};
use proptest::{
    collection::vec,
    prelude::*,
    strategy::ValueTree,
    test_runner::{Config, RngAlgorithm, RngSeed, TestRunner},
};

/// How many generated messages are published.
const MESSAGES: usize = 400;

#[derive(Debug, serde::Deserialize, serde::Serialize)]
struct Order {
    id: u64,
    #[serde(default)]
    fail: bool,
}

/// Fails when the body says `"fail": true`: retried once, then
/// dead-lettered as attempts-exhausted.
#[consumer(
    routing_key = "fuzz.value.#",
    group = "decode_fuzz",
    max_attempts = 2,
    retry_min_delay = "50ms",
    retry_max_delay = "50ms"
)]
async fn fuzz_value(msg: Message<serde_json::Value>) -> Result<(), BoxError> {
    // Every accessor, on whatever arrived.
    let _ = (msg.timestamp(), msg.headers(), msg.correlation_id());
    let _ = (
        msg.exchange(),
        msg.header(headers::ATTEMPT),
        msg.properties(),
    );
    JOURNAL.record(Seen::of("fuzz_value", &msg));
    if msg.body().get("fail") == Some(&serde_json::Value::Bool(true)) {
        return Err("asked to fail".into());
    }
    Ok(())
}

/// The same with a typed body.
#[consumer(
    routing_key = "fuzz.typed.#",
    group = "decode_fuzz",
    max_attempts = 2,
    retry_min_delay = "50ms",
    retry_max_delay = "50ms"
)]
async fn fuzz_typed(msg: Message<Order>) -> Result<(), BoxError> {
    JOURNAL.record(Seen::of("fuzz_typed", &msg));
    if msg.fail {
        return Err("asked to fail".into());
    }
    Ok(())
}

fn long_string(bytes: impl Into<Vec<u8>>) -> AMQPValue {
    AMQPValue::LongString(LongString::from(bytes.into()))
}

fn short_text() -> BoxedStrategy<String> {
    prop_oneof![
        3 => "[a-z0-9._:-]{0,16}",
        1 => any::<String>().prop_map(|text| text.chars().take(60).collect()),
        1 => Just("é".repeat(127)),
    ]
    .boxed()
}

/// Header values the broker passes on: every type lapin writes in a form
/// RabbitMQ reads (not AMQP short strings, which lapin cannot encode in a
/// table; no NaN or infinite floats), nested at most `depth` deep.
fn value(depth: u32) -> BoxedStrategy<AMQPValue> {
    let scalar = prop_oneof![
        any::<bool>().prop_map(AMQPValue::Boolean),
        any::<i8>().prop_map(AMQPValue::ShortShortInt),
        any::<u8>().prop_map(AMQPValue::ShortShortUInt),
        any::<i16>().prop_map(AMQPValue::ShortInt),
        any::<u16>().prop_map(AMQPValue::ShortUInt),
        any::<i32>().prop_map(AMQPValue::LongInt),
        any::<u32>().prop_map(AMQPValue::LongUInt),
        prop_oneof![Just(i64::MIN), Just(i64::MAX), any::<i64>()].prop_map(AMQPValue::LongLongInt),
        // Finite only: Erlang has no NaN or infinity, and RabbitMQ closes
        // the publishing connection with INTERNAL_ERROR on one (the
        // broker-free tests cover them).
        any::<f32>().prop_map(AMQPValue::Float),
        any::<f64>().prop_map(AMQPValue::Double),
        (any::<u8>(), any::<u32>())
            .prop_map(|(scale, value)| AMQPValue::DecimalValue(DecimalValue { scale, value })),
        vec(any::<u8>(), 0..40).prop_map(long_string),
        prop_oneof![Just(0), Just(u64::MAX), any::<u64>()].prop_map(AMQPValue::Timestamp),
        vec(any::<u8>(), 0..40).prop_map(|bytes| AMQPValue::ByteArray(ByteArray::from(bytes))),
        Just(AMQPValue::Void),
    ];
    scalar
        .prop_recursive(depth, 24, 3, |inner| {
            prop_oneof![
                vec(inner.clone(), 0..3)
                    .prop_map(|values| AMQPValue::FieldArray(FieldArray::from(values))),
                vec(("[a-z]{1,8}", inner), 0..3).prop_map(|entries| {
                    let mut table = FieldTable::default();
                    for (name, value) in entries {
                        table.insert(name.into(), value);
                    }
                    AMQPValue::FieldTable(table)
                }),
            ]
        })
        .boxed()
}

/// A headers table: hutch-rs's own names with forged values, `x-death` of
/// the wrong shape, anything else.
fn headers_table() -> BoxedStrategy<FieldTable> {
    let name = prop_oneof![
        2 => proptest::sample::select(vec![
            headers::ATTEMPT,
            headers::ORIGINAL_EXCHANGE,
            headers::ORIGINAL_ROUTING_KEY,
            headers::ERROR,
            headers::ATTEMPTS,
            headers::CONSUMER,
            headers::REASON,
            headers::HEADERS_DROPPED,
            "x-hutch-padding",
            "x-death",
        ]).prop_map(str::to_owned),
        // Not "CC" or "BCC": RabbitMQ routes by those.
        3 => "[a-z][a-z0-9-]{0,12}",
    ];
    let forged = prop_oneof![
        Just(AMQPValue::LongLongInt(i64::MAX)),
        Just(AMQPValue::LongLongInt(-1)),
        Just(long_string(vec![b'p'; 20_000])),
        Just(long_string(b"\xff\xfe".to_vec())),
        value(4),
    ];
    vec((name, prop_oneof![forged, value(20)]), 0..6)
        .prop_map(|entries| {
            let mut table = FieldTable::default();
            for (name, value) in entries {
                table.insert(name.into(), value);
            }
            table
        })
        .boxed()
}

fn content_type() -> BoxedStrategy<Option<String>> {
    proptest::option::of(prop_oneof![
        3 => Just("application/json".to_owned()),
        1 => Just("APPLICATION/JSON; charset=utf-8".to_owned()),
        1 => Just("application/cloudevents+json".to_owned()),
        1 => Just("text/plain".to_owned()),
        1 => Just(String::new()),
        1 => short_text(),
    ])
    .boxed()
}

fn content_encoding() -> BoxedStrategy<Option<String>> {
    proptest::option::weighted(
        0.3,
        prop_oneof![
            Just("UTF-8".to_owned()),
            Just("identity".to_owned()),
            Just("gzip".to_owned()),
            short_text(),
        ],
    )
    .boxed()
}

/// A body, and whether it is JSON that says to fail (None: not JSON of
/// the typed consumer's shape, or not JSON at all).
fn body() -> BoxedStrategy<Vec<u8>> {
    let json = (any::<u64>(), any::<bool>(), any::<bool>(), short_text()).prop_map(
        |(id, fail, with_id, note)| {
            let mut object = serde_json::Map::new();
            if with_id {
                object.insert("id".into(), id.into());
            }
            object.insert("fail".into(), fail.into());
            object.insert("note".into(), note.into());
            serde_json::to_vec(&object).unwrap()
        },
    );
    prop_oneof![
        4 => json.clone(),
        1 => json.clone().prop_map(|text| [b"\xEF\xBB\xBF".as_slice(), &text].concat()),
        1 => (json, any::<prop::sample::Index>()).prop_map(|(text, cut)| text[..cut.index(text.len())].to_vec()),
        1 => vec(any::<u8>(), 0..200),
        1 => Just("[".repeat(10_000).into_bytes()),
        1 => Just(format!("{{\"id\":{}}}", "9".repeat(400)).into_bytes()),
        1 => Just(b"{\"id\":1,\"s\":\"\xff\"}".to_vec()),
        1 => Just(Vec::new()),
    ]
    .boxed()
}

/// One message: routing key suffix, consumer, properties (without the
/// message id), body.
fn message() -> BoxedStrategy<(bool, String, BasicProperties, Vec<u8>)> {
    let properties = (
        content_type(),
        content_encoding(),
        proptest::option::weighted(0.7, headers_table()),
        proptest::option::of(any::<u8>()),
        // RabbitMQ refuses any other delivery mode, with the channel.
        proptest::option::of(prop_oneof![Just(1_u8), Just(2)]),
        proptest::option::of(prop_oneof![Just(u64::MAX), any::<u64>()]),
        proptest::option::of(short_text()),
        proptest::option::of(short_text()),
    )
        .prop_map(
            |(content_type, encoding, headers, priority, mode, timestamp, correlation, kind)| {
                let mut properties = BasicProperties::default();
                if let Some(content_type) = content_type {
                    properties = properties.with_content_type(content_type.into());
                }
                if let Some(encoding) = encoding {
                    properties = properties.with_content_encoding(encoding.into());
                }
                if let Some(headers) = headers {
                    properties = properties.with_headers(headers);
                }
                if let Some(priority) = priority {
                    properties = properties.with_priority(priority);
                }
                if let Some(mode) = mode {
                    properties = properties.with_delivery_mode(mode);
                }
                if let Some(timestamp) = timestamp {
                    properties = properties.with_timestamp(timestamp);
                }
                if let Some(correlation) = correlation {
                    properties = properties.with_correlation_id(correlation.into());
                }
                if let Some(kind) = kind {
                    properties = properties.with_type(kind.into());
                }
                properties
            },
        );
    (any::<bool>(), "[a-z0-9]{1,8}", properties, body()).boxed()
}

/// The messages, the same on every run.
fn generated() -> Vec<(bool, String, BasicProperties, Vec<u8>)> {
    let config = Config {
        rng_algorithm: RngAlgorithm::ChaCha,
        rng_seed: RngSeed::Fixed(0x0de_c0de),
        ..Config::default()
    };
    let mut runner = TestRunner::new(config);
    let strategy = message();
    (0..MESSAGES)
        .map(|_| strategy.new_tree(&mut runner).unwrap().current())
        .collect()
}

/// The messages in `queue` now (ready and unacknowledged), 0 if it does
/// not exist (a delay queue is declared at the first retry).
async fn depth(queue: &str) -> u64 {
    let queue = queue.to_owned();
    tokio::task::spawn_blocking(move || {
        broker()
            .queue(&queue)
            .expect("rabbitmqctl list_queues")
            .map_or(0, |info| info.messages)
    })
    .await
    .unwrap()
}

fn text(headers: &FieldTable, name: &str) -> Option<String> {
    match headers.inner().get(name)? {
        AMQPValue::LongString(text) => Some(String::from_utf8_lossy(text.as_bytes()).into_owned()),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_generated_message_is_handled_or_dead_lettered_once() {
    hutch_rs_tests::init_logging();
    let started = std::time::Instant::now();
    let scope = Scope::new("decode-fuzz");
    let hutch = scope.hutch("decode_fuzz");
    let running = hutch.start().await.expect("start");
    let queues = [
        ("fuzz_value", scope.queue("fuzz_value")),
        ("fuzz_typed", scope.queue("fuzz_typed")),
    ];

    // Published in one pipeline, then every confirm awaited.
    let messages = generated();
    let (connection, channel) = raw_channel().await;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let mut confirms = Vec::new();
    let mut ids = BTreeMap::new();
    for (index, (typed, key, properties, body)) in messages.into_iter().enumerate() {
        let id = format!("fuzz-{index}");
        let consumer = if typed { "fuzz_typed" } else { "fuzz_value" };
        let routing_key = format!("fuzz.{}.{key}", &consumer[5..]);
        ids.insert(id.clone(), consumer);
        let confirm = channel
            .basic_publish(
                scope.exchange.as_str().into(),
                routing_key.as_str().into(),
                BasicPublishOptions::default(),
                &body,
                properties.with_message_id(id.into()),
            )
            .await
            .expect("publish");
        confirms.push(confirm);
    }
    for confirm in confirms {
        assert!(confirm.await.expect("confirm").is_ack());
    }
    connection.close(200, "done".into()).await.unwrap();

    // Done when every message was acknowledged after a success or sits in
    // a dead-letter queue, and nothing waits in a delay queue.
    let handled = |ids: &BTreeMap<String, &str>| -> BTreeSet<String> {
        JOURNAL
            .entries()
            .into_iter()
            .filter(|seen| {
                seen.body.get("fail") != Some(&serde_json::Value::Bool(true))
                    && seen
                        .message_id
                        .as_ref()
                        .is_some_and(|id| ids.contains_key(id))
            })
            .filter_map(|seen| seen.message_id)
            .collect()
    };
    let deadline = tokio::time::Instant::now() + PATIENCE * 2;
    loop {
        let mut settled = handled(&ids).len() as u64;
        let mut waiting = 0;
        for (_, queue) in &queues {
            settled += depth(&format!("{queue}:dead")).await;
            waiting += depth(queue).await + depth(&format!("{queue}:delay:50ms")).await;
        }
        if settled == MESSAGES as u64 && waiting == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{settled} of {MESSAGES} messages settled, {waiting} still queued"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Still consuming: one ordinary message more is handled.
    hutch_rs_tests::raw_publish(
        &scope.exchange,
        "fuzz.value.after",
        br#"{"after":true}"#,
        BasicProperties::default().with_message_id("after".into()),
    )
    .await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !JOURNAL
        .by("fuzz_value")
        .iter()
        .any(|seen| seen.message_id.as_deref() == Some("after"))
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "after was not handled"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let status = hutch.status();
    for (consumer, queue) in &queues {
        let consumer = status
            .consumer(queue)
            .unwrap_or_else(|| panic!("{consumer}"));
        assert_eq!(consumer.state, ConsumerState::Consuming, "{status:?}");
        assert_eq!(consumer.restarts, 0, "{status:?}");
    }
    running.shutdown().await.expect("clean shutdown");

    // Each id exactly once: handled, or dead with a reason that fits what
    // the handler saw of it.
    let seen = JOURNAL.entries();
    let handled = handled(&ids);
    let mut accounted: BTreeMap<String, &str> =
        handled.iter().map(|id| (id.clone(), "handled")).collect();
    for (consumer, queue) in &queues {
        for dead in take_all(&format!("{queue}:dead")).await {
            let id = dead
                .properties
                .message_id()
                .as_ref()
                .expect("id")
                .to_string();
            assert_eq!(ids.get(&id), Some(consumer), "{id} dead in {queue}");
            let headers = dead.properties.headers().as_ref().expect("headers");
            let reason = text(headers, headers::REASON).expect("a reason");
            let attempts: Vec<u32> = seen
                .iter()
                .filter(|seen| seen.message_id.as_deref() == Some(id.as_str()))
                .map(|seen| seen.attempt)
                .collect();
            match reason.as_str() {
                headers::REASON_POISON => assert_eq!(attempts, [0_u32; 0], "{id}"),
                headers::REASON_ATTEMPTS_EXHAUSTED => assert_eq!(attempts, [1, 2], "{id}"),
                other => panic!("{id} dead for {other}"),
            }
            let reason = if reason == headers::REASON_POISON {
                "poison"
            } else {
                "attempts-exhausted"
            };
            assert!(
                accounted.insert(id.clone(), reason).is_none(),
                "{id} accounted for twice"
            );
        }
        assert_eq!(depth(queue).await, 0, "{queue}");
    }
    let missing: Vec<_> = ids
        .keys()
        .filter(|id| !accounted.contains_key(*id))
        .collect();
    assert!(missing.is_empty(), "never settled: {missing:?}");
    let count = |outcome: &str| accounted.values().filter(|&&o| o == outcome).count();
    let (ok, poison, exhausted) = (
        count("handled"),
        count("poison"),
        count("attempts-exhausted"),
    );
    // The seed gives some of each.
    assert!(
        ok > 0 && poison > 0 && exhausted > 0,
        "{ok} handled, {poison} poison, {exhausted} exhausted"
    );
    eprintln!(
        "{MESSAGES} messages: {ok} handled, {poison} poison, {exhausted} exhausted, in {:?}",
        started.elapsed()
    );
    hutch.close().await.unwrap();
}
