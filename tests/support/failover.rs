//! A stream of confirmed publishes through a failover, and what it shows:
//! how many were confirmed and consumed, how many were lost (confirmed but
//! never consumed: must be none), how many came twice, and how long
//! consuming and publishing paused.

use std::{
    collections::{BTreeSet, HashMap},
    fmt,
    sync::{
        Arc, Mutex,
        atomic::{AtomicI64, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use hutch_rs::{Hutch, PublishOptions};
use serde::{Deserialize, Serialize};
use tokio::{sync::watch, task::JoinHandle};

/// One message of a stream: which stream, and its place in it. Every
/// publish call has a sequence number of its own, so a message consumed
/// twice is a duplicate, never two publishes.
#[derive(Debug, Serialize, Deserialize)]
pub struct Tick {
    /// Tells the streams of one test binary apart.
    pub run: String,
    /// Unique per publish call within the run.
    pub seq: u64,
}

/// Every delivery the handlers saw, by run, with when they saw it.
#[derive(Debug)]
pub struct Deliveries {
    seen: Mutex<HashMap<String, Vec<(u64, Instant)>>>,
    changed: watch::Sender<u64>,
}

impl Default for Deliveries {
    fn default() -> Self {
        Self {
            seen: Mutex::new(HashMap::new()),
            changed: watch::Sender::new(0),
        }
    }
}

impl Deliveries {
    /// Records that a handler got `tick`, now.
    pub fn record(&self, tick: &Tick) {
        self.seen
            .lock()
            .unwrap()
            .entry(tick.run.clone())
            .or_default()
            .push((tick.seq, Instant::now()));
        self.changed.send_modify(|version| *version += 1);
    }

    /// Every delivery of `run` so far, in the order they were handled.
    pub fn of(&self, run: &str) -> Vec<(u64, Instant)> {
        self.seen
            .lock()
            .unwrap()
            .get(run)
            .cloned()
            .unwrap_or_default()
    }

    /// Waits until every message of `expected` was delivered at least once,
    /// or `patience` passed; the report then counts what is missing.
    pub async fn wait_for_all(&self, run: &str, expected: &BTreeSet<u64>, patience: Duration) {
        let mut changes = self.changed.subscribe();
        let all_seen = || {
            let seen = self.seen.lock().unwrap();
            let delivered: BTreeSet<u64> = seen
                .get(run)
                .map(|deliveries| deliveries.iter().map(|(seq, _)| *seq).collect())
                .unwrap_or_default();
            expected.is_subset(&delivered)
        };
        let _ = tokio::time::timeout(patience, async {
            while !all_seen() {
                if changes.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
    }
}

/// Publishers sending one stream at a steady pace until a given number of
/// publishes were confirmed; a publish that fails is counted and sent again
/// as a new one. The pace spreads the stream over time, so that a failure
/// caused during it has publishes before and after it; publishers held up
/// by a failure catch up as fast as they can.
#[derive(Debug)]
pub struct Stream {
    tasks: Vec<JoinHandle<()>>,
    confirmed: Arc<Mutex<Vec<(u64, Instant)>>>,
    failed: Arc<AtomicU64>,
    progress: watch::Receiver<u64>,
}

/// What a [`Stream`] published, once it is finished.
#[derive(Debug)]
pub struct Published {
    /// Each confirmed publish and when its confirm came.
    pub confirmed: Vec<(u64, Instant)>,
    /// Publishes that returned an error.
    pub failed: u64,
}

impl Stream {
    /// Starts `publishers` tasks publishing `run`'s ticks to `routing_key`
    /// through `hutch`, one every `interval`, until `total` were confirmed.
    /// Call in a runtime.
    pub fn start(
        hutch: &Hutch,
        routing_key: &'static str,
        run: &str,
        total: u64,
        publishers: usize,
        interval: Duration,
    ) -> Self {
        let began = tokio::time::Instant::now();
        // Tickets, so that exactly `total` publishes are confirmed: a failed
        // publish hands its ticket back.
        let tickets = Arc::new(AtomicI64::new(i64::try_from(total).unwrap()));
        let next_seq = Arc::new(AtomicU64::new(0));
        let confirmed = Arc::new(Mutex::new(Vec::new()));
        let failed = Arc::new(AtomicU64::new(0));
        let count = Arc::new(watch::Sender::new(0_u64));
        let progress = count.subscribe();
        let tasks = (0..publishers)
            .map(|_| {
                let (hutch, run, tickets, next_seq, confirmed, failed, count) = (
                    hutch.clone(),
                    run.to_owned(),
                    tickets.clone(),
                    next_seq.clone(),
                    confirmed.clone(),
                    failed.clone(),
                    count.clone(),
                );
                tokio::spawn(async move {
                    while tickets.fetch_sub(1, Ordering::AcqRel) > 0 {
                        let tick = Tick {
                            run: run.clone(),
                            seq: next_seq.fetch_add(1, Ordering::Relaxed),
                        };
                        let due =
                            interval.saturating_mul(u32::try_from(tick.seq).unwrap_or(u32::MAX));
                        tokio::time::sleep_until(began + due).await;
                        match hutch
                            .publish_with(routing_key, &tick, PublishOptions::new())
                            .await
                        {
                            Ok(_) => {
                                confirmed.lock().unwrap().push((tick.seq, Instant::now()));
                                count.send_modify(|count| *count += 1);
                            }
                            Err(error) => {
                                eprintln!("publish {} failed: {error}", tick.seq);
                                failed.fetch_add(1, Ordering::Relaxed);
                                tickets.fetch_add(1, Ordering::AcqRel);
                            }
                        }
                    }
                    // The last fetch_sub took no ticket.
                    tickets.fetch_add(1, Ordering::AcqRel);
                })
            })
            .collect();
        Self {
            tasks,
            confirmed,
            failed,
            progress,
        }
    }

    /// Waits until `n` publishes were confirmed; panics after `patience`.
    pub async fn wait_confirmed(&mut self, n: u64, patience: Duration) {
        let reached = tokio::time::timeout(patience, self.progress.wait_for(|count| *count >= n))
            .await
            .is_ok_and(|changed| changed.is_ok());
        assert!(reached, "publishing stalled at {}", *self.progress.borrow());
    }

    /// Waits for the publishers to finish; panics after `patience`.
    pub async fn finish(self, patience: Duration) -> Published {
        let tasks = self.tasks;
        let all = async {
            for task in tasks {
                task.await.expect("a publisher task does not panic");
            }
        };
        if tokio::time::timeout(patience, all).await.is_err() {
            panic!(
                "the stream did not finish: {} confirmed",
                *self.progress.borrow()
            );
        }
        Published {
            confirmed: std::mem::take(&mut *self.confirmed.lock().unwrap()),
            failed: self.failed.load(Ordering::Relaxed),
        }
    }
}

/// What a stream through a failover came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailoverReport {
    /// Publishes confirmed by the broker.
    pub confirmed: usize,
    /// Distinct messages consumed.
    pub consumed: usize,
    /// Confirmed messages never consumed.
    pub lost: Vec<u64>,
    /// Deliveries beyond the first of a message.
    pub duplicates: usize,
    /// Publishes that returned an error (and were sent again as new ones).
    pub failed_publishes: u64,
    /// The longest time without a delivery, from the failure on: how long
    /// until consuming again.
    pub consuming_paused: Duration,
    /// The longest time without a confirm, from the failure on.
    pub publishing_paused: Duration,
}

impl FailoverReport {
    /// Compares what was published with what was delivered; `failure` is
    /// when the failure was caused.
    pub fn new(published: &Published, deliveries: &[(u64, Instant)], failure: Instant) -> Self {
        let delivered: BTreeSet<u64> = deliveries.iter().map(|(seq, _)| *seq).collect();
        let lost = published
            .confirmed
            .iter()
            .map(|(seq, _)| *seq)
            .filter(|seq| !delivered.contains(seq))
            .collect();
        Self {
            confirmed: published.confirmed.len(),
            consumed: delivered.len(),
            lost,
            duplicates: deliveries.len() - delivered.len(),
            failed_publishes: published.failed,
            consuming_paused: longest_pause(deliveries.iter().map(|(_, at)| *at), failure),
            publishing_paused: longest_pause(
                published.confirmed.iter().map(|(_, at)| *at),
                failure,
            ),
        }
    }
}

impl fmt::Display for FailoverReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "confirmed {}, consumed {}, lost {}, duplicates {}, failed publishes {}, \
             consuming again after {:.2} s, publishing again after {:.2} s",
            self.confirmed,
            self.consumed,
            self.lost.len(),
            self.duplicates,
            self.failed_publishes,
            self.consuming_paused.as_secs_f64(),
            self.publishing_paused.as_secs_f64(),
        )
    }
}

/// The longest gap between `since` and the events after it, or between
/// two of them.
fn longest_pause(events: impl Iterator<Item = Instant>, since: Instant) -> Duration {
    let mut after: Vec<Instant> = events.filter(|at| *at >= since).collect();
    after.sort_unstable();
    let mut previous = since;
    let mut longest = Duration::ZERO;
    for at in after {
        longest = longest.max(at - previous);
        previous = at;
    }
    longest
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_pause_counts_from_the_failure() {
        let start = Instant::now();
        let at = |ms| start + Duration::from_millis(ms);
        let events = [at(0), at(10), at(150), at(160), at(900), at(905)];
        assert_eq!(
            longest_pause(events.into_iter(), at(100)),
            Duration::from_millis(740)
        );
        assert_eq!(longest_pause(events.into_iter(), at(2000)), Duration::ZERO);
    }

    #[test]
    fn the_report_counts_lost_and_duplicate_messages() {
        let start = Instant::now();
        let published = Published {
            confirmed: vec![(0, start), (1, start), (2, start)],
            failed: 1,
        };
        let deliveries = [(0, start), (0, start), (2, start), (7, start)];
        let report = FailoverReport::new(&published, &deliveries, start);
        assert_eq!(report.lost, vec![1]);
        assert_eq!(report.duplicates, 1);
        assert_eq!(report.consumed, 3);
        assert_eq!(report.confirmed, 3);
    }
}
