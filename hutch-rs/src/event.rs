//! What happens in the supervision tree, as a stream of events.

use tokio::sync::broadcast;

/// One thing that happened to a connection or a consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A connection was established.
    Connected {
        /// `"consume"` or `"publish"`.
        connection: &'static str,
        /// The node, password masked.
        broker: String,
    },
    /// A connection was lost; it is being re-established.
    Disconnected {
        /// `"consume"` or `"publish"`.
        connection: &'static str,
        /// Why.
        reason: String,
    },
    /// The broker blocked a connection (memory or disk alarm).
    ConnectionBlocked {
        /// `"consume"` or `"publish"`.
        connection: &'static str,
        /// The broker's reason.
        reason: String,
    },
    /// The broker unblocked a connection.
    ConnectionUnblocked {
        /// `"consume"` or `"publish"`.
        connection: &'static str,
    },
    /// A consumer consumes (first start, after a restart, after a reconnect).
    ConsumerStarted {
        /// `module::function`.
        consumer: String,
        /// Its queue.
        queue: String,
        /// Its channel.
        channel: u16,
    },
    /// A consumer failed and is being restarted.
    ConsumerRestarted {
        /// `module::function`.
        consumer: String,
        /// Restarts so far.
        restarts: u32,
        /// Why it failed.
        reason: String,
    },
    /// A consumer failed for good; `run` returns with an error.
    ConsumerFailed {
        /// `module::function`.
        consumer: String,
        /// Why.
        reason: String,
    },
}

/// Events as they happen, from [`Hutch::events`](crate::Hutch::events).
///
/// A subscriber that falls more than 1024 events behind skips the oldest;
/// [`recv`](Self::recv) says how many it missed through the log, not as an
/// error.
#[derive(Debug)]
pub struct EventStream {
    receiver: broadcast::Receiver<Event>,
}

impl EventStream {
    pub(crate) fn new(receiver: broadcast::Receiver<Event>) -> Self {
        Self { receiver }
    }

    /// The next event; `None` once the [`Hutch`](crate::Hutch) is gone.
    pub async fn recv(&mut self) -> Option<Event> {
        loop {
            match self.receiver.recv().await {
                Ok(event) => return Some(event),
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::warn!(
                        missed,
                        "event subscriber fell behind; skipped the oldest events"
                    );
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}
