use hutch_rs::{Message, consumer};

#[consumer(routing_key = "orders.placed", retry_min_delay = "10s", retry_max_delay = "5s")]
async fn send_receipt(_msg: Message<u64>) -> Result<(), hutch_rs::BoxError> {
    Ok(())
}

fn main() {}
