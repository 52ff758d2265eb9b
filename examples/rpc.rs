//! Request and reply: a consumer answers price quotes with
//! `Context::reply`; a requester sends several requests at once from
//! several tasks, then two that fail: one no queue is bound for, and one
//! that reaches a queue whose consumer never replies. With a private broker
//! when HUTCH_URI is not set.
//!
//! ```sh
//! cargo run --example rpc
//! ```

use std::time::{Duration, Instant};

use hutch_rs::{BoxError, Context, Error, Hutch, Message, consumer};
use serde::{Deserialize, Serialize};

// ANCHOR: types
/// What a requester asks.
#[derive(Debug, Serialize, Deserialize)]
struct Quote {
    sku: u64,
    quantity: u64,
}

/// What the replier answers.
#[derive(Debug, Serialize, Deserialize)]
struct Price {
    sku: u64,
    total_cents: u64,
}
// ANCHOR_END: types

// ANCHOR: replier
/// An ordinary consumer that answers each request it handles. Four calls at
/// once: the requests of many requesters wait in this one queue.
#[consumer(routing_key = "prices.quote", concurrency = 4)]
async fn quote(msg: Message<Quote>, ctx: Context) -> Result<(), BoxError> {
    let price = Price {
        sku: msg.sku,
        total_cents: msg.sku * 250 * msg.quantity,
    };
    // To the request's `reply_to`, with its correlation id, confirmed. An
    // `Err` (a message that asked for no reply) fails the message like any
    // other error.
    ctx.reply(&price).await?;
    Ok(())
}
// ANCHOR_END: replier

/// Records every price message and replies to none: a request routed only
/// here gets no answer.
#[consumer(routing_key = "prices.#", queue = "price_audit")]
async fn audit(msg: Message<serde_json::Value>) -> Result<(), BoxError> {
    println!("audit:   {} {}", msg.routing_key(), msg.body());
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let private_broker = match std::env::var("HUTCH_URI") {
        Ok(_) => None,
        Err(_) => {
            println!("HUTCH_URI is not set: starting a private RabbitMQ node (about 10 s)...");
            Some(tokio::task::spawn_blocking(hutch_rs::testing::Broker::start).await??)
        }
    };
    // ANCHOR: builder
    let mut builder = Hutch::builder()
        .namespace("rpc-example")
        // No reply within 2 s is an error (default 30 s, HUTCH_REQUEST_TIMEOUT).
        .request_timeout(Duration::from_secs(2));
    // ANCHOR_END: builder
    if let Some(broker) = &private_broker {
        builder = builder.uri(broker.amqp_uri());
    }
    let hutch = builder.build()?;
    // Declares the queues, so requests published from now on are routed.
    let running = hutch.start().await?;

    // ANCHOR: requests
    // Five requests in flight at once, from five tasks, over one channel:
    // each reply finds its request by correlation id, in whatever order
    // they come.
    let mut requests = tokio::task::JoinSet::new();
    for sku in 1..=5 {
        let hutch = hutch.clone();
        requests.spawn(async move {
            let quote = Quote { sku, quantity: 2 };
            let price: Price = hutch.request("prices.quote", &quote).await?;
            Ok::<_, Error>((quote, price))
        });
    }
    while let Some(answered) = requests.join_next().await {
        let (quote, price) = answered??;
        println!(
            "reply:   {} x sku {} cost {:.2} EUR",
            quote.quantity,
            price.sku,
            price.total_cents as f64 / 100.0
        );
    }
    // ANCHOR_END: requests

    // ANCHOR: failures
    let one = Quote {
        sku: 1,
        quantity: 1,
    };
    // No queue is bound for this key: the broker returns the request, and
    // it fails at once rather than wait for a reply that cannot come.
    let started = Instant::now();
    let unroutable = hutch.request::<_, Price>("stock.check", &one);
    match unroutable.await {
        Err(error @ Error::Unroutable { .. }) => {
            println!("error after {:.1?}: {error}", started.elapsed());
        }
        other => return Err(format!("expected Unroutable, got {other:?}").into()),
    }

    // `audit` takes this one and never replies: the request timeout ends
    // the wait.
    let started = Instant::now();
    let unanswered = hutch.request::<_, Price>("prices.archive", &one);
    match unanswered.await {
        Err(error @ Error::RequestTimeout { .. }) => {
            println!("error after {:.1?}: {error}", started.elapsed());
        }
        other => return Err(format!("expected RequestTimeout, got {other:?}").into()),
    }
    // ANCHOR_END: failures

    running.shutdown().await?;
    hutch.close().await?;
    Ok(())
}
