use hutch_rs::{Context, Message, consumer};

#[consumer(routing_key = "orders.placed")]
async fn send_receipt(_ctx: Context, _msg: Message<u64>) -> Result<(), hutch_rs::BoxError> {
    Ok(())
}

fn main() {}
