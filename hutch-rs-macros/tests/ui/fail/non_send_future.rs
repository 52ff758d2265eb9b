use std::rc::Rc;

use hutch_rs::{Message, consumer};

async fn save(_order: u64) {}

#[consumer(routing_key = "orders.placed")]
async fn send_receipt(msg: Message<u64>) -> Result<(), hutch_rs::BoxError> {
    let order = Rc::new(*msg);
    save(*order).await;
    Ok(())
}

fn main() {}
