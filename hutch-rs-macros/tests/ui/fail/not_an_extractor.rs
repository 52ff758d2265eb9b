use hutch_rs::{Message, consumer};

// The routing key and the attempt are methods of `Message`, not arguments.
#[consumer(routing_key = "orders.placed")]
async fn send_receipt(
    _msg: Message<u64>,
    _routing_key: String,
    _attempt: u32,
) -> Result<(), hutch_rs::BoxError> {
    Ok(())
}

fn main() {}
