//! The health endpoints of `examples/health.rs` against a private RabbitMQ
//! node of this test's own (it stops the node's application, which a shared
//! node's other users would not survive): not ready before the consumers
//! start, ready once they consume, not ready but live while the broker is
//! away, ready again once it is back, and neither ready nor live once the
//! consumer has failed for good.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{
    Router,
    body::{Body, to_bytes},
    http::{Request, StatusCode, header},
};
use hutch_rs::{BoxError, EventStream, Hutch, Message, consumer, testing::Broker};
use hutch_rs_examples::health::{self, Started};
use serde_json::Value;
use tower::ServiceExt;

/// How long the tree may take to notice a stopped broker, or to come back.
const PATIENCE: Duration = Duration::from_secs(60);

#[consumer(routing_key = "health.#")]
async fn health_probe_sink(_msg: Message<serde_json::Value>) -> Result<(), BoxError> {
    Ok(())
}

/// One request to the router, as a probe would send it.
async fn probe(app: &Router, path: &str) -> (StatusCode, Value) {
    let response = app
        .clone()
        .oneshot(Request::get(path).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let code = response.status();
    assert_eq!(response.headers()[header::CACHE_CONTROL], "no-store");
    let body = to_bytes(response.into_body(), 1 << 20).await.unwrap();
    let body = serde_json::from_slice(&body).expect("a JSON body");
    (code, body)
}

/// Probes `path` until `done` holds, between the tree's events (and every
/// 100 ms, since a consumer's wait for its channel is no event), or panics
/// with the last answer after [`PATIENCE`].
async fn probe_until(
    app: &Router,
    events: &mut EventStream,
    path: &str,
    done: impl Fn(StatusCode, &Value) -> bool,
) -> Value {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (code, body) = probe(app, path).await;
        if done(code, &body) {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "{path} never got there; last answer {code}: {body:#}"
        );
        let _ = tokio::time::timeout(Duration::from_millis(100), events.recv()).await;
    }
}

fn problems(body: &Value) -> Vec<&str> {
    body["problems"]
        .as_array()
        .expect("problems")
        .iter()
        .map(|problem| problem.as_str().expect("a problem is text"))
        .collect()
}

async fn rabbitmqctl(broker: &Arc<Broker>, args: &'static [&'static str]) {
    let broker = broker.clone();
    tokio::task::spawn_blocking(move || broker.rabbitmqctl(args))
        .await
        .unwrap()
        .unwrap_or_else(|error| panic!("rabbitmqctl {args:?}: {error}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_only_while_connected_and_consuming_live_until_a_consumer_fails_for_good() {
    let broker = Arc::new(
        tokio::task::spawn_blocking(Broker::start)
            .await
            .unwrap()
            .expect("start a private node"),
    );
    let hutch = Hutch::builder()
        .uri(broker.amqp_uri())
        .namespace("health-http-test")
        // No restart allowed: the consumer's first failure is final, which
        // is what liveness reports (a lost connection is no such failure).
        .restart_intensity(0, Duration::from_secs(60))
        .build()
        .unwrap();
    let mut events = hutch.events();
    let started = Started::new();
    let app = health::router(hutch.clone(), started.clone());
    let consumer = "health_http::health_probe_sink";

    // Before start: nothing fails, but nothing consumes yet either.
    let (code, body) = probe(&app, "/health/ready").await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{body:#}");
    assert_eq!(problems(&body), ["the consumers have not started yet"]);
    assert_eq!(probe(&app, "/health/live").await.0, StatusCode::OK);

    let running = hutch.start().await.unwrap();
    started.set();
    hutch
        .publish("health.first", &serde_json::json!({ "n": 1 }))
        .await
        .unwrap();
    let (code, body) = probe(&app, "/health/ready").await;
    println!("ready, {code}:\n{body:#}");
    assert_eq!(code, StatusCode::OK, "{body:#}");
    assert_eq!(body["ok"], true);
    assert!(problems(&body).is_empty());
    assert_eq!(body["consumers"][0]["consumer"], consumer);
    assert_eq!(body["consumers"][0]["state"], "consuming");
    assert_eq!(body["connections"].as_array().unwrap().len(), 2);
    assert_eq!(probe(&app, "/health/live").await.0, StatusCode::OK);

    // The broker goes away: not ready, naming the connections and the
    // consumer, and why; still live, since waiting is all that helps.
    rabbitmqctl(&broker, &["stop_app"]).await;
    let body = probe_until(&app, &mut events, "/health/ready", |code, body| {
        let problems = problems(body);
        code == StatusCode::SERVICE_UNAVAILABLE
            && problems
                .iter()
                .any(|problem| problem.starts_with("connection consume is connecting: "))
            && problems.contains(
                &"consumer health_http::health_probe_sink on queue \
                  health-http-test:health_probe_sink is waiting for its channel",
            )
    })
    .await;
    println!("not ready, 503:\n{body:#}");
    assert_eq!(body["ok"], false);
    assert_eq!(body["check"], "ready");
    let (code, live) = probe(&app, "/health/live").await;
    assert_eq!(code, StatusCode::OK, "{live:#}");
    assert_eq!(live["ok"], true);

    // The broker is back: ready again, by itself.
    rabbitmqctl(&broker, &["start_app"]).await;
    let body = probe_until(&app, &mut events, "/health/ready", |code, _| {
        code == StatusCode::OK
    })
    .await;
    assert!(problems(&body).is_empty(), "{body:#}");
    assert_eq!(probe(&app, "/health/live").await.0, StatusCode::OK);

    // The consumer's queue deleted, as an operator might: the broker
    // cancels the consumer, and with no restart allowed it has failed for
    // good. Waiting cannot mend that; a restarted process would declare
    // the queue again: not live.
    let deleted = broker.clone();
    tokio::task::spawn_blocking(move || {
        deleted.management_request(
            "DELETE",
            "/queues/%2F/health-http-test%3Ahealth_probe_sink",
            None,
        )
    })
    .await
    .unwrap()
    .expect("delete the consumer's queue");
    let body = probe_until(&app, &mut events, "/health/live", |code, _| {
        code == StatusCode::SERVICE_UNAVAILABLE
    })
    .await;
    println!("not live, 503:\n{body:#}");
    let failed = "consumer health_http::health_probe_sink on queue \
                  health-http-test:health_probe_sink has failed and is not restarted: ";
    let live_problems = problems(&body);
    assert_eq!(live_problems.len(), 1, "{body:#}");
    assert!(live_problems[0].starts_with(failed), "{body:#}");
    assert_eq!(body["check"], "live");
    let (code, body) = probe(&app, "/health/ready").await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{body:#}");
    assert_eq!(problems(&body), live_problems, "{body:#}");

    running.shutdown().await.unwrap();
    hutch.close().await.unwrap();
    drop(events);
}
