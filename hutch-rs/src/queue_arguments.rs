//! What a consumer's queue is declared with: its type (classic or quorum)
//! and its arguments (length limit, single active consumer, priorities,
//! message TTL, delivery limit, and any other `x-` argument).
//!
//! Set per consumer on `#[consumer(...)]` and for every consumer on the
//! builder ([`HutchBuilder::queue_type`](crate::HutchBuilder::queue_type),
//! [`HutchBuilder::queue_arguments`](crate::HutchBuilder::queue_arguments));
//! the consumer's own value of an argument wins over the builder's.
//!
//! Queue arguments are fixed when RabbitMQ creates a queue: declaring it
//! again with other values fails (`PRECONDITION_FAILED`, "inequivalent
//! arg"), and hutch-rs reports that as a fatal error naming the argument
//! and both values. Changing one means deleting the queue (after draining
//! it) or moving the setting to a policy.

use std::{borrow::Cow, fmt, str::FromStr, time::Duration};

use lapin::types::{AMQPValue, FieldTable, LongString};

/// The kind of queue a consumer's queues are.
///
/// | | classic | quorum |
/// |-|---------|--------|
/// | replicated across a cluster | no (a node's loss makes it unavailable) | yes (Raft, survives the loss of a minority) |
/// | message priorities (`max_priority`) | yes | no (RabbitMQ 3.x) |
/// | caps redeliveries (`delivery_limit`) | no | yes: a message that kills the process on every delivery ends in `<queue>:dead` |
/// | dead-lettering | at most once | at least once (hutch-rs sets `x-dead-letter-strategy`) |
///
/// With `Quorum`, the consumer's queue, its delay queues and its
/// `<queue>:dead` are all quorum queues, so a retry waiting in a delay queue
/// or a dead letter survives the loss of a node like the queue itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum QueueType {
    /// RabbitMQ's default queue type: one node holds it.
    #[default]
    Classic,
    /// A replicated queue (Raft): what RabbitMQ recommends for durable
    /// data on a cluster since 3.8, and the only replicated queue type
    /// since 4.0 removed classic mirroring.
    Quorum,
}

impl QueueType {
    /// The value of `x-queue-type`: `"classic"` or `"quorum"`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            QueueType::Classic => "classic",
            QueueType::Quorum => "quorum",
        }
    }
}

impl fmt::Display for QueueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for QueueType {
    type Err = String;

    /// `"classic"` or `"quorum"`, in any case.
    fn from_str(text: &str) -> Result<Self, String> {
        match text.trim().to_ascii_lowercase().as_str() {
            "classic" => Ok(QueueType::Classic),
            "quorum" => Ok(QueueType::Quorum),
            _ => Err(format!(
                "{text:?} is not a queue type; write \"classic\" or \"quorum\""
            )),
        }
    }
}

/// What a queue at its length limit does with one more message
/// (`x-overflow`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Overflow {
    /// The oldest message makes room: hutch-rs dead-letters it to
    /// `<queue>:dead` rather than losing it. RabbitMQ's default.
    DropHead,
    /// The new message is refused: its publisher's confirm is a nack, so
    /// [`publish`](crate::publish) returns an error and nothing is lost.
    RejectPublish,
    /// As `RejectPublish`, and the refused message is dead-lettered too
    /// (classic queues only).
    RejectPublishDlx,
}

impl Overflow {
    /// The value of `x-overflow`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Overflow::DropHead => "drop-head",
            Overflow::RejectPublish => "reject-publish",
            Overflow::RejectPublishDlx => "reject-publish-dlx",
        }
    }
}

impl fmt::Display for Overflow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Overflow {
    type Err = String;

    /// `"drop-head"`, `"reject-publish"` or `"reject-publish-dlx"`.
    fn from_str(text: &str) -> Result<Self, String> {
        match text.trim() {
            "drop-head" => Ok(Overflow::DropHead),
            "reject-publish" => Ok(Overflow::RejectPublish),
            "reject-publish-dlx" => Ok(Overflow::RejectPublishDlx),
            _ => Err(format!(
                "{text:?} is not an overflow behaviour; write \"drop-head\", \"reject-publish\" or \"reject-publish-dlx\""
            )),
        }
    }
}

/// The value of an `x-` queue argument given through the escape hatch
/// ([`QueueArguments::argument`], `arguments = [...]` on `#[consumer]`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ArgumentValue {
    /// A signed 64-bit integer (AMQP `long-long-int`).
    Int(i64),
    /// A string (AMQP `long-string`).
    Text(Cow<'static, str>),
    /// A boolean.
    Bool(bool),
}

impl From<i64> for ArgumentValue {
    fn from(value: i64) -> Self {
        ArgumentValue::Int(value)
    }
}

impl From<&'static str> for ArgumentValue {
    fn from(value: &'static str) -> Self {
        ArgumentValue::Text(Cow::Borrowed(value))
    }
}

impl From<String> for ArgumentValue {
    fn from(value: String) -> Self {
        ArgumentValue::Text(Cow::Owned(value))
    }
}

impl From<bool> for ArgumentValue {
    fn from(value: bool) -> Self {
        ArgumentValue::Bool(value)
    }
}

impl ArgumentValue {
    fn to_amqp(&self) -> AMQPValue {
        match self {
            ArgumentValue::Int(value) => AMQPValue::LongLongInt(*value),
            ArgumentValue::Text(value) => AMQPValue::LongString(LongString::from(value.as_ref())),
            ArgumentValue::Bool(value) => AMQPValue::Boolean(*value),
        }
    }
}

/// One `x-` argument of the escape hatch: its name and value.
pub type Argument = (Cow<'static, str>, ArgumentValue);

/// The common queue arguments, typed, plus any other `x-` argument.
///
/// Unset fields are not sent. On the builder
/// ([`HutchBuilder::queue_arguments`](crate::HutchBuilder::queue_arguments))
/// they apply to every consumer that does not set its own on `#[consumer]`.
///
/// ```
/// use std::time::Duration;
/// use hutch_rs::{Overflow, QueueArguments};
///
/// let arguments = QueueArguments::new()
///     .max_length(100_000)
///     .overflow(Overflow::RejectPublish)
///     .message_ttl(Duration::from_secs(24 * 3600))
///     .argument("x-queue-leader-locator", "balanced");
/// let hutch = hutch_rs::Hutch::builder().queue_arguments(arguments).build()?;
/// # Ok::<(), hutch_rs::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Default)]
pub struct QueueArguments {
    pub(crate) queue_type: Option<QueueType>,
    pub(crate) max_length: Option<u64>,
    pub(crate) max_length_bytes: Option<u64>,
    pub(crate) overflow: Option<Overflow>,
    pub(crate) single_active_consumer: Option<bool>,
    pub(crate) max_priority: Option<u8>,
    pub(crate) message_ttl: Option<Duration>,
    pub(crate) delivery_limit: Option<u32>,
    pub(crate) extra: Cow<'static, [Argument]>,
}

impl QueueArguments {
    /// No argument set.
    #[must_use]
    pub const fn new() -> Self {
        Self {
            queue_type: None,
            max_length: None,
            max_length_bytes: None,
            overflow: None,
            single_active_consumer: None,
            max_priority: None,
            message_ttl: None,
            delivery_limit: None,
            extra: Cow::Borrowed(&[]),
        }
    }

    /// Used by `#[consumer(arguments = [...])]`; not a stable API.
    #[doc(hidden)]
    #[must_use]
    pub const fn with_static_arguments(extra: &'static [Argument]) -> Self {
        Self {
            queue_type: None,
            max_length: None,
            max_length_bytes: None,
            overflow: None,
            single_active_consumer: None,
            max_priority: None,
            message_ttl: None,
            delivery_limit: None,
            extra: Cow::Borrowed(extra),
        }
    }

    /// The queue type (`x-queue-type`); see [`QueueType`].
    #[must_use]
    pub const fn queue_type(mut self, queue_type: QueueType) -> Self {
        self.queue_type = Some(queue_type);
        self
    }

    /// At most this many messages wait in the queue (`x-max-length`);
    /// what happens to one more is [`overflow`](Self::overflow).
    #[must_use]
    pub const fn max_length(mut self, messages: u64) -> Self {
        self.max_length = Some(messages);
        self
    }

    /// At most this many bytes of message bodies wait in the queue
    /// (`x-max-length-bytes`).
    #[must_use]
    pub const fn max_length_bytes(mut self, bytes: u64) -> Self {
        self.max_length_bytes = Some(bytes);
        self
    }

    /// What a full queue does with one more message (`x-overflow`).
    #[must_use]
    pub const fn overflow(mut self, overflow: Overflow) -> Self {
        self.overflow = Some(overflow);
        self
    }

    /// Only one consumer of the queue receives messages at a time, the
    /// others stand by (`x-single-active-consumer`): strict order across
    /// several instances of a service, with failover.
    #[must_use]
    pub const fn single_active_consumer(mut self, single: bool) -> Self {
        self.single_active_consumer = Some(single);
        self
    }

    /// The queue orders messages by their priority, 0 to `levels`
    /// (`x-max-priority`), so that
    /// [`PublishOptions::priority`](crate::PublishOptions::priority) takes
    /// effect. Classic queues only; RabbitMQ advises at most 10 levels.
    #[must_use]
    pub const fn max_priority(mut self, levels: u8) -> Self {
        self.max_priority = Some(levels);
        self
    }

    /// Messages that waited this long in the queue are dead-lettered to
    /// `<queue>:dead` (`x-message-ttl`), never silently dropped.
    #[must_use]
    pub const fn message_ttl(mut self, ttl: Duration) -> Self {
        self.message_ttl = Some(ttl);
        self
    }

    /// Quorum queues only: a message delivered and not acked more than
    /// this many times (its consumer's process died, its connection was
    /// lost each time) is dead-lettered to `<queue>:dead`
    /// (`x-delivery-limit`). Default [`DEFAULT_DELIVERY_LIMIT`].
    #[must_use]
    pub const fn delivery_limit(mut self, deliveries: u32) -> Self {
        self.delivery_limit = Some(deliveries);
        self
    }

    /// Any other queue argument, by its name (which starts with `x-`).
    /// The arguments hutch-rs sets itself or types above are refused
    /// here, at start, naming the typed setter to use.
    #[must_use]
    pub fn argument(
        mut self,
        name: impl Into<Cow<'static, str>>,
        value: impl Into<ArgumentValue>,
    ) -> Self {
        let name = name.into();
        let value = value.into();
        let extra = self.extra.to_mut();
        extra.retain(|(existing, _)| *existing != name);
        extra.push((name, value));
        self
    }

    /// These arguments, each unset one taken from `defaults`; escape-hatch
    /// arguments of both, this one's winning on a name they share.
    pub(crate) fn or(&self, defaults: &QueueArguments) -> QueueArguments {
        let mut extra: Vec<Argument> = defaults
            .extra
            .iter()
            .filter(|(name, _)| !self.extra.iter().any(|(own, _)| own == name))
            .cloned()
            .collect();
        extra.extend(self.extra.iter().cloned());
        QueueArguments {
            queue_type: self.queue_type.or(defaults.queue_type),
            max_length: self.max_length.or(defaults.max_length),
            max_length_bytes: self.max_length_bytes.or(defaults.max_length_bytes),
            overflow: self.overflow.or(defaults.overflow),
            single_active_consumer: self
                .single_active_consumer
                .or(defaults.single_active_consumer),
            max_priority: self.max_priority.or(defaults.max_priority),
            message_ttl: self.message_ttl.or(defaults.message_ttl),
            delivery_limit: self.delivery_limit.or(defaults.delivery_limit),
            extra: Cow::Owned(extra),
        }
    }
}

/// How many deliveries a quorum queue allows a message that is never acked
/// before dead-lettering it, unless `delivery_limit` says otherwise: enough
/// that connections lost while a message waits in the prefetch buffer do
/// not dead-letter it, few enough that a message which kills its consumer's
/// process stops doing so after a handful of restarts. (RabbitMQ 4.0's own
/// default is 20; 3.x has none.) It is fixed at the queue's creation, so it
/// deliberately does not follow `max_attempts`, which may change between
/// deployments.
pub const DEFAULT_DELIVERY_LIMIT: u32 = 10;

/// The arguments hutch-rs sets itself, with what to use instead.
const MANAGED: &[(&str, &str)] = &[
    ("x-queue-type", "queue_type"),
    (
        "x-dead-letter-exchange",
        "nothing: hutch-rs dead-letters to <queue>:dead",
    ),
    (
        "x-dead-letter-routing-key",
        "nothing: hutch-rs dead-letters to <queue>:dead",
    ),
    (
        "x-dead-letter-strategy",
        "nothing: hutch-rs sets at-least-once on quorum queues",
    ),
    ("x-max-length", "max_length"),
    ("x-max-length-bytes", "max_length_bytes"),
    ("x-overflow", "overflow"),
    ("x-single-active-consumer", "single_active_consumer"),
    ("x-max-priority", "max_priority"),
    ("x-message-ttl", "message_ttl"),
    ("x-delivery-limit", "delivery_limit"),
];

/// The largest `x-message-ttl` RabbitMQ accepts, in milliseconds.
const MAX_TTL_MILLIS: u128 = u32::MAX as u128;

/// A consumer's queue arguments, resolved and checked: what its queues are
/// declared with.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct QueueDeclaration {
    pub(crate) queue_type: QueueType,
    arguments: QueueArguments,
}

impl QueueDeclaration {
    /// Checks `arguments` (the consumer's over the builder's) for a queue;
    /// the error says what is wrong and what to write instead.
    pub(crate) fn resolve(arguments: QueueArguments) -> Result<Self, String> {
        let queue_type = arguments.queue_type.unwrap_or_default();
        let quorum = queue_type == QueueType::Quorum;
        if let Some(0) = arguments.max_priority {
            return Err("max_priority must be at least 1 (RabbitMQ advises at most 10)".into());
        }
        if quorum && arguments.max_priority.is_some() {
            return Err(
                "max_priority needs a classic queue: quorum queues do not order by priority".into(),
            );
        }
        if quorum && arguments.overflow == Some(Overflow::RejectPublishDlx) {
            return Err(
                "overflow \"reject-publish-dlx\" needs a classic queue; quorum queues take \"reject-publish\" or \"drop-head\""
                    .into(),
            );
        }
        if !quorum && arguments.delivery_limit.is_some() {
            return Err(
                "delivery_limit needs queue_type = \"quorum\": classic queues do not count deliveries"
                    .into(),
            );
        }
        if let Some(ttl) = arguments.message_ttl {
            if ttl.is_zero() || ttl.as_millis() > MAX_TTL_MILLIS {
                return Err(
                    "message_ttl must be between 1 ms and 4294967295 ms (about 49 days)".into(),
                );
            }
        }
        for (name, _) in arguments.extra.iter() {
            if !name.starts_with("x-") {
                return Err(format!(
                    "queue argument {name:?} does not start with \"x-\"; RabbitMQ's queue arguments all do"
                ));
            }
            if let Some((_, instead)) = MANAGED.iter().find(|(managed, _)| *managed == name) {
                return Err(format!(
                    "queue argument {name:?} is set by hutch-rs; use {instead}"
                ));
            }
        }
        Ok(Self {
            queue_type,
            arguments,
        })
    }

    /// Whether the broker itself may dead-letter from the consumer's queue
    /// (expiry, overflow, delivery limit), which then needs a destination.
    fn broker_dead_letters(&self) -> bool {
        let arguments = &self.arguments;
        self.queue_type == QueueType::Quorum
            || arguments.message_ttl.is_some()
            || ((arguments.max_length.is_some() || arguments.max_length_bytes.is_some())
                && matches!(
                    arguments.overflow,
                    None | Some(Overflow::DropHead | Overflow::RejectPublishDlx)
                ))
    }

    /// The arguments of the consumer's own queue. A classic queue declared
    /// with none of the arguments gets an empty table, as before queue
    /// arguments existed, so that existing queues still match.
    pub(crate) fn main_queue(&self, dead_letter_queue: &str) -> FieldTable {
        let arguments = &self.arguments;
        let mut table = self.typed();
        let int = |value: u64| AMQPValue::LongLongInt(i64::try_from(value).unwrap_or(i64::MAX));
        if let Some(max_length) = arguments.max_length {
            table.insert("x-max-length".into(), int(max_length));
        }
        if let Some(bytes) = arguments.max_length_bytes {
            table.insert("x-max-length-bytes".into(), int(bytes));
        }
        if let Some(single) = arguments.single_active_consumer {
            table.insert(
                "x-single-active-consumer".into(),
                AMQPValue::Boolean(single),
            );
        }
        if let Some(levels) = arguments.max_priority {
            table.insert("x-max-priority".into(), AMQPValue::ShortShortUInt(levels));
        }
        if let Some(ttl) = arguments.message_ttl {
            table.insert(
                "x-message-ttl".into(),
                int(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX)),
            );
        }
        let overflow = match (self.queue_type, arguments.overflow) {
            // At-least-once dead-lettering (below) needs reject-publish.
            (QueueType::Quorum, None) => Some(Overflow::RejectPublish),
            (_, overflow) => overflow,
        };
        if let Some(overflow) = overflow {
            table.insert(
                "x-overflow".into(),
                AMQPValue::LongString(overflow.as_str().into()),
            );
        }
        if self.queue_type == QueueType::Quorum {
            table.insert(
                "x-delivery-limit".into(),
                int(u64::from(
                    arguments.delivery_limit.unwrap_or(DEFAULT_DELIVERY_LIMIT),
                )),
            );
        }
        if self.broker_dead_letters() {
            dead_letter_to(&mut table, dead_letter_queue);
            if self.queue_type == QueueType::Quorum && overflow == Some(Overflow::RejectPublish) {
                table.insert(
                    "x-dead-letter-strategy".into(),
                    AMQPValue::LongString("at-least-once".into()),
                );
            }
        }
        for (name, value) in arguments.extra.iter() {
            table.insert(name.as_ref().into(), value.to_amqp());
        }
        table
    }

    /// The arguments of a delay queue: its TTL, and dead-lettering back to
    /// the consumer's queue (at least once on quorum queues, so a retry is
    /// not lost when that queue refuses it for a while).
    pub(crate) fn delay_queue(&self, ttl: Duration, consumer_queue: &str) -> FieldTable {
        let mut table = self.typed();
        table.insert(
            "x-message-ttl".into(),
            AMQPValue::LongLongInt(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX)),
        );
        dead_letter_to(&mut table, consumer_queue);
        if self.queue_type == QueueType::Quorum {
            table.insert(
                "x-overflow".into(),
                AMQPValue::LongString("reject-publish".into()),
            );
            table.insert(
                "x-dead-letter-strategy".into(),
                AMQPValue::LongString("at-least-once".into()),
            );
        }
        table
    }

    /// The arguments of `<queue>:dead`: its type only.
    pub(crate) fn dead_letter_queue(&self) -> FieldTable {
        self.typed()
    }

    /// `x-queue-type` for a quorum queue; nothing for a classic one, so
    /// that queues declared before queue types existed still match.
    fn typed(&self) -> FieldTable {
        let mut table = FieldTable::default();
        if self.queue_type != QueueType::Classic {
            table.insert(
                "x-queue-type".into(),
                AMQPValue::LongString(self.queue_type.as_str().into()),
            );
        }
        table
    }

    /// The delivery limit of a quorum queue: how many redeliveries the
    /// broker counts at most.
    pub(crate) fn delivery_limit(&self) -> Option<u32> {
        (self.queue_type == QueueType::Quorum).then(|| {
            self.arguments
                .delivery_limit
                .unwrap_or(DEFAULT_DELIVERY_LIMIT)
        })
    }

    /// A one-line description for errors and logs: `quorum, x-max-length 10`.
    pub(crate) fn describe(&self, table: &FieldTable) -> String {
        let mut parts = vec![self.queue_type.as_str().to_owned()];
        for (name, value) in table.inner() {
            if name.as_str() == "x-queue-type" {
                continue;
            }
            let value = match value {
                AMQPValue::LongString(text) => {
                    format!("{:?}", String::from_utf8_lossy(text.as_bytes()))
                }
                AMQPValue::LongLongInt(number) => number.to_string(),
                AMQPValue::ShortShortUInt(number) => number.to_string(),
                AMQPValue::Boolean(flag) => flag.to_string(),
                other => format!("{other:?}"),
            };
            parts.push(format!("{name} {value}"));
        }
        parts.join(", ")
    }
}

fn dead_letter_to(table: &mut FieldTable, queue: &str) {
    table.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString("".into()),
    );
    table.insert(
        "x-dead-letter-routing-key".into(),
        AMQPValue::LongString(queue.into()),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get<'a>(table: &'a FieldTable, name: &str) -> Option<&'a AMQPValue> {
        table.inner().get(name)
    }

    #[test]
    fn a_classic_queue_without_arguments_is_declared_as_before() {
        let declaration = QueueDeclaration::resolve(QueueArguments::new()).unwrap();
        assert!(declaration.main_queue("q:dead").inner().is_empty());
        assert!(declaration.dead_letter_queue().inner().is_empty());
        assert_eq!(declaration.delivery_limit(), None);
    }

    #[test]
    fn a_quorum_queue_caps_deliveries_and_dead_letters_at_least_once() {
        let declaration =
            QueueDeclaration::resolve(QueueArguments::new().queue_type(QueueType::Quorum)).unwrap();
        let main = declaration.main_queue("q:dead");
        assert_eq!(
            get(&main, "x-queue-type"),
            Some(&AMQPValue::LongString("quorum".into()))
        );
        assert_eq!(
            get(&main, "x-delivery-limit"),
            Some(&AMQPValue::LongLongInt(i64::from(DEFAULT_DELIVERY_LIMIT)))
        );
        assert_eq!(
            get(&main, "x-dead-letter-routing-key"),
            Some(&AMQPValue::LongString("q:dead".into()))
        );
        assert_eq!(
            get(&main, "x-dead-letter-strategy"),
            Some(&AMQPValue::LongString("at-least-once".into()))
        );
        assert_eq!(
            get(&main, "x-overflow"),
            Some(&AMQPValue::LongString("reject-publish".into()))
        );
        let delay = declaration.delay_queue(Duration::from_secs(1), "q");
        assert_eq!(
            get(&delay, "x-dead-letter-strategy"),
            Some(&AMQPValue::LongString("at-least-once".into()))
        );
        assert_eq!(
            get(&declaration.dead_letter_queue(), "x-queue-type"),
            Some(&AMQPValue::LongString("quorum".into()))
        );
    }

    #[test]
    fn a_quorum_queue_that_drops_its_head_dead_letters_at_most_once() {
        let declaration = QueueDeclaration::resolve(
            QueueArguments::new()
                .queue_type(QueueType::Quorum)
                .max_length(5)
                .overflow(Overflow::DropHead),
        )
        .unwrap();
        let main = declaration.main_queue("q:dead");
        assert_eq!(get(&main, "x-dead-letter-strategy"), None);
        assert_eq!(
            get(&main, "x-dead-letter-routing-key"),
            Some(&AMQPValue::LongString("q:dead".into()))
        );
    }

    #[test]
    fn a_length_limit_that_drops_dead_letters_and_one_that_rejects_does_not() {
        let dropping = QueueDeclaration::resolve(QueueArguments::new().max_length(3)).unwrap();
        assert!(get(&dropping.main_queue("q:dead"), "x-dead-letter-routing-key").is_some());
        let rejecting = QueueDeclaration::resolve(
            QueueArguments::new()
                .max_length(3)
                .overflow(Overflow::RejectPublish),
        )
        .unwrap();
        let main = rejecting.main_queue("q:dead");
        assert!(get(&main, "x-dead-letter-routing-key").is_none());
        assert_eq!(get(&main, "x-max-length"), Some(&AMQPValue::LongLongInt(3)));
    }

    #[test]
    fn the_consumer_s_arguments_win_over_the_builder_s() {
        let builder = QueueArguments::new()
            .max_length(10)
            .single_active_consumer(true)
            .argument("x-queue-leader-locator", "client-local")
            .argument("x-max-age", "1D");
        let own = QueueArguments::new()
            .max_length(20)
            .argument("x-queue-leader-locator", "balanced");
        let merged = own.or(&builder);
        assert_eq!(merged.max_length, Some(20));
        assert_eq!(merged.single_active_consumer, Some(true));
        assert_eq!(
            merged.extra.as_ref(),
            &[
                (Cow::Borrowed("x-max-age"), ArgumentValue::from("1D")),
                (
                    Cow::Borrowed("x-queue-leader-locator"),
                    ArgumentValue::from("balanced")
                ),
            ]
        );
    }

    #[test]
    fn arguments_that_do_not_fit_the_queue_type_are_refused() {
        let quorum = QueueArguments::new().queue_type(QueueType::Quorum);
        for (arguments, expected) in [
            (quorum.clone().max_priority(5), "classic queue"),
            (
                quorum.clone().overflow(Overflow::RejectPublishDlx),
                "reject-publish-dlx",
            ),
            (QueueArguments::new().delivery_limit(3), "quorum"),
            (QueueArguments::new().max_priority(0), "at least 1"),
            (
                QueueArguments::new().message_ttl(Duration::ZERO),
                "message_ttl",
            ),
            (
                QueueArguments::new().argument("x-max-length", 4_i64),
                "use max_length",
            ),
            (
                QueueArguments::new().argument("max-age", "1D"),
                "start with \"x-\"",
            ),
            (
                QueueArguments::new().argument("x-dead-letter-exchange", "elsewhere"),
                "set by hutch-rs",
            ),
        ] {
            let error = QueueDeclaration::resolve(arguments).unwrap_err();
            assert!(error.contains(expected), "{error}");
        }
    }

    #[test]
    fn queue_types_and_overflows_parse_from_text() {
        assert_eq!("Quorum".parse(), Ok(QueueType::Quorum));
        assert_eq!(" classic ".parse(), Ok(QueueType::Classic));
        assert!(
            "stream"
                .parse::<QueueType>()
                .unwrap_err()
                .contains("classic")
        );
        assert_eq!("reject-publish".parse(), Ok(Overflow::RejectPublish));
        assert!("drop".parse::<Overflow>().is_err());
    }
}
