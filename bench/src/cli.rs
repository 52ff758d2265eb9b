//! The command line: the orchestrator's options, and the hidden `client`
//! subcommand the orchestrator re-executes this binary with.

use std::{fmt, str::FromStr, time::Duration};

use crate::{Error, scenario::Scenario, telemetry::Telemetry, workload::PREFETCH};

/// What a run of the benchmark measures.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    /// Rounds; every implementation runs every scenario once per round.
    pub(crate) rounds: usize,
    /// The scenarios to run, in this order.
    pub(crate) scenarios: Vec<Scenario>,
    /// Messages per drain and per publish run.
    pub(crate) messages: u64,
    /// How long each latency run publishes.
    pub(crate) latency_duration: Duration,
    /// Instead of the comparison: hutch-rs alone, draining with a range of
    /// prefetch and concurrency settings (how the defaults were chosen).
    pub(crate) sweep: bool,
}

const USAGE: &str = "usage: hutch-rs-bench [--rounds N] [--only drain,publish,latency,idle,recovery,dead-letter,cpu-handlers,isolation,failover,telemetry] [--quick] [--sweep]
  failover (in the default list) starts a three-node RabbitMQ cluster besides the single node, about a minute more
  telemetry (not in the default list) needs `--features telemetry`: hutch-rs with traces and metrics exported, against itself without";

impl Options {
    /// Parses the orchestrator's arguments (without the program name).
    pub(crate) fn parse(args: &[String]) -> Result<Self, Error> {
        let mut rounds = 5;
        let mut scenarios = Scenario::ALL.to_vec();
        let mut quick = false;
        let mut sweep = false;
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            let mut value = || {
                args.next()
                    .ok_or_else(|| format!("{arg} needs a value\n{USAGE}"))
            };
            match arg.as_str() {
                "--rounds" => rounds = parse(arg, value()?)?,
                "--only" => {
                    scenarios = value()?
                        .split(',')
                        .map(str::parse)
                        .collect::<Result<_, _>>()?;
                }
                "--quick" => quick = true,
                "--sweep" => sweep = true,
                "--help" | "-h" => return Err(USAGE.into()),
                other => return Err(format!("unknown argument {other:?}\n{USAGE}").into()),
            }
        }
        if rounds == 0 {
            return Err("--rounds must be at least 1".into());
        }
        Ok(Self {
            rounds,
            scenarios,
            messages: if quick { 2_000 } else { 20_000 },
            latency_duration: Duration::from_secs(if quick { 1 } else { 5 }),
            sweep,
        })
    }
}

/// One of the implementations compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Impl {
    /// Hand-written lapin on tokio's current-thread runtime.
    RawCurrentThread,
    /// Hand-written lapin on tokio's multi-thread runtime.
    RawMultiThread,
    /// An ordinary hutch-rs application.
    Hutch,
}

impl Impl {
    /// Every implementation, in the table's order.
    pub(crate) const ALL: [Impl; 3] = [Impl::RawCurrentThread, Impl::RawMultiThread, Impl::Hutch];

    /// The order of round `round`: rotated by one each round, so that no
    /// implementation always runs first (on a cold broker) or last.
    pub(crate) fn rotation(round: usize) -> [Impl; 3] {
        let mut order = Self::ALL;
        order.rotate_left(round % Self::ALL.len());
        order
    }

    /// The name in the table.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Impl::RawCurrentThread => "raw-current_thread",
            Impl::RawMultiThread => "raw-multi_thread",
            Impl::Hutch => "hutch-rs",
        }
    }

    /// The name on a client's command line.
    fn arg(self) -> &'static str {
        match self {
            Impl::RawCurrentThread => "raw-ct",
            Impl::RawMultiThread => "raw-mt",
            Impl::Hutch => "hutch",
        }
    }
}

impl fmt::Display for Impl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

impl FromStr for Impl {
    type Err = Error;

    fn from_str(name: &str) -> Result<Self, Error> {
        Self::ALL
            .into_iter()
            .find(|implementation| implementation.arg() == name)
            .ok_or_else(|| format!("unknown implementation {name:?}").into())
    }
}

/// What a client child does: `hutch-rs-bench client <scenario> --impl ...`.
#[derive(Debug, Clone)]
pub(crate) struct ClientArgs {
    /// The scenario to play.
    pub(crate) scenario: Scenario,
    /// Who plays it.
    pub(crate) implementation: Impl,
    /// The broker.
    pub(crate) uri: String,
    /// The broker's OS process, whose CPU time the client reads.
    pub(crate) broker_pid: u32,
    /// Messages to drain or publish.
    pub(crate) messages: u64,
    /// Isolation: messages of the failure storm on consumer A (0: none).
    pub(crate) storm: u64,
    /// Latency: messages per second.
    pub(crate) rate: u64,
    /// Latency: how long to publish.
    pub(crate) duration: Duration,
    /// Idle: how many consumers.
    pub(crate) consumers: usize,
    /// The consumers' prefetch.
    pub(crate) prefetch: u16,
    /// hutch-rs drain and CPU-bound handlers: handler calls in flight at once.
    pub(crate) concurrency: u16,
    /// hutch-rs drain: how long each handler call waits, as if on a
    /// database or an HTTP call (0: it returns at once).
    pub(crate) work: Duration,
    /// hutch-rs: the traces and metrics it is observed with.
    pub(crate) telemetry: Telemetry,
}

impl ClientArgs {
    /// Arguments for `scenario` by `implementation`; the scenario sets the rest.
    pub(crate) fn new(
        scenario: Scenario,
        implementation: Impl,
        uri: String,
        broker_pid: u32,
    ) -> Self {
        Self {
            scenario,
            implementation,
            uri,
            broker_pid,
            messages: 0,
            storm: 0,
            rate: 0,
            duration: Duration::ZERO,
            consumers: 0,
            prefetch: PREFETCH,
            concurrency: 1,
            work: Duration::ZERO,
            telemetry: Telemetry::Off,
        }
    }

    /// The command line that [`ClientArgs::parse`] reads back.
    pub(crate) fn to_args(&self) -> Vec<String> {
        vec![
            "client".to_owned(),
            self.scenario.to_string(),
            "--impl".to_owned(),
            self.implementation.arg().to_owned(),
            "--uri".to_owned(),
            self.uri.clone(),
            "--broker-pid".to_owned(),
            self.broker_pid.to_string(),
            "--messages".to_owned(),
            self.messages.to_string(),
            "--storm".to_owned(),
            self.storm.to_string(),
            "--rate".to_owned(),
            self.rate.to_string(),
            "--duration-ms".to_owned(),
            self.duration.as_millis().to_string(),
            "--consumers".to_owned(),
            self.consumers.to_string(),
            "--prefetch".to_owned(),
            self.prefetch.to_string(),
            "--concurrency".to_owned(),
            self.concurrency.to_string(),
            "--work-us".to_owned(),
            self.work.as_micros().to_string(),
            "--telemetry".to_owned(),
            self.telemetry.to_string(),
        ]
    }

    /// Parses what follows `client`.
    pub(crate) fn parse(args: &[String]) -> Result<Self, Error> {
        let (scenario, flags) = args.split_first().ok_or("client: which scenario?")?;
        let mut client = Self::new(scenario.parse()?, Impl::Hutch, String::new(), 0);
        for pair in flags.chunks(2) {
            let [flag, value] = pair else {
                return Err(format!("client: {} needs a value", pair[0]).into());
            };
            match flag.as_str() {
                "--impl" => client.implementation = value.parse()?,
                "--uri" => client.uri = value.clone(),
                "--broker-pid" => client.broker_pid = parse(flag, value)?,
                "--messages" => client.messages = parse(flag, value)?,
                "--storm" => client.storm = parse(flag, value)?,
                "--rate" => client.rate = parse(flag, value)?,
                "--duration-ms" => client.duration = Duration::from_millis(parse(flag, value)?),
                "--consumers" => client.consumers = parse(flag, value)?,
                "--prefetch" => client.prefetch = parse(flag, value)?,
                "--concurrency" => client.concurrency = parse(flag, value)?,
                "--work-us" => client.work = Duration::from_micros(parse(flag, value)?),
                "--telemetry" => client.telemetry = value.parse()?,
                other => return Err(format!("client: unknown argument {other:?}").into()),
            }
        }
        Ok(client)
    }
}

fn parse<T: FromStr>(flag: &str, value: &str) -> Result<T, Error> {
    value
        .parse()
        .map_err(|_| format!("{flag}: {value:?} is not a valid number").into())
}
