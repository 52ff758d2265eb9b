//! The metrics hutch-rs records (feature `metrics`): counters, gauges and
//! histograms of deliveries, publishes, connections and consumers, through
//! the [`metrics`](https://docs.rs/metrics) facade, into whichever recorder
//! the application installed (Prometheus, StatsD, OpenTelemetry, ...). With
//! no recorder installed, a record still builds its labels (a small string
//! copy each) and drops them.
//!
//! The names follow Prometheus's conventions: a `hutch_` prefix, the unit in
//! the name, `_total` on counters. They and their labels are part of the
//! API: the guide's Observability chapter has the table, and changing one
//! breaks dashboards and alerts.
//!
//! | Name | Type | Labels | Meaning |
//! |---|---|---|---|
//! | `hutch_messages_handled_total` | counter | `consumer`, `outcome` | Deliveries settled, by outcome: `acked`, `retried`, `dead_lettered`, `requeued`, `redelivered` (the `hutch.outcome` of the process span) |
//! | `hutch_handler_duration_seconds` | histogram | `consumer` | Handler calls, decoding and middleware included, until they returned, failed or timed out |
//! | `hutch_messages_in_flight` | gauge | `consumer` | Handler calls whose outcome is still to come (one stopped at its timeout leaves at once) |
//! | `hutch_publishes_total` | counter | `exchange`, `outcome` | Publishes by outcome: `confirmed`, `nacked`, `timed_out`, `unroutable`, `blocked`, `failed` |
//! | `hutch_publish_confirm_duration_seconds` | histogram | `exchange` | From a publish's call until the broker's confirm, of confirmed publishes |
//! | `hutch_connection_up` | gauge | `purpose` | Open connections of the process, `consume` or `publish` (1 or 0 with one `Hutch`) |
//! | `hutch_connection_reconnects_total` | counter | `purpose` | Connections opened again after the first |
//! | `hutch_consumer_restarts_total` | counter | `consumer` | Consumers restarted after a failure (not after a connection loss) |
//! | `hutch_stale_acks_total` | counter | `consumer` | Settle frames not sent because the delivery's channel had closed |
//!
//! Without the feature, every function here is an empty twin of the same
//! signature, so call sites need no `cfg` and the build is unchanged.

#[cfg(feature = "metrics")]
pub(crate) use on::*;

#[cfg(not(feature = "metrics"))]
pub(crate) use off::*;

#[cfg(feature = "metrics")]
mod on {
    use std::{
        sync::atomic::{AtomicI64, Ordering},
        time::Instant,
    };

    use ::metrics::{
        Gauge, Histogram, Unit, counter, describe_counter, describe_gauge, describe_histogram,
        gauge, histogram,
    };

    use crate::{Error, telemetry::spans::Settled};

    /// Deliveries settled, by consumer and outcome.
    pub(crate) const MESSAGES_HANDLED: &str = "hutch_messages_handled_total";
    /// How long handler calls took, by consumer.
    pub(crate) const HANDLER_DURATION: &str = "hutch_handler_duration_seconds";
    /// Handler calls whose outcome is still to come, by consumer.
    pub(crate) const MESSAGES_IN_FLIGHT: &str = "hutch_messages_in_flight";
    /// Publishes, by exchange and outcome.
    pub(crate) const PUBLISHES: &str = "hutch_publishes_total";
    /// From a publish's call until its confirm, by exchange.
    pub(crate) const PUBLISH_CONFIRM_DURATION: &str = "hutch_publish_confirm_duration_seconds";
    /// Open connections, by purpose.
    pub(crate) const CONNECTION_UP: &str = "hutch_connection_up";
    /// Connections opened again, by purpose.
    pub(crate) const CONNECTION_RECONNECTS: &str = "hutch_connection_reconnects_total";
    /// Consumer restarts after failures, by consumer.
    pub(crate) const CONSUMER_RESTARTS: &str = "hutch_consumer_restarts_total";
    /// Settle frames not sent on a closed channel, by consumer.
    pub(crate) const STALE_ACKS: &str = "hutch_stale_acks_total";

    /// Gives the installed recorder each metric's unit and description (an
    /// exporter shows them as `# HELP`). Called whenever a `Hutch` is built:
    /// a recorder installed later still gets them from the next one.
    pub(crate) fn describe() {
        describe_counter!(
            MESSAGES_HANDLED,
            Unit::Count,
            "Deliveries settled, by consumer and outcome (acked, retried, dead_lettered, requeued, redelivered)."
        );
        describe_histogram!(
            HANDLER_DURATION,
            Unit::Seconds,
            "How long handler calls took, decoding and middleware included, until they returned, failed or timed out."
        );
        describe_gauge!(
            MESSAGES_IN_FLIGHT,
            Unit::Count,
            "Handler calls whose outcome is still to come."
        );
        describe_counter!(
            PUBLISHES,
            Unit::Count,
            "Publishes by exchange and outcome (confirmed, nacked, timed_out, unroutable, blocked, failed)."
        );
        describe_histogram!(
            PUBLISH_CONFIRM_DURATION,
            Unit::Seconds,
            "From a publish's call until the broker's confirm, of confirmed publishes."
        );
        describe_gauge!(
            CONNECTION_UP,
            Unit::Count,
            "Open connections by purpose (consume, publish)."
        );
        describe_counter!(
            CONNECTION_RECONNECTS,
            Unit::Count,
            "Connections opened again after their first opening, by purpose."
        );
        describe_counter!(
            CONSUMER_RESTARTS,
            Unit::Count,
            "Consumers restarted after a failure (connection losses are not counted)."
        );
        describe_counter!(
            STALE_ACKS,
            Unit::Count,
            "Settle frames not sent because the delivery's channel had closed (the broker redelivers)."
        );
    }

    /// A delivery of `consumer` was settled as `settled`.
    pub(crate) fn handled(consumer: &str, settled: Settled) {
        // The words of `spans::record_settled`, kept the same so that a
        // metric and a span of one delivery say the same thing.
        let outcome = match settled {
            Settled::Acked => "acked",
            Settled::Retried => "retried",
            Settled::DeadLettered => "dead_lettered",
            Settled::Requeued => "requeued",
            Settled::Redelivered => "redelivered",
        };
        counter!(MESSAGES_HANDLED, "consumer" => consumer.to_owned(), "outcome" => outcome)
            .increment(1);
    }

    /// One handler call while it runs: counted in flight from its start
    /// until it is dropped, its duration recorded by
    /// [`finished`](Self::finished).
    #[derive(Debug)]
    pub(crate) struct HandlerCall {
        in_flight: Gauge,
        duration: Histogram,
        started: Instant,
    }

    impl HandlerCall {
        /// A call of `consumer`'s handler starts.
        pub(crate) fn start(consumer: &str) -> Self {
            let in_flight = gauge!(MESSAGES_IN_FLIGHT, "consumer" => consumer.to_owned());
            in_flight.increment(1.0);
            Self {
                in_flight,
                duration: histogram!(HANDLER_DURATION, "consumer" => consumer.to_owned()),
                started: Instant::now(),
            }
        }

        /// The call returned, failed or ran out of time.
        pub(crate) fn finished(self) {
            self.duration.record(self.started.elapsed());
        }
    }

    impl Drop for HandlerCall {
        // Also when the calls are dropped unfinished (the run ended), so the
        // gauge comes back down.
        fn drop(&mut self) {
            self.in_flight.decrement(1.0);
        }
    }

    /// When a publish started, for its confirm latency.
    #[derive(Debug, Clone, Copy)]
    pub(crate) struct Stopwatch(Instant);

    /// Starts a [`Stopwatch`].
    pub(crate) fn stopwatch() -> Stopwatch {
        Stopwatch(Instant::now())
    }

    /// A publish to `exchange` ended: confirmed, or the error's kind (the
    /// words of `spans::record_published`).
    pub(crate) fn published(exchange: &str, outcome: Result<(), &Error>, started: Stopwatch) {
        // The default exchange has no name; an empty label value is no
        // label at all to Prometheus.
        let exchange = if exchange.is_empty() {
            "amq.default"
        } else {
            exchange
        };
        let outcome = match outcome {
            Ok(()) => {
                histogram!(PUBLISH_CONFIRM_DURATION, "exchange" => exchange.to_owned())
                    .record(started.0.elapsed());
                "confirmed"
            }
            Err(Error::PublishNacked { .. }) => "nacked",
            Err(Error::PublishTimeout { .. }) => "timed_out",
            Err(Error::Unroutable { .. }) => "unroutable",
            Err(Error::Blocked { .. }) => "blocked",
            Err(_) => "failed",
        };
        counter!(PUBLISHES, "exchange" => exchange.to_owned(), "outcome" => outcome).increment(1);
    }

    /// A connection's state changed: the process's count of open
    /// connections of `purpose` goes up when it opens, down when it is lost
    /// or closed, and the gauge is set to that count. A count rather than a
    /// 1 or 0, so that two `Hutch` instances in one process do not
    /// overwrite each other's state; kept here and set whole rather than
    /// moved up and down in the recorder, so that a recorder installed
    /// while connections were open reads the true count at the next
    /// change, not one short of every connection it did not see open.
    pub(crate) fn connection_state(purpose: &'static str, was_up: bool, is_up: bool) {
        static CONSUME: AtomicI64 = AtomicI64::new(0);
        static PUBLISH: AtomicI64 = AtomicI64::new(0);
        let open = if purpose == "publish" {
            &PUBLISH
        } else {
            &CONSUME
        };
        let delta = match (was_up, is_up) {
            (false, true) => 1,
            (true, false) => -1,
            _ => return,
        };
        let count = open.fetch_add(delta, Ordering::Relaxed) + delta;
        gauge!(CONNECTION_UP, "purpose" => purpose).set(count as f64);
    }

    /// A connection was opened again, after its first opening.
    pub(crate) fn reconnect(purpose: &'static str) {
        counter!(CONNECTION_RECONNECTS, "purpose" => purpose).increment(1);
    }

    /// `consumer` was restarted after a failure.
    pub(crate) fn consumer_restart(consumer: &str) {
        counter!(CONSUMER_RESTARTS, "consumer" => consumer.to_owned()).increment(1);
    }

    /// A settle frame of `consumer` was not sent: its channel had closed.
    pub(crate) fn stale_ack(consumer: &str) {
        counter!(STALE_ACKS, "consumer" => consumer.to_owned()).increment(1);
    }
}

/// The empty twins of `on`, for the build without the feature: the same
/// signatures, nothing recorded, nothing kept.
#[cfg(not(feature = "metrics"))]
mod off {
    use crate::{Error, telemetry::spans::Settled};

    pub(crate) fn describe() {}

    pub(crate) fn handled(_consumer: &str, _settled: Settled) {}

    #[derive(Debug)]
    pub(crate) struct HandlerCall;

    impl HandlerCall {
        pub(crate) fn start(_consumer: &str) -> Self {
            Self
        }

        pub(crate) fn finished(self) {}
    }

    #[derive(Debug, Clone, Copy)]
    pub(crate) struct Stopwatch;

    pub(crate) fn stopwatch() -> Stopwatch {
        Stopwatch
    }

    pub(crate) fn published(_exchange: &str, _outcome: Result<(), &Error>, _started: Stopwatch) {}

    pub(crate) fn connection_state(_purpose: &'static str, _was_up: bool, _is_up: bool) {}

    pub(crate) fn reconnect(_purpose: &'static str) {}

    pub(crate) fn consumer_restart(_consumer: &str) {}

    pub(crate) fn stale_ack(_consumer: &str) {}
}

#[cfg(all(test, feature = "metrics"))]
mod tests {
    use std::{
        collections::BTreeMap,
        sync::{Arc, Mutex},
    };

    use ::metrics::{
        Counter, CounterFn, Gauge, GaugeFn, Histogram, HistogramFn, Key, KeyName, Metadata,
        Recorder, SharedString, Unit,
    };

    use super::*;
    use crate::supervisor::observer::Observer;

    /// Every series as `name{label=value,...}`, a histogram by its count
    /// (`name_count{...}`).
    #[derive(Debug, Default)]
    struct Values(Mutex<BTreeMap<String, f64>>);

    impl Values {
        fn add(&self, series: &str, delta: f64) {
            *self.0.lock().unwrap().entry(series.to_owned()).or_default() += delta;
        }

        fn set(&self, series: &str, value: f64) {
            self.0.lock().unwrap().insert(series.to_owned(), value);
        }

        fn get(&self, series: &str) -> f64 {
            self.0.lock().unwrap().get(series).copied().unwrap_or(0.0)
        }
    }

    /// A handle writing into [`Values`] under one series.
    #[derive(Debug)]
    struct Series(Arc<Values>, String);

    impl CounterFn for Series {
        fn increment(&self, value: u64) {
            self.0.add(&self.1, value as f64);
        }

        fn absolute(&self, value: u64) {
            self.0.set(&self.1, value as f64);
        }
    }

    impl GaugeFn for Series {
        fn increment(&self, value: f64) {
            self.0.add(&self.1, value);
        }

        fn decrement(&self, value: f64) {
            self.0.add(&self.1, -value);
        }

        fn set(&self, value: f64) {
            self.0.set(&self.1, value);
        }
    }

    impl HistogramFn for Series {
        fn record(&self, _value: f64) {
            self.0.add(&self.1, 1.0);
        }
    }

    /// The recorder of one test, on its thread alone.
    #[derive(Debug, Default)]
    struct TestRecorder(Arc<Values>);

    impl TestRecorder {
        fn series(&self, key: &Key, suffix: &str) -> Arc<Series> {
            let labels: Vec<String> = key
                .labels()
                .map(|label| format!("{}={}", label.key(), label.value()))
                .collect();
            let name = format!("{}{suffix}{{{}}}", key.name(), labels.join(","));
            Arc::new(Series(self.0.clone(), name))
        }
    }

    impl Recorder for TestRecorder {
        fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

        fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
            Counter::from_arc(self.series(key, ""))
        }

        fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
            Gauge::from_arc(self.series(key, ""))
        }

        fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
            Histogram::from_arc(self.series(key, "_count"))
        }
    }

    #[test]
    fn a_connection_is_counted_up_while_open_and_its_reopenings_as_reconnects() {
        let recorder = TestRecorder::default();
        let values = recorder.0.clone();
        let up = "hutch_connection_up{purpose=consume}";
        let reconnects = "hutch_connection_reconnects_total{purpose=consume}";
        ::metrics::with_local_recorder(&recorder, || {
            let observer = Observer::default();
            observer.connecting("consume");
            assert_eq!(values.get(up), 0.0);
            observer.connected("consume", "node".to_owned());
            assert_eq!((values.get(up), values.get(reconnects)), (1.0, 0.0));
            observer.disconnected("consume", "lost".to_owned());
            assert_eq!(values.get(up), 0.0);
            observer.connected("consume", "node".to_owned());
            assert_eq!((values.get(up), values.get(reconnects)), (1.0, 1.0));
            // A `Hutch` dropped without closing: its connection went with it.
            drop(observer);
            assert_eq!(values.get(up), 0.0);
        });
    }

    #[test]
    fn a_handler_call_is_in_flight_until_decided_or_dropped() {
        let recorder = TestRecorder::default();
        let values = recorder.0.clone();
        let in_flight = "hutch_messages_in_flight{consumer=app::handle}";
        let durations = "hutch_handler_duration_seconds_count{consumer=app::handle}";
        ::metrics::with_local_recorder(&recorder, || {
            let finished = HandlerCall::start("app::handle");
            let dropped = HandlerCall::start("app::handle");
            assert_eq!(values.get(in_flight), 2.0);
            finished.finished();
            assert_eq!((values.get(in_flight), values.get(durations)), (1.0, 1.0));
            // The run ended with the call unfinished: not a duration.
            drop(dropped);
            assert_eq!((values.get(in_flight), values.get(durations)), (0.0, 1.0));
        });
    }
}
