//! Bodies beyond JSON against the real broker: MessagePack and CBOR chosen
//! on publish and decoded by content type on consume, JSON with parameters,
//! raw bodies of any content type, and a content type no typed handler can
//! read going to the dead-letter queue with the reason.

use hutch_rs::{
    BoxError, Codec, Message, Outgoing, PublishOptions, RawBody, amqp::BasicProperties, consumer,
    headers,
};
use hutch_rs_tests::{
    JOURNAL, Scope, Seen, await_depth, header_text, init_logging, raw_publish, take_all,
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Order {
    id: u64,
    sku: String,
    note: Option<String>,
}

#[consumer(routing_key = "typed.#", group = "codecs", max_attempts = 1)]
async fn typed(msg: Message<Order>) -> Result<(), BoxError> {
    JOURNAL.record(Seen::of("codecs_typed", &msg));
    Ok(())
}

#[consumer(routing_key = "raw.#", group = "codecs")]
async fn raw(msg: Message<RawBody>) -> Result<(), BoxError> {
    let body: &[u8] = &msg;
    JOURNAL.record(Seen {
        consumer: "raw",
        routing_key: msg.routing_key().to_owned(),
        message_id: msg.message_id().map(str::to_owned),
        body: serde_json::Value::from(body.to_vec()),
        content_type: msg
            .properties()
            .content_type()
            .as_ref()
            .map(ToString::to_string),
        delivery_mode: *msg.properties().delivery_mode(),
        has_timestamp: msg.timestamp().is_some(),
        redelivered: msg.redelivered(),
        attempt: msg.attempt(),
        at: std::time::Instant::now(),
    });
    Ok(())
}

fn order(id: u64) -> Order {
    Order {
        id,
        sku: format!("sku-{id}"),
        note: (id % 2 == 0).then(|| "fragile".to_owned()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_codec_is_decoded_by_content_type_and_raw_bodies_arrive_as_sent() {
    init_logging();
    let scope = Scope::new("codecs");
    let hutch = scope.hutch("codecs");
    let running = hutch.start().await.expect("start");

    // Typed: one per codec, chosen on publish.
    let codecs = [
        (1, Codec::Json, "application/json"),
        (2, Codec::MessagePack, "application/msgpack"),
        (3, Codec::Cbor, "application/cbor"),
    ];
    for (id, codec, _) in codecs {
        hutch
            .publish_with(
                "typed.order",
                &order(id),
                PublishOptions::new().codec(codec),
            )
            .await
            .unwrap();
    }
    // A batch message in MessagePack, and JSON with a charset parameter.
    for outcome in hutch
        .publish_batch(vec![
            Outgoing::encoded("typed.order", &order(4), Codec::MessagePack).unwrap(),
        ])
        .await
    {
        outcome.unwrap();
    }
    hutch
        .publish_bytes(
            "typed.order",
            serde_json::to_vec(&order(5)).unwrap(),
            "application/json; charset=utf-8",
            PublishOptions::new(),
        )
        .await
        .unwrap();

    let seen = JOURNAL.wait_for("codecs_typed", 5).await;
    let mut by_id: Vec<(u64, Option<String>)> = seen
        .iter()
        .map(|seen| {
            let decoded: Order = serde_json::from_value(seen.body.clone()).unwrap();
            assert_eq!(decoded, order(decoded.id), "decoded intact");
            (decoded.id, seen.content_type.clone())
        })
        .collect();
    by_id.sort();
    assert_eq!(
        by_id,
        [
            (1, Some("application/json".to_owned())),
            (2, Some("application/msgpack".to_owned())),
            (3, Some("application/cbor".to_owned())),
            (4, Some("application/msgpack".to_owned())),
            (5, Some("application/json; charset=utf-8".to_owned())),
        ]
    );

    // Raw: a protobuf producer's bytes, not UTF-8, and a compressed body.
    let protobuf = vec![0x08, 0x96, 0x01, 0xff, 0x00, 0x12];
    hutch
        .publish_bytes(
            "raw.event",
            protobuf.clone(),
            "application/x-protobuf",
            PublishOptions::new(),
        )
        .await
        .unwrap();
    raw_publish(
        &scope.exchange,
        "raw.gzipped",
        b"\x1f\x8b\x08\x00",
        BasicProperties::default().with_content_encoding("gzip".into()),
    )
    .await;
    let raw = JOURNAL.wait_for("raw", 2).await;
    let bodies: Vec<(String, serde_json::Value)> = raw
        .iter()
        .map(|seen| (seen.routing_key.clone(), seen.body.clone()))
        .collect();
    assert!(
        bodies.contains(&("raw.event".to_owned(), serde_json::Value::from(protobuf))),
        "{bodies:?}"
    );
    assert!(
        bodies.contains(&(
            "raw.gzipped".to_owned(),
            serde_json::Value::from(b"\x1f\x8b\x08\x00".to_vec())
        )),
        "{bodies:?}"
    );
    running.shutdown().await.unwrap();
    hutch.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_content_type_a_typed_handler_cannot_read_is_dead_lettered_with_the_reason() {
    init_logging();
    let scope = Scope::new("codec-dead");
    let hutch = scope.hutch("codecs");
    let running = hutch.start().await.expect("start");
    hutch
        .publish_bytes(
            "typed.bad",
            b"<order id=\"1\"/>".to_vec(),
            "text/xml",
            PublishOptions::new(),
        )
        .await
        .unwrap();
    // MessagePack bytes labelled CBOR: a body that does not parse.
    let mislabelled = rmp_serde_bytes();
    hutch
        .publish_bytes(
            "typed.bad",
            mislabelled,
            "application/cbor",
            PublishOptions::new(),
        )
        .await
        .unwrap();

    let dead_queue = format!("{}:dead", scope.queue("typed"));
    await_depth(&dead_queue, 2).await;
    let mut reasons: Vec<(String, String)> = take_all(&dead_queue)
        .await
        .iter()
        .map(|dead| {
            (
                header_text(&dead.properties, headers::REASON),
                header_text(&dead.properties, headers::ERROR),
            )
        })
        .collect();
    reasons.sort();
    assert_eq!(reasons.len(), 2);
    for (reason, _) in &reasons {
        assert_eq!(reason, headers::REASON_POISON);
    }
    assert!(
        reasons
            .iter()
            .any(|(_, error)| error.contains("unsupported content type \"text/xml\"")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|(_, error)| error.contains("not valid application/cbor")),
        "{reasons:?}"
    );
    assert!(
        JOURNAL
            .by("codecs_typed")
            .iter()
            .all(|seen| seen.routing_key != "typed.bad"),
        "the handler never ran"
    );
    running.shutdown().await.unwrap();
    hutch.close().await.unwrap();
}

/// An order in MessagePack, to label as something else.
fn rmp_serde_bytes() -> Vec<u8> {
    // fixmap(1) { "id": 1 } written by hand: the test needs no encoder.
    vec![0x81, 0xa2, b'i', b'd', 0x01]
}
