//! Confirmed publishing on a connection of its own.

use std::{
    sync::{
        Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, SystemTime},
};

use std::pin::Pin;

use tokio::time::Instant;

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
    local_exchange::LocalExchange,
    outgoing::{Draft, Outgoing, Published},
    properties::unix_seconds,
    request,
    supervisor::{
        classify,
        connection::Purpose,
        connection_manager::{ConnectionManager, close_channel},
        observer::Observer,
        tree::Root,
    },
    telemetry::{propagation::TraceHeaders, spans},
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
    /// clone, never across an `.await`. In an `Arc`: a publish takes one
    /// reference count, not the dozen of a `Channel` clone.
    channel: Arc<RwLock<Option<Arc<Channel>>>>,
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
    fn open_channel(&self) -> Option<Arc<Channel>> {
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
    /// Set for a `Hutch` of the in-memory test broker: publishes go there,
    /// and no connection is ever opened.
    local: Option<Arc<dyn LocalExchange>>,
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
    /// The publish's deadline passed first.
    TimedOut,
    /// The channel or connection failed before the broker answered; the
    /// same message (same id) goes out again on the next channel.
    Lost(lapin::Error),
}

/// What to publish, where.
struct Publish<'a> {
    exchange: &'a str,
    routing_key: &'a str,
    body: &'a [u8],
    draft: Draft<'a>,
    message_id: &'a str,
    /// Unix seconds, the same for every attempt.
    timestamp: u64,
    mandatory: bool,
    /// The publish span's trace context, the same for every attempt.
    trace: &'a TraceHeaders,
}

impl Publish<'_> {
    /// The properties of an attempt: the same message id, timestamp and
    /// options every time. Built where they are sent (lapin takes them by
    /// value), not carried along: they are larger than the rest of the
    /// publish.
    fn properties(&self) -> Result<BasicProperties> {
        self.draft
            .properties(self.message_id, self.timestamp, self.trace)
    }
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
    unanswered: Option<Arc<Channel>>,
    cache: Arc<RwLock<Option<Arc<Channel>>>>,
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
            local: None,
        }
    }

    /// This publisher, publishing to `local` instead of a broker.
    pub(crate) fn with_local_exchange(mut self, local: Arc<dyn LocalExchange>) -> Self {
        self.local = Some(local);
        self
    }

    /// Whether this publisher publishes to an in-memory exchange (and so
    /// has no connection at all).
    pub(crate) fn is_local(&self) -> bool {
        self.local.is_some()
    }

    /// The in-memory exchange this publisher publishes to, if it is one.
    pub(crate) fn local(&self) -> Option<&Arc<dyn LocalExchange>> {
        self.local.as_ref()
    }

    /// Publishes `draft` to the exchange and resolves once the broker has
    /// confirmed it, within the confirm timeout.
    ///
    /// Not `async` itself: the future is [`publish_to`](Self::publish_to)'s,
    /// not one wrapping it, so a publish in flight stays as small as it was.
    pub(crate) fn publish<'a>(
        &'a self,
        draft: Draft<'a>,
    ) -> impl Future<Output = Result<Published>> + Send + 'a {
        self.publish_to(self.settings.exchange.as_str(), draft)
    }

    /// Publishes `draft` to `exchange` (`""`, the default exchange, for a
    /// reply to a `reply_to` queue), as [`publish`](Self::publish) does.
    pub(crate) async fn publish_to(&self, exchange: &str, draft: Draft<'_>) -> Result<Published> {
        topology::check_publish_routing_key(draft.routing_key)?;
        let message_id = draft.message_id();
        let timestamp = unix_seconds(SystemTime::now());
        let started = crate::telemetry::metrics::stopwatch();
        // A property AMQP cannot carry fails the publish before anything
        // waits for a connection.
        draft.validate(&message_id)?;
        // Boxed: the wait for the confirm is most of a publish's state (the
        // lapin future alone is over 1 KiB). A publish future stays a few
        // hundred bytes, cheap to move into a `FuturesUnordered` or a task,
        // and its state is allocated once, in place, when it first runs.
        let span = spans::publish(exchange, draft.routing_key, &message_id);
        let trace = TraceHeaders::of(&span);
        let confirmed = Box::pin(self.confirmed(Publish {
            exchange,
            routing_key: draft.routing_key,
            body: draft.body,
            draft,
            message_id: &message_id,
            timestamp,
            mandatory: draft.options.is_mandatory(),
            trace: &trace,
        }))
        .instrument(span.clone())
        .await;
        spans::record_published(&span, confirmed.as_ref().map(|_| ()));
        crate::telemetry::metrics::published(exchange, confirmed.as_ref().map(|_| ()), started);
        confirmed?;
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
            .map(|outgoing| async move { self.publish(outgoing.draft()).await })
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
    ///
    /// One deadline bounds every wait of the publish. The common path (a
    /// channel is open, the broker confirms) costs one timer and no other
    /// subscription; the rare waits (a blocked connection, a channel being
    /// set up, a backoff) are boxed and bounded by the same deadline.
    async fn confirmed(&self, publish: Publish<'_>) -> Result<()> {
        let timeout = self.settings.confirm_timeout;
        let routing_key = publish.routing_key;
        let exchange = publish.exchange;
        self.check_size(&publish)?;
        if let Some(local) = &self.local {
            return local.publish(
                exchange,
                routing_key,
                publish.mandatory,
                publish.properties()?,
                publish.body,
            );
        }
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
            // Boxed, as every rare path of a publish: the future of every
            // publish in flight is as large as its largest path.
            let Some(turn) = Box::pin(self.take_turn(&manager, timeout)).await else {
                return Err(gave_up());
            };
            (&self.returning, Some(turn))
        } else {
            (&self.publishing, None)
        };
        let deadline = Instant::now() + timeout;
        let mut backoff = None;
        loop {
            // A blocked connection is not read by the broker: what is sent
            // now would sit in the socket. Wait for the alarm to clear
            // (within the timeout) instead. The watch is cleared when the
            // manager ends, too. Subscribed to only while blocked: the
            // common case is one read.
            if manager.blocked_reason().is_some() {
                let mut blocked = manager.blocked();
                let unblocked =
                    tokio::time::timeout_at(deadline, blocked.wait_for(Option::is_none));
                if Box::pin(unblocked).await.is_err() {
                    return Err(gave_up());
                }
            }
            // Once the manager has ended (closed, or failed for good), the
            // connection is going or gone: nothing more is sent.
            if manager.has_ended() {
                return Err(manager.ended());
            }
            // Dropping the turn on a timeout retires the channel if the
            // message on it is unanswered.
            let attempt = self
                .publish_once(lane, &manager, &publish, turn.as_mut(), deadline)
                .await?;
            match attempt {
                Attempt::Answered(answer) => return answer,
                Attempt::TimedOut => return Err(gave_up()),
                Attempt::Lost(error) => {
                    tracing::warn!(%exchange, %routing_key, %error, "the publish was not confirmed before its channel failed; publishing it again");
                    manager.report_trouble();
                    // Not in a tight loop if the channel keeps failing.
                    let backoff = backoff.get_or_insert_with(|| self.retry_backoff());
                    let waited =
                        tokio::time::timeout_at(deadline, backoff.wait(manager.shutting_down()));
                    if Box::pin(waited).await.is_err() {
                        return Err(gave_up());
                    }
                }
            }
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

    /// One publish on the lane's channel and the broker's answer to it, by
    /// `deadline`.
    async fn publish_once(
        &self,
        lane: &Lane,
        manager: &ConnectionManager,
        publish: &Publish<'_>,
        mut turn: Option<&mut Turn>,
        deadline: Instant,
    ) -> Result<Attempt> {
        let Publish {
            exchange,
            routing_key,
            body,
            mandatory,
            ..
        } = *publish;
        let channel = match lane.open_channel() {
            Some(channel) => channel,
            None => {
                let setting_up =
                    tokio::time::timeout_at(deadline, self.set_up_channel(lane, manager));
                match Box::pin(setting_up).await {
                    Ok(channel) => channel?,
                    Err(_) => return Ok(Attempt::TimedOut),
                }
            }
        };
        let properties = publish.properties()?;
        check_header_size(routing_key, &properties, manager)?;
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
                    properties,
                )
                .await?
                .await
        };
        // Pinned here and lent to `settle_by`: moving it there would copy
        // lapin's publish future (over 1 KiB) once more per publish.
        tokio::pin!(confirmed);
        let outcome = match settle_by(confirmed.as_mut(), manager, deadline).await {
            Settled::Answered(outcome) => outcome,
            Settled::TimedOut => return Ok(Attempt::TimedOut),
            Settled::ManagerEnded => return Err(manager.ended()),
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
        // RabbitMQ 3.10 to 3.13 crash on a direct reply-to address that
        // names no node of the cluster (see `request::reply_to`), and close
        // the connection. Sent again, the reply would close the next one.
        if classify::is_internal_error(&error)
            && publish.exchange.is_empty()
            && request::is_direct_reply_to(publish.routing_key)
        {
            return Err(Error::InvalidReplyTo {
                reply_to: publish.routing_key.to_owned(),
                reason: format!(
                    "the broker closed the connection on it ({error}): it names no channel of this cluster; not sent again"
                ),
            });
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

    /// The lane's confirm-mode channel on `manager`'s connection, when the
    /// lane has none open: one publish sets one up, the others wait for it.
    /// A new channel is put in confirm mode and the exchange declared on it,
    /// so a publisher that starts before any consumer does not publish into
    /// an exchange that does not exist (the broker would close the channel).
    async fn set_up_channel(
        &self,
        lane: &Lane,
        manager: &ConnectionManager,
    ) -> Result<Arc<Channel>> {
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
                    let channel = Arc::new(lease.channel);
                    *write(&lane.channel) = Some(channel.clone());
                    return Ok(channel);
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
        if self.is_local() {
            return Err(Error::Unavailable {
                connection: "publish",
                reason: "an in-memory testing::TestBroker has no broker to open a channel on"
                    .to_owned(),
            });
        }
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
        // A root: the connection outlives the publish that happened to start
        // it, whose span it would otherwise keep open.
        let span =
            tracing::info_span!(parent: None, "connection", purpose = Purpose::Publish.as_str());
        let task = self.tracker.spawn(manager.clone().run().instrument(span));
        *link = Some(Link {
            manager: manager.clone(),
            task,
        });
        manager
    }

    /// Why the publishing connection is down, while it is and an attempt to
    /// open it failed.
    pub(crate) fn connection_error(&self) -> Option<String> {
        read(&self.link)
            .as_ref()
            .and_then(|link| link.manager.last_error())
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

/// How the wait for a confirm ended.
enum Settled<T> {
    Answered(T),
    TimedOut,
    ManagerEnded,
}

/// How long a confirm is awaited before the wait also watches for the end
/// of the connection's manager.
///
/// A connection closed while a confirm is outstanding may take until its
/// heartbeat times out to fail the confirm (a blocked connection is not
/// read by the broker, so not even the close gets through): the end of the
/// manager ends the wait. Almost every confirm comes much sooner than this,
/// so almost no publish pays for the subscription; one outstanding when
/// the manager ends still ends within this long.
const WATCH_FOR_THE_END_AFTER: Duration = Duration::from_millis(500);

/// Awaits `confirmed` until `deadline`, and while it takes longer than
/// [`WATCH_FOR_THE_END_AFTER`], until the manager ends too. One timer: it
/// first fires at the grace period's end, then is moved to the deadline.
async fn settle_by<F: Future>(
    mut confirmed: Pin<&mut F>,
    manager: &ConnectionManager,
    deadline: Instant,
) -> Settled<F::Output> {
    let watch_from = Instant::now() + WATCH_FOR_THE_END_AFTER;
    let timer = tokio::time::sleep_until(watch_from.min(deadline));
    tokio::pin!(timer);
    tokio::select! {
        biased;
        outcome = &mut confirmed => return Settled::Answered(outcome),
        () = &mut timer => {}
    }
    if Instant::now() >= deadline {
        return Settled::TimedOut;
    }
    timer.as_mut().reset(deadline);
    let ended = manager.until_ended();
    tokio::select! {
        biased;
        outcome = confirmed => Settled::Answered(outcome),
        () = ended => Settled::ManagerEnded,
        () = timer => Settled::TimedOut,
    }
}

/// Properties that would not fit in one frame fail here: sent, they would
/// make the broker close the connection that every publish shares, and
/// sending them again would close it again.
fn check_header_size(
    routing_key: &str,
    properties: &BasicProperties,
    manager: &ConnectionManager,
) -> Result<()> {
    // Between the channel and this check the connection may have gone; the
    // publish then fails on the closed channel as any other would.
    // Without headers the properties are at most 14 short strings and a
    // few numbers, under the 4,096-byte frame every broker must accept:
    // only headers are worth measuring.
    if properties.headers().is_none() {
        return Ok(());
    }
    let Some(frame_max) = manager.frame_max() else {
        return Ok(());
    };
    let max = frame_size::properties_capacity(frame_max);
    let size = frame_size::properties_size(properties);
    if size > max {
        return Err(Error::HeadersTooLarge {
            routing_key: routing_key.to_owned(),
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

#[cfg(test)]
mod tests {
    use crate::Hutch;

    /// Each publish in flight is a future the caller keeps (200 of them in
    /// a `FuturesUnordered`, say) and moves at least once: its size is
    /// copied per publish. The wait for the confirm (lapin's publish
    /// future alone is over 1 KiB) is boxed, allocated once in place.
    #[tokio::test]
    async fn a_publish_in_flight_stays_small() {
        let hutch = Hutch::builder().build().unwrap();
        let publish = hutch.publish("size.check", &1);
        let size = std::mem::size_of_val(&publish);
        // 3,408 bytes before the wait for the confirm was boxed.
        assert!(size <= 1024, "a publish future takes {size} bytes");
    }
}
