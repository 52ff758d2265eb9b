//! The private RabbitMQ node and what the orchestrator does on it outside
//! the measured phases: declaring the topology, filling and emptying queues,
//! checking that nothing was lost, stopping and starting the app.

use std::time::Duration;

use futures_util::{StreamExt, stream::FuturesUnordered};
use hutch_rs::testing::Broker;
use lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind,
    options::{
        BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
        QueueDeclareOptions, QueuePurgeOptions,
    },
    types::FieldTable,
};
use tokio::runtime::Runtime;

use crate::{
    Error,
    workload::{
        CONFIRM_WINDOW, CPU_KEY, CPU_QUEUE, DEAD_LETTER_KEY, DEAD_LETTER_QUEUE, DRAIN_KEY,
        DRAIN_QUEUE, EXCHANGE, IDLE_CONSUMERS, LATENCY_KEY, LATENCY_QUEUE, PUBLISH_KEY,
        PUBLISH_QUEUE, Payload, RECOVERY_KEY, RECOVERY_QUEUE, STEADY_KEY, STEADY_QUEUE, STORM_KEY,
        STORM_QUEUE, dead_queue, idle_key, idle_queue, persistent_json,
    },
};

/// The benchmark's broker node, with a small runtime for the orchestrator's
/// own (unmeasured) lapin work.
#[derive(Debug)]
pub(crate) struct BenchBroker {
    broker: Broker,
    runtime: Runtime,
}

impl BenchBroker {
    /// Starts a private node (about ten seconds) and declares every queue
    /// the scenarios use.
    pub(crate) fn start() -> Result<Self, Error> {
        let bench = Self {
            broker: Broker::start()?,
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?,
        };
        bench.declare_topology()?;
        Ok(bench)
    }

    /// The AMQP URI of the node.
    pub(crate) fn uri(&self) -> String {
        self.broker.amqp_uri()
    }

    /// The AMQP port, which the recovery scenario polls.
    pub(crate) fn amqp_port(&self) -> u16 {
        self.broker.amqp_port()
    }

    /// The OS pid of the node's Erlang VM.
    pub(crate) fn os_pid(&self) -> Result<u32, Error> {
        Ok(self
            .broker
            .os_pid()
            .ok_or("the broker's pid file is missing")?)
    }

    /// The RabbitMQ version, from the management API.
    pub(crate) fn version(&self) -> Result<String, Error> {
        let overview = self.broker.management_get("overview")?;
        Ok(overview["rabbitmq_version"]
            .as_str()
            .unwrap_or("unknown")
            .to_owned())
    }

    /// `rabbitmqctl -n <node> <command>`.
    pub(crate) fn ctl(&self, command: &str) -> Result<(), Error> {
        self.broker.rabbitmqctl(&[command])?;
        Ok(())
    }

    /// Messages in `queue`, ready and unacknowledged, exactly (rabbitmqctl).
    pub(crate) fn messages_in(&self, queue: &str) -> Result<u64, Error> {
        let info = self
            .broker
            .queue(queue)?
            .ok_or_else(|| format!("queue {queue:?} does not exist"))?;
        Ok(info.messages)
    }

    /// Ready and unacknowledged messages in `queue`, exactly (rabbitmqctl).
    pub(crate) fn ready_and_unacked(&self, queue: &str) -> Result<(u64, u64), Error> {
        let info = self
            .broker
            .queue(queue)?
            .ok_or_else(|| format!("queue {queue:?} does not exist"))?;
        Ok((info.messages_ready, info.messages_unacknowledged))
    }

    /// Fails unless `queue` holds no message, ready or unacknowledged, and
    /// `<queue>:dead` exactly `dead`: every failed message was forwarded
    /// once, and every original settled.
    pub(crate) fn expect_forwarded(&self, queue: &str, dead: u64) -> Result<(), Error> {
        let (ready, unacked) = self.ready_and_unacked(queue)?;
        let forwarded = self.messages_in(&dead_queue(queue))?;
        if (ready, unacked, forwarded) != (0, 0, dead) {
            return Err(format!(
                "{queue}: {ready} ready, {unacked} unacked, {forwarded} in its dead-letter queue (expected 0, 0, {dead})"
            )
            .into());
        }
        Ok(())
    }

    /// Consumers on the queues whose name starts with `prefix`, exactly
    /// (rabbitmqctl: the management API's counts lag by seconds).
    pub(crate) fn consumers_on(&self, prefix: &str) -> Result<u64, Error> {
        Ok(self
            .broker
            .queues()?
            .iter()
            .filter(|queue| queue.name.starts_with(prefix))
            .map(|queue| queue.consumers)
            .sum())
    }

    /// Empties `queue`.
    pub(crate) fn purge(&self, queue: &str) -> Result<(), Error> {
        self.with_channel(async |channel| {
            channel
                .queue_purge(queue.into(), QueuePurgeOptions::default())
                .await?;
            Ok(())
        })
    }

    /// Publishes `count` persistent messages straight to `queue` (default
    /// exchange), each confirmed, up to [`CONFIRM_WINDOW`] at once.
    pub(crate) fn fill(&self, queue: &str, count: u64) -> Result<(), Error> {
        self.fill_with(queue, count, persistent_json())
    }

    /// Fills `queue` as [`fill`](Self::fill) does, every message published
    /// with `properties`.
    pub(crate) fn fill_with(
        &self,
        queue: &str,
        count: u64,
        properties: BasicProperties,
    ) -> Result<(), Error> {
        self.with_channel(async |channel| {
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            let mut confirms = FuturesUnordered::new();
            for seq in 0..count {
                if confirms.len() >= CONFIRM_WINDOW {
                    expect_ack(confirms.next().await)?;
                }
                let body = serde_json::to_vec(&Payload::new(seq, 0))?;
                let confirm = channel
                    .basic_publish(
                        "".into(),
                        queue.into(),
                        BasicPublishOptions::default(),
                        &body,
                        properties.clone(),
                    )
                    .await?;
                confirms.push(confirm);
            }
            while !confirms.is_empty() {
                expect_ack(confirms.next().await)?;
            }
            Ok(())
        })
    }

    /// Declares the exchange and every queue as hutch-rs declares them
    /// (`topology.rs`: durable, no arguments, bound with the consumer's
    /// routing key), so that the raw clients can run before hutch-rs ever
    /// did; hutch-rs's own declarations then agree with these.
    fn declare_topology(&self) -> Result<(), Error> {
        let mut queues = vec![
            (DRAIN_QUEUE.to_owned(), DRAIN_KEY.to_owned()),
            (PUBLISH_QUEUE.to_owned(), PUBLISH_KEY.to_owned()),
            (LATENCY_QUEUE.to_owned(), LATENCY_KEY.to_owned()),
            (RECOVERY_QUEUE.to_owned(), RECOVERY_KEY.to_owned()),
        ];
        for (queue, key) in [
            (DEAD_LETTER_QUEUE, DEAD_LETTER_KEY),
            (CPU_QUEUE, CPU_KEY),
            (STORM_QUEUE, STORM_KEY),
            (STEADY_QUEUE, STEADY_KEY),
        ] {
            queues.push((queue.to_owned(), key.to_owned()));
        }
        queues.extend((0..IDLE_CONSUMERS).map(|n| (idle_queue(n), idle_key(n))));
        // hutch-rs's dead-letter queues: durable, no arguments, unbound.
        let dead = [DEAD_LETTER_QUEUE, STORM_QUEUE].map(dead_queue);
        self.with_channel(async |channel| {
            channel
                .exchange_declare(
                    EXCHANGE.into(),
                    ExchangeKind::Topic,
                    ExchangeDeclareOptions {
                        durable: true,
                        ..ExchangeDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await?;
            let durable = QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            };
            for queue in &dead {
                channel
                    .queue_declare(queue.as_str().into(), durable, FieldTable::default())
                    .await?;
            }
            for (queue, key) in &queues {
                channel
                    .queue_declare(queue.as_str().into(), durable, FieldTable::default())
                    .await?;
                channel
                    .queue_bind(
                        queue.as_str().into(),
                        EXCHANGE.into(),
                        key.as_str().into(),
                        QueueBindOptions::default(),
                        FieldTable::default(),
                    )
                    .await?;
            }
            Ok(())
        })
    }

    /// Runs `work` on a channel of a fresh connection, closed afterwards.
    fn with_channel(
        &self,
        work: impl AsyncFnOnce(&Channel) -> Result<(), Error>,
    ) -> Result<(), Error> {
        self.runtime.block_on(async {
            let connection =
                Connection::connect(&self.uri(), ConnectionProperties::default()).await?;
            let channel = connection.create_channel().await?;
            let outcome = work(&channel).await;
            connection.close(200, "done".into()).await?;
            outcome
        })
    }
}

/// Fails unless the broker acked the publish.
pub(crate) fn expect_ack(confirm: Option<lapin::Result<lapin::Confirmation>>) -> Result<(), Error> {
    match confirm {
        Some(Ok(confirmation)) if confirmation.is_ack() => Ok(()),
        Some(Ok(confirmation)) => {
            Err(format!("the broker refused a publish: {confirmation:?}").into())
        }
        Some(Err(error)) => Err(error.into()),
        None => Err("no confirm awaited".into()),
    }
}

/// How long a broker operation may take before the run counts as broken.
pub(crate) const PATIENCE: Duration = Duration::from_secs(300);
