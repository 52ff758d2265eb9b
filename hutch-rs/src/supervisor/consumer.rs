//! One consumer under supervision: it asks its connection manager for its
//! channel, applies all of its state to it, hands each delivery to the
//! registered function, and is restarted when it fails.

use std::{
    collections::HashSet,
    panic::AssertUnwindSafe,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures_util::{FutureExt, StreamExt};
use lapin::{
    Channel,
    message::Delivery,
    options::{
        BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions,
        BasicQosOptions, BasicRejectOptions,
    },
    types::FieldTable,
};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::{
    Error, Result,
    config::Settings,
    handler::HandlerOutcome,
    message::Incoming,
    status::ConsumerState,
    supervisor::{
        classify, connection_manager::ConnectionManager, intensity::RestartIntensity,
        observer::Observer,
    },
    topology::{self, ConsumerPlan},
};

/// How one run of a consumer on its channel ended.
#[derive(Debug)]
enum Ended {
    /// Asked to stop.
    Shutdown,
    /// The connection went away: the manager reconnects; the consumer
    /// waits for its channel. Not a consumer failure.
    ConnectionLost(String),
    /// The consumer itself failed (a handler panicked, the broker cancelled
    /// it or closed its channel): restarted under the restart intensity.
    Crashed(String),
}

/// One consumer and what it needs to restart itself.
#[derive(Debug)]
pub(crate) struct ConsumerSupervisor {
    plan: ConsumerPlan,
    name: String,
    settings: Arc<Settings>,
    manager: ConnectionManager,
    observer: Observer,
    /// Message ids whose handler panicked once, kept across restarts: the
    /// second panic of the same message rejects it.
    panicked_once: Mutex<HashSet<String>>,
}

/// Bounds the memory of `panicked_once`; forgetting only means a message
/// gets one more delivery.
const MAX_REMEMBERED_PANICS: usize = 10_000;

impl ConsumerSupervisor {
    pub(crate) fn new(
        plan: ConsumerPlan,
        settings: Arc<Settings>,
        manager: ConnectionManager,
        observer: Observer,
    ) -> Self {
        Self {
            name: plan.name(),
            plan,
            settings,
            manager,
            observer,
            panicked_once: Mutex::new(HashSet::new()),
        }
    }

    /// Whether this message panicked before (and remembers that it did now).
    fn panicked_before(&self, message_id: &str, redelivered: bool) -> bool {
        if message_id.is_empty() {
            // Nothing to recognise it by: a redelivered message gets no more chances.
            return redelivered;
        }
        let mut panicked = self
            .panicked_once
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if panicked.remove(message_id) {
            return true;
        }
        if panicked.len() >= MAX_REMEMBERED_PANICS {
            panicked.clear();
        }
        panicked.insert(message_id.to_owned());
        false
    }

    /// Runs the consumer until `shutdown`, restarting it after failures.
    /// `ready` is sent the first time it consumes. `Err` is for the caller
    /// of `run`: a fatal error, or more restarts than the intensity allows.
    pub(crate) async fn supervise(
        self,
        shutdown: CancellationToken,
        ready: oneshot::Sender<()>,
    ) -> Result<()> {
        let span = tracing::info_span!("consumer", consumer = %self.name, queue = %self.plan.queue);
        self.restart_loop(shutdown, ready).instrument(span).await
    }

    async fn restart_loop(
        self,
        shutdown: CancellationToken,
        ready: oneshot::Sender<()>,
    ) -> Result<()> {
        let mut ready = Some(ready);
        let mut intensity =
            RestartIntensity::new(self.settings.max_restarts, self.settings.restart_period);
        loop {
            self.observer
                .consumer_state(&self.name, ConsumerState::WaitingForChannel);
            let lease = tokio::select! {
                biased;
                () = shutdown.cancelled() => Ok(None),
                lease = self.manager.channel(&self.name) => lease,
            };
            let lease = match lease {
                Ok(lease) => lease,
                Err(source) => {
                    let error = Error::Declare {
                        resource: format!("a channel for consumer {}", self.name),
                        source: Box::new(source),
                    };
                    tracing::error!(%error, "no channel on a live connection");
                    self.observer.consumer_failed(&self.name, error.to_string());
                    return Err(error);
                }
            };
            let Some(lease) = lease else {
                // Shutdown, or the manager gave up (it reports why itself).
                self.observer
                    .consumer_state(&self.name, ConsumerState::Stopped);
                return Ok(());
            };
            self.observer
                .consumer_state(&self.name, ConsumerState::Starting);
            // Bounded: on a connection that is dying, a reply may never come.
            let setup = tokio::time::timeout(
                self.settings.connection_timeout,
                self.start_on(&lease.channel),
            )
            .await
            .unwrap_or_else(|_| {
                Err(Setup::Failed(
                    lapin::ErrorKind::InvalidChannelState(
                        lapin::ChannelState::Error,
                        "channel setup timed out",
                    )
                    .into(),
                ))
            });
            let ended = match setup {
                Ok(deliveries) => {
                    tracing::info!(
                        channel = lease.channel.id(),
                        reused = !lease.fresh,
                        "consuming"
                    );
                    self.observer.consumer_started(
                        &self.name,
                        &self.plan.queue,
                        lease.channel.id(),
                    );
                    if let Some(ready) = ready.take() {
                        let _ = ready.send(());
                    }
                    let run = Run {
                        consumer: &self,
                        channel: lease.channel,
                        deliveries,
                    };
                    run.consume(&shutdown).await
                }
                Err(Setup::Fatal(error)) => {
                    tracing::error!(%error, "the broker refused this consumer's setup");
                    self.observer.consumer_failed(&self.name, error.to_string());
                    self.manager.release(&self.name).await;
                    return Err(error);
                }
                Err(Setup::Failed(error)) if classify::is_channel_only(&error) => {
                    Ended::Crashed(format!("setting up the channel failed: {error}"))
                }
                Err(Setup::Failed(error)) => Ended::ConnectionLost(error.to_string()),
            };
            match ended {
                Ended::Shutdown => {
                    self.observer
                        .consumer_state(&self.name, ConsumerState::Stopped);
                    return Ok(());
                }
                Ended::ConnectionLost(reason) => {
                    tracing::warn!(%reason, "connection lost; waiting for a new channel");
                    self.manager.report_trouble();
                }
                Ended::Crashed(reason) => {
                    if !intensity.allow_restart(Instant::now()) {
                        tracing::error!(%reason, restarts = intensity.total(), "failed more often than the restart intensity allows; giving up");
                        self.observer.consumer_failed(&self.name, reason.clone());
                        // The other consumers may go on; this one's channel
                        // must not stay open behind it.
                        self.manager.release(&self.name).await;
                        return Err(Error::ConsumerFailed {
                            consumer: self.name.clone(),
                            queue: self.plan.queue.clone(),
                            restarts: intensity.total(),
                            reason,
                        });
                    }
                    tracing::warn!(%reason, restarts = intensity.total(), "consumer failed; restarting it");
                    self.observer
                        .consumer_restarted(&self.name, intensity.total(), reason);
                    // The first restart is immediate; repeated ones back off
                    // a little, so a broker that is still recovering gets
                    // time before the intensity is used up.
                    let delay = restart_delay(&self.settings, intensity.recent());
                    tokio::select! {
                        biased;
                        () = shutdown.cancelled() => {}
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    /// Applies the consumer's whole channel state: qos, the exchange, its
    /// queue and bindings, then `basic.consume` with manual acks. Done on
    /// every start, because a new channel has none of it and a restarted
    /// consumer may find its queue gone.
    async fn start_on(&self, channel: &Channel) -> std::result::Result<lapin::Consumer, Setup> {
        channel
            .basic_qos(self.settings.prefetch, BasicQosOptions::default())
            .await
            .map_err(Setup::Failed)?;
        topology::declare_exchange(channel, &self.settings.exchange)
            .await
            .map_err(Setup::from_declare)?;
        topology::declare_consumer_queue(channel, &self.settings.exchange, &self.plan)
            .await
            .map_err(Setup::from_declare)?;
        channel
            .basic_consume(
                self.plan.queue.as_str().into(),
                consumer_tag(&self.plan).into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|source| {
                Setup::from_declare(Error::Declare {
                    resource: format!(
                        "basic.consume on queue {:?} for {}",
                        self.plan.queue, self.name
                    ),
                    source: Box::new(source),
                })
            })
    }
}

/// Why a consumer could not start on its channel.
enum Setup {
    /// The broker refused something the user must fix.
    Fatal(Error),
    /// The channel or connection failed meanwhile.
    Failed(lapin::Error),
}

impl Setup {
    fn from_declare(error: Error) -> Self {
        match error {
            Error::Declare { source, .. } if !classify::is_fatal_channel_error(&source) => {
                Setup::Failed(*source)
            }
            error => Setup::Fatal(error),
        }
    }
}

/// One consumption run on one channel: the channel generation every
/// delivery of this run belongs to.
struct Run<'a> {
    consumer: &'a ConsumerSupervisor,
    channel: Channel,
    deliveries: lapin::Consumer,
}

/// What handling one delivery came to, for the run.
enum Handled {
    Settled,
    /// The handler panicked: the consumer restarts.
    Panicked(String),
}

impl Run<'_> {
    async fn consume(mut self, shutdown: &CancellationToken) -> Ended {
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
                            // handler finish and be acked.
                            let (_, handled) = tokio::join!(self.cancel_consume(), handling);
                            if let Handled::Panicked(panic) = handled {
                                tracing::error!(%panic, "handler panicked during shutdown");
                            }
                            self.close_channel().await;
                            return Ended::Shutdown;
                        }
                    };
                    if let Handled::Panicked(panic) = handled {
                        self.release_outstanding().await;
                        return Ended::Crashed(format!("the handler panicked: {panic}"));
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
        let message_id = properties
            .message_id()
            .as_ref()
            .map(|id| id.as_str().to_owned())
            .unwrap_or_default();
        // lapin hands over what it had buffered before it reports the
        // channel's end. Those deliveries are already back in the queue:
        // running their handlers would only do the work twice.
        if !acker.usable() || !self.channel.status().connected() {
            tracing::debug!(%message_id, delivery_tag, "delivery of a closed channel skipped; the broker redelivers it");
            return Handled::Settled;
        }
        let incoming = Incoming {
            body: data,
            exchange: exchange.to_string(),
            routing_key: routing_key.to_string(),
            redelivered,
            properties,
        };
        let handler = self.consumer.plan.registration.handler();
        // The handler is called inside the guarded future so that a panic
        // while decoding is caught as well as one in the handler's body.
        let outcome = AssertUnwindSafe(async move { handler(incoming).await })
            .catch_unwind()
            .await;

        // A delivery tag is only valid on the channel it came from. If that
        // channel closed while the handler ran, the broker has already taken
        // the message back; settling it on a newer channel would make the
        // broker close that one (406 unknown delivery tag).
        if !self.channel.status().connected() {
            self.consumer.observer.stale_ack(&self.consumer.name);
            tracing::warn!(%message_id, delivery_tag, "the delivery's channel closed while it was handled; not settled, the broker redelivers it");
            return match outcome {
                Err(panic) => Handled::Panicked(panic_message(panic.as_ref())),
                Ok(_) => Handled::Settled,
            };
        }

        // Errors are not requeued: a message that failed once would fail
        // again at once and loop forever.
        let reject = BasicRejectOptions { requeue: false };
        let (settled, handled) = match outcome {
            Ok(HandlerOutcome::Succeeded) => (
                settle(
                    &self.consumer.settings,
                    acker.ack(BasicAckOptions::default()),
                )
                .await,
                Handled::Settled,
            ),
            Ok(HandlerOutcome::Failed(error)) => {
                tracing::error!(%message_id, delivery_tag, %error, "handler failed; message rejected");
                (
                    settle(&self.consumer.settings, acker.reject(reject)).await,
                    Handled::Settled,
                )
            }
            Ok(HandlerOutcome::Undecodable(error)) => {
                tracing::error!(%message_id, delivery_tag, %error, "message cannot be decoded; rejected, handler not called");
                (
                    settle(&self.consumer.settings, acker.reject(reject)).await,
                    Handled::Settled,
                )
            }
            Err(panic) => {
                let panic = panic_message(panic.as_ref());
                // A panic may come from the state of the process rather than
                // from the message: it gets one more delivery. A message
                // that panics again is rejected, so a poison message cannot
                // loop.
                let settled = if self.consumer.panicked_before(&message_id, redelivered) {
                    tracing::error!(%message_id, delivery_tag, %panic, "handler panicked again on the same message; rejected");
                    settle(&self.consumer.settings, acker.reject(reject)).await
                } else {
                    tracing::error!(%message_id, delivery_tag, %panic, "handler panicked; message requeued, consumer restarting");
                    let requeue = BasicNackOptions {
                        multiple: false,
                        requeue: true,
                    };
                    settle(&self.consumer.settings, acker.nack(requeue)).await
                };
                (settled, Handled::Panicked(panic))
            }
        };
        match settled {
            Ok(true) => {}
            Ok(false) => {
                self.consumer.observer.stale_ack(&self.consumer.name);
                tracing::warn!(%message_id, delivery_tag, "the delivery's channel closed before it was settled; the broker redelivers it");
            }
            Err(error) => {
                tracing::warn!(%message_id, delivery_tag, %error, "could not settle the message; the broker redelivers it")
            }
        }
        handled
    }

    /// Before the consumer restarts on this (still open) channel: stop the
    /// old `basic.consume` and hand back what was prefetched for it, which
    /// would otherwise stay unacknowledged on the channel.
    async fn release_outstanding(&self) {
        self.cancel_consume().await;
        let all = BasicNackOptions {
            multiple: true,
            requeue: true,
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

/// Settles a delivery, bounded: on a connection that is dying, the
/// acknowledgement may never be written.
async fn settle(
    settings: &Settings,
    settling: impl std::future::Future<Output = lapin::Result<bool>>,
) -> lapin::Result<bool> {
    tokio::time::timeout(settings.connection_timeout, settling)
        .await
        .unwrap_or(Ok(false))
}

/// No wait for the first restart within the window, then the reconnect
/// delays: the minimum, doubling, up to the maximum.
fn restart_delay(settings: &Settings, recent_restarts: u32) -> Duration {
    if recent_restarts <= 1 {
        return Duration::ZERO;
    }
    let doublings = (recent_restarts - 2).min(16);
    settings
        .reconnect_min_delay
        .saturating_mul(1 << doublings)
        .min(settings.reconnect_max_delay)
}

fn consumer_tag(plan: &ConsumerPlan) -> String {
    format!("hutch-rs:{}:{}", plan.queue, uuid::Uuid::new_v4().simple())
}

/// The text of a panic payload (`panic!` gives a `&str` or a `String`).
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|text| (*text).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic with a non-string payload".to_owned())
}
