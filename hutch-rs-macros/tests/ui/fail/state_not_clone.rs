use hutch_rs::{Message, State, consumer};

/// Handlers get a clone of each state value: this one cannot be cloned.
struct Pool;

#[consumer(routing_key = "orders.placed")]
async fn send_receipt(_msg: Message<u64>, _pool: State<Pool>) -> Result<(), hutch_rs::BoxError> {
    Ok(())
}

fn main() {}
