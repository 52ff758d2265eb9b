//! The sweep: hutch-rs alone, draining the same pre-filled queue with a
//! range of prefetch and concurrency settings, for two kinds of handler:
//! one that returns at once, and one that waits 2 ms as if on a database.
//! It is how the defaults were chosen (see the guide's Performance chapter).

use std::{fmt::Write, time::Duration};

use crate::{
    Error,
    broker::PATIENCE,
    child::ClientProcess,
    cli::Impl,
    report::Throughput,
    scenario::{Bench, Scenario},
    stats::{median, number},
    workload::DRAIN_QUEUE,
};

/// One setting tried.
#[derive(Debug, Clone, Copy)]
struct Setting {
    prefetch: u16,
    concurrency: u16,
    work: Duration,
    messages: u64,
}

/// The settings, in the table's order.
fn settings(messages: u64) -> Vec<Setting> {
    let instant = [1, 10, 32, 50, 100, 200, 500].map(|prefetch| Setting {
        prefetch,
        concurrency: 1,
        work: Duration::ZERO,
        messages,
    });
    // A 2 ms handler is slow enough that each call's wait dominates; fewer
    // messages keep the one-at-a-time runs short. The prefetch is what
    // hutch-rs picks when it is not set: 50, or twice the concurrency.
    let waiting =
        [(50, 1), (50, 4), (50, 16), (64, 32), (128, 64)].map(|(prefetch, concurrency)| Setting {
            prefetch,
            concurrency,
            work: Duration::from_millis(2),
            messages: (messages / 10).max(500),
        });
    instant.into_iter().chain(waiting).collect()
}

/// Runs every setting `rounds` times and returns the markdown table.
pub(crate) fn run(bench: &Bench<'_>, rounds: usize) -> Result<String, Error> {
    let settings = settings(bench.options.messages);
    let mut rates = vec![Vec::new(); settings.len()];
    let mut cpus = vec![Vec::new(); settings.len()];
    for round in 0..rounds {
        for (index, setting) in settings.iter().enumerate() {
            eprintln!("sweep round {}/{rounds}: {setting:?}", round + 1);
            let report = drain_once(bench, setting)?;
            let messages = report.messages as f64;
            rates[index].push(messages / (report.elapsed_ns as f64 / 1e9));
            cpus[index].push(report.client_cpu_ns as f64 / 1_000.0 / messages);
        }
    }
    let mut table = String::from(
        "| handler | prefetch | concurrency | msg/s median | min–max | client CPU µs/msg |\n\
         |---|---:|---:|---:|---:|---:|\n",
    );
    for (index, setting) in settings.iter().enumerate() {
        let (min, max) = rates[index]
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(min, max), &rate| {
                (min.min(rate), max.max(rate))
            });
        let handler = if setting.work.is_zero() {
            "returns at once".to_owned()
        } else {
            format!("waits {:?}", setting.work)
        };
        let _ = writeln!(
            table,
            "| {handler} | {} | {} | {} | {}–{} | {} |",
            setting.prefetch,
            setting.concurrency,
            number(median(&rates[index])),
            number(min),
            number(max),
            number(median(&cpus[index])),
        );
    }
    Ok(table)
}

fn drain_once(bench: &Bench<'_>, setting: &Setting) -> Result<Throughput, Error> {
    let broker = bench.broker;
    broker.purge(DRAIN_QUEUE)?;
    broker.fill(DRAIN_QUEUE, setting.messages)?;
    let mut args = bench.client(Scenario::Drain, Impl::Hutch)?;
    args.messages = setting.messages;
    args.prefetch = setting.prefetch;
    args.concurrency = setting.concurrency;
    args.work = setting.work;
    let report: Throughput = ClientProcess::run(&args, PATIENCE)?;
    let left = broker.messages_in(DRAIN_QUEUE)?;
    if report.messages != setting.messages || left != 0 {
        return Err(format!(
            "sweep {setting:?}: handled {} of {}, {left} left in {DRAIN_QUEUE}",
            report.messages, setting.messages
        )
        .into());
    }
    Ok(report)
}
