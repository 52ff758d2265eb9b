use std::rc::Rc;

use hutch_rs::{BoxError, Context, FromDelivery, Message, consumer};

/// Holds an `Rc` across an `.await`: its future cannot move between threads.
struct Local;

impl FromDelivery for Local {
    type Rejection = BoxError;

    async fn from_delivery(_ctx: &Context) -> Result<Self, BoxError> {
        let shared = Rc::new(1);
        tokio::task::yield_now().await;
        drop(shared);
        Ok(Local)
    }
}

#[consumer(routing_key = "orders.placed")]
async fn send_receipt(_msg: Message<u64>, _local: Local) -> Result<(), BoxError> {
    Ok(())
}

fn main() {}
