//! The hutch-rs application: an ordinary user program. `#[tokio::main]`
//! (multi-thread, default worker count), `#[consumer]` functions in groups
//! so that each scenario starts only its own, `Hutch::builder()` with the
//! benchmark's prefetch, and `publish` calls, each resolving on its confirm.
//!
//! Consumers are plain functions, so what they report to `main` goes
//! through statics, as in the quickstart example.

use std::{
    collections::HashSet,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use futures_util::{StreamExt, TryStreamExt, stream, stream::FuturesUnordered};
use hutch_rs::{BoxError, Failure, Hutch, HutchBuilder, Message, Outcome, consumer};
use tokio::sync::Semaphore;
use tracing_subscriber::fmt::writer::BoxMakeWriter;

use crate::{
    Error,
    child::{self, CONFIRMED, FAILURE, GO, MARKER, READY},
    cli::ClientArgs,
    report::{Failover, Isolation, Latency, Meter, Throughput},
    scenario::Scenario,
    telemetry,
    workload::{
        CONFIRM_WINDOW, CPU_QUEUE, CPU_WORK, DEAD_LETTER_QUEUE, DRAIN_QUEUE, FAILOVER_AT,
        FAILOVER_KEY, FAILOVER_PUBLISHERS, FAILOVER_QUEUE, IDLE_CONSUMERS, LATENCY_KEY,
        LATENCY_QUEUE, MARKER_SEQ, NAMESPACE, PUBLISH_KEY, Payload, RECOVERY_QUEUE, STEADY_QUEUE,
        STORM_QUEUE, WARM_UP_SEQ, idle_queue, unix_nanos,
    },
};

/// The broker's OS pid, for the drain consumer's meter.
static BROKER_PID: AtomicU32 = AtomicU32::new(0);

/// A consumer's progress towards its target: timed from the first
/// message counted (or an earlier [`Progress::start`]) to the target-th.
struct Progress {
    target: AtomicU64,
    counted: AtomicU64,
    started: AtomicBool,
    meter: Mutex<Option<Meter>>,
    report: Mutex<Option<Throughput>>,
    /// A permit once `target` messages were counted.
    done: Semaphore,
}

impl Progress {
    const fn new() -> Self {
        Self {
            target: AtomicU64::new(u64::MAX),
            counted: AtomicU64::new(0),
            started: AtomicBool::new(false),
            meter: Mutex::new(None),
            report: Mutex::new(None),
            done: Semaphore::const_new(0),
        }
    }

    /// Starts the meter, unless it is running already.
    fn start(&self) {
        if !self.started.load(Ordering::Relaxed) && !self.started.swap(true, Ordering::Relaxed) {
            *lock(&self.meter) = Some(Meter::start(BROKER_PID.load(Ordering::Relaxed)));
        }
    }

    /// Counts one message; the target-th stops the meter. Returns the count.
    fn count(&self) -> u64 {
        self.start();
        let counted = self.counted.fetch_add(1, Ordering::Relaxed) + 1;
        if counted == self.target.load(Ordering::Relaxed) {
            let meter = lock(&self.meter).take();
            *lock(&self.report) = meter.map(|meter| meter.finish(counted));
            self.done.add_permits(1);
        }
        counted
    }

    /// Waits for the target and returns the measurement.
    async fn finished(&self) -> Result<Throughput, Error> {
        self.done.acquire().await?.forget();
        Ok(lock(&self.report)
            .take()
            .ok_or("the target was reached without a meter")?)
    }
}

/// The drain consumer's progress.
static DRAIN: Progress = Progress::new();

/// Queue `bench:drain`: counts, timing from the first message to the last.
#[consumer(group = "drain", queue = "drain", routing_key = "bench.drain")]
async fn drain(msg: Message<Payload>) -> Result<(), BoxError> {
    std::hint::black_box(msg.body());
    let work = DRAIN_WORK_US.load(Ordering::Relaxed);
    if work > 0 {
        // Stands for the handler's own I/O (a database write, an HTTP call).
        tokio::time::sleep(Duration::from_micros(work)).await;
    }
    DRAIN.count();
    Ok(())
}

/// The copies the dead-letter consumer's failures confirmed in its
/// dead-letter queue; timed from its first delivery.
static DEAD_LETTERED: Progress = Progress::new();

/// Queue `bench:dead_letter`: every message fails, and with one attempt
/// goes straight to `bench:dead_letter:dead`.
#[consumer(
    group = "dead_letter",
    queue = "dead_letter",
    routing_key = "bench.dead_letter",
    max_attempts = 1
)]
async fn dead_letter(msg: Message<Payload>) -> Result<(), BoxError> {
    DEAD_LETTERED.start();
    std::hint::black_box(msg.body());
    Err("fails on purpose".into())
}

/// The CPU-bound consumer's progress.
static CPU: Progress = Progress::new();

/// Queue `bench:cpu`: burns [`CPU_WORK`] of CPU per message, never
/// yielding, as a handler that parses, hashes or resizes does.
#[consumer(group = "cpu", queue = "cpu", routing_key = "bench.cpu")]
async fn cpu(msg: Message<Payload>) -> Result<(), BoxError> {
    let started = Instant::now();
    let mut spun = 0_u64;
    while started.elapsed() < CPU_WORK {
        spun = std::hint::black_box(spun.wrapping_add(msg.seq));
    }
    CPU.count();
    Ok(())
}

/// Consumer A's copies confirmed in its dead-letter queue.
static STORM: Progress = Progress::new();
/// Consumer B's progress.
static STEADY: Progress = Progress::new();
/// A's count when B's drain started and when it ended.
static STORM_AT_STEADY_START: AtomicU64 = AtomicU64::new(u64::MAX);
static STORM_AT_STEADY_END: AtomicU64 = AtomicU64::new(u64::MAX);

/// Queue `bench:storm` (consumer A): every message fails, once.
#[consumer(
    group = "isolation",
    queue = "storm",
    routing_key = "bench.storm",
    max_attempts = 1
)]
async fn storm(msg: Message<Payload>) -> Result<(), BoxError> {
    std::hint::black_box(msg.body());
    Err("fails on purpose".into())
}

/// Queue `bench:steady` (consumer B): an ordinary consumer.
#[consumer(group = "isolation", queue = "steady", routing_key = "bench.steady")]
async fn steady(msg: Message<Payload>) -> Result<(), BoxError> {
    std::hint::black_box(msg.body());
    if !STEADY.started.load(Ordering::Relaxed) {
        let _ = STORM_AT_STEADY_START.compare_exchange(
            u64::MAX,
            STORM.counted.load(Ordering::Relaxed),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }
    if STEADY.count() == STEADY.target.load(Ordering::Relaxed) {
        STORM_AT_STEADY_END.store(STORM.counted.load(Ordering::Relaxed), Ordering::Relaxed);
    }
    Ok(())
}

/// How long each drain handler call waits, in microseconds.
static DRAIN_WORK_US: AtomicU64 = AtomicU64::new(0);

/// Latencies seen by the latency consumer, in nanoseconds.
static LATENCIES: Mutex<Vec<u64>> = Mutex::new(Vec::new());
/// One permit per latency recorded.
static LATENCY_RECEIVED: Semaphore = Semaphore::const_new(0);

/// Queue `bench:latency`: records receipt minus scheduled send time.
#[consumer(group = "latency", queue = "latency", routing_key = "bench.latency")]
async fn latency(msg: Message<Payload>) -> Result<(), BoxError> {
    let received = unix_nanos();
    if msg.seq != WARM_UP_SEQ {
        lock(&LATENCIES).push(received.saturating_sub(msg.sent_at_ns));
        LATENCY_RECEIVED.add_permits(1);
    }
    Ok(())
}

/// Queue `bench:recovery`: tells the orchestrator when a marker arrives.
#[consumer(group = "recovery", queue = "recovery", routing_key = "bench.recovery")]
async fn recovery(msg: Message<Payload>) -> Result<(), BoxError> {
    let received = unix_nanos();
    if msg.seq >= MARKER_SEQ {
        child::emit(MARKER, received);
    }
    Ok(())
}

/// Every delivery of the failover consumer: `(seq, unix nanos)`.
static FAILOVER_DELIVERIES: Mutex<Vec<(u64, u64)>> = Mutex::new(Vec::new());

/// Queue `bench:failover`, on the three-node cluster: a quorum queue, which
/// RabbitMQ (3.10 and 4.0 alike) places with its leader on the node the declaring
/// connection is on (`client-local`), so that the node the orchestrator
/// stops is both the one the client is connected to and the queue's
/// leader: the worst single failure, both move at once.
#[consumer(
    group = "failover",
    queue = "failover",
    routing_key = "bench.failover",
    queue_type = "quorum",
    arguments = [("x-queue-leader-locator", "client-local")]
)]
async fn failover(msg: Message<Payload>) -> Result<(), BoxError> {
    // Before the lock, so that waiting for it is not part of the time.
    let received = unix_nanos();
    if msg.seq != WARM_UP_SEQ {
        lock(&FAILOVER_DELIVERIES).push((msg.seq, received));
    }
    Ok(())
}

/// The baseline of the idle-memory scenario: one consumer, on the first of
/// the idle queues.
#[consumer(group = "idle_one", queue = "idle_0", routing_key = "idle.0")]
async fn idle_baseline(msg: Message<Payload>) -> Result<(), BoxError> {
    idle(msg)
}

/// What every idle consumer does with a message (none arrives).
fn idle(msg: Message<Payload>) -> Result<(), BoxError> {
    drop(msg);
    Ok(())
}

/// `idle_0` … `idle_999`, generated by `build.rs`, in group `idle`.
mod idle_consumers {
    use super::{Payload, idle};
    include!(concat!(env!("OUT_DIR"), "/idle_consumers.rs"));
}

/// The client program, on the runtime `#[tokio::main]` builds (worker
/// threads as many as CPUs); the CPU-bound handlers get exactly two.
pub(crate) fn run(args: ClientArgs) -> Result<(), Error> {
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if args.scenario == Scenario::CpuHandlers {
        runtime.worker_threads(2);
    }
    runtime.enable_all().build()?.block_on(play(args))
}

async fn play(args: ClientArgs) -> Result<(), Error> {
    // Every dead letter is logged at error level: formatted as always, but
    // 20,000 of them would bury the orchestrator's progress.
    let storming = matches!(args.scenario, Scenario::DeadLetter | Scenario::Isolation);
    let writer = if storming {
        BoxMakeWriter::new(std::io::sink)
    } else {
        BoxMakeWriter::new(std::io::stderr)
    };
    let installed = telemetry::install(args.telemetry, writer)?;
    BROKER_PID.store(args.broker_pid, Ordering::Relaxed);
    let played = match args.scenario {
        Scenario::Drain => child::emit_result(&drain_all(&args).await?),
        Scenario::Publish => child::emit_result(&publish_all(&args).await?),
        Scenario::Latency => child::emit_result(&open_loop(&args).await?),
        Scenario::Idle => stay_idle(&args).await,
        Scenario::Recovery => consume_through_outages(&args).await,
        Scenario::DeadLetter => child::emit_result(&dead_letter_all(&args).await?),
        Scenario::CpuHandlers => child::emit_result(&burn_all(&args).await?),
        Scenario::Isolation => child::emit_result(&drain_beside_storm(&args).await?),
        Scenario::Failover => child::emit_result(&stream_through_failover(&args).await?),
        Scenario::Telemetry => {
            Err("the telemetry scenario runs the drain and publish clients".into())
        }
    };
    let exported = installed.finish()?;
    if !exported.is_empty() {
        eprintln!("    {} with {}: {exported}", args.scenario, args.telemetry);
    }
    played
}

/// The settings every scenario shares.
fn builder(args: &ClientArgs, group: &str) -> HutchBuilder {
    Hutch::builder()
        .uri(&args.uri)
        .namespace(NAMESPACE)
        .group(group)
        .prefetch(args.prefetch)
        .concurrency(args.concurrency)
        // The default 30 s times prefetch 200 would exceed RabbitMQ's
        // consumer_timeout, which hutch-rs warns about; these handlers take
        // microseconds.
        .handler_timeout(Duration::from_secs(5))
}

/// Starts the drain consumer on the pre-filled queue and waits until it has
/// handled every message.
async fn drain_all(args: &ClientArgs) -> Result<Throughput, Error> {
    DRAIN.target.store(args.messages, Ordering::Relaxed);
    DRAIN_WORK_US.store(u64::try_from(args.work.as_micros())?, Ordering::Relaxed);
    let running = builder(args, "drain").build()?.start().await?;
    let report = DRAIN.finished().await?;
    // Acks what is still in flight, then closes.
    running.shutdown().await?;
    Ok(report)
}

/// Counts, for `progress`, every failure whose copy is confirmed in
/// `queue`'s dead-letter queue; an error hook hears of it once the copy is
/// confirmed and the original settled.
fn count_dead_letters(
    progress: &'static Progress,
    queue: &'static str,
) -> impl Fn(Failure) -> std::future::Ready<Result<(), BoxError>> + Send + Sync + 'static {
    move |failure: Failure| {
        let expected =
            failure.queue() == queue && matches!(failure.outcome(), Outcome::DeadLettered { .. });
        if expected {
            progress.count();
        } else {
            // Counted nowhere: the run's target is never reached, and the
            // broker check says what went wrong.
            eprintln!("unexpected failure outcome: {:?}", failure.outcome());
        }
        std::future::ready(Ok(()))
    }
}

/// Starts the always-failing consumer on its pre-filled queue and waits
/// until every message's copy is confirmed in `<queue>:dead`.
async fn dead_letter_all(args: &ClientArgs) -> Result<Throughput, Error> {
    DEAD_LETTERED.target.store(args.messages, Ordering::Relaxed);
    let running = builder(args, "dead_letter")
        .on_error(count_dead_letters(&DEAD_LETTERED, DEAD_LETTER_QUEUE))
        .build()?
        .start()
        .await?;
    let report = DEAD_LETTERED.finished().await?;
    running.shutdown().await?;
    Ok(report)
}

/// Drains the CPU-bound consumer's pre-filled queue at the concurrency
/// asked for.
async fn burn_all(args: &ClientArgs) -> Result<Throughput, Error> {
    CPU.target.store(args.messages, Ordering::Relaxed);
    let running = builder(args, "cpu").build()?.start().await?;
    let report = CPU.finished().await?;
    running.shutdown().await?;
    Ok(report)
}

/// B drains its queue while A fails `args.storm` messages; waits for both.
async fn drain_beside_storm(args: &ClientArgs) -> Result<Isolation, Error> {
    STEADY.target.store(args.messages, Ordering::Relaxed);
    STORM.target.store(args.storm, Ordering::Relaxed);
    let running = builder(args, "isolation")
        .on_error(count_dead_letters(&STORM, STORM_QUEUE))
        .build()?
        .start()
        .await?;
    let steady = STEADY.finished().await?;
    if args.storm > 0 {
        STORM.finished().await?;
    }
    running.shutdown().await?;
    let at_start = STORM_AT_STEADY_START.load(Ordering::Relaxed);
    let at_end = STORM_AT_STEADY_END.load(Ordering::Relaxed);
    Ok(Isolation {
        steady,
        storm_during: at_end.saturating_sub(at_start),
        storm_after: args.storm.saturating_sub(at_end),
    })
}

/// Keeps [`CONFIRM_WINDOW`] publishes in flight, each awaiting its confirm.
async fn publish_all(args: &ClientArgs) -> Result<Throughput, Error> {
    let hutch = builder(args, "publish").build()?;
    // The publishing connection opens on the first publish.
    hutch
        .publish(PUBLISH_KEY, &Payload::new(WARM_UP_SEQ, 0))
        .await?;
    let meter = Meter::start(args.broker_pid);
    stream::iter(0..args.messages)
        .map(|seq| {
            let hutch = &hutch;
            async move { hutch.publish(PUBLISH_KEY, &Payload::new(seq, 0)).await }
        })
        .buffer_unordered(CONFIRM_WINDOW)
        .try_for_each(|()| async { Ok(()) })
        .await?;
    let report = meter.finish(args.messages);
    hutch.close().await?;
    Ok(report)
}

/// Open-loop latency: message `i` goes out at `t0 + i / rate` whatever the
/// confirms do; the latency consumer records each arrival.
async fn open_loop(args: &ClientArgs) -> Result<Latency, Error> {
    let count = args.rate * args.duration.as_millis() as u64 / 1000;
    let hutch = builder(args, "latency").build()?;
    let running = hutch.start().await?;
    hutch
        .publish(LATENCY_KEY, &Payload::new(WARM_UP_SEQ, 0))
        .await?;
    let mut publishes = FuturesUnordered::new();
    let period = Duration::from_secs(1) / u32::try_from(args.rate)?;
    let (start, start_unix) = (std::time::Instant::now(), unix_nanos());
    for seq in 0..count {
        let offset = period * u32::try_from(seq)?;
        let due = tokio::time::Instant::from_std(start + offset);
        // Drive the publishes in flight while waiting for the next send;
        // the schedule never waits for a confirm.
        loop {
            tokio::select! {
                biased;
                Some(published) = publishes.next() => published?,
                () = tokio::time::sleep_until(due) => break,
            }
        }
        let payload = Payload::new(seq, start_unix + offset.as_nanos() as u64);
        let hutch = &hutch;
        publishes.push(async move { hutch.publish(LATENCY_KEY, &payload).await });
    }
    while let Some(published) = publishes.next().await {
        published?;
    }
    let all = LATENCY_RECEIVED.acquire_many(u32::try_from(count)?);
    tokio::time::timeout(Duration::from_secs(60), all)
        .await
        .map_err(|_| "not every latency message arrived within 60 s")??
        .forget();
    let samples = std::mem::take(&mut *lock(&LATENCIES));
    running.shutdown().await?;
    hutch.close().await?;
    Ok(Latency::of(samples))
}

/// Starts the idle consumers (the group of 1,000, or the one of the
/// baseline) and reports the memory when the orchestrator asks.
async fn stay_idle(args: &ClientArgs) -> Result<(), Error> {
    let group = if args.consumers == 1 {
        "idle_one"
    } else {
        "idle"
    };
    let running = builder(args, group).build()?.start().await?;
    if running.queues().len() != args.consumers {
        return Err(format!(
            "group {group} has {} consumers, not {}",
            running.queues().len(),
            args.consumers
        )
        .into());
    }
    child::emit(READY, args.consumers);
    child::report_memory_when_asked(args.consumers).await?;
    running.shutdown().await?;
    Ok(())
}

/// Consumes the recovery queue until the orchestrator closes our stdin;
/// hutch-rs reconnects by itself.
async fn consume_through_outages(args: &ClientArgs) -> Result<(), Error> {
    let running = builder(args, "recovery").build()?.start().await?;
    child::emit(READY, "consuming");
    child::from_orchestrator().await;
    running.shutdown().await?;
    Ok(())
}

/// How long the failover stream may take, failover included: reaching it
/// means publishing did not recover.
const FAILOVER_PATIENCE: Duration = Duration::from_secs(180);
/// How long consuming may lag behind the last confirm; reaching it leaves
/// messages lost, which the orchestrator reports.
const FAILOVER_DRAIN_PATIENCE: Duration = Duration::from_secs(120);

/// The failover consumer's application, on the cluster's nodes (the
/// comma-separated `--uri`, node 0 first), with the cluster tests' settings:
/// a silent connection is given up after two heartbeats of 2 s, and
/// reconnecting waits at most half a second.
fn failover_builder(args: &ClientArgs) -> HutchBuilder {
    builder(args, "failover")
        .uris(args.uri.split(','))
        .heartbeat(Duration::from_secs(2))
        .connection_timeout(Duration::from_secs(3))
        .reconnect_delay(Duration::from_millis(50), Duration::from_millis(500))
        .confirm_timeout(Duration::from_secs(30))
}

/// Consumes the failover queue, says `READY`, and on `GO` sends
/// `args.messages` confirmed publishes from [`FAILOVER_PUBLISHERS`] tasks,
/// each as fast as its confirms come; says `CONFIRMED` at
/// [`FAILOVER_AT`] (the orchestrator may stop a node then), and reports once
/// every confirmed message was consumed and the orchestrator said when the
/// failure began.
async fn stream_through_failover(args: &ClientArgs) -> Result<Failover, Error> {
    let hutch = failover_builder(args).build()?;
    let running = hutch.start().await?;
    // Opens the publishing connection before the stream, as the publish
    // scenario does; the consumer ignores it.
    hutch
        .publish(FAILOVER_KEY, &Payload::new(WARM_UP_SEQ, 0))
        .await?;
    child::emit(READY, "consuming");
    match child::from_orchestrator().await.as_deref() {
        Some(GO) => {}
        other => return Err(format!("expected {GO}, got {other:?}").into()),
    }

    let started = unix_nanos();
    // Tickets, so that exactly `args.messages` publishes are confirmed: a
    // failed publish hands its ticket back and is sent again as a new
    // message (a new seq), since it may or may not have reached the queue.
    let tickets = Arc::new(AtomicI64::new(i64::try_from(args.messages)?));
    let next_seq = Arc::new(AtomicU64::new(0));
    let confirmed = Arc::new(Mutex::new(Vec::with_capacity(usize::try_from(
        args.messages,
    )?)));
    let failed = Arc::new(AtomicU64::new(0));
    let publishers: Vec<_> = (0..FAILOVER_PUBLISHERS)
        .map(|_| {
            let (hutch, tickets, next_seq, confirmed, failed) = (
                hutch.clone(),
                tickets.clone(),
                next_seq.clone(),
                confirmed.clone(),
                failed.clone(),
            );
            tokio::spawn(async move {
                while tickets.fetch_sub(1, Ordering::AcqRel) > 0 {
                    let seq = next_seq.fetch_add(1, Ordering::Relaxed);
                    match hutch.publish(FAILOVER_KEY, &Payload::new(seq, 0)).await {
                        Ok(()) => {
                            let mut confirmed = lock(&confirmed);
                            confirmed.push((seq, unix_nanos()));
                            if confirmed.len() as u64 == FAILOVER_AT {
                                child::emit(CONFIRMED, FAILOVER_AT);
                            }
                        }
                        Err(error) => {
                            // The first says why; the count says how many.
                            if failed.fetch_add(1, Ordering::Relaxed) == 0 {
                                eprintln!("failover: a publish failed, sent again: {error}");
                            }
                            tickets.fetch_add(1, Ordering::AcqRel);
                        }
                    }
                }
                // The last fetch_sub took no ticket.
                tickets.fetch_add(1, Ordering::AcqRel);
            })
        })
        .collect();
    let all_published = async {
        for publisher in publishers {
            publisher.await?;
        }
        Ok::<(), Error>(())
    };
    tokio::time::timeout(FAILOVER_PATIENCE, all_published)
        .await
        .map_err(|_| {
            format!("the failover stream did not finish within {FAILOVER_PATIENCE:?}")
        })??;
    let confirmed = std::mem::take(&mut *lock(&confirmed));

    // Polled: the time measured is each delivery's own, not when this
    // loop noticed it.
    let deadline = Instant::now() + FAILOVER_DRAIN_PATIENCE;
    while Instant::now() < deadline {
        let delivered: HashSet<u64> = lock(&FAILOVER_DELIVERIES)
            .iter()
            .map(|&(seq, _)| seq)
            .collect();
        if confirmed.iter().all(|(seq, _)| delivered.contains(seq)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let deliveries = std::mem::take(&mut *lock(&FAILOVER_DELIVERIES));

    // Sent once the node is stopped, which may be after the stream ended.
    let line = child::from_orchestrator()
        .await
        .ok_or_else(|| format!("stdin closed before {FAILURE}"))?;
    let times: Vec<u64> = line
        .strip_prefix(FAILURE)
        .ok_or_else(|| format!("expected {FAILURE}, got {line:?}"))?
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let [began, cut] = times[..] else {
        return Err(format!("expected {FAILURE} <began> <cut>, got {line:?}").into());
    };
    running.shutdown().await?;
    hutch.close().await?;
    Ok(Failover::of(
        &confirmed,
        &deliveries,
        failed.load(Ordering::Relaxed),
        started,
        began,
        cut,
    ))
}

/// Checks that the consumers' queues are the ones the raw clients and the
/// orchestrator use, so that a renamed consumer fails here and not as an
/// empty measurement.
pub(crate) fn check_queue_names() -> Result<(), Error> {
    let expected: [(&str, Vec<String>); 9] = [
        ("drain", vec![DRAIN_QUEUE.to_owned()]),
        ("dead_letter", vec![DEAD_LETTER_QUEUE.to_owned()]),
        ("cpu", vec![CPU_QUEUE.to_owned()]),
        (
            "isolation",
            vec![STEADY_QUEUE.to_owned(), STORM_QUEUE.to_owned()],
        ),
        ("latency", vec![LATENCY_QUEUE.to_owned()]),
        ("recovery", vec![RECOVERY_QUEUE.to_owned()]),
        ("failover", vec![FAILOVER_QUEUE.to_owned()]),
        ("idle_one", vec![idle_queue(0)]),
        ("idle", {
            let mut names: Vec<String> = (0..IDLE_CONSUMERS).map(idle_queue).collect();
            names.sort();
            names
        }),
    ];
    for (group, expected) in expected {
        let hutch = Hutch::builder().namespace(NAMESPACE).group(group).build()?;
        let mut names = hutch.queue_names()?;
        names.sort();
        if names != expected {
            return Err(format!("group {group} consumes {names:?}, expected {expected:?}").into());
        }
    }
    Ok(())
}

/// Locks a mutex that no panicking holder can have left inconsistent.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}
