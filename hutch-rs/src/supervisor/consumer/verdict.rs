//! What becomes of a message whose handling failed: the consumer's retry
//! policy, or the handler's explicit [`Decision`], picks a verdict.

use std::time::{Duration, SystemTime};

use lapin::BasicProperties;

use crate::{
    headers,
    message::Envelope,
    retry::{self, Action, Decision, HandlerError, RetryPolicy, copy},
};

/// Where a copy of a failed message goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Target {
    /// The consumer's delay queue for this delay, back to its queue after.
    Delay(Duration),
    /// `<queue>:dead`.
    Dead,
}

/// What becomes of a failed message, with the copy's properties built.
#[derive(Debug)]
#[expect(
    clippy::large_enum_variant,
    reason = "made once per failed message and taken apart at once"
)]
pub(crate) enum Disposal {
    /// Back in its queue at once, the handler insisted.
    Requeue,
    /// A copy to `target`, with these properties; the reason is the
    /// dead-letter reason (for a retry, the one it would get once its
    /// attempts run out).
    Forward {
        target: Target,
        properties: BasicProperties,
        reason: &'static str,
    },
}

/// The consumer (named `consumer`, consuming `queue` under `policy`) failed
/// to handle the message of `envelope` with `error`: what becomes of it.
/// One decision for the broker's consumers and the in-memory test broker.
pub(crate) fn dispose(
    policy: &RetryPolicy,
    consumer: &str,
    queue: &str,
    envelope: &Envelope,
    error: &HandlerError,
    error_text: &str,
    failed_at: SystemTime,
) -> Disposal {
    let attempt = envelope.attempt;
    match verdict(policy, attempt, error) {
        Verdict::Requeue => Disposal::Requeue,
        Verdict::Retry(delay) => Disposal::Forward {
            target: Target::Delay(delay),
            properties: copy::retry_properties(envelope, attempt.saturating_add(1), error_text),
            reason: headers::REASON_ATTEMPTS_EXHAUSTED,
        },
        Verdict::DeadLetter(reason) => {
            let dead = copy::DeadLetter {
                consumer,
                queue,
                reason,
                error: error_text,
                failed_at,
            };
            Disposal::Forward {
                target: Target::Dead,
                properties: copy::dead_letter_properties(envelope, &dead),
                reason,
            }
        }
    }
}

/// What to do with a failed message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
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
pub(super) fn verdict(policy: &RetryPolicy, attempt: u32, error: &HandlerError) -> Verdict {
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
