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
    /// consumes. A health check can return this.
    #[must_use]
    pub fn is_healthy(&self) -> bool {
        self.connections
            .iter()
            .all(|connection| connection.state == ConnectionState::Connected && !connection.blocked)
            && self
                .consumers
                .iter()
                .all(|consumer| consumer.state == ConsumerState::Consuming)
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
