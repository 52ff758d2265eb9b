//! What a client child measures and hands to the orchestrator: one
//! `RESULT <json>` line on its stdout.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use crate::procfs;

/// A throughput phase (drain, publish): how many messages in how long, and
/// the CPU the client and the broker spent on them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Throughput {
    /// Messages handled (drain) or confirmed (publish).
    pub(crate) messages: u64,
    /// Wall-clock time of the phase.
    pub(crate) elapsed_ns: u64,
    /// CPU time of the client process during the phase.
    pub(crate) client_cpu_ns: u64,
    /// CPU time of the broker's VM during the phase.
    pub(crate) broker_cpu_ns: u64,
}

/// Consumer B's drain in the isolation scenario, and what consumer A's
/// failure storm did meanwhile.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Isolation {
    /// B's drain, from its first message handled to its last.
    pub(crate) steady: Throughput,
    /// A's copies confirmed in its dead-letter queue during B's drain.
    pub(crate) storm_during: u64,
    /// A's copies confirmed after B's drain had ended: more than 0 means
    /// the storm outlasted it.
    pub(crate) storm_after: u64,
}

/// End-to-end latencies of one open-loop run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Latency {
    /// Messages received (every one that was sent).
    pub(crate) samples: u64,
    /// Median latency.
    pub(crate) p50_ns: u64,
    /// 99th percentile latency.
    pub(crate) p99_ns: u64,
}

impl Latency {
    /// The percentiles of `samples` (nanoseconds from scheduled send to
    /// receipt), sorted here.
    pub(crate) fn of(mut samples: Vec<u64>) -> Self {
        samples.sort_unstable();
        let at = |quantile: f64| {
            // Nearest rank: the smallest sample with at least `quantile` of
            // them at or below it.
            let rank = (quantile * samples.len() as f64).ceil() as usize;
            samples
                .get(rank.saturating_sub(1))
                .copied()
                .unwrap_or_default()
        };
        Self {
            samples: samples.len() as u64,
            p50_ns: at(0.50),
            p99_ns: at(0.99),
        }
    }
}

/// One failover run: a stream of confirmed publishes to a quorum queue's
/// consumer, with or without the connected node stopped during it. Times
/// are Unix-epoch nanoseconds of this machine's clock, which the
/// orchestrator's time of the stop is comparable with.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Failover {
    /// Publishes confirmed (the stream's length, unless it stalled).
    pub(crate) confirmed: u64,
    /// Distinct messages consumed.
    pub(crate) consumed: u64,
    /// Confirmed messages never consumed: a broken promise, must be 0.
    pub(crate) lost: u64,
    /// Deliveries beyond the first of a message (redeliveries after the
    /// failure; at-least-once allows them).
    pub(crate) duplicates: u64,
    /// Publishes that returned an error, and were sent again as new ones.
    pub(crate) failed_publishes: u64,
    /// From the first publish until every confirmed message was both
    /// confirmed and consumed.
    pub(crate) elapsed_ns: u64,
    /// The longest time without a delivery from the start of the stop on
    /// (or the same point of the stream without one).
    pub(crate) longest_pause_ns: u64,
    /// Publishes confirmed after the stopped node's listener closed: a
    /// failure that the stream had already outrun would prove nothing.
    pub(crate) confirmed_after_cut: u64,
}

impl Failover {
    /// Compares what was confirmed with what was delivered, each a list of
    /// `(seq, unix nanos)`; `started` is the first publish's time, `began`
    /// the start of the stop, `cut` when the node's listener closed.
    pub(crate) fn of(
        confirmed: &[(u64, u64)],
        deliveries: &[(u64, u64)],
        failed_publishes: u64,
        started: u64,
        began: u64,
        cut: u64,
    ) -> Self {
        // The first delivery of each message: later ones are duplicates.
        let mut first_delivery: HashMap<u64, u64> = HashMap::with_capacity(deliveries.len());
        for &(seq, at) in deliveries {
            first_delivery
                .entry(seq)
                .and_modify(|first| *first = (*first).min(at))
                .or_insert(at);
        }
        let mut lost = 0;
        let mut done = started;
        for &(seq, confirmed_at) in confirmed {
            match first_delivery.get(&seq) {
                Some(&delivered_at) => done = done.max(confirmed_at).max(delivered_at),
                None => lost += 1,
            }
        }
        Self {
            confirmed: confirmed.len() as u64,
            consumed: first_delivery.len() as u64,
            lost,
            duplicates: (deliveries.len() - first_delivery.len()) as u64,
            failed_publishes,
            elapsed_ns: done - started,
            longest_pause_ns: longest_pause(deliveries.iter().map(|&(_, at)| at), began),
            confirmed_after_cut: confirmed.iter().filter(|&&(_, at)| at > cut).count() as u64,
        }
    }
}

/// The longest gap between `since` and the first event after it, or
/// between two events after it.
fn longest_pause(events: impl Iterator<Item = u64>, since: u64) -> u64 {
    let mut after: Vec<u64> = events.filter(|&at| at >= since).collect();
    after.sort_unstable();
    let mut previous = since;
    let mut longest = 0;
    for at in after {
        longest = longest.max(at - previous);
        previous = at;
    }
    longest
}

/// The resident memory of a client with its consumers idle.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Idle {
    /// Consumers consuming.
    pub(crate) consumers: u64,
    /// `VmRSS` of the client, in KiB.
    pub(crate) rss_kib: u64,
}

/// Times a measured phase: wall clock, the client's CPU and the broker's.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Meter {
    broker_pid: u32,
    started: Instant,
    client_cpu: Duration,
    broker_cpu: Duration,
}

impl Meter {
    /// Starts the phase now.
    pub(crate) fn start(broker_pid: u32) -> Self {
        Self {
            broker_pid,
            client_cpu: procfs::own_cpu(),
            broker_cpu: broker_cpu(broker_pid),
            // Last, so that reading the CPU times is not part of the phase.
            started: Instant::now(),
        }
    }

    /// Ends the phase now, after `messages` messages.
    pub(crate) fn finish(self, messages: u64) -> Throughput {
        let elapsed = self.started.elapsed();
        let client_cpu = procfs::own_cpu().saturating_sub(self.client_cpu);
        let broker_cpu = broker_cpu(self.broker_pid).saturating_sub(self.broker_cpu);
        Throughput {
            messages,
            elapsed_ns: nanos(elapsed),
            client_cpu_ns: nanos(client_cpu),
            broker_cpu_ns: nanos(broker_cpu),
        }
    }
}

fn broker_cpu(pid: u32) -> Duration {
    // A broker that cannot be read is a broken setup, not a number to report.
    procfs::process_cpu(pid)
        .unwrap_or_else(|error| panic!("reading the broker's CPU time (pid {pid}): {error}"))
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}
