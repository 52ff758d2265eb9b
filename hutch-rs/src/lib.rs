//! An opinionated RabbitMQ framework, in the spirit of Ruby's
//! [Hutch](https://github.com/ruby-amqp/hutch): annotate async functions with
//! [`#[consumer]`](consumer), call [`run`], publish with [`publish`]. The
//! framework declares a durable topic exchange and one durable queue per
//! consumer, decodes JSON into your types, and acks what your handlers finish.
//!
//! # Quick start
//!
//! ```no_run
//! use hutch_rs::{consumer, Message};
//!
//! #[derive(serde::Serialize, serde::Deserialize)]
//! struct OrderPlaced {
//!     order_id: u64,
//! }
//!
//! // Queue `send_receipt`, bound to the `hutch` exchange with `orders.placed`.
//! #[consumer(routing_key = "orders.placed")]
//! async fn send_receipt(msg: Message<OrderPlaced>) -> Result<(), hutch_rs::BoxError> {
//!     println!("receipt for order {} ({})", msg.order_id, msg.routing_key());
//!     Ok(())
//! }
//!
//! #[tokio::main]
//! async fn main() -> hutch_rs::Result<()> {
//!     // Logs to standard error, unless the application set up its own.
//!     hutch_rs::init_logging();
//!     // The exchange, the queues and their bindings: a message published
//!     // before any queue is bound would be dropped by RabbitMQ.
//!     hutch_rs::declare().await?;
//!     // Resolves once the broker has confirmed the message.
//!     hutch_rs::publish("orders.placed", &OrderPlaced { order_id: 1 }).await?;
//!     // Every registered consumer, until SIGINT or SIGTERM.
//!     hutch_rs::run().await
//! }
//! ```
//!
//! Settings come from `HUTCH_URI`, `HUTCH_EXCHANGE`, `HUTCH_NAMESPACE` and
//! `HUTCH_GROUP` (see [`HutchBuilder`]); [`Hutch::builder`] sets them in code.
//! An `amqps://` URI connects with TLS (`HUTCH_TLS_CA_CERT`,
//! `HUTCH_TLS_CLIENT_CERT`, `HUTCH_TLS_CLIENT_KEY`; see
//! [`HutchBuilder::tls_ca_cert`]).
//!
//! Each publish and each delivery is a `tracing` span under the target
//! `hutch_rs::messaging`, named and filled in after OpenTelemetry's
//! messaging conventions for RabbitMQ (`messaging.system`,
//! `messaging.destination.name`, `messaging.rabbitmq.destination.routing_key`,
//! `messaging.message.id`, …, with the consumer, the attempt and the
//! outcome); see the guide's Observability chapter.
//!
//! With the `metrics` feature, hutch-rs also records metrics through the
//! [`metrics`](https://docs.rs/metrics) facade, into whatever recorder the
//! application installed (`metrics-exporter-prometheus`, or any other
//! exporter): deliveries by consumer and outcome
//! (`hutch_messages_handled_total`), handler durations, handler calls in
//! flight, publishes by outcome and their confirm latency, open connections,
//! reconnects, consumer restarts and stale acknowledgements. The names and
//! labels, stable and after Prometheus's conventions, are in the guide's
//! Observability chapter; `examples/metrics.rs` serves them on `/metrics`.
//!
//! # Conventions
//!
//! - One durable topic exchange (default `hutch`).
//! - One durable queue per consumer, named after the function or its
//!   `queue = "..."` argument, prefixed `"<namespace>:"` when a namespace is
//!   set; one binding per routing key.
//! - Published messages are persistent JSON (`application/json`) with a fresh
//!   message id and a timestamp; a publish resolves after the broker's confirm
//!   (sent again with the same id if the connection dies first).
//!   [`Hutch::publish_with`] takes [`PublishOptions`] (headers, correlation
//!   id, reply-to, expiration, priority, message id, mandatory),
//!   [`Hutch::publish_bytes`] sends raw bytes, [`Hutch::publish_batch`]
//!   pipelines confirms and reports each message's outcome.
//! - [`Hutch::request`] sends a request and resolves with its reply, over
//!   RabbitMQ's direct reply-to (no reply queue), within the request
//!   timeout ([`HutchBuilder::request_timeout`]).
//! - A handler's `Ok` acks the message. An `Err`, a panic or a timeout is
//!   retried with exponential backoff, the copy waiting in one of the
//!   consumer's delay queues on the broker, up to `max_attempts` (default 3);
//!   then the message goes to the consumer's dead-letter queue
//!   `<queue>:dead` with headers that say why ([`headers`]). A body that
//!   cannot be decoded goes there at once. A handler can decide otherwise
//!   with a [`Decision`]; error hooks ([`HutchBuilder::on_error`]) see every
//!   failure. The original is acked only after the broker confirmed its copy:
//!   a bad message never loops and is never dropped.
//! - Each consumer has up to `prefetch` deliveries out (default
//!   [`DEFAULT_PREFETCH`], 50, or twice its concurrency) and runs up to
//!   `concurrency` handler calls at once (default 1, in queue order), set
//!   per consumer in `#[consumer(...)]` or with [`HutchBuilder::prefetch`] /
//!   [`HutchBuilder::concurrency`]. Handled messages are acknowledged in
//!   batches (`basic.ack` with `multiple`), never before their handler
//!   returned `Ok`.
//!
//! # Supervision
//!
//! hutch-rs keeps one connection for consumers and one for publishing, and
//! re-establishes each when it is lost (exponential backoff with jitter,
//! trying every configured node in turn). A consumer whose channel the broker
//! closes or cancels is restarted on its own channel, which it gets back
//! while it is open (a handler's panic is no such failure: it is that
//! message's alone, retried like an `Err`), and every new channel gets all
//! of its state again (qos, declarations, `basic.consume`,
//! confirm mode). Errors the user must fix (refused credentials, an unknown
//! vhost, a declaration that conflicts with what exists) are never retried:
//! they end [`Hutch::start`] or [`run`] with an error naming what is wrong.
//! [`Hutch::status`] and [`Hutch::events`] show the tree.
//!
//! # Features
//!
//! - `testing`: `testing::TestBroker`, an in-memory broker running your
//!   consumers with the same routing, decoding, retries and dead letters,
//!   for unit tests without RabbitMQ; `testing::Broker`, a private RabbitMQ
//!   node (or a vhost of one, or an existing broker) for your tests.
//! - `cli`: `hutch_rs::cli::main`, the application's own command line
//!   (`run`, `consumers`, `topology`, `asyncapi`, `dead
//!   list|show|replay|purge`, `publish`). See the guide's chapter "The
//!   command line".
//! - `opentelemetry`: W3C trace context across the broker. Every publish
//!   (and every retry or dead-letter copy) carries its span's context in
//!   the [`traceparent`](headers::TRACEPARENT) and
//!   [`tracestate`](headers::TRACESTATE) headers, and a delivery that
//!   carries one is handled in a child of that span: with
//!   `tracing-opentelemetry`'s layer installed, one trace runs from the
//!   publishing request through the broker to every handler call. Use the
//!   versions of the OpenTelemetry crates that `hutch_rs::otel` re-exports.
//! - `metrics`: metrics through the `metrics` facade (see above), for any
//!   exporter.
//! - `asyncapi`: `hutch_rs::asyncapi()` and `Hutch::asyncapi`, an AsyncAPI 3.0.0
//!   document of the consumers (broker, channels per routing key and queue,
//!   a `receive` operation per consumer), with each message type's JSON
//!   Schema where it derives `schemars::JsonSchema` (re-exported as
//!   `hutch_rs::schemars`). Without it, [`topology()`] still describes what the
//!   application declares. See the guide's AsyncAPI chapter.
//! - `msgpack`, `cbor`: MessagePack and CBOR bodies ([`Codec`]).
//! - `tls-rustls-ring` (default) or `tls-rustls-aws-lc-rs`: the crypto
//!   provider of `amqps` connections.

extern crate self as hutch_rs;

mod backoff;
#[cfg(feature = "cli")]
pub mod cli;
mod codec;
mod config;
mod context;
mod dead_letters;
#[cfg(test)]
mod decode_fuzz_tests;
mod duration_text;
mod error;
mod event;
mod extract;
mod frame_size;
mod handler;
pub mod headers;
mod hutch;
mod local_exchange;
mod logging;
mod management;
mod message;
mod message_schema;
mod middleware;
mod outgoing;
mod panic;
mod properties;
mod publisher;
mod queue_arguments;
mod registry;
mod request;
mod retry;
mod stale_bindings;
mod status;
mod supervisor;
mod telemetry;
mod topology;
mod topology_description;
mod transport;

#[cfg(feature = "asyncapi")]
mod asyncapi;

#[cfg(feature = "testing")]
pub mod testing;

pub use codec::Codec;
pub use config::{
    DEFAULT_CONCURRENCY, DEFAULT_CONFIRM_TIMEOUT, DEFAULT_CONNECTION_TIMEOUT, DEFAULT_EXCHANGE,
    DEFAULT_HANDLER_TIMEOUT, DEFAULT_HEARTBEAT, DEFAULT_MAX_ATTEMPTS, DEFAULT_MAX_RESTARTS,
    DEFAULT_PREFETCH, DEFAULT_RECONNECT_MAX_DELAY, DEFAULT_RECONNECT_MIN_DELAY,
    DEFAULT_REQUEST_TIMEOUT, DEFAULT_RESTART_PERIOD, DEFAULT_RETRY_MAX_DELAY,
    DEFAULT_RETRY_MIN_DELAY, DEFAULT_SHUTDOWN_TIMEOUT, DEFAULT_URI, HutchBuilder,
};
pub use context::Context;
pub use dead_letters::{DeadLetters, DeadMessage, Replayed};
pub use error::{BoxError, Error, Result};
pub use event::{Event, EventStream};
pub use extract::{FromDelivery, MissingStateValue, RequiredState, State};
pub use hutch::Hutch;
pub use logging::init_logging;
pub use management::DEFAULT_MANAGEMENT_PORT;
pub use message::{Body, DecodeError, Message, RawBody};
pub use middleware::{CallFuture, CallResult, Next};
pub use outgoing::{HeaderValue, Outgoing, PublishOptions, Published};
pub use queue_arguments::{
    Argument, ArgumentValue, DEFAULT_DELIVERY_LIMIT, Overflow, QueueArguments, QueueType,
};
pub use registry::{ConsumerRegistration, consumers};
pub use retry::{
    Decision, ERROR_HOOK_QUEUE_CAPACITY, ErrorHook, Failure, HandlerError, Outcome, RetryPolicy,
};
pub use stale_bindings::RemovedBinding;
pub use status::{
    ConnectionState, ConnectionStatus, ConsumerState, ConsumerStatus, Health, Status,
};
pub use supervisor::app::Running;
pub use topology::{BINDING_MARK, BINDING_MARK_VALUE};
pub use topology_description::{
    BindingDescription, ConsumerDescription, DelayQueueDescription, ExchangeDescription,
    QueueDescription, Topology,
};

#[cfg(feature = "asyncapi")]
pub use asyncapi::AsyncApiInfo;

/// The `schemars` crate the `asyncapi` feature works with: derive
/// `JsonSchema` for your message types from this version (or add the same
/// major version of `schemars` to your own dependencies).
#[cfg(feature = "asyncapi")]
pub use schemars;

/// Marks an async function as a consumer. See the [crate docs](crate) and
/// the attribute's own documentation.
pub use hutch_rs_macros::consumer;

/// The AMQP types that appear in hutch-rs's API (headers, properties), from lapin.
pub mod amqp {
    pub use lapin::{
        BasicProperties,
        types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString},
    };
}

/// The OpenTelemetry crates the `opentelemetry` feature works with, at the
/// versions it was built against.
///
/// Trace context passes between hutch-rs and an application's spans
/// through `tracing-opentelemetry`'s layer, found by its type: an
/// application that installs a layer of another version of the crate gets
/// no propagation (and no error). Building the layer, its tracer and
/// propagators from these re-exports keeps the versions in step.
#[cfg(feature = "opentelemetry")]
pub mod otel {
    pub use opentelemetry;
    pub use opentelemetry_sdk;
    pub use tracing_opentelemetry;
}

use std::sync::OnceLock;

/// The instance behind [`run`] and [`publish`], built from the environment on
/// first use so that every `publish` shares one connection.
static FROM_ENV: OnceLock<Hutch> = OnceLock::new();

fn from_env() -> Result<&'static Hutch> {
    if let Some(hutch) = FROM_ENV.get() {
        return Ok(hutch);
    }
    let hutch = Hutch::from_env()?;
    Ok(FROM_ENV.get_or_init(|| hutch))
}

/// Runs every registered consumer (or those of `HUTCH_GROUP`) with settings
/// from the environment until SIGINT or SIGTERM, then shuts down cleanly.
///
/// # Errors
///
/// A configuration error, a fatal broker error (refused credentials, an
/// unknown vhost, a refused declaration), a consumer past its restart
/// intensity, or a shutdown that timed out. An unreachable broker is retried
/// until it can be reached or a signal arrives. See [`Hutch::run_until`].
///
/// An application that installed no `tracing` subscriber gets a plain log
/// output on standard error (see [`init_logging`]), so that an unreachable
/// broker and why are on screen at once, not hidden behind silent retries.
pub async fn run() -> Result<()> {
    init_logging();
    let hutch = from_env()?;
    let signal = shutdown_signal()?;
    let outcome = hutch.run_until(signal).await;
    let closed = hutch.close().await;
    outcome.and(closed)
}

/// Declares the exchange and every selected consumer's queue, bindings and
/// dead-letter queue with settings from the environment, without consuming:
/// call it before publishing at startup, so that nothing published before
/// [`run`] is dropped for want of a queue. See [`Hutch::declare`].
///
/// # Errors
///
/// See [`Hutch::declare`].
pub async fn declare() -> Result<Vec<String>> {
    from_env()?.declare().await
}

/// What the application declares, with settings from the environment: the
/// exchange, and each selected consumer's queues, bindings and settings,
/// as [`declare`] and [`run`] would declare them. Needs no broker. See
/// [`Hutch::topology`].
///
/// # Errors
///
/// A configuration error, or two consumers on one queue
/// ([`Error::DuplicateQueue`]).
pub fn topology() -> Result<Topology> {
    from_env()?.topology()
}

/// The AsyncAPI 3.0.0 document of the application, with settings from the
/// environment. Needs no broker. See [`Hutch::asyncapi`].
///
/// # Errors
///
/// As [`topology`].
#[cfg(feature = "asyncapi")]
pub fn asyncapi() -> Result<serde_json::Value> {
    from_env()?.asyncapi()
}

/// Publishes `value` as JSON with settings from the environment; resolves
/// once the broker confirms. See [`Hutch::publish`].
///
/// Inside a handler call, it publishes through the [`Hutch`] running the
/// handler instead (the one [`Context::hutch`] returns), whatever the
/// environment says: a follow-up message goes to the application's own
/// broker, exchange and namespace. (A task the handler spawns is outside
/// the call: pass it `ctx.hutch().clone()`.)
///
/// # Errors
///
/// See [`Hutch::publish`].
pub async fn publish<T: serde::Serialize + ?Sized>(routing_key: &str, value: &T) -> Result<()> {
    // Inside a handler, the instance running it: the application's own
    // broker, exchange and namespace, whatever the environment says.
    if let Some(hutch) = context::running_hutch() {
        return hutch.publish(routing_key, value).await;
    }
    from_env()?.publish(routing_key, value).await
}

/// A future that resolves on SIGINT (Ctrl-C) or SIGTERM. Listening starts
/// when this is called, not when the future is first polled, so a signal that
/// arrives during startup is not missed.
pub(crate) fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut interrupt = signal(SignalKind::interrupt()).map_err(Error::Signal)?;
        let mut terminate = signal(SignalKind::terminate()).map_err(Error::Signal)?;
        Ok(async move {
            tokio::select! {
                _ = interrupt.recv() => tracing::info!("SIGINT received, shutting down"),
                _ = terminate.recv() => tracing::info!("SIGTERM received, shutting down"),
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
        })
    }
}

/// What the code generated by `#[consumer]` refers to. Not a public API.
#[doc(hidden)]
pub mod __private {
    pub use crate::__hutch_rs_message_schema as message_schema;
    pub use crate::extract::{Extraction, extract, require};
    pub use crate::handler::{
        Delivered, HandlerFn, HandlerFuture, HandlerOutcome, IntoHandlerResult, RequiredStateFn,
        call_handler, call_handler_with_context, into_handler_result,
    };
    pub use crate::message::Incoming;
    #[cfg(feature = "asyncapi")]
    pub use crate::message_schema::{DeriveJsonSchema, MessageSchemaFn, NoJsonSchema, SchemaProbe};
    pub use crate::registry::ConsumerRegistration;
    pub use inventory;
    #[cfg(feature = "asyncapi")]
    pub use schemars;
}
