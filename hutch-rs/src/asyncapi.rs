//! AsyncAPI 3.0.0 documents of an application's consumers (feature
//! `asyncapi`), made from its [`Topology`] and the JSON Schemas that
//! `#[consumer]` recorded for the message types.
//!
//! The shape, in AsyncAPI's terms (AMQP bindings 0.3.0):
//!
//! - `servers`: one per configured node, host and port only (never the
//!   credentials).
//! - `channels`: one per routing key the consumers are bound with
//!   (`is: routingKey`, on the topic exchange), where publishers send; one
//!   per consumer queue (`is: queue`), where consumers receive; and
//!   `replies`, the default exchange that replies are published to.
//! - `operations`: a `receive` per consumer on its queue's channel, with a
//!   `reply` when it can reply, and its settings under `x-hutch-consumer`.
//! - `components.messages`: one per message type, its payload the type's
//!   JSON Schema (`components.schemas`), or a note where it has none.

use std::collections::BTreeMap;

use schemars::{SchemaGenerator, generate::SchemaSettings};
use serde_json::{Map, Value, json};

use crate::{Topology, config::Settings, topology::ConsumerPlan};

/// The AMQP bindings version every binding object here follows.
const AMQP_BINDING_VERSION: &str = "0.3.0";

/// Where a request names its reply's address: the `reply_to` property.
const REPLY_ADDRESS: &str = "$message.header#/reply_to";

/// The id of the channel replies are sent on.
const REPLIES_CHANNEL: &str = "replies";

/// What a message type without a JSON Schema says instead.
pub(crate) const NO_SCHEMA_NOTE: &str = "this message type does not implement schemars::JsonSchema, so the document has no schema for it: derive JsonSchema for it to add one";

/// The `info` of an AsyncAPI document: title, version and description of
/// the application, which a library cannot know (the application's
/// `CARGO_PKG_NAME` and `CARGO_PKG_VERSION` are the binary's, not
/// hutch-rs's).
///
/// ```
/// # #[cfg(feature = "asyncapi")] {
/// let info = hutch_rs::AsyncApiInfo::new(env!("CARGO_PKG_NAME"), env!("CARGO_PKG_VERSION"))
///     .description("Order handling");
/// # let _ = info; }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AsyncApiInfo {
    title: String,
    version: String,
    description: Option<String>,
}

impl AsyncApiInfo {
    /// A title and a version (any text: `1.2.0`, a commit, a date).
    #[must_use]
    pub fn new(title: impl Into<String>, version: impl Into<String>) -> Self {
        Self {
            title: title.into(),
            version: version.into(),
            description: None,
        }
    }

    /// A description (CommonMark) of the application.
    #[must_use]
    pub fn description(mut self, description: impl Into<String>) -> Self {
        self.description = Some(description.into());
        self
    }

    /// What [`Hutch::asyncapi`](crate::Hutch::asyncapi) uses: the
    /// namespace (or else the exchange) as the title, version
    /// `unversioned`.
    pub(crate) fn default_for(settings: &Settings) -> Self {
        let title = settings
            .namespace
            .clone()
            .unwrap_or_else(|| settings.exchange.clone());
        Self::new(title, "unversioned")
    }
}

/// The document of `topology`, whose consumers were planned as `plans`.
pub(crate) fn document(
    info: &AsyncApiInfo,
    settings: &Settings,
    topology: &Topology,
    plans: &[ConsumerPlan],
) -> Value {
    let vhost = settings
        .uris
        .first()
        .map_or_else(|| "/".to_owned(), |uri| uri.expose().vhost.clone());
    let mut settings_for_schemas = SchemaSettings::draft07();
    settings_for_schemas.definitions_path = "/components/schemas".into();
    settings_for_schemas.meta_schema = None;
    let mut generator = SchemaGenerator::new(settings_for_schemas);

    let mut ids = Ids::default();
    let mut messages = Map::new();
    // The message id of each consumer, in `topology.consumers` order.
    let mut message_ids = Vec::new();
    let mut by_type: BTreeMap<Option<&str>, String> = BTreeMap::new();
    for (consumer, plan) in topology.consumers.iter().zip(plans) {
        let message_type = consumer.message_type.as_deref();
        if let Some(id) = by_type.get(&message_type) {
            message_ids.push(id.clone());
            continue;
        }
        let id = ids.unique(message_type.map_or("untyped", short_type_name));
        let schema = plan
            .registration
            .message_schema()
            .and_then(|schema| schema(&mut generator));
        messages.insert(id.clone(), message(message_type, schema));
        by_type.insert(message_type, id.clone());
        message_ids.push(id);
    }

    let mut channels = Map::new();
    let mut operations = Map::new();
    // Routing-key channels, shared by every consumer bound with the key.
    let mut routing_key_channels: BTreeMap<&str, (String, Map<String, Value>)> = BTreeMap::new();
    for (consumer, message_id) in topology.consumers.iter().zip(&message_ids) {
        for routing_key in &consumer.routing_keys {
            let (_, channel_messages) = routing_key_channels
                .entry(routing_key.as_str())
                .or_insert_with(|| (ids.unique(&format!("routingKey.{routing_key}")), Map::new()));
            channel_messages.insert(message_id.clone(), message_ref(message_id));
        }
    }
    for (routing_key, (id, channel_messages)) in routing_key_channels {
        let bound: Vec<&str> = topology
            .consumers
            .iter()
            .filter(|consumer| consumer.routing_keys.iter().any(|key| key == routing_key))
            .map(|consumer| consumer.queue.name.as_str())
            .collect();
        channels.insert(
            id,
            json!({
                "address": routing_key,
                "title": format!("Routing key {routing_key}"),
                "description": format!(
                    "Messages published to the topic exchange `{}` with a routing key matching `{routing_key}`; bound queues: {}.",
                    topology.exchange.name,
                    bound.iter().map(|queue| format!("`{queue}`")).collect::<Vec<_>>().join(", "),
                ),
                "messages": channel_messages,
                "bindings": { "amqp": {
                    "is": "routingKey",
                    "exchange": {
                        "name": topology.exchange.name,
                        "type": topology.exchange.kind,
                        "durable": topology.exchange.durable,
                        "autoDelete": false,
                        "vhost": vhost,
                    },
                    "bindingVersion": AMQP_BINDING_VERSION,
                }},
            }),
        );
    }

    let mut any_replies = false;
    for (consumer, message_id) in topology.consumers.iter().zip(&message_ids) {
        let channel_id = ids.unique(&format!("queue.{}", consumer.queue.name));
        channels.insert(
            channel_id.clone(),
            json!({
                "address": consumer.queue.name,
                "title": format!("Queue {}", consumer.queue.name),
                "description": format!(
                    "The {} queue of consumer `{}`, bound to `{}` with {}; failed messages are retried through its delay queues and end in `{}`.",
                    consumer.queue.queue_type,
                    consumer.name,
                    topology.exchange.name,
                    consumer.routing_keys.iter().map(|key| format!("`{key}`")).collect::<Vec<_>>().join(", "),
                    consumer.dead_letter_queue.name,
                ),
                "messages": { message_id.clone(): message_ref(message_id) },
                "bindings": { "amqp": {
                    "is": "queue",
                    "queue": {
                        "name": consumer.queue.name,
                        "durable": consumer.queue.durable,
                        "exclusive": false,
                        "autoDelete": false,
                        "vhost": vhost,
                    },
                    "bindingVersion": AMQP_BINDING_VERSION,
                }},
                "x-hutch-queue": consumer.queue,
            }),
        );
        let mut operation = json!({
            "action": "receive",
            "channel": { "$ref": format!("#/channels/{channel_id}") },
            "title": consumer.name,
            "summary": format!("`{}` handles messages of its queue.", consumer.name),
            "messages": [{ "$ref": format!("#/channels/{channel_id}/messages/{message_id}") }],
            "bindings": { "amqp": { "ack": true, "bindingVersion": AMQP_BINDING_VERSION } },
            "x-hutch-consumer": consumer,
        });
        if consumer.may_reply {
            any_replies = true;
            operation["reply"] = json!({
                "address": {
                    "location": REPLY_ADDRESS,
                    "description": "The request's reply_to property (RabbitMQ direct reply-to), when the message is a request; the handler replies with Context::reply.",
                },
                "channel": { "$ref": format!("#/channels/{REPLIES_CHANNEL}") },
            });
        }
        operations.insert(
            ids.unique(&format!("receive.{}", consumer.queue.name)),
            operation,
        );
    }
    if any_replies {
        channels.insert(
            REPLIES_CHANNEL.to_owned(),
            json!({
                "address": null,
                "title": "Replies",
                "description": "Replies to requests, published to the default exchange with the request's reply_to as the routing key and its correlation_id.",
                "bindings": { "amqp": {
                    "is": "routingKey",
                    "exchange": { "name": "", "type": "default", "vhost": vhost },
                    "bindingVersion": AMQP_BINDING_VERSION,
                }},
            }),
        );
    }

    let mut info_object = json!({
        "title": info.title,
        "version": info.version,
        "description": info.description.clone().unwrap_or_else(|| default_description(topology)),
    });
    info_object["x-hutch-exchange"] = json!(topology.exchange.name);
    let mut document = json!({
        "asyncapi": "3.0.0",
        "info": info_object,
        "defaultContentType": "application/json",
        "servers": servers(settings),
        "channels": channels,
        "operations": operations,
        "components": {
            "messages": messages,
        },
    });
    let schemas = generator.take_definitions(true);
    if !schemas.is_empty() {
        document["components"]["schemas"] = Value::Object(schemas);
    }
    document
}

/// A message of `message_type`, with `schema` as its payload or a note.
fn message(message_type: Option<&str>, schema: Option<schemars::Schema>) -> Value {
    let name = message_type.unwrap_or("untyped");
    let mut message = json!({
        "name": name,
        "title": message_type.map_or("untyped", short_type_name),
        "contentType": "application/json",
        "bindings": { "amqp": { "bindingVersion": AMQP_BINDING_VERSION } },
    });
    if let Some(message_type) = message_type {
        message["bindings"]["amqp"]["messageType"] = json!(message_type);
    }
    match schema {
        Some(schema) => message["payload"] = schema.to_value(),
        None => {
            message["description"] = json!(format!("`{name}`: {NO_SCHEMA_NOTE}."));
            message["x-hutch-note"] = json!(NO_SCHEMA_NOTE);
        }
    }
    message
}

fn message_ref(message_id: &str) -> Value {
    json!({ "$ref": format!("#/components/messages/{message_id}") })
}

/// The configured nodes, without credentials: `broker`, or `node1`,
/// `node2`, ... for several.
fn servers(settings: &Settings) -> Value {
    let several = settings.uris.len() > 1;
    let servers: Map<String, Value> = settings
        .uris
        .iter()
        .enumerate()
        .map(|(index, uri)| {
            let uri = uri.expose();
            let protocol = match uri.scheme {
                lapin::uri::AMQPScheme::AMQP => "amqp",
                lapin::uri::AMQPScheme::AMQPS => "amqps",
            };
            let id = if several {
                format!("node{}", index + 1)
            } else {
                "broker".to_owned()
            };
            let server = json!({
                "host": format!("{}:{}", uri.authority.host, uri.authority.port),
                "protocol": protocol,
                "protocolVersion": "0-9-1",
                "description": format!("RabbitMQ, virtual host `{}`.", uri.vhost),
            });
            (id, server)
        })
        .collect();
    Value::Object(servers)
}

fn default_description(topology: &Topology) -> String {
    let mut description = format!(
        "The consumers of a hutch-rs application on the topic exchange `{}`",
        topology.exchange.name
    );
    if let Some(namespace) = &topology.namespace {
        description.push_str(&format!(", namespace `{namespace}`"));
    }
    if let Some(group) = &topology.group {
        description.push_str(&format!(", group `{group}`"));
    }
    description.push_str(&format!(
        "; generated by hutch-rs {}.",
        env!("CARGO_PKG_VERSION")
    ));
    description
}

/// The last path segment of a type name, generics kept:
/// `shop::OrderPlaced` → `OrderPlaced`.
fn short_type_name(type_name: &str) -> &str {
    let before_generics = type_name.find('<').unwrap_or(type_name.len());
    let start = type_name[..before_generics]
        .rfind("::")
        .map_or(0, |index| index + 2);
    &type_name[start..]
}

/// Ids for channels, operations and messages: AsyncAPI's component keys
/// allow letters, digits, `.`, `-` and `_` (and a `$ref` would need `/`
/// and `~` escaped), so anything else becomes `_`; a clash gets a number.
#[derive(Default)]
struct Ids {
    taken: std::collections::BTreeSet<String>,
}

impl Ids {
    fn unique(&mut self, wanted: &str) -> String {
        let base: String = wanted
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let mut id = base.clone();
        let mut number = 2;
        while !self.taken.insert(id.clone()) {
            id = format!("{base}_{number}");
            number += 1;
        }
        id
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{
        ConsumerRegistration, QueueArguments, QueueType,
        config::HutchBuilder,
        handler::{Delivered, HandlerFuture},
        topology::plan_consumers,
    };

    fn never(_: Delivered) -> HandlerFuture {
        unreachable!("handlers are not called in AsyncAPI tests")
    }

    #[derive(schemars::JsonSchema)]
    #[allow(dead_code)]
    struct OrderPlaced {
        order_id: u64,
    }

    #[allow(dead_code)]
    struct Opaque;

    static RECEIPTS: ConsumerRegistration =
        ConsumerRegistration::new("send_receipt", "shop", &["orders.*", "orders.#"], never)
            .with_message_type(std::any::type_name::<OrderPlaced>)
            .with_message_schema(crate::__hutch_rs_message_schema!(OrderPlaced));
    static AUDIT: ConsumerRegistration =
        ConsumerRegistration::new("audit", "shop", &["orders.*"], never)
            .with_message_type(std::any::type_name::<Opaque>)
            .with_message_schema(crate::__hutch_rs_message_schema!(Opaque))
            .with_context()
            .with_retry_min_delay(Duration::from_millis(100))
            .with_queue_arguments(QueueArguments::new().queue_type(QueueType::Quorum));

    fn document_of(builder: HutchBuilder, info: Option<AsyncApiInfo>) -> Value {
        let settings = builder.validate().unwrap();
        let plans = plan_consumers(&settings, &[&RECEIPTS, &AUDIT]).unwrap();
        let topology = Topology::describe(&settings, &plans);
        let info = info.unwrap_or_else(|| AsyncApiInfo::default_for(&settings));
        document(&info, &settings, &topology, &plans)
    }

    #[test]
    fn servers_have_no_credentials() {
        let document = document_of(
            HutchBuilder::defaults().uris([
                "amqp://admin:s3cret@rabbit-1:5673/prod",
                "amqps://admin:s3cret@rabbit-2/prod",
            ]),
            None,
        );
        assert_eq!(
            document["servers"],
            json!({
                "node1": {
                    "host": "rabbit-1:5673", "protocol": "amqp", "protocolVersion": "0-9-1",
                    "description": "RabbitMQ, virtual host `prod`.",
                },
                "node2": {
                    "host": "rabbit-2:5671", "protocol": "amqps", "protocolVersion": "0-9-1",
                    "description": "RabbitMQ, virtual host `prod`.",
                },
            })
        );
        let text = document.to_string();
        assert!(!text.contains("s3cret"), "{text}");
        assert!(!text.contains("admin"), "{text}");
    }

    #[test]
    fn info_defaults_to_the_namespace_and_can_be_given() {
        let default = document_of(HutchBuilder::defaults().namespace("shop"), None);
        assert_eq!(default["info"]["title"], json!("shop"));
        assert_eq!(default["info"]["version"], json!("unversioned"));
        let default = document_of(HutchBuilder::defaults(), None);
        assert_eq!(default["info"]["title"], json!("hutch"));
        let given = document_of(
            HutchBuilder::defaults(),
            Some(AsyncApiInfo::new("orders", "1.2.3").description("Order handling")),
        );
        assert_eq!(
            given["info"],
            json!({
                "title": "orders", "version": "1.2.3", "description": "Order handling",
                "x-hutch-exchange": "hutch",
            })
        );
    }

    #[test]
    fn routing_keys_queues_and_operations_are_channels_and_receives() {
        let document = document_of(HutchBuilder::defaults().namespace("shop"), None);
        let channels = document["channels"].as_object().unwrap();
        // `orders.*` and `orders.#` clash once sanitised, and stay apart.
        let star = &channels["routingKey.orders._"];
        assert_eq!(star["address"], json!("orders.*"));
        assert_eq!(
            channels["routingKey.orders.__2"]["address"],
            json!("orders.#")
        );
        assert_eq!(
            star["bindings"]["amqp"]["exchange"],
            json!({ "name": "hutch", "type": "topic", "durable": true, "autoDelete": false, "vhost": "/" })
        );
        // Both consumers are bound with `orders.*`: both messages.
        assert_eq!(star["messages"].as_object().unwrap().len(), 2);
        let queue = &channels["queue.shop_send_receipt"];
        assert_eq!(queue["address"], json!("shop:send_receipt"));
        assert_eq!(queue["bindings"]["amqp"]["is"], json!("queue"));
        assert_eq!(
            queue["bindings"]["amqp"]["queue"]["name"],
            json!("shop:send_receipt")
        );

        let receive = &document["operations"]["receive.shop_send_receipt"];
        assert_eq!(receive["action"], json!("receive"));
        assert_eq!(
            receive["channel"],
            json!({ "$ref": "#/channels/queue.shop_send_receipt" })
        );
        assert_eq!(
            receive["messages"],
            json!([{ "$ref": "#/channels/queue.shop_send_receipt/messages/OrderPlaced" }])
        );
        assert_eq!(
            receive["x-hutch-consumer"]["queue"]["name"],
            json!("shop:send_receipt")
        );
        assert!(receive.get("reply").is_none());
        assert!(channels.contains_key(REPLIES_CHANNEL));
        let audit = &document["operations"]["receive.shop_audit"];
        assert_eq!(audit["reply"]["address"]["location"], json!(REPLY_ADDRESS));
        assert_eq!(
            audit["x-hutch-consumer"]["queue"]["arguments"]["x-queue-type"],
            json!("quorum")
        );
    }

    #[test]
    fn a_type_with_a_schema_has_its_payload_and_one_without_has_a_note() {
        let document = document_of(HutchBuilder::defaults(), None);
        let messages = &document["components"]["messages"];
        let order = &messages["OrderPlaced"];
        assert_eq!(
            order["payload"],
            json!({ "$ref": "#/components/schemas/OrderPlaced" })
        );
        assert_eq!(
            order["bindings"]["amqp"]["messageType"],
            json!(std::any::type_name::<OrderPlaced>())
        );
        let schema = &document["components"]["schemas"]["OrderPlaced"];
        assert_eq!(schema["properties"]["order_id"]["type"], json!("integer"));
        let opaque = &messages["Opaque"];
        assert!(opaque.get("payload").is_none());
        assert_eq!(opaque["x-hutch-note"], json!(NO_SCHEMA_NOTE));
    }

    #[test]
    fn no_replies_channel_without_a_consumer_that_can_reply() {
        let settings = HutchBuilder::defaults().validate().unwrap();
        let plans = plan_consumers(&settings, &[&RECEIPTS]).unwrap();
        let topology = Topology::describe(&settings, &plans);
        let document = document(
            &AsyncApiInfo::default_for(&settings),
            &settings,
            &topology,
            &plans,
        );
        assert!(document["channels"].get(REPLIES_CHANNEL).is_none());
    }

    #[test]
    fn short_type_names_keep_generics() {
        assert_eq!(short_type_name("shop::OrderPlaced"), "OrderPlaced");
        assert_eq!(short_type_name("alloc::vec::Vec<u8>"), "Vec<u8>");
        assert_eq!(short_type_name("a::W<b::C>"), "W<b::C>");
        assert_eq!(short_type_name("u32"), "u32");
    }
}
