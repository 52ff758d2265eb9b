use hutch_rs::{Message, consumer};

#[consumer(routing_key = "orders.placed", prefetch = 8, concurrency = 16)]
async fn send_receipt(_msg: Message<u64>) -> Result<(), hutch_rs::BoxError> {
    Ok(())
}

fn main() {}
