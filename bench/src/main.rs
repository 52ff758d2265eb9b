//! Benchmarks hutch-rs against hand-written lapin programs.
//!
//! ```sh
//! cargo run --release -p hutch-rs-bench -- [--rounds 5] [--only drain,publish,...] [--quick]
//! cargo run --release -p hutch-rs-bench -- --only failover --rounds 3
//! ```
//!
//! The orchestrator (this process) starts a private RabbitMQ node and, round
//! after round, runs every scenario (drain, publish, latency, idle memory,
//! recovery) once for each implementation: raw lapin on tokio's
//! current-thread runtime, raw lapin on the multi-thread runtime, and a
//! hutch-rs application, in an order that rotates each round. The
//! scenarios of what hutch-rs adds to lapin (dead-letter, cpu-handlers,
//! isolation, failover) run hutch-rs alone and compare it with itself, in
//! the same round, against a target or a run without the failure. Each
//! client
//! is a child process (this binary again, `client ...`), so that its CPU
//! time and memory are its own. Same broker, same queues, same settings:
//! durable classic queues, persistent 1 KiB JSON messages, manual acks,
//! prefetch 200, publisher confirms with a window of 200.
//!
//! The failover scenario needs three nodes: when it is selected (it is by
//! default), the orchestrator also starts a private three-node cluster
//! (`hutch_rs::testing::Cluster`, about a minute on two cores) for the
//! whole run, and stops and starts its node 0 in every round.
//!
//! Progress goes to stderr; the markdown table of the results to stdout.

mod broker;
mod child;
mod cli;
mod hutch_client;
mod procfs;
mod raw_client;
mod report;
mod scenario;
mod stats;
mod telemetry;
mod workload;

use std::process::ExitCode;

use hutch_rs::testing::Cluster;

use crate::{
    broker::BenchBroker,
    cli::{ClientArgs, Impl, Options},
    scenario::{Bench, Scenario},
    stats::Results,
};

/// Errors end the run with their message: a benchmark that checks nothing
/// lost has nothing to recover from.
pub(crate) type Error = Box<dyn std::error::Error + Send + Sync>;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let outcome = match args.split_first() {
        Some((command, rest)) if command == "client" => ClientArgs::parse(rest).and_then(client),
        _ => Options::parse(&args).and_then(|options| orchestrate(&options)),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("hutch-rs-bench: {error}");
            ExitCode::FAILURE
        }
    }
}

/// A client child: one scenario by one implementation.
fn client(args: ClientArgs) -> Result<(), Error> {
    match args.implementation {
        Impl::Hutch => hutch_client::run(args),
        Impl::RawCurrentThread | Impl::RawMultiThread => raw_client::run(&args),
    }
}

/// Runs every round and prints the table.
fn orchestrate(options: &Options) -> Result<(), Error> {
    hutch_client::check_queue_names()?;
    eprintln!("starting a private RabbitMQ node...");
    let broker = BenchBroker::start()?;
    let version = broker.version()?;
    // Only for the failover scenario: three more nodes on a small machine
    // would slow every other scenario down for nothing.
    let cluster = if !options.sweep && options.scenarios.contains(&Scenario::Failover) {
        eprintln!("starting a private three-node RabbitMQ cluster for the failover scenario...");
        Some(Cluster::start()?)
    } else {
        None
    };
    let bench = |round| Bench {
        broker: &broker,
        cluster: cluster.as_ref(),
        options,
        round,
    };
    if options.sweep {
        let table = scenario::sweep::run(&bench(0), options.rounds)?;
        println!("# hutch-rs drain by prefetch and concurrency\n");
        print_header(options, &version, false);
        print!("{table}");
        return Ok(());
    }
    let mut results = Results::default();
    for round in 0..options.rounds {
        let order = Impl::rotation(round);
        let bench = bench(round);
        for scenario in &options.scenarios {
            for implementation in order {
                if !scenario.played_by(implementation) {
                    continue;
                }
                eprintln!(
                    "round {}/{}: {scenario} by {implementation}",
                    round + 1,
                    options.rounds
                );
                scenario.run(&bench, implementation, &mut results)?;
            }
        }
    }

    println!("# hutch-rs vs raw lapin\n");
    print_header(options, &version, cluster.is_some());
    print!("{}", results.table());
    let verdicts = results.verdicts();
    if !verdicts.is_empty() {
        println!("\n## Targets\n\n{verdicts}");
    }
    Ok(())
}

/// The machine, the broker(s) and the command line, above a table.
fn print_header(options: &Options, version: &str, cluster: bool) {
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    let command: Vec<String> = std::env::args().collect();
    println!("- machine: {cpus} CPUs (nproc)");
    println!("- RabbitMQ {version}, private node");
    if cluster {
        println!(
            "- failover: a private three-node cluster of the same RabbitMQ, besides that node"
        );
    }
    println!("- command: `{}`", command.join(" "));
    println!(
        "- {} round(s); {} messages per drain/publish run; latency runs of {:?}",
        options.rounds, options.messages, options.latency_duration
    );
    println!();
}
