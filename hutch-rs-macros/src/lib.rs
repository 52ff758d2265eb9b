//! The `#[consumer]` attribute of [hutch-rs](https://docs.rs/hutch-rs).
//!
//! Use it as `hutch_rs::consumer`: the code it generates refers to `hutch_rs`,
//! and this crate's version is pinned to hutch-rs's.

mod attr;
mod check;
mod duration;
mod errors;
mod expand;
mod queue;

use proc_macro::TokenStream;

use crate::errors::Errors;

/// Declares an `async fn` as a consumer of RabbitMQ messages.
///
/// ```
/// use hutch_rs::{consumer, Message};
/// use serde::Deserialize;
///
/// #[derive(Deserialize)]
/// struct OrderPlaced {
///     order_id: u64,
/// }
///
/// #[consumer(routing_key = "orders.placed")]
/// async fn send_receipt(msg: Message<OrderPlaced>) -> Result<(), hutch_rs::BoxError> {
///     println!("receipt for order {} ({})", msg.order_id, msg.routing_key());
///     Ok(())
/// }
/// ```
///
/// The function stays an ordinary function. The attribute also registers it,
/// so that `hutch_rs::run()` and `Hutch::start` find every consumer linked into
/// the binary without a central list (`hutch_rs::consumers()` lists them).
/// For each consumer the runtime declares a durable queue, binds it to the
/// topic exchange once per routing key, decodes each message's JSON body into
/// `T` and calls the function with it. `Ok(())` acknowledges the message; an
/// `Err`, a panic or a body that cannot be decoded is handled by the runtime
/// and never redelivered in an endless loop.
///
/// # Arguments
///
/// ```
/// # use hutch_rs::{consumer, Message};
/// #[consumer(routing_key = ["billing.#", "refunds.*"], queue = "billing_audit", group = "billing")]
/// async fn audit(msg: Message<serde_json::Value>) -> Result<(), hutch_rs::BoxError> {
///     Ok(())
/// }
/// ```
///
/// | argument | | value |
/// |---|---|---|
/// | `routing_key` | required | A topic pattern, `"orders.placed"`, or a non-empty list of them, `["billing.#", "refunds.*"]`. The queue is bound with each one. |
/// | `queue` | optional | The queue's name. Defaults to the function's name. When a namespace is set, it is prefixed: `shop:billing_audit`. |
/// | `group` | optional | The consumer's group. A process started with a group (`HUTCH_GROUP`, `Hutch::builder().group(..)`) runs that group's consumers only; one started without runs them all. |
/// | `max_attempts` | optional | How many times a failing message is handled before it goes to `<queue>:dead`: an integer, at least 1 (1: no retries). Defaults to the configuration's, 3. |
/// | `retry_min_delay` | optional | The wait before the first retry, a duration such as `"500ms"`. Defaults to the configuration's, 1s. |
/// | `retry_max_delay` | optional | The longest wait between two attempts, such as `"5m"`; at most 4294967295 ms (about 49 days). Defaults to the configuration's, 60s. |
/// | `timeout` | optional | How long one call of the function may run before it counts as a failure, such as `"30s"`. Defaults to the configuration's, 30s; must be shorter than RabbitMQ's consumer_timeout, 30 minutes. |
/// | `prefetch` | optional | How many unacknowledged deliveries the broker sends this consumer ahead (the channel's `basic.qos` prefetch count): an integer from 1 to 65535. Defaults to the configuration's (`HutchBuilder::prefetch`) if set, otherwise 50 or twice the concurrency, whichever is more. |
/// | `concurrency` | optional | How many calls of the function may be in flight at once on this consumer: an integer from 1 to 65535, at most the prefetch. Defaults to the configuration's (`HutchBuilder::concurrency`), 1. |
/// | `queue_type` | optional | `"classic"` (default) or `"quorum"`: the type of the consumer's queue, delay queues and dead-letter queue. Wins over `HutchBuilder::queue_type` / `HUTCH_QUEUE_TYPE`. |
/// | `delivery_limit` | optional | Quorum queues: how many deliveries without an ack the broker allows a message before dead-lettering it to `<queue>:dead` (default 10). |
/// | `max_length`, `max_length_bytes` | optional | The queue holds at most this many messages (bytes of bodies). |
/// | `overflow` | optional | What a full queue does: `"drop-head"`, `"reject-publish"`, `"reject-publish-dlx"` (classic only). |
/// | `single_active_consumer` | optional | `true`: one consumer of the queue receives at a time. |
/// | `max_priority` | optional | Classic queues: priorities 0 to this (1–255) take effect. |
/// | `message_ttl` | optional | A duration (`"24h"`): older messages are dead-lettered to `<queue>:dead`. |
/// | `arguments` | optional | Any other queue argument: `[("x-queue-version", 2), ("x-max-age", "7D")]` (string, integer or boolean literals; names start with `x-`). |
///
/// Values are literals written in the attribute, so that they can be checked
/// when the crate compiles: strings, and integers for `max_attempts`,
/// `prefetch` and `concurrency`.
///
/// ## Failure handling
///
/// ```
/// # use hutch_rs::{consumer, Message};
/// #[consumer(
///     routing_key = "payments.charge",
///     max_attempts = 5,
///     retry_min_delay = "500ms",
///     retry_max_delay = "5m",
///     timeout = "30s"
/// )]
/// async fn charge(msg: Message<u64>) -> Result<(), hutch_rs::BoxError> {
///     Ok(())
/// }
/// ```
///
/// A message whose handling fails (an `Err`, a panic or the `timeout`) is
/// handled again, up to `max_attempts` times in all, then moved to
/// `<queue>:dead`; `Message::attempt` says which attempt is running (1 on the
/// first delivery). Between two attempts the message waits with exponential
/// backoff and jitter, from `retry_min_delay` growing to `retry_max_delay`.
/// The wait happens on the broker, in a delay queue of the consumer's own, so
/// it holds no prefetch slot, survives a restart of the process and does not
/// delay the messages behind it. A handler can decide otherwise for one
/// message by returning a `hutch_rs::Decision` as its error (retry after a
/// given delay, dead-letter at once).
///
/// Durations are a number and a unit, `ms`, `s`, `m`, `h` or `d`, several
/// parts allowed: `"500ms"`, `"30s"`, `"5m"`, `"1m 30s"`, `"1h"`. They must
/// be longer than zero, and `retry_min_delay` at most `retry_max_delay`. A
/// delay given alone must fit the configured default of the other
/// (`HutchBuilder::retry_delay`); that is checked when the consumer starts.
///
/// Keep `timeout` well below RabbitMQ's `consumer_timeout` (30 minutes by
/// default): a delivery left unacknowledged longer makes the broker close the
/// channel. A timed-out call is dropped at its next `.await`; work it started
/// elsewhere (a spawned task, a blocking call) is not stopped.
///
/// ## Prefetch and concurrency
///
/// ```
/// # use hutch_rs::{consumer, Message};
/// #[consumer(routing_key = "images.resize", prefetch = 64, concurrency = 8)]
/// async fn resize(msg: Message<String>) -> Result<(), hutch_rs::BoxError> {
///     Ok(())
/// }
/// ```
///
/// `prefetch` bounds how many deliveries the broker has out to this consumer
/// at once, unacknowledged; they wait in the process's memory until their
/// turn. It must be at least 1: in AMQP a prefetch of 0 means unlimited,
/// which would let one consumer pull the whole queue into memory.
///
/// `concurrency` bounds how many of those deliveries are being handled at
/// once, so that while one call waits on I/O the others go on. It must be at
/// least 1 and at most the prefetch: the broker never sends more than
/// `prefetch` deliveries ahead, so calls beyond that could never run. When
/// both are given, that is checked when the crate compiles. A consumer with
/// a `concurrency` and no prefetch set anywhere gets twice its concurrency
/// (at least 50); a prefetch set with `HutchBuilder::prefetch` must fit,
/// which is checked when the consumer starts.
///
/// The calls run concurrently on the consumer's task, like `join_all`, not
/// on separate threads: a call that waits on I/O lets the others go on, one
/// that computes for long holds them up (give such work to
/// `tokio::task::spawn_blocking`). With a concurrency above 1, messages
/// finish out of queue order.
///
/// ## Routing keys
///
/// A routing key is a topic pattern: words separated by dots. Two wildcards
/// stand for whole words: `*` matches exactly one word, `#` zero or more.
///
/// | pattern | matches | does not match |
/// |---|---|---|
/// | `orders.placed` | `orders.placed` | `orders.placed.eu` |
/// | `orders.*` | `orders.placed`, `orders.cancelled` | `orders`, `orders.placed.eu` |
/// | `orders.#` | `orders`, `orders.placed`, `orders.placed.eu` | `refunds.placed` |
/// | `*.placed` | `orders.placed`, `refunds.placed` | `placed` |
/// | `#` | every message | |
///
/// A key must not be empty, have an empty word (`.orders`, `orders.`,
/// `orders..placed`), use a wildcard inside a word (`orders.*x`, `ord#ers`),
/// be longer than 255 bytes, or appear twice in the list.
///
/// ## Queue and group names
///
/// ASCII letters, digits, `_`, `-`, `.` and `:`, at most 200 bytes (room is
/// kept for the namespace prefix and the `:dead` suffix). A queue name cannot
/// start with `amq.`, which RabbitMQ reserves. When `queue` is not given, the
/// function's name must follow the same rules (a non-ASCII identifier needs
/// an explicit `queue`).
///
/// # The function
///
/// - It is an `async fn`: not `const`, `unsafe` or `extern`, and not generic
///   (no type or lifetime parameters, no `where` clause).
/// - It takes exactly one argument, of type `Message<T>`: the attribute looks
///   for a type written `Message<...>` or as a path ending in `Message<...>`,
///   such as `hutch_rs::Message<...>` (a type alias is not recognised). The
///   argument's pattern is free: `msg`, `_msg`, `mut msg`.
/// - `T` is the body type: `serde::de::DeserializeOwned + Send + 'static`,
///   such as your own `#[derive(Deserialize)]` struct or `serde_json::Value`.
/// - It returns `Result<(), E>` where `E: Into<hutch_rs::BoxError>`:
///   `hutch_rs::BoxError`, `anyhow::Error`, `std::io::Error` or your own error
///   type.
/// - Its future is `Send`: do not hold an `Rc` or a `std::sync::MutexGuard`
///   across an `.await`.
///
/// ```
/// use hutch_rs::{consumer, Message};
///
/// #[derive(Debug)]
/// struct RefundError(String);
///
/// impl std::fmt::Display for RefundError {
///     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
///         write!(f, "refund failed: {}", self.0)
///     }
/// }
///
/// impl std::error::Error for RefundError {}
///
/// #[consumer(routing_key = "refunds.requested")]
/// async fn refund(msg: Message<serde_json::Value>) -> Result<(), RefundError> {
///     let mut body = msg.into_body();
///     let amount = body["amount"].take();
///     if amount.is_null() {
///         return Err(RefundError("no amount".into()));
///     }
///     Ok(())
/// }
/// ```
///
/// # Where it can be used
///
/// On a free function, at any visibility, in any module, also inside another
/// function's body (such as a test). Not on a method: in an `impl` block or a
/// trait, move the function out.
///
/// A consumer is registered as `module_path!()` plus the function's name, when
/// the program starts, whether or not the function around it ever runs. A
/// function body does not add to the module path, so two consumers with the
/// same name in two function bodies of one module would share a queue: name
/// them apart or give them a `queue`. A consumer defined in a library is only
/// registered in a binary that links that library, i.e. that uses something
/// from it.
///
/// # Testing a consumer
///
/// Call the function with a message built by `Message::new`:
///
/// ```
/// use hutch_rs::{consumer, Message};
///
/// #[consumer(routing_key = "orders.placed")]
/// async fn count_items(msg: Message<Vec<String>>) -> Result<(), hutch_rs::BoxError> {
///     if msg.is_empty() {
///         return Err("an order without items".into());
///     }
///     Ok(())
/// }
///
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// // In a #[tokio::test]:
/// let msg = Message::new(vec!["book".to_string()]).with_routing_key("orders.placed");
/// assert!(count_items(msg).await.is_ok());
/// assert!(count_items(Message::new(vec![])).await.is_err());
/// # });
/// ```
///
/// # Compile errors
///
/// Every mistake the attribute can see is reported at once, at the token to
/// fix: a missing `routing_key`, an unknown or repeated argument, an invalid
/// routing key, queue or group name, a `max_attempts`, `prefetch` or
/// `concurrency` below 1 or too large, a `concurrency` above the `prefetch`,
/// a duration that does not parse or is out of range, a function that is not
/// `async`, a `self` receiver, a missing, extra or non-`Message` argument. A
/// body type without `Deserialize` and a wrong return type are reported by
/// the type checker, at the `T` of `Message<T>` and at the return type.
///
/// ```compile_fail
/// # use hutch_rs::{consumer, Message};
/// // error: in routing key "orders.*x", `*` must be a whole word between dots
/// #[consumer(routing_key = "orders.*x")]
/// async fn placed(msg: Message<u64>) -> Result<(), hutch_rs::BoxError> {
///     Ok(())
/// }
/// ```
///
/// ```compile_fail
/// # use hutch_rs::{consumer, Message};
/// // error: unknown unit "parsecs" in `retry_min_delay = "5 parsecs"`; use ms, s, m, h or d, ...
/// #[consumer(routing_key = "orders.placed", retry_min_delay = "5 parsecs")]
/// async fn placed(msg: Message<u64>) -> Result<(), hutch_rs::BoxError> {
///     Ok(())
/// }
/// ```
#[proc_macro_attribute]
pub fn consumer(args: TokenStream, item: TokenStream) -> TokenStream {
    let item = proc_macro2::TokenStream::from(item);
    let mut errors = Errors::default();
    let args = attr::parse(args.into(), &mut errors);
    let function = match syn::parse2::<syn::ItemFn>(item.clone()) {
        Ok(function) => function,
        Err(_) => {
            errors.spanned(
                &item,
                "#[consumer] goes on an `async fn` that takes a `Message<T>`",
            );
            return expand::with_errors(item, errors.finish().unwrap_err()).into();
        }
    };
    let consumer = check::consumer(args.as_ref(), &function, &mut errors);
    match (errors.finish(), consumer) {
        (Ok(()), Some(consumer)) => expand::consumer(&consumer).into(),
        (Err(error), _) => expand::with_errors(item, error).into(),
        // Every refusal records an error; this arm only guards against a bug.
        (Ok(()), None) => expand::with_errors(
            item,
            syn::Error::new(
                proc_macro2::Span::call_site(),
                "#[consumer] refused this function without saying why; please report this bug",
            ),
        )
        .into(),
    }
}
