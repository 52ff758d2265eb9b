//! The scenarios, as the orchestrator runs them: set the broker up, run one
//! implementation's client child, check the broker afterwards, record.

mod cpu_handlers;
mod dead_letter;
mod drain;
mod failover;
mod idle;
mod isolation;
mod latency;
mod publish;
mod recovery;
pub(crate) mod sweep;
mod telemetry;

use std::{fmt, str::FromStr};

use hutch_rs::testing::Cluster;

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
    /// hutch-rs alone: every message fails and is forwarded to `<queue>:dead`.
    DeadLetter,
    /// hutch-rs alone: CPU-bound handlers, one call at a time against eight.
    CpuHandlers,
    /// hutch-rs alone: one consumer drains while another fails every message.
    Isolation,
    /// hutch-rs alone, on a three-node cluster: a stream of confirmed
    /// publishes to a quorum queue, without and with the connected node
    /// stopped during it.
    Failover,
    /// hutch-rs alone: drain and publish with traces and metrics exported,
    /// against the same without. Not in the default list: it needs the
    /// `telemetry` feature.
    Telemetry,
}

impl Scenario {
    /// Every scenario, in the default order.
    pub(crate) const ALL: [Scenario; 9] = [
        Scenario::Drain,
        Scenario::Publish,
        Scenario::Latency,
        Scenario::Idle,
        Scenario::Recovery,
        Scenario::DeadLetter,
        Scenario::CpuHandlers,
        Scenario::Isolation,
        Scenario::Failover,
    ];

    fn name(self) -> &'static str {
        match self {
            Scenario::Drain => "drain",
            Scenario::Publish => "publish",
            Scenario::Latency => "latency",
            Scenario::Idle => "idle",
            Scenario::Recovery => "recovery",
            Scenario::DeadLetter => "dead-letter",
            Scenario::CpuHandlers => "cpu-handlers",
            Scenario::Isolation => "isolation",
            Scenario::Failover => "failover",
            Scenario::Telemetry => "telemetry",
        }
    }

    /// Whether `implementation` plays the scenario. Forwarding failed
    /// messages, concurrent handler calls, isolation between consumers and
    /// failing over to another node are what hutch-rs adds to lapin: the
    /// raw clients have nothing to compare there, and those scenarios
    /// compare hutch-rs with itself.
    pub(crate) fn played_by(self, implementation: Impl) -> bool {
        match self {
            Scenario::DeadLetter
            | Scenario::CpuHandlers
            | Scenario::Isolation
            | Scenario::Failover
            | Scenario::Telemetry => implementation == Impl::Hutch,
            _ => true,
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
            Scenario::DeadLetter => dead_letter::run(bench, results),
            Scenario::CpuHandlers => cpu_handlers::run(bench, results),
            Scenario::Isolation => isolation::run(bench, results),
            Scenario::Failover => failover::run(bench, results),
            Scenario::Telemetry => telemetry::run(bench, results),
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
            .chain([Scenario::Telemetry])
            .find(|scenario| scenario.name() == name)
            .ok_or_else(|| {
                let names: Vec<&str> = Self::ALL.iter().map(|scenario| scenario.name()).collect();
                format!("unknown scenario {name:?} ({})", names.join(", ")).into()
            })
    }
}

/// What every scenario runs against.
#[derive(Debug)]
pub(crate) struct Bench<'a> {
    /// The broker node.
    pub(crate) broker: &'a BenchBroker,
    /// The three-node cluster of the failover scenario, started only when
    /// that scenario is selected (it takes about a minute).
    pub(crate) cluster: Option<&'a Cluster>,
    /// The run's options.
    pub(crate) options: &'a Options,
    /// The round, from 0: scenarios that measure two settings alternate
    /// which goes first.
    pub(crate) round: usize,
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

/// Messages per second of a throughput phase.
fn rate(report: &Throughput) -> f64 {
    report.messages as f64 / (report.elapsed_ns as f64 / 1e9)
}

/// Records a throughput phase as its rate and its CPU costs per message;
/// returns the rate.
fn record_throughput(
    results: &mut Results,
    scenario: &str,
    implementation: Impl,
    report: &Throughput,
) -> f64 {
    let messages = report.messages as f64;
    let per_message_us = |nanos: u64| nanos as f64 / 1_000.0 / messages;
    let rate = rate(report);
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
        "    {implementation} {scenario}: {rate:.0} msg/s, client {:.1} µs/msg, broker {:.1} µs/msg",
        per_message_us(report.client_cpu_ns),
        per_message_us(report.broker_cpu_ns)
    );
    rate
}

/// Records a ratio of two hutch-rs rates measured in the same round, with
/// the lowest value that passes.
fn record_ratio(results: &mut Results, metric: &str, ratio: f64, at_least: f64) {
    results.record(metric, Better::Higher, Impl::Hutch, ratio);
    results.target(metric, at_least);
    eprintln!("    {metric}: {ratio:.2} (target ≥ {at_least})");
}
