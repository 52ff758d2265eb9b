//! The in-memory broker's exchange and queues: the topic exchange with the
//! consumers' bindings, the default exchange (a queue's name routes to it,
//! a reply-to name to its request), one queue of ready messages in
//! delivery order, and the records a test asserts on.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Mutex, MutexGuard, PoisonError},
};

use lapin::{BasicProperties, types::ShortString};
use tokio::sync::{oneshot, watch};

use super::records::{DeadLetter, PublishedMessage, Received};
use crate::{Error, Result, local_exchange::LocalExchange, testing::topic_matches};

/// How the broker names a request's reply queue: as RabbitMQ names a
/// server-named queue. (A direct reply-to address carries an Erlang process
/// id, which a replier checks; there is no process here to name.)
const REPLY_TO_PREFIX: &str = "amq.gen-";

/// A message waiting in one of the consumers' queues.
#[derive(Debug)]
pub(super) struct Ready {
    /// The queue it is in.
    pub(super) queue: String,
    /// The exchange and routing key it was delivered with (for a retry, the
    /// default exchange and the queue's name, as a delay queue hands it on).
    pub(super) exchange: String,
    pub(super) routing_key: String,
    pub(super) properties: BasicProperties,
    pub(super) body: Vec<u8>,
    pub(super) redelivered: bool,
    /// How many times in a row a handler sent it back at once.
    pub(super) requeues: u32,
}

/// Everything the broker holds, behind one lock never held across an
/// `.await`.
#[derive(Debug, Default)]
pub(super) struct State {
    exchange: String,
    /// Binding pattern and queue, in declaration order.
    bindings: Vec<(String, String)>,
    /// The consumers' queues.
    queues: Vec<String>,
    /// Every queue's ready messages in one line, in the order a broker
    /// with one consumer at a time would deliver them.
    pub(super) ready: VecDeque<Ready>,
    /// Whether a handler is running.
    pub(super) busy: bool,
    /// Messages a handler kept sending back at once, set aside.
    pub(super) parked: Vec<Ready>,
    pub(super) received: Vec<Received>,
    pub(super) dead: Vec<DeadLetter>,
    pub(super) published: Vec<PublishedMessage>,
    /// Requests waiting for their reply, by their reply-to name.
    replies: HashMap<String, oneshot::Sender<Vec<u8>>>,
}

impl State {
    /// Whether nothing is queued or running.
    pub(super) fn is_idle(&self) -> bool {
        self.ready.is_empty() && !self.busy
    }

    /// The queues a message published to `exchange` with `routing_key`
    /// reaches, each once.
    fn route(&self, exchange: &str, routing_key: &str) -> Vec<String> {
        if exchange.is_empty() {
            return self
                .queues
                .iter()
                .filter(|queue| *queue == routing_key)
                .cloned()
                .collect();
        }
        if exchange != self.exchange {
            return Vec::new();
        }
        let mut routed: Vec<String> = Vec::new();
        for (pattern, queue) in &self.bindings {
            if topic_matches(pattern, routing_key) && !routed.contains(queue) {
                routed.push(queue.clone());
            }
        }
        routed
    }
}

/// The exchange a `TestBroker`'s `Hutch` publishes to, shared with the
/// task delivering its messages.
#[derive(Debug)]
pub(super) struct MemoryExchange {
    state: Mutex<State>,
    /// Bumped whenever a message is queued or settled: what the delivering
    /// task and `TestBroker::settled` wait on.
    changes: watch::Sender<u64>,
}

impl MemoryExchange {
    /// An exchange named `exchange` with `bindings` (pattern, queue) to
    /// `queues`.
    pub(super) fn new(
        exchange: &str,
        queues: Vec<String>,
        bindings: Vec<(String, String)>,
    ) -> Self {
        Self {
            state: Mutex::new(State {
                exchange: exchange.to_owned(),
                bindings,
                queues,
                ..State::default()
            }),
            changes: watch::Sender::new(0),
        }
    }

    /// The state, for a short look or change.
    pub(super) fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the records half
        // written in a way that matters to a test: carry on.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Tells every waiter that something changed.
    pub(super) fn changed(&self) {
        self.changes.send_modify(|count| *count += 1);
    }

    /// A receiver that sees the next change.
    pub(super) fn watch(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Routes and queues one message; records it. Returns the queues it
    /// reached, or `None` when it was a reply, handed to its request.
    fn enqueue(
        &self,
        exchange: &str,
        routing_key: &str,
        properties: BasicProperties,
        body: &[u8],
    ) -> Option<Vec<String>> {
        let mut state = self.state();
        if exchange.is_empty()
            && let Some(waiting) = state.replies.remove(routing_key)
        {
            // The requester may have given up already; then the reply is
            // late, as on a broker.
            let _ = waiting.send(body.to_vec());
            state.published.push(PublishedMessage {
                exchange: exchange.to_owned(),
                routing_key: routing_key.to_owned(),
                properties,
                body: body.to_vec(),
                queues: Vec::new(),
            });
            return None;
        }
        let queues = state.route(exchange, routing_key);
        for queue in &queues {
            state.ready.push_back(Ready {
                queue: queue.clone(),
                exchange: exchange.to_owned(),
                routing_key: routing_key.to_owned(),
                properties: properties.clone(),
                body: body.to_vec(),
                redelivered: false,
                requeues: 0,
            });
        }
        state.published.push(PublishedMessage {
            exchange: exchange.to_owned(),
            routing_key: routing_key.to_owned(),
            properties,
            body: body.to_vec(),
            queues: queues.clone(),
        });
        drop(state);
        self.changed();
        Some(queues)
    }
}

impl LocalExchange for MemoryExchange {
    fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        mandatory: bool,
        properties: BasicProperties,
        body: &[u8],
    ) -> Result<()> {
        match self.enqueue(exchange, routing_key, properties, body) {
            Some(queues) if queues.is_empty() && mandatory => Err(Error::Unroutable {
                exchange: exchange.to_owned(),
                routing_key: routing_key.to_owned(),
            }),
            _ => Ok(()),
        }
    }

    fn request(
        &self,
        exchange: &str,
        routing_key: &str,
        properties: BasicProperties,
        body: &[u8],
    ) -> Result<oneshot::Receiver<Vec<u8>>> {
        // A name of its own per request, as RabbitMQ's direct reply-to
        // gives the replier one, in place of the requester's
        // `amq.rabbitmq.reply-to`.
        let reply_to = format!("{REPLY_TO_PREFIX}{}", uuid::Uuid::new_v4().simple());
        let (sender, receiver) = oneshot::channel();
        self.state().replies.insert(reply_to.clone(), sender);
        let properties = properties.with_reply_to(ShortString::from(reply_to.clone()));
        match self.enqueue(exchange, routing_key, properties, body) {
            Some(queues) if queues.is_empty() => {
                self.state().replies.remove(&reply_to);
                Err(Error::Unroutable {
                    exchange: exchange.to_owned(),
                    routing_key: routing_key.to_owned(),
                })
            }
            _ => Ok(receiver),
        }
    }
}
