use hutch_rs::{Message, consumer};

#[consumer(routing_key = "orders.placed")]
async fn send_receipt(_msg: Message<u64>) {}

fn main() {}
