//! Property tests over the decode path: whatever properties, headers, body
//! and route a delivery carries, building its envelope, decoding it, reading
//! it and making its retry and dead-letter copies must not panic, and must
//! keep the promises the consumer relies on (a first delivery is attempt 1,
//! a copy fits in one frame, a decoding error says why).
//!
//! The generators lean towards edge cases: the content types hutch-rs tells
//! apart, the headers it reads and writes, forged retries, 255-byte short
//! strings, the extremes of every number, deep nesting.

use std::{
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use futures_util::FutureExt;
use lapin::{
    BasicProperties,
    types::{AMQPValue, ByteArray, DecimalValue, FieldArray, FieldTable, LongString, ShortString},
};
use proptest::{
    collection::vec,
    prelude::*,
    test_runner::{Config, RngAlgorithm, RngSeed, TestRunner},
};

use crate::{
    frame_size,
    handler::{Delivered, HandlerOutcome, call_handler},
    headers,
    message::{DecodeError, Envelope, Incoming, Message},
    retry::{copy, provenance},
};

/// The consumer's queue in most cases: generated routes and `x-death`
/// records aim at it, so that forged and genuine retries come up often.
const QUEUE: &str = "shop:send_receipt";

/// The longest AMQP short string.
const SHORT_MAX: usize = 255;

/// What a content header may take on the smallest frame every broker must
/// accept (4,096 bytes) and on RabbitMQ's default (131,072).
const MIN_CAPACITY: usize = 4_096 - 20;
const MAX_CAPACITY: usize = 131_072 - 20;

/// The headers hutch-rs reads and writes.
const HUTCH_HEADERS: [&str; 10] = [
    headers::ATTEMPT,
    headers::ORIGINAL_EXCHANGE,
    headers::ORIGINAL_ROUTING_KEY,
    headers::ERROR,
    headers::ATTEMPTS,
    headers::CONSUMER,
    headers::QUEUE,
    headers::REASON,
    headers::FAILED_AT,
    headers::HEADERS_DROPPED,
];

/// At most `max` bytes of `text`, cut at a character boundary.
fn at_most(mut text: String, max: usize) -> String {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text
}

/// Text that fits in a short string: ordinary, non-ASCII, control
/// characters, and exactly 255 bytes (ASCII, or multi-byte up to the limit).
fn short_text() -> BoxedStrategy<String> {
    prop_oneof![
        3 => "[a-z0-9._:#*-]{0,24}",
        2 => any::<String>().prop_map(|text| at_most(text, SHORT_MAX)),
        1 => Just("x".repeat(SHORT_MAX)),
        1 => Just(at_most("é".repeat(200), SHORT_MAX)),
        1 => Just(at_most("日本語🦀".repeat(40), SHORT_MAX)),
        1 => Just(String::new()),
        1 => Just("\0\r\n\t\u{7f}\u{feff}\u{202e}".to_owned()),
    ]
    .boxed()
}

fn short_string() -> BoxedStrategy<ShortString> {
    short_text().prop_map(ShortString::from).boxed()
}

/// Bytes that are often not UTF-8: lone continuation bytes, overlong
/// encodings, encoded surrogates.
fn hostile_bytes(max_len: usize) -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        3 => vec(any::<u8>(), 0..max_len),
        1 => Just(b"\xff\xfe\x80\xc0\xafA\xed\xa0\x80".to_vec()),
        1 => Just(b"shop:send_receipt:delay:\xff50ms".to_vec()),
        1 => any::<String>().prop_map(String::into_bytes),
    ]
    .boxed()
}

fn content_type() -> BoxedStrategy<String> {
    prop_oneof![
        2 => Just("application/json".to_owned()),
        1 => Just("APPLICATION/JSON".to_owned()),
        1 => Just("Application/Json ; charset=UTF-8".to_owned()),
        1 => Just("application/json;;;;".to_owned()),
        1 => Just("application/vnd.api+json".to_owned()),
        1 => Just("application/cloudevents+JSON; x=\"a;b\"".to_owned()),
        1 => Just("+json".to_owned()),
        1 => Just(" ; application/json".to_owned()),
        1 => Just("text/plain".to_owned()),
        1 => Just("application/xml".to_owned()),
        1 => Just("application/jsonp".to_owned()),
        1 => Just("application/ＪＳＯＮ".to_owned()),
        1 => Just(String::new()),
        2 => short_text(),
    ]
    .boxed()
}

fn content_encoding() -> BoxedStrategy<String> {
    prop_oneof![
        2 => Just("utf-8".to_owned()),
        1 => Just("UTF-8".to_owned()),
        1 => Just("Identity".to_owned()),
        1 => Just("gzip".to_owned()),
        1 => Just("utf8".to_owned()),
        1 => Just("İdentity".to_owned()),
        1 => Just(String::new()),
        2 => short_text(),
    ]
    .boxed()
}

fn edge_i64() -> BoxedStrategy<i64> {
    prop_oneof![
        Just(i64::MIN),
        Just(i64::MAX),
        Just(-1),
        Just(0),
        Just(1),
        Just(2),
        Just(i64::from(u32::MAX)),
        Just(i64::from(u32::MAX) + 1),
        any::<i64>(),
    ]
    .boxed()
}

fn edge_u64() -> BoxedStrategy<u64> {
    prop_oneof![
        Just(0),
        Just(1),
        Just(1_700_000_000),
        Just(i64::MAX as u64),
        Just(i64::MAX as u64 + 1),
        Just(u64::MAX),
        any::<u64>(),
    ]
    .boxed()
}

fn edge_f64() -> BoxedStrategy<f64> {
    prop_oneof![
        Just(f64::NAN),
        Just(f64::INFINITY),
        Just(f64::NEG_INFINITY),
        Just(-0.0),
        Just(f64::MIN_POSITIVE / 2.0),
        Just(f64::MAX),
        any::<f64>(),
    ]
    .boxed()
}

/// Every scalar a header can hold.
fn scalar() -> BoxedStrategy<AMQPValue> {
    prop_oneof![
        any::<bool>().prop_map(AMQPValue::Boolean),
        any::<i8>().prop_map(AMQPValue::ShortShortInt),
        any::<u8>().prop_map(AMQPValue::ShortShortUInt),
        any::<i16>().prop_map(AMQPValue::ShortInt),
        any::<u16>().prop_map(AMQPValue::ShortUInt),
        any::<i32>().prop_map(AMQPValue::LongInt),
        any::<u32>().prop_map(AMQPValue::LongUInt),
        edge_i64().prop_map(AMQPValue::LongLongInt),
        edge_f64().prop_map(|value| AMQPValue::Float(value as f32)),
        edge_f64().prop_map(AMQPValue::Double),
        (any::<u8>(), any::<u32>())
            .prop_map(|(scale, value)| AMQPValue::DecimalValue(DecimalValue { scale, value })),
        short_string().prop_map(AMQPValue::ShortString),
        hostile_bytes(64).prop_map(|bytes| AMQPValue::LongString(LongString::from(bytes))),
        edge_u64().prop_map(AMQPValue::Timestamp),
        vec(any::<u8>(), 0..64).prop_map(|bytes| AMQPValue::ByteArray(ByteArray::from(bytes))),
        Just(AMQPValue::Void),
    ]
    .boxed()
}

fn table_of(entries: Vec<(ShortString, AMQPValue)>) -> FieldTable {
    let mut table = FieldTable::default();
    for (name, value) in entries {
        table.insert(name, value);
    }
    table
}

/// Any header value: scalars, and tables and arrays of them.
fn value(depth: u32) -> BoxedStrategy<AMQPValue> {
    scalar()
        .prop_recursive(depth, 48, 4, |inner| {
            prop_oneof![
                vec(inner.clone(), 0..4)
                    .prop_map(|values| AMQPValue::FieldArray(FieldArray::from(values))),
                vec((short_string(), inner), 0..4)
                    .prop_map(|entries| AMQPValue::FieldTable(table_of(entries))),
            ]
        })
        .boxed()
}

/// A value nested exactly `depth` tables or arrays deep: `prop_recursive`
/// rarely goes to the bottom by itself.
fn deep(max_depth: usize) -> BoxedStrategy<AMQPValue> {
    (1..=max_depth, vec(any::<bool>(), max_depth), scalar())
        .prop_map(|(depth, kinds, leaf)| {
            kinds[..depth].iter().fold(leaf, |inner, &table| {
                if table {
                    AMQPValue::FieldTable(table_of(vec![("k".into(), inner)]))
                } else {
                    AMQPValue::FieldArray(FieldArray::from(vec![inner]))
                }
            })
        })
        .boxed()
}

fn long_string(bytes: impl Into<Vec<u8>>) -> AMQPValue {
    AMQPValue::LongString(LongString::from(bytes.into()))
}

/// What a publisher might put in one of hutch-rs's headers: the right type
/// with hostile values, or the wrong type.
fn hutch_value(max_depth: u32) -> BoxedStrategy<AMQPValue> {
    prop_oneof![
        3 => edge_i64().prop_map(AMQPValue::LongLongInt),
        1 => any::<u32>().prop_map(AMQPValue::LongUInt),
        1 => any::<i8>().prop_map(AMQPValue::ShortShortInt),
        2 => short_text().prop_map(long_string),
        1 => short_string().prop_map(AMQPValue::ShortString),
        1 => hostile_bytes(300).prop_map(long_string),
        // Far more than one frame holds: only a copy without it fits.
        1 => Just(long_string(vec![b'p'; 140_000])),
        1 => Just(long_string("é".repeat(3_000))),
        2 => value(max_depth),
    ]
    .boxed()
}

/// A queue the broker may name in an `x-death` record: the consumer's own
/// delay queues and near misses.
fn death_queue() -> BoxedStrategy<AMQPValue> {
    let name = prop_oneof![
        4 => (0_u64..100_000).prop_map(|ms| format!("{QUEUE}:delay:{ms}ms")),
        1 => Just(format!("{QUEUE}:delay:ms")),
        1 => Just(format!("{QUEUE}:delay:1e3ms")),
        1 => Just(format!("{QUEUE}:delay:٣ms")),
        1 => Just(format!("{QUEUE}:dead")),
        1 => Just(QUEUE.to_owned()),
        1 => short_text(),
    ];
    prop_oneof![
        4 => name.clone().prop_map(long_string),
        1 => name.prop_map(|name| AMQPValue::ShortString(at_most(name, SHORT_MAX).into())),
        1 => hostile_bytes(64).prop_map(long_string),
        1 => scalar(),
    ]
    .boxed()
}

/// One record of `x-death`, in the right shape or near it.
fn death_entry() -> BoxedStrategy<AMQPValue> {
    let reason = prop_oneof![
        4 => Just(long_string("expired")),
        1 => Just(AMQPValue::ShortString("expired".into())),
        1 => Just(long_string("EXPIRED")),
        1 => Just(long_string("rejected")),
        1 => scalar(),
    ];
    (
        proptest::option::weighted(0.9, death_queue()),
        proptest::option::weighted(0.9, reason),
        vec((short_string(), scalar()), 0..3),
    )
        .prop_map(|(queue, reason, mut extra)| {
            extra.extend(queue.map(|queue| ("queue".into(), queue)));
            extra.extend(reason.map(|reason| ("reason".into(), reason)));
            AMQPValue::FieldTable(table_of(extra))
        })
        .boxed()
}

/// `x-death` in the right shape and in wrong ones.
fn x_death(max_depth: u32) -> BoxedStrategy<AMQPValue> {
    let genuine = (0_u64..100_000, vec(death_entry(), 0..3)).prop_map(|(ms, older)| {
        let last = table_of(vec![
            ("queue".into(), long_string(format!("{QUEUE}:delay:{ms}ms"))),
            ("reason".into(), long_string("expired")),
            ("count".into(), AMQPValue::LongLongInt(1)),
        ]);
        let deaths: Vec<_> = std::iter::once(AMQPValue::FieldTable(last))
            .chain(older)
            .collect();
        AMQPValue::FieldArray(deaths.into())
    });
    prop_oneof![
        6 => genuine,
        6 => vec(death_entry(), 1..4).prop_map(|deaths| AMQPValue::FieldArray(deaths.into())),
        1 => Just(AMQPValue::FieldArray(FieldArray::default())),
        1 => death_entry(),
        1 => vec(scalar(), 0..3).prop_map(|values| AMQPValue::FieldArray(values.into())),
        1 => value(max_depth),
    ]
    .boxed()
}

/// A headers table: hutch-rs's names, the broker's, anything else.
fn headers_table(max_depth: u32) -> BoxedStrategy<FieldTable> {
    let name = prop_oneof![
        4 => proptest::sample::select(HUTCH_HEADERS.to_vec()).prop_map(ShortString::from),
        1 => Just("x-hutch-padding".into()),
        1 => Just("x-first-death-queue".into()),
        1 => Just("tenant".into()),
        2 => short_string(),
    ];
    let entry = prop_oneof![
        3 => (name, hutch_value(max_depth)),
        1 => (short_string(), value(max_depth)),
        1 => (short_string(), deep(max_depth as usize)),
    ];
    (
        vec(entry, 0..8),
        proptest::option::weighted(0.6, x_death(max_depth)),
    )
        .prop_map(|(entries, death)| {
            let mut table = table_of(entries);
            if let Some(death) = death {
                table.insert("x-death".into(), death);
            }
            table
        })
        .boxed()
}

/// Every property, each present or not.
fn properties(max_depth: u32) -> BoxedStrategy<BasicProperties> {
    let texts = (
        proptest::option::of(content_type()),
        proptest::option::of(content_encoding()),
        proptest::option::of(short_text()),
        proptest::option::of(short_text()),
        proptest::option::of(short_text()),
        proptest::option::of(prop_oneof![
            Just("ünïcödé-🦀-id".to_owned()),
            Just("\u{0}".to_owned()),
            short_text(),
        ]),
        proptest::option::of(short_text()),
        proptest::option::of(short_text()),
        proptest::option::of(short_text()),
        proptest::option::of(short_text()),
    );
    let others = (
        proptest::option::weighted(0.7, headers_table(max_depth)),
        proptest::option::of(any::<u8>()),
        proptest::option::of(any::<u8>()),
        proptest::option::of(edge_u64()),
    );
    (texts, others)
        .prop_map(
            |(
                (
                    content_type,
                    content_encoding,
                    correlation_id,
                    reply_to,
                    expiration,
                    message_id,
                    kind,
                    user_id,
                    app_id,
                    cluster_id,
                ),
                (headers, delivery_mode, priority, timestamp),
            )| {
                let mut properties = BasicProperties::default();
                macro_rules! set {
                ($($value:ident => $setter:ident),* $(,)?) => {
                    $(if let Some(value) = $value {
                        properties = properties.$setter(value.into());
                    })*
                };
            }
                set!(
                    content_type => with_content_type,
                    content_encoding => with_content_encoding,
                    correlation_id => with_correlation_id,
                    reply_to => with_reply_to,
                    expiration => with_expiration,
                    message_id => with_message_id,
                    kind => with_type,
                    user_id => with_user_id,
                    app_id => with_app_id,
                    cluster_id => with_cluster_id,
                    headers => with_headers,
                    delivery_mode => with_delivery_mode,
                    priority => with_priority,
                    timestamp => with_timestamp,
                );
                properties
            },
        )
        .boxed()
}

/// A JSON value, sometimes with `"fail": true` in it.
fn json() -> BoxedStrategy<serde_json::Value> {
    use serde_json::Value;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        any::<String>().prop_map(Value::String),
    ];
    let nested = leaf.prop_recursive(6, 32, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(Value::Array),
            vec(("[a-z]{0,6}", inner), 0..4)
                .prop_map(|entries| Value::Object(entries.into_iter().collect())),
        ]
    });
    (nested, any::<u64>(), any::<bool>(), any::<bool>())
        .prop_map(|(value, id, with_id, fail)| {
            let mut object = serde_json::Map::new();
            object.insert("payload".into(), value);
            if with_id {
                object.insert("id".into(), id.into());
            }
            if fail {
                object.insert("fail".into(), true.into());
            }
            Value::Object(object)
        })
        .boxed()
}

/// A body: random bytes, valid JSON (with or without a byte-order mark),
/// nesting past serde_json's limit of 128, numbers past f64, invalid UTF-8
/// inside strings, truncated JSON.
fn body() -> BoxedStrategy<Vec<u8>> {
    let nesting = |depth: usize, closed: bool| {
        let mut text = "[".repeat(depth);
        if closed {
            text.push_str(&"]".repeat(depth));
        }
        text.into_bytes()
    };
    prop_oneof![
        2 => hostile_bytes(256),
        4 => json().prop_map(|value| serde_json::to_vec(&value).unwrap()),
        1 => json().prop_map(|value| [b"\xEF\xBB\xBF".as_slice(), &serde_json::to_vec(&value).unwrap()].concat()),
        1 => Just(b"\xEF\xBB\xBF\xEF\xBB\xBF{}".to_vec()),
        1 => Just(nesting(10_000, false)),
        1 => (120_usize..140, any::<bool>()).prop_map(move |(depth, closed)| nesting(depth, closed)),
        1 => Just(nesting(100_000, true)),
        1 => Just(format!("{{\"id\":{}}}", "9".repeat(400)).into_bytes()),
        1 => Just(b"{\"id\":1e400,\"x\":-1e-400}".to_vec()),
        1 => Just(b"{\"id\":18446744073709551616}".to_vec()),
        1 => Just(b"{\"id\":1,\"s\":\"\xff\xfe\"}".to_vec()),
        1 => Just(b"{\"id\":1,\"s\":\"\\ud800\"}".to_vec()),
        1 => Just(b"{\"id\":1}\x00".to_vec()),
        1 => Just(Vec::new()),
        2 => (json(), any::<prop::sample::Index>()).prop_map(|(value, cut)| {
            let text = serde_json::to_vec(&value).unwrap();
            text[..cut.index(text.len())].to_vec()
        }),
    ]
    .boxed()
}

/// How a delivery reached the consumer: often through the default exchange
/// with its queue as the routing key, as a retry does.
fn route() -> BoxedStrategy<(String, String, String)> {
    prop_oneof![
        3 => Just((String::new(), QUEUE.to_owned(), QUEUE.to_owned())),
        2 => (short_text(), short_text()).prop_map(|(exchange, key)| (exchange, key, QUEUE.to_owned())),
        1 => short_text().prop_map(|queue| (String::new(), queue.clone(), queue)),
        1 => (short_text(), short_text(), short_text()),
    ]
    .boxed()
}

/// A handler's error text: short, long, multi-byte.
fn error_text() -> BoxedStrategy<String> {
    prop_oneof![
        3 => "[a-z ]{0,40}",
        1 => Just("é".repeat(3_000)),
        1 => Just("x".repeat(10_000)),
        1 => any::<String>(),
    ]
    .boxed()
}

fn failed_at() -> BoxedStrategy<SystemTime> {
    prop_oneof![
        Just(UNIX_EPOCH),
        any::<u32>().prop_map(|seconds| UNIX_EPOCH + Duration::from_secs(seconds.into())),
        any::<u32>().prop_map(|seconds| {
            UNIX_EPOCH
                .checked_sub(Duration::from_secs(seconds.into()))
                .unwrap_or(UNIX_EPOCH)
        }),
        Just(SystemTime::now()),
    ]
    .boxed()
}

#[derive(Debug)]
struct Case {
    route: (String, String, String),
    redelivered: bool,
    properties: BasicProperties,
    body: Vec<u8>,
    error: String,
    consumer: String,
    failed_at: SystemTime,
    capacity: usize,
}

fn case(max_depth: u32) -> BoxedStrategy<Case> {
    (
        route(),
        any::<bool>(),
        properties(max_depth),
        body(),
        error_text(),
        prop_oneof![Just("shop::send_receipt".to_owned()), short_text()],
        failed_at(),
        prop_oneof![
            Just(MIN_CAPACITY),
            Just(MAX_CAPACITY),
            MIN_CAPACITY..=MAX_CAPACITY
        ],
    )
        .prop_map(
            |(route, redelivered, properties, body, error, consumer, failed_at, capacity)| Case {
                route,
                redelivered,
                properties,
                body,
                error,
                consumer,
                failed_at,
                capacity,
            },
        )
        .boxed()
}

/// The typed message a handler might expect.
#[derive(Debug, serde::Deserialize)]
#[allow(dead_code, reason = "decoded, never read")]
struct Order {
    id: u64,
    #[serde(default)]
    fail: bool,
}

fn header<'a>(properties: &'a BasicProperties, name: &str) -> Option<&'a AMQPValue> {
    properties.headers().as_ref()?.inner().get(name)
}

/// The size of `copy` with only the headers hutch-rs writes on it (`ours`),
/// its error text emptied and the longest note of dropped headers: what no
/// fitting can take away.
fn floor_size(copy: &BasicProperties, ours: &[&str]) -> usize {
    let mut kept = FieldTable::default();
    for &name in ours {
        if let Some(value) = header(copy, name) {
            kept.insert(name.into(), value.clone());
        }
    }
    kept.insert(headers::ERROR.into(), long_string(""));
    kept.insert(
        headers::HEADERS_DROPPED.into(),
        long_string(format!(
            "{} header(s) of the original, {} bytes encoded, did not fit in one frame beside these",
            usize::MAX,
            usize::MAX
        )),
    );
    frame_size::properties_size(&copy.clone().with_headers(kept))
}

/// Fits `copy` in `capacity` and checks that it fits whenever hutch-rs's
/// own headers do, that it is untouched when it fitted already, and that
/// the headers named in `kept` survive.
/// Returns whether the copy had to be fitted.
fn check_fitted(copy: BasicProperties, ours: &[&str], capacity: usize, kept: &[&str]) -> bool {
    let size = frame_size::properties_size(&copy);
    assert!(size > 0, "lapin could not encode the copy");
    let floor = floor_size(&copy, ours);
    let fitted = copy::fit_in_frame(copy.clone(), capacity);
    let fitted_size = frame_size::properties_size(&fitted);
    if size <= capacity {
        // Debug: a NaN in a header is not equal to itself.
        assert_eq!(
            format!("{fitted:?}"),
            format!("{copy:?}"),
            "a copy that fits is sent as it is"
        );
    }
    // Every property but the headers is a short string or a number: under
    // 2,100 bytes in all, so hutch-rs's own headers are what can overflow.
    assert!(
        floor <= MIN_CAPACITY,
        "hutch-rs's own headers alone take {floor} bytes"
    );
    assert!(
        fitted_size <= capacity,
        "fitted copy of {fitted_size} bytes > {capacity} (own headers alone: {floor})"
    );
    for &name in kept {
        assert_eq!(header(&fitted, name), header(&copy, name), "{name}");
    }
    size > capacity
}

/// Which kinds of delivery a case was, to check that the generators reach
/// each of them.
#[derive(Debug, Default, Clone, Copy)]
struct Reached {
    own_retry: usize,
    decoded: usize,
    typed: usize,
    failed: usize,
    undecodable: usize,
    fitted: usize,
}

fn check(case: Case) -> Reached {
    let mut reached = Reached::default();
    let Case {
        route: (exchange, routing_key, queue),
        redelivered,
        properties,
        body,
        error,
        consumer,
        failed_at,
        capacity,
    } = case;
    assert!(frame_size::properties_size(&properties) > 0);

    let own_retry = provenance::is_own_retry(
        &exchange,
        &routing_key,
        properties.headers().as_ref(),
        &queue,
    );
    let envelope = Envelope::of_delivery(
        &exchange,
        &routing_key,
        redelivered,
        properties.clone(),
        &queue,
    );
    assert!(envelope.attempt >= 1);
    if !own_retry {
        assert_eq!(envelope.attempt, 1, "a first delivery is attempt 1");
        assert_eq!(envelope.exchange, exchange);
        assert_eq!(envelope.routing_key, routing_key);
    }
    let incoming = Incoming {
        body,
        envelope: Arc::new(envelope),
        span: tracing::Span::none(),
    };
    let envelope = &incoming.envelope;

    reached.own_retry += usize::from(own_retry);
    match Message::<serde_json::Value>::decode(&incoming) {
        Ok(message) => {
            reached.decoded += 1;
            assert_eq!(message.routing_key(), envelope.routing_key);
            assert_eq!(message.exchange(), envelope.exchange);
            assert_eq!(message.attempt(), envelope.attempt);
            assert_eq!(
                message.message_id(),
                properties.message_id().as_ref().map(ShortString::as_str)
            );
            let _ = message.correlation_id();
            let _ = message.timestamp();
            // The very values of the delivery (compared by address: a NaN
            // in a header is not equal to itself).
            assert!(std::ptr::eq(message.properties(), &envelope.properties));
            assert!(same(
                message.headers(),
                envelope.properties.headers().as_ref()
            ));
            for name in HUTCH_HEADERS.iter().chain(&["x-death", ""]) {
                assert!(same(
                    message.header(name),
                    header(&envelope.properties, name)
                ));
            }
            assert_eq!(message.redelivered(), redelivered);
            let _ = format!("{message:?}");
        }
        Err(error) => check_decode_error(&error),
    }

    let delivered = Delivered::detached(
        Incoming {
            body: incoming.body.clone(),
            envelope: incoming.envelope.clone(),
            span: tracing::Span::none(),
        },
        hutch(),
    );
    let handling = call_handler(
        |message: Message<Order>| async move {
            if message.fail {
                Err::<(), _>(std::io::Error::other("asked to fail"))
            } else {
                Ok(())
            }
        },
        &delivered,
    );
    let typed = Message::<Order>::decode(&incoming);
    match handling.now_or_never().expect("the handler never waits") {
        HandlerOutcome::Succeeded => {
            reached.typed += 1;
            assert!(!typed.unwrap().fail);
        }
        HandlerOutcome::Failed(_) => {
            reached.failed += 1;
            assert!(typed.unwrap().fail);
        }
        HandlerOutcome::Undecodable(error) => {
            reached.undecodable += 1;
            check_decode_error(&error);
            assert!(typed.is_err());
        }
    }

    let next_attempt = envelope.attempt.saturating_add(1);
    let retry = copy::retry_properties(envelope, next_attempt, &error);
    assert_eq!(
        header(&retry, headers::ATTEMPT),
        Some(&AMQPValue::LongLongInt(next_attempt.into()))
    );
    assert!(header(&retry, "x-death").is_none());
    let fitted = check_fitted(
        retry,
        &[
            headers::ATTEMPT,
            headers::ORIGINAL_EXCHANGE,
            headers::ORIGINAL_ROUTING_KEY,
        ],
        capacity,
        &[
            headers::ATTEMPT,
            headers::ORIGINAL_EXCHANGE,
            headers::ORIGINAL_ROUTING_KEY,
        ],
    );

    let dead = copy::DeadLetter {
        consumer: &consumer,
        queue: &queue,
        reason: headers::REASON_POISON,
        error: &error,
        failed_at,
    };
    let dead_letter = copy::dead_letter_properties(envelope, &dead);
    assert!(header(&dead_letter, headers::ATTEMPT).is_none());
    assert_eq!(
        header(&dead_letter, headers::ATTEMPTS),
        Some(&AMQPValue::LongLongInt(envelope.attempt.into()))
    );
    let dead_headers = [
        headers::ORIGINAL_EXCHANGE,
        headers::ORIGINAL_ROUTING_KEY,
        headers::ATTEMPTS,
        headers::CONSUMER,
        headers::QUEUE,
        headers::REASON,
        headers::FAILED_AT,
    ];
    let fitted = check_fitted(dead_letter, &dead_headers, capacity, &dead_headers) || fitted;
    reached.fitted += usize::from(fitted);
    reached
}

fn same<T>(left: Option<&T>, right: Option<&T>) -> bool {
    match (left, right) {
        (Some(left), Some(right)) => std::ptr::eq(left, right),
        (None, None) => true,
        _ => false,
    }
}

fn check_decode_error(error: &DecodeError) {
    let text = error.to_string();
    let first = text.chars().next().expect("a decode error says why");
    assert!(!first.is_uppercase(), "{text}");
}

fn config(cases: u32) -> Config {
    Config {
        cases,
        rng_algorithm: RngAlgorithm::ChaCha,
        // The same cases on every run: a failure in CI reproduces here;
        // PROPTEST_RNG_SEED=random explores others.
        // PROPTEST_RNG_SEED=<number> runs others.
        rng_seed: match std::env::var_os("PROPTEST_RNG_SEED") {
            Some(_) => Config::default().rng_seed,
            None => RngSeed::Fixed(0x68_7574_6368),
        },
        failure_persistence: None,
        max_shrink_iters: 2_000,
        ..Config::default()
    }
}

const CASES: u32 = 4_000;

#[test]
fn any_delivery_decodes_or_says_why_and_its_copies_fit() {
    let reached = std::cell::Cell::new(Reached::default());
    let mut runner = TestRunner::new(config(CASES));
    let result = runner.run(&case(20), |case| {
        let now = check(case);
        let total = reached.get();
        reached.set(Reached {
            own_retry: total.own_retry + now.own_retry,
            decoded: total.decoded + now.decoded,
            typed: total.typed + now.typed,
            failed: total.failed + now.failed,
            undecodable: total.undecodable + now.undecodable,
            fitted: total.fitted + now.fitted,
        });
        Ok(())
    });
    if let Err(failure) = result {
        panic!("{failure}");
    }
    // Each kind of delivery came up often (counted over the cases run
    // while shrinking too, which only adds).
    let reached = reached.get();
    let often = CASES as usize / 50;
    for (kind, count) in [
        (
            "retries from the consumer's own delay queue",
            reached.own_retry,
        ),
        ("JSON bodies", reached.decoded),
        ("bodies of the handler's type", reached.typed),
        ("handler failures", reached.failed),
        ("undecodable bodies", reached.undecodable),
        ("copies too large for the frame", reached.fitted),
    ] {
        assert!(
            count >= often,
            "only {count} case(s) of {kind}: {reached:?}"
        );
    }
}

/// The instance the fuzzed deliveries are "run" by: built once, never
/// connected.
fn hutch() -> &'static crate::Hutch {
    static HUTCH: std::sync::LazyLock<crate::Hutch> = std::sync::LazyLock::new(|| {
        crate::Hutch::builder()
            .build()
            .expect("the default settings build")
    });
    &HUTCH
}
