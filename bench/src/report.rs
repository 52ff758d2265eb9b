//! What a client child measures and hands to the orchestrator: one
//! `RESULT <json>` line on its stdout.

use std::time::{Duration, Instant};

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
