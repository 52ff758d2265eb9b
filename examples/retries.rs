//! Failure handling: a consumer whose first attempts fail is retried with
//! backoff; a message it can never handle goes to its dead-letter queue; an
//! error hook sees every failure. With a private broker (no HUTCH_URI).
//!
//! ```sh
//! cargo run --example retries
//! ```

use std::time::Duration;

use hutch_rs::{BoxError, Decision, Failure, Hutch, Message, Outcome, consumer};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct Charge {
    order_id: u64,
    amount_cents: i64,
}

// ANCHOR: consumer
#[consumer(
    routing_key = "payments.charge",
    max_attempts = 4,          // handled at most 4 times, then `<queue>:dead`
    retry_min_delay = "200ms", // 200 ms, 400 ms, 800 ms… (±20 % jitter)
    retry_max_delay = "5s",
    timeout = "10s"            // a call running longer counts as failed
)]
async fn charge_card(msg: Message<Charge>) -> Result<(), BoxError> {
    if msg.amount_cents <= 0 {
        // No retry can fix this one: dead-letter it now, saying why.
        return Err(
            Decision::dead_letter(format!("amount {} is not positive", msg.amount_cents)).into(),
        );
    }
    if msg.attempt() < 3 {
        // A plain error: the retry policy decides (here: try again later).
        return Err(format!("payment provider unavailable (attempt {})", msg.attempt()).into());
    }
    println!(
        "charged order {} on attempt {}",
        msg.order_id,
        msg.attempt()
    );
    CHARGED.notify_one();
    Ok(())
}
// ANCHOR_END: consumer

/// Tells `main` that a charge went through.
static CHARGED: tokio::sync::Notify = tokio::sync::Notify::const_new();

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let private_broker = match std::env::var("HUTCH_URI") {
        Ok(_) => None,
        Err(_) => Some(tokio::task::spawn_blocking(hutch_rs::testing::Broker::start).await??),
    };
    let (dead_lettered, mut dead_letters) = tokio::sync::mpsc::unbounded_channel();

    // ANCHOR: hook
    let mut builder =
        Hutch::builder()
            .namespace("retries-example")
            .on_error(move |failure: Failure| {
                let dead_lettered = dead_lettered.clone();
                async move {
                    // Report to your error tracker here. A hook runs on a worker
                    // of its own, one failure at a time from a bounded queue:
                    // it cannot slow down or break the consumer.
                    println!(
                        "{} failed on attempt {} of message {:?}: {} -> {:?}",
                        failure.consumer(),
                        failure.attempt(),
                        failure.message_id(),
                        failure.error(),
                        failure.outcome(),
                    );
                    if let Outcome::DeadLettered { .. } = failure.outcome() {
                        let _ = dead_lettered.send(());
                    }
                    Ok::<_, BoxError>(())
                }
            });
    // ANCHOR_END: hook
    if let Some(broker) = &private_broker {
        builder = builder.uri(broker.amqp_uri());
    }
    let hutch = builder.build()?;
    let running = hutch.start().await?;

    hutch
        .publish(
            "payments.charge",
            &Charge {
                order_id: 1,
                amount_cents: 1_999,
            },
        )
        .await?;
    hutch
        .publish(
            "payments.charge",
            &Charge {
                order_id: 2,
                amount_cents: -5,
            },
        )
        .await?;

    // Order 2 is dead-lettered at once; order 1 succeeds on its third
    // attempt, about 0.6 s later.
    tokio::time::timeout(Duration::from_secs(30), async {
        tokio::join!(dead_letters.recv(), CHARGED.notified())
    })
    .await?;
    running.shutdown().await?;
    hutch.close().await?;
    if let Some(broker) = &private_broker {
        let dead = broker.queue("retries-example:charge_card:dead")?;
        println!(
            "in the dead-letter queue: {:?}",
            dead.map(|queue| queue.messages)
        );
    }
    Ok(())
}
