//! Liveness and readiness endpoints over [`Hutch::status`], for an
//! orchestrator's probes: `GET /health/live` and `GET /health/ready` answer
//! `200 OK` when the check passes and `503 Service Unavailable` when it
//! fails, with a JSON body that names every problem and shows every
//! connection and consumer.
//!
//! Used by `examples/health_http.rs` and tested against a real broker in
//! `examples/tests/health_http.rs`.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use axum::{
    Json, Router,
    extract::State,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use hutch_rs::{Health, Hutch, Status};
use serde_json::{Value, json};

/// Set once [`Hutch::start`] has returned: every consumer consumed then.
///
/// Readiness needs it because a [`Status`] holds only what exists, and
/// before `start` there is no consumer to be waiting (see
/// [`Status::readiness`]): without it an instance would be ready from the
/// moment it serves HTTP until its consumers are tracked.
#[derive(Debug, Clone, Default)]
pub struct Started(Arc<AtomicBool>);

impl Started {
    /// Not started yet.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Marks the consumers started: call it when `start` has returned.
    pub fn set(&self) {
        self.0.store(true, Ordering::Release);
    }

    fn get(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

#[derive(Debug, Clone)]
struct Probes {
    hutch: Hutch,
    started: Started,
}

// ANCHOR: router
/// The two probes' routes: `GET /health/live` and `GET /health/ready`
/// (`HEAD` too). Serve it on its own port or merge it into the
/// application's router.
pub fn router(hutch: Hutch, started: Started) -> Router {
    Router::new()
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .with_state(Probes { hutch, started })
}

/// Liveness: fails only when hutch-rs gave up on a connection or a
/// consumer; a broker that is away fails readiness, not this (see
/// `Status::liveness`).
async fn live(State(probes): State<Probes>) -> Response {
    let status = probes.hutch.status();
    answer("live", &status.liveness(), &status)
}

/// Readiness: every connection up and unblocked, and every selected
/// consumer consuming since `start` returned.
async fn ready(State(probes): State<Probes>) -> Response {
    let status = probes.hutch.status();
    let mut readiness = status.readiness();
    if !probes.started.get() {
        readiness
            .problems
            .insert(0, "the consumers have not started yet".to_owned());
    }
    answer("ready", &readiness, &status)
}
// ANCHOR_END: router

fn answer(check: &str, health: &Health, status: &Status) -> Response {
    let code = if health.is_ok() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "check": check,
        "ok": health.is_ok(),
        "problems": health.problems,
        "connections": status.connections.iter().map(|connection| json!({
            "purpose": connection.purpose,
            "state": connection.state.to_string(),
            "broker": connection.broker,
            "blocked": connection.blocked,
            "connects": connection.connects,
            "last_error": connection.last_error,
        })).collect::<Vec<Value>>(),
        "consumers": status.consumers.iter().map(|consumer| json!({
            "consumer": consumer.consumer,
            "queue": consumer.queue,
            "state": consumer.state.to_string(),
            "channel": consumer.channel,
            "restarts": consumer.restarts,
            "last_error": consumer.last_error,
        })).collect::<Vec<Value>>(),
    });
    let mut response = (code, Json(body)).into_response();
    // A probe's answer is about this instant; nothing between the prober
    // and the instance may keep it.
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
