use hutch_rs::{Message, consumer};

#[consumer(routing_key = ["billing.#", "refunds.*"], queue = "billing_audit", group = "billing")]
async fn audit(_msg: Message<serde_json::Value>) -> Result<(), hutch_rs::BoxError> {
    Ok(())
}

// Arguments come in any order.
#[consumer(group = "billing", queue = "shop:invoices.v2-eu", routing_key = "invoices.*")]
async fn invoices(_msg: Message<serde_json::Value>) -> Result<(), hutch_rs::BoxError> {
    Ok(())
}

fn main() {
    let consumers = hutch_rs::consumers();
    assert_eq!(consumers.len(), 2);
    let audit = consumers[0];
    assert_eq!(audit.function(), "audit");
    assert_eq!(audit.queue_argument(), Some("billing_audit"));
    assert_eq!(audit.base_queue_name(), "billing_audit");
    assert_eq!(audit.group(), Some("billing"));
    let invoices = consumers[1];
    assert_eq!(invoices.base_queue_name(), "shop:invoices.v2-eu");
    assert_eq!(invoices.routing_keys(), ["invoices.*"]);
}
