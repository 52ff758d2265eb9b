//! Request and reply over direct reply-to, against the real broker: every
//! request gets its own reply, and every way it can fail is a prompt, clear
//! error. The replier is a plain lapin consumer, as another application
//! would write it: it answers to the request's `reply_to` through the
//! default exchange with the request's correlation id.

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use futures_util::{StreamExt, future::join_all};
use hutch_rs::{Error, Hutch, HutchBuilder, testing::Broker};
use hutch_rs_tests::{
    PATIENCE, Scope, bound_queue_on, broker, init_logging, isolated_broker, raw_channel_to,
};
use lapin::{
    BasicProperties, Channel, Connection,
    message::Delivery,
    options::{BasicConsumeOptions, BasicPublishOptions},
    types::FieldTable,
};
use serde::{Deserialize, Serialize};

/// What the tests ask for.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct Quote {
    sku: u64,
}

/// What a fast request that fails must take at most: far below every
/// request timeout these tests set for it.
const AT_ONCE: Duration = Duration::from_secs(5);

/// Requests as a replier application sees them: a durable queue bound to
/// the scope's exchange, consumed without acknowledgements.
struct Inbox {
    _connection: Connection,
    channel: Channel,
    requests: lapin::Consumer,
}

impl Inbox {
    async fn open(broker: &Broker, scope: &Scope, name: &str, routing_key: &str) -> Self {
        let queue = bound_queue_on(broker, scope, name, routing_key, FieldTable::default()).await;
        Self::consume(broker, &queue).await
    }

    /// Consumes `queue`, which exists already.
    async fn consume(broker: &Broker, queue: &str) -> Self {
        let (connection, channel) = raw_channel_to(broker).await;
        channel
            .confirm_select(Default::default())
            .await
            .expect("confirm mode");
        let requests = channel
            .basic_consume(
                queue.into(),
                "replier".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("consume the requests");
        Self {
            _connection: connection,
            channel,
            requests,
        }
    }

    /// The next request; panics if none comes within [`PATIENCE`].
    async fn next(&mut self) -> Delivery {
        tokio::time::timeout(PATIENCE, self.requests.next())
            .await
            .expect("a request arrives")
            .expect("the consumer is open")
            .expect("a delivery")
    }

    /// Publishes `body` as the reply to `request`, confirmed.
    async fn reply(&self, request: &Delivery, body: &[u8]) {
        let reply_to = request
            .properties
            .reply_to()
            .clone()
            .expect("a request says where to reply");
        let mut properties =
            BasicProperties::default().with_content_type("application/json".into());
        if let Some(correlation_id) = request.properties.correlation_id() {
            properties = properties.with_correlation_id(correlation_id.clone());
        }
        let confirm = self
            .channel
            .basic_publish(
                "".into(),
                reply_to,
                BasicPublishOptions::default(),
                body,
                properties,
            )
            .await
            .expect("publish the reply");
        assert!(confirm.await.expect("the reply's confirm").is_ack());
    }

    /// Answers each request with `answer(request)`, as requests come.
    fn answer_each(
        mut self,
        answer: impl Fn(Quote) -> serde_json::Value + Send + 'static,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            while let Some(Ok(request)) = self.requests.next().await {
                let quote: Quote = serde_json::from_slice(&request.data).expect("a quote");
                let body = serde_json::to_vec(&answer(quote)).unwrap();
                self.reply(&request, &body).await;
            }
        })
    }
}

fn quote(request: &Delivery) -> Quote {
    serde_json::from_slice(&request.data).expect("the request is JSON")
}

fn builder(broker: &Broker, scope: &Scope) -> HutchBuilder {
    Hutch::builder()
        .uri(broker.amqp_uri())
        .exchange(&scope.exchange)
        .namespace(&scope.namespace)
        .group("none")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_resolves_with_its_reply_through_direct_reply_to() {
    init_logging();
    let scope = Scope::new("rpc-basic");
    let mut inbox = Inbox::open(broker(), &scope, "quotes", "prices.quote").await;
    let hutch = builder(broker(), &scope).build().unwrap();
    let replier = tokio::spawn(async move {
        let request = inbox.next().await;
        let properties = &request.properties;
        let reply_to = properties.reply_to().as_ref().unwrap().as_str();
        assert!(
            reply_to.starts_with("amq.rabbitmq.reply-to."),
            "the broker rewrote the direct reply-to into this channel's address: {reply_to}"
        );
        let correlation_id = properties.correlation_id().as_ref().unwrap().as_str();
        assert!(
            uuid::Uuid::parse_str(correlation_id).is_ok(),
            "{correlation_id}"
        );
        assert_eq!(
            properties.content_type().as_ref().unwrap().as_str(),
            "application/json"
        );
        assert!(properties.message_id().is_some());
        let Quote { sku } = quote(&request);
        inbox
            .reply(&request, &serde_json::to_vec(&(sku * 100)).unwrap())
            .await;
    });
    let total: u64 = hutch
        .request("prices.quote", &Quote { sku: 7 })
        .await
        .expect("answered");
    assert_eq!(total, 700);
    replier.await.unwrap();
    assert_eq!(hutch.status().late_replies, 0);
    hutch.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_sent_by_another_hutch_reaches_its_request() {
    init_logging();
    let scope = Scope::new("rpc-hutch");
    let mut inbox = Inbox::open(broker(), &scope, "quotes", "prices.quote").await;
    let requester = builder(broker(), &scope).build().unwrap();
    let replier = builder(broker(), &scope).build().unwrap();
    let replying = tokio::spawn({
        let replier = replier.clone();
        async move {
            for _ in 0..2 {
                let request = inbox.next().await;
                let Quote { sku } = quote(&request);
                let properties = &request.properties;
                replier
                    .__send_reply(
                        properties.reply_to().as_ref().unwrap().as_str(),
                        properties.correlation_id().as_ref().map(|id| id.as_str()),
                        &format!("sku {sku}"),
                    )
                    .await
                    .expect("the reply is confirmed");
            }
        }
    });
    for sku in [1, 2] {
        let answer: String = requester
            .request("prices.quote", &Quote { sku })
            .await
            .expect("answered");
        assert_eq!(answer, format!("sku {sku}"));
    }
    replying.await.unwrap();
    requester.close().await.unwrap();
    replier.close().await.unwrap();
}

/// A direct reply-to address of the shape RabbitMQ gives, for a process id
/// on `node` that need not exist: Erlang's external term format of a pid
/// (`NEW_PID_EXT`), base64, then a key.
fn direct_reply_to(node: &str, id: u32, serial: u32, creation: u32) -> String {
    let mut term = vec![131, 88, 119, u8::try_from(node.len()).unwrap()];
    term.extend_from_slice(node.as_bytes());
    for field in [id, serial, creation] {
        term.extend_from_slice(&field.to_be_bytes());
    }
    format!("amq.rabbitmq.reply-to.{}.a2V5", base64(&term))
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut text = String::new();
    for chunk in bytes.chunks(3) {
        let bits = chunk
            .iter()
            .enumerate()
            .fold(0_u32, |bits, (index, &byte)| {
                bits | u32::from(byte) << (16 - 8 * index)
            });
        for index in 0..4 {
            text.push(if index <= chunk.len() {
                char::from(ALPHABET[(bits >> (18 - 6 * index) & 63) as usize])
            } else {
                '='
            });
        }
    }
    text
}

/// `reply_to` comes from the wire: a replier must refuse what cannot be
/// routed or would harm the broker, and what names nothing must go nowhere
/// without harming the replier's connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_reply_to_is_refused_or_fails_at_once_and_replies_go_on() {
    init_logging();
    let scope = Scope::new("rpc-hostile");
    let mut inbox = Inbox::open(broker(), &scope, "quotes", "prices.quote").await;
    let replier = builder(broker(), &scope).build().unwrap();
    replier.publish("warm.up", &0).await.expect("connected");
    let refused = [
        String::new(),
        "r".repeat(256),
        "𝄞".repeat(100),
        "amq.rabbitmq.reply-to".to_owned(),
        "amq.rabbitmq.reply-to.".to_owned(),
        // RabbitMQ 3.10 decodes this unguarded: its channel crashes and
        // the broker closes the connection (541 INTERNAL_ERROR).
        "amq.rabbitmq.reply-to.g2dkABNyYWJiaXRAbm93aGVyZQAAAAAAAAAA.garbage".to_owned(),
        format!("amq.rabbitmq.reply-to.{}.key", base64(b"\x83a\x01")),
    ];
    for reply_to in &refused {
        let error = replier
            .__send_reply(reply_to, Some("c-1"), &1)
            .await
            .unwrap_err();
        assert!(
            matches!(error, Error::InvalidReplyTo { .. }),
            "{reply_to:?}: {error:?}"
        );
    }
    let error = replier
        .__send_reply("somewhere", Some(&"c".repeat(300)), &1)
        .await
        .unwrap_err();
    assert!(matches!(error, Error::InvalidProperty { .. }), "{error:?}");
    // Routing keys that name no queue: dropped by the broker.
    for nowhere in ["no-such-queue", "\u{0}\u{7f}\u{202e}"] {
        replier
            .__send_reply(nowhere, None, &1)
            .await
            .unwrap_or_else(|error| panic!("reply to {nowhere:?}: {error}"));
    }
    assert_eq!(
        replier.status().connection("publish").unwrap().connects,
        1,
        "no reply so far cost the replying connection"
    );
    // Direct reply-to addresses of the right shape that name no channel of
    // this cluster. RabbitMQ 3.10 (the test node) crashes on each and
    // closes the connection: the reply fails at once and is not sent again
    // (sent again, it would close the next connection, for the whole
    // confirm timeout). A broker that drops them makes them `Ok`.
    let node = broker().node_name().to_owned();
    for forged in [
        direct_reply_to("rabbit@nowhere", 1, 0, 1),
        direct_reply_to(&node, u32::MAX, u32::MAX, u32::MAX),
        direct_reply_to("reply@12345", 0, 0, 0),
    ] {
        let started = Instant::now();
        let outcome = replier.__send_reply(&forged, None, &1).await;
        assert!(
            matches!(&outcome, Ok(()) | Err(Error::InvalidReplyTo { .. })),
            "{forged:?}: {outcome:?}"
        );
        assert!(
            started.elapsed() < AT_ONCE,
            "{forged:?} took {:?}",
            started.elapsed()
        );
    }
    // And a reply to a live request still arrives.
    let requester = builder(broker(), &scope).build().unwrap();
    let replying = tokio::spawn({
        let replier = replier.clone();
        async move {
            let request = inbox.next().await;
            let properties = &request.properties;
            replier
                .__send_reply(
                    properties.reply_to().as_ref().unwrap().as_str(),
                    properties.correlation_id().as_ref().map(|id| id.as_str()),
                    &"still fine",
                )
                .await
                .expect("confirmed");
        }
    });
    let answer: String = requester
        .request("prices.quote", &Quote { sku: 1 })
        .await
        .expect("answered");
    assert_eq!(answer, "still fine");
    replying.await.unwrap();
    requester.close().await.unwrap();
    replier.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_no_queue_is_bound_for_fails_at_once_as_unroutable() {
    init_logging();
    let scope = Scope::new("rpc-unbound");
    let hutch = builder(broker(), &scope)
        .request_timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    for _ in 0..2 {
        let started = Instant::now();
        let error = hutch
            .request::<_, u64>("nobody.listens", &Quote { sku: 1 })
            .await
            .unwrap_err();
        assert!(
            matches!(&error, Error::Unroutable { routing_key, exchange } if routing_key == "nobody.listens" && *exchange == scope.exchange),
            "{error:?}"
        );
        assert!(started.elapsed() < AT_ONCE, "took {:?}", started.elapsed());
    }
    hutch.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_nobody_answers_times_out_naming_its_routing_key_and_timeout() {
    init_logging();
    let scope = Scope::new("rpc-silent");
    // Bound, so the request is routed, but never consumed.
    bound_queue_on(
        broker(),
        &scope,
        "silent",
        "silent.quote",
        FieldTable::default(),
    )
    .await;
    let timeout = Duration::from_millis(700);
    let hutch = builder(broker(), &scope)
        .request_timeout(timeout)
        .build()
        .unwrap();
    let started = Instant::now();
    let error = hutch
        .request::<_, u64>("silent.quote", &Quote { sku: 1 })
        .await
        .unwrap_err();
    let elapsed = started.elapsed();
    assert!(
        matches!(&error, Error::RequestTimeout { routing_key, timeout: waited, connection_error: None } if routing_key == "silent.quote" && *waited == timeout),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(
        message.contains("silent.quote") && message.contains("700ms"),
        "{message}"
    );
    assert!(elapsed >= timeout && elapsed < AT_ONCE, "took {elapsed:?}");
    hutch.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_reply_is_dropped_and_counted_never_given_to_another_request() {
    init_logging();
    let scope = Scope::new("rpc-late");
    let mut inbox = Inbox::open(broker(), &scope, "quotes", "late.quote").await;
    let hutch = builder(broker(), &scope)
        .request_timeout(Duration::from_millis(800))
        .build()
        .unwrap();

    let error = hutch
        .request::<_, Quote>("late.quote", &Quote { sku: 1 })
        .await
        .unwrap_err();
    assert!(matches!(error, Error::RequestTimeout { .. }), "{error:?}");
    let late = inbox.next().await;
    assert_eq!(quote(&late), Quote { sku: 1 });

    // The late reply is sent while the second request waits, right before
    // that request's own reply, on the same channel (so it arrives first).
    let second = tokio::spawn({
        let hutch = hutch.clone();
        async move {
            hutch
                .request::<_, Quote>("late.quote", &Quote { sku: 2 })
                .await
        }
    });
    let current = inbox.next().await;
    assert_eq!(quote(&current), Quote { sku: 2 });
    inbox
        .reply(&late, &serde_json::to_vec(&Quote { sku: 1 }).unwrap())
        .await;
    inbox
        .reply(&current, &serde_json::to_vec(&Quote { sku: 2 }).unwrap())
        .await;
    let answer = second
        .await
        .unwrap()
        .expect("the second request is answered");
    assert_eq!(answer, Quote { sku: 2 }, "each request gets its own reply");
    assert_eq!(hutch.status().late_replies, 1);
    hutch.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_that_does_not_decode_is_an_error() {
    init_logging();
    let scope = Scope::new("rpc-garbled");
    let mut inbox = Inbox::open(broker(), &scope, "quotes", "garbled.quote").await;
    let hutch = builder(broker(), &scope).build().unwrap();
    let replier = tokio::spawn(async move {
        for body in [&b"not json at all"[..], br#""a string, not a number""#] {
            let request = inbox.next().await;
            inbox.reply(&request, body).await;
        }
    });
    for _ in 0..2 {
        let error = hutch
            .request::<_, u64>("garbled.quote", &Quote { sku: 1 })
            .await
            .unwrap_err();
        assert!(
            matches!(&error, Error::ReplyDecode { routing_key, .. } if routing_key == "garbled.quote"),
            "{error:?}"
        );
        assert!(error.to_string().contains("did not decode"), "{error}");
    }
    replier.await.unwrap();
    hutch.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_and_fifty_six_requests_in_flight_from_sixteen_tasks_each_get_their_own_reply()
{
    init_logging();
    const TASKS: u64 = 16;
    const EACH: u64 = 16;
    const ALL: u64 = TASKS * EACH;
    let scope = Scope::new("rpc-many");
    let mut inbox = Inbox::open(broker(), &scope, "quotes", "many.quote").await;
    let hutch = builder(broker(), &scope)
        .request_timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    // Answers once every request is in flight, in the reverse order of
    // their arrival: only the correlation ids can tell whose reply is whose.
    let replier = tokio::spawn(async move {
        let mut requests = Vec::new();
        for _ in 0..ALL {
            requests.push(inbox.next().await);
        }
        for request in requests.iter().rev() {
            let Quote { sku } = quote(request);
            inbox
                .reply(request, &serde_json::to_vec(&(sku * 3 + 1)).unwrap())
                .await;
        }
    });
    let tasks: Vec<_> = (0..TASKS)
        .map(|task| {
            let hutch = hutch.clone();
            tokio::spawn(async move {
                join_all((0..EACH).map(|n| {
                    let hutch = hutch.clone();
                    async move {
                        let sku = task * EACH + n;
                        let answer: u64 = hutch
                            .request("many.quote", &Quote { sku })
                            .await
                            .unwrap_or_else(|error| panic!("request {sku}: {error}"));
                        (sku, answer)
                    }
                }))
                .await
            })
        })
        .collect();
    let mut answered = BTreeSet::new();
    for task in tasks {
        for (sku, answer) in task.await.unwrap() {
            assert_eq!(answer, sku * 3 + 1, "request {sku} got another's reply");
            answered.insert(sku);
        }
    }
    assert_eq!(answered.len() as u64, ALL);
    replier.await.unwrap();
    assert_eq!(hutch.status().late_replies, 0);
    hutch.close().await.unwrap();
}

/// lapin gives a `basic.return` to whichever confirm completes next: with
/// routable and unroutable requests in flight together, a return often
/// comes with a routable request's confirm. Each must still get its own
/// outcome, at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routable_and_unroutable_requests_in_flight_together_each_get_their_own_outcome() {
    init_logging();
    const EACH: u64 = 150;
    let scope = Scope::new("rpc-mixed");
    let inbox = Inbox::open(broker(), &scope, "quotes", "mixed.bound").await;
    let replier = inbox.answer_each(|Quote { sku }| serde_json::json!(sku + 1));
    let hutch = builder(broker(), &scope)
        .request_timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let started = Instant::now();
    let outcomes = join_all((0..2 * EACH).map(|sku| {
        let hutch = hutch.clone();
        async move {
            let routing_key = if sku % 2 == 0 {
                "mixed.bound"
            } else {
                "mixed.nowhere"
            };
            let outcome = hutch.request::<_, u64>(routing_key, &Quote { sku }).await;
            (sku, outcome)
        }
    }))
    .await;
    for (sku, outcome) in outcomes {
        if sku % 2 == 0 {
            assert_eq!(outcome.expect("a bound request is answered"), sku + 1);
        } else {
            let error = outcome.expect_err("an unbound request fails");
            assert!(
                matches!(&error, Error::Unroutable { routing_key, .. } if routing_key == "mixed.nowhere"),
                "request {sku}: {error:?}"
            );
        }
    }
    assert!(
        started.elapsed() < PATIENCE,
        "no request waited for its timeout: {:?}",
        started.elapsed()
    );
    replier.abort();
    hutch.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_in_flight_fail_at_once_when_their_connection_is_killed_and_later_ones_work() {
    init_logging();
    const IN_FLIGHT: u64 = 10;
    // A virtual host of its own: the forced close reaches its connections
    // only, and the queue and channel counts below are its own.
    let broker = isolated_broker().await;
    let scope = Scope::new("rpc-killed");
    // Bound, not consumed yet: the requests wait in the queue.
    let queue = bound_queue_on(
        &broker,
        &scope,
        "quotes",
        "killed.quote",
        FieldTable::default(),
    )
    .await;
    let timeout = Duration::from_secs(60);
    let hutch = builder(&broker, &scope)
        .request_timeout(timeout)
        .reconnect_delay(Duration::from_millis(50), Duration::from_millis(500))
        .build()
        .unwrap();
    let requests: Vec<_> = (0..IN_FLIGHT)
        .map(|sku| {
            let hutch = hutch.clone();
            tokio::spawn(async move {
                let outcome = hutch
                    .request::<_, u64>("killed.quote", &Quote { sku })
                    .await;
                (outcome, Instant::now())
            })
        })
        .collect();
    // The queue's depth can only be polled; every request is in it once
    // the broker has routed them all.
    let polled = broker.clone();
    let depth_queue = queue.clone();
    tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let depth = polled
                .queue(&depth_queue)
                .unwrap()
                .map_or(0, |queue| queue.messages);
            if depth == IN_FLIGHT {
                return;
            }
            assert!(Instant::now() < deadline, "{depth} request(s) queued");
            std::thread::sleep(Duration::from_millis(50));
        }
    })
    .await
    .unwrap();

    let closing = broker.clone();
    tokio::task::spawn_blocking(move || closing.close_all_connections("test outage"))
        .await
        .unwrap()
        .unwrap();
    let killed = Instant::now();
    for (n, request) in requests.into_iter().enumerate() {
        let (outcome, ended) = request.await.unwrap();
        let error = outcome.unwrap_err();
        if n == 0 {
            eprintln!("an interrupted request: {error}");
        }
        assert!(
            matches!(&error, Error::RequestInterrupted { routing_key, reason } if routing_key == "killed.quote" && reason.contains("test outage")),
            "{error:?}"
        );
        let after = ended.saturating_duration_since(killed);
        assert!(after < AT_ONCE, "failed {after:?} after the kill");
    }

    // A replier comes; the next request goes out on a new channel and gets
    // its own reply. The interrupted ones are answered too, to addresses of
    // the closed channel: the broker drops those replies.
    let inbox = Inbox::consume(&broker, &queue).await;
    let replier = inbox.answer_each(|Quote { sku }| serde_json::json!(sku * 10));
    let answer: u64 = hutch
        .request("killed.quote", &Quote { sku: 42 })
        .await
        .expect("a request after the kill is answered");
    assert_eq!(answer, 420);
    assert_eq!(hutch.status().late_replies, 0);
    // Direct reply-to: no reply queue was declared, so none is left.
    let names: Vec<String> = broker
        .queues()
        .unwrap()
        .into_iter()
        .map(|queue| queue.name)
        .collect();
    assert_eq!(names, [queue]);

    // Dropping the last handle stops the tree the request channel belongs
    // to: its channel and connection go; the replier's channel stays. The
    // broker's channel list can only be polled.
    drop(hutch);
    let polled = broker.clone();
    tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let channels = polled.channel_count().unwrap();
            if channels == 1 {
                return;
            }
            assert!(Instant::now() < deadline, "{channels} channels left");
            std::thread::sleep(Duration::from_millis(100));
        }
    })
    .await
    .unwrap();
    replier.abort();
}

/// The replier as a hutch-rs application writes it: a consumer that answers
/// with `Context::reply`.
#[hutch_rs::consumer(routing_key = "prices.quote", group = "pricing", max_attempts = 1)]
async fn price(
    msg: hutch_rs::Message<Quote>,
    ctx: hutch_rs::Context,
) -> Result<(), hutch_rs::BoxError> {
    ctx.reply(&(msg.sku * 100)).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_answers_requests_with_context_reply_and_a_message_without_reply_to_fails() {
    init_logging();
    let scope = Scope::new("pricing");
    let replier = scope.hutch("pricing");
    let running = replier.start().await.expect("start the replier");
    // Another application asks; many requests at once, from many tasks.
    let requester = builder(broker(), &scope).build().unwrap();
    let asked = (1..=64_u64).map(|sku| {
        let requester = requester.clone();
        tokio::spawn(async move {
            let total: u64 = requester.request("prices.quote", &Quote { sku }).await?;
            Ok::<_, Error>((sku, total))
        })
    });
    for answer in join_all(asked).await {
        let (sku, total) = answer.unwrap().unwrap();
        assert_eq!(total, sku * 100);
    }

    // A plain publish asks for no reply: replying is the handler's error,
    // and the message is dead-lettered with it.
    requester
        .publish("prices.quote", &Quote { sku: 5 })
        .await
        .unwrap();
    let dead_queue = format!("{}:dead", scope.queue("price"));
    hutch_rs_tests::await_depth(&dead_queue, 1).await;
    let dead = hutch_rs_tests::take_all(&dead_queue).await.remove(0);
    let error = hutch_rs_tests::header_text(&dead.properties, hutch_rs::headers::ERROR);
    assert!(error.contains("has no reply_to"), "{error}");
    running.shutdown().await.unwrap();
    replier.close().await.unwrap();
    requester.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_carries_its_span_context_to_the_replier() {
    use hutch_rs::headers::TRACEPARENT;
    use hutch_rs_tests::{
        header_text,
        otel::{self, attribute, await_trace},
    };
    use tracing::Instrument;

    let _capture = otel::capture();
    let scope = Scope::new("rpc-traced");
    let mut inbox = Inbox::open(broker(), &scope, "quotes", "prices.quote").await;
    let hutch = builder(broker(), &scope).build().unwrap();
    let checkout = tracing::info_span!(target: otel::TARGET, parent: None, "checkout");
    let (trace, _) = otel::ids_of(&checkout);
    let replier = tokio::spawn(async move {
        let request = inbox.next().await;
        inbox.reply(&request, b"700").await;
        header_text(&request.properties, TRACEPARENT)
    });
    let total: u64 = hutch
        .request("prices.quote", &Quote { sku: 7 })
        .instrument(checkout)
        .await
        .expect("answered");
    assert_eq!(total, 700);
    let traceparent = replier.await.unwrap();

    // The request's span, a producer span in the caller's trace, is the
    // parent the replier is told of.
    let spans = await_trace(trace, PATIENCE, |spans| {
        spans
            .iter()
            .any(|span| attribute(span, "hutch.outcome") == "answered")
    })
    .await;
    let request = spans
        .iter()
        .find(|span| attribute(span, "hutch.outcome") == "answered")
        .unwrap();
    assert_eq!(
        traceparent,
        format!(
            "00-{}-{}-01",
            request.span_context.trace_id(),
            request.span_context.span_id()
        )
    );
    assert_eq!(
        attribute(request, "messaging.rabbitmq.destination.routing_key"),
        "prices.quote"
    );
    hutch.close().await.unwrap();
}
