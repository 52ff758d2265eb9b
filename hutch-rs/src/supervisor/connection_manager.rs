//! The connection manager: opens and re-opens one connection, and hands out
//! channels, one per owner, reused while open.

use std::{
    collections::HashMap,
    sync::{Arc, OnceLock},
    time::{Duration, Instant},
};

use futures_util::StreamExt;
use lapin::{Channel, Connection};
use tokio::sync::{Mutex, Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::{
    Error, Result,
    backoff::Backoff,
    config::{BrokerUri, Settings},
    status::ConnectionState,
    supervisor::{
        classify,
        connection::{Purpose, connect},
        observer::Observer,
        reachability,
    },
};

/// The state of the managed connection, as channel requests see it.
#[derive(Debug, Clone)]
enum Link {
    /// Connecting or reconnecting: channel requests wait.
    Down,
    /// Open.
    Up(Arc<Connection>),
    /// Closed for good (shutdown, or a fatal error): channel requests give up.
    Ended,
}

/// How long closing a connection may wait for the broker's close-ok. A
/// blocked connection (memory alarm) is not read by the broker at all.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection that stays up this long counts as stable: the reconnect
/// backoff starts over. One that dies sooner keeps backing off, so a
/// connection killed right after it opens is not retried in a tight loop.
const STABLE_AFTER: Duration = Duration::from_secs(5);

/// A channel handed to its owner.
#[derive(Debug)]
pub(crate) struct Lease {
    pub(crate) channel: Channel,
    /// Newly opened (rather than the owner's previous, still open channel):
    /// all of the owner's channel state must be applied to it.
    pub(crate) fresh: bool,
}

/// Opens one connection and keeps it open: reconnects with exponential
/// backoff and jitter, trying the configured nodes in turn, and hands out
/// channels. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct ConnectionManager {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    purpose: Purpose,
    settings: Arc<Settings>,
    observer: Observer,
    link: watch::Sender<Link>,
    /// The owner → channel map: a restarted owner gets its channel back
    /// while it is open, instead of leaking a new one.
    channels: Mutex<HashMap<String, Channel>>,
    /// Why the broker blocked the open connection (a resource alarm), while
    /// it does.
    blocked: watch::Sender<Option<String>>,
    /// Rung by whoever saw the connection fail (a consumer whose stream
    /// ended, a publish that failed), so the manager checks it at once.
    trouble: Notify,
    shutdown: CancellationToken,
    /// The fatal error [`run`](ConnectionManager::run) ended with, kept for
    /// every channel request that finds the manager ended, not only the
    /// first to ask.
    failure: OnceLock<Error>,
}

impl ConnectionManager {
    /// A manager that stops when `shutdown` is cancelled (by
    /// [`shut_down`](Self::shut_down) or by its parent token).
    pub(crate) fn new(
        purpose: Purpose,
        settings: Arc<Settings>,
        observer: Observer,
        shutdown: CancellationToken,
    ) -> Self {
        observer.connecting(purpose.as_str());
        Self {
            shared: Arc::new(Shared {
                purpose,
                settings,
                observer,
                link: watch::Sender::new(Link::Down),
                blocked: watch::Sender::new(None),
                channels: Mutex::new(HashMap::new()),
                trouble: Notify::new(),
                shutdown,
                failure: OnceLock::new(),
            }),
        }
    }

    /// Closes the connection and ends [`run`](Self::run); waiting channel
    /// requests return `None`.
    pub(crate) fn shut_down(&self) {
        self.shared.shutdown.cancel();
    }

    /// Cancelled once the manager is shut down: for waits that should not
    /// outlast it.
    pub(crate) fn shutting_down(&self) -> &CancellationToken {
        &self.shared.shutdown
    }

    /// Whether (and why) the broker blocks the connection, as it changes.
    pub(crate) fn blocked(&self) -> watch::Receiver<Option<String>> {
        self.shared.blocked.subscribe()
    }

    /// Why the broker blocks the connection, if it does now: one read, for
    /// callers that subscribe to [`blocked`](Self::blocked) only while it
    /// does.
    pub(crate) fn blocked_reason(&self) -> Option<String> {
        self.shared.blocked.borrow().clone()
    }

    /// Why the connection is not open, while it is not and an attempt to
    /// open it failed.
    pub(crate) fn last_error(&self) -> Option<String> {
        if matches!(&*self.shared.link.borrow(), Link::Up(_)) {
            return None;
        }
        self.shared
            .observer
            .last_error(self.shared.purpose.as_str())
    }

    /// The negotiated frame size of the open connection, if one is open.
    pub(crate) fn frame_max(&self) -> Option<u32> {
        match &*self.shared.link.borrow() {
            Link::Up(connection) => Some(connection.configuration().frame_max()),
            Link::Down | Link::Ended => None,
        }
    }

    /// Tells the manager that an operation failed in a way that may mean the
    /// connection is gone.
    pub(crate) fn report_trouble(&self) {
        self.shared.trouble.notify_one();
    }

    /// The owner's channel: its previous one while that is still open,
    /// otherwise a new one. Waits while the connection is down. `Ok(None)`
    /// once the manager has ended (shutdown, or a fatal error that the
    /// manager reports itself); `Err` if the broker or lapin refuses a
    /// channel on a live connection (e.g. more channels than `channel_max`),
    /// which waiting would not fix.
    pub(crate) async fn channel(&self, owner: &str) -> Result<Option<Lease>, lapin::Error> {
        let mut link = self.shared.link.subscribe();
        loop {
            let connection = {
                let Ok(current) = link.wait_for(|link| !matches!(link, Link::Down)).await else {
                    return Ok(None);
                };
                match &*current {
                    Link::Up(connection) => connection.clone(),
                    Link::Ended | Link::Down => return Ok(None),
                }
            };
            {
                let channels = self.shared.channels.lock().await;
                if let Some(channel) = channels.get(owner)
                    && channel.status().connected()
                {
                    return Ok(Some(Lease {
                        channel: channel.clone(),
                        fresh: false,
                    }));
                }
            }
            // The map is not locked while the channel opens: on a connection
            // that is dying, opening may never complete, and the manager
            // must still be able to clear the map and reconnect. Each owner
            // asks for one channel at a time, so there is no race to open two.
            let opened = if connection.status().connected() {
                tokio::time::timeout(
                    self.shared.settings.connection_timeout,
                    connection.create_channel(),
                )
                .await
            } else {
                Ok(Err(lapin::ErrorKind::InvalidConnectionState(
                    lapin::ConnectionState::Closed,
                )
                .into()))
            };
            match opened {
                Ok(Ok(channel)) => {
                    self.shared
                        .channels
                        .lock()
                        .await
                        .insert(owner.to_owned(), channel.clone());
                    return Ok(Some(Lease {
                        channel,
                        fresh: true,
                    }));
                }
                Ok(Err(error)) if connection.status().connected() => return Err(error),
                outcome => {
                    let reason = match outcome {
                        Ok(Err(error)) => error.to_string(),
                        _ => "opening a channel timed out".to_owned(),
                    };
                    tracing::debug!(connection = self.shared.purpose.as_str(), %reason, "could not open a channel; waiting for the connection");
                    self.report_trouble();
                    // Wait for the link to change (down, then up again), or
                    // try once more if a live but slow connection timed out.
                    let changed = tokio::time::timeout(
                        self.shared.settings.connection_timeout,
                        link.changed(),
                    )
                    .await;
                    if matches!(changed, Ok(Err(_))) {
                        return Ok(None);
                    }
                }
            }
        }
    }

    /// Forgets the owner's channel and closes it: for an owner that gives up.
    pub(crate) async fn release(&self, owner: &str) {
        let channel = self.shared.channels.lock().await.remove(owner);
        if let Some(channel) = channel {
            close_channel(owner, &channel).await;
        }
    }

    /// Forgets `channel` if it is still the owner's, without closing it: the
    /// owner's next request gets a new channel.
    pub(crate) async fn forget(&self, owner: &str, channel: &Channel) {
        let mut channels = self.shared.channels.lock().await;
        if channels
            .get(owner)
            .is_some_and(|current| current.id() == channel.id())
        {
            channels.remove(owner);
        }
    }

    /// Resolves once the manager has ended (shut down, or a fatal error).
    pub(crate) async fn until_ended(&self) {
        let mut link = self.shared.link.subscribe();
        let _ = link.wait_for(|link| matches!(link, Link::Ended)).await;
    }

    /// Whether the manager has ended (shut down, or a fatal error): one
    /// read, for callers that check before they send.
    pub(crate) fn has_ended(&self) -> bool {
        matches!(&*self.shared.link.borrow(), Link::Ended)
    }

    /// Why the manager ended, once it has: the fatal error it ended with
    /// (every caller gets it, e.g. [`Error::Connect`] for refused
    /// credentials, [`Error::Tls`] for a certificate problem), or [`Error::Unavailable`] if it was shut down.
    pub(crate) fn ended(&self) -> Error {
        let connection = self.shared.purpose.as_str();
        match self.shared.failure.get() {
            Some(Error::Connect { uri, source }) => Error::Connect {
                uri: uri.clone(),
                source: source.clone(),
            },
            Some(Error::Tls { uri, reason }) => Error::Tls {
                uri: uri.clone(),
                reason: reason.clone(),
            },
            Some(other) => Error::Unavailable {
                connection,
                reason: other.to_string(),
            },
            None => Error::Unavailable {
                connection,
                reason: "it was closed".to_owned(),
            },
        }
    }

    /// Connects, serves the connection until it is lost, reconnects; until
    /// shut down (`Ok`) or a fatal error (`Err`, e.g. refused credentials).
    pub(crate) async fn run(self) -> Result<()> {
        let shared = &self.shared;
        let settings = &shared.settings;
        let purpose = shared.purpose.as_str();
        let mut backoff = reconnect_backoff(settings);
        let mut attempts: u64 = 0;
        let mut node = 0;
        // When the broker was last connected (or the manager started): the
        // reconnect probe watches a port that still accepts only for a
        // short while after this.
        let mut outage_began = tokio::time::Instant::now();
        loop {
            let uri = &settings.uris[node % settings.uris.len()];
            node += 1;
            let connecting = tokio::time::timeout(
                settings.connection_timeout,
                connect(
                    uri,
                    shared.purpose,
                    settings.heartbeat,
                    settings.tls.as_ref(),
                ),
            );
            let connected = tokio::select! {
                biased;
                () = shared.shutdown.cancelled() => {
                    self.end(ConnectionState::Closed);
                    return Ok(());
                }
                connected = connecting => connected.unwrap_or_else(|_| Err(Error::ConnectTimeout {
                    uri: uri.to_string(),
                    timeout: settings.connection_timeout,
                })),
            };
            match connected {
                Ok(connection) => {
                    attempts = 0;
                    let opened = Instant::now();
                    let Some(reason) = self.serve(connection, uri).await else {
                        return Ok(());
                    };
                    if opened.elapsed() >= STABLE_AFTER {
                        backoff.reset();
                    }
                    outage_began = tokio::time::Instant::now();
                    tracing::warn!(connection = purpose, %reason, "connection lost; reconnecting");
                    shared.observer.disconnected(purpose, reason);
                }
                Err(Error::Connect { uri, source })
                    if classify::is_fatal_connect_error(&source) =>
                {
                    tracing::error!(connection = purpose, %uri, error = %source, "the broker refused the connection; giving up");
                    // Kept before the end is announced, so that whoever
                    // sees the end finds the reason.
                    let _ = shared.failure.set(Error::Connect {
                        uri: uri.clone(),
                        source: source.clone(),
                    });
                    self.end(ConnectionState::Failed);
                    return Err(Error::Connect { uri, source });
                }
                Err(Error::Tls { uri, reason }) => {
                    tracing::error!(connection = purpose, %uri, %reason, "TLS with the broker failed; giving up");
                    let _ = shared.failure.set(Error::Tls {
                        uri: uri.clone(),
                        reason: reason.clone(),
                    });
                    self.end(ConnectionState::Failed);
                    return Err(Error::Tls { uri, reason });
                }
                Err(error) => {
                    attempts += 1;
                    tracing::warn!(connection = purpose, attempts, %error, "could not connect; retrying");
                    shared.observer.connect_failed(purpose, error.to_string());
                }
            }
            let delay = backoff.next_delay();
            let next_uri = &settings.uris[node % settings.uris.len()];
            tokio::select! {
                biased;
                () = shared.shutdown.cancelled() => {
                    self.end(ConnectionState::Closed);
                    return Ok(());
                }
                () = reachability::wait_before_retry(next_uri, delay, outage_began) => {}
            }
        }
    }

    /// Publishes the open connection and watches it. Returns why it was
    /// lost, or `None` when shut down (after closing it).
    async fn serve(&self, connection: Connection, uri: &BrokerUri) -> Option<String> {
        let shared = &self.shared;
        let purpose = shared.purpose.as_str();
        let mut events = connection.events_listener();
        let connection = Arc::new(connection);
        shared.link.send_replace(Link::Up(connection.clone()));
        tracing::info!(connection = purpose, broker = %uri, "connected");
        shared.observer.connected(purpose, uri.to_string());
        let reason = loop {
            tokio::select! {
                biased;
                () = shared.shutdown.cancelled() => {
                    self.end(ConnectionState::Closed);
                    let closing = connection.close(200, "hutch-rs shutdown".into());
                    match tokio::time::timeout(CLOSE_TIMEOUT, closing).await {
                        Ok(Ok(())) => {}
                        Ok(Err(error)) => tracing::debug!(connection = purpose, %error, "closing the connection failed"),
                        // Dropping the connection closes the socket.
                        Err(_) => tracing::warn!(connection = purpose, timeout = ?CLOSE_TIMEOUT, "the broker did not confirm the close in time; dropping the connection"),
                    }
                    return None;
                }
                event = events.next() => match event {
                    // Channel errors arrive here too: only a connection
                    // that is no longer connected is lost.
                    Some(lapin::Event::Error(error)) if !connection.status().connected() => break error.to_string(),
                    Some(lapin::Event::ConnectionBlocked(reason)) => {
                        tracing::warn!(connection = purpose, %reason, "the broker blocked the connection");
                        shared.blocked.send_replace(Some(reason.clone()));
                        shared.observer.blocked(purpose, reason);
                    }
                    Some(lapin::Event::ConnectionUnblocked) => {
                        tracing::info!(connection = purpose, "the broker unblocked the connection");
                        shared.blocked.send_replace(None);
                        shared.observer.unblocked(purpose);
                    }
                    Some(_) => {}
                    None => break "the connection's event stream ended".to_owned(),
                },
                () = shared.trouble.notified() => {
                    if !connection.status().connected() {
                        break "the connection is no longer connected".to_owned();
                    }
                }
            }
        };
        shared.link.send_replace(Link::Down);
        // A new connection starts unblocked; the broker says so if not.
        shared.blocked.send_replace(None);
        shared.channels.lock().await.clear();
        Some(reason)
    }

    /// Announces the end: channel requests give up, and whoever waits for an
    /// alarm to clear stops waiting (there is no connection to be blocked
    /// any more).
    fn end(&self, state: ConnectionState) {
        // Ended first: a publish woken by the cleared alarm must find no
        // connection to send on.
        self.shared.link.send_replace(Link::Ended);
        self.shared.blocked.send_replace(None);
        self.shared
            .observer
            .connection_ended(self.shared.purpose.as_str(), state);
    }
}

/// Closes a channel its owner no longer uses, waiting at most
/// [`CLOSE_TIMEOUT`] for the broker.
pub(crate) async fn close_channel(owner: &str, channel: &Channel) {
    if !channel.status().connected() {
        return;
    }
    let closing = channel.close(200, "hutch-rs: owner stopped".into());
    if tokio::time::timeout(CLOSE_TIMEOUT, closing).await.is_err() {
        tracing::debug!(owner, "closing a released channel timed out");
    }
}

/// The delays between connection attempts: `reconnect_delay`, with jitter
/// so that the clients of a broker that went away do not all come back at
/// once.
fn reconnect_backoff(settings: &Settings) -> Backoff {
    Backoff::new(settings.reconnect_min_delay, settings.reconnect_max_delay).with_jitter()
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::config::HutchBuilder;

    /// A broker that is away behind a load balancer: the port accepts every
    /// connection and closes it at once, before any AMQP.
    #[tokio::test]
    async fn an_accepting_port_of_a_broker_away_is_not_probed_every_second() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counting = accepted.clone();
        let listening = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                counting.fetch_add(1, Ordering::SeqCst);
                drop(stream);
            }
        });
        let settings = HutchBuilder::defaults()
            .uri(format!("amqp://guest:guest@127.0.0.1:{port}/%2f"))
            .reconnect_delay(Duration::from_secs(4), Duration::from_secs(4))
            .validate()
            .unwrap();
        let manager = ConnectionManager::new(
            Purpose::Consume,
            Arc::new(settings),
            Observer::default(),
            CancellationToken::new(),
        );
        let running = tokio::spawn(manager.clone().run());
        tokio::time::sleep(Duration::from_secs(20)).await;
        manager.shut_down();
        running.await.unwrap().unwrap();
        listening.abort();
        // Waits of 4 to 8 s: at most 6 connection attempts and 5 waits, each
        // probing once as it begins, and 4 more probes within the first 5 s
        // of the outage. Probing once a second throughout would be about 20
        // probes on top of the attempts.
        let connections = accepted.load(Ordering::SeqCst);
        assert!(
            (3..=15).contains(&connections),
            "{connections} connections in 20 s"
        );
    }
}
