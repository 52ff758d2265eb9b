use hutch_rs::{Message, consumer};

#[consumer(routing_key = "ord#ers")]
async fn send_receipt(_msg: Message<u64>) -> Result<(), hutch_rs::BoxError> {
    Ok(())
}

fn main() {}
