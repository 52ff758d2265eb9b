use hutch_rs::{Message, consumer};

#[consumer(routing_key = "orders.placed")]
async fn send_receipt(
    _msg: Message<impl serde::de::DeserializeOwned>,
) -> Result<(), hutch_rs::BoxError> {
    Ok(())
}

fn main() {}
