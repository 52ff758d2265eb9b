//! Helpers shared by the integration tests: the private broker, unique names,
//! a journal that handlers write to and tests wait on, and raw lapin access
//! for publishing what hutch-rs itself never would.

pub mod failover;
pub mod otel;
pub mod pki;
pub mod proxy;
pub mod spans;

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    sync::{LazyLock, Mutex},
    time::Duration,
};

use hutch_rs::{Hutch, HutchBuilder, testing::Broker};
use lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties, options::BasicPublishOptions,
};
use tokio::sync::watch;

/// How long a test waits for something the broker or a handler should do
/// promptly; reaching it means the behaviour is broken, not slow.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// The private RabbitMQ node of this test binary.
pub fn broker() -> &'static Broker {
    Broker::shared()
}

/// A name no other test uses, so tests sharing a node do not see each other.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// Names isolating one test on the shared node.
#[derive(Debug, Clone)]
pub struct Scope {
    /// A fresh exchange.
    pub exchange: String,
    /// A fresh namespace.
    pub namespace: String,
}

impl Scope {
    /// A fresh exchange and namespace.
    pub fn new(test: &str) -> Self {
        Self {
            exchange: unique(&format!("x-{test}")),
            namespace: unique(test),
        }
    }

    /// A builder aimed at the shared node, this scope's exchange and
    /// namespace, running `group`.
    pub fn builder(&self, group: &str) -> HutchBuilder {
        Hutch::builder()
            .uri(broker().amqp_uri())
            .exchange(&self.exchange)
            .namespace(&self.namespace)
            .group(group)
    }

    /// A built [`Hutch`] for `group`.
    pub fn hutch(&self, group: &str) -> Hutch {
        self.builder(group)
            .build()
            .expect("test settings are valid")
    }

    /// The full name of a queue in this scope's namespace.
    pub fn queue(&self, base: &str) -> String {
        format!("{}:{base}", self.namespace)
    }
}

/// What a handler saw of one message.
#[derive(Debug, Clone, PartialEq)]
pub struct Seen {
    /// Which consumer saw it.
    pub consumer: &'static str,
    /// The routing key.
    pub routing_key: String,
    /// The message id.
    pub message_id: Option<String>,
    /// The decoded body.
    pub body: serde_json::Value,
    /// The content type property.
    pub content_type: Option<String>,
    /// The delivery mode property (2 = persistent).
    pub delivery_mode: Option<u8>,
    /// Whether the timestamp property was set.
    pub has_timestamp: bool,
    /// Whether the broker flagged a redelivery.
    pub redelivered: bool,
    /// Which attempt this was (`Message::attempt`).
    pub attempt: u32,
    /// When the handler saw it.
    pub at: std::time::Instant,
}

impl Seen {
    /// Records what `msg` carries.
    pub fn of<T: serde::Serialize>(consumer: &'static str, msg: &hutch_rs::Message<T>) -> Self {
        Self {
            consumer,
            routing_key: msg.routing_key().to_owned(),
            message_id: msg.message_id().map(str::to_owned),
            body: serde_json::to_value(msg.body()).expect("bodies serialize"),
            content_type: msg
                .properties()
                .content_type()
                .as_ref()
                .map(|t| t.to_string()),
            delivery_mode: *msg.properties().delivery_mode(),
            has_timestamp: msg.timestamp().is_some(),
            redelivered: msg.redelivered(),
            attempt: msg.attempt(),
            at: std::time::Instant::now(),
        }
    }
}

/// An append-only log that handlers write to and tests wait on.
#[derive(Debug)]
pub struct Journal {
    entries: Mutex<Vec<Seen>>,
    count: watch::Sender<usize>,
}

impl Default for Journal {
    fn default() -> Self {
        Self {
            entries: Mutex::new(Vec::new()),
            count: watch::Sender::new(0),
        }
    }
}

impl Journal {
    /// Appends one entry.
    pub fn record(&self, seen: Seen) {
        let mut entries = self.entries.lock().unwrap();
        entries.push(seen);
        let len = entries.len();
        drop(entries);
        self.count.send_replace(len);
    }

    /// Everything recorded so far.
    pub fn entries(&self) -> Vec<Seen> {
        self.entries.lock().unwrap().clone()
    }

    /// Entries recorded by `consumer`.
    pub fn by(&self, consumer: &str) -> Vec<Seen> {
        self.entries()
            .into_iter()
            .filter(|seen| seen.consumer == consumer)
            .collect()
    }

    /// Waits until at least `n` entries of `consumer` are recorded; panics
    /// after [`PATIENCE`].
    pub async fn wait_for(&self, consumer: &str, n: usize) -> Vec<Seen> {
        let mut changes = self.count.subscribe();
        let waited = tokio::time::timeout(PATIENCE, async {
            loop {
                let seen = self.by(consumer);
                if seen.len() >= n {
                    return seen;
                }
                changes
                    .changed()
                    .await
                    .expect("the journal lives as long as the test");
            }
        })
        .await;
        waited.unwrap_or_else(|_| {
            panic!(
                "{consumer} saw {} message(s), expected {n}: {:#?}",
                self.by(consumer).len(),
                self.by(consumer)
            )
        })
    }
}

/// A journal per test binary.
pub static JOURNAL: LazyLock<Journal> = LazyLock::new(Journal::default);

/// A plain lapin channel on the shared node, for what hutch-rs would not do
/// (publishing malformed bodies, pre-declaring queues).
pub async fn raw_channel() -> (Connection, Channel) {
    raw_channel_to(broker()).await
}

/// A plain lapin connection and channel to `broker`.
pub async fn raw_channel_to(broker: &Broker) -> (Connection, Channel) {
    let connection = Connection::connect(&broker.amqp_uri(), ConnectionProperties::default())
        .await
        .expect("raw connection to the test node");
    let channel = connection.create_channel().await.expect("raw channel");
    (connection, channel)
}

/// Publishes `body` as-is with `properties` and waits until the broker has it.
pub async fn raw_publish(
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    properties: BasicProperties,
) {
    let (connection, channel) = raw_channel().await;
    channel
        .confirm_select(Default::default())
        .await
        .expect("confirm mode");
    let confirm = channel
        .basic_publish(
            exchange.into(),
            routing_key.into(),
            BasicPublishOptions::default(),
            body,
            properties,
        )
        .await
        .expect("raw publish");
    assert!(confirm.await.expect("raw confirm").is_ack());
    connection
        .close(200, "done".into())
        .await
        .expect("close raw connection");
}

/// Takes every message out of `queue` (basic.get, acknowledged), in order,
/// to look at what hutch-rs put there.
pub async fn take_all(queue: &str) -> Vec<lapin::message::BasicGetMessage> {
    let (connection, channel) = raw_channel().await;
    let mut taken = Vec::new();
    while let Some(message) = channel
        .basic_get(
            queue.into(),
            lapin::options::BasicGetOptions { no_ack: true },
        )
        .await
        .unwrap_or_else(|error| panic!("basic.get on {queue:?}: {error}"))
    {
        taken.push(message);
    }
    connection
        .close(200, "done".into())
        .await
        .expect("close raw connection");
    taken
}

/// Declares the scope's exchange and a queue bound to it with `routing_key`,
/// on the shared node.
pub async fn bound_queue(
    scope: &Scope,
    name: &str,
    routing_key: &str,
    arguments: lapin::types::FieldTable,
) -> String {
    bound_queue_on(broker(), scope, name, routing_key, arguments).await
}

/// Declares `scope`'s exchange and a durable queue bound to it with
/// `routing_key` on `broker`, through a plain lapin connection, as another
/// application might have.
pub async fn bound_queue_on(
    broker: &Broker,
    scope: &Scope,
    name: &str,
    routing_key: &str,
    arguments: lapin::types::FieldTable,
) -> String {
    let queue = scope.queue(name);
    let (connection, channel) = raw_channel_to(broker).await;
    channel
        .exchange_declare(
            scope.exchange.as_str().into(),
            lapin::ExchangeKind::Topic,
            lapin::options::ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            lapin::types::FieldTable::default(),
        )
        .await
        .expect("declare the exchange");
    declare_durable(&channel, &queue, arguments).await;
    channel
        .queue_bind(
            queue.as_str().into(),
            scope.exchange.as_str().into(),
            routing_key.into(),
            lapin::options::QueueBindOptions::default(),
            lapin::types::FieldTable::default(),
        )
        .await
        .expect("bind the queue");
    connection.close(200, "done".into()).await.unwrap();
    queue
}

/// `rabbitmqctl eval` arguments that raise a memory alarm on the node:
/// every connection that publishes is blocked until [`ALARM_OFF`].
pub const ALARM_ON: &[&str] = &[
    "eval",
    "rabbit_alarm:set_alarm({{resource_limit, memory, node()}, []}).",
];

/// Clears the alarm of [`ALARM_ON`].
pub const ALARM_OFF: &[&str] = &[
    "eval",
    "rabbit_alarm:clear_alarm({resource_limit, memory, node()}).",
];

/// The number of messages (ready + unacknowledged) in `queue`, read exactly
/// from the broker; panics if the queue does not exist.
pub fn queue_depth(queue: &str) -> u64 {
    broker()
        .queue(queue)
        .expect("rabbitmqctl list_queues")
        .unwrap_or_else(|| panic!("queue {queue:?} does not exist on the broker"))
        .messages
}

/// Waits until `queue` holds exactly `messages` (ready + unacknowledged).
/// The broker's queues can only be polled; the deadline turns a hang into a
/// failure.
pub async fn await_depth(queue: &str, messages: u64) {
    let queue = queue.to_owned();
    tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + PATIENCE;
        loop {
            let depth = queue_depth(&queue);
            if depth == messages {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{queue} holds {depth} messages, never {messages}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    })
    .await
    .expect("the polling task does not panic but on its deadline");
}

/// The text of header `name` (an AMQP long string) of a message hutch-rs
/// forwarded, such as [`hutch_rs::headers::ERROR`]; panics if it has none.
pub fn header_text(properties: &BasicProperties, name: &str) -> String {
    match properties
        .headers()
        .as_ref()
        .and_then(|headers| headers.inner().get(name))
    {
        Some(lapin::types::AMQPValue::LongString(text)) => {
            String::from_utf8_lossy(text.as_bytes()).into_owned()
        }
        other => panic!("header {name} is not text: {other:?}"),
    }
}

/// Installs the one subscriber of a test binary, once: `RUST_LOG=debug`
/// shows what hutch-rs did; beside it, the capture of hutch-rs's message
/// spans ([`spans`]) and of its logs ([`log_lines_with`]). Every test calls
/// this, and none installs a subscriber of its own: the first would win.
pub fn init_logging() {
    static INIT: LazyLock<()> = LazyLock::new(|| {
        use tracing_subscriber::{Layer, layer::SubscriberExt, util::SubscriberInitExt};
        let logs = tracing_subscriber::fmt::layer()
            .with_test_writer()
            .with_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "warn".into()),
            );
        let spans = spans::SpanCapture.with_filter(
            tracing_subscriber::filter::Targets::new()
                .with_target(spans::TARGET, tracing::Level::INFO),
        );
        // What an operator would read: hutch-rs's own logs at INFO. (Leaving
        // the message spans out with a `LevelFilter::OFF` directive for
        // their target kept the capture layer from seeing `publish` spans,
        // tracing-subscriber 0.3's per-layer filters being what they are.)
        let writer = LogWriter(CAPTURED_LOGS.clone());
        let captured = tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .with_filter(
                tracing_subscriber::filter::Targets::new()
                    .with_target("hutch_rs", tracing::Level::INFO),
            );
        tracing_subscriber::registry()
            .with(logs)
            .with(spans)
            .with(captured)
            .with(otel::layer())
            .init();
    });
    LazyLock::force(&INIT);
}

/// Everything hutch-rs logged at INFO and above in this test binary, as
/// text, to check what an operator would read (see [`log_lines_with`]).
static CAPTURED_LOGS: LazyLock<std::sync::Arc<Mutex<Vec<u8>>>> = LazyLock::new(Default::default);

/// Writes into [`CAPTURED_LOGS`].
#[derive(Clone)]
struct LogWriter(std::sync::Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The lines hutch-rs logged at INFO and above that contain `needle`
/// (after [`init_logging`]).
pub fn log_lines_with(needle: &str) -> Vec<String> {
    let logs = CAPTURED_LOGS.lock().unwrap();
    String::from_utf8_lossy(&logs)
        .lines()
        .filter(|line| line.contains(needle))
        .map(str::to_owned)
        .collect()
}

/// Waits until `queue` exists and has `consumers` consumers. The broker's
/// state can only be polled; the deadline turns a hang into a failure.
/// Blocking: call it through `spawn_blocking` from async tests.
pub fn await_consumer_count(queue: &str, consumers: u64) {
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let info = broker().queue(queue).expect("rabbitmqctl list_queues");
        if info
            .as_ref()
            .is_some_and(|info| info.consumers == consumers)
        {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "queue {queue} never had {consumers} consumer(s): {info:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Declares a durable `queue` with `arguments` through a plain lapin channel,
/// as another application might have.
pub async fn declare_queue(queue: &str, arguments: lapin::types::FieldTable) {
    let (connection, channel) = raw_channel().await;
    declare_durable(&channel, queue, arguments).await;
    connection
        .close(200, "done".into())
        .await
        .expect("close raw connection");
}

async fn declare_durable(channel: &Channel, queue: &str, arguments: lapin::types::FieldTable) {
    channel
        .queue_declare(
            queue.into(),
            lapin::options::QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            arguments,
        )
        .await
        .expect("declare the queue");
}

/// Which published messages each run has consumed, by a unique id per
/// publish call, for "every confirmed message is consumed at least once"
/// checks: a retried publish has another id than the attempt that failed.
#[derive(Debug)]
pub struct Tally {
    seen: Mutex<HashMap<String, HashSet<String>>>,
    changed: watch::Sender<u64>,
}

impl Default for Tally {
    fn default() -> Self {
        Self {
            seen: Mutex::new(HashMap::new()),
            changed: watch::Sender::new(0),
        }
    }
}

impl Tally {
    /// Records that the message published as `id` in `run` was consumed.
    pub fn record(&self, run: &str, id: &str) {
        self.seen
            .lock()
            .unwrap()
            .entry(run.to_owned())
            .or_default()
            .insert(id.to_owned());
        self.changed.send_modify(|version| *version += 1);
    }

    /// How many distinct messages of `run` were consumed.
    pub fn count(&self, run: &str) -> usize {
        self.seen.lock().unwrap().get(run).map_or(0, HashSet::len)
    }

    /// The messages of `expected` that `run` has not consumed.
    pub fn missing(&self, run: &str, expected: &BTreeSet<String>) -> Vec<String> {
        let seen = self.seen.lock().unwrap();
        let seen = seen.get(run);
        expected
            .iter()
            .filter(|id| !seen.is_some_and(|seen| seen.contains(*id)))
            .cloned()
            .collect()
    }

    /// Waits until every message of `expected` was consumed; panics with
    /// the missing ones after `patience`.
    pub async fn wait_for_all(&self, run: &str, expected: &BTreeSet<String>, patience: Duration) {
        if let Err(missing) = self.all_within(run, expected, patience).await {
            panic!(
                "{} confirmed message(s) of {run} were never consumed, e.g. {:?}",
                missing.len(),
                &missing[..missing.len().min(20)]
            );
        }
    }

    /// Waits until every message of `expected` was consumed; the missing
    /// ones after `patience`.
    pub async fn all_within(
        &self,
        run: &str,
        expected: &BTreeSet<String>,
        patience: Duration,
    ) -> Result<(), Vec<String>> {
        let mut changes = self.changed.subscribe();
        let waited = tokio::time::timeout(patience, async {
            while !self.missing(run, expected).is_empty() {
                changes
                    .changed()
                    .await
                    .expect("the tally lives as long as the test");
            }
        })
        .await;
        waited.map_err(|_| self.missing(run, expected))
    }
}

/// The tally of this test binary.
pub static TALLY: LazyLock<Tally> = LazyLock::new(Tally::default);

/// The node of [`NodeTurn`], once started.
static TURN_NODE: tokio::sync::Mutex<Option<std::sync::Arc<Broker>>> =
    tokio::sync::Mutex::const_new(None);

/// A test's turn on the private node of the tests that disturb their node
/// (forced closes, alarms, a stopped application, a stalled path), which
/// would disturb the others on the shared one. Those tests take turns, so
/// each has the node (and its connection and channel counts) to itself,
/// and each puts the node back as it found it (application running, no
/// alarm). One node for all of them instead of one each saves a node start
/// (7–11 seconds) per test. A test that panics may leave the node in any
/// state, so the next turn gets a new node.
#[derive(Debug)]
pub struct NodeTurn {
    node: tokio::sync::MutexGuard<'static, Option<std::sync::Arc<Broker>>>,
}

impl NodeTurn {
    /// Waits for the turn, starts the node if there is none, and waits until
    /// the connections of the test before are gone.
    pub async fn take() -> Self {
        let mut node = TURN_NODE.lock().await;
        init_logging();
        if node.is_none() {
            *node = Some(own_broker().await);
        }
        let turn = Self { node };
        let broker = turn.broker();
        tokio::task::spawn_blocking(move || {
            let deadline = std::time::Instant::now() + PATIENCE;
            while broker
                .connection_count()
                .expect("rabbitmqctl list_connections")
                > 0
            {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the connections of the test before are still open"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        })
        .await
        .expect("the wait does not panic");
        turn
    }

    /// Waits for the turn without the shared node, for a test that needs a
    /// node configured differently ([`own_broker`]): it still runs alone.
    pub async fn alone() -> Self {
        Self {
            node: TURN_NODE.lock().await,
        }
    }

    /// The node.
    ///
    /// # Panics
    ///
    /// On a turn taken with [`NodeTurn::alone`].
    pub fn broker(&self) -> std::sync::Arc<Broker> {
        self.node.clone().expect("a turn taken with a node")
    }
}

impl Drop for NodeTurn {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // Killed once the failing test drops its own handle too.
            self.node.take();
        }
    }
}

/// A private node for one test, for what would disturb the others on a
/// shared one and cannot be undone (a changed node setting); see also
/// [`NodeTurn`].
pub async fn own_broker() -> std::sync::Arc<Broker> {
    let broker = tokio::task::spawn_blocking(Broker::start)
        .await
        .expect("the start task does not panic")
        .expect("start a private node");
    std::sync::Arc::new(broker)
}

/// A virtual host of its own on the shared node ([`Broker::isolated`]), for
/// a test that would otherwise want a node of its own only to see nothing
/// but its own queues, connections and channels, and to close its own
/// connections: `close_all_connections`, `connection_count`, `queues` and
/// the other inspections of the handle see its virtual host alone. It costs
/// a management request instead of a node start (7–11 seconds); the
/// virtual host is deleted when the last clone of the handle drops. Tests
/// that stop, restart, alarm or reconfigure their node still need
/// [`NodeTurn`] or [`own_broker`].
pub async fn isolated_broker() -> std::sync::Arc<Broker> {
    let broker = tokio::task::spawn_blocking(|| broker().isolated())
        .await
        .expect("the set-up task does not panic")
        .expect("a virtual host of its own on the shared node");
    std::sync::Arc::new(broker)
}

/// Runs `rabbitmqctl args` on `broker` without blocking the runtime.
pub async fn rabbitmqctl(broker: &std::sync::Arc<Broker>, args: &'static [&'static str]) {
    let broker = broker.clone();
    tokio::task::spawn_blocking(move || broker.rabbitmqctl(args))
        .await
        .expect("the rabbitmqctl task does not panic")
        .unwrap_or_else(|error| panic!("rabbitmqctl {args:?}: {error}"));
}

/// Runs `hutch.run_until` in a task, until the returned sender is used (or
/// dropped).
pub fn spawn_run_until(
    hutch: &hutch_rs::Hutch,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<hutch_rs::Result<()>>,
) {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let hutch = hutch.clone();
    let run = tokio::spawn(async move {
        hutch
            .run_until(async {
                let _ = stopped.await;
            })
            .await
    });
    (stop, run)
}

/// A message whose handler fails until `succeed_on`: what the failure
/// handling and queue type tests publish.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Job {
    /// Tells the messages of one test apart.
    pub id: u64,
    /// The attempt that succeeds (0: none does).
    pub succeed_on: u32,
}

impl Job {
    /// The handler's result on `attempt`.
    pub fn outcome(&self, attempt: u32) -> Result<(), hutch_rs::BoxError> {
        if self.succeed_on != 0 && attempt >= self.succeed_on {
            Ok(())
        } else {
            Err(std::io::Error::other(format!("the ledger is locked (attempt {attempt})")).into())
        }
    }
}
