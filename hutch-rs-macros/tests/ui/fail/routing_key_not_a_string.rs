use hutch_rs::{Message, consumer};

const ORDERS_PLACED: &str = "orders.placed";

#[consumer(routing_key = ORDERS_PLACED)]
async fn send_receipt(_msg: Message<u64>) -> Result<(), hutch_rs::BoxError> {
    Ok(())
}

fn main() {}
