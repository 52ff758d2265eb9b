use hutch_rs::{Message, consumer};

#[consumer(routing_key = ["billing.#", "refunds.*", "*.audited", "#", r"orders.placed"])]
async fn audit(_msg: Message<serde_json::Value>) -> Result<(), hutch_rs::BoxError> {
    Ok(())
}

// A one-element list and a trailing comma are fine too.
#[consumer(routing_key = ["orders.placed",],)]
async fn placed(_msg: Message<u64>) -> Result<(), hutch_rs::BoxError> {
    Ok(())
}

fn main() {
    let consumers = hutch_rs::consumers();
    assert_eq!(consumers.len(), 2);
    assert_eq!(consumers[0].function(), "audit");
    assert_eq!(
        consumers[0].routing_keys(),
        ["billing.#", "refunds.*", "*.audited", "#", "orders.placed"]
    );
    assert_eq!(consumers[1].function(), "placed");
    assert_eq!(consumers[1].routing_keys(), ["orders.placed"]);
}
