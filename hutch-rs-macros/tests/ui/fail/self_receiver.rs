use hutch_rs::{Message, consumer};

struct Receipts;

impl Receipts {
    #[consumer(routing_key = "orders.placed")]
    async fn send_receipt(&self, _msg: Message<u64>) -> Result<(), hutch_rs::BoxError> {
        Ok(())
    }
}

fn main() {}
