//! A handler's explicit say over what happens to a message it could not
//! handle.

use std::time::Duration;

use crate::BoxError;

/// An explicit decision, returned by a handler as its error.
///
/// A handler's plain `Err` applies its consumer's retry policy: retry with
/// backoff until `max_attempts`, then `<queue>:dead`. Return a `Decision`
/// instead (directly, with `?`, or as the source of your own error) to
/// decide yourself:
///
/// ```
/// use std::time::Duration;
/// use hutch_rs::{BoxError, Decision, Message};
///
/// #[derive(serde::Deserialize)]
/// struct Charge { amount: i64 }
///
/// #[hutch_rs::consumer(routing_key = "billing.charge")]
/// async fn charge(msg: Message<Charge>) -> Result<(), BoxError> {
///     if msg.amount < 0 {
///         // Retrying cannot help: straight to billing.charge's dead-letter queue.
///         return Err(Decision::dead_letter("negative amount").into());
///     }
///     if payment_provider_is_down() {
///         // The provider said when to come back.
///         return Err(Decision::retry_after(Duration::from_secs(30)).into());
///     }
///     Ok(())
/// }
/// # fn payment_provider_is_down() -> bool { false }
/// ```
///
/// Every decision is bounded by the consumer's `max_attempts` except
/// [`requeue`](Self::requeue): a `retry_after` on the last attempt
/// dead-letters the message instead, so no message can loop forever.
#[derive(Debug)]
pub struct Decision {
    action: Action,
    reason: Option<BoxError>,
}

/// What a [`Decision`] asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    RetryAfter(Duration),
    DeadLetter,
    Requeue,
}

impl Decision {
    /// Retry after `delay` instead of the policy's backoff, whatever the
    /// policy's bounds; rounded to the nearest delay-queue step (within 12 %
    /// from 10 ms up). Counts as an attempt: on the last one the message is
    /// dead-lettered.
    #[must_use]
    pub fn retry_after(delay: Duration) -> Self {
        Self {
            action: Action::RetryAfter(delay),
            reason: None,
        }
    }

    /// Send the message to the consumer's dead-letter queue now, whatever
    /// attempts remain: for a message that can never succeed. `reason` goes
    /// into its [`ERROR`](crate::headers::ERROR) header.
    #[must_use]
    pub fn dead_letter(reason: impl Into<BoxError>) -> Self {
        Self {
            action: Action::DeadLetter,
            reason: Some(reason.into()),
        }
    }

    /// Put the message back at the head of its queue at once.
    ///
    /// **The dangerous choice.** The broker delivers it again right away,
    /// with no delay and no attempt counted: a message that keeps failing
    /// this way loops as fast as the handler can fail, taking a CPU and
    /// flooding logs, which is the failure mode hutch-rs otherwise
    /// prevents. Use it only for a failure that is certainly over before the
    /// message comes back (another instance can take it, say), and prefer
    /// [`retry_after`](Self::retry_after) with a short delay.
    #[must_use]
    pub fn requeue() -> Self {
        Self {
            action: Action::Requeue,
            reason: None,
        }
    }

    /// Attaches the error that led to the decision: it is logged, passed to
    /// error hooks and written into the [`ERROR`](crate::headers::ERROR)
    /// header.
    #[must_use]
    pub fn because(mut self, error: impl Into<BoxError>) -> Self {
        self.reason = Some(error.into());
        self
    }

    pub(crate) fn action(&self) -> Action {
        self.action
    }

    /// The decision in `error` or in its chain of sources, if any.
    pub(crate) fn find<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a Decision> {
        let mut current = Some(error);
        while let Some(error) = current {
            if let Some(decision) = error.downcast_ref::<Decision>() {
                return Some(decision);
            }
            current = error.source();
        }
        None
    }
}

impl std::fmt::Display for Decision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The reason is the source, not part of this text: error reporters
        // print the chain.
        match self.action {
            Action::RetryAfter(delay) => write!(f, "the handler asked to retry after {delay:?}"),
            Action::DeadLetter => f.write_str("the handler asked to dead-letter the message"),
            Action::Requeue => f.write_str("the handler asked to requeue the message"),
        }
    }
}

impl std::error::Error for Decision {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.reason
            .as_deref()
            .map(|reason| reason as &(dyn std::error::Error + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("charging failed")]
    struct ChargeFailed(#[source] Decision);

    #[test]
    fn a_decision_is_found_directly_or_as_a_source() {
        let direct: BoxError = Decision::retry_after(Duration::from_secs(3)).into();
        assert_eq!(
            Decision::find(direct.as_ref()).map(Decision::action),
            Some(Action::RetryAfter(Duration::from_secs(3)))
        );
        let wrapped: BoxError = ChargeFailed(Decision::dead_letter("card expired")).into();
        assert_eq!(
            Decision::find(wrapped.as_ref()).map(Decision::action),
            Some(Action::DeadLetter)
        );
        let plain: BoxError = "just an error".into();
        assert!(Decision::find(plain.as_ref()).is_none());
    }

    #[test]
    fn a_decision_reads_well() {
        let decision: BoxError = Decision::requeue().because("lock held elsewhere").into();
        assert_eq!(
            crate::retry::error_chain(decision.as_ref()),
            "the handler asked to requeue the message: lock held elsewhere"
        );
    }
}
