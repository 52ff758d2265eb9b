//! Failure handling: retries that wait on the broker, dead-letter queues,
//! explicit decisions, error hooks.
//!
//! A message whose handler fails is never put back at the head of its queue
//! (unless the handler insists, [`Decision::requeue`]). Instead a copy goes to
//! one of the consumer's delay queues, `<queue>:delay:<ms>ms`, whose message
//! TTL dead-letters it through the default exchange back to `<queue>` alone;
//! after the last attempt, or at once for a poison message, a copy goes to
//! `<queue>:dead`. The original is acknowledged only once the broker has
//! confirmed the copy.

pub(crate) mod copy;
mod decision;
mod failure;
mod hook;
mod hook_queue;
mod policy;
pub(crate) mod provenance;
pub(crate) mod queues;

pub(crate) use decision::Action;
pub use decision::Decision;
pub use failure::{Failure, HandlerError, Outcome};
pub use hook::ErrorHook;
pub(crate) use hook::ErrorHooks;
pub use hook_queue::ERROR_HOOK_QUEUE_CAPACITY;
pub(crate) use hook_queue::HookQueues;
pub use policy::RetryPolicy;
pub(crate) use policy::{check_delays, on_grid};

/// An error and its sources, joined by `": "`: the whole story in one line
/// for logs and headers.
pub(crate) fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(error) = source {
        let next = error.to_string();
        // Some errors repeat their source in their own text.
        if !text.ends_with(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = error.source();
    }
    text
}
