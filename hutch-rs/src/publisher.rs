//! Confirmed publishing on a connection of its own.

use std::sync::Arc;

use futures_util::{StreamExt, stream};
use lapin::{
    BasicProperties, Channel, Confirmation,
    options::{BasicPublishOptions, ConfirmSelectOptions},
};
use tokio::{sync::Mutex, task::JoinHandle};

use crate::{
    Error, Result,
    config::Settings,
    outgoing::{Outgoing, Published},
    supervisor::{
        classify, connection::Purpose, connection_manager::ConnectionManager, observer::Observer,
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
    /// The channel, once set up.
    channel: Mutex<Option<Channel>>,
}

impl Lane {
    const fn new(owner: &'static str) -> Self {
        Self {
            owner,
            channel: Mutex::const_new(None),
        }
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
    link: Mutex<Option<Link>>,
    /// Ordinary publishes, any number in flight.
    publishing: Lane,
    /// Mandatory publishes (the application's, and copies of failed
    /// messages), one at a time.
    returning: Lane,
    /// Held for the whole of a mandatory publish. lapin hands a
    /// `basic.return` to whichever confirm completes next, and the broker
    /// may confirm several publishes at once: with two mandatory publishes
    /// in flight on a channel, a return could be blamed on the wrong one
    /// (and a lost message taken for a confirmed one). One at a time, a
    /// return is that publish's.
    returning_turn: Mutex<()>,
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
    /// same message (same id) goes out again on the next connection.
    Lost(lapin::Error),
}

impl Publisher {
    pub(crate) fn new(settings: Arc<Settings>, observer: Observer) -> Self {
        Self {
            settings,
            observer,
            link: Mutex::new(None),
            publishing: Lane::new("publisher"),
            returning: Lane::new("mandatory publisher"),
            returning_turn: Mutex::new(()),
        }
    }

    /// Publishes `outgoing` to the exchange and resolves once the broker has
    /// confirmed it, within the confirm timeout.
    pub(crate) async fn publish(&self, outgoing: &Outgoing) -> Result<Published> {
        topology::check_publish_routing_key(&outgoing.routing_key)?;
        let (properties, message_id) = outgoing.properties();
        let mandatory = outgoing.options.is_mandatory();
        let exchange = self.settings.exchange.as_str();
        self.confirmed(
            exchange,
            &outgoing.routing_key,
            &outgoing.body,
            properties,
            mandatory,
        )
        .await?;
        Ok(Published::new(message_id))
    }

    /// Publishes every message, keeping up to [`BATCH_WINDOW`] confirms
    /// outstanding at once; one result per message, in order.
    pub(crate) async fn publish_batch(&self, batch: Vec<Outgoing>) -> Vec<Result<Published>> {
        stream::iter(&batch)
            .map(|outgoing| self.publish(outgoing))
            .buffered(BATCH_WINDOW)
            .collect()
            .await
    }

    /// Publishes a copy of a failed message straight to `queue` through the
    /// default exchange, mandatory: a queue that does not exist is an
    /// [`Error::Unroutable`], not a message silently dropped.
    pub(crate) async fn forward(
        &self,
        queue: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<()> {
        self.confirmed("", queue, body, properties, true).await
    }

    /// Publishes until the broker answers, within the confirm timeout:
    /// waiting for a connection, waiting while the broker blocks it, and
    /// publishing again (same properties, so the same message id) when the
    /// connection died before the confirm came. Only the broker's ack is a
    /// success.
    async fn confirmed(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
        mandatory: bool,
    ) -> Result<()> {
        let timeout = self.settings.confirm_timeout;
        let manager = self.manager().await;
        let mut blocked = manager.blocked();
        let publishing = async {
            let _turn = match mandatory {
                true => Some(self.returning_turn.lock().await),
                false => None,
            };
            let lane = if mandatory {
                &self.returning
            } else {
                &self.publishing
            };
            let mut blocked = manager.blocked();
            loop {
                // A blocked connection is not read by the broker: what is
                // sent now would sit in the socket. Wait for the alarm to
                // clear (within the timeout) instead.
                let _ = blocked.wait_for(Option::is_none).await;
                let attempt = self
                    .publish_once(
                        lane,
                        exchange,
                        routing_key,
                        body,
                        properties.clone(),
                        mandatory,
                    )
                    .await?;
                match attempt {
                    Attempt::Answered(answer) => return answer,
                    Attempt::Lost(error) => {
                        tracing::warn!(%exchange, %routing_key, %error, "the publish was not confirmed before its channel failed; publishing it again");
                        manager.report_trouble();
                        // Not in a tight loop if the channel keeps failing.
                        tokio::time::sleep(self.settings.reconnect_min_delay).await;
                    }
                }
            }
        };
        match tokio::time::timeout(timeout, publishing).await {
            Ok(answer) => answer,
            Err(_) => Err(match blocked.borrow_and_update().clone() {
                Some(reason) => Error::Blocked {
                    routing_key: routing_key.to_owned(),
                    reason,
                    timeout,
                },
                None => Error::PublishTimeout {
                    routing_key: routing_key.to_owned(),
                    timeout,
                },
            }),
        }
    }

    /// One publish on the lane's channel and the broker's answer to it.
    async fn publish_once(
        &self,
        lane: &Lane,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
        mandatory: bool,
    ) -> Result<Attempt> {
        let channel = self.channel(lane).await?;
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
        let confirmation = match confirmed.await {
            Ok(confirmation) => confirmation,
            Err(error) if classify::is_fatal_channel_error(&error) => {
                return Err(Error::Publish {
                    exchange: exchange.to_owned(),
                    routing_key: routing_key.to_owned(),
                    source: Box::new(error),
                });
            }
            Err(error) => return Ok(Attempt::Lost(error)),
        };
        Ok(Attempt::Answered(answer(
            confirmation,
            exchange,
            routing_key,
            mandatory,
        )))
    }

    /// The confirm-mode channel. A new channel is put in confirm mode and
    /// the exchange declared on it, so a publisher that starts before any
    /// consumer does not publish into an exchange that does not exist (the
    /// broker would close the channel).
    async fn channel(&self, lane: &Lane) -> Result<Channel> {
        let mut cached = lane.channel.lock().await;
        if let Some(channel) = cached.as_ref()
            && channel.status().connected()
        {
            return Ok(channel.clone());
        }
        let manager = self.manager().await;
        loop {
            let lease = manager
                .channel(lane.owner)
                .await
                .map_err(|source| Error::Declare {
                    resource: "the publishing channel".to_owned(),
                    source: Box::new(source),
                })?;
            let Some(lease) = lease else {
                return Err(self.ended().await);
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
                    *cached = Some(lease.channel.clone());
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

    /// The publishing connection's manager, started on first use (and again
    /// after `close` or a fatal error).
    async fn manager(&self) -> ConnectionManager {
        let mut link = self.link.lock().await;
        if let Some(existing) = link.as_ref()
            && !existing.task.is_finished()
        {
            return existing.manager.clone();
        }
        let manager = ConnectionManager::new(
            Purpose::Publish,
            self.settings.clone(),
            self.observer.clone(),
        );
        let task = tokio::spawn(manager.clone().run());
        *link = Some(Link {
            manager: manager.clone(),
            task,
        });
        manager
    }

    /// Why the manager ended, once it has.
    async fn ended(&self) -> Error {
        let task = self.link.lock().await.take().map(|link| link.task);
        let outcome = match task {
            Some(task) => task.await,
            None => Ok(Ok(())),
        };
        match outcome {
            Ok(Err(error)) => error,
            Ok(Ok(())) => Error::Unavailable {
                connection: Purpose::Publish.as_str(),
                reason: "it was closed".to_owned(),
            },
            Err(join) => Error::Unavailable {
                connection: Purpose::Publish.as_str(),
                reason: join.to_string(),
            },
        }
    }

    /// Closes the publishing connection, if open.
    pub(crate) async fn close(&self) -> Result<()> {
        self.publishing.channel.lock().await.take();
        self.returning.channel.lock().await.take();
        let Some(link) = self.link.lock().await.take() else {
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
        if let Some(link) = self.link.get_mut().as_ref() {
            link.manager.shut_down();
        }
    }
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
