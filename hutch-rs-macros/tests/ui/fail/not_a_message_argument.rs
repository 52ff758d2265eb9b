use hutch_rs::consumer;

#[consumer(routing_key = "orders.placed")]
async fn send_receipt(_order_id: u64) -> Result<(), hutch_rs::BoxError> {
    Ok(())
}

fn main() {}
