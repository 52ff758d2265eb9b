//! Idle memory: the client's resident memory with 1,000 idle consumers
//! minus that with one, per added consumer. Read once the broker reports
//! every consumer, not after a guessed sleep.

use std::{
    thread,
    time::{Duration, Instant},
};

use crate::{
    Error,
    broker::PATIENCE,
    child::{ClientProcess, MEASURE, READY},
    cli::Impl,
    report::Idle,
    scenario::{Bench, Scenario},
    stats::{Better, Results},
    workload::{IDLE_CONSUMERS, NAMESPACE},
};

pub(super) fn run(
    bench: &Bench<'_>,
    implementation: Impl,
    results: &mut Results,
) -> Result<(), Error> {
    let baseline = rss_with(bench, implementation, 1)?;
    let full = rss_with(bench, implementation, IDLE_CONSUMERS)?;
    let per_consumer = (full as f64 - baseline as f64) / (IDLE_CONSUMERS - 1) as f64;
    results.record(
        &format!("idle RSS KiB per consumer ({IDLE_CONSUMERS} consumers)"),
        Better::Lower,
        implementation,
        per_consumer,
    );
    eprintln!(
        "    {implementation}: {baseline} KiB with 1 consumer, {full} KiB with {IDLE_CONSUMERS}: {per_consumer:.1} KiB each"
    );
    Ok(())
}

/// The client's RSS in KiB with `consumers` idle consumers.
fn rss_with(bench: &Bench<'_>, implementation: Impl, consumers: usize) -> Result<u64, Error> {
    let mut args = bench.client(Scenario::Idle, implementation)?;
    args.consumers = consumers;
    let mut client = ClientProcess::spawn(&args)?;
    client.expect(READY, PATIENCE)?;
    await_consumers(bench, consumers)?;
    client.send(MEASURE)?;
    let idle: Idle = client.result(PATIENCE)?;
    client.finish()?;
    Ok(idle.rss_kib)
}

/// Waits until the broker counts exactly `consumers` consumers on the idle
/// queues (a previous client's may still be going away).
fn await_consumers(bench: &Bench<'_>, consumers: usize) -> Result<(), Error> {
    let prefix = format!("{NAMESPACE}:idle_");
    let deadline = Instant::now() + PATIENCE;
    loop {
        let seen = bench.broker.consumers_on(&prefix)?;
        if seen == consumers as u64 {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(
                format!("the broker sees {seen} idle consumers, expected {consumers}").into(),
            );
        }
        thread::sleep(Duration::from_millis(200));
    }
}
