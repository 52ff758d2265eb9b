//! One consumer: its channel, its queue, and the loop that hands each
//! delivery to the registered function and acks or rejects it.

use std::panic::AssertUnwindSafe;

use futures_util::{FutureExt, StreamExt};
use lapin::{
    Channel, Connection,
    message::Delivery,
    options::{
        BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicQosOptions,
        BasicRejectOptions,
    },
    types::FieldTable,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::{
    Error, Result,
    handler::HandlerOutcome,
    message::Incoming,
    topology::{self, ConsumerPlan},
};

/// A consumer whose channel is open, whose queue is declared and bound, and
/// whose `basic.consume` the broker has accepted.
pub(crate) struct Consumer {
    plan: ConsumerPlan,
    channel: Channel,
    deliveries: lapin::Consumer,
}

impl Consumer {
    /// Opens the consumer's channel and applies all of its state: qos, the
    /// queue and its bindings, and `basic.consume` with manual acks.
    pub(crate) async fn open(
        connection: &Connection,
        exchange: &str,
        prefetch: u16,
        plan: ConsumerPlan,
    ) -> Result<Self> {
        let channel = connection
            .create_channel()
            .await
            .map_err(|source| stopped(&plan, format!("could not open a channel: {source}")))?;
        channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await
            .map_err(|source| stopped(&plan, format!("basic.qos refused: {source}")))?;
        topology::declare_consumer_queue(&channel, exchange, &plan).await?;
        let deliveries = channel
            .basic_consume(
                plan.queue.as_str().into(),
                consumer_tag(&plan).into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|source| Error::Declare {
                resource: format!(
                    "basic.consume on queue {:?} for {}",
                    plan.queue,
                    plan.name()
                ),
                source: Box::new(source),
            })?;
        Ok(Self {
            plan,
            channel,
            deliveries,
        })
    }

    /// The queue this consumer consumes from.
    pub(crate) fn queue(&self) -> &str {
        &self.plan.queue
    }

    /// Consumes until `shutdown` is cancelled or the broker ends the
    /// consumer. An end hutch-rs did not ask for is reported on `failures`.
    pub(crate) async fn run(
        self,
        shutdown: CancellationToken,
        failures: mpsc::UnboundedSender<Error>,
    ) {
        let span =
            tracing::info_span!("consumer", consumer = %self.plan.name(), queue = %self.plan.queue);
        self.consume(shutdown, failures).instrument(span).await;
    }

    async fn consume(
        mut self,
        shutdown: CancellationToken,
        failures: mpsc::UnboundedSender<Error>,
    ) {
        tracing::info!("consuming");
        loop {
            let next = tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                next = self.deliveries.next() => next,
            };
            let reason = match next {
                Some(Ok(delivery)) => {
                    let handling = self.handle(delivery);
                    tokio::pin!(handling);
                    tokio::select! {
                        biased;
                        () = &mut handling => continue,
                        () = shutdown.cancelled() => {
                            // Stop new deliveries at once, and let the
                            // in-flight handler finish and be acked.
                            tokio::join!(self.cancel_consume(), handling);
                            self.close_channel().await;
                            return;
                        }
                    }
                }
                Some(Err(error)) => format!("the channel or connection failed: {error}"),
                None => "the broker cancelled the consumer (was its queue deleted?)".to_owned(),
            };
            tracing::error!(%reason, "consumer stopped");
            // The receiver is gone only when the application is already
            // shutting down, in which case there is nobody left to tell.
            let _ = failures.send(stopped(&self.plan, reason));
            return;
        }
        self.cancel_consume().await;
        self.close_channel().await;
    }

    /// Ends `basic.consume`: the broker sends this consumer nothing more.
    async fn cancel_consume(&self) {
        if let Err(error) = self
            .channel
            .basic_cancel(self.deliveries.tag(), BasicCancelOptions::default())
            .await
        {
            tracing::warn!(%error, "basic.cancel failed during shutdown");
        }
    }

    /// Closes the channel; deliveries that were prefetched but not handled
    /// go back to the queue.
    async fn close_channel(&self) {
        if let Err(error) = self.channel.close(200, "hutch-rs shutdown".into()).await {
            tracing::warn!(%error, "closing the channel failed during shutdown");
        }
        tracing::info!("stopped");
    }

    async fn handle(&self, delivery: Delivery) {
        let Delivery {
            delivery_tag,
            exchange,
            routing_key,
            redelivered,
            properties,
            data,
            acker,
        } = delivery;
        let message_id = properties
            .message_id()
            .as_ref()
            .map(|id| id.as_str().to_owned())
            .unwrap_or_default();
        let incoming = Incoming {
            body: data,
            exchange: exchange.to_string(),
            routing_key: routing_key.to_string(),
            redelivered,
            properties,
        };
        let handler = self.plan.registration.handler();
        // The handler is called inside the guarded future so that a panic
        // while decoding is caught as well as one in the handler's body.
        let outcome = AssertUnwindSafe(async move { handler(incoming).await })
            .catch_unwind()
            .await;

        // Nothing is requeued here: a message that failed once would fail
        // again at once and loop forever. Retries with a delay come from the
        // retry policy, not from requeueing.
        let reject = BasicRejectOptions { requeue: false };
        let settled = match outcome {
            Ok(HandlerOutcome::Succeeded) => acker.ack(BasicAckOptions::default()).await,
            Ok(HandlerOutcome::Failed(error)) => {
                tracing::error!(%message_id, delivery_tag, %error, "handler failed; message rejected");
                acker.reject(reject).await
            }
            Ok(HandlerOutcome::Undecodable(error)) => {
                tracing::error!(%message_id, delivery_tag, %error, "message cannot be decoded; rejected, handler not called");
                acker.reject(reject).await
            }
            Err(panic) => {
                let panic = panic_message(panic.as_ref());
                tracing::error!(%message_id, delivery_tag, %panic, "handler panicked; message rejected");
                acker.reject(reject).await
            }
        };
        match settled {
            Ok(true) => {}
            // The channel closed while the handler ran: the broker already
            // took the message back and will deliver it again.
            Ok(false) => {
                tracing::warn!(%message_id, delivery_tag, "channel closed before the message could be settled; the broker will redeliver it")
            }
            Err(error) => {
                tracing::warn!(%message_id, delivery_tag, %error, "could not settle the message; the broker will redeliver it")
            }
        }
    }
}

fn consumer_tag(plan: &ConsumerPlan) -> String {
    format!("hutch-rs:{}:{}", plan.queue, uuid::Uuid::new_v4().simple())
}

fn stopped(plan: &ConsumerPlan, reason: String) -> Error {
    Error::ConsumerStopped {
        consumer: plan.name(),
        queue: plan.queue.clone(),
        reason,
    }
}

/// The text of a panic payload (`panic!` gives a `&str` or a `String`).
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|text| (*text).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic with a non-string payload".to_owned())
}
