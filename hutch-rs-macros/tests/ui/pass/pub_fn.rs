//! Consumers keep their visibility, docs and attributes, and are callable.
#![forbid(unsafe_code)]
#![deny(warnings, missing_docs, unreachable_pub, missing_debug_implementations)]

use hutch_rs::{Message, consumer};

/// Sends the receipt.
#[consumer(routing_key = "orders.placed")]
#[inline(never)]
pub async fn send_receipt(msg: Message<u64>) -> Result<(), hutch_rs::BoxError> {
    if *msg == 0 {
        return Err("no order".into());
    }
    Ok(())
}

mod billing {
    use hutch_rs::{Message, consumer};

    #[consumer(routing_key = "billing.#")]
    pub(crate) async fn bill(_msg: Message<u64>) -> Result<(), hutch_rs::BoxError> {
        Ok(())
    }
}

fn main() {
    // The function is still there, unchanged.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    runtime.block_on(async {
        assert!(send_receipt(Message::new(7)).await.is_ok());
        assert!(send_receipt(Message::new(0)).await.is_err());
        assert!(billing::bill(Message::new(1)).await.is_ok());
    });
    assert_eq!(hutch_rs::consumers().len(), 2);
}
