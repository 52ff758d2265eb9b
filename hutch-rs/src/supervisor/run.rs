//! One consumption run: a consumer on one channel generation, from
//! `basic.consume` until the channel ends or shutdown.

use std::{
    collections::HashSet,
    panic::AssertUnwindSafe,
    pin::pin,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures_util::{
    FutureExt, StreamExt,
    future::{Fuse, FusedFuture},
    stream::FuturesUnordered,
};
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
        acks::{Ack, AckLedger},
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
    /// The handler succeeded: the run owes the broker an acknowledgement.
    Succeeded,
    /// Settled, or left to the broker to redeliver. A handler that
    /// panicked ends here too: its message was retried or dead-lettered
    /// like any failure, and the consumer goes on.
    Settled,
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

    /// Takes deliveries and runs up to the consumer's `concurrency`
    /// handler calls at once, on this task, until the channel ends, the
    /// consumer must restart, or shutdown.
    pub(super) async fn consume(self) -> Ended {
        let mut deliveries = self.deliveries.clone();
        let concurrency = usize::from(self.consumer.plan.concurrency);
        // Paying every half prefetch keeps the broker's window open while a
        // burst is worked through; an idle moment pays at once.
        let pay_at = usize::from(self.consumer.plan.prefetch).div_ceil(2);
        let mut ledger = AckLedger::default();
        let mut handlers = FuturesUnordered::new();
        let mut ending: Option<Ended> = None;
        // `basic.cancel` when the run starts to end, awaited alongside the
        // handlers still running, so that they are not held up by it.
        let mut cancelling = pin!(self.cancel_consume().fuse());
        cancelling.set(Fuse::terminated());
        loop {
            if ending.is_some() && handlers.is_empty() && cancelling.is_terminated() {
                break;
            }
            tokio::select! {
                biased;
                () = self.shutdown.cancelled(), if ending.is_none() => {
                    // Stop new deliveries at once; the handlers in flight
                    // finish and are settled.
                    cancelling.set(self.cancel_consume().fuse());
                    ending = Some(Ended::Shutdown);
                }
                () = &mut cancelling, if !cancelling.is_terminated() => {}
                Some((tag, handled)) = handlers.next(), if !handlers.is_empty() => {
                    match handled {
                        Handled::Succeeded => ledger.handled(tag),
                        Handled::Settled => ledger.settled(tag),
                        Handled::Ended(ended) => {
                            ledger.settled(tag);
                            if self.end_with(&mut ending, ended) {
                                cancelling.set(self.cancel_consume().fuse());
                            }
                        }
                    }
                    if ledger.owed() >= pay_at {
                        self.pay(&mut ledger);
                    }
                }
                next = deliveries.next(), if ending.is_none() && handlers.len() < concurrency => {
                    match next {
                        Some(Ok(delivery)) => {
                            let tag = delivery.delivery_tag;
                            ledger.delivered(tag);
                            handlers.push(self.handle(delivery).map(move |handled| (tag, handled)));
                        }
                        Some(Err(error)) if classify::is_channel_only(&error) => {
                            ending = Some(Ended::Crashed(format!("the broker closed the channel: {error}")));
                        }
                        Some(Err(error)) => ending = Some(Ended::ConnectionLost(error.to_string())),
                        None if self.channel.status().connected() => {
                            ending = Some(Ended::Crashed(
                                "the broker cancelled the consumer (was its queue deleted?)".to_owned(),
                            ));
                        }
                        None => ending = Some(Ended::ConnectionLost("the channel closed".to_owned())),
                    }
                }
                // Reached only when nothing else is ready: no delivery is
                // waiting and no handler has finished. Pay now rather than
                // keep handled messages unacknowledged while idle.
                () = std::future::ready(()), if ledger.owed() > 0 => self.pay(&mut ledger),
            }
        }
        // Everything handled is paid before the channel is closed or its
        // remaining deliveries are handed back, which would otherwise put
        // handled messages back in the queue.
        self.pay(&mut ledger);
        let ended = ending.unwrap_or(Ended::Shutdown);
        if matches!(ended, Ended::Shutdown) {
            self.close_channel().await;
        } else if self.channel.status().connected() {
            // The consumer restarts or gives up on this still open channel.
            self.release_outstanding().await;
        }
        ended
    }

    /// Records why the run ends (the first reason wins). True when new
    /// deliveries must be stopped with `basic.cancel`; handlers already
    /// running finish first.
    fn end_with(&self, ending: &mut Option<Ended>, ended: Ended) -> bool {
        if ending.is_some() {
            tracing::warn!(?ended, "the consumer was already ending");
            return false;
        }
        // A forward interrupted by shutdown: the shutdown token ends the run.
        let cancel = !matches!(ended, Ended::Shutdown) && self.channel.status().connected();
        *ending = Some(ended);
        cancel
    }

    /// Sends the acknowledgements the ledger owes, on this run's channel:
    /// a delivery tag means nothing on any other. Each frame is queued
    /// before this returns, so they reach the broker in order, after every
    /// settle a finished handler already made.
    fn pay(&self, ledger: &mut AckLedger) {
        for ack in ledger.pay() {
            let (tag, multiple) = match ack {
                Ack::UpTo(tag) => (tag, true),
                Ack::One(tag) => (tag, false),
            };
            // The frame is queued on the first poll; the broker does not
            // answer acknowledgements, so what is left is lapin confirming
            // the write, which nobody needs to wait for.
            let sending = self
                .channel
                .basic_ack(tag, BasicAckOptions { multiple })
                .now_or_never();
            if let Some(Err(error)) = sending {
                self.consumer.observer.stale_ack(&self.consumer.name);
                tracing::warn!(delivery_tag = tag, multiple, %error, "could not acknowledge handled messages; the broker redelivers them");
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
                &self.consumer.plan.queue,
            )),
        };
        let failure = self.call_handler(&incoming).await;

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
            return Handled::Settled;
        }

        match failure {
            // Acknowledged by the run, together with its neighbours.
            None => Handled::Succeeded,
            // A panic is one message's failure, like an `Err`: the panic
            // was caught inside the call, nothing of the consumer is left
            // broken, so it keeps consuming on its channel.
            Some(error) => self.dispose(acker, incoming, delivery_tag, error).await,
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

    /// Ends `basic.consume`: the broker sends this consumer nothing more.
    /// Bounded: on a connection that is dying, the reply may never come;
    /// closing the channel or handing its deliveries back follows anyway.
    async fn cancel_consume(&self) {
        let cancelling = self
            .channel
            .basic_cancel(self.deliveries.tag(), BasicCancelOptions::default());
        match tokio::time::timeout(self.consumer.settings.connection_timeout, cancelling).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::debug!(%error, "basic.cancel failed"),
            Err(_) => tracing::debug!("basic.cancel timed out"),
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
