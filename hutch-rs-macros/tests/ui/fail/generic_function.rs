use hutch_rs::{Message, consumer};

#[consumer(routing_key = "orders.placed")]
async fn send_receipt<T>(_msg: Message<T>) -> Result<(), hutch_rs::BoxError> {
    Ok(())
}

fn main() {}
