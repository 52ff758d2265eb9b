//! Isolation: one hutch-rs application runs two consumers. B drains an
//! ordinary pre-filled queue; A's queue is pre-filled too, and A's handler
//! fails every message with `max_attempts = 1`, so A forwards every one to
//! its dead-letter queue: a failure storm on the same connections. B's
//! throughput during the storm is compared with B's throughput undisturbed
//! (A's queue empty), measured in the same round, in alternating order.
//!
//! A's storm is twice B's message count, so that it outlasts B's drain; the
//! run fails if it did not (the measurement would not be of a storm). Both
//! queues are checked through the broker afterwards: B's empty; A's empty
//! and every one of its messages in `<queue>:dead`, exactly once.
//!
//! "A failure storm on consumer A leaves consumer B within 2× of its
//! undisturbed throughput" is a statement about speed, and speed is what
//! this benchmark measures, beside the other scenarios and with the broker
//! checks; as a timed test it would fail on a busy CI machine for reasons
//! that have nothing to do with the code. The verdict line of the run
//! says whether it holds.

use crate::{
    Error,
    broker::PATIENCE,
    child::ClientProcess,
    cli::Impl,
    report::Isolation,
    scenario::{Bench, Scenario, record_ratio, record_throughput},
    stats::{Better, Results},
    workload::{STEADY_QUEUE, STORM_QUEUE, dead_queue},
};

/// The lowest passing ratio of B's rate during the storm to B's rate alone.
const TARGET: f64 = 0.5;

pub(super) fn run(bench: &Bench<'_>, results: &mut Results) -> Result<(), Error> {
    let messages = bench.options.messages;
    let mut storms = [0, 2 * messages];
    if bench.round % 2 == 1 {
        storms.reverse();
    }
    let (mut alone, mut stormed) = (0.0, 0.0);
    for storm in storms {
        let report = run_once(bench, messages, storm)?;
        if storm == 0 {
            alone = record_throughput(
                results,
                "isolation: B undisturbed",
                Impl::Hutch,
                &report.steady,
            );
            continue;
        }
        stormed = record_throughput(
            results,
            "isolation: B during A's failure storm",
            Impl::Hutch,
            &report.steady,
        );
        let seconds = report.steady.elapsed_ns as f64 / 1e9;
        let storm_rate = report.storm_during as f64 / seconds;
        results.record(
            "isolation: A's dead-lettered msg/s during B's drain",
            Better::Higher,
            Impl::Hutch,
            storm_rate,
        );
        eprintln!(
            "    storm: {} copies confirmed during B's drain ({storm_rate:.0}/s), {} after",
            report.storm_during, report.storm_after
        );
    }
    record_ratio(
        results,
        "isolation: B during the storm ÷ B undisturbed (same round)",
        stormed / alone,
        TARGET,
    );
    Ok(())
}

/// One run: B drains `messages` while A fails `storm` messages (0: none).
fn run_once(bench: &Bench<'_>, messages: u64, storm: u64) -> Result<Isolation, Error> {
    let broker = bench.broker;
    for queue in [STEADY_QUEUE, STORM_QUEUE, &dead_queue(STORM_QUEUE)] {
        broker.purge(queue)?;
    }
    broker.fill(STORM_QUEUE, storm)?;
    broker.fill(STEADY_QUEUE, messages)?;
    let filled = (
        broker.messages_in(STEADY_QUEUE)?,
        broker.messages_in(STORM_QUEUE)?,
    );
    if filled != (messages, storm) {
        return Err(format!(
            "isolation: {filled:?} messages in ({STEADY_QUEUE}, {STORM_QUEUE}) after filling ({messages}, {storm})"
        )
        .into());
    }

    let mut args = bench.client(Scenario::Isolation, Impl::Hutch)?;
    args.messages = messages;
    args.storm = storm;
    let report: Isolation = ClientProcess::run(&args, PATIENCE)?;

    let left = broker.messages_in(STEADY_QUEUE)?;
    if report.steady.messages != messages || left != 0 {
        return Err(format!(
            "isolation: B handled {} of {messages}, {left} left in {STEADY_QUEUE}",
            report.steady.messages
        )
        .into());
    }
    broker.expect_forwarded(STORM_QUEUE, storm)?;
    broker.purge(&dead_queue(STORM_QUEUE))?;
    if storm > 0 && (report.storm_during == 0 || report.storm_after == 0) {
        return Err(format!(
            "isolation: the storm did not cover B's drain ({} copies during it, {} after)",
            report.storm_during, report.storm_after
        )
        .into());
    }
    Ok(report)
}
