//! A hostile publisher against a running application: crafted properties,
//! headers and bodies published with a plain client. Nothing a message
//! carries may crash the process, block the consumer, or forge what the
//! handler sees; each message is handled or dead-lettered with a reason.

use std::time::Duration;

use hutch_rs::{BoxError, Message, consumer, headers};
use hutch_rs_tests::{JOURNAL, PATIENCE, Scope, Seen, queue_depth, raw_publish, take_all};
use lapin::{
    BasicProperties,
    types::{AMQPValue, FieldTable, LongString},
};

/// Fails every attempt: its messages are retried once, then dead-lettered.
#[consumer(
    routing_key = "hostile.#",
    group = "hostile",
    max_attempts = 2,
    retry_min_delay = "50ms",
    retry_max_delay = "50ms"
)]
async fn suspicious(msg: Message<serde_json::Value>) -> Result<(), BoxError> {
    JOURNAL.record(Seen::of("suspicious", &msg));
    Err(std::io::Error::other("refused on principle").into())
}

/// Succeeds, reading every property a handler might read.
#[consumer(routing_key = "odd.#", group = "tolerant")]
async fn tolerant(msg: Message<serde_json::Value>) -> Result<(), BoxError> {
    let _ = (msg.timestamp(), msg.headers(), msg.correlation_id());
    JOURNAL.record(Seen::of("tolerant", &msg));
    Ok(())
}

fn long_string(text: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(text))
}

async fn wait_for_depth(queue: &str, depth: u64) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let name = queue.to_owned();
        let now = tokio::task::spawn_blocking(move || queue_depth(&name))
            .await
            .unwrap();
        if now == depth {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{queue} holds {now}, expected {depth}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn header_text(headers: &FieldTable, name: &str) -> Option<String> {
    match headers.inner().get(name)? {
        AMQPValue::LongString(text) => Some(String::from_utf8_lossy(text.as_bytes()).into_owned()),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_retry_headers_on_a_first_delivery_count_for_nothing() {
    hutch_rs_tests::init_logging();
    let scope = Scope::new("forged");
    let hutch = scope.hutch("hostile");
    let running = hutch.start().await.expect("start");
    let queue = scope.queue("suspicious");

    // Claims to be the last attempt, from another route; and one claiming
    // an attempt past any max_attempts.
    for (id, attempt) in [("forged-2", 2_i64), ("forged-max", 4_294_967_295)] {
        let mut forged = FieldTable::default();
        forged.insert(headers::ATTEMPT.into(), AMQPValue::LongLongInt(attempt));
        forged.insert(
            headers::ORIGINAL_ROUTING_KEY.into(),
            long_string("admin.grant"),
        );
        forged.insert(headers::ORIGINAL_EXCHANGE.into(), long_string("elsewhere"));
        let properties = BasicProperties::default()
            .with_message_id(id.into())
            .with_headers(forged);
        raw_publish(&scope.exchange, "hostile.order", b"{}", properties).await;
    }
    // Each is handled twice, as attempts 1 and 2, on its real route: the
    // forged count neither shortened its retries nor showed through.
    wait_for_depth(&format!("{queue}:dead"), 2).await;
    let seen = JOURNAL.by("suspicious");
    running.shutdown().await.expect("clean shutdown");
    for id in ["forged-2", "forged-max"] {
        let its: Vec<_> = seen
            .iter()
            .filter(|seen| seen.message_id.as_deref() == Some(id))
            .collect();
        let attempts: Vec<u32> = its.iter().map(|seen| seen.attempt).collect();
        assert_eq!(attempts, [1, 2], "{id}");
        for seen in its {
            assert_eq!(seen.routing_key, "hostile.order", "{id}");
        }
    }
    let dead = take_all(&format!("{queue}:dead")).await;
    for message in &dead {
        let headers = message.properties.headers().as_ref().unwrap();
        assert_eq!(
            headers.inner().get(headers::ATTEMPTS),
            Some(&AMQPValue::LongLongInt(2))
        );
        assert_eq!(
            header_text(headers, headers::ORIGINAL_ROUTING_KEY).as_deref(),
            Some("hostile.order")
        );
        assert_eq!(
            header_text(headers, headers::ORIGINAL_EXCHANGE).as_deref(),
            Some(scope.exchange.as_str())
        );
    }
    hutch.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_that_fill_the_frame_still_reach_the_dead_letter_queue() {
    hutch_rs_tests::init_logging();
    let scope = Scope::new("full-frame");
    let hutch = scope.hutch("hostile");
    let running = hutch.start().await.expect("start");
    let queue = scope.queue("suspicious");

    // RabbitMQ's frame_max is 131,072 bytes; the content header frame takes
    // 20 bytes of it besides the properties. Leave ~100 bytes: the copy's
    // own x-hutch-* headers (about 300 bytes) do not fit beside them.
    // The properties: flags (2), message id (1 + 15), the table's length
    // (4), "tenant" (1 + 6, type 1, length 4, 4) and "padding" (1 + 7, type
    // 1, length 4) before its text.
    let properties_len = 131_072 - 20 - 100;
    let padding_len = properties_len - (2 + 16 + 4 + 16 + 13);
    let mut full = FieldTable::default();
    full.insert("tenant".into(), long_string("acme"));
    full.insert(
        "padding".into(),
        AMQPValue::LongString(LongString::from(vec![b'p'; padding_len])),
    );
    let properties = BasicProperties::default()
        .with_message_id("fills-the-frame".into())
        .with_headers(full);
    raw_publish(&scope.exchange, "hostile.big", b"{}", properties).await;

    // Retried once (the retry copy fitted too), then dead-lettered; and the
    // consumer and its publishing connection carry on with the next one.
    wait_for_depth(&format!("{queue}:dead"), 1).await;
    raw_publish(
        &scope.exchange,
        "hostile.small",
        b"{}",
        BasicProperties::default().with_message_id("after".into()),
    )
    .await;
    wait_for_depth(&format!("{queue}:dead"), 2).await;
    let seen = JOURNAL.by("suspicious");
    let big: Vec<u32> = seen
        .iter()
        .filter(|seen| seen.message_id.as_deref() == Some("fills-the-frame"))
        .map(|seen| seen.attempt)
        .collect();
    assert_eq!(big, [1, 2], "retried once, not looping");
    let status = hutch.status();
    assert_eq!(
        status.connection("publish").unwrap().connects,
        1,
        "the publishing connection was never closed by the broker: {status:?}"
    );
    running.shutdown().await.expect("clean shutdown");

    let dead = take_all(&format!("{queue}:dead")).await;
    let copy = dead
        .iter()
        .find(|message| {
            message.properties.message_id().as_ref().unwrap().as_str() == "fills-the-frame"
        })
        .expect("the big one is in the dead-letter queue");
    let headers = copy.properties.headers().as_ref().unwrap();
    assert!(!headers.contains_key("padding"));
    assert_eq!(
        header_text(headers, headers::REASON).as_deref(),
        Some("attempts-exhausted")
    );
    let dropped = header_text(headers, headers::HEADERS_DROPPED).expect("says what was dropped");
    assert!(dropped.starts_with("2 header(s)"), "{dropped}");
    assert_eq!(queue_depth(&queue), 0);
    hutch.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_but_valid_properties_and_bodies_are_handled() {
    hutch_rs_tests::init_logging();
    let scope = Scope::new("odd");
    let hutch = scope.hutch("tolerant");
    let running = hutch.start().await.expect("start");
    let queue = scope.queue("tolerant");

    let odd = [
        (
            "far-future",
            b"{}".to_vec(),
            BasicProperties::default().with_timestamp(u64::MAX),
        ),
        (
            "byte-order-mark",
            b"\xEF\xBB\xBF{\"a\":1}".to_vec(),
            BasicProperties::default().with_content_type("application/json".into()),
        ),
    ];
    for (id, body, properties) in odd {
        raw_publish(
            &scope.exchange,
            "odd.one",
            &body,
            properties.with_message_id(id.into()),
        )
        .await;
    }
    let seen = JOURNAL.wait_for("tolerant", 2).await;
    running.shutdown().await.expect("clean shutdown");
    let far_future = seen
        .iter()
        .find(|seen| seen.message_id.as_deref() == Some("far-future"))
        .unwrap();
    assert!(
        !far_future.has_timestamp,
        "no time past what SystemTime holds"
    );
    let bom = seen
        .iter()
        .find(|seen| seen.message_id.as_deref() == Some("byte-order-mark"))
        .unwrap();
    assert_eq!(bom.body["a"], 1);
    assert_eq!(queue_depth(&queue), 0);
    assert_eq!(queue_depth(&format!("{queue}:dead")), 0);
    hutch.close().await.unwrap();
}
