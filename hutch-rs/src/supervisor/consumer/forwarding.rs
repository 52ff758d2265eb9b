//! Copies of failed messages on their way to a delay queue or to
//! `<queue>:dead`: published on a confirm-mode channel of the consumer's
//! own on the publishing connection, many at once, the original
//! acknowledged only once the broker has confirmed its copy.
//!
//! The copies go out in rounds: every copy waiting is published, then the
//! round waits for all their confirms. A copy whose queue is missing is
//! returned by the broker (`mandatory`), but lapin hands a `basic.return` to
//! whichever confirm completes next, not to the copy's own. Each copy
//! carries its number ([`headers::COPY`]); once every confirm of the round
//! is in, each returned message has reached one of them, and its number
//! says which copy it was. No other round is in flight on the channel
//! meanwhile, so no return can belong to anything else.

use std::{
    collections::{BTreeSet, HashSet},
    sync::atomic::Ordering,
    time::SystemTime,
};

use futures_util::future::join_all;
use lapin::{
    BasicProperties, Channel,
    options::BasicPublishOptions,
    types::{AMQPValue, FieldTable},
};

use crate::{
    Error, frame_size, headers,
    message::Incoming,
    retry::{HandlerError, copy, queues},
    supervisor::{
        classify,
        connection_manager::ConnectionManager,
        consumer::{Ended, Setup, receiving::Run, verdict::Target},
    },
    telemetry::{propagation::TraceHeaders, spans},
};

/// A failed delivery whose copy is to be forwarded.
pub(super) struct Job {
    pub(super) tag: u64,
    pub(super) incoming: std::sync::Arc<Incoming>,
    pub(super) error: HandlerError,
    pub(super) error_text: String,
    pub(super) target: Target,
    /// Why, for a dead letter.
    pub(super) reason: &'static str,
    /// The copy's properties, before its number is added.
    pub(super) properties: BasicProperties,
    pub(super) failed_at: SystemTime,
}

/// What became of one round.
#[derive(Default)]
pub(super) struct Round {
    /// Confirmed: the originals are to be acknowledged.
    pub(super) done: Vec<(Job, String)>,
    /// Their queue was missing and is declared again: send again at once.
    pub(super) again_now: Vec<Job>,
    /// Not answered (an outage, an alarm, a nack): send again after a wait.
    pub(super) again_later: Vec<Job>,
    /// The run must end: these jobs are to be put back.
    pub(super) ended: Option<(Ended, Vec<Job>)>,
}

impl Run<'_> {
    /// Publishes every job's copy and waits for the broker's answers.
    pub(super) async fn forward_round(&self, jobs: Vec<Job>) -> Round {
        let mut round = Round::default();
        let targets: BTreeSet<Target> = jobs.iter().map(|job| job.target).collect();
        for target in targets {
            if let Err(ended) = self.declared(target, false).await {
                round.ended = Some((ended, jobs));
                return round;
            }
        }
        let (channel, manager) = match self.forwarding_channel().await {
            Ok(Some(link)) => link,
            Ok(None) => {
                round.again_later = jobs;
                return round;
            }
            Err(error) => {
                round.ended = Some((Ended::Fatal(error), jobs));
                return round;
            }
        };
        if !self.unblocked(&manager).await {
            round.again_later = jobs;
            return round;
        }
        let capacity = manager
            .frame_max()
            .map_or(usize::MAX, frame_size::properties_capacity);
        let queues: Vec<String> = jobs.iter().map(|job| self.queue_of(job.target)).collect();
        let numbers: Vec<u64> = jobs
            .iter()
            .map(|_| self.copies.fetch_add(1, Ordering::Relaxed))
            .collect();
        let spans: Vec<tracing::Span> = jobs
            .iter()
            .zip(&queues)
            .map(|(job, queue)| {
                let copy = match job.target {
                    Target::Delay(_) => "retry",
                    Target::Dead => "dead_letter",
                };
                let message_id = job.incoming.envelope.message_id().unwrap_or_default();
                spans::forward(&job.incoming.span, queue, message_id, copy)
            })
            .collect();
        // Each copy carries its own span's trace context (in place of the
        // original's), so that the next attempt's span is that span's child.
        let copies: Vec<BasicProperties> = jobs
            .iter()
            .zip(&numbers)
            .zip(&spans)
            .map(|((job, number), span)| {
                numbered(&job.properties, *number, &TraceHeaders::of(span), capacity)
            })
            .collect();
        // Queued in order by the first poll of each; then every confirm.
        let published = join_all(jobs.iter().zip(&queues).zip(copies).map(
            |((job, queue), properties)| {
                channel.basic_publish(
                    "".into(),
                    queue.as_str().into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    &job.incoming.body,
                    properties,
                )
            },
        ));
        let confirmed = async {
            join_all(published.await.into_iter().map(|publishing| async move {
                match publishing {
                    Ok(confirm) => confirm.await,
                    Err(error) => Err(error),
                }
            }))
            .await
        };
        let settings = &self.consumer.settings;
        let answers = tokio::select! {
            biased;
            answers = tokio::time::timeout(settings.confirm_timeout, confirmed) => answers.ok(),
            () = manager.until_ended() => None,
        };
        let Some(answers) = answers else {
            for span in &spans {
                spans::record_forwarded(span, "timed_out");
            }
            // Nothing of this round may be credited to the next: the channel
            // goes, with whatever answers are still due on it.
            tracing::warn!(copies = jobs.len(), timeout = ?settings.confirm_timeout, "no confirm for forwarded copies in time; sending them again on a new channel");
            self.drop_forwarding_channel().await;
            round.again_later = jobs;
            return round;
        };

        let mut returned = HashSet::new();
        let mut outcomes = Vec::with_capacity(answers.len());
        for answer in answers {
            outcomes.push(match answer {
                Ok(confirmation) => {
                    let acked = confirmation.is_ack();
                    if let Some(message) = confirmation.take_message() {
                        returned.extend(copy_number(message.properties.headers().as_ref()));
                    }
                    Ok(acked)
                }
                Err(error) => Err(error),
            });
        }
        let mut fatal = None;
        let mut channel_failed = false;
        for ((((job, queue), number), outcome), span) in jobs
            .into_iter()
            .zip(queues)
            .zip(numbers)
            .zip(outcomes)
            .zip(spans)
        {
            let recorded = match &outcome {
                _ if returned.contains(&number) => "returned",
                Ok(true) => "confirmed",
                Ok(false) => "nacked",
                Err(_) => "failed",
            };
            spans::record_forwarded(&span, recorded);
            match outcome {
                _ if returned.contains(&number) => round.again_now.push(job),
                Ok(true) => round.done.push((job, queue)),
                Ok(false) => {
                    tracing::warn!(%queue, "the broker refused a forwarded copy (nack); sending it again");
                    round.again_later.push(job);
                }
                Err(error) if classify::is_fatal_channel_error(&error) => {
                    fatal.get_or_insert(Error::Publish {
                        exchange: String::new(),
                        routing_key: queue,
                        source: Box::new(error),
                    });
                    round.again_later.push(job);
                }
                Err(error) => {
                    if !channel_failed {
                        channel_failed = true;
                        tracing::warn!(%error, "the forwarding channel failed; its copies are sent again");
                        manager.report_trouble();
                    }
                    round.again_later.push(job);
                }
            }
        }
        if let Some(error) = fatal {
            let mut jobs = std::mem::take(&mut round.again_later);
            jobs.append(&mut round.again_now);
            round.ended = Some((Ended::Fatal(error), jobs));
            return round;
        }
        // Declared again before they are sent again; a failure to declare
        // ends the run, the jobs put back.
        let missing: BTreeSet<Target> = round.again_now.iter().map(|job| job.target).collect();
        for target in missing {
            tracing::warn!(queue = %self.queue_of(target), "a forwarded copy was returned: the queue does not exist; declaring it again");
            if let Err(ended) = self.declared(target, true).await {
                let mut jobs = std::mem::take(&mut round.again_now);
                jobs.append(&mut round.again_later);
                round.ended = Some((ended, jobs));
                return round;
            }
        }
        round
    }

    /// The consumer's forwarding channel, set up when needed. `Ok(None)`
    /// when there is none within the confirm timeout, or on shutdown;
    /// `Err` for what the user must fix (refused credentials).
    async fn forwarding_channel(&self) -> crate::Result<Option<(Channel, ConnectionManager)>> {
        if let Some((channel, manager)) = self.forwarding.lock().await.as_ref()
            && channel.status().connected()
        {
            return Ok(Some((channel.clone(), manager.clone())));
        }
        let publisher = &self.consumer.publisher;
        let opening = tokio::time::timeout(
            self.consumer.settings.confirm_timeout,
            publisher.confirm_channel(&self.forwarder),
        );
        let opened = tokio::select! {
            biased;
            () = self.shutdown.cancelled() => return Ok(None),
            opened = opening => opened,
        };
        match opened {
            Ok(Ok(link)) => {
                *self.forwarding.lock().await = Some(link.clone());
                Ok(Some(link))
            }
            Ok(Err(error)) if classify::is_fatal(&error) => Err(error),
            Ok(Err(error)) => {
                tracing::warn!(%error, "no channel to forward failed messages on; trying again");
                Ok(None)
            }
            Err(_) => {
                tracing::warn!(timeout = ?self.consumer.settings.confirm_timeout, "the publishing connection is not up; failed messages wait, unacknowledged");
                Ok(None)
            }
        }
    }

    /// Forgets and closes the forwarding channel.
    async fn drop_forwarding_channel(&self) {
        if let Some((_, manager)) = self.forwarding.lock().await.take() {
            manager.release(&self.forwarder).await;
        }
    }

    /// Waits while the broker blocks the publishing connection (a resource
    /// alarm): what is sent then sits in the socket. False if it still does
    /// after the confirm timeout, or on shutdown.
    async fn unblocked(&self, manager: &ConnectionManager) -> bool {
        let mut blocked = manager.blocked();
        if blocked.borrow().is_none() {
            return true;
        }
        tokio::select! {
            biased;
            () = self.shutdown.cancelled() => false,
            cleared = tokio::time::timeout(self.consumer.settings.confirm_timeout, blocked.wait_for(Option::is_none)) => {
                matches!(cleared, Ok(Ok(_)))
            }
        }
    }

    fn queue_of(&self, target: Target) -> String {
        let plan = &self.consumer.plan;
        match target {
            Target::Dead => queues::dead_letter_queue(&plan.queue),
            Target::Delay(delay) => queues::delay_queue(&plan.queue, delay),
        }
    }

    /// The queue for `target`, declared on the consumer's channel when
    /// needed: a delay queue the first time this run uses it, and any queue
    /// `again` after it went missing. Bounded: on a dying connection the
    /// reply may never come.
    pub(super) async fn declared(&self, target: Target, again: bool) -> Result<(), Ended> {
        let plan = &self.consumer.plan;
        let needs_declaring = match target {
            Target::Dead => again,
            Target::Delay(delay) => {
                again
                    || !self
                        .delay_queues
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .contains(&delay)
            }
        };
        if !needs_declaring {
            return Ok(());
        }
        let queue = self.queue_of(target);
        let declaring = async {
            match target {
                Target::Dead => queues::declare_dead_letter_queue(&self.channel, plan).await,
                Target::Delay(delay) => queues::declare_delay_queue(&self.channel, plan, delay)
                    .await
                    .map(drop),
            }
        };
        let declared = tokio::time::timeout(self.consumer.settings.connection_timeout, declaring)
            .await
            .unwrap_or_else(|_| {
                Err(Error::Declare {
                    resource: format!("queue {queue:?}"),
                    source: Box::new(
                        lapin::ErrorKind::InvalidChannelState(
                            lapin::ChannelState::Error,
                            "no reply to queue.declare in time",
                        )
                        .into(),
                    ),
                })
            });
        match declared {
            Ok(()) => {
                if let Target::Delay(delay) = target {
                    self.delay_queues
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .insert(delay);
                }
                Ok(())
            }
            Err(error) => Err(match Setup::from_declare(error) {
                Setup::Fatal(error) => Ended::Fatal(error),
                Setup::Failed(error) if classify::is_channel_only(&error) => {
                    Ended::Crashed(format!("declaring {queue:?} failed: {error}"))
                }
                Setup::Failed(error) => Ended::ConnectionLost(error.to_string()),
            }),
        }
    }
}

/// The copy's properties with its number, made to fit in one frame.
fn numbered(
    properties: &BasicProperties,
    number: u64,
    trace: &TraceHeaders,
    capacity: usize,
) -> BasicProperties {
    let mut headers: FieldTable = properties.headers().clone().unwrap_or_default();
    trace.write_into(&mut headers);
    // The broker's counter is a u64 as well, stored as AMQP's signed long.
    headers.insert(
        headers::COPY.into(),
        AMQPValue::LongLongInt(i64::from_ne_bytes(number.to_ne_bytes())),
    );
    copy::fit_in_frame(properties.clone().with_headers(headers), capacity)
}

/// The number a returned copy carries.
fn copy_number(headers: Option<&FieldTable>) -> Option<u64> {
    match headers?.inner().get(headers::COPY)? {
        AMQPValue::LongLongInt(number) => Some(u64::from_ne_bytes(number.to_ne_bytes())),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_number_survives_the_round_trip_through_its_header() {
        for number in [0, 1, 7, u64::MAX / 2, u64::MAX] {
            let properties = numbered(
                &BasicProperties::default(),
                number,
                &TraceHeaders::default(),
                usize::MAX,
            );
            assert_eq!(copy_number(properties.headers().as_ref()), Some(number));
        }
        assert_eq!(copy_number(None), None);
        let mut other = FieldTable::default();
        other.insert(headers::COPY.into(), AMQPValue::LongString("7".into()));
        assert_eq!(copy_number(Some(&other)), None);
    }
}
