use hutch_rs::{Message, consumer};

const ATTEMPTS: u32 = 3;

#[consumer(routing_key = "orders.placed", max_attempts = ATTEMPTS)]
async fn send_receipt(_msg: Message<u64>) -> Result<(), hutch_rs::BoxError> {
    Ok(())
}

fn main() {}
