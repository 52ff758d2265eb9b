use hutch_rs::{Message, consumer};

#[consumer(routing_keys = ["orders.placed", "orders.paid"])]
async fn send_receipt(_msg: Message<u64>) -> Result<(), hutch_rs::BoxError> {
    Ok(())
}

fn main() {}
