//! An application with its own command line (feature `cli`): the consumers
//! are registered in this binary, so its `main` is one call.
//!
//! ```sh
//! export HUTCH_URI=amqp://guest:guest@127.0.0.1:5672/%2f HUTCH_NAMESPACE=shop
//! cargo run -p hutch-rs-examples --bin shop -- consumers
//! cargo run -p hutch-rs-examples --bin shop -- topology
//! cargo run -p hutch-rs-examples --bin shop -- asyncapi > asyncapi.json
//! cargo run -p hutch-rs-examples --bin shop -- publish orders.placed '{"order_id": 0, "total_cents": 100}'
//! cargo run -p hutch-rs-examples --bin shop                          # run (Ctrl-C to stop)
//! cargo run -p hutch-rs-examples --bin shop -- dead list send_receipt
//! SHOP_RECEIPTS_FIXED=1 cargo run -p hutch-rs-examples --bin shop -- dead replay send_receipt
//! ```

use std::process::ExitCode;

use hutch_rs::{BoxError, Hutch, Message, consumer};
use serde::{Deserialize, Serialize};

/// What the order service publishes when an order is placed.
#[derive(Debug, Serialize, Deserialize, schemars::JsonSchema)]
struct OrderPlaced {
    /// The order.
    order_id: u64,
    /// Its total, in cents.
    total_cents: u64,
}

/// Queue `shop:send_receipt`. Order 0 has no customer: its receipt fails
/// until `SHOP_RECEIPTS_FIXED` is set (the bug fixed), and lands in
/// `shop:send_receipt:dead` once its attempts are spent.
#[consumer(
    routing_key = "orders.placed",
    max_attempts = 2,
    retry_min_delay = "200ms"
)]
async fn send_receipt(msg: Message<OrderPlaced>) -> Result<(), BoxError> {
    if msg.order_id == 0 && std::env::var_os("SHOP_RECEIPTS_FIXED").is_none() {
        return Err("order 0 has no customer to send a receipt to".into());
    }
    println!(
        "receipt: order {} ({} cents)",
        msg.order_id, msg.total_cents
    );
    Ok(())
}

/// Queue `shop:order_audit`: every order event, whatever its shape.
#[consumer(routing_key = "orders.#", queue = "order_audit")]
async fn audit(msg: Message<serde_json::Value>) -> Result<(), BoxError> {
    println!("audit:   {} {}", msg.routing_key(), msg.body());
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    hutch_rs::cli::main(Hutch::builder()).await
}
