//! The AMQP headers hutch-rs reads and writes on retried and dead-lettered
//! messages.
//!
//! A retry is a copy of the message that waits in a delay queue and comes
//! back to its consumer's queue through the default exchange; these headers
//! carry what that route would otherwise lose. A copy in `<queue>:dead` says
//! why it is there:
//!
//! | header | on | value |
//! |---|---|---|
//! | [`ATTEMPT`] | retries | the attempt the copy is (2 = first retry) |
//! | [`ORIGINAL_EXCHANGE`] | retries, dead letters | the exchange it was published to |
//! | [`ORIGINAL_ROUTING_KEY`] | retries, dead letters | the routing key it was published with |
//! | [`ERROR`] | retries, dead letters | the text of the last error |
//! | [`ATTEMPTS`] | dead letters | how many times it was handled |
//! | [`CONSUMER`] | dead letters | the consumer, `module::function` |
//! | [`QUEUE`] | dead letters | the consumer's queue |
//! | [`REASON`] | dead letters | [`REASON_ATTEMPTS_EXHAUSTED`], [`REASON_POISON`] or [`REASON_REJECTED`] |
//! | [`FAILED_AT`] | dead letters | when it failed (AMQP timestamp, seconds) |
//! | [`COPY`] | retries, dead letters | the copy's number on its consumer's forwarding channel |
//! | [`HEADERS_DROPPED`] | retries, dead letters | only when the original's headers did not fit beside these: what was dropped |
//! | [`REJECTED_HEADERS`] | deliveries, dead letters | in place of headers nested too deeply to read safely |
//! | [`TRACEPARENT`], [`TRACESTATE`] | publishes, retries, dead letters | W3C trace context, with the `opentelemetry` feature |
//!
//! Every other property and header of the original message is kept, unless
//! the copy would not fit in one AMQP frame: then the original's own headers
//! are dropped (and [`HEADERS_DROPPED`] says so), so that the copy still
//! reaches its queue.
//!
//! These headers count only on a delivery that came back through one of the
//! consumer's own delay queues (through the default exchange, with the
//! broker's `x-death` record of it): on any other delivery they are a
//! publisher's say-so, and [`Message::attempt`](crate::Message::attempt),
//! [`Message::routing_key`](crate::Message::routing_key) and
//! [`Message::exchange`](crate::Message::exchange) ignore them.

use lapin::types::{AMQPValue, FieldTable};

/// The attempt number of a retried copy (an integer; absent on the first
/// delivery, which is attempt 1). Read it with
/// [`Message::attempt`](crate::Message::attempt).
pub const ATTEMPT: &str = "x-hutch-attempt";
/// On a message replayed from `<queue>:dead`
/// ([`DeadLetters::replay`](crate::DeadLetters::replay), `dead replay`):
/// how many times it has been replayed. Such a message comes back through
/// the default exchange to its consumer's queue alone, and the consumer
/// restores its original exchange and routing key from
/// [`ORIGINAL_EXCHANGE`] and [`ORIGINAL_ROUTING_KEY`], as for a retry.
pub const REPLAYS: &str = "x-hutch-replays";
/// The broker's count of earlier deliveries of a message that were not
/// acked, which a quorum queue writes on a redelivery. hutch-rs adds it to
/// [`Message::attempt`](crate::Message::attempt) on a redelivery.
pub const DELIVERY_COUNT: &str = "x-delivery-count";
/// The exchange the message was first published to.
pub const ORIGINAL_EXCHANGE: &str = "x-hutch-original-exchange";
/// The routing key the message was first published with.
pub const ORIGINAL_ROUTING_KEY: &str = "x-hutch-original-routing-key";
/// The text of the error that made the message fail (the last one).
pub const ERROR: &str = "x-hutch-error";
/// On a dead letter: how many times the message was handled.
pub const ATTEMPTS: &str = "x-hutch-attempts";
/// On a dead letter: the consumer that gave up on it (`module::function`).
pub const CONSUMER: &str = "x-hutch-consumer";
/// On a dead letter: the queue it was consumed from.
pub const QUEUE: &str = "x-hutch-queue";
/// On a dead letter: why it is there.
pub const REASON: &str = "x-hutch-reason";
/// On a dead letter: when it failed, as an AMQP timestamp (seconds since
/// the Unix epoch).
pub const FAILED_AT: &str = "x-hutch-failed-at";

/// On a copy: its number on its consumer's forwarding channel. Many copies
/// are in flight at once there, and the broker returns one whose queue is
/// missing without saying which publish it was; this number tells.
pub const COPY: &str = "x-hutch-copy";

/// On a copy whose original headers did not fit in one frame beside the
/// ones above: how many were dropped and how large they were.
pub const HEADERS_DROPPED: &str = "x-hutch-headers-dropped";

/// Replaces a delivery's headers when they nest arrays and tables deeper
/// than 64 levels: a long string saying how many bytes were removed.
///
/// Reading such headers would overflow the stack of lapin's I/O thread
/// (amq-protocol parses them recursively) and abort the process, so
/// hutch-rs rewrites them as they arrive from the broker, before anything
/// parses them. Every other property is kept; the consumer does not call
/// its handler but dead-letters the message as [`REASON_POISON`], with this
/// header in place of the originals.
///
/// A publisher that sets this header itself only makes its own message
/// poison: it is not trusted for anything else.
pub const REJECTED_HEADERS: &str = "x-hutch-rejected-headers";

/// W3C Trace Context's `traceparent`: the trace and the span that published
/// the message. With the `opentelemetry` feature, every publish carries its
/// publish span's (a retry or dead-letter copy its copy span's, replacing
/// the original's), and a delivery that carries a valid one is handled in a
/// child of that span. Read only as a string of at most 512 bytes; anything
/// else is ignored.
pub const TRACEPARENT: &str = "traceparent";
/// W3C Trace Context's `tracestate`: vendors' data beside
/// [`TRACEPARENT`], carried and read the same way.
pub const TRACESTATE: &str = "tracestate";

/// [`REASON`]: the handler failed on every one of its attempts.
pub const REASON_ATTEMPTS_EXHAUSTED: &str = "attempts-exhausted";
/// [`REASON`]: the body could not be decoded (or its content type is not
/// JSON, or its headers were [rejected](REJECTED_HEADERS)); the handler was
/// not called.
pub const REASON_POISON: &str = "poison";
/// [`REASON`]: the handler asked for it with
/// [`Decision::dead_letter`](crate::Decision::dead_letter).
pub const REASON_REJECTED: &str = "rejected";

/// A header's value as text, if it is a string.
pub(crate) fn text(headers: &FieldTable, name: &str) -> Option<String> {
    match headers.inner().get(name)? {
        AMQPValue::LongString(value) => {
            Some(String::from_utf8_lossy(value.as_bytes()).into_owned())
        }
        AMQPValue::ShortString(value) => Some(value.as_str().to_owned()),
        _ => None,
    }
}

/// A header's value as a number, whichever integer type a publisher chose.
pub(crate) fn number(headers: &FieldTable, name: &str) -> Option<i64> {
    match *headers.inner().get(name)? {
        AMQPValue::ShortShortInt(value) => Some(value.into()),
        AMQPValue::ShortShortUInt(value) => Some(value.into()),
        AMQPValue::ShortInt(value) => Some(value.into()),
        AMQPValue::ShortUInt(value) => Some(value.into()),
        AMQPValue::LongInt(value) => Some(value.into()),
        AMQPValue::LongUInt(value) => Some(value.into()),
        AMQPValue::LongLongInt(value) => Some(value),
        _ => None,
    }
}
