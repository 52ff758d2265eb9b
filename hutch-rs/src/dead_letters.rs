//! A consumer's dead-letter queue, `<queue>:dead`, for people: what is in
//! it, and putting messages back in front of the consumer once the bug
//! that failed them is fixed. What the `dead` subcommands of the command
//! line run.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lapin::{
    BasicProperties, Channel, Connection,
    options::{
        BasicAckOptions, BasicGetOptions, BasicPublishOptions, QueueDeclareOptions,
        QueuePurgeOptions,
    },
    types::{AMQPValue, FieldTable, ShortString},
};

use crate::{
    Error, Hutch, Result, headers,
    registry::{self, ConsumerRegistration},
    retry::queues,
    supervisor::connection::{Purpose, connect},
    topology,
};

/// The headers a dead copy carries about its failure, dropped from a
/// replay: the replay is a fresh start. The original route stays, for the
/// consumer to restore.
const FAILURE_HEADERS: &[&str] = &[
    headers::ATTEMPT,
    headers::ATTEMPTS,
    headers::ERROR,
    headers::CONSUMER,
    headers::QUEUE,
    headers::REASON,
    headers::FAILED_AT,
    headers::COPY,
    headers::DELIVERY_COUNT,
    "x-death",
    "x-first-death-exchange",
    "x-first-death-queue",
    "x-first-death-reason",
    "x-last-death-reason",
    "x-last-death-queue",
    "x-last-death-exchange",
];

/// One message in a dead-letter queue, with what its headers say about
/// its failure.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct DeadMessage {
    /// The publisher's message id.
    pub message_id: Option<String>,
    /// The routing key it was first published with.
    pub routing_key: Option<String>,
    /// `poison`, `rejected` or `attempts-exhausted`; `None` for a message
    /// the broker dead-lettered (a quorum queue's delivery limit, a TTL, a
    /// length limit).
    pub reason: Option<String>,
    /// The last failure's text.
    pub error: Option<String>,
    /// How many attempts were made.
    pub attempts: Option<u32>,
    /// When it was given up on.
    pub failed_at: Option<SystemTime>,
    /// How many times it was replayed before.
    pub replays: u32,
    /// The dead copy's properties, headers included.
    pub properties: BasicProperties,
    /// The body, unchanged.
    pub body: Vec<u8>,
}

impl DeadMessage {
    fn of(properties: BasicProperties, body: Vec<u8>) -> Self {
        let table = properties.headers().clone().unwrap_or_default();
        let text = |name: &str| headers::text(&table, name);
        let number = |name: &str| headers::number(&table, name);
        let failed_at = match table.inner().get(headers::FAILED_AT) {
            Some(AMQPValue::Timestamp(seconds)) => {
                UNIX_EPOCH.checked_add(Duration::from_secs(*seconds))
            }
            _ => None,
        };
        Self {
            message_id: properties
                .message_id()
                .as_ref()
                .map(|id| id.as_str().to_owned()),
            routing_key: text(headers::ORIGINAL_ROUTING_KEY),
            reason: text(headers::REASON),
            error: text(headers::ERROR),
            attempts: number(headers::ATTEMPTS).and_then(|n| u32::try_from(n).ok()),
            failed_at,
            replays: number(headers::REPLAYS)
                .and_then(|n| u32::try_from(n).ok())
                .unwrap_or(0),
            properties,
            body,
        }
    }
}

/// How a replay went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Replayed {
    /// Messages put back in the consumer's queue (and gone from the
    /// dead-letter queue).
    pub replayed: usize,
    /// Messages left in the dead-letter queue.
    pub remaining: u32,
}

/// One consumer's dead-letter queue, on a connection of its own; see
/// [`Hutch::dead_letters`].
#[derive(Debug)]
pub struct DeadLetters {
    connection: Connection,
    consumer: String,
    queue: String,
    dead_queue: String,
}

impl Hutch {
    /// The dead-letter queue of `consumer` (its function's name, its path
    /// `module::function` or the end of it, or its queue's name), on a connection of its own
    /// to the first broker that answers. Any registered consumer, whatever
    /// the group.
    ///
    /// # Errors
    ///
    /// [`Error::UnknownConsumer`] listing the registered ones;
    /// [`Error::Connect`] or [`Error::Tls`] if no broker accepts the
    /// connection.
    pub async fn dead_letters(&self, consumer: &str) -> Result<DeadLetters> {
        let registration = find_consumer(self, consumer)?;
        let settings = self.settings();
        let queue = topology::queue_name(settings.namespace.as_deref(), registration);
        let mut failure = None;
        for uri in &settings.uris {
            match connect(
                uri,
                Purpose::Tooling,
                settings.heartbeat,
                settings.tls.as_ref(),
            )
            .await
            {
                Ok(connection) => {
                    return Ok(DeadLetters {
                        connection,
                        consumer: registration.qualified_name(),
                        dead_queue: queues::dead_letter_queue(&queue),
                        queue,
                    });
                }
                Err(error) => failure = Some(error),
            }
        }
        Err(failure.unwrap_or_else(|| Error::Config {
            setting: "uri".to_owned(),
            reason: "no broker URI".to_owned(),
        }))
    }
}

/// The registered consumer `name` designates.
fn find_consumer(hutch: &Hutch, name: &str) -> Result<&'static ConsumerRegistration> {
    let namespace = hutch.namespace();
    let registrations = registry::consumers();
    let matching: Vec<&'static ConsumerRegistration> = registrations
        .iter()
        .copied()
        .filter(|registration| {
            let qualified = registration.qualified_name();
            qualified == name
                || registration.function() == name
                || qualified.ends_with(&format!("::{name}"))
                || topology::queue_name(namespace, registration) == name
        })
        .collect();
    match matching.as_slice() {
        [one] => Ok(one),
        _ => Err(Error::UnknownConsumer {
            name: name.to_owned(),
            known: registrations
                .iter()
                .map(|registration| registration.qualified_name())
                .collect(),
        }),
    }
}

impl DeadLetters {
    /// The consumer, `module::function`.
    #[must_use]
    pub fn consumer(&self) -> &str {
        &self.consumer
    }

    /// The consumer's queue, where replayed messages go.
    #[must_use]
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// The dead-letter queue, `<queue>:dead`.
    #[must_use]
    pub fn dead_queue(&self) -> &str {
        &self.dead_queue
    }

    /// How many messages the dead-letter queue holds.
    ///
    /// # Errors
    ///
    /// [`Error::DeadLetters`] if the queue does not exist or the broker
    /// cannot be asked.
    pub async fn count(&self) -> Result<u32> {
        let channel = self.channel("count").await?;
        let count = self.depth(&channel, &self.dead_queue, "count").await;
        close(&channel).await;
        count
    }

    /// The first `limit` messages, oldest first, left where they are.
    ///
    /// They are taken without acknowledgement and handed back when the
    /// channel closes; RabbitMQ puts them back in their places. On a quorum
    /// queue each look counts as a delivery towards the queue's delivery
    /// limit (RabbitMQ 4 defaults to 20), past which the broker drops a
    /// dead letter: look at a quorum dead-letter queue sparingly.
    ///
    /// # Errors
    ///
    /// [`Error::DeadLetters`] if the queue does not exist or the connection
    /// fails.
    pub async fn peek(&self, limit: usize) -> Result<Vec<DeadMessage>> {
        let channel = self.channel("read").await?;
        let mut messages = Vec::new();
        while messages.len() < limit {
            let got = channel
                .basic_get(
                    self.dead_queue.as_str().into(),
                    BasicGetOptions { no_ack: false },
                )
                .await
                .map_err(|error| self.failed("read", &error, messages.len()))?;
            let Some(message) = got else { break };
            messages.push(DeadMessage::of(
                message.delivery.properties,
                message.delivery.data,
            ));
        }
        // Closing hands every unacknowledged message back.
        close(&channel).await;
        Ok(messages)
    }

    /// Puts up to `limit` messages (all, with `None`) back in front of the
    /// consumer, oldest first: each goes through the default exchange to
    /// the consumer's queue alone (not to every queue bound to its routing
    /// key, which handled it already), with its failure headers removed
    /// and [`headers::REPLAYS`] counting the replays; the consumer sees its
    /// original routing key and attempt 1.
    ///
    /// Each message moves in one AMQP transaction: the copy's publish and
    /// the dead copy's acknowledgement are committed together, and the
    /// broker answers the commit once the copy is safely stored. Stopped
    /// at any point on this side (the connection lost, the process killed),
    /// a message is either moved or still dead, never both nor neither; run
    /// the replay again for the rest. (A publisher confirm followed by the
    /// acknowledgement, the other way to move a message, duplicates every
    /// message whose acknowledgement is cut off after its confirm.)
    ///
    /// What the transaction does not cover is a crash of the broker node
    /// in the middle of a commit: RabbitMQ applies a commit's publish and
    /// then its acknowledgement without making the two atomic (its "Broker
    /// Semantics" page: transactions are not atomic across queues), so a
    /// node that dies at that moment may keep both copies or, if it had
    /// not yet stored the new one, neither.
    ///
    /// # Errors
    ///
    /// [`Error::DeadLetters`] if the consumer's queue does not exist (start
    /// the application or `declare` first: a replay into nowhere would lose
    /// the messages), or the connection fails; the reason says how many
    /// were moved before.
    pub async fn replay(&self, limit: Option<usize>) -> Result<Replayed> {
        let channel = self.channel("replay").await?;
        let replayed = self.replay_on(&channel, limit).await;
        close(&channel).await;
        let replayed = replayed?;
        Ok(Replayed {
            replayed,
            remaining: self.count().await?,
        })
    }

    async fn replay_on(&self, channel: &Channel, limit: Option<usize>) -> Result<usize> {
        // The consumer's queue must be there: a copy routed nowhere would
        // be dropped, and its dead copy acknowledged with it.
        self.depth(channel, &self.queue, "replay").await?;
        channel
            .tx_select()
            .await
            .map_err(|error| self.failed("replay", &error, 0))?;
        let mut replayed = 0;
        while limit.is_none_or(|limit| replayed < limit) {
            let got = channel
                .basic_get(
                    self.dead_queue.as_str().into(),
                    BasicGetOptions { no_ack: false },
                )
                .await
                .map_err(|error| self.failed("replay", &error, replayed))?;
            let Some(message) = got else { break };
            let delivery = message.delivery;
            let moved = async {
                channel
                    .basic_publish(
                        "".into(),
                        self.queue.as_str().into(),
                        BasicPublishOptions::default(),
                        &delivery.data,
                        replay_properties(&delivery.properties),
                    )
                    .await?;
                channel
                    .basic_ack(delivery.delivery_tag, BasicAckOptions::default())
                    .await?;
                channel.tx_commit().await
            };
            moved
                .await
                .map_err(|error| self.failed("replay", &error, replayed))?;
            replayed += 1;
        }
        Ok(replayed)
    }

    /// Deletes every message of the dead-letter queue; returns how many.
    ///
    /// # Errors
    ///
    /// [`Error::DeadLetters`] if the queue does not exist or the connection
    /// fails.
    pub async fn purge(&self) -> Result<u32> {
        let channel = self.channel("purge").await?;
        let purged = channel
            .queue_purge(
                self.dead_queue.as_str().into(),
                QueuePurgeOptions::default(),
            )
            .await
            .map_err(|error| self.failed("purge", &error, 0));
        close(&channel).await;
        purged
    }

    /// Closes the connection.
    ///
    /// # Errors
    ///
    /// [`Error::DeadLetters`] if the broker does not answer the close.
    pub async fn close(self) -> Result<()> {
        self.connection
            .close(200, "done".into())
            .await
            .map_err(|error| self.failed("close", &error, 0))
    }

    async fn channel(&self, action: &'static str) -> Result<Channel> {
        self.connection
            .create_channel()
            .await
            .map_err(|error| self.failed(action, &error, 0))
    }

    /// How many messages `queue` holds, by a passive declaration: an error
    /// if it does not exist.
    async fn depth(&self, channel: &Channel, queue: &str, action: &'static str) -> Result<u32> {
        channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map(|declared| declared.message_count())
            .map_err(|error| Error::DeadLetters {
                queue: self.dead_queue.clone(),
                reason: format!(
                    "cannot {action}: queue {queue:?} is not there ({error}); start the \
                     application or run `declare` first"
                ),
            })
    }

    fn failed(&self, action: &str, error: &lapin::Error, done: usize) -> Error {
        Error::DeadLetters {
            queue: self.dead_queue.clone(),
            reason: format!("{action} failed after {done} message(s): {error}"),
        }
    }
}

/// The properties of a replayed copy: the dead copy's, without its failure
/// headers, with the replay counted.
fn replay_properties(dead: &BasicProperties) -> BasicProperties {
    let mut table = dead.headers().clone().unwrap_or_default();
    let replays = headers::number(&table, headers::REPLAYS).unwrap_or(0);
    let mut kept = FieldTable::default();
    for (name, value) in table.inner() {
        if !FAILURE_HEADERS.contains(&name.as_str()) && name.as_str() != headers::REPLAYS {
            kept.insert(name.clone(), value.clone());
        }
    }
    kept.insert(
        ShortString::from(headers::REPLAYS),
        AMQPValue::LongLongInt(replays.saturating_add(1)),
    );
    table = kept;
    dead.clone().with_headers(table)
}

/// Closes `channel`, handing back what it took; a channel already closed
/// (its connection lost) has nothing to hand back.
async fn close(channel: &Channel) {
    if let Err(error) = channel.close(200, "done".into()).await {
        tracing::debug!(%error, "closing a dead-letter channel");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::LongString;

    #[test]
    fn a_replay_drops_the_failure_and_counts_itself() {
        let mut table = FieldTable::default();
        for name in [
            headers::ERROR,
            headers::REASON,
            headers::CONSUMER,
            "x-death",
        ] {
            table.insert(name.into(), AMQPValue::LongString(LongString::from("x")));
        }
        table.insert(
            headers::ORIGINAL_ROUTING_KEY.into(),
            AMQPValue::LongString(LongString::from("orders.placed")),
        );
        table.insert(
            "tenant".into(),
            AMQPValue::LongString(LongString::from("7")),
        );
        let dead = BasicProperties::default()
            .with_headers(table)
            .with_message_id("m-1".into());
        let once = replay_properties(&dead);
        let twice = replay_properties(&once);
        let headers = twice.headers().clone().unwrap();
        let names: Vec<&str> = headers.inner().keys().map(ShortString::as_str).collect();
        assert_eq!(
            names,
            ["tenant", headers::ORIGINAL_ROUTING_KEY, headers::REPLAYS]
        );
        assert_eq!(headers::number(&headers, headers::REPLAYS), Some(2));
        assert_eq!(twice.message_id().as_ref().unwrap().as_str(), "m-1");
    }
}
