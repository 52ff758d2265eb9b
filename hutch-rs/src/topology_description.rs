//! What an application declares, as data: the exchange, and each selected
//! consumer's queues, bindings and settings, for tables (a CLI's
//! `consumers` and `topology`), for AsyncAPI documents, and for checks.
//!
//! Built from the plan that [`Hutch::declare`](crate::Hutch::declare) and
//! [`Hutch::start`](crate::Hutch::start) declare from
//! ([`topology::plan_consumers`]), through the same functions that make
//! their queue and binding arguments: what it lists is what the broker is
//! sent, not a second computation of it.

use std::{collections::BTreeMap, time::Duration};

use lapin::types::{AMQPValue, FieldTable};
use serde::{Serialize, Serializer};

use crate::{
    QueueType,
    config::Settings,
    retry::queues,
    topology::{self, ConsumerPlan},
};

/// Everything the application declares on the broker, as
/// [`Hutch::topology`](crate::Hutch::topology) describes it.
///
/// Serialises (serde) to JSON as shown in the guide's Topology chapter;
/// durations are whole milliseconds in fields ending `_ms`, queue arguments
/// are written as the management API shows them.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Topology {
    /// The topic exchange every consumer's queue is bound to.
    pub exchange: ExchangeDescription,
    /// The configured namespace (the prefix of every queue name), if any.
    pub namespace: Option<String>,
    /// The configured group: only its consumers are selected, if set.
    pub group: Option<String>,
    /// The selected consumers, ordered by queue name.
    pub consumers: Vec<ConsumerDescription>,
}

/// The exchange hutch-rs declares.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct ExchangeDescription {
    /// Its name (`HUTCH_EXCHANGE`, default `hutch`).
    pub name: String,
    /// Its kind: `"topic"`.
    pub kind: String,
    /// Whether it survives a broker restart: always.
    pub durable: bool,
}

/// One selected consumer: its function, its settings after the configured
/// defaults, and what is declared for it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct ConsumerDescription {
    /// The function's path, `module::function`, as in logs.
    pub name: String,
    /// The function's name.
    pub function: String,
    /// The `group = "..."` argument, if given.
    pub group: Option<String>,
    /// The routing keys (topic patterns) its queue is bound with.
    pub routing_keys: Vec<String>,
    /// `std::any::type_name` of the `T` of its `Message<T>`; `None` for a
    /// registration not made by `#[consumer]`.
    pub message_type: Option<String>,
    /// Whether the function takes a [`Context`](crate::Context), through
    /// which it can reply to a request ([`Context::reply`](crate::Context::reply)).
    pub may_reply: bool,
    /// Its queue.
    pub queue: QueueDescription,
    /// `<queue>:dead`, where messages go that are not handled.
    pub dead_letter_queue: QueueDescription,
    /// The delay queues its retries can wait in, one per delay the backoff
    /// can pick. Declared when a retry first needs one (not by
    /// `declare`); a handler's
    /// [`Decision::retry_after`](crate::Decision::retry_after) can pick
    /// other delays.
    pub delay_queues: Vec<DelayQueueDescription>,
    /// The bindings of its queue to the exchange, one per routing key.
    pub bindings: Vec<BindingDescription>,
    /// How many unacknowledged deliveries the broker sends ahead.
    pub prefetch: u16,
    /// How many handler calls may run at once.
    pub concurrency: u16,
    /// How many times a failing message is handled before it is
    /// dead-lettered.
    pub max_attempts: u32,
    /// The wait before the first retry.
    #[serde(rename = "retry_min_delay_ms", serialize_with = "millis")]
    pub retry_min_delay: Duration,
    /// The longest wait between two attempts.
    #[serde(rename = "retry_max_delay_ms", serialize_with = "millis")]
    pub retry_max_delay: Duration,
    /// The backoff after each failed attempt that is retried (attempt 1,
    /// 2, ...), before jitter: `retry_min_delay` doubled per attempt, until
    /// it reaches `retry_max_delay`, which every later retry waits too.
    #[serde(rename = "retry_delays_ms", serialize_with = "millis_list")]
    pub retry_delays: Vec<Duration>,
    /// How long one handler call may run.
    #[serde(rename = "timeout_ms", serialize_with = "millis")]
    pub timeout: Duration,
}

/// A queue as it is declared.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct QueueDescription {
    /// Its name.
    pub name: String,
    /// Its type.
    #[serde(serialize_with = "queue_type")]
    pub queue_type: QueueType,
    /// Whether it survives a broker restart: always.
    pub durable: bool,
    /// The arguments it is declared with, as the broker receives them
    /// (`x-queue-type`, `x-dead-letter-routing-key`, ...), written as JSON
    /// values the way the management API shows them.
    pub arguments: BTreeMap<String, serde_json::Value>,
}

/// A delay queue of a consumer.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct DelayQueueDescription {
    /// How long a retry waits in it (its `x-message-ttl`).
    #[serde(rename = "delay_ms", serialize_with = "millis")]
    pub delay: Duration,
    /// The queue.
    pub queue: QueueDescription,
}

/// A binding of a queue to an exchange.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct BindingDescription {
    /// The exchange.
    pub source: String,
    /// The queue.
    pub destination: String,
    /// The routing key (a topic pattern).
    pub routing_key: String,
    /// The binding's arguments, as the broker receives them.
    pub arguments: BTreeMap<String, serde_json::Value>,
}

impl Topology {
    /// The description of `plans`, planned from `settings`.
    pub(crate) fn describe(settings: &Settings, plans: &[ConsumerPlan]) -> Self {
        Topology {
            exchange: ExchangeDescription {
                name: settings.exchange.clone(),
                kind: exchange_kind(),
                durable: topology::DURABLE,
            },
            namespace: settings.namespace.clone(),
            group: settings.group.clone(),
            consumers: plans
                .iter()
                .map(|plan| ConsumerDescription::describe(&settings.exchange, plan))
                .collect(),
        }
    }
}

/// `"topic"`, from the kind `declare_exchange` sends.
fn exchange_kind() -> String {
    match topology::EXCHANGE_KIND {
        lapin::ExchangeKind::Custom(kind) => kind,
        lapin::ExchangeKind::Direct => "direct".to_owned(),
        lapin::ExchangeKind::Fanout => "fanout".to_owned(),
        lapin::ExchangeKind::Headers => "headers".to_owned(),
        lapin::ExchangeKind::Topic => "topic".to_owned(),
    }
}

impl ConsumerDescription {
    fn describe(exchange: &str, plan: &ConsumerPlan) -> Self {
        let registration = plan.registration;
        let queue_type = plan.declaration.queue_type;
        let queue = |name: String, arguments: FieldTable| QueueDescription {
            name,
            queue_type,
            durable: topology::DURABLE,
            arguments: table_to_json(&arguments),
        };
        let delay_queues = plan
            .retry
            .possible_delays()
            .into_iter()
            .map(|delay| DelayQueueDescription {
                delay,
                queue: queue(
                    queues::delay_queue(&plan.queue, delay),
                    plan.declaration.delay_queue(delay, &plan.queue),
                ),
            })
            .collect();
        ConsumerDescription {
            name: plan.name(),
            function: registration.function().to_owned(),
            group: registration.group().map(str::to_owned),
            routing_keys: registration
                .routing_keys()
                .iter()
                .map(|&key| key.to_owned())
                .collect(),
            message_type: registration.message_type().map(str::to_owned),
            may_reply: registration.takes_context(),
            queue: queue(plan.queue.clone(), plan.main_queue_arguments()),
            dead_letter_queue: queue(
                queues::dead_letter_queue(&plan.queue),
                plan.declaration.dead_letter_queue(),
            ),
            delay_queues,
            bindings: registration
                .routing_keys()
                .iter()
                .map(|&routing_key| BindingDescription {
                    source: exchange.to_owned(),
                    destination: plan.queue.clone(),
                    routing_key: routing_key.to_owned(),
                    arguments: table_to_json(&plan.binding_arguments(routing_key)),
                })
                .collect(),
            prefetch: plan.prefetch,
            concurrency: plan.concurrency,
            max_attempts: plan.retry.max_attempts,
            retry_min_delay: plan.retry.min_delay,
            retry_max_delay: plan.retry.max_delay,
            retry_delays: plan.retry.backoffs(),
            timeout: plan.timeout,
        }
    }
}

/// A field table as JSON, the way the management API writes one.
fn table_to_json(table: &FieldTable) -> BTreeMap<String, serde_json::Value> {
    table
        .inner()
        .iter()
        .map(|(name, value)| (name.as_str().to_owned(), value_to_json(value)))
        .collect()
}

fn value_to_json(value: &AMQPValue) -> serde_json::Value {
    use serde_json::Value;
    match value {
        AMQPValue::Boolean(flag) => Value::Bool(*flag),
        AMQPValue::ShortShortInt(number) => Value::from(*number),
        AMQPValue::ShortShortUInt(number) => Value::from(*number),
        AMQPValue::ShortInt(number) => Value::from(*number),
        AMQPValue::ShortUInt(number) => Value::from(*number),
        AMQPValue::LongInt(number) => Value::from(*number),
        AMQPValue::LongUInt(number) => Value::from(*number),
        AMQPValue::LongLongInt(number) => Value::from(*number),
        AMQPValue::Float(number) => Value::from(*number),
        AMQPValue::Double(number) => Value::from(*number),
        AMQPValue::DecimalValue(decimal) => {
            Value::from(f64::from(decimal.value) / 10_f64.powi(i32::from(decimal.scale)))
        }
        AMQPValue::ShortString(text) => Value::from(text.as_str()),
        AMQPValue::LongString(text) => {
            Value::from(String::from_utf8_lossy(text.as_bytes()).into_owned())
        }
        AMQPValue::FieldArray(array) => {
            Value::Array(array.as_slice().iter().map(value_to_json).collect())
        }
        AMQPValue::Timestamp(time) => Value::from(*time),
        AMQPValue::FieldTable(table) => Value::Object(table_to_json(table).into_iter().collect()),
        AMQPValue::ByteArray(bytes) => {
            Value::from(String::from_utf8_lossy(bytes.as_slice()).into_owned())
        }
        AMQPValue::Void => Value::Null,
    }
}

fn millis<S: Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_u64(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX))
}

fn millis_list<S: Serializer>(durations: &[Duration], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(
        durations
            .iter()
            .map(|duration| u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)),
    )
}

fn queue_type<S: Serializer>(queue_type: &QueueType, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(queue_type.as_str())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::{
        ConsumerRegistration, QueueArguments,
        config::HutchBuilder,
        handler::{Delivered, HandlerFuture},
        topology::plan_consumers,
    };

    fn never(_: Delivered) -> HandlerFuture {
        unreachable!("handlers are not called in description tests")
    }

    #[derive(serde::Deserialize)]
    struct OrderPlaced;

    static RECEIPTS: ConsumerRegistration = ConsumerRegistration::new(
        "send_receipt",
        "shop",
        &["orders.placed", "orders.paid"],
        never,
    )
    .with_message_type(std::any::type_name::<OrderPlaced>)
    .with_max_attempts(4)
    .with_prefetch(8)
    .with_concurrency(2)
    .with_queue_arguments(QueueArguments::new().max_length(100));
    static LEDGER: ConsumerRegistration =
        ConsumerRegistration::new("ledger", "billing", &["billing.#"], never)
            .with_group("billing")
            .with_context()
            .with_timeout(Duration::from_secs(9))
            .with_queue_arguments(QueueArguments::new().queue_type(QueueType::Quorum));

    fn described(builder: HutchBuilder) -> (Topology, Vec<ConsumerPlan>) {
        let settings = builder.validate().unwrap();
        let plans = plan_consumers(&settings, &[&RECEIPTS, &LEDGER]).unwrap();
        (Topology::describe(&settings, &plans), plans)
    }

    fn consumer<'a>(topology: &'a Topology, function: &str) -> &'a ConsumerDescription {
        topology
            .consumers
            .iter()
            .find(|consumer| consumer.function == function)
            .unwrap()
    }

    #[test]
    fn the_exchange_and_the_selection_are_those_of_the_settings() {
        let (topology, _) = described(HutchBuilder::defaults().exchange("events").namespace("eu"));
        assert_eq!(
            topology.exchange,
            ExchangeDescription {
                name: "events".into(),
                kind: "topic".into(),
                durable: true,
            }
        );
        assert_eq!(topology.namespace.as_deref(), Some("eu"));
        let names: Vec<_> = topology.consumers.iter().map(|c| &c.queue.name).collect();
        assert_eq!(names, ["eu:ledger", "eu:send_receipt"]);

        let (billing, _) = described(HutchBuilder::defaults().group("billing"));
        assert_eq!(billing.group.as_deref(), Some("billing"));
        assert_eq!(billing.consumers.len(), 1);
        assert_eq!(billing.consumers[0].name, "billing::ledger");
    }

    #[test]
    fn queues_and_bindings_carry_the_arguments_the_declarations_send() {
        let (topology, plans) = described(HutchBuilder::defaults().namespace("shop"));
        let receipts = consumer(&topology, "send_receipt");
        let plan = plans
            .iter()
            .find(|plan| plan.queue == "shop:send_receipt")
            .unwrap();
        assert_eq!(receipts.queue.name, "shop:send_receipt");
        assert_eq!(receipts.queue.queue_type, QueueType::Classic);
        assert!(receipts.queue.durable);
        assert_eq!(
            receipts.queue.arguments,
            table_to_json(&plan.main_queue_arguments())
        );
        assert_eq!(
            receipts.queue.arguments.get("x-max-length"),
            Some(&json!(100))
        );
        assert_eq!(receipts.dead_letter_queue.name, "shop:send_receipt:dead");
        assert!(receipts.dead_letter_queue.arguments.is_empty());
        let bindings: Vec<_> = receipts
            .bindings
            .iter()
            .map(|binding| {
                (
                    binding.source.as_str(),
                    binding.destination.as_str(),
                    binding.routing_key.as_str(),
                    binding.arguments.len(),
                )
            })
            .collect();
        assert_eq!(
            bindings,
            [
                // hutch-rs's mark, x-hutch-rs.
                ("hutch", "shop:send_receipt", "orders.placed", 1),
                ("hutch", "shop:send_receipt", "orders.paid", 1),
            ]
        );

        let ledger = consumer(&topology, "ledger");
        assert_eq!(ledger.queue.queue_type, QueueType::Quorum);
        assert_eq!(
            ledger.queue.arguments.get("x-queue-type"),
            Some(&json!("quorum"))
        );
        assert_eq!(
            ledger.queue.arguments.get("x-dead-letter-routing-key"),
            Some(&json!("shop:ledger:dead"))
        );
        assert_eq!(
            ledger.dead_letter_queue.arguments,
            BTreeMap::from([("x-queue-type".to_owned(), json!("quorum"))])
        );
        for delay_queue in &ledger.delay_queues {
            let millis = delay_queue.delay.as_millis();
            assert_eq!(
                delay_queue.queue.name,
                format!("shop:ledger:delay:{millis}ms")
            );
            assert_eq!(delay_queue.queue.queue_type, QueueType::Quorum);
            assert_eq!(
                delay_queue.queue.arguments.get("x-message-ttl"),
                Some(&json!(millis as u64))
            );
            assert_eq!(
                delay_queue.queue.arguments.get("x-dead-letter-routing-key"),
                Some(&json!("shop:ledger"))
            );
        }
    }

    #[test]
    fn settings_are_the_consumer_s_over_the_defaults() {
        let (topology, plans) = described(
            HutchBuilder::defaults()
                .max_attempts(3)
                .retry_delay(Duration::from_secs(1), Duration::from_secs(3)),
        );
        let receipts = consumer(&topology, "send_receipt");
        assert_eq!((receipts.prefetch, receipts.concurrency), (8, 2));
        assert_eq!(receipts.max_attempts, 4);
        assert_eq!(receipts.retry_min_delay, Duration::from_secs(1));
        assert_eq!(receipts.retry_max_delay, Duration::from_secs(3));
        assert_eq!(
            receipts.retry_delays,
            [1, 2, 3].map(Duration::from_secs).to_vec()
        );
        let plan = plans
            .iter()
            .find(|plan| plan.queue == "send_receipt")
            .unwrap();
        let delays: Vec<_> = receipts
            .delay_queues
            .iter()
            .map(|queue| queue.delay)
            .collect();
        assert_eq!(delays, plan.retry.possible_delays());
        assert!(delays.contains(&Duration::from_secs(1)), "{delays:?}");
        assert_eq!(
            receipts.message_type.as_deref(),
            Some(std::any::type_name::<OrderPlaced>())
        );
        assert!(!receipts.may_reply);

        let ledger = consumer(&topology, "ledger");
        assert_eq!(ledger.max_attempts, 3);
        assert_eq!(ledger.timeout, Duration::from_secs(9));
        assert_eq!(ledger.group.as_deref(), Some("billing"));
        assert_eq!(ledger.message_type, None);
        assert!(ledger.may_reply);
    }

    #[test]
    fn it_serialises_with_durations_in_milliseconds_and_types_by_name() {
        let (topology, _) = described(HutchBuilder::defaults());
        let value = serde_json::to_value(&topology).unwrap();
        assert_eq!(
            value["exchange"],
            json!({ "name": "hutch", "kind": "topic", "durable": true })
        );
        let ledger = &value["consumers"][0];
        assert_eq!(ledger["name"], json!("billing::ledger"));
        assert_eq!(ledger["timeout_ms"], json!(9_000));
        assert_eq!(ledger["queue"]["queue_type"], json!("quorum"));
        assert_eq!(ledger["routing_keys"], json!(["billing.#"]));
        assert!(ledger["retry_delays_ms"].is_array());
        assert!(ledger["delay_queues"][0]["delay_ms"].is_u64());
        assert_eq!(
            ledger["bindings"][0],
            json!({
                "source": "hutch",
                "destination": "ledger",
                "routing_key": "billing.#",
                "arguments": { "x-hutch-rs": "1" },
            })
        );
    }

    #[test]
    fn every_amqp_value_becomes_json() {
        use lapin::types::{DecimalValue, FieldArray};
        let mut inner = FieldTable::default();
        inner.insert("a".into(), AMQPValue::ShortInt(-3));
        let mut table = FieldTable::default();
        table.insert("bool".into(), AMQPValue::Boolean(true));
        table.insert("long".into(), AMQPValue::LongLongInt(-5));
        table.insert("uint".into(), AMQPValue::LongUInt(7));
        table.insert("text".into(), AMQPValue::LongString("x".into()));
        table.insert("short".into(), AMQPValue::ShortString("y".into()));
        table.insert(
            "array".into(),
            AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::ShortShortUInt(1)])),
        );
        table.insert("table".into(), AMQPValue::FieldTable(inner));
        table.insert(
            "decimal".into(),
            AMQPValue::DecimalValue(DecimalValue {
                scale: 2,
                value: 150,
            }),
        );
        table.insert("void".into(), AMQPValue::Void);
        let json = serde_json::to_value(table_to_json(&table)).unwrap();
        assert_eq!(
            json,
            json!({
                "bool": true, "long": -5, "uint": 7, "text": "x", "short": "y",
                "array": [1], "table": { "a": -3 }, "decimal": 1.5, "void": null,
            })
        );
    }
}
