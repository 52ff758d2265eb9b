//! The AsyncAPI document of an application with several kinds of consumers
//! (a message type with a JSON Schema, one without, a request/reply
//! consumer, a quorum queue), validated against the official AsyncAPI
//! 3.0.0 JSON Schema shipped in `asyncapi/` (see its README), with checks
//! that the validator does reject broken documents. No broker: generating
//! the document opens no connection.

use hutch_rs::{BoxError, Context, Hutch, Message, consumer, schemars};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// An order, with a JSON Schema.
#[derive(Serialize, Deserialize, schemars::JsonSchema)]
#[schemars(crate = "hutch_rs::schemars")]
struct OrderPlaced {
    order_id: u64,
    /// Where the receipt goes.
    email: String,
    lines: Vec<Line>,
}

#[derive(Serialize, Deserialize, schemars::JsonSchema)]
#[schemars(crate = "hutch_rs::schemars")]
struct Line {
    sku: String,
    quantity: u32,
}

/// A type without `JsonSchema`: listed with a note.
#[derive(Deserialize)]
struct LegacyAudit {
    #[allow(dead_code)]
    raw: String,
}

#[derive(Deserialize, schemars::JsonSchema)]
#[schemars(crate = "hutch_rs::schemars")]
struct PriceRequest {
    #[allow(dead_code)]
    sku: String,
}

#[derive(Deserialize, schemars::JsonSchema)]
#[schemars(crate = "hutch_rs::schemars")]
#[serde(tag = "kind")]
enum LedgerEntry {
    Credit {
        #[allow(dead_code)]
        cents: i64,
    },
    Debit {
        #[allow(dead_code)]
        cents: i64,
    },
}

#[consumer(routing_key = ["orders.placed", "orders.paid"], max_attempts = 5)]
async fn send_receipt(_msg: Message<OrderPlaced>) -> Result<(), BoxError> {
    Ok(())
}

#[consumer(routing_key = "audit.#", queue = "legacy_audit")]
async fn audit(_msg: Message<LegacyAudit>) -> Result<(), BoxError> {
    Ok(())
}

#[consumer(routing_key = "prices.quote")]
async fn quote_price(_msg: Message<PriceRequest>, ctx: Context) -> Result<(), BoxError> {
    ctx.reply(&json!({ "cents": 500 })).await?;
    Ok(())
}

#[consumer(routing_key = "ledger.*", queue_type = "quorum", group = "ledger")]
async fn ledger(_msg: Message<LedgerEntry>) -> Result<(), BoxError> {
    Ok(())
}

fn hutch() -> Hutch {
    Hutch::builder()
        .uri("amqp://shop:secret-password@rabbit.internal:5672/%2f")
        .namespace("shop")
        .build()
        .expect("valid settings")
}

fn official_validator() -> jsonschema::Validator {
    let schema: Value =
        serde_json::from_str(include_str!("asyncapi/asyncapi-3.0.0.schema.json")).unwrap();
    jsonschema::draft7::new(&schema).expect("the official schema compiles")
}

/// The validator's complaints, one line each.
fn errors(validator: &jsonschema::Validator, document: &Value) -> Vec<String> {
    validator
        .iter_errors(document)
        .map(|error| format!("{} at {}", error, error.instance_path()))
        .collect()
}

#[test]
fn the_document_is_valid_asyncapi_3() {
    let document = hutch().asyncapi().unwrap();
    if let Ok(path) = std::env::var("HUTCH_ASYNCAPI_OUT") {
        std::fs::write(path, serde_json::to_string_pretty(&document).unwrap()).unwrap();
    }
    let validator = official_validator();
    let errors = errors(&validator, &document);
    assert!(errors.is_empty(), "{errors:#?}");
    assert_eq!(document["asyncapi"], json!("3.0.0"));
}

#[test]
fn every_reference_in_the_document_resolves() {
    let document = hutch().asyncapi().unwrap();
    let mut references = Vec::new();
    collect_references(&document, &mut references);
    assert!(references.len() > 10, "{references:?}");
    for reference in references {
        let pointer = reference
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("{reference} is not local"));
        assert!(
            document.pointer(pointer).is_some(),
            "{reference} points nowhere"
        );
    }
}

fn collect_references(value: &Value, references: &mut Vec<String>) {
    match value {
        Value::Object(object) => {
            for (key, value) in object {
                match value {
                    Value::String(target) if key == "$ref" => references.push(target.clone()),
                    _ => collect_references(value, references),
                }
            }
        }
        Value::Array(items) => items
            .iter()
            .for_each(|item| collect_references(item, references)),
        _ => {}
    }
}

#[test]
fn it_lists_every_kind_of_consumer() {
    let document = hutch().asyncapi().unwrap();
    let operations = document["operations"].as_object().unwrap();
    let mut ids: Vec<&str> = operations.keys().map(String::as_str).collect();
    ids.sort_unstable();
    assert_eq!(
        ids,
        [
            "receive.shop_ledger",
            "receive.shop_legacy_audit",
            "receive.shop_quote_price",
            "receive.shop_send_receipt",
        ]
    );
    assert!(
        operations["receive.shop_quote_price"]
            .get("reply")
            .is_some()
    );
    assert!(
        operations["receive.shop_send_receipt"]
            .get("reply")
            .is_none()
    );
    assert_eq!(
        operations["receive.shop_ledger"]["x-hutch-consumer"]["queue"]["queue_type"],
        json!("quorum")
    );
    assert_eq!(
        operations["receive.shop_send_receipt"]["x-hutch-consumer"]["max_attempts"],
        json!(5)
    );
    let messages = &document["components"]["messages"];
    assert!(messages["LegacyAudit"].get("payload").is_none());
    assert!(
        messages["LegacyAudit"]["x-hutch-note"]
            .as_str()
            .unwrap()
            .contains("JsonSchema")
    );
    for with_schema in ["OrderPlaced", "PriceRequest", "LedgerEntry"] {
        assert!(
            messages[with_schema].get("payload").is_some(),
            "{with_schema}"
        );
    }
    assert_eq!(
        document["servers"]["broker"]["host"],
        json!("rabbit.internal:5672")
    );
    let text = document.to_string();
    assert!(!text.contains("secret-password"));
}

#[test]
fn a_group_lists_only_its_consumers() {
    let hutch = Hutch::builder().group("ledger").build().unwrap();
    let document = hutch.asyncapi().unwrap();
    let operations: Vec<&String> = document["operations"].as_object().unwrap().keys().collect();
    assert_eq!(operations, ["receive.ledger"]);
    assert!(errors(&official_validator(), &document).is_empty());
}

#[test]
fn the_free_function_uses_the_environment() {
    // Whatever HUTCH_* says, both read the same settings.
    assert_eq!(
        hutch_rs::asyncapi().unwrap(),
        Hutch::from_env().unwrap().asyncapi().unwrap()
    );
    assert_eq!(
        hutch_rs::topology().unwrap(),
        Hutch::from_env().unwrap().topology().unwrap()
    );
}

/// The payload schemas describe what the consumers decode: a body that
/// `Message<OrderPlaced>` accepts validates, one it refuses does not.
#[test]
fn payload_schemas_accept_what_the_consumer_decodes() {
    let document = hutch().asyncapi().unwrap();
    let payload = document["components"]["messages"]["OrderPlaced"]["payload"].clone();
    let mut schema = payload;
    schema["components"] = document["components"].clone();
    let validator = jsonschema::draft7::new(&schema).unwrap();
    let good = serde_json::to_value(OrderPlaced {
        order_id: 7,
        email: "a@example.com".into(),
        lines: vec![Line {
            sku: "x".into(),
            quantity: 2,
        }],
    })
    .unwrap();
    assert!(validator.is_valid(&good));
    let bad = json!({ "order_id": "seven", "email": "a@example.com", "lines": [] });
    assert!(!validator.is_valid(&bad));
    assert!(serde_json::from_value::<OrderPlaced>(bad).is_err());
}

/// A change that makes a valid document invalid.
type Breakage = Box<dyn Fn(&mut Value)>;

/// The validator is not a yes-machine: each breakage the schema forbids is
/// reported, so the validity test above can fail.
#[test]
fn the_validator_rejects_broken_documents() {
    let validator = official_validator();
    let document = hutch().asyncapi().unwrap();
    let broken: Vec<(&str, Breakage)> = vec![
        (
            "wrong version",
            Box::new(|d: &mut Value| d["asyncapi"] = json!("2.6.0")),
        ),
        (
            "no info",
            Box::new(|d: &mut Value| {
                d.as_object_mut().unwrap().remove("info");
            }),
        ),
        (
            "unknown action",
            Box::new(|d: &mut Value| {
                d["operations"]["receive.shop_send_receipt"]["action"] = json!("consume")
            }),
        ),
        (
            // AMQP bindings 0.3.0: a routing-key channel names an exchange,
            // not a queue.
            "routing key channel with a queue",
            Box::new(|d: &mut Value| {
                d["channels"]["routingKey.orders.placed"]["bindings"]["amqp"]["queue"] =
                    json!({ "name": "q" })
            }),
        ),
        (
            "unknown exchange type",
            Box::new(|d: &mut Value| {
                d["channels"]["routingKey.orders.placed"]["bindings"]["amqp"]["exchange"]["type"] =
                    json!("x-delayed")
            }),
        ),
        (
            "bad reply address",
            Box::new(|d: &mut Value| {
                d["operations"]["receive.shop_quote_price"]["reply"]["address"]["location"] =
                    json!("reply_to")
            }),
        ),
        (
            "unknown top-level field",
            Box::new(|d: &mut Value| d["hutch"] = json!(true)),
        ),
    ];
    for (what, breaks) in broken {
        let mut document = document.clone();
        breaks(&mut document);
        assert!(
            !errors(&validator, &document).is_empty(),
            "{what}: accepted"
        );
    }
}
