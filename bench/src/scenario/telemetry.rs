//! Telemetry: what traces and metrics cost hutch-rs per message. In each
//! round the hutch-rs drain and publish clients run once per setting of
//! [`Telemetry`] (the order rotating), and the CPU each spends per message
//! is compared with the same round's run without telemetry.
//!
//! The drained messages carry a `traceparent`, as those of a traced
//! publisher do, so that the traced drain also reads it and joins its
//! trace.

use lapin::types::{AMQPValue, FieldTable};

use crate::{
    Error,
    cli::Impl,
    report::Throughput,
    scenario::{Bench, Scenario, drain, publish, record_throughput},
    stats::{Better, Results},
    telemetry::Telemetry,
    workload::persistent_json,
};

/// A publisher's span, sampled.
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

pub(super) fn run(bench: &Bench<'_>, results: &mut Results) -> Result<(), Error> {
    let mut drained = Vec::new();
    let mut published = Vec::new();
    for telemetry in Telemetry::rotation(bench.round) {
        let mut args = bench.client(Scenario::Drain, Impl::Hutch)?;
        args.telemetry = telemetry;
        let mut headers = FieldTable::default();
        headers.insert(
            "traceparent".into(),
            AMQPValue::LongString(TRACEPARENT.into()),
        );
        let report = drain::measure(bench, args, persistent_json().with_headers(headers))?;
        record_throughput(
            results,
            &format!("telemetry {telemetry}: drain"),
            Impl::Hutch,
            &report,
        );
        drained.push((telemetry, report));

        let mut args = bench.client(Scenario::Publish, Impl::Hutch)?;
        args.telemetry = telemetry;
        let report = publish::measure_by(bench, args)?;
        record_throughput(
            results,
            &format!("telemetry {telemetry}: publish"),
            Impl::Hutch,
            &report,
        );
        published.push((telemetry, report));
    }
    record_overhead(results, "drain", &drained);
    record_overhead(results, "publish", &published);
    Ok(())
}

/// Records, for every setting but [`Telemetry::Off`], the client CPU it
/// added per message to the same round's run without telemetry.
fn record_overhead(results: &mut Results, phase: &str, runs: &[(Telemetry, Throughput)]) {
    let per_message_us =
        |report: &Throughput| report.client_cpu_ns as f64 / 1_000.0 / report.messages as f64;
    let Some((_, off)) = runs
        .iter()
        .find(|(telemetry, _)| *telemetry == Telemetry::Off)
    else {
        return;
    };
    for (telemetry, report) in runs {
        if *telemetry == Telemetry::Off {
            continue;
        }
        let added = per_message_us(report) - per_message_us(off);
        let metric = format!("telemetry {telemetry}: {phase} client CPU added µs/msg");
        results.record(&metric, Better::Lower, Impl::Hutch, added);
        eprintln!("    {metric}: {added:.2}");
    }
}
