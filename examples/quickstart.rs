//! The quickstart: two consumers, a few published orders, a clean shutdown.
//!
//! ```sh
//! cargo run --example quickstart                                   # starts a private RabbitMQ node
//! HUTCH_URI=amqp://guest:guest@127.0.0.1:5672/%2f cargo run --example quickstart
//! ```

use std::time::Duration;

use hutch_rs::{BoxError, Hutch, Message, consumer};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

// ANCHOR: message
/// What the order service publishes when an order is placed.
#[derive(Debug, Serialize, Deserialize)]
struct OrderPlaced {
    order_id: u64,
    customer: String,
    total_cents: u64,
}
// ANCHOR_END: message

/// One permit per receipt sent, so `main` knows when every order was handled.
static RECEIPTS_SENT: Semaphore = Semaphore::const_new(0);

// ANCHOR: consumers
/// Queue `quickstart:send_receipt`, bound with `orders.placed`.
#[consumer(routing_key = "orders.placed")]
async fn send_receipt(msg: Message<OrderPlaced>) -> Result<(), BoxError> {
    println!(
        "receipt: order {} for {}, {:.2} EUR (message {})",
        msg.order_id,
        msg.customer,
        msg.total_cents as f64 / 100.0,
        msg.message_id().unwrap_or("-"),
    );
    RECEIPTS_SENT.add_permits(1);
    Ok(())
}

/// Queue `quickstart:order_audit`, bound with `orders.#`: every order event.
#[consumer(routing_key = "orders.#", queue = "order_audit")]
async fn audit(msg: Message<serde_json::Value>) -> Result<(), BoxError> {
    println!("audit:   {} {}", msg.routing_key(), msg.body());
    Ok(())
}
// ANCHOR_END: consumers

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "hutch_rs=info".into()),
        )
        .init();

    // Use the broker in HUTCH_URI, or start a private one for the demo.
    let private_broker = match std::env::var("HUTCH_URI") {
        Ok(_) => None,
        Err(_) => {
            println!("HUTCH_URI is not set: starting a private RabbitMQ node (about 10 s)...");
            Some(tokio::task::spawn_blocking(hutch_rs::testing::Broker::start).await??)
        }
    };
    let mut builder = Hutch::builder().namespace("quickstart");
    if let Some(broker) = &private_broker {
        builder = builder.uri(broker.amqp_uri());
    }

    // ANCHOR: run
    let hutch = builder.build()?;
    // Declares the exchange, the queues and their bindings, then consumes.
    let running = hutch.start().await?;

    let customers = ["ada", "grace", "linus"];
    for (n, customer) in customers.iter().enumerate() {
        let order = OrderPlaced {
            order_id: 1000 + n as u64,
            customer: customer.to_string(),
            total_cents: 1999 * (n as u64 + 1),
        };
        // Resolves once the broker has confirmed the message.
        hutch.publish("orders.placed", &order).await?;
    }

    let all_sent = RECEIPTS_SENT.acquire_many(customers.len() as u32);
    tokio::time::timeout(Duration::from_secs(30), all_sent)
        .await??
        .forget();

    // Stops consuming, lets in-flight handlers finish, closes the connection.
    running.shutdown().await?;
    hutch.close().await?;
    // ANCHOR_END: run
    println!("all {} orders handled; bye", customers.len());
    Ok(())
}
