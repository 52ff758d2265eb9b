use hutch_rs::{Message, consumer};

struct OrderPlaced {
    order_id: u64,
}

#[consumer(routing_key = "orders.placed")]
async fn send_receipt(msg: Message<OrderPlaced>) -> Result<(), hutch_rs::BoxError> {
    println!("{}", msg.order_id);
    Ok(())
}

fn main() {}
