//! Liveness and readiness over HTTP, for Kubernetes or any orchestrator:
//! `GET /health/live` and `GET /health/ready` on 127.0.0.1 (port
//! `HEALTH_PORT`, default 8080), answering 200 or 503 with a JSON report
//! (the routes are in `examples/health.rs`).
//!
//! ```sh
//! cargo run --example health_http
//! curl -i localhost:8080/health/ready
//! curl -i localhost:8080/health/live
//! ```
//!
//! Without HUTCH_URI it starts a private RabbitMQ node. With a HUTCH_URI
//! that nothing answers on (e.g. `amqp://guest:guest@127.0.0.1:1/%2f`),
//! `/health/ready` says 503 with why, and `/health/live` stays 200: the
//! process waits for the broker, and restarting it would not bring the
//! broker back.

use hutch_rs::{BoxError, Hutch, Message, consumer};
use hutch_rs_examples::health::{self, Started};

#[consumer(routing_key = "pings.#")]
async fn record_ping(msg: Message<serde_json::Value>) -> Result<(), BoxError> {
    println!("ping {}", msg.body());
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "hutch_rs=info".into()),
        )
        .init();

    let private_broker = match std::env::var("HUTCH_URI") {
        Ok(_) => None,
        Err(_) => {
            println!("HUTCH_URI is not set: starting a private RabbitMQ node (about 10 s)...");
            Some(tokio::task::spawn_blocking(hutch_rs::testing::Broker::start).await??)
        }
    };
    let mut builder = Hutch::builder().namespace("health-http");
    if let Some(broker) = &private_broker {
        builder = builder.uri(broker.amqp_uri());
    }
    let hutch = builder.build()?;

    // ANCHOR: serve
    // The probes are served before the consumers start: a start that waits
    // for a broker that is away must still answer liveness (200) and
    // readiness (503, saying why).
    let port: u16 = match std::env::var("HEALTH_PORT") {
        Ok(port) => port.parse()?,
        Err(_) => 8080,
    };
    let started = Started::new();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!(
        "probes on http://{}/health/{{live,ready}}",
        listener.local_addr()?
    );
    let app = health::router(hutch.clone(), started.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let running = tokio::select! {
        running = hutch.start() => running?,
        _ = tokio::signal::ctrl_c() => return Ok(()),
    };
    started.set();
    // ANCHOR_END: serve
    hutch
        .publish("pings.first", &serde_json::json!({ "n": 1 }))
        .await?;

    // Until Ctrl-C. A consumer that fails for good stays failed, and the
    // liveness probe says so: the orchestrator restarts the process with
    // the reason on record (an application that serves nothing else can
    // end instead, as `Hutch::run_until` does).
    tokio::signal::ctrl_c().await?;
    running.shutdown().await?;
    hutch.close().await?;
    Ok(())
}
