//! Failure handling against the real broker: retries that wait in delay
//! queues, dead-letter queues and their headers, poison messages, explicit
//! decisions, error hooks, handler panics and timeouts, and that nothing is
//! lost or looped on the way.

use std::{collections::BTreeMap, time::Duration};

use futures_util::{StreamExt, stream};
use hutch_rs::{
    BoxError, Decision, Error, Failure, HandlerError, Hutch, Message, Outcome,
    amqp::{AMQPValue, BasicProperties},
    consumer, headers,
};
use hutch_rs_tests::{
    JOURNAL, Job, PATIENCE, Scope, Seen, broker, declare_queue, queue_depth, raw_channel,
    raw_publish, take_all,
};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

#[consumer(
    routing_key = "flaky.#",
    group = "flaky",
    max_attempts = 5,
    retry_min_delay = "400ms",
    retry_max_delay = "2s"
)]
async fn flaky(msg: Message<Job>) -> Result<(), BoxError> {
    JOURNAL.record(Seen::of("flaky", &msg));
    msg.outcome(msg.attempt())
}

#[consumer(
    routing_key = "doomed.#",
    group = "doomed",
    max_attempts = 3,
    retry_min_delay = "100ms",
    retry_max_delay = "200ms"
)]
async fn doomed(msg: Message<Job>) -> Result<(), BoxError> {
    JOURNAL.record(Seen::of("doomed", &msg));
    msg.outcome(msg.attempt())
}

#[derive(Debug, Serialize, Deserialize)]
struct Invoice {
    invoice_id: u64,
}

#[consumer(routing_key = "invoices.#", group = "typed")]
async fn typed(msg: Message<Invoice>) -> Result<(), BoxError> {
    JOURNAL.record(Seen::of("typed", &msg));
    Ok(())
}

#[consumer(
    routing_key = "bulk.#",
    group = "bulk",
    max_attempts = 3,
    retry_min_delay = "20ms",
    retry_max_delay = "40ms"
)]
async fn bulk(msg: Message<Job>) -> Result<(), BoxError> {
    JOURNAL.record(Seen::of("bulk", &msg));
    msg.outcome(msg.attempt())
}

#[consumer(
    routing_key = "panicky.#",
    group = "panicky",
    max_attempts = 2,
    retry_min_delay = "100ms",
    retry_max_delay = "100ms"
)]
async fn panicky(msg: Message<Job>) -> Result<(), BoxError> {
    JOURNAL.record(Seen::of("panicky", &msg));
    if msg.outcome(msg.attempt()).is_err() {
        panic!("attempt {} of job {} panics", msg.attempt(), msg.id);
    }
    Ok(())
}

#[consumer(
    routing_key = "sleepy.#",
    group = "sleepy",
    timeout = "300ms",
    retry_min_delay = "100ms",
    retry_max_delay = "100ms"
)]
async fn sleepy(msg: Message<Job>) -> Result<(), BoxError> {
    JOURNAL.record(Seen::of("sleepy", &msg));
    if msg.outcome(msg.attempt()).is_err() {
        // Hangs, as a handler stuck on a dead socket would.
        std::future::pending::<()>().await;
    }
    Ok(())
}

#[consumer(
    routing_key = "shared.event",
    group = "shared",
    retry_min_delay = "100ms",
    retry_max_delay = "100ms"
)]
async fn picky(msg: Message<Job>) -> Result<(), BoxError> {
    JOURNAL.record(Seen::of("picky", &msg));
    msg.outcome(msg.attempt())
}

#[consumer(routing_key = "shared.event", group = "shared")]
async fn bystander(msg: Message<Job>) -> Result<(), BoxError> {
    JOURNAL.record(Seen::of("bystander", &msg));
    Ok(())
}

/// What a handler asks for explicitly.
#[derive(Debug, Serialize, Deserialize)]
struct Ask {
    id: u64,
    action: String,
}

#[consumer(routing_key = "decisive.#", group = "decisive")]
async fn decisive(msg: Message<Ask>) -> Result<(), BoxError> {
    JOURNAL.record(Seen::of("decisive", &msg));
    match msg.action.as_str() {
        "dead_letter" => Err(Decision::dead_letter("order 7 is invalid").into()),
        "requeue" if !msg.redelivered() => Err(Decision::requeue()
            .because("the lock is held elsewhere")
            .into()),
        "retry_after" if msg.attempt() == 1 => {
            Err(Decision::retry_after(Duration::from_millis(500)).into())
        }
        _ => Ok(()),
    }
}

#[consumer(routing_key = "fragile.#", group = "fragile", max_attempts = 1)]
async fn fragile(msg: Message<Job>) -> Result<(), BoxError> {
    JOURNAL.record(Seen::of("fragile", &msg));
    msg.outcome(msg.attempt())
}

#[consumer(
    routing_key = "clashing.#",
    group = "clashing",
    retry_min_delay = "100ms",
    retry_max_delay = "100ms"
)]
async fn clashing(msg: Message<Job>) -> Result<(), BoxError> {
    JOURNAL.record(Seen::of("clashing", &msg));
    msg.outcome(msg.attempt())
}

/// Error hook events, in the order the hooks ran.
struct Hooked {
    failures: mpsc::UnboundedReceiver<Failure>,
}

impl Hooked {
    /// A builder for `group` with a hook that reports every failure here.
    fn builder(scope: &Scope, group: &str) -> (hutch_rs::HutchBuilder, Self) {
        let (sender, failures) = mpsc::unbounded_channel();
        let builder = scope.builder(group).on_error(move |failure: Failure| {
            let sender = sender.clone();
            async move {
                let _ = sender.send(failure);
                Ok::<_, BoxError>(())
            }
        });
        (builder, Self { failures })
    }

    /// The next `n` failures; panics after [`PATIENCE`].
    async fn next(&mut self, n: usize) -> Vec<Failure> {
        let mut failures = Vec::with_capacity(n);
        while failures.len() < n {
            let failure = tokio::time::timeout(PATIENCE, self.failures.recv())
                .await
                .unwrap_or_else(|_| {
                    panic!("{} of {n} failures reported: {failures:#?}", failures.len())
                })
                .expect("the hook lives as long as the Hutch");
            failures.push(failure);
        }
        failures
    }
}

/// One test's consumers, started: a fresh scope, the `Hutch` running one
/// group, its error-hook reports, and the queue of the consumer named like
/// the group.
struct Started {
    scope: Scope,
    hutch: Hutch,
    running: hutch_rs::Running,
    hooked: Hooked,
    queue: String,
}

impl Started {
    /// Starts `group` with the settings `customize` adds to the scope's.
    async fn group(
        group: &str,
        customize: impl FnOnce(hutch_rs::HutchBuilder) -> hutch_rs::HutchBuilder,
    ) -> Self {
        hutch_rs_tests::init_logging();
        let scope = Scope::new(group);
        let (builder, hooked) = Hooked::builder(&scope, group);
        let hutch = customize(builder).build().expect("test settings are valid");
        let running = hutch.start().await.expect("start");
        let queue = scope.queue(group);
        Self {
            scope,
            hutch,
            running,
            hooked,
            queue,
        }
    }
}

/// The messages in every delay queue of `queue`, by queue name, with each
/// queue's arguments as the broker reports them.
fn delay_queues(queue: &str) -> BTreeMap<String, (u64, BTreeMap<String, serde_json::Value>)> {
    let prefix = format!("{queue}:delay:");
    broker()
        .queues()
        .expect("list queues")
        .into_iter()
        .filter(|info| info.name.starts_with(&prefix))
        .map(|info| (info.name, (info.messages, info.arguments)))
        .collect()
}

fn assert_no_copy_left(queue: &str) {
    assert_eq!(queue_depth(queue), 0, "{queue} is empty");
    for (name, (messages, _)) in delay_queues(queue) {
        assert_eq!(messages, 0, "delay queue {name} is empty");
    }
}

fn header<'a>(message: &'a lapin::message::BasicGetMessage, name: &str) -> &'a AMQPValue {
    message
        .properties
        .headers()
        .as_ref()
        .and_then(|headers| headers.inner().get(name))
        .unwrap_or_else(|| panic!("header {name} is missing: {:?}", message.properties))
}

fn header_text(message: &lapin::message::BasicGetMessage, name: &str) -> String {
    match header(message, name) {
        AMQPValue::LongString(text) => String::from_utf8_lossy(text.as_bytes()).into_owned(),
        other => panic!("header {name} is not a string: {other:?}"),
    }
}

async fn publish_job(hutch: &Hutch, routing_key: &str, job: &Job) {
    hutch.publish(routing_key, job).await.expect("publish");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_failing_until_its_fourth_attempt_is_retried_with_backoff_and_handled_once() {
    let Started {
        hutch,
        running,
        mut hooked,
        queue,
        ..
    } = Started::group("flaky", |builder| builder).await;

    publish_job(
        &hutch,
        "flaky.job",
        &Job {
            id: 1,
            succeed_on: 4,
        },
    )
    .await;
    let seen = JOURNAL.wait_for("flaky", 4).await;
    let failures = hooked.next(3).await;

    let attempts: Vec<u32> = seen.iter().map(|seen| seen.attempt).collect();
    assert_eq!(attempts, [1, 2, 3, 4]);
    // Every attempt sees the message as published.
    assert!(seen.iter().all(|seen| seen.routing_key == "flaky.job"));
    let first_id = seen[0].message_id.clone();
    assert!(first_id.is_some());
    assert!(seen.iter().all(|each| each.message_id == first_id));
    // 400 ms doubling: 0.4 s, 0.8 s, 1.6 s, each ±20 % jitter and ≤ 12 %
    // rounding. The lower bound is exact (the copy waits its whole TTL).
    for (gap, backoff_ms) in seen.windows(2).zip([400.0, 800.0, 1_600.0]) {
        let observed = gap[1].at.duration_since(gap[0].at).as_secs_f64() * 1_000.0;
        let earliest = backoff_ms * 0.8 * 0.88;
        // Generous: the broker's expiry timer, a persistent publish with its
        // confirm and a delivery, on a loaded 2-core machine.
        let latest = backoff_ms * 1.2 * 1.12 + 2_000.0;
        assert!(
            (earliest..=latest).contains(&observed),
            "attempt {} came {observed:.0} ms after the previous, expected {earliest:.0}..{latest:.0} ms",
            gap[1].attempt
        );
    }
    for (failure, next) in failures.iter().zip(2..) {
        match failure.outcome() {
            Outcome::Retried {
                attempt,
                queue: delay_queue,
                ..
            } => {
                assert_eq!(*attempt, next);
                assert!(delay_queue.starts_with(&format!("{queue}:delay:")));
            }
            other => panic!("expected a retry, got {other:?}"),
        }
        assert!(failure.error().to_string().contains("the ledger is locked"));
        assert_eq!(failure.routing_key(), "flaky.job");
    }

    running.shutdown().await.expect("clean shutdown");
    assert_eq!(
        JOURNAL.by("flaky").len(),
        4,
        "handled successfully once, then never again"
    );
    assert_no_copy_left(&queue);
    assert_eq!(queue_depth(&format!("{queue}:dead")), 0);
    // The delay queues dead-letter to this consumer's queue alone.
    let delays = delay_queues(&queue);
    assert!(!delays.is_empty());
    for (name, (_, arguments)) in delays {
        let ttl: u64 = name
            .rsplit(':')
            .next()
            .and_then(|ms| ms.strip_suffix("ms"))
            .and_then(|ms| ms.parse().ok())
            .unwrap_or_else(|| panic!("delay queue name {name}"));
        assert_eq!(arguments["x-message-ttl"], ttl, "{name}");
        assert_eq!(arguments["x-dead-letter-exchange"], "", "{name}");
        assert_eq!(
            arguments["x-dead-letter-routing-key"],
            queue.as_str(),
            "{name}"
        );
        assert!(broker().queue(&name).unwrap().unwrap().durable);
    }
    hutch.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_last_attempt_exactly_one_copy_is_dead_lettered_with_why() {
    // Hooks that fail or panic change nothing.
    let Started {
        scope,
        hutch,
        running,
        mut hooked,
        queue,
        ..
    } = Started::group("doomed", |builder| {
        builder
            .on_error(|_failure: Failure| async {
                Err::<(), _>(std::io::Error::other("hook down"))
            })
            .on_error(
                |_failure: Failure| -> std::future::Ready<Result<(), BoxError>> {
                    panic!("a hook panics before it returns a future")
                },
            )
    })
    .await;

    publish_job(
        &hutch,
        "doomed.now",
        &Job {
            id: 1,
            succeed_on: 0,
        },
    )
    .await;
    let failures = hooked.next(3).await;
    let outcomes: Vec<&Outcome> = failures.iter().map(Failure::outcome).collect();
    assert!(
        matches!(outcomes[0], Outcome::Retried { attempt: 2, .. }),
        "{outcomes:?}"
    );
    assert!(
        matches!(outcomes[1], Outcome::Retried { attempt: 3, .. }),
        "{outcomes:?}"
    );
    assert_eq!(
        outcomes[2],
        &Outcome::DeadLettered {
            queue: format!("{queue}:dead"),
            reason: headers::REASON_ATTEMPTS_EXHAUSTED
        }
    );
    assert_eq!(failures[2].attempt(), 3);
    assert_eq!(
        failures[2].consumer(),
        "integration::failure_handling::doomed"
    );

    // The consumer goes on after its hooks failed and panicked.
    publish_job(
        &hutch,
        "doomed.later",
        &Job {
            id: 2,
            succeed_on: 1,
        },
    )
    .await;
    let seen = JOURNAL.wait_for("doomed", 4).await;
    assert_eq!(seen[3].body["id"], 2);

    running.shutdown().await.expect("clean shutdown");
    let handled: Vec<u32> = JOURNAL
        .by("doomed")
        .iter()
        .filter(|seen| seen.body["id"] == 1)
        .map(|seen| seen.attempt)
        .collect();
    assert_eq!(handled, [1, 2, 3], "handled max_attempts times, no more");
    assert_no_copy_left(&queue);

    let dead = take_all(&format!("{queue}:dead")).await;
    assert_eq!(dead.len(), 1, "exactly one copy");
    let copy = &dead[0];
    let original_id = seen[0].message_id.clone().unwrap();
    assert_eq!(
        copy.properties
            .message_id()
            .as_ref()
            .map(|id| id.to_string()),
        Some(original_id)
    );
    let body: Job = serde_json::from_slice(&copy.data).unwrap();
    assert_eq!(body.id, 1);
    assert_eq!(copy.properties.delivery_mode(), &Some(2));
    assert!(header_text(copy, headers::ERROR).contains("the ledger is locked (attempt 3)"));
    assert_eq!(header(copy, headers::ATTEMPTS), &AMQPValue::LongLongInt(3));
    assert_eq!(
        header_text(copy, headers::CONSUMER),
        "integration::failure_handling::doomed"
    );
    assert_eq!(header_text(copy, headers::QUEUE), queue);
    assert_eq!(header_text(copy, headers::REASON), "attempts-exhausted");
    assert_eq!(
        header_text(copy, headers::ORIGINAL_EXCHANGE),
        scope.exchange
    );
    assert_eq!(
        header_text(copy, headers::ORIGINAL_ROUTING_KEY),
        "doomed.now"
    );
    let AMQPValue::Timestamp(failed_at) = header(copy, headers::FAILED_AT) else {
        panic!("failed-at is a timestamp");
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        now.abs_diff(*failed_at) < 60,
        "failed at {failed_at}, now {now}"
    );
    hutch.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_message_is_dead_lettered_at_once_without_calling_the_handler() {
    let Started {
        scope,
        hutch,
        running,
        mut hooked,
        queue,
        ..
    } = Started::group("typed", |builder| builder).await;

    raw_publish(
        &scope.exchange,
        "invoices.created",
        b"this is not json",
        BasicProperties::default().with_message_id("poison-1".into()),
    )
    .await;
    raw_publish(
        &scope.exchange,
        "invoices.created",
        br#"{"invoice_id":1}"#,
        BasicProperties::default()
            .with_message_id("poison-2".into())
            .with_content_type("application/xml".into()),
    )
    .await;
    let failures = hooked.next(2).await;
    for (failure, id) in failures.iter().zip(["poison-1", "poison-2"]) {
        assert_eq!(failure.message_id(), Some(id));
        assert_eq!(failure.attempt(), 1);
        assert!(
            matches!(failure.error(), HandlerError::Undecodable(_)),
            "{:?}",
            failure.error()
        );
        assert!(matches!(
            failure.outcome(),
            Outcome::DeadLettered {
                reason: "poison",
                ..
            }
        ));
    }
    running.shutdown().await.expect("clean shutdown");

    assert!(
        JOURNAL.by("typed").is_empty(),
        "the handler was never called"
    );
    assert_no_copy_left(&queue);
    assert!(delay_queues(&queue).is_empty(), "no retry was even planned");
    let dead = take_all(&format!("{queue}:dead")).await;
    assert_eq!(dead.len(), 2);
    assert_eq!(
        &dead[0].data, b"this is not json",
        "the body is kept as it was"
    );
    assert_eq!(header_text(&dead[0], headers::REASON), "poison");
    assert!(header_text(&dead[0], headers::ERROR).contains("Invoice"));
    assert!(header_text(&dead[1], headers::ERROR).contains("application/xml"));
    assert_eq!(
        dead[1]
            .properties
            .content_type()
            .as_ref()
            .map(|t| t.to_string()),
        Some("application/xml".to_owned())
    );
    hutch.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_failing_messages_end_in_the_dead_letter_queue_and_nowhere_else() {
    const COUNT: u64 = 1_000;
    let Started {
        hutch,
        running,
        mut hooked,
        queue,
        ..
    } = Started::group("bulk", |builder| builder).await;

    stream::iter(0..COUNT)
        .for_each_concurrent(50, |id| {
            let hutch = hutch.clone();
            async move { publish_job(&hutch, "bulk.job", &Job { id, succeed_on: 0 }).await }
        })
        .await;
    // Two retries and one dead letter each.
    let failures = hooked.next(3 * COUNT as usize).await;
    let dead_lettered = failures
        .iter()
        .filter(|failure| matches!(failure.outcome(), Outcome::DeadLettered { .. }))
        .count();
    assert_eq!(dead_lettered, COUNT as usize);
    running.shutdown().await.expect("clean shutdown");

    assert_eq!(queue_depth(&format!("{queue}:dead")), COUNT);
    assert_no_copy_left(&queue);
    let mut attempts: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    for seen in JOURNAL.by("bulk") {
        attempts
            .entry(seen.message_id.clone().unwrap())
            .or_default()
            .push(seen.attempt);
    }
    assert_eq!(attempts.len(), COUNT as usize);
    for (id, attempts) in attempts {
        assert_eq!(attempts, [1, 2, 3], "message {id}");
    }
    hutch.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_counts_as_a_failed_attempt_and_the_consumer_goes_on() {
    let Started {
        hutch,
        running,
        mut hooked,
        queue,
        ..
    } = Started::group("panicky", |builder| builder).await;

    publish_job(
        &hutch,
        "panicky.job",
        &Job {
            id: 1,
            succeed_on: 2,
        },
    )
    .await;
    publish_job(
        &hutch,
        "panicky.job",
        &Job {
            id: 2,
            succeed_on: 0,
        },
    )
    .await;
    let failures = hooked.next(3).await;
    let by_job = |id: u64| -> Vec<&Failure> {
        failures
            .iter()
            .filter(|failure| serde_json::from_slice::<Job>(failure.body()).unwrap().id == id)
            .collect()
    };
    let first = by_job(1);
    assert_eq!(first.len(), 1);
    assert!(matches!(
        first[0].outcome(),
        Outcome::Retried { attempt: 2, .. }
    ));
    assert!(
        matches!(first[0].error(), HandlerError::Panicked(text) if text.contains("attempt 1 of job 1 panics"))
    );
    let second = by_job(2);
    assert_eq!(second.len(), 2);
    assert!(matches!(
        second[1].outcome(),
        Outcome::DeadLettered {
            reason: "attempts-exhausted",
            ..
        }
    ));

    let seen = JOURNAL.wait_for("panicky", 4).await;
    running.shutdown().await.expect("clean shutdown");
    let job_one: Vec<u32> = seen
        .iter()
        .filter(|seen| seen.body["id"] == 1)
        .map(|seen| seen.attempt)
        .collect();
    assert_eq!(
        job_one,
        [1, 2],
        "the panicking message was retried, then handled"
    );
    let status = hutch.status();
    let consumer = status.consumer(&queue).unwrap();
    assert_eq!(
        consumer.restarts, 0,
        "a panic is its message's failure, not the consumer's: {consumer:?}"
    );
    assert_no_copy_left(&queue);
    let dead = take_all(&format!("{queue}:dead")).await;
    assert_eq!(dead.len(), 1);
    assert!(
        header_text(&dead[0], headers::ERROR)
            .contains("the handler panicked: attempt 2 of job 2 panics")
    );
    hutch.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_past_its_timeout_is_stopped_and_the_message_retried() {
    let Started {
        hutch,
        running,
        mut hooked,
        queue,
        ..
    } = Started::group("sleepy", |builder| builder).await;

    publish_job(
        &hutch,
        "sleepy.job",
        &Job {
            id: 1,
            succeed_on: 2,
        },
    )
    .await;
    let failure = hooked.next(1).await.remove(0);
    assert!(
        matches!(failure.error(), HandlerError::TimedOut(timeout) if *timeout == Duration::from_millis(300)),
        "{:?}",
        failure.error()
    );
    assert!(matches!(
        failure.outcome(),
        Outcome::Retried { attempt: 2, .. }
    ));
    let seen = JOURNAL.wait_for("sleepy", 2).await;
    let gap = seen[1].at.duration_since(seen[0].at);
    // The timeout, then the delay (100 ms on the grid).
    assert!(gap >= Duration::from_millis(400), "{gap:?}");
    running.shutdown().await.expect("clean shutdown");
    assert_eq!(hutch.status().consumer(&queue).unwrap().restarts, 0);
    assert_no_copy_left(&queue);
    hutch.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_copy_goes_to_the_failing_consumer_only() {
    let Started {
        scope,
        hutch,
        running,
        mut hooked,
        ..
    } = Started::group("shared", |builder| builder).await;

    publish_job(
        &hutch,
        "shared.event",
        &Job {
            id: 1,
            succeed_on: 2,
        },
    )
    .await;
    hooked.next(1).await;
    let picky = JOURNAL.wait_for("picky", 2).await;
    assert_eq!(picky[1].attempt, 2);
    // Had the copy been routed by its routing key, the bystander's queue
    // would hold it, or the bystander would have seen it.
    assert_eq!(queue_depth(&scope.queue("bystander")), 0);
    running.shutdown().await.expect("clean shutdown");
    let bystander = JOURNAL.by("bystander");
    assert_eq!(bystander.len(), 1, "{bystander:#?}");
    assert_eq!(bystander[0].attempt, 1);
    assert_no_copy_left(&scope.queue("picky"));
    assert_no_copy_left(&scope.queue("bystander"));
    hutch.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_can_dead_letter_requeue_or_pick_its_retry_delay() {
    let Started {
        hutch,
        running,
        mut hooked,
        queue,
        ..
    } = Started::group("decisive", |builder| builder).await;

    for (id, action) in [(1, "dead_letter"), (2, "requeue"), (3, "retry_after")] {
        let ask = Ask {
            id,
            action: action.to_owned(),
        };
        hutch.publish("decisive.ask", &ask).await.unwrap();
    }
    let failures = hooked.next(3).await;
    let outcome_of = |id: u64| {
        failures
            .iter()
            .find(|failure| serde_json::from_slice::<Ask>(failure.body()).unwrap().id == id)
            .map(|failure| failure.outcome().clone())
            .unwrap()
    };
    assert_eq!(
        outcome_of(1),
        Outcome::DeadLettered {
            queue: format!("{queue}:dead"),
            reason: headers::REASON_REJECTED
        }
    );
    assert_eq!(outcome_of(2), Outcome::Requeued);
    assert!(
        matches!(outcome_of(3), Outcome::Retried { attempt: 2, delay, .. } if delay == Duration::from_millis(470))
    );

    let seen = JOURNAL.wait_for("decisive", 5).await;
    running.shutdown().await.expect("clean shutdown");
    let of = |id: u64| -> Vec<&Seen> { seen.iter().filter(|s| s.body["id"] == id).collect() };
    assert_eq!(of(1).len(), 1, "dead-lettered on its first attempt");
    let requeued = of(2);
    assert_eq!(requeued.len(), 2);
    assert!(requeued[1].redelivered, "requeued: redelivered at once");
    assert_eq!(requeued[1].attempt, 1, "a requeue is not an attempt");
    let retried = of(3);
    assert_eq!(retried.len(), 2);
    assert!(retried[1].at.duration_since(retried[0].at) >= Duration::from_millis(470));

    let dead = take_all(&format!("{queue}:dead")).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(header_text(&dead[0], headers::REASON), "rejected");
    assert!(header_text(&dead[0], headers::ERROR).contains("order 7 is invalid"));
    assert_no_copy_left(&queue);
    hutch.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_queue_deleted_under_the_consumer_is_declared_again_for_the_copy() {
    let Started {
        hutch,
        running,
        mut hooked,
        queue,
        ..
    } = Started::group("fragile", |builder| builder).await;
    let dead_queue = format!("{queue}:dead");

    // Someone deletes the dead-letter queue under the running consumer: the
    // mandatory copy comes back unroutable instead of vanishing, the queue
    // is declared again and the copy sent again.
    let (connection, channel) = raw_channel().await;
    channel
        .queue_delete(dead_queue.as_str().into(), Default::default())
        .await
        .expect("delete the dead-letter queue");
    connection.close(200, "done".into()).await.unwrap();

    publish_job(
        &hutch,
        "fragile.job",
        &Job {
            id: 1,
            succeed_on: 0,
        },
    )
    .await;
    let failure = hooked.next(1).await.remove(0);
    assert!(matches!(failure.outcome(), Outcome::DeadLettered { .. }));
    running.shutdown().await.expect("clean shutdown");
    assert_eq!(JOURNAL.by("fragile").len(), 1, "handled once");
    assert_eq!(hutch.status().consumer(&queue).unwrap().restarts, 0);
    assert_eq!(queue_depth(&queue), 0);
    assert_eq!(take_all(&dead_queue).await.len(), 1, "one copy, none lost");
    hutch.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delay_queue_declared_otherwise_is_a_fatal_error_and_loses_nothing() {
    hutch_rs_tests::init_logging();
    let scope = Scope::new("clashing");
    let queue = scope.queue("clashing");
    // Another application owns a queue by the delay queue's name, without TTL.
    let clash = format!("{queue}:delay:100ms");
    declare_queue(&clash, Default::default()).await;

    let hutch = scope.hutch("clashing");
    let (stop, run) = hutch_rs_tests::spawn_run_until(&hutch);
    let consumed = queue.clone();
    tokio::task::spawn_blocking(move || hutch_rs_tests::await_consumer_count(&consumed, 1))
        .await
        .unwrap();
    publish_job(
        &hutch,
        "clashing.job",
        &Job {
            id: 1,
            succeed_on: 2,
        },
    )
    .await;

    let error = tokio::time::timeout(PATIENCE, run)
        .await
        .expect("run ends by itself")
        .expect("run does not panic")
        .expect_err("a refused delay queue is fatal");
    drop(stop);
    let Error::Declare { resource, .. } = &error else {
        panic!("expected Error::Declare, got {error:?}");
    };
    assert!(resource.contains(&clash), "{resource}");
    let text = error.to_string();
    assert!(text.contains("inequivalent arg 'x-message-ttl'"), "{text}");
    assert_eq!(JOURNAL.by("clashing").len(), 1);
    assert_eq!(queue_depth(&queue), 1, "the message is back in its queue");
    assert_eq!(queue_depth(&clash), 0);
    hutch.close().await.unwrap();
}
