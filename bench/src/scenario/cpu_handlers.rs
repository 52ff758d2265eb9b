//! CPU-bound handlers: each call burns about 200 µs of CPU in a busy loop
//! (no `.await` in it), on a runtime of two worker threads. The same number
//! of messages is drained one call at a time and eight at a time: with
//! handler calls on tasks of their own, eight should use both workers.
//! The runs alternate which goes first, round by round.

use crate::{
    Error,
    broker::PATIENCE,
    child::ClientProcess,
    cli::Impl,
    report::Throughput,
    scenario::{Bench, Scenario, record_ratio, record_throughput},
    stats::Results,
    workload::CPU_QUEUE,
};

/// The lowest passing ratio of concurrency 8 to concurrency 1.
const TARGET: f64 = 1.6;

pub(super) fn run(bench: &Bench<'_>, results: &mut Results) -> Result<(), Error> {
    // Half the drain's messages: one at a time, 200 µs each takes seconds.
    let messages = bench.options.messages / 2;
    let mut order = [1, 8];
    if bench.round % 2 == 1 {
        order.reverse();
    }
    let mut rates = [0.0; 2];
    for concurrency in order {
        let report = drain_once(bench, messages, concurrency)?;
        let rate = record_throughput(
            results,
            &format!("cpu-handlers concurrency {concurrency}"),
            Impl::Hutch,
            &report,
        );
        rates[usize::from(concurrency == 8)] = rate;
    }
    record_ratio(
        results,
        "cpu-handlers concurrency 8 ÷ concurrency 1 (same round)",
        rates[1] / rates[0],
        TARGET,
    );
    Ok(())
}

fn drain_once(bench: &Bench<'_>, messages: u64, concurrency: u16) -> Result<Throughput, Error> {
    let broker = bench.broker;
    broker.purge(CPU_QUEUE)?;
    broker.fill(CPU_QUEUE, messages)?;
    let mut args = bench.client(Scenario::CpuHandlers, Impl::Hutch)?;
    args.messages = messages;
    args.concurrency = concurrency;
    let report: Throughput = ClientProcess::run(&args, PATIENCE)?;
    let left = broker.messages_in(CPU_QUEUE)?;
    if report.messages != messages || left != 0 {
        return Err(format!(
            "cpu-handlers at concurrency {concurrency}: handled {} of {messages}, {left} left in {CPU_QUEUE}",
            report.messages
        )
        .into());
    }
    Ok(report)
}
