//! Where the tree reports what it does: the status snapshot and the event
//! stream are both fed from here.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, MutexGuard},
};

use tokio::sync::broadcast;

use crate::{
    event::{Event, EventStream},
    status::{ConnectionState, ConnectionStatus, ConsumerState, ConsumerStatus, Status},
    telemetry::metrics,
};

/// How many events a slow subscriber may fall behind before it skips some.
const EVENT_BUFFER: usize = 1024;

/// Shared by every part of one [`Hutch`](crate::Hutch).
#[derive(Debug, Clone)]
pub(crate) struct Observer {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    state: Mutex<Observed>,
    events: broadcast::Sender<Event>,
}

#[derive(Debug, Default)]
struct Observed {
    connections: BTreeMap<&'static str, ConnectionStatus>,
    consumers: BTreeMap<String, ConsumerStatus>,
    hook_failures_dropped: u64,
    late_replies: u64,
}

impl Default for Observer {
    fn default() -> Self {
        Self {
            inner: Arc::new(Inner {
                state: Mutex::new(Observed::default()),
                events: broadcast::Sender::new(EVENT_BUFFER),
            }),
        }
    }
}

/// A `Hutch` dropped without closing its connections: they are gone with
/// the last task that held the observer, and no longer counted open.
#[cfg(feature = "metrics")]
impl Drop for Inner {
    fn drop(&mut self) {
        let state = self
            .state
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for connection in state.connections.values() {
            if connection.state == ConnectionState::Connected {
                metrics::connection_state(connection.purpose, true, false);
            }
        }
    }
}

impl Observer {
    fn state(&self) -> MutexGuard<'_, Observed> {
        // A panic while holding this lock leaves plain data behind; keep going.
        self.inner
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn emit(&self, event: Event) {
        // No subscriber is not an error.
        let _ = self.inner.events.send(event);
    }

    pub(crate) fn snapshot(&self) -> Status {
        let state = self.state();
        Status {
            connections: state.connections.values().cloned().collect(),
            consumers: state.consumers.values().cloned().collect(),
            hook_failures_dropped: state.hook_failures_dropped,
            late_replies: state.late_replies,
        }
    }

    pub(crate) fn subscribe(&self) -> EventStream {
        EventStream::new(self.inner.events.subscribe())
    }

    fn with_connection(&self, purpose: &'static str, update: impl FnOnce(&mut ConnectionStatus)) {
        let mut state = self.state();
        let connection = state
            .connections
            .entry(purpose)
            .or_insert_with(|| ConnectionStatus {
                purpose,
                state: ConnectionState::Connecting,
                broker: None,
                blocked: false,
                connects: 0,
                last_error: None,
            });
        let was_up = connection.state == ConnectionState::Connected;
        update(connection);
        metrics::connection_state(
            purpose,
            was_up,
            connection.state == ConnectionState::Connected,
        );
    }

    pub(crate) fn connecting(&self, purpose: &'static str) {
        self.with_connection(purpose, |connection| {
            connection.state = ConnectionState::Connecting;
            connection.broker = None;
            connection.blocked = false;
        });
    }

    pub(crate) fn connected(&self, purpose: &'static str, broker: String) {
        self.with_connection(purpose, |connection| {
            connection.state = ConnectionState::Connected;
            connection.broker = Some(broker.clone());
            connection.blocked = false;
            connection.connects += 1;
            if connection.connects > 1 {
                metrics::reconnect(purpose);
            }
            connection.last_error = None;
        });
        self.emit(Event::Connected {
            connection: purpose,
            broker,
        });
    }

    pub(crate) fn disconnected(&self, purpose: &'static str, reason: String) {
        self.connecting(purpose);
        self.connect_failed(purpose, reason.clone());
        self.emit(Event::Disconnected {
            connection: purpose,
            reason,
        });
    }

    /// An attempt to open the connection failed (or it was lost): kept
    /// until it is open again.
    pub(crate) fn connect_failed(&self, purpose: &'static str, reason: String) {
        self.with_connection(purpose, |connection| {
            connection.last_error = Some(reason);
        });
    }

    /// Why the connection is not open, if it is not and an attempt failed.
    pub(crate) fn last_error(&self, purpose: &'static str) -> Option<String> {
        self.state()
            .connections
            .get(purpose)
            .and_then(|connection| connection.last_error.clone())
    }

    pub(crate) fn blocked(&self, purpose: &'static str, reason: String) {
        self.with_connection(purpose, |connection| connection.blocked = true);
        self.emit(Event::ConnectionBlocked {
            connection: purpose,
            reason,
        });
    }

    pub(crate) fn unblocked(&self, purpose: &'static str) {
        self.with_connection(purpose, |connection| connection.blocked = false);
        self.emit(Event::ConnectionUnblocked {
            connection: purpose,
        });
    }

    pub(crate) fn connection_ended(&self, purpose: &'static str, state: ConnectionState) {
        self.with_connection(purpose, |connection| {
            connection.state = state;
            connection.broker = None;
        });
    }

    fn with_consumer(&self, consumer: &str, update: impl FnOnce(&mut ConsumerStatus)) {
        if let Some(status) = self.state().consumers.get_mut(consumer) {
            update(status);
        }
    }

    /// Starts tracking the consumers of a new start, forgetting those of an
    /// earlier one.
    pub(crate) fn track_consumers(&self, consumers: impl IntoIterator<Item = (String, String)>) {
        let mut state = self.state();
        state.consumers = consumers
            .into_iter()
            .map(|(consumer, queue)| {
                let status = ConsumerStatus {
                    consumer: consumer.clone(),
                    queue,
                    state: ConsumerState::WaitingForChannel,
                    restarts: 0,
                    channel: None,
                    stale_acks: 0,
                    last_error: None,
                };
                (consumer, status)
            })
            .collect();
    }

    pub(crate) fn consumer_state(&self, consumer: &str, state: ConsumerState) {
        self.with_consumer(consumer, |status| {
            status.state = state;
            if matches!(
                state,
                ConsumerState::WaitingForChannel | ConsumerState::Stopped | ConsumerState::Failed
            ) {
                status.channel = None;
            }
        });
    }

    pub(crate) fn consumer_started(&self, consumer: &str, queue: &str, channel: u16) {
        self.with_consumer(consumer, |status| {
            status.state = ConsumerState::Consuming;
            status.channel = Some(channel);
            status.last_error = None;
        });
        self.emit(Event::ConsumerStarted {
            consumer: consumer.to_owned(),
            queue: queue.to_owned(),
            channel,
        });
    }

    pub(crate) fn consumer_restarted(&self, consumer: &str, restarts: u32, reason: String) {
        metrics::consumer_restart(consumer);
        self.with_consumer(consumer, |status| {
            status.state = ConsumerState::Starting;
            status.restarts = restarts;
            status.last_error = Some(reason.clone());
        });
        self.emit(Event::ConsumerRestarted {
            consumer: consumer.to_owned(),
            restarts,
            reason,
        });
    }

    pub(crate) fn consumer_failed(&self, consumer: &str, reason: String) {
        // One update: a snapshot between two would show it failed without
        // the reason.
        self.with_consumer(consumer, |status| {
            status.state = ConsumerState::Failed;
            status.channel = None;
            status.last_error = Some(reason.clone());
        });
        self.emit(Event::ConsumerFailed {
            consumer: consumer.to_owned(),
            reason,
        });
    }

    /// How many times `consumer` was restarted so far.
    pub(crate) fn consumer_restarts(&self, consumer: &str) -> u32 {
        self.state()
            .consumers
            .get(consumer)
            .map_or(0, |status| status.restarts)
    }

    /// `count` failures that an error hook will never be called with.
    pub(crate) fn hook_failures_dropped(&self, count: u64) {
        self.state().hook_failures_dropped += count;
    }

    /// A reply that no request was waiting for, dropped.
    pub(crate) fn late_reply(&self) {
        self.state().late_replies += 1;
    }

    pub(crate) fn stale_ack(&self, consumer: &str) {
        metrics::stale_ack(consumer);
        self.with_consumer(consumer, |status| status.stale_acks += 1);
    }
}
