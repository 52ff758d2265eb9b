//! The crate's error and result types.

use std::time::Duration;

/// The error type handlers return: any error that is `Send + Sync`.
///
/// `anyhow::Error`, `std::io::Error` and your own error types convert into it
/// with `?` or `.into()`.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// `Result<T, hutch_rs::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in hutch-rs.
///
/// Messages name the setting, resource or routing key at fault. Broker URIs in
/// messages have their password masked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A setting is invalid; reported by `build()` before any connection.
    #[error("invalid setting {setting}: {reason}")]
    Config {
        /// The setting: the builder method or environment variable it came from.
        setting: String,
        /// What is wrong with it.
        reason: String,
    },

    /// The broker could not be reached, or refused the connection.
    #[error("could not connect to {uri}: {source}")]
    Connect {
        /// The broker URI, password masked.
        uri: String,
        /// lapin's error.
        #[source]
        source: Box<lapin::Error>,
    },

    /// TLS with the broker failed in a way retrying cannot fix, most often
    /// a certificate problem: the broker's certificate is not trusted (wrong
    /// CA, or a name that does not match), or the broker refused our client
    /// certificate (none given, or one it does not trust). Ends
    /// `start`/`run` at once; the text says what to check.
    #[error("TLS connection to {uri} failed: {reason}")]
    Tls {
        /// The broker URI, password masked.
        uri: String,
        /// What went wrong, and which setting to check.
        reason: String,
    },

    /// A connection attempt did not complete in time (retried with backoff).
    #[error("connecting to {uri} took longer than {timeout:?}")]
    ConnectTimeout {
        /// The broker URI, password masked.
        uri: String,
        /// The connection timeout.
        timeout: Duration,
    },

    /// The broker refused to declare or bind something (e.g. 406
    /// PRECONDITION_FAILED: it exists with other arguments, or 403
    /// ACCESS_REFUSED).
    #[error("the broker refused to declare {resource}: {source}")]
    Declare {
        /// What was being declared, e.g. `queue "shop:send_receipt"`.
        resource: String,
        /// lapin's error, carrying the broker's reply text.
        #[source]
        source: Box<lapin::Error>,
    },

    /// Stale-binding removal
    /// ([`HutchBuilder::remove_stale_bindings`](crate::HutchBuilder::remove_stale_bindings))
    /// could not be done: the management API could not be reached, refused
    /// the credentials, or answered something else than the bindings; or
    /// the broker refused an unbind. Ends [`Hutch::start`](crate::Hutch::start)
    /// (the consumers it had started are stopped); the text says what to
    /// change. Nothing hutch-rs did not make is ever removed, whatever the
    /// failure.
    #[error("could not remove stale bindings: {reason}")]
    StaleBindings {
        /// What went wrong, and the setting to check.
        reason: String,
    },

    /// Two consumers resolve to the same queue name.
    #[error(
        "queue {queue:?} is claimed by two consumers, {first} and {second}: give one of them another `queue = \"...\"` or function name"
    )]
    DuplicateQueue {
        /// The queue name, with namespace.
        queue: String,
        /// One consumer function.
        first: String,
        /// The other consumer function.
        second: String,
    },

    /// Selected consumers take a [`State<T>`](crate::State) whose value was
    /// not given to [`HutchBuilder::state`](crate::HutchBuilder::state):
    /// every such consumer and type, found before anything was declared.
    #[error("{}", missing_state_message(missing))]
    MissingState {
        /// Each consumer (`module::function`) and the type it needs.
        missing: Vec<(String, &'static str)>,
    },

    /// [`Context::reply`](crate::Context::reply) on a message that asked
    /// for no reply (it has no `reply_to`).
    #[error(
        "the message with routing key {routing_key:?} (message id {message_id:?}) has no reply_to: there is nowhere to send a reply"
    )]
    NoReplyTo {
        /// The routing key of the message being handled.
        routing_key: String,
        /// Its message id, if it has one.
        message_id: Option<String>,
    },

    /// The value to publish could not be serialized in the format chosen
    /// with [`PublishOptions::codec`](crate::PublishOptions::codec).
    #[error(
        "could not encode the message for routing key {routing_key:?} as {content_type}: {source}"
    )]
    EncodeBody {
        /// The routing key of the publish.
        routing_key: String,
        /// The format's content type.
        content_type: &'static str,
        /// What the format's encoder reported.
        source: BoxError,
    },

    /// The value to publish could not be serialized as JSON.
    #[error("could not encode the message for routing key {routing_key:?} as JSON: {source}")]
    Encode {
        /// The routing key of the publish.
        routing_key: String,
        /// serde_json's error.
        #[source]
        source: serde_json::Error,
    },

    /// The routing key of a publish is not usable.
    #[error("invalid routing key {routing_key:?}: {reason}")]
    InvalidRoutingKey {
        /// The routing key.
        routing_key: String,
        /// What is wrong with it.
        reason: String,
    },

    /// A property of a publish does not fit AMQP: a header name, message
    /// id, correlation id, `reply_to` or content type longer than 255 bytes.
    /// Nothing was sent.
    #[error("invalid {property} for routing key {routing_key:?}: {reason}")]
    InvalidProperty {
        /// The routing key of the publish.
        routing_key: String,
        /// Which property, e.g. `message id` or `header name "tenant…"`.
        property: String,
        /// What is wrong with it.
        reason: String,
    },

    /// The message is larger than the broker accepts (RabbitMQ's
    /// `max_message_size`, 128 MiB by default in RabbitMQ 3.x, 16 MiB in 4.0). The broker refused it; the
    /// other messages published at the same time are not affected.
    #[error(
        "the message for routing key {routing_key:?} is {size} bytes, more than the broker's maximum message size of {max} bytes"
    )]
    MessageTooLarge {
        /// The routing key of the publish.
        routing_key: String,
        /// The size of the message body, in bytes.
        size: usize,
        /// The broker's limit, in bytes, as it said when it refused a
        /// message.
        max: usize,
    },

    /// The message's properties (headers above all) do not fit in one
    /// AMQP frame, which the content header must: sent, the broker would
    /// close the whole publishing connection (501 FRAME_ERROR). Nothing was
    /// sent.
    #[error(
        "the properties of the message for routing key {routing_key:?} take {size} bytes; one frame holds {max} bytes of them on this connection (frame_max {frame_max})"
    )]
    HeadersTooLarge {
        /// The routing key of the publish.
        routing_key: String,
        /// The encoded size of the properties, headers included, in bytes.
        size: usize,
        /// How many bytes of properties a content header frame holds.
        max: usize,
        /// The connection's negotiated frame size.
        frame_max: u32,
    },

    /// A publish failed before the broker confirmed it.
    #[error("publish to {routing_key:?} on exchange {exchange:?} failed: {source}")]
    Publish {
        /// The exchange.
        exchange: String,
        /// The routing key.
        routing_key: String,
        /// lapin's error.
        #[source]
        source: Box<lapin::Error>,
    },

    /// The broker answered the publish with a nack: it did not take
    /// responsibility for the message.
    #[error("the broker rejected (nacked) the message for routing key {routing_key:?}")]
    PublishNacked {
        /// The routing key.
        routing_key: String,
    },

    /// The broker blocked the publishing connection (a memory or disk alarm)
    /// for longer than the confirm timeout. Consumers are not affected. The
    /// message may still reach the broker once the alarm clears if it was
    /// sent before the broker said it was blocking.
    #[error(
        "the broker blocked publishing ({reason}) for longer than {timeout:?}; routing key {routing_key:?} not confirmed"
    )]
    Blocked {
        /// The routing key.
        routing_key: String,
        /// Why, as the broker said (e.g. "low on memory").
        reason: String,
        /// How long the publish waited.
        timeout: std::time::Duration,
    },

    /// A mandatory message reached no queue: the broker returned it.
    #[error(
        "message to exchange {exchange:?} with routing key {routing_key:?} reached no queue (returned by the broker)"
    )]
    Unroutable {
        /// The exchange (`""` is the default exchange).
        exchange: String,
        /// The routing key.
        routing_key: String,
    },

    /// No publisher confirm arrived in time. The message may or may not have
    /// reached the broker.
    #[error(
        "no publisher confirm for routing key {routing_key:?} within {timeout:?}{}",
        down_because(connection_error.as_deref())
    )]
    PublishTimeout {
        /// The routing key.
        routing_key: String,
        /// The confirm timeout that elapsed.
        timeout: Duration,
        /// Why the publishing connection could not be opened (or was lost)
        /// when the publish gave up, if it was down: the cause to fix, such
        /// as "Connection refused".
        connection_error: Option<String>,
    },

    /// No reply to a [`Hutch::request`](crate::Hutch::request) came within
    /// the request timeout
    /// ([`HutchBuilder::request_timeout`](crate::HutchBuilder::request_timeout)).
    /// The request may or may not have been handled; a reply that comes
    /// later is dropped and counted in
    /// [`Status::late_replies`](crate::Status::late_replies).
    #[error(
        "no reply to the request with routing key {routing_key:?} within {timeout:?}{}",
        down_because(connection_error.as_deref())
    )]
    RequestTimeout {
        /// The routing key of the request.
        routing_key: String,
        /// The request timeout that elapsed.
        timeout: Duration,
        /// Why the publishing connection could not be opened (or was lost)
        /// when the request gave up, if it was down.
        connection_error: Option<String>,
    },

    /// The channel a request was sent on closed before its reply came (the
    /// connection was lost, or the broker closed the channel): its reply
    /// can no longer arrive. Not sent again, as a request may not be safe
    /// to handle twice; the consumer may or may not have handled it. The
    /// next request goes out on a new channel.
    #[error(
        "the request with routing key {routing_key:?} was interrupted before its reply: {reason}"
    )]
    RequestInterrupted {
        /// The routing key of the request.
        routing_key: String,
        /// What happened, e.g. the broker's reason for closing the
        /// connection.
        reason: String,
    },

    /// The reply to a request did not decode as JSON into the type asked
    /// for.
    #[error("the reply to the request with routing key {routing_key:?} did not decode: {source}")]
    ReplyDecode {
        /// The routing key of the request.
        routing_key: String,
        /// serde_json's error.
        #[source]
        source: serde_json::Error,
    },

    /// A reply cannot go where the request's `reply_to` says. Either
    /// nothing was sent: the `reply_to` is empty, longer than AMQP's 255
    /// bytes, or a direct reply-to address (`amq.rabbitmq.reply-to.…`) of
    /// another shape than RabbitMQ gives; or the broker closed the
    /// connection on the reply (RabbitMQ 3.10 to 3.13 crash on a direct
    /// reply-to address naming a node outside the cluster), and it was not
    /// sent again.
    #[error("cannot reply to {reply_to:?}: {reason}")]
    InvalidReplyTo {
        /// The `reply_to`, cut short if long.
        reply_to: String,
        /// What is wrong with it.
        reason: String,
    },

    /// A consumer failed more often than its restart intensity allows
    /// (a panic of its task outside a handler, a bug in hutch-rs, is such a
    /// failure: the reason then starts with "the consumer's task
    /// panicked"), or could not be restarted; `run`/`run_until` end with
    /// this.
    #[error("consumer {consumer} (queue {queue:?}) failed after {restarts} restart(s): {reason}")]
    ConsumerFailed {
        /// The consumer function, `module::function`.
        consumer: String,
        /// Its queue.
        queue: String,
        /// How many restarts it had before giving up.
        restarts: u32,
        /// The last failure.
        reason: String,
    },

    /// No registered consumer has this name (its function's name,
    /// `module::function`, or its queue's name).
    #[error("no consumer named {name:?}; the registered consumers are: {}", known.join(", "))]
    UnknownConsumer {
        /// The name asked for.
        name: String,
        /// The registered consumers, `module::function`.
        known: Vec<String>,
    },

    /// Reading, replaying or purging a dead-letter queue failed; what was
    /// done before the failure stays done (see
    /// [`DeadLetters::replay`](crate::DeadLetters::replay)).
    #[error("dead-letter queue {queue:?}: {reason}")]
    DeadLetters {
        /// The dead-letter queue, `<queue>:dead`.
        queue: String,
        /// What failed, and what was done before.
        reason: String,
    },

    /// The publishing connection is gone: it was closed
    /// ([`Hutch::close`](crate::Hutch::close)) while the publish waited for
    /// it or for the broker's confirm (a message already sent may or may not
    /// have reached the broker), or its task ended abnormally.
    #[error("the {connection} connection is unavailable: {reason}")]
    Unavailable {
        /// Which connection ("consume" or "publish").
        connection: &'static str,
        /// Why: closed, or how it ended.
        reason: String,
    },

    /// In-flight handlers did not finish within the shutdown timeout; their
    /// messages were not acknowledged and the broker will deliver them again.
    #[error(
        "shutdown timed out after {timeout:?}: {in_flight} consumer(s) still handling a message"
    )]
    ShutdownTimeout {
        /// The shutdown timeout.
        timeout: Duration,
        /// How many consumers had not finished.
        in_flight: usize,
    },

    /// Listening for SIGINT/SIGTERM failed.
    #[error("could not listen for shutdown signals: {0}")]
    Signal(#[source] std::io::Error),
}

/// The end of a publish timeout's message when the connection was down.
fn down_because(connection_error: Option<&str>) -> String {
    connection_error
        .map(|error| format!(": the publishing connection is down ({error})"))
        .unwrap_or_default()
}

/// "consumer a::f takes State<Db>, ...": every missing value, and the fix.
fn missing_state_message(missing: &[(String, &'static str)]) -> String {
    let each: Vec<String> = missing
        .iter()
        .map(|(consumer, type_name)| format!("consumer {consumer} takes State<{type_name}>"))
        .collect();
    format!(
        "{}, but no such value was given: pass one with HutchBuilder::state(value) for each type",
        each.join("; ")
    )
}
