//! Publish: the client publishes with confirms to the topic exchange; every
//! confirmed message must be in the bound queue, which is emptied after.

use crate::{
    Error,
    broker::PATIENCE,
    child::ClientProcess,
    cli::{ClientArgs, Impl},
    report::Throughput,
    scenario::{Bench, Scenario, record_throughput},
    stats::Results,
    workload::PUBLISH_QUEUE,
};

pub(super) fn run(
    bench: &Bench<'_>,
    implementation: Impl,
    results: &mut Results,
) -> Result<(), Error> {
    let report = measure(bench, implementation)?;
    record_throughput(results, "publish", implementation, &report);
    Ok(())
}

/// One run of `implementation`'s publish client, checked through the broker.
pub(super) fn measure(bench: &Bench<'_>, implementation: Impl) -> Result<Throughput, Error> {
    measure_by(bench, bench.client(Scenario::Publish, implementation)?)
}

/// One run of the publish client of `args`, checked through the broker.
pub(super) fn measure_by(bench: &Bench<'_>, mut args: ClientArgs) -> Result<Throughput, Error> {
    let implementation = args.implementation;
    let broker = bench.broker;
    let messages = bench.options.messages;
    broker.purge(PUBLISH_QUEUE)?;

    args.messages = messages;
    let report: Throughput = ClientProcess::run(&args, PATIENCE)?;

    // Every client publishes one warm-up message before the measured ones.
    let arrived = broker.messages_in(PUBLISH_QUEUE)?;
    if arrived != messages + 1 {
        return Err(format!(
            "publish by {implementation}: {arrived} messages in {PUBLISH_QUEUE}, expected {}",
            messages + 1
        )
        .into());
    }
    broker.purge(PUBLISH_QUEUE)?;
    Ok(report)
}
