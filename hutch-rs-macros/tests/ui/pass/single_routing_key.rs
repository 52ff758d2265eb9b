use hutch_rs::{Message, consumer};

#[derive(serde::Deserialize)]
struct OrderPlaced {
    order_id: u64,
}

#[consumer(routing_key = "orders.placed")]
async fn send_receipt(msg: Message<OrderPlaced>) -> Result<(), hutch_rs::BoxError> {
    println!("receipt for {}", msg.order_id);
    Ok(())
}

fn main() {
    let consumers = hutch_rs::consumers();
    assert_eq!(consumers.len(), 1);
    let registration = consumers[0];
    assert_eq!(registration.function(), "send_receipt");
    assert_eq!(registration.module_path(), module_path!());
    assert_eq!(registration.routing_keys(), ["orders.placed"]);
    assert_eq!(registration.queue_argument(), None);
    assert_eq!(registration.base_queue_name(), "send_receipt");
    assert_eq!(registration.group(), None);
}
