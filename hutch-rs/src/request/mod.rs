//! Request and reply over RabbitMQ's direct reply-to.
//!
//! Every request of a `Hutch` goes out on one channel of the publishing
//! connection, which consumes from `amq.rabbitmq.reply-to`: a request names
//! that as its `reply_to`, the broker rewrites it into an address of this
//! channel, and the reply (published to that address through the default
//! exchange) comes back on it. Nothing is declared for replies, so nothing
//! leaks when a requester goes away.
//!
//! Each request carries a fresh correlation id, and everything that comes
//! back on the channel (a reply, the broker's confirm, a `basic.return`)
//! goes to the request it names ([`dispatch`]). The request is mandatory,
//! so one that no queue is bound for is returned by the broker and fails at
//! once. When the channel closes (its connection lost, the broker closing
//! it), the requests waiting on it fail at once with the reason; the next
//! request sets up a new channel ([`generation`]).

mod dispatch;
mod generation;
mod pending;
mod reply_to;

use std::{
    sync::{Arc, PoisonError, RwLock},
    time::SystemTime,
};

use tokio::time::Instant;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    Error, Result,
    config::Settings,
    outgoing::{Draft, JSON, PublishOptions},
    properties::unix_seconds,
    publisher::Publisher,
    supervisor::{observer::Observer, tree::Root},
    telemetry::{propagation::TraceHeaders, spans},
    topology,
};

/// One request on its way: what [`Requester::send_and_wait`] sends.
struct Request<'a> {
    draft: Draft<'a>,
    message_id: &'a str,
    correlation_id: &'a str,
    /// The request span's trace context, for the responder's span.
    trace: &'a TraceHeaders,
    deadline: Instant,
}

use generation::{DIRECT_REPLY_TO, Generation, Setup};
use pending::Answer;
use tracing::Instrument;

pub(crate) use reply_to::{check_reply_to, is_direct_reply_to};

/// Sends requests and waits for their replies, for one `Hutch`.
#[derive(Debug)]
pub(crate) struct Requester {
    settings: Arc<Settings>,
    publisher: Arc<Publisher>,
    observer: Observer,
    /// The request channel, once set up. Read by every request; written
    /// when a channel is set up. Never held across an `.await`.
    current: RwLock<Option<Arc<Generation>>>,
    /// Held while a channel is set up: one request sets it up, the others
    /// wait for it rather than set up their own.
    setting_up: tokio::sync::Mutex<()>,
    /// The `Hutch`'s root: the channels' tasks are tracked by it and stop
    /// with it.
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

impl Requester {
    /// A requester whose channels live on `publisher`'s connection and
    /// whose tasks belong to `root`.
    pub(crate) fn new(
        settings: Arc<Settings>,
        publisher: Arc<Publisher>,
        observer: Observer,
        root: &Root,
    ) -> Self {
        Self {
            settings,
            publisher,
            observer,
            current: RwLock::new(None),
            setting_up: tokio::sync::Mutex::new(()),
            shutdown: root.token().clone(),
            tracker: root.tracker().clone(),
        }
    }

    /// Publishes `body` (JSON) to the exchange with `routing_key` as a
    /// request, and returns the body of its reply, all within the request
    /// timeout.
    pub(crate) async fn request(&self, routing_key: &str, body: &[u8]) -> Result<Vec<u8>> {
        topology::check_publish_routing_key(routing_key)?;
        let deadline = Instant::now() + self.settings.request_timeout;
        let correlation_id = uuid::Uuid::new_v4().to_string();
        let options = PublishOptions::new()
            .correlation_id(correlation_id.as_str())
            .reply_to(DIRECT_REPLY_TO);
        let draft = Draft {
            routing_key,
            body,
            content_type: JSON,
            options: &options,
        };
        let message_id = draft.message_id();
        draft.validate(&message_id)?;
        let span = spans::publish(&self.settings.exchange, routing_key, &message_id);
        let trace = TraceHeaders::of(&span);
        let request = Request {
            draft,
            message_id: &message_id,
            correlation_id: &correlation_id,
            trace: &trace,
            deadline,
        };
        let replied = self.send_and_wait(request).instrument(span.clone()).await;
        spans::record_requested(&span, replied.as_ref().map(|_| ()));
        replied
    }

    /// Sends `request` on the request channel (again on a new one if the
    /// channel ended before it was sent) and waits for its answer.
    async fn send_and_wait(&self, request: Request<'_>) -> Result<Vec<u8>> {
        let Request {
            draft,
            message_id,
            correlation_id,
            trace,
            deadline,
        } = request;
        let routing_key = draft.routing_key;
        let body = draft.body;
        let timestamp = unix_seconds(SystemTime::now());
        if let Some(local) = self.publisher.local() {
            let properties = draft.properties(message_id, timestamp, trace)?;
            let reply = local.request(&self.settings.exchange, routing_key, properties, body)?;
            return match tokio::time::timeout_at(deadline, reply).await {
                Ok(Ok(body)) => Ok(body),
                Ok(Err(_)) => Err(Error::RequestInterrupted {
                    routing_key: routing_key.to_owned(),
                    reason: "the in-memory test broker was dropped".to_owned(),
                }),
                Err(_) => Err(self.timed_out(routing_key)),
            };
        }
        let answer = loop {
            let generation = match tokio::time::timeout_at(deadline, self.generation()).await {
                Ok(generation) => generation?,
                Err(_) => return Err(self.timed_out(routing_key)),
            };
            // Registered before it is sent: its reply may come before
            // `send` returns.
            let Some(mut waiting) = generation.register(correlation_id.to_owned()) else {
                // The channel ended since; nothing was sent yet.
                continue;
            };
            let properties = draft.properties(message_id, timestamp, trace)?;
            generation
                .send(
                    &self.settings.exchange,
                    routing_key,
                    body,
                    properties,
                    correlation_id.to_owned(),
                )
                .await
                .map_err(|error| Error::RequestInterrupted {
                    routing_key: routing_key.to_owned(),
                    reason: format!("it could not be sent: {error}"),
                })?;
            // On a timeout, `waiting` is dropped: a reply that comes later
            // finds no one, and is counted as late.
            match tokio::time::timeout_at(deadline, waiting.answer()).await {
                Ok(answer) => break answer,
                Err(_) => return Err(self.timed_out(routing_key)),
            }
        };
        match answer {
            Answer::Reply(body) => Ok(body),
            Answer::Returned => Err(Error::Unroutable {
                exchange: self.settings.exchange.clone(),
                routing_key: routing_key.to_owned(),
            }),
            Answer::Nacked => Err(Error::PublishNacked {
                routing_key: routing_key.to_owned(),
            }),
            Answer::Interrupted(reason) => Err(Error::RequestInterrupted {
                routing_key: routing_key.to_owned(),
                reason,
            }),
        }
    }

    /// The request channel: the current one while it is usable, otherwise
    /// a new one (one request sets it up; the others wait for it).
    async fn generation(&self) -> Result<Arc<Generation>> {
        if let Some(generation) = self.usable() {
            return Ok(generation);
        }
        let _setting_up = self.setting_up.lock().await;
        if let Some(generation) = self.usable() {
            return Ok(generation);
        }
        let generation = Arc::new(
            Generation::open(Setup {
                settings: &self.settings,
                publisher: &self.publisher,
                observer: &self.observer,
                shutdown: &self.shutdown,
                tracker: &self.tracker,
            })
            .await?,
        );
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Some(generation.clone());
        Ok(generation)
    }

    fn usable(&self) -> Option<Arc<Generation>> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .filter(|generation| generation.is_usable())
            .cloned()
    }

    fn timed_out(&self, routing_key: &str) -> Error {
        Error::RequestTimeout {
            routing_key: routing_key.to_owned(),
            timeout: self.settings.request_timeout,
            connection_error: self.publisher.connection_error(),
        }
    }
}
