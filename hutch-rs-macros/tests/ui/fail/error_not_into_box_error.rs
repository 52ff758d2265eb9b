use hutch_rs::{Message, consumer};

#[derive(Debug)]
struct ReceiptError;

#[consumer(routing_key = "orders.placed")]
async fn send_receipt(_msg: Message<u64>) -> Result<(), ReceiptError> {
    Err(ReceiptError)
}

fn main() {}
