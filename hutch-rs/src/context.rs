//! The context of one handler call: the running `Hutch`, the consumer, and
//! the delivery's metadata.

use std::sync::Arc;

use lapin::{
    BasicProperties,
    types::{AMQPValue, FieldTable, ShortString},
};

use serde::Serialize;

use crate::{Error, Hutch, Message, Result, handler::Delivered, message::Incoming};

tokio::task_local! {
    /// The instance running the handler call on this task: what
    /// [`hutch_rs::publish`](crate::publish) publishes through inside a
    /// handler, instead of an instance built from the environment.
    static RUNNING_HUTCH: Hutch;
}

/// The instance running the handler call on the current task, if the
/// current task is a handler call.
pub(crate) fn running_hutch() -> Option<Hutch> {
    RUNNING_HUTCH.try_with(Hutch::clone).ok()
}

/// Runs `call` with `hutch` as the instance [`running_hutch`] returns.
pub(crate) async fn with_running_hutch<F: Future>(hutch: Hutch, call: F) -> F::Output {
    RUNNING_HUTCH.scope(hutch, call).await
}

/// What every call of one consumer shares: the instance running it and the
/// consumer's names.
#[derive(Debug)]
pub(crate) struct ConsumerScope {
    pub(crate) hutch: Hutch,
    /// `module::function`.
    pub(crate) consumer: String,
    pub(crate) queue: String,
}

/// The context of one handler call, as an extractor: the [`Hutch`] running
/// the consumer, the consumer, the delivery's metadata, and the state values
/// given to [`HutchBuilder::state`](crate::HutchBuilder::state).
///
/// ```
/// use hutch_rs::{BoxError, Context, Message, consumer};
///
/// #[consumer(routing_key = "orders.placed")]
/// async fn confirm(msg: Message<u64>, ctx: Context) -> Result<(), BoxError> {
///     // The instance running this consumer: same broker, exchange and
///     // namespace as the application's builder set.
///     ctx.hutch().publish("orders.confirmed", &*msg).await?;
///     Ok(())
/// }
/// ```
///
/// Cloning is cheap (two reference counts).
#[derive(Debug, Clone)]
pub struct Context {
    delivery: Arc<Incoming>,
    scope: Arc<ConsumerScope>,
}

impl Context {
    pub(crate) fn new(delivery: Arc<Incoming>, scope: Arc<ConsumerScope>) -> Self {
        Self { delivery, scope }
    }

    /// The delivery and scope this context was made from, to call the
    /// handler with.
    pub(crate) fn delivered(&self) -> Delivered {
        Delivered::new(self.delivery.clone(), self.scope.clone())
    }

    /// A context for calling a consumer function directly, as a test does:
    /// `hutch` as the running instance, `message`'s metadata (its routing
    /// key, headers, properties) as the delivery's, no consumer name.
    ///
    /// ```
    /// use hutch_rs::{Context, Hutch, Message};
    ///
    /// let hutch = Hutch::builder().build()?;
    /// let msg = Message::new(7_u64).with_routing_key("orders.placed");
    /// let ctx = Context::for_message(&hutch, &msg);
    /// assert_eq!(ctx.routing_key(), "orders.placed");
    /// # Ok::<(), hutch_rs::Error>(())
    /// ```
    #[must_use]
    pub fn for_message<T>(hutch: &Hutch, message: &Message<T>) -> Self {
        Self {
            delivery: Arc::new(Incoming {
                body: Vec::new(),
                envelope: message.envelope().clone(),
                span: tracing::Span::none(),
            }),
            scope: Arc::new(ConsumerScope {
                hutch: hutch.clone(),
                consumer: String::new(),
                queue: String::new(),
            }),
        }
    }

    /// The instance running this consumer: publish follow-up messages
    /// through it, and they go to the broker, exchange and namespace the
    /// application configured.
    #[must_use]
    pub fn hutch(&self) -> &Hutch {
        &self.scope.hutch
    }

    /// A clone of the value of type `T` given to
    /// [`HutchBuilder::state`](crate::HutchBuilder::state), if one was.
    /// [`State<T>`](crate::State) is the extractor for it.
    #[must_use]
    pub fn state<T: Clone + Send + Sync + 'static>(&self) -> Option<T> {
        self.scope.hutch.states().get::<T>()
    }

    /// The consumer handling the delivery, `module::function` (empty in a
    /// context made by [`for_message`](Self::for_message)).
    #[must_use]
    pub fn consumer(&self) -> &str {
        &self.scope.consumer
    }

    /// The consumer's queue (empty in a context made by
    /// [`for_message`](Self::for_message)).
    #[must_use]
    pub fn queue(&self) -> &str {
        &self.scope.queue
    }

    /// The routing key the message was published with (also on a retry).
    #[must_use]
    pub fn routing_key(&self) -> &str {
        &self.delivery.envelope.routing_key
    }

    /// The exchange the message was published to (also on a retry).
    #[must_use]
    pub fn exchange(&self) -> &str {
        &self.delivery.envelope.exchange
    }

    /// Which attempt at handling the message this is, 1 on the first
    /// delivery (see [`Message::attempt`]).
    #[must_use]
    pub fn attempt(&self) -> u32 {
        self.delivery.envelope.attempt
    }

    /// Whether the broker delivered the message before without it being
    /// acknowledged.
    #[must_use]
    pub fn redelivered(&self) -> bool {
        self.delivery.envelope.redelivered
    }

    /// The publisher's message id, if any.
    #[must_use]
    pub fn message_id(&self) -> Option<&str> {
        self.delivery.envelope.message_id()
    }

    /// The correlation id, if the publisher set one.
    #[must_use]
    pub fn correlation_id(&self) -> Option<&str> {
        short_string(self.properties().correlation_id())
    }

    /// Where the publisher asked for a reply, if it did (see
    /// [`Hutch::request`](crate::Hutch::request)).
    #[must_use]
    pub fn reply_to(&self) -> Option<&str> {
        short_string(self.properties().reply_to())
    }

    /// The AMQP headers table, if the message has one.
    #[must_use]
    pub fn headers(&self) -> Option<&FieldTable> {
        self.properties().headers().as_ref()
    }

    /// One AMQP header by name.
    #[must_use]
    pub fn header(&self, name: &str) -> Option<&AMQPValue> {
        self.headers()?.inner().get(name)
    }

    /// One AMQP header as text: a string header that is valid UTF-8.
    /// Anything else (a number, a table, bytes that are not UTF-8) is
    /// `None`.
    #[must_use]
    pub fn header_text(&self, name: &str) -> Option<&str> {
        match self.header(name)? {
            AMQPValue::LongString(text) => std::str::from_utf8(text.as_bytes()).ok(),
            AMQPValue::ShortString(text) => Some(text.as_str()),
            _ => None,
        }
    }

    /// All AMQP properties of the message.
    #[must_use]
    pub fn properties(&self) -> &BasicProperties {
        &self.delivery.envelope.properties
    }

    /// Publishes `value` as JSON to the message's `reply_to` with its
    /// correlation id, confirmed: the answer to a
    /// [`Hutch::request`](crate::Hutch::request), or to any publisher that
    /// set `reply_to`. Sent to the default exchange, as RabbitMQ's direct
    /// reply-to and reply queues expect.
    ///
    /// ```
    /// use hutch_rs::{BoxError, Context, Message, consumer};
    ///
    /// #[consumer(routing_key = "prices.quote")]
    /// async fn quote(msg: Message<u64>, ctx: Context) -> Result<(), BoxError> {
    ///     ctx.reply(&(*msg * 100)).await?;
    ///     Ok(())
    /// }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::NoReplyTo`](crate::Error::NoReplyTo) when the message has
    /// no `reply_to`; [`Error::InvalidReplyTo`](crate::Error::InvalidReplyTo)
    /// for a `reply_to` no broker would accept (it comes from the wire);
    /// otherwise as [`Hutch::publish`](crate::Hutch::publish).
    pub async fn reply<T: Serialize + ?Sized>(&self, value: &T) -> Result<()> {
        let Some(reply_to) = self.reply_to() else {
            return Err(Error::NoReplyTo {
                routing_key: self.routing_key().to_owned(),
                message_id: self.message_id().map(str::to_owned),
            });
        };
        self.hutch()
            .send_reply(reply_to, self.correlation_id(), value)
            .await
    }

    /// The body as it arrived, before decoding (empty in a context made by
    /// [`for_message`](Self::for_message)): for an extractor that checks a
    /// signature over the bytes, say.
    #[must_use]
    pub fn raw_body(&self) -> &[u8] {
        &self.delivery.body
    }
}

fn short_string(value: &Option<ShortString>) -> Option<&str> {
    value.as_ref().map(ShortString::as_str)
}
