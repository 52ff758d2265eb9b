// A `#[cfg]` under the attribute removes the registration with the function.
use hutch_rs::{Message, consumer};

#[consumer(routing_key = "orders.placed")]
#[cfg(any())]
async fn compiled_out(_msg: Message<u64>) -> Result<(), hutch_rs::BoxError> {
    Ok(())
}

#[consumer(routing_key = "orders.placed")]
#[cfg(all())]
async fn compiled_in(_msg: Message<u64>) -> Result<(), hutch_rs::BoxError> {
    Ok(())
}

fn main() {
    let consumers = hutch_rs::consumers();
    assert_eq!(consumers.len(), 1);
    assert_eq!(consumers[0].function(), "compiled_in");
}
