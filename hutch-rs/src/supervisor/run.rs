//! One consumption run: a consumer on one channel generation, from
//! `basic.consume` until the channel ends or shutdown.

use std::{
    collections::HashSet,
    panic::AssertUnwindSafe,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures_util::{FutureExt, StreamExt};
use lapin::{
    Channel,
    message::Delivery,
    options::{BasicAckOptions, BasicCancelOptions, BasicNackOptions},
};
use tokio_util::sync::CancellationToken;

use crate::{
    config::Settings,
    handler::HandlerOutcome,
    message::{Envelope, Incoming},
    panic::panic_message,
    retry::HandlerError,
    supervisor::{
        classify,
        consumer::{ConsumerSupervisor, Ended},
    },
};

/// One consumption run on one channel: the channel generation every
/// delivery of this run belongs to.
pub(super) struct Run<'a> {
    pub(super) consumer: &'a ConsumerSupervisor,
    pub(super) channel: Channel,
    deliveries: lapin::Consumer,
    /// The delay queues declared on this channel so far.
    pub(super) delay_queues: Mutex<HashSet<Duration>>,
    /// Cancelled on shutdown: stops waiting out a publisher outage.
    pub(super) shutdown: CancellationToken,
}

/// Puts one delivery back at the head of its queue.
pub(super) const REQUEUE: BasicNackOptions = BasicNackOptions {
    multiple: false,
    requeue: true,
};

/// What handling one delivery came to, for the run.
pub(super) enum Handled {
    /// Settled, or left to the broker to redeliver.
    Settled,
    /// The handler panicked: the message was dealt with as a failure, and
    /// the consumer restarts.
    Panicked(String),
    /// A failed message could not be forwarded; it was put back, and the
    /// run ends this way.
    Ended(Ended),
}

impl<'a> Run<'a> {
    pub(super) fn new(
        consumer: &'a ConsumerSupervisor,
        channel: Channel,
        deliveries: lapin::Consumer,
        shutdown: &CancellationToken,
    ) -> Self {
        Self {
            consumer,
            channel,
            deliveries,
            delay_queues: Mutex::new(HashSet::new()),
            shutdown: shutdown.clone(),
        }
    }

    pub(super) async fn consume(mut self) -> Ended {
        let shutdown = self.shutdown.clone();
        loop {
            let next = tokio::select! {
                biased;
                () = shutdown.cancelled() => return self.stop().await,
                next = self.deliveries.next() => next,
            };
            match next {
                Some(Ok(delivery)) => {
                    let handling = self.handle(delivery);
                    tokio::pin!(handling);
                    let handled = tokio::select! {
                        biased;
                        handled = &mut handling => handled,
                        () = shutdown.cancelled() => {
                            // Stop new deliveries at once; let the in-flight
                            // handler finish and be settled.
                            let (_, handled) = tokio::join!(self.cancel_consume(), handling);
                            match handled {
                                Handled::Panicked(panic) => {
                                    tracing::error!(%panic, "handler panicked during shutdown");
                                }
                                Handled::Ended(ended) => {
                                    tracing::error!(?ended, "a failed message could not be forwarded during shutdown; it was put back");
                                }
                                Handled::Settled => {}
                            }
                            self.close_channel().await;
                            return Ended::Shutdown;
                        }
                    };
                    match handled {
                        Handled::Settled => {}
                        Handled::Panicked(panic) => {
                            self.release_outstanding().await;
                            return Ended::Crashed(format!("the handler panicked: {panic}"));
                        }
                        Handled::Ended(Ended::Shutdown) => return self.stop().await,
                        Handled::Ended(ended) => {
                            if self.channel.status().connected() {
                                self.release_outstanding().await;
                            }
                            return ended;
                        }
                    }
                }
                Some(Err(error)) if classify::is_channel_only(&error) => {
                    return Ended::Crashed(format!("the broker closed the channel: {error}"));
                }
                Some(Err(error)) => return Ended::ConnectionLost(error.to_string()),
                None if self.channel.status().connected() => {
                    return Ended::Crashed(
                        "the broker cancelled the consumer (was its queue deleted?)".to_owned(),
                    );
                }
                None => return Ended::ConnectionLost("the channel closed".to_owned()),
            }
        }
    }

    async fn handle(&self, delivery: Delivery) -> Handled {
        let Delivery {
            delivery_tag,
            exchange,
            routing_key,
            redelivered,
            properties,
            data,
            acker,
        } = delivery;
        // lapin hands over what it had buffered before it reports the
        // channel's end. Those deliveries are already back in the queue:
        // running their handlers would only do the work twice.
        if !acker.usable() || !self.channel.status().connected() {
            tracing::debug!(
                delivery_tag,
                "delivery of a closed channel skipped; the broker redelivers it"
            );
            return Handled::Settled;
        }
        let incoming = Incoming {
            body: data,
            envelope: Arc::new(Envelope::of_delivery(
                exchange.as_str(),
                routing_key.as_str(),
                redelivered,
                properties,
            )),
        };
        let failure = self.call_handler(&incoming).await;
        let panic = match &failure {
            Some(HandlerError::Panicked(panic)) => Some(panic.clone()),
            _ => None,
        };

        // A delivery tag is only valid on the channel it came from. If that
        // channel closed while the handler ran, the broker has already taken
        // the message back; settling it on a newer channel would make the
        // broker close that one (406 unknown delivery tag). Nor is a failed
        // message forwarded: its redelivery is the same attempt again.
        if !self.channel.status().connected() {
            self.consumer.observer.stale_ack(&self.consumer.name);
            let outcome = failure.map_or_else(
                || "succeeded".to_owned(),
                |error| format!("failed: {error}"),
            );
            tracing::warn!(message_id = %message_id(&incoming), delivery_tag, %outcome, "the delivery's channel closed while it was handled; not settled, the broker redelivers it");
            return panic.map_or(Handled::Settled, Handled::Panicked);
        }

        let handled = match failure {
            None => {
                let acked = settle(
                    &self.consumer.settings,
                    acker.ack(BasicAckOptions::default()),
                )
                .await;
                self.settled(acked, &incoming, delivery_tag);
                Handled::Settled
            }
            Some(error) => self.dispose(acker, incoming, delivery_tag, error).await,
        };
        match (handled, panic) {
            (Handled::Settled, Some(panic)) => Handled::Panicked(panic),
            (handled, _) => handled,
        }
    }

    /// Decodes and calls the handler, bounded by the consumer's timeout.
    /// `None` when it succeeded.
    async fn call_handler(&self, incoming: &Incoming) -> Option<HandlerError> {
        let handler = self.consumer.plan.registration.handler();
        let timeout = self.consumer.plan.timeout;
        // The handler is called inside the guarded future so that a panic
        // while decoding is caught as well as one in the handler's body.
        let called = AssertUnwindSafe(tokio::time::timeout(timeout, async {
            handler(incoming).await
        }))
        .catch_unwind()
        .await;
        match called {
            Ok(Ok(HandlerOutcome::Succeeded)) => None,
            Ok(Ok(HandlerOutcome::Failed(error))) => Some(HandlerError::Failed(error)),
            Ok(Ok(HandlerOutcome::Undecodable(error))) => Some(HandlerError::Undecodable(error)),
            Ok(Err(_elapsed)) => Some(HandlerError::TimedOut(timeout)),
            Err(panic) => Some(HandlerError::Panicked(panic_message(panic.as_ref()))),
        }
    }

    /// Logs what settling a delivery came to when it did not work out.
    pub(super) fn settled(
        &self,
        settled: lapin::Result<bool>,
        incoming: &Incoming,
        delivery_tag: u64,
    ) {
        match settled {
            Ok(true) => {}
            Ok(false) => {
                self.consumer.observer.stale_ack(&self.consumer.name);
                tracing::warn!(message_id = %message_id(incoming), delivery_tag, "the delivery's channel closed before it was settled; the broker redelivers it");
            }
            Err(error) => {
                tracing::warn!(message_id = %message_id(incoming), delivery_tag, %error, "could not settle the message; the broker redelivers it")
            }
        }
    }

    /// Before the consumer restarts on this (still open) channel: stop the
    /// old `basic.consume` and hand back what was prefetched for it, which
    /// would otherwise stay unacknowledged on the channel.
    async fn release_outstanding(&self) {
        self.cancel_consume().await;
        let all = BasicNackOptions {
            multiple: true,
            ..REQUEUE
        };
        // Delivery tag 0 with `multiple` means every unacknowledged delivery
        // of the channel, all of which belong to this consumer.
        if let Err(error) = self.channel.basic_nack(0, all).await {
            tracing::warn!(%error, "could not requeue prefetched messages");
        }
    }

    async fn stop(&self) -> Ended {
        self.cancel_consume().await;
        self.close_channel().await;
        Ended::Shutdown
    }

    /// Ends `basic.consume`: the broker sends this consumer nothing more.
    async fn cancel_consume(&self) {
        if let Err(error) = self
            .channel
            .basic_cancel(self.deliveries.tag(), BasicCancelOptions::default())
            .await
        {
            tracing::debug!(%error, "basic.cancel failed");
        }
    }

    /// Closes the channel; deliveries that were prefetched but not handled
    /// go back to the queue.
    async fn close_channel(&self) {
        if let Err(error) = self.channel.close(200, "hutch-rs shutdown".into()).await {
            tracing::debug!(%error, "closing the channel failed during shutdown");
        }
        tracing::info!("stopped");
    }
}

/// The message id of a delivery, for logs.
pub(super) fn message_id(incoming: &Incoming) -> &str {
    incoming.envelope.message_id().unwrap_or_default()
}

/// Settles a delivery, bounded: on a connection that is dying, the
/// acknowledgement may never be written.
pub(super) async fn settle(
    settings: &Settings,
    settling: impl std::future::Future<Output = lapin::Result<bool>>,
) -> lapin::Result<bool> {
    tokio::time::timeout(settings.connection_timeout, settling)
        .await
        .unwrap_or(Ok(false))
}
