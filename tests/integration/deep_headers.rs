//! Headers nested deeply enough to overflow a parser's stack cannot take
//! the process down: hutch-rs replaces them as they arrive and dead-letters
//! the message as poison, without calling the handler or losing its
//! connection. (amq-protocol parses headers recursively on lapin's I/O
//! thread; without hutch-rs's sanitizer this test binary aborts.)

use std::{
    io::{Read, Write},
    net::TcpStream,
    sync::{LazyLock, Mutex},
};

use amq_protocol::{
    frame::{AMQPFrame, gen_frame, parse_frame},
    protocol::{AMQPClass, basic, channel, confirm, connection},
    types::FieldTable,
};
use hutch_rs::{BoxError, Message, consumer, headers};
use hutch_rs_tests::{JOURNAL, Scope, Seen, await_depth, broker, queue_depth, take_all};
use lapin::types::AMQPValue;

#[consumer(routing_key = "deep.#", group = "deepest")]
async fn deepest(msg: Message<serde_json::Value>) -> Result<(), BoxError> {
    record("deepest", &msg);
    Ok(())
}

#[consumer(routing_key = "deep.#", group = "around_the_limit")]
async fn around_the_limit(msg: Message<serde_json::Value>) -> Result<(), BoxError> {
    record("around_the_limit", &msg);
    Ok(())
}

/// A message id and the headers its handler saw.
type Handled = (String, Option<FieldTable>);

/// The headers each handler saw.
static HEADERS: LazyLock<Mutex<Vec<Handled>>> = LazyLock::new(Mutex::default);

fn record(consumer: &'static str, msg: &Message<serde_json::Value>) {
    HEADERS.lock().unwrap().push((
        msg.message_id().unwrap_or_default().to_owned(),
        msg.headers().cloned(),
    ));
    JOURNAL.record(Seen::of(consumer, msg));
}

/// How many arrays deep the value of header `deep` nests (walked in a
/// loop: it may be deep).
fn array_depth(headers: &FieldTable) -> usize {
    let mut value = headers.inner().get("deep");
    let mut depth = 0;
    while let Some(AMQPValue::FieldArray(array)) = value {
        depth += 1;
        value = array.as_slice().first();
    }
    depth
}

/// A publisher that writes a content header by hand. amq-protocol (and so
/// lapin) would recurse over the nested value while writing it, on lapin's
/// own I/O thread, and overflow it: only the nested header is hand-encoded,
/// every method frame is amq-protocol's.
struct HandPublisher {
    socket: TcpStream,
    frame_max: u32,
}

impl HandPublisher {
    /// Connects to the test node as guest and opens channel 1 in confirm
    /// mode.
    fn connect() -> Self {
        let uri: lapin::uri::AMQPUri = broker().amqp_uri().parse().unwrap();
        let socket = TcpStream::connect(("127.0.0.1", uri.authority.port)).expect("connect");
        let mut publisher = Self {
            socket,
            frame_max: 0,
        };
        publisher.socket.write_all(b"AMQP\x00\x00\x09\x01").unwrap();
        publisher.expect(|class| {
            matches!(
                class,
                AMQPClass::Connection(connection::AMQPMethod::Start(_))
            )
        });
        publisher.send_method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
                client_properties: FieldTable::default(),
                mechanism: "PLAIN".into(),
                response: "\0guest\0guest".into(),
                locale: "en_US".into(),
            })),
        );
        let tune = publisher.expect(|class| {
            matches!(
                class,
                AMQPClass::Connection(connection::AMQPMethod::Tune(_))
            )
        });
        let AMQPClass::Connection(connection::AMQPMethod::Tune(tune)) = tune else {
            unreachable!()
        };
        publisher.frame_max = tune.frame_max;
        publisher.send_method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
                channel_max: tune.channel_max,
                frame_max: tune.frame_max,
                heartbeat: 0,
            })),
        );
        publisher.send_method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Open(connection::Open {
                virtual_host: "/".into(),
            })),
        );
        publisher.expect(|class| {
            matches!(
                class,
                AMQPClass::Connection(connection::AMQPMethod::OpenOk(_))
            )
        });
        publisher.send_method(
            1,
            AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
        );
        publisher
            .expect(|class| matches!(class, AMQPClass::Channel(channel::AMQPMethod::OpenOk(_))));
        publisher.send_method(
            1,
            AMQPClass::Confirm(confirm::AMQPMethod::Select(confirm::Select {
                nowait: false,
            })),
        );
        publisher
            .expect(|class| matches!(class, AMQPClass::Confirm(confirm::AMQPMethod::SelectOk(_))));
        publisher
    }

    /// The deepest array nesting one content header frame can carry for a
    /// message with `message_id`.
    fn deepest_possible(&self, message_id: &str) -> usize {
        let frame_overhead = 8;
        let fixed = 2 + 2 + 8 + 2 + (1 + message_id.len()) + 4 + (1 + 4);
        (self.frame_max as usize - frame_overhead - fixed) / 5
    }

    /// Publishes a JSON body whose only header, `deep`, is `depth` nested
    /// empty arrays, and waits for the broker's confirm.
    fn publish_nested(
        &mut self,
        exchange: &str,
        routing_key: &str,
        message_id: &str,
        depth: usize,
    ) {
        let body = br#"{"nested":true}"#;
        self.send_method(
            1,
            AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
                exchange: exchange.into(),
                routing_key: routing_key.into(),
                mandatory: false,
                immediate: false,
            })),
        );
        let mut payload = Vec::new();
        payload.extend_from_slice(&60_u16.to_be_bytes());
        payload.extend_from_slice(&0_u16.to_be_bytes());
        payload.extend_from_slice(&(body.len() as u64).to_be_bytes());
        // Property flags: headers (bit 13) and message-id (bit 7).
        payload.extend_from_slice(&((1_u16 << 13) | (1 << 7)).to_be_bytes());
        payload.extend_from_slice(&((1 + 4 + 5 * depth) as u32).to_be_bytes());
        payload.push(4);
        payload.extend_from_slice(b"deep");
        for level in 0..depth {
            payload.push(b'A');
            payload.extend_from_slice(&((5 * (depth - level - 1)) as u32).to_be_bytes());
        }
        payload.push(message_id.len() as u8);
        payload.extend_from_slice(message_id.as_bytes());
        assert!(
            payload.len() + 8 <= self.frame_max as usize,
            "fits one frame"
        );
        let mut frame = vec![2, 0, 1];
        frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        frame.extend_from_slice(&payload);
        frame.push(0xCE);
        self.socket.write_all(&frame).unwrap();
        self.send(&AMQPFrame::Body(1, body.to_vec()));
        self.expect(|class| matches!(class, AMQPClass::Basic(basic::AMQPMethod::Ack(_))));
    }

    fn close(mut self) {
        self.send_method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
                reply_code: 200,
                reply_text: "done".into(),
                class_id: 0,
                method_id: 0,
            })),
        );
        self.expect(|class| {
            matches!(
                class,
                AMQPClass::Connection(connection::AMQPMethod::CloseOk(_))
            )
        });
    }

    fn send_method(&mut self, channel: u16, method: AMQPClass) {
        self.send(&AMQPFrame::Method(channel, method));
    }

    fn send(&mut self, frame: &AMQPFrame) {
        let (bytes, _) = gen_frame(frame)(Vec::new().into())
            .expect("serialize")
            .into_inner();
        self.socket.write_all(&bytes).unwrap();
    }

    /// Reads method frames until one is `wanted` (the broker's frames here
    /// are shallow: amq-protocol may read them); panics on anything that
    /// says the broker refused.
    fn expect(&mut self, wanted: impl Fn(&AMQPClass) -> bool) -> AMQPClass {
        loop {
            let mut header = [0_u8; 7];
            self.socket.read_exact(&mut header).expect("a frame");
            let size = u32::from_be_bytes(header[3..7].try_into().unwrap()) as usize;
            let mut frame = header.to_vec();
            frame.resize(7 + size + 1, 0);
            self.socket.read_exact(&mut frame[7..]).expect("a frame");
            match parse_frame(frame.as_slice()) {
                Ok((_, AMQPFrame::Method(_, class))) if wanted(&class) => return class,
                Ok((_, AMQPFrame::Method(_, class))) => {
                    assert!(
                        !matches!(
                            class,
                            AMQPClass::Connection(connection::AMQPMethod::Close(_))
                                | AMQPClass::Channel(channel::AMQPMethod::Close(_))
                                | AMQPClass::Basic(basic::AMQPMethod::Nack(_))
                        ),
                        "the broker refused: {class:?}"
                    );
                }
                Ok(_) => {}
                Err(error) => panic!("unreadable frame from the broker: {error:?}"),
            }
        }
    }
}

/// Publishes hand-encoded nested headers from a blocking thread.
async fn publish_nested(scope: &Scope, messages: Vec<(&'static str, Option<usize>)>) -> Vec<usize> {
    let exchange = scope.exchange.clone();
    tokio::task::spawn_blocking(move || {
        let mut publisher = HandPublisher::connect();
        let depths = messages
            .into_iter()
            .map(|(id, depth)| {
                let depth = depth.unwrap_or_else(|| publisher.deepest_possible(id));
                publisher.publish_nested(&exchange, "deep.headers", id, depth);
                depth
            })
            .collect();
        publisher.close();
        depths
    })
    .await
    .expect("publisher thread")
}

/// What a dead letter of a message with rejected headers must carry.
fn assert_rejected_dead_letter(message: &lapin::message::BasicGetMessage, id: &str) {
    let properties = &message.delivery.properties;
    assert_eq!(
        properties.message_id().as_ref().map(|id| id.as_str()),
        Some(id),
        "the other properties are kept"
    );
    let dead_headers = properties.headers().as_ref().expect("headers");
    let text = |name| match dead_headers.inner().get(name) {
        Some(AMQPValue::LongString(text)) => String::from_utf8_lossy(text.as_bytes()).into_owned(),
        other => panic!("{name}: {other:?}"),
    };
    assert_eq!(text(headers::REASON), headers::REASON_POISON);
    let note = text(headers::REJECTED_HEADERS);
    assert!(note.contains("deeper than 64 levels"), "{note}");
    assert!(text(headers::ERROR).contains("rejected headers"));
    assert!(
        !dead_headers.inner().contains_key("deep"),
        "the nested header is gone: {dead_headers:?}"
    );
    assert_eq!(
        message.delivery.data, br#"{"nested":true}"#,
        "the body is kept"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_nested_as_deep_as_a_frame_allows_is_dead_lettered_and_the_process_lives() {
    let scope = Scope::new("deepest");
    let hutch = scope.hutch("deepest");
    let running = hutch.start().await.expect("start");
    let queue = scope.queue("deepest");

    let depths = publish_nested(&scope, vec![("deepest-1", None)]).await;
    assert!(depths[0] > 26_000, "as deep as 128 KiB allow: {depths:?}");
    hutch
        .publish("deep.after", &serde_json::json!({ "normal": true }))
        .await
        .unwrap();

    // Still here (the nested message aborted the process before), and the
    // handler saw only the normal message.
    let seen = JOURNAL.wait_for("deepest", 1).await;
    assert_eq!(seen[0].body, serde_json::json!({ "normal": true }));
    assert_eq!(
        hutch.status().connection("consume").unwrap().connects,
        1,
        "the consume connection was never lost"
    );
    // The dead-letter copy can still be on its way when the normal message
    // has been handled: RabbitMQ 4.0 takes seconds to deliver a header this
    // deep, so both messages arrive together, and a shutdown then puts the
    // unforwarded original back in its queue.
    await_depth(&format!("{queue}:dead"), 1).await;
    running.shutdown().await.expect("clean shutdown");
    assert_eq!(JOURNAL.by("deepest").len(), 1);
    assert_eq!(queue_depth(&queue), 0);

    let dead = take_all(&format!("{queue}:dead")).await;
    assert_eq!(dead.len(), 1, "dead-lettered once");
    assert_rejected_dead_letter(&dead[0], "deepest-1");
    hutch.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_past_the_limit_are_dead_lettered_and_shallow_ones_reach_the_handler_intact() {
    let scope = Scope::new("limit");
    let hutch = scope.hutch("around_the_limit");
    let running = hutch.start().await.expect("start");
    let queue = scope.queue("around_the_limit");

    publish_nested(
        &scope,
        vec![
            ("depth-65", Some(65)),
            ("depth-10", Some(10)),
            ("depth-64", Some(64)),
        ],
    )
    .await;
    hutch
        .publish("deep.after", &serde_json::json!({ "normal": true }))
        .await
        .unwrap();

    let seen = JOURNAL.wait_for("around_the_limit", 3).await;
    let ids: Vec<_> = seen.iter().map(|s| s.message_id.clone().unwrap()).collect();
    assert_eq!(ids[..2], ["depth-10", "depth-64"]);
    assert_eq!(seen[2].body, serde_json::json!({ "normal": true }));
    let handled = HEADERS.lock().unwrap().clone();
    for (id, depth) in [("depth-10", 10), ("depth-64", 64)] {
        let (_, headers) = handled.iter().find(|(seen, _)| seen == id).unwrap();
        let headers = headers.as_ref().expect("headers");
        assert_eq!(array_depth(headers), depth, "{id}: headers intact");
        assert!(!headers.inner().contains_key(headers::REJECTED_HEADERS));
    }
    assert_eq!(hutch.status().connection("consume").unwrap().connects, 1);
    running.shutdown().await.expect("clean shutdown");
    assert_eq!(JOURNAL.by("around_the_limit").len(), 3);
    assert_eq!(queue_depth(&queue), 0);

    let dead = take_all(&format!("{queue}:dead")).await;
    assert_eq!(dead.len(), 1, "only depth 65 is dead-lettered");
    assert_rejected_dead_letter(&dead[0], "depth-65");
    hutch.close().await.unwrap();
}
