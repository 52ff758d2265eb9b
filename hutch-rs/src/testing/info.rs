//! What the broker holds, as `rabbitmqctl list_*` reports it.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

/// A queue of the [`Broker`](super::Broker)'s virtual host, read from
/// `rabbitmqctl list_queues` on a private node (exact at the moment of the
/// call), from the management API on an existing broker (whose counters are
/// refreshed periodically, every 5 seconds by default).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct QueueInfo {
    /// The queue's name.
    pub name: String,
    /// Messages in the queue: ready plus delivered-but-unacknowledged.
    pub messages: u64,
    /// Messages waiting to be delivered.
    pub messages_ready: u64,
    /// Messages delivered to consumers and not yet acknowledged.
    pub messages_unacknowledged: u64,
    /// Whether the queue survives a broker restart.
    pub durable: bool,
    /// Whether the queue is deleted when its last consumer goes.
    pub auto_delete: bool,
    /// Whether the queue belongs to one connection.
    pub exclusive: bool,
    /// How many consumers it has.
    pub consumers: u64,
    /// The `x-` arguments it was declared with (e.g. `x-queue-type`), by
    /// name.
    pub arguments: BTreeMap<String, Value>,
}

/// A binding of the [`Broker`](super::Broker)'s virtual host, read from
/// `rabbitmqctl list_bindings` (the management API on an existing broker). The default exchange's implicit bindings (source `""`,
/// one per queue) are included.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct BindingInfo {
    /// The exchange messages come from (`""` is the default exchange).
    pub source: String,
    /// The queue or exchange they go to.
    pub destination: String,
    /// `"queue"` or `"exchange"`.
    pub destination_kind: String,
    /// The binding key.
    pub routing_key: String,
    /// The binding's arguments, by name.
    pub arguments: BTreeMap<String, Value>,
}

/// An exchange of the [`Broker`](super::Broker)'s virtual host, read from
/// `rabbitmqctl list_exchanges` (the management API on an existing broker).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ExchangeInfo {
    /// The exchange's name (`""` is the default exchange).
    pub name: String,
    /// Its type: `"topic"`, `"direct"`, `"fanout"`, `"headers"`, …
    pub kind: String,
    /// Whether it survives a broker restart.
    pub durable: bool,
    /// Whether it is deleted when its last binding goes.
    pub auto_delete: bool,
}

/// A consumer of the [`Broker`](super::Broker)'s virtual host, read from
/// `rabbitmqctl list_consumers` (the management API on an existing broker).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConsumerInfo {
    /// The queue it consumes from.
    pub queue: String,
    /// Its consumer tag.
    pub consumer_tag: String,
    /// Whether the broker waits for its acknowledgements (manual acks).
    pub ack_required: bool,
    /// How many unacknowledged deliveries the broker sends it ahead
    /// (`basic.qos`; 0 means no limit).
    pub prefetch_count: u64,
}

/// The columns requested from `list_consumers`.
pub(crate) const CONSUMER_COLUMNS: &[&str] = &[
    "queue_name",
    "consumer_tag",
    "ack_required",
    "prefetch_count",
];

/// One row of `list_consumers --formatter json`.
#[derive(Debug, Deserialize)]
pub(crate) struct ConsumerRow {
    queue_name: String,
    consumer_tag: String,
    ack_required: bool,
    prefetch_count: u64,
}

impl From<ConsumerRow> for ConsumerInfo {
    fn from(row: ConsumerRow) -> Self {
        Self {
            queue: row.queue_name,
            consumer_tag: row.consumer_tag,
            ack_required: row.ack_required,
            prefetch_count: row.prefetch_count,
        }
    }
}

/// The columns requested from `list_queues`, in the names the rows use.
pub(crate) const QUEUE_COLUMNS: &[&str] = &[
    "name",
    "messages",
    "messages_ready",
    "messages_unacknowledged",
    "durable",
    "auto_delete",
    "exclusive",
    "consumers",
    "arguments",
];

/// One row of `list_queues --formatter json`.
#[derive(Debug, Deserialize)]
pub(crate) struct QueueRow {
    name: String,
    messages: u64,
    messages_ready: u64,
    messages_unacknowledged: u64,
    durable: bool,
    auto_delete: bool,
    /// A boolean for classic queues; quorum queues, which cannot be
    /// exclusive, report an empty string.
    #[serde(deserialize_with = "flag_or_empty")]
    exclusive: bool,
    consumers: u64,
    arguments: Arguments,
}

/// `true`/`false`, or `""` (false).
fn flag_or_empty<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<bool, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Flag {
        Bool(bool),
        Text(String),
    }
    match Flag::deserialize(deserializer)? {
        Flag::Bool(flag) => Ok(flag),
        Flag::Text(text) if text.is_empty() => Ok(false),
        Flag::Text(text) => Err(serde::de::Error::custom(format!(
            "expected a boolean or \"\", found {text:?}"
        ))),
    }
}

impl From<QueueRow> for QueueInfo {
    fn from(row: QueueRow) -> Self {
        Self {
            name: row.name,
            messages: row.messages,
            messages_ready: row.messages_ready,
            messages_unacknowledged: row.messages_unacknowledged,
            durable: row.durable,
            auto_delete: row.auto_delete,
            exclusive: row.exclusive,
            consumers: row.consumers,
            arguments: row.arguments.into_map(),
        }
    }
}

/// The columns requested from `list_bindings`.
pub(crate) const BINDING_COLUMNS: &[&str] = &[
    "source_name",
    "destination_name",
    "destination_kind",
    "routing_key",
    "arguments",
];

/// One row of `list_bindings --formatter json`.
#[derive(Debug, Deserialize)]
pub(crate) struct BindingRow {
    source_name: String,
    destination_name: String,
    destination_kind: String,
    routing_key: String,
    arguments: Arguments,
}

impl From<BindingRow> for BindingInfo {
    fn from(row: BindingRow) -> Self {
        Self {
            source: row.source_name,
            destination: row.destination_name,
            destination_kind: row.destination_kind,
            routing_key: row.routing_key,
            arguments: row.arguments.into_map(),
        }
    }
}

/// The columns requested from `list_exchanges`.
pub(crate) const EXCHANGE_COLUMNS: &[&str] = &["name", "type", "durable", "auto_delete"];

/// One row of `list_exchanges --formatter json`.
#[derive(Debug, Deserialize)]
pub(crate) struct ExchangeRow {
    name: String,
    #[serde(rename = "type")]
    kind: String,
    durable: bool,
    auto_delete: bool,
}

impl From<ExchangeRow> for ExchangeInfo {
    fn from(row: ExchangeRow) -> Self {
        Self {
            name: row.name,
            kind: row.kind,
            durable: row.durable,
            auto_delete: row.auto_delete,
        }
    }
}

/// An AMQP table as the CLI prints it: `[["x-max-length", "long", 10], …]`
/// (name, AMQP type, value).
#[derive(Debug, Deserialize)]
#[serde(transparent)]
pub(crate) struct Arguments(Vec<(String, String, Value)>);

impl Arguments {
    fn into_map(self) -> BTreeMap<String, Value> {
        self.0
            .into_iter()
            .map(|(name, _type, value)| (name, value))
            .collect()
    }
}

/// One queue of `GET /api/queues/<vhost>`. The statistics are missing until
/// the broker first collects them, hence the defaults.
#[derive(Debug, Deserialize)]
pub(crate) struct ManagementQueue {
    name: String,
    #[serde(default)]
    messages: u64,
    #[serde(default)]
    messages_ready: u64,
    #[serde(default)]
    messages_unacknowledged: u64,
    durable: bool,
    auto_delete: bool,
    #[serde(default)]
    exclusive: bool,
    #[serde(default)]
    consumers: u64,
    #[serde(default)]
    arguments: BTreeMap<String, Value>,
}

impl From<ManagementQueue> for QueueInfo {
    fn from(row: ManagementQueue) -> Self {
        Self {
            name: row.name,
            messages: row.messages,
            messages_ready: row.messages_ready,
            messages_unacknowledged: row.messages_unacknowledged,
            durable: row.durable,
            auto_delete: row.auto_delete,
            exclusive: row.exclusive,
            consumers: row.consumers,
            arguments: row.arguments,
        }
    }
}

/// One binding of `GET /api/bindings/<vhost>`.
#[derive(Debug, Deserialize)]
pub(crate) struct ManagementBinding {
    source: String,
    destination: String,
    destination_type: String,
    routing_key: String,
    #[serde(default)]
    arguments: BTreeMap<String, Value>,
}

impl From<ManagementBinding> for BindingInfo {
    fn from(row: ManagementBinding) -> Self {
        Self {
            source: row.source,
            destination: row.destination,
            destination_kind: row.destination_type,
            routing_key: row.routing_key,
            arguments: row.arguments,
        }
    }
}

/// One exchange of `GET /api/exchanges/<vhost>`: the fields are those of
/// `list_exchanges`.
pub(crate) type ManagementExchange = ExchangeRow;

/// One consumer of `GET /api/consumers/<vhost>`.
#[derive(Debug, Deserialize)]
pub(crate) struct ManagementConsumer {
    queue: ManagementQueueName,
    consumer_tag: String,
    ack_required: bool,
    prefetch_count: u64,
}

/// The queue of a consumer, as the management API nests it.
#[derive(Debug, Deserialize)]
struct ManagementQueueName {
    name: String,
}

impl From<ManagementConsumer> for ConsumerInfo {
    fn from(row: ManagementConsumer) -> Self {
        Self {
            queue: row.queue.name,
            consumer_tag: row.consumer_tag,
            ack_required: row.ack_required,
            prefetch_count: row.prefetch_count,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_queue_row_as_rabbitmq_3_10_prints_it() {
        let row: QueueRow = serde_json::from_str(
            r#"{"name":"q1","messages":1,"messages_ready":1,"messages_unacknowledged":0,"durable":true,"auto_delete":false,"exclusive":false,"arguments":[["x-max-length","long",10],["x-queue-type","longstr","classic"]],"consumers":0}"#,
        )
        .unwrap();
        let queue = QueueInfo::from(row);
        assert_eq!(queue.name, "q1");
        assert_eq!(queue.messages, 1);
        assert!(queue.durable);
        assert_eq!(queue.arguments["x-max-length"], 10);
        assert_eq!(queue.arguments["x-queue-type"], "classic");
    }

    #[test]
    fn parses_management_rows_as_rabbitmq_3_10_answers() {
        let queue: QueueInfo = serde_json::from_str::<ManagementQueue>(
            r#"{"arguments":{"x-queue-type":"classic"},"auto_delete":false,"durable":true,"exclusive":false,"name":"q1","vhost":"v","messages":2,"messages_ready":1,"messages_unacknowledged":1,"consumers":1,"state":"running"}"#,
        )
        .unwrap()
        .into();
        assert_eq!(queue.messages, 2);
        assert_eq!(queue.arguments["x-queue-type"], "classic");
        // Before the first statistics: no counters.
        let fresh: QueueInfo = serde_json::from_str::<ManagementQueue>(
            r#"{"arguments":{},"auto_delete":false,"durable":true,"exclusive":false,"name":"q2","vhost":"v"}"#,
        )
        .unwrap()
        .into();
        assert_eq!((fresh.messages, fresh.consumers), (0, 0));
        let binding: BindingInfo = serde_json::from_str::<ManagementBinding>(
            r#"{"source":"amq.topic","vhost":"v","destination":"q1","destination_type":"queue","routing_key":"a.#","arguments":{},"properties_key":"a.%23"}"#,
        )
        .unwrap()
        .into();
        assert_eq!(binding.destination_kind, "queue");
        let consumer: ConsumerInfo = serde_json::from_str::<ManagementConsumer>(
            r#"{"arguments":{},"ack_required":true,"active":true,"consumer_tag":"ctag","exclusive":false,"prefetch_count":10,"queue":{"name":"q1","vhost":"v"}}"#,
        )
        .unwrap()
        .into();
        assert_eq!(
            (consumer.queue.as_str(), consumer.prefetch_count),
            ("q1", 10)
        );
    }

    #[test]
    fn parses_binding_and_exchange_rows() {
        let binding: BindingInfo = serde_json::from_str::<BindingRow>(
            r#"{"source_name":"amq.topic","source_kind":"exchange","destination_name":"q1","destination_kind":"queue","routing_key":"a.#","arguments":[]}"#,
        )
        .unwrap()
        .into();
        assert_eq!(binding.source, "amq.topic");
        assert_eq!(binding.routing_key, "a.#");
        let exchange: ExchangeInfo = serde_json::from_str::<ExchangeRow>(
            r#"{"name":"amq.topic","type":"topic","durable":true,"auto_delete":false}"#,
        )
        .unwrap()
        .into();
        assert_eq!(exchange.kind, "topic");
    }
}
