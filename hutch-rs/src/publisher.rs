//! Confirmed publishing on a connection of its own.

use std::{
    sync::{
        Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use futures_util::{StreamExt, stream};
use lapin::{
    BasicProperties, Channel, Confirmation,
    options::{BasicPublishOptions, ConfirmSelectOptions},
};
use tokio::{
    sync::{Mutex, OwnedMutexGuard, watch},
    task::JoinHandle,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::Instrument;

use crate::{
    Error, Result,
    backoff::Backoff,
    config::Settings,
    frame_size,
    outgoing::{Outgoing, Published},
    supervisor::{
        classify,
        connection::Purpose,
        connection_manager::{ConnectionManager, close_channel},
        observer::Observer,
        tree::Root,
    },
    topology,
};

/// How many messages of a batch are in flight (published, confirm awaited)
/// at once.
const BATCH_WINDOW: usize = 256;

/// A confirm-mode channel on the publishing connection, known to its
/// connection manager by `owner`.
#[derive(Debug)]
struct Lane {
    owner: &'static str,
    /// The channel, once set up. Every publish reads it; it changes only
    /// when a channel is set up or retired, so a plain lock held for a
    /// clone, never across an `.await`.
    channel: Arc<RwLock<Option<Channel>>>,
    /// Held while a channel is set up: one publish sets it up, the others
    /// wait for it rather than open channels of their own.
    setting_up: Mutex<()>,
}

impl Lane {
    fn new(owner: &'static str) -> Self {
        Self {
            owner,
            channel: Arc::new(RwLock::new(None)),
            setting_up: Mutex::new(()),
        }
    }

    /// The lane's channel, if it is set up and open.
    fn open_channel(&self) -> Option<Channel> {
        read(&self.channel)
            .as_ref()
            .filter(|channel| channel.status().connected())
            .cloned()
    }
}

/// Publishes messages and waits for the broker's confirms.
///
/// It has a connection of its own, supervised like the consumers' one: opened
/// on the first publish, re-opened when lost. A consumer-side outage never
/// blocks publishing and vice versa, and a broker alarm (which blocks
/// connections that publish) never blocks consuming.
#[derive(Debug)]
pub(crate) struct Publisher {
    settings: Arc<Settings>,
    observer: Observer,
    /// Read by every publish; written when the connection's manager is
    /// started or closed. Never held across an `.await`.
    link: RwLock<Option<Link>>,
    /// Ordinary publishes, any number in flight.
    publishing: Lane,
    /// The application's mandatory publishes, one at a time. (Copies of
    /// failed messages go on channels of their consumers' own.)
    returning: Lane,
    /// Held for the whole of a mandatory publish (see [`Turn`]). lapin hands
    /// a `basic.return` to whichever confirm completes next, and the broker
    /// may confirm several publishes at once: with two mandatory publishes
    /// in flight on a channel, a return could be blamed on the wrong one
    /// (and a lost message taken for a confirmed one). One at a time, a
    /// return is that publish's.
    returning_turn: Arc<Mutex<()>>,
    /// Counts the broker's answers to mandatory publishes: a publish waiting
    /// for its turn gives up only when none came for a confirm timeout.
    returning_answers: watch::Sender<u64>,
    /// The broker's maximum message size once a refusal named it (0 while
    /// unknown): larger messages then fail here, without costing the
    /// channel that the other publishes share.
    max_message_size: AtomicUsize,
    /// The `Hutch`'s root: the manager's token descends from it and its
    /// tasks are tracked by it.
    token: CancellationToken,
    tracker: TaskTracker,
}

/// The publishing connection's manager and the task running it.
#[derive(Debug)]
struct Link {
    manager: ConnectionManager,
    task: JoinHandle<Result<()>>,
}

/// One attempt at a publish, on one channel.
enum Attempt {
    /// The broker answered: confirmed, refused or returned.
    Answered(Result<()>),
    /// The channel or connection failed before the broker answered; the
    /// same message (same id) goes out again on the next channel.
    Lost(lapin::Error),
}

/// What to publish, where.
struct Publish<'a> {
    exchange: &'a str,
    routing_key: &'a str,
    body: &'a [u8],
    properties: BasicProperties,
    mandatory: bool,
}

/// A mandatory publish's turn on the returning lane.
///
/// While a message sent on the lane's channel is unanswered, the channel
/// holds a confirm (and maybe a `basic.return`) that belongs to this
/// publish. If the publish goes away then (its confirm timeout, or the
/// caller dropping it), that late answer could be credited to the next
/// mandatory publish on the channel; so the channel is retired (forgotten by
/// the lane and the manager, then closed) before the turn passes on.
struct Turn {
    /// Released on drop, or by the task retiring the channel.
    guard: Option<OwnedMutexGuard<()>>,
    /// The channel a message was sent on that the broker has not answered.
    unanswered: Option<Channel>,
    cache: Arc<RwLock<Option<Channel>>>,
    owner: &'static str,
    manager: ConnectionManager,
    /// Tracks the task that retires the channel.
    tracker: TaskTracker,
}

impl Drop for Turn {
    fn drop(&mut self) {
        let Some(channel) = self.unanswered.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // No runtime: nothing publishes on the channel any more.
            return;
        };
        let guard = self.guard.take();
        let cache = self.cache.clone();
        let manager = self.manager.clone();
        let owner = self.owner;
        let retiring = async move {
            {
                let mut cached = write(&cache);
                if cached
                    .as_ref()
                    .is_some_and(|cached| cached.id() == channel.id())
                {
                    *cached = None;
                }
            }
            manager.forget(owner, &channel).await;
            tracing::debug!(
                channel = channel.id(),
                "a mandatory publish ended before its answer; its channel is not reused"
            );
            // The next mandatory publish opens a new channel.
            drop(guard);
            close_channel(owner, &channel).await;
        };
        self.tracker.spawn_on(retiring.in_current_span(), &runtime);
    }
}

impl Publisher {
    /// A publisher whose connection's manager descends from `root`.
    pub(crate) fn new(settings: Arc<Settings>, observer: Observer, root: &Root) -> Self {
        Self {
            token: root.token().clone(),
            tracker: root.tracker().clone(),
            settings,
            observer,
            link: RwLock::new(None),
            publishing: Lane::new("publisher"),
            returning: Lane::new("mandatory publisher"),
            returning_turn: Arc::new(Mutex::new(())),
            returning_answers: watch::Sender::new(0),
            max_message_size: AtomicUsize::new(0),
        }
    }

    /// Publishes `outgoing` to the exchange and resolves once the broker has
    /// confirmed it, within the confirm timeout.
    pub(crate) async fn publish(&self, outgoing: &Outgoing) -> Result<Published> {
        topology::check_publish_routing_key(&outgoing.routing_key)?;
        let (properties, message_id) = outgoing.properties()?;
        self.confirmed(Publish {
            exchange: self.settings.exchange.as_str(),
            routing_key: &outgoing.routing_key,
            body: &outgoing.body,
            properties,
            mandatory: outgoing.options.is_mandatory(),
        })
        .await?;
        Ok(Published::new(message_id))
    }

    /// Publishes every message, keeping up to [`BATCH_WINDOW`] confirms
    /// outstanding at once; one result per message, in order.
    ///
    /// Each message is moved into its own future: a stream of futures that
    /// borrow from the batch would make the whole future unusable with
    /// `tokio::spawn` (rustc cannot prove it `Send` for every lifetime).
    pub(crate) async fn publish_batch(&self, batch: Vec<Outgoing>) -> Vec<Result<Published>> {
        stream::iter(batch)
            .map(|outgoing| async move { self.publish(&outgoing).await })
            .buffered(BATCH_WINDOW)
            .collect()
            .await
    }

    /// A confirm-mode channel of `owner`'s own on the publishing connection,
    /// and that connection's manager (for its blocked flag and frame size).
    /// Waits while the connection is down; the caller bounds the wait. A
    /// channel whose setup does not finish is released, never left half set
    /// up in the manager's map.
    pub(crate) async fn confirm_channel(
        &self,
        owner: &str,
    ) -> Result<(Channel, ConnectionManager)> {
        let manager = self.manager();
        let mut backoff = self.retry_backoff();
        loop {
            let lease = manager
                .channel(owner)
                .await
                .map_err(|source| Error::Declare {
                    resource: format!("a channel for {owner}"),
                    source: Box::new(source),
                })?;
            let Some(lease) = lease else {
                return Err(manager.ended());
            };
            let setup = tokio::time::timeout(
                self.settings.connection_timeout,
                lease
                    .channel
                    .confirm_select(ConfirmSelectOptions::default()),
            )
            .await;
            match setup {
                Ok(Ok(())) => return Ok((lease.channel, manager)),
                Ok(Err(source)) if classify::is_fatal_channel_error(&source) => {
                    return Err(Error::Declare {
                        resource: format!("confirm mode on the channel for {owner}"),
                        source: Box::new(source),
                    });
                }
                outcome => {
                    tracing::debug!(
                        owner,
                        ?outcome,
                        "setting up a confirm channel failed; retrying"
                    );
                    manager.release(owner).await;
                    manager.report_trouble();
                    // Cut short when the manager shuts down: the next
                    // request for a channel then says so.
                    backoff.wait(manager.shutting_down()).await;
                }
            }
        }
    }

    /// Publishes until the broker answers, within the confirm timeout:
    /// waiting for a connection, waiting while the broker blocks it, and
    /// publishing again (same properties, so the same message id) when the
    /// channel or connection died before the confirm came. Only the broker's
    /// ack is a success.
    ///
    /// A mandatory publish first waits for its turn; its confirm timeout
    /// starts once it has it. The wait for the turn is bounded too: it gives
    /// up when no mandatory publish was answered for a confirm timeout.
    async fn confirmed(&self, publish: Publish<'_>) -> Result<()> {
        let timeout = self.settings.confirm_timeout;
        let routing_key = publish.routing_key;
        self.check_size(&publish)?;
        // One manager for the whole publish: the alarm it reports is the
        // alarm of the connection the publish waits for.
        let manager = self.manager();
        let gave_up = || match manager.blocked_reason() {
            Some(reason) => Error::Blocked {
                routing_key: routing_key.to_owned(),
                reason,
                timeout,
            },
            None => Error::PublishTimeout {
                routing_key: routing_key.to_owned(),
                timeout,
                connection_error: manager.last_error(),
            },
        };
        let (lane, mut turn) = if publish.mandatory {
            let Some(turn) = self.take_turn(&manager, timeout).await else {
                return Err(gave_up());
            };
            (&self.returning, Some(turn))
        } else {
            (&self.publishing, None)
        };
        let publishing = async {
            let mut backoff = self.retry_backoff();
            loop {
                // A blocked connection is not read by the broker: what is
                // sent now would sit in the socket. Wait for the alarm to
                // clear (within the timeout) instead. The watch is cleared
                // when the manager ends, too. Subscribed to only while
                // blocked: the common case is one read.
                if manager.blocked_reason().is_some() {
                    let _ = manager.blocked().wait_for(Option::is_none).await;
                }
                let attempt = self
                    .publish_once(lane, &manager, &publish, turn.as_mut())
                    .await?;
                match attempt {
                    Attempt::Answered(answer) => return answer,
                    Attempt::Lost(error) => {
                        tracing::warn!(exchange = %publish.exchange, %routing_key, %error, "the publish was not confirmed before its channel failed; publishing it again");
                        manager.report_trouble();
                        // Not in a tight loop if the channel keeps failing.
                        backoff.wait(manager.shutting_down()).await;
                    }
                }
            }
        };
        match tokio::time::timeout(timeout, publishing).await {
            Ok(answer) => answer,
            // Dropping the turn now retires the channel if the message on it
            // is unanswered.
            Err(_) => Err(gave_up()),
        }
    }

    /// The waits between attempts of one publish (or one channel setup)
    /// whose channel keeps failing: the reconnect delays, without jitter
    /// (the confirm timeout bounds them anyway).
    fn retry_backoff(&self) -> Backoff {
        Backoff::new(
            self.settings.reconnect_min_delay,
            self.settings.reconnect_max_delay,
        )
    }

    /// The turn of a mandatory publish, once the publishes before it are
    /// done; `None` if no mandatory publish was answered for `timeout`
    /// meanwhile (the broker is away, or blocks publishing).
    async fn take_turn(&self, manager: &ConnectionManager, timeout: Duration) -> Option<Turn> {
        let mut answers = self.returning_answers.subscribe();
        let lock = self.returning_turn.clone().lock_owned();
        tokio::pin!(lock);
        loop {
            tokio::select! {
                biased;
                guard = &mut lock => {
                    return Some(Turn {
                        guard: Some(guard),
                        unanswered: None,
                        cache: self.returning.channel.clone(),
                        owner: self.returning.owner,
                        manager: manager.clone(),
                        tracker: self.tracker.clone(),
                    });
                }
                progress = tokio::time::timeout(timeout, answers.changed()) => {
                    if !matches!(progress, Ok(Ok(()))) {
                        return None;
                    }
                }
            }
        }
    }

    /// A message larger than the broker's limit (once known) fails here:
    /// sent, it would close the channel that other publishes share.
    fn check_size(&self, publish: &Publish<'_>) -> Result<()> {
        let max = self.max_message_size.load(Ordering::Relaxed);
        if max > 0 && publish.body.len() > max {
            return Err(Error::MessageTooLarge {
                routing_key: publish.routing_key.to_owned(),
                size: publish.body.len(),
                max,
            });
        }
        Ok(())
    }

    /// One publish on the lane's channel and the broker's answer to it.
    async fn publish_once(
        &self,
        lane: &Lane,
        manager: &ConnectionManager,
        publish: &Publish<'_>,
        mut turn: Option<&mut Turn>,
    ) -> Result<Attempt> {
        let Publish {
            exchange,
            routing_key,
            body,
            mandatory,
            ..
        } = *publish;
        let channel = self.channel(lane, manager).await?;
        check_header_size(publish, manager)?;
        if let Some(turn) = turn.as_deref_mut() {
            turn.unanswered = Some(channel.clone());
        }
        let confirmed = async {
            channel
                .basic_publish(
                    exchange.into(),
                    routing_key.into(),
                    BasicPublishOptions {
                        mandatory,
                        ..BasicPublishOptions::default()
                    },
                    body,
                    publish.properties.clone(),
                )
                .await?
                .await
        };
        // A connection closed while the confirm is outstanding may take
        // until its heartbeat times out to fail the confirm (a blocked
        // connection is not read by the broker, so not even the close gets
        // through): the end of the manager ends the wait.
        let outcome = tokio::select! {
            biased;
            outcome = confirmed => outcome,
            () = manager.until_ended() => return Err(manager.ended()),
        };
        // Answered, or the channel is gone: nothing of this publish is left
        // on it.
        if let Some(turn) = turn {
            turn.unanswered = None;
        }
        let confirmation = match outcome {
            Ok(confirmation) => confirmation,
            Err(error) => return self.failed(publish, error),
        };
        if mandatory {
            self.returning_answers.send_modify(|answers| *answers += 1);
        }
        Ok(Attempt::Answered(answer(
            confirmation,
            exchange,
            routing_key,
            mandatory,
        )))
    }

    /// What a publish whose channel or connection failed before the
    /// broker's answer should do.
    ///
    /// The broker closes the channel for one message's fault, and every
    /// publish with a confirm pending on it gets that error: only the
    /// message at fault fails, the others go out again. A message over the
    /// broker's size limit is told apart by its size (the broker names the
    /// size and the limit). Other refusals (403 no write permission, 406)
    /// concern every publish to the exchange alike, and fail them all.
    fn failed(&self, publish: &Publish<'_>, error: lapin::Error) -> Result<Attempt> {
        if let Some(refused) = classify::refused_message_size(&error) {
            self.max_message_size.store(refused.max, Ordering::Relaxed);
            let size = publish.body.len();
            if size > refused.max || size == refused.size {
                return Err(Error::MessageTooLarge {
                    routing_key: publish.routing_key.to_owned(),
                    size,
                    max: refused.max,
                });
            }
            return Ok(Attempt::Lost(error));
        }
        if classify::is_fatal_channel_error(&error) {
            return Err(Error::Publish {
                exchange: publish.exchange.to_owned(),
                routing_key: publish.routing_key.to_owned(),
                source: Box::new(error),
            });
        }
        Ok(Attempt::Lost(error))
    }

    /// The lane's confirm-mode channel on `manager`'s connection. A new
    /// channel is put in confirm mode and the exchange declared on it, so a
    /// publisher that starts before any consumer does not publish into an
    /// exchange that does not exist (the broker would close the channel).
    async fn channel(&self, lane: &Lane, manager: &ConnectionManager) -> Result<Channel> {
        if let Some(channel) = lane.open_channel() {
            return Ok(channel);
        }
        let _setting_up = lane.setting_up.lock().await;
        // Another publish may have set one up meanwhile.
        if let Some(channel) = lane.open_channel() {
            return Ok(channel);
        }
        loop {
            let lease = manager
                .channel(lane.owner)
                .await
                .map_err(|source| Error::Declare {
                    resource: "the publishing channel".to_owned(),
                    source: Box::new(source),
                })?;
            let Some(lease) = lease else {
                return Err(manager.ended());
            };
            // Set up every leased channel, not only fresh ones: a publish that
            // timed out during the setup leaves a channel in the map whose
            // setup never finished. Both steps are idempotent.
            let setup = async {
                lease
                    .channel
                    .confirm_select(ConfirmSelectOptions::default())
                    .await
                    .map_err(|source| Error::Declare {
                        resource: "confirm mode on the publishing channel".to_owned(),
                        source: Box::new(source),
                    })?;
                topology::declare_exchange(&lease.channel, &self.settings.exchange).await
            };
            match setup.await {
                Ok(()) => {
                    *write(&lane.channel) = Some(lease.channel.clone());
                    return Ok(lease.channel);
                }
                Err(Error::Declare { source, .. })
                    if !classify::is_fatal_channel_error(&source) =>
                {
                    tracing::debug!(error = %source, "setting up the publishing channel failed; retrying");
                    manager.report_trouble();
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// Runs `work` on a channel of its own on the publishing connection,
    /// then closes the channel: for one-off declarations that must not
    /// disturb the publishing channels if the broker refuses them. Waits for
    /// the connection within the confirm timeout, as a publish does.
    pub(crate) async fn on_spare_channel<T>(
        &self,
        work: impl AsyncFnOnce(&Channel) -> Result<T>,
    ) -> Result<T> {
        const OWNER: &str = "declarations";
        let manager = self.manager();
        let timeout = self.settings.confirm_timeout;
        let lease = match tokio::time::timeout(timeout, manager.channel(OWNER)).await {
            Ok(Ok(Some(lease))) => lease,
            Ok(Ok(None)) => return Err(manager.ended()),
            Ok(Err(source)) => {
                return Err(Error::Declare {
                    resource: "a channel for declarations".to_owned(),
                    source: Box::new(source),
                });
            }
            Err(_) => {
                return Err(Error::Unavailable {
                    connection: Purpose::Publish.as_str(),
                    reason: match manager.last_error() {
                        Some(error) => format!("not connected within {timeout:?}: {error}"),
                        None => format!("not connected within {timeout:?}"),
                    },
                });
            }
        };
        let outcome = work(&lease.channel).await;
        manager.release(OWNER).await;
        outcome
    }

    /// The publishing connection's manager, started on first use (and again
    /// after `close` or a fatal error).
    fn manager(&self) -> ConnectionManager {
        if let Some(existing) = read(&self.link).as_ref()
            && !existing.task.is_finished()
        {
            return existing.manager.clone();
        }
        let mut link = write(&self.link);
        // Another publish may have started one meanwhile.
        if let Some(existing) = link.as_ref()
            && !existing.task.is_finished()
        {
            return existing.manager.clone();
        }
        let manager = ConnectionManager::new(
            Purpose::Publish,
            self.settings.clone(),
            self.observer.clone(),
            self.token.child_token(),
        );
        let span = tracing::info_span!("connection", purpose = Purpose::Publish.as_str());
        let task = self.tracker.spawn(manager.clone().run().instrument(span));
        *link = Some(Link {
            manager: manager.clone(),
            task,
        });
        manager
    }

    /// Forgets and closes `owner`'s channel on the publishing connection, if
    /// it is open: for an owner that ended without doing so itself.
    pub(crate) async fn release(&self, owner: &str) {
        let manager = read(&self.link).as_ref().map(|link| link.manager.clone());
        if let Some(manager) = manager {
            manager.release(owner).await;
        }
    }

    /// Closes the publishing connection, if open. Publishes waiting for it
    /// fail with [`Error::Unavailable`].
    pub(crate) async fn close(&self) -> Result<()> {
        write(&self.publishing.channel).take();
        write(&self.returning.channel).take();
        // A later connection may go to a node configured otherwise.
        self.max_message_size.store(0, Ordering::Relaxed);
        let Some(link) = write(&self.link).take() else {
            return Ok(());
        };
        link.manager.shut_down();
        match link.task.await {
            Ok(_) => Ok(()),
            Err(join) => Err(Error::Unavailable {
                connection: Purpose::Publish.as_str(),
                reason: join.to_string(),
            }),
        }
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        let link = self.link.get_mut().unwrap_or_else(PoisonError::into_inner);
        if let Some(link) = link.as_ref() {
            link.manager.shut_down();
        }
    }
}

/// Reads a lock that no panicking holder can have left inconsistent: every
/// write replaces the whole value.
fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

/// Writes a lock; see [`read`].
fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

/// Properties that would not fit in one frame fail here: sent, they would
/// make the broker close the connection that every publish shares, and
/// sending them again would close it again.
fn check_header_size(publish: &Publish<'_>, manager: &ConnectionManager) -> Result<()> {
    // Between the channel and this check the connection may have gone; the
    // publish then fails on the closed channel as any other would.
    // Without headers the properties are at most 14 short strings and a
    // few numbers, under the 4,096-byte frame every broker must accept:
    // only headers are worth measuring.
    if publish.properties.headers().is_none() {
        return Ok(());
    }
    let Some(frame_max) = manager.frame_max() else {
        return Ok(());
    };
    let max = frame_size::properties_capacity(frame_max);
    let size = frame_size::properties_size(&publish.properties);
    if size > max {
        return Err(Error::HeadersTooLarge {
            routing_key: publish.routing_key.to_owned(),
            size,
            max,
            frame_max,
        });
    }
    Ok(())
}

/// What the broker's answer means for the publish.
fn answer(
    confirmation: Confirmation,
    exchange: &str,
    routing_key: &str,
    mandatory: bool,
) -> Result<()> {
    if !confirmation.is_ack() {
        return Err(Error::PublishNacked {
            routing_key: routing_key.to_owned(),
        });
    }
    // A returned message is confirmed too, after its basic.return.
    if mandatory && confirmation.take_message().is_some() {
        return Err(Error::Unroutable {
            exchange: exchange.to_owned(),
            routing_key: routing_key.to_owned(),
        });
    }
    Ok(())
}
