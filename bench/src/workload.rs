//! The work every implementation does alike: names, settings and the message.
//!
//! The queues are hutch-rs's consumer queues (`<namespace>:<queue>` of the
//! `#[consumer]` functions in `hutch_client.rs`), so that the raw lapin
//! clients consume exactly the queues hutch-rs declares; the orchestrator
//! declares them first, with the same arguments, so that any implementation
//! can go first.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lapin::BasicProperties;
use serde::{Deserialize, Serialize};

/// The namespace of every hutch-rs instance of the benchmark.
pub(crate) const NAMESPACE: &str = "bench";
/// hutch-rs's default exchange: a durable topic exchange.
pub(crate) const EXCHANGE: &str = hutch_rs::DEFAULT_EXCHANGE;
/// Unacknowledged deliveries a consumer may hold (`basic.qos`).
pub(crate) const PREFETCH: u16 = 200;
/// Publishes awaiting their confirm at once.
pub(crate) const CONFIRM_WINDOW: usize = 200;
/// Bytes of every message body (JSON).
pub(crate) const BODY_BYTES: usize = 1024;

/// The drain scenario's queue: consumer `drain` (queue `drain`).
pub(crate) const DRAIN_QUEUE: &str = "bench:drain";
/// Routes to [`DRAIN_QUEUE`].
pub(crate) const DRAIN_KEY: &str = "bench.drain";
/// Not a hutch-rs consumer's queue: only the publish scenario's sink.
pub(crate) const PUBLISH_QUEUE: &str = "bench:publish_sink";
/// Routes to [`PUBLISH_QUEUE`].
pub(crate) const PUBLISH_KEY: &str = "bench.publish";
/// The latency scenario's queue: consumer `latency`.
pub(crate) const LATENCY_QUEUE: &str = "bench:latency";
/// Routes to [`LATENCY_QUEUE`].
pub(crate) const LATENCY_KEY: &str = "bench.latency";
/// The recovery scenario's queue: consumer `recovery`.
pub(crate) const RECOVERY_QUEUE: &str = "bench:recovery";
/// Routes to [`RECOVERY_QUEUE`].
pub(crate) const RECOVERY_KEY: &str = "bench.recovery";
/// The dead-letter scenario's queue: consumer `dead_letter`, whose handler
/// always fails with `max_attempts = 1`.
pub(crate) const DEAD_LETTER_QUEUE: &str = "bench:dead_letter";
/// Routes to [`DEAD_LETTER_QUEUE`].
pub(crate) const DEAD_LETTER_KEY: &str = "bench.dead_letter";
/// The CPU-bound handlers' queue: consumer `cpu`.
pub(crate) const CPU_QUEUE: &str = "bench:cpu";
/// Routes to [`CPU_QUEUE`].
pub(crate) const CPU_KEY: &str = "bench.cpu";
/// The CPU each call of the `cpu` handler burns (a busy loop).
pub(crate) const CPU_WORK: Duration = Duration::from_micros(200);
/// The isolation scenario's consumer A, under a failure storm: consumer
/// `storm`, always failing with `max_attempts = 1`.
pub(crate) const STORM_QUEUE: &str = "bench:storm";
/// Routes to [`STORM_QUEUE`].
pub(crate) const STORM_KEY: &str = "bench.storm";
/// The isolation scenario's consumer B, an ordinary one: consumer `steady`.
pub(crate) const STEADY_QUEUE: &str = "bench:steady";
/// Routes to [`STEADY_QUEUE`].
pub(crate) const STEADY_KEY: &str = "bench.steady";
/// The failover scenario's queue, on the three-node cluster: consumer
/// `failover`, a quorum queue led by the node it is declared through.
pub(crate) const FAILOVER_QUEUE: &str = "bench:failover";
/// Routes to [`FAILOVER_QUEUE`].
pub(crate) const FAILOVER_KEY: &str = "bench.failover";
/// Confirmed publishes in each failover run: as many as the cluster tests'
/// failover streams (`tests/cluster.rs`), so that the two can be compared.
pub(crate) const FAILOVER_STREAM: u64 = 10_000;
/// How many were confirmed when the failover run stops the connected node.
pub(crate) const FAILOVER_AT: u64 = 3_000;
/// Tasks publishing the failover stream, each awaiting its confirm before
/// the next publish: as in the cluster tests.
pub(crate) const FAILOVER_PUBLISHERS: usize = 16;
/// How many consumers the idle-memory scenario runs; `build.rs` generates
/// as many `#[consumer]` functions.
pub(crate) const IDLE_CONSUMERS: usize = 1_000;

/// The queue of idle consumer `n` (hutch-rs consumer `idle_<n>`).
pub(crate) fn idle_queue(n: usize) -> String {
    format!("{NAMESPACE}:idle_{n}")
}

/// `<queue>:dead`, where hutch-rs forwards `queue`'s failed messages.
pub(crate) fn dead_queue(queue: &str) -> String {
    format!("{queue}:dead")
}

/// The routing key of idle consumer `n`.
pub(crate) fn idle_key(n: usize) -> String {
    format!("idle.{n}")
}

/// The `seq` of a warm-up message, published before a measured phase to
/// open hutch-rs's (lazily opened) publishing connection, and by the raw
/// clients alike; consumers ignore it.
pub(crate) const WARM_UP_SEQ: u64 = u64::MAX;
/// Recovery markers (published after the broker came back) have a `seq` of
/// at least this; the trickle before the outage stays below it.
pub(crate) const MARKER_SEQ: u64 = 1 << 40;

/// The message of every scenario, serialized as exactly [`BODY_BYTES`] of
/// JSON: hutch-rs publishes it with `publish`, the raw clients serialize it
/// with `serde_json::to_vec`, which gives the same bytes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Payload {
    /// The message's number within its run.
    pub(crate) seq: u64,
    /// When it was (scheduled to be) sent, in nanoseconds since the Unix
    /// epoch; 0 where nobody asks.
    pub(crate) sent_at_ns: u64,
    /// Filler up to [`BODY_BYTES`].
    pub(crate) pad: String,
}

impl Payload {
    /// A message whose JSON is exactly [`BODY_BYTES`] long.
    pub(crate) fn new(seq: u64, sent_at_ns: u64) -> Self {
        // The JSON without the numbers' digits and the filler.
        const SKELETON: &str = r#"{"seq":,"sent_at_ns":,"pad":""}"#;
        let used = SKELETON.len() + digits(seq) + digits(sent_at_ns);
        Self {
            seq,
            sent_at_ns,
            pad: "x".repeat(BODY_BYTES - used),
        }
    }
}

/// Decimal digits of `n`.
fn digits(n: u64) -> usize {
    n.checked_ilog10().map_or(1, |log| log as usize + 1)
}

/// The properties of a raw publish: persistent (delivery mode 2) JSON, as
/// hutch-rs publishes.
pub(crate) fn persistent_json() -> BasicProperties {
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into())
}

/// The properties hutch-rs's `publish` gives a message: persistent JSON, a
/// v4 UUID for message id, the time in Unix seconds. The raw clients
/// publish with the same, so that both send the same bytes but for the id
/// and the time.
pub(crate) fn as_hutch_publishes() -> BasicProperties {
    persistent_json()
        .with_message_id(uuid::Uuid::new_v4().to_string().into())
        .with_timestamp(unix_nanos() / 1_000_000_000)
}

/// Now, in nanoseconds since the Unix epoch: the clock that the latency and
/// recovery scenarios compare across tasks and processes of this machine.
pub(crate) fn unix_nanos() -> u64 {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970");
    u64::try_from(since_epoch.as_nanos()).expect("nanoseconds since 1970 fit in u64 until 2554")
}
