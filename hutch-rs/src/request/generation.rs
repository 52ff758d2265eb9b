//! One request channel: a confirm-mode channel on the publishing connection
//! that consumes its replies from `amq.rabbitmq.reply-to`, and the task that
//! routes what comes back on it.

use std::sync::Arc;

use lapin::{
    BasicProperties, Channel,
    options::{BasicConsumeOptions, BasicPublishOptions},
    types::FieldTable,
};
use tokio::sync::mpsc;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::Instrument;

use crate::{
    Error, Result,
    backoff::Backoff,
    config::Settings,
    publisher::Publisher,
    request::{
        dispatch::{Dispatch, Sent},
        pending::{Pending, Waiting},
    },
    supervisor::{classify, connection_manager::ConnectionManager, observer::Observer},
    topology,
};

/// RabbitMQ's direct reply-to pseudo-queue: a request names it as its
/// `reply_to`, and the reply comes to the channel that sent the request
/// (which must consume from it first), with no queue to declare or leak.
pub(crate) const DIRECT_REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// The request channel's owner name on the publishing connection.
const OWNER: &str = "requests";

/// The consumer tag of the replies' consumer.
const CONSUMER_TAG: &str = "hutch-rs replies";

/// One request channel, from its setup until it closes. Requests sent on
/// it wait in its [`Pending`]; when it closes, they are interrupted and the
/// next request sets up another.
#[derive(Debug)]
pub(super) struct Generation {
    channel: Channel,
    pending: Arc<Pending>,
    sent: mpsc::UnboundedSender<Sent>,
}

/// What setting up a request channel needs from its `Hutch`.
pub(super) struct Setup<'a> {
    pub(super) settings: &'a Settings,
    pub(super) publisher: &'a Publisher,
    pub(super) observer: &'a Observer,
    pub(super) shutdown: &'a CancellationToken,
    pub(super) tracker: &'a TaskTracker,
}

impl Generation {
    /// Sets up a request channel: confirm mode, the exchange (so that a
    /// request sent before any consumer runs is returned as unroutable
    /// rather than closing the channel), and the replies' consumer, whose
    /// task is spawned on the root. Waits while the publishing connection
    /// is down and retries what fails for want of it; the caller bounds the
    /// wait.
    pub(super) async fn open(setup: Setup<'_>) -> Result<Self> {
        let mut backoff = Backoff::new(
            setup.settings.reconnect_min_delay,
            setup.settings.reconnect_max_delay,
        );
        loop {
            // A channel from a setup cut short (its request timed out) may
            // already consume from the reply-to, and a second consumer
            // there is refused: each setup starts on a new channel.
            setup.publisher.release(OWNER).await;
            let (channel, manager) = setup.publisher.confirm_channel(OWNER).await?;
            match consume_replies(&channel, &setup.settings.exchange).await {
                Ok(replies) => return Ok(Self::started(&setup, channel, manager, replies)),
                Err(Error::Declare { source, .. })
                    if !classify::is_fatal_channel_error(&source) =>
                {
                    tracing::debug!(error = %source, "setting up the request channel failed; retrying");
                    manager.report_trouble();
                    backoff.wait(manager.shutting_down()).await;
                }
                Err(error) => {
                    setup.publisher.release(OWNER).await;
                    return Err(error);
                }
            }
        }
    }

    fn started(
        setup: &Setup<'_>,
        channel: Channel,
        manager: ConnectionManager,
        replies: lapin::Consumer,
    ) -> Self {
        let pending = Arc::new(Pending::default());
        let (sent, sent_receiver) = mpsc::unbounded_channel();
        let dispatch = Dispatch {
            replies,
            sent: sent_receiver,
            pending: pending.clone(),
            observer: setup.observer.clone(),
            manager,
            shutdown: setup.shutdown.clone(),
        };
        // A root: it outlives the request that started it.
        let span = tracing::debug_span!(parent: None, "requests", channel = channel.id());
        setup.tracker.spawn(dispatch.run().instrument(span));
        Self {
            channel,
            pending,
            sent,
        }
    }

    /// Whether requests can go out on it: open, and its task running.
    pub(super) fn is_usable(&self) -> bool {
        self.channel.status().connected() && !self.pending.is_closed()
    }

    /// Registers a request before it is sent; `None` if the channel has
    /// ended meanwhile.
    pub(super) fn register(&self, correlation_id: String) -> Option<Waiting> {
        self.pending.register(correlation_id)
    }

    /// Publishes a registered request, mandatory, to `exchange`; its confirm
    /// goes to the channel's task.
    pub(super) async fn send(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
        correlation_id: String,
    ) -> lapin::Result<()> {
        let confirm = self
            .channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                body,
                properties,
            )
            .await?;
        // If the task has ended, the request's waiting learns it from the
        // closed `Pending`; the confirm no longer matters.
        let _ = self.sent.send(Sent {
            correlation_id,
            confirm,
        });
        Ok(())
    }
}

/// Declares the exchange on `channel` and consumes from the direct reply-to
/// on it, without acknowledgements (which it does not take).
async fn consume_replies(channel: &Channel, exchange: &str) -> Result<lapin::Consumer> {
    topology::declare_exchange(channel, exchange).await?;
    channel
        .basic_consume(
            DIRECT_REPLY_TO.into(),
            CONSUMER_TAG.into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(|source| Error::Declare {
            resource: format!("a consumer of {DIRECT_REPLY_TO} for replies"),
            source: Box::new(source),
        })
}
