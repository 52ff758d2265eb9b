//! The in-memory test broker: [`TestBroker`].

mod delivery;
mod exchange;
mod records;

use std::sync::Arc;

use serde::{Serialize, de::DeserializeOwned};
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};

pub use records::{DeadLetter, Handled, PublishedMessage, Received};

use crate::{Hutch, HutchBuilder, PublishOptions, Published, Result};
use delivery::{HOOK_DRAIN, LocalConsumer, deliver};
use exchange::MemoryExchange;

/// An in-memory broker for unit tests of consumers: no RabbitMQ, no
/// network, milliseconds per test.
///
/// [`TestBroker`] runs the binary's registered `#[consumer]` functions (all,
/// or the configured group's) against a topic exchange in memory, with the
/// same queues and bindings the real topology would have. A message
/// published to it is routed as RabbitMQ routes it
/// ([`topic_matches`](super::topic_matches), checked against a real node
/// on 12,000 generated pairs), decoded, handed to the handler through the
/// middleware, with panics caught and the consumer's timeout, and settled by
/// the same code a consumer on a broker runs: acknowledged, retried with
/// the attempt headers (the retried copy comes back through the consumer's
/// queue as from a delay queue), dead-lettered with the failure headers
/// into `<queue>:dead`, or requeued. Error hooks are told, state and
/// extractors work, handlers' own publishes (`ctx.hutch().publish`,
/// `hutch_rs::publish`) and replies (`ctx.reply`) go to the same broker,
/// and [`Hutch::request`](crate::Hutch::request) gets its reply.
///
/// What differs from a broker, on purpose:
/// - one message is handled at a time, in the order they were queued
///   (`concurrency` and `prefetch` do not apply), so a test sees the same
///   run every time;
/// - a retry is delivered again without waiting for its delay (the delay
///   is recorded in [`Outcome::Retried`](crate::Outcome::Retried)), after
///   the messages already queued;
/// - a message a handler sends back at once
///   ([`Decision::requeue`](crate::Decision::requeue)) more than
///   100 times in a row is set aside ([`TestBroker::parked`]) instead of
///   going round for ever;
/// - quorum queues' delivery count (`x-delivery-count`) is not kept.
///
/// ```standalone_crate
/// use hutch_rs::{consumer, testing::TestBroker, BoxError, Message};
///
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct OrderPlaced {
///     order_id: u64,
/// }
///
/// #[consumer(routing_key = "doc.orders.placed", max_attempts = 2)]
/// async fn send_receipt(msg: Message<OrderPlaced>) -> Result<(), BoxError> {
///     if msg.order_id == 0 {
///         return Err("no such order".into());
///     }
///     Ok(())
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> hutch_rs::Result<()> {
/// let broker = TestBroker::new()?;
/// broker.publish("doc.orders.placed", &OrderPlaced { order_id: 7 }).await?;
/// broker.publish("doc.orders.placed", &OrderPlaced { order_id: 0 }).await?;
///
/// let received = broker.received("send_receipt");
/// assert_eq!(received.len(), 3); // order 7 once, order 0 twice
/// assert!(received[0].is_acked());
/// let dead = broker.dead_letters("send_receipt");
/// assert_eq!(dead.len(), 1);
/// assert_eq!(dead[0].reason(), Some("attempts-exhausted"));
/// assert_eq!(dead[0].error(), Some("no such order"));
/// # Ok(()) }
/// ```
///
/// Needs a tokio runtime (a `#[tokio::test]`); dropping it stops its
/// deliveries.
#[derive(Debug)]
pub struct TestBroker {
    hutch: Hutch,
    exchange: Arc<MemoryExchange>,
    /// The consumers' names, `module::function`.
    consumers: Vec<String>,
    /// Their queues, in the same order.
    queues: Vec<String>,
    _stop: DropGuard,
}

impl TestBroker {
    /// A broker for the consumers `Hutch::builder()` would run: the
    /// defaults overlaid with the `HUTCH_*` environment (namespace, group,
    /// retry settings...).
    ///
    /// # Errors
    ///
    /// As [`with_builder`](Self::with_builder).
    pub fn new() -> Result<Self> {
        Self::with_builder(Hutch::builder())
    }

    /// A broker for the consumers `builder` selects, with its settings:
    /// namespace, group, retry defaults, handler timeout, state, middleware
    /// and error hooks.
    ///
    /// # Errors
    ///
    /// What [`HutchBuilder::build`] and [`Hutch::start`] refuse before
    /// connecting: [`Error::Config`](crate::Error::Config),
    /// [`Error::DuplicateQueue`](crate::Error::DuplicateQueue),
    /// [`Error::MissingState`](crate::Error::MissingState).
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub fn with_builder(builder: HutchBuilder) -> Result<Self> {
        let settings = builder.validate()?;
        let exchange_name = settings.exchange.clone();
        // The plans are the real topology's: the same selection, queue
        // names and retry policies.
        let plans = crate::topology::plan_consumers(&settings, &crate::registry::consumers())?;
        let all_queues = plans.iter().map(|plan| plan.queue.clone()).collect();
        let bindings = plans
            .iter()
            .flat_map(|plan| {
                plan.registration
                    .routing_keys()
                    .iter()
                    .map(|key| ((*key).to_owned(), plan.queue.clone()))
            })
            .collect();
        let exchange = Arc::new(MemoryExchange::new(&exchange_name, all_queues, bindings));
        let hutch = Hutch::with_local_exchange(settings, exchange.clone());
        hutch.check_required_state(&plans)?;
        let consumers: Vec<LocalConsumer> = plans
            .into_iter()
            .map(|plan| LocalConsumer::new(plan, &hutch))
            .collect();
        let names = consumers
            .iter()
            .map(|consumer| consumer.name.clone())
            .collect();
        let queues = consumers
            .iter()
            .map(|consumer| consumer.plan.queue.clone())
            .collect();
        let stop = CancellationToken::new();
        tokio::spawn(deliver(exchange.clone(), consumers, stop.clone()));
        Ok(Self {
            hutch,
            exchange,
            consumers: names,
            queues,
            _stop: stop.drop_guard(),
        })
    }

    /// The instance whose publishes go to this broker: hand it to the code
    /// under test. It cannot [`start`](Hutch::start) or
    /// [`declare`](Hutch::declare) (the broker runs the consumers itself).
    #[must_use]
    pub fn hutch(&self) -> &Hutch {
        &self.hutch
    }

    /// The consumers this broker runs, `module::function`.
    #[must_use]
    pub fn consumers(&self) -> &[String] {
        &self.consumers
    }

    /// Publishes `value` as [`Hutch::publish`] does, then waits until
    /// everything it set off is handled ([`settled`](Self::settled)).
    ///
    /// # Errors
    ///
    /// As [`Hutch::publish`] before anything is sent (a bad routing key, a
    /// value that cannot be encoded).
    pub async fn publish<T: Serialize + ?Sized>(&self, routing_key: &str, value: &T) -> Result<()> {
        self.hutch.publish(routing_key, value).await?;
        self.settled().await;
        Ok(())
    }

    /// [`Hutch::publish_with`], then [`settled`](Self::settled).
    ///
    /// # Errors
    ///
    /// As [`Hutch::publish_with`]; a mandatory message that no consumer's
    /// binding matches is [`Error::Unroutable`](crate::Error::Unroutable).
    pub async fn publish_with<T: Serialize + ?Sized>(
        &self,
        routing_key: &str,
        value: &T,
        options: PublishOptions,
    ) -> Result<Published> {
        let published = self.hutch.publish_with(routing_key, value, options).await?;
        self.settled().await;
        Ok(published)
    }

    /// [`Hutch::publish_bytes`], then [`settled`](Self::settled): for
    /// bodies that are not JSON, or not valid at all.
    ///
    /// # Errors
    ///
    /// As [`Hutch::publish_bytes`].
    pub async fn publish_bytes(
        &self,
        routing_key: &str,
        body: impl Into<Vec<u8>>,
        content_type: &str,
        options: PublishOptions,
    ) -> Result<Published> {
        let published = self
            .hutch
            .publish_bytes(routing_key, body, content_type, options)
            .await?;
        self.settled().await;
        Ok(published)
    }

    /// [`Hutch::request`]: the consumer bound for `routing_key` handles it,
    /// and its reply comes back.
    ///
    /// # Errors
    ///
    /// As [`Hutch::request`]: no consumer bound
    /// ([`Error::Unroutable`](crate::Error::Unroutable)), no reply within
    /// the request timeout, a reply that is not an `R`.
    pub async fn request<T: Serialize + ?Sized, R: DeserializeOwned>(
        &self,
        routing_key: &str,
        value: &T,
    ) -> Result<R> {
        self.hutch.request(routing_key, value).await
    }

    /// Waits until no message is queued and no handler runs, then until
    /// the error hooks have reported what they were given (up to 10
    /// seconds).
    pub async fn settled(&self) {
        let mut changes = self.exchange.watch();
        while !self.exchange.state().is_idle() {
            // The sender lives as long as `self`.
            if changes.changed().await.is_err() {
                break;
            }
        }
        self.hutch.hooks().drain(Instant::now() + HOOK_DRAIN).await;
    }

    /// Every delivery `consumer` received so far, in order, with what
    /// became of it. `consumer` is the function's name, or
    /// `module::function` where two consumers share a name.
    ///
    /// # Panics
    ///
    /// If no consumer (or more than one) has that name: the panic lists
    /// the consumers this broker runs.
    #[must_use]
    pub fn received(&self, consumer: &str) -> Vec<Received> {
        let name = self.consumer_named(consumer);
        self.exchange
            .state()
            .received
            .iter()
            .filter(|received| received.consumer == name)
            .cloned()
            .collect()
    }

    /// What is in `consumer`'s dead-letter queue (`<queue>:dead`), oldest
    /// first.
    ///
    /// # Panics
    ///
    /// As [`received`](Self::received).
    #[must_use]
    pub fn dead_letters(&self, consumer: &str) -> Vec<DeadLetter> {
        let name = self.consumer_named(consumer);
        self.exchange
            .state()
            .dead
            .iter()
            .filter(|dead| dead.consumer == name)
            .cloned()
            .collect()
    }

    /// Every message published to this broker (by the test, by handlers,
    /// replies included), in order, with the queues each reached.
    #[must_use]
    pub fn published(&self) -> Vec<PublishedMessage> {
        self.exchange.state().published.clone()
    }

    /// Messages of `consumer` that its handler sent back at once
    /// ([`Decision::requeue`](crate::Decision::requeue)) more than 100 times
    /// in a row, set aside, as they were last delivered.
    ///
    /// # Panics
    ///
    /// As [`received`](Self::received).
    #[must_use]
    pub fn parked(&self, consumer: &str) -> Vec<PublishedMessage> {
        let queue = &self.queues[self.consumer_index(consumer)];
        self.exchange
            .state()
            .parked
            .iter()
            .filter(|ready| &ready.queue == queue)
            .map(|ready| PublishedMessage {
                exchange: ready.exchange.clone(),
                routing_key: ready.routing_key.clone(),
                properties: ready.properties.clone(),
                body: ready.body.clone(),
                queues: vec![ready.queue.clone()],
            })
            .collect()
    }

    /// The full name of the consumer `name` designates.
    fn consumer_named(&self, name: &str) -> String {
        self.consumers[self.consumer_index(name)].clone()
    }

    /// The index of the consumer `name` designates.
    fn consumer_index(&self, name: &str) -> usize {
        let matching: Vec<usize> = self
            .consumers
            .iter()
            .enumerate()
            .filter(|(_, consumer)| {
                consumer.as_str() == name
                    || consumer
                        .rsplit_once("::")
                        .is_some_and(|(_, function)| function == name)
            })
            .map(|(index, _)| index)
            .collect();
        match matching.as_slice() {
            [one] => *one,
            [] => panic!(
                "the in-memory broker runs no consumer named {name:?}; it runs: {}",
                self.consumers.join(", ")
            ),
            several => panic!(
                "{name:?} names several consumers ({}): use module::function",
                several
                    .iter()
                    .map(|index| self.consumers[*index].as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
}
