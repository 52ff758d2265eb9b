//! The metrics hutch-rs records (feature `metrics`), read back from the
//! Prometheus exporter after a known workload: counts by outcome, the
//! handler and confirm histograms, the in-flight gauge back at zero, the
//! connection gauge, reconnects, consumer restarts and stale acknowledgements.
//!
//! One recorder serves the whole binary, and the other tests' hutches
//! record into it too: the assertions read the series of this module's own
//! consumers and exchanges (unique names), and only lower bounds or
//! differences of the series shared by every `Hutch` (connections, by
//! purpose).

use std::{
    collections::BTreeMap,
    sync::{
        OnceLock,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use hutch_rs::{BoxError, ConsumerState, Error, Event, Hutch, Message, PublishOptions, consumer};
use hutch_rs_tests::{Job, NodeTurn, PATIENCE, Scope, init_logging, raw_channel_to, raw_publish};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::sync::Notify;

/// The consumer of the workload test, as the `consumer` label names it.
const METERED: &str = "integration::metrics::metered";
/// The consumer of the restart, reconnect and stale-ack test.
const RESTARTED: &str = "integration::metrics::restarted";

#[consumer(
    routing_key = "metered.#",
    group = "metrics",
    max_attempts = 2,
    retry_min_delay = "100ms",
    retry_max_delay = "200ms"
)]
async fn metered(msg: Message<Job>) -> Result<(), BoxError> {
    msg.outcome(msg.attempt())
}

/// Told when the held delivery's handler has started.
static HELD_STARTED: Notify = Notify::const_new();
/// Lets the held delivery's handler return.
static HELD_RELEASE: Notify = Notify::const_new();
/// Whether the next delivery is held (the first one is).
static HOLD_NEXT: AtomicBool = AtomicBool::new(true);

/// Holds its first delivery until the test releases it: its connection is
/// closed meanwhile, so that its acknowledgement is stale.
#[consumer(routing_key = "restarted.#", group = "metrics-restart")]
async fn restarted(_msg: Message<Job>) -> Result<(), BoxError> {
    if HOLD_NEXT.swap(false, Ordering::SeqCst) {
        HELD_STARTED.notify_one();
        HELD_RELEASE.notified().await;
    }
    Ok(())
}

/// The process's Prometheus recorder, installed by the first test that
/// needs it (a recorder is global and installed once).
fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        PrometheusBuilder::new()
            .install_recorder()
            .expect("no other recorder in this binary")
    })
}

/// The samples of one scrape, by series: `name{label="value",...}` (labels
/// as the exporter wrote them) to value.
#[derive(Debug)]
struct Scrape {
    text: String,
    samples: BTreeMap<String, f64>,
}

impl Scrape {
    fn now() -> Self {
        let text = prometheus().render();
        let samples = text
            .lines()
            .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
            .map(|line| {
                let (series, value) = line.rsplit_once(' ').expect("a sample line");
                let value = value.parse().unwrap_or_else(|_| panic!("a number: {line}"));
                (series.to_owned(), value)
            })
            .collect();
        Self { text, samples }
    }

    /// The value of `name` with exactly these labels (in any order), if
    /// the series exists.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut wanted: Vec<String> = labels
            .iter()
            .map(|(label, value)| format!("{label}=\"{value}\""))
            .collect();
        wanted.sort();
        self.samples.iter().find_map(|(series, value)| {
            let (series_name, series_labels) = match series.split_once('{') {
                Some((series_name, rest)) => {
                    let mut labels: Vec<String> = rest
                        .trim_end_matches('}')
                        .split(',')
                        .map(str::to_owned)
                        .collect();
                    labels.sort();
                    (series_name, labels)
                }
                None => (series.as_str(), Vec::new()),
            };
            (series_name == name && series_labels == wanted).then_some(*value)
        })
    }

    /// Like [`get`](Self::get), 0 for a series not recorded (yet).
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or(0.0)
    }
}

/// Scrapes until `done` holds, within [`PATIENCE`]: the outcomes are
/// recorded on hutch's tasks, after anything a test could await.
async fn scrape_until(what: &str, done: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let scrape = Scrape::now();
        if done(&scrape) {
            return scrape;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never saw {what}; the scrape:\n{}",
            scrape.text
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_known_workload_is_counted_by_outcome() {
    init_logging();
    prometheus();
    let scope = Scope::new("metrics");
    let hutch = scope.hutch("metrics");
    let running = hutch.start().await.expect("start");
    let exchange = scope.exchange.as_str();

    // Five succeed at once, two fail once and succeed when retried, one is
    // not JSON (dead-lettered at once), one is routed nowhere.
    for id in 0..5 {
        hutch
            .publish("metered.ok", &Job { id, succeed_on: 1 })
            .await
            .expect("publish");
    }
    for id in 5..7 {
        hutch
            .publish("metered.flaky", &Job { id, succeed_on: 2 })
            .await
            .expect("publish");
    }
    raw_publish(
        exchange,
        "metered.poison",
        b"{not json",
        lapin::BasicProperties::default().with_content_type("application/json".into()),
    )
    .await;
    let unroutable = hutch
        .publish_with("unbound.key", &0, PublishOptions::new().mandatory())
        .await;
    assert!(
        matches!(unroutable, Err(Error::Unroutable { .. })),
        "{unroutable:?}"
    );

    let handled = |scrape: &Scrape, outcome: &str| {
        scrape.value(
            "hutch_messages_handled_total",
            &[("consumer", METERED), ("outcome", outcome)],
        )
    };
    let scrape = scrape_until("every delivery of the workload settled", |scrape| {
        handled(scrape, "acked") >= 7.0
            && handled(scrape, "retried") >= 2.0
            && handled(scrape, "dead_lettered") >= 1.0
    })
    .await;
    assert_eq!(handled(&scrape, "acked"), 7.0, "{}", scrape.text);
    assert_eq!(handled(&scrape, "retried"), 2.0, "{}", scrape.text);
    assert_eq!(handled(&scrape, "dead_lettered"), 1.0, "{}", scrape.text);
    for outcome in ["requeued", "redelivered"] {
        assert_eq!(
            scrape.get(
                "hutch_messages_handled_total",
                &[("consumer", METERED), ("outcome", outcome)]
            ),
            None,
            "{}",
            scrape.text
        );
    }
    // Ten handler calls: five, two twice, and the poison one (decoding is
    // part of the call). Without buckets, the exporter renders a histogram
    // as a summary: `_count` and `_sum`.
    assert_eq!(
        scrape.value(
            "hutch_handler_duration_seconds_count",
            &[("consumer", METERED)]
        ),
        10.0,
        "{}",
        scrape.text
    );
    assert!(
        scrape.value(
            "hutch_handler_duration_seconds_sum",
            &[("consumer", METERED)]
        ) > 0.0
    );
    assert_eq!(
        scrape.get("hutch_messages_in_flight", &[("consumer", METERED)]),
        Some(0.0),
        "{}",
        scrape.text
    );
    // The application's publishes; the raw one is not hutch's, the retry
    // and dead-letter copies are counted as their deliveries' outcomes.
    let publishes = |outcome: &str| {
        scrape.value(
            "hutch_publishes_total",
            &[("exchange", exchange), ("outcome", outcome)],
        )
    };
    assert_eq!(publishes("confirmed"), 7.0, "{}", scrape.text);
    assert_eq!(publishes("unroutable"), 1.0, "{}", scrape.text);
    assert_eq!(
        scrape.value(
            "hutch_publish_confirm_duration_seconds_count",
            &[("exchange", exchange)]
        ),
        7.0,
        "{}",
        scrape.text
    );
    // At least this hutch's two connections (the other tests' count too).
    for purpose in ["consume", "publish"] {
        assert!(
            scrape.value("hutch_connection_up", &[("purpose", purpose)]) >= 1.0,
            "{}",
            scrape.text
        );
    }
    assert!(
        scrape
            .text
            .contains("# HELP hutch_messages_handled_total Deliveries settled"),
        "described: {}",
        scrape.text
    );
    running.shutdown().await.expect("clean shutdown");
    hutch.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_restarts_and_stale_acks_are_counted() {
    prometheus();
    let turn = NodeTurn::take().await;
    let broker = turn.broker();
    let scope = Scope::new("metrics-restart");
    let hutch = Hutch::builder()
        .uri(broker.amqp_uri())
        .exchange(&scope.exchange)
        .namespace(&scope.namespace)
        .group("metrics-restart")
        .reconnect_delay(Duration::from_millis(50), Duration::from_secs(1))
        .build()
        .expect("settings");
    let mut events = hutch.events();
    let running = hutch.start().await.expect("start");
    let queue = scope.queue("restarted");
    let reconnects = |scrape: &Scrape| {
        scrape.value(
            "hutch_connection_reconnects_total",
            &[("purpose", "consume")],
        )
    };
    let before = Scrape::now();
    assert_eq!(
        before.get("hutch_consumer_restarts_total", &[("consumer", RESTARTED)]),
        None
    );

    // The broker cancels the consumer when its queue is deleted: a restart.
    let (connection, channel) = raw_channel_to(&broker).await;
    channel
        .queue_delete(queue.as_str().into(), Default::default())
        .await
        .expect("delete the queue");
    connection.close(200, "done".into()).await.expect("close");
    await_event(
        &mut events,
        |event| matches!(event, Event::ConsumerRestarted { consumer, .. } if consumer == RESTARTED),
    )
    .await;
    await_event(
        &mut events,
        |event| matches!(event, Event::ConsumerStarted { consumer, .. } if consumer == RESTARTED),
    )
    .await;
    let scrape = Scrape::now();
    assert_eq!(
        scrape.value("hutch_consumer_restarts_total", &[("consumer", RESTARTED)]),
        1.0,
        "{}",
        scrape.text
    );

    // A delivery held in its handler while every connection is
    // force-closed: the consume connection opens again, the handler's
    // acknowledgement is stale (its channel is gone), the broker delivers
    // the message again.
    hutch
        .publish(
            "restarted.held",
            &Job {
                id: 1,
                succeed_on: 1,
            },
        )
        .await
        .expect("publish");
    tokio::time::timeout(PATIENCE, HELD_STARTED.notified())
        .await
        .expect("the held delivery reached its handler");
    let closing = broker.clone();
    tokio::task::spawn_blocking(move || closing.close_all_connections("hutch-rs metrics test"))
        .await
        .expect("the close task does not panic")
        .expect("close all connections");
    await_event(
        &mut events,
        |event| matches!(event, Event::Disconnected { connection, .. } if *connection == "consume"),
    )
    .await;
    await_event(
        &mut events,
        |event| matches!(event, Event::Connected { connection, .. } if *connection == "consume"),
    )
    .await;
    HELD_RELEASE.notify_one();
    let scrape = Scrape::now();
    assert!(
        reconnects(&scrape) > reconnects(&before),
        "{}\nbefore: {}",
        scrape.text,
        reconnects(&before)
    );
    // A lost connection restarts the connection, not the consumer.
    await_event(
        &mut events,
        |event| matches!(event, Event::ConsumerStarted { consumer, .. } if consumer == RESTARTED),
    )
    .await;
    assert_eq!(
        hutch.status().consumer(&queue).map(|status| status.state),
        Some(ConsumerState::Consuming)
    );
    let handled = |scrape: &Scrape, outcome: &str| {
        scrape.value(
            "hutch_messages_handled_total",
            &[("consumer", RESTARTED), ("outcome", outcome)],
        )
    };
    let scrape = scrape_until("the held delivery handled again", |scrape| {
        handled(scrape, "acked") >= 1.0
    })
    .await;
    assert_eq!(handled(&scrape, "redelivered"), 1.0, "{}", scrape.text);
    assert_eq!(handled(&scrape, "acked"), 1.0, "{}", scrape.text);
    assert_eq!(
        scrape.value("hutch_stale_acks_total", &[("consumer", RESTARTED)]),
        1.0,
        "{}",
        scrape.text
    );
    assert_eq!(
        scrape.value("hutch_consumer_restarts_total", &[("consumer", RESTARTED)]),
        1.0,
        "{}",
        scrape.text
    );
    running.shutdown().await.expect("clean shutdown");
    hutch.close().await.expect("close");
}

/// Waits for the first event that `wanted` accepts, within [`PATIENCE`].
async fn await_event(events: &mut hutch_rs::EventStream, wanted: impl Fn(&Event) -> bool) {
    tokio::time::timeout(PATIENCE, async {
        loop {
            match events.recv().await {
                Some(event) if wanted(&event) => return,
                Some(_) => {}
                None => panic!("the event stream ended"),
            }
        }
    })
    .await
    .expect("the event came");
}
