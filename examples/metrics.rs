//! hutch-rs's metrics (feature `metrics`) served to Prometheus: the
//! exporter of `metrics-exporter-prometheus` listens on
//! `127.0.0.1:$METRICS_PORT` (default 9898), a little workload runs (orders
//! handled, one retried, one unroutable publish), and the example scrapes
//! its own `/metrics` endpoint and prints the hutch series it served. With no
//! HUTCH_URI, it starts a private broker.
//!
//! ```sh
//! cargo run -p hutch-rs-examples --example metrics
//! ```

use std::{
    net::{Ipv4Addr, SocketAddr},
    time::Duration,
};

use hutch_rs::{BoxError, Hutch, Message, PublishOptions, consumer};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct OrderPlaced {
    order_id: u64,
}

/// Order 3 fails on its first attempt, to show a retry.
#[consumer(routing_key = "orders.#", retry_min_delay = "100ms")]
async fn count_order(msg: Message<OrderPlaced>) -> Result<(), BoxError> {
    if msg.order_id == 3 && msg.attempt() == 1 {
        return Err("the ledger is locked".into());
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let port: u16 = match std::env::var("METRICS_PORT") {
        Ok(port) => port.parse()?,
        Err(_) => 9898,
    };
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    // ANCHOR: install
    // Installed before the `Hutch` is built, so that it gets the metrics'
    // descriptions (`# HELP`). Buckets make the `_seconds` histograms
    // Prometheus histograms; without them the exporter renders summaries.
    PrometheusBuilder::new()
        .with_http_listener(address)
        .set_buckets_for_metric(
            Matcher::Suffix("_seconds".to_owned()),
            &[0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0],
        )?
        .install()?;
    // ANCHOR_END: install

    let private_broker = match std::env::var("HUTCH_URI") {
        Ok(_) => None,
        Err(_) => Some(tokio::task::spawn_blocking(hutch_rs::testing::Broker::start).await??),
    };
    let mut builder = Hutch::builder().namespace("metrics-example");
    if let Some(broker) = &private_broker {
        builder = builder.uri(broker.amqp_uri());
    }
    let hutch = builder.build()?;
    let running = hutch.start().await?;

    for order_id in 1..=4 {
        hutch
            .publish("orders.placed", &OrderPlaced { order_id })
            .await?;
    }
    // Bound to no queue: the broker returns it, the publish fails.
    let unroutable = hutch
        .publish_with(
            "invoices.sent",
            &OrderPlaced { order_id: 5 },
            PublishOptions::new().mandatory(),
        )
        .await;
    println!("mandatory publish to nowhere: {unroutable:?}");

    // Scrape until the four orders are acknowledged (order 3 after its
    // retry): what Prometheus would read from the endpoint.
    let url = format!("http://{address}/metrics");
    let acked =
        "hutch_messages_handled_total{consumer=\"metrics::count_order\",outcome=\"acked\"} 4";
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let scrape = loop {
        let scrape = scrape(url.clone()).await?;
        if scrape.contains(acked) {
            break scrape;
        }
        if tokio::time::Instant::now() > deadline {
            return Err(format!("never served `{acked}`:\n{scrape}").into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!("GET {url}:");
    for line in scrape.lines().filter(|line| line.contains("hutch_")) {
        println!("{line}");
    }

    running.shutdown().await?;
    hutch.close().await?;
    Ok(())
}

/// One scrape of the endpoint, as Prometheus would make it.
async fn scrape(url: String) -> Result<String, BoxError> {
    let body =
        tokio::task::spawn_blocking(move || ureq::get(&url).call()?.body_mut().read_to_string())
            .await??;
    Ok(body)
}
