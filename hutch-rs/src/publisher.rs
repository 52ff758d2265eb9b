//! Confirmed publishing on a connection of its own.

use std::{
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use lapin::{
    BasicProperties, Channel, Connection,
    options::{BasicPublishOptions, ConfirmSelectOptions},
};
use serde::Serialize;
use tokio::sync::Mutex;

use crate::{
    Error, Result,
    config::Settings,
    supervisor::connection::{Purpose, connect},
    topology,
};

/// AMQP delivery mode 2: the broker writes the message to disk in a durable queue.
const PERSISTENT: u8 = 2;

/// Publishes JSON messages to the exchange and waits for the broker's confirm.
///
/// The connection is opened on the first publish and opened again when it was
/// lost; a consumer-side outage never blocks publishing and vice versa.
#[derive(Debug)]
pub(crate) struct Publisher {
    settings: Arc<Settings>,
    link: Mutex<Option<Link>>,
}

/// The publishing connection and its channel in confirm mode.
#[derive(Debug)]
struct Link {
    connection: Connection,
    channel: Channel,
}

impl Publisher {
    pub(crate) fn new(settings: Arc<Settings>) -> Self {
        Self {
            settings,
            link: Mutex::new(None),
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
        self.publish_bytes(routing_key, &body, properties).await
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
        let confirm = channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                body,
                properties,
            )
            .await
            .map_err(publish_error)?;
        let timeout = self.settings.confirm_timeout;
        let confirmation = tokio::time::timeout(timeout, confirm)
            .await
            .map_err(|_| Error::PublishTimeout {
                routing_key: routing_key.to_owned(),
                timeout,
            })?
            .map_err(publish_error)?;
        if confirmation.is_ack() {
            Ok(())
        } else {
            Err(Error::PublishNacked {
                routing_key: routing_key.to_owned(),
            })
        }
    }

    /// The confirm-mode channel, connecting first when there is none or the
    /// last one was lost. The exchange is declared on every new channel so a
    /// publisher that starts before any consumer does not publish into an
    /// exchange that does not exist (the broker would close the channel).
    async fn channel(&self) -> Result<Channel> {
        let mut link = self.link.lock().await;
        if let Some(existing) = link.as_ref()
            && existing.channel.status().connected()
        {
            return Ok(existing.channel.clone());
        }
        let connection = connect(&self.settings.uri, Purpose::Publish).await?;
        let setup = async {
            let channel = connection.create_channel().await?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            Ok::<_, lapin::Error>(channel)
        };
        let channel = setup.await.map_err(|source| Error::Connect {
            uri: self.settings.uri.to_string(),
            source: Box::new(source),
        })?;
        topology::declare_exchange(&channel, &self.settings.exchange).await?;
        if let Some(stale) = link.replace(Link {
            connection,
            channel: channel.clone(),
        }) {
            // The channel is gone; make sure its connection is too.
            let _ = stale
                .connection
                .close(200, "hutch-rs publisher reconnecting".into())
                .await;
        }
        Ok(channel)
    }

    /// Closes the publishing connection, if open.
    pub(crate) async fn close(&self) -> Result<()> {
        let Some(link) = self.link.lock().await.take() else {
            return Ok(());
        };
        if !link.connection.status().connected() {
            return Ok(());
        }
        link.connection
            .close(200, "hutch-rs publisher closed".into())
            .await
            .map_err(|source| Error::Close {
                connection: Purpose::Publish.as_str(),
                source: Box::new(source),
            })
    }
}

fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or_default()
}
