// Every mistake is reported in one build, each at its own token.
use hutch_rs::{Message, consumer};

#[consumer(routing_key = ["orders.*x", ""], group = "", durable = true)]
fn send_receipt(_msg: Message<u64>, _extra: u32) -> Result<(), hutch_rs::BoxError> {
    Ok(())
}

fn main() {}
