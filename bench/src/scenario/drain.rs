//! Drain: the orchestrator fills the queue, the client consumes all of it;
//! afterwards the queue must be empty, nothing unacknowledged.

use lapin::BasicProperties;

use crate::{
    Error,
    broker::PATIENCE,
    child::ClientProcess,
    cli::{ClientArgs, Impl},
    report::Throughput,
    scenario::{Bench, Scenario, record_throughput},
    stats::Results,
    workload::{DRAIN_QUEUE, persistent_json},
};

pub(super) fn run(
    bench: &Bench<'_>,
    implementation: Impl,
    results: &mut Results,
) -> Result<(), Error> {
    let args = bench.client(Scenario::Drain, implementation)?;
    let report = measure(bench, args, persistent_json())?;
    record_throughput(results, "drain", implementation, &report);
    Ok(())
}

/// One drain by the client of `args`, of messages published with
/// `properties`, checked through the broker.
pub(super) fn measure(
    bench: &Bench<'_>,
    mut args: ClientArgs,
    properties: BasicProperties,
) -> Result<Throughput, Error> {
    let implementation = args.implementation;
    let broker = bench.broker;
    let messages = bench.options.messages;
    broker.purge(DRAIN_QUEUE)?;
    broker.fill_with(DRAIN_QUEUE, messages, properties)?;
    let filled = broker.messages_in(DRAIN_QUEUE)?;
    if filled != messages {
        return Err(
            format!("{DRAIN_QUEUE} holds {filled} messages after filling {messages}").into(),
        );
    }

    args.messages = messages;
    let report: Throughput = ClientProcess::run(&args, PATIENCE)?;

    // `messages` counts ready and unacknowledged ones alike.
    let left = broker.messages_in(DRAIN_QUEUE)?;
    if report.messages != messages || left != 0 {
        return Err(format!(
            "drain by {implementation}: handled {} of {messages}, {left} left in {DRAIN_QUEUE} (ready or unacked)",
            report.messages
        )
        .into());
    }
    if implementation == Impl::Hutch {
        let dead = broker.messages_in(&format!("{DRAIN_QUEUE}:dead"))?;
        if dead != 0 {
            return Err(format!("drain by hutch-rs dead-lettered {dead} messages").into());
        }
    }
    Ok(report)
}
