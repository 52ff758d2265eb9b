//! One consumer under supervision: it asks its connection manager for its
//! channel, applies all of its state to it, hands each delivery to the
//! registered function, and is restarted when it fails.

use std::{panic::AssertUnwindSafe, sync::Arc, time::Instant};

use futures_util::FutureExt;
use lapin::{
    Channel,
    options::{BasicConsumeOptions, BasicQosOptions},
    types::FieldTable,
};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub(crate) mod calling;
mod forwarding;
mod ledger;
mod receiving;
mod settling;
pub(crate) mod verdict;

use crate::{
    Error, Result,
    backoff::Backoff,
    config::Settings,
    context::ConsumerScope,
    panic::panic_message,
    publisher::Publisher,
    retry::{HookQueues, queues},
    status::ConsumerState,
    supervisor::{
        classify, connection_manager::ConnectionManager, intensity::RestartIntensity,
        observer::Observer,
    },
    topology::{self, ConsumerPlan},
};

use receiving::Run;

/// How one run of a consumer on its channel ended.
#[derive(Debug)]
pub(super) enum Ended {
    /// Asked to stop.
    Shutdown,
    /// The connection went away: the manager reconnects; the consumer
    /// waits for its channel. Not a consumer failure.
    ConnectionLost(String),
    /// The consumer's own machinery failed (the broker cancelled it or
    /// closed its channel): restarted under the restart intensity. A
    /// handler's panic is not this: it is one message's failure.
    Crashed(String),
    /// The broker refused something the user must fix (a delay queue that
    /// exists with other arguments, say): ends `run`.
    Fatal(Error),
}

/// One consumer and what it needs to restart itself.
#[derive(Debug)]
pub(crate) struct ConsumerSupervisor {
    pub(super) plan: ConsumerPlan,
    pub(super) name: String,
    pub(super) settings: Arc<Settings>,
    manager: ConnectionManager,
    pub(super) observer: Observer,
    /// Where copies of failed messages (retries, dead letters) are
    /// published: the publishing connection, so that a consumer's
    /// connection never publishes and a broker alarm cannot block its acks.
    pub(super) publisher: Arc<Publisher>,
    /// Where failures are reported to the error hooks.
    pub(super) hooks: Arc<HookQueues>,
    /// What every handler call shares: the running `Hutch`, the names.
    pub(super) scope: Arc<ConsumerScope>,
}

impl ConsumerSupervisor {
    pub(crate) fn new(
        plan: ConsumerPlan,
        scope: Arc<ConsumerScope>,
        settings: Arc<Settings>,
        manager: ConnectionManager,
        observer: Observer,
        publisher: Arc<Publisher>,
        hooks: Arc<HookQueues>,
    ) -> Self {
        Self {
            name: plan.name(),
            plan,
            settings,
            manager,
            observer,
            publisher,
            hooks,
            scope,
        }
    }

    /// Runs the consumer until `shutdown`, restarting it after failures.
    /// `ready` is sent the first time it consumes. `Err` is for the caller
    /// of `run`: a fatal error, more restarts than the intensity allows, or
    /// a panic in the consumer's own code.
    ///
    /// A handler's panic is caught per call and is that message's failure.
    /// A panic in a run on a channel (the run loop, settling, forwarding: a
    /// bug in hutch-rs) is a crash of the consumer's machinery, restarted
    /// under the restart intensity (see `consume_on`). A panic anywhere
    /// else (the restart loop itself) is caught here, at the task's
    /// boundary: the consumer is reported failed (status, event, `Err`)
    /// rather than left showing "consuming" with no task behind it, and its
    /// channels are closed, so the broker redelivers what it had not
    /// settled.
    pub(crate) async fn supervise(
        self,
        shutdown: CancellationToken,
        ready: oneshot::Sender<()>,
    ) -> Result<()> {
        let span = tracing::info_span!("consumer", consumer = %self.name, queue = %self.plan.queue);
        let name = self.name.clone();
        let queue = self.plan.queue.clone();
        let observer = self.observer.clone();
        let manager = self.manager.clone();
        let publisher = self.publisher.clone();
        // Nothing of the consumer is used after a panic but these handles
        // (a channel map and a status map, both left consistent).
        let supervised = AssertUnwindSafe(self.restart_loop(shutdown, ready))
            .catch_unwind()
            .instrument(span.clone())
            .await;
        let panic = match supervised {
            Ok(outcome) => return outcome,
            Err(panic) => panic_message(panic.as_ref()),
        };
        let reason = format!("the consumer's task panicked: {panic}");
        let restarts = observer.consumer_restarts(&name);
        async {
            tracing::error!(%reason, "the consumer failed outside a handler; giving up on it");
            observer.consumer_failed(&name, reason.clone());
            manager.release(&name).await;
            publisher.release(&forwarder_name(&name)).await;
        }
        .instrument(span)
        .await;
        Err(Error::ConsumerFailed {
            consumer: name,
            queue,
            restarts,
            reason,
        })
    }

    async fn restart_loop(
        self,
        shutdown: CancellationToken,
        ready: oneshot::Sender<()>,
    ) -> Result<()> {
        let mut ready = Some(ready);
        let mut intensity =
            RestartIntensity::new(self.settings.max_restarts, self.settings.restart_period);
        let mut restart_backoff = Backoff::new(
            self.settings.reconnect_min_delay,
            self.settings.reconnect_max_delay,
        );
        loop {
            self.observer
                .consumer_state(&self.name, ConsumerState::WaitingForChannel);
            let lease = tokio::select! {
                biased;
                () = shutdown.cancelled() => Ok(None),
                lease = self.manager.channel(&self.name) => lease,
            };
            let lease = match lease {
                Ok(lease) => lease,
                Err(source) => {
                    let error = Error::Declare {
                        resource: format!("a channel for consumer {}", self.name),
                        source: Box::new(source),
                    };
                    tracing::error!(%error, "no channel on a live connection");
                    self.observer.consumer_failed(&self.name, error.to_string());
                    return Err(error);
                }
            };
            let Some(lease) = lease else {
                // Shutdown, or the manager gave up (it reports why itself).
                self.observer
                    .consumer_state(&self.name, ConsumerState::Stopped);
                return Ok(());
            };
            self.observer
                .consumer_state(&self.name, ConsumerState::Starting);
            // Bounded: on a connection that is dying, a reply may never come.
            let setup = tokio::time::timeout(
                self.settings.connection_timeout,
                self.start_on(&lease.channel),
            )
            .await
            .unwrap_or_else(|_| {
                Err(Setup::Failed(
                    lapin::ErrorKind::InvalidChannelState(
                        lapin::ChannelState::Error,
                        "channel setup timed out",
                    )
                    .into(),
                ))
            });
            let ended = match setup {
                Ok(deliveries) => {
                    tracing::info!(
                        channel = lease.channel.id(),
                        reused = !lease.fresh,
                        "consuming"
                    );
                    self.observer.consumer_started(
                        &self.name,
                        &self.plan.queue,
                        lease.channel.id(),
                    );
                    if let Some(ready) = ready.take() {
                        let _ = ready.send(());
                    }
                    self.consume_on(lease.channel, deliveries, &shutdown).await
                }
                Err(Setup::Fatal(error)) => {
                    tracing::error!(%error, "the broker refused this consumer's setup");
                    self.observer.consumer_failed(&self.name, error.to_string());
                    self.manager.release(&self.name).await;
                    return Err(error);
                }
                Err(Setup::Failed(error)) if classify::is_channel_only(&error) => {
                    Ended::Crashed(format!("setting up the channel failed: {error}"))
                }
                Err(Setup::Failed(error)) => Ended::ConnectionLost(error.to_string()),
            };
            match ended {
                Ended::Fatal(error) => {
                    tracing::error!(%error, "the broker refused what this consumer needs");
                    self.observer.consumer_failed(&self.name, error.to_string());
                    self.manager.release(&self.name).await;
                    return Err(error);
                }
                Ended::Shutdown => {
                    self.observer
                        .consumer_state(&self.name, ConsumerState::Stopped);
                    return Ok(());
                }
                Ended::ConnectionLost(reason) => {
                    tracing::warn!(%reason, "connection lost; waiting for a new channel");
                    self.manager.report_trouble();
                }
                Ended::Crashed(reason) => {
                    if !intensity.allow_restart(Instant::now()) {
                        tracing::error!(%reason, restarts = intensity.total(), "failed more often than the restart intensity allows; giving up");
                        self.observer.consumer_failed(&self.name, reason.clone());
                        // The other consumers may go on; this one's channel
                        // must not stay open behind it.
                        self.manager.release(&self.name).await;
                        return Err(Error::ConsumerFailed {
                            consumer: self.name.clone(),
                            queue: self.plan.queue.clone(),
                            restarts: intensity.total(),
                            reason,
                        });
                    }
                    tracing::warn!(%reason, restarts = intensity.total(), "consumer failed; restarting it");
                    self.observer
                        .consumer_restarted(&self.name, intensity.total(), reason);
                    // The first restart within the intensity's window is
                    // immediate; repeated ones back off (the reconnect
                    // delays), so a broker that is still recovering gets
                    // time before the intensity is used up.
                    if intensity.recent() <= 1 {
                        restart_backoff.reset();
                    } else {
                        // Cut short by shutdown, which the loop then sees.
                        restart_backoff.wait(&shutdown).await;
                    }
                }
            }
        }
    }

    /// Consumes on `channel` until the run ends. A panic in the run (the
    /// consumer's own code, not a handler: a bug in hutch-rs) ends this run
    /// alone: everything the run knew (its ledger, its calls, its copies in
    /// flight) went with it, so its channels are closed, the broker
    /// redelivers what it had not settled, and the consumer restarts on a
    /// new channel under its restart intensity, like any other crash of its
    /// machinery. Nothing the next run uses outlives this one but the shared
    /// maps (channels, status), which no panic leaves half written.
    async fn consume_on(
        &self,
        channel: Channel,
        deliveries: lapin::Consumer,
        shutdown: &CancellationToken,
    ) -> Ended {
        let run = Run::new(self, channel, deliveries, shutdown).consume();
        let panic = match AssertUnwindSafe(run).catch_unwind().await {
            Ok(ended) => return ended,
            Err(panic) => panic_message(panic.as_ref()),
        };
        let reason = format!("the consumer's task panicked: {panic}");
        tracing::error!(%reason, "the consumer failed outside a handler; closing its channels");
        self.manager.release(&self.name).await;
        self.publisher.release(&forwarder_name(&self.name)).await;
        Ended::Crashed(reason)
    }

    /// Applies the consumer's whole channel state: qos, the exchange, its
    /// queue and bindings, its dead-letter queue, then `basic.consume` with
    /// manual acks (delay queues are declared when first needed). Done on
    /// every start, because a new channel has none of it and a restarted
    /// consumer may find its queue gone.
    async fn start_on(&self, channel: &Channel) -> std::result::Result<lapin::Consumer, Setup> {
        channel
            .basic_qos(self.plan.prefetch, BasicQosOptions::default())
            .await
            .map_err(Setup::Failed)?;
        topology::declare_exchange(channel, &self.settings.exchange)
            .await
            .map_err(Setup::from_declare)?;
        topology::declare_consumer_queue(channel, &self.settings.exchange, &self.plan)
            .await
            .map_err(Setup::from_declare)?;
        queues::declare_dead_letter_queue(channel, &self.plan)
            .await
            .map_err(Setup::from_declare)?;
        channel
            .basic_consume(
                self.plan.queue.as_str().into(),
                consumer_tag(&self.plan).into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|source| {
                Setup::from_declare(Error::Declare {
                    resource: format!(
                        "basic.consume on queue {:?} for {}",
                        self.plan.queue, self.name
                    ),
                    source: Box::new(source),
                })
            })
    }
}

/// Why a consumer could not start on its channel.
pub(super) enum Setup {
    /// The broker refused something the user must fix.
    Fatal(Error),
    /// The channel or connection failed meanwhile.
    Failed(lapin::Error),
}

impl Setup {
    pub(super) fn from_declare(error: Error) -> Self {
        match error {
            Error::Declare { source, .. } if !classify::is_fatal_channel_error(&source) => {
                Setup::Failed(*source)
            }
            error => Setup::Fatal(error),
        }
    }
}

/// The owner name of a consumer's forwarding channel on the publishing
/// connection.
pub(super) fn forwarder_name(consumer: &str) -> String {
    format!("forwarding for {consumer}")
}

fn consumer_tag(plan: &ConsumerPlan) -> String {
    format!("hutch-rs:{}:{}", plan.queue, uuid::Uuid::new_v4().simple())
}
