//! Dead-letter: every message of a pre-filled queue fails in its handler,
//! with `max_attempts = 1`, so each one is forwarded to `<queue>:dead`.
//! Measured from the first delivery to the last copy confirmed there (the
//! error hook hears of each once its copy is confirmed and the original
//! settled); afterwards the dead-letter queue must hold exactly every
//! message, the queue none, ready or unacknowledged.
//!
//! The yardstick is hutch-rs's own confirmed publishing: forwarding a copy
//! is a confirmed publish plus an acknowledgement, so it should go at least
//! half as fast. The publish scenario's hutch-rs client runs just before,
//! in the same round, and the ratio of the two is the one recorded.

use crate::{
    Error,
    broker::PATIENCE,
    child::ClientProcess,
    cli::Impl,
    report::Throughput,
    scenario::{Bench, Scenario, publish, rate, record_ratio, record_throughput},
    stats::{Better, Results},
    workload::{DEAD_LETTER_QUEUE, dead_queue},
};

/// The lowest passing ratio of dead-lettering to confirmed publishing.
const TARGET: f64 = 0.5;

pub(super) fn run(bench: &Bench<'_>, results: &mut Results) -> Result<(), Error> {
    let broker = bench.broker;
    let messages = bench.options.messages;

    let reference = publish::measure(bench, Impl::Hutch)?;
    let publish_rate = rate(&reference);
    results.record(
        "dead-letter: the same round's confirmed publish msg/s",
        Better::Higher,
        Impl::Hutch,
        publish_rate,
    );

    broker.purge(DEAD_LETTER_QUEUE)?;
    broker.purge(&dead_queue(DEAD_LETTER_QUEUE))?;
    broker.fill(DEAD_LETTER_QUEUE, messages)?;
    let filled = broker.messages_in(DEAD_LETTER_QUEUE)?;
    if filled != messages {
        return Err(format!(
            "{DEAD_LETTER_QUEUE} holds {filled} messages after filling {messages}"
        )
        .into());
    }

    let mut args = bench.client(Scenario::DeadLetter, Impl::Hutch)?;
    args.messages = messages;
    let report: Throughput = ClientProcess::run(&args, PATIENCE)?;
    if report.messages != messages {
        return Err(format!(
            "dead-letter: {} of {messages} copies confirmed",
            report.messages
        )
        .into());
    }
    broker.expect_forwarded(DEAD_LETTER_QUEUE, messages)?;
    broker.purge(&dead_queue(DEAD_LETTER_QUEUE))?;

    let dead_rate = record_throughput(results, "dead-letter", Impl::Hutch, &report);
    record_ratio(
        results,
        "dead-letter ÷ confirmed publish (same round)",
        dead_rate / publish_rate,
        TARGET,
    );
    Ok(())
}
