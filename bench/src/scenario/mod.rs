//! The scenarios, as the orchestrator runs them: set the broker up, run one
//! implementation's client child, check the broker afterwards, record.

mod drain;
mod idle;
mod latency;
mod publish;
mod recovery;
pub(crate) mod sweep;

use std::{fmt, str::FromStr};

use crate::{
    Error,
    broker::BenchBroker,
    cli::{ClientArgs, Impl, Options},
    report::Throughput,
    stats::{Better, Results},
};

/// One of the benchmark's scenarios.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scenario {
    /// Consume a pre-filled queue.
    Drain,
    /// Publish with confirms.
    Publish,
    /// End-to-end latency at fixed rates.
    Latency,
    /// Memory per idle consumer.
    Idle,
    /// Time to consume again after a broker outage.
    Recovery,
}

impl Scenario {
    /// Every scenario, in the default order.
    pub(crate) const ALL: [Scenario; 5] = [
        Scenario::Drain,
        Scenario::Publish,
        Scenario::Latency,
        Scenario::Idle,
        Scenario::Recovery,
    ];

    fn name(self) -> &'static str {
        match self {
            Scenario::Drain => "drain",
            Scenario::Publish => "publish",
            Scenario::Latency => "latency",
            Scenario::Idle => "idle",
            Scenario::Recovery => "recovery",
        }
    }

    /// Runs the scenario once for `implementation` and records its metrics.
    pub(crate) fn run(
        self,
        bench: &Bench<'_>,
        implementation: Impl,
        results: &mut Results,
    ) -> Result<(), Error> {
        match self {
            Scenario::Drain => drain::run(bench, implementation, results),
            Scenario::Publish => publish::run(bench, implementation, results),
            Scenario::Latency => latency::run(bench, implementation, results),
            Scenario::Idle => idle::run(bench, implementation, results),
            Scenario::Recovery => recovery::run(bench, implementation, results),
        }
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Scenario {
    type Err = Error;

    fn from_str(name: &str) -> Result<Self, Error> {
        Self::ALL
            .into_iter()
            .find(|scenario| scenario.name() == name)
            .ok_or_else(|| {
                format!("unknown scenario {name:?} (drain, publish, latency, idle, recovery)")
                    .into()
            })
    }
}

/// What every scenario runs against.
#[derive(Debug)]
pub(crate) struct Bench<'a> {
    /// The broker node.
    pub(crate) broker: &'a BenchBroker,
    /// The run's options.
    pub(crate) options: &'a Options,
}

impl Bench<'_> {
    /// The arguments of a client child for `scenario` by `implementation`.
    pub(crate) fn client(
        &self,
        scenario: Scenario,
        implementation: Impl,
    ) -> Result<ClientArgs, Error> {
        Ok(ClientArgs::new(
            scenario,
            implementation,
            self.broker.uri(),
            self.broker.os_pid()?,
        ))
    }
}

/// Records a throughput phase as its rate and its CPU costs per message.
fn record_throughput(
    results: &mut Results,
    scenario: &str,
    implementation: Impl,
    report: &Throughput,
) {
    let messages = report.messages as f64;
    let per_message_us = |nanos: u64| nanos as f64 / 1_000.0 / messages;
    let rate = messages / (report.elapsed_ns as f64 / 1e9);
    results.record(
        &format!("{scenario} msg/s"),
        Better::Higher,
        implementation,
        rate,
    );
    results.record(
        &format!("{scenario} client CPU µs/msg"),
        Better::Lower,
        implementation,
        per_message_us(report.client_cpu_ns),
    );
    results.record(
        &format!("{scenario} broker CPU µs/msg"),
        Better::Lower,
        implementation,
        per_message_us(report.broker_cpu_ns),
    );
    eprintln!(
        "    {implementation}: {rate:.0} msg/s, client {:.1} µs/msg, broker {:.1} µs/msg",
        per_message_us(report.client_cpu_ns),
        per_message_us(report.broker_cpu_ns)
    );
}
