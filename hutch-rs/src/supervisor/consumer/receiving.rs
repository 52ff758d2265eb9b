//! One consumption run: a consumer on one channel generation, from
//! `basic.consume` until the channel ends or shutdown.
//!
//! The delivery path, all decided on this task: a delivery is taken from
//! the channel ([`Run::consume`]), its handler called on a worker thread
//! ([`Calls`]); a success is acknowledged with its neighbours, a failure
//! becomes a verdict ([`verdict`]): put back at once, or a copy forwarded to
//! a delay queue or `<queue>:dead` ([`forwarding`](super::forwarding)) and the
//! original acknowledged once the copy is confirmed. Every settle frame is
//! written by the [`Settler`], in the order decided.

use std::{
    collections::{HashSet, VecDeque},
    pin::pin,
    sync::{Arc, Mutex, atomic::AtomicU64},
    time::{Duration, SystemTime},
};

use futures_util::{
    FutureExt, StreamExt,
    future::{Fuse, FusedFuture},
};
use lapin::{Channel, message::Delivery, options::BasicCancelOptions};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::{
    backoff::Backoff,
    message::{Envelope, Incoming},
    retry::{Failure, HandlerError, Outcome},
    supervisor::{
        classify,
        connection_manager::ConnectionManager,
        consumer::{
            ConsumerSupervisor, Ended,
            calling::{Calls, Finished},
            forwarding::{Job, Round},
            settling::{Settler, Unwritten},
            verdict::{Disposal, Target, dispose},
        },
    },
    telemetry::spans::{self, Settled},
};

/// At most this many copies go out in one forwarding round.
const ROUND_SIZE: usize = 1_024;

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
    /// The owner name of the consumer's forwarding channel.
    pub(super) forwarder: String,
    /// The forwarding channel while it is set up, and its connection.
    pub(super) forwarding: tokio::sync::Mutex<Option<(Channel, ConnectionManager)>>,
    /// Numbers the copies on the forwarding channel.
    pub(super) copies: AtomicU64,
}

/// The copies waiting to be forwarded, and when they may go.
struct Backlog {
    jobs: VecDeque<Job>,
    /// Not before this, after a round that could not get through.
    not_before: Option<Instant>,
    /// The waits after failed rounds: reset by a success.
    backoff: Backoff,
}

impl<'a> Run<'a> {
    pub(super) fn new(
        consumer: &'a ConsumerSupervisor,
        channel: Channel,
        deliveries: lapin::Consumer,
        shutdown: &CancellationToken,
    ) -> Self {
        Self {
            forwarder: super::forwarder_name(&consumer.name),
            consumer,
            channel,
            deliveries,
            delay_queues: Mutex::new(HashSet::new()),
            shutdown: shutdown.clone(),
            forwarding: tokio::sync::Mutex::new(None),
            copies: AtomicU64::new(0),
        }
    }

    /// Takes deliveries and runs up to the consumer's `concurrency`
    /// handler calls at once, until the channel ends, the consumer must
    /// restart, or shutdown.
    pub(super) async fn consume(self) -> Ended {
        let plan = &self.consumer.plan;
        let settings = &self.consumer.settings;
        let mut deliveries = self.deliveries.clone();
        let concurrency = usize::from(plan.concurrency);
        // Paying every half prefetch keeps the broker's window open while a
        // burst is worked through; an idle moment pays at once.
        let pay_at = usize::from(plan.prefetch).div_ceil(2);
        let mut settler = Settler::new(self.channel.clone());
        let mut calls = Calls::new(
            plan.registration.handler(),
            plan.timeout,
            self.consumer.scope.clone(),
        );
        let mut backlog = Backlog {
            jobs: VecDeque::new(),
            not_before: None,
            backoff: Backoff::new(settings.reconnect_min_delay, settings.reconnect_max_delay),
        };
        let mut ending: Option<Ended> = None;
        // `basic.cancel` when the run starts to end, awaited alongside the
        // handlers still running, so that they are not held up by it.
        let mut cancelling = pin!(self.cancel_consume().fuse());
        cancelling.set(Fuse::terminated());
        let mut forwarding = pin!(Fuse::terminated());
        let mut backing_off = pin!(tokio::time::sleep(Duration::ZERO));
        loop {
            // A run that ends for shutdown still forwards what failed (the
            // rounds give up early on shutdown); one that ends otherwise, or
            // copies that would have to wait out an outage, are put back
            // (or are back already, if the channel closed).
            let forwarding_goes_on = match &ending {
                None => true,
                Some(Ended::Shutdown) => backlog.not_before.is_none(),
                Some(_) => false,
            };
            if !forwarding_goes_on {
                self.put_back_all(&mut settler, &mut backlog.jobs);
            } else if forwarding.is_terminated()
                && !backlog.jobs.is_empty()
                && backlog.not_before.is_none_or(|at| at <= Instant::now())
            {
                backlog.not_before = None;
                let take = backlog.jobs.len().min(ROUND_SIZE);
                let round: Vec<Job> = backlog.jobs.drain(..take).collect();
                forwarding.set(self.forward_round(round).fuse());
            }
            if ending.is_some()
                && calls.is_empty()
                && forwarding.is_terminated()
                && backlog.jobs.is_empty()
                && cancelling.is_terminated()
            {
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
                Some(unwritten) = settler.written(), if settler.is_writing() => self.unwritten(unwritten),
                finished = calls.next(), if !calls.is_empty() => {
                    if let Some(finished) = finished {
                        self.finished(finished, &mut settler, &mut backlog);
                    }
                }
                round = &mut forwarding, if !forwarding.is_terminated() => {
                    if let Some(ended) = self.forwarded(round, &mut settler, &mut backlog) {
                        if self.end_with(&mut ending, ended) {
                            cancelling.set(self.cancel_consume().fuse());
                        }
                    } else if let Some(at) = backlog.not_before {
                        backing_off.as_mut().reset(at);
                    }
                }
                () = &mut backing_off, if backlog.not_before.is_some() && ending.is_none() => {
                    backlog.not_before = None;
                }
                next = deliveries.next(), if ending.is_none() && calls.len() < concurrency => {
                    match next {
                        Some(Ok(delivery)) => self.received(delivery, &mut settler, &mut calls),
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
                () = std::future::ready(()), if settler.owed() > 0 => {
                    for unwritten in settler.pay() {
                        self.unwritten(unwritten);
                    }
                }
            }
            if settler.owed() >= pay_at {
                for unwritten in settler.pay() {
                    self.unwritten(unwritten);
                }
            }
        }
        // Everything handled is paid before the channel is closed or its
        // remaining deliveries are handed back, which would otherwise put
        // handled messages back in the queue.
        let ended = ending.unwrap_or(Ended::Shutdown);
        let closing = if matches!(ended, Ended::Shutdown) || !self.channel.status().connected() {
            settler.pay()
        } else {
            // The consumer restarts or gives up on this still open channel:
            // what was prefetched for it goes back.
            self.cancel_consume().await;
            settler.requeue_all()
        };
        for unwritten in closing {
            self.unwritten(unwritten);
        }
        self.flush(&mut settler).await;
        if matches!(ended, Ended::Shutdown) {
            self.close_channel().await;
        }
        if let Some((_, manager)) = self.forwarding.lock().await.take() {
            manager.release(&self.forwarder).await;
        }
        ended
    }

    /// A delivery arrived: its handler is called on a task of its own.
    fn received(&self, delivery: Delivery, settler: &mut Settler<Channel>, calls: &mut Calls) {
        #[cfg(feature = "testing")]
        if self.consumer.settings.panic_in_run_loop.as_deref() == Some(&*self.consumer.plan.queue) {
            panic!("injected fault: a panic in the consumer's run loop");
        }
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
            return;
        }
        settler.delivered(delivery_tag);
        let envelope = Envelope::of_delivery(
            exchange.as_str(),
            routing_key.as_str(),
            redelivered,
            properties,
            &self.consumer.plan.queue,
        )
        .with_broker_redeliveries(self.consumer.plan.declaration.delivery_limit());
        let span = spans::process(
            &self.consumer.name,
            &self.consumer.plan.queue,
            &envelope,
            delivery_tag,
        );
        let incoming = Incoming {
            body: data,
            envelope: Arc::new(envelope),
            span,
        };
        calls.start(delivery_tag, Arc::new(incoming));
    }

    /// A handler call ended: acknowledge a success with its neighbours;
    /// carry out the verdict on a failure.
    fn finished(&self, finished: Finished, settler: &mut Settler<Channel>, backlog: &mut Backlog) {
        let Finished {
            tag,
            incoming,
            failure,
        } = finished;
        // A delivery tag is only valid on the channel it came from. If that
        // channel closed while the handler ran, the broker has already taken
        // the message back; settling it on a newer channel would make the
        // broker close that one (406 unknown delivery tag). Nor is a failed
        // message forwarded: its redelivery is the same attempt again.
        if !self.channel.status().connected() {
            settler.forget(tag);
            self.consumer.observer.stale_ack(&self.consumer.name);
            let outcome = failure.map_or_else(
                || "succeeded".to_owned(),
                |error| format!("failed: {error}"),
            );
            tracing::warn!(message_id = %message_id(&incoming), delivery_tag = tag, %outcome, "the delivery's channel closed while it was handled; not settled, the broker redelivers it");
            spans::record_settled(&incoming.span, Settled::Redelivered, None);
            crate::telemetry::metrics::handled(&self.consumer.name, Settled::Redelivered);
            return;
        }
        let Some(error) = failure else {
            settler.ack_later(tag);
            spans::record_settled(&incoming.span, Settled::Acked, None);
            crate::telemetry::metrics::handled(&self.consumer.name, Settled::Acked);
            return;
        };
        // A panic is one message's failure, like an `Err`: it was caught
        // inside the call and nothing of the consumer is left broken, so it
        // keeps consuming on its channel.
        let consumer = self.consumer;
        let attempt = incoming.envelope.attempt;
        let error_text = error.to_string();
        let failed_at = SystemTime::now();
        let disposal = dispose(
            &consumer.plan.retry,
            &consumer.name,
            &consumer.plan.queue,
            &incoming.envelope,
            &error,
            &error_text,
            failed_at,
        );
        let Disposal::Forward {
            target,
            properties,
            reason,
        } = disposal
        else {
            tracing::warn!(message_id = %message_id(&incoming), attempt, error = %error_text, "handler failed and asked to requeue the message; requeued at once");
            if let Some(unwritten) = settler.requeue(tag) {
                self.unwritten(unwritten);
            }
            spans::record_settled(&incoming.span, Settled::Requeued, Some(error.kind()));
            crate::telemetry::metrics::handled(&self.consumer.name, Settled::Requeued);
            self.notify(&incoming, error, Outcome::Requeued, failed_at);
            return;
        };
        backlog.jobs.push_back(Job {
            tag,
            incoming,
            error,
            error_text,
            target,
            reason,
            properties,
            failed_at,
        });
    }

    /// A forwarding round came back: acknowledge the originals of the
    /// confirmed copies, queue the others again. `Some` when the run must
    /// end.
    fn forwarded(
        &self,
        round: Round,
        settler: &mut Settler<Channel>,
        backlog: &mut Backlog,
    ) -> Option<Ended> {
        let Round {
            done,
            again_now,
            again_later,
            ended,
        } = round;
        if !done.is_empty() {
            backlog.backoff.reset();
        }
        for (job, queue) in done {
            settler.ack_later(job.tag);
            let attempt = job.incoming.envelope.attempt;
            let message_id = message_id(&job.incoming).to_owned();
            let settled = match job.target {
                Target::Delay(_) => Settled::Retried,
                Target::Dead => Settled::DeadLettered,
            };
            spans::record_settled(&job.incoming.span, settled, Some(job.error.kind()));
            crate::telemetry::metrics::handled(&self.consumer.name, settled);
            let outcome = match job.target {
                Target::Delay(delay) => {
                    tracing::warn!(%message_id, attempt, ?delay, %queue, error = %job.error_text, "handler failed; the message is retried after a delay");
                    Outcome::Retried {
                        attempt: attempt.saturating_add(1),
                        delay,
                        queue,
                    }
                }
                Target::Dead => {
                    let reason = job.reason;
                    tracing::error!(%message_id, attempt, %reason, %queue, error = %job.error_text, "message dead-lettered");
                    Outcome::DeadLettered { queue, reason }
                }
            };
            self.notify(&job.incoming, job.error, outcome, job.failed_at);
        }
        if let Some((ended, jobs)) = ended {
            let mut jobs: VecDeque<Job> = jobs.into();
            jobs.extend(again_now);
            jobs.extend(again_later);
            for job in &jobs {
                tracing::error!(message_id = %message_id(&job.incoming), ?ended, "a failed message could not be forwarded; it is put back in its queue");
            }
            self.put_back_all(settler, &mut jobs);
            return Some(ended);
        }
        // The originals of copies that did not get through stay
        // unacknowledged while the channel lives; if it closed, the broker
        // has them back and their redelivery is the same attempt again.
        if !self.channel.status().connected() {
            for job in again_now.iter().chain(&again_later) {
                settler.forget(job.tag);
            }
            return Some(Ended::ConnectionLost(
                "the channel closed while failed messages were being forwarded".to_owned(),
            ));
        }
        for job in again_now.into_iter().rev() {
            backlog.jobs.push_front(job);
        }
        if !again_later.is_empty() {
            let wait = backlog.backoff.next_delay();
            tracing::warn!(copies = again_later.len(), retry_in = ?wait, "failed messages could not be forwarded yet; their originals stay unacknowledged meanwhile");
            backlog.jobs.extend(again_later);
            backlog.not_before = Some(Instant::now() + wait);
        }
        None
    }

    /// Puts every job's original back in its queue (unchanged, same
    /// attempt), or leaves it to the broker if the channel closed.
    fn put_back_all(&self, settler: &mut Settler<Channel>, jobs: &mut VecDeque<Job>) {
        let open = self.channel.status().connected();
        for job in jobs.drain(..) {
            // Not forwarded: the broker delivers it again, as the same
            // attempt.
            spans::record_settled(
                &job.incoming.span,
                Settled::Redelivered,
                Some(job.error.kind()),
            );
            crate::telemetry::metrics::handled(&self.consumer.name, Settled::Redelivered);
            if open {
                if let Some(unwritten) = settler.requeue(job.tag) {
                    self.unwritten(unwritten);
                }
            } else {
                settler.forget(job.tag);
            }
        }
    }

    /// Tells the error hooks about a failure whose outcome was carried out.
    fn notify(
        &self,
        incoming: &Incoming,
        error: HandlerError,
        outcome: Outcome,
        failed_at: SystemTime,
    ) {
        let consumer = self.consumer;
        if consumer.hooks.is_empty() {
            return;
        }
        let failure = Failure::new(
            &consumer.name,
            &consumer.plan.queue,
            incoming.envelope.clone(),
            incoming.body.clone(),
            error,
            outcome,
            failed_at,
        );
        consumer.hooks.notify(&failure);
    }

    /// A settle frame that was not written: its channel closed, and the
    /// broker delivers the message again.
    fn unwritten(&self, unwritten: Unwritten) {
        self.consumer.observer.stale_ack(&self.consumer.name);
        tracing::warn!(frame = ?unwritten.frame, error = %unwritten.error, "could not settle on the delivery's channel; the broker redelivers what it did not settle");
    }

    /// Waits (bounded) until every settle frame is written, before the
    /// channel is closed.
    async fn flush(&self, settler: &mut Settler<Channel>) {
        let flushing = async {
            while settler.is_writing() {
                if let Some(unwritten) = settler.written().await {
                    self.unwritten(unwritten);
                }
            }
        };
        if tokio::time::timeout(self.consumer.settings.connection_timeout, flushing)
            .await
            .is_err()
        {
            tracing::debug!("settle frames still unwritten when the channel ends");
        }
    }

    /// Records why the run ends (the first reason wins). True when new
    /// deliveries must be stopped with `basic.cancel`; handlers already
    /// running finish first.
    fn end_with(&self, ending: &mut Option<Ended>, ended: Ended) -> bool {
        if let Some(already) = ending {
            // A refusal the user must fix outranks the channel closing that
            // it caused (the broker closes the channel as it refuses), which
            // the run may have seen first.
            if matches!(ended, Ended::Fatal(_)) && !matches!(already, Ended::Fatal(_)) {
                *ending = Some(ended);
            } else {
                tracing::warn!(?ended, "the consumer was already ending");
            }
            return false;
        }
        // A forward interrupted by shutdown: the shutdown token ends the run.
        let cancel = !matches!(ended, Ended::Shutdown) && self.channel.status().connected();
        *ending = Some(ended);
        cancel
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
