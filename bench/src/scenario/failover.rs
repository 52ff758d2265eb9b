//! Failover: hutch-rs alone, on the private three-node cluster. A stream of
//! 10,000 confirmed publishes, from 16 tasks as fast as their confirms
//! come, to a consumer of a quorum queue, twice a round, each time on a
//! fresh queue: once without a failure (the baseline), once with the node
//! the client is connected to, which also leads the queue, stopped
//! (`rabbitmqctl stop_app`) when 3,000 publishes are confirmed. Measured:
//! the time until all 10,000 are both confirmed and consumed, and, in the
//! failover run, the longest pause in consuming from the start of the stop.
//! Every confirmed message must be consumed (by its seq); a loss ends the
//! bench. Duplicates (redeliveries, and publishes hutch-rs sent again after
//! the cut whose first copies had reached the queue: at-least-once allows
//! both) are counted and printed.
//!
//! Raw lapin has no failover to compare with: the failover run is compared
//! with the baseline of the same round, as the cluster tests
//! (`tests/cluster.rs`) do it but unpaced, for throughput. The baseline
//! goes first in every round: it needs node 0 up and the cluster settled,
//! which the failover run restores only at its end.

use std::{
    net::{SocketAddr, TcpStream},
    thread,
    time::Duration,
};

use hutch_rs::testing::Cluster;

use crate::{
    Error,
    broker::PATIENCE,
    child::{CONFIRMED, ClientProcess, FAILURE, GO, READY},
    cli::{ClientArgs, Impl},
    report::Failover,
    scenario::{Bench, Scenario},
    stats::{Better, Results},
    workload::{FAILOVER_QUEUE, FAILOVER_STREAM, unix_nanos},
};

/// The node stopped: the first of the client's URIs, so the one it
/// connects to, and so (with `client-local`) the queue's leader.
const STOPPED: usize = 0;

/// How long a stopped node's replica may take to be back online, or a new
/// queue's replicas to start.
const REPLICATION_PATIENCE: Duration = Duration::from_secs(60);

/// How often the stopping node's AMQP port is tried: each try is a TCP
/// connection to the node under test, so not too often.
const PORT_POLL: Duration = Duration::from_millis(10);

pub(super) fn run(bench: &Bench<'_>, results: &mut Results) -> Result<(), Error> {
    let cluster = bench
        .cluster
        .ok_or("the failover scenario runs on the cluster, which was not started")?;

    let baseline = stream(cluster, false)?;
    let baseline_ms = baseline.elapsed_ns as f64 / 1e6;
    results.record(
        &format!(
            "failover: {} confirmed and consumed, no failure (ms)",
            thousands(FAILOVER_STREAM)
        ),
        Better::Lower,
        Impl::Hutch,
        baseline_ms,
    );

    let failover = stream(cluster, true)?;
    let failover_ms = failover.elapsed_ns as f64 / 1e6;
    let pause_ms = failover.longest_pause_ns as f64 / 1e6;
    results.record(
        "failover: same with the connected node stopped (ms)",
        Better::Lower,
        Impl::Hutch,
        failover_ms,
    );
    let ratio = failover_ms / baseline_ms;
    results.record(
        "failover: stopped ÷ no failure, same round (×)",
        Better::Lower,
        Impl::Hutch,
        ratio,
    );
    results.record(
        "failover: longest consuming pause (ms)",
        Better::Lower,
        Impl::Hutch,
        pause_ms,
    );
    eprintln!(
        "    no failure {baseline_ms:.0} ms, node stopped {failover_ms:.0} ms ({ratio:.2}×), \
         consuming paused at most {pause_ms:.0} ms (without a failure {:.0} ms)",
        baseline.longest_pause_ns as f64 / 1e6
    );
    Ok(())
}

/// One run: a client child on a fresh queue, its stream, node 0 stopped at
/// [`FAILOVER_AT`](crate::workload::FAILOVER_AT) confirmed if `stop`, and
/// started again afterwards. Fails if a confirmed message was lost.
fn stream(cluster: &Cluster, stop: bool) -> Result<Failover, Error> {
    let label = if stop { "node stopped" } else { "no failure" };
    delete_queues(cluster)?;
    let node_pid = cluster
        .node(STOPPED)
        .os_pid()
        .ok_or("node 0's pid file is missing")?;
    let mut args = ClientArgs::new(
        Scenario::Failover,
        Impl::Hutch,
        cluster.uris().join(","),
        node_pid,
    );
    args.messages = FAILOVER_STREAM;
    let mut client = ClientProcess::spawn(&args)?;
    client.expect(READY, PATIENCE)?;

    // The stop must take the client's connections and the queue's leader
    // at once, and find every replica up to take over.
    let placement = cluster.await_queue(FAILOVER_QUEUE, REPLICATION_PATIENCE, |queue| {
        queue.leader.is_some() && queue.online.len() == 3
    })?;
    if placement.leader != Some(STOPPED) {
        return Err(format!(
            "{FAILOVER_QUEUE} is led by node {:?}, not 0",
            placement.leader
        )
        .into());
    }
    let connected = cluster.connection_nodes()?;
    if connected.is_empty() || connected.iter().any(|&node| node != STOPPED) {
        return Err(format!("the client is connected to nodes {connected:?}, not 0 alone").into());
    }

    client.send(GO)?;
    client.expect(CONFIRMED, PATIENCE)?;
    let (began, cut) = if stop {
        stop_node(cluster)?
    } else {
        let now = unix_nanos();
        (now, now)
    };
    client.send(&format!("{FAILURE} {began} {cut}"))?;
    let report: Failover = client.result(PATIENCE)?;
    client.finish()?;
    if stop {
        cluster.start_node(STOPPED)?;
        cluster.await_queue(FAILOVER_QUEUE, REPLICATION_PATIENCE, |queue| {
            queue.online.len() == 3
        })?;
    }
    delete_queues(cluster)?;

    eprintln!(
        "    {label}: confirmed {}, consumed {}, lost {}, duplicates {}, failed publishes {}, \
         {} confirmed after {}, longest consuming pause from {} {:.0} ms",
        report.confirmed,
        report.consumed,
        report.lost,
        report.duplicates,
        report.failed_publishes,
        report.confirmed_after_cut,
        if stop {
            "the listener closed"
        } else {
            "the same point"
        },
        if stop { "the stop" } else { "the same point" },
        report.longest_pause_ns as f64 / 1e6,
    );
    if report.confirmed != FAILOVER_STREAM {
        return Err(format!(
            "failover ({label}): {} of {FAILOVER_STREAM} publishes confirmed",
            report.confirmed
        )
        .into());
    }
    if report.lost > 0 {
        return Err(format!(
            "failover ({label}): {} confirmed message(s) never consumed",
            report.lost
        )
        .into());
    }
    Ok(report)
}

/// Stops node 0 (`rabbitmqctl stop_app`: several seconds on a 2-core
/// machine, of which the first two or three pass before the node closes
/// anything) and returns when that began and when the node's AMQP listener
/// closed, which is about when its connections were cut: the stream must go
/// on past that for the run to show a failover.
fn stop_node(cluster: &Cluster) -> Result<(u64, u64), Error> {
    let port = SocketAddr::from(([127, 0, 0, 1], cluster.node(STOPPED).amqp_port()));
    thread::scope(|scope| {
        let began = unix_nanos();
        let closed = scope.spawn(move || {
            while TcpStream::connect(port).is_ok() {
                thread::sleep(PORT_POLL);
            }
            unix_nanos()
        });
        cluster.stop_node(STOPPED)?;
        let cut = closed.join().map_err(|_| "the port poller panicked")?;
        eprintln!(
            "    node {STOPPED}: listener closed {:.0} ms after the stop began, stopped after {:.0} ms",
            cut.saturating_sub(began) as f64 / 1e6,
            unix_nanos().saturating_sub(began) as f64 / 1e6,
        );
        Ok((began, cut))
    })
}

/// Deletes the failover queue and the queues hutch-rs declares beside it
/// (`<queue>:dead`, …) through node 0, which runs whenever this is called,
/// so that every run starts on fresh, empty queues placed by its own
/// client, and the cluster stays light.
fn delete_queues(cluster: &Cluster) -> Result<(), Error> {
    let node = cluster.node(STOPPED);
    for queue in node.queues()? {
        if queue.name.starts_with(FAILOVER_QUEUE) {
            let path = format!("queues/%2f/{}", queue.name.replace(':', "%3A"));
            node.management_request("DELETE", &path, None)?;
        }
    }
    Ok(())
}

/// `10000` as `10,000`, for a metric's name.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(digit);
    }
    out
}
