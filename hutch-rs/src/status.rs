//! A snapshot of the supervision tree, for health checks and dashboards.

use std::fmt;

/// What [`Hutch::status`](crate::Hutch::status) returns: every connection
/// and every consumer, as they are at the moment of the call.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Status {
    /// The connections hutch-rs owns: `consume` (while consumers run) and
    /// `publish` (once something was published).
    pub connections: Vec<ConnectionStatus>,
    /// The consumers started by [`Hutch::start`](crate::Hutch::start).
    pub consumers: Vec<ConsumerStatus>,
    /// Failures that an error hook was never called with, counted once per
    /// hook that missed one: the hook's queue was full (it holds
    /// [`ERROR_HOOK_QUEUE_CAPACITY`](crate::ERROR_HOOK_QUEUE_CAPACITY)
    /// failures), or the hook was still busy at the shutdown deadline and
    /// what it had queued was abandoned. Since the `Hutch` was built; not
    /// part of [`is_healthy`](Self::is_healthy).
    pub hook_failures_dropped: u64,
    /// Replies that reached this instance when no request was waiting for
    /// them, and were dropped: replies that came after their request had
    /// timed out (or its caller had stopped waiting), or whose correlation
    /// id names no request. Never delivered to another request. Since the
    /// `Hutch` was built; not part of [`is_healthy`](Self::is_healthy). A
    /// count that grows says the request timeout is shorter than the time
    /// consumers take to answer.
    pub late_replies: u64,
}

impl Status {
    /// Healthy: every connection is up and not blocked, and every consumer
    /// consumes. The same answer as [`readiness`](Self::readiness), without
    /// the words.
    #[must_use]
    pub fn is_healthy(&self) -> bool {
        self.readiness().is_ok()
    }

    /// Whether this instance should get work now: what a readiness probe
    /// answers (Kubernetes' `readinessProbe`, a load balancer's health
    /// check). Ready when every connection is connected and not blocked by
    /// the broker, and every consumer consumes; otherwise
    /// [`Health::problems`] says, one sentence per connection or consumer,
    /// what is not (e.g. `connection consume is connecting: IO error:
    /// Connection refused (os error 111)`).
    ///
    /// A failed readiness check takes the instance out of the traffic it is
    /// sent (an HTTP service's requests that would publish) and is expected
    /// to clear by itself: a connection coming back, a consumer getting its
    /// channel again, a memory or disk alarm clearing. A blocked connection
    /// makes every instance unready at once, since the alarm is the
    /// broker's: publishes would wait or fail with
    /// [`Error::Blocked`](crate::Error::Blocked) on each of them.
    ///
    /// The snapshot holds only what exists: the `publish` connection once
    /// something was published, the consumers once
    /// [`Hutch::start`](crate::Hutch::start) was called. A `Hutch` that has
    /// neither (not started yet, or a publisher that has not published) has
    /// nothing failing and is ready; an application that must not be ready
    /// before its consumers start says so itself, e.g. by answering "not
    /// ready" until `start` has returned (as `examples/health_http.rs`
    /// does). After [`Running::shutdown`](crate::Running::shutdown) the
    /// stopped consumers and closed connection make it not ready, which is
    /// what an instance shutting down should answer.
    #[must_use]
    pub fn readiness(&self) -> Health {
        let mut problems = Vec::new();
        for connection in &self.connections {
            if connection.state != ConnectionState::Connected {
                problems.push(connection.problem());
            }
            if connection.blocked {
                problems.push(format!(
                    "connection {} is blocked by the broker (a memory or disk alarm)",
                    connection.purpose
                ));
            }
        }
        for consumer in &self.consumers {
            if consumer.state != ConsumerState::Consuming {
                problems.push(consumer.problem());
            }
        }
        Health { problems }
    }

    /// Whether this instance can still recover by itself: what a liveness
    /// probe answers (Kubernetes' `livenessProbe`, which restarts the
    /// container when it fails). Not live only when hutch-rs has given up
    /// and a restart of the process could help where waiting cannot: a
    /// connection [`Failed`](ConnectionState::Failed) (a fatal error, such
    /// as refused credentials, which a restart reads again from its
    /// configuration and secrets) or a consumer
    /// [`Failed`](ConsumerState::Failed) (past its restart intensity, or
    /// refused by the broker).
    ///
    /// A connection that is down and reconnecting, a consumer waiting for
    /// its channel or restarting, and a blocked connection do **not** fail
    /// liveness: hutch-rs reconnects and restarts them itself, and during a
    /// broker outage every instance would fail the probe at once, so the
    /// orchestrator would restart them all, over and over, for as long as
    /// the broker is away. Restarts add nothing then: a new process waits
    /// for the same broker, and it loses the messages its handlers were in
    /// the middle of (the broker delivers them again), its backoff state,
    /// and its warm caches. Those answers belong to
    /// [`readiness`](Self::readiness).
    ///
    /// An application that runs [`Hutch::run_until`](crate::Hutch::run_until)
    /// (or [`hutch_rs::run`](crate::run)) ends with the failure already: a
    /// liveness probe matters when it keeps running after a failure, e.g.
    /// because it also serves HTTP.
    #[must_use]
    pub fn liveness(&self) -> Health {
        let connections = self
            .connections
            .iter()
            .filter(|connection| connection.state == ConnectionState::Failed)
            .map(ConnectionStatus::problem);
        let consumers = self
            .consumers
            .iter()
            .filter(|consumer| consumer.state == ConsumerState::Failed)
            .map(ConsumerStatus::problem);
        Health {
            problems: connections.chain(consumers).collect(),
        }
    }

    /// The status of the connection with this purpose (`"consume"` or
    /// `"publish"`).
    #[must_use]
    pub fn connection(&self, purpose: &str) -> Option<&ConnectionStatus> {
        self.connections
            .iter()
            .find(|connection| connection.purpose == purpose)
    }

    /// The status of one consumer, by function path (`module::function`) or
    /// queue name.
    #[must_use]
    pub fn consumer(&self, name_or_queue: &str) -> Option<&ConsumerStatus> {
        self.consumers
            .iter()
            .find(|consumer| consumer.consumer == name_or_queue || consumer.queue == name_or_queue)
    }
}

/// The answer to a health check: [`Status::readiness`] or
/// [`Status::liveness`]. It passes when it names no problem.
///
/// Its [`Display`](fmt::Display) is `ok`, or the problems separated by `; `,
/// for a plain-text answer or a log line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Health {
    /// What fails, one sentence per connection or consumer, naming it and
    /// saying why when the reason is known: e.g. `connection consume is
    /// connecting: IO error: Connection refused (os error 111)`, `consumer
    /// shop::send_receipt on queue shop:send_receipt is waiting for its
    /// channel`, `connection publish is blocked by the broker (a memory or
    /// disk alarm)`. Empty when the check passes.
    pub problems: Vec<String>,
}

impl Health {
    /// Whether the check passes: no problem.
    ///
    /// (A method rather than a field beside `problems`, so that the two
    /// cannot disagree.)
    #[must_use]
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_ok() {
            f.write_str("ok")
        } else {
            f.write_str(&self.problems.join("; "))
        }
    }
}

/// One connection.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectionStatus {
    /// `"consume"` or `"publish"`.
    pub purpose: &'static str,
    /// Up, down, or given up.
    pub state: ConnectionState,
    /// The broker node connected to (password masked), while connected.
    pub broker: Option<String>,
    /// Whether the broker has blocked the connection (a memory or disk alarm).
    pub blocked: bool,
    /// How many times the connection was established.
    pub connects: u64,
    /// Why the connection could not be opened or was lost, while it is not
    /// open (e.g. "IO error: Connection refused (os error 111)"): what a
    /// health check or an operator needs to see first.
    pub last_error: Option<String>,
}

/// The state of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectionState {
    /// Connecting, or waiting to reconnect after a loss.
    Connecting,
    /// Open.
    Connected,
    /// Closed on request.
    Closed,
    /// Given up after a fatal error (refused credentials, unknown vhost).
    Failed,
}

/// One consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConsumerStatus {
    /// The consumer function, `module::function`.
    pub consumer: String,
    /// Its queue.
    pub queue: String,
    /// What it is doing.
    pub state: ConsumerState,
    /// How many times it was restarted after a failure (connection losses
    /// are not counted: they restart the connection, not the consumer).
    pub restarts: u32,
    /// The channel it consumes on, while it has one.
    pub channel: Option<u16>,
    /// Acknowledgements not sent because the delivery's channel had closed
    /// (the broker redelivers those messages).
    pub stale_acks: u64,
    /// Why it failed (given up) or was last restarted, while it is not
    /// consuming; `None` once it consumes again. A connection lost under it
    /// is said by the connection's
    /// [`last_error`](ConnectionStatus::last_error), not here.
    pub last_error: Option<String>,
}

impl ConnectionStatus {
    /// What a failing health check says about this connection's state.
    fn problem(&self) -> String {
        let state = match self.state {
            ConnectionState::Connecting => "is connecting",
            ConnectionState::Connected => "is connected",
            ConnectionState::Closed => "is closed",
            ConnectionState::Failed => "has failed and is not retried",
        };
        with_reason(
            format!("connection {} {state}", self.purpose),
            self.last_error.as_deref(),
        )
    }
}

impl ConsumerStatus {
    /// What a failing health check says about this consumer's state.
    fn problem(&self) -> String {
        let state = match self.state {
            ConsumerState::WaitingForChannel => "is waiting for its channel".to_owned(),
            // Restarted since it last consumed (a start after a connection
            // loss is no restart, and keeps no reason).
            ConsumerState::Starting if self.last_error.is_some() => {
                format!("is restarting (restart {})", self.restarts)
            }
            ConsumerState::Starting => "is starting".to_owned(),
            ConsumerState::Consuming => "is consuming".to_owned(),
            ConsumerState::Stopped => "is stopped".to_owned(),
            ConsumerState::Failed => "has failed and is not restarted".to_owned(),
        };
        with_reason(
            format!("consumer {} on queue {} {state}", self.consumer, self.queue),
            self.last_error.as_deref(),
        )
    }
}

fn with_reason(problem: String, reason: Option<&str>) -> String {
    match reason {
        Some(reason) => format!("{problem}: {reason}"),
        None => problem,
    }
}

/// The state of a consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConsumerState {
    /// Waiting for its channel (the connection is down or coming up).
    WaitingForChannel,
    /// Applying qos, declarations and `basic.consume` on its channel.
    Starting,
    /// Consuming.
    Consuming,
    /// Stopped on request.
    Stopped,
    /// Given up: past its restart intensity, or a fatal error.
    Failed,
}

impl fmt::Display for ConnectionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ConnectionState::Connecting => "connecting",
            ConnectionState::Connected => "connected",
            ConnectionState::Closed => "closed",
            ConnectionState::Failed => "failed",
        })
    }
}

impl fmt::Display for ConsumerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ConsumerState::WaitingForChannel => "waiting for channel",
            ConsumerState::Starting => "starting",
            ConsumerState::Consuming => "consuming",
            ConsumerState::Stopped => "stopped",
            ConsumerState::Failed => "failed",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connection(purpose: &'static str, state: ConnectionState) -> ConnectionStatus {
        ConnectionStatus {
            purpose,
            state,
            broker: (state == ConnectionState::Connected)
                .then(|| "amqp://guest:********@127.0.0.1:5672/%2f".to_owned()),
            blocked: false,
            connects: 1,
            last_error: None,
        }
    }

    fn consumer(name: &str, state: ConsumerState) -> ConsumerStatus {
        ConsumerStatus {
            consumer: format!("shop::{name}"),
            queue: format!("shop:{name}"),
            state,
            restarts: 0,
            channel: (state == ConsumerState::Consuming).then_some(1),
            stale_acks: 0,
            last_error: None,
        }
    }

    fn healthy() -> Status {
        Status {
            connections: vec![
                connection("consume", ConnectionState::Connected),
                connection("publish", ConnectionState::Connected),
            ],
            consumers: vec![
                consumer("send_receipt", ConsumerState::Consuming),
                consumer("audit", ConsumerState::Consuming),
            ],
            ..Status::default()
        }
    }

    #[test]
    fn everything_up_is_ready_and_live() {
        let status = healthy();
        assert_eq!(status.readiness(), Health::default());
        assert!(status.readiness().is_ok());
        assert!(status.liveness().is_ok());
        assert!(status.is_healthy());
        assert_eq!(status.readiness().to_string(), "ok");
    }

    #[test]
    fn nothing_to_report_is_ready_and_live() {
        // Not started, nothing published: nothing fails (see readiness's docs).
        let status = Status::default();
        assert!(status.readiness().is_ok());
        assert!(status.liveness().is_ok());
        assert!(status.is_healthy());
    }

    #[test]
    fn a_broker_outage_is_not_ready_but_live() {
        let mut status = healthy();
        let refused = "IO error: Connection refused (os error 111)".to_owned();
        for connection in &mut status.connections {
            connection.state = ConnectionState::Connecting;
            connection.last_error = Some(refused.clone());
        }
        for consumer in &mut status.consumers {
            consumer.state = ConsumerState::WaitingForChannel;
        }
        let readiness = status.readiness();
        assert!(!readiness.is_ok());
        assert_eq!(
            readiness.problems,
            [
                "connection consume is connecting: IO error: Connection refused (os error 111)",
                "connection publish is connecting: IO error: Connection refused (os error 111)",
                "consumer shop::send_receipt on queue shop:send_receipt is waiting for its channel",
                "consumer shop::audit on queue shop:audit is waiting for its channel",
            ]
        );
        assert!(!status.is_healthy());
        // Waiting for the broker is what the process should do: a restart
        // would not bring the broker back.
        assert!(status.liveness().is_ok(), "{}", status.liveness());
    }

    #[test]
    fn a_blocked_connection_is_not_ready_but_live() {
        let mut status = healthy();
        status.connections[1].blocked = true;
        assert_eq!(
            status.readiness().to_string(),
            "connection publish is blocked by the broker (a memory or disk alarm)"
        );
        assert!(!status.is_healthy());
        assert!(status.liveness().is_ok());
    }

    #[test]
    fn a_restarting_consumer_is_not_ready_but_live() {
        let mut status = healthy();
        let audit = &mut status.consumers[1];
        audit.state = ConsumerState::Starting;
        audit.restarts = 2;
        audit.last_error = Some("setting up the channel failed: timed out".to_owned());
        assert_eq!(
            status.readiness().problems,
            [
                "consumer shop::audit on queue shop:audit is restarting (restart 2): \
              setting up the channel failed: timed out"
            ]
        );
        assert!(status.liveness().is_ok());

        // Starting again after a connection loss is no restart, whatever
        // the count of earlier ones.
        let audit = &mut status.consumers[1];
        audit.last_error = None;
        assert_eq!(
            status.readiness().problems,
            ["consumer shop::audit on queue shop:audit is starting"]
        );
    }

    #[test]
    fn a_failed_consumer_is_neither_ready_nor_live() {
        let mut status = healthy();
        let receipts = &mut status.consumers[0];
        receipts.state = ConsumerState::Failed;
        receipts.restarts = 10;
        receipts.last_error = Some("the consumer's task panicked: boom".to_owned());
        let expected = "consumer shop::send_receipt on queue shop:send_receipt has failed \
                        and is not restarted: the consumer's task panicked: boom";
        assert_eq!(status.readiness().problems, [expected]);
        assert_eq!(status.liveness().problems, [expected]);
        assert_eq!(status.liveness().to_string(), expected);
    }

    #[test]
    fn a_failed_connection_is_neither_ready_nor_live() {
        let mut status = healthy();
        status.connections[0].state = ConnectionState::Failed;
        status.connections[0].last_error = Some("ACCESS_REFUSED".to_owned());
        // Its consumers stop when their connection gives up.
        for consumer in &mut status.consumers {
            consumer.state = ConsumerState::Stopped;
        }
        assert_eq!(
            status.readiness().problems,
            [
                "connection consume has failed and is not retried: ACCESS_REFUSED",
                "consumer shop::send_receipt on queue shop:send_receipt is stopped",
                "consumer shop::audit on queue shop:audit is stopped",
            ]
        );
        assert_eq!(
            status.liveness().to_string(),
            "connection consume has failed and is not retried: ACCESS_REFUSED"
        );
    }

    #[test]
    fn after_shutdown_it_is_not_ready_but_live() {
        let mut status = healthy();
        for connection in &mut status.connections {
            connection.state = ConnectionState::Closed;
        }
        for consumer in &mut status.consumers {
            consumer.state = ConsumerState::Stopped;
        }
        assert_eq!(status.readiness().problems.len(), 4);
        assert_eq!(
            status.readiness().problems[0],
            "connection consume is closed"
        );
        assert!(status.liveness().is_ok());
    }

    #[test]
    fn several_problems_display_on_one_line() {
        let mut status = healthy();
        status.connections[1].blocked = true;
        status.consumers[0].state = ConsumerState::Stopped;
        assert_eq!(
            status.readiness().to_string(),
            "connection publish is blocked by the broker (a memory or disk alarm); \
             consumer shop::send_receipt on queue shop:send_receipt is stopped"
        );
    }
}
