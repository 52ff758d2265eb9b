//! What happens to a message whose handling failed: the consumer's retry
//! policy (or the handler's explicit [`Decision`]) picks a verdict, and the
//! message is forwarded to a delay queue or the dead-letter queue — the
//! original acknowledged only once the broker has confirmed the copy.

use std::{time::Duration, time::SystemTime};

use lapin::{Acker, BasicProperties, options::BasicAckOptions};

use crate::{
    Error, headers,
    message::Incoming,
    retry::{
        self, Action, Decision, Failure, HandlerError, Outcome, RetryPolicy,
        copy::{self, DeadLetter},
        queues,
    },
    supervisor::{
        classify,
        consumer::{Ended, Setup},
        run::{Handled, REQUEUE, Run, message_id, settle},
    },
};

/// What to do with a failed message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Forward to the delay queue for this delay (on the grid).
    Retry(Duration),
    /// Forward to `<queue>:dead` with this reason.
    DeadLetter(&'static str),
    /// Put it back at once (the handler insisted).
    Requeue,
}

/// The verdict for a message that failed on `attempt`: poison goes straight
/// to the dead-letter queue; the handler's explicit decision is followed,
/// within `max_attempts` except for a requeue; otherwise the policy retries
/// with backoff until the attempts are used up.
fn verdict(policy: &RetryPolicy, attempt: u32, error: &HandlerError) -> Verdict {
    let decided = match error {
        HandlerError::Undecodable(_) => return Verdict::DeadLetter(headers::REASON_POISON),
        HandlerError::Failed(error) => Decision::find(error.as_ref()).map(Decision::action),
        _ => None,
    };
    match decided {
        Some(Action::Requeue) => Verdict::Requeue,
        Some(Action::DeadLetter) => Verdict::DeadLetter(headers::REASON_REJECTED),
        _ if !policy.retries_after(attempt) => {
            Verdict::DeadLetter(headers::REASON_ATTEMPTS_EXHAUSTED)
        }
        Some(Action::RetryAfter(delay)) => Verdict::Retry(retry::on_grid(delay)),
        None => Verdict::Retry(policy.delay_after(attempt)),
    }
}

/// Where a copy goes.
#[derive(Debug, Clone, Copy)]
enum Target {
    Delay(Duration),
    Dead,
}

impl Run<'_> {
    /// Carries out the verdict on a failed delivery, then tells the error
    /// hooks. If the copy cannot be made, the delivery is put back and the
    /// run ends (restart, or a fatal error for the user to fix).
    pub(super) async fn dispose(
        &self,
        acker: Acker,
        incoming: Incoming,
        delivery_tag: u64,
        error: HandlerError,
    ) -> Handled {
        let consumer = self.consumer;
        let attempt = incoming.envelope.attempt;
        let verdict = verdict(&consumer.plan.retry, attempt, &error);
        let error_text = error.to_string();
        let failed_at = SystemTime::now();
        let message_id = message_id(&incoming).to_owned();

        let outcome = match verdict {
            Verdict::Requeue => {
                tracing::warn!(%message_id, attempt, error = %error_text, "handler failed and asked to requeue the message; requeued at once");
                let settled = settle(&consumer.settings, acker.nack(REQUEUE)).await;
                self.settled(settled, &incoming, delivery_tag);
                Outcome::Requeued
            }
            Verdict::Retry(delay) => {
                let properties = copy::retry_properties(
                    &incoming.envelope,
                    attempt.saturating_add(1),
                    &error_text,
                );
                let queue = match self
                    .forward(Target::Delay(delay), &incoming, properties)
                    .await
                {
                    Ok(queue) => queue,
                    Err(failed) => {
                        return self.put_back(acker, &incoming, delivery_tag, failed).await;
                    }
                };
                tracing::warn!(%message_id, attempt, ?delay, %queue, error = %error_text, "handler failed; the message is retried after a delay");
                self.ack(acker, &incoming, delivery_tag).await;
                Outcome::Retried {
                    attempt: attempt.saturating_add(1),
                    delay,
                    queue,
                }
            }
            Verdict::DeadLetter(reason) => {
                let dead = DeadLetter {
                    consumer: &consumer.name,
                    queue: &consumer.plan.queue,
                    reason,
                    error: &error_text,
                    failed_at,
                };
                let properties = copy::dead_letter_properties(&incoming.envelope, &dead);
                let queue = match self.forward(Target::Dead, &incoming, properties).await {
                    Ok(queue) => queue,
                    Err(failed) => {
                        return self.put_back(acker, &incoming, delivery_tag, failed).await;
                    }
                };
                tracing::error!(%message_id, attempt, %reason, %queue, error = %error_text, "message dead-lettered");
                self.ack(acker, &incoming, delivery_tag).await;
                Outcome::DeadLettered { queue, reason }
            }
        };
        let Incoming { body, envelope } = incoming;
        let failure = Failure::new(
            &consumer.name,
            &consumer.plan.queue,
            envelope,
            body,
            error,
            outcome,
            failed_at,
        );
        consumer.settings.error_hooks.notify(&failure);
        Handled::Settled
    }

    /// Publishes the copy to `target` through the publishing connection and
    /// waits for the broker's confirm; returns the queue it went to.
    ///
    /// A publisher outage (no connection, a broker alarm, no confirm in
    /// time) is waited out with backoff while this delivery's channel lives:
    /// the consumer cannot settle this message safely before, and its
    /// restart budget is for its own failures. A queue that went missing is
    /// declared again. Ends with the original to be put back on shutdown or
    /// when the channel closes (the broker then has it back already), and
    /// with a fatal error for what the user must fix.
    async fn forward(
        &self,
        target: Target,
        incoming: &Incoming,
        mut properties: BasicProperties,
    ) -> Result<String, Ended> {
        let settings = &self.consumer.settings;
        let queue = self.declared(target, false).await?;
        let mut wait = settings.reconnect_min_delay;
        let mut fitted = false;
        loop {
            let forwarded = self
                .consumer
                .publisher
                .forward(&queue, &incoming.body, properties.clone())
                .await;
            match forwarded {
                Ok(()) => return Ok(queue),
                // The original's headers fill the frame: the copy goes
                // without them rather than not at all. Fitted, it cannot be
                // too large again unless the frame cannot even hold
                // hutch-rs's own headers, which the user must fix.
                Err(Error::HeadersTooLarge { max, size, .. }) if !fitted => {
                    tracing::warn!(%queue, size, max, "the copy's headers do not fit in one frame; the original's own headers are dropped from it");
                    properties = copy::fit_in_frame(properties, max);
                    fitted = true;
                    continue;
                }
                Err(error @ Error::HeadersTooLarge { .. }) => return Err(Ended::Fatal(error)),
                Err(error) if classify::is_fatal(&error) => return Err(Ended::Fatal(error)),
                Err(Error::Unroutable { .. }) => {
                    tracing::warn!(%queue, "the copy was returned: the queue does not exist; declaring it again");
                    self.declared(target, true).await?;
                }
                Err(error) => {
                    tracing::warn!(%queue, %error, retry_in = ?wait, "could not forward a failed message; the original stays unacknowledged meanwhile");
                }
            }
            if !self.channel.status().connected() {
                return Err(Ended::ConnectionLost(
                    "the channel closed while a failed message was being forwarded".to_owned(),
                ));
            }
            tokio::select! {
                biased;
                () = self.shutdown.cancelled() => return Err(Ended::Shutdown),
                () = tokio::time::sleep(wait) => {}
            }
            wait = wait.saturating_mul(2).min(settings.reconnect_max_delay);
        }
    }

    /// The queue for `target`, declared on this channel when needed: a
    /// delay queue the first time this run uses it, and any queue `again`
    /// after it went missing. Bounded: on a dying connection the reply may
    /// never come.
    async fn declared(&self, target: Target, again: bool) -> Result<String, Ended> {
        let plan = &self.consumer.plan;
        let (queue, needs_declaring) = match target {
            Target::Dead => (queues::dead_letter_queue(&plan.queue), again),
            Target::Delay(delay) => {
                let known = self
                    .delay_queues
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .contains(&delay);
                (queues::delay_queue(&plan.queue, delay), again || !known)
            }
        };
        if !needs_declaring {
            return Ok(queue);
        }
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
                Ok(queue)
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

    async fn ack(&self, acker: Acker, incoming: &Incoming, delivery_tag: u64) {
        let acked = settle(
            &self.consumer.settings,
            acker.ack(BasicAckOptions::default()),
        )
        .await;
        self.settled(acked, incoming, delivery_tag);
    }

    /// The copy could not be made: the message goes back to its queue
    /// unchanged (same attempt), and the run ends with `failed`.
    async fn put_back(
        &self,
        acker: Acker,
        incoming: &Incoming,
        delivery_tag: u64,
        failed: Ended,
    ) -> Handled {
        tracing::error!(message_id = %message_id(incoming), ?failed, "a failed message could not be forwarded; it is put back in its queue");
        let settled = settle(&self.consumer.settings, acker.nack(REQUEUE)).await;
        self.settled(settled, incoming, delivery_tag);
        Handled::Ended(failed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BoxError, message::DecodeError};

    const POLICY: RetryPolicy = RetryPolicy {
        max_attempts: 3,
        min_delay: Duration::from_secs(1),
        max_delay: Duration::from_secs(60),
    };

    fn failed(error: impl Into<BoxError>) -> HandlerError {
        HandlerError::Failed(error.into())
    }

    #[test]
    fn errors_retry_until_the_last_attempt() {
        assert!(matches!(
            verdict(&POLICY, 1, &failed("boom")),
            Verdict::Retry(_)
        ));
        assert!(matches!(
            verdict(&POLICY, 2, &HandlerError::Panicked("boom".into())),
            Verdict::Retry(_)
        ));
        assert_eq!(
            verdict(&POLICY, 3, &HandlerError::TimedOut(Duration::from_secs(1))),
            Verdict::DeadLetter(headers::REASON_ATTEMPTS_EXHAUSTED)
        );
    }

    #[test]
    fn poison_is_dead_lettered_on_the_first_attempt() {
        let poison =
            HandlerError::Undecodable(DecodeError::UnsupportedContentType("text/xml".into()));
        assert_eq!(
            verdict(&POLICY, 1, &poison),
            Verdict::DeadLetter(headers::REASON_POISON)
        );
    }

    #[test]
    fn decisions_are_followed_within_the_attempts() {
        let later = || failed(Decision::retry_after(Duration::from_secs(7)));
        assert_eq!(
            verdict(&POLICY, 1, &later()),
            Verdict::Retry(Duration::from_millis(6_800))
        );
        // Asked for explicitly, a delay may leave the policy's bounds.
        let long = failed(Decision::retry_after(Duration::from_secs(3_600)));
        assert_eq!(
            verdict(&POLICY, 1, &long),
            Verdict::Retry(Duration::from_secs(3_900))
        );
        assert_eq!(
            verdict(&POLICY, 3, &later()),
            Verdict::DeadLetter(headers::REASON_ATTEMPTS_EXHAUSTED)
        );
        assert_eq!(
            verdict(&POLICY, 1, &failed(Decision::dead_letter("never"))),
            Verdict::DeadLetter(headers::REASON_REJECTED)
        );
        // The dangerous one is not bounded: that is what makes it dangerous.
        assert_eq!(
            verdict(&POLICY, 9, &failed(Decision::requeue())),
            Verdict::Requeue
        );
    }
}
