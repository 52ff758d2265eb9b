use hutch_rs::{Message, consumer};

#[consumer(routing_key = "orders.placed")]
async fn send_receipt(_msg: Message<u64>) -> Result<(), hutch_rs::BoxError>
where
    u64: Copy,
{
    Ok(())
}

fn main() {}
