use hutch_rs::{Message, consumer};

#[consumer]
async fn send_receipt(_msg: Message<u64>) -> Result<(), hutch_rs::BoxError> {
    Ok(())
}

fn main() {}
