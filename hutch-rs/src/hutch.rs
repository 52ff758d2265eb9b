//! `Hutch`: the configured framework, a handle to publish with and to run
//! consumers from.

use std::{future::Future, sync::Arc};

use serde::{Serialize, de::DeserializeOwned};
use tokio::time::Instant;

use crate::{
    Error, HutchBuilder, Result, Running,
    config::Settings,
    event::EventStream,
    extract::States,
    middleware::Middlewares,
    outgoing::{Draft, JSON, Outgoing, PublishOptions, Published, encode, encode_json},
    publisher::Publisher,
    registry,
    request::{self, Requester},
    retry::{self, HookQueues},
    stale_bindings::{self, RemovedBinding, WantedBindings},
    status::Status,
    supervisor::{observer::Observer, tree::Root},
    topology::{self, ConsumerPlan},
};

/// The default exchange: routes a message to the queue named by its routing
/// key. Replies go through it.
const DEFAULT_EXCHANGE: &str = "";

/// A configured hutch-rs: publishes, and runs the registered `#[consumer]`
/// functions.
///
/// Cheap to clone; clones share one publishing connection.
///
/// ```no_run
/// # async fn example() -> hutch_rs::Result<()> {
/// let hutch = hutch_rs::Hutch::builder().namespace("shop").build()?;
/// hutch.publish("orders.placed", &serde_json::json!({ "order_id": 1 })).await?;
/// let running = hutch.start().await?;
/// // ...
/// running.shutdown().await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Hutch {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    settings: Arc<Settings>,
    observer: Observer,
    /// Shared with the consumers, which publish retries and dead letters
    /// through it.
    publisher: Arc<Publisher>,
    /// Sends requests on a channel of the publishing connection.
    requester: Requester,
    /// The error hooks' queues, fed by the consumers of every `Running`.
    hooks: Arc<HookQueues>,
    /// The root of the tree: cancelled when the last `Hutch` clone and the
    /// last `Running` are gone.
    root: Arc<Root>,
}

impl Hutch {
    /// A builder starting from the defaults overlaid with the `HUTCH_*`
    /// environment variables; its setters win over both.
    pub fn builder() -> HutchBuilder {
        HutchBuilder::from_env()
    }

    /// `Hutch::builder().build()`: the defaults overlaid with the environment.
    ///
    /// # Errors
    ///
    /// [`Error::Config`](crate::Error::Config) naming the environment variable
    /// that holds an invalid value.
    pub fn from_env() -> Result<Self> {
        Self::builder().build()
    }

    pub(crate) fn from_settings(settings: Settings) -> Self {
        Self::publishing_to(settings, None)
    }

    /// An instance whose publishes go to `local`, an exchange in this
    /// process, and that never connects: the in-memory test broker's.
    #[cfg(feature = "testing")]
    pub(crate) fn with_local_exchange(
        settings: Settings,
        local: Arc<dyn crate::local_exchange::LocalExchange>,
    ) -> Self {
        Self::publishing_to(settings, Some(local))
    }

    fn publishing_to(
        settings: Settings,
        local: Option<Arc<dyn crate::local_exchange::LocalExchange>>,
    ) -> Self {
        crate::telemetry::metrics::describe();
        let settings = Arc::new(settings);
        let observer = Observer::default();
        let root = Arc::new(Root::default());
        let hooks = HookQueues::new(
            &settings.error_hooks,
            observer.clone(),
            root.tracker().clone(),
            root.token().clone(),
        );
        let mut publisher = Publisher::new(settings.clone(), observer.clone(), &root);
        if let Some(local) = local {
            publisher = publisher.with_local_exchange(local);
        }
        let publisher = Arc::new(publisher);
        let requester =
            Requester::new(settings.clone(), publisher.clone(), observer.clone(), &root);
        Self {
            inner: Arc::new(Inner {
                publisher,
                requester,
                hooks: Arc::new(hooks),
                observer,
                settings,
                root,
            }),
        }
    }

    /// The exchange this instance publishes to and binds queues to.
    #[must_use]
    pub fn exchange(&self) -> &str {
        &self.inner.settings.exchange
    }

    /// The namespace prefixed to queue names, if any.
    #[must_use]
    pub fn namespace(&self) -> Option<&str> {
        self.inner.settings.namespace.as_deref()
    }

    /// The consumer group this instance runs, if any.
    #[must_use]
    pub fn group(&self) -> Option<&str> {
        self.inner.settings.group.as_deref()
    }

    /// The queue names of the consumers this instance would run (the
    /// selected group, the namespace applied), in order.
    ///
    /// # Errors
    ///
    /// [`Error::DuplicateQueue`](crate::Error::DuplicateQueue) when two
    /// consumers resolve to one queue.
    pub fn queue_names(&self) -> Result<Vec<String>> {
        Ok(self.plan()?.into_iter().map(|plan| plan.queue).collect())
    }

    pub(crate) fn plan(&self) -> Result<Vec<ConsumerPlan>> {
        topology::plan_consumers(&self.inner.settings, &registry::consumers())
    }

    /// Every selected consumer's `State<T>` arguments have a value, or
    /// [`Error::MissingState`](crate::Error::MissingState) lists all that
    /// lack one.
    pub(crate) fn check_required_state(&self, plans: &[ConsumerPlan]) -> Result<()> {
        let missing: Vec<(String, &'static str)> = plans
            .iter()
            .flat_map(|plan| {
                plan.registration
                    .required_state()
                    .missing_from(self.states())
                    .into_iter()
                    .map(|type_name| (plan.name(), type_name))
            })
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(crate::Error::MissingState { missing })
        }
    }

    /// Refuses what needs a broker on the in-memory test broker's instance.
    fn refuse_if_local(&self) -> Result<()> {
        if self.inner.publisher.is_local() {
            return Err(crate::Error::Unavailable {
                connection: "consume",
                reason: "this Hutch belongs to an in-memory testing::TestBroker, which runs the \
                         consumers itself: there is no broker to declare on or consume from"
                    .to_owned(),
            });
        }
        Ok(())
    }

    /// The settings this instance was built with.
    pub(crate) fn settings(&self) -> &Settings {
        &self.inner.settings
    }

    /// The error hooks' queues.
    #[cfg(feature = "testing")]
    pub(crate) fn hooks(&self) -> &HookQueues {
        &self.inner.hooks
    }

    /// The middleware given to
    /// [`HutchBuilder::middleware`](crate::HutchBuilder::middleware).
    pub(crate) fn middleware(&self) -> &Middlewares {
        &self.inner.settings.middleware
    }

    /// The values given to [`HutchBuilder::state`](crate::HutchBuilder::state).
    pub(crate) fn states(&self) -> &States {
        &self.inner.settings.states
    }

    /// Publishes `value` as JSON to the exchange with `routing_key`:
    /// persistent, content type `application/json`, a fresh UUID message id
    /// and a timestamp. Resolves once the broker has confirmed the message.
    ///
    /// Safe to call from many tasks at once. If the connection dies before
    /// the confirm, the message is published again on the next connection
    /// with the same message id, within the confirm timeout: a publish that
    /// returns `Ok` was confirmed by the broker, and a consumer may see a
    /// message twice (same message id) but never miss one that was.
    ///
    /// # Errors
    ///
    /// Before anything is sent: [`Error::Encode`](crate::Error::Encode) if
    /// `value` does not serialize;
    /// [`Error::InvalidRoutingKey`](crate::Error::InvalidRoutingKey) for a
    /// routing key longer than 255 bytes.
    ///
    /// From the broker: [`Error::PublishTimeout`](crate::Error::PublishTimeout)
    /// if no confirm came within the confirm timeout, which includes waiting
    /// for an unreachable broker (the connection is retried meanwhile);
    /// [`Error::Blocked`](crate::Error::Blocked) if the broker blocked
    /// publishing (a resource alarm) all that time;
    /// [`Error::PublishNacked`](crate::Error::PublishNacked) if the broker
    /// refused the message;
    /// [`Error::MessageTooLarge`](crate::Error::MessageTooLarge) if it is
    /// larger than the broker's maximum message size (other publishes in
    /// flight go out again and are not affected);
    /// [`Error::Publish`](crate::Error::Publish) if the broker refused the
    /// publish itself (e.g. no write permission);
    /// [`Error::Connect`](crate::Error::Connect) if the broker refused the
    /// credentials or the vhost (every publish waiting for the connection
    /// gets it); [`Error::Unavailable`](crate::Error::Unavailable) if the
    /// publishing connection was closed ([`close`](Self::close)) while the
    /// publish waited.
    pub async fn publish<T: Serialize + ?Sized>(&self, routing_key: &str, value: &T) -> Result<()> {
        self.publish_with(routing_key, value, PublishOptions::new())
            .await
            .map(drop)
    }

    /// [`publish`](Self::publish) with per-publish options: headers,
    /// correlation id, reply-to, expiration, priority, an explicit message
    /// id, mandatory. Returns the message id it went out with.
    ///
    /// ```no_run
    /// # async fn example(hutch: hutch_rs::Hutch) -> hutch_rs::Result<()> {
    /// use hutch_rs::PublishOptions;
    ///
    /// let published = hutch
    ///     .publish_with(
    ///         "orders.placed",
    ///         &serde_json::json!({ "order_id": 1 }),
    ///         PublishOptions::new().correlation_id("req-7").mandatory(),
    ///     )
    ///     .await?;
    /// println!("confirmed as {}", published.message_id());
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`publish`](Self::publish);
    /// [`Error::InvalidProperty`](crate::Error::InvalidProperty) (nothing
    /// sent) for a header name, message id, correlation id or `reply_to`
    /// longer than 255 bytes;
    /// [`Error::HeadersTooLarge`](crate::Error::HeadersTooLarge) (nothing
    /// sent) for headers that do not fit in one AMQP frame; and
    /// [`Error::Unroutable`](crate::Error::Unroutable) for a mandatory
    /// message that no queue is bound for.
    pub async fn publish_with<T: Serialize + ?Sized>(
        &self,
        routing_key: &str,
        value: &T,
        options: PublishOptions,
    ) -> Result<Published> {
        // Serialized here and published from borrowed parts: no copy of
        // the routing key or the content type per publish.
        let codec = options.body_codec();
        let body = encode(routing_key, value, codec)?;
        let draft = Draft {
            routing_key,
            body: &body,
            content_type: codec.content_type(),
            options: &options,
        };
        self.inner.publisher.publish(draft).await
    }

    /// Publishes `body` as it is, with `content_type`, for messages that are
    /// not JSON (or are JSON already).
    ///
    /// # Errors
    ///
    /// As [`publish_with`](Self::publish_with), and
    /// [`Error::InvalidProperty`](crate::Error::InvalidProperty) for a
    /// content type longer than 255 bytes.
    pub async fn publish_bytes(
        &self,
        routing_key: &str,
        body: impl Into<Vec<u8>>,
        content_type: &str,
        options: PublishOptions,
    ) -> Result<Published> {
        let body = body.into();
        let draft = Draft {
            routing_key,
            body: &body,
            content_type,
            options: &options,
        };
        self.inner.publisher.publish(draft).await
    }

    /// Publishes many messages with their confirms pipelined (up to 256
    /// outstanding), and reports each one's outcome, in order. Each message
    /// is published as by [`publish_with`](Self::publish_with) or
    /// [`publish_bytes`](Self::publish_bytes) and can fail in the same ways
    /// (an invalid property, a message too large, a timeout…); one failing
    /// does not stop the others.
    ///
    /// Timeouts are per message, not for the batch: a message's confirm
    /// timeout starts when it is sent, once one of the 256 places is free.
    /// Mandatory messages go out one at a time, each with its own timeout
    /// from when its turn comes; one waiting for its turn gives up (with
    /// [`Error::PublishTimeout`](crate::Error::PublishTimeout) or
    /// [`Error::Blocked`](crate::Error::Blocked)) only if no mandatory
    /// message was answered by the broker for a whole confirm timeout. A
    /// large mandatory batch therefore takes as long as it takes on a
    /// healthy broker, and fails within about a confirm timeout on one that
    /// is away.
    ///
    /// ```no_run
    /// # async fn example(hutch: hutch_rs::Hutch) -> hutch_rs::Result<()> {
    /// use hutch_rs::Outgoing;
    ///
    /// let batch = (1..=100)
    ///     .map(|n| Outgoing::json("orders.placed", &serde_json::json!({ "order_id": n })))
    ///     .collect::<hutch_rs::Result<Vec<_>>>()?;
    /// for (n, outcome) in hutch.publish_batch(batch).await.into_iter().enumerate() {
    ///     if let Err(error) = outcome {
    ///         eprintln!("message {n} was not confirmed: {error}");
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn publish_batch(
        &self,
        messages: impl IntoIterator<Item = Outgoing>,
    ) -> Vec<Result<Published>> {
        self.inner
            .publisher
            .publish_batch(messages.into_iter().collect())
            .await
    }

    /// Sends `value` as JSON to the exchange with `routing_key` as a
    /// request, and resolves with the reply, decoded from JSON: what the
    /// consumer that handled the request sent with
    /// [`Context::reply`](crate::Context::reply).
    ///
    /// ```no_run
    /// # async fn example(hutch: hutch_rs::Hutch) -> hutch_rs::Result<()> {
    /// #[derive(serde::Serialize)]
    /// struct Quote {
    ///     sku: u64,
    /// }
    ///
    /// let total: u64 = hutch.request("prices.quote", &Quote { sku: 7 }).await?;
    /// # Ok(()) }
    /// ```
    ///
    /// The request goes out on a channel of the publishing connection that
    /// receives its replies through RabbitMQ's direct reply-to
    /// (`amq.rabbitmq.reply-to`): no reply queue is declared. It carries a
    /// fresh correlation id, by which its reply (or its return by the
    /// broker) finds it, so any number of requests may be in flight at once
    /// from any number of tasks. It is published mandatory and confirmed,
    /// and is never sent twice. The whole call, waiting for the connection
    /// included, is bounded by the request timeout
    /// ([`HutchBuilder::request_timeout`](crate::HutchBuilder::request_timeout),
    /// 30 s by default). See the guide's "Request and reply" chapter.
    ///
    /// # Errors
    ///
    /// Before anything is sent: [`Error::Encode`](crate::Error::Encode),
    /// [`Error::InvalidRoutingKey`](crate::Error::InvalidRoutingKey).
    ///
    /// [`Error::Unroutable`](crate::Error::Unroutable) at once if no queue
    /// is bound for `routing_key`;
    /// [`Error::RequestTimeout`](crate::Error::RequestTimeout) if no reply
    /// came within the request timeout (one that comes later is dropped and
    /// counted in [`Status::late_replies`](crate::Status::late_replies));
    /// [`Error::RequestInterrupted`](crate::Error::RequestInterrupted) at
    /// once if the request's channel or connection closed before its reply
    /// (the next request uses a new one);
    /// [`Error::ReplyDecode`](crate::Error::ReplyDecode) if the reply is not
    /// JSON of type `R`; [`Error::PublishNacked`](crate::Error::PublishNacked)
    /// if the broker refused the request; and as for a publish,
    /// [`Error::Connect`](crate::Error::Connect) for refused credentials and
    /// [`Error::Unavailable`](crate::Error::Unavailable) if the publishing
    /// connection was closed.
    pub async fn request<T: Serialize + ?Sized, R: DeserializeOwned>(
        &self,
        routing_key: &str,
        value: &T,
    ) -> Result<R> {
        let body = encode_json(routing_key, value)?;
        // Boxed: the wait holds lapin's publish future; a request in flight
        // stays small to move (into a task, a `FuturesUnordered`).
        let reply = Box::pin(self.inner.requester.request(routing_key, &body)).await?;
        serde_json::from_slice(&reply).map_err(|source| Error::ReplyDecode {
            routing_key: routing_key.to_owned(),
            source,
        })
    }

    /// Publishes `value` as JSON to the default exchange with routing key
    /// `reply_to` and `correlation_id`, confirmed: a reply to a request
    /// ([`Context::reply`](crate::Context::reply)). `reply_to` comes from
    /// the wire: it is checked before anything is sent.
    ///
    /// A reply to a queue that does not exist (a requester that has gone) is
    /// dropped by the broker; it is not an error here, and the channel other
    /// publishes share is not affected.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidReplyTo`](crate::Error::InvalidReplyTo) for an empty
    /// `reply_to`, one longer than 255 bytes, a direct reply-to address of
    /// another shape than RabbitMQ gives, or one the broker closed the
    /// connection on (not sent again);
    /// [`Error::InvalidProperty`](crate::Error::InvalidProperty) for a
    /// correlation id longer than 255 bytes; otherwise as
    /// [`publish`](Self::publish).
    pub(crate) async fn send_reply<T: Serialize + ?Sized>(
        &self,
        reply_to: &str,
        correlation_id: Option<&str>,
        value: &T,
    ) -> Result<()> {
        request::check_reply_to(reply_to)?;
        let body = encode_json(reply_to, value)?;
        let options = match correlation_id {
            Some(correlation_id) => PublishOptions::new().correlation_id(correlation_id),
            None => PublishOptions::new(),
        };
        let draft = Draft {
            routing_key: reply_to,
            body: &body,
            content_type: JSON,
            options: &options,
        };
        self.inner
            .publisher
            .publish_to(DEFAULT_EXCHANGE, draft)
            .await
            .map(drop)
    }

    /// hutch-rs's own tests reply through this: not part of the API and not
    /// covered by semver. Only with the `testing` feature.
    #[cfg(feature = "testing")]
    #[doc(hidden)]
    pub async fn __send_reply<T: Serialize + ?Sized>(
        &self,
        reply_to: &str,
        correlation_id: Option<&str>,
        value: &T,
    ) -> Result<()> {
        self.send_reply(reply_to, correlation_id, value).await
    }

    /// Declares what [`start`](Self::start) declares, without consuming:
    /// the exchange, each selected consumer's queue with its bindings, and
    /// its `<queue>:dead`. Returns the consumers' queue names.
    ///
    /// RabbitMQ drops a message that no queue is bound for, even a confirmed
    /// one. An application that publishes before its consumers run (at
    /// startup, or a publisher whose consumers live in another process)
    /// declares first, so that nothing it publishes is lost:
    ///
    /// ```no_run
    /// # async fn example() -> hutch_rs::Result<()> {
    /// let hutch = hutch_rs::Hutch::from_env()?;
    /// hutch.declare().await?;
    /// hutch.publish("orders.placed", &serde_json::json!({ "order_id": 1 })).await?;
    /// hutch.run_until(std::future::pending()).await
    /// # }
    /// ```
    ///
    /// Idempotent: declaring what exists with the same arguments changes
    /// nothing, and `start` declares it all again anyway. It uses a channel
    /// of its own on the publishing connection, closed afterwards.
    ///
    /// # Errors
    ///
    /// [`Error::DuplicateQueue`](crate::Error::DuplicateQueue);
    /// [`Error::Declare`](crate::Error::Declare) naming what the broker
    /// refused (e.g. a queue that exists with other arguments);
    /// [`Error::Connect`](crate::Error::Connect) for refused credentials;
    /// [`Error::Unavailable`](crate::Error::Unavailable) if no connection
    /// could be opened within the confirm timeout, with the reason.
    pub async fn declare(&self) -> Result<Vec<String>> {
        self.refuse_if_local()?;
        let plans = self.plan()?;
        let exchange = &self.inner.settings.exchange;
        self.inner
            .publisher
            .on_spare_channel(async |channel| {
                topology::declare_exchange(channel, exchange).await?;
                for plan in &plans {
                    topology::declare_consumer_queue(channel, exchange, plan).await?;
                    retry::queues::declare_dead_letter_queue(channel, plan).await?;
                }
                Ok(())
            })
            .await?;
        tracing::info!(exchange = %exchange, queues = plans.len(), "topology declared");
        Ok(plans.into_iter().map(|plan| plan.queue).collect())
    }

    /// What this instance declares, as data: the exchange, and each
    /// selected consumer's queue, dead-letter queue, possible delay queues
    /// and bindings with the arguments [`declare`](Self::declare) and
    /// [`start`](Self::start) send, and its settings after the configured
    /// defaults (prefetch, concurrency, attempts, retry delays, timeout)
    /// and message type. Needs no broker and opens no connection.
    ///
    /// ```
    /// let hutch = hutch_rs::Hutch::builder().namespace("shop").build()?;
    /// let topology = hutch.topology()?;
    /// assert_eq!(topology.exchange.name, "hutch");
    /// for consumer in &topology.consumers {
    ///     println!("{} <- {:?}", consumer.queue.name, consumer.routing_keys);
    /// }
    /// println!("{}", serde_json::to_string_pretty(&topology).unwrap());
    /// # Ok::<(), hutch_rs::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::DuplicateQueue`](crate::Error::DuplicateQueue) and the
    /// configuration errors [`start`](Self::start) would return for a
    /// consumer's settings.
    pub fn topology(&self) -> Result<crate::Topology> {
        Ok(crate::Topology::describe(
            &self.inner.settings,
            &self.plan()?,
        ))
    }

    /// The AsyncAPI 3.0.0 document of this instance's consumers, as JSON:
    /// its broker (without credentials), a channel per consumer queue with
    /// its routing keys and AMQP bindings, a `receive` operation per
    /// consumer, and each message type's JSON Schema where the type derives
    /// `schemars::JsonSchema`. Title and version are placeholders taken
    /// from the namespace or exchange; [`asyncapi_with`](Self::asyncapi_with)
    /// sets them. Needs no broker. See the guide's AsyncAPI chapter.
    ///
    /// # Errors
    ///
    /// As [`topology`](Self::topology).
    #[cfg(feature = "asyncapi")]
    pub fn asyncapi(&self) -> Result<serde_json::Value> {
        self.asyncapi_with(&crate::AsyncApiInfo::default_for(&self.inner.settings))
    }

    /// [`asyncapi`](Self::asyncapi) with the document's `info` (title,
    /// version, description) given, e.g.
    /// `AsyncApiInfo::new(env!("CARGO_PKG_NAME"), env!("CARGO_PKG_VERSION"))`
    /// in the application's binary.
    ///
    /// # Errors
    ///
    /// As [`topology`](Self::topology).
    #[cfg(feature = "asyncapi")]
    pub fn asyncapi_with(&self, info: &crate::AsyncApiInfo) -> Result<serde_json::Value> {
        let plans = self.plan()?;
        let topology = crate::Topology::describe(&self.inner.settings, &plans);
        Ok(crate::asyncapi::document(
            info,
            &self.inner.settings,
            &topology,
            &plans,
        ))
    }

    /// Connects, declares the exchange, the selected consumers' queues and
    /// bindings, and starts consuming. Resolves once every consumer consumes.
    ///
    /// A broker that cannot be reached is retried with backoff (logged at
    /// warn level), so this waits until it can be; use
    /// [`run_until`](Self::run_until) to be able to give up on a signal.
    ///
    /// # Errors
    ///
    /// [`Error::DuplicateQueue`](crate::Error::DuplicateQueue),
    /// [`Error::Connect`](crate::Error::Connect) (refused credentials, an
    /// unknown or forbidden vhost), [`Error::Tls`](crate::Error::Tls) (a
    /// certificate problem), [`Error::Declare`](crate::Error::Declare)
    /// (a declaration the broker refuses, e.g. a queue that exists with other
    /// arguments, or no permission),
    /// [`Error::StaleBindings`](crate::Error::StaleBindings) (with
    /// [`HutchBuilder::remove_stale_bindings`](crate::HutchBuilder::remove_stale_bindings):
    /// the management API could not be reached or refused; the consumers
    /// started are stopped again).
    ///
    /// With stale-binding removal on, the stale bindings are removed once
    /// every consumer consumes, so once the bindings the consumers declare
    /// now are in place: a routing key that changed form is never unbound
    /// before its replacement is bound.
    pub async fn start(&self) -> Result<Running> {
        self.refuse_if_local()?;
        let plans = self.plan()?;
        self.check_required_state(&plans)?;
        if plans.is_empty() {
            tracing::warn!(group = ?self.group(), "no consumers selected; nothing will be consumed");
        }
        for plan in &plans {
            topology::warn_about_consumer_timeout(plan);
            topology::warn_about_costly_patterns(plan);
        }
        let wanted: Vec<WantedBindings> = plans
            .iter()
            .map(|plan| WantedBindings {
                queue: plan.queue.clone(),
                routing_keys: plan
                    .registration
                    .routing_keys()
                    .iter()
                    .map(|&key| key.to_owned())
                    .collect(),
            })
            .collect();
        let mut running = Running::start(
            self.clone(),
            self.inner.settings.clone(),
            self.inner.observer.clone(),
            self.inner.publisher.clone(),
            self.inner.hooks.clone(),
            self.inner.root.clone(),
            plans,
        )
        .await?;
        if self.inner.settings.stale_bindings.is_some() {
            match self.remove_stale_bindings(wanted).await {
                Ok(removed) => running.record_removed_bindings(removed),
                Err(error) => {
                    // Leave nothing half-started behind a failed start.
                    if let Err(stopping) = running.shutdown().await {
                        tracing::warn!(error = %stopping, "stopping the consumers after a failed stale-binding removal");
                    }
                    return Err(error);
                }
            }
        }
        Ok(running)
    }

    /// Lists the bindings of the `wanted` queues through the management
    /// API and unbinds hutch-rs's own that the plan no longer has.
    async fn remove_stale_bindings(
        &self,
        wanted: Vec<WantedBindings>,
    ) -> Result<Vec<RemovedBinding>> {
        let settings = self.inner.settings.clone();
        let stale = tokio::task::spawn_blocking(move || {
            let Some(api) = &settings.stale_bindings else {
                return Ok(Vec::new());
            };
            stale_bindings::find_stale(
                api,
                settings.connection_timeout,
                &settings.exchange,
                &wanted,
            )
        })
        .await
        .map_err(|error| Error::StaleBindings {
            reason: format!("listing the bindings ended abnormally: {error}"),
        })??;
        if !stale.is_empty() {
            self.inner
                .publisher
                .on_spare_channel(async |channel| stale_bindings::unbind(channel, &stale).await)
                .await?;
        }
        tracing::info!(
            exchange = %self.inner.settings.exchange,
            removed = stale.len(),
            "stale bindings removed"
        );
        Ok(stale)
    }

    /// Starts the consumers, runs until `shutdown` resolves, then shuts down
    /// cleanly (see [`Running::shutdown`]). `shutdown` is honoured during the
    /// start as well: while a broker that cannot be reached is being retried,
    /// it ends the wait and returns `Ok`.
    ///
    /// # Errors
    ///
    /// Whatever [`start`](Self::start) returns; a failure the tree could not
    /// recover from ([`Running::failure`]); or what shutdown returns.
    pub async fn run_until<F: Future<Output = ()>>(&self, shutdown: F) -> Result<()> {
        tokio::pin!(shutdown);
        // Dropping a start in progress stops what it started.
        let mut running = tokio::select! {
            started = self.start() => started?,
            () = &mut shutdown => {
                tracing::info!("shutdown requested before every consumer started");
                return Ok(());
            }
        };
        let outcome = tokio::select! {
            () = &mut shutdown => Ok(()),
            failure = running.failure() => Err(failure),
        };
        let stopped = running.shutdown().await;
        outcome.and(stopped)
    }

    /// A snapshot of the connections and consumers: each connection's state
    /// and blocked flag, each consumer's state, restart count and channel.
    /// Enough for a health check: [`Status::readiness`] and
    /// [`Status::liveness`] say what fails, in words, for an orchestrator's
    /// probes; [`Status::is_healthy`] is readiness as a `bool`.
    #[must_use]
    pub fn status(&self) -> Status {
        self.inner.observer.snapshot()
    }

    /// Events as they happen: connected, disconnected, blocked, unblocked,
    /// consumer started, restarted, failed.
    #[must_use]
    pub fn events(&self) -> EventStream {
        self.inner.observer.subscribe()
    }

    /// Lets the error hooks report the failures queued for them, then closes
    /// the publishing connection (opened by the first publish), waiting at
    /// most a few seconds for the broker to confirm. A later publish opens it
    /// again, and a later failure starts the hooks' workers again.
    ///
    /// The hooks get the shutdown timeout
    /// ([`HutchBuilder::shutdown_timeout`](crate::HutchBuilder::shutdown_timeout)):
    /// a hook still busy then is abandoned, and the failures it had not
    /// reported are logged and counted in
    /// [`Status::hook_failures_dropped`](crate::Status::hook_failures_dropped).
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`](crate::Error::Unavailable) if the connection's
    /// task ended abnormally.
    pub async fn close(&self) -> Result<()> {
        let deadline = Instant::now() + self.inner.settings.shutdown_timeout;
        // Hooks first: one may publish.
        self.inner.hooks.drain(deadline).await;
        self.inner.hooks.stop();
        self.inner.publisher.close().await
    }
}
