//! What the in-memory test broker keeps for a test to assert on: every
//! delivery a consumer received and what became of it, every dead letter,
//! every message published.

use lapin::{
    BasicProperties,
    types::{AMQPValue, FieldTable},
};
use serde::de::DeserializeOwned;

use crate::{headers, retry::Outcome};

/// One delivery to one consumer, and what became of it.
///
/// A message retried twice and then acknowledged is three `Received`, with
/// attempts 1, 2 and 3.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Received {
    /// The consumer, `module::function`.
    pub consumer: String,
    /// Its queue.
    pub queue: String,
    /// The routing key the message was first published with (also on a
    /// retry).
    pub routing_key: String,
    /// Which attempt this delivery was (1 for the first).
    pub attempt: u32,
    /// Whether the broker had delivered it before (after a requeue).
    pub redelivered: bool,
    /// The properties as delivered: headers, message id, content type.
    pub properties: BasicProperties,
    /// The body as delivered.
    pub body: Vec<u8>,
    /// How the delivery was settled.
    pub handled: Handled,
}

/// How a delivery was settled.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Handled {
    /// The handler returned `Ok`: acknowledged.
    Acked,
    /// The handler failed (an `Err`, a panic, its timeout) or the body could
    /// not be decoded; `outcome` is what the consumer did about it, exactly
    /// as an [`ErrorHook`](crate::ErrorHook) is told.
    Failed {
        /// The failure as text, as the `x-hutch-error` header carries it.
        error: String,
        /// Retried, dead-lettered or requeued.
        outcome: Outcome,
    },
}

impl Received {
    /// The body decoded from JSON into `T`.
    ///
    /// # Errors
    ///
    /// serde_json's, if the body is not a `T` in JSON.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.body)
    }

    /// Whether the handler succeeded.
    #[must_use]
    pub fn is_acked(&self) -> bool {
        self.handled == Handled::Acked
    }

    /// The failure's text, if the delivery failed.
    #[must_use]
    pub fn error(&self) -> Option<&str> {
        match &self.handled {
            Handled::Acked => None,
            Handled::Failed { error, .. } => Some(error),
        }
    }

    /// The message id the publisher gave the message.
    #[must_use]
    pub fn message_id(&self) -> Option<&str> {
        self.properties.message_id().as_ref().map(|id| id.as_str())
    }
}

/// A message in a consumer's dead-letter queue, `<queue>:dead`, with the
/// headers the consumer put on it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct DeadLetter {
    /// The consumer that gave up on it, `module::function`.
    pub consumer: String,
    /// The dead-letter queue.
    pub queue: String,
    /// The properties of the dead copy (`x-hutch-*` failure headers included).
    pub properties: BasicProperties,
    /// The body, unchanged.
    pub body: Vec<u8>,
}

impl DeadLetter {
    /// The body decoded from JSON into `T`.
    ///
    /// # Errors
    ///
    /// serde_json's, if the body is not a `T` in JSON.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.body)
    }

    /// Why: `poison`, `rejected` or `attempts-exhausted`
    /// ([`headers::REASON`]).
    #[must_use]
    pub fn reason(&self) -> Option<&str> {
        self.text(headers::REASON)
    }

    /// The last failure's text ([`headers::ERROR`]).
    #[must_use]
    pub fn error(&self) -> Option<&str> {
        self.text(headers::ERROR)
    }

    /// How many attempts were made ([`headers::ATTEMPTS`]).
    #[must_use]
    pub fn attempts(&self) -> Option<u32> {
        self.headers()
            .and_then(|headers| headers::number(headers, headers::ATTEMPTS))
            .and_then(|attempts| u32::try_from(attempts).ok())
    }

    /// The routing key the message was first published with
    /// ([`headers::ORIGINAL_ROUTING_KEY`]).
    #[must_use]
    pub fn routing_key(&self) -> Option<&str> {
        self.text(headers::ORIGINAL_ROUTING_KEY)
    }

    /// The dead copy's headers.
    #[must_use]
    pub fn headers(&self) -> Option<&FieldTable> {
        self.properties.headers().as_ref()
    }

    fn text(&self, name: &str) -> Option<&str> {
        match self.headers()?.inner().get(name)? {
            AMQPValue::LongString(text) => std::str::from_utf8(text.as_bytes()).ok(),
            AMQPValue::ShortString(text) => Some(text.as_str()),
            _ => None,
        }
    }
}

/// A message published to the in-memory broker, by the test or by a
/// handler, and where it went.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PublishedMessage {
    /// The exchange (`""` for a reply).
    pub exchange: String,
    /// The routing key.
    pub routing_key: String,
    /// The properties as published (message id, timestamp, headers).
    pub properties: BasicProperties,
    /// The body.
    pub body: Vec<u8>,
    /// The queues it was routed to; empty when nothing was bound for it.
    pub queues: Vec<String>,
}

impl PublishedMessage {
    /// The body decoded from JSON into `T`.
    ///
    /// # Errors
    ///
    /// serde_json's, if the body is not a `T` in JSON.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.body)
    }
}
