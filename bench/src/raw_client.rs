//! The hand-written lapin programs: what a competent user writes without a
//! framework. One connection; `basic_qos`, `basic_consume` and each ack
//! awaited in the delivery loop; `confirm_select` and a window of
//! outstanding `PublisherConfirm`s for publishing; a reconnect loop where
//! the connection may die. Run on the tokio runtime flavour asked for.

use std::time::{Duration, Instant};

use futures_util::{
    StreamExt, TryStreamExt,
    stream::{self, FuturesUnordered},
};
use lapin::{
    Channel, Connection, ConnectionProperties, Consumer, PublisherConfirm,
    message::Delivery,
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
        ConfirmSelectOptions,
    },
    types::FieldTable,
};

use crate::{
    Error,
    broker::expect_ack,
    child::{self, MARKER, READY},
    cli::{ClientArgs, Impl},
    report::{Latency, Meter},
    scenario::Scenario,
    workload::{
        CONFIRM_WINDOW, DRAIN_QUEUE, EXCHANGE, LATENCY_KEY, LATENCY_QUEUE, MARKER_SEQ, PREFETCH,
        PUBLISH_KEY, Payload, RECOVERY_QUEUE, WARM_UP_SEQ, as_hutch_publishes, idle_queue,
        unix_nanos,
    },
};

/// How long the raw recovery client waits between connection attempts.
const RECONNECT_DELAY: Duration = Duration::from_millis(100);

/// Runs the scenario on a fresh runtime of the flavour `args` names.
pub(crate) fn run(args: &ClientArgs) -> Result<(), Error> {
    let runtime = match args.implementation {
        Impl::RawCurrentThread => tokio::runtime::Builder::new_current_thread(),
        Impl::RawMultiThread => tokio::runtime::Builder::new_multi_thread(),
        Impl::Hutch => unreachable!("hutch-rs runs in hutch_client"),
    }
    .enable_all()
    .build()?;
    runtime.block_on(async {
        match args.scenario {
            Scenario::Drain => child::emit_result(&drain(args).await?),
            Scenario::Publish => child::emit_result(&publish(args).await?),
            Scenario::Latency => child::emit_result(&latency(args).await?),
            Scenario::Idle => idle(args).await,
            Scenario::Recovery => recovery(args).await,
            Scenario::DeadLetter
            | Scenario::CpuHandlers
            | Scenario::Isolation
            | Scenario::Failover
            | Scenario::Telemetry => {
                Err(format!("{} is played by hutch-rs alone", args.scenario).into())
            }
        }
    })
}

async fn connect(uri: &str) -> Result<Connection, Error> {
    Ok(Connection::connect(uri, ConnectionProperties::default()).await?)
}

/// A channel with the prefetch set, consuming `queue` with manual acks.
///
/// The caller keeps the channel until it closes the connection: dropping
/// the last handle of a channel closes it, which races with a connection
/// close (lapin then fails the close with "invalid channel state").
async fn consume(connection: &Connection, queue: &str) -> Result<(Channel, Consumer), Error> {
    let channel = connection.create_channel().await?;
    channel
        .basic_qos(PREFETCH, BasicQosOptions::default())
        .await?;
    let consumer = channel
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok((channel, consumer))
}

/// A channel in confirm mode.
async fn confirming(connection: &Connection) -> Result<Channel, Error> {
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    Ok(channel)
}

/// Publishes `payload` as hutch-rs does (persistent JSON, a message id and
/// a timestamp) to the exchange; resolves once it is sent, with the confirm
/// to await.
async fn send(channel: &Channel, key: &str, payload: &Payload) -> Result<PublisherConfirm, Error> {
    let body = serde_json::to_vec(payload)?;
    Ok(channel
        .basic_publish(
            EXCHANGE.into(),
            key.into(),
            BasicPublishOptions::default(),
            &body,
            as_hutch_publishes(),
        )
        .await?)
}

/// Consumes `messages` messages from the pre-filled drain queue, decoding
/// each (as a handler would) and awaiting each ack. Measured from the first
/// delivery to the last ack.
async fn drain(args: &ClientArgs) -> Result<crate::report::Throughput, Error> {
    let connection = connect(&args.uri).await?;
    let (_channel, mut consumer) = consume(&connection, DRAIN_QUEUE).await?;
    let mut meter = None;
    let mut handled = 0;
    while let Some(delivery) = consumer.next().await {
        let delivery = delivery?;
        meter.get_or_insert_with(|| Meter::start(args.broker_pid));
        let payload: Payload = serde_json::from_slice(&delivery.data)?;
        std::hint::black_box(payload);
        delivery.ack(BasicAckOptions::default()).await?;
        handled += 1;
        if handled == args.messages {
            break;
        }
    }
    let meter = meter.ok_or("no message was delivered")?;
    let report = meter.finish(handled);
    connection.close(200, "drained".into()).await?;
    Ok(report)
}

/// Publishes `messages` messages with up to [`CONFIRM_WINDOW`] confirms
/// outstanding; measured from the first publish to the last confirm.
///
/// By default each `basic_publish` is awaited before the next one is
/// sent. With `HUTCH_BENCH_RAW_PUBLISH=pipelined`, [`CONFIRM_WINDOW`]
/// futures of publish-then-confirm run at once, as hutch-rs's client runs
/// its `publish` calls: lapin then writes many publishes per `sendto`.
async fn publish(args: &ClientArgs) -> Result<crate::report::Throughput, Error> {
    let connection = connect(&args.uri).await?;
    let channel = confirming(&connection).await?;
    // As hutch-rs's client does, to open its lazily opened connection.
    send(&channel, PUBLISH_KEY, &Payload::new(WARM_UP_SEQ, 0))
        .await?
        .await?;
    let pipelined = std::env::var("HUTCH_BENCH_RAW_PUBLISH").is_ok_and(|how| how == "pipelined");
    let meter = Meter::start(args.broker_pid);
    if pipelined {
        let channel = &channel;
        stream::iter(0..args.messages)
            .map(|seq| async move {
                let confirm = send(channel, PUBLISH_KEY, &Payload::new(seq, 0)).await?;
                expect_ack(Some(confirm.await))
            })
            .buffer_unordered(CONFIRM_WINDOW)
            .try_for_each(|()| async { Ok(()) })
            .await?;
    } else {
        let mut confirms = FuturesUnordered::new();
        for seq in 0..args.messages {
            if confirms.len() >= CONFIRM_WINDOW {
                expect_ack(confirms.next().await)?;
            }
            confirms.push(send(&channel, PUBLISH_KEY, &Payload::new(seq, 0)).await?);
        }
        while !confirms.is_empty() {
            expect_ack(confirms.next().await)?;
        }
    }
    let report = meter.finish(args.messages);
    connection.close(200, "published".into()).await?;
    Ok(report)
}

/// Open-loop latency: message `i` goes out at `t0 + i / rate` whatever the
/// confirms do, carrying that scheduled time; a consumer task on the same
/// runtime records receipt minus scheduled time.
async fn latency(args: &ClientArgs) -> Result<Latency, Error> {
    let count = args.rate * args.duration.as_millis() as u64 / 1000;
    let connection = connect(&args.uri).await?;
    let (_consuming, mut consumer) = consume(&connection, LATENCY_QUEUE).await?;
    let receiving = tokio::spawn(async move {
        let mut samples = Vec::with_capacity(count as usize);
        while let Some(delivery) = consumer.next().await {
            let delivery = delivery?;
            let payload: Payload = serde_json::from_slice(&delivery.data)?;
            // After decoding, as hutch-rs's handler is called.
            let received = unix_nanos();
            if payload.seq != WARM_UP_SEQ {
                samples.push(received.saturating_sub(payload.sent_at_ns));
            }
            delivery.ack(BasicAckOptions::default()).await?;
            if samples.len() as u64 == count {
                break;
            }
        }
        // The consumer goes back too: see `consume`.
        Ok::<_, Error>((samples, consumer))
    });

    let channel = confirming(&connection).await?;
    send(&channel, LATENCY_KEY, &Payload::new(WARM_UP_SEQ, 0))
        .await?
        .await?;
    let mut confirms = FuturesUnordered::new();
    let period = Duration::from_secs(1) / u32::try_from(args.rate)?;
    let (start, start_unix) = (Instant::now(), unix_nanos());
    for seq in 0..count {
        let offset = period * u32::try_from(seq)?;
        let due = tokio::time::Instant::from_std(start + offset);
        // Settle confirms while waiting for the next send, never the other
        // way round: the schedule does not wait for the broker.
        loop {
            tokio::select! {
                biased;
                Some(confirm) = confirms.next() => expect_ack(Some(confirm))?,
                () = tokio::time::sleep_until(due) => break,
            }
        }
        let scheduled = start_unix + offset.as_nanos() as u64;
        confirms.push(send(&channel, LATENCY_KEY, &Payload::new(seq, scheduled)).await?);
    }
    while !confirms.is_empty() {
        expect_ack(confirms.next().await)?;
    }
    let (samples, _consumer) = tokio::time::timeout(Duration::from_secs(60), receiving)
        .await
        .map_err(|_| "not every latency message arrived within 60 s")???;
    connection.close(200, "measured".into()).await?;
    Ok(Latency::of(samples))
}

/// `consumers` channels, each consuming an idle queue with a task of its
/// own; reports the memory once the orchestrator saw them all on the broker.
async fn idle(args: &ClientArgs) -> Result<(), Error> {
    let connection = connect(&args.uri).await?;
    for n in 0..args.consumers {
        let (channel, mut consumer) = consume(&connection, &idle_queue(n)).await?;
        tokio::spawn(async move {
            let _channel = channel;
            while let Some(Ok(delivery)) = consumer.next().await {
                let _ = delivery.ack(BasicAckOptions::default()).await;
            }
        });
    }
    child::emit(READY, args.consumers);
    child::report_memory_when_asked(args.consumers).await?;
    connection.close(200, "idle".into()).await?;
    Ok(())
}

/// Consumes the recovery queue until the orchestrator closes our stdin,
/// reconnecting every [`RECONNECT_DELAY`] while the broker is away.
async fn recovery(args: &ClientArgs) -> Result<(), Error> {
    tokio::select! {
        _ = child::from_orchestrator() => Ok(()),
        failed = consume_through_outages(&args.uri) => failed,
    }
}

async fn consume_through_outages(uri: &str) -> Result<(), Error> {
    let mut ready = false;
    loop {
        let connected = async {
            let connection = connect(uri).await?;
            let (channel, consumer) = consume(&connection, RECOVERY_QUEUE).await?;
            Ok::<_, Error>((connection, channel, consumer))
        };
        let (_connection, _channel, mut consumer) = match connected.await {
            Ok(connected) => connected,
            Err(_) => {
                tokio::time::sleep(RECONNECT_DELAY).await;
                continue;
            }
        };
        if !ready {
            child::emit(READY, "consuming");
            ready = true;
        }
        // Ends with an error (or the stream's end) when the connection dies.
        while let Some(Ok(delivery)) = consumer.next().await {
            report_marker(&delivery)?;
            let _ = delivery.ack(BasicAckOptions::default()).await;
        }
        tokio::time::sleep(RECONNECT_DELAY).await;
    }
}

/// Tells the orchestrator when a recovery marker arrived.
fn report_marker(delivery: &Delivery) -> Result<(), Error> {
    let payload: Payload = serde_json::from_slice(&delivery.data)?;
    let received = unix_nanos();
    if payload.seq >= MARKER_SEQ {
        child::emit(MARKER, received);
    }
    Ok(())
}
