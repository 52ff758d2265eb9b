//! What error hooks are told: which consumer failed on which message, why,
//! and what became of the message.

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use lapin::{
    BasicProperties,
    types::{AMQPValue, FieldTable},
};

use crate::{BoxError, message::DecodeError, message::Envelope};

/// Why handling a message failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HandlerError {
    /// The handler returned `Err`.
    #[error("{}", crate::retry::error_chain(.0.as_ref()))]
    Failed(BoxError),
    /// The handler panicked.
    #[error("the handler panicked: {0}")]
    Panicked(String),
    /// The handler ran longer than the consumer's timeout and was stopped.
    #[error("the handler did not finish within {0:?} (the consumer's timeout)")]
    TimedOut(Duration),
    /// The body could not be decoded (a poison message); the handler was
    /// not called.
    #[error("the message cannot be decoded: {0}")]
    Undecodable(DecodeError),
}

impl HandlerError {
    /// The failure's kind, as spans record it in `error.type`:
    /// `handler_error`, `panicked`, `timed_out` or `undecodable`.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            HandlerError::Failed(_) => "handler_error",
            HandlerError::Panicked(_) => "panicked",
            HandlerError::TimedOut(_) => "timed_out",
            HandlerError::Undecodable(_) => "undecodable",
        }
    }
}

/// What became of a message whose handling failed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// A copy waits in a delay queue and comes back as `attempt` after
    /// about `delay`.
    Retried {
        /// The attempt the copy will be.
        attempt: u32,
        /// How long it waits (on the delay-queue grid).
        delay: Duration,
        /// The delay queue it waits in.
        queue: String,
    },
    /// A copy is in the dead-letter queue.
    DeadLettered {
        /// `<queue>:dead`.
        queue: String,
        /// Its [`REASON`](crate::headers::REASON) header.
        reason: &'static str,
    },
    /// Put back in its queue at once ([`Decision::requeue`](crate::Decision::requeue)).
    Requeued,
}

/// A failed delivery, as error hooks see it.
///
/// Cheap to clone. The message's metadata is as the handler saw it:
/// [`routing_key`](Self::routing_key) and [`exchange`](Self::exchange) are
/// the original ones even on a retry.
#[derive(Debug, Clone)]
pub struct Failure {
    inner: Arc<FailureInner>,
}

#[derive(Debug)]
struct FailureInner {
    consumer: String,
    queue: String,
    envelope: Arc<Envelope>,
    body: Vec<u8>,
    error: HandlerError,
    outcome: Outcome,
    failed_at: SystemTime,
}

impl Failure {
    pub(crate) fn new(
        consumer: &str,
        queue: &str,
        envelope: Arc<Envelope>,
        body: Vec<u8>,
        error: HandlerError,
        outcome: Outcome,
        failed_at: SystemTime,
    ) -> Self {
        Self {
            inner: Arc::new(FailureInner {
                consumer: consumer.to_owned(),
                queue: queue.to_owned(),
                envelope,
                body,
                error,
                outcome,
                failed_at,
            }),
        }
    }

    /// The consumer, `module::function`.
    #[must_use]
    pub fn consumer(&self) -> &str {
        &self.inner.consumer
    }

    /// The consumer's queue.
    #[must_use]
    pub fn queue(&self) -> &str {
        &self.inner.queue
    }

    /// Why it failed.
    #[must_use]
    pub fn error(&self) -> &HandlerError {
        &self.inner.error
    }

    /// What became of the message.
    #[must_use]
    pub fn outcome(&self) -> &Outcome {
        &self.inner.outcome
    }

    /// When the failure happened.
    #[must_use]
    pub fn failed_at(&self) -> SystemTime {
        self.inner.failed_at
    }

    /// The attempt that failed (1 on the first delivery).
    #[must_use]
    pub fn attempt(&self) -> u32 {
        self.inner.envelope.attempt
    }

    /// The message id, if the publisher set one.
    #[must_use]
    pub fn message_id(&self) -> Option<&str> {
        self.inner.envelope.message_id()
    }

    /// The routing key the message was published with.
    #[must_use]
    pub fn routing_key(&self) -> &str {
        &self.inner.envelope.routing_key
    }

    /// The exchange the message was published to.
    #[must_use]
    pub fn exchange(&self) -> &str {
        &self.inner.envelope.exchange
    }

    /// Whether the broker had delivered it before.
    #[must_use]
    pub fn redelivered(&self) -> bool {
        self.inner.envelope.redelivered
    }

    /// The message's AMQP headers, if any.
    #[must_use]
    pub fn headers(&self) -> Option<&FieldTable> {
        self.properties().headers().as_ref()
    }

    /// One AMQP header by name.
    #[must_use]
    pub fn header(&self, name: &str) -> Option<&AMQPValue> {
        self.headers()?.inner().get(name)
    }

    /// All AMQP properties of the message.
    #[must_use]
    pub fn properties(&self) -> &BasicProperties {
        &self.inner.envelope.properties
    }

    /// The body, undecoded.
    #[must_use]
    pub fn body(&self) -> &[u8] {
        &self.inner.body
    }
}
