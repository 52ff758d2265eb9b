//! The supervision tree seen from the application: a status snapshot for a
//! health check, and the stream of events. With a private broker (no
//! HUTCH_URI) it also closes every connection on the broker's side and shows
//! the tree coming back by itself.
//!
//! ```sh
//! cargo run --example health_check
//! ```

use std::time::Duration;

use hutch_rs::{BoxError, Event, Hutch, Message, Status, consumer};

#[consumer(routing_key = "pings.#")]
async fn record_ping(msg: Message<serde_json::Value>) -> Result<(), BoxError> {
    println!("ping {}", msg.body());
    Ok(())
}

// ANCHOR: health
/// A text report: ready or not and why, then every connection and consumer.
/// (`examples/health_http.rs` serves the same answers over HTTP.)
fn health(status: &Status) -> String {
    let readiness = status.readiness();
    let mut report = if readiness.is_ok() {
        "ready".to_owned()
    } else {
        format!("not ready: {readiness}")
    };
    for connection in &status.connections {
        report += &format!(
            "\n  connection {:<7} {} (opened {} time(s){})",
            connection.purpose,
            connection.state,
            connection.connects,
            if connection.blocked {
                ", BLOCKED by the broker"
            } else {
                ""
            },
        );
    }
    for consumer in &status.consumers {
        report += &format!(
            "\n  consumer {} on {}: {}, channel {:?}, {} restart(s)",
            consumer.consumer, consumer.queue, consumer.state, consumer.channel, consumer.restarts,
        );
    }
    report
}
// ANCHOR_END: health

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let private_broker = match std::env::var("HUTCH_URI") {
        Ok(_) => None,
        Err(_) => Some(tokio::task::spawn_blocking(hutch_rs::testing::Broker::start).await??),
    };
    let mut builder = Hutch::builder().namespace("health-example");
    if let Some(broker) = &private_broker {
        builder = builder.uri(broker.amqp_uri());
    }
    let hutch = builder.build()?;

    // ANCHOR: events
    let mut events = hutch.events();
    let (healed, mut healed_rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            println!("event: {event:?}");
            if let Event::ConsumerStarted { .. } = event {
                let _ = healed.send(());
            }
        }
    });
    // ANCHOR_END: events

    let running = hutch.start().await?;
    healed_rx.recv().await;
    hutch
        .publish("pings.first", &serde_json::json!({ "n": 1 }))
        .await?;
    println!("{}", health(&hutch.status()));

    if let Some(broker) = &private_broker {
        println!("closing every connection on the broker's side...");
        broker.close_all_connections("health_check example")?;
        // The consumer is back once it has started again on a new channel.
        tokio::time::timeout(Duration::from_secs(30), healed_rx.recv()).await?;
        hutch
            .publish("pings.second", &serde_json::json!({ "n": 2 }))
            .await?;
        println!("{}", health(&hutch.status()));
    }

    running.shutdown().await?;
    hutch.close().await?;
    Ok(())
}
