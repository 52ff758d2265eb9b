//! The queues behind retries: one dead-letter queue per consumer, and delay
//! queues that hold a retry until its time and then dead-letter it back to
//! the consumer's own queue.

use std::time::Duration;

use lapin::Channel;

use crate::{
    Result,
    topology::{self, ConsumerPlan},
};

/// The longest suffix a queue name gets (`:delay:4294967295ms`), which the
/// name check keeps room for.
pub(crate) const LONGEST_SUFFIX: usize = ":delay:4294967295ms".len();

/// `<queue>:dead`.
pub(crate) fn dead_letter_queue(queue: &str) -> String {
    format!("{queue}:dead")
}

/// `<queue>:delay:<ms>ms`: one queue per consumer and delay step.
pub(crate) fn delay_queue(queue: &str, delay: Duration) -> String {
    format!("{}{}ms", delay_queue_prefix(queue), delay.as_millis())
}

/// What the names of `queue`'s delay queues start with.
pub(crate) fn delay_queue_prefix(queue: &str) -> String {
    format!("{queue}:delay:")
}

/// Declares `<queue>:dead`: durable, of the consumer's queue type, bound
/// to nothing. hutch-rs puts messages there, and the broker does when the
/// consumer's queue dead-letters (a quorum queue's delivery limit, an
/// expired TTL, a length limit); they stay until someone looks at them.
pub(crate) async fn declare_dead_letter_queue(
    channel: &Channel,
    plan: &ConsumerPlan,
) -> Result<()> {
    let queue = dead_letter_queue(&plan.queue);
    let arguments = plan.declaration.dead_letter_queue();
    let described = plan.declaration.describe(&arguments);
    topology::declare_durable_queue(channel, &queue, arguments, || {
        format!(
            "dead-letter queue {queue:?} (durable, {described}) of consumer {}",
            plan.name()
        )
    })
    .await
}

/// Declares the delay queue for `delay`: durable, of the consumer's queue
/// type, its messages expire after `delay` and are dead-lettered through
/// the default exchange straight to the consumer's own queue, never to the
/// other queues bound to the routing key. Unconsumed, so expiry order is
/// arrival order.
pub(crate) async fn declare_delay_queue(
    channel: &Channel,
    plan: &ConsumerPlan,
    delay: Duration,
) -> Result<String> {
    let queue = delay_queue(&plan.queue, delay);
    let arguments = plan.declaration.delay_queue(delay, &plan.queue);
    let described = plan.declaration.describe(&arguments);
    topology::declare_durable_queue(channel, &queue, arguments, || {
        format!(
            "delay queue {queue:?} (durable, {described}) of consumer {}",
            plan.name()
        )
    })
    .await?;
    Ok(queue)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_names_follow_the_convention() {
        assert_eq!(dead_letter_queue("shop:receipts"), "shop:receipts:dead");
        assert_eq!(
            delay_queue("shop:receipts", Duration::from_millis(1_500)),
            "shop:receipts:delay:1500ms"
        );
        assert_eq!(
            delay_queue("q", super::super::policy::MAX_DELAY).len(),
            1 + LONGEST_SUFFIX
        );
    }
}
