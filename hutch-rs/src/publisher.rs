//! Confirmed publishing on a connection of its own.

use std::{
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use lapin::{
    BasicProperties, Channel,
    options::{BasicPublishOptions, ConfirmSelectOptions},
};
use serde::Serialize;
use tokio::{sync::Mutex, task::JoinHandle};

use crate::{
    Error, Result,
    config::Settings,
    supervisor::{
        classify, connection::Purpose, connection_manager::ConnectionManager, observer::Observer,
    },
    topology,
};

/// AMQP delivery mode 2: the broker writes the message to disk in a durable queue.
const PERSISTENT: u8 = 2;

/// The owner name of the publishing channel in its connection manager.
const PUBLISHER: &str = "publisher";

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
    /// The channel in confirm mode, once set up.
    channel: Mutex<Option<Channel>>,
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
            channel: Mutex::new(None),
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
            .with_timestamp(unix_seconds());
        let timeout = self.settings.confirm_timeout;
        // Bounds the wait for a connection as well as for the confirm.
        tokio::time::timeout(timeout, self.publish_bytes(routing_key, &body, properties))
            .await
            .map_err(|_| Error::PublishTimeout {
                routing_key: routing_key.to_owned(),
                timeout,
            })?
    }

    async fn publish_bytes(
        &self,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<()> {
        let exchange = self.settings.exchange.as_str();
        let publish_error = |source| Error::Publish {
            exchange: exchange.to_owned(),
            routing_key: routing_key.to_owned(),
            source: Box::new(source),
        };
        let channel = self.channel().await?;
        let confirmed = async {
            channel
                .basic_publish(
                    exchange.into(),
                    routing_key.into(),
                    BasicPublishOptions::default(),
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
        if confirmation.is_ack() {
            Ok(())
        } else {
            Err(Error::PublishNacked {
                routing_key: routing_key.to_owned(),
            })
        }
    }

    /// The confirm-mode channel. A new channel is put in confirm mode and
    /// the exchange declared on it, so a publisher that starts before any
    /// consumer does not publish into an exchange that does not exist (the
    /// broker would close the channel).
    async fn channel(&self) -> Result<Channel> {
        let mut cached = self.channel.lock().await;
        if let Some(channel) = cached.as_ref()
            && channel.status().connected()
        {
            return Ok(channel.clone());
        }
        let manager = self.manager().await;
        loop {
            let lease = manager
                .channel(PUBLISHER)
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
        self.channel.lock().await.take();
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

fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or_default()
}
