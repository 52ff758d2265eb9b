// A user's macro can declare consumers; `$key:expr` arrives wrapped in an
// invisible group that the attribute looks through.
use hutch_rs::{Message, consumer};

macro_rules! forward {
    ($name:ident, $key:expr) => {
        #[consumer(routing_key = $key)]
        async fn $name(_msg: Message<serde_json::Value>) -> Result<(), hutch_rs::BoxError> {
            Ok(())
        }
    };
}

forward!(forward_orders, "orders.#");
forward!(forward_refunds, "refunds.#");

fn main() {
    let consumers = hutch_rs::consumers();
    assert_eq!(consumers.len(), 2);
    assert_eq!(consumers[0].routing_keys(), ["orders.#"]);
    assert_eq!(consumers[1].routing_keys(), ["refunds.#"]);
}
