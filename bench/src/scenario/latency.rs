//! Latency: one client process publishes open-loop at a fixed rate and
//! consumes what it publishes; p50 and p99 of scheduled-send-to-handler.

use crate::{
    Error,
    broker::PATIENCE,
    child::ClientProcess,
    cli::Impl,
    report::Latency,
    scenario::{Bench, Scenario},
    stats::{Better, Results},
    workload::LATENCY_QUEUE,
};

/// The rates, in messages per second.
const RATES: [u64; 2] = [500, 2_000];

pub(super) fn run(
    bench: &Bench<'_>,
    implementation: Impl,
    results: &mut Results,
) -> Result<(), Error> {
    let broker = bench.broker;
    for rate in RATES {
        broker.purge(LATENCY_QUEUE)?;
        let mut args = bench.client(Scenario::Latency, implementation)?;
        args.rate = rate;
        args.duration = bench.options.latency_duration;
        let expected = rate * args.duration.as_millis() as u64 / 1000;
        let report: Latency = ClientProcess::run(&args, PATIENCE)?;

        let left = broker.messages_in(LATENCY_QUEUE)?;
        if report.samples != expected || left != 0 {
            return Err(format!(
                "latency by {implementation} at {rate}/s: {} of {expected} messages measured, {left} left in {LATENCY_QUEUE}",
                report.samples
            )
            .into());
        }
        let ms = |nanos: u64| nanos as f64 / 1e6;
        for (percentile, nanos) in [("p50", report.p50_ns), ("p99", report.p99_ns)] {
            results.record(
                &format!("latency {percentile} ms @ {rate} msg/s"),
                Better::Lower,
                implementation,
                ms(nanos),
            );
        }
        eprintln!(
            "    {implementation} @ {rate}/s: p50 {:.2} ms, p99 {:.2} ms",
            ms(report.p50_ns),
            ms(report.p99_ns)
        );
    }
    Ok(())
}
