//! Confirmed publishing on a connection of its own.

use std::{sync::Arc, time::SystemTime};

use lapin::{
    BasicProperties, Channel,
    options::{BasicPublishOptions, ConfirmSelectOptions},
};
use serde::Serialize;
use tokio::{sync::Mutex, task::JoinHandle};

use crate::{
    Error, Result,
    config::Settings,
    properties::{PERSISTENT, unix_seconds},
    supervisor::{
        classify, connection::Purpose, connection_manager::ConnectionManager, observer::Observer,
    },
    topology,
};

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

/// Publishes JSON messages to the exchange and waits for the broker's confirm.
///
/// It has a connection of its own, supervised like the consumers' one: opened
/// on the first publish, re-opened when lost. A consumer-side outage never
/// blocks publishing and vice versa.
#[derive(Debug)]
pub(crate) struct Publisher {
    settings: Arc<Settings>,
    observer: Observer,
    link: Mutex<Option<Link>>,
    /// The application's publishes, any number in flight.
    publishing: Lane,
    /// Copies of failed messages (mandatory publishes), one at a time.
    forwarding: Lane,
    /// Held for the whole of a forward. lapin hands a `basic.return` to
    /// whichever confirm completes next, and the broker may confirm several
    /// publishes at once: with two mandatory publishes in flight on a
    /// channel, a return could be blamed on the wrong one (and a lost copy
    /// taken for a confirmed one). One at a time, a return is the forward's.
    forward_turn: Mutex<()>,
}

/// The publishing connection's manager and the task running it.
#[derive(Debug)]
struct Link {
    manager: ConnectionManager,
    task: JoinHandle<Result<()>>,
}

impl Publisher {
    pub(crate) fn new(settings: Arc<Settings>, observer: Observer) -> Self {
        Self {
            settings,
            observer,
            link: Mutex::new(None),
            publishing: Lane::new("publisher"),
            forwarding: Lane::new("forwarder"),
            forward_turn: Mutex::new(()),
        }
    }

    /// Serializes `value` as JSON and publishes it persistently with a fresh
    /// message id and a timestamp; resolves once the broker confirms it.
    pub(crate) async fn publish_json<T: Serialize + ?Sized>(
        &self,
        routing_key: &str,
        value: &T,
    ) -> Result<()> {
        topology::check_publish_routing_key(routing_key)?;
        let body = serde_json::to_vec(value).map_err(|source| Error::Encode {
            routing_key: routing_key.to_owned(),
            source,
        })?;
        let properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(PERSISTENT)
            .with_message_id(uuid::Uuid::new_v4().to_string().into())
            .with_timestamp(unix_seconds(SystemTime::now()));
        let exchange = self.settings.exchange.clone();
        let publishing = self.publish_bytes(
            &self.publishing,
            &exchange,
            routing_key,
            &body,
            properties,
            false,
        );
        self.within_confirm_timeout(routing_key, publishing).await
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
        let forwarding = async {
            let _turn = self.forward_turn.lock().await;
            self.publish_bytes(&self.forwarding, "", queue, body, properties, true)
                .await
        };
        self.within_confirm_timeout(queue, forwarding).await
    }

    /// Bounds a whole publish, waiting for a connection included, by the
    /// confirm timeout.
    async fn within_confirm_timeout(
        &self,
        routing_key: &str,
        publishing: impl std::future::Future<Output = Result<()>>,
    ) -> Result<()> {
        let timeout = self.settings.confirm_timeout;
        tokio::time::timeout(timeout, publishing)
            .await
            .map_err(|_| Error::PublishTimeout {
                routing_key: routing_key.to_owned(),
                timeout,
            })?
    }

    async fn publish_bytes(
        &self,
        lane: &Lane,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
        mandatory: bool,
    ) -> Result<()> {
        let publish_error = |source| Error::Publish {
            exchange: exchange.to_owned(),
            routing_key: routing_key.to_owned(),
            source: Box::new(source),
        };
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
            Err(error) => {
                self.report_trouble().await;
                return Err(publish_error(error));
            }
        };
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

    async fn report_trouble(&self) {
        if let Some(link) = self.link.lock().await.as_ref() {
            link.manager.report_trouble();
        }
    }

    /// Closes the publishing connection, if open.
    pub(crate) async fn close(&self) -> Result<()> {
        self.publishing.channel.lock().await.take();
        self.forwarding.channel.lock().await.take();
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
