use hutch_rs::consumer;

#[consumer(routing_key = "orders.placed")]
async fn send_receipt() -> Result<(), hutch_rs::BoxError> {
    Ok(())
}

fn main() {}
